//! Hostile data (issue 13): values nested too deep, changes that cost far more to apply than they weigh, counters past
//! what SQLite stores, and corrupt rows on disk. Each test plays the attack through the public API (a change decoded
//! from bytes as it would arrive from another device, or an app write) and asserts the safe outcome: a typed error
//! that changes nothing, and a victim that keeps reading and writing.

use serde_json::json;
use shoaldb::crdt::change::{Seg, MAX_BATCH_COST, MAX_CHANGE_COST, MAX_COUNTER};
use shoaldb::crdt::document::{MAX_DOC_ITEMS, MAX_LOCAL_DOC_ITEMS};
use shoaldb::crdt::sequence::{Chars, IdSpan};
use shoaldb::crdt::value::MAX_VALUE_DEPTH;
use shoaldb::store::Replica;
use shoaldb::Kind;
use shoaldb::{
    Change, ChangeError, DocChange, Error, Op, PeerId, Query, Scalar, Store, Timestamp, Value, VersionVector,
};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Counts the bytes allocated by threads that ask for it, to measure (not time) what applying a change costs.
struct Counting;

thread_local! {
    /// (counting?, live bytes, peak live bytes) of this thread.
    static COUNT: Cell<(bool, isize, isize)> = const { Cell::new((false, 0, 0)) };
}

fn count(delta: isize) {
    let _ = COUNT.try_with(|c| {
        let (on, live, peak) = c.get();
        if on {
            c.set((on, live + delta, peak.max(live + delta)));
        }
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count(l.size() as isize);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        count(-(l.size() as isize));
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        count(new as isize - l.size() as isize);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The peak of bytes allocated and still held while `f` runs on this thread (what `f` keeps counts too).
fn peak_bytes<R>(f: impl FnOnce() -> R) -> (R, usize) {
    COUNT.with(|c| c.set((true, 0, 0)));
    let r = f();
    let (_, _, peak) = COUNT.with(|c| c.replace((false, 0, 0)));
    (r, peak.max(0) as usize)
}

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path().join("db")).unwrap();
    (dir, s)
}

/// Run `f` on a thread with a small stack: deep recursion overflows it (and aborts the test process) long before it
/// would overflow a main thread's 8 MiB, so a pass proves the work is not recursive in the input's depth.
fn on_small_stack<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    on_stack(256 << 10, f)
}

/// Run `f` on a thread with a stack of `bytes`.
fn on_stack<R: Send + 'static>(bytes: usize, f: impl FnOnce() -> R + Send + 'static) -> R {
    std::thread::Builder::new().stack_size(bytes).spawn(f).unwrap().join().unwrap()
}

fn change(peer: u64, start: u64, deps: VersionVector, ops: Vec<Op>) -> Change {
    Change { peer: PeerId(peer), start, ts: Timestamp::new(1_000, 0), deps, ops }
}

/// A change creating document `c/d` with a field `a` holding `value`.
fn create_with(peer: u64, value: Scalar) -> Change {
    change(
        peer,
        1,
        VersionVector::new(),
        vec![Op::Make { path: vec![], kind: shoaldb::Kind::Map }, Op::Set { path: vec![Seg::Key("a".into())], value }],
    )
}

/// A scalar nested `depth` lists deep (built without recursion, and small enough to drop recursively).
fn nested(depth: usize) -> Scalar {
    let mut v = Scalar::Int(1);
    for _ in 0..depth {
        v = Scalar::List(vec![v]);
    }
    v
}

/// The encoding of a change whose one register value is a list nested `depth` deep: built by splicing bytes, since
/// such a value cannot even be dropped without overflowing a stack.
fn deeply_nested_change_bytes(depth: usize) -> Vec<u8> {
    let mut bytes =
        DocChange { collection: "c".into(), doc_id: "d".into(), change: create_with(7, Scalar::Null), signature: None }
            .encode();
    // The value is the last thing encoded: `Null` is its variant index 0. Replace it with `depth` times
    // "List (variant 6) of one element", then the `Null`.
    assert_eq!(bytes.pop(), Some(0));
    for _ in 0..depth {
        bytes.extend_from_slice(&[6, 1]);
    }
    bytes.push(0);
    bytes
}

#[test]
fn a_value_nested_a_million_deep_is_refused_while_decoding_without_deep_recursion() {
    let bytes = deeply_nested_change_bytes(1_000_000);
    assert!(bytes.len() > 2_000_000);
    let err = on_small_stack(move || DocChange::decode(&bytes).map(|_| ()));
    assert!(matches!(err, Err(Error::Change(ChangeError::Corrupt(_)))), "{err:?}");
    let err = on_small_stack(|| Change::decode(&deeply_nested_change_bytes(1_000_000)[4..]).map(|_| ()));
    assert!(err.is_err());
    // Exactly at the bound it decodes; one more level is refused.
    let ok = DocChange::decode(&deeply_nested_change_bytes(MAX_VALUE_DEPTH)).expect("a value at the bound decodes");
    assert_eq!(ok.change.ops.len(), 2);
    assert!(DocChange::decode(&deeply_nested_change_bytes(MAX_VALUE_DEPTH + 1)).is_err());
}

#[test]
fn a_register_value_nested_too_deep_is_refused_locally_and_remotely_and_the_collection_keeps_working() {
    let (_d, s) = store();
    s.upsert("c", json!({"_id": "ok", "n": 1})).unwrap();
    // Remote: a change built in memory (as a relay's decoder would hand it over) with a value one level too deep.
    let deep = DocChange {
        collection: "c".into(),
        doc_id: "d".into(),
        change: create_with(7, nested(MAX_VALUE_DEPTH + 1)),
        signature: None,
    };
    let before = s.replica().summary().unwrap();
    let err = s.replica().apply_changes(&[deep]).unwrap_err();
    assert!(matches!(err, Error::Change(ChangeError::TooLarge(_)) | Error::Change(ChangeError::Corrupt(_))), "{err:?}");
    assert_eq!(s.replica().summary().unwrap(), before, "a refused change changes nothing");
    // Local: deeper than the bound by JSON (what the FFI passes) and by typed value.
    let mut j = json!(1);
    for _ in 0..=MAX_VALUE_DEPTH {
        j = json!([j]);
    }
    let err = s.upsert("c", json!({"_id": "x", "a": j})).unwrap_err();
    assert!(matches!(err, Error::Document(shoaldb::DocError::InvalidValue(_))), "{err:?}");
    let err = s.upsert_value(
        "c",
        Some("y"),
        Value::Map([("a".to_string(), Value::Register(nested(MAX_VALUE_DEPTH + 1)))].into()),
    );
    assert!(matches!(err, Err(Error::Document(shoaldb::DocError::InvalidValue(_)))), "{err:?}");
    let err = s.update("c", "ok", |d| Ok(d.set("deep", nested(MAX_VALUE_DEPTH + 1))?));
    assert!(err.is_err());
    // The deepest value allowed, at the deepest path allowed, renders a view that every read parses.
    let path: Vec<String> = (0..shoaldb::crdt::path::MAX_PATH_DEPTH).map(|i| format!("k{i}")).collect();
    s.update("c", "ok", |d| Ok(d.set(path.join(".").as_str(), nested(MAX_VALUE_DEPTH))?)).unwrap();
    s.upsert("c", json!({"_id": "z", "a": 2})).unwrap();
    assert_eq!(s.list("c").unwrap().len(), 2);
    assert_eq!(s.find("c", &Query::filter("n == 1").unwrap()).unwrap().len(), 1);
    assert!(s.get("c", "ok").unwrap().is_some());
    // And the whole store replicates.
    let (_d2, t) = store();
    t.replica().apply_changes(&s.replica().changes_since(&Default::default()).unwrap()).unwrap();
    assert_eq!(t.list("c").unwrap(), s.list("c").unwrap());
}

#[test]
fn checked_json_conversion_refuses_deep_values_with_a_typed_error() {
    let mut j = json!({"x": 1});
    for _ in 0..MAX_VALUE_DEPTH {
        j = json!([j]);
    }
    assert!(Scalar::try_from_json(&j).is_err(), "one level over the bound");
    assert!(Scalar::try_from_json(&j[0]).is_ok(), "at the bound");
    assert!(Value::try_from_json(&json!({"a": {"b": j[0].clone()}})).is_ok());
    let mut m = json!(1);
    for _ in 0..=shoaldb::crdt::path::MAX_PATH_DEPTH {
        m = json!({ "m": m });
    }
    assert!(Value::try_from_json(&m).is_err(), "maps nested deeper than a path may reach");
}

/// A document `c/d` made by peer 7 with an empty array `l` and an empty text `t`, as one change.
fn with_containers() -> Change {
    change(
        7,
        1,
        VersionVector::new(),
        vec![
            Op::Make { path: vec![], kind: Kind::Map },
            Op::Make { path: vec![Seg::Key("l".into())], kind: Kind::Array },
            Op::Make { path: vec![Seg::Key("t".into())], kind: Kind::Text },
        ],
    )
}

fn after(c: &Change) -> VersionVector {
    let mut vv = c.deps.clone();
    vv.raise(c.peer, c.end());
    vv
}

fn insert_elems(peer: u64, start: u64, deps: VersionVector, count: u64) -> Change {
    change(
        peer,
        start,
        deps,
        vec![Op::InsertElems { path: vec![Seg::Key("l".into())], origin_left: None, origin_right: None, count }],
    )
}

fn insert_text(peer: u64, start: u64, deps: VersionVector, text: &str) -> Change {
    change(
        peer,
        start,
        deps,
        vec![Op::InsertText {
            path: vec![Seg::Key("t".into())],
            origin_left: None,
            origin_right: None,
            text: Chars::from(text),
        }],
    )
}

fn doc_change(c: Change) -> DocChange {
    DocChange { collection: "c".into(), doc_id: "d".into(), change: c, signature: None }
}

#[test]
fn a_38_byte_insert_of_four_million_elements_is_refused_when_decoded() {
    let base = with_containers();
    let attack = doc_change(insert_elems(7, 4, after(&base), 1 << 22));
    let bytes = attack.encode();
    assert!(bytes.len() < 64, "{} bytes", bytes.len());
    let err = DocChange::decode(&bytes).unwrap_err();
    assert!(matches!(err, Error::Change(ChangeError::TooLarge(_))), "{err:?}");
    // Built in memory and handed to the store, it is refused as well, and nothing changes.
    let (_d, s) = store();
    s.replica().apply_changes(&[doc_change(base.clone())]).unwrap();
    let before = s.replica().summary().unwrap();
    assert!(s.replica().apply_changes(&[attack]).is_err());
    assert_eq!(s.replica().summary().unwrap(), before);
    // The largest insert the cost allows is applied within its bound: measured, not timed.
    let most = (MAX_CHANGE_COST - 1024) / shoaldb::crdt::change::ELEM_COST;
    let mut doc = shoaldb::Document::new();
    doc.apply(&base).unwrap();
    let big = insert_elems(7, 4, after(&base), most);
    assert!(big.cost() <= MAX_CHANGE_COST);
    let (r, peak) = peak_bytes(|| doc.apply(&big));
    assert_eq!(r, Ok(shoaldb::Applied::Applied));
    let per_elem = peak as f64 / most as f64;
    eprintln!("{most} elements: peak {peak} bytes, {per_elem:.1} per element");
    assert!(peak as u64 <= MAX_CHANGE_COST, "peak {peak} bytes over the change cost bound");
}

#[test]
fn deletes_naming_the_same_ids_again_and_again_are_refused_when_decoded() {
    let base = with_containers();
    let text = "x".repeat(100_000);
    let ins = insert_text(7, 4, after(&base), &text);
    let span = IdSpan { peer: PeerId(7), start: 4, len: 100_000 };
    let del = |n: usize| {
        change(9, 1, after(&ins), vec![Op::DeleteText { path: vec![Seg::Key("t".into())], spans: vec![span; n] }])
    };
    // A thousand spans over the same 100,000 ids: 10^8 ids named in 20 KB.
    let err = DocChange::decode(&doc_change(del(1000)).encode()).unwrap_err();
    assert!(matches!(err, Error::Change(ChangeError::TooLarge(_))), "{err:?}");
    // Fewer, within the cost, but naming ids twice.
    let err = DocChange::decode(&doc_change(del(100)).encode()).unwrap_err();
    assert!(matches!(err, Error::Change(ChangeError::Corrupt(_))), "{err:?}");
    // Once is fine, and the victim applies it and keeps writing.
    let (_d, s) = store();
    let ok = DocChange::decode(&doc_change(del(1)).encode()).unwrap();
    s.replica().apply_changes(&[doc_change(base), doc_change(ins.clone()), ok]).unwrap();
    assert_eq!(s.get("c", "d").unwrap().unwrap()["t"], json!(""));
    s.update("c", "d", |d| Ok(d.text_insert("t", 0, "still writes")?)).unwrap();
    // A span over a hundred thousand ids that do not exist is refused as inconsistent.
    let ghost = change(
        9,
        2,
        after(&doc_change(del(1)).change),
        vec![Op::DeleteText {
            path: vec![Seg::Key("t".into())],
            spans: vec![IdSpan { peer: PeerId(7), start: 200_000, len: 100_000 }],
        }],
    );
    assert!(s.replica().apply_changes(&[doc_change(ghost)]).is_err());
}

#[test]
fn counters_past_i64_max_are_refused() {
    let mut c = create_with(7, Scalar::Int(1));
    c.start = MAX_COUNTER - 1;
    assert!(Change::decode(&c.encode()).is_ok(), "the last two counters SQLite stores");
    c.start = MAX_COUNTER;
    assert!(matches!(Change::decode(&c.encode()), Err(ChangeError::Corrupt(_))));
    c.start = 1 << 63;
    assert!(matches!(Change::decode(&c.encode()), Err(ChangeError::Corrupt(_))));
    let mut deps = VersionVector::new();
    deps.raise(PeerId(3), u64::MAX);
    let c = change(7, 1, deps, vec![Op::Make { path: vec![], kind: Kind::Map }]);
    assert!(matches!(Change::decode(&c.encode()), Err(ChangeError::Corrupt(_))));
    let del = change(
        7,
        5,
        VersionVector::new(),
        vec![Op::DeleteText {
            path: vec![Seg::Key("t".into())],
            spans: vec![IdSpan { peer: PeerId(3), start: MAX_COUNTER, len: 2 }],
        }],
    );
    assert!(matches!(Change::decode(&del.encode()), Err(ChangeError::Corrupt(_))));
}

#[test]
fn a_batch_costing_more_than_its_bound_is_refused_whole_before_anything_is_applied() {
    let (_d, s) = store();
    s.upsert("c", json!({"_id": "mine", "n": 1})).unwrap();
    let before = s.replica().summary().unwrap();
    let per = (MAX_CHANGE_COST - 4096) / shoaldb::crdt::change::ELEM_COST;
    let mut batch = Vec::new();
    for i in 0..(MAX_BATCH_COST / MAX_CHANGE_COST + 1) {
        let base = with_containers();
        let ins = insert_elems(7, 4, after(&base), per);
        let id = format!("d{i}");
        batch.push(DocChange { collection: "c".into(), doc_id: id.clone(), change: base, signature: None });
        batch.push(DocChange { collection: "c".into(), doc_id: id, change: ins, signature: None });
    }
    let err = s.replica().apply_changes(&batch).unwrap_err();
    assert!(matches!(err, Error::Change(ChangeError::TooLarge(_))), "{err:?}");
    assert_eq!(s.replica().summary().unwrap(), before, "nothing of the batch applied");
    assert_eq!(s.list("c").unwrap().len(), 1);
    s.upsert("c", json!({"_id": "mine", "n": 2})).unwrap();
}

#[test]
fn a_document_cannot_grow_past_its_item_bound() {
    let base = with_containers();
    let mut doc = shoaldb::Document::new();
    doc.apply(&base).unwrap();
    let chunk = "y".repeat(1 << 22);
    let mut last = base.clone();
    while doc.items() + (1 << 22) <= MAX_DOC_ITEMS {
        let c = insert_text(7, last.end() + 1, after(&last), &chunk);
        assert_eq!(doc.apply(&c), Ok(shoaldb::Applied::Applied));
        last = c;
    }
    let over = insert_text(7, last.end() + 1, after(&last), &chunk);
    let err = doc.apply(&over).unwrap_err();
    assert!(matches!(err, shoaldb::DocError::Change(ChangeError::TooLarge(_))), "{err:?}");
    assert_eq!(doc.version(), &after(&last), "the refused change changed nothing");
    // Registers still take writes.
    let set =
        change(7, last.end() + 1, after(&last), vec![Op::Set { path: vec![Seg::Key("r".into())], value: 1.into() }]);
    assert_eq!(doc.apply(&set), Ok(shoaldb::Applied::Applied));
}

#[test]
fn local_edits_stay_within_what_other_devices_accept() {
    let (_d, s) = store();
    // An import of 600,000 elements in one write would make a change other devices refuse: refused here, typed.
    let items: Vec<Value> = (0..600_000).map(|i| Value::from(i as i64)).collect();
    let err = s.update("c", "x", |d| Ok(d.array_push("l", &items)?)).unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    s.upsert("c", json!({"_id": "x"})).unwrap();
    let err = s.update("c", "x", |d| Ok(d.array_push("l", &items)?)).unwrap_err();
    assert!(matches!(err, Error::Change(ChangeError::TooLarge(_))), "{err:?}");
    let err = s.upsert_value("c", Some("y"), Value::Map([("l".to_string(), Value::Array(items))].into())).unwrap_err();
    assert!(matches!(err, Error::Change(ChangeError::TooLarge(_))), "{err:?}");
    assert_eq!(s.list("c").unwrap(), vec![json!({"_id": "x"})]);
    // Honest large writes work and replicate: 100,000 elements, a paste of 1 MiB of text, deleting it all.
    let items: Vec<Value> = (0..100_000).map(|i| Value::from(i as i64)).collect();
    s.update("c", "x", |d| Ok(d.array_push("l", &items)?)).unwrap();
    let text = "héllo wörld ".repeat((1 << 20) / 14);
    s.update("c", "x", |d| Ok(d.text_insert("t", 0, &text)?)).unwrap();
    s.update("c", "x", |d| Ok(d.text_splice("t", 0, text.chars().count(), "short")?)).unwrap();
    s.update("c", "x", |d| Ok(d.array_delete("l", 0, 100_000)?)).unwrap();
    let (_d2, t) = store();
    t.replica().apply_changes(&s.replica().changes_since(&Default::default()).unwrap()).unwrap();
    assert_eq!(t.get("c", "x").unwrap(), s.get("c", "x").unwrap());
    assert_eq!(t.get("c", "x").unwrap().unwrap()["t"], json!("short"));
    // Text up to the local document bound, then no more.
    let chunk = "z".repeat(1 << 22);
    let mut doc = shoaldb::Document::new();
    let mut next = 1;
    loop {
        let mut ed = doc.edit(PeerId(1), next, Timestamp::new(1, 0));
        let r = ed.text_insert("t", 0, &chunk);
        next = ed.next_counter();
        drop(ed);
        if r.is_err() {
            assert!(matches!(r, Err(shoaldb::DocError::Change(ChangeError::TooLarge(_)))), "{r:?}");
            break;
        }
    }
    assert!(doc.items() <= MAX_LOCAL_DOC_ITEMS && doc.items() + (1 << 22) > MAX_LOCAL_DOC_ITEMS);
}

#[test]
fn a_document_with_a_corrupt_view_is_quarantined_and_the_rest_keeps_working_and_syncing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let s = Store::open(&path).unwrap();
    for i in 0..3 {
        s.upsert("c", json!({"_id": format!("d{i}"), "n": i})).unwrap();
    }
    let (_d2, peer) = store();
    peer.replica().apply_changes(&s.replica().changes_since(&Default::default()).unwrap()).unwrap();
    drop(s);
    let db = rusqlite::Connection::open(&path).unwrap();
    assert_eq!(db.execute("UPDATE docs SET view = '{\"_id\": \"d1\", \"n\": [[[' WHERE id = 'd1'", []).unwrap(), 1);
    drop(db);
    let s = Store::open(&path).unwrap();
    let ids: Vec<_> = s.list("c").unwrap().into_iter().map(|d| d["_id"].clone()).collect();
    assert_eq!(ids, vec![json!("d0"), json!("d2")], "the corrupt document is skipped, the others listed");
    assert_eq!(s.find("c", &Query::filter("n >= 0").unwrap()).unwrap().len(), 2);
    assert_eq!(s.get("c", "d1").unwrap(), None);
    // Queries in SQL cannot read the collection; they read it in memory, skipping the damaged row. An index cannot
    // be built over it: a typed error, and nothing changes.
    let sorted = Query::filter("n >= 0").unwrap().sort_by("n", shoaldb::SortOrder::Descending).unwrap().limit(1);
    assert_eq!(s.find("c", &sorted).unwrap(), vec![json!({"_id": "d2", "n": 2})]);
    assert!(matches!(s.create_index("c", &["n"]), Err(shoaldb::Error::Corrupt(_))));
    assert!(s.indexes().unwrap().is_empty());
    let q = s.quarantined().unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!((q[0].collection.as_str(), q[0].id.as_str()), ("c", "d1"));
    // The store keeps writing and syncing, both ways.
    s.upsert("c", json!({"_id": "d3", "n": 3})).unwrap();
    peer.upsert("c", json!({"_id": "p", "n": 9})).unwrap();
    let o = observe_count(&s);
    peer.replica().apply_changes(&s.replica().changes_since(&peer.replica().summary().unwrap()).unwrap()).unwrap();
    s.replica().apply_changes(&peer.replica().changes_since(&s.replica().summary().unwrap()).unwrap()).unwrap();
    assert_eq!(s.list("c").unwrap().len(), 4);
    assert_eq!(peer.list("c").unwrap().len(), 5);
    assert!(o.0.len() >= 3);
    // Writing the document again renders a good view: it leaves quarantine.
    s.upsert("c", json!({"_id": "d1", "n": 1})).unwrap();
    assert!(s.quarantined().unwrap().is_empty());
    assert_eq!(s.get("c", "d1").unwrap(), peer.get("c", "d1").unwrap());
    assert!(s.create_index("c", &["n"]).unwrap());
    assert_eq!(s.find("c", &sorted).unwrap(), vec![json!({"_id": "p", "n": 9})]);
}

/// Observe the whole collection `c`: the initial result.
fn observe_count(s: &Store) -> (Vec<serde_json::Value>, shoaldb::store::ObserverHandle) {
    s.observe("c", Query::all(), |_| {}).unwrap()
}

#[test]
fn a_corrupt_snapshot_is_rebuilt_from_the_change_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let s = Store::open(&path).unwrap();
    s.upsert("c", json!({"_id": "d", "big": "x".repeat(8192)})).unwrap();
    for i in 0..5 {
        s.update("c", "d", |d| Ok(d.increment("n", i)?)).unwrap();
    }
    let want = s.get("c", "d").unwrap();
    drop(s);
    let db = rusqlite::Connection::open(&path).unwrap();
    assert_eq!(db.execute("UPDATE snapshots SET state = x'01ffffffff'", []).unwrap(), 1, "a snapshot was written");
    drop(db);
    let s = Store::open(&path).unwrap();
    assert_eq!(s.get("c", "d").unwrap(), want);
    let doc = s.document("c", "d").unwrap().unwrap();
    assert_eq!(doc.get("n").unwrap(), Some(json!(10)));
    s.update("c", "d", |d| Ok(d.increment("n", 1)?)).unwrap();
    assert_eq!(s.get("c", "d").unwrap().unwrap()["n"], json!(11));
    assert!(s.quarantined().unwrap().is_empty());
    // Damage the log too: now it is quarantined, and the others are not affected.
    s.upsert("c", json!({"_id": "other"})).unwrap();
    drop(s);
    let db = rusqlite::Connection::open(&path).unwrap();
    db.execute("UPDATE snapshots SET state = x'01ffffffff'", []).unwrap();
    db.execute("UPDATE changes SET body = x'01ff' WHERE doc = (SELECT doc FROM docs WHERE id = 'd')", []).unwrap();
    drop(db);
    let s = Store::open(&path).unwrap();
    let q = s.quarantined().unwrap();
    assert_eq!(q.iter().map(|q| q.id.as_str()).collect::<Vec<_>>(), vec!["d"]);
    s.upsert("c", json!({"_id": "other", "ok": true})).unwrap();
    assert_eq!(s.list("c").unwrap().len(), 2, "its last view still reads");
}

#[test]
fn a_snapshot_nested_a_million_fields_deep_is_refused_without_deep_recursion() {
    // An empty document encodes as the version byte, the root field (an empty register and four absent
    // containers: five zero bytes), then its version vector.
    let empty = shoaldb::Document::new().encode();
    assert_eq!(&empty[1..6], &[0, 0, 0, 0, 0]);
    // A field holding a map of one key `a` to a field nested `levels` deep, in postcard's encoding of `Field`.
    let nested = |levels: usize| {
        let mut bytes = vec![empty[0]];
        for _ in 0..levels {
            bytes.extend_from_slice(&[0, 1, 1, 1, b'a']); // empty register, Some(map), 1 entry, key "a"
        }
        bytes.extend_from_slice(&[0, 0, 0, 0, 0]);
        for _ in 0..levels {
            bytes.extend_from_slice(&[0, 0, 0]); // no array, text, counter
        }
        bytes.extend_from_slice(&empty[6..]);
        bytes
    };
    assert!(shoaldb::Document::decode(&nested(50)).is_ok(), "the construction decodes at a sane depth");
    // Decoding a field takes several serde frames, large in a debug build: the bound (the deepest a path goes)
    // needs more than 256 KiB there, but a fixed amount, where a million levels would need gigabytes.
    let bytes = nested(1_000_000);
    let r = on_stack(4 << 20, move || shoaldb::Document::decode(&bytes).map(|_| ()));
    assert!(matches!(r, Err(ChangeError::Corrupt(_))), "{r:?}");
}

#[test]
fn filters_nested_too_deep_are_refused_without_deep_recursion() {
    for src in [
        format!("{}a == 1{}", "(".repeat(30_000), ")".repeat(30_000)),
        format!("{}a == 1", "not ".repeat(15_000)),
        format!("a == {}1{}", "[".repeat(30_000), "]".repeat(30_000)),
    ] {
        let r = on_small_stack(move || shoaldb::Filter::parse(&src).map(|_| ()));
        assert!(matches!(r, Err(shoaldb::QueryError::TooDeep { .. })), "{r:?}");
    }
}

#[test]
fn removing_a_large_field_again_and_again_in_one_change_is_refused() {
    let base = with_containers();
    let mut doc = shoaldb::Document::new();
    doc.apply(&base).unwrap();
    let ins = insert_text(7, base.end() + 1, after(&base), &"w".repeat(1 << 22));
    doc.apply(&ins).unwrap();
    let removes =
        |n: usize| change(9, 1, after(&ins), (0..n).map(|_| Op::Remove { path: vec![Seg::Key("t".into())] }).collect());
    // Each removal walks the 4 Mi characters (they stay as tombstones): 17 of them ask for more than the bound.
    let n = (shoaldb::crdt::document::MAX_CLEAR_WORK / (1 << 22) + 1) as usize;
    let err = doc.apply(&removes(n)).unwrap_err();
    assert!(matches!(err, shoaldb::DocError::Change(ChangeError::TooLarge(_))), "{err:?}");
    assert_eq!(doc.version(), &after(&ins), "nothing applied");
    assert_eq!(doc.get("t").unwrap(), Some(json!("w".repeat(1 << 22))));
    // One removal is what an honest device sends: applied.
    assert_eq!(doc.apply(&removes(1)), Ok(shoaldb::Applied::Applied));
    assert_eq!(doc.get("t").unwrap(), None);
}

/// Found by the fuzzer (`store_changes`): a change that refers to something its declared dependencies do not hold
/// (an array element nobody made), sent before a change that satisfies those dependencies, in one batch. It waits
/// for its dependencies, becomes ready within the batch, and is malformed: the whole batch fails and nothing is
/// written — as when the same batch comes again, with the dependencies already here.
#[test]
fn a_malformed_change_made_ready_by_its_own_batch_fails_the_batch() {
    use shoaldb::crdt::clock::Dot;
    let (_d, s) = store();
    s.upsert("c", json!({"_id": "x", "a": 1, "l": [1, 2]})).unwrap();
    let mut deps = VersionVector::new();
    deps.set(PeerId(4), 14);
    let nowhere = vec![Seg::Elem(Dot::new(PeerId(1), 936_748_722_489_341_496)), Seg::Elem(Dot::new(PeerId(1), 0))];
    let malformed = change(1, 1, deps, vec![Op::Set { path: nowhere, value: Scalar::Null }]);
    let enabling = change(4, 1 << 61, VersionVector::new(), vec![Op::Remove { path: vec![Seg::Key("a".into())] }]);
    let batch: Vec<DocChange> = [malformed, enabling]
        .into_iter()
        .map(|change| DocChange { collection: "c".into(), doc_id: "x".into(), change, signature: None })
        .collect();
    let replica = s.replica();
    let summary = replica.summary().unwrap();
    for attempt in 0..2 {
        let err = replica.apply_changes(&batch).unwrap_err();
        assert!(matches!(err, Error::Document(_)), "attempt {attempt}: {err:?}");
        assert_eq!(replica.summary().unwrap(), summary, "attempt {attempt}: the summary changed");
        assert_eq!(s.get("c", "x").unwrap(), Some(json!({"_id": "x", "a": 1, "l": [1, 2]})));
        assert_eq!(s.pending_changes().unwrap(), 0, "attempt {attempt}: a change was kept aside");
    }
}
