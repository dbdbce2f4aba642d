// A mesh peer for the cross-language sync test: usage `MeshPeer DB NAME SECRET LISTEN [CONNECT...]`.
//
// Opens the store at DB (device NAME, app secret SECRET, listening on LISTEN — `IP:port`, or "" for nowhere —
// without mDNS, dialling every CONNECT address), starts sync and upserts {"_id": NAME, "from": NAME} into
// collection `mesh`. Once the collection holds 3 documents it sets `seen_by_NAME` = true on each (one update per
// document), waits until every document has both `seen_by_kotlin` and `seen_by_swift` true, writes
// `Collection.all()` (one JSON document per line, with a trailing newline) to DB.dump (through a temp file and a
// rename), waits for the file DB.stop to exist, shuts the store down and exits 0. Gives up after 120 s: exit 1 with
// a message on stderr. Progress goes to stderr. SHOAL_LOG=debug|info|warn sets Shoal's own log level (stderr).

import Foundation
import ShoalDB

let args = CommandLine.arguments
guard args.count >= 5 else {
    FileHandle.standardError.write(Data("usage: MeshPeer DB NAME SECRET LISTEN [CONNECT...]\n".utf8))
    exit(2)
}
let (db, name, secret, listen) = (args[1], args[2], args[3], args[4])
let connect = Array(args.dropFirst(5))
let started = Date()
let deadline = started.addingTimeInterval(120)

func progress(_ message: String) {
    let line = String(format: "[swift %@ %6.2fs] ", name, Date().timeIntervalSince(started)) + message + "\n"
    try? FileHandle.standardError.write(contentsOf: Data(line.utf8))
}

func giveUp(_ message: String) -> Never {
    progress("giving up: \(message)")
    exit(1)
}

/// Polls `condition` every 100 ms until it holds; gives up at the deadline.
func waitUntil(_ what: String, _ condition: () async throws -> Bool) async {
    progress("waiting until \(what)")
    while true {
        do {
            if try await condition() { break }
        } catch {
            progress("while waiting until \(what): \(error)")
        }
        if Date() >= deadline { giveUp("timed out after 120 s waiting until \(what)") }
        try? await Task.sleep(nanoseconds: 100_000_000)
    }
    progress("done: \(what)")
}

@MainActor
func documents(_ collection: Collection) async throws -> [[String: Any]] {
    try await collection.all().map { text in
        guard let object = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else {
            throw ShoalError.InvalidArgument(message: "not a JSON object: \(text)")
        }
        return object
    }
}

switch ProcessInfo.processInfo.environment["SHOAL_LOG"] {
case "trace": Shoal.setLogHandler(level: .trace) { StderrLogger().log(level: $0, target: $1, message: $2) }
case "debug": Shoal.setLogHandler(level: .debug) { StderrLogger().log(level: $0, target: $1, message: $2) }
case "info": Shoal.setLogHandler(level: .info) { StderrLogger().log(level: $0, target: $1, message: $2) }
default: Shoal.installDefaultLogger(level: .warn)
}

do {
    let store = try await Store.open(
        path: db,
        deviceName: name,
        appSecret: secret,
        sync: SyncConfig(listen: listen.isEmpty ? nil : listen, mdns: false, peers: connect)
    )
    progress("opened \(db) as device \(try store.deviceId())")
    try await store.startSync()
    progress("sync started, listening on \(store.listenAddress() ?? "nothing"), dialling \(connect)")
    let mesh = try store.collection(name: "mesh")
    let me = try JSONSerialization.data(withJSONObject: ["_id": name, "from": name])
    _ = try await mesh.upsert(json: String(decoding: me, as: UTF8.self))
    progress("upserted my document")

    await waitUntil("the mesh collection has 3 documents") { try await mesh.all().count >= 3 }
    let ids = try await documents(mesh).compactMap { $0["_id"] as? String }
    for id in ids {
        try await mesh.update(id: id, edits: [.set(path: "seen_by_\(name)", value: .bool(value: true))])
    }
    progress("marked \(ids) seen_by_\(name)")

    await waitUntil("every document is seen by kotlin and swift") {
        let docs = try await documents(mesh)
        return docs.count >= 3 && docs.allSatisfy {
            ($0["seen_by_kotlin"] as? Bool) == true && ($0["seen_by_swift"] as? Bool) == true
        }
    }
    let dump = try await mesh.all().joined(separator: "\n") + "\n"
    let tmp = db + ".dump.tmp"
    try Data(dump.utf8).write(to: URL(fileURLWithPath: tmp))
    guard rename(tmp, db + ".dump") == 0 else { giveUp("cannot rename \(tmp) to \(db).dump: errno \(errno)") }
    progress("wrote \(db).dump")

    await waitUntil("\(db).stop exists") { FileManager.default.fileExists(atPath: db + ".stop") }
    store.shutdown()
    progress("shut down")
    exit(0)
} catch {
    giveUp("\(error)")
}
