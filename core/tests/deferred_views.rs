//! Deferred views: a large document edited often has its stored JSON view rewritten once its changes add up to a few
//! times the view's size, not at every commit (the write amplification of typing into a long text). Every read of
//! views must still see the document as it is — `get`, queries (filters, sorts, limits), observers, storage
//! statistics, the attachments a document names, another handle on the same file, the store opened again after the
//! process died — and a failed transaction must leave nothing behind.

use std::sync::{Arc, Mutex};

use serde_json::{json, Value as Json};
use shoaldb::store::GarbagePolicy;
use shoaldb::{Query, SortOrder, Store};

const BODY: usize = 40_000;

/// A document whose view is well over the size from which views may wait: a text of `BODY` characters.
fn long_document(store: &Store, id: &str) {
    store.upsert("notes", json!({"_id": id, "n": 0, "tag": "x"})).unwrap();
    store.update("notes", id, |ed| Ok(ed.text_insert("body", 0, &"a".repeat(BODY))?)).unwrap();
}

/// A store on disk holding the document `long` (see [`long_document`]), its view written.
fn store_with_long_document() -> (tempfile::TempDir, std::path::PathBuf, Store) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let store = Store::open(&path).unwrap();
    long_document(&store, "long");
    store.get("notes", "long").unwrap();
    (dir, path, store)
}

/// Type `s` at the start of the body and set `n`, in one transaction.
fn type_and_count(store: &Store, id: &str, s: &str, n: i64) {
    store
        .update("notes", id, |ed| {
            for (i, c) in s.chars().enumerate() {
                ed.text_insert("body", i, &c.to_string())?;
            }
            Ok(ed.set("n", n)?)
        })
        .unwrap();
}

/// Whether the stored view of `id` is marked stale, read from the file by a connection of the test's own.
fn stale_on_disk(path: &std::path::Path, id: &str) -> bool {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("SELECT stale FROM docs WHERE collection = 'notes' AND id = ?1", [id], |r| r.get(0)).unwrap()
}

fn body_start(doc: &Json, n: usize) -> String {
    doc["body"].as_str().unwrap().chars().take(n).collect()
}

#[test]
fn every_read_sees_a_long_document_as_it_is_while_its_view_waits() {
    let (_dir, path, store) = store_with_long_document();
    store.upsert("notes", json!({"_id": "short", "n": 50, "tag": "x"})).unwrap();

    let mut deferred = 0;
    for i in 1..=40i64 {
        type_and_count(&store, "long", "xy", i);
        deferred += usize::from(stale_on_disk(&path, "long"));
        // Every way of reading sees this commit.
        let doc = store.get("notes", "long").unwrap().unwrap();
        assert_eq!(doc["n"], json!(i));
        assert_eq!(doc["body"].as_str().unwrap().chars().count(), BODY + 2 * i as usize);
        assert_eq!(body_start(&doc, 4), if i == 1 { "xyaa" } else { "xyxy" });
        let found = store.find("notes", &Query::filter(&format!("n == {i}")).unwrap()).unwrap();
        assert_eq!(found.len(), 1, "a filter on the field just written");
        assert_eq!(found[0]["_id"], "long");
        let top = store.find("notes", &Query::all().sort_by("n", SortOrder::Descending).unwrap().limit(1)).unwrap();
        assert_eq!(top[0]["_id"], if i > 50 { "long" } else { "short" });
        assert_eq!(top[0]["n"], json!(if i > 50 { i } else { 50 }));
        // `get` wrote the view; the next commit may leave it behind again.
        assert!(!stale_on_disk(&path, "long"));
    }
    assert!(deferred >= 30, "the long document's view waited at only {deferred} of 40 commits");

    // Without reads in between, the view waits across commits and is written when read.
    for i in 41..=45 {
        type_and_count(&store, "long", "z", i);
    }
    assert!(stale_on_disk(&path, "long"));
    let stats = store.storage_stats().unwrap();
    assert!(!stale_on_disk(&path, "long"), "statistics count what the views hold: {stats:?}");
    assert_eq!(store.get("notes", "long").unwrap().unwrap()["n"], json!(45));
}

#[test]
fn a_view_left_behind_survives_the_process_and_another_handle_reads_it_fresh() {
    let (_dir, path, store) = store_with_long_document();
    type_and_count(&store, "long", "hello", 7);
    assert!(stale_on_disk(&path, "long"));

    // A second handle on the same file (another part of the app, another process).
    let other = Store::open(&path).unwrap();
    assert_eq!(other.get("notes", "long").unwrap().unwrap()["n"], json!(7));
    type_and_count(&store, "long", "again", 8);
    assert_eq!(other.find("notes", &Query::filter("n == 8").unwrap()).unwrap().len(), 1);
    drop(other);

    // The process dies with the view behind: nothing but the database is left.
    type_and_count(&store, "long", "last", 9);
    assert!(stale_on_disk(&path, "long"));
    std::mem::forget(store);
    let reopened = Store::open(&path).unwrap();
    let doc = reopened.get("notes", "long").unwrap().unwrap();
    assert_eq!(doc["n"], json!(9));
    assert_eq!(body_start(&doc, 14), "lastagainhello");
    assert_eq!(reopened.find("notes", &Query::filter("n == 9").unwrap()).unwrap().len(), 1);
}

#[test]
fn an_observer_gets_every_commit_and_a_new_one_starts_from_the_current_state() {
    let (_dir, path, store) = store_with_long_document();
    for i in 1..=3 {
        type_and_count(&store, "long", "ab", i);
    }
    assert!(stale_on_disk(&path, "long"));

    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let (first, _handle) = store
        .observe("notes", Query::filter("tag == 'x'").unwrap(), move |event| {
            let n: Vec<Json> = event.updated.iter().filter(|d| d["_id"] == "long").map(|d| d["n"].clone()).collect();
            log.lock().unwrap().extend(n);
        })
        .unwrap();
    assert_eq!(first[0]["n"], json!(3), "the first result is the current state");
    for i in 4..=6 {
        type_and_count(&store, "long", "cd", i);
        // An observed collection's views are written at once.
        assert!(!stale_on_disk(&path, "long"));
    }
    assert_eq!(*seen.lock().unwrap(), vec![json!(4), json!(5), json!(6)]);
}

#[test]
fn an_attachment_named_in_a_commit_whose_view_waits_is_not_collected() {
    let (_dir, path, store) = store_with_long_document();
    let token = store.put_attachment_bytes(&vec![7u8; 50_000], Default::default()).unwrap();
    store.update("notes", "long", |ed| Ok(ed.set("file", token.clone())?)).unwrap();
    assert!(stale_on_disk(&path, "long"), "the view waits: the attachment is not named in it yet");

    // Collected at once when nothing names it (a grace of zero), twice: the first pass marks, the second deletes.
    let now = GarbagePolicy { unreferenced_attachment_ms: 0, stalled_download_ms: 0 };
    for _ in 0..2 {
        store.collect_garbage(&now).unwrap();
    }
    assert!(store.has_attachment(&token).unwrap(), "the document names it");
    assert_eq!(store.attachment_bytes(&token).unwrap(), vec![7u8; 50_000]);

    // Once no document names it, it goes.
    store.update("notes", "long", |ed| Ok(ed.set("file", "none")?)).unwrap();
    for _ in 0..2 {
        store.collect_garbage(&now).unwrap();
    }
    assert!(!store.has_attachment(&token).unwrap());
}

#[test]
fn a_failed_transaction_leaves_the_view_and_the_document_as_they_were() {
    let (_dir, _, store) = store_with_long_document();
    type_and_count(&store, "long", "ok", 1);
    let failed = store.update("notes", "long", |ed| {
        ed.text_insert("body", 0, "lost")?;
        ed.set("n", 2)?;
        Err::<(), _>(shoaldb::Error::InvalidJson("the app changed its mind".into()))
    });
    assert!(failed.is_err());
    type_and_count(&store, "long", "k", 3);
    let doc = store.get("notes", "long").unwrap().unwrap();
    assert_eq!(doc["n"], json!(3));
    assert_eq!(body_start(&doc, 4), "koka");
    assert_eq!(doc["body"].as_str().unwrap().chars().count(), BODY + 3);
}
