// The device's private keys live in a vault the app implements (`KeyVault`, here in Swift), never in the database.

import Foundation
import ShoalDB

/// A vault in memory, as an app's own would be (the Keychain's `KeychainVault` is Apple-only). `failure`: every
/// call throws it, like a Keychain that cannot be read.
private final class MemoryVault: KeyVault, @unchecked Sendable {
    private let lock = NSLock()
    private var stored: [String: Data] = [:]
    private let failure: Error?
    private var createCalls = 0

    init(failing failure: Error? = nil) { self.failure = failure }

    var entries: [String: Data] { lock.lock(); defer { lock.unlock() }; return stored }
    var creates: Int { lock.lock(); defer { lock.unlock() }; return createCalls }

    func load(name: String) throws -> Data? {
        if let failure { throw failure }
        lock.lock(); defer { lock.unlock() }
        return stored[name]
    }

    func create(name: String, secret: Data) throws -> Bool {
        if let failure { throw failure }
        lock.lock(); defer { lock.unlock() }
        createCalls += 1
        if stored[name] != nil { return false }
        stored[name] = secret
        return true
    }
}

/// An app's own error type (not `CallbackError`): Shoal takes it up too.
private struct VaultDown: Error, CustomStringConvertible {
    var description: String { "the vault service is down" }
}

private func hex(_ data: Data) -> String { data.map { String(format: "%02x", $0) }.joined() }

func testKeysLiveInTheVault() async throws {
    let dir = try makeTempDir("vault")
    defer { removeTempDir(dir) }
    let path = "\(dir)/v.db"
    let vault = MemoryVault()
    let store = try await Store.open(config: StoreConfig(path: path, deviceName: "v", keyVault: vault))
    let request = try store.enrolmentRequest(name: "v")
    let entries = vault.entries
    try expectEqual(entries.keys.sorted(), ["noise-key", "signing-key"], "the vault's entries")
    guard let noise = entries["noise-key"], let signing = entries["signing-key"] else { throw fail("no keys") }
    try expectEqual(noise.count, 64, "noise-key: private then public key")
    try expectEqual(signing.count, 32, "signing-key")
    try expect(request.contains(hex(noise.suffix(32))), "the request shows the vault's public noise key: \(request)")
    _ = try await store.collection(name: "notes").upsert(json: #"{"_id": "n1"}"#)
    let deviceId = try store.deviceId()
    store.shutdown()

    // Reopened with the same vault (through the convenience `open`): the same keys, the same device.
    let again = try await Store.open(path: path, deviceName: "v", keyVault: vault)
    try expectEqual(try again.deviceId(), deviceId, "the same device id after a restart")
    try expectEqual(vault.entries, entries, "the vault's entries are unchanged")
    try expectEqual(vault.creates, 2, "nothing created on reopening")
    again.shutdown()

    var file = try Data(contentsOf: URL(fileURLWithPath: path))
    file.append((try? Data(contentsOf: URL(fileURLWithPath: "\(path)-wal"))) ?? Data())
    try expect(file.count > 0, "the database was read")
    for (name, secret) in [("noise-key", noise.prefix(32)), ("signing-key", signing)] {
        try expect(file.range(of: secret) == nil, "the database holds no byte string of the private \(name)")
    }
    try expect(!FileManager.default.fileExists(atPath: "\(path)-keys"), "no keys directory beside the database")
}

func testVaultFailureFailsTheOpen() async throws {
    let dir = try makeTempDir("vault-fails")
    defer { removeTempDir(dir) }
    func isStorage(containing reason: String) -> (Error) -> Bool {
        { error in
            if case ShoalError.Storage(let message) = error { return message.contains(reason) }
            return false
        }
    }
    let locked = MemoryVault(failing: CallbackError.Failed(reason: "the keychain is locked"))
    try expectError("a vault throwing CallbackError", isStorage(containing: "the keychain is locked")) {
        _ = try Store.openBlocking(config: StoreConfig(path: "\(dir)/new.db", deviceName: "new", keyVault: locked))
    }
    try await expectErrorAsync("a vault throwing its own error", isStorage(containing: "the vault service is down")) {
        _ = try await Store.open(path: "\(dir)/new.db", deviceName: "new", keyVault: MemoryVault(failing: VaultDown()))
    }

    // A store whose keys exist: a vault that cannot be read fails the open rather than make a second identity.
    let vault = MemoryVault()
    let store = try Store.openBlocking(path: "\(dir)/v.db", deviceName: "v", keyVault: vault)
    let deviceId = try store.deviceId()
    store.shutdown()
    try await expectErrorAsync("an unreadable vault for an existing store",
                               isStorage(containing: "the keychain is locked")) {
        _ = try await Store.open(path: "\(dir)/v.db", deviceName: "v", keyVault: locked)
    }
    let again = try await Store.open(path: "\(dir)/v.db", deviceName: "v", keyVault: vault)
    defer { again.shutdown() }
    try expectEqual(try again.deviceId(), deviceId, "the device is unchanged")
}
