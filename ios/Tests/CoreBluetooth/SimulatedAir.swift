// The simulated air under this test-only CoreBluetooth is a separate process, the air server `shoal-air` (core/air),
// which Android phones (Robolectric shadows) and iPhones in other processes share; its wire protocol is
// core/air/PROTOCOL.md. This file is its iOS client:
//
//   - `SimulatedPhone`: one iPhone on the air, one connection (`hello` role phone, platform ios, ATT MTU 185). The
//     central and peripheral managers created while the phone is being made (`make`) speak for it; everything the
//     air says to the phone is turned into CoreBluetooth delegate callbacks, each on its manager's queue.
//   - `SimulatedAir`: a test's hold on the air: its control connection (`reset`, `range`, `traffic`, driver
//     commands `do`) and the phones it makes (`phone`, `join`).
// A phone program (ios/Tests/ShoalDBTests/AirPhone.swift) receives its driver's commands through `onCommand`.
//
// The air decides everything the air does: range, advertising and scanning, connections and their ATT MTU, the GATT
// table, loss, flow control windows, what counts as oversized or overrun. What iOS itself does on top, this client
// models:
//   - connecting: no timeout (an attempt lasts until it succeeds or is cancelled); right after `connected` the central
//     asks for the largest ATT MTU (`exchange_mtu` 185), as iOS does by itself; `maximumWriteValueLength` and a
//     central's `maximumUpdateValueLength` are the link's MTU − 3; `cancelPeripheralConnection` reports
//     `didDisconnectPeripheral` without an error, a link the other end closed `.peripheralDisconnected`, a lost one
//     `.connectionTimeout`;
//   - discovery: `discoverServices` is a `discover`; `discoverCharacteristics` is answered from what it found (the
//     air sends a peripheral's whole table at once);
//   - one ATT request (read, descriptor write) at a time per link, the next one queued until the answer to the last:
//     CoreBluetooth queues an app's requests, it never reports "busy";
//   - subscriptions: `setNotifyValue` writes the characteristic's descriptor 0x2902; as a peripheral, the iOS stack
//     answers such writes itself, keeps `subscribedCentrals`, and calls `didSubscribeTo` / `didUnsubscribeFrom` (the
//     latter also when the central's link goes); reads of a characteristic published with a value are answered by
//     the stack, other reads go to `didReceiveRead` and `respond(to:withResult:)`;
//   - flow control: a sender counts its writes without response (central) or notifications (peripheral) in flight
//     per link, up to the link's `window` (from `connected` / `incoming`); `delivered` frees a place. `canSendWriteWithoutResponse`
//     is false and `updateValue` returns false (sending nothing) while a window is full, and
//     `peripheralIsReady(toSendWriteWithoutResponse:)` / `peripheralManagerIsReady(toUpdateSubscribers:)` follow when
//     there is room again. A write sent into a full window still goes to the air, which drops it (`overrun`), as iOS
//     may drop it;
//   - identifiers: a remote phone's `CBPeripheral.identifier` / `CBCentral.identifier` is derived from its air
//     address, so it is stable for as long as the phone is on the air;
//   - L2CAP: `publishL2CAPChannel` is `l2cap_listen`, `openL2CAPChannel` `l2cap_open`; the streams are in
//     AirStreams.swift;
//   - the connection to the air ending is Bluetooth turning off: both managers go `.poweredOff`;
//   - a radio made again on the same phone (a phone program's new store) replaces the phone's managers: the old
//     central manager's links, attempts and scan end, as iOS cancels the connections of a manager that goes away,
//     and the old peripheral manager's advertisement, services and L2CAP listeners go.
//   - the Service Changed indication (`services_changed`): the discovered services the peripheral no longer has
//     are dropped from `services` and reported to `didModifyServices`;
//   - state restoration: `SimulatedPhone.terminateApp` is the system ending the app (not the user): its managers
//     fall silent at once. What a manager made with a restore identifier had, the phone's stack keeps on the air
//     (connections and attempts, scan; services with their subscribers, advertisement); a manager made later with
//     the same identifier gets it in `willRestoreState` before its first state update, the connections as
//     `CBPeripheral`s of its own. What nobody restores ends as iOS ends it. L2CAP channels and published PSMs end
//     with the app (its streams).
// Not modelled: writes with response, an L2CAP channel closing with the GATT connection it was opened on (the air
// keeps channels independent of links), the background rules of iOS beyond what the air applies (`app_state`), the
// system relaunching the app by itself (the test relaunches it), the stack answering requests for a terminated app.

import Dispatch
import Foundation

// MARK: - Links

/// A GATT characteristic as the air describes it.
typealias AirCharacteristic = (uuid: CBUUID, properties: CBCharacteristicProperties)

/// A GATT service as the air describes it (`services`): what a central's discovery found.
struct AirService {
    let uuid: CBUUID
    let characteristics: [AirCharacteristic]
}

/// One GATT link of this phone on the air, as central or as peripheral.
final class AirLink: @unchecked Sendable {
    enum Role { case central, peripheral }

    let id: Int
    let role: Role
    /// The other phone's air address.
    let peer: String
    /// Packets this end may have in flight at once (the air's `window`).
    let window: Int
    /// Central role: this end's handle on the peripheral.
    weak var peripheral: CBPeripheral?
    /// Peripheral role: this end's handle on the central.
    let central: CBCentral?

    private let lock = NSLock()
    private var currentMtu: Int
    private var inFlight = 0
    private var waiting = false
    private var requests: [[String: Any]] = []
    private var requesting = false

    init(id: Int, role: Role, peer: String, mtu: Int, window: Int, central: CBCentral? = nil) {
        self.id = id
        self.role = role
        self.peer = peer
        currentMtu = mtu
        self.window = max(window, 1)
        self.central = central
    }

    private func locked<T>(_ body: () -> T) -> T {
        lock.lock()
        defer { lock.unlock() }
        return body()
    }

    /// The link's ATT MTU (23 until the exchange).
    var mtu: Int {
        get { locked { currentMtu } }
        set { locked { currentMtu = newValue } }
    }

    /// Whether this end may send a packet now; if not, it is told when it may.
    func canSend() -> Bool {
        locked {
            if inFlight < window { return true }
            waiting = true
            return false
        }
    }

    /// Counts a packet sent; false (and this end waits) when the window was full.
    func take() -> Bool {
        locked {
            guard inFlight < window else {
                waiting = true
                return false
            }
            inFlight += 1
            return true
        }
    }

    /// One of this end's packets arrived (`delivered`): whether this end was waiting for room (and is now told).
    func delivered() -> Bool {
        locked {
            inFlight = max(inFlight - 1, 0)
            defer { waiting = false }
            return waiting
        }
    }

    /// Queues an ATT request: returns it if it may go now, else it goes when the one outstanding is answered.
    func enqueue(_ request: [String: Any]) -> [String: Any]? {
        locked {
            guard requesting else {
                requesting = true
                return request
            }
            requests.append(request)
            return nil
        }
    }

    /// The outstanding request was answered: the next one to send, if any.
    func answered() -> [String: Any]? {
        locked {
            guard !requests.isEmpty else {
                requesting = false
                return nil
            }
            return requests.removeFirst()
        }
    }
}

// MARK: - A phone

/// A terminated app's central manager as the phone's stack keeps it for restoration: its links and connection
/// attempts go on, its scan runs.
private struct KeptCentral {
    var links: Set<Int>
    /// Attempts by `ref`: the peer's air address.
    var attempts: [Int: String]
    var scan: (services: [CBUUID]?, options: [String: Any]?)?
}

/// A terminated app's peripheral manager as the stack keeps it: its services (with their subscribers) stay in the
/// GATT table, its advertisement goes on.
private struct KeptPeripheral {
    let services: [CBMutableService]
    let advertisement: [String: Any]?
}

/// One iPhone on the air: a connection to the air server, and the CoreBluetooth managers that speak for it. The
/// phone's latest central manager and latest peripheral manager are its own (a radio made again replaces the
/// managers of the one before; what an earlier manager asks is ignored).
public final class SimulatedPhone: @unchecked Sendable {
    /// The ATT MTU an iPhone's stack accepts.
    static let attMtu = 185

    /// The name the air and its drivers know the phone by.
    public let name: String
    /// How the other phones name it (`peer`).
    public let address: String
    /// How many packets each direction of a link carries at a time.
    public let window: Int

    private let socket: AirSocket
    private let lock = NSLock()
    private weak var centralManager: CBCentralManager?
    private weak var peripheralManager: CBPeripheralManager?
    private var on = true
    private var nextRef = 0
    /// Connection attempts (`connect`) and L2CAP opens (`l2cap_open`) by ref.
    private var attempts: [Int: CBPeripheral] = [:]
    private var opening: [Int: (peripheral: CBPeripheral, psm: CBL2CAPPSM)] = [:]
    private var links: [Int: AirLink] = [:]
    /// Peripheral role: one object per remote central, by air address.
    private var centrals: [String: CBCentral] = [:]
    private var channels: [Int: AirChannel] = [:]
    /// The PSMs the air says this phone listens on.
    private var listening: Set<Int> = []
    private var commandHandler: ((String) -> Void)?
    private var heldCommands: [String] = []
    private var endHandler: (() -> Void)?
    private var readyCount = 0
    /// The restore identifiers the current managers were made with.
    private var centralRestoreId: String?
    private var peripheralRestoreId: String?
    /// What the stack keeps of a terminated app, by restore identifier.
    private var keptCentrals: [String: KeptCentral] = [:]
    private var keptPeripherals: [String: KeptPeripheral] = [:]
    /// Links handed to restored managers since the app was last terminated, with this phone's role in each.
    private var restoredLinks: [Int: AirLink.Role] = [:]
    /// The restored links (central role) the app itself cancelled.
    private var restoredCancelled: Set<Int> = []

    private init(socket: AirSocket, name: String, address: String, window: Int) {
        self.socket = socket
        self.name = name
        self.address = address
        self.window = window
    }

    /// Joins the air at `air` (`host:port`) as the iPhone called `name`.
    public static func connect(air: String, name: String) throws -> SimulatedPhone {
        let socket = try AirSocket(address: air, label: name)
        socket.send(["op": "hello", "role": "phone", "phone": name, "platform": "ios", "mtu": attMtu])
        guard let welcome = socket.readMessage() else { throw AirError("the air closed the connection of \(name)") }
        guard welcome.op == "welcome", let address = welcome.string("address") else {
            socket.shutDown()
            throw AirError("the air did not welcome \(name): \(welcome.fields)")
        }
        socket.label = "\(name) \(address)"
        let phone = SimulatedPhone(socket: socket, name: name, address: address, window: welcome.int("window") ?? 8)
        let reader = Thread { phone.read() }
        reader.name = "air phone \(name)"
        reader.start()
        return phone
    }

    private static let buildingLock = NSLock()
    nonisolated(unsafe) private static var buildingPhone: SimulatedPhone?

    /// The phone being made (`make`), which managers created now belong to.
    static var building: SimulatedPhone? {
        buildingLock.lock()
        defer { buildingLock.unlock() }
        return buildingPhone
    }

    /// Runs `body` (which creates a radio, whose managers it creates at once): the managers it creates belong to this
    /// phone. One phone is made at a time.
    public func make<T>(_ body: () throws -> T) rethrows -> T {
        SimulatedPhone.buildingLock.lock()
        SimulatedPhone.buildingPhone = self
        SimulatedPhone.buildingLock.unlock()
        defer {
            SimulatedPhone.buildingLock.lock()
            SimulatedPhone.buildingPhone = nil
            SimulatedPhone.buildingLock.unlock()
        }
        return try body()
    }

    /// Calls `handler` (on the air's reader thread, in order) with each driver command sent to this phone: the whole
    /// `{"op":"do",...}` line. Commands that came before a handler was set are handed to it first.
    public func onCommand(_ handler: @escaping @Sendable (String) -> Void) {
        locked {
            commandHandler = handler
            for command in heldCommands { handler(command) }
            heldCommands = []
        }
    }

    /// Calls `handler` (once, on the air's reader thread) when the connection to the air ends.
    public func onEnd(_ handler: @escaping @Sendable () -> Void) {
        let ended = locked { () -> Bool in
            endHandler = handler
            return !on
        }
        if ended { handler() }
    }

    /// Sends one message to the air (for drivers' answers: `done`); false if the connection is gone.
    @discardableResult
    public func send(_ message: [String: Any]) -> Bool {
        socket.send(message)
    }

    /// Leaves the air: the connection closes, the phone's links drop, its managers power off.
    public func leave() {
        socket.shutDown()
    }

    /// Times this phone told a manager it may send again (`peripheralIsReady` / `peripheralManagerIsReady`).
    public var readyCalls: Int { locked { readyCount } }

    /// Links handed to restored managers since the app was last terminated (`willRestoreState`), by this phone's
    /// role; how many of them are still up, and how many (central role) the app cancelled itself.
    public var restored: (central: Int, peripheral: Int, open: Int, cancelled: Int) {
        locked {
            let central = restoredLinks.values.filter { $0 == .central }.count
            let open = restoredLinks.keys.filter { links[$0] != nil }.count
            return (central, restoredLinks.count - central, open, restoredCancelled.count)
        }
    }

    /// The system ends the app (not the user, who would end its connections too): from now on its managers hear
    /// nothing and what they are asked is not done. What a manager made with a restore identifier had, the stack
    /// keeps for a manager made later with the same identifier (`willRestoreState`): a central manager's connections,
    /// attempts and scan, a peripheral manager's services (with their subscribers) and advertisement. What a manager
    /// without one had ends as iOS ends it: connections and attempts cancelled, scan and advertisement stopped,
    /// services removed. The app's L2CAP channels close and its PSMs are unpublished. Not on a manager's queue.
    public func terminateApp() {
        let (central, peripheral) = locked { (centralManager, peripheralManager) }
        // The managers' own state lives on their queues.
        var scan: (services: [CBUUID]?, options: [String: Any]?)?
        if let central {
            central.queue.sync {
                central.delegate = nil
                for p in central.known.values { p.delegate = nil }
                scan = central.isScanning ? central.scan : nil
            }
        }
        var services: [CBMutableService] = []
        var advertisement: [String: Any]?
        if let peripheral {
            peripheral.queue.sync {
                peripheral.delegate = nil
                services = peripheral.services
                advertisement = peripheral.isAdvertising ? peripheral.advertisement : nil
            }
        }
        let (ends, psms, open) = locked { () -> ([[String: Any]], Set<Int>, [Int]) in
            var ends: [[String: Any]] = []
            let centralLinks = links.values.filter { $0.role == .central }
            if central != nil, let id = centralRestoreId {
                keptCentrals[id] = KeptCentral(
                    links: Set(centralLinks.map(\.id)), attempts: attempts.mapValues(\.address), scan: scan)
                for link in centralLinks { link.peripheral = nil }
            } else if central != nil {
                for link in centralLinks {
                    links[link.id] = nil
                    ends.append(["op": "disconnect", "link": link.id])
                }
                for ref in attempts.keys { ends.append(["op": "cancel_connect", "ref": ref]) }
                ends.append(["op": "stop_scan"])
            }
            if peripheral != nil, let id = peripheralRestoreId {
                keptPeripherals[id] = KeptPeripheral(services: services, advertisement: advertisement)
            } else if peripheral != nil {
                ends.append(["op": "stop_advertise"])
                ends.append(["op": "remove_services"])
            }
            centralManager = nil
            peripheralManager = nil
            restoredLinks = [:]
            restoredCancelled = []
            centralRestoreId = nil
            peripheralRestoreId = nil
            attempts = [:]
            opening = [:]
            defer {
                listening = []
                channels = [:]
            }
            return (ends, listening, Array(channels.keys))
        }
        for message in ends { socket.send(message) }
        for psm in psms { socket.send(["op": "l2cap_unlisten", "psm": psm]) }
        for id in open { socket.send(["op": "close", "chan": id]) }
    }

    private func locked<T>(_ body: () -> T) -> T {
        lock.lock()
        defer { lock.unlock() }
        return body()
    }

    // MARK: Managers (called on their queues)

    /// `manager` becomes the phone's central manager. One it replaces lets go of its links, attempts and scan, as
    /// iOS cancels the connections of a central manager that goes away. A terminated app's central manager kept under
    /// `identifier` is restored into it (`willRestoreState`, before the first state update); one kept under another
    /// identifier ends.
    func attach(central manager: CBCentralManager, restoring identifier: String?) {
        let (up, stopScan, stale, refs, state) = locked {
            () -> (Bool, Bool, [AirLink], [Int], [String: Any]?) in
            let replaced = centralManager != nil && centralManager !== manager
            centralManager = manager
            centralRestoreId = identifier
            var stale: [AirLink] = []
            var refs: [Int] = []
            if replaced {
                stale = links.values.filter { $0.role == .central }
                refs = Array(attempts.keys)
                attempts = [:]
                opening = [:]
            }
            var state: [String: Any]?
            var stopScan = replaced
            for (id, kept) in keptCentrals {
                if id == identifier {
                    state = restore(kept, into: manager)
                } else {
                    stale += kept.links.compactMap { links[$0] }
                    refs += kept.attempts.keys
                    stopScan = stopScan || kept.scan != nil
                }
            }
            keptCentrals = [:]
            for link in stale { links[link.id] = nil }
            return (on, stopScan, stale, refs, state)
        }
        if stopScan { socket.send(["op": "stop_scan"]) }
        for ref in refs { socket.send(["op": "cancel_connect", "ref": ref]) }
        for link in stale { socket.send(["op": "disconnect", "link": link.id]) }
        manager.queue.async {
            if let state { manager.delegate?.centralManager(manager, willRestoreState: state) }
            manager.state = up ? .poweredOn : .poweredOff
            manager.delegate?.centralManagerDidUpdateState(manager)
        }
    }

    /// Hands a kept central manager's links, attempts and scan to `manager` (under the lock, while `manager` is being
    /// made, so nothing else touches it yet): the state `willRestoreState` reports.
    private func restore(_ kept: KeptCentral, into manager: CBCentralManager) -> [String: Any] {
        var peripherals: [CBPeripheral] = []
        for id in kept.links.sorted() {
            guard let link = links[id] else { continue }  // ended while the app was not running
            let p = manager.peripheral(at: link.peer)
            p.link = link
            p.state = .connected
            link.peripheral = p
            restoredLinks[id] = .central
            peripherals.append(p)
        }
        for (ref, address) in kept.attempts.sorted(by: { $0.key < $1.key }) {
            let p = manager.peripheral(at: address)
            p.state = .connecting
            p.attempt = ref
            attempts[ref] = p
            peripherals.append(p)
        }
        var state: [String: Any] = [CBCentralManagerRestoredStatePeripheralsKey: peripherals]
        if let scan = kept.scan {
            manager.scan = scan
            manager.isScanning = true
            if let services = scan.services { state[CBCentralManagerRestoredStateScanServicesKey] = services }
            if let options = scan.options { state[CBCentralManagerRestoredStateScanOptionsKey] = options }
        }
        return state
    }

    /// `manager` becomes the phone's peripheral manager. One it replaces stops advertising, and its services and
    /// L2CAP listeners go. A terminated app's peripheral manager kept under `identifier` is restored into it
    /// (`willRestoreState`, before the first state update); one kept under another identifier ends.
    func attach(peripheral manager: CBPeripheralManager, restoring identifier: String?) {
        let (up, withdraw, psms, state) = locked { () -> (Bool, Bool, Set<Int>, [String: Any]?) in
            let replaced = peripheralManager != nil && peripheralManager !== manager
            peripheralManager = manager
            peripheralRestoreId = identifier
            var withdraw = replaced
            var state: [String: Any]?
            for (id, kept) in keptPeripherals {
                guard id == identifier else {
                    withdraw = true
                    continue
                }
                // Still being made: nothing else touches the manager yet.
                manager.services = kept.services
                manager.advertisement = kept.advertisement
                manager.isAdvertising = kept.advertisement != nil
                var restoredState: [String: Any] = [CBPeripheralManagerRestoredStateServicesKey: kept.services]
                if let advertisement = kept.advertisement {
                    restoredState[CBPeripheralManagerRestoredStateAdvertisementDataKey] = advertisement
                }
                state = restoredState
                for link in links.values where link.role == .peripheral { restoredLinks[link.id] = .peripheral }
            }
            keptPeripherals = [:]
            defer { if replaced { listening = [] } }
            return (on, withdraw, replaced ? listening : [], state)
        }
        if withdraw {
            socket.send(["op": "stop_advertise"])
            socket.send(["op": "remove_services"])
            for psm in psms { socket.send(["op": "l2cap_unlisten", "psm": psm]) }
        }
        manager.queue.async {
            if let state { manager.delegate?.peripheralManager(manager, willRestoreState: state) }
            manager.state = up ? .poweredOn : .poweredOff
            manager.delegate?.peripheralManagerDidUpdateState(manager)
        }
    }

    private func isCurrent(_ manager: CBManager) -> Bool {
        locked { manager === centralManager || manager === peripheralManager }
    }

    /// Sends what `manager` asks for, if it is still this phone's.
    @discardableResult
    func send(from manager: CBManager, _ message: [String: Any]) -> Bool {
        guard isCurrent(manager) else { return false }
        return socket.send(message)
    }

    func connect(from manager: CBCentralManager, to peripheral: CBPeripheral) {
        guard isCurrent(manager) else { return }
        let ref = locked { () -> Int in
            nextRef += 1
            attempts[nextRef] = peripheral
            return nextRef
        }
        peripheral.attempt = ref
        send(from: manager, ["op": "connect", "peer": peripheral.address, "ref": ref, "timeout_ms": NSNull()])
    }

    /// Ends a connection or an attempt; the delegate hears `didDisconnectPeripheral` (no error), as on iOS.
    func cancel(from manager: CBCentralManager, _ peripheral: CBPeripheral) {
        guard isCurrent(manager) else { return }
        let wasUp = peripheral.state != .disconnected
        if peripheral.state == .connecting {
            let ref = peripheral.attempt
            locked { attempts[ref] = nil }
            send(from: manager, ["op": "cancel_connect", "ref": ref])
        } else if let link = peripheral.link {
            locked {
                links[link.id] = nil
                if restoredLinks[link.id] != nil { restoredCancelled.insert(link.id) }
            }
            send(from: manager, ["op": "disconnect", "link": link.id])
        }
        peripheral.link = nil
        peripheral.attempt = 0
        peripheral.state = .disconnected
        guard wasUp else { return }
        manager.queue.async {
            manager.delegate?.centralManager(manager, didDisconnectPeripheral: peripheral, error: nil)
        }
    }

    /// An ATT request of a central: one at a time per link.
    func request(from manager: CBCentralManager, on link: AirLink, _ message: [String: Any]) {
        guard isCurrent(manager), let now = link.enqueue(message) else { return }
        socket.send(now)
    }

    func write(from manager: CBCentralManager, _ value: Data, to characteristic: CBCharacteristic, on link: AirLink) {
        guard isCurrent(manager) else { return }
        // A packet the air drops for its size never comes back `delivered`: it takes no place in the window.
        if value.count <= link.mtu - 3 { _ = link.take() }
        socket.send([
            "op": "write", "link": link.id, "char": characteristic.uuid.airString,
            "value": value.base64EncodedString(),
        ])
    }

    func notify(
        from manager: CBPeripheralManager, _ value: Data, _ characteristic: CBMutableCharacteristic,
        to centrals: [CBCentral]
    ) -> Bool {
        guard isCurrent(manager) else { return false }
        let targets = centrals.compactMap(\.link)
        guard targets.allSatisfy({ $0.canSend() }) else { return false }
        for link in targets {
            if value.count <= link.mtu - 3 { _ = link.take() }
            socket.send([
                "op": "notify", "link": link.id, "char": characteristic.uuid.airString,
                "value": value.base64EncodedString(),
            ])
        }
        return true
    }

    func openChannel(from manager: CBCentralManager, to peripheral: CBPeripheral, psm: CBL2CAPPSM) {
        guard isCurrent(manager) else { return }
        let ref = locked { () -> Int in
            nextRef += 1
            opening[nextRef] = (peripheral, psm)
            return nextRef
        }
        send(from: manager, ["op": "l2cap_open", "peer": peripheral.address, "psm": Int(psm), "ref": ref])
    }

    func unlisten(from manager: CBPeripheralManager, _ psm: Int) {
        guard isCurrent(manager) else { return }
        locked { _ = listening.remove(psm) }
        socket.send(["op": "l2cap_unlisten", "psm": psm])
    }

    /// This end closes channel `id` (from its stream, on any queue).
    func closeChannel(_ id: Int) {
        locked { channels[id] = nil }
        socket.send(["op": "close", "chan": id])
    }

    // MARK: What the air says (on the reader thread)

    private func read() {
        while let line = socket.readLine() {
            guard let message = AirMessage(line: line) else {
                airLog("air \(name): not a JSON object: \(String(decoding: line, as: UTF8.self))")
                continue
            }
            handle(message, line: line)
        }
        ended()
    }

    private var central: CBCentralManager? { locked { centralManager } }
    private var peripheral: CBPeripheralManager? { locked { peripheralManager } }

    private func handle(_ m: AirMessage, line: Data) {
        switch m.op {
        // Central role.
        case "seen": seen(m)
        case "connected": connected(m)
        case "connect_failed":
            guard let ref = m.int("ref"), let p = locked({ () -> CBPeripheral? in
                for id in keptCentrals.keys { keptCentrals[id]?.attempts[ref] = nil }
                return attempts.removeValue(forKey: ref)
            }), let manager = p.manager
            else { return }
            manager.queue.async {
                guard p.state == .connecting, p.attempt == ref else { return }
                p.state = .disconnected
                p.attempt = 0
                manager.delegate?.centralManager(manager, didFailToConnect: p, error: CBError(.connectionFailed))
            }
        case "services": services(m)
        case "services_changed": servicesChanged(m)
        case "read_result", "descriptor_written", "notified": centralGatt(m)
        case "l2cap_opened", "l2cap_failed": opened(m)
        // Peripheral role.
        case "advertising":
            guard let manager = peripheral else { return }
            let ok = m.bool("ok") ?? false
            manager.queue.async {
                if !ok { manager.isAdvertising = false }
                manager.delegate?.peripheralManagerDidStartAdvertising(manager, error: ok ? nil : CBError(.unknown))
            }
        case "service_added":
            guard let manager = peripheral else { return }
            let ok = m.bool("ok") ?? false
            manager.queue.async {
                guard !manager.pendingAdds.isEmpty else { return }
                let (service, report) = manager.pendingAdds.removeFirst()
                if !ok { manager.services.removeAll { $0 === service } }
                guard report else { return }
                manager.delegate?.peripheralManager(manager, didAdd: service, error: ok ? nil : CBError(.unknown))
            }
        case "incoming":
            guard let id = m.int("link"), let peer = m.string("peer") else { return }
            locked {
                let central = centrals[peer] ?? CBCentral(address: peer)
                centrals[peer] = central
                let link = AirLink(
                    id: id, role: .peripheral, peer: peer, mtu: m.int("mtu") ?? 23, window: m.int("window") ?? window,
                    central: central)
                links[id] = link
                central.link = link
            }
        case "read_request", "descriptor_write_request", "written": peripheralGatt(m)
        case "l2cap_listening":
            guard let psm = m.int("psm") else { return }
            guard let manager = locked({ () -> CBPeripheralManager? in
                listening.insert(psm)
                return peripheralManager
            }) else { return }
            manager.queue.async {
                manager.psms.insert(CBL2CAPPSM(psm))
                manager.delegate?.peripheralManager(manager, didPublishL2CAPChannel: CBL2CAPPSM(psm), error: nil)
            }
        case "l2cap_incoming": incomingChannel(m)
        // Both roles.
        case "mtu":
            guard let id = m.int("link"), let mtu = m.int("mtu") else { return }
            locked { links[id] }?.mtu = mtu
        case "delivered": delivered(m)
        case "disconnected": disconnected(m)
        case "data":
            guard let id = m.int("chan"), let bytes = m.bytes("bytes") else { return }
            locked { channels[id] }?.received(bytes)
        case "closed":
            guard let id = m.int("chan") else { return }
            locked { channels.removeValue(forKey: id) }?.endedByPeer()
        case "do":
            let text = String(decoding: line, as: UTF8.self)
            locked {
                if let commandHandler { commandHandler(text) } else { heldCommands.append(text) }
            }
        case "error":
            if airDebug { airLog("air \(name): error from the air: \(m.string("what") ?? "?")") }
        default:
            if airDebug { airLog("air \(name): unknown message \(m.fields)") }
        }
    }

    private func seen(_ m: AirMessage) {
        guard let manager = central, let peer = m.string("peer") else { return }
        let services = (m["services"] as? [String] ?? []).map { CBUUID(string: $0) }
        var data: [CBUUID: Data] = [:]
        for (uuid, value) in m["service_data"] as? [String: Any] ?? [:] {
            if let text = value as? String, let bytes = Data(base64Encoded: text) { data[CBUUID(string: uuid)] = bytes }
        }
        let serviceData = data
        let name = m.string("name")
        let rssi = m.int("rssi") ?? -60
        manager.queue.async {
            guard manager.state == .poweredOn, manager.isScanning else { return }
            let p = manager.peripheral(at: peer)
            if let name { p.advertisedName = name }
            var advertisement: [String: Any] = [:]
            if !services.isEmpty { advertisement[CBAdvertisementDataServiceUUIDsKey] = services }
            if !serviceData.isEmpty { advertisement[CBAdvertisementDataServiceDataKey] = serviceData }
            if let name { advertisement[CBAdvertisementDataLocalNameKey] = name }
            manager.delegate?.centralManager(
                manager, didDiscover: p, advertisementData: advertisement, rssi: NSNumber(value: rssi))
        }
    }

    private func connected(_ m: AirMessage) {
        guard let ref = m.int("ref"), let id = m.int("link") else { return }
        if keptConnected(ref: ref, link: id, m) {
            // iOS exchanges the largest ATT MTU by itself, right after connecting.
            socket.send(["op": "exchange_mtu", "link": id, "mtu": SimulatedPhone.attMtu])
            return
        }
        guard let p = locked({ attempts.removeValue(forKey: ref) }), let manager = p.manager else {
            // Cancelled meanwhile.
            socket.send(["op": "disconnect", "link": id])
            return
        }
        let link = AirLink(
            id: id, role: .central, peer: p.address, mtu: m.int("mtu") ?? 23, window: m.int("window") ?? window)
        link.peripheral = p
        locked { links[id] = link }
        manager.queue.async { [self] in
            guard p.state == .connecting, p.attempt == ref else {
                locked { links[id] = nil }
                socket.send(["op": "disconnect", "link": id])
                return
            }
            p.link = link
            p.attempt = 0
            p.state = .connected
            p.services = nil
            p.table = []
            p.serviceFilters = []
            // iOS exchanges the largest ATT MTU by itself, right after connecting.
            socket.send(["op": "exchange_mtu", "link": id, "mtu": SimulatedPhone.attMtu])
            manager.delegate?.centralManager(manager, didConnect: p)
        }
    }

    /// An attempt of a terminated app's central manager succeeded: the stack keeps the link for its restoration.
    private func keptConnected(ref: Int, link id: Int, _ m: AirMessage) -> Bool {
        locked {
            guard let (identifier, kept) = keptCentrals.first(where: { $0.value.attempts[ref] != nil }),
                  let peer = kept.attempts[ref]
            else { return false }
            keptCentrals[identifier]?.attempts[ref] = nil
            keptCentrals[identifier]?.links.insert(id)
            links[id] = AirLink(
                id: id, role: .central, peer: peer, mtu: m.int("mtu") ?? 23, window: m.int("window") ?? window)
            return true
        }
    }

    /// The central's link `m` is about, and its peripheral and manager.
    private func centralLink(_ m: AirMessage) -> (AirLink, CBPeripheral, CBCentralManager)? {
        guard let id = m.int("link"), let link = locked({ links[id] }), link.role == .central,
              let p = link.peripheral, let manager = p.manager
        else { return nil }
        return (link, p, manager)
    }

    private func services(_ m: AirMessage) {
        guard let (link, p, manager) = centralLink(m) else { return }
        let table: [AirService] = (m["services"] as? [[String: Any]] ?? []).compactMap { service in
            guard let uuid = service["uuid"] as? String else { return nil }
            let chars: [AirCharacteristic] = (service["chars"] as? [[String: Any]] ?? []).compactMap { c in
                guard let uuid = c["uuid"] as? String else { return nil }
                var properties: CBCharacteristicProperties = []
                for prop in c["props"] as? [String] ?? [] {
                    switch prop {
                    case "read": properties.insert(.read)
                    case "write": properties.insert(.write)
                    case "write_no_response": properties.insert(.writeWithoutResponse)
                    case "notify": properties.insert(.notify)
                    case "indicate": properties.insert(.indicate)
                    default: break
                    }
                }
                return (CBUUID(string: uuid), properties)
            }
            return AirService(uuid: CBUUID(string: uuid), characteristics: chars)
        }
        manager.queue.async {
            guard p.link === link else { return }
            let filter = p.serviceFilters.isEmpty ? nil : p.serviceFilters.removeFirst()
            p.table = table
            p.services = table.filter { filter?.contains($0.uuid) ?? true }.map {
                CBService(uuid: $0.uuid, primary: true, peripheral: p)
            }
            p.delegate?.peripheral(p, didDiscoverServices: nil)
        }
    }

    /// The peripheral's GATT table changed: discovered services it no longer has are invalidated.
    private func servicesChanged(_ m: AirMessage) {
        guard let (link, p, manager) = centralLink(m) else { return }
        let current = Set((m["services"] as? [String] ?? []).map { CBUUID(string: $0) })
        manager.queue.async {
            guard p.link === link else { return }
            let invalidated = (p.services ?? []).filter { !current.contains($0.uuid) }
            guard !invalidated.isEmpty else { return }
            p.services = (p.services ?? []).filter { current.contains($0.uuid) }
            p.table = p.table.filter { current.contains($0.uuid) }
            p.delegate?.peripheral(p, didModifyServices: invalidated)
        }
    }

    /// An ATT status from the air as the error CoreBluetooth reports (`nil`: success).
    private func attError(_ status: Int?) -> (any Error)? {
        guard let status, status != 0 else { return nil }
        if let code = CBATTError.Code(rawValue: status) { return CBATTError(code) }
        return CBError(.unknown)
    }

    private func centralGatt(_ m: AirMessage) {
        guard let (link, p, manager) = centralLink(m), let uuid = m.string("char") else { return }
        let char = CBUUID(string: uuid)
        let value = m.bytes("value")
        let error = attError(m.int("status"))
        if m.op != "notified", let next = link.answered() { socket.send(next) }
        manager.queue.async {
            guard p.link === link else { return }
            switch m.op {
            case "read_result":
                guard let c = p.discoveredCharacteristics(char).first else { return }
                if error == nil { c.storedValue = value }
                p.delegate?.peripheral(p, didUpdateValueFor: c, error: error)
            case "descriptor_written":
                guard let c = p.discoveredCharacteristics(char).first else { return }
                let enabled = c.notifyRequests.isEmpty ? c.isNotifying : c.notifyRequests.removeFirst()
                if error == nil { c.isNotifying = enabled }
                p.delegate?.peripheral(p, didUpdateNotificationStateFor: c, error: error)
            default:
                for c in p.discoveredCharacteristics(char) {
                    c.storedValue = value
                    p.delegate?.peripheral(p, didUpdateValueFor: c, error: nil)
                }
            }
        }
    }

    private func opened(_ m: AirMessage) {
        guard let ref = m.int("ref"), let (p, psm) = locked({ opening.removeValue(forKey: ref) }),
              let manager = p.manager
        else {
            if let id = m.int("chan") { socket.send(["op": "close", "chan": id]) }
            return
        }
        guard m.op == "l2cap_opened", let id = m.int("chan") else {
            return manager.queue.async {
                p.delegate?.peripheral(p, didOpen: nil, error: CBError(.connectionFailed))
            }
        }
        let channel = AirChannel(id: id, phone: self)
        locked { channels[id] = channel }
        manager.queue.async {
            guard p.state == .connected else { return channel.close() }
            let opened = CBL2CAPChannel(
                peer: p, input: AirInputStream(channel), output: AirOutputStream(channel), psm: psm)
            p.delegate?.peripheral(p, didOpen: opened, error: nil)
        }
    }

    /// The peripheral's link `m` is about, and its central and manager.
    private func peripheralLink(_ m: AirMessage) -> (AirLink, CBCentral, CBPeripheralManager)? {
        guard let id = m.int("link"), let link = locked({ links[id] }), link.role == .peripheral,
              let central = link.central, let manager = peripheral
        else { return nil }
        return (link, central, manager)
    }

    private func respond(_ link: AirLink, _ request: Int, _ status: Int, _ value: Data? = nil) {
        var answer: [String: Any] = ["op": "respond", "link": link.id, "req": request, "status": status]
        if let value { answer["value"] = value.base64EncodedString() }
        socket.send(answer)
    }

    private func peripheralGatt(_ m: AirMessage) {
        guard let (link, central, manager) = peripheralLink(m), let uuid = m.string("char") else { return }
        let char = CBUUID(string: uuid)
        let request = m.int("req") ?? 0
        let offset = m.int("offset") ?? 0
        let value = m.bytes("value")
        let descriptor = m.string("descriptor")
        manager.queue.async { [self] in
            let c = manager.characteristic(char)
            switch m.op {
            case "read_request":
                guard let c else { return respond(link, request, CBATTError.Code.attributeNotFound.rawValue) }
                // A characteristic published with a value is answered by the stack itself.
                if let value = c.value {
                    guard offset <= value.count else {
                        return respond(link, request, CBATTError.Code.invalidOffset.rawValue)
                    }
                    return respond(link, request, 0, value.subdata(in: offset..<value.count))
                }
                let read = CBATTRequest(central: central, characteristic: c, offset: offset, value: nil) {
                    [self] code, value in
                    respond(link, request, code.rawValue, code == .success ? value ?? Data() : nil)
                }
                manager.delegate?.peripheralManager(manager, didReceiveRead: read)
            case "descriptor_write_request":
                // The iOS stack answers writes of the Client Characteristic Configuration itself.
                guard let c, isCCCD(descriptor), !c.properties.isDisjoint(with: [.notify, .indicate]) else {
                    return respond(link, request, CBATTError.Code.attributeNotFound.rawValue)
                }
                let enabled = (value?.first ?? 0) & 0x03 != 0
                respond(link, request, 0)
                let subscribed = c.subscribedCentrals?.contains { $0 === central } ?? false
                if enabled, !subscribed {
                    c.subscribedCentrals = (c.subscribedCentrals ?? []) + [central]
                    manager.delegate?.peripheralManager(manager, central: central, didSubscribeTo: c)
                } else if !enabled, subscribed {
                    c.subscribedCentrals?.removeAll { $0 === central }
                    manager.delegate?.peripheralManager(manager, central: central, didUnsubscribeFrom: c)
                }
            default:  // written
                guard let c, let value else { return }
                let write = CBATTRequest(central: central, characteristic: c, offset: 0, value: value, answer: nil)
                manager.delegate?.peripheralManager(manager, didReceiveWrite: [write])
            }
        }
    }

    private func isCCCD(_ descriptor: String?) -> Bool {
        guard let d = descriptor?.lowercased() else { return false }
        return d == "2902" || d == "00002902-0000-1000-8000-00805f9b34fb"
    }

    private func incomingChannel(_ m: AirMessage) {
        guard let id = m.int("chan"), let peer = m.string("peer") else { return }
        let psm = CBL2CAPPSM(truncatingIfNeeded: m.int("psm") ?? 0)
        let channel = AirChannel(id: id, phone: self)
        let (central, manager) = locked { () -> (CBCentral, CBPeripheralManager?) in
            channels[id] = channel
            let central = centrals[peer] ?? CBCentral(address: peer)
            centrals[peer] = central
            return (central, peripheralManager)
        }
        guard let manager else { return channel.close() }
        manager.queue.async {
            guard manager.psms.contains(psm) else { return channel.close() }
            let opened = CBL2CAPChannel(
                peer: central, input: AirInputStream(channel), output: AirOutputStream(channel), psm: psm)
            manager.delegate?.peripheralManager(manager, didOpen: opened, error: nil)
        }
    }

    private func delivered(_ m: AirMessage) {
        guard let id = m.int("link"), let link = locked({ links[id] }), link.delivered() else { return }
        locked { readyCount += 1 }
        switch link.role {
        case .central:
            guard let p = link.peripheral, let manager = p.manager else { return }
            manager.queue.async {
                guard p.link === link else { return }
                p.delegate?.peripheralIsReady(toSendWriteWithoutResponse: p)
            }
        case .peripheral:
            guard let manager = peripheral else { return }
            manager.queue.async { manager.delegate?.peripheralManagerIsReady(toUpdateSubscribers: manager) }
        }
    }

    private func disconnected(_ m: AirMessage) {
        guard let id = m.int("link"), let link = locked({ links.removeValue(forKey: id) }) else { return }
        let status = m.int("status") ?? 8
        switch link.role {
        case .central:
            guard let p = link.peripheral, let manager = p.manager else { return }
            manager.queue.async {
                guard p.link === link else { return }
                p.link = nil
                p.state = .disconnected
                let error: (any Error)? = status == 22
                    ? nil : CBError(status == 19 ? .peripheralDisconnected : .connectionTimeout)
                manager.delegate?.centralManager(manager, didDisconnectPeripheral: p, error: error)
            }
        case .peripheral:
            guard let central = link.central else { return }
            if central.link === link { central.link = nil }
            guard let manager = peripheral else { return }
            // The central's subscriptions end with its link.
            manager.queue.async {
                for service in manager.services {
                    for case let c as CBMutableCharacteristic in service.characteristics ?? [] {
                        guard let i = c.subscribedCentrals?.firstIndex(where: { $0 === central }) else { continue }
                        c.subscribedCentrals?.remove(at: i)
                        manager.delegate?.peripheralManager(manager, central: central, didUnsubscribeFrom: c)
                    }
                }
            }
        }
    }

    /// The connection to the air ended: Bluetooth is off for this phone, every link and channel gone.
    private func ended() {
        let (central, peripheral, open, handler) = locked {
            () -> (CBCentralManager?, CBPeripheralManager?, [AirChannel], (() -> Void)?) in
            on = false
            let open = Array(channels.values)
            channels = [:]
            links = [:]
            attempts = [:]
            opening = [:]
            return (centralManager, peripheralManager, open, endHandler)
        }
        for channel in open { channel.endedByPeer() }
        if let central {
            central.queue.async {
                for p in central.known.values {
                    p.link = nil
                    p.attempt = 0
                    p.state = .disconnected
                }
                central.isScanning = false
                central.state = .poweredOff
                central.delegate?.centralManagerDidUpdateState(central)
            }
        }
        if let peripheral {
            peripheral.queue.async {
                peripheral.isAdvertising = false
                for service in peripheral.services {
                    for case let c as CBMutableCharacteristic in service.characteristics ?? [] {
                        c.subscribedCentrals = []
                    }
                }
                peripheral.services = []
                peripheral.pendingAdds = []
                peripheral.psms = []
                peripheral.state = .poweredOff
                peripheral.delegate?.peripheralManagerDidUpdateState(peripheral)
            }
        }
        handler?()
    }
}

// MARK: - A test's air

/// A test's hold on the air server: a control connection, and the phones the test makes. Each scenario makes its own
/// (`init` resets the air: counters zero, everyone in range, `window`) and closes it at the end (`close`). Also a
/// driver of phone programs (`run`).
public final class SimulatedAir: @unchecked Sendable {
    /// The air server, `host:port`.
    public let address: String
    private let control: AirSocket
    private let lock = NSLock()
    private var phones: [SimulatedPhone] = []
    private var closed = false
    /// The last driver command's id.
    private var commands = 0

    /// What crossed the air since the last reset, as the air counts it, plus what this air's phones counted.
    public struct Traffic: Sendable, CustomStringConvertible {
        /// Writes without response delivered to a peripheral, and notifications delivered to a central.
        public var writes = 0, notifications = 0
        /// Writes and notifications dropped for exceeding the link's ATT MTU − 3.
        public var oversized = 0
        /// Writes and notifications sent into a full window (dropped).
        public var overrun = 0
        /// The air's count of senders that waited for `delivered` (`delivered_waits`).
        public var deliveredWaits = 0
        /// L2CAP channels opened, and bytes sent on them.
        public var channels = 0, streamBytes = 0
        /// The phones that connected, as "central>peripheral".
        public var connections: Set<String> = []
        /// The phones on the air now, and the links between them now.
        public var phones: [String] = []
        public var links = 0
        /// Counted by this air's phones, not the server: times a manager was told it may send again
        /// (`peripheralIsReady` / `peripheralManagerIsReady`).
        public var readyCalls = 0

        public var description: String {
            "writes \(writes), notifications \(notifications), oversized \(oversized), overrun \(overrun), "
                + "delivered waits \(deliveredWaits), ready calls \(readyCalls), channels \(channels), "
                + "stream bytes \(streamBytes), connections \(connections.sorted()), phones \(phones)"
        }
    }

    /// Connects to the air at `address` (default: `$SHOAL_AIR`) and resets it: counters zero, everyone hears
    /// everyone, no loss, and links made from now on carry `window` packets per direction (each link tells its ends).
    public init(address: String? = nil, window: Int = 8) throws {
        guard let address = address ?? ProcessInfo.processInfo.environment["SHOAL_AIR"], !address.isEmpty else {
            throw AirError("no air server: set SHOAL_AIR=host:port (bindings/swift/test.sh starts one)")
        }
        self.address = address
        control = try AirSocket(address: address, label: "control")
        control.send(["op": "hello", "role": "control"])
        guard let welcome = control.readMessage(), welcome.op == "welcome" else {
            control.shutDown()
            throw AirError("the air at \(address) did not welcome a control connection")
        }
        _ = try exchange(["op": "reset", "window": max(window, 1)])
    }

    deinit { close() }

    private func locked<T>(_ body: () -> T) -> T {
        lock.lock()
        defer { lock.unlock() }
        return body()
    }

    /// Sends `message` (if any), then `traffic`, and returns the air's answer to the latter: the air handles a
    /// connection's messages in order, so by then it has done what `message` asked.
    private func exchange(_ message: [String: Any]?) throws -> AirMessage {
        lock.lock()
        defer { lock.unlock() }
        if let message { control.send(message) }
        guard control.send(["op": "traffic"]) else { throw AirError("the air's control connection is closed") }
        var errors: [String] = []
        while let reply = control.readMessage() {
            switch reply.op {
            case "traffic":
                if !errors.isEmpty { throw AirError("the air refused \(message ?? [:]): \(errors)") }
                return reply
            case "error": errors.append(reply.string("what") ?? "\(reply.fields)")
            default: continue
            }
        }
        throw AirError("the air closed the control connection")
    }

    /// Makes what `make` creates (a radio, whose managers it creates at once) the iPhone called `name`: a new
    /// connection to the air, which the phone stays on until `close`.
    public func phone<T>(_ name: String, _ make: () throws -> T) throws -> T {
        try join(name).make(make)
    }

    /// The iPhone called `name` joins the air (until `close`); its radios are made with `SimulatedPhone.make`.
    public func join(_ name: String) throws -> SimulatedPhone {
        let phone = try SimulatedPhone.connect(air: address, name: name)
        locked { phones.append(phone) }
        return phone
    }

    /// Runs a driver command on phone `name` through the air (PROTOCOL.md, "Phone drivers") and returns the
    /// phone's answer: `command` and the answer are JSON objects, `{"cmd":"put",...}` and `{"op":"done",...}`.
    /// Blocks until the phone answers.
    public func run(_ name: String, _ command: String) throws -> String {
        guard let object = try? JSONSerialization.jsonObject(with: Data(command.utf8)),
              var message = object as? [String: Any]
        else { throw AirError("not a JSON object: \(command)") }
        lock.lock()
        defer { lock.unlock() }
        commands += 1
        let id = commands
        message["op"] = "do"
        message["phone"] = name
        message["id"] = id
        guard control.send(message) else { throw AirError("the air's control connection is closed") }
        while let reply = control.readMessage() {
            if reply.op == "done", reply.int("id") == id {
                let answer = try JSONSerialization.data(
                    withJSONObject: reply.fields, options: [.withoutEscapingSlashes])
                return String(decoding: answer, as: UTF8.self)
            }
            if reply.op == "error" { throw AirError("the air refused \(command) for \(name): \(reply.fields)") }
        }
        throw AirError("the air closed the control connection")
    }

    /// Only these pairs of phones hear each other (symmetric; `[]`: nobody hears anybody). Links and channels between
    /// phones that no longer hear each other drop; advertisements that come into range are seen.
    public func setRange(hears pairs: [(String, String)]) throws {
        _ = try exchange(["op": "range", "hears": pairs.map { [$0.0, $0.1] }])
    }

    /// Every phone hears every other (the default).
    public func hearEveryone() throws {
        _ = try exchange(["op": "range", "hears": NSNull()])
    }

    /// What crossed the air since the reset.
    public func traffic() throws -> Traffic {
        let m = try exchange(nil)
        var t = Traffic()
        t.writes = m.int("writes") ?? 0
        t.notifications = m.int("notifications") ?? 0
        t.oversized = m.int("oversized") ?? 0
        t.overrun = m.int("overrun") ?? 0
        t.deliveredWaits = m.int("delivered_waits") ?? 0
        t.channels = m.int("channels") ?? 0
        t.streamBytes = m.int("stream_bytes") ?? 0
        t.connections = Set(m["connections"] as? [String] ?? [])
        t.phones = m["phones"] as? [String] ?? []
        t.links = m.int("links") ?? 0
        t.readyCalls = locked { phones }.reduce(0) { $0 + $1.readyCalls }
        return t
    }

    /// The phones leave the air, then the control connection closes. Waits (a few seconds at most) until the air no
    /// longer lists the phones, so that the next scenario starts on an empty air.
    public func close() {
        let (gone, first) = locked { () -> ([SimulatedPhone], Bool) in
            defer { closed = true }
            return (phones, !closed)
        }
        guard first else { return }
        for phone in gone { phone.leave() }
        let names = Set(gone.map(\.name))
        let deadline = Date().addingTimeInterval(5)
        while !names.isEmpty, Date() < deadline,
              let left = try? exchange(nil), !names.isDisjoint(with: left["phones"] as? [String] ?? []) {
            Thread.sleep(forTimeInterval: 0.01)
        }
        control.shutDown()
    }
}
