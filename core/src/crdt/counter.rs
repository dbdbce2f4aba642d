//! Counter: each writer's increments and decrements are kept apart and summed, so concurrent increments all count.
//!
//! Contributions are kept per operation (dot) so that a concurrent removal of the field takes away exactly the
//! increments it had seen and no others.

use super::clock::{Dot, PeerId};
use super::version::VersionVector;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct Counter {
    by_peer: BTreeMap<PeerId, Vec<(u64, i64)>>,
}

impl Counter {
    /// Apply one increment (negative for a decrement). Idempotent per dot.
    pub fn add(&mut self, dot: Dot, delta: i64) {
        let ops = self.by_peer.entry(dot.peer).or_default();
        match ops.last() {
            Some(&(c, _)) if c >= dot.counter => {
                if ops.binary_search_by_key(&dot.counter, |e| e.0).is_err() {
                    let i = ops.partition_point(|e| e.0 < dot.counter);
                    ops.insert(i, (dot.counter, delta));
                }
            }
            _ => ops.push((dot.counter, delta)),
        }
    }

    /// Drop every contribution covered by `ctx`.
    pub fn clear(&mut self, ctx: &VersionVector) {
        self.by_peer.retain(|peer, ops| {
            let seen = ctx.get(*peer);
            ops.retain(|&(c, _)| c > seen);
            !ops.is_empty()
        });
    }

    pub fn is_empty(&self) -> bool {
        self.by_peer.is_empty()
    }

    /// State-based merge with the counter of a replica that has seen `theirs` (this one has seen `mine`): keep a
    /// contribution both hold or the other has not seen, add one of theirs this replica has not seen (see
    /// [`super::register::Register::join`]).
    pub fn join(&mut self, other: &Counter, mine: &VersionVector, theirs: &VersionVector) {
        let held = |c: &Counter, peer: PeerId, counter: u64| {
            c.by_peer.get(&peer).is_some_and(|ops| ops.binary_search_by_key(&counter, |e| e.0).is_ok())
        };
        self.by_peer.retain(|peer, ops| {
            let seen = theirs.get(*peer);
            ops.retain(|&(c, _)| c > seen || held(other, *peer, c));
            !ops.is_empty()
        });
        for (peer, ops) in &other.by_peer {
            let seen = mine.get(*peer);
            for &(c, delta) in ops.iter().filter(|e| e.0 > seen) {
                self.add(Dot::new(*peer, c), delta);
            }
        }
    }

    /// The dots of the contributions.
    pub fn dots(&self) -> impl Iterator<Item = Dot> + '_ {
        self.by_peer.iter().flat_map(|(p, ops)| ops.iter().map(|&(c, _)| Dot::new(*p, c)))
    }

    /// The sum of all contributions, saturating at the bounds of `i64`.
    pub fn value(&self) -> i64 {
        let total: i128 = self.by_peer.values().flat_map(|ops| ops.iter().map(|&(_, d)| d as i128)).sum();
        total.clamp(i64::MIN as i128, i64::MAX as i128) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_and_clears_only_what_was_seen() {
        let mut c = Counter::default();
        c.add(Dot::new(PeerId(1), 1), 5);
        c.add(Dot::new(PeerId(2), 1), -2);
        c.add(Dot::new(PeerId(1), 3), 1);
        c.add(Dot::new(PeerId(1), 3), 1); // duplicate
        c.add(Dot::new(PeerId(1), 2), 10); // out of order
        assert_eq!(c.value(), 14);
        let seen: VersionVector = [(PeerId(1), 2)].into_iter().collect();
        c.clear(&seen);
        assert_eq!(c.value(), -1);
    }

    #[test]
    fn saturates() {
        let mut c = Counter::default();
        c.add(Dot::new(PeerId(1), 1), i64::MAX);
        c.add(Dot::new(PeerId(2), 1), i64::MAX);
        assert_eq!(c.value(), i64::MAX);
    }
}
