//! Lookups: an item by visible position, by position among all items or by id; iteration over the runs.

use super::run::Run;
use super::{SeqContent, SeqError, Sequence};
use crate::crdt::clock::Dot;

/// Where an id is.
#[derive(Clone, Copy, Debug)]
pub(super) struct Loc {
    /// Order index of the leaf.
    pub(super) k: usize,
    /// Run index in the leaf.
    pub(super) j: usize,
    /// Offset in the run.
    pub(super) o: usize,
    /// Position among all items.
    tot: usize,
    /// Number of visible items before it.
    vis: usize,
    pub(super) deleted: bool,
}

impl<C: SeqContent> Sequence<C> {
    /// The visible item `pos` (< len): (leaf order index, run index, offset).
    pub(super) fn find_visible(&self, pos: usize) -> Option<(usize, usize, usize)> {
        if pos >= self.vis_len {
            return None;
        }
        let (k, acc) = self.fw.search(0, pos);
        let leaf = self.leaves.get(*self.order.get(k)? as usize)?;
        let mut rem = pos - acc[0];
        for (j, r) in leaf.runs.iter().enumerate() {
            if !r.deleted {
                let l = r.len();
                if rem < l {
                    return Some((k, j, rem));
                }
                rem -= l;
            }
        }
        None
    }

    /// The item at position `t` (< total_len) among all items.
    pub(super) fn find_total(&self, t: usize) -> Option<(usize, usize, usize)> {
        if t >= self.total_len {
            return None;
        }
        let (k, acc) = self.fw.search(1, t);
        let leaf = self.leaves.get(*self.order.get(k)? as usize)?;
        let mut rem = t - acc[1];
        for (j, r) in leaf.runs.iter().enumerate() {
            let l = r.len();
            if rem < l {
                return Some((k, j, rem));
            }
            rem -= l;
        }
        None
    }

    pub(super) fn locate(&self, id: Dot) -> Option<Loc> {
        let (_, _, leaf_id) = self.ids.find(id)?;
        let leaf = self.leaves.get(leaf_id as usize)?;
        let k = leaf.order as usize;
        let [mut vis, mut tot] = self.fw.prefix(k);
        for (j, r) in leaf.runs.iter().enumerate() {
            if let Some(o) = r.offset_of(id) {
                tot += o;
                if !r.deleted {
                    vis += o;
                }
                return Some(Loc { k, j, o, tot, vis, deleted: r.deleted });
            }
            tot += r.len();
            vis += r.vis_len();
        }
        None
    }

    #[inline]
    pub(super) fn total_pos(&self, id: Dot) -> Result<usize, SeqError> {
        self.locate(id).map(|l| l.tot).ok_or(SeqError::UnknownId(id))
    }

    /// Id of the first item at or after run `j` of leaf `k` (`j` may be the leaf's run count), tombstones included.
    pub(super) fn id_after(&self, k: usize, j: usize) -> Option<Dot> {
        if let Some(r) = self.leaf_at(k).runs.get(j) {
            return Some(r.id);
        }
        (k + 1..self.order.len()).find_map(|kk| self.leaf_at(kk).runs.first().map(|r| r.id))
    }

    /// Insertion point at the very end: (leaf order index, run index, 0).
    pub(super) fn end_place(&self) -> (usize, usize, usize) {
        let k = self.order.len() - 1;
        (k, self.leaf_at(k).runs.len(), 0)
    }

    /// Whether an item with this id exists (deleted or not).
    pub fn contains_id(&self, id: Dot) -> bool {
        self.ids.find(id).is_some()
    }

    /// Whether every id `peer:start..end` is in the sequence (deleted or not). Costs one lookup per range of the
    /// id index the span covers, never one per id.
    pub fn contains_ids(&self, peer: crate::crdt::clock::PeerId, start: u64, end: u64) -> bool {
        start >= end || self.ids.first_missing(peer, start, end).is_none()
    }

    /// Id of the visible item `pos`.
    pub fn id_at(&self, pos: usize) -> Option<Dot> {
        let (k, j, o) = self.find_visible(pos)?;
        Some(self.leaf_at(k).runs[j].id.offset(o as u64))
    }

    /// The visible index the item has (or, if deleted, would have), and whether it is visible.
    pub fn position_of(&self, id: Dot) -> Option<(usize, bool)> {
        self.locate(id).map(|l| (l.vis, !l.deleted))
    }

    pub(super) fn all_runs(&self) -> impl Iterator<Item = &Run<C>> + '_ {
        self.order.iter().flat_map(move |&l| self.leaves[l as usize].runs.iter())
    }

    /// The visible content in order, one entry per stored run, with the id of the run's first item (the items of
    /// an entry have consecutive ids).
    pub fn visible_runs(&self) -> impl Iterator<Item = (Dot, &C)> + '_ {
        self.all_runs().filter(|r| !r.deleted).map(|r| (r.id, &r.content))
    }

    /// All content in order, tombstones included: (id of the first item, content, deleted).
    pub fn runs(&self) -> impl Iterator<Item = (Dot, &C, bool)> + '_ {
        self.all_runs().map(|r| (r.id, &r.content, r.deleted))
    }
}
