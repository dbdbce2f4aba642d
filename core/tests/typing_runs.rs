//! A change records a run of keystrokes as one op: characters typed one after another (each right after the last,
//! before the same right neighbour) extend the previous insert, and deletes that follow deletes in the same text
//! join into one. This must mean exactly what the keystrokes did one by one: a replica that receives the run —
//! whatever it did concurrently — must end byte for byte where it would with one op per typed character, and
//! replicas must converge.

use proptest::prelude::*;
use shoaldb::{Applied, Change, Document, Op, PeerId, Timestamp, Value};

const TEXT: &str = "t";

#[derive(Clone, Debug)]
enum Key {
    Type(char),
    Backspace,
    Delete,
    Move(usize),
}

fn key() -> impl Strategy<Value = Key> {
    prop_oneof![
        6 => prop::sample::select(vec!['a', 'b', 'c', ' ', 'é', '字', '🙂']).prop_map(Key::Type),
        2 => Just(Key::Backspace),
        1 => Just(Key::Delete),
        1 => any::<usize>().prop_map(Key::Move),
    ]
}

/// The text (empty before anything was typed).
fn text(doc: &Document) -> String {
    match doc.to_json().and_then(|m| m.get(TEXT).cloned()) {
        Some(serde_json::Value::String(s)) => s,
        None => String::new(),
        other => panic!("not a text: {other:?}"),
    }
}

/// The canonical encoding: sequence runs split in memory are merged again when decoded.
fn canonical(doc: &Document) -> Vec<u8> {
    Document::decode(&doc.encode()).expect("a state decodes").encode()
}

/// Press `keys` in one transaction of `peer`, starting with the cursor at `cursor`; the change.
fn type_keys(doc: &mut Document, peer: u64, next: u64, mut cursor: usize, keys: &[Key]) -> Option<Change> {
    let mut ed = doc.edit(PeerId(peer), next, Timestamp::new(2_000 + peer, 0));
    for k in keys {
        let len = match ed.document().to_json().and_then(|m| m.get(TEXT).cloned()) {
            Some(serde_json::Value::String(s)) => s.chars().count(),
            _ => 0,
        };
        cursor = cursor.min(len);
        match k {
            Key::Type(c) => {
                ed.text_insert(TEXT, cursor, &c.to_string()).expect("insert");
                cursor += 1;
            }
            Key::Backspace if cursor > 0 => {
                ed.text_delete(TEXT, cursor - 1, 1).expect("backspace");
                cursor -= 1;
            }
            Key::Delete if cursor < len => ed.text_delete(TEXT, cursor, 1).expect("delete"),
            Key::Move(to) => cursor = to % (len + 1),
            Key::Backspace | Key::Delete => {}
        }
    }
    ed.finish()
}

fn apply(doc: &mut Document, c: &Change) {
    assert_eq!(doc.apply(c).expect("the change applies"), Applied::Applied);
}

/// A shared text, then a session of keys at A and concurrent keys at B; each receives the other's change.
fn run(base: &str, a_keys: &[Key], a_cursor: usize, b_keys: &[Key], b_cursor: usize) {
    let mut a = Document::new();
    let mut ed = a.edit(PeerId(1), 1, Timestamp::new(1_000, 0));
    ed.merge(shoaldb::Path::root(), Value::Map(Default::default())).expect("document");
    ed.text_insert(TEXT, 0, base).expect("base text");
    let next_a = ed.next_counter();
    let first = ed.finish().expect("a change");
    let mut b = Document::new();
    apply(&mut b, &first);

    let ca = type_keys(&mut a, 1, next_a, a_cursor, a_keys);
    let cb = type_keys(&mut b, 2, 1, b_cursor, b_keys);
    let b_alone = b.clone();
    if let Some(cb) = &cb {
        apply(&mut a, cb);
    }
    if let Some(ca) = &ca {
        apply(&mut b, ca);
        // B with A's keystrokes one op per character ends exactly where B with A's runs does.
        let mut reference = b_alone;
        let split = ca.with_one_op_per_character();
        assert_eq!(split.end(), ca.end(), "splitting keeps the change's dots");
        apply(&mut reference, &split);
        assert_eq!(text(&reference), text(&b));
        assert_eq!(canonical(&reference), canonical(&b), "{:?}", ca.ops);
    }
    assert_eq!(text(&a), text(&b));
    assert_eq!(canonical(&a), canonical(&b));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn a_run_of_keystrokes_is_one_op_and_means_the_same(
        base in "[a-z é]{0,12}",
        a_keys in proptest::collection::vec(key(), 0..40),
        a_cursor in 0usize..16,
        b_keys in proptest::collection::vec(key(), 0..12),
        b_cursor in 0usize..16,
    ) {
        run(&base, &a_keys, a_cursor, &b_keys, b_cursor);
    }
}

#[test]
fn typing_a_word_and_erasing_it_are_two_ops() {
    let mut doc = Document::new();
    let mut ed = doc.edit(PeerId(7), 1, Timestamp::new(1, 0));
    ed.merge(shoaldb::Path::root(), Value::Map(Default::default())).expect("document");
    ed.text_insert(TEXT, 0, "x").expect("insert");
    let next = ed.next_counter();
    ed.finish().expect("a change");

    let keys: Vec<Key> = "hello".chars().map(Key::Type).chain(std::iter::repeat_n(Key::Backspace, 3)).collect();
    let change = type_keys(&mut doc, 7, next, 1, &keys).expect("a change");
    assert_eq!(text(&doc), "xhe");
    assert_eq!(change.ops.len(), 2, "{:?}", change.ops);
    match &change.ops[..] {
        [Op::InsertText { text, .. }, Op::DeleteText { spans, .. }] => {
            assert_eq!(text.as_str(), "hello");
            assert_eq!(spans.len(), 1, "three backspaces over consecutive ids are one span: {spans:?}");
        }
        other => panic!("unexpected ops {other:?}"),
    }
    // Five dots for the characters, one for the delete.
    assert_eq!(change.width(), 6);

    // Typing elsewhere starts a new op.
    let next = next + 6;
    let change = type_keys(&mut doc, 7, next, 0, &[Key::Type('a'), Key::Move(3), Key::Type('b')]).expect("a change");
    assert_eq!(text(&doc), "axhbe");
    assert_eq!(change.ops.len(), 2);
}
