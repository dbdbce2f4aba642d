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
    fun `a query filters with parameters, sorts and limits`() = runBlocking<Unit> {
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
                params = params("min" to 2),
                sort = listOf(SortKey("priority", descending = true), SortKey("title")),
                limit = 3u,
            )
            val titles = tasks.find(query).map { doc(it)["title"]!!.jsonPrimitive.content }
            assertEquals(listOf("report", "taxes", "email"), titles)

            val home = tasks.find(Query(filter = "tags contains \$tag && !done", params = params("tag" to "home"),
                sort = listOf(SortKey("_id"))))
            assertEquals(listOf("t1", "t2", "t4"), home.map { doc(it)["_id"]!!.jsonPrimitive.content })

            assertEquals(6, tasks.find(Query()).size)
            expectThrows<ShoalException.InvalidArgument> { tasks.find(Query(filter = "priority >")) }
            expectThrows<ShoalException.InvalidArgument> { tasks.find(Query(filter = "priority > \$missing")) }
            assertTrue(tasks.find(Query(filter = "priority > 100")).isEmpty())
        }
    }

    @Test
    fun `a query takes native parameters - numbers, strings, booleans, and lists for in`() = runBlocking<Unit> {
        openStore(dir, "params").use { store ->
            val tasks = store.collection("tasks")
            store.write {
                upsert(tasks, """{"_id": "t1", "title": "taxes", "priority": 3, "done": false, "area": "home"}""")
                upsert(tasks, """{"_id": "t2", "title": "mow", "priority": 2, "done": false, "area": "garden"}""")
                upsert(tasks, """{"_id": "t3", "title": "report", "priority": 5, "done": false, "area": "work"}""")
                upsert(tasks, """{"_id": "t4", "title": "weeds", "priority": 4, "done": false, "area": "garden"}""")
                upsert(tasks, """{"_id": "t5", "title": "bills", "priority": 4, "done": true, "area": "home"}""")
                upsert(tasks, """{"_id": "t6", "title": "dishes", "priority": 1, "done": false, "area": "home"}""")
            }
            fun ids(docs: List<String>) = docs.map { doc(it)["_id"]!!.jsonPrimitive.content }

            val query = Query(
                filter = "priority >= \$min && area in \$areas && done == \$done && title != \$skip",
                params = params("min" to 2, "areas" to listOf("home", "garden"), "done" to false, "skip" to "mow"),
                sort = listOf(SortKey("_id")),
            )
            assertEquals(listOf("t1", "t4"), ids(tasks.find(query)))
            val skipNone = query.copy(params = query.params + params("skip" to null)) // `title != null`
            assertEquals(listOf("t1", "t2", "t4"), ids(tasks.find(skipNone)))

            // Arrays, Long, Short, Double and Float convert too; an integer equals a double of the same value.
            fun priority(filter: String, value: Any) =
                Query(filter = filter, params = params("p" to value), sort = listOf(SortKey("_id")))
            val oneOrFive = arrayOf<Any>(1L, 5.toShort())
            assertEquals(listOf("t3", "t6"), ids(tasks.find(priority("priority in \$p", oneOrFive))))
            assertEquals(listOf("t3"), ids(tasks.find(priority("priority == \$p", 5.0f))))
            assertEquals(listOf("t3"), ids(tasks.findBlocking(priority("priority > \$p", 4.5))))
        }
    }

    @Test
    fun `params converts Kotlin values to query values and names the one it cannot`() {
        assertEquals(
            mapOf(
                "n" to QueryValue.Int(3),
                "s" to QueryValue.String("x"),
                "b" to QueryValue.Bool(true),
                "none" to QueryValue.Null,
                "nested" to QueryValue.Array(
                    listOf(QueryValue.Int(1), QueryValue.Array(listOf(QueryValue.Double(0.5)))),
                ),
                "as is" to QueryValue.Double(2.0),
            ),
            params("n" to 3.toByte(), "s" to "x", "b" to true, "none" to null, "nested" to listOf(1, setOf(0.5f)),
                "as is" to QueryValue.Double(2.0)),
        )
        val e = expectThrows<IllegalArgumentException> { params("ok" to 1, "when" to listOf("a", java.util.Date())) }
        assertTrue(e.message!!.startsWith("query parameter \$when[1]: java.util.Date is not a query value"), e.message)
        expectThrows<IllegalArgumentException> { QueryValue.of(mapOf("a" to 1)) }
    }
}
