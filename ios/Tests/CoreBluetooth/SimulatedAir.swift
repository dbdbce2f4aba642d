// The simulated air under this test-only CoreBluetooth: every central and peripheral manager created in this process
// joins `SimulatedAir.current`. It models advertising and scanning, connections with a fixed ATT MTU, GATT service
// discovery, reads, writes without response (longer than the MTU allows: dropped, as a real link would refuse them),
// notifications to subscribed centrals, L2CAP channels as byte streams, and phones in or out of each other's range
// (`phone`, `setRange`). Every callback runs on the queue its manager was created with, and the air reads a manager's
// state only on that queue, as CoreBluetooth does. Flow control: a link carries a few writes without response and a
// few notifications at a time (`window`); a sender that finds it full waits for `peripheralIsReady` /
// `peripheralManagerIsReady`. Not modelled yet: loss, reordering, a phone vanishing without withdrawing its service,
// repeated sightings (`allowDuplicates`).

import Dispatch
import Foundation

/// One manager's presence on the air: what other devices know it by.
final class AirDevice: @unchecked Sendable {
    let id = UUID()
    /// The phone the manager belongs to: the managers of one radio share it (see `SimulatedAir.phone`).
    let phone: String
    init(phone: String) { self.phone = phone }
}

/// A connection from a central manager (through its `CBPeripheral`) to a peripheral manager.
final class AirLink: @unchecked Sendable {
    enum Side { case central, peripheral }

    unowned let air: SimulatedAir
    weak var centralManager: CBCentralManager?
    weak var peripheralManager: CBPeripheralManager?
    /// The central's handle on the peripheral (touched on the central manager's queue).
    let peripheral: CBPeripheral
    /// The peripheral's handle on the central (touched on the peripheral manager's queue).
    let central: CBCentral
    let mtu: Int
    /// The L2CAP pipes of this link, closed with it.
    var pipes: [AirPipe] = []
    let centralPhone: String
    let peripheralPhone: String

    init(air: SimulatedAir, central: CBCentralManager, peripheral: CBPeripheral, to manager: CBPeripheralManager) {
        self.air = air
        centralManager = central
        peripheralManager = manager
        self.peripheral = peripheral
        mtu = air.attMtu
        window = air.window
        self.central = CBCentral(identifier: central.device.id, mtu: air.attMtu)
        centralPhone = central.device.phone
        peripheralPhone = manager.device.phone
    }

    /// How many writes without response (central to peripheral) and notifications (peripheral to central) may be
    /// on their way at once; a sender that finds the window full is told when it opens again.
    let window: Int
    private let flow = NSLock()
    private var inFlight: [Side: Int] = [.central: 0, .peripheral: 0]
    private var waiting: Set<Side> = []

    /// Whether `side` may send now; if not, it is told when it may (`peripheralIsReady` /
    /// `peripheralManagerIsReady`), as CoreBluetooth does.
    func canSend(from side: Side) -> Bool {
        flow.lock()
        defer { flow.unlock() }
        if inFlight[side, default: 0] < window { return true }
        waiting.insert(side)
        return false
    }

    /// Takes a place in `side`'s window; false (and `side` waits) when it is full.
    func take(_ side: Side) -> Bool {
        flow.lock()
        defer { flow.unlock() }
        guard inFlight[side, default: 0] < window else {
            waiting.insert(side)
            return false
        }
        inFlight[side, default: 0] += 1
        return true
    }

    /// One of `side`'s packets arrived: whether `side` was waiting for room (and is now told).
    func arrived(_ side: Side) -> Bool {
        flow.lock()
        defer { flow.unlock() }
        inFlight[side, default: 0] -= 1
        return waiting.remove(side) != nil
    }
}

/// The air a process's managers share.
public final class SimulatedAir: @unchecked Sendable {
    private static let currentLock = NSLock()
    nonisolated(unsafe) private static var shared = SimulatedAir()

    /// The air managers join when created. Replace it to start a scenario on an empty air.
    public static var current: SimulatedAir {
        get { currentLock.lock(); defer { currentLock.unlock() }; return shared }
        set { currentLock.lock(); defer { currentLock.unlock() }; shared = newValue }
    }

    /// The ATT MTU every connection gets (iOS negotiates 185 with most phones).
    public let attMtu: Int

    private let lock = NSLock()
    private var centrals: [ObjectIdentifier: Weak<CBCentralManager>] = [:]
    private var peripherals: [UUID: Weak<CBPeripheralManager>] = [:]
    private var links: [ObjectIdentifier: AirLink] = [:]
    private var psm: CBL2CAPPSM = 0x80
    private var counts = Traffic()

    /// What crossed this air so far.
    public struct Traffic: Sendable {
        /// GATT writes without response delivered to a peripheral manager, and notifications delivered to centrals.
        public var writes = 0, notifications = 0
        /// Writes and notifications dropped for exceeding the link's ATT MTU − 3.
        public var oversized = 0
        /// Writes without response sent while the window was full (CoreBluetooth may drop them; the air does).
        public var overrun = 0
        /// Times a sender found the window full and was told later that it may send again.
        public var readyCalls = 0
        /// L2CAP channels opened, and bytes written into them.
        public var channels = 0, streamBytes = 0
        /// The phones that connected, as "central>peripheral".
        public var connections: Set<String> = []
    }

    public var traffic: Traffic { locked { counts } }

    func count(_ change: (inout Traffic) -> Void) { locked { change(&counts) } }

    /// How many writes without response, and how many notifications, a link carries at once.
    public let window: Int

    public init(attMtu: Int = 185, window: Int = 8) {
        self.attMtu = attMtu
        self.window = max(window, 1)
    }

    /// The phone whose radio is being made (`phone(_:_:)`), or "" for one named by its queue.
    private var building = ""
    private var rangeRule: @Sendable (String, String) -> Bool = { _, _ in true }

    /// A manager joining the air: it belongs to the phone being made, or else to the phone of its queue (the two
    /// managers of one radio share a queue).
    func device(queue: DispatchQueue?) -> AirDevice {
        locked {
            AirDevice(phone: building.isEmpty ? "queue \(queue.map { ObjectIdentifier($0).hashValue } ?? 0)" : building)
        }
    }

    /// Makes what `make` creates (a radio, whose managers it creates at once) the phone called `name`, which the
    /// range rule (`setRange`) knows it by.
    public func phone<T>(_ name: String, _ make: () throws -> T) rethrows -> T {
        locked { building = name }
        defer { locked { building = "" } }
        return try make()
    }

    /// Whether two phones hear each other, by name (the default: every phone hears every other). Links between phones
    /// that no longer hear each other drop (the central sees a disconnection with an error, the peripheral an
    /// unsubscription, L2CAP streams end); phones that hear each other again see each other's advertisements.
    public func setRange(_ hears: @escaping @Sendable (String, String) -> Bool) {
        let (lost, scanning, advertising) = locked {
            rangeRule = hears
            return (
                links.values.filter { !hears($0.centralPhone, $0.peripheralPhone) },
                centrals.values.compactMap(\.value),
                peripherals.values.compactMap(\.value)
            )
        }
        for link in lost { lose(link) }
        for central in scanning {
            for manager in advertising { sight(manager, by: central) }
        }
    }

    /// Whether the managers of `a` and `b` hear each other now.
    private func hear(_ a: AirDevice, _ b: AirDevice) -> Bool {
        locked { rangeRule(a.phone, b.phone) }
    }

    private func locked<T>(_ body: () -> T) -> T {
        lock.lock()
        defer { lock.unlock() }
        return body()
    }

    // MARK: Managers

    func attach(central: CBCentralManager) {
        locked { centrals[ObjectIdentifier(central)] = Weak(central) }
        central.queue.async {
            central.state = .poweredOn
            central.delegate?.centralManagerDidUpdateState(central)
        }
    }

    func attach(peripheral: CBPeripheralManager) {
        locked { peripherals[peripheral.device.id] = Weak(peripheral) }
        peripheral.queue.async {
            peripheral.state = .poweredOn
            peripheral.delegate?.peripheralManagerDidUpdateState(peripheral)
        }
    }

    func nextPSM() -> CBL2CAPPSM {
        locked {
            psm &+= 1
            return psm
        }
    }

    // MARK: Advertising and scanning

    /// Central `central` (on its queue) starts scanning: it sees every peripheral advertising now.
    func scan(_ central: CBCentralManager) {
        for manager in locked({ peripherals.values.compactMap(\.value) }) { sight(manager, by: central) }
    }

    /// Peripheral `manager` (on its queue) started advertising: every scanning central sees it.
    func advertised(_ manager: CBPeripheralManager) {
        for central in locked({ centrals.values.compactMap(\.value) }) { sight(manager, by: central) }
    }

    /// Reads `manager`'s advertisement on its queue, then reports it to `central` on its queue if it scans for it.
    private func sight(_ manager: CBPeripheralManager, by central: CBCentralManager) {
        // A phone does not receive its own advertisements.
        guard manager.device.phone != central.device.phone, hear(manager.device, central.device) else { return }
        manager.queue.async {
            guard manager.isAdvertising, let advertisement = manager.advertisement else { return }
            let advertised = advertisement[CBAdvertisementDataServiceUUIDsKey] as? [CBUUID] ?? []
            let device = manager.device
            central.queue.async {
                guard central.state == .poweredOn, central.isScanning else { return }
                if let filter = central.scanFilter, !filter.contains(where: advertised.contains) { return }
                let peripheral = central.known[device.id] ?? CBPeripheral(remote: device, manager: central)
                central.known[device.id] = peripheral
                central.delegate?.centralManager(
                    central, didDiscover: peripheral, advertisementData: advertisement, rssi: NSNumber(value: -50))
            }
        }
    }

    // MARK: Connections

    func connect(_ central: CBCentralManager, to peripheral: CBPeripheral) {
        guard let manager = locked({ peripherals[peripheral.remote.id]?.value }),
              hear(central.device, manager.device)
        else {
            return central.queue.async {
                peripheral.state = .disconnected
                central.delegate?.centralManager(
                    central, didFailToConnect: peripheral, error: CBError(.connectionFailed))
            }
        }
        let link = AirLink(air: self, central: central, peripheral: peripheral, to: manager)
        locked {
            links[ObjectIdentifier(link)] = link
            counts.connections.insert("\(link.centralPhone)>\(link.peripheralPhone)")
        }
        central.queue.async {
            guard peripheral.state == .connecting else { return self.forget(link) }
            peripheral.link = link
            peripheral.state = .connected
            central.delegate?.centralManager(central, didConnect: peripheral)
        }
    }

    /// The central ends a connection or an attempt (on its queue).
    func cancel(_ central: CBCentralManager, _ peripheral: CBPeripheral) {
        let link = peripheral.link
        let wasConnected = peripheral.state != .disconnected
        peripheral.link = nil
        peripheral.state = .disconnected
        if let link { disconnect(link) }
        if wasConnected {
            central.queue.async {
                central.delegate?.centralManager(central, didDisconnectPeripheral: peripheral, error: nil)
            }
        }
    }

    /// `link` dropped on its own (out of range): both sides learn it.
    private func lose(_ link: AirLink) {
        disconnect(link)
        guard let central = link.centralManager else { return }
        let peripheral = link.peripheral
        central.queue.async {
            guard peripheral.link === link else { return }
            peripheral.link = nil
            peripheral.state = .disconnected
            central.delegate?.centralManager(
                central, didDisconnectPeripheral: peripheral, error: CBError(.connectionTimeout))
        }
    }

    /// Ends `link` on the peripheral's side: its subscriptions go, and its channels end.
    private func disconnect(_ link: AirLink) {
        forget(link)
        for pipe in link.pipes { pipe.close() }
        guard let manager = link.peripheralManager else { return }
        manager.queue.async {
            for service in manager.services {
                for case let c as CBMutableCharacteristic in service.characteristics ?? [] {
                    guard let i = c.subscribedCentrals?.firstIndex(where: { $0 === link.central }) else { continue }
                    c.subscribedCentrals?.remove(at: i)
                    manager.delegate?.peripheralManager(manager, central: link.central, didUnsubscribeFrom: c)
                }
            }
        }
    }

    private func forget(_ link: AirLink) {
        locked { links[ObjectIdentifier(link)] = nil }
    }

    private func isUp(_ link: AirLink) -> Bool {
        locked { links[ObjectIdentifier(link)] != nil }
    }

    // MARK: GATT (central side calls on its queue; the air hops to the peripheral manager's queue and back)

    func discoverServices(of peripheral: CBPeripheral, link: AirLink, filter: [CBUUID]?) {
        guard let manager = link.peripheralManager, let central = link.centralManager else { return }
        manager.queue.async {
            let found = manager.services.filter { s in filter?.contains(s.uuid) ?? true }
                .map { (uuid: $0.uuid, primary: $0.isPrimary, source: $0) }
            central.queue.async {
                guard peripheral.link === link else { return }
                peripheral.services = found.map { f in
                    let copy = CBService(uuid: f.uuid, primary: f.primary, peripheral: peripheral)
                    copy.source = f.source
                    return copy
                }
                peripheral.delegate?.peripheral(peripheral, didDiscoverServices: nil)
            }
        }
    }

    func discoverCharacteristics(of peripheral: CBPeripheral, service: CBService, link: AirLink, filter: [CBUUID]?) {
        guard let manager = link.peripheralManager, let central = link.centralManager,
              let source = service.source
        else { return }
        manager.queue.async {
            let found = (source.characteristics ?? []).filter { c in filter?.contains(c.uuid) ?? true }
                .map { (uuid: $0.uuid, properties: $0.properties, value: $0.value, source: $0) }
            central.queue.async {
                guard peripheral.link === link else { return }
                service.discovered = found.map { f in
                    let copy = CBCharacteristic(uuid: f.uuid, properties: f.properties, value: f.value)
                    copy.service = service
                    copy.source = f.source
                    return copy
                }
                peripheral.delegate?.peripheral(peripheral, didDiscoverCharacteristicsFor: service, error: nil)
            }
        }
    }

    func read(_ characteristic: CBCharacteristic, of peripheral: CBPeripheral, link: AirLink) {
        guard let manager = link.peripheralManager, let central = link.centralManager,
              let source = characteristic.source
        else { return }
        let answer: (CBATTError.Code, Data?) -> Void = { code, value in
            central.queue.async {
                guard peripheral.link === link else { return }
                if code == .success { characteristic.storedValue = value }
                peripheral.delegate?.peripheral(
                    peripheral, didUpdateValueFor: characteristic, error: code == .success ? nil : CBATTError(code))
            }
        }
        manager.queue.async {
            guard self.isUp(link) else { return }
            // A characteristic published with a value is answered by the stack itself.
            if let value = source.value { return answer(.success, value) }
            let request = CBATTRequest(
                central: link.central, characteristic: source, offset: 0, value: nil, answer: answer)
            manager.delegate?.peripheralManager(manager, didReceiveRead: request)
        }
    }

    func write(_ data: Data, to characteristic: CBCharacteristic, of peripheral: CBPeripheral, link: AirLink) {
        guard let manager = link.peripheralManager, let source = characteristic.source else { return }
        guard data.count <= link.mtu - 3 else { return count { $0.oversized += 1 } }
        guard link.take(.central) else { return count { $0.overrun += 1 } }
        manager.queue.async {
            guard self.isUp(link) else { return }
            self.count { $0.writes += 1 }
            let request = CBATTRequest(central: link.central, characteristic: source, offset: 0, value: data, answer: nil)
            manager.delegate?.peripheralManager(manager, didReceiveWrite: [request])
            guard link.arrived(.central), let central = link.centralManager else { return }
            self.count { $0.readyCalls += 1 }
            central.queue.async {
                guard peripheral.link === link else { return }
                peripheral.delegate?.peripheralIsReady(toSendWriteWithoutResponse: peripheral)
            }
        }
    }

    func setNotify(_ enabled: Bool, _ characteristic: CBCharacteristic, of peripheral: CBPeripheral, link: AirLink) {
        guard let manager = link.peripheralManager, let central = link.centralManager,
              let source = characteristic.source as? CBMutableCharacteristic, source.properties.contains(.notify)
        else { return }
        manager.queue.async {
            guard self.isUp(link) else { return }
            let subscribed = source.subscribedCentrals?.contains { $0 === link.central } ?? false
            if enabled, !subscribed {
                source.subscribedCentrals = (source.subscribedCentrals ?? []) + [link.central]
                manager.delegate?.peripheralManager(manager, central: link.central, didSubscribeTo: source)
            } else if !enabled, subscribed {
                source.subscribedCentrals?.removeAll { $0 === link.central }
                manager.delegate?.peripheralManager(manager, central: link.central, didUnsubscribeFrom: source)
            }
            central.queue.async {
                guard peripheral.link === link else { return }
                characteristic.isNotifying = enabled
                peripheral.delegate?.peripheral(
                    peripheral, didUpdateNotificationStateFor: characteristic, error: nil)
            }
        }
    }

    /// A notification from `manager` (on its queue) to the subscribed centrals among `to` (`nil`: all of them).
    func notify(
        _ value: Data, _ source: CBMutableCharacteristic, from manager: CBPeripheralManager, to: [CBCentral]?
    ) -> Bool {
        let targets = locked { links.values.filter { $0.peripheralManager === manager } }.filter { link in
            source.subscribedCentrals?.contains(where: { $0 === link.central }) ?? false
                && to?.contains(where: { $0 === link.central }) ?? true
        }
        // A full queue takes nothing: the manager is told when it may try again.
        guard targets.allSatisfy({ $0.canSend(from: .peripheral) }) else { return false }
        for link in targets {
            guard let central = link.centralManager else { continue }
            guard value.count <= link.mtu - 3 else {
                count { $0.oversized += 1 }
                continue
            }
            guard link.take(.peripheral) else { continue }
            count { $0.notifications += 1 }
            let peripheral = link.peripheral
            central.queue.async {
                if peripheral.link === link {
                    for service in peripheral.services ?? [] {
                        for c in service.characteristics ?? [] where c.source === source {
                            c.storedValue = value
                            peripheral.delegate?.peripheral(peripheral, didUpdateValueFor: c, error: nil)
                        }
                    }
                }
                guard link.arrived(.peripheral) else { return }
                self.count { $0.readyCalls += 1 }
                manager.queue.async { manager.delegate?.peripheralManagerIsReady(toUpdateSubscribers: manager) }
            }
        }
        return true
    }

    /// `manager` (on its queue) withdrew `removed`: connected centrals learn their copies are invalid.
    func servicesChanged(_ manager: CBPeripheralManager, removed: [CBMutableService]) {
        let targets = locked { links.values.filter { $0.peripheralManager === manager } }
        for link in targets {
            guard let central = link.centralManager else { continue }
            let peripheral = link.peripheral
            central.queue.async {
                guard peripheral.link === link else { return }
                let gone = (peripheral.services ?? []).filter { s in removed.contains { $0 === s.source } }
                guard !gone.isEmpty else { return }
                peripheral.services = (peripheral.services ?? []).filter { s in !gone.contains { $0 === s } }
                peripheral.delegate?.peripheral(peripheral, didModifyServices: gone)
            }
        }
    }

    // MARK: L2CAP

    func openChannel(_ psm: CBL2CAPPSM, from peripheral: CBPeripheral, link: AirLink) {
        guard let manager = link.peripheralManager, let central = link.centralManager else { return }
        manager.queue.async {
            guard self.isUp(link), manager.psms.contains(psm) else {
                return central.queue.async {
                    peripheral.delegate?.peripheral(peripheral, didOpen: nil, error: CBError(.invalidParameters))
                }
            }
            self.count { $0.channels += 1 }
            let up = AirPipe(air: self), down = AirPipe(air: self)
            link.pipes += [up, down]
            let theirs = CBL2CAPChannel(
                peer: link.central, input: AirInputStream(up), output: AirOutputStream(down), psm: psm)
            let ours = CBL2CAPChannel(
                peer: peripheral, input: AirInputStream(down), output: AirOutputStream(up), psm: psm)
            manager.delegate?.peripheralManager(manager, didOpen: theirs, error: nil)
            central.queue.async {
                guard peripheral.link === link else { return }
                peripheral.delegate?.peripheral(peripheral, didOpen: ours, error: nil)
            }
        }
    }
}

private final class Weak<T: AnyObject> {
    weak var value: T?
    init(_ value: T) { self.value = value }
}

// MARK: - L2CAP streams

/// One direction of an L2CAP channel: bytes written by one stream, read by the other, at most `capacity` in flight.
final class AirPipe: @unchecked Sendable {
    let capacity = 64 * 1024
    private weak var air: SimulatedAir?
    private let lock = NSLock()
    private var bytes: [UInt8] = []
    private(set) var closed = false
    weak var reader: AirInputStream?
    weak var writer: AirOutputStream?

    init(air: SimulatedAir?) { self.air = air }

    func write(_ data: UnsafePointer<UInt8>, _ count: Int) -> Int {
        let n: Int = {
            lock.lock()
            defer { lock.unlock() }
            if closed { return -1 }
            let n = min(count, capacity - bytes.count)
            bytes.append(contentsOf: UnsafeBufferPointer(start: data, count: n))
            return n
        }()
        if n > 0 {
            air?.count { $0.streamBytes += n }
            reader?.signal(.hasBytesAvailable)
        }
        return n
    }

    func read(_ into: UnsafeMutablePointer<UInt8>, _ max: Int) -> Int {
        let n: Int = {
            lock.lock()
            defer { lock.unlock() }
            let n = min(max, bytes.count)
            for i in 0..<n { into[i] = bytes[i] }
            bytes.removeFirst(n)
            return n
        }()
        if n > 0 { writer?.signal(.hasSpaceAvailable) }
        return n
    }

    var available: Int { lock.lock(); defer { lock.unlock() }; return bytes.count }
    var space: Int { lock.lock(); defer { lock.unlock() }; return closed ? 0 : capacity - bytes.count }

    /// Either end closed, or the link went: the reader sees the end once it has read what is left.
    func close() {
        let first: Bool = {
            lock.lock()
            defer { lock.unlock() }
            defer { closed = true }
            return !closed
        }()
        if first {
            reader?.signal(.endEncountered)
            writer?.signal(.errorOccurred)
        }
    }
}

/// A stream an event is for, handed to its queue (streams are touched only there).
private final class WeakStream: @unchecked Sendable {
    weak var stream: Stream?
    init(_ stream: Stream) { self.stream = stream }
}

/// What both ends of a channel keep: their status, their delegate, and the queue their events go to.
private final class StreamEnd: @unchecked Sendable {
    private let lock = NSLock()
    private var queue: DispatchQueue?
    private var pending: [Stream.Event] = []
    var status: Stream.Status = .notOpen
    weak var delegate: StreamDelegate?

    /// Deliver `stream`'s events on `queue` from now on (`nil`: hold them), starting with those held.
    func deliver(on queue: DispatchQueue?, stream: Stream) {
        lock.lock()
        self.queue = queue
        let backlog = queue == nil ? [] : pending
        if queue != nil { pending = [] }
        lock.unlock()
        for event in backlog { post(event, stream: stream) }
    }

    /// Tell `stream`'s delegate of `event` on its queue, if the stream is open (or just opened).
    func signal(_ event: Stream.Event, stream: Stream) {
        if status == .open || event == .openCompleted { post(event, stream: stream) }
    }

    private func post(_ event: Stream.Event, stream: Stream) {
        lock.lock()
        let queue = self.queue
        if queue == nil { pending.append(event) }
        lock.unlock()
        let target = WeakStream(stream)
        queue?.async {
            guard let stream = target.stream, let delegate = stream.delegate else { return }
            delegate.stream(stream, handle: event)
        }
    }
}

final class AirInputStream: InputStream, @unchecked Sendable {
    private let pipe: AirPipe
    private let end = StreamEnd()

    init(_ pipe: AirPipe) {
        self.pipe = pipe
        super.init(data: Data())
        pipe.reader = self
    }

    override var delegate: StreamDelegate? {
        get { end.delegate }
        set { end.delegate = newValue }
    }

    override var streamStatus: Stream.Status { end.status }
    func deliver(on queue: DispatchQueue?) { end.deliver(on: queue, stream: self) }
    func signal(_ event: Stream.Event) { end.signal(event, stream: self) }

    override func open() {
        guard end.status == .notOpen else { return }
        end.status = .open
        signal(.openCompleted)
        if pipe.available > 0 { signal(.hasBytesAvailable) }
        if pipe.closed { signal(.endEncountered) }
    }

    override func close() {
        end.status = .closed
        pipe.close()
    }

    override var hasBytesAvailable: Bool { end.status == .open && pipe.available > 0 }

    override func read(_ buffer: UnsafeMutablePointer<UInt8>, maxLength len: Int) -> Int {
        guard end.status == .open else { return -1 }
        let n = pipe.read(buffer, len)
        if n == 0, pipe.closed { end.status = .atEnd }
        return n
    }
}

final class AirOutputStream: OutputStream, @unchecked Sendable {
    private let pipe: AirPipe
    private let end = StreamEnd()

    init(_ pipe: AirPipe) {
        self.pipe = pipe
        super.init(toMemory: ())
        pipe.writer = self
    }

    /// Foundation requires it; a stream made this way writes to a pipe nobody reads.
    required init(toMemory: ()) {
        pipe = AirPipe(air: nil)
        super.init(toMemory: ())
        pipe.writer = self
    }

    override var delegate: StreamDelegate? {
        get { end.delegate }
        set { end.delegate = newValue }
    }

    override var streamStatus: Stream.Status { end.status }
    func deliver(on queue: DispatchQueue?) { end.deliver(on: queue, stream: self) }
    func signal(_ event: Stream.Event) { end.signal(event, stream: self) }

    override func open() {
        guard end.status == .notOpen else { return }
        end.status = .open
        signal(.openCompleted)
        if pipe.space > 0 { signal(.hasSpaceAvailable) }
    }

    override func close() {
        end.status = .closed
        pipe.close()
    }

    override var hasSpaceAvailable: Bool { end.status == .open && pipe.space > 0 }

    override func write(_ buffer: UnsafePointer<UInt8>, maxLength len: Int) -> Int {
        guard end.status == .open else { return -1 }
        return pipe.write(buffer, len)
    }
}
