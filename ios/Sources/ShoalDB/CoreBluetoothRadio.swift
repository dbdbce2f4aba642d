// Shoal's Bluetooth LE radio on Apple platforms: CoreBluetooth under the core's BLE protocol. The Rust core decides
// whom to dial, cuts frames into packets, runs credits, keepalives and encryption; this file only scans, advertises,
// connects and moves packets (see core/src/transport/ble/mod.rs for the protocol).
//
// Compiled only where CoreBluetooth exists. No Apple toolchain has compiled it here (none in CI); on Linux the Swift
// tests compile it unchanged against a stand-in with Apple's API over a simulated air (ios/Tests/CoreBluetooth).
//
// Threading: all CoreBluetooth callbacks, L2CAP stream events and all state live on one serial queue. The methods
// Rust calls hop onto it and return at once, and never throw.

#if canImport(CoreBluetooth)
import CoreBluetooth
import Foundation

/// Shoal's Bluetooth LE radio over CoreBluetooth. Pass it to `Store.setBluetooth(radio:)` before `startSync`; phones
/// in range then sync with each other with no network at all.
///
/// Each phone is both a central and a peripheral. As a peripheral it serves a GATT service (RX: the central writes
/// packets without response; TX: packets go to the central as notifications; PSM: the L2CAP PSM, u16
/// little-endian), listens on an unencrypted L2CAP channel (the core encrypts everything) and advertises the
/// service UUID. As a central it scans for that UUID and connects where the core asks: it uses the peer's L2CAP
/// channel when one is published and opens, else GATT.
///
/// Create it once, early (in `application(_:didFinishLaunchingWithOptions:)` when you use state restoration): it
/// creates its `CBCentralManager` and `CBPeripheralManager` at once, which may show the Bluetooth permission
/// prompt. The app's Info.plist needs `NSBluetoothAlwaysUsageDescription`; see ios/README.md for background use.
public final class CoreBluetoothRadio: BluetoothRadio {
    /// How the radio uses CoreBluetooth.
    public struct Options: Sendable {
        /// Opt in to CoreBluetooth state restoration: the base of the restore identifiers of the central manager
        /// (`"<id>.central"`) and the peripheral manager (`"<id>.peripheral"`). Must be the same on every launch.
        /// Only with the `bluetooth-central` / `bluetooth-peripheral` background modes. `nil`: no restoration.
        public var restoreIdentifier: String?
        /// A local name to advertise (foreground only, and only if it fits in the advertisement). `nil`: none.
        public var localName: String?
        /// Publish an L2CAP channel and use the peers' channels (faster than GATT). `false`: GATT only.
        public var useL2CAP: Bool
        /// Ask for every advertisement of a peer while scanning, not just the first. iOS ignores this in the
        /// background, where each peer is reported once per scan.
        public var allowDuplicates: Bool
        /// The shortest time between two sightings of the same peer reported to the core, in seconds.
        public var discoveryInterval: TimeInterval
        /// Called (on the radio's queue) with a line about each failure the core does not hear about: the GATT
        /// service or the L2CAP channel could not be published, advertising failed. `nil`: nothing is logged.
        public var log: (@Sendable (String) -> Void)?

        /// Options; the defaults suit most apps.
        public init(
            restoreIdentifier: String? = nil,
            localName: String? = nil,
            useL2CAP: Bool = true,
            allowDuplicates: Bool = true,
            discoveryInterval: TimeInterval = 2,
            log: (@Sendable (String) -> Void)? = nil
        ) {
            self.restoreIdentifier = restoreIdentifier
            self.localName = localName
            self.useL2CAP = useL2CAP
            self.allowDuplicates = allowDuplicates
            self.discoveryInterval = discoveryInterval
            self.log = log
        }
    }

    private let engine: RadioEngine

    /// A radio with `options`; creates its CoreBluetooth managers now.
    public init(options: Options = Options()) {
        engine = RadioEngine(options: options)
    }

    private func onQueue(_ work: @escaping @Sendable (RadioEngine) -> Void) {
        let engine = self.engine
        engine.queue.async { work(engine) }
    }

    /// Called by the core when sync starts: report to `events` from now on, and publish the GATT service.
    public func start(events: BluetoothEvents) {
        onQueue { $0.start(events) }
    }

    /// Called by the core: advertise the Shoal service UUID (as soon as Bluetooth is on). `serviceData` is ignored:
    /// iOS cannot advertise service data, so peers learn this phone's tags from its Hello packet.
    public func startAdvertising(serviceData: Data) {
        onQueue { $0.startAdvertising() }
    }

    /// Called by the core: scan for the Shoal service (as soon as Bluetooth is on), reporting sightings.
    public func startScanning() {
        onQueue { $0.startScanning() }
    }

    /// Called by the core: connect to the peripheral whose identifier is `address`, and report `connected` or
    /// `connectFailed`.
    public func connect(address: String) {
        onQueue { $0.connect(address) }
    }

    /// Called by the core: give up a connection attempt that has not completed (nothing is reported).
    public func cancelConnect(address: String) {
        onQueue { $0.cancelConnect(address) }
    }

    /// Called by the core: close a connection (best effort as a peripheral: iOS cannot disconnect a central).
    public func disconnect(connection: UInt64) {
        onQueue { $0.disconnect(connection) }
    }

    /// Called by the core: send one packet, queued until CoreBluetooth takes it; `sent` is reported then.
    public func send(connection: UInt64, packet: Data) {
        onQueue { $0.send(connection, packet) }
    }

    /// Called by the core when sync stops: stop advertising and scanning, close every connection, withdraw the GATT
    /// service and the L2CAP channel, and report nothing more.
    public func stop() {
        onQueue { $0.stop() }
    }
}

/// What a connection carries packets over when it uses L2CAP: the core's largest packet (CoreBluetooth exposes the
/// channel as a stream, so any write size works).
private let l2capMtu: UInt16 = 2048

/// One connection, or (central role, `id == 0`) a connection attempt.
private final class Link {
    /// The number the core knows it by; 0 until `connected` is reported.
    var id: UInt64 = 0
    /// The peer's identifier, as reported to the core.
    let address: String
    /// Central role: the peer.
    let peripheral: CBPeripheral?
    /// Peripheral role over GATT: the peer.
    let central: CBCentral?
    /// Over L2CAP (either role): the channel.
    var channel: CBL2CAPChannel?
    /// Central role: the peer's characteristics.
    var rx: CBCharacteristic?
    var tx: CBCharacteristic?
    /// GATT: the ATT MTU last reported.
    var attMtu = 0
    /// Packets not yet taken by CoreBluetooth, oldest first (at most a handful: the core waits for `sent`).
    var outbox: [Data] = []
    /// L2CAP: bytes of `outbox[0]` already written to the stream.
    var written = 0
    /// Central role: notifications that arrived before `connected` was reported.
    var early: [Data] = []
    /// Dropped: nothing more is reported about it.
    var dropped = false

    init(address: String, peripheral: CBPeripheral? = nil, central: CBCentral? = nil) {
        self.address = address
        self.peripheral = peripheral
        self.central = central
    }
}

/// The state and the delegates behind `CoreBluetoothRadio`. Touched only on `queue`.
private final class RadioEngine: NSObject, @unchecked Sendable {
    let queue = DispatchQueue(label: "dev.shoaldb.bluetooth")
    private let options: CoreBluetoothRadio.Options
    /// `options.discoveryInterval` in nanoseconds.
    private let discoveryNanos: UInt64
    private let serviceUUID, rxUUID, txUUID, psmUUID: CBUUID
    private var centralManager: CBCentralManager!
    private var peripheralManager: CBPeripheralManager!

    /// Where events go; nil while stopped.
    private var events: BluetoothEvents?
    private var wantScan = false
    private var wantAdvertise = false
    /// Connects waiting for the central manager to power on.
    private var pendingDials: Set<String> = []
    /// Peripherals seen while scanning, and when each was last reported (uptime nanoseconds).
    private var sightings: [UUID: (peripheral: CBPeripheral, reported: UInt64)] = [:]
    /// Peripherals handed back by state restoration (connections of an earlier process), to disconnect.
    private var restored: [CBPeripheral] = []

    /// Peripheral role: the TX characteristic of the published service (nil while not published).
    private var txCharacteristic: CBMutableCharacteristic?
    private var serviceAdded = false
    /// Peripheral role: the published L2CAP PSM, 0 if none.
    private var psm: CBL2CAPPSM = 0

    private var nextId: UInt64 = 1
    /// Reported connections by id.
    private var links: [UInt64: Link] = [:]
    /// Central role (attempts and connections) by peripheral identifier.
    private var dials: [UUID: Link] = [:]
    /// Peripheral role over GATT by central identifier.
    private var subscribers: [UUID: Link] = [:]
    /// L2CAP connections by input and output stream.
    private var streamLinks: [ObjectIdentifier: Link] = [:]

    init(options: CoreBluetoothRadio.Options) {
        self.options = options
        discoveryNanos = UInt64(min(max(options.discoveryInterval, 0), 3600) * 1e9)
        let uuids = bluetoothUuids()
        serviceUUID = CBUUID(string: uuids.service)
        rxUUID = CBUUID(string: uuids.rx)
        txUUID = CBUUID(string: uuids.tx)
        psmUUID = CBUUID(string: uuids.psm)
        super.init()
        var centralOptions: [String: Any] = [:]
        var peripheralOptions: [String: Any] = [:]
        if let id = options.restoreIdentifier {
            centralOptions[CBCentralManagerOptionRestoreIdentifierKey] = id + ".central"
            peripheralOptions[CBPeripheralManagerOptionRestoreIdentifierKey] = id + ".peripheral"
        }
        // On the queue, so that no delegate callback runs before both managers are stored.
        queue.sync {
            centralManager = CBCentralManager(delegate: self, queue: queue, options: centralOptions)
            peripheralManager = CBPeripheralManager(delegate: self, queue: queue, options: peripheralOptions)
        }
    }

    // MARK: Commands (from Rust, on the queue)

    func start(_ events: BluetoothEvents) {
        self.events = events
        publish()
    }

    func startAdvertising() {
        wantAdvertise = true
        advertise()
    }

    func startScanning() {
        wantScan = true
        scan()
    }

    func connect(_ address: String) {
        guard let events else { return }
        guard let uuid = UUID(uuidString: address) else { return events.connectFailed(address: address) }
        if let link = dials[uuid] {
            // Already dialling: that attempt's outcome answers this one too.
            if link.id != 0 { events.connectFailed(address: address) }
            return
        }
        switch centralManager.state {
        case .poweredOn: break
        case .unsupported, .unauthorized: return events.connectFailed(address: address)
        default:
            pendingDials.insert(address)  // replayed on power-on; the core cancels it if that takes too long
            return
        }
        guard let peripheral = sightings[uuid]?.peripheral
            ?? centralManager.retrievePeripherals(withIdentifiers: [uuid]).first
        else { return events.connectFailed(address: address) }
        let link = Link(address: address, peripheral: peripheral)
        dials[uuid] = link
        peripheral.delegate = self
        centralManager.connect(peripheral, options: nil)
    }

    func cancelConnect(_ address: String) {
        pendingDials.remove(address)
        guard let uuid = UUID(uuidString: address), let link = dials[uuid], link.id == 0 else { return }
        drop(link)
    }

    func disconnect(_ id: UInt64) {
        if let link = links[id] { drop(link) }
    }

    func send(_ id: UInt64, _ packet: Data) {
        guard let link = links[id] else { return }  // already gone: the core learns (or learnt) that separately
        link.outbox.append(packet)
        flush(link)
    }

    func stop() {
        events = nil
        wantScan = false
        wantAdvertise = false
        pendingDials.removeAll()
        if centralManager.state == .poweredOn { centralManager.stopScan() }
        for link in Array(links.values) + Array(dials.values) { drop(link) }
        if peripheralManager.state == .poweredOn {
            peripheralManager.stopAdvertising()
            peripheralManager.removeAllServices()
            if psm != 0 { peripheralManager.unpublishL2CAPChannel(psm) }
        }
        txCharacteristic = nil
        serviceAdded = false
        psm = 0
    }

    // MARK: Connections

    /// Reports `link` up with `channel`, then what arrived before that.
    private func ready(_ link: Link, _ channel: BluetoothChannel) {
        guard let events else { return drop(link) }
        link.id = nextId
        nextId += 1
        links[link.id] = link
        events.connected(connection: link.id, address: link.address, central: link.peripheral != nil, channel: channel)
        for packet in link.early { events.received(connection: link.id, packet: packet) }
        link.early = []
    }

    /// Forgets a connection or attempt and lets go of what it holds; reports nothing. Idempotent.
    private func drop(_ link: Link) {
        guard !link.dropped else { return }
        link.dropped = true
        link.outbox = []
        if link.id != 0 { links[link.id] = nil }
        if let channel = link.channel {
            link.channel = nil
            if let input = channel.inputStream {
                streamLinks[ObjectIdentifier(input)] = nil
                input.delegate = nil
                input.close()
                CFReadStreamSetDispatchQueue(input as CFReadStream, nil)
            }
            if let output = channel.outputStream {
                streamLinks[ObjectIdentifier(output)] = nil
                output.delegate = nil
                output.close()
                CFWriteStreamSetDispatchQueue(output as CFWriteStream, nil)
            }
        }
        if let peripheral = link.peripheral {
            if dials[peripheral.identifier] === link { dials[peripheral.identifier] = nil }
            if centralManager.state == .poweredOn {
                // Unsubscribing first tells the peer at once, even if iOS keeps the physical link for someone else.
                if let tx = link.tx, link.id != 0, peripheral.state == .connected, tx.isNotifying {
                    peripheral.setNotifyValue(false, for: tx)
                }
                centralManager.cancelPeripheralConnection(peripheral)
            }
        }
        if let central = link.central, subscribers[central.identifier] === link {
            subscribers[central.identifier] = nil
        }
    }

    /// A connection or attempt ended on its own: drop it and tell the core.
    private func lost(_ link: Link) {
        guard !link.dropped else { return }
        drop(link)
        guard let events else { return }
        if link.id != 0 {
            events.disconnected(connection: link.id)
        } else {
            events.connectFailed(address: link.address)
        }
    }

    /// Hands queued packets to CoreBluetooth while it takes them, reporting `sent` for each.
    private func flush(_ link: Link) {
        guard let events, link.id != 0, !link.dropped else { return }
        if let output = link.channel?.outputStream {
            while let packet = link.outbox.first, output.hasSpaceAvailable {
                let offset = link.written
                let n = packet.withUnsafeBytes { (raw: UnsafeRawBufferPointer) -> Int in
                    guard let base = raw.bindMemory(to: UInt8.self).baseAddress else { return 0 }
                    return output.write(base + offset, maxLength: raw.count - offset)
                }
                if n < 0 { return lost(link) }
                if n == 0 { return }
                link.written += n
                if link.written == packet.count {
                    link.outbox.removeFirst()
                    link.written = 0
                    events.sent(connection: link.id)
                }
            }
        } else if let peripheral = link.peripheral, let rx = link.rx {
            mtu(link, peripheral.maximumWriteValueLength(for: .withoutResponse) + 3)
            while let packet = link.outbox.first, peripheral.canSendWriteWithoutResponse {
                peripheral.writeValue(packet, for: rx, type: .withoutResponse)
                link.outbox.removeFirst()
                events.sent(connection: link.id)
            }
            // Otherwise peripheralIsReady(toSendWriteWithoutResponse:) calls again.
        } else if let central = link.central, let tx = txCharacteristic {
            mtu(link, central.maximumUpdateValueLength + 3)
            while let packet = link.outbox.first,
                  peripheralManager.updateValue(packet, for: tx, onSubscribedCentrals: [central]) {
                link.outbox.removeFirst()
                events.sent(connection: link.id)
            }
            // Otherwise peripheralManagerIsReady(toUpdateSubscribers:) calls again.
        }
    }

    /// Reports a GATT connection's ATT MTU when it grew.
    private func mtu(_ link: Link, _ attMtu: Int) {
        guard attMtu > link.attMtu else { return }
        link.attMtu = attMtu
        events?.mtuChanged(connection: link.id, mtu: UInt16(clamping: attMtu))
    }

    /// Serves `link` over `channel`: its streams deliver their events on the queue.
    private func attach(_ channel: CBL2CAPChannel, to link: Link) -> Bool {
        guard let input = channel.inputStream, let output = channel.outputStream else { return false }
        link.channel = channel
        streamLinks[ObjectIdentifier(input)] = link
        streamLinks[ObjectIdentifier(output)] = link
        input.delegate = self
        output.delegate = self
        CFReadStreamSetDispatchQueue(input as CFReadStream, queue)
        CFWriteStreamSetDispatchQueue(output as CFWriteStream, queue)
        input.open()
        output.open()
        return true
    }

    // MARK: Central role

    private func scan() {
        guard events != nil, wantScan, centralManager.state == .poweredOn else { return }
        centralManager.scanForPeripherals(
            withServices: [serviceUUID],
            options: [CBCentralManagerScanOptionAllowDuplicatesKey: options.allowDuplicates]
        )
    }

    /// Central role: subscribe to TX, the last step of a GATT connection.
    private func subscribe(_ link: Link) {
        guard let peripheral = link.peripheral, let tx = link.tx else { return lost(link) }
        peripheral.setNotifyValue(true, for: tx)
    }

    // MARK: Peripheral role

    /// Adds the GATT service and publishes the L2CAP channel, once started and powered on.
    private func publish() {
        guard events != nil, peripheralManager.state == .poweredOn, txCharacteristic == nil else { return }
        let rx = CBMutableCharacteristic(
            type: rxUUID, properties: [.writeWithoutResponse], value: nil, permissions: [.writeable])
        let tx = CBMutableCharacteristic(type: txUUID, properties: [.notify], value: nil, permissions: [.readable])
        let psm = CBMutableCharacteristic(type: psmUUID, properties: [.read], value: nil, permissions: [.readable])
        let service = CBMutableService(type: serviceUUID, primary: true)
        service.characteristics = [rx, tx, psm]
        txCharacteristic = tx
        serviceAdded = false
        peripheralManager.removeAllServices()  // a copy restored from an earlier process, if any
        peripheralManager.add(service)
        if options.useL2CAP { peripheralManager.publishL2CAPChannel(withEncryption: false) }
    }

    private func advertise() {
        guard events != nil, wantAdvertise, serviceAdded, peripheralManager.state == .poweredOn,
              !peripheralManager.isAdvertising
        else { return }
        var data: [String: Any] = [CBAdvertisementDataServiceUUIDsKey: [serviceUUID]]
        if let name = options.localName { data[CBAdvertisementDataLocalNameKey] = name }
        peripheralManager.startAdvertising(data)
    }
}

// MARK: - CBCentralManagerDelegate

extension RadioEngine: CBCentralManagerDelegate {
    func centralManagerDidUpdateState(_ central: CBCentralManager) {
        if central.state == .poweredOn {
            for peripheral in restored { central.cancelPeripheralConnection(peripheral) }
            restored = []
            scan()
            let waiting = pendingDials
            pendingDials = []
            for address in waiting { connect(address) }
            return
        }
        // Below poweredOn every CBPeripheral is invalid and every connection gone; no didDisconnect follows.
        sightings.removeAll()
        for link in Array(dials.values) { lost(link) }
        if central.state == .unsupported || central.state == .unauthorized {
            let waiting = pendingDials
            pendingDials = []
            for address in waiting { events?.connectFailed(address: address) }
        }
    }

    func centralManager(_ central: CBCentralManager, willRestoreState dict: [String: Any]) {
        // This process's core knows nothing of the earlier one's connections: close them on power-on.
        restored = dict[CBCentralManagerRestoredStatePeripheralsKey] as? [CBPeripheral] ?? []
    }

    func centralManager(
        _ central: CBCentralManager, didDiscover peripheral: CBPeripheral,
        advertisementData: [String: Any], rssi RSSI: NSNumber
    ) {
        guard let events else { return }
        let now = DispatchTime.now().uptimeNanoseconds
        let id = peripheral.identifier
        if let seen = sightings[id], now &- seen.reported < discoveryNanos { return }
        if sightings.count >= 256 {
            sightings = sightings.filter { now &- $0.value.reported < 120_000_000_000 }
            if sightings.count >= 256 { sightings.removeAll() }
        }
        sightings[id] = (peripheral: peripheral, reported: now)
        let serviceData = (advertisementData[CBAdvertisementDataServiceDataKey] as? [CBUUID: Data])?[serviceUUID]
        events.discovered(address: id.uuidString, serviceData: serviceData)
    }

    func centralManager(_ central: CBCentralManager, didConnect peripheral: CBPeripheral) {
        guard let link = dials[peripheral.identifier], link.id == 0 else { return }
        // iOS negotiates the largest ATT MTU by itself on connection.
        peripheral.discoverServices([serviceUUID])
    }

    func centralManager(_ central: CBCentralManager, didFailToConnect peripheral: CBPeripheral, error: Error?) {
        if let link = dials[peripheral.identifier] { lost(link) }
    }

    func centralManager(
        _ central: CBCentralManager, didDisconnectPeripheral peripheral: CBPeripheral, error: Error?
    ) {
        if let link = dials[peripheral.identifier] { lost(link) }
    }
}

// MARK: - CBPeripheralDelegate (central role: the peer's GATT server)

extension RadioEngine: CBPeripheralDelegate {
    func peripheral(_ peripheral: CBPeripheral, didDiscoverServices error: Error?) {
        guard let link = dials[peripheral.identifier], link.id == 0 else { return }
        guard error == nil, let service = peripheral.services?.first(where: { $0.uuid == serviceUUID }) else {
            return lost(link)
        }
        peripheral.discoverCharacteristics([rxUUID, txUUID, psmUUID], for: service)
    }

    func peripheral(_ peripheral: CBPeripheral, didDiscoverCharacteristicsFor service: CBService, error: Error?) {
        guard let link = dials[peripheral.identifier], link.id == 0, service.uuid == serviceUUID else { return }
        let characteristics = service.characteristics ?? []
        link.rx = characteristics.first { $0.uuid == rxUUID }
        link.tx = characteristics.first { $0.uuid == txUUID }
        guard error == nil, link.rx != nil, link.tx != nil else { return lost(link) }
        if options.useL2CAP, let psm = characteristics.first(where: { $0.uuid == psmUUID }) {
            peripheral.readValue(for: psm)  // then L2CAP if the peer has a channel, else GATT
        } else {
            subscribe(link)
        }
    }

    func peripheral(_ peripheral: CBPeripheral, didUpdateValueFor characteristic: CBCharacteristic, error: Error?) {
        guard let link = dials[peripheral.identifier] else { return }
        if characteristic.uuid == txUUID {
            guard error == nil, let packet = characteristic.value else { return }
            if link.id != 0 {
                events?.received(connection: link.id, packet: packet)
            } else if link.early.count < 64 {
                link.early.append(packet)
            }
        } else if characteristic.uuid == psmUUID, link.id == 0, link.channel == nil {
            let bytes = [UInt8](characteristic.value ?? Data())
            let psm = error == nil && bytes.count >= 2 ? CBL2CAPPSM(bytes[0]) | CBL2CAPPSM(bytes[1]) << 8 : 0
            if psm != 0 {
                peripheral.openL2CAPChannel(psm)
            } else {
                subscribe(link)
            }
        }
    }

    func peripheral(_ peripheral: CBPeripheral, didOpen channel: CBL2CAPChannel?, error: Error?) {
        guard let link = dials[peripheral.identifier], link.id == 0 else { return }
        guard error == nil, let channel, attach(channel, to: link) else { return subscribe(link) }  // GATT then
        ready(link, .l2cap(mtu: l2capMtu))
    }

    func peripheral(
        _ peripheral: CBPeripheral, didUpdateNotificationStateFor characteristic: CBCharacteristic, error: Error?
    ) {
        guard let link = dials[peripheral.identifier], link.id == 0, characteristic.uuid == txUUID else { return }
        guard error == nil, characteristic.isNotifying else { return lost(link) }
        link.attMtu = peripheral.maximumWriteValueLength(for: .withoutResponse) + 3
        ready(link, .gatt(attMtu: UInt16(clamping: link.attMtu)))
    }

    func peripheralIsReady(toSendWriteWithoutResponse peripheral: CBPeripheral) {
        if let link = dials[peripheral.identifier] { flush(link) }
    }

    func peripheral(_ peripheral: CBPeripheral, didModifyServices invalidatedServices: [CBService]) {
        guard invalidatedServices.contains(where: { $0.uuid == serviceUUID }),
              let link = dials[peripheral.identifier]
        else { return }
        lost(link)  // the peer withdrew its service (its sync stopped)
    }
}

// MARK: - CBPeripheralManagerDelegate (peripheral role: this phone's GATT server)

extension RadioEngine: CBPeripheralManagerDelegate {
    func peripheralManagerDidUpdateState(_ peripheral: CBPeripheralManager) {
        if peripheral.state == .poweredOn { return publish() }
        // Below poweredOn the service, the advertisement, the L2CAP listener and every connection are gone.
        txCharacteristic = nil
        serviceAdded = false
        psm = 0
        for link in Array(links.values) where link.peripheral == nil { lost(link) }
    }

    func peripheralManager(_ peripheral: CBPeripheralManager, willRestoreState dict: [String: Any]) {
        // Nothing to take over: publish() replaces the restored service when sync starts.
    }

    func peripheralManager(_ peripheral: CBPeripheralManager, didAdd service: CBService, error: Error?) {
        guard service.uuid == serviceUUID, txCharacteristic != nil else { return }
        if let error {
            options.log?("bluetooth: adding the GATT service failed: \(error)")
            return
        }
        serviceAdded = true
        advertise()
    }

    func peripheralManagerDidStartAdvertising(_ peripheral: CBPeripheralManager, error: Error?) {
        if let error { options.log?("bluetooth: advertising failed: \(error)") }
    }

    func peripheralManager(_ peripheral: CBPeripheralManager, didPublishL2CAPChannel PSM: CBL2CAPPSM, error: Error?) {
        if let error {
            options.log?("bluetooth: publishing the L2CAP channel failed: \(error)")
            return
        }
        if events == nil || (psm != 0 && psm != PSM) {
            peripheral.unpublishL2CAPChannel(PSM)  // stopped meanwhile, or a second listener
        } else {
            psm = PSM
        }
    }

    func peripheralManager(_ peripheral: CBPeripheralManager, didReceiveRead request: CBATTRequest) {
        guard request.characteristic.uuid == psmUUID else {
            return peripheral.respond(to: request, withResult: .requestNotSupported)
        }
        let value = Data([UInt8(psm & 0xff), UInt8(psm >> 8)])
        guard request.offset <= value.count else { return peripheral.respond(to: request, withResult: .invalidOffset) }
        request.value = value.subdata(in: request.offset..<value.count)
        peripheral.respond(to: request, withResult: .success)
    }

    func peripheralManager(_ peripheral: CBPeripheralManager, didReceiveWrite requests: [CBATTRequest]) {
        // Writes without response: nothing to answer.
        for request in requests where request.characteristic.uuid == rxUUID {
            guard let packet = request.value, let link = subscribers[request.central.identifier] else { continue }
            events?.received(connection: link.id, packet: packet)
        }
    }

    func peripheralManager(
        _ peripheral: CBPeripheralManager, central: CBCentral, didSubscribeTo characteristic: CBCharacteristic
    ) {
        guard events != nil, characteristic.uuid == txUUID, subscribers[central.identifier] == nil else { return }
        let link = Link(address: central.identifier.uuidString, central: central)
        link.attMtu = central.maximumUpdateValueLength + 3
        subscribers[central.identifier] = link
        ready(link, .gatt(attMtu: UInt16(clamping: link.attMtu)))
    }

    func peripheralManager(
        _ peripheral: CBPeripheralManager, central: CBCentral, didUnsubscribeFrom characteristic: CBCharacteristic
    ) {
        guard characteristic.uuid == txUUID, let link = subscribers[central.identifier] else { return }
        lost(link)
    }

    func peripheralManagerIsReady(toUpdateSubscribers peripheral: CBPeripheralManager) {
        for link in Array(subscribers.values) { flush(link) }
    }

    func peripheralManager(_ peripheral: CBPeripheralManager, didOpen channel: CBL2CAPChannel?, error: Error?) {
        guard events != nil, error == nil, let channel, let peer = channel.peer else { return }
        let link = Link(address: peer.identifier.uuidString)
        guard attach(channel, to: link) else { return }
        ready(link, .l2cap(mtu: l2capMtu))
    }
}

// MARK: - StreamDelegate (L2CAP, either role)

extension RadioEngine: StreamDelegate {
    func stream(_ aStream: Stream, handle eventCode: Stream.Event) {
        guard let link = streamLinks[ObjectIdentifier(aStream)], !link.dropped else { return }
        if eventCode.contains(.errorOccurred) || eventCode.contains(.endEncountered) { return lost(link) }
        if eventCode.contains(.hasBytesAvailable), let input = aStream as? InputStream {
            var buffer = [UInt8](repeating: 0, count: 4096)
            while input.hasBytesAvailable {
                let n = input.read(&buffer, maxLength: buffer.count)
                if n < 0 { return lost(link) }
                if n == 0 { break }
                // Any piece of the stream: the core cuts it back into packets.
                events?.received(connection: link.id, packet: Data(buffer[0..<n]))
            }
        }
        if eventCode.contains(.hasSpaceAvailable) { flush(link) }
    }
}
#endif
