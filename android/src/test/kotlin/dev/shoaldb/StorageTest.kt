package dev.shoaldb

import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir
import java.nio.file.Path

/** Storage statistics and garbage collection: storageStats, collectGarbage. */
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
}
