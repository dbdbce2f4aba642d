//! The id index: per peer, ranges of counters and the (stable) leaf that holds them.

use super::leaf::LeafId;
use crate::crdt::clock::{Dot, PeerId};
use std::collections::BTreeMap;

/// Per peer: disjoint counter ranges `start -> (end, leaf)`. The union of the ranges is exactly the set of ids in
/// the sequence, and every id of a range lives in that range's leaf.
#[derive(Clone, Debug, Default)]
pub(super) struct IdIndex {
    pub(super) peers: Vec<(PeerId, PeerIds)>,
}

#[derive(Clone, Debug, Default)]
pub(super) struct PeerIds {
    /// All ranges but the highest.
    pub(super) map: BTreeMap<u64, (u64, LeafId)>,
    /// The highest range, kept out of the map: new ids usually extend it, which then needs no tree operation.
    pub(super) top: Option<(u64, u64, LeafId)>,
}

impl PeerIds {
    /// End of the highest range (0 if none).
    #[inline]
    fn max_end(&self) -> u64 {
        self.top.map_or(0, |t| t.1)
    }

    /// Moves `top` into the map (before general edits).
    fn flush(&mut self) {
        if let Some((a, b, l)) = self.top.take() {
            self.map.insert(a, (b, l));
        }
    }

    /// Takes the highest range out of the map again.
    fn unflush(&mut self) {
        debug_assert!(self.top.is_none());
        self.top = self.map.pop_last().map(|(a, (b, l))| (a, b, l));
    }

    /// The range holding counter `c`.
    #[inline]
    fn find(&self, c: u64) -> Option<(u64, u64, LeafId)> {
        let t = self.top?;
        if c >= t.0 {
            return (c < t.1).then_some(t);
        }
        let (&a, &(b, l)) = self.map.range(..=c).next_back()?;
        (c < b).then_some((a, b, l))
    }

    /// The range starting exactly at `c`.
    fn starting_at(&self, c: u64) -> Option<(u64, u64, LeafId)> {
        match self.top {
            Some(t) if t.0 == c => Some(t),
            _ => self.map.get(&c).map(|&(b, l)| (c, b, l)),
        }
    }
}

impl IdIndex {
    #[inline]
    fn get(&self, peer: PeerId) -> Option<&PeerIds> {
        self.peers.binary_search_by_key(&peer, |e| e.0).ok().map(|i| &self.peers[i].1)
    }

    fn get_mut(&mut self, peer: PeerId) -> &mut PeerIds {
        let i = match self.peers.binary_search_by_key(&peer, |e| e.0) {
            Ok(i) => i,
            Err(i) => {
                self.peers.insert(i, (peer, PeerIds::default()));
                i
            }
        };
        &mut self.peers[i].1
    }

    /// The range holding `id`: (start, end, leaf).
    #[inline]
    pub(super) fn find(&self, id: Dot) -> Option<(u64, u64, LeafId)> {
        self.get(id.peer)?.find(id.counter)
    }

    /// The first existing id among `[s, e)`.
    pub(super) fn first_overlap(&self, peer: PeerId, s: u64, e: u64) -> Option<u64> {
        let p = self.get(peer)?;
        if s >= p.max_end() {
            return None;
        }
        if p.find(s).is_some() {
            return Some(s);
        }
        if let Some((&a, _)) = p.map.range(s..e).next() {
            return Some(a);
        }
        p.top.and_then(|t| (t.0 < e && t.0 >= s).then_some(t.0))
    }

    /// The first id among `[s, e)` that does not exist.
    pub(super) fn first_missing(&self, peer: PeerId, s: u64, e: u64) -> Option<u64> {
        let Some(p) = self.get(peer) else { return Some(s) };
        let mut cur = match p.find(s) {
            Some((_, b, _)) => b,
            None => return Some(s),
        };
        while cur < e {
            match p.starting_at(cur) {
                Some((_, b, _)) => cur = b,
                None => return Some(cur),
            }
        }
        None
    }

    /// Adds the new ids `[s, e)` (none of which exist), held by `leaf`.
    pub(super) fn insert_new(&mut self, peer: PeerId, s: u64, e: u64, leaf: LeafId) {
        let p = self.get_mut(peer);
        match p.top {
            None => {
                p.top = Some((s, e, leaf));
                return;
            }
            Some(ref mut t) if s >= t.1 => {
                // Above everything: the common case.
                if s == t.1 && t.2 == leaf {
                    t.1 = e;
                } else {
                    let old = *t;
                    *t = (s, e, leaf);
                    p.map.insert(old.0, (old.1, old.2));
                }
                return;
            }
            Some(_) => {}
        }
        p.flush();
        let m = &mut p.map;
        let mut end = e;
        if let Some(&(b, l)) = m.get(&e) {
            if l == leaf {
                m.remove(&e);
                end = b;
            }
        }
        let mut merged = false;
        if let Some((_, v)) = m.range_mut(..s).next_back() {
            if v.0 == s && v.1 == leaf {
                v.0 = end;
                merged = true;
            }
        }
        if !merged {
            m.insert(s, (end, leaf));
        }
        p.unflush();
    }

    /// Records that the existing ids `[s, e)` now live in `leaf`.
    pub(super) fn reassign(&mut self, peer: PeerId, s: u64, e: u64, leaf: LeafId) {
        let p = self.get_mut(peer);
        p.flush();
        let m = &mut p.map;
        let overlapping: Vec<(u64, u64, LeafId)> =
            m.range(..e).rev().take_while(|(_, v)| v.0 > s).map(|(&a, &(b, l))| (a, b, l)).collect();
        for (a, b, l) in overlapping {
            m.remove(&a);
            if a < s {
                m.insert(a, (s, l));
            }
            if b > e {
                m.insert(e, (b, l));
            }
        }
        p.unflush();
        self.insert_new(peer, s, e, leaf);
    }
}
