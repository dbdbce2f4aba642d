package dev.shoaldb.android

import android.content.Context
import android.net.wifi.WifiManager
import android.util.Log
import dev.shoaldb.LogLevel
import dev.shoaldb.ShoalLogger
import dev.shoaldb.setLogger
import java.io.File

/**
 * A [ShoalLogger] that writes Shoal's log records to Logcat through [android.util.Log].
 *
 * Each record is written as `[target] message` under [tag], with the Logcat priority that matches its level:
 * ERROR → [Log.e], WARN → [Log.w], INFO → [Log.i], DEBUG → [Log.d], TRACE → [Log.v].
 *
 * Records are filtered on the Rust side by the level given to [setLogger] (see [ShoalAndroid.installLogcatLogger]),
 * so this class does not filter again: a DEBUG record that reaches it is written. The Rust core calls [log] from
 * its own threads; [android.util.Log] is safe to call from any thread. Logcat cuts entries longer than about
 * 4 000 bytes.
 *
 * @property tag the Logcat tag of every record (default `"Shoal"`).
 */
class LogcatLogger(private val tag: String = "Shoal") : ShoalLogger {

    /**
     * Writes one record to Logcat.
     *
     * @param level the record's level, mapped to a Logcat priority.
     * @param target where in the Rust code the record comes from (a module path such as `shoaldb::sync`).
     * @param message the record's text.
     */
    override fun log(level: LogLevel, target: String, message: String) {
        val text = if (target.isEmpty()) message else "[$target] $message"
        when (level) {
            LogLevel.ERROR -> Log.e(tag, text)
            LogLevel.WARN -> Log.w(tag, text)
            LogLevel.INFO -> Log.i(tag, text)
            LogLevel.DEBUG -> Log.d(tag, text)
            LogLevel.TRACE -> Log.v(tag, text)
        }
    }
}

/**
 * Android conveniences for Shoal: logging to Logcat, where to keep the database file and the device's private
 * keys, and the Wi-Fi multicast lock that mDNS discovery of peers on the LAN needs.
 *
 * Nothing here is required: the Kotlin API in `dev.shoaldb` works on Android without it. A phone app should pass
 * [keyVault] all the same, so that no file it could back up holds the device's private keys.
 */
object ShoalAndroid {

    /**
     * Sends Shoal's log records to Logcat from now on, through a [LogcatLogger].
     *
     * There is one logger per process: calling this again, or calling [setLogger] with another logger, replaces
     * it. Call it once, early (for example in `Application.onCreate`), so that records from opening a store are
     * not lost.
     *
     * @param level the most detailed level to write; records below it are dropped in Rust before crossing into
     *   Kotlin. [LogLevel.DEBUG] and [LogLevel.TRACE] are verbose and slow sync down: keep them for debugging.
     * @param tag the Logcat tag (default `"Shoal"`).
     */
    @JvmStatic
    @JvmOverloads
    fun installLogcatLogger(level: LogLevel = LogLevel.INFO, tag: String = "Shoal") {
        setLogger(LogcatLogger(tag), level)
    }

    /**
     * The absolute path of a database file in the app's no-backup directory ([Context.getNoBackupFilesDir]).
     *
     * That directory is private to the app and excluded from Auto Backup and device-to-device transfer. The
     * database holds no private key (those are in the store's key vault, see [keyVault]), so a copy of it cannot
     * make another phone pass for this one; it is kept out of backups all the same because sync, not backup, is
     * how a new device gets the data: a database restored without its keys opens as a new device, with new keys,
     * which must be enrolled again.
     *
     * @param context any context of the app (only its no-backup directory is used).
     * @param name the file name (default `"shoal.db"`).
     * @return the path to pass where the Shoal API asks for the database path.
     */
    @JvmStatic
    @JvmOverloads
    fun databasePath(context: Context, name: String = "shoal.db"): String =
        File(context.noBackupFilesDir, name).absolutePath

    /**
     * The vault that keeps the private keys of the store in [databasePath] ([context], [name]): an
     * [AndroidKeystoreVault] (the keys encrypted by a non-exportable Android Keystore key, the ciphertext in
     * `<noBackupFilesDir>/shoal-keys/<name>`). Pass it with the path:
     *
     * ```kotlin
     * val store = Shoal.open(ShoalAndroid.databasePath(context), "Ana's phone", keyVault = ShoalAndroid.keyVault(context))
     * ```
     *
     * Neither the keys nor the Keystore key are ever in a backup: a phone restored from a backup, or given the
     * app's data by device transfer, is a new device (new keys, enrolled again).
     *
     * @param context any context of the app (only its no-backup directory is used).
     * @param name the database's file name, which names the vault (default `"shoal.db"`).
     * @return the vault, to pass as `keyVault` (of `Shoal.open` or `StoreConfig`).
     * @throws IllegalArgumentException when [name] is not a plain file name (letters, digits, `.`, `-`, `_`).
     */
    @JvmStatic
    @JvmOverloads
    fun keyVault(context: Context, name: String = "shoal.db"): AndroidKeystoreVault =
        AndroidKeystoreVault.create(context, name)

    /**
     * A Wi-Fi multicast lock for mDNS discovery of peers on the LAN. The lock is returned not held.
     *
     * Android drops multicast packets that are not addressed to the device, mDNS announcements included, unless
     * some app holds a multicast lock. Without it, this device can still announce itself and reach peers it is
     * told about, but it may not discover others. Acquire the lock while LAN sync runs and release it when sync
     * stops, since it costs battery:
     *
     * ```kotlin
     * val lock = ShoalAndroid.multicastLock(context).apply { acquire() }
     * try {
     *     // start LAN sync ... stop LAN sync
     * } finally {
     *     lock.release()
     * }
     * ```
     *
     * Needs the `CHANGE_WIFI_MULTICAST_STATE` permission, which this library's manifest declares (a normal
     * permission: granted at install, no prompt). The lock is not reference-counted: one
     * [release][WifiManager.MulticastLock.release] undoes any number of [acquire][WifiManager.MulticastLock.acquire]
     * calls.
     *
     * @param context any context of the app; its application context is used, so the lock does not keep an
     *   activity alive.
     * @param tag a name for the lock, shown by `adb shell dumpsys wifi`.
     * @return a new, unheld lock.
     * @throws IllegalStateException if the device has no Wi-Fi service.
     */
    @JvmStatic
    @JvmOverloads
    fun multicastLock(context: Context, tag: String = "Shoal mDNS"): WifiManager.MulticastLock {
        val wifi = context.applicationContext.getSystemService(Context.WIFI_SERVICE) as? WifiManager
            ?: throw IllegalStateException("this device has no Wi-Fi service")
        return wifi.createMulticastLock(tag).apply { setReferenceCounted(false) }
    }
}
