//! Collections and documents through the public API: upsert, get, update, remove, evict, list, reopen.

use serde_json::json;
use shoaldb::store::Replica;
use shoaldb::{Error, Kind, Query, Store, Value};

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path().join("db.sqlite")).unwrap();
    (dir, s)
}

#[test]
fn upsert_get_list_and_merge_semantics() {
    let (_d, s) = store();
    let id = s.upsert("people", json!({"name": "Ada", "address": {"city": "London", "zip": "N1"}})).unwrap();
    assert_eq!(id.len(), 26, "generated ids are 26-char time-sortable ids");
    let doc = s.get("people", &id).unwrap().unwrap();
    assert_eq!(doc, json!({"_id": id, "name": "Ada", "address": {"city": "London", "zip": "N1"}}));
    // Fields given are set (objects merged), others kept.
    s.upsert("people", json!({"_id": id, "age": 36, "address": {"city": "Paris"}})).unwrap();
    let doc = s.get("people", &id).unwrap().unwrap();
    assert_eq!(doc, json!({"_id": id, "name": "Ada", "age": 36, "address": {"city": "Paris", "zip": "N1"}}));
    // A caller-given id.
    s.upsert("people", json!({"_id": "bob", "name": "Bob"})).unwrap();
    let all = s.list("people").unwrap();
    assert_eq!(all.len(), 2);
    assert!(s.get("people", "nobody").unwrap().is_none());
    assert_eq!(s.collections().unwrap(), vec!["people".to_string()]);
}

#[test]
fn every_field_type_through_update() {
    let (_d, s) = store();
    let id = s.upsert("t", json!({"title": "x"})).unwrap();
    s.update("t", &id, |d| {
        d.increment("likes", 3)?;
        d.increment("likes", -1)?;
        d.text_insert("body", 0, "héllo wörld")?;
        d.text_delete("body", 0, 1)?;
        d.text_insert("body", 0, "H")?;
        d.set("tags", Value::Array(vec!["a".into(), "c".into()]))?;
        d.array_insert("tags", 1, &["b".into()])?;
        d.set("meta.nested.deep", 1i64)?;
        d.array_push("rows", &[Value::Map([("cells".to_string(), Value::Array(vec![1i64.into()]))].into())])?;
        d.array_push("rows[0].cells", &[2i64.into()])?;
        d.set("rows[0].cells[0]", 10i64)?;
        Ok(())
    })
    .unwrap();
    let doc = s.get("t", &id).unwrap().unwrap();
    assert_eq!(doc["likes"], 2);
    assert_eq!(doc["body"], "Héllo wörld");
    assert_eq!(doc["tags"], json!(["a", "b", "c"]));
    assert_eq!(doc["meta"], json!({"nested": {"deep": 1}}));
    assert_eq!(doc["rows"], json!([{"cells": [10, 2]}]));
    let full = s.document("t", &id).unwrap().unwrap();
    assert_eq!(full.kind_at("likes").unwrap(), Some(Kind::Counter));
    assert_eq!(full.kind_at("body").unwrap(), Some(Kind::Text));
    assert_eq!(full.get("rows[0].cells[1]").unwrap(), Some(json!(2)));
}

#[test]
fn type_mismatches_and_bad_paths_are_typed_errors_and_write_nothing() {
    let (_d, s) = store();
    let id = s.upsert("t", json!({"title": "x", "n": 1})).unwrap();
    let before = s.get("t", &id).unwrap();
    let r = s.update("t", &id, |d| {
        d.set("ok", 1i64)?; // applied in memory, then rolled back with the transaction
        d.increment("title", 1)?;
        Ok(())
    });
    assert!(matches!(r, Err(Error::Document(shoaldb::DocError::TypeMismatch { .. }))), "{r:?}");
    assert_eq!(s.get("t", &id).unwrap(), before, "nothing of the failed transaction is visible");
    let r = s.update("t", &id, |d| Ok(d.set("a..b", 1i64)?));
    assert!(matches!(r, Err(Error::Path(_))), "{r:?}");
    let r = s.update("t", &id, |d| Ok(d.text_insert("title", 0, "x")?));
    assert!(matches!(r, Err(Error::Document(shoaldb::DocError::TypeMismatch { .. }))), "{r:?}");
    let r = s.update("t", &id, |d| Ok(d.set("tags[3]", 1i64)?));
    assert!(r.is_err());
    let r = s.update("t", &id, |d| Ok(d.set("f", f64::NAN)?));
    assert!(matches!(r, Err(Error::Document(shoaldb::DocError::InvalidValue(_)))), "{r:?}");
    let big = "x".repeat(2 << 20);
    let r = s.upsert("t", json!({"big": big}));
    assert!(matches!(r, Err(Error::Document(shoaldb::DocError::InvalidValue(_)))), "{r:?}");
    assert!(matches!(s.upsert_json("t", "{not json"), Err(Error::InvalidJson(_))));
    assert!(matches!(s.upsert_json("t", "[1,2]"), Err(Error::InvalidJson(_))));
    assert!(matches!(s.upsert("", json!({})), Err(Error::InvalidName { .. })));
    assert!(matches!(s.update("t", "missing", |_| Ok(())), Err(Error::NotFound { .. })));
    assert_eq!(s.get("t", &id).unwrap(), before);
}

#[test]
fn transactions_are_atomic_across_documents() {
    let (_d, s) = store();
    s.write(|t| {
        t.upsert("acc", json!({"_id": "a", "balance": 10}))?;
        t.upsert("acc", json!({"_id": "b", "balance": 0}))?;
        Ok(())
    })
    .unwrap();
    let r: Result<(), Error> = s.write(|t| {
        t.upsert("acc", json!({"_id": "a", "balance": 5}))?;
        assert_eq!(t.get("acc", "a")?.unwrap()["balance"], 5, "a transaction sees its own writes");
        t.upsert("acc", json!({"_id": "b", "balance": 5}))?;
        Err(Error::InvalidJson("abort".into()))
    });
    assert!(r.is_err());
    assert_eq!(s.get("acc", "a").unwrap().unwrap()["balance"], 10);
    assert_eq!(s.get("acc", "b").unwrap().unwrap()["balance"], 0);
    // And the store keeps working after the rollback.
    s.upsert("acc", json!({"_id": "a", "balance": 7})).unwrap();
    assert_eq!(s.get("acc", "a").unwrap().unwrap()["balance"], 7);
}

#[test]
fn remove_evict_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let peer;
    {
        let s = Store::open(&path).unwrap();
        peer = s.peer_id();
        s.upsert("c", json!({"_id": "keep", "v": 1})).unwrap();
        s.upsert("c", json!({"_id": "gone", "v": 2})).unwrap();
        s.upsert("c", json!({"_id": "local", "v": 3})).unwrap();
        s.update("c", "keep", |d| {
            d.text_insert("t", 0, "abc")?;
            d.increment("n", 5)?;
            Ok(())
        })
        .unwrap();
        assert!(s.remove("c", "gone").unwrap());
        assert!(!s.remove("c", "gone").unwrap());
        assert!(s.get("c", "gone").unwrap().is_none());
        assert!(s.evict("c", "local").unwrap());
        assert!(s.get("c", "local").unwrap().is_none());
        assert!(matches!(s.update("c", "local", |d| Ok(d.set("v", 4i64)?)), Err(Error::Evicted { .. })));
        // A removed document can be created again.
        s.upsert("c", json!({"_id": "gone", "w": 1})).unwrap();
        assert_eq!(s.get("c", "gone").unwrap().unwrap(), json!({"_id": "gone", "w": 1}));
    }
    let s = Store::open(&path).unwrap();
    assert_eq!(s.peer_id(), peer, "the peer id persists");
    assert_eq!(s.get("c", "keep").unwrap().unwrap(), json!({"_id": "keep", "v": 1, "t": "abc", "n": 5}));
    assert_eq!(s.list("c").unwrap().len(), 2);
    // Reopened, the CRDT state continues exactly: more edits work.
    s.update("c", "keep", |d| Ok(d.text_insert("t", 3, "d")?)).unwrap();
    assert_eq!(s.get("c", "keep").unwrap().unwrap()["t"], "abcd");
    let q = Query::filter("v == 1").unwrap();
    assert_eq!(s.find("c", &q).unwrap().len(), 1);
}

#[test]
fn two_connections_to_one_file_share_the_store() {
    // An app and its extension (or the CLI and a running peer) writing one store: separate connections, one
    // peer id, no counter reused, each sees the other's writes.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let a = Store::open(&path).unwrap();
    let b = Store::open(&path).unwrap();
    assert_eq!(a.peer_id(), b.peer_id());
    a.upsert("c", json!({"_id": "x", "n": 0})).unwrap();
    for i in 0..20i64 {
        let s = if i % 2 == 0 { &a } else { &b };
        s.update("c", "x", |d| {
            d.increment("count", 1)?;
            d.text_insert("log", 0, &i.to_string())?;
            Ok(())
        })
        .unwrap();
    }
    let va = a.get("c", "x").unwrap().unwrap();
    assert_eq!(va, b.get("c", "x").unwrap().unwrap());
    assert_eq!(va["count"], 20);
    let changes = b.replica().changes_since(&Default::default()).unwrap();
    assert_eq!(changes.len(), 21);
    let mut ranges: Vec<(u64, u64)> = changes.iter().map(|c| (c.change.start, c.change.end())).collect();
    ranges.sort();
    assert!(ranges.windows(2).all(|w| w[0].1 < w[1].0), "no counter used twice: {ranges:?}");
    // Both see the same full CRDT state.
    assert_eq!(a.document("c", "x").unwrap().unwrap().version(), b.document("c", "x").unwrap().unwrap().version());
}

#[test]
fn a_store_from_a_newer_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    drop(Store::open(&path).unwrap());
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", shoaldb::store::SCHEMA_VERSION + 1).unwrap();
    }
    match Store::open(&path) {
        Err(Error::UnsupportedSchema { found, supported }) => assert_eq!(found, supported + 1),
        other => panic!("expected UnsupportedSchema, got {other:?}"),
    }
}

#[test]
fn a_store_is_shared_between_threads() {
    let (_d, s) = store();
    s.upsert("c", json!({"_id": "n"})).unwrap();
    let events = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let e = events.clone();
    let (_, _h) = s
        .observe("c", Query::all(), move |_| {
            e.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })
        .unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for _ in 0..25 {
                    s.update("c", "n", |d| Ok(d.increment("count", 1)?)).unwrap();
                }
                s.upsert("c", json!({"_id": format!("t{t}")})).unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(s.get("c", "n").unwrap().unwrap()["count"], 100);
    assert_eq!(s.list("c").unwrap().len(), 5);
    assert_eq!(events.load(std::sync::atomic::Ordering::SeqCst), 104, "one event per transaction, none lost");
}

/// A state written in snapshot format 1 (full peer ids in every text run, deleted characters kept), as stored
/// snapshots and older builds' states hold it: a document with a register, an array with a nested map, a counter
/// and a text edited by two writers with a deletion.
const FORMAT_1_STATE: &str = "0101e78a8d89f0ddefd6de0101838080c0d6fcf3c5010100010404626f647901e78a8d89f0ddefd6de0104838080c0d6fcf3c501010200000104f0bdf3d589cf959a12010001e78a8d89f0ddefd6de01050003c3a921e78a8d89f0ddefd6de0105000000026865e78a8d89f0ddefd6de010701e78a8d89f0ddefd6de01060001036c6c6fe78a8d89f0ddefd6de010a01e78a8d89f0ddefd6de010900000620776f726c6400016e01e78a8d89f0ddefd6de0111838080c0d6fcf3c50101030000000101e78a8d89f0ddefd6de0101120a047461677301e78a8d89f0ddefd6de0102838080c0d6fcf3c5010006020401610701016b020400000000057469746c6501e78a8d89f0ddefd6de0103838080c0d6fcf3c50100040276310000000000000002f0bdf3d589cf959a1202e78a8d89f0ddefd6de0112";

#[test]
fn a_state_in_snapshot_format_1_is_still_read_and_written_again_in_the_current_format() {
    let bytes = unhex(FORMAT_1_STATE);
    let old = shoaldb::Document::decode(&bytes).unwrap();
    let expected = json!({"body": "é!he world", "n": 5, "tags": ["a", {"k": 2}], "title": "v1"});
    assert_eq!(serde_json::Value::Object(old.to_json().unwrap()), expected);

    let again = old.encode();
    assert_eq!(again[0], 3, "written in the current format");
    assert!(again.len() < bytes.len(), "{} bytes, format 1 took {}", again.len(), bytes.len());
    let new = shoaldb::Document::decode(&again).unwrap();
    assert_eq!(serde_json::Value::Object(new.to_json().unwrap()), expected);
    assert_eq!(new.version(), old.version());
    assert_eq!(new.encode(), again, "the encoding is stable");

    // Both keep working the same: an edit typed at the same place in each gives the same document.
    let edit = |mut doc: shoaldb::Document| {
        let mut ed = doc.edit(shoaldb::PeerId(77), 1, shoaldb::Timestamp::new(1_800_000_000_000, 0));
        ed.text_insert("body", 4, "y").unwrap();
        ed.text_delete("body", 0, 1).unwrap();
        ed.finish();
        doc.encode()
    };
    assert_eq!(edit(old), edit(new));
}

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
}

/// A state written in snapshot format 2 (counters' increments one by one) by the build before format 3: counters
/// `likes` (writers 0x1111 and 0x2222, two changes of 0x1111) and `tags[0].score`, a text with a deletion.
const FORMAT_2_STATE: &str = "020191220180808080c58bc6d1010100010404626f64790191220380808080c58bc6d10101020000010901912202430004010404656c6c6f00056c696b65730191220980808080c58bc6d101010300000001029122030a060b080c14a244010103047461677301a2440280808480c58bc6d101010100010701a244010200030101a2440480808480c58bc6d10101000102046e616d6501a2440580808480c58bc6d10100040178000000000573636f726501a2440680808480c58bc6d10101030000000101a24401070a0000000000057469746c650191220280808080c58bc6d10100040174000000000000000291220ca24408";

/// A format 2 state reads as it did, is written again in format 3 (counters' contributions as runs), and its
/// counters fold once their increments are stable, showing the same.
#[test]
fn a_state_in_snapshot_format_2_is_still_read_and_its_counters_fold() {
    let mut doc = shoaldb::Document::decode(&unhex(FORMAT_2_STATE)).unwrap();
    let expected = json!({"body": "ello", "likes": 15, "tags": [{"name": "x", "score": 5}], "title": "t"});
    assert_eq!(serde_json::Value::Object(doc.to_json().unwrap()), expected);
    let again = doc.encode();
    assert_eq!(again[0], 3, "written in the current format");
    assert_eq!(shoaldb::Document::decode(&again).unwrap().encode(), again, "the encoding is stable");
    // `likes`: 3 and 4 (0x1111), -2 (0x2222), 10 (0x1111); `score`: 5.
    assert_eq!(doc.counter_entries(), 5);
    let everything = doc.version().clone();
    doc.collect_stable(&everything);
    assert_eq!(doc.counter_entries(), 3, "one run per writer and counter");
    assert_eq!(serde_json::Value::Object(doc.to_json().unwrap()), expected);
    let folded = shoaldb::Document::decode(&doc.encode()).unwrap();
    assert_eq!((folded.counter_entries(), folded.to_json()), (3, doc.to_json()));
}

/// Removed keys leave nothing in a document's state (issue 17): not the key, not an empty map, counter or text
/// made under it; a map made empty, and text with its deletions, stay (they show, or later inserts may refer to
/// them). What a removal leaves means exactly what nothing means, so a state with them left out reads, merges and
/// takes later changes alike (the property tests of `state_merge.rs` check merging through the encoded state).
#[test]
fn removed_keys_leave_nothing_in_the_state() {
    let (_d, s) = store();
    let size = |s: &Store| shoaldb::Document::encode(&s.document("t", "d").unwrap().unwrap()).len();
    s.upsert("t", json!({"_id": "d", "keep": 1})).unwrap();
    let bare = size(&s);
    s.update("t", "d", |d| {
        for i in 0..50 {
            d.set(format!("k{i:02}").as_str(), format!("value {i}"))?;
        }
        d.set("m.a.b", 1i64)?;
        d.increment("likes", 3)?;
        d.set("empty", Value::Map(Default::default()))?;
        Ok(())
    })
    .unwrap();
    let full = size(&s);
    s.update("t", "d", |d| {
        for i in 0..50 {
            d.remove(format!("k{i:02}").as_str())?;
        }
        d.remove("m")?;
        d.remove("likes")?;
        Ok(())
    })
    .unwrap();
    let after = size(&s);
    assert!(full > bare + 1000, "{full}");
    assert!(after < bare + 40, "{after} bytes, {bare} with one field");
    assert_eq!(s.get("t", "d").unwrap(), Some(json!({"_id": "d", "keep": 1, "empty": {}})));
    // A key written again after its removal, and a text whose deletions remain.
    s.update("t", "d", |d| {
        d.set("k07", "again")?;
        d.text_insert("body", 0, "abc")?;
        d.text_delete("body", 0, 3)?;
        Ok(())
    })
    .unwrap();
    let state = s.document("t", "d").unwrap().unwrap();
    let decoded = shoaldb::Document::decode(&state.encode()).unwrap();
    assert_eq!(decoded.to_json(), state.to_json());
    assert_eq!(decoded.encode(), state.encode());
    assert_eq!(decoded.kind_at("body").unwrap(), Some(Kind::Text), "an emptied text still shows, as \"\"");
}

/// A counter incremented 10,000 times by four writers keeps each increment until they are stable; folded, it keeps
/// one run per writer and shows the same sum.
#[test]
fn folding_a_counters_stable_increments_shrinks_its_state() {
    let mut doc = shoaldb::Document::new();
    let mut next = [1u64; 4];
    for i in 0..10_000u64 {
        let w = (i % 4) as usize;
        let mut ed =
            doc.edit(shoaldb::PeerId(w as u64 + 1), next[w], shoaldb::Timestamp::new(1_800_000_000_000 + i, 0));
        ed.increment("likes", (i % 7) as i64 - 2).unwrap();
        next[w] = ed.next_counter();
        ed.finish().unwrap();
    }
    let (before, shown) = (doc.encode().len(), doc.to_json());
    assert_eq!(doc.counter_entries(), 10_000);
    let everything = doc.version().clone();
    doc.collect_stable(&everything);
    let after = doc.encode().len();
    println!("a counter of 10,000 increments by 4 writers: {before} bytes, folded {after}");
    assert_eq!(doc.counter_entries(), 4);
    assert_eq!(doc.to_json(), shown);
    assert!(after * 100 < before, "{before} bytes, folded {after}");
}

/// A removed array element keeps its place (a tombstone: later inserts may name it) but not what a stable frontier
/// covers of what it held: a list of 200 to-do items, each a map with a counter, of which 150 were removed. Under a
/// frontier covering the first items' edits, those of them removed keep nothing; under one covering everything,
/// no removed item does, and with the removals stable all but the first removed item go; and the document shows the
/// same throughout.
#[test]
fn removed_elements_keep_nothing_a_stable_frontier_covers() {
    let (a, b) = (shoaldb::PeerId(1), shoaldb::PeerId(2));
    let mut doc = shoaldb::Document::new();
    let mut next = 1;
    let mut edit = |doc: &mut shoaldb::Document, peer, f: &dyn Fn(&mut shoaldb::DocEditor<'_>)| {
        let mut ed = doc.edit(peer, next, shoaldb::Timestamp::new(1_800_000_000_000 + next, 0));
        f(&mut ed);
        next = ed.next_counter();
        ed.finish().unwrap();
    };
    for i in 0..200 {
        let item = json!({"title": format!("task number {i} with a longer title"), "done": false});
        edit(&mut doc, a, &|ed| ed.array_push("todo", &[Value::from_json(&item)]).unwrap());
        edit(&mut doc, a, &|ed| ed.increment(format!("todo[{i}].votes").as_str(), 3).unwrap());
    }
    for _ in 0..150 {
        edit(&mut doc, b, &|ed| ed.array_delete("todo", 0, 1).unwrap());
    }
    let (before, shown) = (doc.encode().len(), doc.to_json());
    // A frontier covering a's first 200 operations (the first few dozen items, made and counted): the removed items
    // among them keep nothing, the other removed ones keep what they held.
    let half: shoaldb::VersionVector = [(a, 200), (b, doc.version().get(b))].into_iter().collect();
    let mut partly = doc.clone();
    assert!(partly.collect_stable(&half));
    assert_eq!(partly.to_json(), shown);
    let part = partly.encode().len();
    // Covering everything: they keep nothing, and the document shows the same.
    let everything = doc.version().clone();
    assert!(doc.collect_stable(&everything));
    let after = doc.encode().len();
    println!("200 to-do items, 150 removed: {before} bytes, {part} with half collected, {after} all collected");
    assert_eq!(doc.to_json(), shown);
    assert!(after < part && part < before, "{before} bytes, {part} with half collected, {after} all collected");
    assert!(after * 2 < before, "{before} bytes, collected {after}");
    assert!(!doc.collect_stable(&everything), "nothing more to collect");
    // The removals stable too: the removed items go but the first of their stretch (they were removed from the
    // front, one after the other), and the document shows the same.
    let mut dropped = doc.clone();
    let unsettled = shoaldb::crdt::tombstones::Unsettled::new();
    assert_eq!(dropped.collect_tombstones(&everything, unsettled), 149);
    assert_eq!(dropped.to_json(), shown);
    let smallest = dropped.encode().len();
    println!("and {smallest} bytes once the removed items are dropped, all but the first");
    assert!(smallest < after);
    // It still takes inserts next to the removed items, and merges with a copy that did not collect.
    let mut ed = doc.edit(a, next, shoaldb::Timestamp::new(1_900_000_000_000, 0));
    ed.array_insert("todo", 0, &[Value::from_json(&json!({"title": "first"}))]).unwrap();
    let change = ed.finish().unwrap();
    let mut kept = shoaldb::Document::decode(&partly.encode()).unwrap();
    kept.apply(&change).unwrap();
    kept.join(&doc).unwrap();
    assert_eq!(kept.to_json(), doc.to_json());
    assert_eq!(doc.to_json().unwrap()["todo"].as_array().unwrap().len(), 51);
    // So does the copy that dropped them: the insert names the first removed item, which it kept.
    let mut dropped = shoaldb::Document::decode(&dropped.encode()).unwrap();
    dropped.apply(&change).unwrap();
    assert_eq!(dropped.to_json(), doc.to_json());
    dropped.join(&kept).unwrap();
    assert_eq!(dropped.to_json(), doc.to_json());
}
