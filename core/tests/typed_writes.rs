//! Writing back a whole value (as typed SDK layers do): only the fields that differ from the stored document are
//! written, so a field written back unchanged cannot beat a concurrent edit of it on another device.

use serde_json::json;
use shoaldb::store::Replica;
use shoaldb::Store;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Store::open(dir.path().join("db")).expect("open");
    (dir, s)
}

fn sync(a: &Store, b: &Store) {
    let to_b = a.replica().changes_since(&b.replica().summary().expect("summary")).expect("changes");
    b.replica().apply_changes(&to_b).expect("apply");
    let to_a = b.replica().changes_since(&a.replica().summary().expect("summary")).expect("changes");
    a.replica().apply_changes(&to_a).expect("apply");
}

fn doc(s: &Store) -> serde_json::Value {
    s.get("tasks", "t1").expect("get").expect("exists")
}

/// A writes back the whole task with a new title (and the stale `done` and `tags.home`), B concurrently edits
/// `done` and a nested field; B writes later, so a plain upsert by A would be the one overwritten only where A
/// wrote — here A must not have written `done` or `tags.home` at all.
fn concurrent_write_back(changed_only: bool) -> serde_json::Value {
    let (_da, a) = store();
    let (_db, b) = store();
    a.upsert("tasks", json!({"_id": "t1", "title": "a", "done": false, "tags": {"home": false, "work": true}, "n": 1}))
        .expect("create");
    sync(&a, &b);
    b.update("tasks", "t1", |ed| {
        ed.set("done", true)?;
        ed.set("tags.home", true)?;
        Ok(())
    })
    .expect("b edits");
    // A's clock runs later than B's: without the diff, A's stale values would win the registers.
    std::thread::sleep(std::time::Duration::from_millis(5));
    let back = json!({"_id": "t1", "title": "b", "done": false, "tags": {"home": false, "work": false}, "n": 1});
    if changed_only {
        a.upsert_changed("tasks", back).expect("write back");
    } else {
        a.upsert("tasks", back).expect("write back");
    }
    sync(&a, &b);
    assert_eq!(doc(&a), doc(&b), "the replicas converge");
    doc(&a)
}

#[test]
fn fields_written_back_unchanged_do_not_beat_a_concurrent_edit() {
    let merged = concurrent_write_back(true);
    assert_eq!(merged["title"], "b", "A's change");
    assert_eq!(merged["tags"]["work"], false, "A's nested change");
    assert_eq!(merged["done"], true, "B's concurrent edit survives");
    assert_eq!(merged["tags"]["home"], true, "B's concurrent nested edit survives");
    assert_eq!(merged["n"], 1);
}

#[test]
fn a_plain_upsert_writes_every_field_and_so_can_lose_the_concurrent_edit() {
    // The contrast that makes the test above meaningful: the whole value, written back, wins every register.
    let merged = concurrent_write_back(false);
    assert_eq!(merged["done"], false);
    assert_eq!(merged["tags"]["home"], false);
}

#[test]
fn an_unchanged_write_back_writes_nothing_and_new_documents_are_inserted() {
    let (_d, s) = store();
    let id = s.upsert_changed("tasks", json!({"title": "new"})).expect("insert without id");
    assert_eq!(s.get("tasks", &id).expect("get").expect("exists")["title"], "new");
    s.upsert_changed("tasks", json!({"_id": "t1", "title": "a", "meta": {"x": 1}})).expect("insert with id");
    let before = s.replica().summary().expect("summary");
    s.upsert_changed("tasks", json!({"_id": "t1", "title": "a", "meta": {"x": 1}})).expect("same again");
    assert!(
        s.replica().changes_since(&before).expect("changes").is_empty(),
        "writing back an equal value records no change"
    );
    // Fields the value lacks are kept; a value that is not an object is refused.
    s.upsert_changed("tasks", json!({"_id": "t1", "title": "b"})).expect("partial");
    assert_eq!(doc(&s), json!({"_id": "t1", "title": "b", "meta": {"x": 1}}));
    assert!(s.upsert_changed("tasks", json!([1, 2])).is_err());
}

#[test]
fn an_object_over_a_register_is_written_whole() {
    // `meta` holds one JSON object as a register (not a map): writing a changed object must replace it whole,
    // never with only the differing entries.
    let (_d, s) = store();
    let meta = shoaldb::Value::Register(shoaldb::Scalar::from_json(&json!({"a": 1, "b": 2})));
    s.upsert_value("tasks", Some("t1"), shoaldb::Value::Map([("meta".to_string(), meta)].into())).expect("create");
    s.upsert_changed("tasks", json!({"_id": "t1", "meta": {"a": 1, "b": 3}})).expect("write back");
    assert_eq!(doc(&s)["meta"], json!({"a": 1, "b": 3}));
}
