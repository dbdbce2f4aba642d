package dev.shoaldb

import kotlinx.coroutines.flow.first
import kotlinx.coroutines.flow.toList
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import kotlinx.serialization.json.jsonPrimitive
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNotNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir
import java.nio.file.Path
import java.util.Collections
import kotlin.random.Random

/** Two stores in one JVM syncing over loopback TCP (the LAN transport), never multicasting (mDNS off). */
class SyncTest {
    @TempDir
    lateinit var dir: Path

    @Test
    fun `two stores syncing over loopback converge after concurrent edits`() = runBlocking<Unit> {
        val a = openStore(dir, "A", listen = true) // SyncConfig(listen = "127.0.0.1:0", mdns = false)
        a.startSync()
        assertTrue(a.isSyncing())
        val address = a.listenAddress()
        assertNotNull(address)
        assertTrue(address!!.startsWith("127.0.0.1:") && !address.endsWith(":0"), address)

        val b = openStore(dir, "B", peers = listOf(address))
        try {
            b.startSync()
            val notesA = a.collection("notes")
            val notesB = b.collection("notes")
            notesA.put(
                "shared",
                "title" to "draft",
                "votes" to FieldValue.Counter(0),
                "body" to FieldValue.Text("middle"),
                "meta" to FieldValue.Map("""{"owner": "A"}"""),
            )
            eventually("B receives A's document", { notesB.all() }) { notesB.get("shared") }

            // Edits made while the devices cannot see each other are concurrent.
            b.stopSync()
            assertFalse(b.isSyncing())
            notesA.update("shared") {
                set("title", "title by A")
                increment("votes", 2)
                textInsert("body", 0, "A:")
                set("meta.a", 1)
            }
            notesB.update("shared") {
                set("title", "title by B")
                increment("votes", 3)
                textInsert("body", 6, ":B")
                set("meta.b", 2)
            }
            notesA.upsert("""{"_id": "only-a", "n": 1}""")
            notesB.upsert("""{"_id": "only-b", "n": 2}""")
            b.startSync() // dials A again

            val converged = eventually("both stores hold the same documents", { notesA.all() to notesB.all() }) {
                val all = notesA.all()
                all.takeIf { it.size == 3 && it == notesB.all() }
            }
            val shared = doc(converged.first { doc(it)["_id"]!!.jsonPrimitive.content == "shared" })
            assertEquals("5", shared["votes"].toString(), "counters add up every device's increments")
            assertEquals("A:middle:B", shared["body"]!!.jsonPrimitive.content, "both text inserts are kept")
            assertEquals(json("""{"owner": "A", "a": 1, "b": 2}"""), shared["meta"], "map fields merge")
            val title = shared["title"]!!.jsonPrimitive.content
            assertTrue(title == "title by A" || title == "title by B", title)
            // The register keeps one winner, the same on both devices, and the other value as a conflict.
            val loser = if (title == "title by A") "\"title by B\"" else "\"title by A\""
            assertEquals(listOf(loser), notesA.conflicts("shared", "title"))
            assertEquals(notesA.conflicts("shared", "title"), notesB.conflicts("shared", "title"))
        } finally {
            b.shutdown()
            a.shutdown()
        }
    }

    @Test
    fun `presence shows the other device over LAN`() = runBlocking<Unit> {
        withSyncedPair(dir) { a, b ->
            val seen = withTimeout(PATIENCE) { a.presence().first { peers -> peers.any { it.name == "B" } } }
            val peer = seen.single { it.name == "B" }
            assertEquals(Transport.LAN, peer.transport)
            assertEquals(1u, peer.hops)
            assertEquals(b.deviceId(), peer.deviceId)
            assertEquals(64, peer.deviceId.length)
            assertTrue(a.peers().any { it.deviceId == b.deviceId() })

            val fromB = withTimeout(PATIENCE) { b.presence().first { peers -> peers.any { it.name == "A" } } }
            assertEquals(Transport.LAN, fromB.single { it.name == "A" }.transport)

            b.stopSync()
            withTimeout(PATIENCE) { a.presence().first { peers -> peers.none { it.name == "B" } } }
            assertTrue(b.peers().isEmpty(), "a device that stopped syncing reaches nobody")
        }
    }

    @Test
    fun `a second store fetches an attachment over sync with progress`() = runBlocking<Unit> {
        withSyncedPair(dir) { a, b ->
            val photo = Random(7).nextBytes(3 * 1024 * 1024 + 123)
            val clip = Random(8).nextBytes(200_000)
            val photoToken = a.putAttachment(photo, mapOf("name" to "photo.jpg"))
            val clipToken = a.putAttachment(clip, mapOf("name" to "clip.bin"))
            a.collection("albums").put("holiday", "cover" to photoToken, "clip" to clipToken)

            val albums = b.collection("albums")
            val token = eventually("B receives the album") { albums.attachment("holiday", "cover") }
            assertEquals(photoToken, token)
            assertFalse(b.hasAttachment(token), "attachment bytes travel only on request")

            val progress = Collections.synchronizedList(mutableListOf<Pair<Long, Long>>())
            withTimeout(PATIENCE) { b.fetchAttachment(token) { done, total -> progress += done to total } }
            assertArrayEquals(photo, b.attachmentBytes(token))
            assertTrue(progress.isNotEmpty())
            assertEquals(photo.size.toLong() to photo.size.toLong(), progress.last())
            assertTrue(progress.all { (_, total) -> total == photo.size.toLong() })
            assertEquals(progress.map { it.first }.sorted(), progress.map { it.first }, "progress only grows")

            // The same as a Flow, and a callback that throws does not break the fetch.
            val clipFromB = albums.attachment("holiday", "clip")!!
            val steps = withTimeout(PATIENCE) { b.fetchAttachmentFlow(clipFromB).toList() }
            assertEquals(FetchProgress(clip.size.toLong(), clip.size.toLong()), steps.last())
            assertArrayEquals(clip, b.attachmentBytes(clipFromB))
            var calls = 0
            b.fetchAttachment(clipFromB) { _, _ -> calls++; error("a broken progress callback") } // logged, not thrown
            assertEquals(1, calls, "an attachment already here reports done once")

            val unknown = token.copy(hash = "ab".repeat(32))
            expectThrows<ShoalException.AttachmentUnavailable> { withTimeout(PATIENCE) { b.fetchAttachment(unknown) } }
        }
    }
}
