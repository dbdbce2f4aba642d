//! The JSON rendering of documents, as `serde::Serialize` views: written straight to text for the store's stored
//! view, or built into a `serde_json::Value` for reads and observers — one rendering serves both.
//!
//! Bytes render as an array of numbers, attachments as their token object (see [`AttachmentToken::to_json`]).

use super::field::{Field, Shown};
use super::map::MapObj;
use super::value::{AttachmentToken, Scalar};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::Serialize;

pub(crate) struct ScalarJson<'a>(pub &'a Scalar);
pub(crate) struct TokenJson<'a>(pub &'a AttachmentToken);
pub(crate) struct ShownJson<'a>(pub Shown<'a>);
/// A map's visible fields, and optionally an `_id` entry first (a document's stored view).
pub(crate) struct MapJson<'a> {
    pub map: Option<&'a MapObj>,
    pub id: Option<&'a str>,
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
            Shown::Map(m) => MapJson { map: Some(m), id: None }.serialize(s),
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
                m.serialize_entry(k, &ShownJson(shown))?;
            }
        }
        m.end()
    }
}
