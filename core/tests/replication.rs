//! The replication interface: a compact summary, exactly the missing changes, idempotent out-of-order apply.

use serde_json::json;
use shoaldb::store::Replica;
use shoaldb::Store;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path().join("db")).unwrap();
    (dir, s)
}

#[test]
fn export_is_exactly_what_the_other_lacks_and_the_summary_stays_small() {
    let (_a, a) = store();
    let (_b, b) = store();
    for i in 0..300 {
        a.upsert("c", json!({"_id": format!("d{}", i % 40), "v": i})).unwrap();
    }
    let changes = a.replica().changes_since(&b.replica().summary().unwrap()).unwrap();
    assert_eq!(changes.len(), 300);
    assert_eq!(b.replica().apply_changes(&changes).unwrap().applied, 300);
    // Nothing is missing any more, in either direction.
    assert!(a.replica().changes_since(&b.replica().summary().unwrap()).unwrap().is_empty());
    assert!(b.replica().changes_since(&a.replica().summary().unwrap()).unwrap().is_empty());
    // One more edit on each side: exactly one change each way.
    a.upsert("c", json!({"_id": "d1", "w": 1})).unwrap();
    b.upsert("c", json!({"_id": "d2", "w": 2})).unwrap();
    let to_b = a.replica().changes_since(&b.replica().summary().unwrap()).unwrap();
    let to_a = b.replica().changes_since(&a.replica().summary().unwrap()).unwrap();
    assert_eq!((to_b.len(), to_a.len()), (1, 1));
    b.replica().apply_changes(&to_b).unwrap();
    a.replica().apply_changes(&to_a).unwrap();
    assert_eq!(a.list("c").unwrap(), b.list("c").unwrap());
    // 302 changes from two authors summarise in a few dozen bytes.
    let size = a.replica().summary().unwrap().encode().len();
    assert!(size <= 40, "summary is {size} bytes");
}

#[test]
fn reverse_order_delivery_waits_for_dependencies() {
    let (_a, a) = store();
    let (_b, b) = store();
    a.upsert("c", json!({"_id": "x"})).unwrap();
    for i in 0..20 {
        a.update("c", "x", |d| Ok(d.text_insert("t", i, "ab")?)).unwrap();
    }
    let mut changes = a.replica().changes_since(&b.replica().summary().unwrap()).unwrap();
    changes.reverse();
    let (last, rest) = changes.split_last().unwrap();
    let r = b.replica().apply_changes(rest).unwrap();
    assert_eq!((r.applied, r.pending), (0, 20), "nothing can apply before the document's first change");
    assert!(b.get("c", "x").unwrap().is_none());
    let r = b.replica().apply_changes(std::slice::from_ref(last)).unwrap();
    assert_eq!(r.applied, 21);
    assert_eq!(a.get("c", "x").unwrap(), b.get("c", "x").unwrap());
    assert!(b.replica().changes_since(&a.replica().summary().unwrap()).unwrap().is_empty());
}

#[test]
fn evicted_documents_leave_the_summary_and_ignore_incoming_changes() {
    let (_a, a) = store();
    let (_b, b) = store();
    a.upsert("c", json!({"_id": "keep", "v": 1})).unwrap();
    a.upsert("c", json!({"_id": "drop", "v": 2})).unwrap();
    b.replica().apply_changes(&a.replica().changes_since(&b.replica().summary().unwrap()).unwrap()).unwrap();
    assert!(b.evict("c", "drop").unwrap());
    // b no longer claims the evicted document's change, so a would send it again...
    let again = a.replica().changes_since(&b.replica().summary().unwrap()).unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].doc_id, "drop");
    // ...but b ignores it while the document is evicted, and takes it once un-evicted.
    assert_eq!(b.replica().apply_changes(&again).unwrap().ignored_evicted, 1);
    assert!(b.get("c", "drop").unwrap().is_none());
    b.unevict("c", "drop").unwrap();
    assert_eq!(b.replica().apply_changes(&again).unwrap().applied, 1);
    assert_eq!(b.get("c", "drop").unwrap().unwrap()["v"], 2);
}
