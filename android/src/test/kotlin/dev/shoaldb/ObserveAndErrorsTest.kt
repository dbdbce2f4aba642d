package dev.shoaldb

import kotlinx.coroutines.CoroutineStart
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import kotlinx.serialization.json.jsonPrimitive
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Assertions.fail
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir
import java.nio.file.Path

/** Observing queries through Flows, and the errors an app handles. */
class ObserveAndErrorsTest {
    @TempDir
    lateinit var dir: Path

    private fun ids(docs: List<String>) = docs.map { doc(it)["_id"]!!.jsonPrimitive.content }

    @Test
    fun `changes() emits the current result, then inserts, updates and removals`() = runBlocking<Unit> {
        openStore(dir, "observe").use { store ->
            val tasks = store.collection("tasks")
            tasks.upsert("""{"_id": "a", "title": "first", "done": false}""")
            tasks.upsert("""{"_id": "z", "title": "finished", "done": true}""")

            val events = Channel<ChangeEvent>(Channel.UNLIMITED)
            val collector = launch(start = CoroutineStart.UNDISPATCHED) {
                tasks.changes(Query(filter = "done == false", sort = listOf(SortKey("_id")))).collect { events.send(it) }
            }
            suspend fun next() = withTimeout(PATIENCE) { events.receive() }

            val initial = next()
            assertEquals("tasks", initial.collection)
            assertEquals(listOf("a"), ids(initial.inserted))
            assertEquals(listOf("a"), ids(initial.results))

            tasks.upsert("""{"_id": "b", "title": "second", "done": false}""")
            val inserted = next()
            assertEquals(listOf("b"), ids(inserted.inserted))
            assertEquals(listOf("a", "b"), ids(inserted.results))

            tasks.update("z") { set("title", "outside the result") } // no event: z is not in the result
            tasks.update("a") { set("title", "first, renamed") }
            val updated = next()
            assertEquals(listOf("a"), ids(updated.updated))
            assertEquals("first, renamed", doc(updated.updated[0])["title"]!!.jsonPrimitive.content)
            assertTrue(updated.inserted.isEmpty() && updated.removed.isEmpty())

            tasks.update("b") { set("done", true) } // leaves the result
            assertEquals(listOf("b"), next().removed)
            assertTrue(tasks.remove("a"))
            val removed = next()
            assertEquals(listOf("a"), removed.removed)
            assertTrue(removed.results.isEmpty())

            collector.cancel()
            collector.join()
            tasks.upsert("""{"_id": "c", "done": false}""")
            assertTrue(events.tryReceive().isFailure, "no event after the flow is cancelled")
        }
    }

    @Test
    fun `documents() gives the whole current list`() = runBlocking<Unit> {
        openStore(dir, "docs").use { store ->
            val notes = store.collection("notes")
            notes.upsert("""{"_id": "n1", "pinned": true}""")
            val pinned = Query(filter = "pinned == true")
            assertEquals(listOf("n1"), ids(withTimeout(PATIENCE) { notes.documents(pinned).first() }))

            val job = launch { notes.upsert("""{"_id": "n2", "pinned": true}""") }
            val both = withTimeout(PATIENCE) { notes.documents(pinned).first { it.size == 2 } }
            job.join()
            assertEquals(setOf("n1", "n2"), ids(both).toSet())
        }
    }

    @Test
    fun `errors an app handles`() = runBlocking<Unit> {
        val store = openStore(dir, "errors")
        val tasks = store.collection("tasks")

        val badJson = expectThrows<ShoalException.InvalidArgument> { tasks.upsert("""{"title": """) }
        assertTrue(badJson.message!!.contains("JSON"), badJson.message)
        expectThrows<ShoalException.InvalidArgument> { tasks.upsert("[1, 2]") }
        expectThrows<ShoalException.InvalidArgument> { store.collection("") }
        expectThrows<ShoalException.InvalidArgument> { tasks.put(null, "x" to Double.NaN) }
        expectThrows<ShoalException.InvalidArgument> { tasks.changes(Query(filter = "done ==")).first() }

        val missing = expectThrows<ShoalException.NotFound> { tasks.update("nope") { set("title", "x") } }
        assertTrue(missing.message!!.contains("nope"), missing.message)
        expectThrows<ShoalException.Sync> { store.fetchAttachment(store.putAttachment(byteArrayOf(1), emptyMap()).copy(hash = "1".repeat(64))) }

        tasks.upsert("""{"_id": "kept"}""")
        store.shutdown()
        store.shutdown() // a second shutdown does nothing
        expectThrows<ShoalException.Closed> { tasks.get("kept") }
        expectThrows<ShoalException.Closed> { tasks.upsert("{}") }
        expectThrows<ShoalException.Closed> { store.collections() }
        expectThrows<ShoalException.Closed> { store.collection("tasks") }
        expectThrows<ShoalException.Closed> { store.write { upsert("tasks", "{}") } }
        expectThrows<ShoalException.Closed> { store.startSync() }
        expectThrows<ShoalException.Closed> { store.presence().first() }
        store.close()

        // The data outlives the store object: reopening the file finds it.
        openStore(dir, "errors").use { again ->
            assertEquals("{\"_id\":\"kept\"}", again.collection("tasks").get("kept"))
        }
    }

    @Test
    fun `use {} releases the store and its collections`() {
        val tasks = openStoreBlocking(dir, "use").use { store ->
            store.collection("tasks").also { it.upsertBlocking("""{"_id": "t"}""") }
        }
        expectThrows<ShoalException.Closed> { tasks.getBlocking("t") }
        expectThrows<ShoalException.Closed> { runBlocking { tasks.get("t") } }
    }

    @Test
    fun `observeBlocking delivers the current result before it returns`() {
        openStoreBlocking(dir, "blocking").use { store ->
            val tasks = store.collection("tasks")
            tasks.putBlocking("a", "done" to false)
            val events = java.util.concurrent.LinkedBlockingQueue<ChangeEvent>()
            val handle = tasks.observeBlocking(Query(filter = "done == false"), object : CollectionObserver {
                override fun onChange(event: ChangeEvent) {
                    events.add(event)
                }
            })
            handle.use {
                assertEquals(listOf("a"), ids(events.poll()?.results ?: fail("no first event before it returned")))
                tasks.updateBlocking("a") { set("done", true) }
                val left = events.poll(PATIENCE.inWholeSeconds, java.util.concurrent.TimeUnit.SECONDS)
                assertEquals(listOf("a"), left?.removed)
                it.cancel()
            }
            tasks.updateBlocking("a") { set("done", false) }
            assertEquals(null, events.poll(), "no event after cancel")
        }
    }
}
