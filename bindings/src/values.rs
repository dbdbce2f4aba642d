//! Records and enums that cross the FFI, and their conversion to the core's types.

use crate::error::ShoalError;
use shoaldb::{Scalar, SortOrder, Value};
use std::collections::{BTreeMap, HashMap};

/// The value of a field, with its CRDT type chosen by the variant.
///
/// Scalars (`Null` … `Attachment`, and `Json`) are last-writer-wins registers: concurrent writes keep one winner
/// (the others stay visible as conflicts). `Counter`, `Text`, `Map` and `Array` create a field of that type, which
/// then merges concurrent edits instead of picking a winner.
#[derive(Clone, Debug, PartialEq, uniffi::Enum)]
pub enum FieldValue {
    /// JSON `null`.
    Null,
    /// A boolean.
    Bool { value: bool },
    /// A 64-bit integer.
    Int { value: i64 },
    /// A double (NaN and infinities are refused).
    Double { value: f64 },
    /// A string, replaced as a whole by a write (use `Text` for collaborative editing).
    String { value: String },
    /// Raw bytes, stored inline with the document (use an attachment for anything large).
    Bytes { value: Vec<u8> },
    /// Any JSON value held as one atomic register: a JSON object or array here is replaced as a whole.
    Json { json: String },
    /// A reference to an attachment stored with `Store.putAttachment`.
    Attachment { token: AttachmentToken },
    /// A counter: the sum of every device's increments, starting with this one.
    Counter { initial: i64 },
    /// Collaborative text with this initial content (edit it with the `Text*` edits).
    Text { initial: String },
    /// An add-wins map built from a JSON object: nested objects become nested maps, other values registers.
    Map { json: String },
    /// A replicated array built from a JSON array: object elements become maps, other elements registers.
    Array { json: String },
}

/// One edit to a document. Paths name fields with dots and array positions with brackets: `address.city`,
/// `items[2].done`.
#[derive(Clone, Debug, PartialEq, uniffi::Enum)]
pub enum Edit {
    /// Set the field at `path` (creating the maps on the way).
    Set { path: String, value: FieldValue },
    /// Merge a `Map` value into the map at `path` field by field (other fields are kept); any other value is set.
    Merge { path: String, value: FieldValue },
    /// Remove the field (or array element) at `path`.
    Remove { path: String },
    /// Add `by` (may be negative) to the counter at `path`, creating it if absent.
    Increment { path: String, by: i64 },
    /// Insert `text` into the text at `path` before character `index` (Unicode scalar values).
    TextInsert { path: String, index: u64, text: String },
    /// Delete `length` characters of the text at `path` from `index`.
    TextDelete { path: String, index: u64, length: u64 },
    /// Replace `length` characters at `index` with `text`.
    TextSplice { path: String, index: u64, length: u64, text: String },
    /// Insert `items` into the array at `path` before position `index`.
    ArrayInsert { path: String, index: u64, items: Vec<FieldValue> },
    /// Append `items` to the array at `path`.
    ArrayPush { path: String, items: Vec<FieldValue> },
    /// Delete `length` elements of the array at `path` from `index`.
    ArrayDelete { path: String, index: u64, length: u64 },
}

/// One operation of an atomic write (`Store.write`): all of them commit together, or none does.
#[derive(Clone, Debug, PartialEq, uniffi::Enum)]
pub enum WriteOp {
    /// Insert or merge a JSON object (its `_id` names the document; without one an id is generated).
    Upsert { collection: String, json: String },
    /// Write a JSON object back, only what differs from the stored document (see `Collection.upsertChanged`).
    UpsertChanged { collection: String, json: String },
    /// Insert or merge typed fields into document `id` (generated when `None`).
    Put { collection: String, id: Option<String>, fields: HashMap<String, FieldValue> },
    /// Apply edits to an existing document.
    Update { collection: String, id: String, edits: Vec<Edit> },
    /// Remove a document.
    Remove { collection: String, id: String },
}

/// The token of a binary attachment: its content hash, length and app metadata. Put it in a field with
/// `FieldValue.Attachment`; the bytes travel separately, only when a device asks for them.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct AttachmentToken {
    /// BLAKE3 hash of the content, 64 hex digits.
    pub hash: String,
    /// Length in bytes.
    pub length: u64,
    /// App metadata, e.g. `name`, `mime`.
    pub meta: HashMap<String, String>,
}

/// A query on one collection: a filter, sort keys and a limit (all optional).
#[derive(Clone, Debug, Default, PartialEq, uniffi::Record)]
pub struct Query {
    /// The filter, e.g. `done == false && priority > $min` (`None`: every document).
    #[uniffi(default)]
    pub filter: Option<String>,
    /// Values of the filter's `$parameters` (without the `$`), e.g. `{"min": QueryValue.Int(3)}`.
    #[uniffi(default)]
    pub params: HashMap<String, QueryValue>,
    /// Sort keys, most significant first; ties are broken by document id.
    #[uniffi(default)]
    pub sort: Vec<SortKey>,
    /// At most this many documents.
    #[uniffi(default)]
    pub limit: Option<u64>,
}

/// The value of a query parameter: what a filter's `$name` stands for.
#[derive(Clone, Debug, PartialEq, uniffi::Enum)]
pub enum QueryValue {
    /// JSON `null` (matches a missing field too).
    Null,
    /// A boolean.
    Bool { value: bool },
    /// A 64-bit integer (equal to a stored double of the same value).
    Int { value: i64 },
    /// A double (NaN and infinities are refused).
    Double { value: f64 },
    /// A string.
    String { value: String },
    /// A list, for `in $names` or equality with an array field.
    Array { items: Vec<QueryValue> },
}

impl QueryValue {
    fn into_json(self, name: &str) -> Result<serde_json::Value, ShoalError> {
        use serde_json::Value as J;
        Ok(match self {
            QueryValue::Null => J::Null,
            QueryValue::Bool { value } => J::Bool(value),
            QueryValue::Int { value } => J::from(value),
            QueryValue::Double { value } => J::Number(
                serde_json::Number::from_f64(value)
                    .ok_or_else(|| invalid(format!("parameter ${name}: {value} is not a finite number")))?,
            ),
            QueryValue::String { value } => J::String(value),
            QueryValue::Array { items } => {
                J::Array(items.into_iter().map(|v| v.into_json(name)).collect::<Result<_, _>>()?)
            }
        })
    }
}

/// How a query runs (`Collection.explain`).
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct QueryPlan {
    /// The names of the declared indexes it uses (see [`CollectionIndex::name`]); empty for a scan of the collection.
    pub indexes: Vec<String>,
    /// Whether SQL evaluates the filter exactly (otherwise it selects a superset, checked again in Rust).
    pub exact_filter: bool,
    /// Whether SQL sorts, so that reading stops at the limit.
    pub sorted_in_sql: bool,
    /// SQLite's plan (`EXPLAIN QUERY PLAN`), one step per line.
    pub steps: Vec<String>,
}

impl QueryPlan {
    pub(crate) fn from_core(p: shoaldb::store::QueryPlan) -> QueryPlan {
        QueryPlan { indexes: p.indexes, exact_filter: p.exact_filter, sorted_in_sql: p.sorted_in_sql, steps: p.steps }
    }
}

/// An index declared on a collection (`Collection.createIndex`).
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct CollectionIndex {
    /// The indexed fields, most significant first.
    pub paths: Vec<String>,
    /// Its name, as `QueryPlan.indexes` shows it.
    pub name: String,
}

/// A sort key of a [`Query`].
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct SortKey {
    /// The field to sort by.
    pub path: String,
    /// Largest first.
    #[uniffi(default)]
    pub descending: bool,
}

/// One change to an observed query's result. Documents are JSON objects with their `_id`.
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct ChangeEvent {
    /// The observed collection.
    pub collection: String,
    /// Documents that entered the result.
    pub inserted: Vec<String>,
    /// Documents still in the result whose content changed.
    pub updated: Vec<String>,
    /// Ids of documents that left the result.
    pub removed: Vec<String>,
    /// The whole result now, in query order.
    pub results: Vec<String>,
}

pub(crate) fn invalid(msg: impl Into<String>) -> ShoalError {
    ShoalError::InvalidArgument(msg.into())
}

pub(crate) fn parse_json(json: &str) -> Result<serde_json::Value, ShoalError> {
    serde_json::from_str(json).map_err(|e| invalid(format!("invalid JSON: {e}")))
}

pub(crate) fn to_text(json: &serde_json::Value) -> String {
    json.to_string()
}

pub(crate) fn usize_of(n: u64, what: &str) -> Result<usize, ShoalError> {
    usize::try_from(n).map_err(|_| invalid(format!("{what} {n} is too large")))
}

impl FieldValue {
    /// The core's value for this field value.
    pub(crate) fn into_value(self) -> Result<Value, ShoalError> {
        Ok(match self {
            FieldValue::Null => Value::Register(Scalar::Null),
            FieldValue::Bool { value } => Value::Register(Scalar::Bool(value)),
            FieldValue::Int { value } => Value::Register(Scalar::Int(value)),
            FieldValue::Double { value } if value.is_finite() => Value::Register(Scalar::Float(value)),
            FieldValue::Double { value } => return Err(invalid(format!("{value} is not a finite number"))),
            FieldValue::String { value } => Value::Register(Scalar::Str(value)),
            FieldValue::Bytes { value } => Value::Register(Scalar::Bytes(value)),
            FieldValue::Json { json } => Value::Register(Scalar::from_json_owned(parse_json(&json)?)),
            FieldValue::Attachment { token } => Value::Register(Scalar::Attachment(Box::new(token.into_core()?))),
            FieldValue::Counter { initial } => Value::Counter(initial),
            FieldValue::Text { initial } => Value::Text(initial),
            FieldValue::Map { json } => match parse_json(&json)? {
                obj @ serde_json::Value::Object(_) => Value::from_json_owned(obj),
                _ => return Err(invalid("a Map value needs a JSON object")),
            },
            FieldValue::Array { json } => match parse_json(&json)? {
                serde_json::Value::Array(items) => {
                    Value::Array(items.into_iter().map(Value::from_json_owned).collect())
                }
                _ => return Err(invalid("an Array value needs a JSON array")),
            },
        })
    }
}

pub(crate) fn fields_value(fields: HashMap<String, FieldValue>) -> Result<Value, ShoalError> {
    let mut map = BTreeMap::new();
    for (k, v) in fields {
        map.insert(k, v.into_value()?);
    }
    Ok(Value::Map(map))
}

fn values(items: Vec<FieldValue>) -> Result<Vec<Value>, ShoalError> {
    items.into_iter().map(FieldValue::into_value).collect()
}

/// An [`Edit`] with its values converted: applying it can only fail with the core's own errors.
pub(crate) enum Prepared {
    Set(String, Value),
    Merge(String, Value),
    Remove(String),
    Increment(String, i64),
    TextSplice(String, usize, usize, String),
    ArrayInsert(String, usize, Vec<Value>),
    ArrayPush(String, Vec<Value>),
    ArrayDelete(String, usize, usize),
}

impl Prepared {
    pub(crate) fn new(edit: Edit) -> Result<Prepared, ShoalError> {
        Ok(match edit {
            Edit::Set { path, value } => Prepared::Set(path, value.into_value()?),
            Edit::Merge { path, value } => Prepared::Merge(path, value.into_value()?),
            Edit::Remove { path } => Prepared::Remove(path),
            Edit::Increment { path, by } => Prepared::Increment(path, by),
            Edit::TextInsert { path, index, text } => Prepared::TextSplice(path, usize_of(index, "index")?, 0, text),
            Edit::TextDelete { path, index, length } => {
                Prepared::TextSplice(path, usize_of(index, "index")?, usize_of(length, "length")?, String::new())
            }
            Edit::TextSplice { path, index, length, text } => {
                Prepared::TextSplice(path, usize_of(index, "index")?, usize_of(length, "length")?, text)
            }
            Edit::ArrayInsert { path, index, items } => {
                Prepared::ArrayInsert(path, usize_of(index, "index")?, values(items)?)
            }
            Edit::ArrayPush { path, items } => Prepared::ArrayPush(path, values(items)?),
            Edit::ArrayDelete { path, index, length } => {
                Prepared::ArrayDelete(path, usize_of(index, "index")?, usize_of(length, "length")?)
            }
        })
    }

    pub(crate) fn apply(self, doc: &mut shoaldb::DocEditor<'_>) -> Result<(), shoaldb::DocError> {
        match self {
            Prepared::Set(path, value) => doc.set(path.as_str(), value),
            Prepared::Merge(path, value) => doc.merge(path.as_str(), value),
            Prepared::Remove(path) => doc.remove(path.as_str()),
            Prepared::Increment(path, by) => doc.increment(path.as_str(), by),
            Prepared::TextSplice(path, index, length, text) => doc.text_splice(path.as_str(), index, length, &text),
            Prepared::ArrayInsert(path, index, items) => doc.array_insert(path.as_str(), index, &items),
            Prepared::ArrayPush(path, items) => doc.array_push(path.as_str(), &items),
            Prepared::ArrayDelete(path, index, length) => doc.array_delete(path.as_str(), index, length),
        }
    }

    /// Applies `edits` in order to one document.
    pub(crate) fn apply_all(edits: Vec<Prepared>, doc: &mut shoaldb::DocEditor<'_>) -> shoaldb::Result<()> {
        for edit in edits {
            edit.apply(doc)?;
        }
        Ok(())
    }
}

impl AttachmentToken {
    pub(crate) fn into_core(self) -> Result<shoaldb::AttachmentToken, ShoalError> {
        let json = serde_json::json!({ "_attachment": self.hash, "len": self.length, "meta": self.meta });
        shoaldb::AttachmentToken::from_json(&json)
            .ok_or_else(|| invalid(format!("attachment hash {:?} is not 64 hex digits", self.hash)))
    }

    pub(crate) fn from_core(t: &shoaldb::AttachmentToken) -> AttachmentToken {
        AttachmentToken {
            hash: t.hash_hex(),
            length: t.len,
            meta: t.meta.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }
}

impl Query {
    pub(crate) fn into_core(self) -> Result<shoaldb::Query, ShoalError> {
        let mut q = match &self.filter {
            Some(f) => shoaldb::Query::filter(f)?,
            None => shoaldb::Query::all(),
        };
        for key in &self.sort {
            let order = if key.descending { SortOrder::Descending } else { SortOrder::Ascending };
            q = q.sort_by(&key.path, order)?;
        }
        if let Some(n) = self.limit {
            q = q.limit(usize_of(n, "limit")?);
        }
        for (name, value) in self.params {
            let v = value.into_json(&name)?;
            q = q.param(name.trim_start_matches('$'), v);
        }
        q.validate()?;
        Ok(q)
    }
}

impl ChangeEvent {
    pub(crate) fn from_core(e: &shoaldb::ChangeEvent) -> ChangeEvent {
        ChangeEvent {
            collection: e.collection.clone(),
            inserted: e.inserted.iter().map(to_text).collect(),
            updated: e.updated.iter().map(to_text).collect(),
            removed: e.removed.clone(),
            results: e.results.iter().map(to_text).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_values_pick_the_crdt() {
        assert_eq!(FieldValue::Counter { initial: 3 }.into_value().ok(), Some(Value::Counter(3)));
        assert!(
            matches!(FieldValue::Map { json: r#"{"a":{"b":1}}"#.into() }.into_value(), Ok(Value::Map(m)) if matches!(m["a"], Value::Map(_)))
        );
        assert!(matches!(FieldValue::Array { json: "[1,2]".into() }.into_value(), Ok(Value::Array(v)) if v.len() == 2));
        assert!(matches!(FieldValue::Map { json: "[1]".into() }.into_value(), Err(ShoalError::InvalidArgument(_))));
        assert!(matches!(FieldValue::Double { value: f64::NAN }.into_value(), Err(ShoalError::InvalidArgument(_))));
        assert!(matches!(FieldValue::Json { json: "{".into() }.into_value(), Err(ShoalError::InvalidArgument(_))));
    }

    #[test]
    fn attachment_tokens_round_trip_and_bad_hashes_are_refused() {
        let t = AttachmentToken { hash: "ab".repeat(32), length: 5, meta: [("name".into(), "a.txt".into())].into() };
        let core = t.clone().into_core().expect("valid");
        assert_eq!(AttachmentToken::from_core(&core), t);
        let bad = AttachmentToken { hash: "xyz".into(), length: 5, meta: HashMap::new() };
        assert!(matches!(bad.into_core(), Err(ShoalError::InvalidArgument(_))));
    }

    #[test]
    fn queries_are_checked() {
        let q = Query { filter: Some("n > $min".into()), ..Query::default() };
        assert!(
            matches!(q.clone().into_core(), Err(ShoalError::InvalidArgument(_))),
            "a missing parameter is an error"
        );
        let q = Query { params: [("min".to_string(), QueryValue::Int { value: 2 })].into(), ..q };
        assert!(q.clone().into_core().is_ok());
        let nan = Query { params: [("min".to_string(), QueryValue::Double { value: f64::NAN })].into(), ..q };
        assert!(matches!(nan.into_core(), Err(ShoalError::InvalidArgument(m)) if m.contains("$min")));
        let list = QueryValue::Array {
            items: vec![QueryValue::String { value: "a".into() }, QueryValue::Null, QueryValue::Bool { value: true }],
        };
        assert_eq!(list.into_json("x").expect("list"), serde_json::json!(["a", null, true]));
        let bad = Query { filter: Some("n >".into()), ..Query::default() };
        assert!(matches!(bad.into_core(), Err(ShoalError::InvalidArgument(_))));
    }
}
