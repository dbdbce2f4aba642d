//! Counter: each writer's increments and decrements are kept apart and summed, so concurrent increments all count.
//!
//! Contributions are kept per operation (dot) so that a concurrent removal of the field takes away exactly the
//! increments it had seen and no others.
//!
//! # Folding stable contributions (issue 17)
//! Kept per operation, a counter incremented a million times holds a million entries. Once the increments up to a
//! frontier are *causally stable* — every change a device may still make or send that this replica does not hold
//! has seen them (see [`super::document::Document::collect_stable`]) — no future removal can take away only some of
//! them: a removal either covers all of one writer's increments up to the frontier or none. [`Counter::fold`] then
//! keeps them as one [`Run`] per writer: the counters `first..=last` it spans and their sum.
//!
//! A run stands for every increment its writer made to this counter with a counter in `first..=last`. That holds for
//! single increments (`first == last`), and it holds for a folded run because removals take away a *prefix* of each
//! writer's increments: a removal's context is a version vector, covering a writer's counters up to some number.
//! So the increments a replica still holds of one writer below the frontier are exactly those from its lowest one
//! that survives up, and a removal that has seen a run's last counter has seen all of it.
//!
//! The state-based merge ([`Counter::join`]) treats a run by its last counter as it treats an increment by its dot —
//! kept when both sides hold it or the other side has not seen it — and where a folded run and the increments it
//! folded both come through, the run stands for them.

use super::clock::{Dot, PeerId};
use super::version::VersionVector;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;

/// Increments of one writer to one counter: all of those it made with a counter in `first..=last` (see the module
/// docs), summing to `sum`. A single increment has `first == last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Run {
    first: u64,
    last: u64,
    sum: i128,
}

impl Run {
    fn single(counter: u64, delta: i64) -> Run {
        Run { first: counter, last: counter, sum: delta as i128 }
    }

    fn contains(&self, counter: u64) -> bool {
        self.first <= counter && counter <= self.last
    }
}

/// One writer's runs: sorted, disjoint (each run's `last` below the next one's `first`), `first ≥ 1`.
type Runs = Vec<Run>;

/// Whether one of `runs` holds `counter`.
fn holds(runs: &[Run], counter: u64) -> bool {
    let i = runs.partition_point(|r| r.last < counter);
    runs.get(i).is_some_and(|r| r.contains(counter))
}

#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Counter {
    by_peer: BTreeMap<PeerId, Runs>,
}

impl Counter {
    /// Apply one increment (negative for a decrement). Idempotent per dot.
    pub fn add(&mut self, dot: Dot, delta: i64) {
        let runs = self.by_peer.entry(dot.peer).or_default();
        match runs.last() {
            Some(r) if r.last >= dot.counter => {
                let i = runs.partition_point(|r| r.last < dot.counter);
                if !runs.get(i).is_some_and(|r| r.contains(dot.counter)) {
                    runs.insert(i, Run::single(dot.counter, delta));
                }
            }
            _ => runs.push(Run::single(dot.counter, delta)),
        }
    }

    /// Drop every contribution covered by `ctx` (a run when `ctx` covers its last counter; see the module docs).
    /// A removal that saw only part of a folded run leaves it whole: under a stable frontier no honest device makes
    /// one, so it is logged as the evidence it is (a member that acknowledged the frontier and then removed as if it
    /// had not; see the README, "Folding under the frontier").
    pub fn clear(&mut self, ctx: &VersionVector) {
        self.by_peer.retain(|peer, runs| {
            let seen = ctx.get(*peer);
            // Runs are sorted and disjoint: those covered come first.
            let covered = runs.partition_point(|r| r.last <= seen);
            if let Some(r) = runs.get(covered).filter(|r| r.first <= seen) {
                log::warn!(
                    "a removal saw writer {peer}'s increments up to {seen} only, inside a stable run {}..={}: \
                     its author removed as if it had not acknowledged them",
                    r.first,
                    r.last
                );
            }
            runs.drain(..covered);
            !runs.is_empty()
        });
    }

    pub fn is_empty(&self) -> bool {
        self.by_peer.is_empty()
    }

    /// State-based merge with the counter of a replica that has seen `theirs` (this one has seen `mine`): keep a
    /// contribution both hold or the other has not seen, add one of theirs this replica has not seen (see
    /// [`super::register::Register::join`]). A run is held by a side when one of its runs holds the run's last
    /// counter; where runs of both sides overlap, the one starting first (then the longest) stands for the others.
    pub fn join(&mut self, other: &Counter, mine: &VersionVector, theirs: &VersionVector) {
        let mut peers: Vec<PeerId> = self.by_peer.keys().chain(other.by_peer.keys()).copied().collect();
        peers.sort_unstable();
        peers.dedup();
        for peer in peers {
            let empty = Runs::new();
            let a = self.by_peer.get(&peer).unwrap_or(&empty);
            let b = other.by_peer.get(&peer).unwrap_or(&empty);
            if a == b {
                continue;
            }
            let (seen_by_me, seen_by_them) = (mine.get(peer), theirs.get(peer));
            let mut both: Runs = a
                .iter()
                .filter(|r| r.last > seen_by_them || holds(b, r.last))
                .chain(b.iter().filter(|r| r.last > seen_by_me || holds(a, r.last)))
                .copied()
                .collect();
            both.sort_unstable_by_key(|r| (r.first, std::cmp::Reverse(r.last), r.sum));
            let mut merged = Runs::with_capacity(both.len());
            for r in both {
                if merged.last().is_none_or(|l: &Run| l.last < r.first) {
                    merged.push(r);
                }
            }
            if merged.is_empty() {
                self.by_peer.remove(&peer);
            } else {
                self.by_peer.insert(peer, merged);
            }
        }
    }

    /// Fold each writer's contributions that `stable` covers into one run (see the module docs). `stable` must be
    /// causally stable for the document this counter is in; the counter's value does not change. Returns whether
    /// some runs were folded.
    pub fn fold(&mut self, stable: &VersionVector) -> bool {
        let mut folded_some = false;
        for (peer, runs) in &mut self.by_peer {
            let n = runs.partition_point(|r| r.last <= stable.get(*peer));
            if n >= 2 {
                let sum = runs[..n].iter().fold(0i128, |s, r| s.saturating_add(r.sum));
                let folded = Run { first: runs[0].first, last: runs[n - 1].last, sum };
                runs.splice(..n, [folded]);
                folded_some = true;
            }
        }
        folded_some
    }

    /// How many runs (single increments, and folded ones) the counter keeps.
    pub fn entries(&self) -> usize {
        self.by_peer.values().map(Vec::len).sum()
    }

    /// The last dot of each contribution (the one a version vector must cover for it all to be covered).
    pub fn last_dots(&self) -> impl Iterator<Item = Dot> + '_ {
        self.by_peer.iter().flat_map(|(p, runs)| runs.iter().map(|r| Dot::new(*p, r.last)))
    }

    /// The sum of all contributions, saturating at the bounds of `i64`.
    pub fn value(&self) -> i64 {
        let total = self.by_peer.values().flatten().fold(0i128, |s, r| s.saturating_add(r.sum));
        total.clamp(i64::MIN as i128, i64::MAX as i128) as i64
    }
}

// Encoded (snapshot format 3) as a map from writer to its runs, each `(last - previous run's last, last - first,
// sum)` (the first run's `last` whole): small numbers, a byte each for the usual single increment. Formats 1 and 2
// kept single increments only, as `(counter, delta)`, and are still read.

impl Serialize for Counter {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        struct Written<'a>(&'a Runs);
        impl Serialize for Written<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut previous = 0;
                s.collect_seq(self.0.iter().map(|r| {
                    let step = r.last - previous;
                    previous = r.last;
                    (step, r.last - r.first, r.sum)
                }))
            }
        }
        let mut map = s.serialize_map(Some(self.by_peer.len()))?;
        for (peer, runs) in &self.by_peer {
            map.serialize_entry(peer, &Written(runs))?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Counter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Counter, D::Error> {
        use serde::de::Error;
        let by_peer: BTreeMap<PeerId, Runs> = if super::sequence::decoding_format() <= 2 {
            let singles = BTreeMap::<PeerId, Vec<(u64, i64)>>::deserialize(d)?;
            singles
                .into_iter()
                .map(|(p, ops)| (p, ops.into_iter().map(|(c, delta)| Run::single(c, delta)).collect()))
                .collect()
        } else {
            let written = BTreeMap::<PeerId, Vec<(u64, u64, i128)>>::deserialize(d)?;
            let mut by_peer = BTreeMap::new();
            for (p, runs) in written {
                let mut last = 0u64;
                let runs = runs
                    .into_iter()
                    .map(|(step, back, sum)| {
                        last = last.checked_add(step)?;
                        last.checked_sub(back).map(|first| Run { first, last, sum })
                    })
                    .collect::<Option<Runs>>()
                    .ok_or_else(|| D::Error::custom("a counter run's counters are out of range"))?;
                by_peer.insert(p, runs);
            }
            by_peer
        };
        let mut by_peer = by_peer;
        by_peer.retain(|_, runs| !runs.is_empty());
        for runs in by_peer.values() {
            let ordered = runs.windows(2).all(|w| w[0].last < w[1].first);
            if runs[0].first == 0 || !ordered {
                return Err(D::Error::custom(
                    "a counter's contributions start at counter 0, are out of order or overlap",
                ));
            }
        }
        Ok(Counter { by_peer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vv(entries: &[(u64, u64)]) -> VersionVector {
        entries.iter().map(|&(p, c)| (PeerId(p), c)).collect()
    }

    #[test]
    fn sums_and_clears_only_what_was_seen() {
        let mut c = Counter::default();
        c.add(Dot::new(PeerId(1), 1), 5);
        c.add(Dot::new(PeerId(2), 1), -2);
        c.add(Dot::new(PeerId(1), 3), 1);
        c.add(Dot::new(PeerId(1), 3), 1); // duplicate
        c.add(Dot::new(PeerId(1), 2), 10); // out of order
        assert_eq!(c.value(), 14);
        c.clear(&vv(&[(1, 2)]));
        assert_eq!(c.value(), -1);
    }

    #[test]
    fn saturates() {
        let mut c = Counter::default();
        c.add(Dot::new(PeerId(1), 1), i64::MAX);
        c.add(Dot::new(PeerId(2), 1), i64::MAX);
        assert_eq!(c.value(), i64::MAX);
        // Folding does not saturate early: the sum of a run is exact.
        c.add(Dot::new(PeerId(1), 2), i64::MAX);
        c.add(Dot::new(PeerId(1), 3), i64::MIN);
        c.add(Dot::new(PeerId(1), 4), i64::MIN);
        let before = c.value();
        c.fold(&vv(&[(1, 4), (2, 1)]));
        assert_eq!(c.entries(), 2);
        assert_eq!((before, c.value()), (i64::MAX - 2, i64::MAX - 2));
    }

    #[test]
    fn folds_each_writers_stable_increments_into_one_run() {
        let mut c = Counter::default();
        for n in 1..=10 {
            c.add(Dot::new(PeerId(1), n), n as i64);
            c.add(Dot::new(PeerId(2), n * 2), 1);
        }
        c.clear(&vv(&[(1, 2)]));
        let value = c.value();
        c.fold(&vv(&[(1, 8), (2, 10)]));
        assert_eq!(c.value(), value);
        // Writer 1: 3..=8 folded, 9 and 10 apart; writer 2: 2..=10 folded, 12..=20 apart.
        assert_eq!(c.entries(), 1 + 2 + 1 + 5);
        // Folding again changes nothing; a duplicate of a folded increment is not counted twice.
        let folded = c.clone();
        c.fold(&vv(&[(1, 8), (2, 10)]));
        c.add(Dot::new(PeerId(1), 5), 5);
        assert_eq!(c, folded);
        // A removal that saw a run's last increment takes the run; one that did not, leaves it.
        c.clear(&vv(&[(1, 7), (2, 10)]));
        assert_eq!(c.value(), folded.value() - 5);
        c.clear(&vv(&[(1, 8)]));
        assert_eq!(c.value(), 9 + 10 + 5);
    }

    #[test]
    fn a_folded_run_merges_with_the_increments_it_folded() {
        let (p, q) = (PeerId(1), PeerId(2));
        let mut old = Counter::default();
        for n in 1..=4 {
            old.add(Dot::new(p, n), 1);
        }
        let mut folded = old.clone();
        folded.fold(&vv(&[(1, 4)]));
        folded.add(Dot::new(q, 1), 10);
        let (seen_old, seen_folded) = (vv(&[(1, 4)]), vv(&[(1, 4), (2, 1)]));
        let mut a = old.clone();
        a.join(&folded, &seen_old, &seen_folded);
        let mut b = folded.clone();
        b.join(&old, &seen_folded, &seen_old);
        assert_eq!(a, b);
        assert_eq!((a.value(), a.entries()), (14, 2));
        // The side that folded had removed increments 1 and 2 first: they stay removed.
        let mut removed = old.clone();
        removed.clear(&vv(&[(1, 2)]));
        removed.fold(&vv(&[(1, 4)]));
        let mut c = old.clone();
        c.join(&removed, &seen_old, &seen_old);
        assert_eq!((c.value(), c.entries()), (2, 1));
    }

    #[test]
    fn formats_round_trip_and_bad_runs_are_refused() {
        let mut c = Counter::default();
        for n in [1, 2, 3, 7] {
            c.add(Dot::new(PeerId(9), n), -(n as i64));
        }
        c.fold(&vv(&[(9, 3)]));
        let bytes = postcard::to_stdvec(&c).unwrap();
        let back: Counter = crate::crdt::sequence::decoding(3, || postcard::from_bytes(&bytes)).unwrap();
        assert_eq!(back, c);
        // Format 2 wrote `(counter, delta)` pairs.
        let old: BTreeMap<PeerId, Vec<(u64, i64)>> = [(PeerId(9), vec![(1, -1), (4, 2)])].into_iter().collect();
        let bytes = postcard::to_stdvec(&old).unwrap();
        let read: Counter = crate::crdt::sequence::decoding(2, || postcard::from_bytes(&bytes)).unwrap();
        assert_eq!((read.value(), read.entries()), (1, 2));
        let bad = |runs: Vec<(u64, u64, i128)>| {
            let m: BTreeMap<PeerId, Vec<(u64, u64, i128)>> = [(PeerId(9), runs)].into_iter().collect();
            let bytes = postcard::to_stdvec(&m).unwrap();
            crate::crdt::sequence::decoding(3, || postcard::from_bytes::<Counter>(&bytes)).is_err()
        };
        // `(last - previous last, last - first, sum)`.
        assert!(bad(vec![(3, 3, 1)]), "starts at counter 0");
        assert!(bad(vec![(3, 4, 1)]), "starts below counter 0");
        assert!(bad(vec![(5, 2, 1), (0, 0, 1)]), "out of order (the same last twice)");
        assert!(bad(vec![(5, 2, 1), (1, 1, 1)]), "overlapping");
        assert!(bad(vec![(u64::MAX, 0, 1), (1, 0, 1)]), "past the last counter");
        assert!(!bad(vec![(5, 2, 1), (1, 0, 1)]));
    }
}
