// The shipped iOS radio (ios/Sources/ShoalDB/CoreBluetoothRadio.swift) between phones on the simulated air: the
// CoreBluetooth module these tests link is the Linux stand-in (ios/Tests/CoreBluetooth), with Apple's API, over the
// air server `shoal-air` (core/air) at $SHOAL_AIR, which bindings/swift/test.sh starts.

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
    // One write and one notification in flight per link: the radio must wait to be told it may send again.
    let air = try SimulatedAir(window: 1)
    defer { air.close() }
    let dir = try makeTempDir("ble-\(label)")
    defer { removeTempDir(dir) }
    let a = try await openBluetoothStore(dir, "A", air.phone("A") { CoreBluetoothRadio(options: options) })
    let b = try await openBluetoothStore(dir, "B", air.phone("B") { CoreBluetoothRadio(options: options) })
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
    let traffic = try air.traffic()
    try expectEqual(traffic.oversized, 0, "\(label): writes or notifications over the MTU")
    if options.useL2CAP {
        try expect(traffic.channels >= 1 && traffic.streamBytes > 2 * body.utf8.count, "\(label): \(traffic)")
    } else {
        try expect(traffic.channels == 0 && traffic.writes + traffic.notifications > 100, "\(label): \(traffic)")
        // The links' windows filled and the radio waited to be told it may send again, never writing meanwhile.
        try expect(traffic.readyCalls > 0, "\(label): flow control never engaged: \(traffic)")
        try expectEqual(traffic.overrun, 0, "\(label): writes while the window was full")
    }
}

func testBluetoothGatt() async throws {
    try await twoPhones("gatt", CoreBluetoothRadio.Options(useL2CAP: false, discoveryInterval: 0.2))
}

func testBluetoothL2cap() async throws {
    try await twoPhones("l2cap", CoreBluetoothRadio.Options(useL2CAP: true, discoveryInterval: 0.2))
}

/// Three iPhones on a line, A – B – C: A and C never hear each other, so what one writes reaches the other through B.
func testBluetoothLine() async throws {
    let air = try SimulatedAir()
    defer { air.close() }
    try air.setRange(hears: [("A", "B"), ("B", "C")])
    let dir = try makeTempDir("ble-line")
    defer { removeTempDir(dir) }
    let options = CoreBluetoothRadio.Options(discoveryInterval: 0.2)
    var phones: [Store] = []
    for name in ["A", "B", "C"] {
        phones.append(try await openBluetoothStore(dir, name, air.phone(name) { CoreBluetoothRadio(options: options) }))
    }
    defer { for phone in phones { phone.shutdown() } }
    let notes = try phones.map { try $0.collection(name: "notes") }

    _ = try await notes[0].put(id: "from-a", fields: ["text": .text(initial: "written at one end")])
    _ = try await notes[2].put(id: "from-c", fields: ["n": .counter(initial: 7)])
    try await eventually("each end's note reaching the other end") {
        let atC = try await notes[2].get(id: "from-a"), atA = try await notes[0].get(id: "from-c")
        return atC != nil && atA != nil
    }
    try await notes[0].update("from-c") { $0.increment("n", by: 1) }
    try await notes[2].update("from-c") { $0.increment("n", by: 2) }
    try await eventually("the line converging") {
        let all = try await notes.asyncMap { try await $0.all() }
        return all[0].count == 2 && all.allSatisfy { $0 == all[0] }
    }
    try expectEqual(try await notes[1].getField(id: "from-c", path: "n"), "10")
    // Through B: the ends never connected.
    let linked = try air.traffic().connections
    try expect(!linked.contains("A>C") && !linked.contains("C>A"), "A and C connected: \(linked)")
    try expect(linked.contains { $0.contains("A") } && linked.contains { $0.contains("C") }, "\(linked)")
}

/// Two iPhones, one of which walks out of range in the middle of a transfer, both write while apart, and it comes
/// back: they converge, over GATT.
func testBluetoothWalkAway() async throws {
    let air = try SimulatedAir()
    defer { air.close() }
    let dir = try makeTempDir("ble-walk")
    defer { removeTempDir(dir) }
    let options = CoreBluetoothRadio.Options(useL2CAP: false, discoveryInterval: 0.2)
    let a = try await openBluetoothStore(dir, "A", air.phone("A") { CoreBluetoothRadio(options: options) })
    let b = try await openBluetoothStore(dir, "B", air.phone("B") { CoreBluetoothRadio(options: options) })
    defer { a.shutdown(); b.shutdown() }
    let notesA = try a.collection(name: "notes")
    let notesB = try b.collection(name: "notes")
    _ = try await notesA.put(id: "hello", fields: ["n": .counter(initial: 0)])
    try await eventually("the phones meeting") { try await notesB.get(id: "hello") != nil }

    // 200 notes of 2 KB: over 2,000 packets. B walks away once 50 of them have crossed.
    let before = try air.traffic()
    try await a.write { batch in
        for i in 0..<200 {
            batch.upsert(json: #"{"_id":"bulk\#(i)","pad":"\#(String(repeating: "x", count: 2_000))"}"#, into: "notes")
        }
    }
    let started = Date()
    while try air.traffic().crossed < before.crossed + 50 {
        try expect(Date().timeIntervalSince(started) < 30, "the transfer starting")
        try await Task.sleep(nanoseconds: 2_000_000)
    }
    try air.setRange(hears: [])
    let cut = try air.traffic()
    try await notesA.update("hello") { $0.increment("n", by: 1) }
    try await notesB.update("hello") { $0.increment("n", by: 2) }
    await sleep(ms: 500)
    let atB = try await notesB.all().count
    try expect(atB < 201, "B had only part of the notes when it walked away (\(atB))")
    try expectEqual(try air.traffic().crossed, cut.crossed, "nothing crosses while they are apart")

    try air.hearEveryone()
    try await eventually("the phones converging after meeting again") {
        let docsA = try await notesA.all(), docsB = try await notesB.all()
        return docsA.count == 201 && docsA == docsB
    }
    try expectEqual(try await notesB.getField(id: "hello", path: "n"), "3")
}

/// Two iPhone programs (AirPhone.swift: what `ShoalTests --air-phone` runs for the air's mesh driver), here in this
/// process, driven through the air with PROTOCOL.md's commands: a note put on one reaches the other's notes, an
/// attachment its bytes, a fresh store syncs again, and a command the program does not know fails.
func testAirPhonesDriven() async throws {
    let air = try SimulatedAir()
    defer { air.close() }
    let programs = try ["I1", "I2"].map { name in
        let phone = try air.join(name)
        return Task { await serveAirPhone(phone, verbose: false) }
    }
    _ = try await drive(air, "I1", #"{"cmd":"open"}"#)
    _ = try await drive(air, "I2", #"{"cmd":"open"}"#)
    _ = try await drive(air, "I1", #"{"cmd":"put","doc":"n1","text":"hello from I1"}"#)
    try await eventually("I1's note in I2's notes") {
        try await drive(air, "I2", #"{"cmd":"notes"}"#)["notes"] == ["n1": "hello from I1"]
    }

    let bytes = Data((0..<50_000).map { UInt8(truncatingIfNeeded: $0 &* 7 ^ $0 >> 9) }).base64EncodedString()
    _ = try await drive(air, "I2", #"{"cmd":"attach","doc":"f1","bytes":"\#(bytes)"}"#)
    try expectEqual(try await drive(air, "I2", #"{"cmd":"attachment","doc":"f1"}"#)["bytes"], .string(bytes))
    try await eventually("I2's attachment at I1") {
        try await drive(air, "I1", #"{"cmd":"attachment","doc":"f1"}"#)["bytes"] == .string(bytes)
    }

    // A fresh store on I1 (a new directory, a new identity, a new radio on the same phone) gets the note again from I2.
    _ = try await drive(air, "I1", #"{"cmd":"open"}"#)
    try await eventually("I1's fresh store syncing again") {
        try await drive(air, "I1", #"{"cmd":"notes"}"#)["notes"] == ["n1": "hello from I1"]
    }
    let bogus = try await drive(air, "I1", #"{"cmd":"fly"}"#, ok: false)
    try expect(bogus["error"] != nil, "no error for an unknown command: \(bogus)")
    _ = try await drive(air, "I2", #"{"cmd":"close"}"#)
    _ = try await drive(air, "I2", #"{"cmd":"notes"}"#, ok: false)

    for name in ["I1", "I2"] { _ = try await drive(air, name, #"{"cmd":"quit"}"#) }
    for program in programs {
        let quit = await program.value
        try expect(quit, "a phone program ended without being told to quit")
    }
    let linked = try air.traffic().connections
    try expect(linked.contains("I1>I2") || linked.contains("I2>I1"), "the programs never connected: \(linked)")
}

/// Runs `command` on `phone` through the air (off the cooperative pool: the air's control connection blocks) and
/// returns its answer, which must say `ok` as asked.
private func drive(_ air: SimulatedAir, _ phone: String, _ command: String, ok: Bool = true) async throws -> JSON {
    let answer: String = try await withCheckedThrowingContinuation { done in
        DispatchQueue.global().async { done.resume(with: Result { try air.run(phone, command) }) }
    }
    let json = try JSON.parse(answer)
    try expectEqual(json["ok"], .bool(ok), "\(phone) \(command): \(answer)")
    return json
}

extension SimulatedAir.Traffic {
    /// GATT packets that crossed: writes without response and notifications.
    fileprivate var crossed: Int { writes + notifications }
}

extension Array {
    fileprivate func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
        var out: [T] = []
        for element in self { out.append(try await transform(element)) }
        return out
    }
}

/// What CoreBluetooth tells an app, in order, for `testStateRestorationOnTheAir`.
private final class RestorationApp: NSObject, CBCentralManagerDelegate, CBPeripheralManagerDelegate,
    CBPeripheralDelegate, @unchecked Sendable
{
    let events = Locked<[String]>([])
    let seen = Locked<[CBPeripheral]>([])
    let centralState = Locked<[String: Any]>([:])
    let peripheralState = Locked<[String: Any]>([:])

    func heard(_ event: String) -> Bool { events.get().contains(event) }
    private func note(_ event: String) { events.mutate { $0.append(event) } }

    func centralManagerDidUpdateState(_ central: CBCentralManager) {
        note(central.state == .poweredOn ? "central on" : "central \(central.state)")
    }
    func centralManager(_ central: CBCentralManager, willRestoreState dict: [String: Any]) {
        centralState.mutate { $0 = dict }
        note("central restores")
    }
    func centralManager(
        _ central: CBCentralManager, didDiscover peripheral: CBPeripheral, advertisementData: [String: Any],
        rssi RSSI: NSNumber
    ) {
        seen.mutate { if !$0.contains(peripheral) { $0.append(peripheral) } }
    }
    func centralManager(_ central: CBCentralManager, didConnect peripheral: CBPeripheral) { note("connected") }
    func centralManager(
        _ central: CBCentralManager, didDisconnectPeripheral peripheral: CBPeripheral, error: (any Error)?
    ) { note("disconnected") }
    func peripheralManagerDidUpdateState(_ peripheral: CBPeripheralManager) {
        note(peripheral.state == .poweredOn ? "peripheral on" : "peripheral \(peripheral.state)")
    }
    func peripheralManager(_ peripheral: CBPeripheralManager, willRestoreState dict: [String: Any]) {
        peripheralState.mutate { $0 = dict }
        note("peripheral restores")
    }
    func peripheral(_ peripheral: CBPeripheral, didDiscoverServices error: (any Error)?) {
        note("services \((peripheral.services ?? []).map(\.uuid.uuidString))")
    }
    func peripheral(_ peripheral: CBPeripheral, didModifyServices invalidatedServices: [CBService]) {
        note("invalidated \(invalidatedServices.map(\.uuid.uuidString))")
    }
}

/// The CoreBluetooth stand-in's state restoration, with Apple's API shapes, for the radio's sake: an app whose
/// managers opted in is ended by the system while linked in both roles; the stack keeps its links, scan, service
/// and advertisement; managers made again with the same identifiers get them in `willRestoreState` before their
/// first state update (the connection as a connected `CBPeripheral` of the new manager), the old app hears nothing
/// more, a peer learns when the restored service is removed, and a cancelled restored connection ends on the air.
/// An app launched without restoring ends what the stack kept.
func testStateRestorationOnTheAir() async throws {
    let air = try SimulatedAir()
    defer { air.close() }
    let service = CBUUID(string: "5E1F0000-0000-4000-8000-0000000000AA")
    let queue = DispatchQueue(label: "restoration test")
    let (p, q) = (try air.join("P"), try air.join("Q"))
    let restoring: (central: [String: Any], peripheral: [String: Any]) = (
        [CBCentralManagerOptionRestoreIdentifierKey: "app.central"],
        [CBPeripheralManagerOptionRestoreIdentifierKey: "app.peripheral"]
    )
    let peer = RestorationApp()
    let (peerCentral, peerPeripheral) = q.make {
        (CBCentralManager(delegate: peer, queue: queue), CBPeripheralManager(delegate: peer, queue: queue))
    }
    let first = RestorationApp()
    let (central, peripheral) = p.make {
        (CBCentralManager(delegate: first, queue: queue, options: restoring.central),
         CBPeripheralManager(delegate: first, queue: queue, options: restoring.peripheral))
    }
    try await eventually("both phones powered on") {
        [first, peer].allSatisfy { $0.heard("central on") && $0.heard("peripheral on") }
    }
    queue.sync {
        for manager in [peerPeripheral, peripheral] {
            let published = CBMutableService(type: service, primary: true)
            published.characteristics = [
                CBMutableCharacteristic(
                    type: CBUUID(string: "5E1F0000-0000-4000-8000-0000000000AB"), properties: [.notify], value: nil,
                    permissions: [.readable])
            ]
            manager.add(published)
            manager.startAdvertising([CBAdvertisementDataServiceUUIDsKey: [service]])
        }
        central.scanForPeripherals(withServices: [service])
        peerCentral.scanForPeripherals(withServices: [service])
    }
    try await eventually("each phone seeing the other") { !first.seen.get().isEmpty && !peer.seen.get().isEmpty }
    let q1 = first.seen.get()[0], p1 = peer.seen.get()[0]
    // P dials Q and Q dials P: P is in a link in each role.
    queue.sync {
        central.connect(q1)
        peerCentral.connect(p1)
    }
    // Each central's didConnect, not only the air's count: a peripheral not connected yet ignores discoverServices
    // (as CoreBluetooth does), and under load Q's could come after the air counted both links.
    try await eventually("two links") {
        try air.traffic().links == 2 && first.heard("connected") && peer.heard("connected")
    }
    queue.sync {
        p1.delegate = peer
        p1.discoverServices(nil)
    }
    try await eventually("Q discovering P's service") { peer.heard("services [\"\(service.uuidString)\"]") }

    // The system ends P's app: the stack keeps both links.
    p.terminateApp()
    let heardByFirst = first.events.get().count
    try expectEqual(try air.traffic().links, 2, "the stack keeps a terminated app's links")

    // Launched again: managers with the same identifiers get what the stack kept, before their first state update.
    let second = RestorationApp()
    let (central2, peripheral2) = p.make {
        (CBCentralManager(delegate: second, queue: queue, options: restoring.central),
         CBPeripheralManager(delegate: second, queue: queue, options: restoring.peripheral))
    }
    try await eventually("the relaunched app's managers powered on") {
        second.heard("central on") && second.heard("peripheral on")
    }
    let events = second.events.get()
    for role in ["central", "peripheral"] {
        guard let restores = events.firstIndex(of: "\(role) restores"), let on = events.firstIndex(of: "\(role) on")
        else { throw fail("no willRestoreState for the \(role) manager: \(events)") }
        try expect(restores < on, "the \(role) manager's willRestoreState came after its state update: \(events)")
    }
    let restored = queue.sync { () -> [(UUID, CBPeripheralState, Bool)] in
        let peripherals = second.centralState.get()[CBCentralManagerRestoredStatePeripheralsKey] as? [CBPeripheral]
        return (peripherals ?? []).map { ($0.identifier, $0.state, $0 !== q1) }
    }
    try expect(
        restored.count == 1 && restored[0].0 == q1.identifier && restored[0].1 == .connected && restored[0].2,
        "restored peripherals: \(restored)")
    let scan = second.centralState.get()[CBCentralManagerRestoredStateScanServicesKey] as? [CBUUID]
    try expectEqual(scan?.map(\.uuidString), [service.uuidString])
    let services = second.peripheralState.get()[CBPeripheralManagerRestoredStateServicesKey] as? [CBMutableService]
    try expectEqual(services?.map(\.uuid.uuidString), [service.uuidString])
    try expect(second.peripheralState.get()[CBPeripheralManagerRestoredStateAdvertisementDataKey] != nil,
               "no advertisement restored")
    try expect(queue.sync { peripheral2.isAdvertising && central2.isScanning }, "advertising or scan not restored")
    try expectEqual(first.events.get().count, heardByFirst, "the terminated app heard more: \(first.events.get())")

    // The restored service removed: Q's central hears its service was invalidated.
    queue.sync { peripheral2.removeAllServices() }
    try await eventually("Q told P's service changed") { peer.heard("invalidated [\"\(service.uuidString)\"]") }
    // The restored connection cancelled: it ends on the air.
    queue.sync {
        let restoredQ = second.centralState.get()[CBCentralManagerRestoredStatePeripheralsKey] as? [CBPeripheral]
        if let restoredQ = restoredQ?.first { central2.cancelPeripheralConnection(restoredQ) }
    }
    try await eventually("the restored connection ended") { try air.traffic().links == 1 }
    let counts = p.restored
    try expect(
        counts.central == 1 && counts.peripheral == 1 && counts.open == 1 && counts.cancelled == 1,
        "restored links: \(counts)")

    // Linked as central again, ended again, and launched with managers that do not restore: the stack ends the
    // connection it kept.
    queue.sync { central2.connect(central2.retrievePeripherals(withIdentifiers: [q1.identifier])[0]) }
    try await eventually("P's central linked again") { try air.traffic().links == 2 }
    p.terminateApp()
    let third = RestorationApp()
    _ = p.make { (CBCentralManager(delegate: third, queue: queue), CBPeripheralManager(delegate: third, queue: queue)) }
    try await eventually("the kept connection ended") { try air.traffic().links == 1 && third.heard("central on") }
    try expect(!third.heard("central restores") && !third.heard("peripheral restores"), "\(third.events.get())")
}
