//! Edits shared by the convergence property tests and the simulators: the ones on text, arrays and elements
//! nested in arrays, whose positions are drawn at random and reduced to what the document holds at that moment.
//! (`convergence.rs` keeps its own edit enum, the simulators share the one of `random_edits.rs`; these are the
//! operations they share.)

#![allow(dead_code)]

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
