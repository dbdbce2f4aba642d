//! Encryption at rest (cargo feature `encryption`): the store's SQLite file is a SQLCipher database, keyed with a
//! [`StoreKey`]. Every page of the database and of its WAL is encrypted (AES-256-CBC, an HMAC-SHA512 per page, a
//! random salt in the file's first 16 bytes); attachment chunks are rows of the database, so they are covered too,
//! and SQLCipher keeps temporary tables and sorts in memory. Without the feature the crate links plain SQLite and a
//! key is refused ([`Error::EncryptionUnavailable`]) rather than silently ignored.
//!
//! The key is 32 raw bytes handed to SQLCipher as a raw key (`x'…'`): no key derivation runs at open (SQLCipher's
//! PBKDF2 of a passphrase costs 256,000 iterations at every open, and adds nothing to a key that is already 32
//! random bytes from the platform's keystore).

use crate::error::{Error, Result};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, ErrorCode};
use std::path::{Path, PathBuf};

/// Whether this build can encrypt stores (the cargo feature `encryption`).
pub const ENCRYPTION_AVAILABLE: bool = cfg!(feature = "encryption");

/// The first 16 bytes of every unencrypted SQLite database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// The key of an encrypted store ([`Options::key`](super::Options::key)): 32 random bytes, used as they are (an
/// AES-256 key, no passphrase stretching). Keep it in the platform's keystore, never beside the database: on
/// Android wrapped by an Android Keystore key, on iOS in the Keychain with an accessibility class ending in
/// `ThisDeviceOnly`, so that it never leaves the device in a backup.
///
/// Its `Debug` output does not show the bytes; they are overwritten when it is dropped (best effort: copies the
/// app made, or SQLCipher's own, are not).
#[derive(Clone, PartialEq, Eq)]
pub struct StoreKey([u8; 32]);

impl StoreKey {
    /// The key's length in bytes.
    pub const LEN: usize = 32;

    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> StoreKey {
        StoreKey(bytes)
    }

    /// A key from a slice, which must be exactly [`StoreKey::LEN`] bytes long ([`Error::InvalidKey`] otherwise).
    pub fn from_slice(bytes: &[u8]) -> Result<StoreKey> {
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| Error::InvalidKey { len: bytes.len() })?;
        Ok(StoreKey(bytes))
    }

    /// A fresh key from the operating system's random number generator.
    pub fn generate() -> Result<StoreKey> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| Error::Io(std::io::Error::other(e)))?;
        Ok(StoreKey(bytes))
    }

    /// The key's bytes (to store them in the platform's keystore).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// SQLCipher's raw-key literal, `x'<64 hex digits>'`, inside double quotes: the value of `PRAGMA key`.
    fn pragma_value(&self) -> Secret {
        Secret(format!("\"x'{}'\"", crate::util::hex(&self.0)))
    }
}

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreKey(..)")
    }
}

impl Drop for StoreKey {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

/// A string holding key material, overwritten when dropped.
struct Secret(String);

impl Drop for Secret {
    fn drop(&mut self) {
        let mut bytes = std::mem::take(&mut self.0).into_bytes();
        wipe(&mut bytes);
    }
}

fn wipe(bytes: &mut [u8]) {
    bytes.fill(0);
    // Keeps the stores from being optimised away as dead.
    std::hint::black_box(bytes);
}

fn run_pragma(conn: &Connection, pragma: &str, key: &StoreKey) -> Result<()> {
    let sql = Secret(format!("PRAGMA {pragma} = {};", key.pragma_value().0));
    conn.execute_batch(&sql.0)?;
    Ok(())
}

/// SQLCipher's version, `None` when the linked SQLite is not SQLCipher (which ignores `PRAGMA key`).
fn cipher_version(conn: &Connection) -> Result<Option<String>> {
    let mut stmt = conn.prepare("PRAGMA cipher_version")?;
    let mut rows = stmt.query([])?;
    Ok(match rows.next()? {
        Some(row) => row.get::<_, Option<String>>(0)?,
        None => None,
    })
}

/// Whether the file at `path` starts like an unencrypted SQLite database.
fn is_plain_sqlite(path: &Path) -> bool {
    let mut header = [0u8; 16];
    match std::fs::File::open(path) {
        Ok(mut f) => std::io::Read::read_exact(&mut f, &mut header).is_ok() && &header == SQLITE_HEADER,
        Err(_) => false,
    }
}

/// Turns off SQLCipher's own log (stderr, logcat or the Apple console; process-wide, once): the one failure it
/// reports in use, a page that does not decrypt, comes back as a typed error ([`Error::WrongKey`]).
fn quiet_sqlcipher(conn: &Connection) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Err(e) = conn.execute_batch("PRAGMA cipher_log_level = NONE") {
            log::debug!("could not turn SQLCipher's log off: {e}");
        }
    });
}

fn is_not_a_database(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::NotADatabase)
}

/// Opens the SQLite connection of the store at `path`, keyed with `key`, and checks that it can read the file
/// before anything is written: a key that does not open it ([`Error::WrongKey`], [`Error::NotEncrypted`]) leaves
/// the database and its WAL as they were.
pub(super) fn open_connection(path: &Path, key: Option<&StoreKey>) -> Result<Connection> {
    if key.is_some() && !ENCRYPTION_AVAILABLE {
        return Err(Error::EncryptionUnavailable);
    }
    let conn = Connection::open(path)?;
    if ENCRYPTION_AVAILABLE {
        quiet_sqlcipher(&conn);
    }
    if let Some(key) = key {
        if cipher_version(&conn)?.is_none() {
            // Built with the feature yet linked with plain SQLite: never write unencrypted under a key.
            return Err(Error::EncryptionUnavailable);
        }
        run_pragma(&conn, "key", key)?;
    }
    match conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0)) {
        Ok(_) => Ok(conn),
        Err(e) if is_not_a_database(&e) => {
            // SQLite checkpoints a WAL database when its last connection closes: a connection that cannot read the
            // file must not write to it.
            if let Err(e) = conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true) {
                log::warn!("could not turn off the checkpoint on close of {}: {e}", path.display());
            }
            drop(conn);
            Err(if key.is_some() && is_plain_sqlite(path) { Error::NotEncrypted } else { Error::WrongKey })
        }
        Err(e) => Err(e.into()),
    }
}

/// Changes the key of the open, encrypted database behind `conn` (SQLCipher's `PRAGMA rekey`: every page is
/// rewritten under the new key in one transaction), then checkpoints the WAL so the file holds only pages under the
/// new key.
pub(super) fn change_key(conn: &Connection, new: &StoreKey) -> Result<()> {
    run_pragma(conn, "rekey", new)?;
    super::checkpoints::checkpoint_whole(conn)?;
    Ok(())
}

/// `path` with `suffix` appended (`app.db` → `app.db-wal`).
pub(super) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

fn in_use() -> Error {
    Error::Io(std::io::Error::new(
        std::io::ErrorKind::ResourceBusy,
        "the store is open elsewhere: close it everywhere before encrypting it",
    ))
}

/// Encrypts the unencrypted store at `path` in place (see [`Store::encrypt_file`](super::Store::encrypt_file)).
pub(super) fn encrypt_file(path: &Path, key: &StoreKey) -> Result<()> {
    if !ENCRYPTION_AVAILABLE {
        return Err(Error::EncryptionUnavailable);
    }
    if !is_plain_sqlite(path) {
        // Missing, empty, already encrypted or not a database: nothing this can convert.
        return Err(if path.exists() { Error::WrongKey } else { Error::Io(std::io::ErrorKind::NotFound.into()) });
    }
    let temp = sibling(path, "-encrypting");
    for leftover in [temp.clone(), sibling(&temp, "-journal")] {
        match std::fs::remove_file(&leftover) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
    }
    let result = (|| {
        let conn = open_connection(path, None)?;
        // Everything into the main file first (the export reads through the WAL anyway; this makes sure no other
        // connection is writing).
        let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        if busy != 0 {
            return Err(in_use());
        }
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let attach = Secret(format!(
            "ATTACH DATABASE '{}' AS encrypted KEY {};",
            temp.to_string_lossy().replace('\'', "''"),
            key.pragma_value().0
        ));
        conn.execute_batch(&attach.0)?;
        conn.query_row("SELECT sqlcipher_export('encrypted')", [], |_| Ok(()))?;
        conn.pragma_update(Some("encrypted"), "user_version", version)?;
        conn.execute_batch("DETACH DATABASE encrypted")?;
        drop(conn);
        // The last connection to close removes the WAL: one left means the store is open elsewhere, whose writes
        // would go to a file about to be replaced.
        if sibling(path, "-wal").exists() {
            return Err(in_use());
        }
        std::fs::File::open(&temp)?.sync_all()?;
        std::fs::rename(&temp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Makes the rename durable (best effort: not every platform opens directories).
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}
