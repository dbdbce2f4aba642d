// Storage statistics, garbage collection and compaction: storageStats, collectGarbage, compact.

import Foundation
import ShoalDB

func testGarbageCollection() async throws {
    let dir = try makeTempDir("storage")
    defer { removeTempDir(dir) }
    let store = try await openStore(dir, "files")
    defer { store.shutdown() }
    let files = try store.collection(name: "files")
    let named = try await store.putAttachment(bytes: Data((0..<300_000).map { UInt8($0 * 7 % 251) }), meta: [:])
    let loose = try await store.putAttachment(bytes: Data((0..<2_000_000).map { UInt8($0 * 13 % 251) }), meta: [:])
    _ = try await files.put(id: "a", fields: ["photo": FieldValue(named)])

    let before = try await store.storageStats()
    try expectEqual(before.documents, 1, "stats: \(before)")
    try expectEqual(before.attachments, 2, "stats: \(before)")
    try expectEqual(before.attachmentBytes, named.length + loose.length)

    // The default grace (a day) only marks the loose attachment.
    let marked = try store.collectGarbageBlocking(policy: GarbagePolicy())
    try expectEqual(marked.attachmentsRemoved, 0, "report: \(marked)")
    let kept = try await store.hasAttachment(token: loose)
    try expect(kept, "still there after the first collection")

    // With no grace it goes; the one a document names stays, and the file gives back its pages.
    let report = try await store.collectGarbage(policy: GarbagePolicy(unreferencedAttachmentMs: 0))
    try expectEqual(report.attachmentsRemoved, 1, "report: \(report)")
    try expectEqual(report.attachmentBytesRemoved, loose.length)
    try expect(report.fileBytesAfter + 1_500_000 < report.fileBytesBefore, "report: \(report)")
    let looseLeft = try await store.hasAttachment(token: loose)
    let namedLeft = try await store.hasAttachment(token: named)
    try expect(!looseLeft, "collected")
    try expect(namedLeft, "named by a document")
    let after = try await store.storageStats()
    try expectEqual(after.attachments, 1, "stats: \(after)")
    try expectEqual(after.freeBytes, 0, "stats: \(after)")
}

func testCompaction() async throws {
    let dir = try makeTempDir("compaction")
    defer { removeTempDir(dir) }
    let store = try await openStore(dir, "notes")
    defer { store.shutdown() }
    let notes = try store.collection(name: "notes")
    for round in 0..<5 {
        for i in 0..<10 {
            try await notes.upsert(json: #"{"_id": "n\#(i)", "round": \#(round)}"#)
        }
    }
    let before = try await store.storageStats()
    try expect(before.logChanges >= 50, "stats: \(before)")

    // Recent changes are kept by the default horizon (30 days); a horizon of 0 folds them all.
    let kept = try store.compactBlocking(policy: CompactionPolicy())
    try expectEqual(kept.changes, 0, "report: \(kept)")
    let report = try await store.compact(policy: CompactionPolicy(horizonMs: 0))
    try expectEqual(report.changes, before.logChanges, "report: \(report)")
    try expectEqual(report.documents, 10, "report: \(report)")
    let after = try await store.storageStats()
    try expectEqual(after.logChanges, 0, "stats: \(after)")
    try expectEqual(after.compactedDocuments, 10, "stats: \(after)")
    let n3 = try await notes.get(id: "n3")
    try expect(n3?.contains(#""round":4"#) == true, "the documents are whole: \(String(describing: n3))")
    try await notes.upsert(json: #"{"_id": "n3", "round": 5}"#)
    let again = try await notes.get(id: "n3")
    try expect(again?.contains(#""round":5"#) == true, "writes go on: \(String(describing: again))")
}
