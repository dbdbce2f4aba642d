//! The Shoal query language: filters, field paths and sort order over JSON
//! documents.
//!
//! A [`Filter`] is a boolean expression evaluated against one document, given
//! as a [`serde_json::Value`] (normally an object whose `_id` field is a
//! string). A [`Query`] bundles an optional filter with sort keys, a limit and
//! the values of the filter's `$parameters`.
//!
//! ```
//! use shoaldb::query::{Filter, Params, Query, SortOrder};
//! use serde_json::json;
//!
//! let f = Filter::parse(r#"type == "todo" && !done && priority >= $min"#).unwrap();
//! let mut params = Params::new();
//! params.insert("min".into(), json!(2));
//! let doc = json!({"_id": "t1", "type": "todo", "done": false, "priority": 3});
//! assert!(f.matches(&doc, &params).unwrap());
//!
//! let q = Query::filter("tags contains 'home'").unwrap()
//!     .sort_by("priority", SortOrder::Descending).unwrap()
//!     .limit(10);
//! assert!(q.matches(&json!({"tags": ["home", "garden"]})).unwrap());
//! ```
//!
//! # Filter syntax
//!
//! Whitespace (any Unicode whitespace) may appear between tokens but not
//! inside paths, numbers or operators. Keywords are **case-sensitive** and
//! lowercase: `true`, `false`, `null`, `and`, `or`, `not`, `contains`, `in`,
//! `exists`. (`TRUE` is therefore a field name, not a boolean.)
//!
//! ## Field paths
//!
//! | Example | Meaning |
//! |---|---|
//! | `name` | top-level key `name` |
//! | `_id` | the document id |
//! | `a.b.c` | nested object keys |
//! | `tags[0]`, `a.b[2].c`, `m[1][0]` | array elements (0-based) |
//! | `` a.`key with spaces` ``, `` `first-name` ``, `` stats.`2024` `` | keys that are not plain identifiers, in backticks |
//!
//! A plain key starts with a letter or `_` and continues with letters, digits
//! or `_` (Unicode letters are fine). Everything else, and a first key that is
//! a keyword (`` `in` ``, `` `true` ``), goes in backticks, where `` \` `` and
//! `\\` escape a backtick and a backslash. No whitespace is allowed inside a
//! path. Paths here are exactly the paths of [`Path::parse`], which the rest
//! of the database uses to address fields; see [`Path`] for the strict rules.
//!
//! ## Literals
//!
//! | Kind | Examples |
//! |---|---|
//! | integer | `0`, `42`, `-7`, `18446744073709551615` |
//! | float | `1.5`, `-0.25`, `6.02e23`, `1E-9` |
//! | string | `"hi"`, `'hi'`, `"say \"hi\""`, `'it\'s'`, `"tab\there"`, `"\u00e9"`, `"\u{1F600}"` |
//! | boolean, null | `true`, `false`, `null` |
//! | array | `[]`, `[1, "a", true, null]`, `[[1, 2], $x]` |
//!
//! Numbers follow JSON's grammar (no leading zeros, no `.5` or `5.`, no `+`);
//! a `-` directly before the digits makes a negative literal. Integers are
//! kept exact; non-integers and integers beyond 64 bits become `f64`, which
//! must be finite (`1e999` is an error). Strings accept the escapes `\n`,
//! `\r`, `\t`, `\b`, `\f`, `\0`, `\\`, `\/`, `\"`, `\'`, `` \` ``, `\uXXXX`
//! (UTF-16; surrogate pairs such as `\uD83D\uDE00` are combined, lone
//! surrogates rejected) and `\u{X}` to `\u{XXXXXX}` (any Unicode scalar value).
//! Array literal elements are literals, parameters or nested arrays, not
//! field paths.
//!
//! ## Parameters
//!
//! `$name` (a letter or `_`, then letters, digits, `_`) stands for a value
//! supplied when the filter is evaluated, in a [`Params`] map (keys without
//! the `$`). [`Filter::parameters`] lists the names a filter uses. If any of
//! them has no value, [`Filter::matches`] returns
//! [`QueryError::UnknownParameter`] — for **every** document, before looking
//! at the document, even if evaluation would never reach the parameter — so
//! a missing binding is never a silent "no match". [`Filter::check_params`]
//! and [`Query::validate`] run that check once up front. Parameters are plain
//! values and are never parsed as query text, so they are the safe way to put
//! user input into a filter.
//!
//! ## Operators
//!
//! From the tightest binding to the loosest:
//!
//! 1. `!expr` (also `not expr`): true when `expr` is not JSON `true`.
//! 2. `==`, `!=`, `<`, `<=`, `>`, `>=`, `contains`, `in`. These do not chain:
//!    `a == b == c` is a syntax error; write `(a == b) == c`.
//! 3. `&&` (also `and`).
//! 4. `||` (also `or`).
//!
//! Parentheses group as usual. Because `!` binds tighter than comparisons,
//! `!a == b` means `(!a) == b`; write `!(a == b)` or `a != b` to negate a
//! comparison. The same holds for `not`: use `not (a == b)`.
//!
//! `exists(path)` is true when the path resolves to a value, even `null`.
//!
//! ## Semantics
//!
//! * **Truth.** A filter matches a document when it evaluates to JSON `true`.
//!   A bare path, parameter or literal used as a condition (`done`, `!done`,
//!   `done && x`) counts as true only when it is the JSON value `true`; `1`,
//!   `"yes"` and missing fields are not true. `&&` and `||` evaluate left to
//!   right and stop early.
//! * **Missing fields.** A path that does not resolve (absent key, index out
//!   of range, stepping into a non-object/non-array) is *missing*. For `==`,
//!   `!=`, `in` and an array's `contains` it behaves like `null`: `x == null`
//!   and `x != 1` match documents without `x`, `x != null` does not. Ordering
//!   comparisons with a missing side are false.
//! * **Equality** (`==`, `!=`, and the element tests of `in`/`contains`) is
//!   JSON equality: same type and value, with numbers compared by numeric
//!   value (`1 == 1.0`, `-0.0 == 0`, large integers compared exactly), arrays
//!   element by element, objects by key set and values. Values of different
//!   types are never equal (`1 != "1"`, `0 != false`, `null != false`).
//! * **Ordering** (`<`, `<=`, `>`, `>=`) is defined only between two numbers
//!   (numerically) or two strings (by Unicode code point, which is also UTF-8
//!   byte order; no locale collation, case-sensitive). Any other pairing —
//!   including missing fields, `null`, booleans, arrays — is false, so
//!   `!(a < b)` is not the same as `a >= b`.
//! * **`a contains b`**: if `a` is a string and `b` a string, substring test
//!   (`"abc" contains ""` is true); if `a` is an array, true when some element
//!   equals `b`; false otherwise.
//! * **`a in b`**: `b` is an array (literal, parameter or field); true when
//!   some element equals `a`. False when `b` is not an array or is missing.
//!
//! ```
//! use shoaldb::query::{Filter, Params};
//! use serde_json::json;
//!
//! let doc = json!({"_id": "u1", "name": "Ada", "age": 36, "tags": ["x", "y"],
//!                  "addr": {"city": "London", "zip code": "N1"}, "nick": null});
//! let p = Params::new();
//! let yes = |src: &str| Filter::parse(src).unwrap().matches(&doc, &p).unwrap();
//! assert!(yes("age == 36.0 && name < 'B'"));
//! assert!(yes("addr.`zip code` == 'N1' and tags[1] == 'y'"));
//! assert!(yes("missing == null && missing != 1 && !(missing < 1)"));
//! assert!(yes("exists(nick) && !exists(missing) && nick == null"));
//! assert!(yes("'x' in tags && tags contains 'y' && age in [35, 36]"));
//! assert!(yes("name contains 'd' || false"));
//! assert!(!yes("age")); // only JSON `true` is true
//! ```
//!
//! # Sorting
//!
//! [`compare_values`] is a total order over JSON values (with `None` for a
//! missing field):
//!
//! missing < `null` < `false` < `true` < numbers < strings < arrays < objects
//!
//! Numbers compare numerically (`1` and `1.0` are equal), strings by code
//! point, arrays element by element (the first difference decides; a proper
//! prefix comes first), objects as their lists of `(key, value)` pairs sorted
//! by key, compared pair by pair (key first, then value; fewer pairs first).
//! Two values compare equal exactly when they are equal under `==`.
//!
//! [`Query::compare`] sorts by each [`SortKey`] in turn (a
//! [`SortOrder::Descending`] key reverses that key's order entirely, so
//! missing fields come last) and breaks remaining ties by document id
//! ascending, whatever the sort orders. [`Query::order_and_limit`] sorts and
//! truncates to the limit.
//!
//! # Limits
//!
//! Filters may come from untrusted sources (apps, other devices), so parsing
//! is bounded:
//!
//! * text longer than [`MAX_QUERY_LEN`] bytes: [`QueryError::TooLong`];
//! * more than [`MAX_DEPTH`] nested parentheses, `!`/`not` or array literals:
//!   [`QueryError::TooDeep`] (checked while parsing, so `((((…` or `!!!!…`
//!   cannot overflow the stack);
//! * more than [`MAX_ARRAY_LITERAL_LEN`] elements in one array literal:
//!   [`QueryError::TooManyElements`];
//! * paths: see [`MAX_PATH_LEN`], [`MAX_PATH_SEGMENTS`], [`MAX_PATH_INDEX`].
//!
//! Errors carry a 0-based byte offset into the text ([`QueryError::position`]).
//! Neither parsing nor evaluation panics on any input.

mod error;
mod eval;
mod lexer;
mod parser;
pub(crate) mod sql;

#[cfg(test)]
mod sql_tests;
#[cfg(test)]
mod tests;

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::crdt::path::{Path, PathSegment, MAX_PATH_INDEX, MAX_PATH_LEN, MAX_PATH_SEGMENTS};
pub use error::QueryError;
pub use eval::compare_values;

/// Maximum length of filter text, in bytes (64 KiB).
pub const MAX_QUERY_LEN: usize = 64 * 1024;

/// Maximum nesting depth of parentheses, `!`/`not` and array literals in a filter.
pub const MAX_DEPTH: usize = 64;

/// Maximum number of elements in one array literal.
pub const MAX_ARRAY_LITERAL_LEN: usize = 4096;

/// Values for a filter's `$parameters`, keyed by name without the `$`.
pub type Params = serde_json::Map<String, Value>;

/// A parsed, immutable filter expression.
///
/// Created with [`Filter::parse`]; evaluated with [`Filter::matches`]. Two
/// filters are equal when they were parsed from the same text. Serializes as
/// its source text and is re-parsed (and so re-validated) when deserialized.
#[derive(Clone, Debug, PartialEq)]
pub struct Filter {
    source: String,
    expr: parser::Expr,
    params: Vec<String>,
}

impl Filter {
    /// Parses filter text. See the [module documentation](self) for the syntax.
    ///
    /// Fails with [`QueryError::Syntax`], [`QueryError::InvalidPath`],
    /// [`QueryError::TooLong`], [`QueryError::TooDeep`] or
    /// [`QueryError::TooManyElements`].
    pub fn parse(src: &str) -> Result<Filter, QueryError> {
        if src.len() > MAX_QUERY_LEN {
            return Err(QueryError::TooLong { length: src.len(), limit: MAX_QUERY_LEN });
        }
        let tokens = lexer::tokenize(src)?;
        let expr = parser::parse(&tokens)?;
        let mut params: Vec<String> = tokens
            .into_iter()
            .filter_map(|t| match t.tok {
                lexer::Tok::Param(name) => Some(name),
                _ => None,
            })
            .collect();
        params.sort_unstable();
        params.dedup();
        Ok(Filter { source: src.to_string(), expr, params })
    }

    /// Evaluates the filter against `doc`, with `params` supplying the values
    /// of `$parameters`.
    ///
    /// Returns [`QueryError::UnknownParameter`] (naming the first missing
    /// parameter in sorted order) if any parameter used by the filter has no
    /// value, regardless of the document. Otherwise returns whether the
    /// filter evaluates to JSON `true`. Never panics; `doc` need not be an
    /// object.
    pub fn matches(&self, doc: &Value, params: &Params) -> Result<bool, QueryError> {
        self.check_params(params)?;
        eval::matches(&self.expr, doc, params)
    }

    /// Checks that `params` has a value for every parameter the filter uses.
    pub fn check_params(&self, params: &Params) -> Result<(), QueryError> {
        match self.params.iter().find(|name| !params.contains_key(name.as_str())) {
            Some(name) => Err(QueryError::UnknownParameter(name.clone())),
            None => Ok(()),
        }
    }

    /// The names of the parameters used by the filter, without `$`, sorted
    /// and without duplicates.
    pub fn parameters(&self) -> Vec<String> {
        self.params.clone()
    }

    /// The text the filter was parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Field equalities that every document the filter matches satisfies: the `path == value` terms (and bare
    /// `path` conditions, which hold only for `true`) joined by `&&` at the top of the filter, where the path is
    /// made of object keys only and the value — a literal, or a parameter that has a value in `params` — is not
    /// `null` (a missing field equals `null`). A database may narrow its candidates with an index on them (JSONB
    /// containment, an index on a field) before [`Filter::matches`] decides: they are necessary, not sufficient.
    pub fn required_equalities(&self, params: &Params) -> Vec<(Vec<String>, Value)> {
        use parser::{CmpOp, Expr};
        let keys = |path: &Path| -> Option<Vec<String>> {
            path.segments()
                .iter()
                .map(|s| match s {
                    PathSegment::Key(k) => Some(k.clone()),
                    PathSegment::Index(_) => None,
                })
                .collect()
        };
        let value = |e: &Expr| -> Option<Value> {
            match e {
                Expr::Literal(v) => Some(v.clone()),
                Expr::Param(name) => params.get(name).cloned(),
                _ => None,
            }
        };
        let terms = match &self.expr {
            Expr::And(terms) => terms.as_slice(),
            one => std::slice::from_ref(one),
        };
        terms
            .iter()
            .filter_map(|t| {
                let (path, v) = match t {
                    Expr::Path(p) => (p, Value::Bool(true)),
                    Expr::Cmp(CmpOp::Eq, a, b) => match (a.as_ref(), b.as_ref()) {
                        (Expr::Path(p), other) | (other, Expr::Path(p)) => (p, value(other)?),
                        _ => return None,
                    },
                    _ => return None,
                };
                (!v.is_null()).then_some(())?;
                Some((keys(path)?, v))
            })
            .collect()
    }
}

impl fmt::Display for Filter {
    /// Writes the source text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl std::str::FromStr for Filter {
    type Err = QueryError;
    /// Same as [`Filter::parse`].
    fn from_str(s: &str) -> Result<Filter, QueryError> {
        Filter::parse(s)
    }
}

impl Serialize for Filter {
    /// Serializes as the source text.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Filter {
    /// Deserializes from filter text, parsing and validating it.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Filter, D::Error> {
        let s = String::deserialize(deserializer)?;
        Filter::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Direction of a [`SortKey`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum SortOrder {
    /// Smallest first, in the order of [`compare_values`].
    #[default]
    Ascending,
    /// Largest first: the exact reverse of [`SortOrder::Ascending`] for this key.
    Descending,
}

/// One sort criterion: a field path and a direction.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SortKey {
    /// The field to sort by.
    pub path: Path,
    /// The direction.
    pub order: SortOrder,
}

/// A complete query: optional filter, sort keys, limit, parameters.
///
/// Built with [`Query::all`] or [`Query::filter`] and the builder methods
/// [`Query::sort_by`], [`Query::limit`] and [`Query::param`]. Serializable,
/// so it can be sent to other devices; the filter is re-validated when
/// deserialized.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct Query {
    /// The filter; `None` matches every document.
    pub filter: Option<Filter>,
    /// Sort keys, most significant first. Ties are broken by document id.
    pub sort: Vec<SortKey>,
    /// Maximum number of results, if any.
    pub limit: Option<usize>,
    /// Values of the filter's `$parameters`.
    pub params: Params,
}

impl Query {
    /// A query matching every document, unsorted (i.e. by id) and unlimited.
    pub fn all() -> Query {
        Query::default()
    }

    /// A query with the given filter text.
    pub fn filter(src: &str) -> Result<Query, QueryError> {
        Ok(Query { filter: Some(Filter::parse(src)?), ..Query::default() })
    }

    /// Adds a sort key (after any existing ones). Fails if `path` is not a
    /// valid [`Path`].
    pub fn sort_by(mut self, path: &str, order: SortOrder) -> Result<Query, QueryError> {
        self.sort.push(SortKey { path: Path::parse(path)?, order });
        Ok(self)
    }

    /// Limits the number of results to `n`.
    pub fn limit(mut self, n: usize) -> Query {
        self.limit = Some(n);
        self
    }

    /// Sets the value of parameter `$name` (give `name` without the `$`).
    pub fn param(mut self, name: &str, value: Value) -> Query {
        self.params.insert(name.to_string(), value);
        self
    }

    /// Checks that every parameter used by the filter has a value.
    pub fn validate(&self) -> Result<(), QueryError> {
        match &self.filter {
            Some(f) => f.check_params(&self.params),
            None => Ok(()),
        }
    }

    /// Whether `doc` passes the filter (always true without a filter).
    /// Errors as [`Filter::matches`].
    pub fn matches(&self, doc: &Value) -> Result<bool, QueryError> {
        match &self.filter {
            Some(f) => f.matches(doc, &self.params),
            None => Ok(true),
        }
    }

    /// Sorts `docs` (pairs of document id and document) by [`Query::compare`]
    /// and truncates them to the limit, in place. Does not filter.
    pub fn order_and_limit(&self, docs: &mut Vec<(String, Value)>) {
        let cmp = |a: &(String, Value), b: &(String, Value)| self.compare(a, b);
        if let Some(n) = self.limit {
            if n == 0 {
                docs.clear();
                return;
            }
            if n < docs.len() {
                docs.select_nth_unstable_by(n - 1, cmp);
                docs.truncate(n);
            }
        }
        docs.sort_by(cmp);
    }

    /// Compares two `(id, document)` pairs: by each sort key in turn (values
    /// compared with [`compare_values`], reversed for descending keys), then
    /// by id ascending.
    pub fn compare(&self, a: &(String, Value), b: &(String, Value)) -> Ordering {
        for key in &self.sort {
            let ord = compare_values(key.path.resolve(&a.1), key.path.resolve(&b.1));
            let ord = match key.order {
                SortOrder::Ascending => ord,
                SortOrder::Descending => ord.reverse(),
            };
            if ord.is_ne() {
                return ord;
            }
        }
        a.0.cmp(&b.0)
    }
}
