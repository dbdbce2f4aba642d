//! The random-edit generator of the simulation tests (`sim.rs`, `ble_sim.rs`): edits of every field type — registers,
//! maps, counters, texts, arrays and elements nested in them — plus removals of fields and whole documents, on a few
//! documents (`d0`…) of the collections asked for. Whoever includes this file must also include `common/edits.rs` as
//! the module `edits`.

#![allow(dead_code)]

use crate::edits;
use serde_json::json;
use shoaldb::util::rng::SeededRng;
use shoaldb::{DocEditor, DocError, Store};

/// How many documents the edits touch per collection: `doc_id(0)` to `doc_id(DOC_IDS - 1)`.
pub const DOC_IDS: usize = 6;
pub fn doc_id(i: u64) -> String {
    format!("d{i}")
}

#[derive(Clone, Debug)]
pub enum EditKind {
    Upsert {
        title: u64,
        done: bool,
    },
    SetDone(bool),
    /// One of the property tests' edits.
    Field(edits::Edit),
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
pub fn draw_edit(rng: &mut SeededRng, collections: &[&'static str]) -> Edit {
    let collection = *rng.pick(collections);
    let id = doc_id(rng.below(DOC_IDS as u64));
    let r = |rng: &mut SeededRng, n: u64| rng.below(n);
    use edits::Edit as F;
    let field = |e: F| EditKind::Field(e);
    let kind = match rng.below(20) {
        0..=2 => EditKind::Upsert { title: r(rng, 100), done: rng.chance(0.5) },
        3..=4 => EditKind::SetDone(rng.chance(0.5)),
        5..=6 => field(F::SetRegister { path: r(rng, 4) as u8, value: r(rng, 100) as i64 }),
        7 => field(F::MergeObject { path: 0, value: r(rng, 100) as i64 }),
        8..=9 => field(F::Increment { which: r(rng, 2) as u8, by: r(rng, 9) as i8 - 4 }),
        10..=11 => field(F::TextInsert {
            which: r(rng, 2) as u8,
            pos: r(rng, 1000) as u16,
            text: ["a", "bc", "€", "😀x", "hello "][rng.index(5)].to_string(),
        }),
        12 => field(F::TextDelete { which: r(rng, 2) as u8, pos: r(rng, 1000) as u16, len: r(rng, 4) as u8 + 1 }),
        13..=14 => {
            field(F::ArrayInsert { pos: r(rng, 1000) as u16, shape: r(rng, 4) as u8, value: r(rng, 100) as i64 })
        }
        15 => field(F::ArrayDelete { pos: r(rng, 1000) as u16 }),
        16 => field(F::NestedSet { idx: r(rng, 1000) as u16, key: r(rng, 3) as u8, value: r(rng, 100) as i64 }),
        17 => field(F::NestedIncrement { idx: r(rng, 1000) as u16, by: r(rng, 7) as i8 - 3 }),
        18 => field(F::RemoveField { path: r(rng, 5) as u8 }),
        _ => EditKind::RemoveDocument,
    };
    Edit { collection, id, kind }
}

fn edit_doc(ed: &mut DocEditor<'_>, kind: &EditKind) -> Result<(), DocError> {
    match kind {
        EditKind::Upsert { .. } | EditKind::RemoveDocument => unreachable!("handled by the store"),
        EditKind::SetDone(done) => ed.set("done", *done),
        EditKind::Field(e) => edits::apply_edit(ed, e),
    }
}

/// Apply an edit (a missing document is created first; documents of `tasks` get a `done` flag); edits that do not
/// fit the document's current shape fail and change nothing. Returns whether it committed.
pub fn apply_edit(store: &Store, e: &Edit) -> bool {
    let (c, id) = (e.collection, e.id.as_str());
    let r = match &e.kind {
        EditKind::Upsert { title, done } => {
            let doc = if c == "tasks" {
                json!({"_id": id, "title": format!("t{title}"), "done": done})
            } else {
                json!({"_id": id, "title": format!("t{title}")})
            };
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
