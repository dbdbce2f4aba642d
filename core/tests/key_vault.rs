//! The device's private keys live in its key vault, never in the database: no backup or copy of the database file
//! carries them, a database restored without them is a new device that must be enrolled again, and keys an older
//! version kept in the database move out of it.

#[path = "common/enrolled.rs"]
mod enrolled;

use enrolled::{everything, year};
use serde_json::json;
use shoaldb::enrolment;
use shoaldb::node::device_identity;
use shoaldb::security::vault::{KeyVault, NOISE_KEY, SIGNING_KEY};
use shoaldb::security::{FileVault, Identity, MemoryVault, SigningKey};
use shoaldb::{Error, Options, Store};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn vault_dir(db: &Path) -> PathBuf {
    PathBuf::from(format!("{}-keys", db.display()))
}

/// Every byte of the database: its file and its WAL.
fn database_bytes(db: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(db).unwrap();
    if let Ok(wal) = std::fs::read(format!("{}-wal", db.display())) {
        bytes.extend(wal);
    }
    bytes
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A store at `db` enrolled by `authority` (its keys made on first use), with a document written.
fn enrolled(db: &Path, authority: &SigningKey, serial: u64) -> Store {
    let store = Store::open(db).unwrap();
    let request = enrolment::request(&store, "phone").unwrap();
    let cert = enrolment::issue(authority, &request, serial, everything(), year()).unwrap();
    enrolment::install(&store, &[cert], &[authority.verifying_key()]).unwrap();
    store.upsert("tasks", json!({"_id": "t", "title": "written signed"})).unwrap();
    store
}

#[test]
fn the_private_keys_are_in_the_vault_and_nowhere_in_the_database_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("phone.db");
    let authority = SigningKey::generate().unwrap();
    let store = enrolled(&db, &authority, 1);
    let noise = device_identity(&store).unwrap().to_bytes();
    let signing = enrolment::device_signing_key(&store).unwrap().to_bytes();

    let vault = FileVault::new(vault_dir(&db));
    assert_eq!(vault.load(NOISE_KEY).unwrap().as_deref(), Some(&noise[..]));
    assert_eq!(vault.load(SIGNING_KEY).unwrap().as_deref(), Some(&signing[..]));
    // Both in the WAL (before a checkpoint) and in the file (after one): not the private halves.
    for when in ["before a checkpoint", "after a checkpoint"] {
        let bytes = database_bytes(&db);
        assert!(contains(&bytes, b"written signed"), "the test reads the right file ({when})");
        assert!(!contains(&bytes, &noise[..32]), "the Noise private key is in the database {when}");
        assert!(!contains(&bytes, &signing), "the signing key is in the database {when}");
        store.checkpoint().unwrap();
    }

    // The same keys after a restart, and for a second handle opened at once (as a second process would).
    let again = Store::open(&db).unwrap();
    assert_eq!(device_identity(&again).unwrap().to_bytes(), noise);
    assert_eq!(enrolment::device_signing_key(&again).unwrap().to_bytes(), signing);
    assert!(enrolment::load(&again).unwrap().is_some(), "still enrolled");
}

#[test]
fn a_database_restored_without_its_keys_is_a_new_device_that_is_enrolled_again() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("phone.db");
    let authority = SigningKey::generate().unwrap();
    let store = enrolled(&db, &authority, 1);
    let before = enrolment::request(&store, "phone").unwrap();
    let old_author = store.author_id().unwrap();
    store.checkpoint().unwrap();

    // A backup of the database restored on another phone: the file comes back, its key vault does not.
    let other = tempfile::tempdir().unwrap();
    let restored_db = other.path().join("phone.db");
    std::fs::copy(&db, &restored_db).unwrap();
    let restored = Store::open(&restored_db).unwrap();
    assert_eq!(restored.get("tasks", "t").unwrap().unwrap()["title"], "written signed", "the data came back");
    let fresh = enrolment::request(&restored, "phone").unwrap();
    assert_ne!(fresh.noise_key, before.noise_key, "a new Noise key");
    assert_ne!(fresh.signing_key, before.signing_key, "a new signing key");
    assert!(enrolment::load(&restored).is_err(), "the installed certificate is the other device's");
    restored.upsert("tasks", json!({"_id": "u"})).unwrap();
    assert_ne!(restored.author_id().unwrap(), old_author, "never writes as the original device");

    // Enrolled again, it signs as itself.
    let cert = enrolment::issue(&authority, &fresh, 2, everything(), year()).unwrap();
    enrolment::install(&restored, &[cert], &[authority.verifying_key()]).unwrap();
    let enrolment = enrolment::load(&restored).unwrap().unwrap();
    assert_eq!(enrolment.chain().leaf().body().signing_key, fresh.signing_key);
    assert_eq!(enrolment.chain().leaf().body().serial, 2);
}

#[test]
fn keys_an_older_version_kept_in_the_database_move_to_the_vault_and_are_erased_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("old.db");
    let identity = Identity::generate().unwrap();
    let signing = SigningKey::generate().unwrap();
    {
        // Where versions before the vault kept them: device-local settings in the database.
        let store = Store::open(&db).unwrap();
        store.set_local_value("device_identity", &identity.to_bytes()).unwrap();
        store.set_local_value("signing_key", &signing.to_bytes()).unwrap();
        store.checkpoint().unwrap();
        assert!(contains(&database_bytes(&db), &signing.to_bytes()), "the test plants the key where it was");
    }
    let store = Store::open(&db).unwrap();
    assert_eq!(device_identity(&store).unwrap().to_bytes(), identity.to_bytes(), "the device keeps its identity");
    assert_eq!(enrolment::device_signing_key(&store).unwrap().to_bytes(), signing.to_bytes());
    assert_eq!(store.local_value("device_identity").unwrap(), None);
    assert_eq!(store.local_value("signing_key").unwrap(), None);
    let bytes = database_bytes(&db);
    assert!(!contains(&bytes, &signing.to_bytes()), "the signing key's bytes are erased from the file");
    assert!(!contains(&bytes, &identity.to_bytes()[..32]), "the Noise private key's bytes are erased");
    assert_eq!(FileVault::new(vault_dir(&db)).load(SIGNING_KEY).unwrap().as_deref(), Some(&signing.to_bytes()[..]));
}

#[test]
fn a_restored_copy_from_an_older_version_does_not_take_up_the_keys_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("old.db");
    let identity = Identity::generate().unwrap();
    {
        let store = Store::open(&db).unwrap();
        store.set_local_value("device_identity", &identity.to_bytes()).unwrap();
        store.checkpoint().unwrap();
    }
    // The file alone, on another phone: it was opened before (it has an open epoch) but not here.
    let other = tempfile::tempdir().unwrap();
    let copy = other.path().join("old.db");
    std::fs::copy(&db, &copy).unwrap();
    let store = Store::open(&copy).unwrap();
    assert_ne!(device_identity(&store).unwrap().device_key(), identity.device_key());
    assert_eq!(store.local_value("device_identity").unwrap(), None, "erased all the same");
    // The original, reopened where it lives, keeps its key.
    let original = Store::open(&db).unwrap();
    assert_eq!(device_identity(&original).unwrap().device_key(), identity.device_key());
}

/// A vault that cannot be read, or that holds something that is not a key.
struct BrokenVault(Option<Vec<u8>>);

impl KeyVault for BrokenVault {
    fn load(&self, _: &str) -> std::io::Result<Option<Vec<u8>>> {
        match &self.0 {
            Some(bytes) => Ok(Some(bytes.clone())),
            None => Err(std::io::Error::other("the keystore is locked")),
        }
    }

    fn create(&self, _: &str, _: &[u8]) -> std::io::Result<bool> {
        Err(std::io::Error::other("the keystore is locked"))
    }
}

#[test]
fn a_vault_that_fails_or_holds_no_key_fails_the_open_with_a_typed_error_and_no_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("phone.db");
    let open =
        |vault: BrokenVault| Store::open_with(&db, Options { keys: Some(Arc::new(vault)), ..Options::default() });
    assert!(matches!(open(BrokenVault(None)), Err(Error::KeyVault(_))));
    let garbage = open(BrokenVault(Some(vec![1, 2, 3])));
    assert!(matches!(&garbage, Err(Error::KeyVault(e)) if e.kind() == std::io::ErrorKind::InvalidData), "{garbage:?}");
    let oversized = open(BrokenVault(Some(vec![1; 4096])));
    assert!(matches!(&oversized, Err(Error::KeyVault(e)) if e.kind() == std::io::ErrorKind::InvalidData));
    // The app's own vault: the store keeps its keys there and nowhere beside the database.
    let vault = Arc::new(MemoryVault::default());
    let store = Store::open_with(&db, Options { keys: Some(vault.clone()), ..Options::default() }).unwrap();
    let identity = device_identity(&store).unwrap();
    assert_eq!(vault.load(NOISE_KEY).unwrap().as_deref(), Some(&identity.to_bytes()[..]));
    assert!(!vault_dir(&db).exists());
}
