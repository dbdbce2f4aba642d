//! Causal last-writer-wins register (a multi-value register with a deterministic winner).
//!
//! Every write carries the causal context of the replica that made it (what it had seen). A write removes exactly
//! the entries it had seen, so a causally later write always replaces an earlier one, whatever their clocks say.
//! Entries that survive are concurrent; the visible one is the greatest by (HLC timestamp, peer id, counter), and the
//! others stay readable as conflicts for apps that resolve them themselves.

use super::clock::{Dot, Timestamp};
use super::value::{Kind, Scalar};
use super::version::VersionVector;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

/// What one register entry asserts: a scalar value, or that the field holds a container of some kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum Content {
    Value(Scalar),
    Make(Kind),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub dot: Dot,
    pub ts: Timestamp,
    pub content: Content,
}

impl Entry {
    fn order_key(&self) -> (Timestamp, Dot) {
        (self.ts, self.dot)
    }
}

/// The concurrent entries of one register, kept in the order of their dots, so that two replicas holding the same
/// entries encode them identically (a phone's snapshot and the cloud's state are byte for byte the same, whatever
/// order the writes arrived in).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct Register {
    /// Almost always one entry: kept inline, without an allocation of its own.
    #[serde(deserialize_with = "entries_by_dot")]
    entries: SmallVec<[Entry; 1]>,
}

/// Read entries, putting them in dot order (snapshots written before the order was kept hold arrival order).
fn entries_by_dot<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SmallVec<[Entry; 1]>, D::Error> {
    let mut entries = SmallVec::<[Entry; 1]>::deserialize(d)?;
    entries.sort_by_key(|e| e.dot);
    Ok(entries)
}

impl Register {
    /// Apply a write made with causal context `ctx`: drop every entry the writer had seen, add the new one.
    pub fn write(&mut self, ctx: &VersionVector, entry: Entry) {
        self.clear(ctx);
        if let Err(at) = self.entries.binary_search_by_key(&entry.dot, |e| e.dot) {
            self.entries.insert(at, entry);
        }
    }

    /// Drop every entry covered by `ctx`.
    pub fn clear(&mut self, ctx: &VersionVector) {
        self.entries.retain(|e| !ctx.contains(e.dot));
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// State-based merge with the register of a replica that has seen `theirs` (this one has seen `mine`): keep an
    /// entry both hold, or that the other has not seen; drop one the other saw and no longer holds (a later write
    /// or a removal replaced it there); add one of theirs this replica has not seen.
    pub fn join(&mut self, other: &Register, mine: &VersionVector, theirs: &VersionVector) {
        self.entries.retain(|e| !theirs.contains(e.dot) || other.has(e.dot));
        for e in &other.entries {
            if !mine.contains(e.dot) {
                if let Err(at) = self.entries.binary_search_by_key(&e.dot, |x| x.dot) {
                    self.entries.insert(at, e.clone());
                }
            }
        }
    }

    fn has(&self, dot: Dot) -> bool {
        self.entries.binary_search_by_key(&dot, |e| e.dot).is_ok()
    }

    /// The dots of the entries.
    pub fn dots(&self) -> impl Iterator<Item = Dot> + '_ {
        self.entries.iter().map(|e| e.dot)
    }

    /// The visible entry: the greatest by (timestamp, peer, counter).
    pub fn winner(&self) -> Option<&Entry> {
        self.entries.iter().max_by_key(|e| e.order_key())
    }

    /// All entries, winner first, then by descending order.
    pub fn sorted(&self) -> Vec<&Entry> {
        let mut v: Vec<&Entry> = self.entries.iter().collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.order_key()));
        v
    }

    /// The entries, in dot order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::clock::PeerId;

    fn entry(peer: u64, counter: u64, ts: u64, v: i64) -> Entry {
        Entry { dot: Dot::new(PeerId(peer), counter), ts: Timestamp(ts), content: Content::Value(Scalar::Int(v)) }
    }

    fn ctx(pairs: &[(u64, u64)]) -> VersionVector {
        pairs.iter().map(|&(p, c)| (PeerId(p), c)).collect()
    }

    #[test]
    fn causally_later_write_wins_even_with_an_older_clock() {
        let mut r = Register::default();
        r.write(&ctx(&[]), entry(1, 1, 1000, 1));
        // Peer 2 saw peer 1's write, but its clock is behind.
        r.write(&ctx(&[(1, 1)]), entry(2, 1, 10, 2));
        assert_eq!(r.entries().len(), 1);
        assert_eq!(r.winner().map(|e| e.dot.peer), Some(PeerId(2)));
    }

    #[test]
    fn concurrent_writes_ordered_by_time_then_peer() {
        let mut a = Register::default();
        a.write(&ctx(&[]), entry(1, 1, 5, 1));
        a.write(&ctx(&[]), entry(2, 1, 5, 2));
        a.write(&ctx(&[]), entry(3, 1, 4, 3));
        assert_eq!(a.entries().len(), 3);
        assert_eq!(a.winner().map(|e| e.dot.peer), Some(PeerId(2)));
        let order: Vec<u64> = a.sorted().iter().map(|e| e.dot.peer.0).collect();
        assert_eq!(order, vec![2, 1, 3]);
        // A write that saw all of them replaces all of them.
        a.write(&ctx(&[(1, 1), (2, 1), (3, 1)]), entry(3, 2, 1, 9));
        assert_eq!(a.entries().len(), 1);
    }

    #[test]
    fn duplicate_write_is_idempotent() {
        let mut a = Register::default();
        a.write(&ctx(&[]), entry(1, 1, 5, 1));
        a.write(&ctx(&[]), entry(1, 1, 5, 1));
        assert_eq!(a.entries().len(), 1);
    }
}
