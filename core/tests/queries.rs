//! Queries in SQLite (`Store::find`, `Store::explain`, indexes, readers): the results are exactly those of the
//! filter language's evaluator, whatever the documents, filters, sort keys, limits and indexes; indexes are used,
//! persist and can be dropped; reads do not wait for a write in progress.

use proptest::prelude::*;
use serde_json::{json, Value};
use shoaldb::query::{Filter, Params};
use shoaldb::{Error, Query, SortOrder, Store};
use std::sync::mpsc;
use std::time::Duration;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let s = Store::open(dir.path().join("db")).unwrap_or_else(|e| panic!("{e}"));
    (dir, s)
}

fn ids(docs: &[Value]) -> Vec<String> {
    docs.iter().map(|d| d["_id"].as_str().unwrap_or("?").to_string()).collect()
}

/// What the evaluator finds: every document read one by one, filtered, sorted and limited in memory.
fn evaluated(s: &Store, collection: &str, all_ids: &[String], query: &Query) -> Vec<Value> {
    let mut docs: Vec<(String, Value)> = all_ids
        .iter()
        .filter_map(|id| s.get(collection, id).unwrap_or_else(|e| panic!("{e}")).map(|v| (id.clone(), v)))
        .filter(|(_, v)| query.matches(v).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    query.order_and_limit(&mut docs);
    docs.into_iter().map(|(_, v)| v).collect()
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        3 => prop::sample::select(vec![
            json!(0), json!(1), json!(-1), json!(2), json!(i64::MAX), json!(9_223_372_036_854_775_809u64),
            json!(u64::MAX), json!(0.5), json!(1.0), json!(2.5), json!(1.8446744073709552e19),
        ]),
        2 => (-3i64..4).prop_map(|i| json!(i)),
        3 => prop::sample::select(vec!["", "a", "ab", "b", "B", "é", "a\u{0}b", "it's", "😀", "1"]).prop_map(|s| json!(s)),
    ]
}

fn field() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => scalar(),
        1 => prop::collection::vec(scalar(), 0..3).prop_map(Value::Array),
        1 => (scalar(), scalar()).prop_map(|(a, b)| json!({"a": a, "b": b})),
    ]
}

/// A document: a few fields (each sometimes missing), sometimes a large value kept beside its view.
fn document() -> impl Strategy<Value = Value> {
    (
        prop::option::of(field()),
        prop::option::of(field()),
        prop::option::of(field()),
        prop::collection::vec(scalar(), 0..3),
        prop::option::weighted(0.1, prop::sample::select(vec!["a", "b"])),
    )
        .prop_map(|(a, b, c, tags, large)| {
            let mut m = serde_json::Map::new();
            for (k, v) in [("a", a), ("b", b), ("c", c)] {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            }
            m.insert("tags".into(), Value::Array(tags));
            if let Some(l) = large {
                // Over 16 KiB: kept beside the view, where SQL sees `null`.
                m.insert("big".into(), json!(l.repeat(17 * 1024)));
            }
            Value::Object(m)
        })
}

fn filter() -> impl Strategy<Value = String> {
    let path = prop::sample::select(vec!["a", "b", "c", "a.a", "a[0]", "tags", "tags[1]", "_id", "big"]);
    let constant = prop_oneof![
        scalar().prop_map(|v| v.to_string()),
        prop::collection::vec(scalar(), 0..3).prop_map(|v| Value::Array(v).to_string()),
        Just("$s".to_string()),
        Just("$list".to_string()),
    ];
    let op = prop::sample::select(vec!["==", "!=", "<", "<=", ">", ">=", "contains", "in"]);
    let comparison = (path.clone(), op, constant).prop_map(|(l, op, r)| format!("{l} {op} {r}"));
    let leaf = prop_oneof![4 => comparison, 1 => path.prop_map(|p| format!("exists({p})"))];
    leaf.prop_recursive(2, 6, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} && {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} || {b})")),
            inner.prop_map(|a| format!("!({a})")),
        ]
    })
}

#[derive(Debug, Clone)]
struct Case {
    docs: Vec<Value>,
    filter: Option<String>,
    sort: Vec<(&'static str, bool)>,
    limit: Option<usize>,
    indexes: Vec<Vec<&'static str>>,
}

fn case() -> impl Strategy<Value = Case> {
    let key = prop::sample::select(vec!["a", "b", "c", "a[0]", "a.b", "tags", "big"]);
    (
        prop::collection::vec(document(), 0..24),
        prop::option::weighted(0.8, filter()),
        prop::collection::vec((key, any::<bool>()), 0..3),
        prop::option::weighted(0.7, 0usize..8),
        prop::collection::vec(
            prop::sample::select(vec![vec!["a"], vec!["b"], vec!["a", "b"], vec!["b", "c"], vec!["a[0]"], vec!["_id"]]),
            0..3,
        ),
    )
        .prop_map(|(docs, filter, sort, limit, indexes)| Case { docs, filter, sort, limit, indexes })
}

fn run_case(case: &Case) -> Result<(), TestCaseError> {
    let (_dir, s) = store();
    for cols in &case.indexes {
        s.create_index("c", cols).unwrap_or_else(|e| panic!("{e}"));
    }
    let mut all_ids = Vec::new();
    s.write(|t| {
        for (n, d) in case.docs.iter().enumerate() {
            let mut d = d.clone();
            d["_id"] = json!(format!("d{:02}", (n * 7) % 24));
            all_ids.push(t.upsert("c", d)?);
        }
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    // Another collection, which no query may see.
    s.upsert("other", json!({"_id": "d01", "a": 1, "b": "a"})).unwrap_or_else(|e| panic!("{e}"));
    let mut query = match &case.filter {
        Some(f) => Query::filter(f).unwrap_or_else(|e| panic!("{f}: {e}")),
        None => Query::all(),
    };
    for (k, desc) in &case.sort {
        let order = if *desc { SortOrder::Descending } else { SortOrder::Ascending };
        query = query.sort_by(k, order).unwrap_or_else(|e| panic!("{e}"));
    }
    if let Some(n) = case.limit {
        query = query.limit(n);
    }
    query = query.param("s", json!("a")).param("list", json!([1, "a", null, true]));
    let found = s.find("c", &query).unwrap_or_else(|e| panic!("{e}"));
    let expected = evaluated(&s, "c", &all_ids, &query);
    prop_assert_eq!(ids(&found), ids(&expected), "{:?}", s.explain("c", &query).map(|p| p.sql));
    prop_assert_eq!(found, expected);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Random documents, filters, sort keys, limits and indexes: `find` returns exactly what the evaluator finds.
    #[test]
    fn find_returns_exactly_what_the_evaluator_finds(case in case()) {
        run_case(&case)?;
    }
}

#[test]
fn an_index_is_used_for_equalities_ranges_and_sorted_limits() {
    const KINDS: [&str; 3] = ["a", "b", "c"];
    let (_d, s) = store();
    s.write(|t| {
        for i in 0..300 {
            t.upsert("items", json!({"_id": format!("i{i:03}"), "kind": KINDS[i % 3], "price": i, "n": i % 7}))?;
        }
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let by_kind = Query::filter("kind == 'b' && n == 3").unwrap_or_else(|e| panic!("{e}"));
    let top = Query::filter("kind == 'a'")
        .and_then(|q| q.sort_by("price", SortOrder::Descending))
        .unwrap_or_else(|e| panic!("{e}"))
        .limit(5);
    let range = Query::filter("price >= 100 && price < 110").unwrap_or_else(|e| panic!("{e}"));

    // Without an index: a scan, the same answers.
    let plan = s.explain("items", &by_kind).unwrap_or_else(|e| panic!("{e}"));
    assert!(plan.indexes.is_empty(), "{plan:?}");
    assert!(plan.exact_filter, "{plan:?}");
    let before = (s.find("items", &by_kind), s.find("items", &top), s.find("items", &range));

    assert!(s.create_index("items", &["kind", "price"]).unwrap_or_else(|e| panic!("{e}")));
    assert!(!s.create_index("items", &["kind", "price"]).unwrap_or_else(|e| panic!("{e}")), "declared twice");
    assert!(s.create_index("items", &["price"]).unwrap_or_else(|e| panic!("{e}")));
    let listed = s.indexes().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(listed.len(), 2);
    let kind_price = listed.iter().find(|i| i.paths.len() == 2).map(|i| i.name.clone()).unwrap_or_default();
    let price = listed.iter().find(|i| i.paths.len() == 1).map(|i| i.name.clone()).unwrap_or_default();

    let plan = s.explain("items", &by_kind).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.indexes, vec![kind_price.clone()], "{plan:?}");
    let plan = s.explain("items", &top).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.indexes, vec![kind_price.clone()], "{plan:?}");
    // Sorted by the index; only ties of the price are put in id order (SQLite's "LAST TERM OF ORDER BY").
    assert!(plan.sorted_in_sql && !plan.steps.iter().any(|s| s.ends_with("TEMP B-TREE FOR ORDER BY")), "{plan:?}");
    let plan = s.explain("items", &range).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.indexes, vec![price.clone()], "{plan:?}");

    let after = (s.find("items", &by_kind), s.find("items", &top), s.find("items", &range));
    let unwrap = |r: shoaldb::Result<Vec<Value>>| r.unwrap_or_else(|e| panic!("{e}"));
    let (a, b, c) = (unwrap(after.0), unwrap(after.1), unwrap(after.2));
    let want: Vec<String> = (0..300).filter(|i| i % 3 == 1 && i % 7 == 3).map(|i| format!("i{i:03}")).collect();
    assert_eq!(ids(&a), want);
    assert_eq!(ids(&b), vec!["i297", "i294", "i291", "i288", "i285"]);
    assert_eq!(c.len(), 10);
    assert_eq!((a, b, c), (unwrap(before.0), unwrap(before.1), unwrap(before.2)));

    // Kept up to date as documents change.
    s.upsert("items", json!({"_id": "i000", "price": 1000})).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ids(&s.find("items", &top).unwrap_or_else(|e| panic!("{e}")))[0], "i000");
    s.remove("items", "i000").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ids(&s.find("items", &top).unwrap_or_else(|e| panic!("{e}")))[0], "i297");

    // Dropped: gone from the list and from the plans.
    assert!(s.drop_index("items", &["kind", "price"]).unwrap_or_else(|e| panic!("{e}")));
    assert!(!s.drop_index("items", &["kind", "price"]).unwrap_or_else(|e| panic!("{e}")));
    let plan = s.explain("items", &by_kind).unwrap_or_else(|e| panic!("{e}"));
    assert!(!plan.indexes.contains(&kind_price), "{plan:?}");
    assert_eq!(s.indexes().unwrap_or_else(|e| panic!("{e}")).len(), 1);
}

#[test]
fn indexes_persist_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("db");
    {
        let s = Store::open(&path).unwrap_or_else(|e| panic!("{e}"));
        s.create_index("c", &["a.`x y`", "b[2]"]).unwrap_or_else(|e| panic!("{e}"));
        for bad in [&[][..], &["q.`a\"b`"][..], &["a\\b"][..], &["a"; 9][..]] {
            let e = s.create_index("c", bad);
            assert!(matches!(e, Err(Error::InvalidIndex(_)) | Err(Error::Path(_))), "{bad:?}: {e:?}");
        }
        assert!(matches!(s.create_index("c", &["a..b"]), Err(Error::Path(_))));
    }
    let s = Store::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let listed = s.indexes().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].collection, "c");
    assert_eq!(listed[0].paths.iter().map(|p| p.to_string()).collect::<Vec<_>>(), vec!["a.`x y`", "b[2]"]);
    s.upsert("c", json!({"_id": "x", "a": {"x y": 5}, "b": [0, 1, "z"]})).unwrap_or_else(|e| panic!("{e}"));
    let q = Query::filter("a.`x y` == 5 && b[2] == 'z'").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.explain("c", &q).unwrap_or_else(|e| panic!("{e}")).indexes, vec![listed[0].name.clone()]);
    assert_eq!(ids(&s.find("c", &q).unwrap_or_else(|e| panic!("{e}"))), vec!["x"]);
}

#[test]
fn keys_sql_paths_cannot_name_are_evaluated_in_memory() {
    let (_d, s) = store();
    for (id, key) in [("1", "n\u{0}l"), ("2", "q\"k"), ("3", "b\\s"), ("4", "tab\there")] {
        s.upsert("c", json!({"_id": id, key: 7, "other": 1})).unwrap_or_else(|e| panic!("{e}"));
    }
    for (filter, want) in
        [("`n\u{0}l` == 7", "1"), ("`q\"k` == 7", "2"), ("`b\\\\s` == 7", "3"), ("`tab\there` == 7", "4")]
    {
        let q = Query::filter(filter).unwrap_or_else(|e| panic!("{filter}: {e}"));
        assert!(!s.explain("c", &q).unwrap_or_else(|e| panic!("{e}")).exact_filter, "{filter}");
        assert_eq!(ids(&s.find("c", &q).unwrap_or_else(|e| panic!("{e}"))), vec![want], "{filter}");
        let sorted =
            Query::all().sort_by(&filter[..filter.len() - 5], SortOrder::Descending).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ids(&s.find("c", &sorted.limit(1)).unwrap_or_else(|e| panic!("{e}"))), vec![want], "{filter}");
    }
    assert!(matches!(s.create_index("c", &["`n\u{0}l`"]), Err(Error::InvalidIndex(_))));
}

/// Filters as long as the language allows, and parameters as large as an app may pass, still run (SQLite refuses
/// expressions over 1,000 deep and more than 32,766 arguments).
#[test]
fn long_filters_and_large_parameters_run() {
    let (_d, s) = store();
    s.write(|t| {
        for i in 0..50 {
            t.upsert("c", json!({"_id": format!("d{i:02}"), "n": i}))?;
        }
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let long = (0..4000).map(|i| format!("n=={}", i * 10)).collect::<Vec<_>>().join("||");
    let q = Query::filter(&long).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.find("c", &q).unwrap_or_else(|e| panic!("{e}")).len(), 5);
    let nested = format!("{}n == 7{}", "(".repeat(60), ")".repeat(60));
    assert_eq!(s.find("c", &Query::filter(&nested).unwrap_or_else(|e| panic!("{e}"))).map(|r| r.len()).ok(), Some(1));
    let many: Vec<Value> = (0..100_000).map(|i| json!(i * 2)).collect();
    let q = Query::filter("n in $many").unwrap_or_else(|e| panic!("{e}")).param("many", Value::Array(many));
    assert_eq!(s.find("c", &q).unwrap_or_else(|e| panic!("{e}")).len(), 25);
}

#[test]
fn a_filter_sql_cannot_say_exactly_is_checked_again() {
    let (_d, s) = store();
    s.upsert("c", json!({"_id": "1", "a": [1, 2]})).unwrap_or_else(|e| panic!("{e}"));
    s.upsert("c", json!({"_id": "2", "a": [1, 3]})).unwrap_or_else(|e| panic!("{e}"));
    // (A store keeps integers beyond i64 as floats.)
    s.upsert("c", json!({"_id": "3", "a": 1.8446744073709552e19})).unwrap_or_else(|e| panic!("{e}"));
    s.upsert("c", json!({"_id": "4", "a": 9.3e18})).unwrap_or_else(|e| panic!("{e}"));
    for (filter, want) in [
        ("a == [1, 3]", vec!["2"]),
        ("a == 1.8446744073709552e19", vec!["3"]),
        ("a < 1.8446744073709552e19", vec!["4"]),
        ("a != [1, 2]", vec!["2", "3", "4"]),
    ] {
        let q = Query::filter(filter).unwrap_or_else(|e| panic!("{e}"));
        assert!(!s.explain("c", &q).unwrap_or_else(|e| panic!("{e}")).exact_filter, "{filter}");
        assert_eq!(ids(&s.find("c", &q).unwrap_or_else(|e| panic!("{e}"))), want, "{filter}");
    }
    // Sorted by values SQL cannot tell apart, with a limit: the tied rows are read and sorted exactly.
    let q = Query::all().sort_by("a", SortOrder::Descending).unwrap_or_else(|e| panic!("{e}")).limit(1);
    assert_eq!(ids(&s.find("c", &q).unwrap_or_else(|e| panic!("{e}"))), vec!["2"]);
    let q = Query::filter("a > 5").and_then(|q| q.sort_by("a", SortOrder::Ascending)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ids(&s.find("c", &q.limit(1)).unwrap_or_else(|e| panic!("{e}"))), vec!["4"]);
}

/// A write transaction is held open (as a long sync catch-up holds it) while another thread reads: `get`, `find`,
/// `collections` and `explain` come back without waiting for it, and show the last commit.
#[test]
fn reads_do_not_wait_for_a_write_in_progress() {
    let (_d, s) = store();
    s.create_index("c", &["n"]).unwrap_or_else(|e| panic!("{e}"));
    s.upsert("c", json!({"_id": "a", "n": 1})).unwrap_or_else(|e| panic!("{e}"));
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let writer = {
        let s = s.clone();
        std::thread::spawn(move || {
            s.write(|t| {
                t.upsert("c", json!({"_id": "b", "n": 2}))?;
                let _ = entered_tx.send(());
                // Held until the reads are done (or a minute, should they wait for this lock).
                let _ = release_rx.recv_timeout(Duration::from_secs(60));
                Ok(())
            })
        })
    };
    entered_rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    let (done_tx, done_rx) = mpsc::channel();
    {
        let s = s.clone();
        std::thread::spawn(move || {
            let q = Query::filter("n >= 1").unwrap_or_else(|e| panic!("{e}"));
            let got = (
                s.get("c", "a").map(|d| d.is_some()),
                s.find("c", &q).map(|r| ids(&r)),
                s.collections(),
                s.explain("c", &q).map(|p| p.indexes.len()),
            );
            let _ = done_tx.send(got);
        });
    }
    let (get, find, collections, explained) = match done_rx.recv_timeout(Duration::from_secs(30)) {
        Ok(got) => got,
        Err(_) => {
            let _ = release_tx.send(());
            panic!("the reads waited for the write transaction");
        }
    };
    assert_eq!(explained.unwrap_or_else(|e| panic!("{e}")), 1);
    assert!(get.unwrap_or_else(|e| panic!("{e}")));
    assert_eq!(find.unwrap_or_else(|e| panic!("{e}")), vec!["a"], "the uncommitted write is not seen");
    assert_eq!(collections.unwrap_or_else(|e| panic!("{e}")), vec!["c"]);
    let _ = release_tx.send(());
    writer.join().unwrap_or_else(|_| panic!("writer panicked")).unwrap_or_else(|e| panic!("{e}"));
    let q = Query::filter("n >= 1").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ids(&s.find("c", &q).unwrap_or_else(|e| panic!("{e}"))), vec!["a", "b"]);
}

/// An observer registered while commits land gets a first result consistent with the events that follow: it ends
/// with exactly the store's result.
#[test]
fn an_observer_registered_during_writes_misses_nothing() {
    let (_d, s) = store();
    s.create_index("c", &["n"]).unwrap_or_else(|e| panic!("{e}"));
    let writer = {
        let s = s.clone();
        std::thread::spawn(move || {
            for i in 0..200 {
                s.upsert("c", json!({"_id": format!("d{i:03}"), "n": i})).unwrap_or_else(|e| panic!("{e}"));
            }
        })
    };
    let q =
        Query::filter("n >= 0").and_then(|q| q.sort_by("n", SortOrder::Descending)).unwrap_or_else(|e| panic!("{e}"));
    let mut observers = Vec::new();
    for _ in 0..20 {
        let latest = std::sync::Arc::new(std::sync::Mutex::new(None::<Vec<String>>));
        let l = latest.clone();
        let (first, handle) = s
            .observe("c", q.clone().limit(3), move |ev| {
                *l.lock().unwrap_or_else(|p| p.into_inner()) = Some(ids(&ev.results));
            })
            .unwrap_or_else(|e| panic!("{e}"));
        observers.push((ids(&first), latest, handle));
    }
    writer.join().unwrap_or_else(|_| panic!("writer panicked"));
    let want = ids(&s.find("c", &q.clone().limit(3)).unwrap_or_else(|e| panic!("{e}")));
    assert_eq!(want, vec!["d199", "d198", "d197"]);
    for (first, latest, _handle) in observers {
        let now = latest.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or(first);
        assert_eq!(now, want);
    }
}

#[test]
fn the_filter_language_keeps_its_semantics_on_stored_documents() {
    // The evaluator's documented examples, through the store.
    let (_d, s) = store();
    s.upsert(
        "u",
        json!({"_id": "u1", "name": "Ada", "age": 36, "tags": ["x", "y"], "addr": {"city": "London", "zip code": "N1"}, "nick": null}),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    s.upsert("u", json!({"_id": "u2", "name": "Bob", "age": "36", "done": 1})).unwrap_or_else(|e| panic!("{e}"));
    let p = Params::new();
    for src in [
        "age == 36.0 && name < 'B'",
        "addr.`zip code` == 'N1' and tags[1] == 'y'",
        "missing == null && missing != 1 && !(missing < 1)",
        "exists(nick) && !exists(missing) && nick == null",
        "'x' in tags && tags contains 'y' && age in [35, 36]",
        "name contains 'd' || false",
        "age",
        "done",
        "done == true",
        "age == '36'",
        "!(age < 40)",
    ] {
        let f = Filter::parse(src).unwrap_or_else(|e| panic!("{e}"));
        let want: Vec<String> = ["u1", "u2"]
            .into_iter()
            .filter(|id| {
                let doc = s.get("u", id).unwrap_or_else(|e| panic!("{e}")).unwrap_or(Value::Null);
                f.matches(&doc, &p).unwrap_or_else(|e| panic!("{e}"))
            })
            .map(str::to_string)
            .collect();
        let q = Query::filter(src).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ids(&s.find("u", &q).unwrap_or_else(|e| panic!("{e}"))), want, "{src}");
    }
}
