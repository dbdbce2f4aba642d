//! The values an app puts into fields.
//!
//! A [`Scalar`] is what a register holds: any JSON-like value (objects and arrays inside a scalar are atomic: the
//! whole value is replaced by a write), raw bytes, or an attachment token. A [`Value`] describes a field's *type* as
//! the app chooses it when writing: a register scalar, or a new map, array, text or counter.

use crate::util::{hex, parse_hex};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The token of a binary attachment: the content's BLAKE3 hash, its length and app metadata. The bytes themselves
/// live beside the document in the store, chunked and content-addressed.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AttachmentToken {
    /// BLAKE3 hash of the whole content.
    pub hash: [u8; 32],
    /// Length of the content in bytes.
    pub len: u64,
    /// App metadata, e.g. `name`, `mime`.
    pub meta: BTreeMap<String, String>,
}

impl AttachmentToken {
    /// The hash as 64 lowercase hex digits.
    pub fn hash_hex(&self) -> String {
        hex(&self.hash)
    }

    /// The JSON form used when documents are rendered: `{"_attachment": "<hash hex>", "len": N, "meta": {...}}`.
    pub fn to_json(&self) -> serde_json::Value {
        super::json::to_value(super::json::TokenJson(self))
    }
}

impl AttachmentToken {
    /// Read a token back from its JSON form (see [`AttachmentToken::to_json`]).
    pub fn from_json(v: &serde_json::Value) -> Option<AttachmentToken> {
        let hash = parse_hex(v.get("_attachment")?.as_str()?)?;
        let len = v.get("len")?.as_u64()?;
        let meta = match v.get("meta") {
            None => BTreeMap::new(),
            Some(m) => {
                m.as_object()?.iter().map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect::<Option<_>>()?
            }
        };
        Some(AttachmentToken { hash, len, meta })
    }
}

impl fmt::Debug for AttachmentToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Attachment({}, {} bytes, {:?})", self.hash_hex(), self.len, self.meta)
    }
}

/// A register's value.
#[derive(Clone, PartialEq, Serialize, Deserialize, Debug)]
pub enum Scalar {
    /// JSON `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A whole number (JSON integers that fit `i64`; larger ones become floats).
    Int(i64),
    /// Always finite.
    Float(f64),
    /// A UTF-8 string.
    Str(String),
    /// Raw bytes (not representable in JSON; shown as an array of numbers).
    Bytes(Vec<u8>),
    /// A JSON array kept as one atomic value.
    List(Vec<Scalar>),
    /// A JSON object kept as one atomic value.
    Object(BTreeMap<String, Scalar>),
    /// Boxed: attachments are rare, and this keeps every other value small.
    Attachment(Box<AttachmentToken>),
}

impl Scalar {
    /// Convert from JSON. Integers that fit `i64` stay integers; other numbers become floats.
    pub fn from_json(v: &serde_json::Value) -> Scalar {
        Scalar::from_json_owned(v.clone())
    }

    /// Like [`Scalar::from_json`], taking the JSON value (its strings are moved, not copied).
    pub fn from_json_owned(v: serde_json::Value) -> Scalar {
        use serde_json::Value as J;
        match v {
            J::Null => Scalar::Null,
            J::Bool(b) => Scalar::Bool(b),
            J::Number(n) => match n.as_i64() {
                Some(i) => Scalar::Int(i),
                None => Scalar::Float(n.as_f64().unwrap_or(0.0)),
            },
            J::String(s) => Scalar::Str(s),
            J::Array(a) => Scalar::List(a.into_iter().map(Scalar::from_json_owned).collect()),
            J::Object(o) if o.contains_key("_attachment") => match AttachmentToken::from_json(&J::Object(o.clone())) {
                Some(t) => Scalar::Attachment(Box::new(t)),
                None => Scalar::Object(o.into_iter().map(|(k, v)| (k, Scalar::from_json_owned(v))).collect()),
            },
            J::Object(o) => Scalar::Object(o.into_iter().map(|(k, v)| (k, Scalar::from_json_owned(v))).collect()),
        }
    }

    /// Render as JSON. Bytes become an array of numbers; attachments their token object.
    pub fn to_json(&self) -> serde_json::Value {
        super::json::to_value(super::json::ScalarJson(self))
    }

    /// Whether [`Scalar::approx_size`] is over `limit`, found without looking at more than about `limit` bytes
    /// worth of a large list or object.
    pub fn size_exceeds(&self, limit: usize) -> bool {
        fn walk(v: &Scalar, budget: &mut usize) -> bool {
            let own = match v {
                Scalar::List(_) | Scalar::Object(_) => 2,
                other => other.approx_size(),
            };
            if own > *budget {
                return true;
            }
            *budget -= own;
            match v {
                Scalar::List(l) => l.iter().any(|x| walk(x, budget)),
                Scalar::Object(o) => o.iter().any(|(k, x)| {
                    if k.len() + 2 > *budget {
                        return true;
                    }
                    *budget -= k.len() + 2;
                    walk(x, budget)
                }),
                _ => false,
            }
        }
        let mut budget = limit;
        walk(self, &mut budget)
    }

    /// An approximation of the encoded size, used to enforce limits.
    pub fn approx_size(&self) -> usize {
        match self {
            Scalar::Null | Scalar::Bool(_) => 1,
            Scalar::Int(_) | Scalar::Float(_) => 9,
            Scalar::Str(s) => s.len() + 2,
            Scalar::Bytes(b) => b.len() + 2,
            Scalar::List(l) => 2 + l.iter().map(Scalar::approx_size).sum::<usize>(),
            Scalar::Object(o) => 2 + o.iter().map(|(k, v)| k.len() + 2 + v.approx_size()).sum::<usize>(),
            Scalar::Attachment(t) => 42 + t.meta.iter().map(|(k, v)| k.len() + v.len() + 4).sum::<usize>(),
        }
    }

    /// Floats must be finite (JSON cannot carry NaN or infinities, and they break ordering).
    pub fn is_valid(&self) -> bool {
        match self {
            Scalar::Float(f) => f.is_finite(),
            Scalar::List(l) => l.iter().all(Scalar::is_valid),
            Scalar::Object(o) => o.values().all(Scalar::is_valid),
            _ => true,
        }
    }

    /// The name of the scalar's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Scalar::Null => "null",
            Scalar::Bool(_) => "bool",
            Scalar::Int(_) => "int",
            Scalar::Float(_) => "float",
            Scalar::Str(_) => "string",
            Scalar::Bytes(_) => "bytes",
            Scalar::List(_) => "json array",
            Scalar::Object(_) => "json object",
            Scalar::Attachment(_) => "attachment",
        }
    }
}

macro_rules! scalar_from {
    ($($t:ty => $v:ident),*) => {$(
        impl From<$t> for Scalar { fn from(x: $t) -> Scalar { Scalar::$v(x.into()) } }
    )*};
}
scalar_from!(bool => Bool, i64 => Int, i32 => Int, u32 => Int, f64 => Float, String => Str, &str => Str,
    Vec<u8> => Bytes, AttachmentToken => Attachment);

/// The kinds of container a field can hold besides a register.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Debug)]
pub enum Kind {
    /// Add-wins map of named fields.
    Map,
    /// Replicated growable array of fields.
    Array,
    /// Collaborative text (a sequence of Unicode code points).
    Text,
    /// Counter: the sum of every writer's increments and decrements.
    Counter,
}

impl Kind {
    /// The kind's name in error messages (`"map"`, `"array"`, `"text"`, `"counter"`).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Map => "map",
            Kind::Array => "array",
            Kind::Text => "text",
            Kind::Counter => "counter",
        }
    }
}

/// A value as the app writes it: the field's type is chosen by the variant.
#[derive(Clone, PartialEq, Debug)]
pub enum Value {
    /// A last-writer-wins register holding a scalar.
    Register(Scalar),
    /// A map whose fields are themselves typed values.
    Map(BTreeMap<String, Value>),
    /// An array whose elements are typed values.
    Array(Vec<Value>),
    /// Collaborative text with this initial content.
    Text(String),
    /// A counter with this initial value (a first increment by this much).
    Counter(i64),
}

impl Value {
    /// The JSON mapping used by `upsert`: objects become maps (merged field by field), every other JSON value —
    /// arrays included — becomes a register. An attachment token in its JSON form
    /// (`{"_attachment": hex, "len": n, "meta": {...}}`, see [`AttachmentToken::to_json`]) becomes an attachment
    /// register, so a document read as JSON can be written back unchanged. Use [`Value::Array`], [`Value::Text`]
    /// and [`Value::Counter`] to pick those types.
    pub fn from_json(v: &serde_json::Value) -> Value {
        Value::from_json_owned(v.clone())
    }

    /// Like [`Value::from_json`], taking the JSON value (its strings are moved, not copied).
    pub fn from_json_owned(v: serde_json::Value) -> Value {
        match v {
            serde_json::Value::Object(o) if !o.contains_key("_attachment") => {
                Value::Map(o.into_iter().map(|(k, v)| (k, Value::from_json_owned(v))).collect())
            }
            other => Value::Register(Scalar::from_json_owned(other)),
        }
    }
}

impl<T: Into<Scalar>> From<T> for Value {
    fn from(x: T) -> Value {
        Value::Register(x.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachment_tokens_in_json_stay_attachments() {
        let t =
            AttachmentToken { hash: [3; 32], len: 9, meta: [("type".to_string(), "text/plain".to_string())].into() };
        let j = serde_json::json!({"file": t.to_json(), "not": {"_attachment": "zz"}});
        let Value::Map(m) = Value::from_json(&j) else { panic!("a map") };
        assert_eq!(m["file"], Value::Register(Scalar::Attachment(Box::new(t))));
        assert!(
            matches!(&m["not"], Value::Register(Scalar::Object(_))),
            "an object that is not a token stays an object"
        );
    }

    #[test]
    fn json_round_trip() {
        let j = serde_json::json!({"a": [1, 2.5, "x", null, true], "b": {"c": -3}});
        let s = Scalar::from_json(&j);
        assert!(s.is_valid());
        assert_eq!(s.to_json(), j);
        assert!(!Scalar::Float(f64::NAN).is_valid());
    }

    #[test]
    fn value_from_json_maps_objects_to_maps() {
        let v = Value::from_json(&serde_json::json!({"a": {"b": [1]}, "c": 2}));
        let Value::Map(m) = v else { panic!("expected a map") };
        assert!(matches!(m["a"], Value::Map(_)));
        assert_eq!(m["c"], Value::Register(Scalar::Int(2)));
    }
}
