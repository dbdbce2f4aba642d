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
//!
//! Two more phases (`--phase large` runs only these) state how costs grow with size:
//! - `apply_large_change`: one transaction of N one-character text inserts (a paste typed by a fast test, an
//!   import), written on one store and applied on another, as a change of one op per character (Shoal itself
//!   records a run of typing as one op; other writers, and Shoal before, do not):
//!   `{"phase":"apply_large_change","impl":"shoal","ops":N,"ms":…,"local_ms":…}` for N = 6k, 10k, 30k, 60k,
//!   beside yrs applying the same edits as one update. Goal: applying is linear in the change's operations
//!   (60k ≤ 10 × the time of 6k; a goal row says whether it holds, and
//!   `complexity.sh` checks it on instruction counts, which do not depend on the machine's load).
//! - `edit_large_doc`: one-field edits (one transaction each, synchronous=NORMAL so that the work is measured rather
//!   than the disk's fsync) of a document of 1 KiB and of 10 MiB (ten byte values of a tenth each):
//!   `{"phase":"edit_large_doc","impl":"shoal","doc_bytes":…,"edits":…,"ms":… per edit}`, beside raw rusqlite
//!   rewriting the document's JSON text. Goal: the 10 MiB document's edit within 2 × the 1 KiB document's (also
//!   checked on instruction counts by `complexity.sh`).

use serde_json::{json, Map, Value as Json};
use shoaldb::store::Replica;
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
        _ => {
            Box::new(Raw { conn: open_raw(&dir.join("raw.db"))?, docs: Vec::with_capacity(DOCS), names: field_names() })
        }
    })
}

fn row(imp: &str, phase: &str, batch: usize, ops: usize, secs: f64) {
    let ops_per_s = if secs > 0.0 { (ops as f64 / secs * 10.0).round() / 10.0 } else { 0.0 };
    emit(&json!({"bench": "write", "impl": imp, "phase": phase, "batch": batch, "ops": ops, "ops_per_s": ops_per_s}));
}

/// Insert documents `range` in transactions of `batch`; returns seconds.
fn insert_docs(
    t: &mut dyn Target,
    all: &[Map<String, Json>],
    range: std::ops::Range<usize>,
    batch: usize,
) -> Result<f64, BoxErr> {
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

/// A store for the size phases: synchronous=NORMAL.
fn normal_store(path: &Path) -> Result<shoaldb::Store, BoxErr> {
    Ok(shoaldb::Store::open_with(
        path,
        shoaldb::Options { durability: shoaldb::Durability::Normal, ..Default::default() },
    )?)
}

fn ms_since(t0: Instant) -> f64 {
    (t0.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

/// Shoal: N one-character inserts in one transaction on store `a`; their change applied on store `b`. Returns
/// (apply ms, local write ms).
fn shoal_large_change(n: usize) -> Result<(f64, f64), BoxErr> {
    let dir = tempfile::tempdir()?;
    let a = normal_store(&dir.path().join("a.db"))?;
    let b = normal_store(&dir.path().join("b.db"))?;
    a.upsert("notes", json!({"_id": "paste"}))?;
    a.update("notes", "paste", |ed| Ok(ed.text_insert("body", 0, ">")?))?;
    b.replica().apply_changes(&a.replica().changes_since(&b.replica().summary()?)?)?;
    let t0 = Instant::now();
    a.update("notes", "paste", |ed| {
        for i in 0..n {
            ed.text_insert("body", i + 1, if i % 10 == 9 { " " } else { "x" })?;
        }
        Ok(())
    })?;
    let local_ms = ms_since(t0);
    // Recorded as one op (a run of typing); sent as a writer that records an op per keystroke would send it.
    let changes: Vec<_> = a
        .replica()
        .changes_since(&b.replica().summary()?)?
        .into_iter()
        .map(|c| shoaldb::DocChange { change: c.change.with_one_op_per_character(), ..c })
        .collect();
    let ops: usize = changes.iter().map(|c| c.change.ops.len()).sum();
    if ops != n {
        return Err(format!("expected one change of {n} operations, found {ops} operations").into());
    }
    let t0 = Instant::now();
    apply_received(&b, &changes)?;
    let apply_ms = ms_since(t0);
    let text = b.get("notes", "paste")?.and_then(|d| d["body"].as_str().map(|s| s.chars().count()));
    if text != Some(n + 1) {
        return Err(format!("the applied text has {text:?} characters, not {n}").into());
    }
    Ok((apply_ms, local_ms))
}

/// yrs: the same text typed in one transaction, encoded as one update and applied to another document. (yrs
/// squashes consecutive inserts of one transaction into one block, so the text is inserted in one call here: the
/// update is the same, and yrs's own typing of 60k characters at the end of one text is quadratic.)
fn yrs_large_change(n: usize) -> Result<f64, BoxErr> {
    use yrs::updates::decoder::Decode;
    use yrs::{GetString, ReadTxn, Text, Transact};
    let a = yrs::Doc::with_client_id(1);
    let text = a.get_or_insert_text("body");
    let typed: String = (0..n).map(|i| if i % 10 == 9 { ' ' } else { 'x' }).collect();
    text.insert(&mut a.transact_mut(), 0, &typed);
    let update = a.transact().encode_state_as_update_v1(&yrs::StateVector::default());
    let b = yrs::Doc::with_client_id(2);
    let t0 = Instant::now();
    b.transact_mut().apply_update(yrs::Update::decode_v1(&update)?)?;
    let ms = ms_since(t0);
    let got = b.get_or_insert_text("body").get_string(&b.transact()).chars().count();
    if got != n {
        return Err(format!("yrs applied {got} characters, not {n}").into());
    }
    Ok(ms)
}

fn large_change_rows() -> Result<(), BoxErr> {
    let mut by_ops = Vec::new();
    for n in [6_000, 10_000, 30_000, 60_000] {
        // The best of seven runs for every size (the same number, so that the minimums compare fairly): single
        // measurements of a few milliseconds vary by ±20% on a shared machine.
        let mut best = (f64::MAX, f64::MAX);
        for _ in 0..7 {
            let (apply, local) = shoal_large_change(n)?;
            best = (best.0.min(apply), best.1.min(local));
        }
        let mut yrs_best = f64::MAX;
        for _ in 0..7 {
            yrs_best = yrs_best.min(yrs_large_change(n)?);
        }
        emit(
            &json!({"bench": "write", "impl": "shoal", "phase": "apply_large_change", "ops": n, "ms": best.0, "local_ms": best.1}),
        );
        emit(&json!({"bench": "write", "impl": "yrs", "phase": "apply_large_change", "ops": n, "ms": yrs_best}));
        by_ops.push((n, best.0));
    }
    let t = |n: usize| by_ops.iter().find(|r| r.0 == n).map_or(f64::NAN, |r| r.1);
    let ratio = t(60_000) / t(6_000);
    emit(
        &json!({"bench": "write", "phase": "apply_large_change", "goal": "60k ops <= 10 x 6k ops", "ratio": (ratio * 100.0).round() / 100.0, "goal_met": ratio <= 10.0, "ok": true}),
    );
    Ok(())
}

/// The length of each of the ten byte values of a document of about `bytes` (a register holds at most 1 MiB).
fn blob_len(bytes: usize) -> usize {
    bytes / 10 - 16
}

/// The values of a document of about `bytes`: ten byte values of a tenth each (the title is added apart).
fn large_doc_fields(bytes: usize) -> Vec<(String, Vec<u8>)> {
    (0..10).map(|i| (format!("blob{i}"), (0..blob_len(bytes)).map(|j| (j * 31 + i) as u8).collect())).collect()
}

/// The measured work of `apply_large_change` (a function of its own, for `complexity.sh` to count).
#[inline(never)]
fn apply_received(store: &shoaldb::Store, changes: &[shoaldb::DocChange]) -> Result<(), BoxErr> {
    store.replica().apply_changes(changes)?;
    Ok(())
}

/// The measured work of `edit_large_doc`: `edits` one-field edits, one transaction each (a function of its own,
/// for `complexity.sh` to count).
#[inline(never)]
fn edit_title(store: &shoaldb::Store, edits: usize) -> Result<(), BoxErr> {
    for i in 0..edits {
        store.update("docs", "big", |ed| Ok(ed.set("title", format!("edit {i}"))?))?;
    }
    Ok(())
}

/// Shoal: `edits` one-field edits of the document, one transaction each; ms per edit.
fn shoal_edit_large_doc(bytes: usize, edits: usize) -> Result<f64, BoxErr> {
    let dir = tempfile::tempdir()?;
    let s = normal_store(&dir.path().join("s.db"))?;
    for (k, v) in large_doc_fields(bytes) {
        s.upsert_value("docs", Some("big"), shoaldb::Value::Map([(k, shoaldb::Value::from(v))].into()))?;
    }
    s.upsert("docs", json!({"_id": "big", "title": "start"}))?;
    checkpoint(&dir.path().join("s.db"))?;
    // The store notices the checkpoint as another connection's write and reads the document again on its next use;
    // that read belongs to the set-up too (an app editing a document has it in the store's cache).
    s.update("docs", "big", |ed| Ok(ed.set("title", "warm")?))?;
    let t0 = Instant::now();
    edit_title(&s, edits)?;
    let ms = per_edit(ms_since(t0), edits);
    let doc = s.get("docs", "big")?.ok_or("the document vanished")?;
    if doc["title"] != json!(format!("edit {}", edits - 1))
        || doc["blob9"].as_array().map(Vec::len) != Some(blob_len(bytes))
    {
        return Err("the edited document is not what was written".into());
    }
    Ok(ms)
}

/// rusqlite: the document as one JSON text (bytes as number arrays, as Shoal renders them), rewritten per edit.
fn raw_edit_large_doc(bytes: usize, edits: usize) -> Result<f64, BoxErr> {
    let dir = tempfile::tempdir()?;
    let conn = open_raw(&dir.path().join("raw.db"))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    let mut doc = Map::new();
    for (k, v) in large_doc_fields(bytes) {
        doc.insert(k, json!(v));
    }
    doc.insert("title".into(), json!("start"));
    conn.execute("INSERT INTO docs (id, body) VALUES ('big', ?1)", [serde_json::to_string(&doc)?])?;
    checkpoint(&dir.path().join("raw.db"))?;
    let t0 = Instant::now();
    for i in 0..edits {
        doc.insert("title".into(), json!(format!("edit {i}")));
        conn.execute("UPDATE docs SET body = ?1 WHERE id = 'big'", [serde_json::to_string(&doc)?])?;
    }
    Ok(per_edit(ms_since(t0), edits))
}

/// Copy the WAL of the database at `path` into the database file, so that the writes that made a document are not
/// checkpointed during (and charged to) the edits measured after them.
fn checkpoint(path: &Path) -> Result<(), BoxErr> {
    rusqlite::Connection::open(path)?.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(())
}

fn per_edit(ms: f64, edits: usize) -> f64 {
    (ms / edits as f64 * 1e4).round() / 1e4
}

fn large_doc_rows(quick: bool) -> Result<(), BoxErr> {
    let mut shoal = Vec::new();
    for (bytes, raw_edits) in [(1 << 10, 2000), (10 << 20, 10)] {
        let edits = if quick { 1000 } else { 5000 };
        // The best of three runs (a run is a few tenths of a second on a shared machine).
        let mut ms = f64::MAX;
        for _ in 0..3 {
            ms = ms.min(shoal_edit_large_doc(bytes, edits)?);
        }
        emit(
            &json!({"bench": "write", "impl": "shoal", "phase": "edit_large_doc", "doc_bytes": bytes, "edits": edits, "ms": ms}),
        );
        let raw = raw_edit_large_doc(bytes, raw_edits)?;
        emit(
            &json!({"bench": "write", "impl": "rusqlite", "phase": "edit_large_doc", "doc_bytes": bytes, "edits": raw_edits, "ms": raw}),
        );
        shoal.push(ms);
    }
    let ratio = shoal[1] / shoal[0];
    emit(
        &json!({"bench": "write", "phase": "edit_large_doc", "goal": "10 MiB doc edit <= 2 x 1 KiB doc edit", "ratio": (ratio * 100.0).round() / 100.0, "goal_met": ratio <= 2.0, "ok": true}),
    );
    Ok(())
}

/// `--measure apply N` / `--measure edit BYTES`: do one measured piece of work only — apply one change of N
/// operations, or 200 one-field edits of a document of BYTES — for counting its instructions under callgrind
/// (`complexity.sh`: `apply_received` and `edit_title` are what it counts).
fn measure_once(what: &str, size: usize) -> Result<(), BoxErr> {
    match what {
        "apply" => {
            shoal_large_change(size)?;
        }
        "edit" => {
            shoal_edit_large_doc(size, 200)?;
        }
        other => return Err(format!("unknown measure {other:?}").into()),
    }
    Ok(())
}

fn main() -> Result<(), BoxErr> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `--only shoal` / `--only rusqlite`, `--batch 100` / `--batch 1`: run a subset (for profiling).
    let opt = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let only_impl = opt("--only");
    let only_batch: Option<usize> = opt("--batch").and_then(|b| b.parse().ok());
    let only_phase = opt("--phase");
    if let Some(what) = opt("--measure") {
        let size = args.last().and_then(|a| a.parse().ok()).ok_or("--measure apply|edit SIZE")?;
        return measure_once(&what, size);
    }
    if only_phase.is_none() || only_phase.as_deref() == Some("large") {
        large_change_rows()?;
        large_doc_rows(quick)?;
        if only_phase.is_some() {
            return Ok(());
        }
    }
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
