// Declared indexes: createIndex, indexes, explain, dropIndex.

import Foundation
import ShoalDB

func testIndexServesQuery() async throws {
    let dir = try makeTempDir("indexes")
    defer { removeTempDir(dir) }
    let store = try await openStore(dir, "shop")
    defer { store.shutdown() }
    let items = try store.collection(name: "items")
    let kinds = ["a", "b", "c"]
    try await store.write { batch in
        for i in 0..<200 {
            let id = "p" + String(repeating: "0", count: 3 - String(i).count) + String(i)
            batch.upsert(json: #"{"_id": "\#(id)", "kind": "\#(kinds[i % 3])", "price": \#(i)}"#, into: "items")
        }
    }
    try expectEqual(try await items.all().count, 200)
    try expectEqual(try await items.indexes(), [], "a new collection has no index")

    // `kind == "a"`, most expensive first, five of them.
    let priciestOfA = Query(
        filter: "kind == $k",
        params: ["k": "a"],
        sort: [SortKey(path: "price", descending: true)],
        limit: 5
    )
    func ids(_ docs: [String]) throws -> [String] {
        try docs.map { text -> String in
            guard case .string(let id)? = try JSON.parse(text)["_id"] else { throw fail("no _id in \(text)") }
            return id
        }
    }

    // Without an index: the right result, and a plan that uses no declared index.
    let before = try await items.find(query: priciestOfA)
    try expectEqual(try ids(before), ["p198", "p195", "p192", "p189", "p186"])
    let scan = try await items.explain(query: priciestOfA)
    try expectEqual(scan.indexes, [], "no index is declared yet: \(scan)")
    try expect(!scan.steps.isEmpty, "SQLite's plan has at least one step: \(scan)")

    // Declaring the index is new once, then does nothing.
    let created = try await items.createIndex(paths: ["kind", "price"])
    try expect(created, "the index is new")
    try expect(try !items.createIndexBlocking(paths: ["kind", "price"]), "declaring it again does nothing")
    let declared = try await items.indexes()
    try expectEqual(declared.count, 1, "indexes: \(declared)")
    let index = declared[0]
    try expectEqual(index.paths, ["kind", "price"])
    try expect(!index.name.isEmpty, "index name: \(index)")

    // The query now uses it, sorted in SQL, with the same result.
    let plan = try await items.explain(query: priciestOfA)
    try expectEqual(plan.indexes, [index.name], "plan: \(plan)")
    try expect(plan.sortedInSql, "sorted in SQL: \(plan)")
    try expectEqual(try await items.find(query: priciestOfA), before)

    // A write after the index exists shows in the indexed query.
    try await items.update("p003") { $0.set("price", 1000) }
    try expectEqual(try await ids(items.find(query: priciestOfA)), ["p003", "p198", "p195", "p192", "p189"])
    try expectEqual(try await items.getField(id: "p003", path: "price"), "1000")

    // Dropping it: there was one, then there is none; the query still answers the same without it.
    let dropped = try await items.dropIndex(paths: ["kind", "price"])
    try expect(dropped, "there was an index to drop")
    try expect(try !items.dropIndexBlocking(paths: ["kind", "price"]), "there is no index left to drop")
    try expectEqual(try await items.indexes(), [], "indexes after the drop")
    try expectEqual(try await items.explain(query: priciestOfA).indexes, [])
    try expectEqual(try await ids(items.find(query: priciestOfA)), ["p003", "p198", "p195", "p192", "p189"])
}

func testInvalidIndex() async throws {
    let dir = try makeTempDir("bad-index")
    defer { removeTempDir(dir) }
    let store = try await openStore(dir, "shop")
    defer { store.shutdown() }
    let items = try store.collection(name: "items")
    _ = try await items.upsert(json: #"{"_id": "p1", "kind": "a", "price": 1}"#)
    try await expectErrorAsync("a key holding a double quote", isInvalidArgument) {
        _ = try await items.createIndex(paths: [#"`a"b`"#])
    }
    try await expectErrorAsync("no path", isInvalidArgument) { _ = try await items.createIndex(paths: []) }
    try await expectErrorAsync("a malformed path", isInvalidArgument) {
        _ = try await items.createIndex(paths: ["kind..price"])
    }
    try expectEqual(try await items.indexes(), [], "nothing was declared")
}
