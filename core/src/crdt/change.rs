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
/// The most items (characters or elements) one insert may add.
pub const MAX_INSERT_ITEMS: u64 = 1 << 22;
/// The most id spans one delete may name.
pub const MAX_DELETE_SPANS: usize = 1 << 20;
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
            Some(w) if self.start.checked_add(w).is_some() => {}
            _ => return corrupt("counter overflow"),
        }
        if !self.deps.is_well_formed() {
            return corrupt("malformed version vector");
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
        Ok(())
    }
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
    if spans
        .iter()
        .any(|s| s.len == 0 || s.len > MAX_INSERT_ITEMS || s.start == 0 || s.start.checked_add(s.len).is_none())
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
