//! Storage statistics and garbage collection (`Store::storage_stats`, `Store::collect_garbage`): what is collected,
//! after how long, and what never is.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::json;
use shoaldb::crdt::value::Scalar;
use shoaldb::store::{GarbagePolicy, StorageStats};
use shoaldb::util::sources::Sources;
use shoaldb::{AttachmentToken, CompactionPolicy, Options, Replica, Store};

const HOUR: u64 = 3_600_000;
const START: u64 = 1_800_000_000_000;

/// A store on disk whose clock the test moves.
fn store_with_clock(path: &std::path::Path) -> (Store, Arc<AtomicU64>) {
    let now = Arc::new(AtomicU64::new(START));
    let clock = now.clone();
    let sources = Sources::system().with_clock(move || clock.load(Ordering::SeqCst));
    (Store::open_with(path, Options { sources, ..Default::default() }).unwrap(), now)
}

fn bytes(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn policy(unreferenced_hours: u64, stalled_hours: u64) -> GarbagePolicy {
    GarbagePolicy { unreferenced_attachment_ms: unreferenced_hours * HOUR, stalled_download_ms: stalled_hours * HOUR }
}

fn has(store: &Store, t: &AttachmentToken) -> bool {
    store.has_attachment(t).unwrap()
}

#[test]
fn stats_count_what_the_store_holds() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("db")).unwrap();
    let empty = store.storage_stats().unwrap();
    assert_eq!((empty.documents, empty.log_changes, empty.attachments), (0, 0, 0));
    assert!(empty.file_bytes > 0);

    for i in 0..10 {
        store.upsert("notes", json!({"_id": format!("n{i}"), "text": "hello"})).unwrap();
    }
    // One document edited often enough to be given a snapshot.
    for i in 0..60 {
        store.upsert("notes", json!({"_id": "n0", "text": format!("{i:0100}")})).unwrap();
    }
    assert!(store.remove("notes", "n1").unwrap());
    assert!(store.evict("notes", "n2").unwrap());
    let token = store.put_attachment_bytes(&bytes(1, 300_000), Default::default()).unwrap();
    store.replica().receive_attachment_part(&[7; 32], 0, &bytes(2, 5_000)).unwrap();

    let s = store.storage_stats().unwrap();
    assert_eq!(s.documents, 8, "{s:?}");
    assert_eq!(s.removed_documents, 1);
    assert_eq!(s.evicted_documents, 1);
    assert_eq!(s.log_changes, 10 + 60 + 1 - 1, "the evicted document's change is dropped here");
    assert!(s.log_bytes > 60 * 100, "{s:?}");
    assert!(s.snapshot_bytes > 100, "{s:?}");
    assert!(s.view_bytes > 100 && s.view_bytes < 10_000, "{s:?}");
    assert_eq!((s.attachments, s.attachment_bytes), (1, token.len));
    assert_eq!((s.partial_downloads, s.partial_bytes), (1, 5_000));
    assert_eq!(s.pending_changes, 0);
    assert!(s.file_bytes + s.wal_bytes > 300_000, "{s:?}");
    assert!(s.free_bytes < s.file_bytes);
}

#[test]
fn an_attachment_no_document_names_is_collected_only_after_its_grace() {
    let dir = tempfile::tempdir().unwrap();
    let (store, now) = store_with_clock(&dir.path().join("db"));
    let put = |seed| store.put_attachment_bytes(&bytes(seed, 200_000), Default::default()).unwrap();
    let (named, loose, replaced, removed, beside) = (put(1), put(2), put(3), put(4), put(5));
    let named_twice = put(6);
    store.upsert("files", json!({"_id": "a", "file": named.to_json(), "copy": named_twice.to_json()})).unwrap();
    store.upsert("files", json!({"_id": "a2", "file": named_twice.to_json()})).unwrap();
    store.upsert("files", json!({"_id": "b", "file": replaced.to_json()})).unwrap();
    store.upsert("files", json!({"_id": "c", "file": removed.to_json()})).unwrap();
    // A token inside a large value, which the store keeps beside the document's view.
    let large = Scalar::List(vec![Scalar::Attachment(Box::new(beside.clone())), Scalar::Str("x".repeat(40_000))]);
    let d = store.upsert("files", json!({"_id": "d"})).unwrap();
    store.update("files", &d, |e| Ok(e.set("bundle", large)?)).unwrap();

    // The first collection only marks.
    let first = store.collect_garbage(&policy(1, 24)).unwrap();
    assert_eq!(first.attachments_removed, 0);
    assert!([&named, &loose, &replaced, &removed, &beside, &named_twice].iter().all(|t| has(&store, t)));

    // Half an hour later: `b` names another file, `c` is removed, `a` drops one of its two names, and `loose` is
    // stored again (its document is about to be written).
    now.fetch_add(HOUR / 2, Ordering::SeqCst);
    store.upsert("files", json!({"_id": "b", "file": "gone"})).unwrap();
    assert!(store.remove("files", "c").unwrap());
    store.upsert("files", json!({"_id": "a", "file": named.to_json(), "copy": null})).unwrap();
    assert_eq!(put(2), loose);
    let second = store.collect_garbage(&policy(1, 24)).unwrap();
    assert_eq!(second.attachments_removed, 0, "what was named an hour ago has its full grace");

    // An hour after the first collection `loose` has been unnamed for more than an hour — but it was stored again
    // half an hour ago, so its grace started over.
    now.fetch_add(HOUR / 2 + 1, Ordering::SeqCst);
    let third = store.collect_garbage(&policy(1, 24)).unwrap();
    assert_eq!(third.attachments_removed, 0, "{third:?}");
    assert!(has(&store, &loose));

    // Another hour: `replaced` and `removed` (unnamed since the second collection) and `loose` go; what a document
    // names — in its view, beside it, or in another document — stays.
    now.fetch_add(HOUR, Ordering::SeqCst);
    let fourth = store.collect_garbage(&policy(1, 24)).unwrap();
    assert_eq!(fourth.attachments_removed, 3, "{fourth:?}");
    assert_eq!(fourth.attachment_bytes_removed, 3 * 200_000);
    assert!(!has(&store, &replaced) && !has(&store, &removed) && !has(&store, &loose));
    assert!(has(&store, &named) && has(&store, &beside) && has(&store, &named_twice));
    assert_eq!(store.attachment_bytes(&beside).unwrap(), bytes(5, 200_000));
    assert_eq!(store.attachment_bytes(&named_twice).unwrap(), bytes(6, 200_000));
    assert!(matches!(store.attachment_bytes(&replaced), Err(shoaldb::Error::AttachmentNotFound { .. })));
    assert_eq!(store.storage_stats().unwrap().attachments, 3);

    // Nothing else moves: documents, removals and the change log are as they were.
    assert_eq!(store.get("files", "c").unwrap(), None);
    assert_eq!(store.get("files", "a").unwrap().unwrap()["file"]["_attachment"], named.hash_hex());
    let fifth = store.collect_garbage(&policy(1, 24)).unwrap();
    assert_eq!(fifth.attachments_removed, 0);
}

#[test]
fn a_download_that_stops_is_collected_and_one_that_progresses_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let (store, now) = store_with_clock(&dir.path().join("db"));
    let replica = store.replica();
    let (stopped, moving) = ([1u8; 32], [2u8; 32]);
    replica.receive_attachment_part(&stopped, 0, &bytes(1, 10_000)).unwrap();
    replica.receive_attachment_part(&moving, 0, &bytes(2, 10_000)).unwrap();
    assert_eq!(store.collect_garbage(&policy(24, 1)).unwrap().downloads_removed, 0);

    // Every half hour the moving one receives a part; the stopped one receives nothing for more than an hour.
    let mut moving_at = 10_000;
    for _ in 0..3 {
        now.fetch_add(HOUR / 2 + 1, Ordering::SeqCst);
        moving_at = replica.receive_attachment_part(&moving, moving_at, &bytes(3, 1_000)).unwrap();
        store.collect_garbage(&policy(24, 1)).unwrap();
    }
    let stats = store.storage_stats().unwrap();
    assert_eq!(stats.partial_downloads, 1, "the stopped download is gone, the moving one stays: {stats:?}");
    assert_eq!(stats.partial_bytes, 13_000);
    assert_eq!(replica.attachments_received(10).unwrap(), vec![moving]);
}

#[test]
fn collection_returns_free_pages_to_the_system() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = store_with_clock(&dir.path().join("db"));
    let big = store.put_attachment_bytes(&bytes(9, 4 << 20), Default::default()).unwrap();
    store.checkpoint().unwrap();
    let before = store.storage_stats().unwrap();
    assert!(before.file_bytes > 4 << 20);
    let report = store.collect_garbage(&policy(0, 0)).unwrap();
    assert_eq!((report.attachments_removed, report.attachment_bytes_removed), (1, big.len));
    assert!(report.file_bytes_after + (4 << 20) <= report.file_bytes_before, "{report:?}");
    let after = store.storage_stats().unwrap();
    assert_eq!(after.free_bytes, 0);
    assert!(after.file_bytes + (4 << 20) <= before.file_bytes, "{before:?} {after:?}");
    assert_eq!(std::fs::metadata(dir.path().join("db")).unwrap().len(), after.file_bytes);
}

#[test]
fn a_store_made_before_incremental_vacuuming_is_rewritten_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        // A file that already has a table when the store first opens it: its vacuum mode can no longer change.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE older (x); DROP TABLE older;").unwrap();
    }
    let mode = |p: &std::path::Path| -> i64 {
        rusqlite::Connection::open(p).unwrap().query_row("PRAGMA auto_vacuum", [], |r| r.get(0)).unwrap()
    };
    let (store, _) = store_with_clock(&path);
    assert_eq!(mode(&path), 0);
    store.upsert("notes", json!({"_id": "kept", "text": "still here"})).unwrap();
    store.put_attachment_bytes(&bytes(4, 2 << 20), Default::default()).unwrap();
    let report = store.collect_garbage(&policy(0, 0)).unwrap();
    assert_eq!(report.attachments_removed, 1);
    assert!(report.file_bytes_after * 4 < report.file_bytes_before, "{report:?}");
    assert_eq!(mode(&path), 2, "incremental from now on");
    assert_eq!(store.get("notes", "kept").unwrap().unwrap()["text"], "still here");
    let StorageStats { documents, free_bytes, .. } = store.storage_stats().unwrap();
    assert_eq!((documents, free_bytes), (1, 0));
    drop(store);
    let (reopened, _) = store_with_clock(&path);
    reopened.check_integrity().unwrap();
    assert_eq!(reopened.get("notes", "kept").unwrap().unwrap()["text"], "still here");
}

#[test]
fn stats_count_the_tombstones_of_texts_and_arrays() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let store = Store::open(&path).unwrap();
    store.upsert("notes", json!({"_id": "a"})).unwrap();
    // 40 characters typed, 25 deleted; 10 elements pushed, 4 deleted — each in a transaction of its own, enough
    // changes for the document to get a snapshot.
    for i in 0..40 {
        store.update("notes", "a", |d| Ok(d.text_insert("body", i, "x")?)).unwrap();
    }
    for _ in 0..25 {
        store.update("notes", "a", |d| Ok(d.text_delete("body", 0, 1)?)).unwrap();
    }
    for i in 0..10i64 {
        store.update("notes", "a", |d| Ok(d.array_push("list", &[i.into()])?)).unwrap();
    }
    for _ in 0..4 {
        store.update("notes", "a", |d| Ok(d.array_delete("list", 0, 1)?)).unwrap();
    }
    // Folding every change writes a snapshot at the document's current state.
    store.compact(&CompactionPolicy::everything()).unwrap();
    let s = store.storage_stats().unwrap();
    assert_eq!(s.tombstones, 25 + 4, "{s:?}");
    drop(store);

    // A snapshot written before counts were kept is counted from its state.
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("UPDATE snapshots SET tombstones = NULL").unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.storage_stats().unwrap().tombstones, 29);
}
