//! Consecutive changes of one author to one document that arrive together are logged as one row (a run, see
//! `store::logrow`) rather than a row each. Everything that reads the log must still see the changes one by one:
//! serving them (from the middle of a run too), loading the document, digests and equivocations, compaction,
//! eviction, statistics — and a log written before runs existed (schema 13) must read the same after the upgrade,
//! compacted documents' records included.

#[path = "common/wires.rs"]
mod wires;

use serde_json::json;
use shoaldb::{CompactionPolicy, DocChange, Replica, Store, Summary};

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path().join("db")).unwrap();
    (dir, s)
}

fn log_rows(dir: &tempfile::TempDir) -> i64 {
    let conn = rusqlite::Connection::open(dir.path().join("db")).unwrap();
    conn.query_row("SELECT count(*) FROM changes", [], |r| r.get(0)).unwrap()
}

/// Who wrote which counters, change by change, in order.
fn spans(changes: &[DocChange]) -> Vec<(String, u64, u64)> {
    let mut out: Vec<_> = changes.iter().map(|c| (c.doc_id.clone(), c.change.start, c.change.end())).collect();
    out.sort();
    out
}

/// An author's store with 30 changes to `c/d` and 5 to `c/e`, each in its own transaction, and those changes.
fn authored() -> (tempfile::TempDir, Store, Vec<DocChange>) {
    let (dir, a) = store();
    for i in 0..30 {
        a.upsert("c", json!({"_id": "d", "v": i, "text": "x".repeat(i)})).unwrap();
        if i % 6 == 0 {
            a.upsert("c", json!({"_id": "e", "v": i})).unwrap();
        }
    }
    let changes = a.replica().changes_since(&Summary::new()).unwrap();
    assert_eq!(changes.len(), 35);
    (dir, a, changes)
}

#[test]
fn changes_received_together_are_one_row_and_read_back_one_by_one() {
    let (_da, a, changes) = authored();
    let (db, b) = store();
    let r = b.replica().apply_changes(&changes).unwrap();
    assert_eq!(r.applied, 35, "{r:?}");
    // `e`'s five changes interleave with `d`'s counters, so `d`'s run breaks at each: 6 runs of `d`, 5 of `e`.
    assert_eq!(log_rows(&db), 11);
    assert_eq!(b.storage_stats().unwrap().log_changes, 35);
    assert_eq!(b.replica().summary().unwrap(), a.replica().summary().unwrap());

    // Served one by one, the whole log and from the middle of a run.
    assert_eq!(spans(&b.replica().changes_since(&Summary::new()).unwrap()), spans(&changes));
    let d: Vec<&DocChange> = changes.iter().filter(|c| c.doc_id == "d").collect();
    let mut have = Summary::new();
    for c in &d[..10] {
        have.insert(c.change.peer, c.change.start, c.change.end());
    }
    let rest = b.replica().changes_since(&have).unwrap();
    let expect: Vec<DocChange> = changes.iter().filter(|c| !d[..10].contains(c)).cloned().collect();
    assert_eq!(spans(&rest), spans(&expect));
    assert_eq!(rest.iter().find(|c| c.change.start == d[10].change.start), Some(d[10]), "the bodies are the changes");

    // A third store catching up from the middle of the runs ends where the author is.
    let (_dc, c) = store();
    c.replica().apply_changes(&changes.iter().filter(|c| d[..10].contains(c)).cloned().collect::<Vec<_>>()).unwrap();
    c.replica().apply_changes(&rest).unwrap();
    assert_eq!(c.get("c", "d").unwrap(), a.get("c", "d").unwrap());

    // Loaded from the log after a reopen.
    let path = db.path().join("db");
    drop(b);
    let b = Store::open(&path).unwrap();
    assert_eq!(b.get("c", "d").unwrap(), a.get("c", "d").unwrap());
    assert_eq!(b.get("c", "e").unwrap(), a.get("c", "e").unwrap());
    // Digests over the author's changes agree whatever the rows that hold them.
    assert_eq!(b.replica().author_digests(None).unwrap(), a.replica().author_digests(None).unwrap());
}

#[test]
fn another_version_of_a_change_inside_a_run_is_refused_and_recorded() {
    let (_da, _a, changes) = authored();
    let (_db, b) = store();
    b.replica().apply_changes(&changes).unwrap();
    let held = changes.iter().filter(|c| c.doc_id == "d").nth(15).unwrap().clone();
    let mut forged = held.clone();
    forged.change.ts = shoaldb::Timestamp(held.change.ts.0 + 1);
    assert_ne!(forged, held);
    let r = b.replica().apply_changes(&[forged.clone(), held.clone()]).unwrap();
    assert_eq!((r.applied, r.duplicates, r.refused), (0, 1, 1), "{r:?}");
    let e = b.equivocations().unwrap();
    assert_eq!(e.len(), 1);
    assert_eq!((e[0].author, e[0].start), (held.change.peer, held.change.start));
    assert_eq!(DocChange::decode(&e[0].held).unwrap(), held, "the held version, cut out of its run");
    assert_eq!(DocChange::decode(&e[0].refused).unwrap(), forged);
}

#[test]
fn runs_are_folded_and_evicted_as_their_changes() {
    let (_da, a, changes) = authored();
    let (db, b) = store();
    b.replica().apply_changes(&changes).unwrap();
    let report = b.compact(&CompactionPolicy { horizon_ms: 0, ..CompactionPolicy::default() }).unwrap();
    assert_eq!((report.documents, report.changes), (2, 35), "{report:?}");
    assert_eq!(log_rows(&db), 0);
    assert_eq!(b.replica().summary().unwrap(), a.replica().summary().unwrap(), "still held, folded");
    // A device that lacks them gets the states, equivalent to the changes.
    let (_dc, c) = store();
    c.replica().apply_changes(&changes[..3]).unwrap();
    let mut engines = wires::engines(&[&b, &c], b"runs");
    let wire = wires::connect(&mut engines, 0, 1);
    wires::settle(&mut engines, &[wire], None);
    assert_eq!(c.get("c", "d").unwrap(), a.get("c", "d").unwrap());
    assert_eq!(c.get("c", "e").unwrap(), a.get("c", "e").unwrap());

    // Runs left in the log go with an evicted document.
    let (dd, d) = store();
    d.replica().apply_changes(&changes).unwrap();
    assert!(d.evict("c", "d").unwrap());
    assert_eq!(log_rows(&dd), 5);
    let e: Vec<DocChange> = changes.iter().filter(|c| c.doc_id == "e").cloned().collect();
    assert_eq!(spans(&d.replica().changes_since(&Summary::new()).unwrap()), spans(&e));
}

#[test]
fn a_log_written_before_runs_reads_the_same_after_the_upgrade() {
    let (_da, a, changes) = authored();
    let (db, b) = store();
    // One transaction per change: rows of one change each, as every store wrote before runs.
    for c in &changes {
        b.replica().apply_changes(std::slice::from_ref(c)).unwrap();
    }
    let digests = b.replica().author_digests(None).unwrap();
    drop(b);
    let path = db.path().join("db");
    {
        // The log as schema 13 laid it out: the hash after the body, the author index carrying it; no tombstone
        // counts.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "BEGIN;
             CREATE TABLE old (
                 seq INTEGER PRIMARY KEY, peer INTEGER NOT NULL, start INTEGER NOT NULL, end INTEGER NOT NULL,
                 doc INTEGER NOT NULL, body BLOB NOT NULL, hash BLOB, sig BLOB, UNIQUE (peer, start));
             INSERT INTO old (seq, peer, start, end, doc, body, hash, sig)
                 SELECT seq, peer, start, end, doc, body, hash, sig FROM changes;
             DROP TABLE changes;
             ALTER TABLE old RENAME TO changes;
             CREATE INDEX changes_by_doc ON changes (doc, seq);
             CREATE INDEX changes_by_author ON changes (peer, start, end, hash);
             ALTER TABLE snapshots DROP COLUMN tombstones;
             DROP TABLE folded;
             DROP TABLE attested; DROP TABLE attested_changes;
             ALTER TABLE docs ADD COLUMN folded BLOB;
             CREATE INDEX docs_folded ON docs (doc) WHERE folded IS NOT NULL;
             DROP INDEX docs_unversioned; ALTER TABLE docs DROP COLUMN version; DROP TABLE unsettled;
             PRAGMA user_version = 13;
             COMMIT;",
        )
        .unwrap();
    }
    let b = Store::open(&path).unwrap();
    assert_eq!(log_rows(&db), 35);
    assert_eq!(spans(&b.replica().changes_since(&Summary::new()).unwrap()), spans(&changes));
    assert_eq!(b.get("c", "d").unwrap(), a.get("c", "d").unwrap());
    assert_eq!(b.replica().author_digests(None).unwrap(), digests);
    // New changes after the upgrade go into runs beside the old rows.
    for i in 0..5 {
        a.upsert("c", json!({"_id": "d", "w": i})).unwrap();
    }
    let more = a.replica().changes_since(&b.replica().summary().unwrap()).unwrap();
    assert_eq!(b.replica().apply_changes(&more).unwrap().applied, 5);
    assert_eq!(log_rows(&db), 36);
    assert_eq!(b.get("c", "d").unwrap(), a.get("c", "d").unwrap());
}

#[test]
fn a_run_across_digest_buckets_counts_in_each() {
    // Digests hash an author's changes in buckets of 4,096 counters. One change of 4,090 operations, then small
    // changes whose counters cross into the second bucket: received together, those are one run starting in the
    // first bucket.
    let (_da, a) = store();
    let big: serde_json::Map<String, serde_json::Value> =
        (0..4090).map(|i| (format!("k{i}"), json!(i))).chain([("_id".to_string(), json!("big"))]).collect();
    a.upsert("c", serde_json::Value::Object(big)).unwrap();
    for i in 0..20 {
        a.upsert("c", json!({"_id": "d", "v": i})).unwrap();
    }
    let changes = a.replica().changes_since(&Summary::new()).unwrap();
    let last = changes.iter().map(|c| c.change.end()).max().unwrap();
    assert!(changes.iter().any(|c| c.doc_id == "d" && c.change.start < 4096) && last >= 4096, "crosses: {last}");
    let (db, b) = store();
    // The big change first, and a digest: from then on, digests are kept bucket by bucket, each hashed again
    // from the rows whose changes start in it.
    let (first, rest) = changes.split_at(1);
    assert_eq!(first[0].doc_id, "big");
    b.replica().apply_changes(first).unwrap();
    b.replica().author_digests(None).unwrap();
    b.replica().apply_changes(rest).unwrap();
    assert_eq!(log_rows(&db), 2);
    assert_eq!(b.replica().author_digests(None).unwrap(), a.replica().author_digests(None).unwrap());
    // Evicting the document drops the whole run from both buckets.
    assert!(b.evict("c", "d").unwrap());
    let (_dc, c) = store();
    c.replica().apply_changes(first).unwrap();
    assert_eq!(b.replica().author_digests(None).unwrap(), c.replica().author_digests(None).unwrap());
}

#[test]
fn folded_records_move_to_their_table_at_the_upgrade() {
    let (_da, a, changes) = authored();
    let (db, b) = store();
    b.replica().apply_changes(&changes).unwrap();
    b.compact(&CompactionPolicy { horizon_ms: 0, ..CompactionPolicy::default() }).unwrap();
    let before = b.storage_stats().unwrap();
    assert_eq!(before.compacted_documents, 2, "{before:?}");
    let summary = b.replica().summary().unwrap();
    drop(b);
    let path = db.path().join("db");
    {
        // As schema 13 kept them: in the documents' rows.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "ALTER TABLE docs ADD COLUMN folded BLOB;
             UPDATE docs SET folded = (SELECT summary FROM folded f WHERE f.doc = docs.doc);
             DROP TABLE folded;
             DROP TABLE attested; DROP TABLE attested_changes;
             CREATE INDEX docs_folded ON docs (doc) WHERE folded IS NOT NULL;
             ALTER TABLE snapshots DROP COLUMN tombstones;
             ALTER TABLE changes DROP COLUMN parts;
             DROP INDEX docs_unversioned; ALTER TABLE docs DROP COLUMN version; DROP TABLE unsettled;
             PRAGMA user_version = 13;",
        )
        .unwrap();
    }
    let b = Store::open(&path).unwrap();
    let after = b.storage_stats().unwrap();
    assert_eq!((after.compacted_documents, after.folded_bytes), (2, before.folded_bytes), "{after:?}");
    assert_eq!(b.replica().summary().unwrap(), summary, "still held");
    // A new device gets the documents' states.
    let (_dc, c) = store();
    let mut engines = wires::engines(&[&b, &c], b"runs");
    let wire = wires::connect(&mut engines, 0, 1);
    wires::settle(&mut engines, &[wire], None);
    assert_eq!(c.get("c", "d").unwrap(), a.get("c", "d").unwrap());
    assert_eq!(c.get("c", "e").unwrap(), a.get("c", "e").unwrap());
}
