//! Ordinary app use must never break sync, lose precision or break a promise: one regression test per defect found
//! by driving several real stores through the public API (issue 11). Each failed on the code before its fix.

use serde_json::json;
use shoaldb::crdt::change::Seg;
use shoaldb::crdt::clock::Dot;
use shoaldb::crdt::sequence::Chars;
use shoaldb::store::Replica;
use shoaldb::{Change, DocChange, Op, Path, PeerId, Store, Timestamp, Value, VersionVector};

fn open(dir: &tempfile::TempDir, name: &str) -> Store {
    Store::open(dir.path().join(name)).unwrap()
}

/// Send everything `from` has that `to` lacks.
fn sync(from: &Store, to: &Store) {
    let changes = from.replica().changes_since(&to.replica().summary().unwrap()).unwrap();
    to.replica().apply_changes(&changes).unwrap();
}

/// Store `a` wrote `c/d` as `{x: 1}`, sent it to `b`, then evicted and unevicted it.
fn evicted_and_accepted_again(dir: &tempfile::TempDir) -> (Store, Store) {
    let (a, b) = (open(dir, "a"), open(dir, "b"));
    a.upsert("c", json!({"_id": "d", "x": 1})).unwrap();
    sync(&a, &b);
    assert!(a.evict("c", "d").unwrap());
    a.unevict("c", "d").unwrap();
    assert_eq!(a.get("c", "d").unwrap(), None);
    (a, b)
}

#[test]
fn evict_unevict_then_edit_keeps_sync_working() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = evicted_and_accepted_again(&dir);
    // Written before the document came back: a write that knew nothing of it, so it merges with what others hold.
    a.upsert("c", json!({"_id": "d", "y": 2})).unwrap();
    assert_ne!(a.author_id().unwrap(), a.peer_id(), "a's changes to d could not follow its evicted ones");
    sync(&a, &b);
    sync(&b, &a);
    let want = json!({"_id": "d", "x": 1, "y": 2});
    assert_eq!(a.get("c", "d").unwrap(), Some(want.clone()));
    assert_eq!(b.get("c", "d").unwrap(), Some(want.clone()));
    // And everything keeps flowing afterwards, in both directions, through a third store too.
    let c = open(&dir, "c3");
    b.update("c", "d", |ed| Ok(ed.set("z", 3i64)?)).unwrap();
    a.update("c", "d", |ed| Ok(ed.set("x", 10i64)?)).unwrap();
    for (from, to) in [(&a, &c), (&b, &c), (&c, &a), (&c, &b), (&a, &b)] {
        sync(from, to);
    }
    let want = json!({"_id": "d", "x": 10, "y": 2, "z": 3});
    for s in [&a, &b, &c] {
        assert_eq!(s.get("c", "d").unwrap(), Some(want.clone()));
    }
}

#[test]
fn evict_unevict_then_edit_after_the_document_came_back() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = evicted_and_accepted_again(&dir);
    sync(&b, &a);
    assert_eq!(a.get("c", "d").unwrap(), Some(json!({"_id": "d", "x": 1})));
    // A's history came back with the document: its next write follows it (a remove takes its own earlier write).
    a.update("c", "d", |ed| Ok(ed.remove("x")?)).unwrap();
    assert_eq!(a.author_id().unwrap(), a.peer_id(), "no new author was needed");
    sync(&a, &b);
    assert_eq!(b.get("c", "d").unwrap(), Some(json!({"_id": "d"})));
}

#[test]
fn path_keys_are_checked_like_keys_in_values() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (open(&dir, "a"), open(&dir, "b"));
    a.upsert("c", json!({"_id": "d", "m": {"k": 1}})).unwrap();
    let long = "k".repeat(shoaldb::crdt::path::MAX_KEY_BYTES + 1);
    let r = a.update("c", "d", |ed| Ok(ed.set("m.``", 1i64)?));
    assert!(r.is_err(), "an empty key in a path is refused");
    let r = a.update("c", "d", |ed| Ok(ed.set(Path::key(&long), 1i64)?));
    assert!(r.is_err(), "an oversize key in a path is refused");
    let r = a.update("c", "d", |ed| Ok(ed.increment(Path::key(""), 1)?));
    assert!(r.is_err());
    let r = a.update("c", "d", |ed| Ok(ed.text_insert(Path::key(&long), 0, "x")?));
    assert!(r.is_err());
    // A key at the limit is fine.
    let max = "k".repeat(shoaldb::crdt::path::MAX_KEY_BYTES);
    a.update("c", "d", |ed| Ok(ed.set(Path::key(&max), 1i64)?)).unwrap();
    // The store still syncs, and reopens.
    sync(&a, &b);
    assert_eq!(b.get("c", "d").unwrap(), a.get("c", "d").unwrap());
    drop(a);
    let a = open(&dir, "a");
    assert!(a.document("c", "d").unwrap().is_some());
    a.update("c", "d", |ed| Ok(ed.set("n", 2i64)?)).unwrap();
}

#[test]
fn a_failed_edit_applies_nothing_of_itself() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir, "a");
    a.upsert("c", json!({"_id": "d", "t": 1})).unwrap();
    let (before, ops_before) =
        (a.get("c", "d").unwrap(), a.replica().changes_since(&Default::default()).unwrap().len());
    a.update("c", "d", |ed| {
        // Each of these fails; the closure goes on (an app may ignore an error and keep editing).
        assert!(ed.set("m.list[3].x", 1i64).is_err());
        assert!(ed.text_insert("m.body", 5, "x").is_err());
        assert!(ed.array_insert("m.arr", 2, &[Value::from(1i64)]).is_err());
        assert!(ed.set("t.x", 1i64).is_err());
        assert!(ed.set("q", Value::Map([("".to_string(), Value::from(1i64))].into())).is_err());
        Ok(())
    })
    .unwrap();
    assert_eq!(a.get("c", "d").unwrap(), before, "nothing of the failed calls is in the document");
    assert_eq!(a.replica().changes_since(&Default::default()).unwrap().len(), ops_before, "nor in a change");
    // A failed call between two good ones keeps the good ones only.
    a.update("c", "d", |ed| {
        ed.set("a", 1i64)?;
        assert!(ed.set("m.list[0]", 1i64).is_err());
        ed.set("b", 2i64)?;
        Ok(())
    })
    .unwrap();
    assert_eq!(a.get("c", "d").unwrap(), Some(json!({"_id": "d", "t": 1, "a": 1, "b": 2})));
}

#[test]
fn floats_are_exact_through_every_read() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir, "a");
    // A small xorshift over the bit patterns of f64: finite values of every magnitude.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut values = Vec::new();
    while values.len() < 2000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let f = f64::from_bits(x);
        if f.is_finite() {
            values.push(f);
        }
    }
    values.extend([0.1, 1.0 / 3.0, f64::MIN_POSITIVE, f64::MAX, f64::MIN, 5e-324, -0.0, 1e21, 123_456_789.123_456_78]);
    a.write(|t| {
        for (i, f) in values.iter().enumerate() {
            t.upsert("f", json!({"_id": format!("{i:05}"), "v": f}))?;
        }
        Ok(())
    })
    .unwrap();
    let listed = a.list("f").unwrap();
    let found = a.find("f", &shoaldb::Query::all()).unwrap();
    for (i, f) in values.iter().enumerate() {
        let id = format!("{i:05}");
        let got = a.get("f", &id).unwrap().unwrap()["v"].as_f64().unwrap();
        assert_eq!(got.to_bits(), f.to_bits(), "get() of {f:e}");
        assert_eq!(listed[i]["v"].as_f64().unwrap().to_bits(), f.to_bits(), "list() of {f:e}");
        assert_eq!(found[i]["v"].as_f64().unwrap().to_bits(), f.to_bits(), "find() of {f:e}");
        let typed = a.document("f", &id).unwrap().unwrap().get("v").unwrap().unwrap();
        assert_eq!(typed.as_f64().unwrap().to_bits(), f.to_bits(), "document().get() of {f:e}");
    }
}

/// A text change from peer 77 that inserts after an item it does not declare among its dependencies.
fn change_outside_its_dependencies(text_item: Dot, deps: VersionVector) -> DocChange {
    let path = vec![Seg::Key("t".into())];
    let ops = vec![Op::InsertText { path, origin_left: Some(text_item), origin_right: None, text: Chars::from("!") }];
    let change = Change { peer: PeerId(77), start: 1, ts: Timestamp::new(1_000, 0), deps, ops };
    DocChange { collection: "c".into(), doc_id: "d".into(), change, signature: None }
}

#[test]
fn validity_of_a_change_does_not_depend_on_delivery_order() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (open(&dir, "a"), open(&dir, "b"), open(&dir, "c"));
    a.upsert("c", json!({"_id": "d"})).unwrap();
    a.update("c", "d", |ed| Ok(ed.text_insert("t", 0, "ab")?)).unwrap();
    let doc = a.document("c", "d").unwrap().unwrap();
    let last_char = doc.version().iter().next().map(|(p, c)| Dot::new(p, c)).unwrap();
    // `b` holds a's text, `c` holds only its creation: the crafted change names a's last character but declares
    // only the document's creation as its dependency.
    sync(&a, &b);
    let creation = a.replica().changes_since(&Default::default()).unwrap().into_iter().next().unwrap();
    c.replica().apply_changes(std::slice::from_ref(&creation)).unwrap();
    let mut deps = VersionVector::new();
    deps.raise(creation.change.peer, creation.change.end());
    let bad = change_outside_its_dependencies(last_char, deps);
    let on_b = b.replica().apply_changes(std::slice::from_ref(&bad));
    let on_c = c.replica().apply_changes(std::slice::from_ref(&bad));
    assert!(on_b.is_err() && on_c.is_err(), "refused everywhere (b: {on_b:?}, c: {on_c:?})");
    // The same reference with honest dependencies is accepted by a store that holds them.
    let honest = change_outside_its_dependencies(last_char, doc.version().clone());
    b.replica().apply_changes(std::slice::from_ref(&honest)).unwrap();
    assert_eq!(b.get("c", "d").unwrap().unwrap()["t"], "ab!");
}

/// The bytes SQLite writes to its WAL for one transaction, measured from an emptied WAL.
fn wal_bytes_of(store: &Store, f: impl FnOnce()) -> u64 {
    store.checkpoint().unwrap();
    let path = store.path();
    let wal = path.with_extension("db-wal");
    let before = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert_eq!(before, 0, "the WAL was emptied");
    f();
    std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0)
}

#[test]
fn a_small_edit_of_a_large_document_writes_little() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.db");
    let a = Store::open(&path).unwrap();
    for i in 0..10u8 {
        let bytes: Vec<u8> = (0..(1 << 20) - 16).map(|j: u32| (j as u8).wrapping_mul(31).wrapping_add(i)).collect();
        a.upsert_value("c", Some("big"), Value::Map([(format!("blob{i}"), Value::from(bytes))].into())).unwrap();
    }
    a.upsert("c", json!({"_id": "big", "title": "ten megabytes"})).unwrap();
    let written = wal_bytes_of(&a, || {
        a.update("c", "big", |ed| Ok(ed.set("title", "renamed")?)).unwrap();
    });
    assert!(written < 512 << 10, "a one-field edit of a 10 MiB document wrote {written} bytes");
    // Reads still give the whole document, exactly.
    let doc = a.get("c", "big").unwrap().unwrap();
    assert_eq!(doc["title"], "renamed");
    assert_eq!(doc["blob3"].as_array().unwrap().len(), (1 << 20) - 16);
    assert_eq!(doc["blob3"][5], json!((5u8).wrapping_mul(31).wrapping_add(3)));
    assert_eq!(
        Some(doc),
        a.document("c", "big").unwrap().unwrap().to_json().map(|mut m| {
            m.insert("_id".into(), json!("big"));
            serde_json::Value::Object(m)
        })
    );
}
