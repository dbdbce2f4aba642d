package dev.shoaldb

import kotlinx.coroutines.delay
import kotlinx.coroutines.runBlocking
import java.io.File
import java.nio.file.Files
import java.nio.file.StandardCopyOption
import kotlin.system.exitProcess

/*
 * One peer of the cross-language mesh test (Kotlin, Swift and Rust peers syncing over loopback).
 *
 *     java -Djna.library.path=<repo>/target/debug -cp "$(bindings/kotlin/test.sh --mesh-classpath)" \
 *         dev.shoaldb.MeshPeerKt DB NAME SECRET LISTEN [CONNECT...]
 *
 * Opens the store DB as device NAME (app secret SECRET, listening on LISTEN, dialling each CONNECT, mDNS off),
 * starts sync and upserts {"_id": NAME, "from": NAME} into collection `mesh`. Once the collection has 3 documents
 * it sets `seen_by_NAME` = true in each (one update per document), waits until every document has both
 * `seen_by_kotlin` and `seen_by_swift` true, writes `Collection.all()` one document per line to DB.dump (through a
 * temporary file and a rename), waits for the file DB.stop, shuts the store down and exits 0. Gives up after
 * 120 s with exit code 1. Progress goes to stderr.
 */

private const val GIVE_UP_AFTER_MS = 120_000L

private class GaveUp(message: String) : Exception(message)

/** Entry point: `DB NAME SECRET LISTEN [CONNECT...]`. */
fun main(args: Array<String>) {
    if (args.size < 4) {
        System.err.println("usage: MeshPeerKt DB NAME SECRET LISTEN [CONNECT...]")
        exitProcess(2)
    }
    val (db, name, secret, listen) = args
    val connect = args.drop(4)
    val started = System.currentTimeMillis()
    val deadline = started + GIVE_UP_AFTER_MS
    fun progress(message: String) =
        System.err.println("[kotlin-mesh $name +${(System.currentTimeMillis() - started) / 1000.0}s] $message")

    // A call into Shoal that hangs cannot outlive the deadline either.
    Thread({
        Thread.sleep(GIVE_UP_AFTER_MS + 5_000)
        System.err.println("[kotlin-mesh $name] gave up: still running after ${GIVE_UP_AFTER_MS / 1000} s")
        Runtime.getRuntime().halt(1)
    }, "mesh-watchdog").apply { isDaemon = true }.start()

    suspend fun waitFor(what: String, pollMs: Long = 100, done: suspend () -> Boolean) {
        progress("waiting for $what")
        while (!done()) {
            if (System.currentTimeMillis() > deadline) throw GaveUp("gave up after ${GIVE_UP_AFTER_MS / 1000} s waiting for $what")
            delay(pollMs)
        }
        progress("done: $what")
    }

    val code = try {
        Shoal.installLogger(JulLogger(), LogLevel.WARN)
        runBlocking {
            val store = Shoal.open(db, name, secret, SyncConfig(listen = listen, mdns = false, peers = connect))
            store.startSync()
            progress("syncing; listening on ${store.listenAddress()}, dialling $connect")
            val mesh = store.collection("mesh")
            mesh.upsert("""{"_id": ${jsonString(name)}, "from": ${jsonString(name)}}""")

            waitFor("3 documents in `mesh`") { mesh.all().size >= 3 }
            val ids = mesh.all().map { documentId(it) }
            for (id in ids) {
                mesh.update(id, listOf(Edit.Set("seen_by_$name", FieldValue.Bool(true))))
            }
            progress("marked $ids as seen_by_$name")

            val seenByBoth = Query(filter = "seen_by_kotlin == true && seen_by_swift == true")
            waitFor("every document seen by kotlin and swift") {
                val all = mesh.all()
                all.size >= 3 && mesh.find(seenByBoth).size == all.size
            }

            val dump = File("$db.dump")
            val tmp = File("$db.dump.tmp")
            tmp.writeText(mesh.all().joinToString("\n", postfix = "\n"))
            Files.move(tmp.toPath(), dump.toPath(), StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE)
            progress("wrote ${dump.path}")

            waitFor("${db}.stop") { File("$db.stop").exists() }
            store.shutdown()
            progress("shut down")
        }
        0
    } catch (e: GaveUp) {
        System.err.println("[kotlin-mesh $name] ${e.message}")
        1
    } catch (e: Throwable) {
        System.err.println("[kotlin-mesh $name] failed: $e")
        e.printStackTrace()
        1
    }
    exitProcess(code)
}

/** [s] as a JSON string literal. */
private fun jsonString(s: String): String = buildString {
    append('"')
    for (c in s) {
        when {
            c == '"' -> append("\\\"")
            c == '\\' -> append("\\\\")
            c < ' ' -> append("\\u%04x".format(c.code))
            else -> append(c)
        }
    }
    append('"')
}

/** The `_id` of a document as Shoal renders it (`_id` is its first field). */
private fun documentId(json: String): String {
    val match = Regex("""^\{"_id":"((?:[^"\\]|\\.)*)"""").find(json)
        ?: throw IllegalStateException("no _id at the start of $json")
    return match.groupValues[1].replace(Regex("""\\(.)""")) { it.groupValues[1] }
}
