// The Android phone's Bluetooth stack on the simulated air (core/air/PROTOCOL.md): what Android's Bluetooth service
// and controller do below the framework classes, played by one connection to the air server. The framework classes
// the radio calls are Robolectric shadows (AirGattShadows.kt, AirLeShadows.kt, AirL2capShadows.kt) that hand their
// work to this stack; the stack turns what the air says into the framework's callbacks.
package dev.shoaldb.android.air

import android.bluetooth.BluetoothDevice
import android.bluetooth.BluetoothManager
import android.content.Context
import android.content.pm.PackageManager
import org.robolectric.RuntimeEnvironment
import org.robolectric.annotation.Config
import java.util.UUID
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors
import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.atomic.AtomicInteger

/**
 * Robolectric classes whose phone is on the air: the Bluetooth framework classes the radio uses are these shadows
 * (subclasses say only their SDK; Robolectric merges the shadows of a class's ancestors into its configuration).
 */
@Config(
    shadows = [
        AirBluetoothAdapterShadow::class, AirBluetoothManagerShadow::class, AirBluetoothDeviceShadow::class,
        AirGattShadow::class, AirGattServerShadow::class, AirLeScannerShadow::class, AirLeAdvertiserShadow::class,
        AirSocketShadow::class, AirServerSocketShadow::class,
    ],
)
abstract class OnTheAir

/** The largest ATT MTU Android's stack accepts (`hello`'s `mtu`). */
internal const val ANDROID_ATT_MTU = 517

/** The ATT MTU of a link before any exchange. */
internal const val DEFAULT_ATT_MTU = 23

/** The air's statuses in `disconnected`: the other end closed the link, it was lost, this end closed it. */
internal const val AIR_REMOTE_CLOSED = 19
internal const val AIR_LOST = 8
internal const val AIR_LOCAL_CLOSED = 22

/**
 * One GATT link of this phone on the air, as central or as peripheral: its ATT MTU and the flow control of the
 * direction this end sends in (writes without response as central, notifications as peripheral).
 *
 * Flow control models the controller's buffers: Android's stack hands a packet to the controller, and reports the
 * operation complete (`onCharacteristicWrite`, `onNotificationSent`), as long as fewer than [window] of this end's
 * packets are on their way; once [window] are, the next packet waits in the stack, and its operation completes when
 * a `delivered` frees a place. So an app that waits for each completion (as Android demands) never overruns the
 * air's window, and one that does not is refused (busy) by the shadows before it could.
 */
internal class AirLink(val id: Int, val peer: String, val central: Boolean, var mtu: Int, val window: Int) {
    /** This end's packets on their way (sent, not yet `delivered`). */
    var inFlight = 0

    /** Packets waiting for room in the window, each with what to do once it goes out. */
    val waiting = ArrayDeque<Pair<AirMessage, () -> Unit>>()

    /** Central end: the GATT client that dialled it. */
    var gatt: AirGattShadow? = null

    /** Peripheral end: a notification not yet sent (Android's GATT server sends one at a time per device). */
    var notifying = false

    /** Whether the link is still up (false once `disconnected` arrived). */
    var up = true
}

/**
 * The phone on the air: its connection (`hello` role phone, platform android, [ANDROID_ATT_MTU]), its address and
 * window, and every piece of Bluetooth state the shadows share, guarded by [lock]. One reader thread handles what
 * the air says, in order; callbacks to the app run on [binder], one thread, in the order they were posted (Android
 * calls an app's Bluetooth callbacks on binder threads, never on the thread that made the call).
 *
 * One phone per process: [current] is the phone the shadows speak for.
 */
internal class AirStack private constructor(
    /** The phone's name on the air. */
    val name: String,
    private val connection: AirConnection,
    /** How the other phones name this one (`peer`). */
    val address: String,
    /** How many packets each direction of a link carries at a time (`welcome`). */
    val window: Int,
) {
    companion object {
        @Volatile
        private var phone: AirStack? = null

        /** The phone the shadows speak for; throws when the process has not joined the air. */
        fun current(): AirStack = phone ?: throw IllegalStateException("this process is not a phone on the air")

        /**
         * Joins the air at [air] (`host:port`) as the Android phone [name]: `hello`, then `welcome`. The stack reads
         * from the air from now on.
         */
        fun join(air: String, name: String): AirStack {
            check(phone == null) { "already on the air" }
            val connection = AirConnection(air, name)
            connection.send(air("hello", "role" to "phone", "phone" to name, "platform" to "android", "mtu" to ANDROID_ATT_MTU))
            val welcome = connection.read() ?: throw IllegalStateException("the air closed the connection of $name")
            val address = welcome.string("address")
            if (welcome.op != "welcome" || address == null) {
                connection.close()
                throw IllegalStateException("the air did not welcome $name: $welcome")
            }
            val stack = AirStack(name, connection, address, (welcome.int("window") ?: 8).coerceAtLeast(1))
            phone = stack
            stack.startReading()
            return stack
        }
    }

    /** Guards every piece of state below and in the shadows. Never held while calling the app. */
    val lock = Any()

    private val binder: ExecutorService = Executors.newSingleThreadExecutor { r ->
        Thread(r, "Binder:air $name").apply { isDaemon = true }
    }
    private val refs = AtomicInteger()
    private val commands = LinkedBlockingQueue<Result<AirMessage>>()

    // --- GATT (under lock) ---
    /** Every link of this phone, by id. */
    val links = HashMap<Int, AirLink>()

    /** Peripheral role: the link each central (by address) has to this phone. */
    val centrals = HashMap<String, AirLink>()

    /** Connection attempts by `ref`. */
    val attempts = HashMap<Int, AirGattShadow>()

    /** The open GATT servers, in the order they were opened. */
    val servers = ArrayList<AirGattServerShadow>()

    /** `add_service` messages not yet answered, in order: the server that asked (null: a silent re-add). */
    val serviceAdds = ArrayDeque<AirGattServerShadow?>()

    /** Peripheral role: requests the app may answer (`sendResponse`), by (central's address, request id). */
    val serverRequests = HashMap<Pair<String, Int>, Pair<AirLink, Int>>()

    // --- advertising and scanning (under lock) ---
    val advertising = AirAdvertising(this)
    val scanning = AirScanning(this)

    // --- L2CAP (under lock) ---
    val l2cap = AirL2cap(this)

    /** A fresh `ref` for a connection attempt or an L2CAP open. */
    fun newRef(): Int = refs.incrementAndGet()

    /** Sends a message to the air; false when the phone has left it. */
    fun send(op: String, vararg fields: Pair<String, Any?>): Boolean = connection.send(air(op, *fields))

    /** Sends an already built message. */
    fun send(message: AirMessage): Boolean = connection.send(message)

    /** Runs [task] on the binder thread, after the callbacks already posted; what it throws is logged. */
    fun post(task: () -> Unit) {
        try {
            binder.execute {
                try {
                    task()
                } catch (t: Throwable) {
                    airLog("[air-phone $name] a Bluetooth callback threw: $t")
                    t.printStackTrace()
                }
            }
        } catch (_: Exception) {
            // The binder is gone: the phone is leaving.
        }
    }

    /** The next command (`do`) the driver sent; null once the air closed the connection. Blocks. */
    fun nextCommand(): AirMessage? = commands.take().getOrNull()

    /** Answers a command: `{"op":"done","id":N,...}`. */
    fun done(id: Any?, fields: Map<String, Any?>) {
        connection.send(air("done", "id" to id, *fields.entries.map { it.key to it.value }.toTypedArray()))
    }

    /** Leaves the air: closes the connection; the process is no longer a phone on it (callbacks not yet run are dropped). */
    fun leave() {
        connection.close()
        binder.shutdownNow()
        if (phone === this) phone = null
    }

    /** The app's context (for permission checks). */
    val context: Context
        get() = RuntimeEnvironment.getApplication()

    /** Whether the app holds [permission]. */
    fun granted(permission: String): Boolean =
        context.checkSelfPermission(permission) == PackageManager.PERMISSION_GRANTED

    /** The device object of an address, as Android makes them (a new object each time, equal by address). */
    fun device(address: String): BluetoothDevice =
        context.getSystemService(BluetoothManager::class.java).adapter.getRemoteDevice(address)

    // ------------------------------------------------------------------------------------------------ flow control

    /** Sends a write without response or a notification on [link], through its window; [taken] once it went. */
    fun sendPacket(link: AirLink, message: AirMessage, taken: () -> Unit) {
        if (!link.up) return
        if (link.inFlight < link.window) {
            link.inFlight++
            send(message)
            taken()
        } else {
            link.waiting.addLast(message to taken)
        }
    }

    private fun delivered(link: AirLink) {
        link.inFlight = (link.inFlight - 1).coerceAtLeast(0)
        while (link.up && link.inFlight < link.window) {
            val (message, taken) = link.waiting.removeFirstOrNull() ?: break
            link.inFlight++
            send(message)
            taken()
        }
    }

    // ------------------------------------------------------------------------------------------------ the air says

    private fun startReading() {
        Thread({
            while (true) {
                val message = connection.read() ?: break
                try {
                    handle(message)
                } catch (t: Throwable) {
                    airLog("[air-phone $name] handling $message failed: $t")
                    t.printStackTrace()
                }
            }
            commands.put(Result.failure(IllegalStateException("the air closed the connection")))
        }, "air reader $name").apply {
            isDaemon = true
            start()
        }
    }

    private fun handle(m: AirMessage) {
        when (m.op) {
            "do" -> commands.put(Result.success(m))
            "error" -> airLog("[air-phone $name] the air says: ${m.string("what")}")
            "advertising" -> advertising.onAdvertising(m.bool("ok") == true, m.string("reason"))
            "seen" -> scanning.onSeen(m)
            "connected", "connect_failed", "incoming", "mtu", "disconnected", "delivered" -> synchronized(lock) { linkEvent(m) }
            "services", "services_changed", "read_result", "descriptor_written", "notified" -> synchronized(lock) {
                val link = m.int("link")?.let { links[it] } ?: return@synchronized
                link.gatt?.onLinkMessage(m)
            }
            "service_added" -> synchronized(lock) {
                val server = serviceAdds.removeFirstOrNull()
                server?.onServiceAdded(m.string("uuid"), m.bool("ok") == true)
            }
            "read_request", "descriptor_write_request", "written" -> synchronized(lock) {
                val link = m.int("link")?.let { links[it] }
                if (link == null || link.central) return@synchronized
                AirGattServerShadow.onRequest(this, link, m)
            }
            "l2cap_listening", "l2cap_opened", "l2cap_failed", "l2cap_incoming", "data", "closed" -> l2cap.onMessage(m)
            else -> airLog("[air-phone $name] unknown message from the air: $m")
        }
    }

    /** Links coming and going, their MTU and their flow control. Under [lock]. */
    private fun linkEvent(m: AirMessage) {
        when (m.op) {
            "connected" -> {
                val ref = m.int("ref") ?: return
                val id = m.int("link") ?: return
                val gatt = attempts.remove(ref)
                if (gatt == null) {
                    send("disconnect", "link" to id) // the attempt was given up meanwhile
                    return
                }
                val link = AirLink(id, gatt.peerAddress, central = true, mtu = m.int("mtu") ?: DEFAULT_ATT_MTU, window = m.int("window") ?: window)
                link.gatt = gatt
                links[id] = link
                gatt.onConnected(link)
            }
            "connect_failed" -> {
                val ref = m.int("ref") ?: return
                attempts.remove(ref)?.onConnectFailed(m.int("status") ?: 133)
            }
            "incoming" -> {
                val id = m.int("link") ?: return
                val peer = m.string("peer") ?: return
                val link = AirLink(id, peer, central = false, mtu = m.int("mtu") ?: DEFAULT_ATT_MTU, window = m.int("window") ?: window)
                links[id] = link
                centrals[peer] = link
                val device = device(peer)
                for (server in servers.toList()) server.onConnectionChange(device, 0, connected = true)
            }
            "mtu" -> {
                val link = m.int("link")?.let { links[it] } ?: return
                val mtu = m.int("mtu") ?: return
                link.mtu = mtu
                if (link.central) {
                    link.gatt?.onMtu(mtu)
                } else {
                    val device = device(link.peer)
                    for (server in servers.toList()) server.onMtu(device, mtu)
                }
            }
            "disconnected" -> {
                val link = m.int("link")?.let { links.remove(it) } ?: return
                link.up = false
                link.waiting.clear()
                val status = androidStatus(m.int("status") ?: AIR_LOST)
                if (link.central) {
                    link.gatt?.onDisconnected(status)
                } else {
                    if (centrals[link.peer] === link) centrals.remove(link.peer)
                    AirGattServerShadow.forgetRequests(this, link)
                    val device = device(link.peer)
                    for (server in servers.toList()) server.onConnectionChange(device, status, connected = false)
                }
            }
            "delivered" -> {
                val link = m.int("link")?.let { links[it] } ?: return
                delivered(link)
            }
        }
    }

    /**
     * The status of `onConnectionStateChange` for a link that ended: the air's own (19: the peer closed it, 8: lost
     * — GATT_CONN_TERMINATE_PEER_USER and GATT_CONN_TIMEOUT, as Android reports them), except that a link this phone
     * closed itself ends with GATT_SUCCESS, as after `BluetoothGatt.disconnect()`.
     */
    private fun androidStatus(air: Int): Int = if (air == AIR_LOCAL_CLOSED) 0 else air
}

// ---------------------------------------------------------------------------------------------------- UUIDs

private const val BASE_UUID_SUFFIX = "-0000-1000-8000-00805f9b34fb"

/** A UUID as the air writes it: the full form, lower case (the air lower-cases what iPhones write in upper case). */
internal fun airUuid(uuid: UUID): String = uuid.toString()

/** The short form of a descriptor UUID for the air (`"2902"`) when it is a 16-bit Bluetooth UUID, else the full form. */
internal fun airDescriptor(uuid: UUID): String {
    val text = uuid.toString()
    return if (text.startsWith("0000") && text.endsWith(BASE_UUID_SUFFIX)) text.substring(4, 8) else text
}

/** A UUID the air wrote: full, or the 16- or 32-bit short form of a Bluetooth UUID; null when unreadable. */
internal fun parseAirUuid(text: String?): UUID? {
    if (text == null) return null
    return try {
        when (text.length) {
            4 -> UUID.fromString("0000$text$BASE_UUID_SUFFIX")
            8 -> UUID.fromString("$text$BASE_UUID_SUFFIX")
            else -> UUID.fromString(text)
        }
    } catch (_: IllegalArgumentException) {
        null
    }
}

/** Whether [uuid] is a 16-bit Bluetooth UUID (`0000xxxx-0000-1000-8000-00805f9b34fb`). */
internal fun is16Bit(uuid: UUID): Boolean = uuid.toString().let { it.startsWith("0000") && it.endsWith(BASE_UUID_SUFFIX) }

/** Whether [uuid] is a 32-bit Bluetooth UUID (and not a 16-bit one). */
internal fun is32Bit(uuid: UUID): Boolean = !is16Bit(uuid) && uuid.toString().endsWith(BASE_UUID_SUFFIX)
