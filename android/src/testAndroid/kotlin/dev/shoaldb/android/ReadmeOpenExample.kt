package dev.shoaldb.android

import android.content.Context
import dev.shoaldb.LogLevel
import dev.shoaldb.Shoal
import dev.shoaldb.Store

/**
 * The first example of android/README.md (logging, the database path, the key vault, the multicast lock),
 * compiled (not run: Robolectric has no Android Keystore) so that the names it uses stay right. Keep the two in step.
 * A suspend function: `Shoal.open` suspends (from a coroutine, e.g. `lifecycleScope.launch`; or `Shoal.openBlocking`
 * on a background thread).
 */
@Suppress("unused")
internal suspend fun readmeOpenExample(context: Context): Store {
    ShoalAndroid.installLogcatLogger(LogLevel.INFO)              // once, e.g. in Application.onCreate
    val path = ShoalAndroid.databasePath(context)                // <noBackupFilesDir>/shoal.db
    val store = Shoal.open(path, "Ana's phone", keyVault = ShoalAndroid.keyVault(context)) // in a coroutine; keys: Android Keystore
    val lock = ShoalAndroid.multicastLock(context).apply { acquire() } // while LAN sync runs; release() after
    lock.release()
    return store
}
