package dev.shoaldb

import kotlinx.serialization.json.Json
import java.util.logging.Level
import java.util.logging.Logger

/**
 * Entry point of the Kotlin API: open a store, install a logger.
 *
 * ```kotlin
 * Shoal.installLogger()                       // java.util.logging, INFO and above
 * val store = Shoal.open("/data/app.db", "Ana's phone", "app secret") // suspends; Shoal.openBlocking does not
 * store.use {                                 // Store is AutoCloseable
 *     val tasks = it.collection("tasks")
 *     tasks.upsert("""{"_id": "t1", "title": "Buy milk"}""")
 * }
 * ```
 *
 * Every read and write of a [Store] or [Collection] is a `suspend` function that runs on Shoal's own threads, never
 * the caller's, so it may be called from the main thread; cancelling the calling coroutine stops the work (a write
 * batch not yet committed commits nothing). Each also has a `…Blocking` twin (`getBlocking`, `upsertBlocking`, …)
 * that runs on the calling thread, for code already on a background thread.
 */
object Shoal {
    /** The version of the Shoal library (the Rust core inside the bindings). */
    val version: String
        get() = shoalVersion()

    /**
     * The [Json] that typed collections ([TypedCollection], `store.collection<T>(name)`) use unless given another:
     * it ignores the fields the class does not declare (other versions of the app may add some), writes properties
     * equal to their default (`encodeDefaults`) and writes `null` properties as `null` (`explicitNulls`), so that a
     * typed write leaves out nothing it means to set. To configure more, start from this one:
     * `Json(Shoal.json) { serializersModule = myModule }`.
     */
    val json: Json = Json {
        ignoreUnknownKeys = true
        encodeDefaults = true
        explicitNulls = true
    }

    /**
     * Opens (or creates) the store in the database file at [path]. Sync does not start until [Store.startSync].
     * Opening reads the file (and migrates an older one) on Shoal's own threads, never the caller's; from code
     * that is not in a coroutine, use [openBlocking].
     *
     * Keep the returned [Store] for as long as you use it or any [Collection] taken from it: a collection works
     * only while its store is open. Close it when done:
     * - [Store.close] (or `store.use { ... }`) releases this handle; the store then stops sync and closes the file
     *   in the background;
     * - [Store.shutdown] stops sync and closes the file before it returns (do it before reopening or deleting the
     *   file). Every later call on the store or its collections throws [ShoalException.Closed].
     *
     * @param path the database file, created if missing (on Android, e.g. in the no-backup files directory).
     * @param deviceName this device's name as the other devices see it.
     * @param appSecret **development mode**: a secret every device of the app shares; only devices holding it sync
     *   with each other, and each is trusted with everything. Used only while no certificate is installed
     *   ([Store.installCertificate], see [Authority]): an enrolled device syncs with its certificate instead.
     *   `null` (the default): certificates only ([Store.startSync] throws [ShoalException.Certificate] until one
     *   is installed).
     * @param sync how this device finds and connects to the others (used by [Store.startSync]).
     * @param keyVault where this device's private keys (its Noise key and signing key) are kept, outside the
     *   database (see [KeyVault]): on Android `ShoalAndroid.keyVault(context)` (an `AndroidKeystoreVault`). `null`
     *   (the default): files in the directory `<path>-keys` beside the database, readable by the app only — right
     *   for desktops and tests; on a phone that directory would have to be kept out of backups.
     * @throws ShoalException.InvalidArgument for an empty device name or secret, or a malformed address or
     *   subscription in [sync]; [ShoalException.Storage] when the file cannot be opened, or [keyVault] throws (the
     *   message carries its reason).
     */
    suspend fun open(
        path: String,
        deviceName: String,
        appSecret: String? = null,
        sync: SyncConfig = SyncConfig(),
        keyVault: KeyVault? = null,
    ): Store = Store.open(storeConfig(path, deviceName, appSecret, sync, keyVault))

    /**
     * Like [open], on the calling thread, blocking it until the store is open: for background threads (and Java)
     * only, never the main thread. The parameters and errors are [open]'s.
     */
    @JvmStatic
    @JvmOverloads
    fun openBlocking(
        path: String,
        deviceName: String,
        appSecret: String? = null,
        sync: SyncConfig = SyncConfig(),
        keyVault: KeyVault? = null,
    ): Store = Store.openBlocking(storeConfig(path, deviceName, appSecret, sync, keyVault))

    private fun storeConfig(
        path: String,
        deviceName: String,
        appSecret: String?,
        sync: SyncConfig,
        keyVault: KeyVault?,
    ) = StoreConfig(path = path, deviceName = deviceName, appSecret = appSecret, sync = sync, keyVault = keyVault)

    /**
     * Sends Shoal's log messages of [level] and more severe to [logger], replacing any logger installed before
     * (there is one per process). Exceptions thrown by [logger] are swallowed, never passed back into Shoal.
     *
     * @param logger where the messages go; by default [JulLogger] (java.util.logging).
     * @param level the most detailed level passed on; finer messages are dropped before they reach Kotlin.
     */
    @JvmStatic
    @JvmOverloads
    fun installLogger(logger: ShoalLogger = JulLogger(), level: LogLevel = LogLevel.INFO) {
        setLogger(if (logger is SafeLogger) logger else SafeLogger(logger), level)
    }
}

/**
 * A [ShoalLogger] writing to java.util.logging (JUL), which works on any JVM and on Android.
 *
 * Each message goes to the JUL logger named after its Rust target, with `::` turned into `.` (for example
 * `shoaldb.sync.engine`), so levels can be configured per module (`shoaldb.level = FINE`). Levels map as
 * ERROR → SEVERE, WARN → WARNING, INFO → INFO, DEBUG → FINE, TRACE → FINEST. JUL's default console handler prints
 * INFO and above to stderr.
 */
class JulLogger : ShoalLogger {
    /** Writes one message; never throws. */
    override fun log(level: LogLevel, target: String, message: String) {
        try {
            val jul = when (level) {
                LogLevel.ERROR -> Level.SEVERE
                LogLevel.WARN -> Level.WARNING
                LogLevel.INFO -> Level.INFO
                LogLevel.DEBUG -> Level.FINE
                LogLevel.TRACE -> Level.FINEST
            }
            val logger = Logger.getLogger(target.replace("::", ".").ifEmpty { "shoaldb" })
            if (logger.isLoggable(jul)) logger.logp(jul, target, null, message)
        } catch (_: Throwable) {
            // Nothing sensible to do: a logger must never fail the code that logs.
        }
    }
}

/** Wraps an app's logger so that nothing it throws reaches Rust. */
private class SafeLogger(private val inner: ShoalLogger) : ShoalLogger {
    override fun log(level: LogLevel, target: String, message: String) {
        try {
            inner.log(level, target, message)
        } catch (_: Throwable) {
            // Swallowed: reporting it through the logger that just failed could loop.
        }
    }
}

/** Where the Kotlin layer reports exceptions thrown by app callbacks (they never reach Rust). */
internal val sdkLog: Logger = Logger.getLogger("dev.shoaldb")

/** Runs an app-provided callback body; logs and swallows anything it throws. */
internal inline fun callback(what: String, body: () -> Unit) {
    try {
        body()
    } catch (t: Throwable) {
        try {
            sdkLog.log(Level.WARNING, "$what threw; ignored", t)
        } catch (_: Throwable) {
        }
    }
}
