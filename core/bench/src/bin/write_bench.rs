//! Persisted document writes through Shoal's public API beside raw `rusqlite` writes of the same JSON bytes with the
//! same durability (WAL, synchronous=FULL), in the same run. One JSON row per (impl, phase, batch):
//! `{"bench":"write","impl":"shoal"|"rusqlite","phase":"insert"|"update","batch":1|100,"ops":..,"ops_per_s":..}`.
//!
//! `cargo run --release -p shoaldb-bench --bin write_bench [-- --quick] [--only shoal|rusqlite] [--batch 100|1] [--phase insert]`
//!
//! - insert: 10,000 documents × 10 fields (`f0..f9`: strings and integers), `batch` documents per transaction.
//!   rusqlite: the same JSON text of each document into `docs (id TEXT PRIMARY KEY, body TEXT)`.
//! - update: then single-field updates spread over those documents (document `(j * 7919) % 10,000`, field
//!   `f{j % 10}`), `batch` per transaction. rusqlite: `UPDATE docs SET body = ?` with the document's new JSON text
//!   (the app keeps the documents in memory and re-serialises the one it changed, as Shoal does).
//!
//! With synchronous=FULL every commit is an fsync, so batch 1 runs fewer operations (the same count for both
//! implementations, chosen from a measured fsync cost so that each batch-1 phase takes about 30 s at most); the row's
//! `ops` says how many.

use serde_json::{json, Map, Value as Json};
use shoaldb_bench::emit;
use std::path::Path;
use std::time::Instant;

// No counting allocator here: this program reports throughput only, and counting every allocation would slow
// down the implementation that allocates more.

const DOCS: usize = 10_000;
const FIELDS: usize = 10;
const UPDATES: usize = 100_000;
const COLLECTION: &str = "items";

type BoxErr = Box<dyn std::error::Error>;

fn doc_id(i: usize) -> String {
    format!("doc{i:05}")
}

fn field_value(i: usize, k: usize, generation: usize) -> Json {
    if k.is_multiple_of(2) {
        json!(format!("value {i}.{k} gen {generation}"))
    } else {
        json!((i * FIELDS + k) as i64 * 1000 + generation as i64)
    }
}

/// Document `i` as JSON, with its `_id`.
fn document(i: usize) -> Map<String, Json> {
    let mut m = Map::new();
    m.insert("_id".into(), json!(doc_id(i)));
    for k in 0..FIELDS {
        m.insert(format!("f{k}"), field_value(i, k, 0));
    }
    m
}

/// Update `j`: (document, field, new value).
fn update(j: usize) -> (usize, usize, Json) {
    let i = (j * 7919) % DOCS;
    let k = j % FIELDS;
    (i, k, field_value(i, k, j + 1))
}

fn field_names() -> Vec<String> {
    (0..FIELDS).map(|k| format!("f{k}")).collect()
}

// ---------------------------------------------------------------------------------------------------------------

trait Target {
    fn insert(&mut self, docs: &[Map<String, Json>]) -> Result<(), BoxErr>;
    fn update(&mut self, ups: &[(usize, usize, Json)]) -> Result<(), BoxErr>;
}

struct Shoal {
    store: shoaldb::Store,
    names: Vec<String>,
}

impl Target for Shoal {
    fn insert(&mut self, docs: &[Map<String, Json>]) -> Result<(), BoxErr> {
        self.store.write(|txn| {
            for d in docs {
                txn.upsert(COLLECTION, Json::Object(d.clone()))?;
            }
            Ok(())
        })?;
        Ok(())
    }

    fn update(&mut self, ups: &[(usize, usize, Json)]) -> Result<(), BoxErr> {
        let names = &self.names;
        self.store.write(|txn| {
            for (i, k, v) in ups {
                txn.update(COLLECTION, &doc_id(*i), |ed| {
                    match v {
                        Json::String(s) => ed.set(names[*k].as_str(), s.as_str())?,
                        Json::Number(n) => ed.set(names[*k].as_str(), n.as_i64().unwrap_or(0))?,
                        _ => unreachable!(),
                    }
                    Ok(())
                })?;
            }
            Ok(())
        })?;
        Ok(())
    }
}

struct Raw {
    conn: rusqlite::Connection,
    /// The documents as the app holds them (to write the full JSON text of an updated document).
    docs: Vec<Map<String, Json>>,
    names: Vec<String>,
}

fn open_raw(path: &Path) -> Result<rusqlite::Connection, BoxErr> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.execute_batch("CREATE TABLE IF NOT EXISTS docs (id TEXT PRIMARY KEY, body TEXT NOT NULL)")?;
    Ok(conn)
}

impl Target for Raw {
    fn insert(&mut self, docs: &[Map<String, Json>]) -> Result<(), BoxErr> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut stmt = tx.prepare_cached("INSERT INTO docs (id, body) VALUES (?1, ?2)")?;
            for d in docs {
                let id = d["_id"].as_str().unwrap_or_default();
                let body = serde_json::to_string(d)?;
                stmt.execute(rusqlite::params![id, body])?;
                self.docs.push(d.clone());
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn update(&mut self, ups: &[(usize, usize, Json)]) -> Result<(), BoxErr> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut stmt = tx.prepare_cached("UPDATE docs SET body = ?2 WHERE id = ?1")?;
            for (i, k, v) in ups {
                let d = &mut self.docs[*i];
                d.insert(self.names[*k].clone(), v.clone());
                let body = serde_json::to_string(d)?;
                let n = stmt.execute(rusqlite::params![doc_id(*i), body])?;
                if n != 1 {
                    return Err(format!("UPDATE of {} changed {n} rows", doc_id(*i)).into());
                }
            }
        }
        tx.commit()?;
        Ok(())
    }
}

fn open_target(imp: &str, dir: &Path) -> Result<Box<dyn Target>, BoxErr> {
    Ok(match imp {
        "shoal" => {
            let store = shoaldb::Store::open_with(
                dir.join("shoal.db"),
                shoaldb::Options { durability: shoaldb::Durability::Full, ..Default::default() },
            )?;
            Box::new(Shoal { store, names: field_names() })
        }
        _ => Box::new(Raw { conn: open_raw(&dir.join("raw.db"))?, docs: Vec::with_capacity(DOCS), names: field_names() }),
    })
}

fn row(imp: &str, phase: &str, batch: usize, ops: usize, secs: f64) {
    let ops_per_s = if secs > 0.0 { (ops as f64 / secs * 10.0).round() / 10.0 } else { 0.0 };
    emit(&json!({"bench": "write", "impl": imp, "phase": phase, "batch": batch, "ops": ops, "ops_per_s": ops_per_s}));
}

/// Insert documents `range` in transactions of `batch`; returns seconds.
fn insert_docs(t: &mut dyn Target, all: &[Map<String, Json>], range: std::ops::Range<usize>, batch: usize) -> Result<f64, BoxErr> {
    let t0 = Instant::now();
    for chunk in all[range].chunks(batch) {
        t.insert(chunk)?;
    }
    Ok(t0.elapsed().as_secs_f64())
}

fn update_docs(t: &mut dyn Target, ups: &[(usize, usize, Json)], batch: usize) -> Result<f64, BoxErr> {
    let t0 = Instant::now();
    for chunk in ups.chunks(batch) {
        t.update(chunk)?;
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// Seconds per committed single-row transaction with synchronous=FULL on this disk.
fn fsync_cost() -> Result<f64, BoxErr> {
    let dir = tempfile::tempdir()?;
    let conn = open_raw(&dir.path().join("probe.db"))?;
    let n = 30;
    let t0 = Instant::now();
    for i in 0..n {
        conn.execute("INSERT INTO docs (id, body) VALUES (?1, 'x')", [format!("p{i}")])?;
    }
    Ok(t0.elapsed().as_secs_f64() / n as f64)
}

fn main() -> Result<(), BoxErr> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `--only shoal` / `--only rusqlite`, `--batch 100` / `--batch 1`: run a subset (for profiling).
    let opt = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let only_impl = opt("--only");
    let only_batch: Option<usize> = opt("--batch").and_then(|b| b.parse().ok());
    let only_phase = opt("--phase");
    let docs: Vec<Map<String, Json>> = (0..DOCS).map(document).collect();
    let n_updates = if quick { UPDATES / 10 } else { UPDATES };
    let ups: Vec<(usize, usize, Json)> = (0..n_updates).map(update).collect();

    // How many single-op transactions fit in about 30 s per phase (per implementation), measured on raw SQLite; the
    // same count is used for both implementations.
    let per_commit = fsync_cost()?;
    let budget = if quick { 5.0 } else { 30.0 };
    let fit = ((budget / per_commit) as usize / 100 * 100).max(200);
    let n1_insert = fit.min(DOCS);
    let n1_update = fit.min(n_updates);
    eprintln!(
        "one synchronous=FULL commit takes about {:.2} ms here; batch 1 runs {n1_insert} inserts and {n1_update} updates",
        per_commit * 1000.0
    );

    for batch in [100, 1] {
        if only_batch.is_some_and(|b| b != batch) {
            continue;
        }
        for imp in ["shoal", "rusqlite"] {
            if only_impl.as_deref().is_some_and(|o| o != imp) {
                continue;
            }
            let dir = tempfile::tempdir()?;
            let mut t = open_target(imp, dir.path())?;
            let t: &mut dyn Target = t.as_mut();
            if batch == 100 {
                eprintln!("{imp}: insert {DOCS} documents, batch 100…");
                let s = insert_docs(t, &docs, 0..DOCS, 100)?;
                row(imp, "insert", 100, DOCS, s);
                if only_phase.as_deref() == Some("insert") {
                    continue;
                }
                eprintln!("{imp}: {n_updates} updates, batch 100…");
                let s = update_docs(t, &ups, 100)?;
                row(imp, "update", 100, n_updates, s);
            } else {
                eprintln!("{imp}: insert {n1_insert} documents, batch 1…");
                let s = insert_docs(t, &docs, 0..n1_insert, 1)?;
                row(imp, "insert", 1, n1_insert, s);
                // The rest of the documents (not timed), so updates spread over all 10,000 as in batch 100.
                insert_docs(t, &docs, n1_insert..DOCS, 100)?;
                eprintln!("{imp}: {n1_update} updates, batch 1…");
                let s = update_docs(t, &ups[..n1_update], 1)?;
                row(imp, "update", 1, n1_update, s);
            }
        }
    }
    Ok(())
}
