//! Leaves: the runs in document order, cut into leaves of at most `cap` runs.

use super::fenwick::Fenwick;
use super::run::Run;
use super::{SeqContent, Sequence};
use crate::crdt::clock::PeerId;

pub(super) type LeafId = u32;

#[derive(Clone, Debug)]
pub(super) struct Leaf<C> {
    pub(super) runs: Vec<Run<C>>,
    /// Visible items in this leaf.
    pub(super) vis: usize,
    /// All items (tombstones included) in this leaf.
    pub(super) total: usize,
    /// Position of this leaf in `Sequence::order`.
    pub(super) order: u32,
}

impl<C: SeqContent> Leaf<C> {
    pub(super) fn new(runs: Vec<Run<C>>, order: u32) -> Self {
        let mut l = Leaf { runs, vis: 0, total: 0, order };
        l.recount();
        l
    }

    pub(super) fn recount(&mut self) {
        self.vis = self.runs.iter().map(Run::vis_len).sum();
        self.total = self.runs.iter().map(Run::len).sum();
    }
}

impl<C: SeqContent> Sequence<C> {
    #[inline]
    pub(super) fn leaf_at(&self, k: usize) -> &Leaf<C> {
        &self.leaves[self.order[k] as usize]
    }

    /// Splits leaf `k` if it has too many runs; returns the number of leaves added after it.
    pub(super) fn split_leaf_if_needed(&mut self, k: usize) -> usize {
        let leaf_id = self.order[k] as usize;
        let count = self.leaves[leaf_id].runs.len();
        if count <= self.cap {
            return 0;
        }
        let half = (self.cap / 2).max(1);
        let pieces = (count / half).max(2);
        let base = count / pieces;
        let extra = count % pieces;
        // Start index of each piece.
        let starts: Vec<usize> = (0..pieces).map(|p| p * base + p.min(extra)).collect();
        let mut all = std::mem::take(&mut self.leaves[leaf_id].runs);
        let mut chunks: Vec<Vec<Run<C>>> = Vec::with_capacity(pieces - 1);
        for &st in starts[1..].iter().rev() {
            chunks.push(all.split_off(st));
        }
        chunks.reverse();
        // The leaf's buffer grew past the cap (doubling); give back what the first piece does not need.
        all.shrink_to_fit();
        self.leaves[leaf_id].runs = all;
        self.leaves[leaf_id].recount();
        let mut ranges: Vec<(PeerId, u64, u64)> = Vec::new();
        for (i, chunk) in chunks.into_iter().enumerate() {
            let new_id = self.leaves.len() as LeafId;
            ranges.clear();
            ranges.extend(chunk.iter().map(|r| (r.id.peer, r.id.counter, r.id.counter + r.len() as u64)));
            ranges.sort_unstable();
            let mut w = 0;
            for r in 1..ranges.len() {
                if ranges[r].0 == ranges[w].0 && ranges[r].1 == ranges[w].2 {
                    ranges[w].2 = ranges[r].2;
                } else {
                    w += 1;
                    ranges[w] = ranges[r];
                }
            }
            ranges.truncate(w + 1);
            for &(p, s, e) in &ranges {
                self.ids.reassign(p, s, e, new_id);
            }
            self.leaves.push(Leaf::new(chunk, 0));
            self.order.insert(k + 1 + i, new_id);
        }
        for idx in k + 1..self.order.len() {
            let l = self.order[idx] as usize;
            self.leaves[l].order = idx as u32;
        }
        self.rebuild_fenwick();
        pieces - 1
    }

    pub(super) fn rebuild_fenwick(&mut self) {
        let leaves = &self.leaves;
        self.fw = Fenwick::build(self.order.iter().map(|&l| {
            let l = &leaves[l as usize];
            [l.vis, l.total]
        }));
    }
}
