//! State-based merge: the items of another replica's sequence that this one lacks, placed by the same integration
//! a received insert gets, and the other's tombstones.
//!
//! The order of a sequence is a function of its items and their origins alone (the YjsMod / FugueMax rule), so
//! adding the missing items in any order in which each one's origins are already present gives exactly the
//! sequence that applying the inserts themselves would have given. The missing items come as spans of the other
//! sequence's runs: within a run, each item's left origin is the item before it and all share the run's right
//! origin, which is what one insert of several items is.

use super::{IdSpan, SeqContent, SeqError, SeqInsert, Sequence};
use crate::crdt::clock::{Dot, PeerId};
use crate::crdt::version::VersionVector;

/// Items of the other sequence this one lacks, as one insert (taken when placed).
struct Missing<C> {
    insert: Option<SeqInsert<C>>,
    /// The inserts waiting for this one (indexes into the list of missing spans).
    waiting: Vec<usize>,
    /// How many of this insert's origins are still missing.
    blocked: u8,
}

impl<C: SeqContent> Sequence<C> {
    /// Merge the state of `other` into this sequence, which has seen the items `mine` covers: add the items it
    /// lacks and has not seen (each after its origins, by the integration rule) and delete the items `other`
    /// deleted. Items this sequence has seen and no longer holds are tombstones it dropped
    /// ([`Sequence::collect_tombstones`]) and stay dropped. `other` is expected to keep every item (a collected
    /// sequence's kept items may name, as origins, neighbours other than the ones they were inserted beside, so its
    /// items cannot all be placed by their origins; stores never send one). Linear in both sequences' runs, plus a
    /// lookup per missing span. On error (an `other` that contradicts this sequence: an origin neither holds, origins
    /// that depend on each other) part of `other` may have been merged; callers merge into a copy.
    pub fn join(&mut self, other: &Sequence<C>, mine: &VersionVector) -> Result<(), SeqError> {
        let mut missing: Vec<Missing<C>> = Vec::new();
        let mut tombstones: Vec<IdSpan> = Vec::new();
        for r in other.all_runs() {
            let (peer, start) = (r.id.peer, r.id.counter);
            let end = start.checked_add(r.len() as u64).ok_or(SeqError::CounterOverflow(r.id))?;
            // Counters below `unseen` of this peer were seen here: held, or dropped.
            let unseen = mine.get(peer).saturating_add(1);
            if r.deleted {
                let s = start.max(unseen.min(end));
                for (held_start, held_end) in self.held_spans(peer, start, s) {
                    tombstones.push(IdSpan { peer, start: held_start, len: held_end - held_start });
                }
                if s < end {
                    tombstones.push(IdSpan { peer, start: s, len: end - s });
                }
            }
            let mut from = start.max(unseen);
            while let Some(m) = self.ids.first_missing(peer, from, end) {
                if m >= end {
                    break;
                }
                let stop = self.ids.first_overlap(peer, m, end).unwrap_or(end);
                let mut content = r.content.clone();
                content.split_off((stop - start) as usize);
                let content = content.split_off((m - start) as usize);
                let origin_left = if m == start { r.origin_left() } else { Some(Dot::new(peer, m - 1)) };
                let insert = SeqInsert { id: Dot::new(peer, m), origin_left, origin_right: r.origin_right(), content };
                missing.push(Missing { insert: Some(insert), waiting: Vec::new(), blocked: 0 });
                from = stop;
            }
        }
        if missing.is_empty() {
            return self.apply_delete(&tombstones);
        }
        // Which missing span holds an id: spans sorted by (peer, first counter).
        let mut by_id: Vec<(Dot, u64, usize)> = missing
            .iter()
            .enumerate()
            .filter_map(|(i, m)| m.insert.as_ref().map(|ins| (ins.id, ins.content.len() as u64, i)))
            .collect();
        by_id.sort_unstable_by_key(|e| e.0);
        let holder = |d: Dot| -> Option<usize> {
            let at = by_id.partition_point(|e| e.0 <= d).checked_sub(1)?;
            let (id, n, i) = by_id[at];
            (id.peer == d.peer && d.counter - id.counter < n).then_some(i)
        };
        let mut ready = Vec::new();
        for i in 0..missing.len() {
            let Some(ins) = &missing[i].insert else { continue };
            let origins = [ins.origin_left, ins.origin_right];
            for o in origins.into_iter().flatten() {
                if self.contains_id(o) {
                    continue;
                }
                match holder(o) {
                    Some(j) if j != i => {
                        missing[j].waiting.push(i);
                        missing[i].blocked += 1;
                    }
                    _ => return Err(SeqError::UnknownId(o)),
                }
            }
            if missing[i].blocked == 0 {
                ready.push(i);
            }
        }
        let mut placed = 0;
        while let Some(i) = ready.pop() {
            let Some(ins) = missing[i].insert.take() else { continue };
            self.apply_insert_owned(ins)?;
            placed += 1;
            for j in std::mem::take(&mut missing[i].waiting) {
                missing[j].blocked -= 1;
                if missing[j].blocked == 0 {
                    ready.push(j);
                }
            }
        }
        if let Some(stuck) = missing.iter().find_map(|m| m.insert.as_ref()) {
            // Origins that wait for each other: no sequence of inserts produces that.
            return Err(SeqError::InvalidOrigins { left: stuck.origin_left, right: stuck.origin_right });
        }
        debug_assert_eq!(placed, missing.len());
        self.apply_delete(&tombstones)
    }

    /// The parts of `peer`'s ids `start..end` this sequence holds, as `(start, end)` ranges.
    fn held_spans(&self, peer: PeerId, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut spans = Vec::new();
        let mut from = start;
        while from < end {
            let Some(s) = self.ids.first_overlap(peer, from, end) else { break };
            let e = self.ids.first_missing(peer, s, end).unwrap_or(end).min(end);
            spans.push((s, e));
            from = e;
        }
        spans
    }
}
