//! Structured changes from another device into a store (`Replica::apply_changes`, a batch of a few changes to a
//! few documents, from a few authors, built from the fuzz bytes): an error leaves the store exactly as it was
//! (summary and documents); a success keeps the store consistent (`check_integrity`), and applying the same batch
//! again applies nothing and changes nothing.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoaldb::store::Replica;
use shoaldb::DocChange;

mod common;
use common::Input;

fuzz_target!(|data: &[u8]| {
    let dir = common::scratch_dir();
    let store = common::open_store(dir.path(), "fuzz.db");
    store.upsert("c", serde_json::json!({"_id": "x", "a": 1, "t": "text", "l": [1, 2]})).expect("seed");
    let mut input = Input::new(data);
    let mut round = 0;
    while !input.is_empty() && round < 4 {
        round += 1;
        let batch: Vec<DocChange> = (0..1 + input.below(6)).map(|_| common::doc_change(&mut input)).collect();
        let replica = store.replica();
        let summary = replica.summary().expect("summary");
        let docs = common::documents(&store);
        let pending_before = store.pending_changes().expect("pending changes");
        match replica.apply_changes(&batch) {
            Err(_) => {
                assert_eq!(replica.summary().expect("summary"), summary, "a refused batch changed the summary");
                assert_eq!(common::documents(&store), docs, "a refused batch changed a document");
            }
            Ok(first) => {
                store.check_integrity().expect("the store stays consistent");
                let summary = replica.summary().expect("summary");
                let docs = common::documents(&store);
                let again = replica.apply_changes(&batch).expect("the same batch again is accepted");
                assert_eq!(again.applied, 0, "a batch applied twice applied something again: {first:?} then {again:?}");
                // Applied the first time, duplicates now — all but changes an earlier batch left pending that this
                // one released (they are not in it).
                assert!(again.duplicates + pending_before >= first.applied, "{first:?} then {again:?}");
                assert_eq!(replica.summary().expect("summary"), summary);
                assert_eq!(common::documents(&store), docs);
            }
        }
    }
    // The store still takes local writes.
    store.upsert("c", serde_json::json!({"_id": "local", "ok": true})).expect("a local write after the batches");
});
