//! Evaluation of filters and the total order over JSON values.

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::{Map, Number, Value};

use super::error::QueryError;
use super::parser::{CmpOp, Expr};
use super::Params;

/// The result of evaluating a sub-expression: a JSON value or "missing"
/// (a field path that resolved to nothing).
enum Operand<'a> {
    Missing,
    Val(Cow<'a, Value>),
}

impl Operand<'_> {
    fn value(&self) -> Option<&Value> {
        match self {
            Operand::Missing => None,
            Operand::Val(v) => Some(v),
        }
    }

    /// Only JSON `true` is true.
    fn truthy(&self) -> bool {
        matches!(self.value(), Some(Value::Bool(true)))
    }
}

fn boolean<'a>(b: bool) -> Operand<'a> {
    Operand::Val(Cow::Owned(Value::Bool(b)))
}

/// Evaluates `expr` against `doc` and reports whether the result is JSON `true`.
pub(crate) fn matches(expr: &Expr, doc: &Value, params: &Params) -> Result<bool, QueryError> {
    Ok(eval(expr, doc, params)?.truthy())
}

fn eval<'a>(expr: &'a Expr, doc: &'a Value, params: &'a Params) -> Result<Operand<'a>, QueryError> {
    Ok(match expr {
        Expr::Literal(v) => Operand::Val(Cow::Borrowed(v)),
        Expr::Param(name) => Operand::Val(Cow::Borrowed(param(params, name)?)),
        Expr::Path(p) => match p.resolve(doc) {
            Some(v) => Operand::Val(Cow::Borrowed(v)),
            None => Operand::Missing,
        },
        Expr::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                out.push(match eval(item, doc, params)? {
                    Operand::Missing => Value::Null,
                    Operand::Val(v) => v.into_owned(),
                });
            }
            Operand::Val(Cow::Owned(Value::Array(out)))
        }
        Expr::Exists(p) => boolean(p.resolve(doc).is_some()),
        Expr::Not(inner) => boolean(!eval(inner, doc, params)?.truthy()),
        Expr::And(items) => {
            for item in items {
                if !eval(item, doc, params)?.truthy() {
                    return Ok(boolean(false));
                }
            }
            boolean(true)
        }
        Expr::Or(items) => {
            for item in items {
                if eval(item, doc, params)?.truthy() {
                    return Ok(boolean(true));
                }
            }
            boolean(false)
        }
        Expr::Cmp(op, left, right) => {
            let l = eval(left, doc, params)?;
            let r = eval(right, doc, params)?;
            boolean(compare_op(*op, l.value(), r.value()))
        }
    })
}

fn param<'a>(params: &'a Params, name: &str) -> Result<&'a Value, QueryError> {
    params.get(name).ok_or_else(|| QueryError::UnknownParameter(name.to_string()))
}

/// Applies a comparison operator; `None` is a missing field.
pub(crate) fn compare_op(op: CmpOp, l: Option<&Value>, r: Option<&Value>) -> bool {
    const NULL: &Value = &Value::Null;
    match op {
        CmpOp::Eq => json_eq(l.unwrap_or(NULL), r.unwrap_or(NULL)),
        CmpOp::Ne => !json_eq(l.unwrap_or(NULL), r.unwrap_or(NULL)),
        CmpOp::Lt => ordered(l, r).is_some_and(Ordering::is_lt),
        CmpOp::Le => ordered(l, r).is_some_and(Ordering::is_le),
        CmpOp::Gt => ordered(l, r).is_some_and(Ordering::is_gt),
        CmpOp::Ge => ordered(l, r).is_some_and(Ordering::is_ge),
        CmpOp::Contains => match (l, r) {
            (Some(Value::String(hay)), Some(Value::String(needle))) => hay.contains(needle.as_str()),
            (Some(Value::Array(items)), r) => {
                let r = r.unwrap_or(NULL);
                items.iter().any(|item| json_eq(item, r))
            }
            _ => false,
        },
        CmpOp::In => match r {
            Some(Value::Array(items)) => {
                let l = l.unwrap_or(NULL);
                items.iter().any(|item| json_eq(item, l))
            }
            _ => false,
        },
    }
}

/// Ordering for `<`, `<=`, `>`, `>=`: defined only for two numbers or two strings.
fn ordered(l: Option<&Value>, r: Option<&Value>) -> Option<Ordering> {
    match (l?, r?) {
        (Value::Number(a), Value::Number(b)) => Some(compare_numbers(a, b)),
        (Value::String(a), Value::String(b)) => Some(a.as_str().cmp(b.as_str())),
        _ => None,
    }
}

/// JSON equality with numbers compared by value (`1 == 1.0`), arrays
/// element-wise and objects by key set and values.
pub(crate) fn json_eq(a: &Value, b: &Value) -> bool {
    // Fast paths for the common scalar cases.
    match (a, b) {
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y).is_eq(),
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Null, Value::Null) => true,
        (Value::Array(x), Value::Array(y)) if x.len() != y.len() => false,
        (Value::Object(x), Value::Object(y)) if x.len() != y.len() => false,
        _ => compare_json(a, b).is_eq(),
    }
}

/// An integer or float view of a JSON number.
enum Num {
    Int(i128),
    Float(f64),
}

fn num(n: &Number) -> Num {
    if let Some(i) = n.as_i64() {
        Num::Int(i128::from(i))
    } else if let Some(u) = n.as_u64() {
        Num::Int(i128::from(u))
    } else {
        Num::Float(n.as_f64().unwrap_or(f64::NAN))
    }
}

/// Compares two JSON numbers exactly by value, without losing precision for
/// large integers (`9007199254740993` is not equal to `9007199254740992.0`).
pub(crate) fn compare_numbers(a: &Number, b: &Number) -> Ordering {
    match (num(a), num(b)) {
        (Num::Int(x), Num::Int(y)) => x.cmp(&y),
        (Num::Int(x), Num::Float(y)) => compare_int_float(x, y),
        (Num::Float(x), Num::Int(y)) => compare_int_float(y, x).reverse(),
        (Num::Float(x), Num::Float(y)) => compare_floats(x, y),
    }
}

/// Floats compare numerically (`-0.0 == 0.0`); NaN, which JSON cannot hold,
/// sorts after every number so the order stays total.
fn compare_floats(x: f64, y: f64) -> Ordering {
    match (x.is_nan(), y.is_nan()) {
        (false, false) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
    }
}

fn compare_int_float(i: i128, f: f64) -> Ordering {
    if f.is_nan() {
        return Ordering::Less;
    }
    // Every i128 we hold comes from i64/u64, so |i| < 2^64.
    const TWO_64: f64 = 18_446_744_073_709_551_616.0;
    if f >= TWO_64 {
        return Ordering::Less;
    }
    if f <= -TWO_64 {
        return Ordering::Greater;
    }
    let t = f.trunc();
    // |t| < 2^64, so the conversion is exact.
    let ti = t as i128;
    match i.cmp(&ti) {
        Ordering::Equal => {
            if f > t {
                Ordering::Less
            } else if f < t {
                Ordering::Greater
            } else {
                Ordering::Equal
            }
        }
        other => other,
    }
}

/// Rank of a value's type in the sort order (missing is below all of these).
fn type_rank(v: &Value) -> u8 {
    match v {
        Value::Null => 1,
        Value::Bool(false) => 2,
        Value::Bool(true) => 3,
        Value::Number(_) => 4,
        Value::String(_) => 5,
        Value::Array(_) => 6,
        Value::Object(_) => 7,
    }
}

/// The total order over optional JSON values used for sorting.
///
/// missing (`None`) < `null` < `false` < `true` < numbers < strings < arrays
/// < objects. Numbers compare numerically, strings by Unicode code point,
/// arrays element by element (a proper prefix first), objects as their
/// key-sorted `(key, value)` lists. `Equal` exactly when the values are equal
/// under the filter language's `==` (so `1` and `1.0` are equal). Never
/// panics and does not recurse, whatever the nesting depth.
pub fn compare_values(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(a), Some(b)) => compare_json(a, b),
    }
}

/// Pending work for the iterative comparison.
enum Step<'a> {
    Values(&'a Value, &'a Value),
    Keys(&'a str, &'a str),
    Lengths(usize, usize),
}

fn sorted_entries(m: &Map<String, Value>) -> Vec<(&str, &Value)> {
    let mut entries: Vec<(&str, &Value)> = m.iter().map(|(k, v)| (k.as_str(), v)).collect();
    entries.sort_unstable_by(|x, y| x.0.cmp(y.0));
    entries
}

/// Compares two JSON values in the total order. Iterative (an explicit work
/// stack), so arbitrarily deep values cannot overflow the call stack.
fn compare_json(a: &Value, b: &Value) -> Ordering {
    let mut stack = vec![Step::Values(a, b)];
    while let Some(step) = stack.pop() {
        let ord = match step {
            Step::Keys(x, y) => x.cmp(y),
            Step::Lengths(x, y) => x.cmp(&y),
            Step::Values(x, y) => {
                let rank = type_rank(x).cmp(&type_rank(y));
                if rank.is_ne() {
                    return rank;
                }
                match (x, y) {
                    (Value::Number(m), Value::Number(n)) => compare_numbers(m, n),
                    (Value::String(m), Value::String(n)) => m.as_str().cmp(n.as_str()),
                    (Value::Array(m), Value::Array(n)) => {
                        stack.push(Step::Lengths(m.len(), n.len()));
                        for (p, q) in m.iter().zip(n.iter()).rev() {
                            stack.push(Step::Values(p, q));
                        }
                        Ordering::Equal
                    }
                    (Value::Object(m), Value::Object(n)) => {
                        let (m, n) = (sorted_entries(m), sorted_entries(n));
                        stack.push(Step::Lengths(m.len(), n.len()));
                        for ((mk, mv), (nk, nv)) in m.into_iter().zip(n).rev() {
                            stack.push(Step::Values(mv, nv));
                            stack.push(Step::Keys(mk, nk));
                        }
                        Ordering::Equal
                    }
                    // Same rank and not a container/number/string: null,
                    // false or true, which are equal to themselves.
                    _ => Ordering::Equal,
                }
            }
        };
        if ord.is_ne() {
            return ord;
        }
    }
    Ordering::Equal
}
