// Where a store's files live on an Apple device: out of iCloud and computer backups.

import Foundation

extension Shoal {
    /// The path of the database file `name` in the directory `Shoal` of the app's Application Support directory,
    /// created if missing and marked excluded from backups (`isExcludedFromBackup`: iCloud and computer backups skip
    /// it and everything in it — the database, its WAL, and the `<name>-keys` directory of the default key vault).
    ///
    /// A device's data comes back by sync, not from a backup: a store restored onto another phone would carry a
    /// stale copy of a device that is not that phone. The device's private keys belong in the Keychain
    /// (`KeychainVault`, items that stay on this device only), which no backup restores elsewhere either.
    ///
    /// - Throws: a Foundation error when the directory cannot be created or marked.
    public static func databasePath(name: String = "shoal.db") throws -> String {
        let support = try FileManager.default.url(
            for: .applicationSupportDirectory, in: .userDomainMask, appropriateFor: nil, create: true)
        let directory = support.appendingPathComponent("Shoal", isDirectory: true)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        #if canImport(Darwin)
        var values = URLResourceValues()
        values.isExcludedFromBackup = true
        var marked = directory
        try marked.setResourceValues(values)
        #endif
        return directory.appendingPathComponent(name).path
    }
}
