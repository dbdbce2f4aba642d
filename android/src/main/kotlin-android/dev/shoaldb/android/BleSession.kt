package dev.shoaldb.android

import android.annotation.SuppressLint
import android.bluetooth.BluetoothAdapter
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
import android.bluetooth.BluetoothServerSocket
import android.bluetooth.BluetoothSocket
import android.bluetooth.BluetoothStatusCodes
import android.bluetooth.le.AdvertiseCallback
import android.bluetooth.le.AdvertiseSettings
import android.bluetooth.le.ScanCallback
import android.bluetooth.le.ScanResult
import android.content.BroadcastReceiver
import android.content.Context
import android.content.Intent
import android.content.IntentFilter
import android.os.Build
import android.os.ParcelUuid
import android.util.Log
import dev.shoaldb.BluetoothChannel
import java.io.Closeable
import java.io.IOException
import java.io.InputStream
import java.io.OutputStream
import java.util.UUID
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors
import java.util.concurrent.RejectedExecutionException
import java.util.concurrent.atomic.AtomicBoolean

/**
 * One run of [AndroidBluetoothRadio], from `start` to `stop`: all the radio's state, touched only by tasks on
 * [loop] (one thread). Android's callbacks arrive on binder threads and only post to the loop; blocking L2CAP calls
 * run on their own threads and post their results. Nothing here throws out of a callback or a task.
 *
 * Connections get ids from [newConnectionId], unique for the radio's lifetime. A connection is in [conns] from the
 * moment it is reported `connected` until it is reported `disconnected` (or closed by `disconnect` / `stop`).
 */
@SuppressLint("MissingPermission") // Every operation is preceded by a permission check or caught SecurityException.
internal class BleSession(
    private val context: Context,
    private val uuids: ShoalGattUuids,
    val loop: RadioLoop,
    sink: RadioSink,
    private val useL2cap: Boolean,
    private var foreground: Boolean,
    private val newConnectionId: () -> Long,
    private val connectTimeoutMs: Long = CONNECT_TIMEOUT_MS,
) {
    companion object {
        /** A connection attempt that has not produced a connection by then fails. */
        const val CONNECT_TIMEOUT_MS = 20_000L

        /** How long to wait for the answer to the MTU request before discovering the services anyway. */
        const val MTU_TIMEOUT_MS = 2_000L

        /** Android turns scans older than 30 minutes into opportunistic ones: restart before. */
        const val SCAN_RESTART_MS = 25 * 60_000L

        /** Android ignores the 6th scan start within 30 s: stay at 4. */
        const val MAX_SCAN_STARTS = 4
        const val SCAN_WINDOW_MS = 30_000L

        /** The L2CAP packet size reported when the socket does not tell (the core's largest packet). */
        const val L2CAP_DEFAULT_MTU = 2048

        /** Notifications kept while subscribing, before the connection is reported. */
        const val EARLY_PACKETS_MAX = 64

        private val ENABLE_NOTIFICATION: ByteArray = BluetoothGattDescriptor.ENABLE_NOTIFICATION_VALUE.copyOf()
    }

    private val reporting = AtomicBoolean(true)
    private val sink: RadioSink = SafeSink(sink) { reporting.get() }
    private var closed = false

    private val manager: BluetoothManager? = try {
        context.getSystemService(Context.BLUETOOTH_SERVICE) as? BluetoothManager
    } catch (_: Throwable) {
        null
    }
    private val adapter: BluetoothAdapter?
        get() = try {
            manager?.adapter
        } catch (_: Throwable) {
            null
        }
    private val serviceUuid = ParcelUuid(uuids.service)

    // --- what the core asked for (applied again when Bluetooth comes back on) ---
    private var wantAdvertising: ByteArray? = null
    private var wantScanning = false

    // --- peripheral ---
    private var advertiseCallback: AdvertiseCb? = null
    private var advertiseWithoutData = false
    private var advertiseRetry: Cancellable? = null
    private var advertiseFailures = 0
    private var server: BluetoothGattServer? = null
    private var serverCallback: ServerCallback? = null
    private var serverTx: BluetoothGattCharacteristic? = null
    private var l2capServer: BluetoothServerSocket? = null
    private var psm = 0
    private val peers = HashMap<String, ServerPeer>()

    // --- central ---
    private var scanCallback: ScanCb? = null
    private var scanTimer: Cancellable? = null
    private var scanFailures = 0
    private val scanStarts = ArrayDeque<Long>()
    private val throttle = DiscoveryThrottle()
    private val attempts = HashMap<String, CentralLink>()

    // --- every reported connection ---
    private val conns = LinkedHashMap<Long, Conn>()
    private var receiver: BroadcastReceiver? = null

    // ------------------------------------------------------------------------------------------------ lifecycle

    /** Listens to the adapter's state (first task of the session). */
    fun open() {
        val r = object : BroadcastReceiver() {
            override fun onReceive(c: Context?, intent: Intent?) {
                val state = intent?.getIntExtra(BluetoothAdapter.EXTRA_STATE, -1) ?: return
                loop.post { onAdapterState(state) }
            }
        }
        try {
            val filter = IntentFilter(BluetoothAdapter.ACTION_STATE_CHANGED)
            if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.TIRAMISU) {
                context.registerReceiver(r, filter, Context.RECEIVER_NOT_EXPORTED)
            } else {
                context.registerReceiver(r, filter)
            }
            receiver = r
        } catch (t: Throwable) {
            bleLog(Log.WARN, "cannot follow the Bluetooth adapter's state", t)
        }
    }

    /** Stops reporting at once, then closes everything on the loop and ends the loop's thread. */
    fun shutdown() {
        reporting.set(false)
        loop.post { close() }
        loop.shutdown()
    }

    /** Stops advertising and scanning, closes every connection and the server. Reports nothing. */
    fun close() {
        if (closed) return
        closed = true
        reporting.set(false)
        wantAdvertising = null
        wantScanning = false
        advertiseRetry?.cancel()
        scanTimer?.cancel()
        stopAdvertiser()
        stopScanner()
        attempts.values.toList().forEach { it.cancel() }
        attempts.clear()
        conns.values.toList().forEach { it.shutdown() }
        conns.clear()
        closeServer()
        receiver?.let {
            try {
                context.unregisterReceiver(it)
            } catch (_: Throwable) {
            }
        }
        receiver = null
        throttle.clear()
        bleLog(Log.INFO, "stopped")
    }

    private fun onAdapterState(state: Int) {
        if (closed) return
        when (state) {
            BluetoothAdapter.STATE_ON -> {
                bleLog(Log.INFO, "Bluetooth is on")
                applyAdvertising()
                applyScanning()
            }
            BluetoothAdapter.STATE_TURNING_OFF, BluetoothAdapter.STATE_OFF -> radioDown()
        }
    }

    /** Bluetooth went off: every connection and attempt is gone, and so are the server and the advertisement. */
    private fun radioDown() {
        bleLog(Log.INFO, "Bluetooth is off")
        advertiseRetry?.cancel()
        advertiseRetry = null
        stopAdvertiser() // (the stack has dropped them already; this only tidies up, and may throw: ignored)
        scanTimer?.cancel()
        scanTimer = null
        stopScanner()
        attempts.values.toList().forEach { it.fail("Bluetooth went off") }
        conns.values.toList().forEach { lost(it, "Bluetooth went off") }
        closeServer()
    }

    private fun radioOn(): Boolean = try {
        adapter?.isEnabled == true
    } catch (_: Throwable) {
        false
    }

    /** Low latency scanning and advertising in the foreground, balanced in the background. */
    fun setForeground(value: Boolean) {
        if (closed || value == foreground) return
        foreground = value
        if (scanCallback != null) applyScanning()
        if (advertiseCallback != null) applyAdvertising()
    }

    // ------------------------------------------------------------------------------------------------ connections

    private abstract inner class Conn(val address: String, val central: Boolean) {
        val id: Long = newConnectionId()
        abstract val channel: BluetoothChannel
        private var retry: Cancellable? = null
        val queue: BleSendQueue = BleSendQueue(
            transmit = { transmit(it) },
            onSent = { sink.sent(id) },
            scheduleRetry = { delay ->
                retry = loop.schedule(delay) {
                    retry = null
                    if (conns[id] === this) queue.onRetry()
                }
            },
        )

        /** Hands one packet to the OS. */
        abstract fun transmit(packet: ByteArray): SendAttempt

        /** Closes the connection's OS resources; reports nothing. */
        open fun shutdown() {
            queue.close()
            retry?.cancel()
            retry = null
        }
    }

    /** Reports a new connection. */
    private fun register(conn: Conn) {
        conns[conn.id] = conn
        bleLog(Log.INFO, "connection ${conn.id} up: ${conn.address}, ${if (conn.central) "central" else "peripheral"}, ${conn.channel}")
        sink.connected(conn.id, conn.address, conn.central, conn.channel)
    }

    /** A connection ended by itself: closes it and reports it. */
    private fun lost(conn: Conn, why: String) {
        if (conns[conn.id] !== conn) return
        conns.remove(conn.id)
        bleLog(Log.INFO, "connection ${conn.id} down: $why")
        conn.shutdown()
        sink.disconnected(conn.id)
    }

    /** The core closes a connection (no report follows). */
    fun disconnect(connection: Long) {
        val conn = conns.remove(connection) ?: return
        bleLog(Log.INFO, "connection $connection closed")
        conn.shutdown()
    }

    /** Queues a packet on a connection; `sent` follows once the OS has taken it. */
    fun send(connection: Long, packet: ByteArray) {
        val conn = conns[connection]
        if (conn == null) {
            bleLog(Log.DEBUG, "send on connection $connection, which is gone: dropped")
            return
        }
        conn.queue.enqueue(packet)
    }

    // ------------------------------------------------------------------------------------------------ peripheral

    /** Advertises the service (with [serviceData] in the scan response when not empty), serving GATT (and L2CAP). */
    fun startAdvertising(serviceData: ByteArray) {
        if (closed) return
        val same = wantAdvertising?.contentEquals(serviceData) == true
        wantAdvertising = serviceData
        if (same && (advertiseCallback != null || advertiseRetry != null)) return
        advertiseWithoutData = false
        advertiseFailures = 0
        applyAdvertising()
    }

    private fun applyAdvertising() {
        val data = wantAdvertising ?: return
        if (closed) return
        advertiseRetry?.cancel()
        advertiseRetry = null
        val adapter = adapter
        if (adapter == null || !radioOn()) {
            bleLog(Log.INFO, "Bluetooth is off: advertising starts when it comes on")
            return
        }
        if (!ShoalBluetoothPermissions.canAdvertise(context)) {
            bleLog(Log.WARN, "cannot advertise: missing permission (see ShoalBluetoothPermissions)")
            return
        }
        if (!openServer(adapter)) {
            retryAdvertising()
            return
        }
        stopAdvertiser()
        val advertiser = try {
            adapter.bluetoothLeAdvertiser
        } catch (_: Throwable) {
            null
        }
        if (advertiser == null) {
            bleLog(Log.WARN, "this device cannot advertise (no BLE peripheral mode): it only dials")
            return
        }
        val withData = data.isNotEmpty() && !advertiseWithoutData
        val cb = AdvertiseCb(withData)
        advertiseCallback = cb
        try {
            val settings = ShoalGattLayout.advertiseSettings(foreground)
            val advertisement = ShoalGattLayout.advertiseData(uuids)
            val response = if (withData) ShoalGattLayout.scanResponse(uuids, data) else null
            if (response != null) {
                advertiser.startAdvertising(settings, advertisement, response, cb)
            } else {
                advertiser.startAdvertising(settings, advertisement, cb)
            }
        } catch (t: Throwable) {
            advertiseCallback = null
            bleLog(Log.WARN, "cannot advertise", t)
            retryAdvertising()
        }
    }

    private fun retryAdvertising() {
        val delay = (1_000L shl advertiseFailures.coerceAtMost(6)).coerceAtMost(60_000L)
        advertiseFailures++
        advertiseRetry?.cancel()
        advertiseRetry = loop.schedule(delay) {
            advertiseRetry = null
            applyAdvertising()
        }
    }

    private fun stopAdvertiser() {
        val cb = advertiseCallback ?: return
        advertiseCallback = null
        try {
            adapter?.bluetoothLeAdvertiser?.stopAdvertising(cb)
        } catch (_: Throwable) {
        }
    }

    private fun onAdvertiseFailure(cb: AdvertiseCb, errorCode: Int) {
        if (cb !== advertiseCallback) return
        when (errorCode) {
            AdvertiseCallback.ADVERTISE_FAILED_ALREADY_STARTED -> return
            AdvertiseCallback.ADVERTISE_FAILED_DATA_TOO_LARGE -> {
                advertiseCallback = null
                if (cb.withData) {
                    bleLog(Log.WARN, "the service data does not fit in the advertisement: advertising without it")
                    advertiseWithoutData = true
                    applyAdvertising()
                } else {
                    bleLog(Log.ERROR, "the advertisement is too large even without service data")
                }
            }
            AdvertiseCallback.ADVERTISE_FAILED_FEATURE_UNSUPPORTED -> {
                advertiseCallback = null
                bleLog(Log.WARN, "this device cannot advertise: it only dials")
            }
            else -> {
                advertiseCallback = null
                bleLog(Log.WARN, "advertising failed (error $errorCode): retrying")
                retryAdvertising()
            }
        }
    }

    private inner class AdvertiseCb(val withData: Boolean) : AdvertiseCallback() {
        override fun onStartSuccess(settingsInEffect: AdvertiseSettings?) {
            loop.post {
                if (advertiseCallback === this) {
                    advertiseFailures = 0
                    bleLog(Log.INFO, "advertising" + if (withData) " with service data" else "")
                }
            }
        }

        override fun onStartFailure(errorCode: Int) {
            loop.post { onAdvertiseFailure(this, errorCode) }
        }
    }

    /** Opens the GATT server with the Shoal service (and the L2CAP listener) unless open. */
    private fun openServer(adapter: BluetoothAdapter): Boolean {
        if (server != null) return true
        val manager = manager ?: return false
        val cb = ServerCallback()
        val s = try {
            manager.openGattServer(context, cb)
        } catch (t: Throwable) {
            bleLog(Log.WARN, "cannot open the GATT server", t)
            null
        } ?: return false
        val service = ShoalGattLayout.service(uuids)
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
        serverTx = service.getCharacteristic(uuids.tx)
        if (useL2cap && Build.VERSION.SDK_INT >= Build.VERSION_CODES.Q) listenL2cap(adapter)
        return true
    }

    private fun closeServer() {
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
                if (!loop.post { onL2capAccepted(listener, socket) }) closeQuietly(socket)
            }
        }
    }

    private fun onL2capAccepted(listener: BluetoothServerSocket, socket: BluetoothSocket) {
        if (closed || listener !== l2capServer) {
            closeQuietly(socket)
            return
        }
        val address = try {
            socket.remoteDevice?.address
        } catch (_: Throwable) {
            null
        } ?: "unknown"
        val conn = try {
            L2capConn(socket, address, central = false, link = null)
        } catch (t: Throwable) {
            bleLog(Log.WARN, "accepted L2CAP channel unusable", t)
            closeQuietly(socket)
            return
        }
        register(conn)
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
    private inner class PeripheralConn(val peer: ServerPeer) : Conn(peer.device.address, central = false) {
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
            loop.post { if (serverCallback === this && !closed) task() }
        }

        override fun onConnectionStateChange(device: BluetoothDevice?, status: Int, newState: Int) {
            device ?: return
            onLoop {
                when (newState) {
                    BluetoothProfile.STATE_CONNECTED -> peer(device)
                    BluetoothProfile.STATE_DISCONNECTED -> {
                        val peer = peers.remove(device.address) ?: return@onLoop
                        peer.conn?.let { lost(it, "the central disconnected") }
                    }
                }
            }
        }

        override fun onMtuChanged(device: BluetoothDevice?, mtu: Int) {
            device ?: return
            onLoop {
                val peer = peer(device)
                peer.mtu = mtu
                peer.conn?.let { sink.mtuChanged(it.id, mtu) }
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
            val isCccd = descriptor?.uuid == ShoalGattLayout.CCCD && descriptor.characteristic?.uuid == uuids.tx
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
                        register(conn)
                    }
                } else if (current != null) {
                    lost(current, "the central unsubscribed")
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
            val isCccd = descriptor?.uuid == ShoalGattLayout.CCCD && descriptor.characteristic?.uuid == uuids.tx
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
            val isRx = characteristic?.uuid == uuids.rx
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
                    sink.received(conn.id, bytes)
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
            val isPsm = characteristic?.uuid == uuids.psm
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
                loop.post { bleLog(Log.WARN, "the GATT server could not add the Shoal service (status $status)") }
            }
        }
    }

    // ------------------------------------------------------------------------------------------------ central

    /** Scans for the service, reporting sightings (each address at most once a second unless its data changes). */
    fun startScanning() {
        if (closed) return
        wantScanning = true
        if (scanCallback != null) return
        scanFailures = 0
        applyScanning()
    }

    private fun applyScanning() {
        if (!wantScanning || closed) return
        scanTimer?.cancel()
        scanTimer = null
        val adapter = adapter
        if (adapter == null || !radioOn()) {
            bleLog(Log.INFO, "Bluetooth is off: scanning starts when it comes on")
            return
        }
        if (!ShoalBluetoothPermissions.canScan(context)) {
            bleLog(Log.WARN, "cannot scan: missing permission (see ShoalBluetoothPermissions)")
            return
        }
        // Android silently ignores a 6th scan start within 30 s: wait rather than lose the scan.
        val now = loop.nowMs()
        while (scanStarts.isNotEmpty() && now - scanStarts.first() >= SCAN_WINDOW_MS) scanStarts.removeFirst()
        if (scanStarts.size >= MAX_SCAN_STARTS) {
            val wait = SCAN_WINDOW_MS - (now - scanStarts.first()) + 100
            scanTimer = loop.schedule(wait) {
                scanTimer = null
                applyScanning()
            }
            return
        }
        val scanner = try {
            adapter.bluetoothLeScanner
        } catch (_: Throwable) {
            null
        }
        if (scanner == null) {
            bleLog(Log.WARN, "no BLE scanner: cannot scan")
            return
        }
        stopScanner()
        val cb = ScanCb()
        scanCallback = cb
        try {
            scanner.startScan(ShoalGattLayout.scanFilters(uuids), ShoalGattLayout.scanSettings(foreground), cb)
            scanStarts.addLast(now)
            scanTimer = loop.schedule(SCAN_RESTART_MS) {
                scanTimer = null
                applyScanning()
            }
        } catch (t: Throwable) {
            scanCallback = null
            bleLog(Log.WARN, "cannot scan", t)
            retryScanning()
        }
    }

    private fun retryScanning() {
        val delay = (2_000L shl scanFailures.coerceAtMost(5)).coerceAtMost(60_000L)
        scanFailures++
        scanTimer?.cancel()
        scanTimer = loop.schedule(delay) {
            scanTimer = null
            applyScanning()
        }
    }

    private fun stopScanner() {
        val cb = scanCallback ?: return
        scanCallback = null
        try {
            adapter?.bluetoothLeScanner?.stopScan(cb)
        } catch (_: Throwable) {
        }
    }

    private inner class ScanCb : ScanCallback() {
        override fun onScanResult(callbackType: Int, result: ScanResult?) {
            report(result)
        }

        override fun onBatchScanResults(results: MutableList<ScanResult>?) {
            results?.forEach { report(it) }
        }

        override fun onScanFailed(errorCode: Int) {
            loop.post {
                if (scanCallback !== this || errorCode == SCAN_FAILED_ALREADY_STARTED) return@post
                scanCallback = null
                bleLog(Log.WARN, "scanning failed (error $errorCode): retrying")
                retryScanning()
            }
        }

        private fun report(result: ScanResult?) {
            try {
                val address = result?.device?.address ?: return
                val data = result.scanRecord?.getServiceData(serviceUuid)?.copyOf()
                loop.post { if (scanCallback === this) onSighting(address, data) }
            } catch (t: Throwable) {
                bleLog(Log.DEBUG, "unreadable scan result", t)
            }
        }
    }

    private fun onSighting(address: String, serviceData: ByteArray?) {
        if (throttle.shouldReport(address, serviceData, loop.nowMs())) sink.discovered(address, serviceData)
    }

    /** Dials [address]: connect, MTU, discovery, PSM (L2CAP) or TX subscription; `connected` or `connectFailed`. */
    fun connect(address: String) {
        if (closed) return
        if (attempts.containsKey(address)) {
            bleLog(Log.DEBUG, "already connecting to $address")
            return
        }
        val adapter = adapter
        val refused = when {
            adapter == null -> "no Bluetooth"
            !radioOn() -> "Bluetooth is off"
            !BluetoothAdapter.checkBluetoothAddress(address) -> "not a Bluetooth address"
            !ShoalBluetoothPermissions.canConnect(context) -> "missing permission (see ShoalBluetoothPermissions)"
            else -> null
        }
        if (refused != null || adapter == null) {
            bleLog(Log.INFO, "cannot connect to $address: $refused")
            sink.connectFailed(address)
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
            timer = loop.schedule(connectTimeoutMs) { fail("timed out") }
            try {
                val d = adapter.getRemoteDevice(address)
                device = d
                gatt = d.connectGatt(context, false, ClientCallback(this), BluetoothDevice.TRANSPORT_LE)
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
                    stepTimer = loop.schedule(MTU_TIMEOUT_MS) { if (stage == Stage.MTU) discover() }
                } else {
                    discover()
                }
            } else if (newState == BluetoothProfile.STATE_DISCONNECTED || status != BluetoothGatt.GATT_SUCCESS) {
                val c = conn
                if (c != null) lost(c, "disconnected (status $status)") else fail("connection failed (status $status)")
            }
        }

        fun onMtu(mtu: Int, status: Int) {
            if (status == BluetoothGatt.GATT_SUCCESS && mtu >= ShoalGattLayout.DEFAULT_ATT_MTU) attMtu = mtu
            when (stage) {
                Stage.MTU -> discover()
                Stage.CONNECTED -> (conn as? CentralGattConn)?.let { sink.mtuChanged(it.id, attMtu) }
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
            val service = gatt?.getService(uuids.service) ?: return fail("no Shoal service")
            rx = service.getCharacteristic(uuids.rx)
            tx = service.getCharacteristic(uuids.tx)
            if (rx == null || tx == null) return fail("the Shoal service lacks RX or TX")
            val psmCharacteristic = service.getCharacteristic(uuids.psm)
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
            if (stage != Stage.READING_PSM || uuid != uuids.psm) return
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
                if (!loop.post { onL2capConnect(s, error) }) closeQuietly(s)
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
                L2capConn(s, address, central = true, link = this)
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
            register(c)
            if (c is L2capConn) c.startReading()
            for (packet in early) sink.received(c.id, packet)
            early.clear()
        }

        fun onNotification(uuid: UUID?, value: ByteArray?) {
            if (uuid != uuids.tx || value == null) return
            val c = conn
            if (stage == Stage.CONNECTED && c is CentralGattConn) {
                sink.received(c.id, value)
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
            sink.connectFailed(address)
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
    private inner class CentralGattConn(val link: CentralLink) : Conn(link.address, central = true) {
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

    /** A `BluetoothStatusCodes` result of an API 33+ write or notification. */
    private fun statusToAttempt(status: Int): SendAttempt = when (status) {
        BluetoothStatusCodes.SUCCESS -> SendAttempt.STARTED
        BluetoothStatusCodes.ERROR_GATT_WRITE_REQUEST_BUSY -> SendAttempt.BUSY
        else -> SendAttempt.FAILED
    }

    /**
     * An L2CAP channel, used as a byte stream (the core frames its packets): a reader thread reports what arrives,
     * a writer thread writes one packet at a time and reports it `sent` once written.
     */
    private inner class L2capConn(
        val socket: BluetoothSocket,
        address: String,
        central: Boolean,
        val link: CentralLink?,
    ) : Conn(address, central) {
        private val input: InputStream = socket.inputStream
        private val output: OutputStream = socket.outputStream
        private val writer: ExecutorService = Executors.newSingleThreadExecutor(namedThreads("Shoal BLE L2CAP write"))
        override val channel = BluetoothChannel.L2cap(l2capMtu(socket).toUShort())

        fun startReading() {
            val size = (try {
                socket.maxReceivePacketSize
            } catch (_: Throwable) {
                0
            }).coerceIn(4096, 65536)
            startDaemon("Shoal BLE L2CAP read") {
                val buffer = ByteArray(size)
                while (true) {
                    val n = try {
                        input.read(buffer)
                    } catch (_: IOException) {
                        -1
                    }
                    if (n < 0) break
                    if (n == 0) continue
                    val bytes = buffer.copyOf(n)
                    if (!loop.post { if (conns[id] === this) sink.received(id, bytes) }) break
                }
                loop.post { lost(this, "the L2CAP channel closed") }
            }
        }

        override fun transmit(packet: ByteArray): SendAttempt = try {
            writer.execute {
                try {
                    output.write(packet)
                    output.flush()
                    loop.post { if (conns[id] === this) queue.onComplete(true) }
                } catch (e: IOException) {
                    loop.post { lost(this, "L2CAP write failed: $e") }
                }
            }
            SendAttempt.STARTED
        } catch (_: RejectedExecutionException) {
            SendAttempt.FAILED
        }

        override fun shutdown() {
            super.shutdown()
            closeQuietly(socket)
            writer.shutdownNow()
            link?.end()
        }
    }

    private fun l2capMtu(socket: BluetoothSocket): Int {
        val size = try {
            socket.maxTransmitPacketSize
        } catch (_: Throwable) {
            0
        }
        return if (size >= 20) size.coerceAtMost(0xFFFF) else L2CAP_DEFAULT_MTU
    }

    /** The GATT client callbacks of one [CentralLink]: each only posts to the loop. */
    private inner class ClientCallback(private val link: CentralLink) : BluetoothGattCallback() {
        private fun onLoop(task: () -> Unit) {
            loop.post { if (!closed) task() }
        }

        override fun onConnectionStateChange(gatt: BluetoothGatt?, status: Int, newState: Int) {
            gatt ?: return
            onLoop { link.onConnectionState(gatt, status, newState) }
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

    /** The open GATT server, if any. */
    internal val gattServerForTest: BluetoothGattServer?
        get() = server

    /** The L2CAP listener, if any. */
    internal val l2capServerForTest: BluetoothServerSocket?
        get() = l2capServer

    /** The live connections' ids. */
    internal val connectionsForTest: Set<Long>
        get() = conns.keys.toSet()

    /** The L2CAP socket of a connection, if it is one. */
    internal fun l2capSocketForTest(connection: Long): BluetoothSocket? = (conns[connection] as? L2capConn)?.socket

    /** Packets queued on a connection and not yet reported sent. */
    internal fun queuedForTest(connection: Long): Int = conns[connection]?.queue?.size ?: -1

    /** Addresses being dialled. */
    internal val attemptsForTest: Set<String>
        get() = attempts.keys.toSet()
}

/** Closes [c], ignoring what it throws. */
internal fun closeQuietly(c: Closeable) {
    try {
        c.close()
    } catch (_: Throwable) {
    }
}

/** Runs [body], ignoring what it throws. */
internal inline fun quietly(body: () -> Unit) {
    try {
        body()
    } catch (_: Throwable) {
    }
}
