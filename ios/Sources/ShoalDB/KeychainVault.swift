// KeychainVault: the device's private keys as Keychain items (Apple platforms only; Linux builds leave it out).
//
// Written against Apple's documented Security framework API (SecItem*, iOS 15+ / macOS 12+); it has NOT been
// compiled by an Apple toolchain nor run on a device: Linux CI only checks that `#if canImport(Security)` leaves
// it out. Run it on a device before relying on it.

#if canImport(Security)
import Foundation
import Security

/// A ``KeyVault`` that keeps this device's private keys (its Noise key and its signing key) in the Keychain, so
/// that no backup or copy of the database carries them. Pass one when opening a store:
///
/// ```swift
/// let store = try await Store.open(path: dbPath, deviceName: "Ana's iPhone", keyVault: KeychainVault())
/// ```
///
/// Each entry is a generic-password item (`kSecClassGenericPassword`) whose `kSecAttrService` is ``service`` and
/// whose `kSecAttrAccount` is the entry's name (`noise-key`, `signing-key`), with
/// `kSecAttrAccessibleAfterFirstUnlockThisDeviceOnly` and `kSecAttrSynchronizable` false:
/// - "ThisDeviceOnly": the items never move to another device (a backup holds them only under a key of this
///   device, so they come back only when the backup is restored onto this same device), and "not
///   synchronizable" keeps them out of iCloud Keychain. A new phone restored from a backup therefore opens its
///   database with fresh keys: a new device id, which must be enrolled again (its certificate was for the old
///   keys). Its data comes back by syncing with the other devices.
/// - "AfterFirstUnlock": readable while the phone is locked once it has been unlocked after a restart, so
///   background sync (Bluetooth state restoration, background tasks) can open the store. Before that first unlock
///   the Keychain answers `errSecInteractionNotAllowed` and `Store.open` throws `ShoalError.Storage`: open the
///   store again once protected data is available (`UIApplication.protectedDataDidBecomeAvailableNotification`).
///
/// The items are in the data protection keychain (`kSecUseDataProtectionKeychain`), also on macOS, where that
/// needs a signed app with a keychain entitlement (`keychain-access-groups` or an application identifier); an
/// unsigned process gets `errSecMissingEntitlement` (-34018).
///
/// One vault holds one device identity: a store opened with it takes the keys it finds there. An app with several
/// stores on one device gives each its own ``service`` (e.g. `"dev.shoaldb.vault.<store name>"`). Keychain items
/// outlive the app's files (on iOS they may even survive deleting the app): an app that deletes a store for good,
/// and wants the next one to be a new device, calls ``deleteAll()`` once the store is shut down.
///
/// Thread-safe: the Keychain serialises the calls; `SecItemAdd` either adds an item or finds one already there,
/// so of two stores creating the same entry at once exactly one wins and both use its key.
public final class KeychainVault: KeyVault {
    /// The `kSecAttrService` of this vault's items: one per device identity (see the type's documentation).
    public let service: String
    /// The `kSecAttrAccessGroup` of this vault's items (`nil`: the app's default access group, its first
    /// `keychain-access-groups` entitlement or else its application identifier). Name a shared group only to
    /// let an app extension open the same store.
    public let accessGroup: String?

    /// A vault whose items have the service `service` (one per store, see the type's documentation) in the
    /// keychain access group `accessGroup` (`nil`: the app's default group).
    public init(service: String = "dev.shoaldb.vault", accessGroup: String? = nil) {
        self.service = service
        self.accessGroup = accessGroup
    }

    /// The secret stored under `name`, or `nil` when this vault has no such item.
    ///
    /// - Throws: `CallbackError.Failed` naming the `OSStatus` when the Keychain cannot be read (for example
    ///   `errSecInteractionNotAllowed` before the first unlock after a restart); the store then fails to open
    ///   rather than make a second key.
    public func load(name: String) throws -> Data? {
        var query = itemQuery(name)
        query[kSecReturnData as String] = true
        query[kSecMatchLimit as String] = kSecMatchLimitOne
        var result: CFTypeRef?
        let status = SecItemCopyMatching(query as CFDictionary, &result)
        switch status {
        case errSecSuccess:
            guard let data = result as? Data else {
                throw CallbackError.Failed(reason: "the Keychain item \(describe(name)) holds no data")
            }
            return data
        case errSecItemNotFound:
            return nil
        default:
            throw failure("SecItemCopyMatching", name, status)
        }
    }

    /// Store `secret` under `name` unless this vault has an item of that name: `true` when it was stored, `false`
    /// (the item is left as it was) when it existed.
    ///
    /// - Throws: `CallbackError.Failed` naming the `OSStatus` when the Keychain cannot be written.
    public func create(name: String, secret: Data) throws -> Bool {
        var attributes = itemQuery(name)
        attributes[kSecValueData as String] = secret
        attributes[kSecAttrAccessible as String] = kSecAttrAccessibleAfterFirstUnlockThisDeviceOnly
        let status = SecItemAdd(attributes as CFDictionary, nil)
        switch status {
        case errSecSuccess:
            return true
        case errSecDuplicateItem:
            return false
        default:
            throw failure("SecItemAdd", name, status)
        }
    }

    /// Delete every item of this vault (its ``service`` in its access group): the next store opened with it makes
    /// new keys, a new device identity. Call it only while no store using this vault is open, e.g. after deleting
    /// that store's database for good.
    ///
    /// - Throws: `CallbackError.Failed` naming the `OSStatus` when the Keychain refuses.
    public func deleteAll() throws {
        // The data protection keychain (see `baseQuery`) deletes every item that matches.
        let status = SecItemDelete(baseQuery() as CFDictionary)
        guard status == errSecSuccess || status == errSecItemNotFound else {
            throw failure("SecItemDelete", nil, status)
        }
    }

    /// The attributes every item of this vault has, without its account (entry name).
    private func baseQuery() -> [String: Any] {
        var query: [String: Any] = [
            kSecClass as String: kSecClassGenericPassword,
            kSecAttrService as String: service,
            kSecAttrSynchronizable as String: false,
            kSecUseDataProtectionKeychain as String: true,
        ]
        if let accessGroup {
            query[kSecAttrAccessGroup as String] = accessGroup
        }
        return query
    }

    /// The attributes that name entry `name`'s item (class, service, account, access group; never synchronizable).
    private func itemQuery(_ name: String) -> [String: Any] {
        var query = baseQuery()
        query[kSecAttrAccount as String] = name
        return query
    }

    private func describe(_ name: String) -> String {
        "\"\(name)\" (service \"\(service)\"\(accessGroup.map { ", access group \"\($0)\"" } ?? ""))"
    }

    /// The error for a failed Keychain call: the function, the item, the `OSStatus` and Apple's words for it.
    private func failure(_ call: String, _ name: String?, _ status: OSStatus) -> CallbackError {
        let words = SecCopyErrorMessageString(status, nil).map { ": \($0 as String)" } ?? ""
        var hint = ""
        if status == errSecInteractionNotAllowed {
            hint = " (the device has not been unlocked since it started; open the store once protected data is available)"
        } else if status == errSecMissingEntitlement {
            hint = " (the app needs a keychain entitlement: keychain-access-groups or an application identifier)"
        }
        let item = name.map { "the Keychain item \(describe($0))" } ?? "the Keychain items of service \"\(service)\""
        return CallbackError.Failed(reason: "\(call) of \(item) failed: OSStatus \(status)\(words)\(hint)")
    }
}
#endif
