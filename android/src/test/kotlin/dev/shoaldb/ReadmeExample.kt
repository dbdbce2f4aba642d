package dev.shoaldb

import kotlinx.coroutines.cancelAndJoin
import kotlinx.coroutines.coroutineScope
import kotlinx.coroutines.launch

/**
 * The Kotlin example of the README (between the markers), compiled and run by [ReadmeExampleTest]. Its `println`
 * is the [println] parameter, so that the test can check what the example printed.
 */
suspend fun readmeExample(dir: String, println: (Any?) -> Unit = ::println) = coroutineScope {
    // README-BEGIN
    Shoal.installLogger()                                       // java.util.logging; on Android: LogcatLogger
    Shoal.open("$dir/app.db", deviceName = "Ana's laptop", appSecret = "our app's shared secret",
        sync = SyncConfig(listen = "127.0.0.1:0", mdns = false) // the default (mDNS on) finds devices on the LAN
    ).use { store ->                                            // close() stops sync; shutdown() also waits for it
        val tasks = store.collection("tasks")
        val watcher = launch { tasks.documents(Query(filter = "done == false")).collect { println("open: $it") } }
        val id = tasks.upsert("""{"title": "Buy milk", "done": false, "priority": 2}""")
        tasks.update(id) {
            set("title", "Buy oat milk")
            increment("views", 1)
        }
        println("urgent: " + tasks.find(Query(filter = "priority >= \$min", params = params("min" to 2))))
        store.startSync()                                       // also dials SyncConfig.peers, or store.connect(...)
        println("syncing on ${store.listenAddress()}")
        watcher.cancelAndJoin()                                // before the store closes
    }
    // README-END
}
