//! Local queries, as JSON lines (DESIGN.md §8): Shoal's `find` and `get` beside raw SQLite running the same SQL over
//! the same JSON, in the same run.
//!
//! `cargo run --release -p shoaldb-bench --bin query_bench [-- --quick] [--only queries|during-sync]`
//!
//! - `queries`: 100,000 documents of 7 fields (10,000 with `--quick`) in collection `items`. Four cases: `selective`
//!   (two equalities, about 100 matches), `top20` (one equality, sorted by a number descending, limit 20),
//!   `range` (a range of a number, about 500 matches) and `get` (1,000 gets by id). Each through Shoal without
//!   (`shoal`) and with (`shoal-indexed`) the indexes `[kind, region]`, `[kind, price]` and `[price]`, and through
//!   raw SQLite (`sqlite`, `sqlite-indexed`): a table `docs (id TEXT PRIMARY KEY, view TEXT)` holding the very JSON
//!   views of Shoal's documents, queried with plain `json_extract` SQL, indexed on the same fields' `json_extract`
//!   expressions; rows read and parsed as JSON (`serde_json::Value`, what `find` returns and what an app reading
//!   JSON out of SQLite does). Each query runs several times; the row gives the median. Row
//!   `{"bench":"query","case","impl","ms","rows"}` (Shoal's rows add `"ok"`: as many rows as raw SQLite found);
//!   goal: `shoal-indexed` ≤ 1.5 × `sqlite-indexed` in every case.
//! - `during-sync`: `find` (indexed, top-20) run again and again while a catch-up of 50 MB of changes (new
//!   documents of the same collection, 5 MB with `--quick`) is applied to the store by another thread, in batches
//!   of 500 changes as sync applies them; beside the same `find` with nothing else running. Row
//!   `{"bench":"query_during_sync","case":"top20","impl":"shoal-indexed","catchup_bytes","finds","p50_ms","p99_ms",
//!   "idle_p50_ms","idle_p99_ms","ratio_p99","cpu_busy_p50_ms","cpu_busy_p99_ms","other_file_p50_ms",
//!   "other_file_p99_ms"}`; goal: p99 during the catch-up
//!   ≤ 2 × idle p99. `cpu_busy_*`: the same `find` while another thread only computes (no database), to tell
//!   what sharing the cores costs from what the catch-up does; `other_file_*`: the same `find` while the same
//!   catch-up is applied to another store in the same directory, to tell what the machine's disk and cores cost
//!   from contention on the queried database.

use rusqlite::{params, Connection};
use serde_json::{json, Value};
use shoaldb::store::Replica;
use shoaldb::{Query, SortOrder, Store, Summary};
use shoaldb_bench::{emit, open_fast, Args, BoxErr};
use std::time::Instant;

const KINDS: usize = 20;
const REGIONS: usize = 50;
const PRICES: usize = 100_000;

/// Document `i`: 7 fields (and its id).
fn document(i: usize) -> Value {
    // A spread that is not the id's order.
    let h = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
    json!({
        "_id": format!("it{i:07}"),
        "kind": format!("kind{}", h % KINDS as u64),
        "region": format!("region{}", (h / KINDS as u64) % REGIONS as u64),
        "price": (h / 1000) % PRICES as u64,
        "score": (h % 10_000) as f64 / 100.0,
        "name": format!("item number {i}"),
        "active": h.is_multiple_of(3),
        "count": i % 97,
    })
}

fn fill(store: &Store, range: std::ops::Range<usize>) -> Result<(), BoxErr> {
    let ids: Vec<usize> = range.collect();
    for chunk in ids.chunks(2000) {
        store.write(|t| {
            for &i in chunk {
                t.upsert("items", document(i))?;
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// The median of `runs` timings of `f`, in milliseconds, and its last result's row count.
fn median_ms(runs: usize, mut f: impl FnMut() -> Result<usize, BoxErr>) -> Result<(f64, usize), BoxErr> {
    let mut times = Vec::with_capacity(runs);
    let mut rows = 0;
    for _ in 0..runs {
        let t0 = Instant::now();
        rows = f()?;
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], rows))
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The queries, in Shoal's form and in raw SQL (with their arguments).
struct Case {
    name: &'static str,
    query: Query,
    sql: &'static str,
    args: Vec<Value>,
}

fn cases() -> Result<Vec<Case>, BoxErr> {
    Ok(vec![
        Case {
            name: "selective",
            query: Query::filter("kind == $k && region == $r")?.param("k", json!("kind7")).param("r", json!("region3")),
            sql:
                "SELECT view FROM docs WHERE json_extract(view, '$.kind') = ?1 AND json_extract(view, '$.region') = ?2",
            args: vec![json!("kind7"), json!("region3")],
        },
        Case {
            name: "top20",
            query: Query::filter("kind == $k")?
                .sort_by("price", SortOrder::Descending)?
                .limit(20)
                .param("k", json!("kind7")),
            sql: "SELECT view FROM docs WHERE json_extract(view, '$.kind') = ?1 \
                  ORDER BY json_extract(view, '$.price') DESC LIMIT 20",
            args: vec![json!("kind7")],
        },
        Case {
            name: "range",
            query: Query::filter("price >= $lo && price < $hi")?.param("lo", json!(50_000)).param("hi", json!(50_500)),
            sql:
                "SELECT view FROM docs WHERE json_extract(view, '$.price') >= ?1 AND json_extract(view, '$.price') < ?2",
            args: vec![json!(50_000), json!(50_500)],
        },
    ])
}

fn sql_args(args: &[Value]) -> Vec<rusqlite::types::Value> {
    args.iter()
        .map(|a| match a {
            Value::String(s) => rusqlite::types::Value::Text(s.clone()),
            Value::Number(n) => n.as_i64().map_or(rusqlite::types::Value::Null, rusqlite::types::Value::Integer),
            _ => rusqlite::types::Value::Null,
        })
        .collect()
}

const SHOAL_INDEXES: [&[&str]; 3] = [&["kind", "region"], &["kind", "price"], &["price"]];
const RAW_INDEXES: &str = "
    CREATE INDEX raw_kind_region ON docs (json_extract(view, '$.kind'), json_extract(view, '$.region'));
    CREATE INDEX raw_kind_price ON docs (json_extract(view, '$.kind'), json_extract(view, '$.price'));
    CREATE INDEX raw_price ON docs (json_extract(view, '$.price'));";

fn queries(dir: &std::path::Path, n: usize, runs: usize) -> Result<(), BoxErr> {
    let path = dir.join("shoal.db");
    let store = open_fast(&path)?;
    let t0 = Instant::now();
    fill(&store, 0..n)?;
    eprintln!("{n} documents written in {:.1} s", t0.elapsed().as_secs_f64());
    // Raw SQLite: the same JSON views, in a table of their own.
    let raw_path = dir.join("raw.db");
    let raw = Connection::open(&raw_path)?;
    raw.pragma_update(None, "journal_mode", "WAL")?;
    raw.execute_batch("CREATE TABLE docs (id TEXT PRIMARY KEY, view TEXT NOT NULL)")?;
    raw.execute("ATTACH DATABASE ?1 AS shoal", params![path.to_string_lossy()])?;
    raw.execute_batch(
        "INSERT INTO docs (id, view) SELECT id, view FROM shoal.docs WHERE collection = 'items' AND view IS NOT NULL; \
         DETACH DATABASE shoal; ANALYZE;",
    )?;
    let ids: Vec<String> = (0..1000).map(|k| format!("it{:07}", (k * 7919) % n)).collect();
    for indexed in [false, true] {
        if indexed {
            for paths in SHOAL_INDEXES {
                store.create_index("items", paths)?;
            }
            raw.execute_batch(RAW_INDEXES)?;
            raw.execute_batch("ANALYZE")?;
        }
        let (shoal_impl, raw_impl) = if indexed { ("shoal-indexed", "sqlite-indexed") } else { ("shoal", "sqlite") };
        for case in cases()? {
            let plan = store.explain("items", &case.query)?;
            let (ms, rows) = median_ms(runs, || Ok(store.find("items", &case.query)?.len()))?;
            let args = sql_args(&case.args);
            let (raw_ms, raw_rows) = median_ms(runs, || {
                let mut stmt = raw.prepare_cached(case.sql)?;
                let found = stmt
                    .query_map(rusqlite::params_from_iter(args.iter()), |r| r.get::<_, String>(0))?
                    .map(|text| Ok(serde_json::from_str::<Value>(&text?)?))
                    .collect::<Result<Vec<Value>, BoxErr>>()?;
                Ok(found.len())
            })?;
            emit(&json!({"bench": "query", "case": case.name, "impl": shoal_impl, "ms": round3(ms), "rows": rows,
                         "plan": plan.steps.join("; "), "ok": rows == raw_rows}));
            emit(
                &json!({"bench": "query", "case": case.name, "impl": raw_impl, "ms": round3(raw_ms), "rows": raw_rows}),
            );
        }
        let (ms, rows) = median_ms(runs.min(5), || {
            let mut found = 0;
            for id in &ids {
                found += usize::from(store.get("items", id)?.is_some());
            }
            Ok(found)
        })?;
        emit(&json!({"bench": "query", "case": "get", "impl": shoal_impl, "ms": round3(ms), "rows": rows}));
        let (ms, rows) = median_ms(runs.min(5), || {
            let mut stmt = raw.prepare_cached("SELECT view FROM docs WHERE id = ?1")?;
            let mut found = 0;
            for id in &ids {
                for text in stmt.query_map([id], |r| r.get::<_, String>(0))? {
                    serde_json::from_str::<Value>(&text?)?;
                    found += 1;
                }
            }
            Ok(found)
        })?;
        emit(&json!({"bench": "query", "case": "get", "impl": raw_impl, "ms": round3(ms), "rows": rows}));
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn during_sync(dir: &std::path::Path, n: usize, catchup_docs: usize) -> Result<(), BoxErr> {
    let store = open_fast(&dir.join("reader.db"))?;
    fill(&store, 0..n)?;
    for paths in SHOAL_INDEXES {
        store.create_index("items", paths)?;
    }
    // The catch-up: new documents of the same collection, written elsewhere, about 1 KB each.
    let source = open_fast(&dir.join("source.db"))?;
    let ids: Vec<usize> = (n..n + catchup_docs).collect();
    for chunk in ids.chunks(2000) {
        source.write(|t| {
            for &i in chunk {
                let mut d = document(i);
                d["note"] = json!(format!("{i:07} ").repeat(120));
                t.upsert("items", d)?;
            }
            Ok(())
        })?;
    }
    let query = cases()?.into_iter().find(|c| c.name == "top20").map(|c| c.query).ok_or("no top20 case")?;
    let mut idle = Vec::new();
    for _ in 0..20_000 {
        let t0 = Instant::now();
        store.find("items", &query)?;
        idle.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    idle.sort_by(f64::total_cmp);
    // The same with another thread busy computing (no database): what sharing the cores alone costs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spinner = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // Through 64 MB of memory and back, as a catch-up moves its data: the caches are shared too.
            let mut buffer = vec![1u64; 8 << 20];
            let mut x = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for v in buffer.iter_mut().step_by(8) {
                    x = x.wrapping_add(*v);
                    *v = x;
                }
            }
            x
        })
    };
    let mut contended = Vec::new();
    for _ in 0..20_000 {
        let t0 = Instant::now();
        store.find("items", &query)?;
        contended.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    spinner.join().map_err(|_| "the spinner panicked")?;
    contended.sort_by(f64::total_cmp);
    // The same catch-up applied to another store (another file in the same directory) while `store` is queried:
    // what the machine's disk and cores cost, with no contention on the queried database itself.
    let elsewhere = open_fast(&dir.join("elsewhere.db"))?;
    let (other_file, _, _) = finds_during_catch_up(&store, &query, &source, elsewhere)?;
    let (busy, applied_s, bytes) = finds_during_catch_up(&store, &query, &source, store.clone())?;
    let (p99, idle_p99) = (percentile(&busy, 0.99), percentile(&idle, 0.99));
    emit(&json!({
        "bench": "query_during_sync", "case": "top20", "impl": "shoal-indexed", "catchup_bytes": bytes,
        "catchup_s": round3(applied_s), "finds": busy.len(), "p50_ms": round3(percentile(&busy, 0.5)),
        "p99_ms": round3(p99), "idle_p50_ms": round3(percentile(&idle, 0.5)), "idle_p99_ms": round3(idle_p99),
        "ratio_p99": round3(p99 / idle_p99), "cpu_busy_p50_ms": round3(percentile(&contended, 0.5)),
        "cpu_busy_p99_ms": round3(percentile(&contended, 0.99)),
        "other_file_p50_ms": round3(percentile(&other_file, 0.5)),
        "other_file_p99_ms": round3(percentile(&other_file, 0.99)),
    }));
    Ok(())
}

/// Runs `query` on `store` again and again while another thread applies every change of `source` to `target`, as
/// sync does: it reads the changes itself (as a session decodes what it receives: its memory is its own), then
/// applies them in batches of 500 changes, one transaction each. Returns the sorted latencies (ms), how long the
/// catch-up took (s) and its size (bytes).
fn finds_during_catch_up(
    store: &Store,
    query: &Query,
    source: &Store,
    target: Store,
) -> Result<(Vec<f64>, f64, usize), BoxErr> {
    let source = source.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let applier = std::thread::spawn(move || -> Result<(f64, usize), String> {
        let changes = source.replica().changes_since(&Summary::new()).map_err(|e| e.to_string())?;
        let bytes: usize = changes.iter().map(|c| c.encode().len()).sum();
        let _ = ready_tx.send(());
        let t0 = Instant::now();
        for batch in changes.chunks(500) {
            target.replica().apply_changes(batch).map_err(|e| e.to_string())?;
        }
        Ok((t0.elapsed().as_secs_f64(), bytes))
    });
    ready_rx.recv().map_err(|_| "the applier stopped before applying")?;
    let mut latencies = Vec::new();
    while !applier.is_finished() {
        let t0 = Instant::now();
        store.find("items", query)?;
        latencies.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    let (applied_s, bytes) = applier.join().map_err(|_| "the applier panicked")??;
    latencies.sort_by(f64::total_cmp);
    Ok((latencies, applied_s, bytes))
}

fn main() -> Result<(), BoxErr> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let n = if args.quick { 10_000 } else { 100_000 };
    if args.wants("queries") {
        queries(dir.path(), n, if args.quick { 5 } else { 15 })?;
    }
    if args.wants("during-sync") {
        during_sync(dir.path(), n, if args.quick { 5_000 } else { 50_000 })?;
    }
    Ok(())
}
