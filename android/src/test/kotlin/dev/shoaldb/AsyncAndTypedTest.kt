package dev.shoaldb

import kotlinx.coroutines.CancellationException
import kotlinx.coroutines.CompletableDeferred
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.CoroutineStart
import kotlinx.coroutines.async
import kotlinx.coroutines.asCoroutineDispatcher
import kotlinx.coroutines.delay
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withContext
import kotlinx.coroutines.withTimeout
import kotlinx.serialization.SerialName
import kotlinx.serialization.Serializable
import kotlinx.serialization.SerializationException
import kotlinx.serialization.json.jsonPrimitive
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir
import java.io.RandomAccessFile
import java.nio.file.Path
import java.util.concurrent.Executors

/** Who a task is for: a nested object of [Task]. */
@Serializable
data class Assignee(val name: String, val city: String? = null)

/** A typed document: the id, a nested object, a list, nullable and defaulted properties. */
@Serializable
data class Task(
    @SerialName("_id") val id: String? = null,
    val title: String,
    val done: Boolean = false,
    val priority: Int = 0,
    val tags: List<String> = emptyList(),
    val assignee: Assignee? = null,
    val note: String? = null,
)

/** The suspend API off the caller's thread, cancellation reaching Rust, typed documents and their diff-aware writes. */
class AsyncAndTypedTest {
    @TempDir
    lateinit var dir: Path

    /** [count] upserts into collection `bulk`, ids `d0`, `d1`, …: one big atomic batch. */
    private fun bulkBatch(count: Int): List<WriteOp> =
        List(count) { WriteOp.Upsert("bulk", """{"_id": "d$it", "n": $it, "text": "some words to store"}""") }

    private fun id(document: String): String = doc(document)["_id"]?.jsonPrimitive?.content ?: error("no _id")

    /**
     * Starts [call] at once on this thread, lets it run for 100 ms, cancels it and waits for it to end; returns what
     * it threw ([what] names it in a failure).
     */
    private suspend fun CoroutineScope.cancelMidway(what: String, call: suspend () -> Unit): Throwable? {
        var thrown: Throwable? = null
        val job = launch(start = CoroutineStart.UNDISPATCHED) {
            try {
                call()
            } catch (t: Throwable) {
                thrown = t
                throw t
            }
        }
        assertTrue(job.isActive, "$what is in flight")
        delay(100) // under way
        job.cancel()
        job.join()
        return thrown
    }

    @Test
    fun `a suspend write leaves its thread free for other coroutines`() = runBlocking<Unit> {
        Executors.newSingleThreadExecutor { Thread(it, "the-only-thread") }.asCoroutineDispatcher().use { single ->
            openStore(dir, "async").use { store ->
                val ops = bulkBatch(20_000)
                withContext(single) {
                    // Both are queued on the one thread, the write first. Had `write` blocked its thread, it would
                    // have completed before the other coroutine ran; suspended in Rust, it cannot complete before,
                    // since it resumes on this same thread, behind the other coroutine.
                    val write = async { store.write(ops) }
                    val whileWriting = CompletableDeferred<Pair<Boolean, String>>()
                    launch { whileWriting.complete(write.isCompleted to Thread.currentThread().name) }

                    val (writeWasDone, thread) = whileWriting.await()
                    assertTrue(thread.startsWith("the-only-thread"), thread) // "... @coroutine#N" in debug mode
                    assertFalse(writeWasDone, "the other coroutine ran while the write was in flight")
                    assertEquals(20_000, write.await().size)
                    val resumedOn = Thread.currentThread().name
                    assertTrue(resumedOn.startsWith("the-only-thread"), "it resumes on its dispatcher, not $resumedOn")
                }
                assertEquals(20_000, store.collection("bulk").all().size)
            }
        }
    }

    /*
     * Cancellation tests. The call is launched UNDISPATCHED (`launch` returns once it is suspended waiting for Rust)
     * and cancelled a moment later, so that the work is under way: a batch stops between two writes and rolls back,
     * a file stops being read. The work takes seconds in this debug build (100,000 upserts: about 3 s on a slow
     * 2-core machine; the file: longer), far more than that moment, so finding it done means the cancel did not
     * stop it. Whether the cancel lands before the work starts or during it, nothing may be stored; the batch is
     * also checked to be all or nothing, never part. The moment's length is never asserted on.
     */

    @Test
    fun `cancelling a write batch commits none of it, and the store goes on working`() = runBlocking<Unit> {
        openStore(dir, "cancel").use { store ->
            val bulk = store.collection("bulk")
            val count = 100_000
            val thrown = cancelMidway("the write") { store.write(bulkBatch(count)) }
            assertTrue(thrown is CancellationException, "the caller sees its own cancellation, got $thrown")

            // Writes are serialized: this one commits only after the cancelled batch has ended, one way or the other.
            bulk.upsert("""{"_id": "after", "n": -1}""")
            val ids = bulk.all().map(::id)
            assertTrue(ids.size == 1 || ids.size == count + 1, "all or nothing, never part: ${ids.size} documents")
            assertEquals(1, ids.size, "the cancelled batch left ${ids.size - 1} documents")
            assertEquals("after", ids.single())
            assertNull(bulk.get("d0"))

            // The store goes on working: a batch that is not cancelled commits whole.
            assertEquals(1_000, store.write(bulkBatch(1_000)).size)
            assertEquals(1_001, bulk.all().size)
        }
    }

    @Test
    fun `cancelling putAttachmentFile stores nothing, and the store goes on working`() = runBlocking<Unit> {
        // 320 MiB of zeros, sparse: nothing on disk until a store copies it in.
        val big = dir.resolve("big.bin").toFile()
        RandomAccessFile(big, "rw").use { it.setLength(320L * 1024 * 1024) }
        openStore(dir, "files").use { store ->
            val thrown = cancelMidway("the upload") { store.putAttachmentFile(big.path, mapOf("name" to "big.bin")) }
            assertTrue(thrown is CancellationException, "the caller sees its own cancellation, got $thrown")

            // The token the file would have had: another store takes it in whole, uncancelled. That takes as long as
            // the cancelled call would have, and a store answers hasAttachment only between two attachment writes.
            val token = openStore(dir, "witness").use { witness ->
                witness.putAttachmentFile(big.path, mapOf("name" to "big.bin")).also {
                    assertTrue(witness.hasAttachment(it))
                    witness.shutdown()
                }
            }
            assertEquals(big.length().toULong(), token.length)
            assertFalse(store.hasAttachment(token), "the cancelled upload stored nothing")
            expectThrows<ShoalException.NotFound> { store.attachmentBytes(token) }

            // The store goes on working: a small file is stored whole.
            val bytes = ByteArray(300_000) { (it % 253).toByte() }
            val small = dir.resolve("small.bin").toFile().apply { writeBytes(bytes) }
            val smallToken = store.putAttachmentFile(small.path, emptyMap())
            assertTrue(store.hasAttachmentBlocking(smallToken))
            assertArrayEquals(bytes, store.attachmentBytes(smallToken))
        }
    }

    @Test
    fun `typed documents round trip, ignore unknown fields and keep them`() = runBlocking<Unit> {
        openStore(dir, "typed").use { store ->
            val tasks = store.collection<Task>("tasks")
            assertEquals("tasks", tasks.name)
            val written = Task(
                title = "Buy milk",
                priority = 2,
                tags = listOf("home", "shop"),
                assignee = Assignee("Ana", city = "Lisbon"),
            )
            val id = tasks.upsert(written) // no id: Shoal generates one
            val read = tasks.get(id)
            assertEquals(written.copy(id = id), read)
            assertEquals(
                json("""{"_id": "$id", "title": "Buy milk", "done": false, "priority": 2, "tags": ["home", "shop"],
                         "assignee": {"name": "Ana", "city": "Lisbon"}, "note": null}"""),
                json(tasks.untyped.get(id) ?: error("not stored")),
                "defaults and nulls are written too",
            )

            // Another version of the app adds a field this one does not know.
            tasks.untyped.update(id) { set("reminder", "tomorrow 9:00") }
            val again = tasks.get(id) ?: error("gone")
            assertEquals(read, again, "the unknown field is ignored")

            // A typed write changes nested objects, lists, nulls and defaults, and keeps the unknown field.
            val changed = again.copy(
                title = "Buy oat milk",
                tags = listOf("shop"),
                assignee = Assignee("Ana", city = null),
                note = "two litres",
            )
            assertEquals(id, tasks.upsert(changed))
            assertEquals(changed, tasks.get(id))
            assertEquals("\"tomorrow 9:00\"", tasks.untyped.getField(id, "reminder"))
            tasks.upsert(changed.copy(done = true, note = null, assignee = null))
            tasks.upsert(changed.copy(done = false, note = null, assignee = null)) // back to the default: written
            assertEquals(changed.copy(note = null, assignee = null), tasks.get(id))
            assertEquals("\"tomorrow 9:00\"", tasks.untyped.getField(id, "reminder"))

            // Given ids, queries with native parameters, the Flow, the blocking twins, removal.
            tasks.upsert(Task(id = "t2", title = "Taxes", priority = 3, tags = listOf("home")))
            tasks.upsertBlocking(Task(id = "t3", title = "Report", priority = 1, done = true))
            val open = Query(
                filter = "done == \$done",
                params = params("done" to false),
                sort = listOf(SortKey("priority")),
            )
            assertEquals(listOf("Buy oat milk", "Taxes"), tasks.find(open).map { it.title })
            assertEquals(tasks.find(open), tasks.findBlocking(open))
            val firstList = withTimeout(PATIENCE) { tasks.documents(open).first() }
            assertEquals(listOf("Buy oat milk", "Taxes"), firstList.map { it.title })
            assertEquals(setOf(id, "t2", "t3"), tasks.all().map { it.id }.toSet())
            assertEquals("Report", tasks.getBlocking("t3")?.title)
            assertTrue(tasks.remove("t3"))
            assertNull(tasks.get("t3"))

            // A stored document that does not fit the class fails to decode, saying why.
            tasks.untyped.upsert("""{"_id": "bad", "priority": 1}""")
            val e = expectThrows<SerializationException> { tasks.get("bad") }
            assertTrue(e.message!!.contains("title"), e.message)
        }
    }

    @Test
    fun `a typed write back does not undo another device's concurrent edit, a whole JSON upsert does`() =
        runBlocking<Unit> {
            withSyncedPair(dir) { a, b ->
                val tasksA = a.collection<Task>("tasks")
                val tasksB = b.collection<Task>("tasks")
                tasksA.upsert(Task(id = "typed", title = "Buy milk"))
                tasksA.untyped.upsert("""{"_id": "plain", "title": "Buy milk", "done": false}""")
                eventually("B receives both tasks") { tasksB.get("typed")?.let { tasksB.get("plain") } }
                val readByA = tasksA.get("typed") ?: error("A lost its task")

                // While the devices cannot see each other, B finishes both tasks ...
                b.stopSync()
                tasksB.untyped.update("typed") { set("done", true) }
                tasksB.untyped.update("plain") { set("done", true) }
                // ... and later (by the clock: a tie within one millisecond would go by device id) A renames them,
                // writing back what it read before: `done` is still false there.
                delay(20)
                tasksA.upsert(readByA.copy(title = "Buy oat milk"))
                tasksA.untyped.upsert("""{"_id": "plain", "title": "Buy oat milk", "done": false}""")
                b.startSync()

                val converged = Task(id = "typed", title = "Buy oat milk", done = true)
                eventually("both stores show A's title and B's done", { tasksA.all() to tasksB.all() }) {
                    true.takeIf {
                        tasksA.get("typed") == converged && tasksB.get("typed") == converged &&
                            tasksA.untyped.conflicts("plain", "done").isNotEmpty() &&
                            tasksA.untyped.get("plain") == tasksB.untyped.get("plain")
                    }
                }
                // The typed write left `done` alone: B's edit stands, and nothing collided.
                assertTrue(tasksA.untyped.conflicts("typed", "done").isEmpty())
                assertTrue(tasksB.untyped.conflicts("typed", "done").isEmpty())
                // The whole JSON wrote `done` again: A's stale false collided with B's true, and won (later).
                val plain = doc(tasksB.untyped.get("plain"))
                assertEquals("\"Buy oat milk\"", plain["title"].toString())
                assertEquals("false", plain["done"].toString(), "B's edit is lost")
                assertEquals(listOf("true"), tasksB.untyped.conflicts("plain", "done"))
            }
        }
}
