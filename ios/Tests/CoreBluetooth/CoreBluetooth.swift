// CoreBluetooth for Linux, for tests only: the classes, delegates and constants Shoal's iOS radio
// (ios/Sources/ShoalDB/CoreBluetoothRadio.swift) uses, with Apple's names and Swift signatures, so that the shipped
// radio compiles here unchanged (its `#if canImport(CoreBluetooth)` is true once this module is on the import path)
// and runs over a simulated air (SimulatedAir.swift) in this process. Never shipped: on Apple platforms the radio
// imports Apple's CoreBluetooth.
//
// Where Linux differs from Apple's SDK: delegate methods Apple marks `@objc optional` are protocol requirements with
// default (empty) implementations here, as Linux Swift has no Objective-C runtime; CoreFoundation's stream
// scheduling (`CFReadStreamSetDispatchQueue`), which Linux Foundation does not export, is declared here too.
// Classes are not `Sendable`, as Apple's are not: the radio must keep them on its queue, as it must on iOS.

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
    /// A central's copy: the peripheral manager's service it stands for.
    var source: CBService?
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
    /// A central's copy: the peripheral manager's characteristic it stands for.
    var source: CBCharacteristic?
    open var value: Data? { storedValue }
    open internal(set) var isNotifying = false

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
    init(identifier: UUID) { self.identifier = identifier }
}

/// A central connected to this device's peripheral manager.
open class CBCentral: CBPeer {
    let mtu: Int
    init(identifier: UUID, mtu: Int) {
        self.mtu = mtu
        super.init(identifier: identifier)
    }

    /// The most bytes one notification to this central carries (its ATT MTU − 3).
    open var maximumUpdateValueLength: Int { mtu - 3 }
}

/// A peripheral seen by this device's central manager.
open class CBPeripheral: CBPeer {
    weak open var delegate: (any CBPeripheralDelegate)?
    open var name: String? { nil }
    open internal(set) var state: CBPeripheralState = .disconnected
    open internal(set) var services: [CBService]?
    /// The link on the air while connected (see SimulatedAir).
    var link: AirLink?
    weak var manager: CBCentralManager?
    let remote: AirDevice

    init(remote: AirDevice, manager: CBCentralManager) {
        self.remote = remote
        self.manager = manager
        super.init(identifier: remote.id)
    }

    open var canSendWriteWithoutResponse: Bool { link?.canSend(from: .central) ?? false }

    open func maximumWriteValueLength(for type: CBCharacteristicWriteType) -> Int {
        (link?.mtu ?? 23) - 3
    }

    open func discoverServices(_ serviceUUIDs: [CBUUID]?) {
        guard let link, state == .connected else { return }
        link.air.discoverServices(of: self, link: link, filter: serviceUUIDs)
    }

    open func discoverCharacteristics(_ characteristicUUIDs: [CBUUID]?, for service: CBService) {
        guard let link, state == .connected else { return }
        link.air.discoverCharacteristics(of: self, service: service, link: link, filter: characteristicUUIDs)
    }

    open func readValue(for characteristic: CBCharacteristic) {
        guard let link, state == .connected else { return }
        link.air.read(characteristic, of: self, link: link)
    }

    open func writeValue(_ data: Data, for characteristic: CBCharacteristic, type: CBCharacteristicWriteType) {
        guard let link, state == .connected else { return }
        link.air.write(data, to: characteristic, of: self, link: link)
    }

    open func setNotifyValue(_ enabled: Bool, for characteristic: CBCharacteristic) {
        guard let link, state == .connected else { return }
        link.air.setNotify(enabled, characteristic, of: self, link: link)
    }

    open func openL2CAPChannel(_ PSM: CBL2CAPPSM) {
        guard let link, state == .connected else { return }
        link.air.openChannel(PSM, from: self, link: link)
    }
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

    init(queue: DispatchQueue?) {
        self.queue = queue ?? .main
    }
}

open class CBCentralManager: CBManager {
    weak open var delegate: (any CBCentralManagerDelegate)?
    open internal(set) var isScanning = false
    /// This device on the air.
    let device: AirDevice
    /// The CBPeripheral this manager hands out for each remote device (one object per device, as on iOS).
    var known: [UUID: CBPeripheral] = [:]
    var scanFilter: [CBUUID]?

    public init(delegate: (any CBCentralManagerDelegate)?, queue: DispatchQueue?, options: [String: Any]? = nil) {
        self.delegate = delegate
        device = SimulatedAir.current.device(queue: queue)
        super.init(queue: queue)
        SimulatedAir.current.attach(central: self)
    }

    public convenience init(delegate: (any CBCentralManagerDelegate)?, queue: DispatchQueue?) {
        self.init(delegate: delegate, queue: queue, options: nil)
    }

    open func scanForPeripherals(withServices serviceUUIDs: [CBUUID]?, options: [String: Any]? = nil) {
        guard state == .poweredOn else { return }
        isScanning = true
        scanFilter = serviceUUIDs
        SimulatedAir.current.scan(self)
    }

    open func stopScan() {
        isScanning = false
    }

    open func retrievePeripherals(withIdentifiers identifiers: [UUID]) -> [CBPeripheral] {
        identifiers.compactMap { known[$0] }
    }

    open func connect(_ peripheral: CBPeripheral, options: [String: Any]? = nil) {
        guard state == .poweredOn, peripheral.manager === self, peripheral.state == .disconnected else { return }
        peripheral.state = .connecting
        SimulatedAir.current.connect(self, to: peripheral)
    }

    open func cancelPeripheralConnection(_ peripheral: CBPeripheral) {
        guard peripheral.manager === self else { return }
        SimulatedAir.current.cancel(self, peripheral)
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
    let device: AirDevice
    var services: [CBMutableService] = []
    var advertisement: [String: Any]?
    var psms: Set<CBL2CAPPSM> = []

    public init(delegate: (any CBPeripheralManagerDelegate)?, queue: DispatchQueue?, options: [String: Any]? = nil) {
        self.delegate = delegate
        device = SimulatedAir.current.device(queue: queue)
        super.init(queue: queue)
        SimulatedAir.current.attach(peripheral: self)
    }

    public convenience init(delegate: (any CBPeripheralManagerDelegate)?, queue: DispatchQueue?) {
        self.init(delegate: delegate, queue: queue, options: nil)
    }

    open func startAdvertising(_ advertisementData: [String: Any]?) {
        guard state == .poweredOn else { return }
        let air = SimulatedAir.current
        if isAdvertising {
            return queue.async { [self] in delegate?.peripheralManagerDidStartAdvertising(
                self, error: CBError(.alreadyAdvertising)) }
        }
        isAdvertising = true
        advertisement = advertisementData ?? [:]
        queue.async { [self] in delegate?.peripheralManagerDidStartAdvertising(self, error: nil) }
        air.advertised(self)
    }

    open func stopAdvertising() {
        isAdvertising = false
        advertisement = nil
    }

    open func add(_ service: CBMutableService) {
        guard state == .poweredOn else { return }
        services.append(service)
        queue.async { [self] in delegate?.peripheralManager(self, didAdd: service, error: nil) }
    }

    open func remove(_ service: CBMutableService) {
        services.removeAll { $0 === service }
        SimulatedAir.current.servicesChanged(self, removed: [service])
    }

    open func removeAllServices() {
        let removed = services
        services = []
        if !removed.isEmpty { SimulatedAir.current.servicesChanged(self, removed: removed) }
    }

    open func respond(to request: CBATTRequest, withResult result: CBATTError.Code) {
        request.answer?(result, request.value)
    }

    open func updateValue(
        _ value: Data, for characteristic: CBMutableCharacteristic, onSubscribedCentrals centrals: [CBCentral]?
    ) -> Bool {
        SimulatedAir.current.notify(value, characteristic, from: self, to: centrals)
    }

    open func publishL2CAPChannel(withEncryption encryptionRequired: Bool) {
        guard state == .poweredOn else { return }
        let psm = SimulatedAir.current.nextPSM()
        psms.insert(psm)
        queue.async { [self] in delegate?.peripheralManager(self, didPublishL2CAPChannel: psm, error: nil) }
    }

    open func unpublishL2CAPChannel(_ PSM: CBL2CAPPSM) {
        psms.remove(PSM)
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
