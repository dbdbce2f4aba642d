// Storage statistics and garbage collection: storageStats, collectGarbage.

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
