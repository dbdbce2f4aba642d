// The peripheral's GATT server: Shoal's service (RX, TX, PSM), each central that subscribes to TX reported as a
// connection (packets out as notifications, in as writes to RX), and the L2CAP listener whose PSM the service serves.
package dev.shoaldb.android

import android.annotation.SuppressLint
import android.bluetooth.BluetoothAdapter
import android.bluetooth.BluetoothDevice
import android.bluetooth.BluetoothGatt
import android.bluetooth.BluetoothGattCharacteristic
import android.bluetooth.BluetoothGattDescriptor
import android.bluetooth.BluetoothGattServer
import android.bluetooth.BluetoothGattServerCallback
import android.bluetooth.BluetoothGattService
import android.bluetooth.BluetoothProfile
import android.bluetooth.BluetoothServerSocket
import android.bluetooth.BluetoothSocket
import android.os.Build
import android.util.Log
import dev.shoaldb.BluetoothChannel
import java.io.IOException

/**
 * The GATT server of a [BleSession] (and its L2CAP listener, on API 29+ when [useL2cap]), opened by [BleAdvertiser]
 * before it advertises, closed when the session stops or Bluetooth goes off. Touched only on the session's loop.
 */
@SuppressLint("MissingPermission") // Every operation is preceded by a permission check or caught SecurityException.
internal class BleGattServer(private val session: BleSession, private val useL2cap: Boolean) {
    private var server: BluetoothGattServer? = null
    private var serverCallback: ServerCallback? = null
    private var serverTx: BluetoothGattCharacteristic? = null
    private var l2capServer: BluetoothServerSocket? = null
    private var psm = 0
    private val peers = HashMap<String, ServerPeer>()

    /** Opens the GATT server with the Shoal service (and the L2CAP listener) unless open. */
    fun openServer(adapter: BluetoothAdapter): Boolean {
        if (server != null) return true
        val manager = session.manager ?: return false
        val cb = ServerCallback()
        val s = try {
            manager.openGattServer(session.context, cb)
        } catch (t: Throwable) {
            bleLog(Log.WARN, "cannot open the GATT server", t)
            null
        } ?: return false
        val service = ShoalGattLayout.service(session.uuids)
        val added = try {
            s.addService(service)
        } catch (t: Throwable) {
            bleLog(Log.WARN, "cannot add the Shoal service", t)
            false
        }
        if (!added) {
            quietly { s.close() }
            return false
        }
        server = s
        serverCallback = cb
        serverTx = service.getCharacteristic(session.uuids.tx)
        if (useL2cap && Build.VERSION.SDK_INT >= Build.VERSION_CODES.Q) listenL2cap(adapter)
        return true
    }

    /** Closes the GATT server (dropping its centrals) and the L2CAP listener; reports nothing. */
    fun closeServer() {
        val s = server
        server = null
        serverCallback = null
        serverTx = null
        if (s != null) {
            for (peer in peers.values) quietly { s.cancelConnection(peer.device) }
            quietly { s.close() }
        }
        peers.clear()
        l2capServer?.let { closeQuietly(it) }
        l2capServer = null
        psm = 0
    }

    private fun listenL2cap(adapter: BluetoothAdapter) {
        if (Build.VERSION.SDK_INT < Build.VERSION_CODES.Q || l2capServer != null) return
        val listener = try {
            adapter.listenUsingInsecureL2capChannel()
        } catch (t: Throwable) {
            bleLog(Log.WARN, "cannot listen for L2CAP channels: GATT only", t)
            return
        }
        l2capServer = listener
        psm = try {
            listener.psm.takeIf { it in 1..0xFFFF } ?: 0
        } catch (_: Throwable) {
            0
        }
        bleLog(Log.INFO, "listening for L2CAP channels on PSM $psm")
        startDaemon("Shoal BLE L2CAP accept") {
            while (true) {
                val socket = try {
                    listener.accept()
                } catch (_: IOException) {
                    break // closed
                }
                if (!session.loop.post { onL2capAccepted(listener, socket) }) closeQuietly(socket)
            }
        }
    }

    private fun onL2capAccepted(listener: BluetoothServerSocket, socket: BluetoothSocket) {
        if (session.closed || listener !== l2capServer) {
            closeQuietly(socket)
            return
        }
        val address = try {
            socket.remoteDevice?.address
        } catch (_: Throwable) {
            null
        } ?: "unknown"
        val conn = try {
            L2capConn(session, socket, address, central = false, release = {})
        } catch (t: Throwable) {
            bleLog(Log.WARN, "accepted L2CAP channel unusable", t)
            closeQuietly(socket)
            return
        }
        session.register(conn)
        conn.startReading()
    }

    /** A central connected to the GATT server. Reported once it subscribes to TX. */
    private inner class ServerPeer(val device: BluetoothDevice) {
        var mtu = ShoalGattLayout.DEFAULT_ATT_MTU
        var cccd = byteArrayOf(0, 0)
        var conn: PeripheralConn? = null
    }

    private fun peer(device: BluetoothDevice): ServerPeer = peers.getOrPut(device.address) { ServerPeer(device) }

    /** A central subscribed to TX: packets go out as notifications, come in as writes to RX. */
    private inner class PeripheralConn(val peer: ServerPeer) : Conn(session, peer.device.address, central = false) {
        override val channel = BluetoothChannel.Gatt(peer.mtu.toUShort())

        override fun transmit(packet: ByteArray): SendAttempt {
            val s = server ?: return SendAttempt.FAILED
            val tx = serverTx ?: return SendAttempt.FAILED
            return if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.TIRAMISU) {
                statusToAttempt(s.notifyCharacteristicChanged(peer.device, tx, false, packet))
            } else {
                @Suppress("DEPRECATION")
                tx.value = packet
                @Suppress("DEPRECATION")
                if (s.notifyCharacteristicChanged(peer.device, tx, false)) SendAttempt.STARTED else SendAttempt.BUSY
            }
        }

        override fun shutdown() {
            super.shutdown()
            if (peer.conn === this) peer.conn = null
            server?.let { s -> quietly { s.cancelConnection(peer.device) } }
        }
    }

    private fun respond(device: BluetoothDevice, requestId: Int, status: Int, offset: Int, value: ByteArray?) {
        val s = server ?: return
        try {
            s.sendResponse(device, requestId, status, offset, value)
        } catch (t: Throwable) {
            bleLog(Log.DEBUG, "cannot answer a GATT request", t)
        }
    }

    private inner class ServerCallback : BluetoothGattServerCallback() {
        private fun onLoop(task: () -> Unit) {
            session.loop.post { if (serverCallback === this && !session.closed) task() }
        }

        override fun onConnectionStateChange(device: BluetoothDevice?, status: Int, newState: Int) {
            device ?: return
            onLoop {
                when (newState) {
                    BluetoothProfile.STATE_CONNECTED -> peer(device)
                    BluetoothProfile.STATE_DISCONNECTED -> {
                        val peer = peers.remove(device.address) ?: return@onLoop
                        peer.conn?.let { session.lost(it, "the central disconnected") }
                    }
                }
            }
        }

        override fun onMtuChanged(device: BluetoothDevice?, mtu: Int) {
            device ?: return
            onLoop {
                val peer = peer(device)
                peer.mtu = mtu
                peer.conn?.let { session.sink.mtuChanged(it.id, mtu) }
            }
        }

        override fun onDescriptorWriteRequest(
            device: BluetoothDevice?,
            requestId: Int,
            descriptor: BluetoothGattDescriptor?,
            preparedWrite: Boolean,
            responseNeeded: Boolean,
            offset: Int,
            value: ByteArray?,
        ) {
            device ?: return
            val isCccd = descriptor?.uuid == ShoalGattLayout.CCCD && descriptor.characteristic?.uuid == session.uuids.tx
            val bytes = value?.copyOf()
            onLoop {
                val status = when {
                    !isCccd || preparedWrite -> BluetoothGatt.GATT_REQUEST_NOT_SUPPORTED
                    offset != 0 -> BluetoothGatt.GATT_INVALID_OFFSET
                    bytes == null || bytes.size != 2 -> BluetoothGatt.GATT_INVALID_ATTRIBUTE_LENGTH
                    else -> BluetoothGatt.GATT_SUCCESS
                }
                // Answer before reporting: the core may notify at once, and the answer must go out first.
                if (responseNeeded) respond(device, requestId, status, 0, bytes)
                if (status != BluetoothGatt.GATT_SUCCESS || bytes == null) return@onLoop
                val peer = peer(device)
                peer.cccd = bytes
                val current = peer.conn
                if (ShoalGattLayout.enablesNotifications(bytes)) {
                    if (current == null) {
                        val conn = PeripheralConn(peer)
                        peer.conn = conn
                        session.register(conn)
                    }
                } else if (current != null) {
                    session.lost(current, "the central unsubscribed")
                }
            }
        }

        override fun onDescriptorReadRequest(
            device: BluetoothDevice?,
            requestId: Int,
            offset: Int,
            descriptor: BluetoothGattDescriptor?,
        ) {
            device ?: return
            val isCccd = descriptor?.uuid == ShoalGattLayout.CCCD && descriptor.characteristic?.uuid == session.uuids.tx
            onLoop {
                val value = if (isCccd) peers[device.address]?.cccd ?: byteArrayOf(0, 0) else null
                when {
                    value == null -> respond(device, requestId, BluetoothGatt.GATT_READ_NOT_PERMITTED, offset, null)
                    offset > value.size -> respond(device, requestId, BluetoothGatt.GATT_INVALID_OFFSET, offset, null)
                    else -> respond(device, requestId, BluetoothGatt.GATT_SUCCESS, offset, value.copyOfRange(offset, value.size))
                }
            }
        }

        override fun onCharacteristicWriteRequest(
            device: BluetoothDevice?,
            requestId: Int,
            characteristic: BluetoothGattCharacteristic?,
            preparedWrite: Boolean,
            responseNeeded: Boolean,
            offset: Int,
            value: ByteArray?,
        ) {
            device ?: return
            val isRx = characteristic?.uuid == session.uuids.rx
            val bytes = value?.copyOf()
            onLoop {
                val status = when {
                    !isRx -> BluetoothGatt.GATT_WRITE_NOT_PERMITTED
                    preparedWrite -> BluetoothGatt.GATT_REQUEST_NOT_SUPPORTED
                    offset != 0 -> BluetoothGatt.GATT_INVALID_OFFSET
                    else -> BluetoothGatt.GATT_SUCCESS
                }
                if (responseNeeded) respond(device, requestId, status, 0, null)
                if (status != BluetoothGatt.GATT_SUCCESS || bytes == null) return@onLoop
                val conn = peers[device.address]?.conn
                if (conn != null) {
                    session.sink.received(conn.id, bytes)
                } else {
                    bleLog(Log.DEBUG, "packet from ${device.address} before it subscribed: dropped")
                }
            }
        }

        override fun onCharacteristicReadRequest(
            device: BluetoothDevice?,
            requestId: Int,
            offset: Int,
            characteristic: BluetoothGattCharacteristic?,
        ) {
            device ?: return
            val isPsm = characteristic?.uuid == session.uuids.psm
            onLoop {
                if (!isPsm) {
                    respond(device, requestId, BluetoothGatt.GATT_READ_NOT_PERMITTED, offset, null)
                    return@onLoop
                }
                val value = ShoalGattLayout.psmValue(psm)
                if (offset > value.size) {
                    respond(device, requestId, BluetoothGatt.GATT_INVALID_OFFSET, offset, null)
                } else {
                    respond(device, requestId, BluetoothGatt.GATT_SUCCESS, offset, value.copyOfRange(offset, value.size))
                }
            }
        }

        override fun onExecuteWrite(device: BluetoothDevice?, requestId: Int, execute: Boolean) {
            device ?: return
            // Nothing is ever prepared (prepared writes are refused): executing or cancelling them is a no-op.
            onLoop { respond(device, requestId, BluetoothGatt.GATT_SUCCESS, 0, null) }
        }

        override fun onNotificationSent(device: BluetoothDevice?, status: Int) {
            device ?: return
            onLoop { peers[device.address]?.conn?.queue?.onComplete(status == BluetoothGatt.GATT_SUCCESS) }
        }

        override fun onServiceAdded(status: Int, service: BluetoothGattService?) {
            if (status != BluetoothGatt.GATT_SUCCESS) {
                session.loop.post {
                    bleLog(Log.WARN, "the GATT server could not add the Shoal service (status $status)")
                }
            }
        }
    }

    // ------------------------------------------------------------------------------------------------ for tests

    /** The open GATT server, if any. */
    internal val gattServerForTest: BluetoothGattServer?
        get() = server

    /** The L2CAP listener, if any. */
    internal val l2capServerForTest: BluetoothServerSocket?
        get() = l2capServer
}
