//! A replicated growable array: the sequence CRDT behind collaborative text and lists.
//!
//! # Order
//! Every item has a unique id ([`Dot`]) and two *origins*: the item that was immediately to its left
//! (`origin_left`) and immediately to its right (`origin_right`) when it was inserted, tombstones included.
//! Concurrent inserts are ordered by the "YjsMod" integration rule from Joseph Gentle's reference-crdts
//! (`integrateYjsMod`), which is equivalent to FugueMax: runs typed concurrently at the same place are never
//! interleaved, forwards or backwards. Deleted items stay as tombstones so that later operations can still refer to
//! them, until a causally stable frontier settles them: then all but the first of each stretch go (`collect`).
//!
//! # Representation
//! Items are run-length encoded: consecutive items of one peer with consecutive counters, where each item's
//! `origin_left` is the previous item, all share one `origin_right` and one deleted flag, are stored as one
//! [`Run`](run::Run). Runs live in leaves of at most `cap` runs (64 by default); the leaves are kept in document
//! order in `order`, and a Fenwick tree over that order caches the visible and total lengths, so a position lookup
//! costs `O(log leaves + cap)`. An id index maps, per peer, ranges of counters to the (stable) leaf that holds them,
//! so a lookup by id costs `O(log ranges + cap)`; it only changes when runs move to a new leaf (a leaf split), never
//! when runs split or merge inside a leaf.
//!
//! # Files
//! * here: the public types ([`Sequence`], [`SeqContent`], the operations and [`SeqError`]) and the sequence's
//!   fields;
//! * `run`: one run of items and its optional origins;
//! * `leaf`: leaves of runs, splitting a leaf that grew too large, the Fenwick tree's rebuild;
//! * `fenwick`: the Fenwick tree over leaves (visible and total lengths);
//! * `id_index`: the index from ids to leaves;
//! * `lookup`: finding an item by position or id, iterating over the content;
//! * `insert`: local and remote inserts, the YjsMod integration;
//! * `delete`: local and remote deletes;
//! * `join`: state-based merge of another replica's sequence;
//! * `collect`: dropping the tombstones no later change can name, under a causally stable frontier;
//! * `encoding`: serialization as a flat list of runs, and its validation;
//! * `text`: text content ([`Chars`]); `list`: lists of values (`Vec<T>`).

mod collect;
mod delete;
mod encoding;
mod fenwick;
mod id_index;
mod insert;
mod join;
mod leaf;
mod list;
mod lookup;
mod run;
mod text;

pub(crate) use encoding::{decoding, decoding_format};
pub use text::Chars;

use super::clock::{Dot, PeerId};
use fenwick::Fenwick;
use id_index::IdIndex;
use leaf::{Leaf, LeafId};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A run of content: a number of items that can be split and concatenated.
pub trait SeqContent: Clone + fmt::Debug {
    /// Number of items in this run (≥ 1 for runs stored in a sequence).
    fn len(&self) -> usize;
    /// Whether the run has no items.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Keeps items `[0, at)` in `self` and returns `[at, len)`. `at` must be ≤ `len()`.
    fn split_off(&mut self, at: usize) -> Self;
    /// Appends `other` after the items of `self`.
    fn append(&mut self, other: Self);
    /// `len` items standing in for deleted ones whose content is not kept (a state leaves out the characters of
    /// deleted text: nothing shows them again); `None` when deleted items keep their content (array elements).
    fn placeholder(_len: usize) -> Option<Self> {
        None
    }
}

/// An insert to replicate: `content.len()` items with ids `id, id.offset(1), ...`. Item 0 has the given origins;
/// item `k > 0` has `origin_left = id.offset(k - 1)` and the same `origin_right`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeqInsert<C> {
    /// The id of the first item (the others follow with consecutive counters).
    pub id: Dot,
    /// The item the first one was inserted after (`None`: at the start).
    pub origin_left: Option<Dot>,
    /// The item the run was inserted before (`None`: at the end).
    pub origin_right: Option<Dot>,
    /// The items.
    pub content: C,
}

/// The ids `start .. start + len` of one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdSpan {
    /// The peer whose ids these are.
    pub peer: PeerId,
    /// The first counter.
    pub start: u64,
    /// How many consecutive counters.
    pub len: u64,
}

/// Why an edit of a sequence, local or received, was refused (the sequence is unchanged).
#[derive(thiserror::Error, Debug, PartialEq)]
pub enum SeqError {
    /// A position past the visible items.
    #[error("index {index} out of bounds (length {len})")]
    IndexOutOfBounds {
        /// The position asked for.
        index: usize,
        /// The number of visible items.
        len: usize,
    },
    /// An origin or deleted id that this sequence does not hold.
    #[error("unknown id {0:?}")]
    UnknownId(Dot),
    /// An insert of ids the sequence already holds.
    #[error("duplicate id {0:?}")]
    DuplicateId(Dot),
    /// An insert of nothing.
    #[error("empty content")]
    EmptyContent,
    /// Ids past the largest counter.
    #[error("id counter overflow at {0:?}")]
    CounterOverflow(Dot),
    /// A span of ids that is empty or overflows.
    #[error("invalid id span {0:?}")]
    InvalidSpan(IdSpan),
    /// A right origin that does not come after the left one.
    #[error("origins out of order: left {left:?}, right {right:?}")]
    InvalidOrigins {
        /// The left origin.
        left: Option<Dot>,
        /// The right origin.
        right: Option<Dot>,
    },
    /// A bug: the sequence's own structures disagree.
    #[error("internal inconsistency: {0}")]
    Internal(&'static str),
}

/// Default maximum number of runs per leaf.
const LEAF_CAP: usize = 64;

/// A replicated sequence of items with content `C` (see the module docs).
#[derive(Clone, Debug)]
pub struct Sequence<C: SeqContent> {
    /// Leaf arena; `LeafId`s are stable. Never empty.
    leaves: Vec<Leaf<C>>,
    /// Leaves in document order. Only a sequence with a single leaf may have an empty leaf.
    order: Vec<LeafId>,
    fw: Fenwick,
    ids: IdIndex,
    vis_len: usize,
    total_len: usize,
    /// Maximum runs per leaf before it is split.
    cap: usize,
}

impl<C: SeqContent> Default for Sequence<C> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: SeqContent> Sequence<C> {
    /// An empty sequence.
    pub fn new() -> Self {
        Self::with_leaf_capacity(LEAF_CAP)
    }

    fn with_leaf_capacity(cap: usize) -> Self {
        Sequence {
            leaves: vec![Leaf::new(Vec::new(), 0)],
            order: vec![0],
            fw: Fenwick::build(std::iter::once([0, 0])),
            ids: IdIndex::default(),
            vis_len: 0,
            total_len: 0,
            cap: cap.max(4),
        }
    }

    /// Number of visible (non-deleted) items.
    pub fn len(&self) -> usize {
        self.vis_len
    }

    /// Whether no item is visible.
    pub fn is_empty(&self) -> bool {
        self.vis_len == 0
    }

    /// Number of items, tombstones included.
    pub fn total_len(&self) -> usize {
        self.total_len
    }

    /// Number of runs stored (for diagnostics).
    pub fn run_count(&self) -> usize {
        self.leaves.iter().map(|l| l.runs.len()).sum()
    }

    /// Number of leaves (for diagnostics).
    pub fn leaf_count(&self) -> usize {
        self.leaves.len()
    }
}

#[cfg(test)]
mod tests;
