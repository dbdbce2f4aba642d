//! Runs: consecutive items stored as one (see the module docs of [`super`]).

use super::SeqContent;
use crate::crdt::clock::{Dot, PeerId};

/// An optional dot in 16 bytes instead of 24: counter 0 (never a real id) means none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct OptDot(Dot);

impl OptDot {
    const NONE: OptDot = OptDot(Dot::new(PeerId(0), 0));

    #[inline]
    fn get(self) -> Option<Dot> {
        if self.0.counter == 0 {
            None
        } else {
            Some(self.0)
        }
    }
}

impl From<Option<Dot>> for OptDot {
    #[inline]
    fn from(d: Option<Dot>) -> OptDot {
        d.map_or(OptDot::NONE, OptDot)
    }
}

/// Consecutive items, see the module docs.
#[derive(Clone, Debug)]
pub(super) struct Run<C> {
    pub(super) id: Dot,
    pub(super) left: OptDot,
    pub(super) right: OptDot,
    pub(super) deleted: bool,
    pub(super) content: C,
}

impl<C: SeqContent> Run<C> {
    #[inline]
    pub(super) fn origin_left(&self) -> Option<Dot> {
        self.left.get()
    }

    #[inline]
    pub(super) fn origin_right(&self) -> Option<Dot> {
        self.right.get()
    }

    #[inline]
    pub(super) fn len(&self) -> usize {
        self.content.len()
    }

    #[inline]
    pub(super) fn vis_len(&self) -> usize {
        if self.deleted {
            0
        } else {
            self.content.len()
        }
    }

    #[inline]
    pub(super) fn last_id(&self) -> Dot {
        self.id.offset(self.len().saturating_sub(1) as u64)
    }

    /// Offset of `id` in this run.
    #[inline]
    pub(super) fn offset_of(&self, id: Dot) -> Option<usize> {
        if self.id.peer == id.peer && id.counter >= self.id.counter {
            let o = id.counter - self.id.counter;
            if o < self.len() as u64 {
                return Some(o as usize);
            }
        }
        None
    }

    /// Whether `next` can be appended to `self` as one run.
    #[inline]
    pub(super) fn can_merge(&self, next: &Run<C>) -> bool {
        self.deleted == next.deleted
            && self.id.peer == next.id.peer
            && self.id.counter.checked_add(self.len() as u64) == Some(next.id.counter)
            && next.origin_left() == Some(self.last_id())
            && next.right == self.right
    }

    /// Keeps items `[0, at)` and returns the rest (0 < at < len).
    pub(super) fn split_off(&mut self, at: usize) -> Run<C> {
        debug_assert!(at > 0 && at < self.len());
        let content = self.content.split_off(at);
        Run {
            id: self.id.offset(at as u64),
            left: OptDot(self.id.offset(at as u64 - 1)),
            right: self.right,
            deleted: self.deleted,
            content,
        }
    }
}

/// Merges mergeable neighbours among `runs[lo..hi)`.
pub(super) fn merge_range<C: SeqContent>(runs: &mut Vec<Run<C>>, lo: usize, hi: usize) {
    let mut hi = hi.min(runs.len());
    let mut i = lo + 1;
    while i < hi {
        if runs[i - 1].can_merge(&runs[i]) {
            let r = runs.remove(i);
            runs[i - 1].content.append(r.content);
            hi -= 1;
        } else {
            i += 1;
        }
    }
}
