//! The values an app puts into fields.
//!
//! A [`Scalar`] is what a register holds: any JSON-like value (objects and arrays inside a scalar are atomic: the
//! whole value is replaced by a write), raw bytes, or an attachment token. A [`Value`] describes a field's *type* as
//! the app chooses it when writing: a register scalar, or a new map, array, text or counter.

use super::path::MAX_PATH_DEPTH;
use crate::util::{hex, parse_hex};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The deepest nesting of JSON arrays and objects inside one register value ([`Scalar::List`],
/// [`Scalar::Object`]; an attachment token renders as two levels: its object and its `meta`). A plain value has
/// depth 0, `[1]` depth 1, `[{"a": 1}]` depth 2.
///
/// Why this value: a document's JSON view nests the document object, one map or array per path segment (at most
/// [`MAX_PATH_DEPTH`]) and then the register value; every view must stay readable by `serde_json`, whose parser
/// refuses more than 128 levels. 1 + 64 + 32 = 97 leaves room to spare. The bound is enforced wherever values
/// enter: while decoding (postcard, before recursing: see `Scalar`'s `Deserialize`), in app writes
/// ([`Scalar::try_from_json`], [`Value::try_from_json`], and the editor's value check), and in
/// [`crate::Change::validate`]. Every recursive function over a scalar (`approx_size`, `is_valid`, `to_json`,
/// `clone`, `drop`) is therefore bounded by this depth once the value is checked.
pub const MAX_VALUE_DEPTH: usize = 32;

/// The deepest view: the document object, its maps and arrays along a path, and a register value.
const _VIEWS_STAY_PARSABLE: () = assert!(1 + MAX_PATH_DEPTH + MAX_VALUE_DEPTH < 128);

/// Why a value from JSON cannot be taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// JSON arrays and objects are nested deeper than allowed (the limit given: [`MAX_VALUE_DEPTH`] inside a
    /// register, [`MAX_PATH_DEPTH`] for maps of fields).
    #[error("value nested deeper than {0} levels")]
    TooDeep(usize),
}

/// Whether JSON arrays and objects are nested more than `max` levels deep in `v`. Recurses at most `max + 1` levels,
/// whatever the depth of `v`.
fn json_deeper_than(v: &serde_json::Value, max: usize) -> bool {
    use serde_json::Value as J;
    let children: Box<dyn Iterator<Item = &J>> = match v {
        J::Array(a) => Box::new(a.iter()),
        J::Object(o) => Box::new(o.values()),
        _ => return false,
    };
    max == 0 || children.into_iter().any(|c| json_deeper_than(c, max - 1))
}

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

/// A register's value. Nested at most [`MAX_VALUE_DEPTH`] deep wherever it comes from (decoding refuses deeper
/// values before recursing into them).
#[derive(Clone, PartialEq, Serialize, Debug)]
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
    /// Convert from JSON. Integers that fit `i64` stay integers; other numbers become floats. Arrays and objects
    /// nested deeper than [`MAX_VALUE_DEPTH`] are kept as they are, and refused when written; use
    /// [`Scalar::try_from_json`] to be told at once.
    pub fn from_json(v: &serde_json::Value) -> Scalar {
        Scalar::from_json_owned(v.clone())
    }

    /// Like [`Scalar::from_json`], refusing a value nested deeper than [`MAX_VALUE_DEPTH`].
    pub fn try_from_json(v: &serde_json::Value) -> Result<Scalar, ValueError> {
        Scalar::try_from_json_owned(v.clone())
    }

    /// Like [`Scalar::try_from_json`], taking the JSON value (its strings are moved, not copied).
    pub fn try_from_json_owned(v: serde_json::Value) -> Result<Scalar, ValueError> {
        if json_deeper_than(&v, MAX_VALUE_DEPTH) {
            return Err(ValueError::TooDeep(MAX_VALUE_DEPTH));
        }
        Ok(Scalar::from_json_owned(v))
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

    /// Whether arrays and objects are nested more than `max` levels deep (see [`MAX_VALUE_DEPTH`]). Recurses at
    /// most `max + 1` levels, whatever the depth of the value, so it is safe on any value an app builds.
    pub fn depth_exceeds(&self, max: usize) -> bool {
        match self {
            Scalar::List(l) => max == 0 || l.iter().any(|x| x.depth_exceeds(max - 1)),
            Scalar::Object(o) => max == 0 || o.values().any(|x| x.depth_exceeds(max - 1)),
            Scalar::Attachment(_) => max < 2,
            _ => false,
        }
    }

    /// About the bytes of memory the value holds: 32 bytes per node (`size_of::<Scalar>()`) plus its strings',
    /// keys' and bytes' lengths (an attachment's token: its box and metadata). Counted for a change's cost (see
    /// [`crate::Change::cost`]); saturating. Recursive: call it on values whose depth was checked ([`Scalar::depth_exceeds`]).
    pub fn memory_cost(&self) -> u64 {
        const NODE: u64 = std::mem::size_of::<Scalar>() as u64;
        let own = match self {
            Scalar::Str(s) => s.len() as u64,
            Scalar::Bytes(b) => b.len() as u64,
            Scalar::List(l) => l.iter().fold(0u64, |acc, x| acc.saturating_add(x.memory_cost())),
            Scalar::Object(o) => o
                .iter()
                .fold(0u64, |acc, (k, x)| acc.saturating_add(k.len() as u64 + NODE).saturating_add(x.memory_cost())),
            Scalar::Attachment(t) => {
                std::mem::size_of::<AttachmentToken>() as u64
                    + t.meta.iter().map(|(k, v)| (k.len() + v.len()) as u64 + 2 * NODE).sum::<u64>()
            }
            Scalar::Null | Scalar::Bool(_) | Scalar::Int(_) | Scalar::Float(_) => 0,
        };
        NODE.saturating_add(own)
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

/// Decoding a scalar with the depth of the arrays and objects around it: one nested deeper than
/// [`MAX_VALUE_DEPTH`] is refused *before* its content is decoded, so a hostile encoding nested a million deep costs
/// neither stack nor memory. Reads what the derived `Serialize` writes (variants by index or by name).
mod decode {
    use super::{AttachmentToken, Scalar, MAX_VALUE_DEPTH};
    use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};
    use std::collections::BTreeMap;
    use std::fmt;

    const VARIANTS: &[&str] = &["Null", "Bool", "Int", "Float", "Str", "Bytes", "List", "Object", "Attachment"];
    /// Elements reserved ahead of decoding them (a hostile length must not allocate).
    const MAX_PREALLOC: usize = 1024;

    /// A variant of [`Scalar`], by index (`VARIANTS`).
    struct Tag(usize);

    impl<'de> de::Deserialize<'de> for Tag {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Tag, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = Tag;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a scalar variant")
                }
                fn visit_u64<E: de::Error>(self, i: u64) -> Result<Tag, E> {
                    match usize::try_from(i) {
                        Ok(i) if i < VARIANTS.len() => Ok(Tag(i)),
                        _ => Err(E::invalid_value(de::Unexpected::Unsigned(i), &self)),
                    }
                }
                fn visit_str<E: de::Error>(self, s: &str) -> Result<Tag, E> {
                    VARIANTS.iter().position(|v| *v == s).map(Tag).ok_or_else(|| E::unknown_variant(s, VARIANTS))
                }
                fn visit_bytes<E: de::Error>(self, b: &[u8]) -> Result<Tag, E> {
                    match std::str::from_utf8(b) {
                        Ok(s) => self.visit_str(s),
                        Err(_) => Err(E::invalid_value(de::Unexpected::Bytes(b), &self)),
                    }
                }
            }
            d.deserialize_identifier(V)
        }
    }

    /// A scalar inside `depth` arrays and objects.
    #[derive(Clone, Copy)]
    pub(super) struct ScalarSeed {
        pub depth: usize,
    }

    impl<'de> DeserializeSeed<'de> for ScalarSeed {
        type Value = Scalar;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Scalar, D::Error> {
            d.deserialize_enum("Scalar", VARIANTS, self)
        }
    }

    impl<'de> Visitor<'de> for ScalarSeed {
        type Value = Scalar;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a scalar")
        }
        fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Scalar, A::Error> {
            let (Tag(tag), v) = data.variant::<Tag>()?;
            if (tag == 6 || tag == 7) && self.depth >= MAX_VALUE_DEPTH {
                return Err(de::Error::custom(format!("value nested deeper than {MAX_VALUE_DEPTH}")));
            }
            let inner = ScalarSeed { depth: self.depth + 1 };
            Ok(match tag {
                0 => {
                    v.unit_variant()?;
                    Scalar::Null
                }
                1 => Scalar::Bool(v.newtype_variant()?),
                2 => Scalar::Int(v.newtype_variant()?),
                3 => Scalar::Float(v.newtype_variant()?),
                4 => Scalar::Str(v.newtype_variant()?),
                5 => Scalar::Bytes(v.newtype_variant()?),
                6 => Scalar::List(v.newtype_variant_seed(ListSeed(inner))?),
                7 => Scalar::Object(v.newtype_variant_seed(ObjectSeed(inner))?),
                _ => Scalar::Attachment(v.newtype_variant::<Box<AttachmentToken>>()?),
            })
        }
    }

    struct ListSeed(ScalarSeed);

    impl<'de> DeserializeSeed<'de> for ListSeed {
        type Value = Vec<Scalar>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<Scalar>, D::Error> {
            d.deserialize_seq(self)
        }
    }

    impl<'de> Visitor<'de> for ListSeed {
        type Value = Vec<Scalar>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of scalars")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Scalar>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_PREALLOC));
            while let Some(x) = seq.next_element_seed(self.0)? {
                out.push(x);
            }
            Ok(out)
        }
    }

    struct ObjectSeed(ScalarSeed);

    impl<'de> DeserializeSeed<'de> for ObjectSeed {
        type Value = BTreeMap<String, Scalar>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for ObjectSeed {
        type Value = BTreeMap<String, Scalar>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object of scalars")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(k) = map.next_key::<String>()? {
                let v = map.next_value_seed(self.0)?;
                out.insert(k, v);
            }
            Ok(out)
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Scalar, D::Error> {
        serde::de::DeserializeSeed::deserialize(decode::ScalarSeed { depth: 0 }, d)
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

    /// Like [`Value::from_json`], refusing values nested deeper than a document can hold: maps of fields deeper
    /// than [`MAX_PATH_DEPTH`], or deeper than [`MAX_VALUE_DEPTH`] inside a register. (A document's view is parsed
    /// again on every read: see [`MAX_VALUE_DEPTH`].)
    pub fn try_from_json(v: &serde_json::Value) -> Result<Value, ValueError> {
        Value::try_from_json_owned(v.clone())
    }

    /// Like [`Value::try_from_json`], taking the JSON value (its strings are moved, not copied).
    pub fn try_from_json_owned(v: serde_json::Value) -> Result<Value, ValueError> {
        if json_deeper_than(&v, MAX_PATH_DEPTH + MAX_VALUE_DEPTH) {
            return Err(ValueError::TooDeep(MAX_PATH_DEPTH + MAX_VALUE_DEPTH));
        }
        let value = Value::from_json_owned(v);
        match value.depth_exceeds(MAX_PATH_DEPTH) {
            Some(limit) => Err(ValueError::TooDeep(limit)),
            None => Ok(value),
        }
    }

    /// Whether the value nests maps and arrays of fields deeper than `max` (the limit exceeded is returned), or
    /// a register value deeper than [`MAX_VALUE_DEPTH`]. Recurses at most `max + 1` levels.
    pub(crate) fn depth_exceeds(&self, max: usize) -> Option<usize> {
        let children: Box<dyn Iterator<Item = &Value>> = match self {
            Value::Register(s) => return s.depth_exceeds(MAX_VALUE_DEPTH).then_some(MAX_VALUE_DEPTH),
            Value::Map(m) => Box::new(m.values()),
            Value::Array(a) => Box::new(a.iter()),
            Value::Text(_) | Value::Counter(_) => return None,
        };
        let mut children = children.into_iter();
        if max == 0 {
            return children.next().map(|_| MAX_PATH_DEPTH);
        }
        children.find_map(|c| c.depth_exceeds(max - 1))
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
    fn decoding_reads_what_the_derived_encoding_writes_and_bounds_depth() {
        let t = AttachmentToken { hash: [7; 32], len: 3, meta: [("a".to_string(), "b".to_string())].into() };
        let mut deep = Scalar::Int(1);
        for _ in 0..MAX_VALUE_DEPTH {
            deep = Scalar::List(vec![deep]);
        }
        let all = vec![
            Scalar::Null,
            Scalar::Bool(true),
            Scalar::Int(-5),
            Scalar::Float(2.5),
            Scalar::Str("s".into()),
            Scalar::Bytes(vec![1, 2]),
            Scalar::Object([("k".to_string(), Scalar::List(vec![Scalar::Null]))].into()),
            Scalar::Attachment(Box::new(t)),
            deep.clone(),
        ];
        for v in &all {
            let bytes = postcard::to_stdvec(v).unwrap();
            assert_eq!(&postcard::from_bytes::<Scalar>(&bytes).unwrap(), v);
            let json = serde_json::to_string(v).unwrap();
            assert_eq!(&serde_json::from_str::<Scalar>(&json).unwrap(), v, "{json}");
        }
        assert!(!deep.depth_exceeds(MAX_VALUE_DEPTH) && deep.depth_exceeds(MAX_VALUE_DEPTH - 1));
        let deeper = Scalar::Object([("x".to_string(), deep)].into());
        assert!(deeper.depth_exceeds(MAX_VALUE_DEPTH));
        assert!(postcard::from_bytes::<Scalar>(&postcard::to_stdvec(&deeper).unwrap()).is_err());
        assert!(postcard::from_bytes::<Scalar>(&[9]).is_err(), "no variant 9");
        assert_eq!(Scalar::Null.memory_cost(), 32);
        assert_eq!(Scalar::List(vec![Scalar::Str("abc".into())]).memory_cost(), 32 + 32 + 3);
    }

    #[test]
    fn value_from_json_maps_objects_to_maps() {
        let v = Value::from_json(&serde_json::json!({"a": {"b": [1]}, "c": 2}));
        let Value::Map(m) = v else { panic!("expected a map") };
        assert!(matches!(m["a"], Value::Map(_)));
        assert_eq!(m["c"], Value::Register(Scalar::Int(2)));
    }
}
