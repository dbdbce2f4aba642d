// Local-network discovery on Apple platforms through the system's Bonjour, for where the core's own mDNS cannot
// run: iOS lets an app use raw multicast sockets (what mDNS needs) only with Apple's managed multicast entitlement,
// while Bonjour through the system — Network.framework's NWBrowser, DNS-SD registration with mDNSResponder —
// needs only the Local Network permission. The core keeps everything else: it checks each report like an mDNS
// answer (the app's tag, the device key, bounded sizes, never loopback) and dials over its own TCP sockets.
//
// Compiled only where Network.framework exists. It has never been compiled or run here (no Apple toolchain in CI):
// Linux CI only checks that the `#if` below leaves it out. The core side it plugs into is tested on Linux with a
// fake implementation of `LocalNetworkDiscovery` (core/tests/service_discovery.rs, bindings/tests/ffi.rs).
//
// Threading: every NWBrowser / NWConnection / DNSService callback and all state live on one serial queue; the
// methods Rust calls hop onto it and return at once.

#if canImport(Network) && canImport(dnssd) && canImport(os)
import Foundation
import Network
import dnssd
import os

/// Finds the other devices of the app on the local network with Bonjour, and advertises this one. Pass it to
/// `Store.setLocalNetworkDiscovery(discovery:)` before `startSync()` (with `SyncConfig.mdns` on, the default).
///
/// The app's Info.plist needs `NSLocalNetworkUsageDescription` (the text of the Local Network permission prompt)
/// and `NSBonjourServices` containing `_shoal._tcp`. Advertising registers the service with the system's
/// mDNSResponder (DNS-SD) for the port the core listens on; browsing uses `NWBrowser`; each instance found is
/// resolved to its addresses by opening (and at once closing) a TCP connection to it with `NWConnection`.
public final class BonjourDiscovery: LocalNetworkDiscovery, @unchecked Sendable {
    // @unchecked: every mutable property below is touched only on `queue`.
    private static let log = Logger(subsystem: "dev.shoaldb", category: "bonjour")
    private let queue = DispatchQueue(label: "dev.shoaldb.bonjour")
    private var events: LocalNetworkEvents?
    private var browser: NWBrowser?
    private var registration: DNSServiceRef?
    /// Instances being resolved, by name.
    private var resolving: [String: NWConnection] = [:]
    /// Instances reported found, by name: their TXT entries.
    private var found: [String: [String: String]] = [:]

    /// A discovery ready to be passed to the store.
    public init() {}

    /// Called by the store when sync starts.
    public func start(advertisement: ServiceAdvertisement?, events: LocalNetworkEvents) throws {
        queue.async { self.begin(advertisement, events) }
    }

    /// Called by the store when sync stops.
    public func stop() throws {
        queue.async { self.end() }
    }

    private func begin(_ advertisement: ServiceAdvertisement?, _ events: LocalNetworkEvents) {
        end()
        self.events = events
        if let ad = advertisement {
            register(ad)
        }
        let type = advertisement?.serviceType ?? "_shoal._tcp"
        let browser = NWBrowser(for: .bonjourWithTXTRecord(type: type, domain: nil), using: .tcp)
        browser.browseResultsChangedHandler = { [weak self] _, changes in
            self?.apply(changes)
        }
        browser.stateUpdateHandler = { state in
            if case .failed(let error) = state {
                Self.log.warning("Bonjour browsing failed: \(String(describing: error), privacy: .public)")
            }
        }
        browser.start(queue: queue)
        self.browser = browser
    }

    private func end() {
        browser?.cancel()
        browser = nil
        if let ref = registration {
            DNSServiceRefDeallocate(ref)
        }
        registration = nil
        for connection in resolving.values {
            connection.cancel()
        }
        resolving = [:]
        found = [:]
        events = nil
    }

    /// Registers this device's service with mDNSResponder for the core's own listening port.
    private func register(_ ad: ServiceAdvertisement) {
        let txt = NWTXTRecord(ad.txt).data
        var ref: DNSServiceRef?
        let status = txt.withUnsafeBytes { bytes in
            DNSServiceRegister(
                &ref, 0, 0, ad.name, ad.serviceType, nil, nil, ad.port.bigEndian,
                UInt16(bytes.count), bytes.baseAddress, nil, nil)
        }
        guard status == kDNSServiceErr_NoError, let ref else {
            Self.log.warning("Bonjour registration failed: DNS-SD error \(status, privacy: .public)")
            return
        }
        DNSServiceSetDispatchQueue(ref, queue)
        registration = ref
    }

    private func apply(_ changes: Set<NWBrowser.Result.Change>) {
        for change in changes {
            switch change {
            case .added(let result), .changed(old: _, new: let result, flags: _):
                resolve(result)
            case .removed(let result):
                guard case .service(let name, _, _, _) = result.endpoint else { continue }
                resolving.removeValue(forKey: name)?.cancel()
                if found.removeValue(forKey: name) != nil {
                    events?.lost(name: name)
                }
            default:
                continue
            }
        }
    }

    /// Opens a TCP connection to the instance to learn its address and port, reports them, and closes it.
    private func resolve(_ result: NWBrowser.Result) {
        guard case .service(let name, _, _, _) = result.endpoint else { return }
        var txt: [String: String] = [:]
        if case .bonjour(let record) = result.metadata {
            txt = record.dictionary
        }
        resolving.removeValue(forKey: name)?.cancel()
        let connection = NWConnection(to: result.endpoint, using: .tcp)
        connection.stateUpdateHandler = { [weak self, weak connection] state in
            guard let self, let connection else { return }
            switch state {
            case .ready:
                if case .hostPort(let host, let port)? = connection.currentPath?.remoteEndpoint,
                   let address = Self.address(host)
                {
                    self.found[name] = txt
                    self.events?.found(name: name, txt: txt, addresses: [address], port: port.rawValue)
                }
                connection.cancel()
                self.resolving.removeValue(forKey: name)
            case .failed, .cancelled:
                self.resolving.removeValue(forKey: name)
            default:
                break
            }
        }
        resolving[name] = connection
        connection.start(queue: queue)
    }

    /// An IP literal the core parses: `192.168.1.20`, or `fe80::1%4` with the interface's index.
    private static func address(_ host: NWEndpoint.Host) -> String? {
        switch host {
        case .ipv4(let v4):
            return "\(v4)".split(separator: "%").first.map(String.init)
        case .ipv6(let v6):
            let bare = "\(v6)".split(separator: "%").first.map(String.init) ?? "\(v6)"
            if let index = v6.interface?.index {
                return "\(bare)%\(index)"
            }
            return bare
        default:
            return nil
        }
    }
}
#endif
