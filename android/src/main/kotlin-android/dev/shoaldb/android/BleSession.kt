// One run of the Bluetooth radio: its lifecycle, the adapter's state, the connections it has reported, and the
// core's calls handed to the part that does each job (BleAdvertiser, BleGattServer, BleScanner, BleCentral).
package dev.shoaldb.android

import android.annotation.SuppressLint
import android.bluetooth.BluetoothAdapter
import android.bluetooth.BluetoothGattServer
import android.bluetooth.BluetoothManager
import android.bluetooth.BluetoothServerSocket
import android.bluetooth.BluetoothSocket
import android.content.BroadcastReceiver
import android.content.Context
import android.content.Intent
import android.content.IntentFilter
import android.os.Build
import android.util.Log
import java.util.concurrent.atomic.AtomicBoolean

/**
 * One run of [AndroidBluetoothRadio], from `start` to `stop`: all the radio's state, touched only by tasks on
 * [loop] (one thread). Android's callbacks arrive on binder threads and only post to the loop; blocking L2CAP calls
 * run on their own threads and post their results. Nothing here throws out of a callback or a task.
 *
 * Connections get ids from [newConnectionId], unique for the radio's lifetime. A connection is in [conns] from the
 * moment it is reported `connected` until it is reported `disconnected` (or closed by `disconnect` / `stop`).
 *
 * The session keeps what its parts share (the adapter, the foreground flag, the sink, the connections) and hands
 * each of the core's calls to the part that does the job: [BleAdvertiser] and [BleGattServer] (peripheral),
 * [BleScanner] and [BleCentral] (central).
 */
@SuppressLint("MissingPermission") // Every operation is preceded by a permission check or caught SecurityException.
internal class BleSession(
    val context: Context,
    val uuids: ShoalGattUuids,
    val loop: RadioLoop,
    sink: RadioSink,
    useL2cap: Boolean,
    foreground: Boolean,
    val newConnectionId: () -> Long,
    connectTimeoutMs: Long = CONNECT_TIMEOUT_MS,
    /** The scans started lately: Android's limit is per app, not per run (see [ScanStartLog]). */
    val scanStarts: ScanStartLog = ScanStartLog(),
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
    }

    private val reporting = AtomicBoolean(true)

    /** Where everything is reported; silent from the moment the session stops. */
    val sink: RadioSink = SafeSink(sink) { reporting.get() }

    /** Set once by [close]: the parts then start nothing and ignore the callbacks still arriving. */
    var closed = false
        private set

    /** Whether the app is in the foreground (low latency scanning and advertising); see [setForeground]. */
    var foreground = foreground
        private set

    val manager: BluetoothManager? = try {
        context.getSystemService(Context.BLUETOOTH_SERVICE) as? BluetoothManager
    } catch (_: Throwable) {
        null
    }
    val adapter: BluetoothAdapter?
        get() = try {
            manager?.adapter
        } catch (_: Throwable) {
            null
        }

    // --- peripheral ---
    private val gattServer = BleGattServer(this, useL2cap)
    private val advertiser = BleAdvertiser(this, gattServer)

    // --- central ---
    private val scanner = BleScanner(this)
    private val central = BleCentral(this, useL2cap, connectTimeoutMs)

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
        advertiser.close()
        scanner.close()
        central.close()
        conns.values.toList().forEach { it.shutdown() }
        conns.clear()
        gattServer.closeServer()
        receiver?.let {
            try {
                context.unregisterReceiver(it)
            } catch (_: Throwable) {
            }
        }
        receiver = null
        bleLog(Log.INFO, "stopped")
    }

    private fun onAdapterState(state: Int) {
        if (closed) return
        when (state) {
            BluetoothAdapter.STATE_ON -> {
                bleLog(Log.INFO, "Bluetooth is on")
                advertiser.applyAdvertising()
                scanner.applyScanning()
            }
            BluetoothAdapter.STATE_TURNING_OFF, BluetoothAdapter.STATE_OFF -> radioDown()
        }
    }

    /** Bluetooth went off: every connection and attempt is gone, and so are the server and the advertisement. */
    private fun radioDown() {
        bleLog(Log.INFO, "Bluetooth is off")
        advertiser.radioDown()
        scanner.radioDown()
        central.radioDown()
        conns.values.toList().forEach { lost(it, "Bluetooth went off") }
        gattServer.closeServer()
    }

    /** Whether the adapter is there and on. */
    fun radioOn(): Boolean = try {
        adapter?.isEnabled == true
    } catch (_: Throwable) {
        false
    }

    /** Low latency scanning and advertising in the foreground, balanced in the background. */
    fun setForeground(value: Boolean) {
        if (closed || value == foreground) return
        foreground = value
        scanner.onForegroundChanged()
        advertiser.onForegroundChanged()
    }

    // ------------------------------------------------------------------------------------------------ the core's calls

    /** Advertises the service (with [serviceData] in the scan response when not empty), serving GATT (and L2CAP). */
    fun startAdvertising(serviceData: ByteArray) = advertiser.startAdvertising(serviceData)

    /** Scans for the service, reporting sightings (each address at most once a second unless its data changes). */
    fun startScanning() = scanner.startScanning()

    /** Dials [address]: connect, MTU, discovery, PSM (L2CAP) or TX subscription; `connected` or `connectFailed`. */
    fun connect(address: String) = central.connect(address)

    /** Gives up a connection attempt (no report). */
    fun cancelConnect(address: String) = central.cancelConnect(address)

    // ------------------------------------------------------------------------------------------------ connections

    /** Reports a new connection. */
    fun register(conn: Conn) {
        conns[conn.id] = conn
        bleLog(Log.INFO, "connection ${conn.id} up: ${conn.address}, ${if (conn.central) "central" else "peripheral"}, ${conn.channel}")
        sink.connected(conn.id, conn.address, conn.central, conn.channel)
    }

    /** A connection ended by itself: closes it and reports it. */
    fun lost(conn: Conn, why: String) {
        if (conns[conn.id] !== conn) return
        conns.remove(conn.id)
        bleLog(Log.INFO, "connection ${conn.id} down: $why")
        conn.shutdown()
        sink.disconnected(conn.id)
    }

    /** Whether [conn] is still a reported connection (not yet lost, disconnected or closed). */
    fun isLive(conn: Conn): Boolean = conns[conn.id] === conn

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

    // ------------------------------------------------------------------------------------------------ for tests

    /** The open GATT server, if any. */
    internal val gattServerForTest: BluetoothGattServer?
        get() = gattServer.gattServerForTest

    /** The L2CAP listener, if any. */
    internal val l2capServerForTest: BluetoothServerSocket?
        get() = gattServer.l2capServerForTest

    /** The live connections' ids. */
    internal val connectionsForTest: Set<Long>
        get() = conns.keys.toSet()

    /** The L2CAP socket of a connection, if it is one. */
    internal fun l2capSocketForTest(connection: Long): BluetoothSocket? = (conns[connection] as? L2capConn)?.socket

    /** Packets queued on a connection and not yet reported sent. */
    internal fun queuedForTest(connection: Long): Int = conns[connection]?.queue?.size ?: -1

    /** Addresses being dialled. */
    internal val attemptsForTest: Set<String>
        get() = central.attemptsForTest
}
