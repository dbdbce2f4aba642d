//! Arbitrary bytes as a document state from another device (a snapshot, as a catch-up after compaction sends),
//! merged into a document holding every field type, and the document merged into it: a typed error or a clean
//! merge, never a panic, and an error leaves the document as it was.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoaldb::{Document, PeerId, Timestamp, Value};
use std::sync::OnceLock;

fn base() -> &'static Document {
    static D: OnceLock<Document> = OnceLock::new();
    D.get_or_init(|| {
        let mut doc = Document::new();
        let mut ed = doc.edit(PeerId(1), 1, Timestamp::new(1, 0));
        let value = serde_json::json!({"a": 1, "m": {"x": [1, {"y": "z"}]}});
        ed.merge(shoaldb::Path::root(), Value::from_json(&value)).expect("seed");
        ed.text_insert("t", 0, "text").expect("seed");
        ed.increment("n", 2).expect("seed");
        ed.text_delete("t", 1, 2).expect("seed");
        ed.finish();
        doc
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(theirs) = Document::decode(data) else { return };
    let before = base().encode();
    let mut mine = base().clone();
    if mine.join(&theirs).is_err() {
        assert_eq!(mine.encode(), before);
    }
    let mut other = theirs.clone();
    let _ = other.join(base());
});
