package dev.shoaldb

import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir
import java.nio.file.Path

/** Storage statistics, garbage collection and compaction: storageStats, collectGarbage, compact. */
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
            val before = store.storageStats()
            assertTrue(before.logChanges >= 50uL, "stats: $before")

            // Recent changes are kept by the default horizon (30 days); a horizon of 0 folds them all.
            assertEquals(0uL, store.compactBlocking(CompactionPolicy()).changes)
            val report = store.compact(CompactionPolicy(horizonMs = 0uL))
            assertEquals(before.logChanges, report.changes, "report: $report")
            assertEquals(10uL, report.documents, "report: $report")
            val after = store.storageStats()
            assertEquals(0uL, after.logChanges, "stats: $after")
            assertEquals(10uL, after.compactedDocuments, "stats: $after")
            assertTrue(notes.get("n3")!!.contains("\"round\":4"), "the documents are whole: ${notes.get("n3")}")
            notes.upsert("""{"_id": "n3", "round": 5}""")
            assertTrue(notes.get("n3")!!.contains("\"round\":5"), "writes go on")
        }
    }
}
