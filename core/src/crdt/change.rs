//! Changes: the unit of replication.
//!
//! A [`Change`] is everything one replica did to one document in one transaction: a run of operations, each named by
//! a dot of its author (`start`, `start + width(op0)`, …), stamped with one HLC timestamp, and carrying its causal
//! dependencies — the document's version vector when the change was made. Applying a change only once its
//! dependencies are present gives causal delivery per document, which is what lets every field type merge in any
//! order, with any duplication, to the same state.

use super::clock::{Dot, PeerId, Timestamp, MAX_WALL_MS};
use super::path::{is_valid_key, MAX_PATH_DEPTH};
use super::sequence::{Chars, IdSpan, SeqContent};
use super::value::{Kind, Scalar, MAX_VALUE_DEPTH};
use super::version::VersionVector;
use serde::{Deserialize, Serialize};

/// The largest scalar a register may hold (encoded size, approximately).
pub const MAX_SCALAR_BYTES: usize = 1 << 20;
/// The most operations one change may carry.
pub const MAX_OPS_PER_CHANGE: usize = 1 << 20;
/// The most items (characters or elements) one insert may add: a paste of 4 MiB of text. (Elements are bounded
/// further by [`MAX_CHANGE_COST`]: at most about 500,000 per change.)
pub const MAX_INSERT_ITEMS: u64 = 1 << 22;
/// The most id spans one delete may name.
pub const MAX_DELETE_SPANS: usize = 1 << 20;
/// The highest counter a change may use: counters are stored as SQLite `INTEGER`s (signed 64-bit), so a larger
/// one would be stored negative and never be found or forwarded again.
pub const MAX_COUNTER: u64 = i64::MAX as u64;

/// What applying one operation costs at least, in cost units (see [`Change::cost`]): the operation itself, a
/// register entry, a run or map entry it may create.
pub const OP_COST: u64 = 128;
/// What each step of an operation's path costs, besides its key's bytes: applying creates a missing map entry
/// (a field of 96 bytes, its key, the map's node) for each.
pub const SEG_COST: u64 = 128;
/// What each inserted array element costs: an empty field is 96 bytes in memory, plus its share of its run, of
/// the stored snapshot and of the rendered view (`null,`).
pub const ELEM_COST: u64 = 128;
/// What each id span of a delete costs: it may split two runs.
pub const SPAN_COST: u64 = 64;
/// What each id named by a delete costs (no memory: the work of checking and marking it).
pub const DELETED_ID_COST: u64 = 1;
/// The most a single change may cost (see [`Change::cost`]): about the memory, in bytes, that applying it may
/// allocate, and a bound on the work it asks for. 64 Mi units: a 4 MiB paste of text costs 4 Mi, an import of
/// 100,000 array elements with a small value each about 40 Mi; the worst change allowed allocates at most about
/// 64 MiB (plus its rendered view). Checked by [`Change::validate`], so when decoding.
pub const MAX_CHANGE_COST: u64 = 64 << 20;
/// The most one call of [`crate::store::Replica::apply_changes`] may cost, all its changes together: the whole
/// batch is refused before anything is applied (and the link that sent it is closed). A batch of the sync
/// protocol holds about [`crate::sync::wire::BATCH_BYTES`] of changes plus one, so this leaves room for one change
/// of the largest cost and many ordinary ones.
pub const MAX_BATCH_COST: u64 = 4 * MAX_CHANGE_COST;
/// The largest encoded change accepted from anywhere.
pub const MAX_ENCODED_CHANGE_BYTES: usize = 64 << 20;
/// The version byte in front of every encoded change.
pub const CHANGE_FORMAT_VERSION: u8 = 1;

/// A step from a field to one of its children, by stable identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Seg {
    /// The field under this key of the map.
    Key(String),
    /// The array element with this id.
    Elem(Dot),
}

/// One operation. `path` leads from the document root to the field it acts on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// Write a scalar into the field's register, replacing what the writer had seen there.
    Set {
        /// The field written, from the document root (never empty: a document is a map).
        path: Vec<Seg>,
        /// The new value.
        value: Scalar,
    },
    /// Make the field hold a container of `kind`, replacing what the writer had seen there. Concurrent makes of the
    /// same kind share one container.
    Make {
        /// The field made (empty for the document itself, which is always a map).
        path: Vec<Seg>,
        /// The container the field holds from now on.
        kind: Kind,
    },
    /// Remove what the writer had seen in the field (the document itself when `path` is empty).
    Remove {
        /// The field removed, from the document root.
        path: Vec<Seg>,
    },
    /// Add `by` to the field's counter.
    Increment {
        /// The counter field, from the document root.
        path: Vec<Seg>,
        /// The amount added; negative to decrement.
        by: i64,
    },
    /// Insert characters into the field's text.
    InsertText {
        /// The text field, from the document root.
        path: Vec<Seg>,
        /// The id of the character just before the insertion point when it was made, deleted or not (`None` at the
        /// start of the text).
        origin_left: Option<Dot>,
        /// The id of the character just after the insertion point when it was made, deleted or not (`None` at the
        /// end of the text).
        origin_right: Option<Dot>,
        /// The inserted characters; they take this op's dots as ids, in order.
        text: Chars,
    },
    /// Insert `count` empty elements into the field's array (their ids are this op's dots).
    InsertElems {
        /// The array field, from the document root.
        path: Vec<Seg>,
        /// The id of the element just before the insertion point when it was made, deleted or not (`None` at the
        /// start of the array).
        origin_left: Option<Dot>,
        /// The id of the element just after the insertion point when it was made, deleted or not (`None` at the
        /// end of the array).
        origin_right: Option<Dot>,
        /// How many elements are inserted (at least 1).
        count: u64,
    },
    /// Delete characters of the field's text.
    DeleteText {
        /// The text field, from the document root.
        path: Vec<Seg>,
        /// The ids of the deleted characters, as runs of consecutive dots of one author.
        spans: Vec<IdSpan>,
    },
    /// Delete elements of the field's array.
    DeleteElems {
        /// The array field, from the document root.
        path: Vec<Seg>,
        /// The ids of the deleted elements, as runs of consecutive dots of one author.
        spans: Vec<IdSpan>,
    },
}

impl Op {
    /// How many counters (dots) the op consumes.
    pub fn width(&self) -> u64 {
        match self {
            Op::InsertText { text, .. } => text.len() as u64,
            Op::InsertElems { count, .. } => *count,
            _ => 1,
        }
    }

    /// What applying the op costs, in the units of [`Change::cost`]: [`OP_COST`], plus [`SEG_COST`] and the key's
    /// bytes per step of its path, plus for a set the value's size in memory ([`Scalar::memory_cost`]), for a
    /// text insert its bytes, for an element insert [`ELEM_COST`] per element, for a delete [`SPAN_COST`] per span
    /// and [`DELETED_ID_COST`] per id. Saturating. (A value nested deeper than [`MAX_VALUE_DEPTH`] costs `u64::MAX`: it is never walked.)
    pub fn cost(&self) -> u64 {
        let path = self.path().iter().fold(0u64, |acc, s| {
            let key = match s {
                Seg::Key(k) => k.len() as u64,
                Seg::Elem(_) => 0,
            };
            acc.saturating_add(SEG_COST + key)
        });
        let own = match self {
            // A value nested too deep is refused anyway; its cost is not walked (that would recurse as deep).
            Op::Set { value, .. } if value.depth_exceeds(MAX_VALUE_DEPTH) => u64::MAX,
            Op::Set { value, .. } => value.memory_cost(),
            Op::InsertText { text, .. } => text.as_str().len() as u64,
            Op::InsertElems { count, .. } => count.saturating_mul(ELEM_COST),
            Op::DeleteText { spans, .. } | Op::DeleteElems { spans, .. } => spans.iter().fold(0u64, |acc, s| {
                acc.saturating_add(SPAN_COST).saturating_add(s.len.saturating_mul(DELETED_ID_COST))
            }),
            Op::Make { .. } | Op::Remove { .. } | Op::Increment { .. } => 0,
        };
        OP_COST.saturating_add(path).saturating_add(own)
    }

    /// The field the op acts on, from the document root.
    pub(crate) fn path(&self) -> &[Seg] {
        match self {
            Op::Set { path, .. }
            | Op::Make { path, .. }
            | Op::Remove { path }
            | Op::Increment { path, .. }
            | Op::InsertText { path, .. }
            | Op::InsertElems { path, .. }
            | Op::DeleteText { path, .. }
            | Op::DeleteElems { path, .. } => path,
        }
    }
}

/// Everything one replica did to one document in one transaction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The author.
    pub peer: PeerId,
    /// The counter of the first operation.
    pub start: u64,
    /// When it was made (hybrid logical clock).
    pub ts: Timestamp,
    /// The document's version vector when the change was made.
    pub deps: VersionVector,
    /// The operations, in the order they were made; the first has dot `start`, each next one follows the previous
    /// op's [`width`](Op::width).
    pub ops: Vec<Op>,
}

/// Why a change is malformed (it came from a buggy or hostile peer, or was corrupted).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    /// The bytes do not decode, or what they decode to breaks a structural rule (the message says which).
    #[error("change data is corrupt: {0}")]
    Corrupt(String),
    /// The data starts with a format version this build does not read (the version byte found), typically because
    /// a newer release of Shoal wrote it.
    #[error("unsupported change format version {0} (this build reads version {CHANGE_FORMAT_VERSION})")]
    UnsupportedVersion(u8),
    /// The data exceeds a size limit, such as [`MAX_ENCODED_CHANGE_BYTES`] (the message says which).
    #[error("change is too large: {0}")]
    TooLarge(String),
}

impl Change {
    /// Total counters consumed.
    pub fn width(&self) -> u64 {
        self.ops.iter().map(Op::width).fold(0u64, u64::saturating_add)
    }

    /// The counter of the last operation.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.width()).saturating_sub(1)
    }

    /// The same change with one op per inserted character, as a writer that does not join runs of typing into one
    /// op records it (and as Shoal did before it did): character `i` of a text insert takes the insert's dot plus
    /// `i`, the character before it as left origin and the insert's right origin. Every replica integrates it
    /// exactly as the change itself. For tests and benchmarks of changes made of many small ops.
    pub fn with_one_op_per_character(&self) -> Change {
        let mut ops = Vec::with_capacity(self.ops.len());
        let mut counter = self.start;
        for op in &self.ops {
            match op {
                Op::InsertText { path, origin_left, origin_right, text } => {
                    let mut left = *origin_left;
                    for ch in text.as_str().chars() {
                        let mut one = Chars::new();
                        one.push(ch);
                        ops.push(Op::InsertText {
                            path: path.clone(),
                            origin_left: left,
                            origin_right: *origin_right,
                            text: one,
                        });
                        left = Some(Dot::new(self.peer, counter));
                        counter += 1;
                    }
                }
                other => {
                    ops.push(other.clone());
                    counter = counter.saturating_add(other.width());
                }
            }
        }
        Change { ops, ..self.clone() }
    }

    /// What applying the change costs, in units of about a byte of memory allocated (or a comparable amount of
    /// work): the sum of its operations' [`Op::cost`]. Computed from the change alone (it is bounded when decoding,
    /// by [`MAX_CHANGE_COST`]); a batch is bounded by [`MAX_BATCH_COST`]. Saturating.
    ///
    /// Measured, by counting: an inserted array element holds one empty field (96 bytes) and its share of a run;
    /// a text insert holds its UTF-8 bytes once (the op's content is moved into the sequence, not copied); a set
    /// holds its value (32 bytes per JSON node plus its strings' bytes) and a 56-byte register entry. Deleting
    /// allocates nothing but run splits; its work is one id-index lookup per span and per run it covers.
    pub fn cost(&self) -> u64 {
        self.ops.iter().fold(0u64, |acc, op| acc.saturating_add(op.cost()))
    }

    /// The dot of the first operation.
    pub fn first_dot(&self) -> Dot {
        Dot::new(self.peer, self.start)
    }

    /// Encode for storage or the wire: a version byte, then the compact binary form.
    pub fn encode(&self) -> Vec<u8> {
        encode_versioned(CHANGE_FORMAT_VERSION, self)
    }

    /// Decode and check the structure (limits, well-formed version vector, sane counters). Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Change, ChangeError> {
        if bytes.len() > MAX_ENCODED_CHANGE_BYTES {
            return Err(ChangeError::TooLarge(format!("{} bytes", bytes.len())));
        }
        let change: Change = decode_versioned(CHANGE_FORMAT_VERSION, bytes)?;
        change.validate()?;
        Ok(change)
    }

    /// Structural checks that need no document: limits and internal consistency.
    pub fn validate(&self) -> Result<(), ChangeError> {
        let corrupt = |m: &str| Err(ChangeError::Corrupt(m.to_string()));
        if self.ops.is_empty() {
            return corrupt("no operations");
        }
        if self.ops.len() > MAX_OPS_PER_CHANGE {
            return Err(ChangeError::TooLarge(format!("{} operations", self.ops.len())));
        }
        if self.start == 0 {
            return corrupt("counter 0");
        }
        let width = self.ops.iter().try_fold(0u64, |acc, op| acc.checked_add(op.width()));
        match width {
            Some(w) if self.start.checked_add(w).is_some_and(|after| after - 1 <= MAX_COUNTER) => {}
            _ => return corrupt("counter overflow"),
        }
        if !self.deps.is_well_formed() {
            return corrupt("malformed version vector");
        }
        if self.deps.iter().any(|(_, c)| c > MAX_COUNTER) {
            return corrupt("counter overflow in the version vector");
        }
        if self.deps.get(self.peer) >= self.start {
            return corrupt("change depends on its own future");
        }
        if self.ts.wall_ms() >= MAX_WALL_MS {
            return corrupt("timestamp out of range");
        }
        for op in &self.ops {
            validate_op(op)?;
        }
        // After the ops' checks: they bound the values' depth, which `cost` walks.
        let cost = self.cost();
        if cost > MAX_CHANGE_COST {
            return Err(ChangeError::TooLarge(format!("a cost of {cost} (at most {MAX_CHANGE_COST})")));
        }
        check_disjoint_deletes(&self.ops)
    }
}

/// The ids a change deletes must be named once: a local delete only deletes visible items, so no honest change names
/// an id twice; a change that does asks for the same work again and again (a million spans over the same ids).
/// Sorting costs `O(spans log spans)`, spans being bounded by [`MAX_DELETE_SPANS`] per op.
fn check_disjoint_deletes(ops: &[Op]) -> Result<(), ChangeError> {
    let mut spans: Vec<(super::clock::PeerId, u64, u64)> = Vec::new();
    for op in ops {
        if let Op::DeleteText { spans: s, .. } | Op::DeleteElems { spans: s, .. } = op {
            spans.extend(s.iter().map(|s| (s.peer, s.start, s.start.saturating_add(s.len))));
        }
    }
    if spans.len() < 2 {
        return Ok(());
    }
    spans.sort_unstable();
    if spans.windows(2).any(|w| w[0].0 == w[1].0 && w[1].1 < w[0].2) {
        return Err(ChangeError::Corrupt("a delete names an id twice".into()));
    }
    Ok(())
}

/// Refuse a batch of changes whose total [`Change::cost`] is over [`MAX_BATCH_COST`], before any of it is applied.
pub fn check_batch_cost<'a>(changes: impl IntoIterator<Item = &'a Change>) -> Result<(), ChangeError> {
    let mut total = 0u64;
    for (n, c) in changes.into_iter().enumerate() {
        total = total.saturating_add(c.cost());
        if total > MAX_BATCH_COST {
            log::warn!(
                "refused a batch of changes costing over {MAX_BATCH_COST} (at change {n}, by {}:{})",
                c.peer,
                c.start
            );
            return Err(ChangeError::TooLarge(format!("a batch costing over {MAX_BATCH_COST}")));
        }
    }
    Ok(())
}

/// A version byte, then the value in postcard's compact form.
pub(crate) fn encode_versioned<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.push(version);
    // Serializing plain data into a Vec cannot fail.
    postcard::to_extend(value, out).unwrap_or_else(|_| vec![version])
}

/// Read what [`encode_versioned`] wrote: the version must match and every byte must be used. Never panics.
pub(crate) fn decode_versioned<T: serde::de::DeserializeOwned>(version: u8, bytes: &[u8]) -> Result<T, ChangeError> {
    let (&v, body) = bytes.split_first().ok_or_else(|| ChangeError::Corrupt("empty".into()))?;
    if v != version {
        return Err(ChangeError::UnsupportedVersion(v));
    }
    let (value, rest): (T, &[u8]) = postcard::take_from_bytes(body).map_err(|e| ChangeError::Corrupt(e.to_string()))?;
    if !rest.is_empty() {
        return Err(ChangeError::Corrupt(format!("{} trailing bytes", rest.len())));
    }
    Ok(value)
}

fn validate_path(path: &[Seg]) -> Result<(), ChangeError> {
    if path.len() > MAX_PATH_DEPTH {
        return Err(ChangeError::TooLarge(format!("path of depth {}", path.len())));
    }
    for s in path {
        if let Seg::Key(k) = s {
            if !is_valid_key(k) {
                return Err(ChangeError::Corrupt("empty or oversize key".into()));
            }
        }
    }
    Ok(())
}

fn validate_spans(spans: &[IdSpan]) -> Result<(), ChangeError> {
    if spans.is_empty() || spans.len() > MAX_DELETE_SPANS {
        return Err(ChangeError::Corrupt("bad number of delete spans".into()));
    }
    if spans.iter().any(|s| s.len == 0 || s.len > MAX_INSERT_ITEMS || s.start == 0 || s.start > MAX_COUNTER - s.len + 1)
    {
        return Err(ChangeError::Corrupt("bad delete span".into()));
    }
    Ok(())
}

fn validate_op(op: &Op) -> Result<(), ChangeError> {
    validate_path(op.path())?;
    let root = op.path().is_empty();
    match op {
        Op::Set { value, .. } => {
            if root {
                return Err(ChangeError::Corrupt("a document cannot be set to a scalar".into()));
            }
            // First, as it bounds the recursion of the checks below.
            if value.depth_exceeds(MAX_VALUE_DEPTH) {
                return Err(ChangeError::TooLarge(format!("value nested deeper than {MAX_VALUE_DEPTH}")));
            }
            if !value.is_valid() {
                return Err(ChangeError::Corrupt("non-finite number".into()));
            }
            if value.approx_size() > MAX_SCALAR_BYTES {
                return Err(ChangeError::TooLarge(format!("value of {} bytes", value.approx_size())));
            }
        }
        Op::Make { kind, .. } => {
            if root && *kind != Kind::Map {
                return Err(ChangeError::Corrupt("a document is a map".into()));
            }
        }
        Op::Remove { .. } => {}
        Op::Increment { .. }
        | Op::InsertText { .. }
        | Op::InsertElems { .. }
        | Op::DeleteText { .. }
        | Op::DeleteElems { .. }
            if root =>
        {
            return Err(ChangeError::Corrupt("operation needs a field path".into()));
        }
        Op::Increment { .. } => {}
        Op::InsertText { text, .. } => {
            if text.len() == 0 || text.len() as u64 > MAX_INSERT_ITEMS {
                return Err(ChangeError::Corrupt("bad text insert length".into()));
            }
        }
        Op::InsertElems { count, .. } => {
            if *count == 0 || *count > MAX_INSERT_ITEMS {
                return Err(ChangeError::Corrupt("bad element count".into()));
            }
        }
        Op::DeleteText { spans, .. } | Op::DeleteElems { spans, .. } => validate_spans(spans)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::clock::PeerId;

    fn key(k: &str) -> Vec<Seg> {
        vec![Seg::Key(k.into())]
    }

    #[test]
    fn op_costs_count_what_applying_holds() {
        let base = OP_COST + SEG_COST + 1;
        assert_eq!(Op::Remove { path: key("a") }.cost(), base);
        assert_eq!(Op::Set { path: key("a"), value: Scalar::Str("xy".into()) }.cost(), base + 32 + 2);
        let elems = Op::InsertElems { path: key("a"), origin_left: None, origin_right: None, count: 1000 };
        assert_eq!(elems.cost(), base + 1000 * ELEM_COST);
        let text =
            Op::InsertText { path: key("a"), origin_left: None, origin_right: None, text: Chars::from("héllo") };
        assert_eq!(text.cost(), base + 6);
        let span = IdSpan { peer: PeerId(1), start: 1, len: 10 };
        assert_eq!(Op::DeleteText { path: key("a"), spans: vec![span; 3] }.cost(), base + 3 * (SPAN_COST + 10));
        let huge = Op::InsertElems { path: key("a"), origin_left: None, origin_right: None, count: u64::MAX };
        assert_eq!(huge.cost(), u64::MAX, "saturates");
    }
}
