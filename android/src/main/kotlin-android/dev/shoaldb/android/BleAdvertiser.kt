// The peripheral's advertisement: connectable advertising of Shoal's service (the core's service data in the scan
// response, or none if it does not fit), after opening the GATT server; retried with backoff when refused.
package dev.shoaldb.android

import android.annotation.SuppressLint
import android.bluetooth.le.AdvertiseCallback
import android.bluetooth.le.AdvertiseSettings
import android.util.Log

/**
 * What a [BleSession] advertises: kept as asked by the core (and applied again when Bluetooth comes back on or the
 * foreground changes), advertised once [gattServer] is open. Touched only on the session's loop.
 */
@SuppressLint("MissingPermission") // Every operation is preceded by a permission check or caught SecurityException.
internal class BleAdvertiser(private val session: BleSession, private val gattServer: BleGattServer) {
    // what the core asked for (applied again when Bluetooth comes back on)
    private var wantAdvertising: ByteArray? = null

    private var advertiseCallback: AdvertiseCb? = null
    private var advertiseWithoutData = false
    private var advertiseRetry: Cancellable? = null
    private var advertiseFailures = 0

    /** Advertises the service (with [serviceData] in the scan response when not empty), serving GATT (and L2CAP). */
    fun startAdvertising(serviceData: ByteArray) {
        if (session.closed) return
        val same = wantAdvertising?.contentEquals(serviceData) == true
        wantAdvertising = serviceData
        if (same && (advertiseCallback != null || advertiseRetry != null)) return
        advertiseWithoutData = false
        advertiseFailures = 0
        applyAdvertising()
    }

    /** Starts (or restarts) advertising what the core asked for, if it asked and Bluetooth is on. */
    fun applyAdvertising() {
        val data = wantAdvertising ?: return
        if (session.closed) return
        advertiseRetry?.cancel()
        advertiseRetry = null
        val adapter = session.adapter
        if (adapter == null || !session.radioOn()) {
            bleLog(Log.INFO, "Bluetooth is off: advertising starts when it comes on")
            return
        }
        if (!ShoalBluetoothPermissions.canAdvertise(session.context)) {
            bleLog(Log.WARN, "cannot advertise: missing permission (see ShoalBluetoothPermissions)")
            return
        }
        if (!gattServer.openServer(adapter)) {
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
            val settings = ShoalGattLayout.advertiseSettings(session.foreground)
            val advertisement = ShoalGattLayout.advertiseData(session.uuids)
            val response = if (withData) ShoalGattLayout.scanResponse(session.uuids, data) else null
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

    /** The foreground changed: an advertisement that runs restarts with the matching settings. */
    fun onForegroundChanged() {
        if (advertiseCallback != null) applyAdvertising()
    }

    /** Bluetooth went off: the advertisement is gone (it starts again when Bluetooth comes back on). */
    fun radioDown() {
        advertiseRetry?.cancel()
        advertiseRetry = null
        stopAdvertiser() // (the stack has dropped them already; this only tidies up, and may throw: ignored)
    }

    /** The session stops: forgets what the core asked for and stops advertising. */
    fun close() {
        wantAdvertising = null
        advertiseRetry?.cancel()
        stopAdvertiser()
    }

    private fun retryAdvertising() {
        val delay = (1_000L shl advertiseFailures.coerceAtMost(6)).coerceAtMost(60_000L)
        advertiseFailures++
        advertiseRetry?.cancel()
        advertiseRetry = session.loop.schedule(delay) {
            advertiseRetry = null
            applyAdvertising()
        }
    }

    private fun stopAdvertiser() {
        val cb = advertiseCallback ?: return
        advertiseCallback = null
        try {
            session.adapter?.bluetoothLeAdvertiser?.stopAdvertising(cb)
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
            session.loop.post {
                if (advertiseCallback === this) {
                    advertiseFailures = 0
                    bleLog(Log.INFO, "advertising" + if (withData) " with service data" else "")
                }
            }
        }

        override fun onStartFailure(errorCode: Int) {
            session.loop.post { onAdvertiseFailure(this, errorCode) }
        }
    }
}
