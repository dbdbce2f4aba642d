// The central's scan: a filtered scan for Shoal's service, restarted before Android degrades it and kept under
// Android's limit of scan starts; each sighting is reported to the core (throttled per address).
package dev.shoaldb.android

import android.annotation.SuppressLint
import android.bluetooth.le.ScanCallback
import android.bluetooth.le.ScanResult
import android.os.ParcelUuid
import android.util.Log
import dev.shoaldb.android.BleSession.Companion.MAX_SCAN_STARTS
import dev.shoaldb.android.BleSession.Companion.SCAN_RESTART_MS
import dev.shoaldb.android.BleSession.Companion.SCAN_WINDOW_MS

/**
 * The scan of a [BleSession]: runs while the core wants it (again when Bluetooth comes back on, restarted when the
 * foreground changes). Touched only on the session's loop.
 */
@SuppressLint("MissingPermission") // Every operation is preceded by a permission check or caught SecurityException.
internal class BleScanner(private val session: BleSession) {
    private val serviceUuid = ParcelUuid(session.uuids.service)

    // what the core asked for (applied again when Bluetooth comes back on)
    private var wantScanning = false

    private var scanCallback: ScanCb? = null
    private var scanTimer: Cancellable? = null
    private var scanFailures = 0
    private val throttle = DiscoveryThrottle()

    /** Scans for the service, reporting sightings (each address at most once a second unless its data changes). */
    fun startScanning() {
        if (session.closed) return
        wantScanning = true
        if (scanCallback != null) return
        scanFailures = 0
        applyScanning()
    }

    /** Starts (or restarts) the scan if the core wants one and Bluetooth is on. */
    fun applyScanning() {
        if (!wantScanning || session.closed) return
        scanTimer?.cancel()
        scanTimer = null
        val adapter = session.adapter
        if (adapter == null || !session.radioOn()) {
            bleLog(Log.INFO, "Bluetooth is off: scanning starts when it comes on")
            return
        }
        if (!ShoalBluetoothPermissions.canScan(session.context)) {
            bleLog(Log.WARN, "cannot scan: missing permission (see ShoalBluetoothPermissions)")
            return
        }
        // Android silently ignores a 6th scan start of the app within 30 s: wait rather than lose the scan.
        val now = session.loop.nowMs()
        val wait = session.scanStarts.waitMs(now)
        if (wait > 0) {
            scanTimer = session.loop.schedule(wait) {
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
            val filters = ShoalGattLayout.scanFilters(session.uuids)
            scanner.startScan(filters, ShoalGattLayout.scanSettings(session.foreground), cb)
            session.scanStarts.record(now)
            scanTimer = session.loop.schedule(SCAN_RESTART_MS) {
                scanTimer = null
                applyScanning()
            }
        } catch (t: Throwable) {
            scanCallback = null
            bleLog(Log.WARN, "cannot scan", t)
            retryScanning()
        }
    }

    /** The foreground changed: a scan that runs restarts with the matching settings. */
    fun onForegroundChanged() {
        if (scanCallback != null) applyScanning()
    }

    /** Bluetooth went off: the scan is gone (it starts again when Bluetooth comes back on). */
    fun radioDown() {
        scanTimer?.cancel()
        scanTimer = null
        stopScanner()
    }

    /** The session stops: forgets that the core wants a scan, stops it and forgets every sighting. */
    fun close() {
        wantScanning = false
        scanTimer?.cancel()
        stopScanner()
        throttle.clear()
    }

    private fun retryScanning() {
        val delay = (2_000L shl scanFailures.coerceAtMost(5)).coerceAtMost(60_000L)
        scanFailures++
        scanTimer?.cancel()
        scanTimer = session.loop.schedule(delay) {
            scanTimer = null
            applyScanning()
        }
    }

    private fun stopScanner() {
        val cb = scanCallback ?: return
        scanCallback = null
        try {
            session.adapter?.bluetoothLeScanner?.stopScan(cb)
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
            session.loop.post {
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
                session.loop.post { if (scanCallback === this) onSighting(address, data) }
            } catch (t: Throwable) {
                bleLog(Log.DEBUG, "unreadable scan result", t)
            }
        }
    }

    private fun onSighting(address: String, serviceData: ByteArray?) {
        if (throttle.shouldReport(address, serviceData, session.loop.nowMs())) {
            session.sink.discovered(address, serviceData)
        }
    }
}

/**
 * The scan starts of the last [SCAN_WINDOW_MS] (times of one clock: a radio loop's `nowMs`). Android ignores,
 * silently, an app's scan start beyond five in 30 seconds, whichever of the app's scanners started them: every
 * radio made with the public constructor shares [app], so that restarting sync (a new run, a new store, a second
 * radio) cannot exceed it. Thread-safe.
 */
internal class ScanStartLog {
    private val starts = ArrayDeque<Long>()

    /** How long to wait before a scan may start at [now] without exceeding [MAX_SCAN_STARTS]; 0: at once. */
    @Synchronized
    fun waitMs(now: Long): Long {
        while (starts.isNotEmpty() && now - starts.first() >= SCAN_WINDOW_MS) starts.removeFirst()
        if (starts.size < MAX_SCAN_STARTS) return 0
        return SCAN_WINDOW_MS - (now - starts.first()) + 100
    }

    /** A scan started at [now]. */
    @Synchronized
    fun record(now: Long) {
        starts.addLast(now)
    }

    companion object {
        /** The log of the app's process, shared by the radios of the public constructor. */
        val app = ScanStartLog()
    }
}
