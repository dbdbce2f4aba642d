//! The SQL of [`super::sql`] against the evaluator: random documents in SQLite, random filters through both. SQL
//! must select every document the evaluator matches, and exactly those when it says it is exact; its sort keys
//! must never order two documents against their exact order.

use std::cmp::Ordering;

use proptest::prelude::*;
use rusqlite::Connection;
use serde_json::{json, Value};

use super::sql::{self, SortValue};
use super::{compare_values, Filter, Params, Path};

/// Values where SQL and JSON differ: booleans and 0/1, `null` and missing, integers beyond `i64`, floats at 2^63,
/// -0.0, strings with NUL, quotes and non-ASCII text, arrays and objects.
fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        4 => prop::sample::select(vec![
            json!(0),
            json!(1),
            json!(-1),
            json!(2),
            json!(i64::MAX),
            json!(i64::MIN),
            json!(9_223_372_036_854_775_808u64),
            json!(9_223_372_036_854_775_809u64),
            json!(u64::MAX),
            json!(0.5),
            json!(1.0),
            json!(-0.0),
            json!(2.5),
            json!(9.223_372_036_854_776e18), // 2^63
            json!(1.8446744073709552e19),
            json!(1e300),
        ]),
        1 => (-3i64..4).prop_map(|i| json!(i)),
        2 => prop::sample::select(vec!["", "a", "ab", "b", "A", "é", "\u{0}", "a\u{0}b", "it's", "\"q\"", "😀", "1", "true"])
            .prop_map(|s| json!(s)),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(prop::sample::select(vec!["a", "b", "x y"]), inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        ]
    })
}

fn document() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(
        prop::sample::select(vec!["a", "b", "c", "x y", "tags", "q\"k", "n\u{0}l"]),
        value(),
        0..5,
    )
    .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

/// Filter text from a small grammar over the documents' fields.
fn filter() -> impl Strategy<Value = String> {
    let path = prop::sample::select(vec![
        "a",
        "b",
        "c",
        "a.a",
        "a[0]",
        "a[1].b",
        "tags",
        "tags[0]",
        "`x y`",
        "_id",
        "`q\"k`",
        "`n\u{0}l`",
    ]);
    let constant = prop_oneof![
        scalar().prop_map(|v| v.to_string()),
        prop::collection::vec(scalar(), 0..3).prop_map(|v| Value::Array(v).to_string()),
        Just("$p".to_string()),
        Just("$s".to_string()),
        Just("$n".to_string()),
    ];
    let op = prop::sample::select(vec!["==", "!=", "<", "<=", ">", ">=", "contains", "in"]);
    let operand = prop_oneof![path.clone().prop_map(str::to_string), constant];
    let comparison = (operand.clone(), op, operand).prop_map(|(l, op, r)| format!("{l} {op} {r}"));
    let leaf = prop_oneof![
        4 => comparison,
        1 => path.clone().prop_map(str::to_string),
        1 => path.prop_map(|p| format!("exists({p})")),
    ];
    leaf.prop_recursive(3, 10, 3, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} && {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} || {b})")),
            inner.clone().prop_map(|a| format!("!({a})")),
            (inner.clone(), any::<bool>()).prop_map(|(a, b)| format!("({a}) == {b}")),
        ]
    })
}

fn params() -> Params {
    let mut p = Params::new();
    p.insert("p".into(), json!([1, "a", null, u64::MAX]));
    p.insert("s".into(), json!("a"));
    p.insert("n".into(), json!(9_223_372_036_854_775_808u64));
    p
}

fn table(docs: &[Value]) -> Connection {
    let conn = Connection::open_in_memory().unwrap_or_else(|e| panic!("{e}"));
    conn.execute_batch("CREATE TABLE docs (n INTEGER PRIMARY KEY, view TEXT NOT NULL)")
        .unwrap_or_else(|e| panic!("{e}"));
    for (n, d) in docs.iter().enumerate() {
        let mut d = d.clone();
        if let Some(m) = d.as_object_mut() {
            m.insert("_id".into(), json!(format!("d{n}")));
        }
        conn.execute("INSERT INTO docs (n, view) VALUES (?1, ?2)", rusqlite::params![n as i64, d.to_string()])
            .unwrap_or_else(|e| panic!("{e}"));
    }
    conn
}

fn views(conn: &Connection) -> Vec<(i64, Value)> {
    let mut stmt = conn.prepare("SELECT n, view FROM docs ORDER BY n").unwrap_or_else(|e| panic!("{e}"));
    stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
        .unwrap_or_else(|e| panic!("{e}"))
        .map(|r| {
            let (n, t) = r.unwrap_or_else(|e| panic!("{e}"));
            (n, serde_json::from_str(&t).unwrap_or_else(|e| panic!("{e}")))
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn sql_selects_what_the_evaluator_matches(docs in prop::collection::vec(prop_oneof![
                                                  2 => (scalar(), scalar(), scalar()).prop_map(|(a, b, t)| json!({"a": a, "b": b, "tags": [t, "a"]})),
                                                  1 => document()], 1..12),
                                              text in filter()) {
        let Ok(f) = Filter::parse(&text) else { return Ok(()) };
        let params = params();
        let compiled = sql::compile(&f, &params);
        let conn = table(&docs);
        let mut stmt = conn.prepare(&format!("SELECT n FROM docs WHERE {} ORDER BY n", compiled.sql))
            .unwrap_or_else(|e| panic!("{e}: {}", compiled.sql));
        let selected: Vec<i64> = stmt
            .query_map(rusqlite::params_from_iter(compiled.args.iter()), |r| r.get(0))
            .unwrap_or_else(|e| panic!("{e}"))
            .collect::<rusqlite::Result<_>>()
            .unwrap_or_else(|e| panic!("{e}"));
        let matching: Vec<i64> = views(&conn)
            .into_iter()
            .filter(|(_, v)| f.matches(v, &params).unwrap_or_else(|e| panic!("{e}")))
            .map(|(n, _)| n)
            .collect();
        for n in &matching {
            prop_assert!(selected.contains(n), "{} missed document {}: {}", text, n, compiled.sql);
        }
        if compiled.exact {
            prop_assert_eq!(&selected, &matching, "{} said exact: {}", text, compiled.sql);
        }
    }

    #[test]
    fn sql_sort_keys_never_contradict_the_exact_order(docs in prop::collection::vec(prop_oneof![
                                                          2 => scalar().prop_map(|v| json!({"a": v.clone(), "b": [v]})),
                                                          1 => document()], 2..12),
                                                      key in prop::sample::select(vec!["a", "b", "a[0]", "`x y`", "a.a"])) {
        let path = Path::parse(key).unwrap_or_else(|e| panic!("{e}"));
        let keys = sql::sort_keys(&[super::SortKey { path: path.clone(), order: super::SortOrder::Ascending }])
            .unwrap_or_else(|| panic!("{key} has an SQL path"));
        let conn = table(&docs);
        let sql = format!("SELECT view, {}, {} FROM docs ORDER BY 2, 3", keys[0].rank, keys[0].value);
        let mut stmt = conn.prepare(&sql).unwrap_or_else(|e| panic!("{e}"));
        let rows: Vec<(Value, SortValue)> = stmt
            .query_map([], |r| {
                let text: String = r.get(0)?;
                Ok((serde_json::from_str(&text).unwrap_or(Value::Null), SortValue { rank: r.get(1)?, value: r.get(2)? }))
            })
            .unwrap_or_else(|e| panic!("{e}"))
            .collect::<rusqlite::Result<_>>()
            .unwrap_or_else(|e| panic!("{e}"));
        for (doc, k) in &rows {
            // What the store derives from a view is what SQL reads.
            let derived = SortValue::of(path.resolve(doc));
            prop_assert_eq!(derived.rank, k.rank, "{}", doc);
            if k.rank == 4 || k.rank == 5 {
                prop_assert_eq!(&derived.value, &k.value, "{}", doc);
            }
        }
        for (i, (a, ka)) in rows.iter().enumerate() {
            for (b, kb) in &rows[i + 1..] {
                let exact = compare_values(path.resolve(a), path.resolve(b));
                // SQL put a before b: a is not after b, unless SQL cannot tell them apart.
                let coarse = ka.coarse_cmp(kb);
                prop_assert_ne!(coarse, Ordering::Greater);
                if coarse == Ordering::Less {
                    prop_assert_eq!(exact, Ordering::Less, "{} before {}", a, b);
                } else if ka.is_exact() && kb.is_exact() {
                    prop_assert_eq!(exact, Ordering::Equal, "{} and {} tied", a, b);
                }
            }
        }
    }
}
