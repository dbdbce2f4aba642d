//! Edits shared by the convergence property tests and the simulators: the ones on text, arrays and elements
//! nested in arrays, whose positions are drawn at random and reduced to what the document holds at that moment,
//! and the property tests' edit enum ([`Edit`], `convergence.rs` and `store_convergence.rs`; the simulators share
//! the one of `random_edits.rs`).

#![allow(dead_code)]

use proptest::prelude::*;
use serde_json::{json, Value as Json};
use shoaldb::{DocEditor, DocError, Value};

/// The texts edited.
pub const TEXTS: [&str; 2] = ["notes", "m.body"];
/// The counters incremented.
pub const COUNTERS: [&str; 2] = ["likes", "m.score"];
/// The array edited (its elements hold nested maps, arrays, counters and texts).
pub const ARRAY: &str = "m.items";

pub fn array_len(ed: &DocEditor<'_>, path: &str) -> usize {
    match ed.document().get(path) {
        Ok(Some(Json::Array(a))) => a.len(),
        _ => 0,
    }
}

pub fn text_len(ed: &DocEditor<'_>, path: &str) -> usize {
    match ed.document().get(path) {
        Ok(Some(Json::String(s))) => s.chars().count(),
        _ => 0,
    }
}

pub fn text_insert(ed: &mut DocEditor<'_>, which: u8, pos: u16, text: &str) -> Result<(), DocError> {
    let p = TEXTS[which as usize % 2];
    let n = text_len(ed, p);
    ed.text_insert(p, pos as usize % (n + 1), text)
}

pub fn text_delete(ed: &mut DocEditor<'_>, which: u8, pos: u16, len: u8) -> Result<(), DocError> {
    let p = TEXTS[which as usize % 2];
    let n = text_len(ed, p);
    if n == 0 {
        return Ok(());
    }
    let at = pos as usize % n;
    ed.text_delete(p, at, (len as usize).min(n - at))
}

/// Insert an element of one of four shapes: a scalar, a nested map, a nested array with a counter, a map with text.
pub fn array_insert(ed: &mut DocEditor<'_>, pos: u16, shape: u8, value: i64) -> Result<(), DocError> {
    let n = array_len(ed, ARRAY);
    let v = match shape % 4 {
        0 => Value::from(value),
        1 => Value::from_json(&json!({"inner": {"k0": value}})),
        2 => Value::Array(vec![Value::from(value), Value::Counter(value)]),
        _ => Value::Map([("t".to_string(), Value::Text(format!("t{value}")))].into()),
    };
    ed.array_insert(ARRAY, pos as usize % (n + 1), &[v])
}

pub fn array_delete(ed: &mut DocEditor<'_>, pos: u16) -> Result<(), DocError> {
    let n = array_len(ed, ARRAY);
    if n == 0 {
        return Ok(());
    }
    ed.array_delete(ARRAY, pos as usize % n, 1)
}

/// Set a key inside an element's nested map.
pub fn nested_set(ed: &mut DocEditor<'_>, idx: u16, key: u8, value: i64) -> Result<(), DocError> {
    let n = array_len(ed, ARRAY);
    if n == 0 {
        return Ok(());
    }
    ed.set(format!("{ARRAY}[{}].inner.k{}", idx as usize % n, key % 3), value)
}

/// Increment a counter inside an element's nested map.
pub fn nested_increment(ed: &mut DocEditor<'_>, idx: u16, by: i64) -> Result<(), DocError> {
    let n = array_len(ed, ARRAY);
    if n == 0 {
        return Ok(());
    }
    ed.increment(format!("{ARRAY}[{}].inner.count", idx as usize % n), by)
}

/// One edit of the convergence property tests: every field type, nested maps in arrays in maps, removals of fields
/// and whole documents. Positions and paths are drawn at random and reduced to the document at that moment.
#[derive(Clone, Debug)]
pub enum Edit {
    SetRegister { path: u8, value: i64 },
    MergeObject { path: u8, value: i64 },
    Increment { which: u8, by: i8 },
    TextInsert { which: u8, pos: u16, text: String },
    TextDelete { which: u8, pos: u16, len: u8 },
    ArrayInsert { pos: u16, shape: u8, value: i64 },
    ArrayDelete { pos: u16 },
    NestedSet { idx: u16, key: u8, value: i64 },
    NestedIncrement { idx: u16, by: i8 },
    RemoveField { path: u8 },
    RemoveDocument,
}

/// The registers set.
pub const REGISTER_PATHS: [&str; 4] = ["title", "m.a", "m.b", "m.sub.c"];
/// The fields removed (the simulators draw from the first five).
pub const REMOVABLE: [&str; 7] = ["title", "m", "m.a", "m.items", "notes", "likes", "edge"];

pub fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<u8>(), -3i64..100).prop_map(|(path, value)| Edit::SetRegister { path, value }),
        (any::<u8>(), -3i64..100).prop_map(|(path, value)| Edit::MergeObject { path, value }),
        (any::<u8>(), -5i8..5).prop_map(|(which, by)| Edit::Increment { which, by }),
        (any::<u8>(), any::<u16>(), "[ab€😀]{1,4}").prop_map(|(which, pos, text)| Edit::TextInsert {
            which,
            pos,
            text
        }),
        (any::<u8>(), any::<u16>(), 1u8..4).prop_map(|(which, pos, len)| Edit::TextDelete { which, pos, len }),
        (any::<u16>(), any::<u8>(), 0i64..100).prop_map(|(pos, shape, value)| Edit::ArrayInsert { pos, shape, value }),
        any::<u16>().prop_map(|pos| Edit::ArrayDelete { pos }),
        (any::<u16>(), any::<u8>(), 0i64..100).prop_map(|(idx, key, value)| Edit::NestedSet { idx, key, value }),
        (any::<u16>(), -3i8..4).prop_map(|(idx, by)| Edit::NestedIncrement { idx, by }),
        any::<u8>().prop_map(|path| Edit::RemoveField { path }),
        Just(Edit::RemoveDocument),
    ]
}

/// Apply one edit. Edits that do not fit the current state (type mismatches, out-of-range indexes) fail with an
/// error, which is part of what is tested: they must change nothing.
pub fn apply_edit(ed: &mut DocEditor<'_>, e: &Edit) -> Result<(), DocError> {
    match e {
        Edit::SetRegister { path, value } => ed.set(REGISTER_PATHS[*path as usize % REGISTER_PATHS.len()], *value),
        Edit::MergeObject { path, value } => {
            let p = ["m", "m.sub", "title"][*path as usize % 3];
            ed.merge(p, Value::from_json(&json!({"x": value, "sub": {"y": value}})))
        }
        Edit::Increment { which, by } => ed.increment(COUNTERS[*which as usize % 2], *by as i64),
        Edit::TextInsert { which, pos, text } => text_insert(ed, *which, *pos, text),
        Edit::TextDelete { which, pos, len } => text_delete(ed, *which, *pos, *len),
        Edit::ArrayInsert { pos, shape, value } => array_insert(ed, *pos, *shape, *value),
        Edit::ArrayDelete { pos } => array_delete(ed, *pos),
        Edit::NestedSet { idx, key, value } => nested_set(ed, *idx, *key, *value),
        Edit::NestedIncrement { idx, by } => nested_increment(ed, *idx, *by as i64),
        Edit::RemoveField { path } => ed.remove(REMOVABLE[*path as usize % REMOVABLE.len()]),
        Edit::RemoveDocument => ed.remove_document(),
    }
}

/// `e` made in its own transaction on document `id` of `collection` (created first if need be), whether or not
/// it applies there (the property tests' worlds each get the same edits).
pub fn write_edit(store: &shoaldb::Store, collection: &str, id: &str, e: &Edit) {
    store
        .write(|t| {
            if t.get(collection, id)?.is_none() {
                t.upsert(collection, json!({"_id": id}))?;
            }
            t.update(collection, id, |ed| {
                let _ = apply_edit(ed, e);
                Ok(())
            })
        })
        .unwrap();
}

/// What a device holds of one document: its view, version vector and conflicts.
pub type DocSeen = (Option<Json>, Option<shoaldb::VersionVector>, Vec<Vec<Json>>);

/// Everything two worlds given the same edits must hold alike of documents `ids`: each one's view, its version
/// vector and the conflicts of the fields [`Edit`]s write.
pub fn seen(store: &shoaldb::Store, collection: &str, ids: &[&str]) -> Vec<DocSeen> {
    ids.iter()
        .map(|d| {
            let doc = store.document(collection, d).unwrap();
            let conflicts = ["title", "m", "m.a", "likes", "notes", "m.items"]
                .iter()
                .map(|p| doc.as_ref().map(|doc| doc.conflicts(*p).unwrap()).unwrap_or_default())
                .collect();
            (store.get(collection, d).unwrap(), doc.map(|d| d.version().clone()), conflicts)
        })
        .collect()
}
