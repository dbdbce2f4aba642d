// Storage statistics, garbage collection, compaction, expiry and the storage budget: storageStats, collectGarbage,
// compact, expire, fitBudget, evict.

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
    try await notes.update("n0") { $0.insertText("body", at: 0, "hello world") }
    try await notes.update("n0") { $0.deleteText("body", at: 0, length: 6) }
    let before = try await store.storageStats()
    try expect(before.logChanges >= 50, "stats: \(before)")

    // Recent changes are kept by the default horizon (30 days); a horizon of 0 folds them all.
    let kept = try store.compactBlocking(policy: CompactionPolicy())
    try expectEqual(kept.changes, 0, "report: \(kept)")
    let report = try await store.compact(policy: CompactionPolicy(horizonMs: 0))
    try expectEqual(report.changes, before.logChanges, "report: \(report)")
    try expectEqual(report.documents, 10, "report: \(report)")
    try expectEqual(report.transactions, 1, "a small log folds in one transaction: \(report)")
    let after = try await store.storageStats()
    try expectEqual(after.logChanges, 0, "stats: \(after)")
    try expectEqual(after.compactedDocuments, 10, "stats: \(after)")
    try expectEqual(after.tombstones, 6, "the deleted characters are kept, counted: \(after)")
    let n3 = try await notes.get(id: "n3")
    try expect(n3?.contains(#""round":4"#) == true, "the documents are whole: \(String(describing: n3))")
    try await notes.upsert(json: #"{"_id": "n3", "round": 5}"#)
    let again = try await notes.get(id: "n3")
    try expect(again?.contains(#""round":5"#) == true, "writes go on: \(String(describing: again))")
}

func testExpiry() async throws {
    let dir = try makeTempDir("expiry")
    defer { removeTempDir(dir) }
    let store = try await openStore(dir, "sessions")
    defer { store.shutdown() }
    let sessions = try store.collection(name: "sessions")
    let notes = try store.collection(name: "notes")
    let none = try await sessions.timeToLive()
    try expect(none == nil, "no time to live yet")
    try await sessions.upsert(json: #"{"_id": "s1", "user": "ana"}"#)
    try await notes.upsert(json: #"{"_id": "n1", "text": "kept"}"#)
    try await sessions.setTimeToLive(ttlMs: 86_400_000)
    try expectEqual(try sessions.timeToLiveBlocking(), 86_400_000)
    let early = try await store.expire()
    try expect(early.isEmpty, "nothing is a day old: \(early)")

    // A time to live of 0: every document modified before now.
    try sessions.setTimeToLiveBlocking(ttlMs: 0)
    try await Task.sleep(nanoseconds: 5_000_000)
    let expired = try store.expireBlocking()
    try expectEqual(expired.map { "\($0.collection)/\($0.id)" }, ["sessions/s1"])
    try expect(expired[0].modifiedMs > 1_700_000_000_000, "when it was written: \(expired[0])")
    let s1 = try await sessions.get(id: "s1")
    try expect(s1 == nil, "expired")
    let n1 = try await notes.get(id: "n1")
    try expect(n1 != nil, "a collection without a time to live keeps its documents")
    let stats = try await store.storageStats()
    try expectEqual(stats.removedDocuments, 1, "an ordinary removal: \(stats)")

    try await sessions.setTimeToLive(ttlMs: nil)
    let cleared = try await sessions.timeToLive()
    try expect(cleared == nil, "no time to live any more")
}

func testStorageBudget() async throws {
    let dir = try makeTempDir("budget")
    defer { removeTempDir(dir) }
    let store = try await openStore(dir, "budget")
    defer { store.shutdown() }
    try store.setSubscriptions(subscriptions: ["mine"])
    let mine = try store.collection(name: "mine")
    let relayed = try store.collection(name: "relayed")
    let text = String(repeating: "relayed text ", count: 4_000)
    for i in 0..<10 {
        try await mine.upsert(json: #"{"_id": "m\#(i)", "text": "\#(text)"}"#)
        try await relayed.upsert(json: #"{"_id": "r\#(i)", "text": "\#(text)"}"#)
    }
    let fits = try await store.fitBudget(maxBytes: UInt64.max)
    try expect(fits.evicted.isEmpty, "report: \(fits)")

    let budget = fits.bytesBefore - 200_000
    let report = try store.fitBudgetBlocking(maxBytes: budget)
    try expect(report.bytesAfter <= budget, "report: \(report)")
    try expect(!report.evicted.isEmpty, "report: \(report)")
    for e in report.evicted {
        guard case .document(let collection, _) = e.what, collection == "relayed" else {
            throw fail("only relayed documents: \(e)")
        }
    }
    let mineLeft = try await mine.all()
    try expectEqual(mineLeft.count, 10)
    let relayedLeft = try await relayed.all()
    try expectEqual(relayedLeft.count, 10 - report.evicted.count)

    // Evicting by hand, and taking a document back.
    let was = try await mine.evict(id: "m0")
    try expect(was, "it was here")
    let m0 = try await mine.get(id: "m0")
    try expect(m0 == nil, "evicted")
    try await mine.unevict(id: "m0")
    let stats = try await store.storageStats()
    try expectEqual(stats.evictedDocuments, UInt64(report.evicted.count), "stats: \(stats)")
}
