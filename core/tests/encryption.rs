//! Encryption at rest (cargo feature `encryption`, SQLCipher): an encrypted store's files hold none of the plaintext
//! written — in the database file and in its WAL —, it opens with its key only (a wrong key or none is a typed error
//! that changes nothing on disk), its key can be changed, and an unencrypted store can be encrypted in place.
//! Without the feature, a key is refused rather than ignored.

use shoaldb::{Error, Options, Store, StoreKey};

#[cfg(not(feature = "encryption"))]
#[test]
fn without_the_feature_a_key_is_refused_and_nothing_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let options = Options { key: Some(StoreKey::from_bytes([7; 32])), ..Options::default() };
    assert!(matches!(Store::open_with(&path, options), Err(Error::EncryptionUnavailable)));
    assert!(!path.exists(), "no unencrypted file was created");
    assert!(matches!(Store::encrypt_file(&path, &StoreKey::from_bytes([7; 32])), Err(Error::EncryptionUnavailable)));
}

#[test]
fn a_key_is_32_bytes_and_never_printed() {
    assert!(matches!(StoreKey::from_slice(&[1; 31]), Err(Error::InvalidKey { len: 31 })));
    let key = StoreKey::from_slice(&[0xab; 32]).unwrap();
    assert_eq!(key.as_bytes(), &[0xab; 32]);
    let shown = format!("{:?}", Options { key: Some(key), ..Options::default() });
    assert!(shown.contains("StoreKey(..)"), "{shown}");
    assert!(!shown.to_lowercase().contains("abab") && !shown.contains("171"), "the key's bytes leak: {shown}");
    assert_ne!(StoreKey::generate().unwrap(), StoreKey::generate().unwrap());
}

#[cfg(feature = "encryption")]
mod encrypted {
    use super::*;
    use serde_json::json;
    use shoaldb::AttachmentToken;
    use std::path::Path;

    /// Every file in `dir` (name → its bytes).
    fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().unwrap().is_file())
            .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
            .collect();
        out.sort();
        out
    }

    /// Every file in `dir`, by name, with the BLAKE3 hash of its bytes.
    fn fingerprint(dir: &Path) -> Vec<(String, String)> {
        files(dir).into_iter().map(|(name, bytes)| (name, blake3::hash(&bytes).to_hex().to_string())).collect()
    }

    /// Distinctive strings written as collection name, document id, field values and attachment bytes.
    const COLLECTION: &str = "diary_zq7";
    const DOC_ID: &str = "entry-xyzzy-41";
    const SECRET_TEXT: &str = "Plaintext-Marker-Walrus-9931";
    const SECRET_NOTE: &str = "Second-Marker-Ocelot-2718";
    const ATTACHMENT_MARKER: &[u8] = b"ATTACHMENT-BYTES-Narwhal-5150|";

    fn key(b: u8) -> StoreKey {
        StoreKey::from_bytes([b; 32])
    }

    fn options(key: Option<StoreKey>) -> Options {
        Options { key, ..Options::default() }
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    fn needles() -> Vec<&'static [u8]> {
        vec![
            COLLECTION.as_bytes(),
            DOC_ID.as_bytes(),
            SECRET_TEXT.as_bytes(),
            SECRET_NOTE.as_bytes(),
            ATTACHMENT_MARKER,
        ]
    }

    /// Files that contain plaintext: (file name, the plaintext found).
    type Leaks = Vec<(String, String)>;

    /// The names of the files in `dir` that contain any of the plaintext written, with what they contain.
    fn leaks(dir: &Path) -> Leaks {
        let mut out = Vec::new();
        for (name, bytes) in files(dir) {
            for needle in needles() {
                if contains(&bytes, needle) {
                    out.push((name.clone(), String::from_utf8_lossy(needle).into_owned()));
                }
            }
        }
        out
    }

    /// The attachment: the marker repeated past one chunk (so two chunks hold it).
    fn attachment() -> Vec<u8> {
        ATTACHMENT_MARKER.repeat(shoaldb::store::CHUNK_SIZE / ATTACHMENT_MARKER.len() + 100)
    }

    fn write_secrets(store: &Store) -> AttachmentToken {
        let token = store.put_attachment_bytes(&attachment(), [("name".into(), "scan.bin".into())].into()).unwrap();
        store
            .upsert(COLLECTION, json!({"_id": DOC_ID, "title": SECRET_TEXT, "scan": token.to_json(), "n": 1}))
            .unwrap();
        store
            .update(COLLECTION, DOC_ID, |doc| {
                doc.text_insert("notes", 0, SECRET_NOTE)?;
                Ok(())
            })
            .unwrap();
        token
    }

    fn check_secrets(store: &Store, token: &AttachmentToken) {
        let doc = store.get(COLLECTION, DOC_ID).unwrap().expect("the document is there");
        assert_eq!(doc["title"], SECRET_TEXT);
        assert_eq!(doc["notes"], SECRET_NOTE);
        assert_eq!(store.attachment_bytes(token).unwrap(), attachment());
    }

    fn file_len(path: &Path) -> u64 {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }

    /// Writes the secrets into a store in `dir` opened with `key`, then returns the files' leaks: while the data is
    /// still in the WAL, then after a checkpoint and close.
    fn leaks_of_a_store(key: Option<StoreKey>) -> (Leaks, Leaks) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        let store = Store::open_with(&path, options(key)).unwrap();
        write_secrets(&store);
        assert!(file_len(&dir.path().join("app.db-wal")) > 0, "the data is still in the WAL");
        let in_wal = leaks(dir.path());
        store.checkpoint().unwrap();
        drop(store);
        assert!(!dir.path().join("app.db-wal").exists(), "the WAL was checkpointed and removed at close");
        let at_rest = leaks(dir.path());
        // The epoch sidecar holds the open epoch only.
        assert_eq!(file_len(&dir.path().join("app.db-epoch")), 8);
        (in_wal, at_rest)
    }

    #[test]
    fn without_a_key_the_plaintext_is_in_the_files() {
        // The positive control of the test below: the same writes, no key, and the search finds them.
        let (in_wal, at_rest) = leaks_of_a_store(None);
        for needle in [SECRET_TEXT, SECRET_NOTE, "ATTACHMENT-BYTES-Narwhal-5150|"] {
            assert!(
                in_wal.iter().any(|(f, n)| f == "app.db-wal" && n == needle),
                "{needle} not in the WAL: {in_wal:?}"
            );
            assert!(at_rest.iter().any(|(f, n)| f == "app.db" && n == needle), "{needle} not in the file: {at_rest:?}");
        }
    }

    #[test]
    fn an_encrypted_store_leaves_no_plaintext_in_its_files() {
        let (in_wal, at_rest) = leaks_of_a_store(Some(key(1)));
        assert!(in_wal.is_empty(), "plaintext in the files while in the WAL: {in_wal:?}");
        assert!(at_rest.is_empty(), "plaintext in the files at rest: {at_rest:?}");
    }

    #[test]
    fn reopens_with_its_key_and_reads_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        let store = Store::open_with(&path, options(Some(key(1)))).unwrap();
        assert!(store.is_encrypted());
        let token = write_secrets(&store);
        let peer = store.peer_id();
        drop(store);
        let store = Store::open_with(&path, options(Some(key(1)))).unwrap();
        check_secrets(&store, &token);
        assert_eq!(store.peer_id(), peer);
        assert_eq!(store.author_id().unwrap(), peer, "the same file reopened here keeps its author");
        // Still writable, and what it writes is encrypted too.
        store.upsert(COLLECTION, json!({"_id": "more", "n": 2})).unwrap();
        drop(store);
        assert!(leaks(dir.path()).is_empty());
    }

    #[test]
    fn garbage_collection_keeps_an_encrypted_store_encrypted_and_whole() {
        // A store encrypted after the fact (its file predates incremental vacuuming, so the first collection
        // rewrites it) holding the secrets and an attachment no document names.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        let plain = Store::open(&path).unwrap();
        let token = write_secrets(&plain);
        let loose =
            plain.put_attachment_bytes(&[ATTACHMENT_MARKER, b"loose"].concat().repeat(40_000), Default::default());
        let loose = loose.unwrap();
        drop(plain);
        Store::encrypt_file(&path, &key(1)).unwrap();
        let store = Store::open_with(&path, options(Some(key(1)))).unwrap();
        let policy = shoaldb::store::GarbagePolicy { unreferenced_attachment_ms: 0, stalled_download_ms: 0 };
        let report = store.collect_garbage(&policy).unwrap();
        assert_eq!(report.attachments_removed, 1, "{report:?}");
        assert!(report.file_bytes_after < report.file_bytes_before, "{report:?}");
        assert!(!store.has_attachment(&loose).unwrap());
        let stats = store.storage_stats().unwrap();
        assert_eq!((stats.attachments, stats.documents, stats.free_bytes), (1, 1, 0), "{stats:?}");
        assert_eq!(stats.file_bytes, report.file_bytes_after);
        check_secrets(&store, &token);
        drop(store);
        assert!(leaks(dir.path()).is_empty(), "plaintext in the files after the collection");
        assert!(matches!(Store::open(&path), Err(Error::WrongKey)), "still encrypted");
        let store = Store::open_with(&path, options(Some(key(1)))).unwrap();
        store.check_integrity().unwrap();
        check_secrets(&store, &token);
    }

    #[test]
    fn a_wrong_key_or_none_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        let store = Store::open_with(&path, options(Some(key(1)))).unwrap();
        let token = write_secrets(&store);
        drop(store);
        let before = fingerprint(dir.path());
        assert!(matches!(Store::open_with(&path, options(Some(key(2)))), Err(Error::WrongKey)));
        assert!(matches!(Store::open(&path), Err(Error::WrongKey)));
        assert!(matches!(Store::encrypt_file(&path, &key(2)), Err(Error::WrongKey)));
        assert_eq!(fingerprint(dir.path()), before, "a refused open changed or added a file");
        check_secrets(&Store::open_with(&path, options(Some(key(1)))).unwrap(), &token);
    }

    #[test]
    fn a_wrong_key_changes_nothing_in_a_wal_left_by_a_crash() {
        // A crash image: the database and its WAL copied while the store is open, uncheckpointed.
        let live = tempfile::tempdir().unwrap();
        let store = Store::open_with(live.path().join("app.db"), options(Some(key(1)))).unwrap();
        let token = write_secrets(&store);
        let crashed = tempfile::tempdir().unwrap();
        for name in ["app.db", "app.db-wal", "app.db-epoch"] {
            std::fs::copy(live.path().join(name), crashed.path().join(name)).unwrap();
        }
        drop(store);
        let path = crashed.path().join("app.db");
        assert!(file_len(&crashed.path().join("app.db-wal")) > 0);
        // Recovering the WAL builds its index (`-shm`: frame and page numbers); the database and the WAL are left
        // as they were.
        let kept = |dir: &Path| -> Vec<(String, String)> {
            fingerprint(dir).into_iter().filter(|(name, _)| !name.ends_with("-shm")).collect()
        };
        let before = kept(crashed.path());
        assert!(matches!(Store::open_with(&path, options(Some(key(2)))), Err(Error::WrongKey)));
        assert!(matches!(Store::open(&path), Err(Error::WrongKey)));
        assert_eq!(kept(crashed.path()), before, "a refused open changed a file");
        // The right key recovers everything from the WAL.
        let store = Store::open_with(&path, options(Some(key(1)))).unwrap();
        check_secrets(&store, &token);
        drop(store);
        assert!(leaks(crashed.path()).is_empty());
    }

    #[test]
    fn change_key_then_only_the_new_key_opens_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        let store = Store::open_with(&path, options(Some(key(1)))).unwrap();
        let token = write_secrets(&store);
        store.change_key(&key(3)).unwrap();
        // The open store goes on working under the new key.
        store.upsert(COLLECTION, json!({"_id": "after", "n": 3})).unwrap();
        check_secrets(&store, &token);
        drop(store);
        assert!(leaks(dir.path()).is_empty());
        assert!(matches!(Store::open_with(&path, options(Some(key(1)))), Err(Error::WrongKey)));
        let store = Store::open_with(&path, options(Some(key(3)))).unwrap();
        check_secrets(&store, &token);
        assert_eq!(store.get(COLLECTION, "after").unwrap().unwrap()["n"], 3);
    }

    /// Writes documents of about 200 KB until the WAL holds more than 4,000 pages, then waits until the store's
    /// thread has checkpointed it (no commit does after that) into the database file, which then holds more than
    /// 8 MiB more than before. Returns the number of documents written so far.
    fn write_until_checkpointed(store: &Store, path: &Path, from: usize) -> usize {
        let before = file_len(path);
        let wal = path.with_extension("db-wal");
        let mut n = from;
        while file_len(&wal) < 32 + 4000 * (24 + 4096) {
            let body: String = (0..200_000).map(|k| char::from(b'a' + ((n + k) % 26) as u8)).collect();
            store.upsert("bulk", json!({"_id": format!("b{n}"), "body": body})).unwrap();
            n += 1;
            assert!(n < from + 400, "the WAL did not grow");
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while file_len(path) < before + 8 * 1024 * 1024 {
            assert!(std::time::Instant::now() < deadline, "the WAL was not checkpointed into the file");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        n
    }

    #[test]
    fn the_wal_is_checkpointed_in_the_background_under_the_key_and_a_changed_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        let store = Store::open_with(&path, options(Some(key(1)))).unwrap();
        let token = write_secrets(&store);
        let n = write_until_checkpointed(&store, &path, 0);
        store.change_key(&key(4)).unwrap();
        let n = write_until_checkpointed(&store, &path, n);
        check_secrets(&store, &token);
        drop(store);
        assert!(leaks(dir.path()).is_empty());
        assert!(matches!(Store::open_with(&path, options(Some(key(1)))), Err(Error::WrongKey)));
        let store = Store::open_with(&path, options(Some(key(4)))).unwrap();
        check_secrets(&store, &token);
        assert_eq!(store.list("bulk").unwrap().len(), n);
    }

    #[test]
    fn a_key_for_an_unencrypted_store_is_refused_until_it_is_encrypted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        let store = Store::open(&path).unwrap();
        let token = write_secrets(&store);
        assert!(!store.is_encrypted());
        assert!(matches!(store.change_key(&key(1)), Err(Error::NotEncrypted)));
        // Not while it is open.
        let busy = Store::encrypt_file(&path, &key(1));
        assert!(
            matches!(&busy, Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::ResourceBusy),
            "encrypting an open store: {busy:?}"
        );
        drop(store);
        let before = fingerprint(dir.path());
        assert!(matches!(Store::open_with(&path, options(Some(key(1)))), Err(Error::NotEncrypted)));
        assert_eq!(fingerprint(dir.path()), before, "a refused open changed or added a file");
        assert!(!leaks(dir.path()).is_empty(), "unencrypted so far");

        Store::encrypt_file(&path, &key(1)).unwrap();
        assert!(leaks(dir.path()).is_empty(), "plaintext left after encrypting: {:?}", leaks(dir.path()));
        assert!(!dir.path().join("app.db-encrypting").exists());
        assert!(matches!(Store::open(&path), Err(Error::WrongKey)));
        let store = Store::open_with(&path, options(Some(key(1)))).unwrap();
        check_secrets(&store, &token);
        assert_eq!(store.author_id().unwrap(), store.peer_id(), "the same store, not a restored copy");
        store.upsert(COLLECTION, json!({"_id": "later", "n": 4})).unwrap();
        assert_eq!(store.list(COLLECTION).unwrap().len(), 2);
    }

    #[test]
    fn the_cli_opens_an_encrypted_store_with_its_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        let key_file = dir.path().join("key");
        std::fs::write(&key_file, format!("{}\n", "5a".repeat(32))).unwrap();
        let shoal = |key: Option<&Path>, args: &[&str]| {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_shoal"));
            cmd.arg("--db").arg(&db).env("SHOAL_LOG", "off");
            if let Some(key) = key {
                cmd.arg("--key-file").arg(key);
            }
            cmd.args(args).output().unwrap()
        };
        let put =
            shoal(Some(&key_file), &["put", COLLECTION, &json!({"_id": DOC_ID, "title": SECRET_TEXT}).to_string()]);
        assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
        let got = shoal(Some(&key_file), &["get", COLLECTION, DOC_ID]);
        assert!(String::from_utf8_lossy(&got.stdout).contains(SECRET_TEXT), "{got:?}");
        let refused = shoal(None, &["get", COLLECTION, DOC_ID]);
        assert_eq!(refused.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&refused.stderr).contains("key"), "{refused:?}");
        // The same key as 32 raw bytes.
        std::fs::write(&key_file, [0x5a; 32]).unwrap();
        assert!(shoal(Some(&key_file), &["get", COLLECTION, DOC_ID]).status.success());
        let files: Vec<_> = files(dir.path()).into_iter().filter(|(name, _)| name != "key").collect();
        assert!(files.iter().all(|(_, bytes)| !contains(bytes, SECRET_TEXT.as_bytes())));
    }
}
