//! How much storage a store takes for the data it holds, beside Automerge and Loro saving the same data.
//!
//! `cargo run --release -p shoaldb-bench --bin storage_bench [-- --quick] [--only churn|automerge-paper|attachments]
//! [--trace PATH]`
//!
//! Rows: `{"bench":"storage","workload":…,"impl":"shoal"|"shoal-certificates"|"automerge"|"loro","live_bytes":…,
//! "file_bytes":…,"ratio":…,"compact_ms":…}`. `live_bytes`: the live data as JSON (every document that exists, as an app reads
//! it); `file_bytes`: Shoal's database file after `compact` (every change folded), `collect_garbage` and a
//! checkpoint, or the size of the document Automerge (`save`) and Loro (snapshot export) write; `ratio`:
//! `file_bytes / live_bytes`; `compact_ms`: Shoal's `compact`, `collect_garbage` and checkpoint, Automerge's `save`,
//! Loro's export. Shoal's rows add `transactions` (the compaction's) and `write_wait_ms`: the longest an app's write
//! (an empty write transaction every 2 ms from another thread) waited during that maintenance. The size of Shoal's
//! files before compaction goes to stderr, with where the bytes go.
//!
//! Workloads: `churn` — 1,000 documents of five fields edited 1,000,000 times in all (one field set per edit,
//! transactions of 100 edits), 10% of the documents removed and created again along the way (also as
//! `shoal-certificates`: written by an enrolled device, every change signed, folded after the device — its own
//! attester — signed the documents' states; `compact_ms` includes `attest`); `automerge-paper` — the
//! editing trace saved every 100 patches; `attachments` — 40 attachments of 512 KiB in documents, 30 of those
//! documents removed (Shoal only). `--quick`: 100 documents and 20,000 edits, 10 attachments of 64 KiB.

use serde_json::json;
use shoaldb::store::GarbagePolicy;
use shoaldb::{CompactionPolicy, Store};
use shoaldb_bench::trace::{automerge_patch, load_trace, loro_patch, replay_into_store, Trace};
use shoaldb_bench::{emit, open_fast, store_files_size, Args, BoxErr};
use std::path::Path;
use std::time::Instant;

const FIELDS: [&str; 5] = ["title", "status", "n", "owner", "notes"];
const EDITS_PER_COMMIT: usize = 100;

/// One step of the churn workload, the same for every implementation.
enum Step {
    /// Set `field` of document `doc` (an index) to `value`.
    Set { doc: usize, field: &'static str, value: serde_json::Value },
    /// Remove document `doc`.
    Remove { doc: usize },
    /// Create document `doc` again (all its fields).
    Create { doc: usize },
    /// End of a transaction.
    Commit,
}

fn doc_id(i: usize) -> String {
    format!("d{i:05}")
}

fn initial(i: usize) -> serde_json::Value {
    json!({"title": format!("document {i}"), "status": "open", "n": 0, "owner": "ana", "notes": "first draft"})
}

/// The churn workload as steps, from a fixed seed: `docs` documents created, `edits` field sets in transactions of
/// [`EDITS_PER_COMMIT`], and a tenth of the documents removed at evenly spaced points, each created again five
/// transactions later.
fn churn_steps(docs: usize, edits: usize) -> Vec<Step> {
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut steps: Vec<Step> = (0..docs).map(|doc| Step::Create { doc }).collect();
    steps.push(Step::Commit);
    let txns = edits / EDITS_PER_COMMIT;
    let removals = (docs / 10).max(1);
    let every = (txns / removals).max(1);
    let mut removed: Vec<(usize, usize)> = Vec::new(); // (transaction to recreate in, doc)
    let mut alive = vec![true; docs];
    for t in 0..txns {
        if let Some(i) = removed.iter().position(|&(at, _)| at == t) {
            let (_, doc) = removed.remove(i);
            alive[doc] = true;
            steps.push(Step::Create { doc });
        }
        if t % every == every / 2 && t / every < removals {
            let doc = (t / every * 10) % docs;
            alive[doc] = false;
            steps.push(Step::Remove { doc });
            removed.push((t + 5, doc));
        }
        for k in 0..EDITS_PER_COMMIT {
            let doc = (next() % docs as u64) as usize;
            if !alive[doc] {
                continue;
            }
            let field = FIELDS[(next() % FIELDS.len() as u64) as usize];
            let i = t * EDITS_PER_COMMIT + k;
            let value = match field {
                "n" => json!(i),
                "status" => json!(["open", "doing", "done"][i % 3]),
                _ => json!(format!("{field} {i}")),
            };
            steps.push(Step::Set { doc, field, value });
        }
        steps.push(Step::Commit);
    }
    for (_, doc) in removed {
        steps.push(Step::Create { doc });
    }
    steps.push(Step::Commit);
    steps
}

fn row(workload: &str, imp: &str, live_bytes: u64, file_bytes: u64, compact_ms: f64) {
    emit(&row_json(workload, imp, live_bytes, file_bytes, compact_ms));
}

fn row_json(workload: &str, imp: &str, live_bytes: u64, file_bytes: u64, compact_ms: f64) -> serde_json::Value {
    json!({
        "bench": "storage", "workload": workload, "impl": imp, "live_bytes": live_bytes, "file_bytes": file_bytes,
        "ratio": (file_bytes as f64 / live_bytes.max(1) as f64 * 100.0).round() / 100.0,
        "compact_ms": (compact_ms * 10.0).round() / 10.0,
    })
}

/// A Shoal row, with what its maintenance did to the app's writes meanwhile.
fn shoal_row(workload: &str, imp: &str, live_bytes: u64, file_bytes: u64, m: &Maintenance) {
    let mut out = row_json(workload, imp, live_bytes, file_bytes, m.ms);
    out["transactions"] = json!(m.transactions);
    out["write_wait_ms"] = json!((m.write_wait_ms * 10.0).round() / 10.0);
    emit(&out);
}

/// What the maintenance of a store (attest, compact, collect garbage, checkpoint) took: its time (ms), the
/// compaction's transactions, and the longest an app's write waited meanwhile (ms).
#[derive(Default)]
struct Maintenance {
    ms: f64,
    transactions: u64,
    write_wait_ms: f64,
}

/// An app's writes while `f` runs: an empty write transaction every 2 ms from another thread (it takes the store's
/// lock and SQLite's write lock, as any write does, and adds nothing to the file). `f`'s result, and the longest one
/// waited (ms).
fn with_app_writes<R>(store: &Store, f: impl FnOnce() -> R) -> (R, f64) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut longest = 0f64;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let t0 = Instant::now();
                let _ = store.write(|_| Ok(()));
                longest = longest.max(t0.elapsed().as_secs_f64() * 1000.0);
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            longest
        })
    };
    let r = f();
    stop.store(true, std::sync::atomic::Ordering::Release);
    (r, writer.join().unwrap_or(f64::NAN))
}

/// Folds every change into snapshots, collects garbage with no grace and checkpoints, beside an app's writes;
/// returns what it took and the files' size after.
fn compact(store: &Store, db: &Path) -> Result<(Maintenance, u64), BoxErr> {
    store.checkpoint()?;
    eprintln!("    {}: {} bytes before compaction", db.display(), store_files_size(db));
    let t0 = Instant::now();
    let (report, compact_wait) = with_app_writes(store, || store.compact(&CompactionPolicy::everything()));
    let policy = GarbagePolicy { unreferenced_attachment_ms: 0, stalled_download_ms: 0 };
    let (garbage, garbage_wait) = with_app_writes(store, || store.collect_garbage(&policy));
    let (checkpoint, checkpoint_wait) = with_app_writes(store, || store.checkpoint());
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    let (transactions, _, _) = (report?.transactions, garbage?, checkpoint?);
    // Where the bytes go, and what each step kept the app's writes waiting (diagnostics on stderr).
    eprintln!("    {}: {:?}", db.display(), store.storage_stats()?);
    eprintln!(
        "    {}: longest write wait (ms): compact {compact_wait:.1}, collect_garbage {garbage_wait:.1}, \
         checkpoint {checkpoint_wait:.1}",
        db.display()
    );
    let write_wait_ms = compact_wait.max(garbage_wait).max(checkpoint_wait);
    Ok((Maintenance { ms, transactions, write_wait_ms }, store_files_size(db)))
}

/// Every live document as JSON (what an app reads), and their total size.
fn live_json(store: &Store, collection: &str) -> Result<(Vec<serde_json::Value>, u64), BoxErr> {
    let docs = store.list(collection)?;
    let bytes = docs.iter().map(|d| d.to_string().len() as u64).sum();
    Ok((docs, bytes))
}

/// The churn's steps written to `store`, a transaction per [`Step::Commit`].
fn replay_churn(store: &Store, steps: &[Step]) -> Result<(), BoxErr> {
    let mut batch: Vec<&Step> = Vec::new();
    for step in steps {
        if !matches!(step, Step::Commit) {
            batch.push(step);
            continue;
        }
        store.write(|t| {
            for s in batch.drain(..) {
                match s {
                    Step::Set { doc, field, value } => {
                        t.update("docs", &doc_id(*doc), |ed| Ok(ed.set(*field, shoaldb::Value::from_json(value))?))?;
                    }
                    Step::Remove { doc } => {
                        t.remove("docs", &doc_id(*doc))?;
                    }
                    Step::Create { doc } => {
                        let mut d = initial(*doc);
                        d["_id"] = json!(doc_id(*doc));
                        t.upsert("docs", d)?;
                    }
                    Step::Commit => {}
                }
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// `store` enrolled by a new authority, reading, writing and attesting everything: it signs every change it makes,
/// and its own states (see `shoaldb::security::attestation`).
fn enrol_as_attester(store: &Store) -> Result<(), BoxErr> {
    use shoaldb::enrolment::{self, Validity};
    use shoaldb::security::{Grant, SigningKey};
    let authority = SigningKey::generate()?;
    let request = enrolment::request(store, "storage_bench")?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
    let grants = vec![Grant::read("*"), Grant::write("*"), Grant::attest("*")];
    let certificate = enrolment::issue(&authority, &request, 1, grants, Validity::days_from(now - 86_400_000, 365))?;
    enrolment::install(store, &[certificate], &[authority.verifying_key()])?;
    Ok(())
}

fn churn(dir: &Path, docs: usize, edits: usize) -> Result<(), BoxErr> {
    let steps = churn_steps(docs, edits);
    // Shoal.
    let db = dir.join("churn.db");
    let store = open_fast(&db)?;
    replay_churn(&store, &steps)?;
    let (live, live_bytes) = live_json(&store, "docs")?;
    let (m, file_bytes) = compact(&store, &db)?;
    shoal_row("churn", "shoal", live_bytes, file_bytes, &m);

    // Shoal with certificates: every change signed, folded once the device (its own attester) signed the states.
    {
        let db = dir.join("churn-certificates.db");
        let store = open_fast(&db)?;
        enrol_as_attester(&store)?;
        replay_churn(&store, &steps)?;
        if live_json(&store, "docs")?.0 != live {
            return Err("the store with certificates holds other documents".into());
        }
        let t0 = Instant::now();
        let (attested, attest_wait_ms) = with_app_writes(&store, || store.attest());
        attested?;
        let attest_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let (mut m, file_bytes) = compact(&store, &db)?;
        (m.ms, m.write_wait_ms) = (m.ms + attest_ms, m.write_wait_ms.max(attest_wait_ms));
        use shoaldb::Replica;
        if !store.replica().log_missing(&shoaldb::Summary::new(), &shoaldb::Summary::new(), 1)?.is_empty() {
            return Err("signed changes stayed in the log after attestation".into());
        }
        shoal_row("churn", "shoal-certificates", live_bytes, file_bytes, &m);
    }

    // Automerge: the collection as one document, a map of documents.
    {
        use automerge::transaction::Transactable;
        let mut doc = automerge::AutoCommit::new();
        let mut objs: Vec<Option<automerge::ObjId>> = vec![None; docs];
        for step in &steps {
            match step {
                Step::Set { doc: i, field, value } => {
                    let obj = objs[*i].as_ref().ok_or("edit of a removed document")?;
                    match value {
                        serde_json::Value::Number(n) => doc.put(obj, *field, n.as_i64().unwrap_or(0))?,
                        v => doc.put(obj, *field, v.as_str().unwrap_or(""))?,
                    }
                }
                Step::Remove { doc: i } => {
                    doc.delete(automerge::ROOT, doc_id(*i))?;
                    objs[*i] = None;
                }
                Step::Create { doc: i } => {
                    let obj = doc.put_object(automerge::ROOT, doc_id(*i), automerge::ObjType::Map)?;
                    for (k, v) in initial(*i).as_object().ok_or("not an object")? {
                        match v {
                            serde_json::Value::Number(n) => doc.put(&obj, k.as_str(), n.as_i64().unwrap_or(0))?,
                            v => doc.put(&obj, k.as_str(), v.as_str().unwrap_or(""))?,
                        }
                    }
                    objs[*i] = Some(obj);
                }
                Step::Commit => {
                    doc.commit();
                }
            }
        }
        let t0 = Instant::now();
        let saved = doc.save();
        row("churn", "automerge", live_bytes, saved.len() as u64, t0.elapsed().as_secs_f64() * 1000.0);
        if automerge::ReadDoc::length(&doc, automerge::ROOT) != live.len() {
            return Err("automerge holds another number of documents than Shoal".into());
        }
    }

    // Loro: likewise, a root map of maps.
    {
        let doc = loro::LoroDoc::new();
        let root = doc.get_map("docs");
        let mut maps: Vec<Option<loro::LoroMap>> = vec![None; docs];
        let put = |m: &loro::LoroMap, k: &str, v: &serde_json::Value| match v {
            serde_json::Value::Number(n) => m.insert(k, n.as_i64().unwrap_or(0)),
            v => m.insert(k, v.as_str().unwrap_or("")),
        };
        for step in &steps {
            match step {
                Step::Set { doc: i, field, value } => {
                    put(maps[*i].as_ref().ok_or("edit of a removed document")?, field, value)?;
                }
                Step::Remove { doc: i } => {
                    root.delete(&doc_id(*i))?;
                    maps[*i] = None;
                }
                Step::Create { doc: i } => {
                    let m = root.insert_container(&doc_id(*i), loro::LoroMap::new())?;
                    for (k, v) in initial(*i).as_object().ok_or("not an object")? {
                        put(&m, k, v)?;
                    }
                    maps[*i] = Some(m);
                }
                Step::Commit => doc.commit(),
            }
        }
        let t0 = Instant::now();
        let snapshot = doc.export(loro::ExportMode::Snapshot)?;
        row("churn", "loro", live_bytes, snapshot.len() as u64, t0.elapsed().as_secs_f64() * 1000.0);
        if root.len() != live.len() {
            return Err("loro holds another number of documents than Shoal".into());
        }
    }
    Ok(())
}

fn automerge_paper(dir: &Path, trace: &Trace) -> Result<(), BoxErr> {
    const PATCHES_PER_COMMIT: usize = 100;
    let db = dir.join("paper.db");
    let store = open_fast(&db)?;
    replay_into_store(&store, trace, ("docs", "paper", "text"), PATCHES_PER_COMMIT)?;
    let (live, live_bytes) = live_json(&store, "docs")?;
    if live.first().and_then(|d| d["text"].as_str()) != Some(trace.end.as_str()) {
        return Err("Shoal's text differs from the trace's".into());
    }
    let (m, file_bytes) = compact(&store, &db)?;
    shoal_row("automerge-paper", "shoal", live_bytes, file_bytes, &m);

    let patches: Vec<_> = trace.txns.iter().flat_map(|t| &t.patches).collect();
    {
        use automerge::transaction::Transactable;
        let mut doc = automerge::AutoCommit::new_with_encoding(automerge::TextEncoding::UnicodeCodePoint);
        let text = doc.put_object(automerge::ROOT, "text", automerge::ObjType::Text)?;
        doc.splice_text(&text, 0, 0, &trace.start)?;
        for batch in patches.chunks(PATCHES_PER_COMMIT) {
            for p in batch {
                automerge_patch(&mut doc, &text, p)?;
            }
            doc.commit();
        }
        let t0 = Instant::now();
        let saved = doc.save();
        row("automerge-paper", "automerge", live_bytes, saved.len() as u64, t0.elapsed().as_secs_f64() * 1000.0);
    }
    {
        let doc = loro::LoroDoc::new();
        let text = doc.get_text("text");
        text.insert(0, &trace.start)?;
        for batch in patches.chunks(PATCHES_PER_COMMIT) {
            for p in batch {
                loro_patch(&text, p)?;
            }
            doc.commit();
        }
        let t0 = Instant::now();
        let snapshot = doc.export(loro::ExportMode::Snapshot)?;
        row("automerge-paper", "loro", live_bytes, snapshot.len() as u64, t0.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(())
}

fn attachments(dir: &Path, count: usize, size: usize) -> Result<(), BoxErr> {
    let db = dir.join("attachments.db");
    let store = open_fast(&db)?;
    for i in 0..count {
        let bytes: Vec<u8> = (0..size).map(|k| (k as u64 * 2_654_435_761 + i as u64) as u8).collect();
        let token = store.put_attachment_bytes(&bytes, Default::default())?;
        store.upsert(
            "files",
            json!({"_id": format!("f{i:03}"), "name": format!("file {i}"), "file": token.to_json()}),
        )?;
    }
    let kept = count / 4;
    for i in kept..count {
        store.remove("files", &format!("f{i:03}"))?;
    }
    let (_, view_bytes) = live_json(&store, "files")?;
    let (m, file_bytes) = compact(&store, &db)?;
    let stats = store.storage_stats()?;
    if stats.attachments != kept as u64 {
        return Err(format!("{} attachments left, {kept} expected", stats.attachments).into());
    }
    shoal_row("attachments", "shoal", view_bytes + stats.attachment_bytes, file_bytes, &m);
    Ok(())
}

fn main() -> Result<(), BoxErr> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    if args.wants("churn") {
        let (docs, edits) = if args.quick { (100, 20_000) } else { (1_000, 1_000_000) };
        churn(dir.path(), docs, edits)?;
    }
    if args.wants("automerge-paper") {
        let argv: Vec<String> = std::env::args().collect();
        let path = argv
            .iter()
            .position(|a| a == "--trace")
            .and_then(|i| argv.get(i + 1))
            .cloned()
            .unwrap_or_else(|| "../shared/traces/automerge-paper.json.gz".into());
        let trace = load_trace(Path::new(&path))?;
        if trace.concurrent {
            return Err("the automerge-paper workload replays a sequential trace".into());
        }
        automerge_paper(dir.path(), &trace)?;
    }
    if args.wants("attachments") {
        let (count, size) = if args.quick { (10, 64 << 10) } else { (40, 512 << 10) };
        attachments(dir.path(), count, size)?;
    }
    Ok(())
}
