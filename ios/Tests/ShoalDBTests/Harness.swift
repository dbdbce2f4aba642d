// A tiny test harness (XCTest is not in the Linux chroot's minimal toolchain use): assertions, polling, temp
// dirs, and a JSON value type for comparing documents exactly.

import Foundation
import ShoalDB

/// A failed assertion.
struct TestFailure: Error, CustomStringConvertible {
    let description: String
}

func fail(_ message: String, file: StaticString = #fileID, line: UInt = #line) -> TestFailure {
    TestFailure(description: "\(file):\(line): \(message)")
}

func expect(
    _ condition: @autoclosure () throws -> Bool,
    _ message: @autoclosure () -> String = "expectation failed",
    file: StaticString = #fileID,
    line: UInt = #line
) throws {
    if try !condition() { throw fail(message(), file: file, line: line) }
}

func expectEqual<T: Equatable>(
    _ actual: T,
    _ expected: T,
    _ message: String = "",
    file: StaticString = #fileID,
    line: UInt = #line
) throws {
    if actual != expected {
        throw fail("\(message.isEmpty ? "" : message + ": ")got \(actual), expected \(expected)", file: file, line: line)
    }
}

/// Runs `body`, which must throw an error `matches` accepts.
func expectError(
    _ what: String,
    file: StaticString = #fileID,
    line: UInt = #line,
    _ matches: (Error) -> Bool,
    _ body: () throws -> Void
) throws {
    do {
        try body()
    } catch {
        if matches(error) { return }
        throw fail("\(what): wrong error \(error)", file: file, line: line)
    }
    throw fail("\(what): no error thrown", file: file, line: line)
}

/// Like `expectError`, for async bodies.
func expectErrorAsync(
    _ what: String,
    file: StaticString = #fileID,
    line: UInt = #line,
    _ matches: (Error) -> Bool,
    _ body: () async throws -> Void
) async throws {
    do {
        try await body()
    } catch {
        if matches(error) { return }
        throw fail("\(what): wrong error \(error)", file: file, line: line)
    }
    throw fail("\(what): no error thrown", file: file, line: line)
}

func isInvalidArgument(_ e: Error) -> Bool { if case ShoalError.InvalidArgument = e { return true }; return false }
func isNotFound(_ e: Error) -> Bool { if case ShoalError.NotFound = e { return true }; return false }
func isClosed(_ e: Error) -> Bool { if case ShoalError.Closed = e { return true }; return false }
func isSyncError(_ e: Error) -> Bool { if case ShoalError.Sync = e { return true }; return false }
func isCancellation(_ e: Error) -> Bool { e is CancellationError }

func sleep(ms: UInt64) async {
    try? await Task.sleep(nanoseconds: ms * 1_000_000)
}

/// Polls `condition` every 50 ms until it holds, failing after `timeout` seconds (generous: shared machines are
/// slow). Returns nothing; the assertion is that it eventually holds.
func eventually(
    _ what: String,
    timeout: Double = 30,
    file: StaticString = #fileID,
    line: UInt = #line,
    _ condition: () async throws -> Bool
) async throws {
    let deadline = Date().addingTimeInterval(timeout)
    var lastError: Error?
    while Date() < deadline {
        do {
            if try await condition() { return }
        } catch {
            lastError = error
        }
        await sleep(ms: 50)
    }
    throw fail("timed out after \(Int(timeout)) s waiting for \(what)\(lastError.map { " (last error: \($0))" } ?? "")",
               file: file, line: line)
}

/// A fresh temporary directory, removed by `removeTempDir`.
func makeTempDir(_ name: String) throws -> String {
    let dir = FileManager.default.temporaryDirectory
        .appendingPathComponent("shoal-swift-\(name)-\(UUID().uuidString.prefix(8))")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    return dir.path
}

func removeTempDir(_ path: String) {
    try? FileManager.default.removeItem(atPath: path)
}

let testSecret = "swift test secret"

/// Opens `name`.db in `dir`. Sync, when started, listens on a loopback port only, without mDNS.
func openStore(_ dir: String, _ name: String, peers: [String] = []) async throws -> Store {
    try await Store.open(
        path: "\(dir)/\(name).db",
        deviceName: name,
        appSecret: testSecret,
        sync: SyncConfig(listen: "127.0.0.1:0", mdns: false, peers: peers)
    )
}

/// Two stores syncing over loopback: A listens, B dials A's address. The caller shuts them down.
func syncedPair(_ dir: String) async throws -> (Store, Store) {
    let a = try await openStore(dir, "A")
    try await a.startSync()
    guard let address = a.listenAddress() else { throw fail("A has no listen address") }
    try expect(address.hasPrefix("127.0.0.1:") && !address.hasSuffix(":0"), "listen address \(address)")
    let b = try await openStore(dir, "B", peers: [address])
    try await b.startSync()
    try expect(a.isSyncing() && b.isSyncing(), "both stores are syncing")
    return (a, b)
}

/// A value shared with callbacks and tasks, under a lock.
final class Locked<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value

    init(_ value: Value) { self.value = value }

    func get() -> Value { lock.lock(); defer { lock.unlock() }; return value }

    func mutate<R>(_ f: (inout Value) -> R) -> R { lock.lock(); defer { lock.unlock() }; return f(&value) }
}

/// A JSON value, to compare documents exactly (a bool is never a number, key order does not matter).
enum JSON: Equatable, Decodable, CustomStringConvertible, ExpressibleByStringLiteral, ExpressibleByIntegerLiteral,
    ExpressibleByFloatLiteral, ExpressibleByBooleanLiteral, ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral,
    ExpressibleByNilLiteral
{
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSON])
    case object([String: JSON])

    init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let n = try? c.decode(Double.self) { self = .number(n) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([JSON].self) { self = .array(a) }
        else { self = .object(try c.decode([String: JSON].self)) }
    }

    static func parse(_ text: String?) throws -> JSON {
        guard let text else { throw TestFailure(description: "no document") }
        return try JSONDecoder().decode(JSON.self, from: Data(text.utf8))
    }

    subscript(key: String) -> JSON? {
        if case .object(let o) = self { return o[key] }
        return nil
    }

    subscript(index: Int) -> JSON? {
        if case .array(let a) = self, a.indices.contains(index) { return a[index] }
        return nil
    }

    var description: String {
        switch self {
        case .null: return "null"
        case .bool(let b): return "\(b)"
        case .number(let n): return n == n.rounded() && abs(n) < 1e15 ? "\(Int64(n))" : "\(n)"
        case .string(let s): return "\"\(s)\""
        case .array(let a): return "[" + a.map(\.description).joined(separator: ",") + "]"
        case .object(let o):
            return "{" + o.keys.sorted().map { "\"\($0)\":\(o[$0]!.description)" }.joined(separator: ",") + "}"
        }
    }

    init(stringLiteral value: String) { self = .string(value) }
    init(integerLiteral value: Int) { self = .number(Double(value)) }
    init(floatLiteral value: Double) { self = .number(value) }
    init(booleanLiteral value: Bool) { self = .bool(value) }
    init(arrayLiteral elements: JSON...) { self = .array(elements) }
    init(dictionaryLiteral elements: (String, JSON)...) {
        self = .object(Dictionary(elements, uniquingKeysWith: { $1 }))
    }
    init(nilLiteral: ()) { self = .null }
}
