package dev.shoaldb

import kotlinx.coroutines.runBlocking
import kotlinx.serialization.json.jsonPrimitive
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir
import java.nio.file.Path

/** Atomic multi-document writes and queries. */
class WriteAndQueryTest {
    @TempDir
    lateinit var dir: Path

    @Test
    fun `a write batch commits several documents and collections together`() = runBlocking<Unit> {
        openStore(dir, "shop").use { store ->
            val stock = store.collection("stock")
            val ids = store.write {
                put(stock, "milk", "qty" to FieldValue.Counter(10), "price" to 1.2)
                upsert("orders", """{"item": "milk", "qty": 2}""")
                update("stock", "milk") { increment("qty", -2) }
            }
            assertEquals(3, ids.size)
            assertEquals("milk", ids[0])
            assertEquals("milk", ids[2])
            val orderId = ids[1]
            assertEquals("\"milk\"", store.collection("orders").getField(orderId, "item"))
            assertEquals("8", stock.getField("milk", "qty"))
            assertEquals(setOf("orders", "stock"), store.collections().toSet())

            val removed = store.write {
                remove("orders", orderId)
                update(stock, "milk") { increment("qty", 2); set("restocked", true) }
            }
            assertEquals(listOf(orderId, "milk"), removed)
            assertNull(store.collection("orders").get(orderId))
            assertEquals("10", stock.getField("milk", "qty"))
            assertEquals("true", stock.getField("milk", "restocked"))
        }
    }

    @Test
    fun `a write batch that fails midway changes nothing`() = runBlocking<Unit> {
        openStore(dir, "shop").use { store ->
            val stock = store.collection("stock")
            stock.upsert("""{"_id": "milk", "qty": 10}""")
            val before = stock.all()

            expectThrows<ShoalException.NotFound> {
                store.write {
                    upsert("orders", """{"_id": "o1", "item": "milk"}""")
                    update("stock", "milk") { set("qty", 9) }
                    update("stock", "no-such-item") { set("qty", 1) } // fails: the whole batch is rolled back
                }
            }
            expectThrows<ShoalException.InvalidArgument> {
                store.write {
                    upsert("orders", """{"_id": "o2", "item": "milk"}""")
                    upsert("orders", """{"_id": "o3", "item": """) // malformed JSON
                }
            }
            assertEquals(before, stock.all())
            assertNull(store.collection("orders").get("o1"))
            assertNull(store.collection("orders").get("o2"))
            assertFalse("orders" in store.collections())
        }
    }

    @Test
    fun `a query filters with parameters, sorts and limits`() {
        openStore(dir, "tasks").use { store ->
            val tasks = store.collection("tasks")
            listOf(
                """{"_id": "t1", "title": "taxes", "priority": 3, "done": false, "tags": ["home"]}""",
                """{"_id": "t2", "title": "garden", "priority": 2, "done": false, "tags": ["home", "garden"]}""",
                """{"_id": "t3", "title": "report", "priority": 3, "done": false, "tags": ["work"]}""",
                """{"_id": "t4", "title": "dishes", "priority": 1, "done": false, "tags": ["home"]}""",
                """{"_id": "t5", "title": "bills", "priority": 5, "done": true, "tags": ["home"]}""",
                """{"_id": "t6", "title": "email", "priority": 2, "done": false, "tags": ["work"]}""",
            ).forEach { tasks.upsert(it) }

            val query = Query(
                filter = "done == false && priority >= \$min",
                params = mapOf("min" to "2"),
                sort = listOf(SortKey("priority", descending = true), SortKey("title")),
                limit = 3u,
            )
            val titles = tasks.find(query).map { doc(it)["title"]!!.jsonPrimitive.content }
            assertEquals(listOf("report", "taxes", "email"), titles)

            val home = tasks.find(Query(filter = "tags contains \$tag && !done", params = mapOf("tag" to "\"home\""),
                sort = listOf(SortKey("_id"))))
            assertEquals(listOf("t1", "t2", "t4"), home.map { doc(it)["_id"]!!.jsonPrimitive.content })

            assertEquals(6, tasks.find(Query()).size)
            expectThrows<ShoalException.InvalidArgument> { tasks.find(Query(filter = "priority >")) }
            expectThrows<ShoalException.InvalidArgument> { tasks.find(Query(filter = "priority > \$missing")) }
            assertTrue(tasks.find(Query(filter = "priority > 100")).isEmpty())
        }
    }
}
