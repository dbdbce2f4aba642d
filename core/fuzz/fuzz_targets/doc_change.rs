//! Arbitrary bytes as a change from another device, applied to a store: a typed error or a clean apply, never a
//! panic, and an error writes nothing.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoaldb::store::Replica;
use shoaldb::{DocChange, Store};
use std::sync::OnceLock;

fn store() -> &'static (tempfile::TempDir, Store) {
    static S: OnceLock<(tempfile::TempDir, Store)> = OnceLock::new();
    S.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().join("fuzz.db")).expect("store");
        store.upsert("c", serde_json::json!({"_id": "d", "a": 1, "t": "text"})).expect("seed");
        (dir, store)
    })
}

fuzz_target!(|data: &[u8]| {
    let (_, store) = store();
    if let Ok(dc) = DocChange::decode(data) {
        let before = store.replica().summary().expect("summary");
        if store.replica().apply_changes(&[dc]).is_err() {
            assert_eq!(store.replica().summary().expect("summary"), before);
        }
    }
});
