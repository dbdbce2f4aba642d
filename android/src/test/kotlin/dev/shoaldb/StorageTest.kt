package dev.shoaldb

import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir
import java.nio.file.Path

/**
 * Storage statistics, garbage collection, compaction, expiry and the storage budget: storageStats, collectGarbage,
 * compact, expire, fitBudget, evict.
 */
class StorageTest {
    @TempDir
    lateinit var dir: Path

    @Test
    fun `an attachment no document names is collected after its grace, and the file shrinks`() = runBlocking<Unit> {
        openStore(dir, "files").use { store ->
            val files = store.collection("files")
            val named = store.putAttachment(ByteArray(300_000) { (it * 7 % 251).toByte() }, emptyMap())
            val loose = store.putAttachment(ByteArray(2_000_000) { (it * 13 % 251).toByte() }, emptyMap())
            files.put("a", "photo" to named)
            files.put("b", "note" to "no attachment")
            assertTrue(files.remove("b"))

            val before = store.storageStats()
            assertEquals(1uL, before.documents, "stats: $before")
            assertEquals(1uL, before.removedDocuments, "stats: $before")
            assertEquals(2uL, before.attachments, "stats: $before")
            assertEquals(named.length + loose.length, before.attachmentBytes)
            assertTrue(before.logChanges >= 3uL, "stats: $before")

            // The default grace (a day) only marks the loose attachment.
            val marked = store.collectGarbageBlocking(GarbagePolicy())
            assertEquals(0uL, marked.attachmentsRemoved, "report: $marked")
            assertTrue(store.hasAttachment(loose))

            // With no grace it goes; the one a document names stays, and the file gives back its pages.
            val report = store.collectGarbage(GarbagePolicy(unreferencedAttachmentMs = 0uL))
            assertEquals(1uL, report.attachmentsRemoved, "report: $report")
            assertEquals(loose.length, report.attachmentBytesRemoved)
            assertTrue(report.fileBytesAfter + 1_500_000uL < report.fileBytesBefore, "report: $report")
            assertFalse(store.hasAttachment(loose))
            assertTrue(store.hasAttachment(named))
            val after = store.storageStats()
            assertEquals(1uL, after.attachments, "stats: $after")
            assertEquals(0uL, after.freeBytes, "stats: $after")
            assertEquals(1uL, after.removedDocuments, "removals are kept: $after")
        }
    }

    @Test
    fun `compaction folds the change log into the documents, which stay whole`() = runBlocking<Unit> {
        openStore(dir, "notes").use { store ->
            val notes = store.collection("notes")
            for (round in 0 until 5) {
                for (i in 0 until 10) notes.upsert("""{"_id": "n$i", "round": $round}""")
            }
            notes.update("n0") { textInsert("body", 0, "hello world") }
            notes.update("n0") { textDelete("body", 0, 6) }
            val before = store.storageStats()
            assertTrue(before.logChanges >= 50uL, "stats: $before")

            // Recent changes are kept by the default horizon (30 days); a horizon of 0 folds them all.
            assertEquals(0uL, store.compactBlocking(CompactionPolicy()).changes)
            val report = store.compact(CompactionPolicy(horizonMs = 0uL))
            assertEquals(before.logChanges, report.changes, "report: $report")
            assertEquals(10uL, report.documents, "report: $report")
            assertEquals(1uL, report.transactions, "a small log folds in one transaction: $report")
            val after = store.storageStats()
            assertEquals(0uL, after.logChanges, "stats: $after")
            assertEquals(10uL, after.compactedDocuments, "stats: $after")
            assertEquals(6uL, after.tombstones, "the deleted characters are kept, counted: $after")
            assertTrue(notes.get("n3")!!.contains("\"round\":4"), "the documents are whole: ${notes.get("n3")}")
            notes.upsert("""{"_id": "n3", "round": 5}""")
            assertTrue(notes.get("n3")!!.contains("\"round\":5"), "writes go on")
        }
    }

    @Test
    fun `documents not modified for their collection's time to live expire, others stay`() = runBlocking<Unit> {
        openStore(dir, "sessions").use { store ->
            val sessions = store.collection("sessions")
            val notes = store.collection("notes")
            assertEquals(null, sessions.timeToLive())
            sessions.upsert("""{"_id": "s1", "user": "ana"}""")
            notes.upsert("""{"_id": "n1", "text": "kept"}""")
            sessions.setTimeToLive(86_400_000uL)
            assertEquals(86_400_000uL, sessions.timeToLiveBlocking())
            assertEquals(emptyList<ExpiredDocument>(), store.expire(), "nothing is a day old")

            // A time to live of 0: every document modified before now.
            sessions.setTimeToLiveBlocking(0uL)
            Thread.sleep(5)
            val expired = store.expireBlocking()
            assertEquals(listOf("sessions" to "s1"), expired.map { it.collection to it.id })
            assertTrue(expired[0].modifiedMs > 1_700_000_000_000uL, "when it was written: ${expired[0]}")
            assertEquals(null, sessions.get("s1"))
            assertTrue(notes.get("n1") != null, "a collection without a time to live keeps its documents")
            assertEquals(1uL, store.storageStats().removedDocuments, "an ordinary removal")

            sessions.setTimeToLive(null)
            assertEquals(null, sessions.timeToLive())
        }
    }

    @Test
    fun `a storage budget evicts the documents used least recently, outside the subscriptions`() = runBlocking<Unit> {
        openStore(dir, "budget").use { store ->
            store.setSubscriptions(listOf("mine"))
            val mine = store.collection("mine")
            val relayed = store.collection("relayed")
            val text = "relayed text ".repeat(4_000)
            for (i in 0 until 10) {
                mine.upsert("""{"_id": "m$i", "text": "$text"}""")
                relayed.upsert("""{"_id": "r$i", "text": "$text"}""")
            }
            val fits = store.fitBudget(ULong.MAX_VALUE)
            assertTrue(fits.evicted.isEmpty(), "report: $fits")

            val budget = fits.bytesBefore - 200_000uL
            val report = store.fitBudgetBlocking(budget)
            assertTrue(report.bytesAfter <= budget, "report: $report")
            assertTrue(report.evicted.isNotEmpty(), "report: $report")
            for (e in report.evicted) {
                val what = e.what
                assertTrue(what is Evicted.Document && what.collection == "relayed", "only relayed documents: $e")
            }
            assertEquals(10, mine.all().size)
            assertEquals(10 - report.evicted.size, relayed.all().size)
            assertEquals(report.evicted.size.toULong(), store.storageStats().evictedDocuments)

            // Evicting by hand, and taking a document back.
            assertTrue(mine.evict("m0"))
            assertEquals(null, mine.get("m0"))
            assertFalse(mine.evictBlocking("m0"), "not here any more")
            mine.unevict("m0")
            assertEquals(report.evicted.size.toULong(), store.storageStats().evictedDocuments)
        }
    }
}
