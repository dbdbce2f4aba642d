//! Filters and sort keys as SQLite SQL over a document's JSON view (a column named `view`), so that a store filters,
//! sorts and limits in the database and parses only the rows it returns. Pure text generation: the store runs it.
//!
//! # Exactness
//!
//! SQLite's JSON functions see a value's type and value a little differently from the filter language: booleans
//! come out of `json_extract` as the integers 0 and 1, a missing field and a JSON `null` are both SQL `NULL`,
//! arrays and objects are JSON text, and integers above `i64::MAX` become floats. So every value a path names is
//! read as two columns, both functions of the value alone:
//!
//! - its **rank**, the type's place in the sort order of [`compare_values`](super::compare_values): 0 missing,
//!   1 `null`, 2 `false`, 3 `true`, 4 number, 5 string, 6 array, 7 object ([`rank_sql`]);
//! - its **value**, `json_extract` ([`value_sql`]): exact for strings (compared byte-wise, which is code-point
//!   order), for integers within `i64` and for floats (SQLite compares integers and floats exactly, and reads the
//!   floats serde_json writes back to the same bits). Not meaningful for arrays and objects.
//!
//! A comparison with a constant becomes a condition on both (`x == "a"`: rank 5 and value `'a'`), which an index
//! on `(rank, value)` answers. What cannot be said exactly in SQL — equality with an array, a number beyond
//! `i64`, a comparison of two fields — becomes a weaker condition that holds for every document the filter matches
//! (a *superset*), and the filter is marked inexact. The store always evaluates the filter again on the rows SQL
//! returns, so an inexact condition costs speed, never correctness; a differential property test checks that the
//! conditions marked exact select exactly what the evaluator does.
//!
//! Every condition is built to be 0 or 1, never SQL `NULL`, so that `NOT` of an exact condition is exact.

use std::cmp::Ordering;

use rusqlite::types::Value as SqlValue;
use serde_json::Value;

use super::eval::compare_op;
use super::parser::{CmpOp, Expr};
use super::{Filter, Params, Path, PathSegment, SortKey, SortOrder};

/// Rank of a number in [`rank_sql`].
pub(crate) const RANK_NUMBER: i64 = 4;
/// Rank of a string in [`rank_sql`].
pub(crate) const RANK_STRING: i64 = 5;
/// Floats at or beyond ±2^63: where SQLite's view of integers above `i64::MAX` (as floats) is not exact.
const EXACT_FLOAT_LIMIT: f64 = 9_223_372_036_854_775_808.0;

/// The SQLite JSON path of `path` as an SQL string literal (`'$."a"[2]'`), or `None` for keys SQLite's paths
/// cannot name (holding `"` or `\`) and keys holding control characters (NUL would end the SQL text).
pub(crate) fn json_path(path: &Path) -> Option<String> {
    let mut out = String::from("$");
    for segment in path.segments() {
        match segment {
            PathSegment::Key(k) if k.contains(['"', '\\']) || k.contains(char::is_control) => return None,
            PathSegment::Key(k) => {
                out.push_str(".\"");
                out.push_str(k);
                out.push('"');
            }
            PathSegment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    Some(sql_string(&out))
}

/// `s` as an SQL string literal.
pub(crate) fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The rank of the value at the JSON path `path` (an SQL literal from [`json_path`]) of `view`.
pub(crate) fn rank_sql(path: &str) -> String {
    format!(
        "(CASE json_type(view, {path}) WHEN 'null' THEN 1 WHEN 'false' THEN 2 WHEN 'true' THEN 3 \
         WHEN 'integer' THEN 4 WHEN 'real' THEN 4 WHEN 'text' THEN 5 WHEN 'array' THEN 6 WHEN 'object' THEN 7 \
         ELSE 0 END)"
    )
}

/// The value at the JSON path `path` (an SQL literal from [`json_path`]) of `view`.
pub(crate) fn value_sql(path: &str) -> String {
    format!("json_extract(view, {path})")
}

/// A filter as an SQL condition on `view`, with its `?` arguments in order.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SqlFilter {
    /// The condition (0 or 1 for every row).
    pub sql: String,
    /// The values of its `?` placeholders, in order.
    pub args: Vec<SqlValue>,
    /// Whether it selects exactly the documents the filter matches; otherwise a superset of them.
    pub exact: bool,
}

/// A condition under construction.
struct Cond {
    sql: String,
    exact: bool,
}

impl Cond {
    fn exact(sql: impl Into<String>) -> Cond {
        Cond { sql: sql.into(), exact: true }
    }
    fn constant(b: bool) -> Cond {
        Cond::exact(if b { "1" } else { "0" })
    }
    /// Holds for every document: all that can be said.
    fn unknown() -> Cond {
        Cond { sql: "1".into(), exact: false }
    }
    /// Holds at least where the truth holds.
    fn superset(sql: impl Into<String>) -> Cond {
        Cond { sql: sql.into(), exact: false }
    }
}

/// Compiles `filter` with its parameters' values (every parameter must have one: [`Filter::check_params`]).
pub(crate) fn compile(filter: &Filter, params: &Params) -> SqlFilter {
    let mut args = Vec::new();
    let cond = Compiler { params, args: &mut args }.truth(&filter.expr);
    if args.len() > MAX_SQL_ARGS {
        return SqlFilter { sql: "1".into(), args: Vec::new(), exact: false };
    }
    SqlFilter { sql: cond.sql, args, exact: cond.exact }
}

/// `parts` joined by `joiner` as a balanced tree of parentheses: SQLite parses `a OR b OR c …` as a chain as deep as
/// it is long, and refuses expressions deeper than 1,000; a balanced tree of n terms is log2(n) deep.
fn balanced(mut parts: Vec<String>, joiner: &str) -> String {
    while parts.len() > 2 {
        let mut paired = Vec::with_capacity(parts.len().div_ceil(2));
        let mut rest = parts.into_iter();
        while let Some(a) = rest.next() {
            paired.push(match rest.next() {
                Some(b) => format!("({a}{joiner}{b})"),
                None => a,
            });
        }
        parts = paired;
    }
    format!("({})", parts.join(joiner))
}

/// The most `?` arguments one query's SQL may take (SQLite refuses more than 32,766): a filter needing more — a
/// parameter holding a long array — is evaluated in memory instead.
const MAX_SQL_ARGS: usize = 30_000;

/// One operand of a comparison.
enum Operand<'e> {
    /// Known without the document.
    Constant(Value),
    /// A field.
    Field(&'e Path),
    /// Anything else (a boolean computed from the document).
    Other,
}

struct Compiler<'a> {
    params: &'a Params,
    args: &'a mut Vec<SqlValue>,
}

impl Compiler<'_> {
    /// The value of `e` when it does not depend on the document.
    fn constant(&self, e: &Expr) -> Option<Value> {
        match e {
            Expr::Literal(v) => Some(v.clone()),
            Expr::Param(name) => self.params.get(name).cloned(),
            Expr::Array(items) => items.iter().map(|i| self.constant(i)).collect::<Option<Vec<_>>>().map(Value::Array),
            _ => None,
        }
    }

    fn operand<'e>(&self, e: &'e Expr) -> Operand<'e> {
        match e {
            Expr::Path(p) => Operand::Field(p),
            other => match self.constant(other) {
                Some(v) => Operand::Constant(v),
                None => Operand::Other,
            },
        }
    }

    /// "`e` evaluates to JSON `true`".
    fn truth(&mut self, e: &Expr) -> Cond {
        match e {
            Expr::Literal(_) | Expr::Param(_) | Expr::Array(_) => {
                Cond::constant(self.constant(e).is_some_and(|v| v == Value::Bool(true)))
            }
            Expr::Path(p) => match json_path(p) {
                Some(path) => Cond::exact(format!("({} = 3)", rank_sql(&path))),
                None => Cond::unknown(),
            },
            Expr::Exists(p) => match json_path(p) {
                Some(path) => Cond::exact(format!("(json_type(view, {path}) IS NOT NULL)")),
                None => Cond::unknown(),
            },
            Expr::Not(inner) => {
                let mark = self.args.len();
                let c = self.truth(inner);
                self.negation(c, mark)
            }
            Expr::And(items) => self.junction(items, " AND "),
            Expr::Or(items) => self.junction(items, " OR "),
            Expr::Cmp(op, l, r) => self.comparison(*op, l, r),
        }
    }

    /// "Not `c`", `c` having added the arguments from `mark` on.
    fn negation(&mut self, c: Cond, mark: usize) -> Cond {
        if c.exact {
            Cond::exact(format!("(NOT {})", c.sql))
        } else {
            // The negation of a superset says nothing (and its placeholders are gone).
            self.args.truncate(mark);
            Cond::unknown()
        }
    }

    fn junction(&mut self, items: &[Expr], joiner: &str) -> Cond {
        let parts: Vec<Cond> = items.iter().map(|i| self.truth(i)).collect();
        let exact = parts.iter().all(|p| p.exact);
        Cond { sql: balanced(parts.into_iter().map(|p| p.sql).collect(), joiner), exact }
    }

    fn comparison(&mut self, op: CmpOp, l: &Expr, r: &Expr) -> Cond {
        match (self.operand(l), self.operand(r)) {
            (Operand::Constant(a), Operand::Constant(b)) => Cond::constant(compare_op(op, Some(&a), Some(&b))),
            (Operand::Field(p), Operand::Constant(c)) => match json_path(p) {
                Some(path) => self.field_op_constant(op, &path, &c),
                None => Cond::unknown(),
            },
            (Operand::Constant(c), Operand::Field(p)) => match json_path(p) {
                Some(path) => self.constant_op_field(op, &c, &path),
                None => Cond::unknown(),
            },
            _ => Cond::unknown(),
        }
    }

    /// `field op c`.
    fn field_op_constant(&mut self, op: CmpOp, path: &str, c: &Value) -> Cond {
        let rank = rank_sql(path);
        match op {
            CmpOp::Eq => self.equals(&rank, &value_sql(path), c),
            CmpOp::Ne => {
                let mark = self.args.len();
                let eq = self.equals(&rank, &value_sql(path), c);
                self.negation(eq, mark)
            }
            CmpOp::Lt | CmpOp::Le | CmpOp::Gt | CmpOp::Ge => {
                let sql_op = match op {
                    CmpOp::Lt => "<",
                    CmpOp::Le => "<=",
                    CmpOp::Gt => ">",
                    _ => ">=",
                };
                match c {
                    Value::String(s) => {
                        self.args.push(SqlValue::Text(s.clone()));
                        Cond::exact(format!("({rank} = {RANK_STRING} AND {} {sql_op} ?)", value_sql(path)))
                    }
                    Value::Number(_) => match exact_number(c) {
                        Some(n) => {
                            self.args.push(n);
                            Cond::exact(format!("({rank} = {RANK_NUMBER} AND {} {sql_op} ?)", value_sql(path)))
                        }
                        None => Cond::superset(format!("({rank} = {RANK_NUMBER})")),
                    },
                    // Ordering is defined only between two numbers or two strings.
                    _ => Cond::constant(false),
                }
            }
            CmpOp::Contains => match c {
                Value::String(s) => {
                    self.args.push(SqlValue::Text(s.clone()));
                    let substring = format!("({rank} = {RANK_STRING} AND instr({}, ?) > 0)", value_sql(path));
                    let element = self.array_holds(path, c);
                    Cond { sql: format!("({substring} OR {})", element.sql), exact: element.exact }
                }
                _ => self.array_holds(path, c),
            },
            CmpOp::In => match c {
                Value::Array(items) => self.one_of(&rank, &value_sql(path), items),
                _ => Cond::constant(false),
            },
        }
    }

    /// `c op field`.
    fn constant_op_field(&mut self, op: CmpOp, c: &Value, path: &str) -> Cond {
        match op {
            CmpOp::Eq | CmpOp::Ne => self.field_op_constant(op, path, c),
            CmpOp::Lt => self.field_op_constant(CmpOp::Gt, path, c),
            CmpOp::Le => self.field_op_constant(CmpOp::Ge, path, c),
            CmpOp::Gt => self.field_op_constant(CmpOp::Lt, path, c),
            CmpOp::Ge => self.field_op_constant(CmpOp::Le, path, c),
            // `c in field`: the field is an array holding `c`.
            CmpOp::In => self.array_holds(path, c),
            CmpOp::Contains => match c {
                // `[..] contains field`: `field in [..]`.
                Value::Array(items) => self.one_of(&rank_sql(path), &value_sql(path), items),
                // A substring of a constant: the field is at least a string.
                Value::String(_) => Cond::superset(format!("({} = {RANK_STRING})", rank_sql(path))),
                _ => Cond::constant(false),
            },
        }
    }

    /// "The value of rank `rank` and value `value` equals `c`" (a missing field equals `null`).
    fn equals(&mut self, rank: &str, value: &str, c: &Value) -> Cond {
        match c {
            Value::Null => Cond::exact(format!("({rank} <= 1)")),
            Value::Bool(b) => Cond::exact(format!("({rank} = {})", if *b { 3 } else { 2 })),
            Value::Number(_) => match exact_number(c) {
                Some(n) => {
                    self.args.push(n);
                    Cond::exact(format!("({rank} = {RANK_NUMBER} AND {value} = ?)"))
                }
                None => Cond::superset(format!("({rank} = {RANK_NUMBER})")),
            },
            Value::String(s) => {
                self.args.push(SqlValue::Text(s.clone()));
                Cond::exact(format!("({rank} = {RANK_STRING} AND {value} = ?)"))
            }
            Value::Array(_) => Cond::superset(format!("({rank} = 6)")),
            Value::Object(_) => Cond::superset(format!("({rank} = 7)")),
        }
    }

    /// "The value equals one of `items`": strings and numbers in one `IN` list each.
    fn one_of(&mut self, rank: &str, value: &str, items: &[Value]) -> Cond {
        let mut strings = Vec::new();
        let mut numbers = Vec::new();
        let mut others: Vec<&Value> = Vec::new();
        for item in items {
            match item {
                Value::String(s) => strings.push(SqlValue::Text(s.clone())),
                Value::Number(_) => match exact_number(item) {
                    Some(n) => numbers.push(n),
                    None => others.push(item),
                },
                other => others.push(other),
            }
        }
        let mut parts = Vec::new();
        let mut exact = true;
        for (values, r) in [(strings, RANK_STRING), (numbers, RANK_NUMBER)] {
            if !values.is_empty() {
                parts.push(format!("({rank} = {r} AND {value} IN ({}))", vec!["?"; values.len()].join(", ")));
                self.args.extend(values);
            }
        }
        for item in others {
            let c = self.equals(rank, value, item);
            exact &= c.exact;
            parts.push(c.sql);
        }
        if parts.is_empty() {
            return Cond::constant(false);
        }
        Cond { sql: format!("({})", parts.join(" OR ")), exact }
    }

    /// "The field is an array with an element equal to `c`".
    fn array_holds(&mut self, path: &str, c: &Value) -> Cond {
        let element = self.equals(
            "(CASE e.type WHEN 'null' THEN 1 WHEN 'false' THEN 2 WHEN 'true' THEN 3 \
             WHEN 'integer' THEN 4 WHEN 'real' THEN 4 WHEN 'text' THEN 5 WHEN 'array' THEN 6 WHEN 'object' THEN 7 \
             ELSE 0 END)",
            "e.value",
            c,
        );
        Cond {
            sql: format!(
                "({} = 6 AND EXISTS (SELECT 1 FROM json_each(view, {path}) AS e WHERE {}))",
                rank_sql(path),
                element.sql
            ),
            exact: element.exact,
        }
    }
}

/// A number as an SQL value that SQLite compares exactly with the values of [`value_sql`]: an integer within
/// `i64`, or a float below 2^63 in magnitude. `None` for the others (integers above `i64::MAX` are floats in
/// SQLite, so they and floats near them cannot be told apart there).
fn exact_number(n: &Value) -> Option<SqlValue> {
    let n = n.as_number()?;
    if let Some(i) = n.as_i64() {
        return Some(SqlValue::Integer(i));
    }
    if n.is_u64() {
        return None;
    }
    let f = n.as_f64()?;
    (f.abs() < EXACT_FLOAT_LIMIT).then_some(SqlValue::Real(f))
}

/// A sort key in SQL: the rank and value columns of its path, and its direction.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SqlSortKey {
    pub rank: String,
    pub value: String,
    pub descending: bool,
}

/// The sort keys in SQL, or `None` when a path cannot be named in SQL.
pub(crate) fn sort_keys(sort: &[SortKey]) -> Option<Vec<SqlSortKey>> {
    sort.iter()
        .map(|k| {
            let path = json_path(&k.path)?;
            Some(SqlSortKey {
                rank: rank_sql(&path),
                value: value_sql(&path),
                descending: k.order == SortOrder::Descending,
            })
        })
        .collect()
}

/// What SQL says of one sort key of a row: its rank and value. Ordering rows by these (as SQLite does) never puts
/// two rows in the opposite of their exact order, and puts equal values together; rows whose keys are
/// [coarsely equal](Self::coarse_cmp) but not [exact](Self::is_exact) may be out of order among themselves.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SortValue {
    pub rank: i64,
    pub value: SqlValue,
}

impl SortValue {
    /// The rank and value SQL reads for `value` (`None`: missing), as [`rank_sql`] and [`value_sql`] compute them.
    pub fn of(value: Option<&Value>) -> SortValue {
        let (rank, value) = match value {
            None => (0, SqlValue::Null),
            Some(Value::Null) => (1, SqlValue::Null),
            Some(Value::Bool(false)) => (2, SqlValue::Integer(0)),
            Some(Value::Bool(true)) => (3, SqlValue::Integer(1)),
            Some(Value::Number(n)) => (
                RANK_NUMBER,
                match n.as_i64() {
                    Some(i) => SqlValue::Integer(i),
                    None => SqlValue::Real(n.as_f64().unwrap_or(f64::NAN)),
                },
            ),
            Some(Value::String(s)) => (RANK_STRING, SqlValue::Text(s.clone())),
            // (SQL reads them as JSON text; that order is not theirs, and is never compared.)
            Some(Value::Array(_)) => (6, SqlValue::Null),
            Some(Value::Object(_)) => (7, SqlValue::Null),
        };
        SortValue { rank, value }
    }

    /// Whether equal SQL keys mean equal values: a scalar other than a float at or beyond 2^63 (where integers above
    /// `i64::MAX` land). Arrays and objects compare as JSON text in SQL, which is not their order.
    pub fn is_exact(&self) -> bool {
        match (self.rank, &self.value) {
            (6 | 7, _) => false,
            (RANK_NUMBER, SqlValue::Real(f)) => f.abs() < EXACT_FLOAT_LIMIT,
            _ => true,
        }
    }

    /// The order of the keys as far as it is exact: by rank, then (numbers and strings) by value.
    pub fn coarse_cmp(&self, other: &SortValue) -> Ordering {
        self.rank.cmp(&other.rank).then_with(|| match (self.rank, &self.value, &other.value) {
            (RANK_NUMBER | RANK_STRING, a, b) => sql_cmp(a, b),
            _ => Ordering::Equal,
        })
    }
}

/// SQLite's order of two numbers or two texts (BINARY collation).
fn sql_cmp(a: &SqlValue, b: &SqlValue) -> Ordering {
    match (a, b) {
        (SqlValue::Integer(x), SqlValue::Integer(y)) => x.cmp(y),
        (SqlValue::Integer(x), SqlValue::Real(y)) => int_float_cmp(*x, *y),
        (SqlValue::Real(x), SqlValue::Integer(y)) => int_float_cmp(*y, *x).reverse(),
        (SqlValue::Real(x), SqlValue::Real(y)) => x.partial_cmp(y).unwrap_or(Ordering::Equal),
        (SqlValue::Text(x), SqlValue::Text(y)) => x.as_bytes().cmp(y.as_bytes()),
        _ => Ordering::Equal,
    }
}

/// Exact comparison of an integer and a float (as SQLite compares them).
fn int_float_cmp(i: i64, f: f64) -> Ordering {
    super::eval::compare_numbers(&serde_json::Number::from(i), &serde_json::Number::from_f64(f).unwrap_or(0.into()))
}
