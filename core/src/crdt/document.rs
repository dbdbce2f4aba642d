//! A document: a root map of fields, each its own CRDT, plus the version vector of the changes it holds.
//!
//! Local edits go through a [`DocEditor`], which applies each operation at once and records it into a [`Change`]
//! to replicate. Remote changes go through [`Document::apply`], which checks causality and structure before touching
//! anything. Both paths share the same operation semantics ([`apply_op`]), so a replica that applies its own change
//! and one that receives it end in the same state.

use super::change::{
    Change, ChangeError, Op, Seg, DELETED_ID_COST, ELEM_COST, MAX_CHANGE_COST, MAX_SCALAR_BYTES, OP_COST, SEG_COST,
    SPAN_COST,
};
use super::clock::{Dot, PeerId, Timestamp};
use super::field::{Field, Shown};
use super::path::{AsPath, Path, PathSegment, MAX_PATH_DEPTH};
use super::register::{Content, Entry};
use super::sequence::{Chars, IdSpan, SeqContent, SeqError, SeqInsert, Sequence};
use super::value::{Kind, Value, MAX_VALUE_DEPTH};
use super::version::VersionVector;
use serde::{Deserialize, Serialize};

/// Errors from reading, editing or merging a document.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum DocError {
    /// A change to merge is malformed.
    #[error(transparent)]
    Change(#[from] ChangeError),
    /// A path given as text could not be parsed.
    #[error(transparent)]
    Path(#[from] super::path::PathError),
    /// The edit needs a field of another type than the one there: a text operation on a counter, an array index
    /// into a map, and the like.
    #[error("the field at {path:?} holds a {found}, not a {expected}")]
    TypeMismatch {
        /// The field in question (`a.b[2]`; empty for the document itself).
        path: String,
        /// The type the edit needs: `"map"`, `"array"`, `"text"` or `"counter"`.
        expected: &'static str,
        /// What the field holds: `"register"` (a plain value), one of the types above, or `"document"` when the
        /// edit targeted the document itself.
        found: &'static str,
    },
    /// A position in a text or an array is past its end.
    #[error("index {index} is out of bounds at {path:?} (length {len})")]
    IndexOutOfBounds {
        /// The text or array field.
        path: String,
        /// The position asked for (for a deletion, the end of the deleted range).
        index: usize,
        /// The current length of the text (in characters) or of the array.
        len: usize,
    },
    /// The edit needs a field that does not exist (or was removed).
    #[error("no field at {path:?}")]
    NoSuchField {
        /// The missing field (or, as far as it got, the path leading to it).
        path: String,
    },
    /// The value cannot be stored: a non-finite number, an empty or oversize key, nesting too deep, a text insert
    /// too large (the message says which).
    #[error("invalid value: {0}")]
    InvalidValue(String),
    /// A change to merge contradicts what the document already holds from its author (it overlaps changes already
    /// applied, or ignores its author's earlier ones); the change is refused and nothing changes.
    #[error("change {peer}:{start} is inconsistent with this document: {reason}")]
    Inconsistent {
        /// The change's author.
        peer: PeerId,
        /// The counter of the change's first operation.
        start: u64,
        /// What is inconsistent.
        reason: String,
    },
}

fn inconsistent(c: &Change, reason: impl Into<String>) -> DocError {
    DocError::Inconsistent { peer: c.peer, start: c.start, reason: reason.into() }
}

/// What [`Document::apply`] did with a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The change is now part of the document.
    Applied,
    /// The document already had it; nothing changed.
    Duplicate,
    /// It depends on changes the document does not have yet; nothing changed. Apply it again after those.
    NotReady,
}

/// A document's full CRDT state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Document {
    root: Field,
    version: VersionVector,
    /// [`Document::items`], once counted (kept up to date as changes are applied; not stored).
    #[serde(skip)]
    items: Option<u64>,
}

/// The most sequence items one document may hold, tombstones included (deleted items stay), each array element
/// counting as [`ELEM_ITEM_WEIGHT`] items and each character of text as one. A change that would take a document
/// past it is refused ([`ChangeError::TooLarge`]), so a document cannot grow without bound: 16 Mi characters of
/// text (at most 64 MiB) or 1 Mi array elements (about 128 MiB).
///
/// Local edits stop at half of it ([`MAX_LOCAL_DOC_ITEMS`]), so that changes written concurrently on several
/// devices, each within that, are accepted everywhere (which one would be refused past the bound depends on the
/// order they arrive in).
pub const MAX_DOC_ITEMS: u64 = 1 << 24;
/// How many items of [`MAX_DOC_ITEMS`] an array element counts for (it holds a field of 96 bytes).
pub const ELEM_ITEM_WEIGHT: u64 = 16;
/// The most sequence items a local edit may bring a document to (see [`MAX_DOC_ITEMS`]).
pub const MAX_LOCAL_DOC_ITEMS: u64 = MAX_DOC_ITEMS / 2;

/// The most work the operations of one change that replace or remove fields (`Set`, `Make`, `Remove`) may ask
/// for, in items of the fields they clear (as in [`MAX_DOC_ITEMS`]; plus one per map entry): clearing a field
/// walks everything in it, tombstones included, so a change of many small removals of a large field would
/// otherwise cost its size again and again. Four times the largest document: removing a whole document, or
/// replacing its largest parts a few times, stays well within it. A remote change over it is refused.
pub const MAX_CLEAR_WORK: u64 = 4 * MAX_DOC_ITEMS;

/// The sequence items a field holds, tombstones included, weighted as in [`MAX_DOC_ITEMS`] (plus one per map
/// entry when `entries`), counting no further once over `cap`. Recurses as deep as the document's paths go (at
/// most [`MAX_PATH_DEPTH`]).
fn field_items_capped(f: &Field, cap: u64, entries: bool) -> u64 {
    let mut n = 0u64;
    if let Some(m) = &f.map {
        for c in m.fields.values() {
            n = n.saturating_add(u64::from(entries)).saturating_add(field_items_capped(c, cap - n.min(cap), entries));
            if n > cap {
                return n;
            }
        }
    }
    if let Some(a) = &f.array {
        n = n.saturating_add((a.total_len() as u64).saturating_mul(ELEM_ITEM_WEIGHT));
        for c in a.all_items() {
            if n > cap {
                return n;
            }
            n = n.saturating_add(field_items_capped(c, cap - n.min(cap), entries));
        }
    }
    if let Some(t) = &f.text {
        n = n.saturating_add(t.total_len() as u64);
    }
    n
}

/// The deleted characters of texts and deleted elements of arrays a field keeps (tombstones; those inside deleted
/// elements too).
fn field_tombstones(f: &Field) -> u64 {
    let mut n = 0u64;
    f.for_each_field(&mut |f| {
        let deleted = f.array.as_deref().map_or(0, |a| a.total_len() - a.len())
            + f.text.as_deref().map_or(0, |t| t.total_len() - t.len());
        n = n.saturating_add(deleted as u64);
    });
    n
}

/// The sequence items a field holds (see [`field_items_capped`]).
fn field_items(f: &Field) -> u64 {
    field_items_capped(f, u64::MAX, false)
}

/// Make `prev`, the op recorded last in a change (its last id is `last`), also do `op`, the next one, when one op
/// means exactly the same as the two: text typed right after `prev`'s text (its left origin is `prev`'s last
/// character) before the same right origin — a run of keystrokes, which every replica integrates as one run — or
/// a delete in the same text after a delete (the ids deleted are a set). A change then carries one op per run of
/// typing instead of one per keystroke. Gives `op` back otherwise. (With no op between them, either origin
/// matching implies the other does; both are checked.)
fn absorb(prev: &mut Op, op: Op, last: Dot) -> Result<(), Op> {
    match (prev, op) {
        (
            Op::InsertText { path, origin_right, text, .. },
            Op::InsertText { path: p, origin_left: Some(left), origin_right: right, text: more },
        ) if *path == p
            && left == last
            && *origin_right == right
            && (text.len() + more.len()) as u64 <= crate::crdt::change::MAX_INSERT_ITEMS =>
        {
            text.push_str(more.as_str());
            Ok(())
        }
        (Op::DeleteText { path, spans }, Op::DeleteText { path: p, spans: more })
            if *path == p && spans.len() + more.len() <= crate::crdt::change::MAX_DELETE_SPANS =>
        {
            for span in more {
                match spans.last_mut() {
                    Some(s) if s.peer == span.peer && s.start + s.len == span.start => s.len += span.len,
                    Some(s) if s.peer == span.peer && span.start + span.len == s.start => {
                        s.start = span.start;
                        s.len += span.len;
                    }
                    _ => spans.push(span),
                }
            }
            Ok(())
        }
        (_, op) => Err(op),
    }
}

/// The sequence items an op adds, weighted as in [`MAX_DOC_ITEMS`].
fn op_items(op: &Op) -> u64 {
    match op {
        Op::InsertText { text, .. } => text.len() as u64,
        Op::InsertElems { count, .. } => count.saturating_mul(ELEM_ITEM_WEIGHT),
        _ => 0,
    }
}

/// Format 3 keeps counters' contributions as runs (folded ones, see [`Document::collect_stable`]); format 2 wrote
/// sequence runs compactly; format 1 is the first.
pub(crate) const SNAPSHOT_FORMAT_VERSION: u8 = 3;

impl Document {
    /// An empty document: it holds no changes and does not exist until a change creates it.
    pub fn new() -> Self {
        Self::default()
    }

    /// The version vector of the changes this document holds.
    pub fn version(&self) -> &VersionVector {
        &self.version
    }

    /// Whether the document exists (it was created and not removed, or it holds edits concurrent with a removal).
    pub fn exists(&self) -> bool {
        self.root.is_visible()
    }

    /// The document as a JSON object, or `None` if it does not exist.
    pub fn to_json(&self) -> Option<serde_json::Map<String, serde_json::Value>> {
        if !self.exists() {
            return None;
        }
        match super::json::to_value(self.json_view(None, None)?) {
            serde_json::Value::Object(m) => Some(m),
            _ => Some(serde_json::Map::new()),
        }
    }

    /// The document as JSON with its `_id` entry first — the view every store keeps of it (a phone's SQLite row,
    /// the cloud's JSONB column) — or `None` if it does not exist.
    pub fn view(&self, id: &str) -> Option<serde_json::Value> {
        self.json_view(Some(id), None).map(super::json::to_value)
    }

    /// The document's JSON rendering (with an `_id` entry first when `id` is given), or `None` if it does not exist.
    /// With `cut`, large register values are left out (rendered as `null`) and collected there.
    pub(crate) fn json_view<'a>(
        &'a self,
        id: Option<&'a str>,
        cut: Option<&'a super::json::Cut<'a>>,
    ) -> Option<super::json::MapJson<'a>> {
        self.exists().then_some(super::json::MapJson { map: self.root.map.as_deref(), id, cut })
    }

    fn shown_at(&self, path: &Path) -> Option<Shown<'_>> {
        let mut field = &self.root;
        for seg in path.segments() {
            field = match (field.shown()?, seg) {
                (Shown::Map(m), PathSegment::Key(k)) => m.get(k).filter(|f| f.is_visible())?,
                (Shown::Array(a), PathSegment::Index(i)) => a.get(*i)?.1,
                _ => return None,
            };
        }
        field.shown()
    }

    /// The value at `path` as JSON (`None` if nothing is there).
    pub fn get(&self, path: impl AsPath) -> Result<Option<serde_json::Value>, DocError> {
        Ok(self.shown_at(&*path.to_path()?).map(|s| s.to_json()))
    }

    /// The attachment token at `path`, if the field holds one.
    pub fn attachment(&self, path: impl AsPath) -> Result<Option<super::value::AttachmentToken>, DocError> {
        Ok(match self.shown_at(&*path.to_path()?) {
            Some(Shown::Scalar(super::value::Scalar::Attachment(t))) => Some((**t).clone()),
            _ => None,
        })
    }

    /// The kind of the container at `path`: `None` for a register or nothing.
    pub fn kind_at(&self, path: impl AsPath) -> Result<Option<Kind>, DocError> {
        Ok(self.shown_at(&*path.to_path()?).and_then(|s| s.kind()))
    }

    /// The values that survived concurrently beside the one shown at `path`, most recent first.
    pub fn conflicts(&self, path: impl AsPath) -> Result<Vec<serde_json::Value>, DocError> {
        let path = path.to_path()?;
        Ok(self.conflicts_at(&path))
    }

    fn conflicts_at(&self, path: &Path) -> Vec<serde_json::Value> {
        let mut field = &self.root;
        for seg in path.segments() {
            let next = match (field.shown(), seg) {
                (Some(Shown::Map(m)), PathSegment::Key(k)) => m.get(k).filter(|f| f.is_visible()),
                (Some(Shown::Array(a)), PathSegment::Index(i)) => a.get(*i).map(|x| x.1),
                _ => None,
            };
            match next {
                Some(f) => field = f,
                None => return Vec::new(),
            }
        }
        field.conflicts().iter().map(|s| s.to_json()).collect()
    }

    /// The sequence items the document holds, tombstones included, weighted as in [`MAX_DOC_ITEMS`]. Counted
    /// once (linear in the document), then kept up to date.
    pub fn items(&mut self) -> u64 {
        match self.items {
            Some(n) => n,
            None => {
                let n = field_items(&self.root);
                self.items = Some(n);
                n
            }
        }
    }

    /// The deleted characters and array elements the document keeps (tombstones: later inserts may name them as
    /// origins). Linear in the document.
    pub fn tombstones(&self) -> u64 {
        field_tombstones(&self.root)
    }

    /// Collect what `stable` makes garbage: each counter keeps the increments of one writer that `stable` covers as
    /// one folded contribution (see [`super::counter`]), and removed array elements drop what `stable` covers of
    /// what they held (their place stays, as a tombstone: later inserts may name it as an origin). What the
    /// document shows does not change. Returns whether the state changed.
    ///
    /// Why a removed element's content can go: it never shows again, and every change still to come has seen what
    /// `stable` covers, so it replaces, removes or keeps apart what it would have either way — and a state-based
    /// merge with a state that kept it drops it too (this one saw it and no longer holds it). States folded under
    /// the same frontier stay equal whichever side collected first.
    ///
    /// `stable` must be causally stable for this document: every change this document does not hold yet, from any
    /// device that may still write or send one, has seen everything `stable` covers (stores establish that through
    /// a signed [`crate::security::StableFrontier`] of a known membership, and fold through
    /// [`crate::security::attestation::Stability`]). With a frontier that is not stable, a later removal that had
    /// not seen all of one writer's folded increments would take none of them.
    pub fn collect_stable(&mut self, stable: &VersionVector) -> bool {
        let changed = self.root.collect_stable(stable);
        if changed {
            self.items = None;
        }
        changed
    }

    /// Drop the sequences' tombstones that `stable` settles — inserted and deleted by changes it covers, with no
    /// deletion `unsettled` lists (the deletions of the changes this document holds that `stable` does not cover) —
    /// and that no later change can name (see [`super::sequence::Sequence::collect_tombstones`]). What the document
    /// shows does not change. Returns how many items went. `stable` must be causally stable, as for
    /// [`Document::collect_stable`].
    pub fn collect_tombstones(&mut self, stable: &VersionVector, unsettled: super::tombstones::Unsettled) -> u64 {
        let dropped = super::tombstones::collect(&mut self.root, stable, unsettled);
        if dropped > 0 {
            self.items = None;
        }
        dropped
    }

    /// The contributions the document's counters keep, each a single increment or a folded run. Linear in the
    /// document.
    pub fn counter_entries(&self) -> u64 {
        let mut n = 0u64;
        self.root.for_each_field(&mut |f| n = n.saturating_add(f.counter.as_deref().map_or(0, |c| c.entries() as u64)));
        n
    }

    /// Refuse adding `more` items when the document would then hold more than `limit`.
    fn check_room(&mut self, more: u64, limit: u64) -> Result<(), DocError> {
        let have = self.items();
        if have.saturating_add(more) > limit {
            return Err(DocError::Change(ChangeError::TooLarge(format!(
                "the document would hold {} sequence items (at most {limit})",
                have.saturating_add(more)
            ))));
        }
        Ok(())
    }

    /// Count items added by an op just applied.
    fn added_items(&mut self, n: u64) {
        if let Some(have) = &mut self.items {
            *have = have.saturating_add(n);
        }
    }

    /// Encode the full state (for storage).
    pub fn encode(&self) -> Vec<u8> {
        super::change::encode_versioned(SNAPSHOT_FORMAT_VERSION, self)
    }

    /// Decode a state written by [`Document::encode`]. Never panics on garbage.
    pub fn decode(bytes: &[u8]) -> Result<Document, ChangeError> {
        // Formats 1 (full peer ids in every sequence run) and 2 (counters' increments one by one) are still read:
        // stored snapshots and states from older builds.
        let format = match bytes.first() {
            Some(&f @ (1 | 2)) => f,
            _ => SNAPSHOT_FORMAT_VERSION,
        };
        let doc: Document = super::sequence::decoding(format, || super::change::decode_versioned(format, bytes))?;
        if !doc.version.is_well_formed() {
            return Err(ChangeError::Corrupt("malformed version vector".into()));
        }
        Ok(doc)
    }

    /// Start a local edit by `peer`, whose next unused counter is `next_counter`, at time `ts`.
    pub fn edit(&mut self, peer: PeerId, next_counter: u64, ts: Timestamp) -> DocEditor<'_> {
        let deps = self.version.clone();
        DocEditor {
            doc: self,
            peer,
            start: next_counter.max(1),
            next: next_counter.max(1),
            ts,
            deps,
            ops: Vec::new(),
            cost: 0,
        }
    }

    /// Whether `change` can be applied now, is a duplicate, or must wait for its dependencies; and whether it is
    /// inconsistent with what this document holds.
    pub fn readiness(&self, change: &Change) -> Result<Applied, DocError> {
        let have = self.version.get(change.peer);
        if change.end() <= have {
            return Ok(Applied::Duplicate);
        }
        if change.start <= have {
            return Err(inconsistent(change, "overlaps changes already applied"));
        }
        if !change.deps.le(&self.version) {
            return Ok(Applied::NotReady);
        }
        if have > change.deps.get(change.peer) {
            return Err(inconsistent(change, "concurrent with its own author's earlier changes"));
        }
        Ok(Applied::Applied)
    }

    /// Merge a change made elsewhere. Idempotent; applying changes in any causal order gives the same state, and
    /// changes that arrive before their dependencies are reported as [`Applied::NotReady`] without effect. A change
    /// that is malformed or refers to things that do not exist is rejected with an error and changes nothing.
    pub fn apply(&mut self, change: &Change) -> Result<Applied, DocError> {
        change.validate()?;
        self.apply_validated(change)
    }

    /// Merge the state of another replica of this document (a snapshot: [`Document::encode`]d elsewhere), so that
    /// this document ends exactly as if it had applied every change `other` holds and it lacks — whatever those
    /// were, and however many of them were folded into `other` and dropped there. What `other` has seen and no
    /// longer holds stays removed here, and what this document holds that `other` has not seen stays (see
    /// [`Field::join`]). Commutative, associative and idempotent, like applying changes.
    ///
    /// `other` is checked first: every dot it holds must be within its version, and the merged document must stay
    /// within [`MAX_DOC_ITEMS`]. On error this document is unchanged. Linear in both documents (the merge is made
    /// on a copy, then kept).
    pub fn join(&mut self, other: &Document) -> Result<(), DocError> {
        if other.version.le(&self.version) {
            // Everything `other` holds or removed, this document has seen: its causal past holds every removal
            // `other` applied, so there is nothing to add and nothing to drop.
            return Ok(());
        }
        if !other.version.is_well_formed() || !other.root.dots_within(&other.version) {
            return Err(DocError::Change(ChangeError::Corrupt(
                "a merged state holds operations its version vector does not cover".into(),
            )));
        }
        let mut merged = self.clone();
        merged.root.join(&other.root, &self.version, &other.version).map_err(seq_err)?;
        merged.version.join(&other.version);
        merged.items = None;
        merged.check_room(0, MAX_DOC_ITEMS)?;
        *self = merged;
        Ok(())
    }

    /// [`Document::apply`] for a change whose structure was checked already ([`Change::validate`]).
    pub(crate) fn apply_validated(&mut self, change: &Change) -> Result<Applied, DocError> {
        match self.readiness(change)? {
            Applied::Applied => {}
            other => return Ok(other),
        }
        self.check(change)?;
        self.check_clear_work(change)?;
        let added = change.ops.iter().fold(0u64, |acc, op| acc.saturating_add(op_items(op)));
        self.check_room(added, MAX_DOC_ITEMS).inspect_err(|e| {
            log::warn!("refused change {}:{}: {e}", change.peer, change.start);
        })?;
        let mut counter = change.start;
        let mut ctx = change.deps.clone();
        for op in &change.ops {
            let dot = Dot::new(change.peer, counter);
            ctx.set(change.peer, counter - 1);
            apply_op(&mut self.root, op, dot, change.ts, &ctx).map_err(|e| {
                log::error!("change {}:{} passed its checks but failed to apply: {e}", change.peer, change.start);
                e
            })?;
            counter += op.width();
        }
        self.version.raise(change.peer, change.end());
        self.added_items(added);
        Ok(Applied::Applied)
    }

    /// Refuse a change whose `Set`, `Make` and `Remove` operations would walk more than [`MAX_CLEAR_WORK`] items
    /// of the fields they clear. Costs at most about that bound.
    fn check_clear_work(&self, change: &Change) -> Result<(), DocError> {
        let mut work = 0u64;
        for op in &change.ops {
            if !matches!(op, Op::Set { .. } | Op::Make { .. } | Op::Remove { .. }) {
                continue;
            }
            let mut field = Some(&self.root);
            for seg in op.path() {
                field = field.and_then(|f| match seg {
                    Seg::Key(k) => f.map.as_deref()?.get(k),
                    Seg::Elem(id) => f.array.as_deref()?.get_by_id(*id).map(|(f, _)| f),
                });
            }
            if let Some(f) = field {
                work = work.saturating_add(1).saturating_add(field_items_capped(f, MAX_CLEAR_WORK - work, true));
                if work > MAX_CLEAR_WORK {
                    log::warn!("refused change {}:{}: it clears fields again and again", change.peer, change.start);
                    return Err(DocError::Change(ChangeError::TooLarge(format!(
                        "clearing fields would walk over {MAX_CLEAR_WORK} items"
                    ))));
                }
            }
        }
        Ok(())
    }

    /// Check, without changing anything, that every operation of `change` refers only to things in its declared
    /// past that exist, or to items it inserts itself earlier on. Whether a change is valid so depends on the change
    /// and its dependencies alone, never on what else a replica happens to hold (delivery order). Linear in the
    /// change's operations (items it inserts are found by binary search).
    fn check(&self, change: &Change) -> Result<(), DocError> {
        // Items this change inserts, in counter order: (first counter, count, the inserting op).
        let mut created: Vec<(u64, u64, &Op)> = Vec::new();
        let own_new = |id: Dot| id.peer == change.peer && id.counter >= change.start;
        // Whether `id` names an item inserted earlier in this change into the sequence at `path`.
        let created_here = |created: &[(u64, u64, &Op)], path: &[Seg], id: Dot, text: bool| -> bool {
            let i = created.partition_point(|&(s, n, _)| s + n <= id.counter);
            created.get(i).is_some_and(|&(s, _, op)| {
                s <= id.counter && op.path() == path && matches!(op, Op::InsertText { .. }) == text
            })
        };
        let mut counter = change.start;
        for op in &change.ops {
            let path = op.path();
            // Resolve the path read-only: `None` means "created by this change".
            let mut cur: Option<&Field> = Some(&self.root);
            for (i, seg) in path.iter().enumerate() {
                cur = match seg {
                    Seg::Key(k) => cur.and_then(|f| f.map.as_deref()).and_then(|m| m.get(k)),
                    Seg::Elem(id) if own_new(*id) => {
                        if !created_here(&created, &path[..i], *id, false) {
                            return Err(inconsistent(change, format!("unknown array element {id:?}")));
                        }
                        None
                    }
                    Seg::Elem(id) => {
                        let found = cur
                            .filter(|_| change.deps.contains(*id))
                            .and_then(|f| f.array.as_deref())
                            .and_then(|a| a.get_by_id(*id));
                        match found {
                            Some((f, _)) => Some(f),
                            None => return Err(inconsistent(change, format!("unknown array element {id:?}"))),
                        }
                    }
                };
            }
            let known = |id: Dot, text: bool| -> bool {
                if own_new(id) {
                    return created_here(&created, path, id, text);
                }
                change.deps.contains(id)
                    && match (cur, text) {
                        (Some(f), true) => f.text.as_deref().is_some_and(|t| t.contains_id(id)),
                        (Some(f), false) => f.array.as_deref().is_some_and(|a| a.contains_id(id)),
                        (None, _) => false,
                    }
            };
            match op {
                Op::InsertText { origin_left, origin_right, .. }
                | Op::InsertElems { origin_left, origin_right, .. } => {
                    let text = matches!(op, Op::InsertText { .. });
                    for o in [origin_left, origin_right].into_iter().flatten() {
                        if !known(*o, text) {
                            return Err(inconsistent(change, format!("unknown insert origin {o:?}")));
                        }
                    }
                    created.push((counter, op.width(), op));
                }
                Op::DeleteText { spans, .. } | Op::DeleteElems { spans, .. } => {
                    // Span by span, never id by id: the work is one lookup per range of ids the span covers.
                    let text = matches!(op, Op::DeleteText { .. });
                    for s in spans {
                        let end = s.start.saturating_add(s.len);
                        // The part made by earlier changes: in the declared past (its last id is), and present.
                        let old_end = if s.peer == change.peer { end.min(change.start) } else { end };
                        if s.start < old_end {
                            let ok = change.deps.contains(Dot::new(s.peer, old_end - 1))
                                && match (cur, text) {
                                    (Some(f), true) => {
                                        f.text.as_deref().is_some_and(|t| t.contains_ids(s.peer, s.start, old_end))
                                    }
                                    (Some(f), false) => {
                                        f.array.as_deref().is_some_and(|a| a.contains_ids(s.peer, s.start, old_end))
                                    }
                                    (None, _) => false,
                                };
                            if !ok {
                                return Err(inconsistent(change, format!("delete of unknown items in {s:?}")));
                            }
                        }
                        // The part this change inserted earlier on: every id in inserts into this same sequence.
                        let mut c = s.start.max(old_end);
                        while c < end {
                            let i = created.partition_point(|&(s, n, _)| s + n <= c);
                            match created.get(i) {
                                Some(&(cs, n, op))
                                    if cs <= c && op.path() == path && matches!(op, Op::InsertText { .. }) == text =>
                                {
                                    c = cs + n
                                }
                                _ => {
                                    return Err(inconsistent(change, format!("delete of unknown item {}:{c}", s.peer)))
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
            counter += op.width();
        }
        Ok(())
    }
}

/// Find the field at `path`, creating map entries on the way. Array elements must exist.
fn resolve_mut<'a>(root: &'a mut Field, path: &[Seg]) -> Result<&'a mut Field, DocError> {
    let mut field = root;
    for seg in path {
        field = match seg {
            Seg::Key(k) => field.map_mut().entry(k),
            Seg::Elem(id) => match field.array.as_deref_mut().and_then(|a| a.get_by_id_mut(*id)) {
                Some((f, _)) => f,
                None => return Err(DocError::NoSuchField { path: format!("{path:?}") }),
            },
        };
    }
    Ok(field)
}

/// Delete `len` visible items from `pos`, checking the range first.
fn local_delete<C: SeqContent>(
    seq: &mut Sequence<C>,
    path: &Path,
    pos: usize,
    len: usize,
) -> Result<Vec<IdSpan>, DocError> {
    if pos.checked_add(len).is_none_or(|end| end > seq.len()) {
        return Err(DocError::IndexOutOfBounds {
            path: path.to_string(),
            index: pos.saturating_add(len),
            len: seq.len(),
        });
    }
    seq.local_delete(pos, len).map_err(seq_err)
}

/// What deleting `len` visible items from `pos` costs (its spans and ids; see [`Op::cost`]), without changing
/// anything. Cheap when even one span per item would be within `room`; otherwise the delete is tried on a copy of
/// the sequence (linear in it, as a delete of that size nearly is anyway) to count its spans.
fn delete_cost<C: SeqContent>(seq: &Sequence<C>, pos: usize, len: usize, room: u64) -> u64 {
    let per_item = SPAN_COST + DELETED_ID_COST;
    let worst = (len as u64).saturating_mul(per_item);
    if worst <= room {
        return worst;
    }
    let mut copy = seq.clone();
    match copy.local_delete(pos, len) {
        Ok(spans) => {
            (spans.len() as u64).saturating_mul(SPAN_COST).saturating_add((len as u64).saturating_mul(DELETED_ID_COST))
        }
        Err(_) => worst,
    }
}

fn seq_err(e: SeqError) -> DocError {
    DocError::InvalidValue(e.to_string())
}

/// The one definition of what each operation does to a document. `dot` is the op's first dot, `ctx` what its author
/// had seen when making it.
pub(crate) fn apply_op(
    root: &mut Field,
    op: &Op,
    dot: Dot,
    ts: Timestamp,
    ctx: &VersionVector,
) -> Result<(), DocError> {
    let field = resolve_mut(root, op.path())?;
    match op {
        Op::Set { value, .. } => {
            field.clear(ctx);
            field.reg.write(ctx, Entry { dot, ts, content: Content::Value(value.clone()) });
        }
        Op::Make { kind, .. } => {
            field.clear(ctx);
            field.ensure(*kind);
            field.reg.write(ctx, Entry { dot, ts, content: Content::Make(*kind) });
        }
        Op::Remove { .. } => field.clear(ctx),
        Op::Increment { by, .. } => field.counter_mut().add(dot, *by),
        Op::InsertText { origin_left, origin_right, text, .. } => {
            let ins =
                SeqInsert { id: dot, origin_left: *origin_left, origin_right: *origin_right, content: text.clone() };
            field.text_mut().apply_insert_owned(ins).map_err(seq_err)?
        }
        Op::InsertElems { origin_left, origin_right, count, .. } => {
            // `count` is bounded by the change's cost (see `Change::cost`), checked before anything is applied.
            let content = vec![Field::default(); *count as usize];
            let ins = SeqInsert { id: dot, origin_left: *origin_left, origin_right: *origin_right, content };
            field.array_mut().apply_insert_owned(ins).map_err(seq_err)?
        }
        Op::DeleteText { spans, .. } => field.text_mut().apply_delete(spans).map_err(seq_err)?,
        Op::DeleteElems { spans, .. } => field.array_mut().apply_delete(spans).map_err(seq_err)?,
    }
    Ok(())
}

/// Local edits to one document, recorded as one [`Change`]. Each method applies at once; on error nothing of that
/// call is applied (earlier calls stay): every way a call can fail is checked before it changes anything.
pub struct DocEditor<'a> {
    doc: &'a mut Document,
    peer: PeerId,
    start: u64,
    next: u64,
    ts: Timestamp,
    deps: VersionVector,
    ops: Vec<Op>,
    /// The [`Change::cost`] of `ops`.
    cost: u64,
}

fn path_string(path: &Path, upto: usize) -> String {
    path.prefix_string(upto)
}

impl<'a> DocEditor<'a> {
    /// The document as edited so far.
    pub fn document(&self) -> &Document {
        self.doc
    }

    /// The next unused counter (the store persists it).
    pub fn next_counter(&self) -> u64 {
        self.next
    }

    /// Whether anything was recorded.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Finish: the change to replicate, or `None` if nothing was done.
    pub fn finish(self) -> Option<Change> {
        if self.ops.is_empty() {
            return None;
        }
        Some(Change { peer: self.peer, start: self.start, ts: self.ts, deps: self.deps, ops: self.ops })
    }

    fn emit(&mut self, op: Op) -> Result<Dot, DocError> {
        let dot = Dot::new(self.peer, self.next);
        // A local op's causal context is everything this replica has applied to the document, its own earlier
        // ops of this change included.
        apply_op(&mut self.doc.root, &op, dot, self.ts, &self.doc.version)?;
        self.record(op);
        Ok(dot)
    }

    /// Record an op that has already been applied: as an op of its own, or as more of the op just before it when
    /// it continues that one (see [`absorb`]; the op then takes the dots it adds to that one, which for a delete
    /// are none).
    fn record(&mut self, op: Op) {
        self.doc.added_items(op_items(&op));
        let last = Dot::new(self.peer, self.next.saturating_sub(1));
        let op = match self.ops.last_mut() {
            Some(prev) => {
                let (cost, width) = (prev.cost(), prev.width());
                match absorb(prev, op, last) {
                    Ok(()) => {
                        self.cost = self.cost.saturating_add(prev.cost().saturating_sub(cost));
                        let grown = prev.width() - width;
                        if grown > 0 {
                            self.doc.version.raise(self.peer, self.next + grown - 1);
                            self.next += grown;
                        }
                        return;
                    }
                    Err(op) => op,
                }
            }
            None => op,
        };
        let w = op.width();
        self.cost = self.cost.saturating_add(op.cost());
        self.doc.version.raise(self.peer, self.next + w - 1);
        self.next += w;
        self.ops.push(op);
    }

    fn field(&self, segs: &[Seg]) -> Option<&Field> {
        let mut f = &self.doc.root;
        for s in segs {
            f = match s {
                Seg::Key(k) => f.map.as_deref()?.get(k)?,
                Seg::Elem(id) => f.array.as_deref()?.get_by_id(*id)?.0,
            };
        }
        Some(f)
    }

    fn shown(&self, segs: &[Seg]) -> Option<Shown<'_>> {
        self.field(segs).and_then(Field::shown)
    }

    /// What the field a plan leads to shows before the plan is carried out (nothing, where the plan creates it).
    fn shown_at_plan(&self, plan: &Plan) -> Option<Shown<'_>> {
        if plan.creates() {
            None
        } else {
            self.shown(&plan.segs)
        }
    }

    /// Resolve an app path to stable segments without changing anything: every way the call can fail is found
    /// here. With `create`, missing maps on the way (and the document itself) are to be created, like `mkdir -p`;
    /// [`DocEditor::carry_out`] then creates them. Keys must be valid map keys.
    fn plan(&self, path: &Path, create: bool) -> Result<Plan, DocError> {
        for seg in path.segments() {
            if let PathSegment::Key(k) = seg {
                check_key(k)?;
            }
        }
        let create_doc = create && !matches!(self.doc.root.shown(), Some(Shown::Map(_)) if self.doc.root.is_visible());
        if !create && !self.doc.exists() && !path.is_root() {
            return Err(DocError::NoSuchField { path: path.to_string() });
        }
        let mut segs: Vec<Seg> = Vec::with_capacity(path.segments().len());
        // From which segment on the maps are new (everything below a created container is new too).
        let mut create_from = if create_doc { 0 } else { usize::MAX };
        for (i, ps) in path.segments().iter().enumerate() {
            let fresh = create_from <= i;
            match ps {
                PathSegment::Key(k) => {
                    if i > 0 && !fresh {
                        match self.shown(&segs) {
                            Some(Shown::Map(_)) => {}
                            None if create => create_from = i,
                            _ => return Err(self.mismatch_or_missing(&segs, path, i, Kind::Map)),
                        }
                    }
                    segs.push(Seg::Key(k.clone()));
                }
                PathSegment::Index(idx) => {
                    let seq = match (fresh, self.shown(&segs)) {
                        (false, Some(Shown::Array(a))) => a,
                        (true, _) => return Err(DocError::NoSuchField { path: path_string(path, i) }),
                        _ => return Err(self.mismatch_or_missing(&segs, path, i, Kind::Array)),
                    };
                    let id = seq.id_at(*idx).ok_or(DocError::IndexOutOfBounds {
                        path: path_string(path, i),
                        index: *idx,
                        len: seq.len(),
                    })?;
                    segs.push(Seg::Elem(id));
                }
            }
        }
        Ok(Plan { segs, create_doc, create_from })
    }

    /// Create what `plan` found missing: the document, then the maps on the way. Cannot fail for a plan made
    /// just before on the same document.
    fn carry_out(&mut self, plan: &Plan) -> Result<(), DocError> {
        if plan.create_doc {
            self.emit(Op::Make { path: Vec::new(), kind: Kind::Map })?;
        }
        for upto in plan.create_from.max(1)..plan.segs.len() {
            self.emit(Op::Make { path: plan.segs[..upto].to_vec(), kind: Kind::Map })?;
        }
        Ok(())
    }

    /// Plan for a container of `kind` at `path`: the field must show one, or nothing (it is then created).
    /// Returns the plan and whether the container itself must be made.
    fn plan_container(&self, path: &Path, kind: Kind) -> Result<(Plan, bool), DocError> {
        if path.is_root() {
            return Err(DocError::TypeMismatch { path: String::new(), expected: kind.name(), found: "document" });
        }
        let plan = self.plan(path, true)?;
        let make = match self.shown_at_plan(&plan) {
            Some(s) if s.kind() == Some(kind) => false,
            Some(s) => {
                return Err(DocError::TypeMismatch {
                    path: path.to_string(),
                    expected: kind.name(),
                    found: s.kind_name(),
                })
            }
            None => true,
        };
        Ok((plan, make))
    }

    /// Carry out a container plan: the maps on the way, then the container.
    fn carry_out_container(&mut self, plan: &Plan, make: bool, kind: Kind) -> Result<(), DocError> {
        self.carry_out(plan)?;
        if make {
            self.emit(Op::Make { path: plan.segs.clone(), kind })?;
        }
        Ok(())
    }

    fn mismatch_or_missing(&self, segs: &[Seg], path: &Path, upto: usize, expected: Kind) -> DocError {
        match self.shown(segs) {
            Some(s) => DocError::TypeMismatch {
                path: path_string(path, upto),
                expected: expected.name(),
                found: s.kind_name(),
            },
            None => DocError::NoSuchField { path: path_string(path, upto) },
        }
    }

    /// Refuse a call whose ops may cost `cost` and add `items` sequence items, when the change would then cost more
    /// than [`MAX_CHANGE_COST`] (other devices would refuse it) or the document hold more than
    /// [`MAX_LOCAL_DOC_ITEMS`]. Called before the call changes anything; the estimates are upper bounds.
    fn budget(&mut self, path: &Path, cost: u64, items: u64) -> Result<(), DocError> {
        // The maps a call may create on the way, and the container it may make.
        let ways = (path.segments().len() as u64 + 2).saturating_mul(OP_COST.saturating_add(path_cost(path)));
        let total = self.cost.saturating_add(cost).saturating_add(ways);
        if total > MAX_CHANGE_COST {
            return Err(DocError::Change(ChangeError::TooLarge(format!(
                "the edits of one document in one transaction would cost {total} (at most {MAX_CHANGE_COST}): \
                 split them into several transactions"
            ))));
        }
        self.doc.check_room(items, MAX_LOCAL_DOC_ITEMS)
    }

    /// Run one public call: on error, nothing of it may have been applied. Every call checks before it emits, so
    /// an op recorded by a failing call is a bug in the call; it is reported loudly rather than kept quietly.
    fn call<R>(&mut self, f: impl FnOnce(&mut Self) -> Result<R, DocError>) -> Result<R, DocError> {
        let ops_before = self.ops.len();
        let r = f(self);
        if let Err(e) = &r {
            if self.ops.len() != ops_before {
                log::error!("a failed edit recorded {} operations: {e}", self.ops.len() - ops_before);
                debug_assert!(false, "a failed edit recorded operations: {e}");
            }
        }
        r
    }

    /// Set the field at `path` to `value`, replacing what it held (its type included). Missing maps on the way are
    /// created; array indexes must exist.
    pub fn set(&mut self, path: impl AsPath, value: impl Into<Value>) -> Result<(), DocError> {
        let path = path.to_path()?;
        let value = value.into();
        self.call(|ed| ed.write(&path, value, false))
    }

    /// Like [`DocEditor::set`], but maps merge: the fields given are written, the others kept; an existing counter
    /// or text of the same type is kept as it is.
    pub fn merge(&mut self, path: impl AsPath, value: impl Into<Value>) -> Result<(), DocError> {
        let path = path.to_path()?;
        let value = value.into();
        self.call(|ed| ed.write(&path, value, true))
    }

    fn write(&mut self, path: &Path, value: Value, merge: bool) -> Result<(), DocError> {
        check_value(&value, path.segments().len())?;
        self.budget(path, value_cost(&value, path_cost(path)), value_items(&value))?;
        if path.is_root() {
            let Value::Map(m) = value else {
                return Err(DocError::InvalidValue("a document is a map".into()));
            };
            self.ops.reserve(m.len() + 2);
            let plan = self.plan(path, true)?;
            self.carry_out(&plan)?;
            if !merge && !plan.create_doc {
                self.emit(Op::Make { path: Vec::new(), kind: Kind::Map })?;
            }
            for (k, v) in m {
                self.write_at(vec![Seg::Key(k)], v, merge)?;
            }
            return Ok(());
        }
        let plan = self.plan(path, true)?;
        self.carry_out(&plan)?;
        self.write_at(plan.segs, value, merge)
    }

    /// Write a checked value at `segs`, whose parents exist.
    fn write_at(&mut self, segs: Vec<Seg>, value: Value, merge: bool) -> Result<(), DocError> {
        let current = self.shown(&segs).and_then(|s| s.kind());
        match value {
            Value::Register(s) => {
                self.emit(Op::Set { path: segs, value: s })?;
            }
            Value::Map(m) => {
                if !(merge && current == Some(Kind::Map)) {
                    self.emit(Op::Make { path: segs.clone(), kind: Kind::Map })?;
                }
                for (k, v) in m {
                    let mut child = segs.clone();
                    child.push(Seg::Key(k));
                    self.write_at(child, v, merge)?;
                }
            }
            Value::Array(items) => {
                self.emit(Op::Make { path: segs.clone(), kind: Kind::Array })?;
                self.insert_elements(&segs, 0, items)?;
            }
            Value::Text(s) => {
                if !(merge && current == Some(Kind::Text)) {
                    self.emit(Op::Make { path: segs.clone(), kind: Kind::Text })?;
                    if !s.is_empty() {
                        self.insert_text_at(&segs, 0, &s)?;
                    }
                }
            }
            Value::Counter(n) => {
                if !(merge && current == Some(Kind::Counter)) {
                    self.emit(Op::Make { path: segs.clone(), kind: Kind::Counter })?;
                    if n != 0 {
                        self.emit(Op::Increment { path: segs, by: n })?;
                    }
                }
            }
        }
        Ok(())
    }

    fn insert_elements(&mut self, segs: &[Seg], index: usize, items: Vec<Value>) -> Result<(), DocError> {
        if items.is_empty() {
            return Ok(());
        }
        let dot = Dot::new(self.peer, self.next);
        let field = resolve_mut(&mut self.doc.root, segs)?;
        let ins = field.array_mut().local_insert(index, dot, vec![Field::default(); items.len()]).map_err(seq_err)?;
        self.record(Op::InsertElems {
            path: segs.to_vec(),
            origin_left: ins.origin_left,
            origin_right: ins.origin_right,
            count: items.len() as u64,
        });
        for (k, item) in items.into_iter().enumerate() {
            let mut child = segs.to_vec();
            child.push(Seg::Elem(dot.offset(k as u64)));
            self.write_at(child, item, false)?;
        }
        Ok(())
    }

    fn insert_text_at(&mut self, segs: &[Seg], pos: usize, s: &str) -> Result<(), DocError> {
        let dot = Dot::new(self.peer, self.next);
        let field = resolve_mut(&mut self.doc.root, segs)?;
        let ins = field.text_mut().local_insert(pos, dot, Chars::from(s)).map_err(seq_err)?;
        let SeqInsert { origin_left, origin_right, content, .. } = ins;
        self.record(Op::InsertText { path: segs.to_vec(), origin_left, origin_right, text: content });
        Ok(())
    }

    /// Remove the field at `path` (a map key or an array element). Removing the root removes the document.
    pub fn remove(&mut self, path: impl AsPath) -> Result<(), DocError> {
        let path = path.to_path()?;
        self.call(|ed| {
            ed.budget(&path, 0, 0)?;
            if path.is_root() {
                if ed.doc.exists() {
                    ed.emit(Op::Remove { path: Vec::new() })?;
                }
                return Ok(());
            }
            if let Some((parent, PathSegment::Index(i))) = path.split_last() {
                return ed.delete_elements(&parent, *i, 1);
            }
            let plan = ed.plan(&path, false)?;
            if ed.field(&plan.segs).is_some_and(Field::is_visible) {
                ed.emit(Op::Remove { path: plan.segs })?;
                Ok(())
            } else {
                Err(DocError::NoSuchField { path: path.to_string() })
            }
        })
    }

    /// Add `by` (negative to subtract) to the counter at `path`, creating the counter if the field is empty.
    pub fn increment(&mut self, path: impl AsPath, by: i64) -> Result<(), DocError> {
        let path = path.to_path()?;
        self.call(|ed| {
            ed.budget(&path, 0, 0)?;
            let (plan, make) = ed.plan_container(&path, Kind::Counter)?;
            ed.carry_out_container(&plan, make, Kind::Counter)?;
            ed.emit(Op::Increment { path: plan.segs, by })?;
            Ok(())
        })
    }

    /// Insert `s` at code point `pos` of the text at `path` (created if the field is empty).
    pub fn text_insert(&mut self, path: impl AsPath, pos: usize, s: &str) -> Result<(), DocError> {
        let path = path.to_path()?;
        self.call(|ed| ed.insert_text(&path, pos, s))
    }

    fn insert_text(&mut self, path: &Path, pos: usize, s: &str) -> Result<(), DocError> {
        if s.is_empty() {
            return Ok(());
        }
        if s.len() > MAX_SCALAR_BYTES * 4 {
            return Err(DocError::InvalidValue("text insert too large".into()));
        }
        self.budget(path, OP_COST.saturating_add(path_cost(path)).saturating_add(s.len() as u64), s.len() as u64)?;
        let (plan, make) = self.plan_container(path, Kind::Text)?;
        let len = match self.shown_at_plan(&plan) {
            Some(Shown::Text(t)) => t.len(),
            _ => 0,
        };
        if pos > len {
            return Err(DocError::IndexOutOfBounds { path: path.to_string(), index: pos, len });
        }
        self.carry_out_container(&plan, make, Kind::Text)?;
        self.insert_text_at(&plan.segs, pos, s)
    }

    /// Delete `len` code points from `pos` of the text at `path`.
    pub fn text_delete(&mut self, path: impl AsPath, pos: usize, len: usize) -> Result<(), DocError> {
        let path = path.to_path()?;
        self.call(|ed| ed.delete_text(&path, pos, len))
    }

    fn delete_text(&mut self, path: &Path, pos: usize, len: usize) -> Result<(), DocError> {
        let segs = self.existing(path, Kind::Text)?;
        if len == 0 {
            return Ok(());
        }
        let cost = match self.shown(&segs) {
            Some(Shown::Text(t)) => delete_cost(t, pos, len, self.room()),
            _ => 0,
        };
        self.budget(path, cost, 0)?;
        let field = resolve_mut(&mut self.doc.root, &segs)?;
        let spans = local_delete(field.text_mut(), path, pos, len)?;
        self.record(Op::DeleteText { path: segs, spans });
        Ok(())
    }

    /// What is left of [`MAX_CHANGE_COST`] for this change.
    fn room(&self) -> u64 {
        MAX_CHANGE_COST.saturating_sub(self.cost)
    }

    /// Replace `len` code points at `pos` with `s`.
    pub fn text_splice(&mut self, path: impl AsPath, pos: usize, len: usize, s: &str) -> Result<(), DocError> {
        let path = path.to_path()?;
        self.call(|ed| {
            if len == 0 {
                return ed.insert_text(&path, pos, s);
            }
            // Everything the insert could fail on is checked before the delete.
            if s.len() > MAX_SCALAR_BYTES * 4 {
                return Err(DocError::InvalidValue("text insert too large".into()));
            }
            let delete = match ed.plan(&path, false).ok().and_then(|p| ed.shown(&p.segs)) {
                Some(Shown::Text(t)) => delete_cost(t, pos, len, ed.room()),
                _ => 0,
            };
            let insert = (OP_COST + path_cost(&path)).saturating_add(s.len() as u64);
            ed.budget(&path, delete.saturating_add(insert), s.len() as u64)?;
            ed.delete_text(&path, pos, len)?;
            ed.insert_text(&path, pos, s)
        })
    }

    /// The segments of an existing container of `kind` at `path`.
    fn existing(&self, path: &Path, kind: Kind) -> Result<Vec<Seg>, DocError> {
        let segs = self.plan(path, false)?.segs;
        match self.shown(&segs) {
            Some(s) if s.kind() == Some(kind) => Ok(segs),
            _ => Err(self.mismatch_or_missing(&segs, path, path.segments().len(), kind)),
        }
    }

    /// Insert `items` at `index` of the array at `path` (created if the field is empty).
    pub fn array_insert(&mut self, path: impl AsPath, index: usize, items: &[Value]) -> Result<(), DocError> {
        let path = path.to_path()?;
        self.call(|ed| ed.insert_into_array(&path, Some(index), items))
    }

    /// Append `items` to the array at `path`.
    pub fn array_push(&mut self, path: impl AsPath, items: &[Value]) -> Result<(), DocError> {
        let path = path.to_path()?;
        self.call(|ed| ed.insert_into_array(&path, None, items))
    }

    /// Insert at `index`, or at the end when `None`.
    fn insert_into_array(&mut self, path: &Path, index: Option<usize>, items: &[Value]) -> Result<(), DocError> {
        for v in items {
            check_value(v, path.segments().len() + 1)?;
        }
        let all = Value::Array(items.to_vec());
        self.budget(path, value_cost(&all, path_cost(path)), value_items(&all))?;
        let (plan, make) = self.plan_container(path, Kind::Array)?;
        let len = match self.shown_at_plan(&plan) {
            Some(Shown::Array(a)) => a.len(),
            _ => 0,
        };
        let index = index.unwrap_or(len);
        if index > len {
            return Err(DocError::IndexOutOfBounds { path: path.to_string(), index, len });
        }
        self.carry_out_container(&plan, make, Kind::Array)?;
        self.insert_elements(&plan.segs, index, items.to_vec())
    }

    /// Delete `len` elements from `index` of the array at `path`.
    pub fn array_delete(&mut self, path: impl AsPath, index: usize, len: usize) -> Result<(), DocError> {
        let path = path.to_path()?;
        self.call(|ed| ed.delete_elements(&path, index, len))
    }

    fn delete_elements(&mut self, path: &Path, index: usize, len: usize) -> Result<(), DocError> {
        let segs = self.existing(path, Kind::Array)?;
        if len == 0 {
            return Ok(());
        }
        let cost = match self.shown(&segs) {
            Some(Shown::Array(a)) => delete_cost(a, index, len, self.room()),
            _ => 0,
        };
        self.budget(path, cost, 0)?;
        let field = resolve_mut(&mut self.doc.root, &segs)?;
        let spans = local_delete(field.array_mut(), path, index, len)?;
        self.record(Op::DeleteElems { path: segs, spans });
        Ok(())
    }

    /// Remove the document: everything this replica has seen of it.
    pub fn remove_document(&mut self) -> Result<(), DocError> {
        self.remove(Path::root())
    }
}

/// Where an app path leads in the document being edited, resolved before anything is written.
struct Plan {
    /// The stable segments of the path.
    segs: Vec<Seg>,
    /// The document must be created first.
    create_doc: bool,
    /// The maps at `segs[..i]` for `i` from here to the end are to be created (`usize::MAX`: none).
    create_from: usize,
}

impl Plan {
    /// Whether carrying it out creates anything (the field it leads to is then new and empty).
    fn creates(&self) -> bool {
        self.create_doc || self.create_from < self.segs.len()
    }
}

/// A map key must be non-empty and at most [`super::path::MAX_KEY_BYTES`] long, wherever it is given: in a path
/// or inside a value.
fn check_key(k: &str) -> Result<(), DocError> {
    if super::path::is_valid_key(k) {
        Ok(())
    } else {
        Err(DocError::InvalidValue(format!("invalid key {:?}", k.chars().take(50).collect::<String>())))
    }
}

/// Check an app-given value before anything is written: finite numbers, size limits, nesting depth.
fn check_value(v: &Value, depth: usize) -> Result<(), DocError> {
    if depth > MAX_PATH_DEPTH {
        return Err(DocError::InvalidValue(format!("nesting deeper than {MAX_PATH_DEPTH}")));
    }
    match v {
        Value::Register(s) => {
            // First, as it bounds the recursion of the checks below.
            if s.depth_exceeds(MAX_VALUE_DEPTH) {
                return Err(DocError::InvalidValue(format!("value nested deeper than {MAX_VALUE_DEPTH}")));
            }
            if !s.is_valid() {
                return Err(DocError::InvalidValue("numbers must be finite".into()));
            }
            if s.approx_size() > MAX_SCALAR_BYTES {
                return Err(DocError::InvalidValue(format!(
                    "value of about {} bytes is over the {MAX_SCALAR_BYTES}-byte limit (use an attachment)",
                    s.approx_size()
                )));
            }
        }
        Value::Map(m) => {
            for (k, v) in m {
                check_key(k)?;
                check_value(v, depth + 1)?;
            }
        }
        Value::Array(items) => {
            for v in items {
                check_value(v, depth + 1)?;
            }
        }
        Value::Text(s) => {
            if s.len() > MAX_SCALAR_BYTES * 4 {
                return Err(DocError::InvalidValue("text too large".into()));
            }
        }
        Value::Counter(_) => {}
    }
    Ok(())
}

/// What the path steps of an op cost (see [`Op::cost`]).
fn path_cost(path: &Path) -> u64 {
    path.segments().iter().fold(0u64, |acc, s| {
        let key = match s {
            PathSegment::Key(k) => k.len() as u64,
            PathSegment::Index(_) => 0,
        };
        acc.saturating_add(SEG_COST + key)
    })
}

/// At least what writing `value` costs (the ops that write it; see [`Op::cost`]), for a field whose path steps
/// cost `pc`. Recurses as deep as the value, which was checked ([`check_value`]).
fn value_cost(v: &Value, pc: u64) -> u64 {
    let op = OP_COST.saturating_add(pc);
    match v {
        Value::Register(s) => op.saturating_add(s.memory_cost()),
        Value::Map(m) => m
            .iter()
            .fold(op, |acc, (k, c)| acc.saturating_add(value_cost(c, pc.saturating_add(SEG_COST + k.len() as u64)))),
        Value::Array(items) => items
            .iter()
            .fold(op.saturating_mul(2).saturating_add((items.len() as u64).saturating_mul(ELEM_COST)), |acc, c| {
                acc.saturating_add(value_cost(c, pc.saturating_add(SEG_COST)))
            }),
        Value::Text(t) => op.saturating_mul(2).saturating_add(t.len() as u64),
        Value::Counter(_) => op.saturating_mul(2),
    }
}

/// The sequence items writing `value` adds (at most; see [`MAX_DOC_ITEMS`]).
fn value_items(v: &Value) -> u64 {
    match v {
        Value::Register(_) | Value::Counter(_) => 0,
        Value::Map(m) => m.values().fold(0u64, |acc, c| acc.saturating_add(value_items(c))),
        Value::Array(items) => items
            .iter()
            .fold((items.len() as u64).saturating_mul(ELEM_ITEM_WEIGHT), |acc, c| acc.saturating_add(value_items(c))),
        Value::Text(t) => t.len() as u64,
    }
}

#[cfg(test)]
mod join_tests {
    use super::*;
    use crate::crdt::field::TextObj;
    use serde_json::json;

    fn created(peer: u64, value: serde_json::Value) -> Document {
        let mut doc = Document::new();
        let mut ed = doc.edit(PeerId(peer), 1, Timestamp::new(1, 0));
        ed.merge(Path::root(), Value::from_json(&value)).unwrap();
        ed.finish().unwrap();
        doc
    }

    #[test]
    fn a_state_holding_more_than_its_version_is_refused_and_changes_nothing() {
        let mut mine = created(1, json!({"a": 1}));
        let before = mine.encode();
        let mut theirs = created(2, json!({"b": 2, "t": "text", "n": 0}));
        // It claims to have seen less than it holds: merging it would let entries in that no version accounts for.
        theirs.version.set(PeerId(2), 1);
        let err = mine.join(&theirs).unwrap_err();
        assert!(matches!(err, DocError::Change(ChangeError::Corrupt(_))), "{err:?}");
        assert_eq!(mine.encode(), before);
    }

    #[test]
    fn items_whose_origins_wait_for_each_other_are_refused_and_change_nothing() {
        // Item 1:1 was inserted before 1:2, and 1:2 after 1:1: a valid order, but no sequence of inserts makes it.
        // Runs as snapshot format 1 writes them.
        let text: TextObj = crate::crdt::sequence::decoding(1, || {
            serde_json::from_value(json!([
                {"id": {"peer": 1, "counter": 1}, "origin_left": null, "origin_right": {"peer": 1, "counter": 2},
                 "deleted": false, "content": "b"},
                {"id": {"peer": 1, "counter": 2}, "origin_left": {"peer": 1, "counter": 1}, "origin_right": null,
                 "deleted": false, "content": "a"},
            ]))
        })
        .unwrap();
        let mut theirs = Document::new();
        theirs.root.map_mut().entry("t").text = Some(Box::new(text));
        theirs.version.set(PeerId(1), 2);
        let mut mine = created(3, json!({"t": "x"}));
        let before = mine.encode();
        let err = mine.join(&theirs).unwrap_err();
        assert!(matches!(&err, DocError::InvalidValue(m) if m.contains("origins out of order")), "{err:?}");
        assert_eq!(mine.encode(), before);
    }

    #[test]
    fn a_state_seen_already_changes_nothing() {
        let mut mine = created(1, json!({"a": 1, "t": "text"}));
        let old = mine.clone();
        let mut ed = mine.edit(PeerId(1), 10, Timestamp::new(2, 0));
        ed.remove("a").unwrap();
        ed.finish().unwrap();
        let before = mine.encode();
        mine.join(&old).unwrap();
        assert_eq!(mine.encode(), before, "an older state of the same document brings nothing back");
    }
}
