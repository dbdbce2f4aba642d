// The central's connections: dials a peer over LE (connect, MTU, service discovery, PSM read), then opens its L2CAP
// channel or subscribes to TX over GATT; the GATT client's callbacks, and the connection over GATT this yields.
package dev.shoaldb.android

import android.annotation.SuppressLint
import android.bluetooth.BluetoothAdapter
import android.bluetooth.BluetoothDevice
import android.bluetooth.BluetoothGatt
import android.bluetooth.BluetoothGattCallback
import android.bluetooth.BluetoothGattCharacteristic
import android.bluetooth.BluetoothGattDescriptor
import android.bluetooth.BluetoothProfile
import android.bluetooth.BluetoothSocket
import android.bluetooth.BluetoothStatusCodes
import android.os.Build
import android.util.Log
import dev.shoaldb.BluetoothChannel
import dev.shoaldb.android.BleSession.Companion.EARLY_PACKETS_MAX
import dev.shoaldb.android.BleSession.Companion.MTU_TIMEOUT_MS
import java.io.IOException
import java.util.UUID

/**
 * The connections a [BleSession] dials: one attempt per address at a time, each ending in `connected` or
 * `connectFailed` (or cancelled by the core, or timed out after [connectTimeoutMs]). L2CAP is tried on API 29+ when
 * [useL2cap] and the peer publishes a PSM. Touched only on the session's loop.
 */
@SuppressLint("MissingPermission") // Every operation is preceded by a permission check or caught SecurityException.
internal class BleCentral(
    private val session: BleSession,
    private val useL2cap: Boolean,
    private val connectTimeoutMs: Long,
) {
    companion object {
        private val ENABLE_NOTIFICATION: ByteArray = BluetoothGattDescriptor.ENABLE_NOTIFICATION_VALUE.copyOf()
    }

    private val attempts = HashMap<String, CentralLink>()

    /** Dials [address]: connect, MTU, discovery, PSM (L2CAP) or TX subscription; `connected` or `connectFailed`. */
    fun connect(address: String) {
        if (session.closed) return
        if (attempts.containsKey(address)) {
            bleLog(Log.DEBUG, "already connecting to $address")
            return
        }
        val adapter = session.adapter
        val refused = when {
            adapter == null -> "no Bluetooth"
            !session.radioOn() -> "Bluetooth is off"
            !BluetoothAdapter.checkBluetoothAddress(address) -> "not a Bluetooth address"
            !ShoalBluetoothPermissions.canConnect(session.context) ->
                "missing permission (see ShoalBluetoothPermissions)"
            else -> null
        }
        if (refused != null || adapter == null) {
            bleLog(Log.INFO, "cannot connect to $address: $refused")
            session.sink.connectFailed(address)
            return
        }
        val link = CentralLink(address)
        attempts[address] = link
        link.start(adapter)
    }

    /** Gives up a connection attempt (no report). */
    fun cancelConnect(address: String) {
        attempts[address]?.cancel()
    }

    /** Bluetooth went off: every attempt fails. */
    fun radioDown() {
        attempts.values.toList().forEach { it.fail("Bluetooth went off") }
    }

    /** The session stops: every attempt is given up, without a report. */
    fun close() {
        attempts.values.toList().forEach { it.cancel() }
        attempts.clear()
    }

    private enum class Stage { CONNECTING, MTU, DISCOVERING, READING_PSM, L2CAP, SUBSCRIBING, CONNECTED, CLOSED }

    /** One connection this phone dials, from `connect` until it ends. */
    private inner class CentralLink(val address: String) {
        var stage = Stage.CONNECTING
        var gatt: BluetoothGatt? = null
        var device: BluetoothDevice? = null
        var attMtu = ShoalGattLayout.DEFAULT_ATT_MTU
        var rx: BluetoothGattCharacteristic? = null
        var tx: BluetoothGattCharacteristic? = null
        var socket: BluetoothSocket? = null
        var conn: Conn? = null
        val early = ArrayList<ByteArray>()
        var timer: Cancellable? = null
        var stepTimer: Cancellable? = null

        fun start(adapter: BluetoothAdapter) {
            timer = session.loop.schedule(connectTimeoutMs) { fail("timed out") }
            try {
                val d = adapter.getRemoteDevice(address)
                device = d
                gatt = d.connectGatt(session.context, false, ClientCallback(this), BluetoothDevice.TRANSPORT_LE)
                if (gatt == null) fail("connectGatt refused")
            } catch (t: Throwable) {
                fail("connectGatt failed: $t")
            }
        }

        fun onConnectionState(g: BluetoothGatt, status: Int, newState: Int) {
            if (stage == Stage.CLOSED || g !== gatt) return
            if (newState == BluetoothProfile.STATE_CONNECTED && status == BluetoothGatt.GATT_SUCCESS) {
                if (stage != Stage.CONNECTING) return
                stage = Stage.MTU
                val asked = try {
                    g.requestMtu(ShoalGattLayout.REQUESTED_MTU)
                } catch (_: Throwable) {
                    false
                }
                if (asked) {
                    stepTimer = session.loop.schedule(MTU_TIMEOUT_MS) { if (stage == Stage.MTU) discover() }
                } else {
                    discover()
                }
            } else if (newState == BluetoothProfile.STATE_DISCONNECTED || status != BluetoothGatt.GATT_SUCCESS) {
                val c = conn
                if (c != null) {
                    session.lost(c, "disconnected (status $status)")
                } else {
                    fail("connection failed (status $status)")
                }
            }
        }

        /**
         * The peer's GATT table changed (API 31+): a Shoal peer's app restarted or its sync stopped, so this link's
         * session cannot go on. Lost when connected, a failed attempt before.
         */
        fun onServiceChanged(g: BluetoothGatt) {
            if (stage == Stage.CLOSED || g !== gatt) return
            val c = conn
            if (c != null) session.lost(c, "the peer's services changed") else fail("the peer's services changed")
        }

        fun onMtu(mtu: Int, status: Int) {
            if (status == BluetoothGatt.GATT_SUCCESS && mtu >= ShoalGattLayout.DEFAULT_ATT_MTU) attMtu = mtu
            when (stage) {
                Stage.MTU -> discover()
                Stage.CONNECTED -> (conn as? CentralGattConn)?.let { session.sink.mtuChanged(it.id, attMtu) }
                else -> {}
            }
        }

        private fun discover() {
            stepTimer?.cancel()
            stepTimer = null
            stage = Stage.DISCOVERING
            val started = try {
                gatt?.discoverServices() == true
            } catch (_: Throwable) {
                false
            }
            if (!started) fail("service discovery refused")
        }

        fun onServicesDiscovered(status: Int) {
            if (stage != Stage.DISCOVERING) return
            if (status != BluetoothGatt.GATT_SUCCESS) return fail("service discovery failed (status $status)")
            val service = gatt?.getService(session.uuids.service) ?: return fail("no Shoal service")
            rx = service.getCharacteristic(session.uuids.rx)
            tx = service.getCharacteristic(session.uuids.tx)
            if (rx == null || tx == null) return fail("the Shoal service lacks RX or TX")
            val psmCharacteristic = service.getCharacteristic(session.uuids.psm)
            if (useL2cap && Build.VERSION.SDK_INT >= Build.VERSION_CODES.Q && psmCharacteristic != null) {
                stage = Stage.READING_PSM
                val started = try {
                    gatt?.readCharacteristic(psmCharacteristic) == true
                } catch (_: Throwable) {
                    false
                }
                if (!started) subscribe()
            } else {
                subscribe()
            }
        }

        fun onRead(uuid: UUID?, value: ByteArray?, status: Int) {
            if (stage != Stage.READING_PSM || uuid != session.uuids.psm) return
            val psm = if (status == BluetoothGatt.GATT_SUCCESS) ShoalGattLayout.parsePsm(value) else 0
            if (psm != 0 && Build.VERSION.SDK_INT >= Build.VERSION_CODES.Q) openL2cap(psm) else subscribe()
        }

        private fun openL2cap(psm: Int) {
            if (Build.VERSION.SDK_INT < Build.VERSION_CODES.Q) return subscribe()
            val d = device ?: return subscribe()
            val s = try {
                d.createInsecureL2capChannel(psm)
            } catch (t: Throwable) {
                bleLog(Log.INFO, "cannot create an L2CAP channel to $address: GATT instead", t)
                return subscribe()
            }
            stage = Stage.L2CAP
            socket = s
            startDaemon("Shoal BLE L2CAP connect") {
                val error = try {
                    s.connect()
                    null
                } catch (e: IOException) {
                    e
                }
                if (!session.loop.post { onL2capConnect(s, error) }) closeQuietly(s)
            }
        }

        private fun onL2capConnect(s: BluetoothSocket, error: IOException?) {
            if (stage != Stage.L2CAP || socket !== s) {
                closeQuietly(s)
                return
            }
            socket = null
            if (error != null) {
                bleLog(Log.INFO, "L2CAP channel to $address failed ($error): GATT instead")
                closeQuietly(s)
                return subscribe()
            }
            val c = try {
                L2capConn(session, s, address, central = true, release = { end() })
            } catch (t: Throwable) {
                bleLog(Log.INFO, "L2CAP channel to $address unusable ($t): GATT instead")
                closeQuietly(s)
                return subscribe()
            }
            connectedWith(c)
        }

        private fun subscribe() {
            stage = Stage.SUBSCRIBING
            val g = gatt ?: return fail("no GATT")
            val t = tx ?: return fail("no TX")
            val enabled = try {
                g.setCharacteristicNotification(t, true)
            } catch (_: Throwable) {
                false
            }
            if (!enabled) return fail("cannot enable notifications")
            val cccd = t.getDescriptor(ShoalGattLayout.CCCD) ?: return fail("TX has no CCCD")
            val started = try {
                if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.TIRAMISU) {
                    g.writeDescriptor(cccd, ENABLE_NOTIFICATION) == BluetoothStatusCodes.SUCCESS
                } else {
                    @Suppress("DEPRECATION")
                    cccd.value = ENABLE_NOTIFICATION
                    @Suppress("DEPRECATION")
                    g.writeDescriptor(cccd)
                }
            } catch (_: Throwable) {
                false
            }
            if (!started) fail("cannot subscribe to TX")
        }

        fun onDescriptorWrite(uuid: UUID?, status: Int) {
            if (stage != Stage.SUBSCRIBING || uuid != ShoalGattLayout.CCCD) return
            if (status != BluetoothGatt.GATT_SUCCESS) return fail("subscribing to TX failed (status $status)")
            connectedWith(CentralGattConn(this))
        }

        private fun connectedWith(c: Conn) {
            stage = Stage.CONNECTED
            conn = c
            timer?.cancel()
            stepTimer?.cancel()
            if (attempts[address] === this) attempts.remove(address)
            try {
                gatt?.requestConnectionPriority(BluetoothGatt.CONNECTION_PRIORITY_HIGH)
            } catch (_: Throwable) {
            }
            session.register(c)
            if (c is L2capConn) c.startReading()
            for (packet in early) session.sink.received(c.id, packet)
            early.clear()
        }

        fun onNotification(uuid: UUID?, value: ByteArray?) {
            if (uuid != session.uuids.tx || value == null) return
            val c = conn
            if (stage == Stage.CONNECTED && c is CentralGattConn) {
                session.sink.received(c.id, value)
            } else if (stage == Stage.SUBSCRIBING && early.size < EARLY_PACKETS_MAX) {
                early.add(value)
            }
        }

        fun onWrite(status: Int) {
            (conn as? CentralGattConn)?.queue?.onComplete(status == BluetoothGatt.GATT_SUCCESS)
        }

        /** The attempt failed: closes it and reports `connectFailed`. */
        fun fail(why: String) {
            if (stage == Stage.CLOSED || stage == Stage.CONNECTED) return
            bleLog(Log.INFO, "connecting to $address failed: $why")
            end()
            if (attempts[address] === this) attempts.remove(address)
            session.sink.connectFailed(address)
        }

        /** The core gave up the attempt: closes it without a report. */
        fun cancel() {
            if (stage == Stage.CONNECTED) return
            end()
            if (attempts[address] === this) attempts.remove(address)
        }

        /** Releases the GATT client and any L2CAP socket. */
        fun end() {
            stage = Stage.CLOSED
            timer?.cancel()
            stepTimer?.cancel()
            socket?.let { closeQuietly(it) }
            socket = null
            early.clear()
            val g = gatt ?: return
            gatt = null
            quietly { g.disconnect() }
            quietly { g.close() }
        }
    }

    /** A dialled connection over GATT: packets go out as writes without response to RX, come in as TX notifications. */
    private inner class CentralGattConn(val link: CentralLink) : Conn(session, link.address, central = true) {
        override val channel = BluetoothChannel.Gatt(link.attMtu.toUShort())

        override fun transmit(packet: ByteArray): SendAttempt {
            val g = link.gatt ?: return SendAttempt.FAILED
            val rx = link.rx ?: return SendAttempt.FAILED
            return if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.TIRAMISU) {
                statusToAttempt(g.writeCharacteristic(rx, packet, BluetoothGattCharacteristic.WRITE_TYPE_NO_RESPONSE))
            } else {
                rx.writeType = BluetoothGattCharacteristic.WRITE_TYPE_NO_RESPONSE
                @Suppress("DEPRECATION")
                rx.value = packet
                @Suppress("DEPRECATION")
                if (g.writeCharacteristic(rx)) SendAttempt.STARTED else SendAttempt.BUSY
            }
        }

        override fun shutdown() {
            super.shutdown()
            link.end()
        }
    }

    /** The GATT client callbacks of one [CentralLink]: each only posts to the loop. */
    private inner class ClientCallback(private val link: CentralLink) : BluetoothGattCallback() {
        private fun onLoop(task: () -> Unit) {
            session.loop.post { if (!session.closed) task() }
        }

        override fun onConnectionStateChange(gatt: BluetoothGatt?, status: Int, newState: Int) {
            gatt ?: return
            onLoop { link.onConnectionState(gatt, status, newState) }
        }

        /** API 31+ (never called before). */
        override fun onServiceChanged(gatt: BluetoothGatt) {
            onLoop { link.onServiceChanged(gatt) }
        }

        override fun onMtuChanged(gatt: BluetoothGatt?, mtu: Int, status: Int) {
            onLoop { link.onMtu(mtu, status) }
        }

        override fun onServicesDiscovered(gatt: BluetoothGatt?, status: Int) {
            onLoop { link.onServicesDiscovered(status) }
        }

        @Deprecated("Deprecated in API 33")
        override fun onCharacteristicRead(gatt: BluetoothGatt?, characteristic: BluetoothGattCharacteristic?, status: Int) {
            val uuid = characteristic?.uuid
            @Suppress("DEPRECATION")
            val value = characteristic?.value?.copyOf()
            onLoop { link.onRead(uuid, value, status) }
        }

        override fun onCharacteristicRead(
            gatt: BluetoothGatt,
            characteristic: BluetoothGattCharacteristic,
            value: ByteArray,
            status: Int,
        ) {
            val uuid = characteristic.uuid
            val bytes = value.copyOf()
            onLoop { link.onRead(uuid, bytes, status) }
        }

        override fun onDescriptorWrite(gatt: BluetoothGatt?, descriptor: BluetoothGattDescriptor?, status: Int) {
            val uuid = descriptor?.uuid
            onLoop { link.onDescriptorWrite(uuid, status) }
        }

        override fun onCharacteristicWrite(gatt: BluetoothGatt?, characteristic: BluetoothGattCharacteristic?, status: Int) {
            onLoop { link.onWrite(status) }
        }

        @Deprecated("Deprecated in API 33")
        override fun onCharacteristicChanged(gatt: BluetoothGatt?, characteristic: BluetoothGattCharacteristic?) {
            val uuid = characteristic?.uuid
            @Suppress("DEPRECATION")
            val value = characteristic?.value?.copyOf()
            onLoop { link.onNotification(uuid, value) }
        }

        override fun onCharacteristicChanged(
            gatt: BluetoothGatt,
            characteristic: BluetoothGattCharacteristic,
            value: ByteArray,
        ) {
            val uuid = characteristic.uuid
            val bytes = value.copyOf()
            onLoop { link.onNotification(uuid, bytes) }
        }
    }

    // ------------------------------------------------------------------------------------------------ for tests

    /** Addresses being dialled. */
    internal val attemptsForTest: Set<String>
        get() = attempts.keys.toSet()
}
