package dev.shoaldb

import kotlinx.coroutines.runBlocking
import kotlinx.serialization.json.jsonArray
import kotlinx.serialization.json.jsonObject
import kotlinx.serialization.json.jsonPrimitive
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir
import java.nio.file.Path

/** Runs the README's Kotlin example and checks what it printed. */
class ReadmeExampleTest {
    @TempDir
    lateinit var dir: Path

    @Test
    fun `the README example runs`() = runBlocking<Unit> {
        val printed = mutableListOf<String>()
        readmeExample(dir.toString()) { line -> synchronized(printed) { printed += line.toString() } }

        val lines = synchronized(printed) { printed.toList() }
        val urgent = json(lines.single { it.startsWith("urgent: ") }.removePrefix("urgent: ")) // a List of JSON objects
        val task = urgent.jsonArray.single().jsonObject
        assertEquals("Buy oat milk", task["title"]!!.jsonPrimitive.content)
        assertEquals("1", task["views"].toString())
        val address = lines.single { it.startsWith("syncing on ") }.removePrefix("syncing on ")
        assertTrue(Regex("""127\.0\.0\.1:[1-9][0-9]*""").matches(address), address)
    }

    @Test
    fun `the README's typed example runs`() = runBlocking<Unit> {
        openStore(dir, "typed-readme").use { store ->
            val plan = planTheDay(store)
            assertEquals(listOf("Mow the lawn", "Buy oat milk"), plan.map { it.title })
            assertEquals(listOf(3, 2), plan.map { it.priority })
            assertTrue(plan.all { !it.id.isNullOrEmpty() })
        }
    }
}
