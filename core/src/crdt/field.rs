//! A field: one named (or indexed) place in a document, holding its own CRDT.
//!
//! A field keeps a register (scalar values, and entries asserting that it holds a container) and at most one
//! container of each kind. Two replicas that concurrently create a map (or counter, array, text) in the same field
//! create the *same* container, so their edits merge instead of one hiding the other.
//!
//! # Removal semantics (add-wins / observed-remove)
//! Removing a field — or a whole document — with causal context `ctx` removes everything in it that `ctx` covers:
//! register entries, counter contributions, map entries, array elements and characters, recursively. Edits that were
//! concurrent with the removal are not covered and survive, so the field (or document) reappears holding only those
//! edits. Because changes to one document are delivered causally, the covered content is always already present when
//! a removal arrives, which lets the removal be applied eagerly.
//!
//! # Which value a field shows
//! The winning register entry (see [`super::register`]) decides: a scalar, or one of the containers. When no register
//! entry survives but a container still holds concurrent edits, that container is shown (map, then array, text,
//! counter). Everything else that survived is available as a conflict.

use super::counter::Counter;
use super::map::MapObj;
use super::register::{Content, Register};
use super::sequence::{Chars, SeqContent, SeqError, Sequence};
use super::value::{Kind, Scalar};
use super::version::VersionVector;
use serde::{Deserialize, Serialize};

pub(crate) type ArrayObj = Sequence<Vec<Field>>;
pub(crate) type TextObj = Sequence<Chars>;

/// Encoded with its containers that hold nothing and that no register entry makes left out (see
/// [`Field::is_vacant`]): they mean exactly what no container means, so replicas holding the same content encode it
/// alike whatever removals left behind in their memory.
#[derive(Clone, Debug, Default)]
pub(crate) struct Field {
    pub reg: Register,
    pub map: Option<Box<MapObj>>,
    pub array: Option<Box<ArrayObj>>,
    pub text: Option<Box<TextObj>>,
    pub counter: Option<Box<Counter>>,
}

/// The deepest nesting of fields a decoded document may have: the root, one field per path segment, with a little
/// room. A stored snapshot nested deeper (corrupt, or crafted) is refused while decoding, before recursing further.
const MAX_FIELD_NESTING: usize = super::path::MAX_PATH_DEPTH + 4;

thread_local! {
    /// How many fields are being decoded, one inside the other, on this thread.
    static DECODING: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Counts one level of fields being decoded while it lives.
struct Nesting;

impl Nesting {
    fn enter() -> Option<Nesting> {
        let depth = DECODING.with(|d| d.get());
        if depth >= MAX_FIELD_NESTING {
            return None;
        }
        DECODING.with(|d| d.set(depth + 1));
        Some(Nesting)
    }
}

impl Drop for Nesting {
    fn drop(&mut self) {
        DECODING.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

impl Serialize for Field {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let kept = |kind: Kind, vacant: bool| !vacant || self.makes(kind);
        let mut st = s.serialize_struct("Field", 5)?;
        st.serialize_field("reg", &self.reg)?;
        st.serialize_field("map", &self.map.as_ref().filter(|m| kept(Kind::Map, m.is_vacant())))?;
        st.serialize_field("array", &self.array.as_ref().filter(|a| kept(Kind::Array, a.total_len() == 0)))?;
        st.serialize_field("text", &self.text.as_ref().filter(|t| kept(Kind::Text, t.total_len() == 0)))?;
        st.serialize_field("counter", &self.counter.as_ref().filter(|c| kept(Kind::Counter, c.is_empty())))?;
        st.end()
    }
}

/// What `Field` encodes as, decoded inside a nesting count.
#[derive(Deserialize)]
#[serde(rename = "Field")]
struct FieldRepr {
    reg: Register,
    map: Option<Box<MapObj>>,
    array: Option<Box<ArrayObj>>,
    text: Option<Box<TextObj>>,
    counter: Option<Box<Counter>>,
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Field, D::Error> {
        let _level = Nesting::enter().ok_or_else(|| {
            <D::Error as serde::de::Error>::custom(format!("fields nested deeper than {MAX_FIELD_NESTING}"))
        })?;
        let FieldRepr { reg, map, array, text, counter } = FieldRepr::deserialize(d)?;
        Ok(Field { reg, map, array, text, counter })
    }
}

/// What a field shows, borrowed.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Shown<'a> {
    Scalar(&'a Scalar),
    Map(&'a MapObj),
    Array(&'a ArrayObj),
    Text(&'a TextObj),
    Counter(&'a Counter),
}

impl Shown<'_> {
    pub fn kind_name(&self) -> &'static str {
        match self {
            Shown::Scalar(_) => "register",
            Shown::Map(_) => Kind::Map.name(),
            Shown::Array(_) => Kind::Array.name(),
            Shown::Text(_) => Kind::Text.name(),
            Shown::Counter(_) => Kind::Counter.name(),
        }
    }

    pub fn kind(&self) -> Option<Kind> {
        match self {
            Shown::Scalar(_) => None,
            Shown::Map(_) => Some(Kind::Map),
            Shown::Array(_) => Some(Kind::Array),
            Shown::Text(_) => Some(Kind::Text),
            Shown::Counter(_) => Some(Kind::Counter),
        }
    }

    pub fn to_json(self) -> serde_json::Value {
        super::json::to_value(super::json::ShownJson(self))
    }
}

impl Field {
    /// Make sure the container of `kind` exists.
    pub fn ensure(&mut self, kind: Kind) {
        match kind {
            Kind::Map => {
                self.map.get_or_insert_with(Default::default);
            }
            Kind::Array => {
                self.array.get_or_insert_with(Default::default);
            }
            Kind::Text => {
                self.text.get_or_insert_with(Default::default);
            }
            Kind::Counter => {
                self.counter.get_or_insert_with(Default::default);
            }
        }
    }

    pub fn map_mut(&mut self) -> &mut MapObj {
        self.map.get_or_insert_with(Default::default)
    }

    pub fn array_mut(&mut self) -> &mut ArrayObj {
        self.array.get_or_insert_with(Default::default)
    }

    pub fn text_mut(&mut self) -> &mut TextObj {
        self.text.get_or_insert_with(Default::default)
    }

    pub fn counter_mut(&mut self) -> &mut Counter {
        self.counter.get_or_insert_with(Default::default)
    }

    /// Fold the counter contributions `stable` covers, here and in every field nested in this one, removed array
    /// elements included, and drop from removed array elements what `stable` covers (as a removal with that context
    /// would; see [`super::document::Document::collect_stable`]). Returns whether anything changed.
    pub fn collect_stable(&mut self, stable: &VersionVector) -> bool {
        let mut changed = false;
        self.for_each_field_mut(&mut |f| {
            if let Some(c) = &mut f.counter {
                changed |= c.fold(stable);
            }
            if let Some(a) = f.array.as_deref_mut() {
                a.for_each_mut(|_, element, deleted| {
                    if deleted {
                        let before = element.weight();
                        element.clear(stable);
                        changed |= element.weight() < before;
                    }
                });
            }
        });
        changed
    }

    /// What this field and the fields nested in it hold that a removal takes away: register entries, counter
    /// contributions, and visible array elements and characters. A removal that takes something lowers it.
    fn weight(&self) -> u64 {
        let mut n = 0u64;
        self.for_each_field(&mut |f| {
            let held = f.reg.dots().count()
                + f.counter.as_deref().map_or(0, Counter::entries)
                + f.array.as_deref().map_or(0, |a| a.len())
                + f.text.as_deref().map_or(0, |t| t.len());
            n = n.saturating_add(held as u64);
        });
        n
    }

    /// Call `f` on this field and every field nested in it, removed array elements included.
    pub fn for_each_field(&self, f: &mut impl FnMut(&Field)) {
        f(self);
        if let Some(m) = &self.map {
            m.fields.values().for_each(|c| c.for_each_field(f));
        }
        if let Some(a) = &self.array {
            a.all_items().for_each(|c| c.for_each_field(f));
        }
    }

    fn for_each_field_mut(&mut self, f: &mut impl FnMut(&mut Field)) {
        f(self);
        if let Some(m) = &mut self.map {
            m.fields.values_mut().for_each(|c| c.for_each_field_mut(f));
        }
        if let Some(a) = &mut self.array {
            a.for_each_mut(|_, c, _| c.for_each_field_mut(f));
        }
    }

    /// Remove everything covered by `ctx`, recursively (see the module docs).
    pub fn clear(&mut self, ctx: &VersionVector) {
        self.reg.clear(ctx);
        if let Some(m) = &mut self.map {
            m.clear(ctx);
        }
        if let Some(a) = &mut self.array {
            a.delete_covered(ctx);
            a.for_each_mut(|_, f, _| f.clear(ctx));
        }
        if let Some(t) = &mut self.text {
            t.delete_covered(ctx);
        }
        if let Some(c) = &mut self.counter {
            c.clear(ctx);
        }
    }

    /// State-based merge with the field of a replica that has seen `theirs` (this one has seen `mine`), as a join
    /// of dot stores (Almeida et al., *Delta state replicated data types*): what both hold stays, what one side
    /// holds and the other has not seen is added, and what one side saw and no longer holds is gone (it was
    /// replaced or removed there) — recursively, in maps, array elements, texts and counters. Equal to applying
    /// the changes one side holds and the other lacks. On error (an `other` that contradicts this field's
    /// sequences) part of `other` may have been merged: [`super::document::Document::join`] merges into a copy.
    pub fn join(&mut self, other: &Field, mine: &VersionVector, theirs: &VersionVector) -> Result<(), SeqError> {
        self.reg.join(&other.reg, mine, theirs);
        if self.map.is_some() || other.map.is_some() {
            let theirs_map = other.map.as_deref();
            let map = self.map_mut();
            // A key the other side does not hold: it holds none of what is under it, so what it saw there is gone.
            for (key, field) in map.fields.iter_mut() {
                if theirs_map.is_none_or(|m| m.get(key).is_none()) {
                    field.join(&Field::default(), mine, theirs)?;
                }
            }
            for (key, field) in theirs_map.into_iter().flat_map(|m| m.fields.iter()) {
                map.entry(key).join(field, mine, theirs)?;
            }
        }
        if let Some(theirs_array) = other.array.as_deref() {
            let array = self.array_mut();
            // Elements both hold merge their fields; those only the other holds come whole with the items.
            for (id, items, _) in theirs_array.runs() {
                for (o, field) in items.iter().enumerate() {
                    if let Some((mine_field, _)) = array.get_by_id_mut(id.offset(o as u64)) {
                        mine_field.join(field, mine, theirs)?;
                    }
                }
            }
            array.join(theirs_array, mine)?;
        }
        if let Some(theirs_text) = other.text.as_deref() {
            self.text_mut().join(theirs_text, mine)?;
        }
        if self.counter.is_some() || other.counter.is_some() {
            let empty = Counter::default();
            self.counter_mut().join(other.counter.as_deref().unwrap_or(&empty), mine, theirs);
        }
        Ok(())
    }

    /// Whether every dot the field holds — register entries, counter contributions, sequence items, recursively —
    /// is covered by `version` (a state received from elsewhere must not hold what its version says it has not
    /// seen).
    pub fn dots_within(&self, version: &VersionVector) -> bool {
        let run_within = |id: super::clock::Dot, len: usize| version.contains(id.offset(len.saturating_sub(1) as u64));
        self.reg.dots().all(|d| version.contains(d))
            && self.counter.as_deref().is_none_or(|c| c.last_dots().all(|d| version.contains(d)))
            && self.map.as_deref().is_none_or(|m| m.fields.values().all(|f| f.dots_within(version)))
            && self.text.as_deref().is_none_or(|t| t.runs().all(|(id, c, _)| run_within(id, c.len())))
            && self.array.as_deref().is_none_or(|a| {
                a.runs()
                    .all(|(id, items, _)| run_within(id, items.len()) && items.iter().all(|f| f.dots_within(version)))
            })
    }

    fn map_live(&self) -> Option<&MapObj> {
        self.map.as_deref().filter(|m| m.has_visible())
    }
    fn array_live(&self) -> Option<&ArrayObj> {
        self.array.as_deref().filter(|a| !a.is_empty())
    }
    fn text_live(&self) -> Option<&TextObj> {
        self.text.as_deref().filter(|t| !t.is_empty())
    }
    fn counter_live(&self) -> Option<&Counter> {
        self.counter.as_deref().filter(|c| !c.is_empty())
    }

    /// Whether the field holds nothing at all: no register entry, and no container holding an item (a tombstone
    /// included: later inserts may name it as their origin), a contribution or a field that is not vacant itself.
    /// Such a field is what a removed key leaves behind, and means exactly what no field means.
    pub fn is_vacant(&self) -> bool {
        self.reg.is_empty()
            && self.map.as_deref().is_none_or(MapObj::is_vacant)
            && self.array.as_deref().is_none_or(|a| a.total_len() == 0)
            && self.text.as_deref().is_none_or(|t| t.total_len() == 0)
            && self.counter.as_deref().is_none_or(Counter::is_empty)
    }

    /// Whether a register entry says the field holds a container of `kind` (which then shows, even empty).
    fn makes(&self, kind: Kind) -> bool {
        self.reg.entries().iter().any(|e| e.content == Content::Make(kind))
    }

    /// Whether the field shows anything at all.
    pub fn is_visible(&self) -> bool {
        !self.reg.is_empty()
            || self.map_live().is_some()
            || self.array_live().is_some()
            || self.text_live().is_some()
            || self.counter_live().is_some()
    }

    fn container(&self, kind: Kind) -> Option<Shown<'_>> {
        match kind {
            Kind::Map => self.map.as_deref().map(Shown::Map),
            Kind::Array => self.array.as_deref().map(Shown::Array),
            Kind::Text => self.text.as_deref().map(Shown::Text),
            Kind::Counter => self.counter.as_deref().map(Shown::Counter),
        }
    }

    fn live_containers(&self) -> impl Iterator<Item = Shown<'_>> {
        [
            self.map_live().map(Shown::Map),
            self.array_live().map(Shown::Array),
            self.text_live().map(Shown::Text),
            self.counter_live().map(Shown::Counter),
        ]
        .into_iter()
        .flatten()
    }

    /// What the field shows (see the module docs).
    pub fn shown(&self) -> Option<Shown<'_>> {
        match self.reg.winner() {
            Some(e) => match &e.content {
                Content::Value(s) => Some(Shown::Scalar(s)),
                Content::Make(k) => self.container(*k),
            },
            None => self.live_containers().next(),
        }
    }

    /// Everything else the field holds that survived concurrently with what it shows, most recent first.
    pub fn conflicts(&self) -> Vec<Shown<'_>> {
        let shown_kind = self.shown().and_then(|s| s.kind());
        let mut out = Vec::new();
        let mut kinds_listed: Vec<Kind> = shown_kind.into_iter().collect();
        for e in self.reg.sorted().into_iter().skip(1) {
            match &e.content {
                Content::Value(s) => out.push(Shown::Scalar(s)),
                Content::Make(k) if !kinds_listed.contains(k) => {
                    kinds_listed.push(*k);
                    out.extend(self.container(*k));
                }
                Content::Make(_) => {}
            }
        }
        for c in self.live_containers() {
            if let Some(k) = c.kind() {
                if !kinds_listed.contains(&k) {
                    kinds_listed.push(k);
                    out.push(c);
                }
            }
        }
        out
    }
}
