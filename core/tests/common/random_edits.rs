//! The random-edit generator of the simulation tests (`sim.rs`, `ble_sim.rs`): edits of every field type — registers,
//! maps, counters, texts, arrays and elements nested in them — plus removals of fields and whole documents, on a few
//! documents (`d0`…) of the collections asked for. Whoever includes this file must also include `common/edits.rs` as
//! the module `edits`.

#![allow(dead_code)]

use crate::edits;
use serde_json::json;
use shoaldb::transport::sim::SimRng;
use shoaldb::{DocEditor, DocError, Store, Value};

/// How many documents the edits touch per collection: `doc_id(0)` to `doc_id(DOC_IDS - 1)`.
pub const DOC_IDS: usize = 6;
/// The fields `EditKind::RemoveField` removes.
pub const REMOVABLE: [&str; 5] = ["title", "m", "m.a", "m.items", "notes"];

pub fn doc_id(i: u64) -> String {
    format!("d{i}")
}

#[derive(Clone, Debug)]
pub enum EditKind {
    Upsert { title: u64, done: bool },
    SetDone(bool),
    SetRegister { path: u8, value: i64 },
    MergeMap { value: i64 },
    Increment { which: u8, by: i64 },
    TextInsert { which: u8, pos: u16, text: &'static str },
    TextDelete { which: u8, pos: u16, len: u8 },
    ArrayInsert { pos: u16, shape: u8, value: i64 },
    ArrayDelete { pos: u16 },
    NestedSet { idx: u16, key: u8, value: i64 },
    NestedIncrement { idx: u16, by: i64 },
    RemoveField { path: u8 },
    RemoveDocument,
}

#[derive(Clone, Debug)]
pub struct Edit {
    pub collection: &'static str,
    pub id: String,
    pub kind: EditKind,
}

/// Draw an edit of one of `collections`. The number of draws depends only on the RNG (never on a store's state), so
/// the schedule stays a function of the seed.
pub fn draw_edit(rng: &mut SimRng, collections: &[&'static str]) -> Edit {
    let collection = *rng.pick(collections);
    let id = doc_id(rng.below(DOC_IDS as u64));
    let r = |rng: &mut SimRng, n: u64| rng.below(n);
    let kind = match rng.below(20) {
        0..=2 => EditKind::Upsert { title: r(rng, 100), done: rng.chance(0.5) },
        3..=4 => EditKind::SetDone(rng.chance(0.5)),
        5..=6 => EditKind::SetRegister { path: r(rng, 4) as u8, value: r(rng, 100) as i64 },
        7 => EditKind::MergeMap { value: r(rng, 100) as i64 },
        8..=9 => EditKind::Increment { which: r(rng, 2) as u8, by: r(rng, 9) as i64 - 4 },
        10..=11 => EditKind::TextInsert { which: r(rng, 2) as u8, pos: r(rng, 1000) as u16, text: ["a", "bc", "€", "😀x", "hello "][rng.index(5)] },
        12 => EditKind::TextDelete { which: r(rng, 2) as u8, pos: r(rng, 1000) as u16, len: r(rng, 4) as u8 + 1 },
        13..=14 => EditKind::ArrayInsert { pos: r(rng, 1000) as u16, shape: r(rng, 4) as u8, value: r(rng, 100) as i64 },
        15 => EditKind::ArrayDelete { pos: r(rng, 1000) as u16 },
        16 => EditKind::NestedSet { idx: r(rng, 1000) as u16, key: r(rng, 3) as u8, value: r(rng, 100) as i64 },
        17 => EditKind::NestedIncrement { idx: r(rng, 1000) as u16, by: r(rng, 7) as i64 - 3 },
        18 => EditKind::RemoveField { path: r(rng, REMOVABLE.len() as u64) as u8 },
        _ => EditKind::RemoveDocument,
    };
    Edit { collection, id, kind }
}

fn edit_doc(ed: &mut DocEditor<'_>, kind: &EditKind) -> Result<(), DocError> {
    match kind {
        EditKind::Upsert { .. } | EditKind::RemoveDocument => unreachable!("handled by the store"),
        EditKind::SetDone(done) => ed.set("done", *done),
        EditKind::SetRegister { path, value } => ed.set(["title", "m.a", "m.b", "m.sub.c"][*path as usize % 4], *value),
        EditKind::MergeMap { value } => ed.merge("m", Value::from_json(&json!({"x": value, "sub": {"y": value}}))),
        EditKind::Increment { which, by } => ed.increment(edits::COUNTERS[*which as usize % 2], *by),
        EditKind::TextInsert { which, pos, text } => edits::text_insert(ed, *which, *pos, text),
        EditKind::TextDelete { which, pos, len } => edits::text_delete(ed, *which, *pos, *len),
        EditKind::ArrayInsert { pos, shape, value } => edits::array_insert(ed, *pos, *shape, *value),
        EditKind::ArrayDelete { pos } => edits::array_delete(ed, *pos),
        EditKind::NestedSet { idx, key, value } => edits::nested_set(ed, *idx, *key, *value),
        EditKind::NestedIncrement { idx, by } => edits::nested_increment(ed, *idx, *by),
        EditKind::RemoveField { path } => ed.remove(REMOVABLE[*path as usize % REMOVABLE.len()]),
    }
}

/// Apply an edit (a missing document is created first; documents of `tasks` get a `done` flag); edits that do not
/// fit the document's current shape fail and change nothing. Returns whether it committed.
pub fn apply_edit(store: &Store, e: &Edit) -> bool {
    let (c, id) = (e.collection, e.id.as_str());
    let r = match &e.kind {
        EditKind::Upsert { title, done } => {
            let doc = if c == "tasks" { json!({"_id": id, "title": format!("t{title}"), "done": done}) } else { json!({"_id": id, "title": format!("t{title}")}) };
            store.upsert(c, doc).map(|_| ())
        }
        EditKind::RemoveDocument => store.remove(c, id).map(|_| ()),
        kind => store.write(|t| {
            if t.get(c, id)?.is_none() {
                let doc = if c == "tasks" { json!({"_id": id, "done": false}) } else { json!({"_id": id}) };
                t.upsert(c, doc)?;
            }
            t.update(c, id, |ed| Ok(edit_doc(ed, kind)?))
        }),
    };
    r.is_ok()
}
