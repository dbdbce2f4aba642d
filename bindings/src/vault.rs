//! Where the device's private keys live: a vault the platform implements (a foreign trait), never the database.

use crate::callbacks::CallbackError;
use std::sync::Arc;

/// Keeps this device's private keys (its Noise key and its signing key) outside the database, so that no backup
/// or copy of the database file carries them: a database restored on another phone starts with fresh keys and is
/// enrolled again. Pass one as `StoreConfig.keyVault`; without one the keys are files in the directory
/// `<database>-keys` beside the database, readable by the app only.
///
/// Use the platform's vault: on Android `AndroidKeystoreVault` (the keys encrypted by an Android Keystore key,
/// the ciphertext in the no-backup directory), on iOS `KeychainVault` (Keychain items,
/// `kSecAttrAccessibleAfterFirstUnlockThisDeviceOnly`). An app implementing its own keeps two rules:
/// - never in a backup, never synced (iCloud Keychain, cloud storage), never on another device;
/// - an entry, once created, never changes (`create` of an existing name changes nothing and returns `false`).
///
/// Entries are at most 1 KiB; their names are short ASCII words (`noise-key`, `signing-key`).
#[uniffi::export(foreign)]
pub trait KeyVault: Send + Sync {
    /// The secret stored under `name`, or `null`/`nil` when there is none. Throw when the vault cannot be read
    /// (the store then fails to open rather than make a second key).
    fn load(&self, name: String) -> Result<Option<Vec<u8>>, CallbackError>;
    /// Store `secret` under `name` unless an entry of that name exists, atomically and durably; `true` when it
    /// was stored, `false` (nothing changed) when the entry existed. Throw when the vault cannot be written.
    fn create(&self, name: String, secret: Vec<u8>) -> Result<bool, CallbackError>;
}

/// The platform's vault as the core's.
pub(crate) struct ForeignVault(pub(crate) Arc<dyn KeyVault>);

fn io(e: CallbackError) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl shoaldb::security::KeyVault for ForeignVault {
    fn load(&self, name: &str) -> std::io::Result<Option<Vec<u8>>> {
        self.0.load(name.to_string()).map_err(io)
    }

    fn create(&self, name: &str, secret: &[u8]) -> std::io::Result<bool> {
        self.0.create(name.to_string(), secret.to_vec()).map_err(io)
    }
}
