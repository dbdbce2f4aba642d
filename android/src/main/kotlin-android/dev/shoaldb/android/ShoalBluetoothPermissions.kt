package dev.shoaldb.android

import android.Manifest
import android.content.Context
import android.content.pm.PackageManager
import android.os.Build

/**
 * The Android permissions that Bluetooth LE sync ([AndroidBluetoothRadio]) needs, and which of them the app still
 * lacks.
 *
 * This library's manifest declares all of them (merged into the app's): the app only has to request the runtime
 * ones from the user before it starts sync, for example
 *
 * ```kotlin
 * val missing = ShoalBluetoothPermissions.missing(context)
 * if (missing.isNotEmpty()) requestPermissions.launch(missing) // ActivityResultContracts.RequestMultiplePermissions
 * ```
 *
 * Without them the radio starts nothing it is not allowed to (it logs a warning under the Logcat tag `ShoalBLE`)
 * and every connection attempt fails.
 */
object ShoalBluetoothPermissions {

    /**
     * The permissions Bluetooth LE sync needs on a device running API level [sdkInt].
     *
     * - API 31 (Android 12) and later: `BLUETOOTH_SCAN` (declared with `neverForLocation`: Shoal does not derive
     *   the location from scan results), `BLUETOOTH_ADVERTISE` and `BLUETOOTH_CONNECT`, all runtime permissions
     *   (the "Nearby devices" group).
     * - API 30 and earlier: `BLUETOOTH` and `BLUETOOTH_ADMIN` (granted at install) and `ACCESS_FINE_LOCATION` (a
     *   runtime permission, which BLE scanning requires there; Location must also be switched on for scans to
     *   return anything on API 29–30).
     *
     * @param sdkInt the API level; by default this device's.
     * @return the permission names, for `requestPermissions` or `checkSelfPermission`.
     */
    @JvmStatic
    @JvmOverloads
    fun required(sdkInt: Int = Build.VERSION.SDK_INT): Array<String> =
        if (sdkInt >= Build.VERSION_CODES.S) {
            arrayOf(
                Manifest.permission.BLUETOOTH_SCAN,
                Manifest.permission.BLUETOOTH_ADVERTISE,
                Manifest.permission.BLUETOOTH_CONNECT,
            )
        } else {
            arrayOf(
                Manifest.permission.BLUETOOTH,
                Manifest.permission.BLUETOOTH_ADMIN,
                Manifest.permission.ACCESS_FINE_LOCATION,
            )
        }

    /**
     * The permissions of [required] that this app does not hold yet on this device. Empty when Bluetooth LE sync
     * may start. (`BLUETOOTH` and `BLUETOOTH_ADMIN` are only missing if the app's merged manifest lacks them.)
     *
     * @param context any context of the app.
     * @return the missing permission names, possibly none.
     */
    @JvmStatic
    fun missing(context: Context): Array<String> =
        required().filter { context.checkSelfPermission(it) != PackageManager.PERMISSION_GRANTED }.toTypedArray()

    /** Whether this app holds [permission] (never throws). */
    internal fun granted(context: Context, permission: String): Boolean = try {
        context.checkSelfPermission(permission) == PackageManager.PERMISSION_GRANTED
    } catch (_: Throwable) {
        false
    }

    /** Whether scanning is allowed: `BLUETOOTH_SCAN` on API 31+, a location permission before. */
    internal fun canScan(context: Context): Boolean =
        if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.S) {
            granted(context, Manifest.permission.BLUETOOTH_SCAN)
        } else {
            granted(context, Manifest.permission.ACCESS_FINE_LOCATION) ||
                (Build.VERSION.SDK_INT < Build.VERSION_CODES.Q && granted(context, Manifest.permission.ACCESS_COARSE_LOCATION))
        }

    /** Whether advertising is allowed: `BLUETOOTH_ADVERTISE` on API 31+ (and `BLUETOOTH_CONNECT` for the server). */
    internal fun canAdvertise(context: Context): Boolean =
        if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.S) {
            granted(context, Manifest.permission.BLUETOOTH_ADVERTISE) && granted(context, Manifest.permission.BLUETOOTH_CONNECT)
        } else {
            granted(context, Manifest.permission.BLUETOOTH_ADMIN)
        }

    /** Whether connecting is allowed: `BLUETOOTH_CONNECT` on API 31+, `BLUETOOTH` before. */
    internal fun canConnect(context: Context): Boolean =
        if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.S) {
            granted(context, Manifest.permission.BLUETOOTH_CONNECT)
        } else {
            granted(context, Manifest.permission.BLUETOOTH)
        }
}
