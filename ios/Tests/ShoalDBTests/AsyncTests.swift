// The async API: cancellation by Task reaching Rust, async calls and their blocking twins, diff-aware Codable
// writes across two devices, latest-results streams, and native query parameters.

import Foundation
import ShoalDB

/// A task as an app would keep it: `_id` is the document id.
private struct Chore: Codable, Equatable {
    var id: String
    var title: String
    var done: Bool

    enum CodingKeys: String, CodingKey { case id = "_id", title, done }
}

private func ids(_ docs: [String]) throws -> [String] {
    try docs.map { text -> String in
        guard case .string(let id)? = try JSON.parse(text)["_id"] else { throw fail("no _id in \(text)") }
        return id
    }
}

/// Cancelling the Task running a big batch stops the batch in Rust: nothing of it commits, and the store goes on.
func testCancellingTheTaskRollsBackTheWrite() async throws {
    let dir = try makeTempDir("cancel-write")
    defer { removeTempDir(dir) }
    let store = try await openStore(dir, "solo")
    defer { store.shutdown() }
    let bulk = try store.collection(name: "bulk")
    try await store.collection(name: "other").upsert(json: #"{"_id": "before"}"#)

    // Rust applies the operations one by one, checking for cancellation between two, then commits them all. In a
    // debug build on a slow shared machine, handing this batch to Rust takes about 0.2 s and applying it about 4 s:
    // a cancel half a second after the call lands while the operations are applied, even on a much faster machine.
    let count = 200_000
    let ops = (0..<count).map {
        WriteOp.upsert(collection: "bulk", json: #"{"_id": "b\#($0)", "n": \#($0), "title": "item \#($0)"}"#)
    }
    let calling = Locked(false)
    let writing = Task {
        calling.mutate { $0 = true }
        return try await store.write(ops: ops)
    }
    try await eventually("the Task calling write(ops:)") { calling.get() }
    await sleep(ms: 500)
    writing.cancel()

    switch await writing.result {
    case .success(let written):
        throw fail("the batch committed (\(written.count) documents) before the cancel reached it: make it bigger")
    case .failure(let error):
        try expect(error is CancellationError, "a cancelled Task throws CancellationError, got \(error)")
    }
    // A write after it waits for the cancelled batch to roll back, then commits: the store still works.
    try await store.collection(name: "other").upsert(json: #"{"_id": "after"}"#)
    let left = try await bulk.all().count
    try expect(left == 0 || left == count, "all or nothing of a batch commits, never part: \(left) of \(count)")
    try expectEqual(left, 0, "documents of the cancelled batch (\(count): it was committing already, make it bigger)")
    try expectEqual(try await bulk.get(id: "b0"), nil)
    try expectEqual(try await store.collections(), ["other"])
    try expectEqual(try ids(await store.collection(name: "other").all()), ["after", "before"])
}

/// Reads and writes through the async calls (Task-cancellable) and through their blocking twins, which see the
/// same store; a cancelled token or an already cancelled Task writes nothing.
func testAsyncCallsAndBlockingTwins() async throws {
    let dir = try makeTempDir("async")
    defer { removeTempDir(dir) }
    let store = try await openStore(dir, "solo")
    defer { store.shutdown() }
    let notes = try store.collection(name: "notes")

    // Async.
    let generated = try await notes.upsert(json: #"{"title": "generated id"}"#)
    try expectEqual(try JSON.parse(await notes.get(id: generated))["title"], "generated id")
    try await notes.put(id: "p", fields: ["n": 1, "tags": try .array(["x"])])
    try await notes.update(id: "p", edits: [.set(path: "n", value: 3)])
    try expectEqual(try await notes.getField(id: "p", path: "n"), "3")
    try await notes.upsertChanged(json: #"{"_id": "p", "n": 3, "title": "changed"}"#)
    try expectEqual(try JSON.parse(await notes.get(id: "p")), ["_id": "p", "n": 3, "tags": ["x"], "title": "changed"],
                    "upsertChanged writes what differs and keeps the fields it lacks")
    try await notes.upsertChanged(json: #"{"_id": "q", "title": "inserted"}"#)
    try expectEqual(try ids(await notes.find(query: Query(filter: "title == $t", params: ["t": "inserted"]))), ["q"])
    try expectEqual(try await notes.remove(id: "q"), true)
    try expectEqual(try await notes.all().count, 2)

    // Blocking, from a thread that is not the caller's.
    let blocking = try await Task.detached { () -> [String] in
        _ = try notes.upsertBlocking(json: #"{"_id": "b", "title": "blocking"}"#)
        _ = try notes.putBlocking(id: "c", fields: ["title": "put"])
        try notes.updateBlocking(id: "c", edits: [.set(path: "done", value: true)])
        try notes.updateBlocking("b") { $0.set("done", false) }
        _ = try notes.upsertChangedBlocking(json: #"{"_id": "p", "n": 4}"#)
        try expectEqual(try notes.getFieldBlocking(id: "c", path: "done"), "true")
        try expectEqual(try notes.removeBlocking(id: generated), true)
        return try ids(notes.findBlocking(query: Query(filter: "exists(title)")))
    }.value
    try expectEqual(blocking, ["b", "c", "p"])
    try expectEqual(try ids(await notes.all()), try ids(notes.allBlocking()), "both see the same store")
    try expectEqual(try await notes.getField(id: "p", path: "n"), "4")

    // The generated call with a token of one's own: cancelled, it throws ShoalError.Cancelled and writes nothing.
    let token = Cancellation()
    token.cancel()
    try expect(token.isCancelled())
    func isCancelled(_ e: Error) -> Bool { if case ShoalError.Cancelled = e { return true }; return false }
    try await expectErrorAsync("a cancelled token", isCancelled) {
        _ = try await notes.upsert(json: #"{"_id": "token"}"#, cancel: token)
    }
    // A Task cancelled before the call: CancellationError, nothing written.
    let cancelledFirst = Task { () -> String in
        withUnsafeCurrentTask { $0?.cancel() }
        return try await notes.upsert(json: #"{"_id": "task"}"#)
    }
    try await expectErrorAsync("an already cancelled Task", isCancellation) { _ = try await cancelledFirst.value }
    try expectEqual(try await notes.get(id: "token"), nil)
    try expectEqual(try await notes.get(id: "task"), nil)
}

/// Two devices: A writes back (Codable) a value it read before B changed another field; A's write carries only what
/// A changed, so B's change survives the merge.
func testCodableWriteBackKeepsOtherDevicesEdits() async throws {
    let dir = try makeTempDir("codable-diff")
    defer { removeTempDir(dir) }
    let (a, b) = try await syncedPair(dir)
    defer { a.shutdown(); b.shutdown() }
    let choresA = try a.collection(name: "chores")
    let choresB = try b.collection(name: "chores")
    try await choresA.upsert(Chore(id: "milk", title: "Buy milk", done: false))
    try await eventually("B receiving the chore") { try await choresB.get(Chore.self, id: "milk") != nil }

    guard var read = try await choresA.get(Chore.self, id: "milk") else { throw fail("A lost the chore") }
    try await a.stopSync()
    try await b.stopSync()
    // B marks it done; then A, unaware, renames it and writes its whole value back (with the old `done: false`).
    try await choresB.upsert(Chore(id: "milk", title: "Buy milk", done: true))
    read.title = "Buy oat milk"
    try await choresA.upsert(read)

    try await a.startSync()
    guard let address = a.listenAddress() else { throw fail("A has no listen address") }
    try b.connect(address: address)  // A listens on a new port
    try await b.startSync()
    let merged = Chore(id: "milk", title: "Buy oat milk", done: true)
    try await eventually("both devices showing A's title and B's done") {
        let onA = try await choresA.get(Chore.self, id: "milk")
        let onB = try await choresB.get(Chore.self, id: "milk")
        return onA == merged && onB == merged
    }
}

/// `documents()` gives the whole current result, then the latest one after each change; a consumer that falls
/// behind skips to the latest. The typed variant decodes, and ends with DecodingError on a document that does not
/// fit.
func testDocumentsStream() async throws {
    let dir = try makeTempDir("documents")
    defer { removeTempDir(dir) }
    let store = try await openStore(dir, "solo")
    defer { store.shutdown() }
    let chores = try store.collection(name: "chores")
    for id in ["a", "b", "c"] { try await chores.upsert(Chore(id: id, title: "chore \(id)", done: false)) }
    _ = chores.documents()  // dropped at once, before its registration finished: nothing breaks

    var lists = chores.documents(Query(filter: "done == false")).makeAsyncIterator()
    try expectEqual(try ids(await lists.next() ?? []), ["a", "b", "c"], "the current result first")
    try await chores.update("a") { $0.set("done", true) }
    try expectEqual(try ids(await lists.next() ?? []), ["b", "c"], "the result after the write")

    // Two writes while the consumer is busy, then a barrier: Shoal delivers events one at a time in commit order,
    // so once an observer of a later commit has its event, the stream holds only the latest list.
    var marks = try store.collection(name: "marks").changes().makeAsyncIterator()
    try expectEqual(try await marks.next()?.results, [], "the barrier's first event")
    try await chores.update("b") { $0.set("done", true) }
    try await chores.update("c") { $0.set("done", true) }
    try await store.collection(name: "marks").upsert(json: #"{"_id": "barrier"}"#)
    try expectEqual(try ids(await marks.next()?.results ?? []), ["barrier"])
    try expectEqual(try await lists.next(), [], "the latest list, skipping the one in between")

    // Typed.
    var typed = chores.documents(Chore.self, Query(filter: "done == true")).makeAsyncIterator()
    try expectEqual(try await typed.next()?.map(\.id), ["a", "b", "c"])
    try await chores.upsert(Chore(id: "b", title: "chore b", done: false))
    try expectEqual(try await typed.next(), [Chore(id: "a", title: "chore a", done: true),
                                             Chore(id: "c", title: "chore c", done: true)])
    try await chores.upsert(json: #"{"_id": "d", "title": 4, "done": true}"#)
    try await expectErrorAsync("a document that does not fit", { $0 is DecodingError }) {
        while try await typed.next() != nil {}
    }

    // A `for try await` loop, left with `break`.
    for try await open in chores.documents(Chore.self, Query(filter: "done == false")) {
        try expectEqual(open, [Chore(id: "b", title: "chore b", done: false)])
        break
    }
}

/// Query parameters as Swift literals (and values): Int, Double, String, Bool, arrays and nil.
func testNativeQueryParameters() async throws {
    let dir = try makeTempDir("params")
    defer { removeTempDir(dir) }
    let store = try await openStore(dir, "solo")
    defer { store.shutdown() }
    let tasks = try store.collection(name: "tasks")
    try await store.write { batch in
        batch.put(["priority": 1, "tag": "a", "done": false, "score": 0.5, "labels": try .array(["x"])],
                  id: "t1", into: "tasks")
        batch.put(["priority": 2, "tag": "b", "done": true, "score": 2.5, "labels": try .array(["x", "y"])],
                  id: "t2", into: "tasks")
        batch.put(["priority": 3, "tag": "c", "done": false, "score": 1.5, "note": "see",
                   "labels": try .array([String]())],
                  id: "t3", into: "tasks")
        batch.put(["priority": 4, "tag": "a", "done": true, "score": 4.0], id: "t4", into: "tasks")
    }
    func find(_ filter: String, _ params: [String: QueryValue]) async throws -> [String] {
        try ids(await tasks.find(query: Query(filter: filter, params: params)))
    }
    try expectEqual(try await find("priority >= $min && tag in $tags", ["min": 2, "tags": ["a", "b"]]), ["t2", "t4"])
    try expectEqual(try await find("done == $done", ["done": true]), ["t2", "t4"])
    try expectEqual(try await find("tag == $tag", ["tag": "c"]), ["t3"])
    try expectEqual(try await find("score > $s", ["s": 1.5]), ["t2", "t4"])
    try expectEqual(try await find("note == $none", ["none": nil]), ["t1", "t2", "t4"], "null matches a missing field")
    try expectEqual(try await find("labels == $l", ["l": ["x", "y"]]), ["t2"], "a list equals an array field")
    try expectEqual(try await find("labels contains $l", ["l": "x"]), ["t1", "t2"])
    // Values that are not literals.
    let minimum = 3, tags = ["a", "c"]
    try expectEqual(try await find("priority >= $min && tag in $tags",
                                   ["min": QueryValue(minimum), "tags": QueryValue(tags)]),
                    ["t3", "t4"])
    try expectEqual(try await find("tag == $t", ["t": 1]), [], "types are never equal: 1 is not \"1\"")
    try await expectErrorAsync("a missing parameter", isInvalidArgument) { _ = try await find("tag == $t", [:]) }
}

/// `Shoal.databasePath` gives a path in the app's Application Support directory, in a directory of its own that
/// exists (and, on Apple platforms, is excluded from backups: not checkable on Linux), where a store opens.
func testDatabasePathIsReadyForAStore() async throws {
    let path = try Shoal.databasePath(name: "path-test.db")
    let support = try FileManager.default.url(
        for: .applicationSupportDirectory, in: .userDomainMask, appropriateFor: nil, create: true)
    try expectEqual(path, support.appendingPathComponent("Shoal/path-test.db").path)
    var isDirectory: ObjCBool = false
    let parent = (path as NSString).deletingLastPathComponent
    try expect(FileManager.default.fileExists(atPath: parent, isDirectory: &isDirectory) && isDirectory.boolValue,
               "the directory exists")
    defer {
        for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) }
        try? FileManager.default.removeItem(atPath: path + "-keys")
    }
    let store = try await Store.open(path: path, deviceName: "path test")
    defer { store.shutdown() }
    try await store.collection(name: "c").upsert(json: #"{"_id": "x"}"#)
    let stored = try await store.collection(name: "c").get(id: "x")
    try expect(stored != nil, "the store at that path works")
}
