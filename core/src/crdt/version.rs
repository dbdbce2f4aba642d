//! Version vectors: for each peer, the highest counter seen.
//!
//! Within one document Shoal delivers changes causally (a change is applied only once everything it depends on is
//! present), so "the highest counter of peer P" also means "every operation of P on this document up to it".

use super::clock::{Dot, PeerId};
use serde::{Deserialize, Serialize};

/// Per-peer highest counters, kept sorted by peer. Small: one entry per peer that ever wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionVector(Vec<(PeerId, u64)>);

impl VersionVector {
    /// The empty vector: nothing seen from anyone.
    pub fn new() -> Self {
        VersionVector(Vec::new())
    }

    /// Whether nothing was seen from anyone.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The highest counter seen from `peer` (0 = nothing).
    pub fn get(&self, peer: PeerId) -> u64 {
        match self.0.binary_search_by_key(&peer, |e| e.0) {
            Ok(i) => self.0[i].1,
            Err(_) => 0,
        }
    }

    /// Raise `peer`'s entry to at least `counter`.
    pub fn raise(&mut self, peer: PeerId, counter: u64) {
        if counter == 0 {
            return;
        }
        match self.0.binary_search_by_key(&peer, |e| e.0) {
            Ok(i) => {
                if self.0[i].1 < counter {
                    self.0[i].1 = counter
                }
            }
            Err(i) => self.0.insert(i, (peer, counter)),
        }
    }

    /// Set `peer`'s entry to exactly `counter` (0 removes it).
    pub fn set(&mut self, peer: PeerId, counter: u64) {
        match self.0.binary_search_by_key(&peer, |e| e.0) {
            Ok(i) if counter == 0 => {
                self.0.remove(i);
            }
            Ok(i) => self.0[i].1 = counter,
            Err(_) if counter == 0 => {}
            Err(i) => self.0.insert(i, (peer, counter)),
        }
    }

    /// Whether `dot` is covered (seen).
    pub fn contains(&self, dot: Dot) -> bool {
        dot.counter <= self.get(dot.peer)
    }

    /// Pointwise maximum.
    pub fn join(&mut self, other: &VersionVector) {
        for &(p, c) in &other.0 {
            self.raise(p, c);
        }
    }

    /// Whether every entry of `self` is ≤ the same entry of `other`.
    pub fn le(&self, other: &VersionVector) -> bool {
        self.0.iter().all(|&(p, c)| c <= other.get(p))
    }

    /// Whether some entry of `self` is above `other` — i.e. `self` holds a dot `other` does not cover.
    pub fn exceeds(&self, other: &VersionVector) -> bool {
        !self.le(other)
    }

    /// Each peer seen with its highest counter, in ascending order of peer.
    pub fn iter(&self) -> impl Iterator<Item = (PeerId, u64)> + '_ {
        self.0.iter().copied()
    }

    /// The version as a document's row keeps it (the `docs.version` column of a store and of the cloud, sent with a
    /// document's first change: `sync::first_copy`).
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// A version kept by [`VersionVector::to_bytes`]; `None` when the bytes are not a well-formed one.
    pub fn from_bytes(bytes: &[u8]) -> Option<VersionVector> {
        postcard::from_bytes::<VersionVector>(bytes).ok().filter(VersionVector::is_well_formed)
    }

    /// Entries must be sorted by peer, unique, with non-zero counters (used to validate decoded data).
    pub fn is_well_formed(&self) -> bool {
        self.0.windows(2).all(|w| w[0].0 < w[1].0) && self.0.iter().all(|e| e.1 > 0)
    }
}

impl FromIterator<(PeerId, u64)> for VersionVector {
    fn from_iter<T: IntoIterator<Item = (PeerId, u64)>>(iter: T) -> Self {
        let mut v = VersionVector::new();
        for (p, c) in iter {
            v.raise(p, c);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: u64) -> PeerId {
        PeerId(n)
    }

    #[test]
    fn raise_join_le() {
        let mut a = VersionVector::new();
        a.raise(p(2), 5);
        a.raise(p(1), 3);
        a.raise(p(2), 4);
        assert_eq!(a.get(p(2)), 5);
        assert!(a.is_well_formed());
        let mut b = VersionVector::new();
        b.raise(p(1), 7);
        assert!(!a.le(&b) && !b.le(&a));
        b.join(&a);
        assert!(a.le(&b));
        assert!(b.contains(Dot::new(p(1), 7)));
        assert!(!b.contains(Dot::new(p(1), 8)));
        assert!(!b.contains(Dot::new(p(3), 1)));
        b.set(p(1), 0);
        assert_eq!(b.get(p(1)), 0);
        assert!(b.is_well_formed());
    }
}
