package dev.shoaldb

import kotlinx.coroutines.runBlocking
import kotlinx.serialization.json.JsonObject
import kotlinx.serialization.json.jsonArray
import kotlinx.serialization.json.jsonObject
import kotlinx.serialization.json.jsonPrimitive
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir
import java.nio.file.Path

/** Every CRDT type a field can have, written through the Kotlin DSL and read back as an app would. */
class DocumentTypesTest {
    @TempDir
    lateinit var dir: Path

    private fun withNotes(block: suspend (Store, Collection) -> Unit) = runBlocking {
        openStore(dir, "types").use { store -> block(store, store.collection("notes")) }
    }

    @Test
    fun `registers hold strings, integers, doubles, booleans, bytes, null and JSON`() = withNotes { _, notes ->
        val id = notes.put(
            null,
            "title" to "Groceries",
            "count" to 42,
            "big" to Long.MAX_VALUE,
            "ratio" to 0.25,
            "pinned" to true,
            "raw" to byteArrayOf(1, 2, 3, -1),
            "nothing" to null,
            "extra" to FieldValue.Json("""{"x": [1, 2], "y": "z"}"""),
        )
        assertEquals(json(
            """{"_id": "$id", "title": "Groceries", "count": 42, "big": ${Long.MAX_VALUE}, "ratio": 0.25,
               "pinned": true, "raw": [1, 2, 3, 255], "nothing": null, "extra": {"x": [1, 2], "y": "z"}}""",
        ), json(notes.get(id)!!))

        // A JSON register is replaced as a whole; other registers are overwritten by the last write.
        notes.update(id) {
            set("extra", FieldValue.Json("""{"y": "only"}"""))
            set("count", 7L)
            set("pinned", false)
            set("ratio", 1.5f)
            set("title", "Market")
        }
        val d = doc(notes.get(id))
        assertEquals(json("""{"y": "only"}"""), d["extra"])
        assertEquals("7", d["count"].toString())
        assertEquals("false", d["pinned"].toString())
        assertEquals("1.5", d["ratio"].toString())
        assertEquals("\"Market\"", notes.getField(id, "title"))
        assertEquals("[1,2,3,255]", notes.getField(id, "raw"))
        assertNull(notes.getField(id, "missing"))
    }

    @Test
    fun `counters sum increments, and only counters can be incremented`() = withNotes { _, notes ->
        val id = notes.put("c1", "views" to FieldValue.Counter(5), "name" to FieldValue.Text("t"))
        assertEquals("c1", id)
        notes.update(id) {
            increment("views", 3)
            increment("views", -1)
            increment("views")
            increment("likes", 2L) // created by its first increment
        }
        assertEquals("8", notes.getField(id, "views"))
        assertEquals("2", notes.getField(id, "likes"))

        val e = expectThrows<ShoalException.InvalidArgument> { notes.update(id) { increment("name", 1) } }
        assertTrue(e.message!!.isNotBlank())
        assertEquals("8", notes.getField(id, "views"), "a failed update changes nothing")
    }

    @Test
    fun `text supports insert, delete and splice at code point positions`() = withNotes { _, notes ->
        val id = notes.put(null, "body" to FieldValue.Text("hello world"))
        notes.update(id) { textInsert("body", 0, ">> ") }
        assertEquals("\">> hello world\"", notes.getField(id, "body"))
        notes.update(id) { textDelete("body", 0, 3) }
        assertEquals("\"hello world\"", notes.getField(id, "body"))
        notes.update(id) { textSplice("body", 6, 5, "Shoal") }
        assertEquals("\"hello Shoal\"", notes.getField(id, "body"))

        // Positions count code points: the emoji is one position though it is two Kotlin Chars.
        notes.update(id) {
            textSplice("body", 0, 11, "a\uD83D\uDE00b")
            textInsert("body", 2, "X")
        }
        assertEquals("a\uD83D\uDE00Xb", doc(notes.get(id))["body"]!!.jsonPrimitive.content)

        expectThrows<IllegalArgumentException> { notes.update(id) { textInsert("body", -1, "no") } }
        expectThrows<ShoalException.InvalidArgument> { notes.update(id) { textDelete("body", 2, 100) } }
        assertEquals("a\uD83D\uDE00Xb", doc(notes.get(id))["body"]!!.jsonPrimitive.content)
    }

    @Test
    fun `nested maps merge field by field and are edited by dotted paths`() = withNotes { _, notes ->
        notes.upsert("""{"_id": "m", "a": {"b": {"c": 1, "d": 2}}, "top": "x"}""")
        notes.update("m") {
            set("a.b.c", 10)
            set("a.x.y", "created on the way")
        }
        assertEquals(json("""{"b": {"c": 10, "d": 2}, "x": {"y": "created on the way"}}"""), doc(notes.get("m"))["a"])

        // A merged Map value keeps the fields it does not mention; so does an upsert of a nested object.
        notes.update("m") { merge("a.b", FieldValue.Map("""{"e": {"f": true}}""")) }
        notes.upsert("""{"_id": "m", "a": {"b": {"g": "new"}}}""")
        assertEquals(
            json("""{"c": 10, "d": 2, "e": {"f": true}, "g": "new"}"""),
            json(notes.getField("m", "a.b")!!),
        )
        assertEquals("true", notes.getField("m", "a.b.e.f"))

        notes.update("m") { remove("a.b.d") }
        assertNull(notes.getField("m", "a.b.d"))
        assertEquals("\"x\"", notes.getField("m", "top"), "fields outside the edited map are kept")

        // A whole map as a field of a put.
        val id = notes.put(null, "settings" to FieldValue.Map("""{"theme": {"dark": true}}"""))
        notes.update(id) { set("settings.theme.size", 12) }
        assertEquals(json("""{"theme": {"dark": true, "size": 12}}"""), doc(notes.get(id))["settings"])
    }

    @Test
    fun `arrays push, insert and delete, and objects inside are edited by path`() = withNotes { _, notes ->
        val id = notes.put(
            "list",
            "tags" to FieldValue.Array("""["b"]"""),
            "items" to FieldValue.Array("""[{"title": "milk", "done": false}, {"title": "eggs", "done": false}]"""),
        )
        notes.update(id) {
            arrayPush("tags", "c", "d")
            arrayInsert("tags", 0, "a")
            arrayDelete("tags", 2) // "c"
            set("items[0].done", true)
            arrayPush("items", FieldValue.Map("""{"title": "bread", "done": false}"""))
        }
        notes.update(id) { set("items[2].done", true) }
        val d = doc(notes.get(id))
        assertEquals(json("""["a", "b", "d"]"""), d["tags"])
        assertEquals(
            json("""[{"title": "milk", "done": true}, {"title": "eggs", "done": false},
                    {"title": "bread", "done": true}]"""),
            d["items"],
        )
        assertEquals("\"eggs\"", notes.getField(id, "items[1].title"))

        notes.update(id) { remove("items[1]") }
        val titles = doc(notes.get(id))["items"]!!.jsonArray.map { it.jsonObject["title"]!!.jsonPrimitive.content }
        assertEquals(listOf("milk", "bread"), titles)

        // Mixed element types through FieldValue.of.
        notes.update(id) { arrayPush("tags", 1, 2.5, true, null) }
        assertEquals(json("""["a", "b", "d", 1, 2.5, true, null]"""), doc(notes.get(id))["tags"])
    }

    @Test
    fun `an attachment field holds a token whose bytes are stored once`() = runBlocking<Unit> {
        openStore(dir, "files").use { store ->
            val files = store.collection("files")
            val bytes = ByteArray(100_000) { (it * 31 % 251).toByte() }
            val token = store.putAttachment(bytes, mapOf("name" to "photo.jpg", "mime" to "image/jpeg"))
            assertEquals(64, token.hash.length)
            assertEquals(bytes.size.toULong(), token.length)
            assertEquals("photo.jpg", token.meta["name"])

            val id = files.put(null, "title" to "Holiday", "photo" to token)
            assertEquals(token, files.attachment(id, "photo"))
            assertNull(files.attachment(id, "title"))
            val field = doc(files.get(id))["photo"] as JsonObject
            assertEquals(token.hash, field["_attachment"]!!.jsonPrimitive.content)
            assertEquals(bytes.size.toString(), field["len"].toString())

            assertTrue(store.hasAttachment(token))
            assertArrayEquals(bytes, store.attachmentBytes(token))

            // The same bytes from a file give the same token; saving writes them back.
            val source = dir.resolve("source.bin").toFile().apply { writeBytes(bytes) }
            assertEquals(token.hash, store.putAttachmentFile(source.path, mapOf("name" to "photo.jpg", "mime" to "image/jpeg")).hash)
            val out = dir.resolve("out.bin").toFile()
            store.saveAttachment(token, out.path)
            assertArrayEquals(bytes, out.readBytes())

            val unknown = token.copy(hash = "0".repeat(64))
            assertFalse(store.hasAttachment(unknown))
            expectThrows<ShoalException.NotFound> { store.attachmentBytes(unknown) }
        }
    }

    @Test
    fun `FieldValue of and buildEdits turn Kotlin values into FFI values`() {
        assertEquals(FieldValue.Int(3), FieldValue.of(3))
        assertEquals(FieldValue.Int(3), FieldValue.of(3.toShort()))
        assertEquals(FieldValue.Double(0.5), FieldValue.of(0.5f))
        assertEquals(FieldValue.String("s"), FieldValue.of("s"))
        assertEquals(FieldValue.Null, FieldValue.of(null))
        assertEquals(FieldValue.Counter(1), FieldValue.of(FieldValue.Counter(1)))
        assertTrue((FieldValue.of(byteArrayOf(7)) as FieldValue.Bytes).value.contentEquals(byteArrayOf(7)))
        assertEquals(
            listOf(Edit.Set("a.b", FieldValue.Bool(true)), Edit.Increment("n", 1), Edit.TextInsert("t", 2u, "x")),
            buildEdits { set("a.b", true); increment("n"); textInsert("t", 2, "x") },
        )
        val e = expectThrows<IllegalArgumentException> { FieldValue.of(listOf(1)) }
        assertTrue(e.message!!.contains("not a Shoal field value"), e.message)
    }
}
