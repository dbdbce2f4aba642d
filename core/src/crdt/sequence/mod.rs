//! A replicated growable array: the sequence CRDT behind collaborative text and lists.
//!
//! # Order
//! Every item has a unique id ([`Dot`]) and two *origins*: the item that was immediately to its left
//! (`origin_left`) and immediately to its right (`origin_right`) when it was inserted, tombstones included.
//! Concurrent inserts are ordered by the "YjsMod" integration rule from Joseph Gentle's reference-crdts
//! (`integrateYjsMod`), which is equivalent to FugueMax: runs typed concurrently at the same place are never
//! interleaved, forwards or backwards. Deleted items stay as tombstones so that later operations can still refer to
//! them.
//!
//! # Representation
//! Items are run-length encoded: consecutive items of one peer with consecutive counters, where each item's
//! `origin_left` is the previous item, all share one `origin_right` and one deleted flag, are stored as one [`Run`].
//! Runs live in leaves of at most `cap` runs (64 by default); the leaves are kept in document order in `order`, and
//! a Fenwick tree over that order caches the visible and total lengths, so a position lookup costs
//! `O(log leaves + cap)`. An id index maps, per peer, ranges of counters to the (stable) leaf that holds them, so a
//! lookup by id costs `O(log ranges + cap)`; it only changes when runs move to a new leaf (a leaf split), never
//! when runs split or merge inside a leaf.

use super::clock::{Dot, PeerId};
use super::version::VersionVector;
use serde::de::Error as _;
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;

// ---------------------------------------------------------------------------------------------------------------
// Content
// ---------------------------------------------------------------------------------------------------------------

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
}

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

/// Bytes stored inline (without a heap allocation) by [`Chars`].
const INLINE_BYTES: usize = 22;

/// String storage with a small-string optimisation: short text (the common case for typed runs and single-key
/// operations) needs no allocation.
#[derive(Clone)]
enum Buf {
    Inline { len: u8, bytes: [u8; INLINE_BYTES] },
    Heap(String),
}

impl Buf {
    #[inline]
    fn from_str(s: &str) -> Buf {
        if s.len() <= INLINE_BYTES {
            let mut bytes = [0u8; INLINE_BYTES];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            Buf::Inline { len: s.len() as u8, bytes }
        } else {
            Buf::Heap(s.to_owned())
        }
    }

    #[inline]
    fn as_str(&self) -> &str {
        match self {
            // Always valid UTF-8: inline bytes are only ever copied from whole `str`s cut at char boundaries.
            Buf::Inline { len, bytes } => std::str::from_utf8(&bytes[..*len as usize]).unwrap_or_default(),
            Buf::Heap(s) => s,
        }
    }

    #[inline]
    fn bytes(&self) -> &[u8] {
        match self {
            Buf::Inline { len, bytes } => &bytes[..*len as usize],
            Buf::Heap(s) => s.as_bytes(),
        }
    }

    /// Appends `other`.
    #[inline]
    fn push_buf(&mut self, other: &Buf) {
        if let (Buf::Inline { len, bytes }, Buf::Inline { len: ol, bytes: ob }) = (&mut *self, other) {
            let (l, o) = (*len as usize, *ol as usize);
            if l + o <= INLINE_BYTES {
                // Both are whole UTF-8 strings, so the concatenation is one too.
                bytes[l..l + o].copy_from_slice(&ob[..o]);
                *len = (l + o) as u8;
                return;
            }
        }
        self.push_str(other.as_str())
    }

    fn push_str(&mut self, t: &str) {
        match self {
            Buf::Inline { len, bytes } => {
                let l = *len as usize;
                if l + t.len() <= INLINE_BYTES {
                    bytes[l..l + t.len()].copy_from_slice(t.as_bytes());
                    *len = (l + t.len()) as u8;
                } else {
                    let mut s = String::with_capacity((l + t.len()).max(2 * INLINE_BYTES));
                    s.push_str(self.as_str());
                    s.push_str(t);
                    *self = Buf::Heap(s);
                }
            }
            Buf::Heap(s) => s.push_str(t),
        }
    }

    /// Keeps bytes `[0, b)` and returns the rest; `b` is a char boundary.
    fn split_off(&mut self, b: usize) -> Buf {
        match self {
            Buf::Inline { len, bytes } => {
                let l = *len as usize;
                let b = b.min(l);
                let mut right = [0u8; INLINE_BYTES];
                right[..l - b].copy_from_slice(&bytes[b..l]);
                *len = b as u8;
                Buf::Inline { len: (l - b) as u8, bytes: right }
            }
            Buf::Heap(s) => {
                let b = b.min(s.len());
                let right = if s.len() - b <= INLINE_BYTES {
                    let r = Buf::from_str(s.get(b..).unwrap_or_default());
                    s.truncate(b);
                    r
                } else {
                    Buf::Heap(s.split_off(b))
                };
                if s.len() <= INLINE_BYTES {
                    *self = Buf::from_str(s);
                }
                right
            }
        }
    }
}

impl Default for Buf {
    fn default() -> Self {
        Buf::Inline { len: 0, bytes: [0; INLINE_BYTES] }
    }
}

/// Text content: a string whose items are Unicode scalar values (positions count code points). Short strings are
/// stored inline.
#[derive(Clone, Default)]
pub struct Chars {
    buf: Buf,
    /// Number of `char`s.
    n: usize,
}

impl Chars {
    pub fn new() -> Self {
        Chars::default()
    }

    /// The text.
    #[inline]
    pub fn as_str(&self) -> &str {
        self.buf.as_str()
    }

    /// Number of code points.
    pub fn char_len(&self) -> usize {
        self.n
    }

    /// Appends the text to `out`.
    pub fn push_to(&self, out: &mut String) {
        out.push_str(self.as_str())
    }

    /// Appends one character.
    pub fn push(&mut self, c: char) {
        let mut b = [0u8; 4];
        self.buf.push_str(c.encode_utf8(&mut b));
        self.n += 1;
    }

    pub fn push_str(&mut self, s: &str) {
        self.buf.push_str(s);
        self.n += s.chars().count();
    }

    pub fn into_string(self) -> String {
        match self.buf {
            Buf::Heap(s) => s,
            b @ Buf::Inline { .. } => b.as_str().to_owned(),
        }
    }

    /// Byte offset of code point `at` (clamped to the end).
    fn byte_offset(&self, at: usize) -> usize {
        let b = self.buf.bytes();
        if at >= self.n {
            b.len()
        } else if self.n == b.len() {
            at // ASCII
        } else {
            // The `at`-th byte that starts a char (is not a UTF-8 continuation byte).
            b.iter().enumerate().filter(|(_, &x)| (x & 0xC0) != 0x80).nth(at).map_or(b.len(), |(i, _)| i)
        }
    }
}

impl PartialEq for Chars {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Chars {}

impl std::hash::Hash for Chars {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl SeqContent for Chars {
    #[inline]
    fn len(&self) -> usize {
        self.n
    }

    fn split_off(&mut self, at: usize) -> Self {
        let b = self.byte_offset(at);
        let right = self.buf.split_off(b);
        let at = at.min(self.n);
        let rn = self.n - at;
        self.n = at;
        Chars { buf: right, n: rn }
    }

    #[inline]
    fn append(&mut self, other: Self) {
        match (&mut self.buf, other.buf) {
            (Buf::Inline { len: 0, .. }, ob) => self.buf = ob,
            (sb, ob) => sb.push_buf(&ob),
        }
        self.n += other.n;
    }
}

impl From<&str> for Chars {
    #[inline]
    fn from(s: &str) -> Self {
        let n = if s.len() == 1 { 1 } else { s.chars().count() };
        Chars { buf: Buf::from_str(s), n }
    }
}

impl From<String> for Chars {
    fn from(s: String) -> Self {
        let n = s.chars().count();
        let buf = if s.len() <= INLINE_BYTES { Buf::from_str(&s) } else { Buf::Heap(s) };
        Chars { buf, n }
    }
}

impl From<char> for Chars {
    fn from(c: char) -> Self {
        let mut b = [0u8; 4];
        Chars { buf: Buf::from_str(c.encode_utf8(&mut b)), n: 1 }
    }
}

impl From<Chars> for String {
    fn from(c: Chars) -> Self {
        c.into_string()
    }
}

impl AsRef<str> for Chars {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for Chars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Chars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Chars {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Chars {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Chars;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Chars, E> {
                Ok(Chars::from(v))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Chars, E> {
                Ok(Chars::from(v))
            }
        }
        deserializer.deserialize_string(V)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Operations and errors
// ---------------------------------------------------------------------------------------------------------------

/// An insert to replicate: `content.len()` items with ids `id, id.offset(1), ...`. Item 0 has the given origins;
/// item `k > 0` has `origin_left = id.offset(k - 1)` and the same `origin_right`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeqInsert<C> {
    pub id: Dot,
    pub origin_left: Option<Dot>,
    pub origin_right: Option<Dot>,
    pub content: C,
}

/// The ids `start .. start + len` of one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdSpan {
    pub peer: PeerId,
    pub start: u64,
    pub len: u64,
}

#[derive(thiserror::Error, Debug, PartialEq)]
pub enum SeqError {
    #[error("index {index} out of bounds (length {len})")]
    IndexOutOfBounds { index: usize, len: usize },
    #[error("unknown id {0:?}")]
    UnknownId(Dot),
    #[error("duplicate id {0:?}")]
    DuplicateId(Dot),
    #[error("empty content")]
    EmptyContent,
    #[error("id counter overflow at {0:?}")]
    CounterOverflow(Dot),
    #[error("invalid id span {0:?}")]
    InvalidSpan(IdSpan),
    #[error("origins out of order: left {left:?}, right {right:?}")]
    InvalidOrigins { left: Option<Dot>, right: Option<Dot> },
    #[error("internal inconsistency: {0}")]
    Internal(&'static str),
}

// ---------------------------------------------------------------------------------------------------------------
// Runs and leaves
// ---------------------------------------------------------------------------------------------------------------

/// An optional dot in 16 bytes instead of 24: counter 0 (never a real id) means none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct OptDot(Dot);

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
struct Run<C> {
    id: Dot,
    left: OptDot,
    right: OptDot,
    deleted: bool,
    content: C,
}

impl<C: SeqContent> Run<C> {
    #[inline]
    fn origin_left(&self) -> Option<Dot> {
        self.left.get()
    }

    #[inline]
    fn origin_right(&self) -> Option<Dot> {
        self.right.get()
    }

    #[inline]
    fn len(&self) -> usize {
        self.content.len()
    }

    #[inline]
    fn vis_len(&self) -> usize {
        if self.deleted {
            0
        } else {
            self.content.len()
        }
    }

    #[inline]
    fn last_id(&self) -> Dot {
        self.id.offset(self.len().saturating_sub(1) as u64)
    }

    /// Offset of `id` in this run.
    #[inline]
    fn offset_of(&self, id: Dot) -> Option<usize> {
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
    fn can_merge(&self, next: &Run<C>) -> bool {
        self.deleted == next.deleted
            && self.id.peer == next.id.peer
            && self.id.counter.checked_add(self.len() as u64) == Some(next.id.counter)
            && next.origin_left() == Some(self.last_id())
            && next.right == self.right
    }

    /// Keeps items `[0, at)` and returns the rest (0 < at < len).
    fn split_off(&mut self, at: usize) -> Run<C> {
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
fn merge_range<C: SeqContent>(runs: &mut Vec<Run<C>>, lo: usize, hi: usize) {
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

type LeafId = u32;

#[derive(Clone, Debug)]
struct Leaf<C> {
    runs: Vec<Run<C>>,
    /// Visible items in this leaf.
    vis: usize,
    /// All items (tombstones included) in this leaf.
    total: usize,
    /// Position of this leaf in `Sequence::order`.
    order: u32,
}

impl<C: SeqContent> Leaf<C> {
    fn new(runs: Vec<Run<C>>, order: u32) -> Self {
        let mut l = Leaf { runs, vis: 0, total: 0, order };
        l.recount();
        l
    }

    fn recount(&mut self) {
        self.vis = self.runs.iter().map(Run::vis_len).sum();
        self.total = self.runs.iter().map(Run::len).sum();
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Fenwick tree over leaves (visible and total lengths)
// ---------------------------------------------------------------------------------------------------------------

#[derive(Clone, Debug, Default)]
struct Fenwick {
    t: Vec<[usize; 2]>,
}

impl Fenwick {
    fn build(vals: impl Iterator<Item = [usize; 2]>) -> Self {
        let mut t: Vec<[usize; 2]> = vals.collect();
        let n = t.len();
        for i in 0..n {
            let j = i | (i + 1);
            if j < n {
                let v = t[i];
                t[j][0] += v[0];
                t[j][1] += v[1];
            }
        }
        Fenwick { t }
    }

    #[inline]
    fn add(&mut self, mut i: usize, dvis: isize, dtot: isize) {
        while i < self.t.len() {
            self.t[i][0] = self.t[i][0].wrapping_add_signed(dvis);
            self.t[i][1] = self.t[i][1].wrapping_add_signed(dtot);
            i |= i + 1;
        }
    }

    /// Sums over leaves `[0, k)`.
    #[inline]
    fn prefix(&self, mut k: usize) -> [usize; 2] {
        let mut r = [0, 0];
        while k > 0 {
            let v = self.t[k - 1];
            r[0] += v[0];
            r[1] += v[1];
            k &= k - 1;
        }
        r
    }

    /// The largest `k` with `prefix(k)[c] <= target`, and `prefix(k)`.
    #[inline]
    fn search(&self, c: usize, target: usize) -> (usize, [usize; 2]) {
        let n = self.t.len();
        let mut pos = 0;
        let mut acc = [0, 0];
        let mut step = if n == 0 { 0 } else { 1usize << (usize::BITS - 1 - n.leading_zeros()) };
        while step > 0 {
            let nxt = pos + step;
            if nxt <= n {
                let v = self.t[nxt - 1];
                if acc[c] + v[c] <= target {
                    pos = nxt;
                    acc[0] += v[0];
                    acc[1] += v[1];
                }
            }
            step >>= 1;
        }
        (pos, acc)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Id index
// ---------------------------------------------------------------------------------------------------------------

/// Per peer: disjoint counter ranges `start -> (end, leaf)`. The union of the ranges is exactly the set of ids in
/// the sequence, and every id of a range lives in that range's leaf.
#[derive(Clone, Debug, Default)]
struct IdIndex {
    peers: Vec<(PeerId, PeerIds)>,
}

#[derive(Clone, Debug, Default)]
struct PeerIds {
    /// All ranges but the highest.
    map: BTreeMap<u64, (u64, LeafId)>,
    /// The highest range, kept out of the map: new ids usually extend it, which then needs no tree operation.
    top: Option<(u64, u64, LeafId)>,
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
    fn find(&self, id: Dot) -> Option<(u64, u64, LeafId)> {
        self.get(id.peer)?.find(id.counter)
    }

    /// The first existing id among `[s, e)`.
    fn first_overlap(&self, peer: PeerId, s: u64, e: u64) -> Option<u64> {
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
    fn first_missing(&self, peer: PeerId, s: u64, e: u64) -> Option<u64> {
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
    fn insert_new(&mut self, peer: PeerId, s: u64, e: u64, leaf: LeafId) {
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
    fn reassign(&mut self, peer: PeerId, s: u64, e: u64, leaf: LeafId) {
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

// ---------------------------------------------------------------------------------------------------------------
// The sequence
// ---------------------------------------------------------------------------------------------------------------

/// Default maximum number of runs per leaf.
const LEAF_CAP: usize = 64;

/// Where an id is.
#[derive(Clone, Copy, Debug)]
struct Loc {
    /// Order index of the leaf.
    k: usize,
    /// Run index in the leaf.
    j: usize,
    /// Offset in the run.
    o: usize,
    /// Position among all items.
    tot: usize,
    /// Number of visible items before it.
    vis: usize,
    deleted: bool,
}

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

    #[inline]
    fn leaf_at(&self, k: usize) -> &Leaf<C> {
        &self.leaves[self.order[k] as usize]
    }

    /// The visible item `pos` (< len): (leaf order index, run index, offset).
    fn find_visible(&self, pos: usize) -> Option<(usize, usize, usize)> {
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
    fn find_total(&self, t: usize) -> Option<(usize, usize, usize)> {
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

    fn locate(&self, id: Dot) -> Option<Loc> {
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
    fn total_pos(&self, id: Dot) -> Result<usize, SeqError> {
        self.locate(id).map(|l| l.tot).ok_or(SeqError::UnknownId(id))
    }

    /// Id of the first item at or after run `j` of leaf `k` (`j` may be the leaf's run count), tombstones included.
    fn id_after(&self, k: usize, j: usize) -> Option<Dot> {
        if let Some(r) = self.leaf_at(k).runs.get(j) {
            return Some(r.id);
        }
        (k + 1..self.order.len()).find_map(|kk| self.leaf_at(kk).runs.first().map(|r| r.id))
    }

    /// Insertion point at the very end: (leaf order index, run index, 0).
    fn end_place(&self) -> (usize, usize, usize) {
        let k = self.order.len() - 1;
        (k, self.leaf_at(k).runs.len(), 0)
    }

    /// Checks that `n` new ids starting at `id` can be added.
    fn check_new_ids(&self, id: Dot, n: usize) -> Result<u64, SeqError> {
        if id.counter == 0 {
            // Counters start at 1; 0 is the "no origin" mark inside runs.
            return Err(SeqError::UnknownId(id));
        }
        let end = id.counter.checked_add(n as u64).ok_or(SeqError::CounterOverflow(id))?;
        if let Some(c) = self.ids.first_overlap(id.peer, id.counter, end) {
            return Err(SeqError::DuplicateId(Dot::new(id.peer, c)));
        }
        Ok(end)
    }

    /// Inserts `run` (visible, new ids) before offset `o` of run `j` of leaf `k` (`j` may be the leaf's run count).
    fn insert_run(&mut self, k: usize, j: usize, o: usize, run: Run<C>) {
        let n = run.len();
        let peer = run.id.peer;
        let s = run.id.counter;
        let leaf_id = self.order[k] as usize;
        let mut target_k = k;
        if o > 0 {
            let runs = &mut self.leaves[leaf_id].runs;
            let right = runs[j].split_off(o);
            runs.splice(j + 1..j + 1, [run, right]);
        } else if j > 0 && self.leaves[leaf_id].runs[j - 1].can_merge(&run) {
            self.leaves[leaf_id].runs[j - 1].content.append(run.content);
        } else if j == 0
            && k > 0
            && self.leaves[self.order[k - 1] as usize].runs.last().is_some_and(|l| l.can_merge(&run))
        {
            let prev = self.order[k - 1] as usize;
            if let Some(last) = self.leaves[prev].runs.last_mut() {
                last.content.append(run.content);
            }
            target_k = k - 1;
        } else {
            self.leaves[leaf_id].runs.insert(j, run);
        }
        let tl = self.order[target_k];
        let leaf = &mut self.leaves[tl as usize];
        leaf.vis += n;
        leaf.total += n;
        self.fw.add(target_k, n as isize, n as isize);
        self.vis_len += n;
        self.total_len += n;
        self.ids.insert_new(peer, s, s + n as u64, tl);
        self.split_leaf_if_needed(target_k);
    }

    /// Splits leaf `k` if it has too many runs; returns the number of leaves added after it.
    fn split_leaf_if_needed(&mut self, k: usize) -> usize {
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

    fn rebuild_fenwick(&mut self) {
        let leaves = &self.leaves;
        self.fw = Fenwick::build(self.order.iter().map(|&l| {
            let l = &leaves[l as usize];
            [l.vis, l.total]
        }));
    }

    /// The YjsMod integration: the position (among all items) where a new item with the given origin positions
    /// goes.
    fn integrate(&self, left: Option<usize>, right: usize, peer: PeerId) -> Result<usize, SeqError> {
        let len = self.total_len;
        let left_i: i64 = left.map_or(-1, |l| l as i64);
        let right_i = right as i64;
        let mut i = left.map_or(0, |l| l + 1);
        if i >= len || i == right {
            return Ok(i);
        }
        let (mut k, mut j, mut o) = self.find_total(i).ok_or(SeqError::Internal("integrate start"))?;
        let mut dest = i;
        let mut scanning = false;
        loop {
            if !scanning {
                dest = i;
            }
            if i >= len || i == right {
                break;
            }
            let run = &self.leaf_at(k).runs[j];
            // Items after the first one considered in a run have the previous item (> left) as origin_left, so
            // they change nothing: only the first item of each run (or of the scan) needs looking at.
            let oleft: i64 = if o > 0 {
                i as i64 - 1
            } else {
                match run.origin_left() {
                    None => -1,
                    Some(d) => self.total_pos(d)? as i64,
                }
            };
            let oright: i64 = match run.origin_right() {
                None => len as i64,
                Some(d) => self.total_pos(d)? as i64,
            };
            if oleft < left_i || (oleft == left_i && oright == right_i && peer < run.id.peer) {
                break;
            }
            if oleft == left_i {
                scanning = oright < right_i;
            }
            let rest = run.len() - o;
            if right > i && right < i + rest {
                if !scanning {
                    dest = right;
                }
                break;
            }
            i += rest;
            o = 0;
            j += 1;
            while k < self.order.len() && j >= self.leaf_at(k).runs.len() {
                k += 1;
                j = 0;
            }
        }
        Ok(dest)
    }

    /// Inserts `content` so that it starts at visible position `pos`, with new ids `id, id.offset(1), ...`.
    /// Returns the operation to send to other replicas.
    pub fn local_insert(&mut self, pos: usize, id: Dot, content: C) -> Result<SeqInsert<C>, SeqError> {
        let n = content.len();
        if n == 0 {
            return Err(SeqError::EmptyContent);
        }
        if pos > self.vis_len {
            return Err(SeqError::IndexOutOfBounds { index: pos, len: self.vis_len });
        }
        self.check_new_ids(id, n)?;
        // The new items go right after the visible item at `pos - 1` (before any tombstones that follow it), as
        // yrs, loro and diamond-types do: concurrent inserts typed at different places never share a location.
        let (k, j, o, origin_left, origin_right) = if pos == 0 {
            (0, 0, 0, None, self.id_after(0, 0))
        } else {
            let (k, j, o) = self.find_visible(pos - 1).ok_or(SeqError::Internal("visible lookup"))?;
            let run = &self.leaf_at(k).runs[j];
            let left = Some(run.id.offset(o as u64));
            if o + 1 < run.len() {
                (k, j, o + 1, left, Some(run.id.offset(o as u64 + 1)))
            } else {
                (k, j + 1, 0, left, self.id_after(k, j + 1))
            }
        };
        let op = SeqInsert { id, origin_left, origin_right, content: content.clone() };
        self.insert_run(
            k,
            j,
            o,
            Run { id, left: origin_left.into(), right: origin_right.into(), deleted: false, content },
        );
        Ok(op)
    }

    /// Applies an insert made by another replica. Its origins must exist. On error nothing changes.
    pub fn apply_insert(&mut self, op: &SeqInsert<C>) -> Result<(), SeqError> {
        let n = op.content.len();
        if n == 0 {
            return Err(SeqError::EmptyContent);
        }
        self.check_new_ids(op.id, n)?;
        let left = match op.origin_left {
            None => None,
            Some(d) => Some(self.total_pos(d)?),
        };
        let right = match op.origin_right {
            None => self.total_len,
            Some(d) => self.total_pos(d)?,
        };
        if left.is_some_and(|l| l >= right) {
            return Err(SeqError::InvalidOrigins { left: op.origin_left, right: op.origin_right });
        }
        let dest = self.integrate(left, right, op.id.peer)?;
        let (k, j, o) = if dest >= self.total_len {
            self.end_place()
        } else {
            self.find_total(dest).ok_or(SeqError::Internal("total lookup"))?
        };
        let run = Run {
            id: op.id,
            left: op.origin_left.into(),
            right: op.origin_right.into(),
            deleted: false,
            content: op.content.clone(),
        };
        self.insert_run(k, j, o, run);
        Ok(())
    }

    /// Deletes up to `max` visible items of leaf `k`, starting at its visible item `rem`. Returns how many.
    fn delete_visible_in_leaf(&mut self, k: usize, mut rem: usize, max: usize, spans: &mut Vec<IdSpan>) -> usize {
        let leaf_id = self.order[k] as usize;
        let leaf = &mut self.leaves[leaf_id];
        let runs = &mut leaf.runs;
        let mut j = 0;
        while j < runs.len() {
            let r = &runs[j];
            if !r.deleted {
                if rem < r.len() {
                    break;
                }
                rem -= r.len();
            }
            j += 1;
        }
        let first = j;
        let mut done = 0;
        while j < runs.len() && done < max {
            if runs[j].deleted {
                j += 1;
                continue;
            }
            if rem > 0 {
                let right = runs[j].split_off(rem);
                runs.insert(j + 1, right);
                j += 1;
                rem = 0;
                continue;
            }
            let len = runs[j].len();
            let take = len.min(max - done);
            if take < len {
                let right = runs[j].split_off(take);
                runs.insert(j + 1, right);
            }
            runs[j].deleted = true;
            push_span(spans, runs[j].id, take as u64);
            done += take;
            j += 1;
        }
        merge_range(runs, first.saturating_sub(1), j + 1);
        leaf.vis -= done;
        done
    }

    /// Deletes the visible items `pos .. pos + len`. Returns their ids, coalesced into spans, in document order.
    pub fn local_delete(&mut self, pos: usize, len: usize) -> Result<Vec<IdSpan>, SeqError> {
        let end = pos.checked_add(len);
        match end {
            Some(e) if e <= self.vis_len => {}
            _ => {
                let index = if pos > self.vis_len { pos } else { end.unwrap_or(usize::MAX) };
                return Err(SeqError::IndexOutOfBounds { index, len: self.vis_len });
            }
        }
        let mut spans = Vec::new();
        if len == 0 {
            return Ok(spans);
        }
        let (mut k, acc) = self.fw.search(0, pos);
        let mut rem = pos - acc[0];
        let mut left = len;
        while left > 0 && k < self.order.len() {
            let n = self.delete_visible_in_leaf(k, rem, left, &mut spans);
            rem = 0;
            left -= n;
            self.fw.add(k, -(n as isize), 0);
            self.vis_len -= n;
            k += 1 + self.split_leaf_if_needed(k);
        }
        Ok(spans)
    }

    /// Marks the ids `[s, e)` of `peer` held by leaf `leaf_id` deleted; returns how many became deleted.
    fn delete_ids_in_leaf(&mut self, leaf_id: usize, peer: PeerId, s: u64, e: u64) -> usize {
        let leaf = &mut self.leaves[leaf_id];
        let runs = &mut leaf.runs;
        let mut j = 0;
        let mut n = 0;
        let mut lo = usize::MAX;
        let mut hi = 0;
        while j < runs.len() {
            let r = &runs[j];
            if r.id.peer != peer || r.deleted {
                j += 1;
                continue;
            }
            let rs = r.id.counter;
            let re = rs + r.len() as u64;
            if re <= s || rs >= e {
                j += 1;
                continue;
            }
            if rs < s {
                let right = runs[j].split_off((s - rs) as usize);
                runs.insert(j + 1, right);
                j += 1;
                continue;
            }
            let take = (re.min(e) - rs) as usize;
            if take < runs[j].len() {
                let right = runs[j].split_off(take);
                runs.insert(j + 1, right);
            }
            runs[j].deleted = true;
            n += take;
            lo = lo.min(j);
            hi = j + 1;
            j += 1;
        }
        if n > 0 {
            merge_range(runs, lo.saturating_sub(1), hi + 1);
            leaf.vis -= n;
        }
        n
    }

    /// Applies a delete made by another replica. Deleting an already deleted item is fine; an unknown id is an
    /// error (checked for all spans before anything changes).
    pub fn apply_delete(&mut self, spans: &[IdSpan]) -> Result<(), SeqError> {
        for sp in spans {
            if sp.len == 0 {
                continue;
            }
            let end = sp.start.checked_add(sp.len).ok_or(SeqError::InvalidSpan(*sp))?;
            if let Some(c) = self.ids.first_missing(sp.peer, sp.start, end) {
                return Err(SeqError::UnknownId(Dot::new(sp.peer, c)));
            }
        }
        for sp in spans {
            let end = sp.start.saturating_add(sp.len);
            let mut cur = sp.start;
            while cur < end {
                let (_, b, leaf_id) =
                    self.ids.find(Dot::new(sp.peer, cur)).ok_or(SeqError::Internal("span vanished"))?;
                let e = b.min(end);
                let k = self.leaves[leaf_id as usize].order as usize;
                let n = self.delete_ids_in_leaf(leaf_id as usize, sp.peer, cur, e);
                if n > 0 {
                    self.fw.add(k, -(n as isize), 0);
                    self.vis_len -= n;
                    self.split_leaf_if_needed(k);
                }
                cur = e;
            }
        }
        Ok(())
    }

    /// Deletes every item whose id is covered by `vv`. Returns how many items became deleted.
    pub fn delete_covered(&mut self, vv: &VersionVector) -> usize {
        if vv.is_empty() {
            return 0;
        }
        let mut count = 0;
        for leaf in &mut self.leaves {
            let old = std::mem::take(&mut leaf.runs);
            let mut runs: Vec<Run<C>> = Vec::with_capacity(old.len());
            let mut changed = false;
            for mut r in old {
                if !r.deleted {
                    let max = vv.get(r.id.peer);
                    if max >= r.id.counter {
                        let covered = (max - r.id.counter).saturating_add(1).min(r.len() as u64) as usize;
                        count += covered;
                        changed = true;
                        if covered < r.len() {
                            let right = r.split_off(covered);
                            r.deleted = true;
                            runs.push(r);
                            runs.push(right);
                        } else {
                            r.deleted = true;
                            runs.push(r);
                        }
                        continue;
                    }
                }
                runs.push(r);
            }
            if changed {
                let l = runs.len();
                merge_range(&mut runs, 0, l);
                leaf.runs = runs;
                leaf.recount();
            } else {
                leaf.runs = runs;
            }
        }
        if count > 0 {
            self.vis_len -= count;
            self.rebuild_fenwick();
            let mut k = 0;
            while k < self.order.len() {
                k += 1 + self.split_leaf_if_needed(k);
            }
        }
        count
    }

    /// Whether an item with this id exists (deleted or not).
    pub fn contains_id(&self, id: Dot) -> bool {
        self.ids.find(id).is_some()
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

    fn all_runs(&self) -> impl Iterator<Item = &Run<C>> + '_ {
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

    /// Builds a sequence from runs in document order (deserialization), validating them.
    fn from_runs(src: Vec<SerRun<C>>, cap: usize) -> Result<Self, SeqError> {
        let mut seq = Self::with_leaf_capacity(cap);
        if src.is_empty() {
            return Ok(seq);
        }
        let fill = (seq.cap * 3 / 4).max(1);
        let mut leaves: Vec<Leaf<C>> = Vec::new();
        let mut cur: Vec<Run<C>> = Vec::new();
        for r in src {
            let n = r.content.len();
            if n == 0 {
                return Err(SeqError::EmptyContent);
            }
            let end = seq.check_new_ids(r.id, n)?;
            if let Some(d) = [r.origin_left, r.origin_right].into_iter().flatten().find(|d| d.counter == 0) {
                return Err(SeqError::UnknownId(d));
            }
            let run = Run {
                id: r.id,
                left: r.origin_left.into(),
                right: r.origin_right.into(),
                deleted: r.deleted,
                content: r.content,
            };
            match cur.last_mut() {
                Some(last) if last.can_merge(&run) => last.content.append(run.content),
                _ => {
                    if cur.len() >= fill {
                        let o = leaves.len() as u32;
                        leaves.push(Leaf::new(std::mem::take(&mut cur), o));
                    }
                    cur.push(run);
                }
            }
            seq.ids.insert_new(r.id.peer, r.id.counter, end, leaves.len() as LeafId);
        }
        let o = leaves.len() as u32;
        leaves.push(Leaf::new(cur, o));
        seq.order = (0..leaves.len() as LeafId).collect();
        seq.vis_len = leaves.iter().map(|l| l.vis).sum();
        seq.total_len = leaves.iter().map(|l| l.total).sum();
        seq.leaves = leaves;
        seq.rebuild_fenwick();
        // Every origin must exist, origin_left before the run and origin_right after it.
        let mut pos = 0;
        for r in seq.all_runs() {
            if let Some(d) = r.origin_left() {
                if seq.total_pos(d)? >= pos {
                    return Err(SeqError::InvalidOrigins { left: r.origin_left(), right: r.origin_right() });
                }
            }
            pos += r.len();
            if let Some(d) = r.origin_right() {
                if seq.total_pos(d)? < pos {
                    return Err(SeqError::InvalidOrigins { left: r.origin_left(), right: r.origin_right() });
                }
            }
        }
        Ok(seq)
    }
}

/// Appends `n` ids starting at `id` to `spans`, coalescing with the last span when contiguous.
fn push_span(spans: &mut Vec<IdSpan>, id: Dot, n: u64) {
    if let Some(last) = spans.last_mut() {
        if last.peer == id.peer && last.start.checked_add(last.len) == Some(id.counter) {
            last.len += n;
            return;
        }
    }
    spans.push(IdSpan { peer: id.peer, start: id.counter, len: n });
}

impl Sequence<Chars> {
    /// The visible text.
    pub fn text(&self) -> String {
        let mut out = String::with_capacity(self.vis_len);
        for (_, c) in self.visible_runs() {
            c.push_to(&mut out);
        }
        out
    }

    /// The visible text (same as [`Sequence::text`]).
    #[allow(clippy::inherent_to_string)]
    pub fn to_string(&self) -> String {
        self.text()
    }
}

impl<T: Clone + fmt::Debug> Sequence<Vec<T>> {
    /// The visible item `pos`.
    pub fn get(&self, pos: usize) -> Option<(Dot, &T)> {
        let (k, j, o) = self.find_visible(pos)?;
        let r = &self.leaf_at(k).runs[j];
        Some((r.id.offset(o as u64), r.content.get(o)?))
    }

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

    pub fn get_by_id_mut(&mut self, id: Dot) -> Option<(&mut T, bool)> {
        let loc = self.locate(id)?;
        let l = self.order[loc.k] as usize;
        let r = &mut self.leaves[l].runs[loc.j];
        Some((r.content.get_mut(loc.o)?, loc.deleted))
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

// ---------------------------------------------------------------------------------------------------------------
// Serialization: a flat list of runs
// ---------------------------------------------------------------------------------------------------------------

#[derive(Serialize)]
struct SerRunRef<'a, C> {
    id: Dot,
    origin_left: Option<Dot>,
    origin_right: Option<Dot>,
    deleted: bool,
    content: &'a C,
}

#[derive(Deserialize)]
struct SerRun<C> {
    id: Dot,
    origin_left: Option<Dot>,
    origin_right: Option<Dot>,
    deleted: bool,
    content: C,
}

impl<C: SeqContent + Serialize> Serialize for Sequence<C> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.run_count()))?;
        for r in self.all_runs() {
            seq.serialize_element(&SerRunRef {
                id: r.id,
                origin_left: r.origin_left(),
                origin_right: r.origin_right(),
                deleted: r.deleted,
                content: &r.content,
            })?;
        }
        seq.end()
    }
}

impl<'de, C: SeqContent + Deserialize<'de>> Deserialize<'de> for Sequence<C> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let runs: Vec<SerRun<C>> = Vec::deserialize(deserializer)?;
        Sequence::from_runs(runs, LEAF_CAP).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests;
