// The scenarios: each opens its own stores in its own temp dir and asserts real outcomes through the public API
// of module ShoalDB (generated bindings + the Swift layer), as an app would.

import Foundation
import ShoalDB

/// A Codable document: `_id` is the document id.
struct Todo: Codable, Equatable {
    var id: String
    var title: String
    var done: Bool
    var priority: Int
    var tags: [String]
    var note: String?
    var blob: Data
    var due: Date
    var file: AttachmentToken?

    enum CodingKeys: String, CodingKey {
        case id = "_id", title, done, priority, tags, note, blob, due, file
    }
}

func testOpenStore() async throws {
    let dir = try makeTempDir("open")
    defer { removeTempDir(dir) }
    let store = try await openStore(dir, "solo")
    defer { store.shutdown() }
    let id = try store.deviceId()
    try expectEqual(id.count, 64, "device id length")
    try expect(id.allSatisfy(\.isHexDigit), "device id is hex: \(id)")
    try expectEqual(try await store.collections(), [], "a new store has no collections")
    try expect(!store.isSyncing(), "sync is off until started")
    try expectEqual(store.listenAddress(), nil, "no listen address before sync")
    try expect(!Shoal.version.isEmpty, "version")
    let notes = try store.collection(name: "notes")
    try expectEqual(notes.name(), "notes")
    try expectEqual(try await notes.all(), [])
    _ = try await notes.upsert(json: #"{"_id":"n1","text":"hi"}"#)
    try expectEqual(try await store.collections(), ["notes"])
    // Reopening the same file keeps the data and the device id.
    store.shutdown()
    let again = try await openStore(dir, "solo")
    defer { again.shutdown() }
    try expectEqual(try again.deviceId(), id, "device id survives reopening")
    // The blocking twins, as a background thread would call them.
    try expectEqual(try JSON.parse(again.collection(name: "notes").getBlocking(id: "n1")), ["_id": "n1", "text": "hi"])
    try expectEqual(try again.collectionsBlocking(), ["notes"])
}

func testRegisters() async throws {
    let dir = try makeTempDir("registers")
    defer { removeTempDir(dir) }
    let store = try await openStore(dir, "solo")
    defer { store.shutdown() }
    let docs = try store.collection(name: "docs")
    let id = try await docs.put(id: "r1", fields: [
        "s": "hello",
        "i": 42,
        "big": FieldValue(Int64.max),
        "d": 1.5,
        "b": true,
        "n": nil,
        "bytes": FieldValue(Data([0, 1, 254, 255])),
        "j": .json(json: #"{"x":[1,2],"y":"z"}"#),
    ])
    try expectEqual(id, "r1")
    try expectEqual(try await JSON.parse(docs.get(id: "r1")), [
        "_id": "r1", "s": "hello", "i": 42, "big": .number(Double(Int64.max)), "d": 1.5, "b": true, "n": nil,
        "bytes": [0, 1, 254, 255], "j": ["x": [1, 2], "y": "z"],
    ])
    try expectEqual(try await docs.getField(id: "r1", path: "big"), "9223372036854775807", "i64 survives exactly")
    try expectEqual(try await docs.getField(id: "r1", path: "j.y"), nil, "a JSON register is atomic, not a map")
    // Registers are replaced as a whole by later writes.
    try await docs.update("r1") { doc in
        doc.set("s", FieldValue("bye"))
        doc.set("i", FieldValue(-7))
        doc.set("d", .double(value: 2.25))
        doc.set("b", false)
        doc.set("bytes", .bytes(value: Data([9])))
        doc.set("j", try .json(["y": 1]))
        doc.remove("n")
    }
    try expectEqual(try await JSON.parse(docs.get(id: "r1")), [
        "_id": "r1", "s": "bye", "i": -7, "big": .number(Double(Int64.max)), "d": 2.25, "b": false,
        "bytes": [9], "j": ["y": 1],
    ])
    try expectEqual(try await docs.conflicts(id: "r1", path: "s"), [], "no conflicts on one device")
    // Upserting JSON merges into the document.
    _ = try await docs.upsert(json: #"{"_id":"r1","s":"merged","extra":[true]}"#)
    let doc = try await JSON.parse(docs.get(id: "r1"))
    try expectEqual(doc["s"], "merged")
    try expectEqual(doc["extra"], [true])
    try expectEqual(doc["i"], -7, "other fields are kept")
    try await expectErrorAsync("NaN", isInvalidArgument) {
        _ = try await docs.put(id: "r2", fields: ["d": .double(value: .nan)])
    }
    try expectEqual(try await docs.get(id: "r2"), nil, "a failed put writes nothing")
}

func testCounter() async throws {
    let dir = try makeTempDir("counter")
    defer { removeTempDir(dir) }
    let store = try await openStore(dir, "solo")
    defer { store.shutdown() }
    let docs = try store.collection(name: "docs")
    _ = try await docs.put(id: "c", fields: ["n": .counter(initial: 5), "t": .text(initial: "x")])
    try await docs.update("c") { $0.increment("n", by: 3) }
    try await docs.update("c") { $0.increment("n", by: -1) }
    try await docs.update("c") { $0.increment("fresh") }
    let doc = try await JSON.parse(docs.get(id: "c"))
    try expectEqual(doc["n"], 7)
    try expectEqual(doc["fresh"], 1, "increment creates a missing counter")
    try await expectErrorAsync("increment on text", isInvalidArgument) {
        try await docs.update("c") { $0.increment("t") }
    }
    try expectEqual(try await docs.getField(id: "c", path: "n"), "7", "a failed update changes nothing")
}

func testText() async throws {
    let dir = try makeTempDir("text")
    defer { removeTempDir(dir) }
    let store = try await openStore(dir, "solo")
    defer { store.shutdown() }
    let docs = try store.collection(name: "docs")
    _ = try await docs.put(id: "t", fields: ["body": .text(initial: "hello")])
    try await docs.update("t") { $0.insertText("body", at: 5, " world") }
    try expectEqual(try await docs.getField(id: "t", path: "body"), #""hello world""#)
    try await docs.update("t") { $0.deleteText("body", at: 0, length: 1) }
    try expectEqual(try await docs.getField(id: "t", path: "body"), #""ello world""#)
    try await docs.update("t") { $0.spliceText("body", at: 0, length: 4, with: "Hola") }
    try expectEqual(try await docs.getField(id: "t", path: "body"), #""Hola world""#)
    // Indexes count Unicode scalars.
    try await docs.update("t") { doc in
        doc.insertText("body", at: 4, " 🐟")
        doc.insertText("body", at: 6, "!")  // after the fish: 6 scalars (7 UTF-16 units)
    }
    try expectEqual(try await JSON.parse(docs.getField(id: "t", path: "body")), "Hola 🐟! world")
    try await expectErrorAsync("past the end", isInvalidArgument) {
        try await docs.update("t") { $0.deleteText("body", at: 100, length: 1) }
    }
}

func testNestedMaps() async throws {
    let dir = try makeTempDir("maps")
    defer { removeTempDir(dir) }
    let store = try await openStore(dir, "solo")
    defer { store.shutdown() }
    let docs = try store.collection(name: "people")
    struct Address: Encodable { let city: String; let zip: String }
    struct Profile: Encodable { let name: String; let address: Address }
    _ = try await docs.put(id: "p", fields: [
        "profile": try .map(Profile(name: "Ana", address: Address(city: "Oslo", zip: "0150"))),
        "raw": .map(json: #"{"k":{"deep":1}}"#),
    ])
    try await docs.update("p") { doc in
        doc.set("profile.address.city", "Bergen")
        doc.set("a.b.c", 1)
        doc.merge("profile", .map(json: #"{"age":30,"address":{"country":"NO"}}"#))
        doc.remove("profile.address.zip")
    }
    try expectEqual(try await JSON.parse(docs.get(id: "p")), [
        "_id": "p",
        "profile": ["name": "Ana", "age": 30, "address": ["city": "Bergen", "country": "NO"]],
        "raw": ["k": ["deep": 1]],
        "a": ["b": ["c": 1]],
    ])
    try expectEqual(try await docs.getField(id: "p", path: "a.b.c"), "1")
    try expectEqual(try await docs.getField(id: "p", path: "raw.k.deep"), "1",
                    "a Map value is a map: paths reach inside")
    try expectEqual(try await docs.getField(id: "p", path: "profile.missing"), nil)
    try await expectErrorAsync("Map from a non-object", isInvalidArgument) {
        try await docs.update("p") { $0.set("x", .map(json: "[1]")) }
    }
    try await expectErrorAsync("bad path", isInvalidArgument) { try await docs.update("p") { $0.set("a..b", 1) } }
}

func testArrays() async throws {
    let dir = try makeTempDir("arrays")
    defer { removeTempDir(dir) }
    let store = try await openStore(dir, "solo")
    defer { store.shutdown() }
    let lists = try store.collection(name: "lists")
    _ = try await lists.put(id: "l", fields: [
        "items": .array(json: #"[{"title":"a","done":false}]"#),
        "tags": try .array(["x", "y"]),
    ])
    try await lists.update("l") { doc in
        doc.push("items", .map(json: #"{"title":"b","done":false}"#))
        doc.insert("items", at: 0, .map(json: #"{"title":"z","done":false}"#))
        doc.push("tags", "w", 3)
    }
    try expectEqual(try await JSON.parse(lists.getField(id: "l", path: "items[0].title")), "z")
    try await lists.update("l") { doc in
        doc.delete("items", at: 0)
        doc.set("items[0].done", true)
        doc.delete("tags", at: 1, length: 2)
    }
    try expectEqual(try await JSON.parse(lists.get(id: "l")), [
        "_id": "l",
        "items": [["title": "a", "done": true], ["title": "b", "done": false]],
        "tags": ["x", 3],
    ])
    try await lists.update("l") { $0.remove("items[1]") }
    try expectEqual(try await JSON.parse(lists.getField(id: "l", path: "items")), [["title": "a", "done": true]])
    try await expectErrorAsync("index past the end", isInvalidArgument) {
        try await lists.update("l") { $0.set("items[5].done", true) }
    }
}

func testAttachmentField() async throws {
    let dir = try makeTempDir("attachment")
    defer { removeTempDir(dir) }
    let store = try await openStore(dir, "solo")
    defer { store.shutdown() }
    let files = try store.collection(name: "files")
    let bytes = Data("attachment content 📎".utf8)
    let token = try await store.putAttachment(bytes: bytes, meta: ["name": "a.txt", "mime": "text/plain"])
    try expectEqual(token.length, UInt64(bytes.count))
    try expectEqual(token.hash.count, 64)
    try expectEqual(try await store.putAttachment(bytes: bytes, meta: ["name": "a.txt", "mime": "text/plain"]), token,
                    "same bytes, same token")
    _ = try await files.put(id: "f", fields: ["file": FieldValue(token), "title": "a"])
    try expectEqual(try await files.attachment(id: "f", path: "file"), token)
    try expectEqual(try await files.attachment(id: "f", path: "title"), nil, "not an attachment")
    let doc = try await JSON.parse(files.get(id: "f"))
    try expectEqual(doc["file"], ["_attachment": .string(token.hash), "len": .number(Double(bytes.count)),
                                  "meta": ["name": "a.txt", "mime": "text/plain"]])
    try expect(try store.hasAttachmentBlocking(token: token), "has the bytes")
    try expectEqual(try await store.attachmentBytes(token: token), bytes)
    // Files in and out.
    let src = "\(dir)/src.bin"
    let big = Data((0..<200_000).map { UInt8(truncatingIfNeeded: $0 &* 31) })
    try big.write(to: URL(fileURLWithPath: src))
    let bigToken = try await store.putAttachmentFile(path: src, meta: [:])
    try expectEqual(bigToken.length, 200_000)
    try await store.saveAttachment(token: bigToken, path: "\(dir)/out.bin")
    try expectEqual(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/out.bin")), big)
    // A token through Codable and a Codable document holding one.
    let decoded = try JSONDecoder().decode(AttachmentToken.self, from: JSONEncoder().encode(token))
    try expectEqual(decoded, token)
    let unknown = AttachmentToken(hash: String(repeating: "ab", count: 32), length: 3, meta: [:])
    let hasUnknown = try await store.hasAttachment(token: unknown)
    try expect(!hasUnknown, "unknown attachment")
    try await expectErrorAsync("bytes of a missing attachment", isNotFound) {
        _ = try await store.attachmentBytes(token: unknown)
    }
    try await expectErrorAsync("bad hash", isInvalidArgument) {
        _ = try await store.hasAttachment(token: AttachmentToken(hash: "xyz", length: 1, meta: [:]))
    }
    try await expectErrorAsync("fetch without sync", isSyncError) { try await store.fetchAttachment(unknown) }
}

func testAtomicWrite() async throws {
    let dir = try makeTempDir("write")
    defer { removeTempDir(dir) }
    let store = try await openStore(dir, "solo")
    defer { store.shutdown() }
    let tasks = try store.collection(name: "tasks")
    let lists = try store.collection(name: "lists")
    _ = try await tasks.upsert(json: #"{"_id":"old","title":"to remove"}"#)
    let todo = Todo(id: "t1", title: "Milk", done: false, priority: 1, tags: [], note: nil, blob: Data(),
                    due: Date(timeIntervalSinceReferenceDate: 0), file: nil)
    let ids = try await store.write { batch in
        try batch.upsert(todo, into: "tasks")
        batch.upsert(json: #"{"title":"generated id"}"#, into: "tasks")
        batch.put(["count": .counter(initial: 0), "name": "groceries"], id: "l1", into: "lists")
        batch.update("l1", in: "lists") { $0.increment("count", by: 2) }
        batch.update("t1", in: "tasks", edits: [.set(path: "done", value: true)])
        batch.remove("old", from: "tasks")
    }
    try expectEqual(ids.count, 6)
    try expectEqual(ids[0], "t1")
    try expectEqual(Array(ids[2...]), ["l1", "l1", "t1", "old"])
    try expectEqual(try await tasks.get(Todo.self, id: "t1")?.done, true)
    try expectEqual(try await JSON.parse(tasks.get(id: ids[1]))["title"], "generated id")
    try expectEqual(try await JSON.parse(lists.get(id: "l1")), ["_id": "l1", "count": 2, "name": "groceries"])
    try expectEqual(try await tasks.get(id: "old"), nil)

    // The third op fails: nothing of the batch is written.
    let before = try await tasks.all() + lists.all()
    try await expectErrorAsync("update of a missing document", isNotFound) {
        try await store.write { batch in
            batch.upsert(json: #"{"_id":"new1","title":"x"}"#, into: "tasks")
            batch.update("l1", in: "lists") { $0.increment("count", by: 100) }
            batch.update("missing", in: "tasks") { $0.set("done", true) }
            batch.upsert(json: #"{"_id":"new2"}"#, into: "tasks")
        }
    }
    try await expectErrorAsync("an edit that does not fit", isInvalidArgument) {
        try await store.write { batch in
            batch.upsert(json: #"{"_id":"new3"}"#, into: "tasks")
            batch.update("l1", in: "lists") { $0.insertText("count", at: 0, "x") }
        }
    }
    struct Stop: Error {}
    do {
        try await store.write { batch in
            batch.upsert(json: #"{"_id":"new4"}"#, into: "tasks")
            throw Stop()
        }
        throw fail("the builder's error was swallowed")
    } catch is Stop {}
    try expectEqual(try await tasks.all() + lists.all(), before, "failed writes change nothing")
    try expectEqual(try await tasks.get(id: "new1"), nil)
}

/// Writes from the main actor, with a builder capturing main-actor state (checks the `#isolation` overload).
@MainActor
func testWriteFromMainActor() async throws {
    let dir = try makeTempDir("mainactor")
    defer { removeTempDir(dir) }
    let store = try await openStore(dir, "solo")
    defer { store.shutdown() }
    var titles = ["a", "b"]
    let ids = try await store.write { batch in
        for title in titles { batch.upsert(json: #"{"_id":"\#(title)"}"#, into: "main") }
        titles.append("written")
    }
    try expectEqual(ids, ["a", "b"])
    try expectEqual(titles.count, 3)
}

func testQuery() async throws {
    let dir = try makeTempDir("query")
    defer { removeTempDir(dir) }
    let store = try await openStore(dir, "solo")
    defer { store.shutdown() }
    let tasks = try store.collection(name: "tasks")
    let rows: [(String, String, Bool, Int)] = [
        ("a", "milk", false, 3), ("b", "eggs", false, 5), ("c", "bread", true, 9),
        ("d", "milk", false, 1), ("e", "jam", false, 3), ("f", "tea", false, 2),
    ]
    try await store.write { batch in
        for (id, title, done, priority) in rows {
            batch.put(["title": FieldValue(title), "done": FieldValue(done), "priority": FieldValue(priority)],
                      id: id, into: "tasks")
        }
    }
    func ids(_ q: Query) async throws -> [String] {
        try await tasks.find(query: q).map { text -> String in
            guard case .string(let id)? = try JSON.parse(text)["_id"] else { throw fail("no _id in \(text)") }
            return id
        }
    }
    let q = Query(
        filter: "done == false && priority >= $min",
        params: ["min": 2],
        sort: [SortKey(path: "priority", descending: true)],
        limit: 3
    )
    // priority 5 (b), then the tie at 3 broken by id (a, e); f (2) is cut by the limit.
    try expectEqual(try await ids(q), ["b", "a", "e"])
    try expectEqual(try await ids(Query(filter: "title == $t", params: ["t": "milk"])), ["a", "d"])
    try expectEqual(try await ids(Query(sort: [SortKey(path: "title", descending: false)], limit: 2)), ["c", "b"])
    try expectEqual(try await ids(Query(filter: "done == true")), ["c"])
    try expectEqual(try await ids(Query()).count, 6)
    try await expectErrorAsync("missing parameter", isInvalidArgument) {
        _ = try await tasks.find(query: Query(filter: "priority > $x"))
    }
    try await expectErrorAsync("malformed filter", isInvalidArgument) {
        _ = try await tasks.find(query: Query(filter: "priority >"))
    }
    try await expectErrorAsync("a NaN parameter", isInvalidArgument) {
        _ = try await tasks.find(query: Query(filter: "priority > $p", params: ["p": QueryValue(Double.nan)]))
    }
}

func testObserver() async throws {
    let dir = try makeTempDir("observer")
    defer { removeTempDir(dir) }
    let store = try await openStore(dir, "solo")
    defer { store.shutdown() }
    let tasks = try store.collection(name: "tasks")
    _ = try await tasks.upsert(json: #"{"_id":"t0","title":"first","done":false}"#)
    _ = try await tasks.upsert(json: #"{"_id":"x","title":"already done","done":true}"#)

    let events = Locked<[ChangeEvent]>([])
    let stream = tasks.changes(Query(filter: "done == false", sort: [SortKey(path: "title")]))
    let consumer = Task {
        for try await event in stream {
            events.mutate { $0.append(event) }
        }
        return "finished"
    }
    func docIds(_ docs: [String]) throws -> [JSON?] { try docs.map { try JSON.parse($0)["_id"] } }

    try await eventually("the initial result") { events.get().count >= 1 }
    let first = events.get()[0]
    try expectEqual(first.collection, "tasks")
    try expectEqual(try docIds(first.inserted), ["t0"])
    try expectEqual(try docIds(first.results), ["t0"])

    _ = try await tasks.upsert(json: #"{"_id":"t1","title":"second","done":false}"#)
    try await eventually("the insert") { events.get().count >= 2 }
    let inserted = events.get()[1]
    try expectEqual(try docIds(inserted.inserted), ["t1"])
    try expectEqual(try docIds(inserted.results), ["t0", "t1"])

    try await tasks.update("t0") { $0.set("title", "renamed") }
    try await eventually("the update") { events.get().count >= 3 }
    let updated = events.get()[2]
    try expectEqual(try docIds(updated.updated), ["t0"])
    try expectEqual(updated.inserted, [])
    try expectEqual(try JSON.parse(updated.updated[0])["title"], "renamed")
    try expectEqual(try docIds(updated.results), ["t0", "t1"], "sorted by title")

    try await tasks.update("t1") { $0.set("done", true) }
    try await eventually("leaving the result") { events.get().count >= 4 }
    try expectEqual(events.get()[3].removed, ["t1"])

    _ = try await tasks.remove(id: "t0")
    try await eventually("the removal") { events.get().count >= 5 }
    try expectEqual(events.get()[4].removed, ["t0"])
    try expectEqual(events.get()[4].results, [])

    // A change outside the result sends nothing; the next one inside does.
    try await tasks.update("x") { $0.set("title", "still done") }
    _ = try await tasks.upsert(json: #"{"_id":"t2","title":"third","done":false}"#)
    try await eventually("the next insert") { events.get().count >= 6 }
    try expectEqual(try docIds(events.get()[5].inserted), ["t2"])
    try expectEqual(events.get().count, 6, "no event for a change outside the result")

    // Cancelling the consumer terminates the stream (and cancels the observer).
    consumer.cancel()
    try expectEqual(try await consumer.value, "finished")

    // A plain `for await` loop left with `break`, with Codable results.
    struct Row: Decodable, Equatable { let _id: String; let title: String }
    var seen: [[Row]] = []
    for try await event in tasks.changes(Query(filter: "done == false")) {
        seen.append(try event.results(as: Row.self))
        if seen.count == 1 { _ = try await tasks.upsert(json: #"{"_id":"t3","title":"fourth","done":false}"#) }
        if seen.count == 2 { break }
    }
    try expectEqual(seen, [[Row(_id: "t2", title: "third")],
                           [Row(_id: "t2", title: "third"), Row(_id: "t3", title: "fourth")]])
    // A malformed query ends the stream with the error.
    try await expectErrorAsync("malformed query", isInvalidArgument) {
        for try await _ in tasks.changes(Query(filter: "done ==")) {}
    }
}

func testCodable() async throws {
    let dir = try makeTempDir("codable")
    defer { removeTempDir(dir) }
    let store = try await openStore(dir, "solo")
    defer { store.shutdown() }
    let todos = try store.collection(name: "todos")
    let token = try await store.putAttachment(bytes: Data("pdf".utf8), meta: ["name": "spec.pdf"])
    let a = Todo(id: "a", title: "Write the SDK", done: false, priority: 2, tags: ["swift", "ffi"], note: "soon",
                 blob: Data([1, 2, 3]), due: Date(timeIntervalSinceReferenceDate: 1234.5), file: token)
    let b = Todo(id: "b", title: "Ship it", done: true, priority: 5, tags: [], note: nil, blob: Data(),
                 due: Date(timeIntervalSinceReferenceDate: -10), file: nil)
    try expectEqual(try await todos.upsert(a), "a")
    try expectEqual(try await todos.upsert(b), "b")
    try expectEqual(try await todos.get(Todo.self, id: "a"), a)
    try expectEqual(try todos.getBlocking(Todo.self, id: "b"), b)
    try expectEqual(try await todos.get(Todo.self, id: "nope"), nil)
    try expectEqual(try await todos.attachment(id: "a", path: "file"), token, "an encoded token is an attachment")
    try expectEqual(try await todos.find(Todo.self, Query(filter: "priority > $p", params: ["p": 1],
                                                    sort: [SortKey(path: "priority", descending: true)])), [b, a])
    try expectEqual(try todos.findBlocking(Todo.self, Query(filter: "done == false")), [a])
    // Merging a changed value keeps it equal to the value.
    var changed = a
    changed.done = true
    changed.tags.append("done")
    try await todos.upsert(changed)
    try expectEqual(try await todos.get(Todo.self, id: "a"), changed)
    changed.priority = 3
    try todos.upsertBlocking(changed)
    try expectEqual(try await todos.get(Todo.self, id: "a"), changed)
    // A document that does not fit the type is a DecodingError, not a crash.
    _ = try await todos.upsert(json: #"{"_id":"odd","title":3}"#)
    try await expectErrorAsync("decoding a mismatched document", { $0 is DecodingError }) {
        _ = try await todos.get(Todo.self, id: "odd")
    }
    try await expectErrorAsync("encoding a non-object", isInvalidArgument) { try await todos.upsert([1, 2]) }
}

func testErrors() async throws {
    let dir = try makeTempDir("errors")
    defer { removeTempDir(dir) }
    let store = try await openStore(dir, "solo")
    let docs = try store.collection(name: "docs")
    try await expectErrorAsync("bad JSON", isInvalidArgument) { _ = try await docs.upsert(json: "{not json") }
    try await expectErrorAsync("JSON that is not an object", isInvalidArgument) {
        _ = try await docs.upsert(json: "[1]")
    }
    try await expectErrorAsync("update of a missing document", isNotFound) {
        try await docs.update(id: "missing", edits: [.remove(path: "x")])
    }
    try expectError("empty collection name", isInvalidArgument) { _ = try store.collection(name: "") }
    try expectError("control character in a collection name", isInvalidArgument) { _ = try store.collection(name: "a\u{7}") }
    try expectError("bad address", isInvalidArgument) { try store.connect(address: "localhost") }
    try await expectErrorAsync("empty secret", isInvalidArgument) {
        _ = try await Store.open(path: "\(dir)/x.db", deviceName: "x", appSecret: "")
    }
    try await expectErrorAsync("bad peer address", isInvalidArgument) {
        _ = try await Store.open(path: "\(dir)/y.db", deviceName: "y", appSecret: "s",
                                 sync: SyncConfig(listen: nil, mdns: false, peers: ["nowhere"]))
    }
    do {
        _ = try await docs.upsert(json: "{")
        throw fail("bad JSON was accepted")
    } catch ShoalError.InvalidArgument(let message) {
        try expect(message.contains("JSON"), "the message says what went wrong: \(message)")
    }
    try expectEqual(try await docs.remove(id: "missing"), false)
    _ = try await docs.upsert(json: #"{"_id":"d"}"#)

    store.shutdown()
    store.shutdown()
    try await expectErrorAsync("get after shutdown", isClosed) { _ = try await docs.get(id: "d") }
    try await expectErrorAsync("upsert after shutdown", isClosed) { _ = try await docs.upsert(json: #"{"_id":"e"}"#) }
    try expectError("collection after shutdown", isClosed) { _ = try store.collection(name: "docs") }
    try expectError("get (blocking) after shutdown", isClosed) { _ = try docs.getBlocking(id: "d") }
    try await expectErrorAsync("changes after shutdown", isClosed) { for try await _ in docs.changes() {} }
    try await expectErrorAsync("documents after shutdown", isClosed) { for try await _ in docs.documents() {} }
    try expectError("presence after shutdown", isClosed) { _ = try store.presence() }
    try await expectErrorAsync("write after shutdown", isClosed) {
        try await store.write { $0.upsert(json: "{}", into: "docs") }
    }
    try await expectErrorAsync("startSync after shutdown", isClosed) { try await store.startSync() }
    try expect(!store.isSyncing())
    try expectEqual(store.peers(), [])
}

func testLogging() async throws {
    let dir = try makeTempDir("logging")
    defer { removeTempDir(dir) }
    let lines = Locked<[String]>([])
    Shoal.setLogHandler(level: .info) { level, target, message in
        lines.mutate { $0.append("\(level.label) \(target): \(message)") }
    }
    defer { Shoal.installDefaultLogger(level: .warn) }
    let store = try await openStore(dir, "logger")
    defer { store.shutdown() }
    try await store.startSync()
    try await eventually("the 'sync started' log line") { lines.get().contains { $0.contains("sync started for logger") } }
    try expect(lines.get().allSatisfy { !$0.hasPrefix("DEBUG") && !$0.hasPrefix("TRACE") }, "level filter")
    StderrLogger().log(level: .warn, target: "test", message: "the stderr logger writes this line")
}

func testSyncConverges() async throws {
    let dir = try makeTempDir("sync")
    defer { removeTempDir(dir) }
    let (a, b) = try await syncedPair(dir)
    defer { a.shutdown(); b.shutdown() }
    let notesA = try a.collection(name: "notes")
    let notesB = try b.collection(name: "notes")

    _ = try await notesA.put(id: "shared", fields: ["title": "start", "n": .counter(initial: 0),
                                                    "body": .text(initial: "--"), "list": .array(json: "[]"),
                                                    "meta": .map(json: #"{"v":0}"#)])
    try await eventually("B receiving A's document") { try await notesB.get(id: "shared") != nil }
    try expectEqual(try await notesB.get(id: "shared"), try await notesA.get(id: "shared"))

    // Concurrent edits on both sides: B is offline meanwhile, so neither side has seen the other's edits (the text
    // positions below are relative to "--").
    try await b.stopSync()
    try await notesA.update("shared") { doc in
        doc.increment("n", by: 2)
        doc.insertText("body", at: 0, "A")
        doc.push("list", "from A")
        doc.set("meta.a", true)
        doc.set("title", "title by A")
    }
    try await notesB.update("shared") { doc in
        doc.increment("n", by: 3)
        doc.insertText("body", at: 2, "B")
        doc.push("list", "from B")
        doc.set("meta.b", true)
        doc.set("title", "title by B")
    }
    _ = try await notesA.upsert(json: #"{"_id":"onlyA","by":"A"}"#)
    try await b.write { batch in
        batch.upsert(json: #"{"_id":"onlyB","by":"B"}"#, into: "notes")
        batch.upsert(json: #"{"_id":"other","x":1}"#, into: "other")
    }
    try await b.startSync()

    try await eventually("both stores converging") {
        let docsA = try await notesA.all(), docsB = try await notesB.all()
        guard docsA.count == 3, docsA == docsB else { return false }
        let shared = try await JSON.parse(notesA.get(id: "shared"))
        guard case .array(let list)? = shared["list"], list.count == 2 else { return false }
        return shared["n"] == 5 && shared["meta"]?["a"] == true && shared["meta"]?["b"] == true
    }
    let shared = try await JSON.parse(notesA.get(id: "shared"))
    try expectEqual(shared["body"], "A--B", "text edits merge")
    try expect(shared["title"] == "title by A" || shared["title"] == "title by B", "one register write wins")
    try expectEqual(try await notesA.all(), try await notesB.all(), "identical JSON")
    try await eventually("the other collection") { try await a.collection(name: "other").get(id: "other") != nil }
    try expectEqual(try await a.collections().sorted(), ["notes", "other"])
    // The losing register write is kept as a conflict on both devices.
    try expectEqual(try await notesA.conflicts(id: "shared", path: "title"),
                    try await notesB.conflicts(id: "shared", path: "title"))

    // After sync stops on B, A's edits wait; they arrive when it starts again.
    try await b.stopSync()
    try expect(!b.isSyncing())
    try await notesA.update("shared") { $0.increment("n", by: 10) }
    try await b.startSync()
    try await eventually("the edit made while B was offline") {
        try await notesB.getField(id: "shared", path: "n") == "15"
    }
}

func testPresence() async throws {
    let dir = try makeTempDir("presence")
    defer { removeTempDir(dir) }
    let (a, b) = try await syncedPair(dir)
    defer { a.shutdown(); b.shutdown() }
    let idB = try b.deviceId()

    let found = Task { () -> Peer? in
        for await peers in try a.presence() {
            if let peer = peers.first(where: { $0.deviceId == idB }) { return peer }
        }
        return nil
    }
    let watchdog = Task {
        try await Task.sleep(nanoseconds: 30_000_000_000)
        found.cancel()
    }
    let peer = try await found.value
    watchdog.cancel()
    guard let peer else { throw fail("A never saw B in its presence stream") }
    try expectEqual(peer.name, "B")
    try expectEqual(peer.transport, .lan)
    try expectEqual(peer.hops, 1)
    let idA = try a.deviceId()
    try await eventually("B seeing A in peers()") { b.peers().contains { $0.deviceId == idA && $0.name == "A" } }

    // Stopping sync empties the list.
    try await a.stopSync()
    try expectEqual(a.peers(), [])
}

func testAttachmentOverSync() async throws {
    let dir = try makeTempDir("fetch")
    defer { removeTempDir(dir) }
    let (a, b) = try await syncedPair(dir)
    defer { a.shutdown(); b.shutdown() }
    let bytes = Data((0..<1_500_000).map { UInt8(truncatingIfNeeded: ($0 * 7) ^ ($0 >> 8)) })
    let token = try await a.putAttachment(bytes: bytes, meta: ["name": "photo.jpg"])
    _ = try await a.collection(name: "photos").put(id: "p1", fields: ["image": FieldValue(token), "caption": "sea"])

    let photosB = try b.collection(name: "photos")
    try await eventually("B receiving the document") { try await photosB.get(id: "p1") != nil }
    guard let received = try await photosB.attachment(id: "p1", path: "image") else { throw fail("no token on B") }
    try expectEqual(received, token)
    let hereBefore = try await b.hasAttachment(token: received)
    try expect(!hereBefore, "the bytes travel only on request")

    let progress = Locked<[(UInt64, UInt64)]>([])
    try await b.fetchAttachment(received) { done, total in
        progress.mutate { $0.append((done, total)) }
    }
    let hereAfter = try await b.hasAttachment(token: received)
    try expect(hereAfter, "fetched")
    try expectEqual(try await b.attachmentBytes(token: received), bytes)
    let steps = progress.get()
    try expect(!steps.isEmpty, "progress was reported")
    try expect(steps.allSatisfy { $0.1 == UInt64(bytes.count) }, "total is the length: \(steps.prefix(3))")
    try expect(zip(steps, steps.dropFirst()).allSatisfy { $0.0 <= $1.0 }, "progress only grows")
    try expectEqual(steps.last?.0, UInt64(bytes.count), "progress ends at the length")
    // Already here: returns at once with the whole length.
    let again = Locked<[(UInt64, UInt64)]>([])
    try await b.fetchAttachment(received) { done, total in again.mutate { $0.append((done, total)) } }
    try expect(again.get().count == 1 && again.get()[0] == (UInt64(bytes.count), UInt64(bytes.count)), "\(again.get())")
    // Nobody has these bytes.
    let unknown = AttachmentToken(hash: String(repeating: "cd", count: 32), length: 10, meta: [:])
    try await expectErrorAsync("unavailable attachment", {
        if case ShoalError.AttachmentUnavailable = $0 { return true }
        return isNotFound($0)
    }) { try await b.fetchAttachment(unknown) }
}
