//! The merge rules the README documents, one by one, on in-memory documents with explicit clocks.

use serde_json::json;
use shoaldb::{Change, Document, PeerId, Timestamp, Value};

/// A replica: a document, a peer id and its next counter.
struct R {
    doc: Document,
    peer: PeerId,
    next: u64,
}

impl R {
    fn new(peer: u64) -> R {
        R { doc: Document::new(), peer: PeerId(peer), next: 1 }
    }

    fn edit(
        &mut self,
        ts: u64,
        f: impl FnOnce(&mut shoaldb::DocEditor<'_>) -> Result<(), shoaldb::DocError>,
    ) -> Change {
        let mut ed = self.doc.edit(self.peer, self.next, Timestamp::new(ts, 0));
        f(&mut ed).unwrap();
        self.next = ed.next_counter();
        ed.finish().unwrap()
    }

    fn recv(&mut self, changes: &[&Change]) {
        for c in changes {
            self.doc.apply(c).unwrap();
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::Value::Object(self.doc.to_json().unwrap())
    }
}

/// Two replicas sharing a starting document.
fn pair(init: serde_json::Value) -> (R, R) {
    let mut a = R::new(1);
    let mut b = R::new(2);
    let c = a.edit(100, |e| e.merge(shoaldb::Path::root(), Value::from_json(&init)));
    b.recv(&[&c]);
    (a, b)
}

fn exchange(a: &mut R, b: &mut R, ca: &[&Change], cb: &[&Change]) {
    a.recv(cb);
    b.recv(ca);
    assert_eq!(a.json(), b.json(), "replicas converge");
}

#[test]
fn concurrent_register_writes_ordered_by_time_then_peer_and_conflicts_kept() {
    let (mut a, mut b) = pair(json!({"title": "t"}));
    let ca = a.edit(200, |e| e.set("title", "from a"));
    let cb = b.edit(150, |e| e.set("title", "from b"));
    exchange(&mut a, &mut b, &[&ca], &[&cb]);
    assert_eq!(a.json()["title"], "from a", "later HLC wins among concurrent writes");
    assert_eq!(a.doc.conflicts("title").unwrap(), vec![json!("from b")]);
    // Same time: the higher peer id wins.
    let ca = a.edit(300, |e| e.set("title", "a again"));
    let cb = b.edit(300, |e| e.set("title", "b again"));
    exchange(&mut a, &mut b, &[&ca], &[&cb]);
    assert_eq!(a.json()["title"], "b again");
}

#[test]
fn causally_later_write_wins_over_a_clock_that_is_ahead() {
    let (mut a, mut b) = pair(json!({"v": 0}));
    let ca = a.edit(1_000_000, |e| e.set("v", 1)); // a's clock is far ahead
    b.recv(&[&ca]);
    let cb = b.edit(10, |e| e.set("v", 2)); // b saw it, then wrote with an older clock
    a.recv(&[&cb]);
    assert_eq!(a.json()["v"], 2);
    assert_eq!(b.json()["v"], 2);
    assert!(a.doc.conflicts("v").unwrap().is_empty(), "not a conflict: b had seen a's write");
}

#[test]
fn concurrent_counter_increments_all_count() {
    let (mut a, mut b) = pair(json!({"x": 1}));
    let ca = a.edit(200, |e| e.increment("likes", 5));
    let cb = b.edit(200, |e| {
        e.increment("likes", 2)?;
        e.increment("likes", -1)
    });
    exchange(&mut a, &mut b, &[&ca], &[&cb]);
    assert_eq!(a.json()["likes"], 6, "both replicas created the counter concurrently: still one counter");
}

#[test]
fn maps_created_concurrently_in_one_field_merge() {
    let (mut a, mut b) = pair(json!({"x": 1}));
    let ca = a.edit(200, |e| e.set("address.city", "Oslo"));
    let cb = b.edit(210, |e| e.set("address.zip", "0150"));
    exchange(&mut a, &mut b, &[&ca], &[&cb]);
    assert_eq!(a.json()["address"], json!({"city": "Oslo", "zip": "0150"}));
}

#[test]
fn removal_keeps_concurrent_edits_only() {
    let (mut a, mut b) = pair(json!({"profile": {"name": "Ada", "age": 36}}));
    let ca = a.edit(200, |e| e.remove("profile"));
    let cb = b.edit(210, |e| e.set("profile.email", "ada@example.org"));
    exchange(&mut a, &mut b, &[&ca], &[&cb]);
    assert_eq!(
        a.json()["profile"],
        json!({"email": "ada@example.org"}),
        "add-wins: the concurrent edit survives alone"
    );
    // A removal that saw everything removes everything.
    let ca = a.edit(300, |e| e.remove("profile"));
    b.recv(&[&ca]);
    assert!(b.json().get("profile").is_none());
}

#[test]
fn document_removal_vs_concurrent_update() {
    let (mut a, mut b) = pair(json!({"title": "t", "n": 1}));
    let ca = a.edit(200, |e| e.remove_document());
    assert!(!a.doc.exists());
    let cb = b.edit(210, |e| e.increment("views", 1));
    a.recv(&[&cb]);
    b.recv(&[&ca]);
    assert_eq!(a.json(), json!({"views": 1}));
    assert_eq!(b.json(), json!({"views": 1}));
}

#[test]
fn type_conflicts_resolve_by_time_and_keep_the_other() {
    let (mut a, mut b) = pair(json!({"x": 1}));
    let ca = a.edit(200, |e| e.set("field", Value::Counter(3)));
    let cb = b.edit(250, |e| e.set("field", "text value"));
    exchange(&mut a, &mut b, &[&ca], &[&cb]);
    assert_eq!(a.json()["field"], "text value");
    assert_eq!(a.doc.conflicts("field").unwrap(), vec![json!(3)]);
}

#[test]
fn array_delete_wins_over_a_concurrent_edit_inside_the_element() {
    let (mut a, mut b) = pair(json!({"x": 1}));
    let c0 = a.edit(150, |e| e.set("rows", Value::Array(vec![Value::from_json(&json!({"k": 1})), Value::from(2)])));
    b.recv(&[&c0]);
    let ca = a.edit(200, |e| e.array_delete("rows", 0, 1));
    let cb = b.edit(210, |e| e.set("rows[0].k", 5));
    exchange(&mut a, &mut b, &[&ca], &[&cb]);
    assert_eq!(a.json()["rows"], json!([2]));
}

#[test]
fn concurrent_typing_at_one_place_does_not_interleave() {
    let (mut a, mut b) = pair(json!({"x": 1}));
    let c0 = a.edit(150, |e| e.text_insert("t", 0, "[]"));
    b.recv(&[&c0]);
    let mut ca = Vec::new();
    let mut cb = Vec::new();
    for (i, ch) in "hello".chars().enumerate() {
        ca.push(a.edit(200 + i as u64, |e| e.text_insert("t", 1 + i, &ch.to_string())));
    }
    for (i, ch) in "WORLD".chars().enumerate() {
        cb.push(b.edit(200 + i as u64, |e| e.text_insert("t", 1 + i, &ch.to_string())));
    }
    let ra: Vec<&Change> = ca.iter().collect();
    let rb: Vec<&Change> = cb.iter().collect();
    exchange(&mut a, &mut b, &ra, &rb);
    let t = a.json()["t"].as_str().unwrap().to_string();
    assert!(t == "[helloWORLD]" || t == "[WORLDhello]", "{t}");
}
