// The wire under the simulated air: one TCP connection to the air server (`shoal-air`, core/air), carrying the JSON
// lines of core/air/PROTOCOL.md. Test-only, like the rest of this module.

import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What went wrong talking to the air.
public struct AirError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// One message of the protocol: a JSON object with `"op"`.
struct AirMessage {
    let fields: [String: Any]

    init(_ fields: [String: Any]) { self.fields = fields }

    /// Parses one line; nil if it is not a JSON object.
    init?(line: Data) {
        guard let object = try? JSONSerialization.jsonObject(with: line), let fields = object as? [String: Any] else {
            return nil
        }
        self.fields = fields
    }

    var op: String { string("op") ?? "" }

    subscript(key: String) -> Any? { fields[key] }

    func string(_ key: String) -> String? { fields[key] as? String }

    func int(_ key: String) -> Int? {
        switch fields[key] {
        case let n as Int: return n
        case let n as NSNumber: return n.intValue
        case let d as Double: return Int(d)
        default: return nil
        }
    }

    func bool(_ key: String) -> Bool? {
        switch fields[key] {
        case let b as Bool: return b
        case let n as NSNumber: return n.boolValue
        default: return nil
        }
    }

    /// A byte string (standard base64).
    func bytes(_ key: String) -> Data? { string(key).flatMap { Data(base64Encoded: $0) } }
}

/// Whether to print every line to and from the air on stderr (`SHOAL_AIR_DEBUG=1`).
let airDebug = ProcessInfo.processInfo.environment["SHOAL_AIR_DEBUG"].map { !$0.isEmpty && $0 != "0" } ?? false

func airLog(_ text: String) {
    FileHandle.standardError.write(Data((text + "\n").utf8))
}

/// A TCP connection carrying JSON lines. `send` may be called from any thread; `readLine` from one reader at a time.
final class AirSocket: @unchecked Sendable {
    private let fd: Int32
    private let writeLock = NSLock()
    private var buffer: [UInt8] = []
    /// What the debug log calls this connection.
    var label: String

    /// Connects to `address`, `host:port` (an IPv6 host in brackets).
    init(address: String, label: String) throws {
        self.label = label
        guard let colon = address.lastIndex(of: ":") else { throw AirError("air address \(address): want host:port") }
        var host = String(address[..<colon])
        let port = String(address[address.index(after: colon)...])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        #if canImport(Glibc)
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        #else
        hints.ai_socktype = SOCK_STREAM
        #endif
        var found: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, port, &hints, &found) == 0, let first = found else {
            throw AirError("air address \(address): cannot resolve")
        }
        defer { freeaddrinfo(found) }
        var fd: Int32 = -1
        var candidate: UnsafeMutablePointer<addrinfo>? = first
        while let ai = candidate {
            fd = socket(ai.pointee.ai_family, ai.pointee.ai_socktype, ai.pointee.ai_protocol)
            if fd >= 0 {
                if connect(fd, ai.pointee.ai_addr, ai.pointee.ai_addrlen) == 0 { break }
                close(fd)
                fd = -1
            }
            candidate = ai.pointee.ai_next
        }
        guard fd >= 0 else { throw AirError("cannot connect to the air at \(address) (errno \(errno))") }
        var one: Int32 = 1
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        self.fd = fd
    }

    deinit { close(fd) }

    /// Sends one message; false if the connection is gone.
    @discardableResult
    func send(_ message: [String: Any]) -> Bool {
        guard var line = try? JSONSerialization.data(withJSONObject: message, options: [.withoutEscapingSlashes])
        else {
            airLog("air \(label): cannot encode \(message)")
            return false
        }
        if airDebug { airLog("air \(label) → \(String(decoding: line, as: UTF8.self))") }
        line.append(10)
        writeLock.lock()
        defer { writeLock.unlock() }
        return line.withUnsafeBytes { (raw: UnsafeRawBufferPointer) -> Bool in
            guard let base = raw.baseAddress else { return false }
            var offset = 0
            while offset < raw.count {
                #if canImport(Glibc)
                let n = Glibc.send(fd, base + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
                #else
                let n = Darwin.send(fd, base + offset, raw.count - offset, 0)
                #endif
                if n < 0, errno == EINTR { continue }
                if n <= 0 { return false }
                offset += n
            }
            return true
        }
    }

    /// The next line (without its newline); nil at the end of the connection.
    func readLine() -> Data? {
        var scanned = 0
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            if let newline = buffer[scanned...].firstIndex(of: 10) {
                let line = Data(buffer[..<newline])
                buffer.removeSubrange(...newline)
                if airDebug { airLog("air \(label) ← \(String(decoding: line, as: UTF8.self))") }
                return line
            }
            scanned = buffer.count
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0, errno == EINTR { continue }
            if n <= 0 { return nil }
            buffer.append(contentsOf: chunk[..<n])
        }
    }

    /// The next message that parses; nil at the end of the connection.
    func readMessage() -> AirMessage? {
        while let line = readLine() {
            if let message = AirMessage(line: line) { return message }
            airLog("air \(label): not a JSON object: \(String(decoding: line, as: UTF8.self))")
        }
        return nil
    }

    /// Ends the connection both ways (a blocked `readLine` returns nil).
    func shutDown() {
        _ = shutdown(fd, Int32(SHUT_RDWR))
    }
}
