package dev.shoaldb

import kotlinx.coroutines.runBlocking
import kotlinx.serialization.json.jsonPrimitive
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir
import java.nio.file.Path

/** Declared indexes: createIndex, indexes, explain, dropIndex. */
class IndexesTest {
    @TempDir
    lateinit var dir: Path

    /** `kind == "a"`, most expensive first, five of them. */
    private val priciestOfA = Query(
        filter = "kind == \$k",
        params = params("k" to "a"),
        sort = listOf(SortKey("price", descending = true)),
        limit = 5u,
    )

    private fun ids(docs: List<String>): List<String> = docs.map { doc(it)["_id"]!!.jsonPrimitive.content }

    @Test
    fun `an index serves a filtered, sorted, limited query and is kept up to date`() = runBlocking<Unit> {
        openStore(dir, "shop").use { store ->
            val items = store.collection("items")
            val kinds = listOf("a", "b", "c")
            store.write {
                for (i in 0 until 200) {
                    upsert(items, """{"_id": "p${"%03d".format(i)}", "kind": "${kinds[i % 3]}", "price": $i}""")
                }
            }
            assertEquals(200, items.all().size)
            assertTrue(items.indexes().isEmpty(), "a new collection has no index")

            // Without an index: the right result, and a plan that uses no declared index.
            val before = items.find(priciestOfA)
            assertEquals(listOf("p198", "p195", "p192", "p189", "p186"), ids(before))
            val scan = items.explain(priciestOfA)
            assertTrue(scan.indexes.isEmpty(), "no index is declared yet: $scan")
            assertTrue(scan.steps.isNotEmpty(), "SQLite's plan has at least one step: $scan")

            // Declaring the index is new once, then does nothing.
            assertTrue(items.createIndex(listOf("kind", "price")))
            assertFalse(items.createIndex(listOf("kind", "price")))
            val declared = items.indexes()
            assertEquals(1, declared.size, "indexes: $declared")
            val index = declared.single()
            assertEquals(listOf("kind", "price"), index.paths)
            assertTrue(index.name.isNotBlank(), "index name: $index")

            // The query now uses it, sorted in SQL, with the same result.
            val plan = items.explain(priciestOfA)
            assertEquals(listOf(index.name), plan.indexes, "plan: $plan")
            assertTrue(plan.sortedInSql, "plan: $plan")
            assertEquals(before, items.find(priciestOfA))

            // A write after the index exists shows in the indexed query.
            items.update("p003") { set("price", 1000) }
            assertEquals(listOf("p003", "p198", "p195", "p192", "p189"), ids(items.find(priciestOfA)))
            assertEquals("1000", items.getField("p003", "price"))

            // Dropping it: there was one, then there is none; the query still answers the same without it.
            assertTrue(items.dropIndex(listOf("kind", "price")))
            assertFalse(items.dropIndex(listOf("kind", "price")))
            assertTrue(items.indexes().isEmpty(), "indexes after the drop: ${items.indexes()}")
            assertTrue(items.explain(priciestOfA).indexes.isEmpty())
            assertEquals(listOf("p003", "p198", "p195", "p192", "p189"), ids(items.find(priciestOfA)))
        }
    }

    @Test
    fun `an invalid index is an InvalidArgument and declares nothing`() {
        // Not a coroutine: the blocking twins, as code on a background thread calls them.
        openStoreBlocking(dir, "shop").use { store ->
            val items = store.collection("items")
            items.upsertBlocking("""{"_id": "p1", "kind": "a", "price": 1}""")
            val quote = expectThrows<ShoalException.InvalidArgument> { items.createIndexBlocking(listOf("`a\"b`")) }
            assertTrue(quote.message!!.isNotBlank())
            expectThrows<ShoalException.InvalidArgument> { items.createIndexBlocking(emptyList()) }
            expectThrows<ShoalException.InvalidArgument> { items.createIndexBlocking(listOf("kind..price")) }
            assertTrue(items.indexesBlocking().isEmpty(), "indexes: ${items.indexesBlocking()}")
            assertTrue(items.createIndexBlocking(listOf("kind")))
            assertEquals(listOf(listOf("kind")), items.indexesBlocking().map { it.paths })
            assertTrue(items.dropIndexBlocking(listOf("kind")))
        }
    }
}
