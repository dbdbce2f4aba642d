//! Hostile data (issue 13): values nested too deep, changes that cost far more to apply than they weigh, counters past
//! what SQLite stores, and corrupt rows on disk. Each test plays the attack through the public API (a change decoded
//! from bytes as it would arrive from another device, or an app write) and asserts the safe outcome: a typed error
//! that changes nothing, and a victim that keeps reading and writing.

use serde_json::json;
use shoaldb::crdt::change::Seg;
use shoaldb::crdt::value::MAX_VALUE_DEPTH;
use shoaldb::store::Replica;
use shoaldb::{
    Change, ChangeError, DocChange, Error, Op, PeerId, Query, Scalar, Store, Timestamp, Value, VersionVector,
};

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path().join("db")).unwrap();
    (dir, s)
}

/// Run `f` on a thread with a small stack: deep recursion overflows it (and aborts the test process) long before it
/// would overflow a main thread's 8 MiB, so a pass proves the work is not recursive in the input's depth.
fn on_small_stack<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    std::thread::Builder::new().stack_size(256 << 10).spawn(f).unwrap().join().unwrap()
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
        DocChange { collection: "c".into(), doc_id: "d".into(), change: create_with(7, Scalar::Null) }.encode();
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
    let deep =
        DocChange { collection: "c".into(), doc_id: "d".into(), change: create_with(7, nested(MAX_VALUE_DEPTH + 1)) };
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
