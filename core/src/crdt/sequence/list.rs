//! Lists: `Vec<T>` as sequence content, and access to the items of a [`Sequence<Vec<T>>`].

use super::{SeqContent, Sequence};
use crate::crdt::clock::Dot;
use std::fmt;

impl<T: Clone + fmt::Debug> SeqContent for Vec<T> {
    #[inline]
    fn len(&self) -> usize {
        Vec::len(self)
    }
    #[inline]
    fn split_off(&mut self, at: usize) -> Self {
        Vec::split_off(self, at.min(Vec::len(self)))
    }
    #[inline]
    fn append(&mut self, mut other: Self) {
        Vec::append(self, &mut other)
    }
}

impl<T: Clone + fmt::Debug> Sequence<Vec<T>> {
    /// The visible item `pos`.
    pub fn get(&self, pos: usize) -> Option<(Dot, &T)> {
        let (k, j, o) = self.find_visible(pos)?;
        let r = &self.leaf_at(k).runs[j];
        Some((r.id.offset(o as u64), r.content.get(o)?))
    }

    /// The visible item at `pos`, to change, with its id.
    pub fn get_mut(&mut self, pos: usize) -> Option<(Dot, &mut T)> {
        let (k, j, o) = self.find_visible(pos)?;
        let l = self.order[k] as usize;
        let r = &mut self.leaves[l].runs[j];
        Some((r.id.offset(o as u64), r.content.get_mut(o)?))
    }

    /// The item with this id and whether it is deleted.
    pub fn get_by_id(&self, id: Dot) -> Option<(&T, bool)> {
        let loc = self.locate(id)?;
        let r = &self.leaf_at(loc.k).runs[loc.j];
        Some((r.content.get(loc.o)?, loc.deleted))
    }

    /// The item with this id, to change, and whether it is deleted.
    pub fn get_by_id_mut(&mut self, id: Dot) -> Option<(&mut T, bool)> {
        let loc = self.locate(id)?;
        let l = self.order[loc.k] as usize;
        let r = &mut self.leaves[l].runs[loc.j];
        Some((r.content.get_mut(loc.o)?, loc.deleted))
    }

    /// Every item in order, tombstones included.
    pub fn all_items(&self) -> impl Iterator<Item = &T> + '_ {
        self.all_runs().flat_map(|r| r.content.iter())
    }

    /// Calls `f(id, item, deleted)` for every item in order, tombstones included.
    pub fn for_each_mut(&mut self, mut f: impl FnMut(Dot, &mut T, bool)) {
        for &l in &self.order {
            for r in &mut self.leaves[l as usize].runs {
                let (id, deleted) = (r.id, r.deleted);
                for (o, item) in r.content.iter_mut().enumerate() {
                    f(id.offset(o as u64), item, deleted);
                }
            }
        }
    }
}
