// The shipped iOS radio (ios/Sources/ShoalDB/CoreBluetoothRadio.swift) between phones on a simulated air: the
// CoreBluetooth module these tests link is the Linux stand-in (ios/Tests/CoreBluetooth), with Apple's API.

import CoreBluetooth
import Foundation
import ShoalDB

/// Opens `name`.db in `dir` with no network at all: Bluetooth LE only, through `radio`.
private func openBluetoothStore(_ dir: String, _ name: String, _ radio: CoreBluetoothRadio) async throws -> Store {
    let store = try await Store.open(
        path: "\(dir)/\(name).db",
        deviceName: name,
        appSecret: testSecret,
        sync: SyncConfig(listen: nil, mdns: false, peers: [])
    )
    try store.setBluetooth(radio: radio)
    try await store.startSync()
    return store
}

/// Two iPhones on an empty air, with `options`: an edit on either reaches the other, both ways, and concurrent
/// edits converge.
private func twoPhones(_ label: String, _ options: CoreBluetoothRadio.Options) async throws {
    let air = SimulatedAir()
    SimulatedAir.current = air
    let dir = try makeTempDir("ble-\(label)")
    defer { removeTempDir(dir) }
    let a = try await openBluetoothStore(dir, "A", CoreBluetoothRadio(options: options))
    let b = try await openBluetoothStore(dir, "B", CoreBluetoothRadio(options: options))
    defer { a.shutdown(); b.shutdown() }
    let notesA = try a.collection(name: "notes")
    let notesB = try b.collection(name: "notes")

    // A document large enough to take many packets (GATT carries 182 bytes a packet here).
    let body = String(repeating: "0123456789", count: 2_000)
    _ = try await notesA.put(id: "n1", fields: ["title": "from A", "body": .text(initial: body)])
    try await eventually("\(label): B receiving A's note") { try await notesB.get(id: "n1") != nil }
    try expectEqual(try await notesB.get(id: "n1"), try await notesA.get(id: "n1"))

    // And as large the other way: whichever phone ended up central, both directions carry full packets.
    _ = try await notesB.put(id: "n2", fields: ["title": "from B", "n": .counter(initial: 1),
                                                "body": .text(initial: String(body.reversed()))])
    try await notesA.update("n1") { $0.insertText("body", at: 0, "A:") }
    try await notesB.update("n1") { $0.set("title", "edited on B") }
    try await eventually("\(label): both phones converging") {
        let docsA = try await notesA.all(), docsB = try await notesB.all()
        return docsA.count == 2 && docsA == docsB
    }
    let n1 = try await JSON.parse(notesA.get(id: "n1"))
    try expectEqual(n1["title"], "edited on B")
    try expectEqual(n1["body"], .string("A:" + body))

    // It all went over the air, the way the options say (the stores have no network).
    let traffic = air.traffic
    try expectEqual(traffic.oversized, 0, "\(label): writes or notifications over the MTU")
    if options.useL2CAP {
        try expect(traffic.channels >= 1 && traffic.streamBytes > 2 * body.utf8.count, "\(label): \(traffic)")
    } else {
        try expect(traffic.channels == 0 && traffic.writes + traffic.notifications > 100, "\(label): \(traffic)")
    }
}

func testBluetoothGatt() async throws {
    try await twoPhones("gatt", CoreBluetoothRadio.Options(useL2CAP: false, discoveryInterval: 0.2))
}

func testBluetoothL2cap() async throws {
    try await twoPhones("l2cap", CoreBluetoothRadio.Options(useL2CAP: true, discoveryInterval: 0.2))
}
