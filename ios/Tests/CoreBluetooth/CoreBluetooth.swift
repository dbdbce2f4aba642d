// CoreBluetooth for Linux, for tests only: the classes, delegates and constants Shoal's iOS radio
// (ios/Sources/ShoalDB/CoreBluetoothRadio.swift) uses, with Apple's names and Swift signatures, so that the shipped
// radio compiles here unchanged (its `#if canImport(CoreBluetooth)` is true once this module is on the import path)
// and runs over the simulated air: the air server `shoal-air` (core/air, wire protocol core/air/PROTOCOL.md), which
// Android phones and other iPhones share. The managers of one phone speak for it on its connection to the air
// (SimulatedAir.swift); this file is the API, SimulatedAir.swift what it does on the air. Never shipped: on Apple
// platforms the radio imports Apple's CoreBluetooth.
//
// Where Linux differs from Apple's SDK: delegate methods Apple marks `@objc optional` are protocol requirements with
// default (empty) implementations here, as Linux Swift has no Objective-C runtime; CoreFoundation's stream
// scheduling (`CFReadStreamSetDispatchQueue`), which Linux Foundation does not export, is declared here too.
// Classes are not `Sendable`, as Apple's are not: the radio must keep them on its queue, as it must on iOS. Every
// delegate callback runs on its manager's queue, and the stand-in touches a manager's objects only there.

import Dispatch
import Foundation

public typealias CBL2CAPPSM = UInt16

/// The state of a central or peripheral manager.
public enum CBManagerState: Int, Sendable {
    case unknown = 0, resetting, unsupported, unauthorized, poweredOff, poweredOn
}

/// The state of a connection to a peripheral, seen from the central.
public enum CBPeripheralState: Int, Sendable {
    case disconnected = 0, connecting, connected, disconnecting
}

/// How a central writes a characteristic.
public enum CBCharacteristicWriteType: Int, Sendable {
    case withResponse = 0, withoutResponse
}

public struct CBCharacteristicProperties: OptionSet, Sendable {
    public let rawValue: UInt
    public init(rawValue: UInt) { self.rawValue = rawValue }
    public static let broadcast = CBCharacteristicProperties(rawValue: 0x01)
    public static let read = CBCharacteristicProperties(rawValue: 0x02)
    public static let writeWithoutResponse = CBCharacteristicProperties(rawValue: 0x04)
    public static let write = CBCharacteristicProperties(rawValue: 0x08)
    public static let notify = CBCharacteristicProperties(rawValue: 0x10)
    public static let indicate = CBCharacteristicProperties(rawValue: 0x20)
    public static let authenticatedSignedWrites = CBCharacteristicProperties(rawValue: 0x40)
    public static let extendedProperties = CBCharacteristicProperties(rawValue: 0x80)
}

public struct CBAttributePermissions: OptionSet, Sendable {
    public let rawValue: UInt
    public init(rawValue: UInt) { self.rawValue = rawValue }
    public static let readable = CBAttributePermissions(rawValue: 0x01)
    public static let writeable = CBAttributePermissions(rawValue: 0x02)
    public static let readEncryptionRequired = CBAttributePermissions(rawValue: 0x04)
    public static let writeEncryptionRequired = CBAttributePermissions(rawValue: 0x08)
}

/// An ATT error, and the results a peripheral manager answers requests with.
public struct CBATTError: Error, Sendable {
    public enum Code: Int, Sendable {
        case success = 0, invalidHandle, readNotPermitted, writeNotPermitted, invalidPdu, insufficientAuthentication,
            requestNotSupported, invalidOffset, insufficientAuthorization, prepareQueueFull, attributeNotFound,
            attributeNotLong, insufficientEncryptionKeySize, invalidAttributeValueLength, unlikelyError,
            insufficientEncryption, unsupportedGroupType, insufficientResources
    }
    public let code: Code
    public init(_ code: Code) { self.code = code }
}

/// A CoreBluetooth error.
public struct CBError: Error, Sendable {
    public enum Code: Int, Sendable {
        case unknown = 0, invalidParameters, invalidHandle, notConnected, outOfSpace, operationCancelled,
            connectionTimeout, peripheralDisconnected, uuidNotAllowed, alreadyAdvertising, connectionFailed,
            connectionLimitReached, unknownDevice, operationNotSupported
    }
    public let code: Code
    public init(_ code: Code) { self.code = code }
}

public let CBAdvertisementDataLocalNameKey = "kCBAdvDataLocalName"
public let CBAdvertisementDataServiceUUIDsKey = "kCBAdvDataServiceUUIDs"
public let CBAdvertisementDataServiceDataKey = "kCBAdvDataServiceData"
public let CBCentralManagerScanOptionAllowDuplicatesKey = "kCBScanOptionAllowDuplicates"
public let CBCentralManagerOptionRestoreIdentifierKey = "kCBRestoreIdentifierKey"
public let CBPeripheralManagerOptionRestoreIdentifierKey = "kCBRestoreIdentifierKey"
public let CBCentralManagerRestoredStatePeripheralsKey = "kCBRestoredPeripherals"
public let CBCentralManagerRestoredStateScanServicesKey = "kCBRestoredScanServices"
public let CBCentralManagerRestoredStateScanOptionsKey = "kCBRestoredScanOptions"
public let CBPeripheralManagerRestoredStateServicesKey = "kCBRestoredServices"
public let CBPeripheralManagerRestoredStateAdvertisementDataKey = "kCBRestoredAdvertisement"

// MARK: - UUIDs and attributes

open class CBUUID: NSObject {
    /// The UUID in upper case: 4 hex digits for a 16-bit UUID, else the full form.
    public let uuidString: String

    public init(string theString: String) {
        uuidString = theString.uppercased()
    }

    public convenience init(nsuuid theUUID: UUID) {
        self.init(string: theUUID.uuidString)
    }

    open override func isEqual(_ object: Any?) -> Bool {
        (object as? CBUUID)?.uuidString == uuidString
    }

    open override var hash: Int { uuidString.hashValue }
    open override var description: String { uuidString }

    /// How the air writes it: lower case, as in PROTOCOL.md and as Android's `UUID.toString()` does.
    var airString: String { uuidString.lowercased() }
}

open class CBAttribute: NSObject {
    private let attributeUUID: CBUUID
    init(uuid: CBUUID) { attributeUUID = uuid }
    open var uuid: CBUUID { attributeUUID }
}

open class CBService: CBAttribute {
    weak open internal(set) var peripheral: CBPeripheral?
    open internal(set) var isPrimary: Bool
    var discovered: [CBCharacteristic]?
    open var characteristics: [CBCharacteristic]? { discovered }

    init(uuid: CBUUID, primary: Bool, peripheral: CBPeripheral?) {
        isPrimary = primary
        self.peripheral = peripheral
        super.init(uuid: uuid)
    }
}

open class CBMutableService: CBService {
    public init(type UUID: CBUUID, primary isPrimary: Bool) {
        super.init(uuid: UUID, primary: isPrimary, peripheral: nil)
    }

    open override var characteristics: [CBCharacteristic]? {
        get { discovered }
        set {
            discovered = newValue
            for c in newValue ?? [] { c.service = self }
        }
    }
}

open class CBCharacteristic: CBAttribute {
    weak open internal(set) var service: CBService?
    open internal(set) var properties: CBCharacteristicProperties
    var storedValue: Data?
    open var value: Data? { storedValue }
    open internal(set) var isNotifying = false
    /// A central's copy: the subscriptions asked for and not yet answered (`setNotifyValue`), oldest first.
    var notifyRequests: [Bool] = []

    init(uuid: CBUUID, properties: CBCharacteristicProperties, value: Data?) {
        self.properties = properties
        storedValue = value
        super.init(uuid: uuid)
    }
}

open class CBMutableCharacteristic: CBCharacteristic {
    open var permissions: CBAttributePermissions
    open internal(set) var subscribedCentrals: [CBCentral]? = []

    public init(
        type UUID: CBUUID, properties: CBCharacteristicProperties, value: Data?, permissions: CBAttributePermissions
    ) {
        self.permissions = permissions
        super.init(uuid: UUID, properties: properties, value: value)
    }

    open override var value: Data? {
        get { storedValue }
        set { storedValue = newValue }
    }
}

// MARK: - Peers

open class CBPeer: NSObject {
    public let identifier: UUID
    /// The phone's address on the air (`peer` in PROTOCOL.md); `identifier` is derived from it.
    let address: String

    init(address: String) {
        self.address = address
        identifier = airIdentifier(address)
    }
}

/// A central connected to this device's peripheral manager: one object per remote phone, as on iOS.
open class CBCentral: CBPeer {
    private let lock = NSLock()
    private weak var currentLink: AirLink?

    /// The link from this central now (set by the air's reader thread, read on the manager's queue).
    var link: AirLink? {
        get { lock.lock(); defer { lock.unlock() }; return currentLink }
        set { lock.lock(); defer { lock.unlock() }; currentLink = newValue }
    }

    /// The most bytes one notification to this central carries (its link's ATT MTU − 3).
    open var maximumUpdateValueLength: Int { (link?.mtu ?? 23) - 3 }
}

/// A peripheral seen by this device's central manager: one object per remote phone and manager, as on iOS.
open class CBPeripheral: CBPeer {
    weak open var delegate: (any CBPeripheralDelegate)?
    open var name: String? { advertisedName }
    open internal(set) var state: CBPeripheralState = .disconnected
    open internal(set) var services: [CBService]?
    weak var manager: CBCentralManager?
    /// The local name of its last advertisement that had one.
    var advertisedName: String?
    /// The link on the air while connected.
    var link: AirLink?
    /// The `ref` of the connection attempt while connecting.
    var attempt = 0
    /// The peripheral's GATT table as the last `discover` found it, and the filters of discoveries not yet answered.
    var table: [AirService] = []
    var serviceFilters: [[CBUUID]?] = []

    init(address: String, manager: CBCentralManager) {
        self.manager = manager
        super.init(address: address)
    }

    private var phone: SimulatedPhone? { manager?.phone }

    /// The characteristics discovered with `uuid`.
    func discoveredCharacteristics(_ uuid: CBUUID) -> [CBCharacteristic] {
        (services ?? []).flatMap { $0.characteristics ?? [] }.filter { $0.uuid == uuid }
    }

    /// Whether a write without response may go now; if not, `peripheralIsReady(toSendWriteWithoutResponse:)` follows
    /// when the link's window has room again.
    open var canSendWriteWithoutResponse: Bool { state == .connected && (link?.canSend() ?? false) }

    open func maximumWriteValueLength(for type: CBCharacteristicWriteType) -> Int {
        type == .withResponse ? 512 : (link?.mtu ?? 23) - 3
    }

    open func discoverServices(_ serviceUUIDs: [CBUUID]?) {
        guard let link, state == .connected, let manager else { return }
        serviceFilters.append(serviceUUIDs)
        phone?.send(from: manager, ["op": "discover", "link": link.id])
    }

    /// Answered from what `discoverServices` found (the air sends a peripheral's whole table at once).
    open func discoverCharacteristics(_ characteristicUUIDs: [CBUUID]?, for service: CBService) {
        guard let link, state == .connected, let manager, service.peripheral === self else { return }
        let found = table.first { $0.uuid == service.uuid }?.characteristics ?? []
        manager.queue.async { [self] in
            guard self.link === link else { return }
            service.discovered = found.filter { characteristicUUIDs?.contains($0.uuid) ?? true }.map { c in
                let copy = CBCharacteristic(uuid: c.uuid, properties: c.properties, value: nil)
                copy.service = service
                return copy
            }
            delegate?.peripheral(self, didDiscoverCharacteristicsFor: service, error: nil)
        }
    }

    open func readValue(for characteristic: CBCharacteristic) {
        guard let link, state == .connected, let manager else { return }
        phone?.request(from: manager, on: link, ["op": "read", "link": link.id, "char": characteristic.uuid.airString])
    }

    /// Writes without response only (the air has no writes with response; the radio uses none).
    open func writeValue(_ data: Data, for characteristic: CBCharacteristic, type: CBCharacteristicWriteType) {
        guard let link, state == .connected, let manager, type == .withoutResponse else { return }
        phone?.write(from: manager, data, to: characteristic, on: link)
    }

    /// Writes the characteristic's Client Characteristic Configuration descriptor (0x2902), as iOS does.
    open func setNotifyValue(_ enabled: Bool, for characteristic: CBCharacteristic) {
        guard let link, state == .connected, let manager else { return }
        let indicate = !characteristic.properties.contains(.notify) && characteristic.properties.contains(.indicate)
        let value = Data(enabled ? (indicate ? [0x02, 0x00] : [0x01, 0x00]) : [0x00, 0x00])
        characteristic.notifyRequests.append(enabled)
        phone?.request(from: manager, on: link, [
            "op": "write_descriptor", "link": link.id, "char": characteristic.uuid.airString, "descriptor": "2902",
            "value": value.base64EncodedString(),
        ])
    }

    open func openL2CAPChannel(_ PSM: CBL2CAPPSM) {
        guard link != nil, state == .connected, let manager else { return }
        phone?.openChannel(from: manager, to: self, psm: PSM)
    }
}

/// A stable identifier for the phone at air address `address`: the six bytes of a MAC-style address in the last
/// twelve hex digits (`5A1A0000-0000-4000-8000-020000000001` for 02:00:00:00:00:01), else a hash of the address.
func airIdentifier(_ address: String) -> UUID {
    var bytes: [UInt8] = [0x5A, 0x1A, 0, 0, 0, 0, 0x40, 0, 0x80, 0, 0, 0, 0, 0, 0, 0]
    let parts = address.split(separator: ":")
    if parts.count == 6, case let octets = parts.compactMap({ UInt8($0, radix: 16) }), octets.count == 6 {
        for (i, octet) in octets.enumerated() { bytes[10 + i] = octet }
    } else {
        // FNV-1a, 64 bits, over the address, into the last eight bytes.
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in address.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x100_0000_01b3
        }
        for i in 0..<8 { bytes[8 + i] = UInt8(truncatingIfNeeded: hash >> (8 * UInt64(i))) }
        bytes[8] = 0x80 | (bytes[8] & 0x3F)
    }
    return UUID(uuid: (bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7], bytes[8],
                       bytes[9], bytes[10], bytes[11], bytes[12], bytes[13], bytes[14], bytes[15]))
}

// MARK: - Delegates (Apple's optional methods have empty defaults)

public protocol CBCentralManagerDelegate: NSObjectProtocol {
    func centralManagerDidUpdateState(_ central: CBCentralManager)
    func centralManager(_ central: CBCentralManager, willRestoreState dict: [String: Any])
    func centralManager(
        _ central: CBCentralManager, didDiscover peripheral: CBPeripheral, advertisementData: [String: Any],
        rssi RSSI: NSNumber)
    func centralManager(_ central: CBCentralManager, didConnect peripheral: CBPeripheral)
    func centralManager(_ central: CBCentralManager, didFailToConnect peripheral: CBPeripheral, error: (any Error)?)
    func centralManager(
        _ central: CBCentralManager, didDisconnectPeripheral peripheral: CBPeripheral, error: (any Error)?)
}

extension CBCentralManagerDelegate {
    public func centralManager(_ central: CBCentralManager, willRestoreState dict: [String: Any]) {}
    public func centralManager(
        _ central: CBCentralManager, didDiscover peripheral: CBPeripheral, advertisementData: [String: Any],
        rssi RSSI: NSNumber
    ) {}
    public func centralManager(_ central: CBCentralManager, didConnect peripheral: CBPeripheral) {}
    public func centralManager(
        _ central: CBCentralManager, didFailToConnect peripheral: CBPeripheral, error: (any Error)?
    ) {}
    public func centralManager(
        _ central: CBCentralManager, didDisconnectPeripheral peripheral: CBPeripheral, error: (any Error)?
    ) {}
}

public protocol CBPeripheralDelegate: NSObjectProtocol {
    func peripheral(_ peripheral: CBPeripheral, didDiscoverServices error: (any Error)?)
    func peripheral(_ peripheral: CBPeripheral, didDiscoverCharacteristicsFor service: CBService, error: (any Error)?)
    func peripheral(
        _ peripheral: CBPeripheral, didUpdateValueFor characteristic: CBCharacteristic, error: (any Error)?)
    func peripheral(
        _ peripheral: CBPeripheral, didUpdateNotificationStateFor characteristic: CBCharacteristic,
        error: (any Error)?)
    func peripheralIsReady(toSendWriteWithoutResponse peripheral: CBPeripheral)
    func peripheral(_ peripheral: CBPeripheral, didModifyServices invalidatedServices: [CBService])
    func peripheral(_ peripheral: CBPeripheral, didOpen channel: CBL2CAPChannel?, error: (any Error)?)
}

extension CBPeripheralDelegate {
    public func peripheral(_ peripheral: CBPeripheral, didDiscoverServices error: (any Error)?) {}
    public func peripheral(
        _ peripheral: CBPeripheral, didDiscoverCharacteristicsFor service: CBService, error: (any Error)?
    ) {}
    public func peripheral(
        _ peripheral: CBPeripheral, didUpdateValueFor characteristic: CBCharacteristic, error: (any Error)?
    ) {}
    public func peripheral(
        _ peripheral: CBPeripheral, didUpdateNotificationStateFor characteristic: CBCharacteristic,
        error: (any Error)?
    ) {}
    public func peripheralIsReady(toSendWriteWithoutResponse peripheral: CBPeripheral) {}
    public func peripheral(_ peripheral: CBPeripheral, didModifyServices invalidatedServices: [CBService]) {}
    public func peripheral(_ peripheral: CBPeripheral, didOpen channel: CBL2CAPChannel?, error: (any Error)?) {}
}

public protocol CBPeripheralManagerDelegate: NSObjectProtocol {
    func peripheralManagerDidUpdateState(_ peripheral: CBPeripheralManager)
    func peripheralManager(_ peripheral: CBPeripheralManager, willRestoreState dict: [String: Any])
    func peripheralManager(_ peripheral: CBPeripheralManager, didAdd service: CBService, error: (any Error)?)
    func peripheralManagerDidStartAdvertising(_ peripheral: CBPeripheralManager, error: (any Error)?)
    func peripheralManager(
        _ peripheral: CBPeripheralManager, didPublishL2CAPChannel PSM: CBL2CAPPSM, error: (any Error)?)
    func peripheralManager(_ peripheral: CBPeripheralManager, didReceiveRead request: CBATTRequest)
    func peripheralManager(_ peripheral: CBPeripheralManager, didReceiveWrite requests: [CBATTRequest])
    func peripheralManager(
        _ peripheral: CBPeripheralManager, central: CBCentral, didSubscribeTo characteristic: CBCharacteristic)
    func peripheralManager(
        _ peripheral: CBPeripheralManager, central: CBCentral, didUnsubscribeFrom characteristic: CBCharacteristic)
    func peripheralManagerIsReady(toUpdateSubscribers peripheral: CBPeripheralManager)
    func peripheralManager(_ peripheral: CBPeripheralManager, didOpen channel: CBL2CAPChannel?, error: (any Error)?)
}

extension CBPeripheralManagerDelegate {
    public func peripheralManager(_ peripheral: CBPeripheralManager, willRestoreState dict: [String: Any]) {}
    public func peripheralManager(
        _ peripheral: CBPeripheralManager, didAdd service: CBService, error: (any Error)?
    ) {}
    public func peripheralManagerDidStartAdvertising(_ peripheral: CBPeripheralManager, error: (any Error)?) {}
    public func peripheralManager(
        _ peripheral: CBPeripheralManager, didPublishL2CAPChannel PSM: CBL2CAPPSM, error: (any Error)?
    ) {}
    public func peripheralManager(_ peripheral: CBPeripheralManager, didReceiveRead request: CBATTRequest) {}
    public func peripheralManager(_ peripheral: CBPeripheralManager, didReceiveWrite requests: [CBATTRequest]) {}
    public func peripheralManager(
        _ peripheral: CBPeripheralManager, central: CBCentral, didSubscribeTo characteristic: CBCharacteristic
    ) {}
    public func peripheralManager(
        _ peripheral: CBPeripheralManager, central: CBCentral, didUnsubscribeFrom characteristic: CBCharacteristic
    ) {}
    public func peripheralManagerIsReady(toUpdateSubscribers peripheral: CBPeripheralManager) {}
    public func peripheralManager(
        _ peripheral: CBPeripheralManager, didOpen channel: CBL2CAPChannel?, error: (any Error)?
    ) {}
}

// MARK: - Managers

open class CBManager: NSObject {
    open internal(set) var state: CBManagerState = .unknown
    /// Where delegate callbacks run (the main queue when none was given, as on Apple platforms).
    let queue: DispatchQueue
    /// The phone this manager belongs to: the one being made when it was created (`SimulatedAir.phone`,
    /// `SimulatedPhone.make`). A manager created outside any phone is on a device without Bluetooth (`.unsupported`).
    let phone: SimulatedPhone?

    init(queue: DispatchQueue?) {
        self.queue = queue ?? .main
        phone = SimulatedPhone.building
    }

    /// Reports `.unsupported` (no phone to be on).
    func unsupported(_ report: @escaping (CBManager) -> Void) {
        queue.async { [self] in
            state = .unsupported
            report(self)
        }
    }
}

open class CBCentralManager: CBManager {
    weak open var delegate: (any CBCentralManagerDelegate)?
    open internal(set) var isScanning = false
    /// The CBPeripheral this manager hands out for each remote phone, by air address (one object each, as on iOS).
    var known: [String: CBPeripheral] = [:]
    /// The running scan's services and options (kept for state restoration).
    var scan: (services: [CBUUID]?, options: [String: Any]?)?

    public init(delegate: (any CBCentralManagerDelegate)?, queue: DispatchQueue?, options: [String: Any]? = nil) {
        self.delegate = delegate
        super.init(queue: queue)
        if let phone {
            phone.attach(central: self, restoring: options?[CBCentralManagerOptionRestoreIdentifierKey] as? String)
        } else {
            unsupported { [weak self] _ in if let self { self.delegate?.centralManagerDidUpdateState(self) } }
        }
    }

    public convenience init(delegate: (any CBCentralManagerDelegate)?, queue: DispatchQueue?) {
        self.init(delegate: delegate, queue: queue, options: nil)
    }

    /// The peripheral object for the phone at `address` (on the queue).
    func peripheral(at address: String) -> CBPeripheral {
        if let known = known[address] { return known }
        let peripheral = CBPeripheral(address: address, manager: self)
        known[address] = peripheral
        return peripheral
    }

    open func scanForPeripherals(withServices serviceUUIDs: [CBUUID]?, options: [String: Any]? = nil) {
        guard state == .poweredOn, let phone else { return }
        isScanning = true
        scan = (serviceUUIDs, options)
        let duplicates = options?[CBCentralManagerScanOptionAllowDuplicatesKey] as? Bool ?? false
        phone.send(from: self, [
            "op": "scan", "services": serviceUUIDs.map { $0.map(\.airString) as Any } ?? NSNull(),
            "duplicates": duplicates,
        ])
    }

    open func stopScan() {
        guard isScanning else { return }
        isScanning = false
        scan = nil
        phone?.send(from: self, ["op": "stop_scan"])
    }

    open func retrievePeripherals(withIdentifiers identifiers: [UUID]) -> [CBPeripheral] {
        identifiers.compactMap { id in known.values.first { $0.identifier == id } }
    }

    /// Connects without a timeout, as iOS does: the attempt lasts until it succeeds or is cancelled.
    open func connect(_ peripheral: CBPeripheral, options: [String: Any]? = nil) {
        guard state == .poweredOn, let phone, peripheral.manager === self, peripheral.state == .disconnected
        else { return }
        peripheral.state = .connecting
        phone.connect(from: self, to: peripheral)
    }

    open func cancelPeripheralConnection(_ peripheral: CBPeripheral) {
        guard let phone, peripheral.manager === self else { return }
        phone.cancel(from: self, peripheral)
    }
}

/// A read or write of one of this device's characteristics by a central.
open class CBATTRequest: NSObject {
    open internal(set) var central: CBCentral
    open internal(set) var characteristic: CBCharacteristic
    open internal(set) var offset: Int
    open var value: Data?
    /// Where the answer to a read goes.
    let answer: ((CBATTError.Code, Data?) -> Void)?

    init(
        central: CBCentral, characteristic: CBCharacteristic, offset: Int, value: Data?,
        answer: ((CBATTError.Code, Data?) -> Void)?
    ) {
        self.central = central
        self.characteristic = characteristic
        self.offset = offset
        self.value = value
        self.answer = answer
    }
}

open class CBPeripheralManager: CBManager {
    weak open var delegate: (any CBPeripheralManagerDelegate)?
    open internal(set) var isAdvertising = false
    /// The services added, in the phone's GATT table on the air.
    var services: [CBMutableService] = []
    /// Services sent to the air and not yet confirmed (`service_added`), oldest first; `report`: call `didAdd`.
    var pendingAdds: [(service: CBMutableService, report: Bool)] = []
    var psms: Set<CBL2CAPPSM> = []
    /// What is being advertised (kept for state restoration).
    var advertisement: [String: Any]?

    public init(delegate: (any CBPeripheralManagerDelegate)?, queue: DispatchQueue?, options: [String: Any]? = nil) {
        self.delegate = delegate
        super.init(queue: queue)
        if let phone {
            phone.attach(
                peripheral: self, restoring: options?[CBPeripheralManagerOptionRestoreIdentifierKey] as? String)
        } else {
            unsupported { [weak self] _ in if let self { self.delegate?.peripheralManagerDidUpdateState(self) } }
        }
    }

    public convenience init(delegate: (any CBPeripheralManagerDelegate)?, queue: DispatchQueue?) {
        self.init(delegate: delegate, queue: queue, options: nil)
    }

    /// The characteristic with `uuid` in this manager's services.
    func characteristic(_ uuid: CBUUID) -> CBMutableCharacteristic? {
        for service in services {
            for case let c as CBMutableCharacteristic in service.characteristics ?? [] where c.uuid == uuid {
                return c
            }
        }
        return nil
    }

    /// Advertises the service UUIDs and the local name; never service data (iOS apps cannot advertise any).
    open func startAdvertising(_ advertisementData: [String: Any]?) {
        guard state == .poweredOn, let phone else { return }
        if isAdvertising {
            return queue.async { [self] in
                delegate?.peripheralManagerDidStartAdvertising(self, error: CBError(.alreadyAdvertising))
            }
        }
        isAdvertising = true
        advertisement = advertisementData ?? [:]
        let services = advertisementData?[CBAdvertisementDataServiceUUIDsKey] as? [CBUUID] ?? []
        let name = advertisementData?[CBAdvertisementDataLocalNameKey] as? String
        phone.send(from: self, [
            "op": "advertise", "services": services.map(\.airString), "service_data": [String: Any](),
            "name": name.map { $0 as Any } ?? NSNull(),
        ])
    }

    open func stopAdvertising() {
        guard isAdvertising else { return }
        isAdvertising = false
        advertisement = nil
        phone?.send(from: self, ["op": "stop_advertise"])
    }

    open func add(_ service: CBMutableService) {
        guard state == .poweredOn, let phone else { return }
        services.append(service)
        pendingAdds.append((service, true))
        phone.send(from: self, ["op": "add_service", "service": airService(service)])
    }

    /// The air can only remove every service: the others are added again (without `didAdd`).
    open func remove(_ service: CBMutableService) {
        guard let phone, services.contains(where: { $0 === service }) else { return }
        services.removeAll { $0 === service }
        phone.send(from: self, ["op": "remove_services"])
        for other in services {
            pendingAdds.append((other, false))
            phone.send(from: self, ["op": "add_service", "service": airService(other)])
        }
    }

    open func removeAllServices() {
        services = []
        phone?.send(from: self, ["op": "remove_services"])
    }

    open func respond(to request: CBATTRequest, withResult result: CBATTError.Code) {
        request.answer?(result, request.value)
    }

    /// Notifies the subscribed centrals among `centrals` (`nil`: all of them). False, sending nothing, when a link's
    /// window is full: `peripheralManagerIsReady(toUpdateSubscribers:)` follows when there is room again.
    open func updateValue(
        _ value: Data, for characteristic: CBMutableCharacteristic, onSubscribedCentrals centrals: [CBCentral]?
    ) -> Bool {
        guard let phone else { return false }
        let targets = (characteristic.subscribedCentrals ?? []).filter { subscriber in
            centrals?.contains { $0 === subscriber } ?? true
        }
        return phone.notify(from: self, value, characteristic, to: targets)
    }

    open func publishL2CAPChannel(withEncryption encryptionRequired: Bool) {
        guard state == .poweredOn, let phone else { return }
        phone.send(from: self, ["op": "l2cap_listen"])
    }

    open func unpublishL2CAPChannel(_ PSM: CBL2CAPPSM) {
        guard psms.remove(PSM) != nil else { return }
        phone?.unlisten(from: self, Int(PSM))
    }

    private func airService(_ service: CBMutableService) -> [String: Any] {
        let chars: [[String: Any]] = (service.characteristics ?? []).map { c in
            var props: [String] = []
            if c.properties.contains(.read) { props.append("read") }
            if c.properties.contains(.write) { props.append("write") }
            if c.properties.contains(.writeWithoutResponse) { props.append("write_no_response") }
            if c.properties.contains(.notify) { props.append("notify") }
            if c.properties.contains(.indicate) { props.append("indicate") }
            return ["uuid": c.uuid.airString, "props": props]
        }
        return ["uuid": service.uuid.airString, "chars": chars]
    }
}

// MARK: - L2CAP

open class CBL2CAPChannel: NSObject {
    public let peer: CBPeer!
    public let inputStream: InputStream!
    public let outputStream: OutputStream!
    public let psm: CBL2CAPPSM

    init(peer: CBPeer, input: InputStream, output: OutputStream, psm: CBL2CAPPSM) {
        self.peer = peer
        inputStream = input
        outputStream = output
        self.psm = psm
    }
}

/// CoreFoundation's names for the streams, so `stream as CFReadStream` reads as it does on Apple platforms.
public typealias CFReadStream = InputStream
public typealias CFWriteStream = OutputStream

/// Deliver `stream`'s events to its delegate on `queue` (`nil`: stop delivering).
public func CFReadStreamSetDispatchQueue(_ stream: CFReadStream!, _ queue: DispatchQueue!) {
    (stream as? AirInputStream)?.deliver(on: queue)
}

/// Deliver `stream`'s events to its delegate on `queue` (`nil`: stop delivering).
public func CFWriteStreamSetDispatchQueue(_ stream: CFWriteStream!, _ queue: DispatchQueue!) {
    (stream as? AirOutputStream)?.deliver(on: queue)
}
