//! Which deletions a stable frontier may not cover yet, and dropping the tombstones whose deletions it does.
//!
//! A sequence may drop a settled tombstone (its insertion and a deletion of it causally stable; see
//! [`super::sequence::Sequence::collect_tombstones`]). States record no deleter, so the store, which keeps every
//! change not folded into a snapshot (and [`Deletions`] of those it folded), says which deletions are not stable
//! yet: [`Unsettled`] gathers the deletions of the changes a frontier does not cover — deletes by id, and the items
//! a `Set`, `Make` or `Remove` of a field around a sequence had seen. Every other tombstone was deleted by a change
//! the frontier covers.
//!
//! Not collected: sequences inside removed array elements (their content is emptied by
//! [`super::document::Document::collect_stable`] without a change saying so; the element goes with its array's
//! tombstones instead).

use super::change::{Change, Op, Seg};
use super::clock::PeerId;
use super::field::Field;
use super::sequence::{IdSpan, SeqError};
use super::version::VersionVector;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// What one change deletes from sequences: its deletes by id, and the fields its `Set`, `Make` and `Remove`
/// operations cleared — each deleting only what its author had seen, the change's dependencies and its own earlier
/// operations. What a store keeps of a change it folds before a frontier covers it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Deletions {
    /// The change's author.
    pub peer: PeerId,
    /// The change's last counter: a frontier covers the change when it covers this.
    pub end: u64,
    deps: VersionVector,
    ids: Vec<IdSpan>,
    /// Each field cleared, with the counter of the operation that cleared it.
    cleared: Vec<(Vec<Seg>, u64)>,
}

impl Deletions {
    /// What `change` deletes, `None` when it deletes nothing.
    pub fn of(change: &Change) -> Option<Deletions> {
        let mut ids = Vec::new();
        let mut cleared = Vec::new();
        let mut counter = change.start;
        for op in &change.ops {
            match op {
                Op::DeleteText { spans, .. } | Op::DeleteElems { spans, .. } => ids.extend_from_slice(spans),
                Op::Set { path, .. } | Op::Make { path, .. } | Op::Remove { path } => {
                    cleared.push((path.clone(), counter))
                }
                Op::Increment { .. } | Op::InsertText { .. } | Op::InsertElems { .. } => {}
            }
            counter = counter.saturating_add(op.width());
        }
        (!ids.is_empty() || !cleared.is_empty()).then(|| Deletions {
            peer: change.peer,
            end: change.end(),
            deps: change.deps.clone(),
            ids,
            cleared,
        })
    }

    /// Whether `stable` covers the change.
    pub fn covered_by(&self, stable: &VersionVector) -> bool {
        self.end <= stable.get(self.peer)
    }
}

/// The deletions of changes a stable frontier does not cover (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct Unsettled {
    /// Per author, the ranges of ids deleted by id, as `(start, end)`; sorted by [`Unsettled::seal`].
    ids: HashMap<PeerId, Vec<(u64, u64)>>,
    /// Per field cleared, what the operations clearing it had seen (joined).
    cleared: HashMap<Vec<Seg>, VersionVector>,
}

impl Unsettled {
    /// Nothing unsettled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add what a change the frontier does not cover deletes.
    pub fn add(&mut self, d: &Deletions) {
        for s in &d.ids {
            self.ids.entry(s.peer).or_default().push((s.start, s.start.saturating_add(s.len)));
        }
        for (path, counter) in &d.cleared {
            // As the operation was applied: the change's dependencies and its own operations before it.
            let mut seen = d.deps.clone();
            seen.set(d.peer, counter.saturating_sub(1));
            self.cleared.entry(path.clone()).or_default().join(&seen);
        }
    }

    /// Sort what was added, for the lookups of a collection.
    fn seal(&mut self) {
        for ranges in self.ids.values_mut() {
            ranges.sort_unstable();
        }
    }

    /// The ranges of `span`'s ids an unsettled deletion may have deleted: by id, or clearing a field the sequence is
    /// in having seen them (`cleared`: what the clears of the fields around the sequence had seen, joined).
    fn within(&self, span: IdSpan, cleared: Option<&VersionVector>) -> Vec<(u64, u64)> {
        let end = span.start.saturating_add(span.len);
        let mut out = Vec::new();
        if let Some(ranges) = self.ids.get(&span.peer) {
            // Sorted by start, the ranges starting before `end` are a prefix; of those, the ones ending after the
            // span's start overlap it.
            out.extend(ranges[..ranges.partition_point(|r| r.0 < end)].iter().filter(|r| r.1 > span.start));
        }
        if let Some(seen) = cleared {
            let top = seen.get(span.peer);
            if top >= span.start {
                out.push((span.start, end.min(top.saturating_add(1))));
            }
        }
        out
    }
}

/// Drop the settled tombstones of every sequence in `root` (removed array elements' insides left out; see the
/// module docs) under `stable`, apart from the deletions `unsettled` lists. Returns how many items went.
pub(crate) fn collect(root: &mut Field, stable: &VersionVector, mut unsettled: Unsettled) -> u64 {
    unsettled.seal();
    let mut path = Vec::new();
    let mut dropped = 0u64;
    collect_field(root, &mut path, None, stable, &unsettled, &mut dropped);
    dropped
}

/// [`collect`] in `field`, at `path`, inside fields cleared by unsettled operations that had seen `around`.
fn collect_field(
    field: &mut Field,
    path: &mut Vec<Seg>,
    around: Option<&VersionVector>,
    stable: &VersionVector,
    u: &Unsettled,
    dropped: &mut u64,
) {
    let joined;
    let cleared = match (around, u.cleared.get(path.as_slice())) {
        (None, here) => here,
        (Some(a), None) => Some(a),
        (Some(a), Some(here)) => {
            let mut j = a.clone();
            j.join(here);
            joined = j;
            Some(&joined)
        }
    };
    let unsettled = |s: IdSpan| u.within(s, cleared);
    let report = |r: Result<usize, SeqError>| match r {
        Ok(n) => n as u64,
        Err(e) => {
            log::error!("collecting tombstones failed, nothing dropped there: {e}");
            0
        }
    };
    if let Some(t) = field.text.as_deref_mut() {
        *dropped += report(t.collect_tombstones(stable, unsettled));
    }
    if let Some(a) = field.array.as_deref_mut() {
        *dropped += report(a.collect_tombstones(stable, unsettled));
        a.for_each_mut(|id, element, deleted| {
            if !deleted {
                path.push(Seg::Elem(id));
                collect_field(element, path, cleared, stable, u, dropped);
                path.pop();
            }
        });
    }
    if let Some(m) = field.map.as_deref_mut() {
        for (key, child) in m.fields.iter_mut() {
            path.push(Seg::Key(key.clone()));
            collect_field(child, path, cleared, stable, u, dropped);
            path.pop();
        }
    }
}
