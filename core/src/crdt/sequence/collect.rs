//! Dropping tombstones no later change can name: the sequence half of garbage collection under a causally stable
//! frontier.
//!
//! # What can go
//! Call an item *settled* when `stable` covers its insertion and a deletion of it (the caller knows which deletions
//! are stable; the sequence does not record who deleted what). Every change still to come has seen both, so its
//! creator sees a settled item as deleted. A local insert names as `origin_left` a visible item and as
//! `origin_right` the item right after it, tombstones included (see [`Sequence::local_insert`]). So of a stretch of
//! consecutive settled items, a later insert can only ever name the first — the one right after a visible item, or
//! an item that is not settled (whose deletion a later creator may not have seen), or the start. The others can
//! go, unless an item this sequence holds that `stable` does not cover names one as an origin: such an item's
//! insert still travels as a change, with its origins as written.
//!
//! # Why the order stays the same everywhere
//! * No later insert lands inside a stretch past its first item: its origins are adjacent in its creator's list,
//!   the left one is not settled, and nothing was dropped between them there (the creator's own drops only ever
//!   follow a settled item it kept). So the stretches are the same in every replica that holds what `stable`
//!   covers, whichever later items it also holds.
//! * The YjsMod integration of a later insert looks only at the items between its origins that its creator did not
//!   have: items `stable` does not cover, whose origins are never rewritten.
//! * Kept items that `stable` covers and named a dropped item as an origin get the nearest kept item on the same
//!   side instead (left origin: the one before; right origin: the one after, or the end). Their inserts are never
//!   integrated again by a replica holding `stable`; the state stays well formed (every origin held, left before,
//!   right after) and decodes as before.
//! * A state-based merge skips the items the receiver has seen and no longer holds ([`Sequence::join`]).

use super::encoding::SerRun;
use super::run::Run;
use super::{IdSpan, SeqContent, SeqError, Sequence};
use crate::crdt::clock::Dot;
use crate::crdt::version::VersionVector;

/// A piece of a run as it will be written back: kept, or dropped (remembering its kept neighbours).
struct Piece<C> {
    run: Run<C>,
    kept: bool,
}

/// A run, or part of one, as `stable` and the unsettled deletions see it.
struct Part<C> {
    run: Run<C>,
    /// `stable` covers its insertion.
    stable: bool,
    /// Deleted, and settled: `stable` covers its insertion and a deletion of it.
    settled: bool,
}

/// Dropped ids, with the nearest kept item before and after them, sorted by id for lookups.
struct Dropped {
    spans: Vec<(Dot, u64, Option<Dot>, Option<Dot>)>,
}

impl Dropped {
    fn find(&self, d: Dot) -> Option<(Option<Dot>, Option<Dot>)> {
        let at = self.spans.partition_point(|e| e.0 <= d).checked_sub(1)?;
        let (id, len, before, after) = self.spans[at];
        (id.peer == d.peer && d.counter - id.counter < len).then_some((before, after))
    }
}

impl<C: SeqContent> Sequence<C> {
    /// Drop the settled tombstones no later change can name (see the module docs), returning how many items went.
    /// `stable` covers the insertions that are causally stable; `unsettled(span)` gives the ranges of `span`'s
    /// counters, as `(start, end)`, that a deletion `stable` does not cover may have deleted (it is only asked about
    /// deleted items `stable` covers; a range may stick out of `span`). What the sequence shows does not change. On
    /// error (a bug: the rebuilt sequence is not well formed) nothing changes.
    ///
    /// `stable` must be causally stable for this sequence (every change not held yet has seen it), and `unsettled`
    /// must list every deletion that is not: with anything less, a later change may name a dropped item and be
    /// refused here.
    pub fn collect_tombstones(
        &mut self,
        stable: &VersionVector,
        unsettled: impl Fn(IdSpan) -> Vec<(u64, u64)>,
    ) -> Result<usize, SeqError> {
        // Most sequences hold no tombstone `stable` covers: nothing is copied for them.
        if !self.all_runs().any(|r| r.deleted && stable.get(r.id.peer) >= r.id.counter) {
            return Ok(0);
        }
        let parts = self.settled_parts(stable, unsettled);
        if !parts.iter().any(|p| p.settled) {
            return Ok(0);
        }
        // Items named by what `stable` does not cover stay as they are.
        let mut named: Vec<Dot> = parts
            .iter()
            .filter(|p| !p.stable)
            .flat_map(|p| [p.run.origin_left(), p.run.origin_right()])
            .flatten()
            .collect();
        named.sort_unstable();
        named.dedup();

        // Cut every settled part into kept pieces (its first item when it opens a stretch, and the named items) and
        // dropped ones.
        let mut pieces: Vec<Piece<C>> = Vec::new();
        let mut dropped_items = 0usize;
        let mut previous_settled = false;
        for part in parts {
            if !part.settled {
                pieces.push(Piece { run: part.run, kept: true });
                previous_settled = false;
                continue;
            }
            let (peer, start) = (part.run.id.peer, part.run.id.counter);
            let end = start + part.run.len() as u64;
            let first_named = named.partition_point(|d| *d < Dot::new(peer, start));
            let mut keep: Vec<u64> = named[first_named..]
                .iter()
                .take_while(|d| d.peer == peer && d.counter < end)
                .map(|d| d.counter)
                .collect();
            if !previous_settled {
                keep.insert(0, start);
                keep.dedup();
            }
            previous_settled = true;
            let mut rest = Some(part.run);
            let mut at = start;
            for k in keep.into_iter().chain(std::iter::once(end)) {
                // `rest` holds `at..end`: drop `at..k`, then keep `k`.
                let Some(mut r) = rest.take() else { break };
                if k > at {
                    let tail = (k < end).then(|| r.split_off((k - at) as usize));
                    dropped_items += r.len();
                    pieces.push(Piece { run: r, kept: false });
                    let Some(t) = tail else { break };
                    r = t;
                }
                rest = (k + 1 < end).then(|| r.split_off(1));
                pieces.push(Piece { run: r, kept: true });
                at = k + 1;
            }
        }
        if dropped_items == 0 {
            return Ok(0);
        }

        // The kept neighbours of each dropped piece.
        let mut spans = Vec::new();
        let mut before: Option<Dot> = None;
        let mut waiting: Vec<usize> = Vec::new();
        for p in &pieces {
            if p.kept {
                for i in waiting.drain(..) {
                    let e: &mut (Dot, u64, Option<Dot>, Option<Dot>) = &mut spans[i];
                    e.3 = Some(p.run.id);
                }
                before = Some(p.run.last_id());
            } else {
                waiting.push(spans.len());
                spans.push((p.run.id, p.run.len() as u64, before, None));
            }
        }
        spans.sort_unstable_by_key(|e| e.0);
        let dropped = Dropped { spans };

        let mut runs = Vec::with_capacity(pieces.len());
        for p in pieces.into_iter().filter(|p| p.kept) {
            let r = p.run;
            let origin_left = r.origin_left().and_then(|d| dropped.find(d).map_or(Some(d), |n| n.0));
            let origin_right = r.origin_right().and_then(|d| dropped.find(d).map_or(Some(d), |n| n.1));
            runs.push(SerRun { id: r.id, origin_left, origin_right, deleted: r.deleted, content: r.content });
        }
        *self = Self::from_runs(runs, self.cap)?;
        Ok(dropped_items)
    }

    /// The runs in order, cut where `stable` stops covering their insertions and where unsettled deletions start and
    /// end.
    fn settled_parts(&self, stable: &VersionVector, unsettled: impl Fn(IdSpan) -> Vec<(u64, u64)>) -> Vec<Part<C>> {
        let mut parts = Vec::new();
        for r in self.all_runs() {
            let (peer, start) = (r.id.peer, r.id.counter);
            let end = start + r.len() as u64;
            let covered = end.min(stable.get(peer).saturating_add(1)).max(start);
            // Pieces `(end, stable, settled)`, in order from `start`.
            let mut cuts: Vec<(u64, bool, bool)> = Vec::new();
            if r.deleted && covered > start {
                let mut ranges: Vec<(u64, u64)> = unsettled(IdSpan { peer, start, len: covered - start })
                    .into_iter()
                    .map(|(a, b)| (a.max(start), b.min(covered)))
                    .filter(|(a, b)| a < b)
                    .collect();
                ranges.sort_unstable();
                let mut at = start;
                for (a, b) in ranges {
                    if b <= at {
                        continue;
                    }
                    if a > at {
                        cuts.push((a, true, true));
                    }
                    cuts.push((b, true, false));
                    at = b;
                }
                if at < covered {
                    cuts.push((covered, true, true));
                }
            } else if covered > start {
                cuts.push((covered, true, false));
            }
            if covered < end {
                cuts.push((end, false, false));
            }
            let mut rest = r.clone();
            let mut at = start;
            for (cut, stable, settled) in cuts {
                let piece = if cut < end {
                    let tail = rest.split_off((cut - at) as usize);
                    std::mem::replace(&mut rest, tail)
                } else {
                    rest.clone()
                };
                parts.push(Part { run: piece, stable, settled });
                at = cut;
            }
        }
        parts
    }
}
