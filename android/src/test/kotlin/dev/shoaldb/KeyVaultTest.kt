package dev.shoaldb

import kotlinx.serialization.json.jsonPrimitive
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir
import java.nio.file.Files
import java.nio.file.Path
import java.util.concurrent.ConcurrentHashMap

/** The device's private keys live in the app's [KeyVault], never in the database. */
class KeyVaultTest {
    @TempDir
    lateinit var dir: Path

    /** A vault in memory, the way an app implements one; it records every call. */
    private class MemoryVault : KeyVault {
        val entries = ConcurrentHashMap<String, ByteArray>()
        val calls: MutableList<String> = java.util.Collections.synchronizedList(mutableListOf())

        override fun load(name: String): ByteArray? {
            calls += "load $name"
            return entries[name]?.copyOf()
        }

        override fun create(name: String, secret: ByteArray): Boolean {
            calls += "create $name"
            return entries.putIfAbsent(name, secret.copyOf()) == null
        }
    }

    /** Opens through [Shoal.openBlocking]: these tests are not coroutines, so they use the blocking twins. */
    private fun open(vault: KeyVault?, name: String = "v"): Store =
        Shoal.openBlocking(
            path = dir.resolve("$name.db").toString(),
            deviceName = name,
            appSecret = SECRET,
            sync = SyncConfig(mdns = false),
            keyVault = vault,
        )

    private fun ByteArray.hex(): String = joinToString("") { "%02x".format(it) }

    private fun ByteArray.contains(part: ByteArray): Boolean =
        (0..size - part.size).any { at -> part.indices.all { this[at + it] == part[it] } }

    @Test
    fun `the vault keeps the private keys and the database holds none`() {
        val vault = MemoryVault()
        val deviceId = open(vault).use { store ->
            assertTrue(vault.entries.containsKey("noise-key"), "the device id is the Noise key's: made at the first open")
            val request = store.enrolmentRequest("v")
            assertEquals(setOf("noise-key", "signing-key"), vault.entries.keys, "calls: ${vault.calls}")
            assertEquals(64, vault.entries.getValue("noise-key").size)
            assertEquals(32, vault.entries.getValue("signing-key").size)
            // The request shows the public half of the Noise key the vault holds.
            val publicNoise = vault.entries.getValue("noise-key").copyOfRange(32, 64).hex()
            assertTrue(request.contains(publicNoise), request)
            store.collection("tasks").upsertBlocking("""{"_id": "t1", "title": "kept"}""")
            store.deviceId().also { store.shutdown() }
        }
        val created = vault.entries.mapValues { it.value.copyOf() }
        val creates = vault.calls.count { it.startsWith("create") }

        open(vault).use { again ->
            assertEquals(deviceId, again.deviceId(), "the same keys after a restart")
            again.enrolmentRequest("v")
            assertEquals("kept", doc(again.collection("tasks").getBlocking("t1"))["title"]!!.jsonPrimitive.content)
            again.shutdown()
        }
        assertEquals(creates, vault.calls.count { it.startsWith("create") }, "nothing made again: ${vault.calls}")
        for ((name, secret) in created) assertArrayEquals(secret, vault.entries.getValue(name), "$name never changes")

        var file = Files.readAllBytes(dir.resolve("v.db"))
        val wal = dir.resolve("v.db-wal")
        if (Files.exists(wal)) file += Files.readAllBytes(wal)
        for (secret in listOf(created.getValue("noise-key").copyOfRange(0, 32), created.getValue("signing-key"))) {
            assertFalse(file.contains(secret), "a private key is in the database")
        }
        assertFalse(Files.exists(dir.resolve("v.db-keys")), "nothing beside the database")
    }

    @Test
    fun `without a vault the keys are files beside the database`() {
        open(null, "plain").use { store ->
            val id = store.deviceId()
            store.shutdown()
            assertTrue(Files.isDirectory(dir.resolve("plain.db-keys")))
            open(null, "plain").use { again ->
                assertEquals(id, again.deviceId())
                again.shutdown()
            }
        }
    }

    @Test
    fun `a vault that throws fails the open with its reason`() {
        val locked = object : KeyVault {
            override fun load(name: String): ByteArray? = throw CallbackException.Failed("the keychain is locked")
            override fun create(name: String, secret: ByteArray): Boolean =
                throw CallbackException.Failed("the keychain is locked")
        }
        val refused = expectThrows<ShoalException.Storage> { open(locked, "locked") }
        assertTrue(refused.message!!.contains("the keychain is locked"), refused.message)

        // Any other exception is reported too (with its text), never taken for an empty vault.
        val broken = object : KeyVault {
            override fun load(name: String): ByteArray? = throw IllegalStateException("the disk is on fire")
            override fun create(name: String, secret: ByteArray): Boolean = throw IllegalStateException("unused")
        }
        val failed = expectThrows<ShoalException.Storage> { open(broken, "broken") }
        assertTrue(failed.message!!.contains("the disk is on fire"), failed.message)
        assertFalse(Files.exists(dir.resolve("broken.db-keys")))
    }
}
