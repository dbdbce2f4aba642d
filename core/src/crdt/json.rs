//! The JSON rendering of documents, as `serde::Serialize` views: written straight to text for the store's stored
//! view, or built into a `serde_json::Value` for reads and observers — one rendering serves both.
//!
//! Bytes render as an array of numbers, attachments as their token object (see [`AttachmentToken::to_json`]). The
//! store's view may leave large register values out ([`Cut`]); it keeps them beside the view and puts them back on
//! every read.

use super::clock::Dot;
use super::field::{Field, Shown};
use super::map::MapObj;
use super::value::{AttachmentToken, Scalar};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::Serialize;
use std::cell::RefCell;

/// Register values larger than this (approximate encoded bytes) are cut out of a document's stored view and kept
/// beside it (see [`Cut`]), so that a small edit of a document holding large values does not rewrite them.
pub(crate) const PART_MIN_BYTES: usize = 16 << 10;

pub(crate) struct ScalarJson<'a>(pub &'a Scalar);
pub(crate) struct TokenJson<'a>(pub &'a AttachmentToken);
pub(crate) struct ShownJson<'a>(pub Shown<'a>);
/// A map's visible fields, and optionally an `_id` entry first (a document's stored view).
pub(crate) struct MapJson<'a> {
    pub map: Option<&'a MapObj>,
    pub id: Option<&'a str>,
    /// When set, large register values are written as `null` and collected here instead.
    pub cut: Option<&'a Cut<'a>>,
}

/// One step of a location in a rendered document.
#[derive(Clone, Copy, Debug)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

impl Serialize for Step<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Step::Key(k) => s.serialize_str(k),
            Step::Index(i) => s.serialize_u64(*i as u64),
        }
    }
}

/// A large register value cut out of a rendering: the register entry that holds it (its dot names the value for
/// good: a register entry is never changed), where it sits (a JSON array of keys and indexes from the top of the
/// rendering), and the value.
#[derive(Debug)]
pub(crate) struct CutPart<'a> {
    pub dot: Dot,
    pub location: String,
    pub value: &'a Scalar,
}

/// Collects the large values cut out of a rendering (see [`PART_MIN_BYTES`]).
#[derive(Default)]
pub(crate) struct Cut<'a> {
    at: RefCell<Vec<Step<'a>>>,
    parts: RefCell<Vec<CutPart<'a>>>,
}

impl<'a> Cut<'a> {
    /// The values cut out so far, in rendering order.
    pub fn take_parts(&self) -> Vec<CutPart<'a>> {
        self.parts.take()
    }

    /// Render what `field` shows (`shown`, computed once by the caller) at `step`, or cut it out when it is a large
    /// register value.
    fn field<S: SerializeMapOrSeq>(
        &'a self,
        out: &mut S,
        step: Step<'a>,
        field: &'a Field,
        shown: Option<Shown<'a>>,
        key: Option<&'a str>,
    ) -> Result<(), S::Error> {
        if let (Some(Shown::Scalar(v)), Some(e)) = (shown, field.reg.winner()) {
            if v.size_exceeds(PART_MIN_BYTES) {
                let mut at = self.at.borrow_mut();
                at.push(step);
                let location = to_string(&*at);
                at.pop();
                self.parts.borrow_mut().push(CutPart { dot: e.dot, location, value: v });
                return out.element(key, &());
            }
        }
        self.at.borrow_mut().push(step);
        let r = out.element(key, &CutJson { shown, cut: self });
        self.at.borrow_mut().pop();
        r
    }
}

/// What a field shows, rendered with a [`Cut`]: only maps and arrays hold values that may be cut out; everything
/// else renders as without one.
struct CutJson<'a> {
    shown: Option<Shown<'a>>,
    cut: &'a Cut<'a>,
}

impl Serialize for CutJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.shown {
            Some(Shown::Map(m)) => MapJson { map: Some(m), id: None, cut: Some(self.cut) }.serialize(s),
            Some(Shown::Array(a)) => {
                let mut seq = Seq(s.serialize_seq(Some(a.len()))?);
                let mut i = 0;
                for (_, run) in a.visible_runs() {
                    for f in run.iter() {
                        self.cut.field(&mut seq, Step::Index(i), f, f.shown(), None)?;
                        i += 1;
                    }
                }
                seq.0.end()
            }
            Some(shown) => ShownJson(shown).serialize(s),
            None => s.serialize_unit(),
        }
    }
}

/// Serialising an entry of a map or an element of a sequence, alike.
trait SerializeMapOrSeq {
    type Error;
    fn element<T: Serialize + ?Sized>(&mut self, key: Option<&str>, value: &T) -> Result<(), Self::Error>;
}

impl<M: SerializeMap> SerializeMapOrSeq for M {
    type Error = M::Error;
    fn element<T: Serialize + ?Sized>(&mut self, key: Option<&str>, value: &T) -> Result<(), M::Error> {
        self.serialize_entry(key.unwrap_or_default(), value)
    }
}

/// A sequence being serialised (a newtype, so that it does not overlap with maps above).
struct Seq<S>(S);

impl<S: SerializeSeq> SerializeMapOrSeq for Seq<S> {
    type Error = S::Error;
    fn element<T: Serialize + ?Sized>(&mut self, _key: Option<&str>, value: &T) -> Result<(), S::Error> {
        self.0.serialize_element(value)
    }
}

/// The JSON value of a rendering. Serialising these views cannot fail: every map key is a string.
pub(crate) fn to_value(v: impl Serialize) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// The JSON text of a rendering.
pub(crate) fn to_string(v: impl Serialize) -> String {
    serde_json::to_string(&v).unwrap_or_default()
}

impl Serialize for ScalarJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Scalar::Null => s.serialize_unit(),
            Scalar::Bool(b) => s.serialize_bool(*b),
            Scalar::Int(i) => s.serialize_i64(*i),
            // Floats are kept finite; a non-finite one renders as null.
            Scalar::Float(f) if f.is_finite() => s.serialize_f64(*f),
            Scalar::Float(_) => s.serialize_unit(),
            Scalar::Str(t) => s.serialize_str(t),
            Scalar::Bytes(b) => s.collect_seq(b.iter()),
            Scalar::List(l) => s.collect_seq(l.iter().map(ScalarJson)),
            Scalar::Object(o) => s.collect_map(o.iter().map(|(k, v)| (k, ScalarJson(v)))),
            Scalar::Attachment(t) => TokenJson(t).serialize(s),
        }
    }
}

impl Serialize for TokenJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("_attachment", &self.0.hash_hex())?;
        m.serialize_entry("len", &self.0.len)?;
        m.serialize_entry("meta", &self.0.meta)?;
        m.end()
    }
}

impl Serialize for ShownJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Shown::Scalar(v) => ScalarJson(v).serialize(s),
            Shown::Map(m) => MapJson { map: Some(m), id: None, cut: None }.serialize(s),
            Shown::Array(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for (_, run) in a.visible_runs() {
                    for f in run.iter() {
                        seq.serialize_element(&FieldJson(f))?;
                    }
                }
                seq.end()
            }
            Shown::Text(t) => s.serialize_str(&t.text()),
            Shown::Counter(c) => s.serialize_i64(c.value()),
        }
    }
}

/// A field: what it shows, or null (an array element whose content was removed).
struct FieldJson<'a>(&'a Field);

impl Serialize for FieldJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.shown() {
            Some(shown) => ShownJson(shown).serialize(s),
            None => s.serialize_unit(),
        }
    }
}

impl Serialize for MapJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        if let Some(id) = self.id {
            m.serialize_entry("_id", id)?;
        }
        for (k, f) in self.map.into_iter().flat_map(|m| m.fields.iter()) {
            if self.id.is_some() && k == "_id" {
                continue;
            }
            if let Some(shown) = f.shown() {
                match self.cut {
                    Some(cut) => cut.field(&mut m, Step::Key(k), f, Some(shown), Some(k))?,
                    None => m.serialize_entry(k, &ShownJson(shown))?,
                }
            }
        }
        m.end()
    }
}
