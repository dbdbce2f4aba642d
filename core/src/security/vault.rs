//! Where a device keeps its private keys: a [`KeyVault`], never the database. A backup or a copy of the database
//! file (Android Auto Backup, an iCloud backup, a file copied off a phone) therefore carries no key that could let
//! another device pass for this one; a database restored anywhere else starts with fresh keys and is enrolled again.
//!
//! The store keeps two secrets in its vault, made on first use: the device's Noise static key ([`NOISE_KEY`],
//! 64 bytes: private then public) and its Ed25519 signing key ([`SIGNING_KEY`], 32 bytes). The platforms bring their
//! own vault: on Android the keys are encrypted by a key of the Android Keystore and kept in the app's no-backup
//! directory (`AndroidKeystoreVault`), on iOS they are Keychain items readable `AfterFirstUnlockThisDeviceOnly`
//! (`KeychainVault`). Elsewhere a [`FileVault`] keeps them in a directory of their own, readable by the owner only.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The vault entry holding the device's Noise static key pair ([`Identity::to_bytes`](super::Identity::to_bytes)).
pub const NOISE_KEY: &str = "noise-key";

/// The vault entry holding the device's Ed25519 signing key ([`SigningKey::to_bytes`](super::SigningKey::to_bytes)).
pub const SIGNING_KEY: &str = "signing-key";

/// The largest secret a vault entry holds, in bytes: what a vault returns is checked against it before use.
pub const MAX_SECRET_BYTES: usize = 1024;

/// Keeps a device's private keys outside its database (see the [module docs](self)). Entries are small byte
/// strings under fixed names ([`NOISE_KEY`], [`SIGNING_KEY`]); an entry, once created, never changes, so that two
/// processes or threads opening the same store agree on one key.
pub trait KeyVault: Send + Sync {
    /// The secret stored under `name`, or `None` when there is none.
    ///
    /// # Errors
    /// When the vault cannot be read (the store then fails to open rather than make a second key).
    fn load(&self, name: &str) -> io::Result<Option<Vec<u8>>>;

    /// Stores `secret` under `name` unless an entry of that name exists, atomically (of two callers at once, one
    /// creates it); durably before it returns `true`. Returns `false`, changing nothing, when the entry existed.
    ///
    /// # Errors
    /// When the vault cannot be written.
    fn create(&self, name: &str, secret: &[u8]) -> io::Result<bool>;
}

/// [`KeyVault::load`], refusing a secret larger than [`MAX_SECRET_BYTES`] (a vault is app or platform code).
pub fn load_bounded(vault: &dyn KeyVault, name: &str) -> io::Result<Option<Vec<u8>>> {
    match vault.load(name)? {
        Some(secret) if secret.len() > MAX_SECRET_BYTES => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the key vault's {name} is {} bytes, more than {MAX_SECRET_BYTES}", secret.len()),
        )),
        other => Ok(other),
    }
}

/// A [`KeyVault`] in a directory: one file per entry, readable and writable by the owner only (mode 0600 in a
/// 0700 directory on Unix), written to a temporary file, synced and linked into place so that a crash leaves either
/// no entry or a whole one. The directory must be one the platform leaves out of backups (the store's default,
/// `<database>-keys`, suits desktops and servers, where backups are the operator's; a phone app uses its platform's
/// vault or, on Android, a directory under `Context.getNoBackupFilesDir()`).
#[derive(Clone)]
pub struct FileVault {
    dir: PathBuf,
}

impl FileVault {
    /// A vault in `dir` (created with its parents when the first entry is written).
    pub fn new(dir: impl Into<PathBuf>) -> FileVault {
        FileVault { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry(&self, name: &str) -> io::Result<PathBuf> {
        let plain = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !plain {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("not a vault entry name: {name:?}")));
        }
        Ok(self.dir.join(name))
    }

    fn create_dir(&self) -> io::Result<()> {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(&self.dir)
    }
}

impl fmt::Debug for FileVault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileVault").field("dir", &self.dir).finish()
    }
}

impl KeyVault for FileVault {
    fn load(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        use std::io::Read;
        let path = self.entry(name)?;
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        // Read one byte past the bound, so that an oversized file is reported rather than read whole.
        let mut secret = Vec::new();
        file.take(MAX_SECRET_BYTES as u64 + 1).read_to_end(&mut secret)?;
        Ok(Some(secret))
    }

    fn create(&self, name: &str, secret: &[u8]) -> io::Result<bool> {
        let path = self.entry(name)?;
        self.create_dir()?;
        let temp = self.dir.join(format!(".{name}.{}.tmp", crate::util::sources::Sources::system().random_u64()));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let written = (|| {
            let mut file = options.open(&temp)?;
            file.write_all(secret)?;
            file.sync_all()?;
            // A hard link fails when the entry exists, so of two creators exactly one wins.
            match std::fs::hard_link(&temp, &path) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            }
        })();
        let _ = std::fs::remove_file(&temp);
        let created = written?;
        if created {
            // The new directory entry survives a power loss too.
            std::fs::File::open(&self.dir)?.sync_all()?;
        }
        Ok(created)
    }
}

/// A [`KeyVault`] in memory, for a store that lives in memory (`:memory:`) or a test: its keys last as long as it.
#[derive(Default)]
pub struct MemoryVault {
    entries: Mutex<HashMap<String, Vec<u8>>>,
}

impl fmt::Debug for MemoryVault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MemoryVault(..)")
    }
}

impl KeyVault for MemoryVault {
    fn load(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        Ok(crate::util::lock(&self.entries).get(name).cloned())
    }

    fn create(&self, name: &str, secret: &[u8]) -> io::Result<bool> {
        let mut entries = crate::util::lock(&self.entries);
        if entries.contains_key(name) {
            return Ok(false);
        }
        entries.insert(name.to_string(), secret.to_vec());
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_vault_creates_an_entry_once_and_keeps_it_private() {
        let dir = tempfile::tempdir().unwrap();
        let vault = FileVault::new(dir.path().join("keys"));
        assert_eq!(vault.load(SIGNING_KEY).unwrap(), None);
        assert!(vault.create(SIGNING_KEY, b"first").unwrap());
        assert!(!vault.create(SIGNING_KEY, b"second").unwrap(), "an entry never changes");
        assert_eq!(vault.load(SIGNING_KEY).unwrap().as_deref(), Some(&b"first"[..]));
        assert!(vault.create(NOISE_KEY, b"made").unwrap());
        let names: Vec<_> = std::fs::read_dir(vault.dir()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(vault.dir()), 0o700);
            assert_eq!(mode(&vault.dir().join(SIGNING_KEY)), 0o600);
        }
    }

    #[test]
    fn entry_names_cannot_leave_the_directory_and_oversized_secrets_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let vault = FileVault::new(dir.path().join("keys"));
        for name in ["", "../x", "a/b", ".hidden", "a b"] {
            assert_eq!(vault.create(name, b"x").unwrap_err().kind(), io::ErrorKind::InvalidInput, "{name:?}");
        }
        assert!(vault.create("big", &vec![1u8; MAX_SECRET_BYTES + 1]).unwrap());
        assert_eq!(load_bounded(&vault, "big").unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert_eq!(vault.load("big").unwrap().unwrap().len(), MAX_SECRET_BYTES + 1, "read no further than the bound");
    }

    #[test]
    fn of_many_threads_creating_one_entry_exactly_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        let vault = std::sync::Arc::new(FileVault::new(dir.path().join("keys")));
        let handles: Vec<_> = (0..8u8)
            .map(|i| {
                let vault = vault.clone();
                std::thread::spawn(move || vault.create(NOISE_KEY, &[i; 4]).unwrap())
            })
            .collect();
        let wins = handles.into_iter().map(|h| h.join().unwrap()).filter(|won| *won).count();
        assert_eq!(wins, 1);
        let kept = vault.load(NOISE_KEY).unwrap().unwrap();
        assert!(kept.len() == 4 && kept.iter().all(|b| *b == kept[0]), "one whole entry: {kept:?}");
    }
}
