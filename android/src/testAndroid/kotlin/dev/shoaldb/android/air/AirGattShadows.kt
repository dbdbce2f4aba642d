// GATT on the simulated air: Robolectric shadows of BluetoothDevice.connectGatt / BluetoothGatt (the central's GATT
// client), and of BluetoothManager.openGattServer / BluetoothGattServer (the peripheral's GATT server), backed by the
// phone's AirStack. They replace Robolectric's own Bluetooth shadows only in the phone program (AirPhone.kt).
package dev.shoaldb.android.air

import android.bluetooth.BluetoothDevice
import android.bluetooth.BluetoothGatt
import android.bluetooth.BluetoothGattCallback
import android.bluetooth.BluetoothGattCharacteristic
import android.bluetooth.BluetoothGattDescriptor
import android.bluetooth.BluetoothGattServer
import android.bluetooth.BluetoothGattServerCallback
import android.bluetooth.BluetoothGattService
import android.bluetooth.BluetoothManager
import android.bluetooth.BluetoothProfile
import android.bluetooth.BluetoothSocket
import android.bluetooth.BluetoothStatusCodes
import android.content.Context
import android.os.Build
import android.os.Handler
import kotlinx.serialization.json.JsonArray
import kotlinx.serialization.json.JsonObject
import org.robolectric.annotation.Implementation
import org.robolectric.annotation.Implements
import org.robolectric.annotation.RealObject
import org.robolectric.shadow.api.Shadow
import org.robolectric.shadows.ShadowBluetoothDevice
import org.robolectric.shadows.ShadowBluetoothGatt
import org.robolectric.shadows.ShadowBluetoothGattServer
import org.robolectric.shadows.ShadowBluetoothManager
import org.robolectric.util.ReflectionHelpers
import java.util.UUID

/** How long a direct connection attempt (`autoConnect` false) lasts before it fails, as on Android (30 s). */
private const val DIRECT_CONNECT_TIMEOUT_MS = 30_000

/** The Client Characteristic Configuration descriptor: a central subscribes by writing it. */
private val CCCD: UUID = UUID.fromString("00002902-0000-1000-8000-00805f9b34fb")

/** GATT status "attribute not found" (an ATT error), answered for requests naming what no server serves. */
private const val ATT_ATTRIBUTE_NOT_FOUND = 0x0A

/** The largest attribute value Android accepts in a notification. */
private const val GATT_MAX_ATTR_LEN = 512

/** The air's names of characteristic properties. */
private val PROPERTY_NAMES = listOf(
    BluetoothGattCharacteristic.PROPERTY_READ to "read",
    BluetoothGattCharacteristic.PROPERTY_WRITE to "write",
    BluetoothGattCharacteristic.PROPERTY_WRITE_NO_RESPONSE to "write_no_response",
    BluetoothGattCharacteristic.PROPERTY_NOTIFY to "notify",
    BluetoothGattCharacteristic.PROPERTY_INDICATE to "indicate",
)

/** A service as `add_service` describes it: its UUID and its characteristics' UUIDs and properties. */
private fun serviceJson(service: BluetoothGattService): Map<String, Any?> = mapOf(
    "uuid" to airUuid(service.uuid),
    "chars" to service.characteristics.map { c ->
        mapOf("uuid" to airUuid(c.uuid), "props" to PROPERTY_NAMES.filter { c.properties and it.first != 0 }.map { it.second })
    },
)

/**
 * The services a central discovered (`services`), as Android's discovery builds them: real
 * [BluetoothGattService] / [BluetoothGattCharacteristic] objects bound to [device], each characteristic that notifies
 * or indicates with its CCCD (the air describes none: a peripheral's stack always serves one there).
 */
private fun discoveredServices(device: BluetoothDevice, list: JsonArray?): List<BluetoothGattService> {
    var handle = 0
    return list.orEmpty().mapNotNull { element ->
        val s = AirMessage(element as? JsonObject ?: return@mapNotNull null)
        val uuid = parseAirUuid(s.string("uuid")) ?: return@mapNotNull null
        val service = BluetoothGattService(uuid, ++handle, BluetoothGattService.SERVICE_TYPE_PRIMARY)
        ReflectionHelpers.setField(service, "mDevice", device)
        for (ch in (s.fields["chars"] as? JsonArray).orEmpty()) {
            val c = AirMessage(ch as? JsonObject ?: continue)
            val charUuid = parseAirUuid(c.string("uuid")) ?: continue
            val names = c.strings("props").orEmpty()
            val properties = PROPERTY_NAMES.filter { it.second in names }.fold(0) { acc, p -> acc or p.first }
            val characteristic = BluetoothGattCharacteristic(charUuid, ++handle, properties, 0)
            if (properties and (BluetoothGattCharacteristic.PROPERTY_NOTIFY or BluetoothGattCharacteristic.PROPERTY_INDICATE) != 0) {
                characteristic.addDescriptor(
                    BluetoothGattDescriptor(CCCD, BluetoothGattDescriptor.PERMISSION_READ or BluetoothGattDescriptor.PERMISSION_WRITE),
                )
                ++handle
            }
            service.addCharacteristic(characteristic)
        }
        service
    }
}

/** The remote device a discovered service belongs to (`BluetoothGattService.getDevice`, hidden); null for a local one. */
private fun deviceOf(service: BluetoothGattService?): BluetoothDevice? =
    service?.let { ReflectionHelpers.getField<BluetoothDevice?>(it, "mDevice") }

// ------------------------------------------------------------------------------------------------ central

/**
 * `BluetoothDevice` on the air: `connectGatt` returns a [BluetoothGatt] whose shadow ([AirGattShadow]) dials the
 * device over the air at once; `createInsecureL2capChannel` a socket whose `connect` opens an air L2CAP channel
 * ([AirSocketShadow]). The rest (address, name, bond state) is Robolectric's.
 */
@Implements(BluetoothDevice::class)
class AirBluetoothDeviceShadow : ShadowBluetoothDevice() {
    @field:RealObject
    lateinit var realDevice: BluetoothDevice

    @Implementation
    override fun connectGatt(context: Context?, autoConnect: Boolean, callback: BluetoothGattCallback?): BluetoothGatt =
        dial(super.connectGatt(context, autoConnect, callback), autoConnect)

    @Implementation
    override fun connectGatt(
        context: Context?,
        autoConnect: Boolean,
        callback: BluetoothGattCallback?,
        transport: Int,
    ): BluetoothGatt = dial(super.connectGatt(context, autoConnect, callback, transport), autoConnect)

    @Implementation(minSdk = Build.VERSION_CODES.O)
    override fun connectGatt(
        context: Context?,
        autoConnect: Boolean,
        callback: BluetoothGattCallback?,
        transport: Int,
        phy: Int,
        handler: Handler?,
    ): BluetoothGatt = dial(super.connectGatt(context, autoConnect, callback, transport, phy, handler), autoConnect)

    private fun dial(gatt: BluetoothGatt, autoConnect: Boolean): BluetoothGatt {
        Shadow.extract<AirGattShadow>(gatt).start(autoConnect)
        return gatt
    }

    @Implementation(minSdk = Build.VERSION_CODES.Q)
    override fun createInsecureL2capChannel(psm: Int): BluetoothSocket {
        val socket = super.createInsecureL2capChannel(psm)
        Shadow.extract<AirSocketShadow>(socket).prepareOutgoing(realDevice, psm)
        return socket
    }
}

/**
 * A GATT client on the air (the central's end of a link): `connectGatt` dials (`connect`, 30 s for a direct
 * connection, no timeout with `autoConnect`), and then, as Android's `BluetoothGatt` does:
 * - `requestMtu` (`exchange_mtu`) → `onMtuChanged`; `discoverServices` (`discover`) → `onServicesDiscovered`, with
 *   real service, characteristic and CCCD objects; `readCharacteristic` (`read`) → `onCharacteristicRead`;
 *   `writeDescriptor` (`write_descriptor`) → `onDescriptorWrite`. These go through the stack's GATT queue, one on the
 *   air at a time (the next is sent when the last is answered), as Android's stack serialises them.
 * - One read or write (characteristic or descriptor) outstanding per client (Android's "device busy"): another is
 *   refused — `false`, or `ERROR_GATT_WRITE_REQUEST_BUSY` from the API 33 calls — until the first one's callback.
 * - `writeCharacteristic` with `WRITE_TYPE_NO_RESPONSE` is a `write`, paced by the link's window (see [AirLink]):
 *   `onCharacteristicWrite` once the stack handed it to the air, which is at once while the window has room, else
 *   when a `delivered` frees a place.
 * - `setCharacteristicNotification` decides which `notified` values reach `onCharacteristicChanged` (as Android's
 *   local registration); the CCCD write is the app's to make.
 * - `disconnect` closes the link (`onConnectionStateChange` GATT_SUCCESS / disconnected once the air confirms); a
 *   link the peer closed or lost reports the air's status (19, 8). `close` ends the client: no callback after it
 *   (a link still up is closed, an attempt still running given up).
 * - The peer's GATT table changed (`services_changed`, the Service Changed indication) → `onServiceChanged` on
 *   API 31+, nothing before (Android 11 and older do not tell the app). As Android's `BluetoothGatt`, `getServices`
 *   keeps what the last discovery found until the app calls `discoverServices` again.
 * - API 33+ signatures where they exist (and the deprecated ones for older SDKs, with the characteristic's or
 *   descriptor's `value` set as Android sets it); every callback on the stack's binder thread, in order.
 *
 * Not modelled: writes with response and long (prepared) writes (refused: the air carries writes without response
 * only), `readDescriptor`, reliable writes, `readRemoteRssi`, PHY and connection-priority changes (accepted, no
 * effect). After a service change, operations on the old objects still reach the peer's characteristics by UUID
 * (Android's would use the old attribute handles, which may no longer be valid). A value longer than MTU − 3 is not
 * truncated as Android would: it goes to the air whole, which drops it and counts it (`oversized`) — the radio must
 * never send one.
 */
@Implements(BluetoothGatt::class)
class AirGattShadow : ShadowBluetoothGatt() {
    @field:RealObject
    lateinit var realGatt: BluetoothGatt

    private enum class State { NEW, CONNECTING, CONNECTED, DISCONNECTED, CLOSED }

    /** An operation of the stack's GATT queue. */
    private sealed class Op {
        class Mtu(val mtu: Int) : Op()
        object Discover : Op()
        class Read(val characteristic: BluetoothGattCharacteristic) : Op()
        class WriteDescriptor(val descriptor: BluetoothGattDescriptor, val value: ByteArray) : Op()
    }

    private val stack: AirStack
        get() = AirStack.current()

    // Under the stack's lock.
    private var state = State.NEW
    private var ref = 0
    private var autoConnect = false
    private var link: AirLink? = null
    private var services: List<BluetoothGattService> = emptyList()
    private var busy = false
    private val queue = ArrayDeque<Op>()
    private var outstanding: Op? = null
    private val notifying = HashSet<UUID>()

    /** The address dialled. */
    internal var peerAddress: String = ""
        private set

    @Volatile
    private var closed = false

    /** Posts a callback to the app, dropped if the client is closed by the time it runs. */
    private fun callback(body: (BluetoothGattCallback) -> Unit) {
        val cb = gattCallback ?: return
        stack.post { if (!closed) body(cb) }
    }

    /** Dials the device (from `connectGatt`). */
    internal fun start(autoConnect: Boolean) {
        val stack = this.stack
        synchronized(stack.lock) {
            peerAddress = realGatt.device.address
            this.autoConnect = autoConnect
            dial(stack)
        }
    }

    private fun dial(stack: AirStack) {
        ref = stack.newRef()
        state = State.CONNECTING
        stack.attempts[ref] = this
        stack.send("connect", "peer" to peerAddress, "ref" to ref, "timeout_ms" to if (autoConnect) null else DIRECT_CONNECT_TIMEOUT_MS)
    }

    // --- what the air says (under the stack's lock) ---

    internal fun onConnected(link: AirLink) {
        if (state != State.CONNECTING) {
            stack.send("disconnect", "link" to link.id)
            return
        }
        state = State.CONNECTED
        this.link = link
        callback { it.onConnectionStateChange(realGatt, BluetoothGatt.GATT_SUCCESS, BluetoothProfile.STATE_CONNECTED) }
    }

    internal fun onConnectFailed(status: Int) {
        if (state != State.CONNECTING) return
        state = State.DISCONNECTED
        callback { it.onConnectionStateChange(realGatt, status, BluetoothProfile.STATE_DISCONNECTED) }
    }

    internal fun onDisconnected(status: Int) {
        link = null
        busy = false
        queue.clear()
        outstanding = null
        if (state != State.CONNECTED) return
        state = State.DISCONNECTED
        callback { it.onConnectionStateChange(realGatt, status, BluetoothProfile.STATE_DISCONNECTED) }
    }

    internal fun onMtu(mtu: Int) {
        if (outstanding is Op.Mtu) next()
        if (state == State.CONNECTED) callback { it.onMtuChanged(realGatt, mtu, BluetoothGatt.GATT_SUCCESS) }
    }

    internal fun onLinkMessage(m: AirMessage) {
        if (state != State.CONNECTED) return
        when (m.op) {
            "services" -> {
                if (outstanding !== Op.Discover) return
                services = discoveredServices(realGatt.device, m.fields["services"] as? JsonArray)
                next()
                callback { it.onServicesDiscovered(realGatt, BluetoothGatt.GATT_SUCCESS) }
            }
            "services_changed" -> {
                // Android's stack rediscovers the peer's table by itself; from API 31 it tells the app, which must
                // call discoverServices again (the objects getServices returns stay as they were until then).
                if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.S) callback { it.onServiceChanged(realGatt) }
            }
            "read_result" -> {
                val op = outstanding as? Op.Read ?: return
                next()
                val status = m.int("status") ?: BluetoothGatt.GATT_FAILURE
                val value = m.bytes("value") ?: ByteArray(0)
                val c = op.characteristic
                callback { cb ->
                    synchronized(stack.lock) { busy = false }
                    @Suppress("DEPRECATION")
                    if (status == BluetoothGatt.GATT_SUCCESS) c.value = value
                    if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.TIRAMISU) {
                        cb.onCharacteristicRead(realGatt, c, value, status)
                    } else {
                        @Suppress("DEPRECATION")
                        cb.onCharacteristicRead(realGatt, c, status)
                    }
                }
            }
            "descriptor_written" -> {
                val op = outstanding as? Op.WriteDescriptor ?: return
                next()
                val status = m.int("status") ?: BluetoothGatt.GATT_FAILURE
                callback { cb ->
                    synchronized(stack.lock) { busy = false }
                    cb.onDescriptorWrite(realGatt, op.descriptor, status)
                }
            }
            "notified" -> {
                val uuid = parseAirUuid(m.string("char")) ?: return
                if (uuid !in notifying) return // Android delivers only what the app registered for
                val c = services.firstNotNullOfOrNull { it.getCharacteristic(uuid) } ?: return
                val value = m.bytes("value") ?: return
                callback { cb ->
                    @Suppress("DEPRECATION")
                    c.value = value
                    if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.TIRAMISU) {
                        cb.onCharacteristicChanged(realGatt, c, value)
                    } else {
                        @Suppress("DEPRECATION")
                        cb.onCharacteristicChanged(realGatt, c)
                    }
                }
            }
        }
    }

    // --- the stack's GATT queue (under the stack's lock) ---

    private fun enqueue(op: Op) {
        queue.addLast(op)
        if (outstanding == null) next()
    }

    /** The outstanding operation is done: sends the next one. */
    private fun next() {
        outstanding = null
        val l = link ?: return
        val op = queue.removeFirstOrNull() ?: return
        outstanding = op
        when (op) {
            is Op.Mtu -> stack.send("exchange_mtu", "link" to l.id, "mtu" to op.mtu)
            Op.Discover -> stack.send("discover", "link" to l.id)
            is Op.Read -> stack.send("read", "link" to l.id, "char" to airUuid(op.characteristic.uuid))
            is Op.WriteDescriptor -> stack.send(
                "write_descriptor",
                "link" to l.id,
                "char" to airUuid(op.descriptor.characteristic.uuid),
                "descriptor" to airDescriptor(op.descriptor.uuid),
                "value" to op.value,
            )
        }
    }

    // --- the app's calls ---

    @Implementation
    override fun connect(): Boolean = synchronized(stack.lock) {
        when (state) {
            State.CONNECTING, State.CONNECTED -> true
            State.DISCONNECTED -> {
                autoConnect = true // BluetoothGatt.connect() reconnects as with autoConnect
                dial(stack)
                true
            }
            else -> false
        }
    }

    @Implementation
    override fun disconnect() {
        synchronized(stack.lock) {
            when (state) {
                State.CONNECTING -> {
                    // The attempt is given up; Android reports nothing for it.
                    stack.attempts.remove(ref)
                    stack.send("cancel_connect", "ref" to ref)
                    state = State.DISCONNECTED
                }
                State.CONNECTED -> link?.let { stack.send("disconnect", "link" to it.id) }
                else -> {}
            }
        }
    }

    @Implementation
    override fun close() {
        synchronized(stack.lock) {
            closed = true
            when (state) {
                State.CONNECTING -> {
                    stack.attempts.remove(ref)
                    stack.send("cancel_connect", "ref" to ref)
                }
                State.CONNECTED -> link?.let { stack.send("disconnect", "link" to it.id) }
                else -> {}
            }
            state = State.CLOSED
            busy = false
            queue.clear()
            outstanding = null
        }
    }

    @Implementation
    override fun requestConnectionPriority(connectionPriority: Int): Boolean =
        synchronized(stack.lock) { state == State.CONNECTED }

    @Implementation
    override fun requestMtu(mtu: Int): Boolean = synchronized(stack.lock) {
        if (state != State.CONNECTED) return false
        enqueue(Op.Mtu(mtu))
        true
    }

    @Implementation
    override fun discoverServices(): Boolean = synchronized(stack.lock) {
        if (state != State.CONNECTED) return false
        services = emptyList() // Android forgets what an earlier discovery found
        enqueue(Op.Discover)
        true
    }

    @Implementation
    override fun getServices(): List<BluetoothGattService> = synchronized(stack.lock) { ArrayList(services) }

    @Implementation
    override fun getService(uuid: UUID?): BluetoothGattService? =
        synchronized(stack.lock) { services.firstOrNull { it.uuid == uuid } }

    @Implementation
    override fun setCharacteristicNotification(characteristic: BluetoothGattCharacteristic?, enable: Boolean): Boolean {
        val c = characteristic ?: return false
        if (deviceOf(c.service) == null) return false
        synchronized(stack.lock) {
            if (closed) return false
            if (enable) notifying.add(c.uuid) else notifying.remove(c.uuid)
        }
        return true
    }

    /** `readCharacteristic`: a `read` through the GATT queue, answered by the peripheral's app. */
    @Implementation
    protected fun readCharacteristic(characteristic: BluetoothGattCharacteristic?): Boolean {
        val c = characteristic ?: return false
        if (c.properties and BluetoothGattCharacteristic.PROPERTY_READ == 0) return false
        if (deviceOf(c.service) == null) return false
        synchronized(stack.lock) {
            if (state != State.CONNECTED || busy) return false
            busy = true
            enqueue(Op.Read(c))
        }
        return true
    }

    @Implementation(minSdk = Build.VERSION_CODES.TIRAMISU)
    override fun writeCharacteristic(characteristic: BluetoothGattCharacteristic, value: ByteArray, writeType: Int): Int =
        write(characteristic, value, writeType)

    @Implementation
    @Suppress("DEPRECATION")
    override fun writeCharacteristic(characteristic: BluetoothGattCharacteristic): Boolean {
        val value = characteristic.value ?: return false
        return write(characteristic, value, characteristic.writeType) == BluetoothStatusCodes.SUCCESS
    }

    private fun write(c: BluetoothGattCharacteristic, value: ByteArray, writeType: Int): Int {
        val props = c.properties
        if (props and (BluetoothGattCharacteristic.PROPERTY_WRITE or BluetoothGattCharacteristic.PROPERTY_WRITE_NO_RESPONSE) == 0) {
            return BluetoothStatusCodes.ERROR_GATT_WRITE_NOT_ALLOWED
        }
        requireNotNull(c.service) { "Characteristic must have a non-null service" }
        val bytes = value.copyOf()
        synchronized(stack.lock) {
            val l = link
            if (state != State.CONNECTED || l == null) return BluetoothStatusCodes.ERROR_DEVICE_NOT_CONNECTED
            if (busy) return BluetoothStatusCodes.ERROR_GATT_WRITE_REQUEST_BUSY
            if (writeType != BluetoothGattCharacteristic.WRITE_TYPE_NO_RESPONSE) {
                airLog("[air-phone ${stack.name}] a write with response: not on the air (only writes without response are)")
                return BluetoothStatusCodes.ERROR_UNKNOWN
            }
            busy = true
            stack.sendPacket(l, air("write", "link" to l.id, "char" to airUuid(c.uuid), "value" to bytes)) {
                callback { cb ->
                    synchronized(stack.lock) { busy = false }
                    cb.onCharacteristicWrite(realGatt, c, BluetoothGatt.GATT_SUCCESS)
                }
            }
            return BluetoothStatusCodes.SUCCESS
        }
    }

    @Implementation(minSdk = Build.VERSION_CODES.TIRAMISU)
    override fun writeDescriptor(descriptor: BluetoothGattDescriptor, value: ByteArray): Int {
        requireNotNull(descriptor.characteristic) { "Descriptor must have a non-null characteristic" }
        val bytes = value.copyOf()
        synchronized(stack.lock) {
            if (state != State.CONNECTED) return BluetoothStatusCodes.ERROR_DEVICE_NOT_CONNECTED
            if (busy) return BluetoothStatusCodes.ERROR_GATT_WRITE_REQUEST_BUSY
            busy = true
            enqueue(Op.WriteDescriptor(descriptor, bytes))
            return BluetoothStatusCodes.SUCCESS
        }
    }

    @Implementation
    @Suppress("DEPRECATION")
    override fun writeDescriptor(descriptor: BluetoothGattDescriptor): Boolean {
        val value = descriptor.value ?: return false
        return writeDescriptor(descriptor, value) == BluetoothStatusCodes.SUCCESS
    }
}

// ------------------------------------------------------------------------------------------------ peripheral

/**
 * `BluetoothManager` on the air: `openGattServer` returns a [BluetoothGattServer] whose shadow
 * ([AirGattServerShadow]) serves on the phone's GATT table. The adapter is Robolectric's (see [AirBluetoothAdapterShadow]).
 */
@Implements(BluetoothManager::class)
class AirBluetoothManagerShadow : ShadowBluetoothManager() {
    @Implementation
    override fun openGattServer(context: Context?, callback: BluetoothGattServerCallback?, transport: Int): BluetoothGattServer? {
        val server = super.openGattServer(context, callback, transport) ?: return null
        Shadow.extract<AirGattServerShadow>(server).attach()
        return server
    }
}

/**
 * A GATT server on the air (the peripheral's end of links), as Android's `BluetoothGattServer`:
 * - `addService` sends the service to the phone's GATT table (`add_service`); `onServiceAdded` follows with the
 *   air's answer, and only then does `getService` / `getServices` return it. The table is the phone's: every open
 *   server's services are in it, and a server that closes (or removes services) takes its own out.
 * - Every open server hears of every central's link (`onConnectionStateChange`, `onMtuChanged`), as Android tells
 *   every registered server app.
 * - Requests go to the server whose service holds the characteristic: `written` → `onCharacteristicWriteRequest`
 *   (a write without response: `responseNeeded` false, no answer), `read_request` → `onCharacteristicReadRequest`,
 *   `descriptor_write_request` → `onDescriptorWriteRequest` (including the CCCD: Android leaves subscriptions to the
 *   app); `sendResponse` answers (`respond`) a pending read or descriptor write, once. Requests naming nothing served
 *   are answered "attribute not found" by the stack.
 * - `notifyCharacteristicChanged` (a notification, `notify`) is paced by the link's window (see [AirLink]) and
 *   confirmed by `onNotificationSent` once the stack handed it to the air; a second one to the same device before
 *   that is refused (busy), since Android demands that an app wait for `onNotificationSent`.
 * - `cancelConnection` closes the central's link; `close` unregisters the server (no callback after it) and, when no
 *   other server is open, drops the centrals' links, as Android's stack drops links that no app uses.
 *
 * Not modelled: indications (`confirm` = true is refused: the air has none), prepared writes and `onExecuteWrite`,
 * descriptor reads, `onPhyUpdate`, connecting out from the server (`BluetoothGattServer.connect`), a server serving
 * over BR/EDR. Notification values longer than MTU − 3 reach the air whole (dropped there, counted `oversized`).
 */
@Implements(BluetoothGattServer::class)
class AirGattServerShadow : ShadowBluetoothGattServer() {
    companion object {
        /** Request ids for writes without response (which Android numbers too, and nobody answers). */
        private var nextWriteId = 1_000_000

        /** A request from the air (under the stack's lock): to the server that serves what it names. */
        internal fun onRequest(stack: AirStack, link: AirLink, m: AirMessage) {
            val uuid = parseAirUuid(m.string("char"))
            var server: AirGattServerShadow? = null
            var characteristic: BluetoothGattCharacteristic? = null
            for (s in stack.servers) {
                characteristic = s.services.firstNotNullOfOrNull { it.getCharacteristic(uuid) }
                if (characteristic != null) {
                    server = s
                    break
                }
            }
            val device = stack.device(link.peer)
            val req = m.int("req")
            when (m.op) {
                "written" -> {
                    val value = m.bytes("value") ?: return
                    val id = nextWriteId++
                    if (server == null || characteristic == null) {
                        airLog("[air-phone ${stack.name}] a write to ${m.string("char")}, which no server serves: dropped")
                        return
                    }
                    server.callback { it.onCharacteristicWriteRequest(device, id, characteristic, false, false, 0, value) }
                }
                "read_request" -> {
                    if (req == null) return
                    if (server == null || characteristic == null) {
                        stack.send("respond", "link" to link.id, "req" to req, "status" to ATT_ATTRIBUTE_NOT_FOUND)
                        return
                    }
                    stack.serverRequests[link.peer to req] = link to req
                    val offset = m.int("offset") ?: 0
                    server.callback { it.onCharacteristicReadRequest(device, req, offset, characteristic) }
                }
                "descriptor_write_request" -> {
                    if (req == null) return
                    val descriptor = parseAirUuid(m.string("descriptor"))?.let { characteristic?.getDescriptor(it) }
                    if (server == null || descriptor == null) {
                        stack.send("respond", "link" to link.id, "req" to req, "status" to ATT_ATTRIBUTE_NOT_FOUND)
                        return
                    }
                    stack.serverRequests[link.peer to req] = link to req
                    val value = m.bytes("value") ?: ByteArray(0)
                    server.callback { it.onDescriptorWriteRequest(device, req, descriptor, false, true, 0, value) }
                }
            }
        }

        /** A central's link ended (under the stack's lock): its requests can no longer be answered. */
        internal fun forgetRequests(stack: AirStack, link: AirLink) {
            stack.serverRequests.entries.removeIf { it.value.first === link }
        }
    }

    private val stack: AirStack
        get() = AirStack.current()

    @Volatile
    private var open = false

    // Under the stack's lock.
    private val services = ArrayList<BluetoothGattService>()
    private val adding = ArrayDeque<BluetoothGattService>()

    /** Registers the server with the stack (from `openGattServer`). */
    internal fun attach() {
        synchronized(stack.lock) {
            open = true
            stack.servers.add(this)
        }
    }

    /** Posts a callback to the app, dropped if the server is closed by the time it runs. */
    private fun callback(body: (BluetoothGattServerCallback) -> Unit) {
        val cb = gattServerCallback ?: return
        stack.post { if (open) body(cb) }
    }

    // --- what the air says (under the stack's lock) ---

    internal fun onServiceAdded(uuid: String?, ok: Boolean) {
        val service = adding.removeFirstOrNull() ?: return
        if (parseAirUuid(uuid) != service.uuid) airLog("[air-phone ${stack.name}] service_added for $uuid, expected ${service.uuid}")
        if (ok) services.add(service)
        callback { it.onServiceAdded(if (ok) BluetoothGatt.GATT_SUCCESS else BluetoothGatt.GATT_FAILURE, service) }
    }

    internal fun onConnectionChange(device: BluetoothDevice, status: Int, connected: Boolean) {
        val state = if (connected) BluetoothProfile.STATE_CONNECTED else BluetoothProfile.STATE_DISCONNECTED
        callback { it.onConnectionStateChange(device, status, state) }
    }

    internal fun onMtu(device: BluetoothDevice, mtu: Int) {
        callback { it.onMtuChanged(device, mtu) }
    }

    // --- the app's calls ---

    @Implementation
    override fun addService(service: BluetoothGattService): Boolean = synchronized(stack.lock) {
        if (!open) return false
        adding.addLast(service)
        stack.serviceAdds.addLast(this)
        stack.send("add_service", "service" to serviceJson(service))
        true
    }

    @Implementation
    override fun removeService(service: BluetoothGattService): Boolean = synchronized(stack.lock) {
        if (!open || !services.remove(service)) return false
        republish()
        true
    }

    @Implementation
    override fun clearServices() {
        synchronized(stack.lock) {
            if (!open) return
            services.clear()
            republish()
        }
    }

    /**
     * The air only clears a phone's whole table: clear it, and add again what the open servers still serve or are
     * adding (an `add_service` not yet answered was added before the clear: its answer still comes, to the server
     * that asked).
     */
    private fun republish() {
        stack.send("remove_services")
        for (server in stack.servers) {
            for (service in server.services + server.adding) {
                stack.serviceAdds.addLast(null)
                stack.send("add_service", "service" to serviceJson(service))
            }
        }
    }

    @Implementation
    override fun getServices(): List<BluetoothGattService> = synchronized(stack.lock) { ArrayList(services) }

    @Implementation
    override fun getService(uuid: UUID?): BluetoothGattService? =
        synchronized(stack.lock) { services.firstOrNull { it.uuid == uuid } }

    @Implementation
    override fun sendResponse(device: BluetoothDevice?, requestId: Int, status: Int, offset: Int, value: ByteArray?): Boolean {
        val address = device?.address ?: return false
        synchronized(stack.lock) {
            if (!open) return false
            val (link, req) = stack.serverRequests.remove(address to requestId) ?: return false
            if (!link.up) return false
            stack.send("respond", "link" to link.id, "req" to req, "status" to status, "value" to value)
            return true
        }
    }

    @Implementation(minSdk = Build.VERSION_CODES.TIRAMISU)
    protected fun notifyCharacteristicChanged(
        device: BluetoothDevice,
        characteristic: BluetoothGattCharacteristic,
        confirm: Boolean,
        value: ByteArray,
    ): Int = notify(device, characteristic, confirm, value)

    @Implementation
    @Suppress("DEPRECATION")
    protected fun notifyCharacteristicChanged(
        device: BluetoothDevice,
        characteristic: BluetoothGattCharacteristic,
        confirm: Boolean,
    ): Boolean {
        val value = characteristic.value ?: return false
        return notify(device, characteristic, confirm, value) == BluetoothStatusCodes.SUCCESS
    }

    private fun notify(device: BluetoothDevice, c: BluetoothGattCharacteristic, confirm: Boolean, value: ByteArray): Int {
        requireNotNull(c.service) { "Characteristic must have a non-null service" }
        require(value.size <= GATT_MAX_ATTR_LEN) { "notification should not be longer than max length of an attribute value" }
        val bytes = value.copyOf()
        synchronized(stack.lock) {
            if (!open) return BluetoothStatusCodes.ERROR_PROFILE_SERVICE_NOT_BOUND
            val link = stack.centrals[device.address] ?: return BluetoothStatusCodes.ERROR_DEVICE_NOT_CONNECTED
            if (confirm) {
                airLog("[air-phone ${stack.name}] an indication: not on the air (only notifications are)")
                return BluetoothStatusCodes.ERROR_UNKNOWN
            }
            if (link.notifying) return BluetoothStatusCodes.ERROR_GATT_WRITE_REQUEST_BUSY
            link.notifying = true
            stack.sendPacket(link, air("notify", "link" to link.id, "char" to airUuid(c.uuid), "value" to bytes)) {
                val cb = gattServerCallback
                stack.post {
                    synchronized(stack.lock) { link.notifying = false }
                    if (open) cb?.onNotificationSent(device, BluetoothGatt.GATT_SUCCESS)
                }
            }
            return BluetoothStatusCodes.SUCCESS
        }
    }

    @Implementation
    override fun cancelConnection(device: BluetoothDevice?) {
        val address = device?.address ?: return
        synchronized(stack.lock) {
            val link = stack.centrals[address] ?: return
            stack.send("disconnect", "link" to link.id)
        }
    }

    @Implementation
    override fun close() {
        synchronized(stack.lock) {
            if (!open) return
            open = false
            stack.servers.remove(this)
            val had = services.isNotEmpty() || adding.isNotEmpty()
            services.clear()
            adding.clear()
            if (had) republish()
            if (stack.servers.isEmpty()) {
                for (link in stack.centrals.values) stack.send("disconnect", "link" to link.id)
            }
        }
    }
}
