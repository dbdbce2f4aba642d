//! Replay real editing traces (josephg/editing-traces format, sequential or concurrent) through Shoal and through
//! the CRDT libraries an app would pick instead, in the same run, and print one JSON row per (trace, impl).
//!
//! `cargo run --release -p shoaldb-bench --bin trace_bench -- <trace.json.gz>... [--out DIR]`
//!
//! Rows: `{"bench":"trace","impl":..,"trace":..,"ms":..,"peak_bytes":..,"encoded_bytes":..,"final_chars":..,"ok":..}`
//! (plus `"note"` when something needs explaining). `ms` is the replay (for concurrent traces including the final
//! merge); `peak_bytes` is the peak of Rust heap allocations during the replay above the level before it (the trace
//! itself is parsed before); `encoded_bytes` is the saved size at the end.

use serde_json::json;
use shoaldb::store::Replica as _;
use shoaldb_bench::trace::{self, load_trace, replay_into_store, Patch, Trace, Txn};
use shoaldb_bench::{alloc, emit, store_files_size};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

// ---------------------------------------------------------------------------------------------------------------
// Measuring

/// What one implementation's replay produced.
struct Outcome {
    ms: f64,
    peak_bytes: usize,
    encoded_bytes: u64,
    text: String,
    note: Option<String>,
}

/// Run the replay with memory accounting: `replay` does the work and returns a state; `finish` (not timed, not
/// counted in the peak) reads the final text and the encoded size from it.
fn measure<S>(
    replay: impl FnOnce() -> Result<S, String>,
    finish: impl FnOnce(S) -> Result<(String, u64), String>,
) -> Outcome {
    let base = alloc::reset_peak();
    let t0 = Instant::now();
    let state = replay();
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    let peak_bytes = alloc::peak().saturating_sub(base);
    eprintln!(
        "    replay {ms:.1} ms; heap peak +{peak_bytes} B, retained after replay +{} B",
        alloc::current().saturating_sub(base)
    );
    match state.and_then(finish) {
        Ok((text, encoded_bytes)) => Outcome { ms, peak_bytes, encoded_bytes, text, note: None },
        Err(e) => Outcome { ms, peak_bytes, encoded_bytes: 0, text: String::new(), note: Some(e) },
    }
}

fn first_difference(a: &str, b: &str) -> Option<usize> {
    let mut ai = a.chars();
    let mut bi = b.chars();
    let mut i = 0;
    loop {
        match (ai.next(), bi.next()) {
            (None, None) => return None,
            (x, y) if x != y => return Some(i),
            _ => i += 1,
        }
    }
}

fn report(trace: &Trace, imp: &str, o: Outcome, out_dir: Option<&Path>) {
    let ok = o.note.is_none() && o.text == trace.end;
    let mut note = o.note.clone();
    if o.note.is_none() && !ok {
        let at = first_difference(&o.text, &trace.end).unwrap_or(0);
        let ctx = |s: &str| s.chars().skip(at.saturating_sub(20)).take(40).collect::<String>();
        let msg = format!(
            "final text differs from endContent at code point {at} (got {} chars, expected {}); got …{:?}…, expected …{:?}…",
            o.text.chars().count(),
            trace.end.chars().count(),
            ctx(&o.text),
            ctx(&trace.end)
        );
        eprintln!("[{}/{imp}] {msg}", trace.name);
        note = Some(msg);
    }
    if imp == "shoal" {
        if let Some(dir) = out_dir {
            let file = dir.join(format!("{}.txt", trace.name));
            if let Err(e) = std::fs::create_dir_all(dir).and_then(|_| std::fs::write(&file, &o.text)) {
                eprintln!("cannot write {}: {e}", file.display());
            }
        }
    }
    let mut row = json!({
        "bench": "trace",
        "impl": imp,
        "trace": trace.name,
        "ms": (o.ms * 10.0).round() / 10.0,
        "peak_bytes": o.peak_bytes,
        "encoded_bytes": o.encoded_bytes,
        "final_chars": o.text.chars().count(),
        "ok": ok,
    });
    if let Some(n) = note {
        row["note"] = json!(n);
    }
    emit(&row);
}

// ---------------------------------------------------------------------------------------------------------------
// Concurrent replay: one replica per agent, each brought to exactly the merge of a transaction's parents before the
// transaction is applied to it.

trait Replica {
    /// What one transaction produced, to send to other replicas.
    type Change;
    fn apply(&mut self, change: &Self::Change) -> Result<(), String>;
    /// Apply several changes (in causal order) that arrive together.
    fn apply_many(&mut self, changes: &[&Self::Change]) -> Result<(), String> {
        changes.iter().try_for_each(|c| self.apply(c))
    }
    fn edit(&mut self, index: usize, txn: &Txn) -> Result<Self::Change, String>;
}

/// Replay a concurrent trace; returns replica 0 after merging everything into it, and every transaction's change.
fn replay_concurrent<R: Replica>(
    trace: &Trace,
    mut make: impl FnMut(usize) -> Result<R, String>,
) -> Result<(R, Vec<R::Change>), String> {
    let n = trace.txns.len();
    let mut replicas: Vec<R> = (0..trace.num_agents).map(&mut make).collect::<Result<_, _>>()?;
    let mut has: Vec<Vec<bool>> = vec![vec![false; n]; trace.num_agents];
    let mut changes: Vec<R::Change> = Vec::with_capacity(n);
    let mut missing: Vec<usize> = Vec::new();
    let mut stack: Vec<usize> = Vec::new();
    for (t, txn) in trace.txns.iter().enumerate() {
        let a = txn.agent;
        let have = &mut has[a];
        stack.extend(txn.parents.iter().copied());
        while let Some(x) = stack.pop() {
            if !have[x] {
                have[x] = true;
                missing.push(x);
                stack.extend(trace.txns[x].parents.iter().copied());
            }
        }
        missing.sort_unstable();
        if !missing.is_empty() {
            let batch: Vec<&R::Change> = missing.iter().map(|&x| &changes[x]).collect();
            replicas[a]
                .apply_many(&batch)
                .map_err(|e| format!("txn {t}: applying txns {missing:?} to agent {a}: {e}"))?;
        }
        missing.clear();
        let c = replicas[a].edit(t, txn).map_err(|e| format!("txn {t} (agent {a}): {e}"))?;
        changes.push(c);
        has[a][t] = true;
    }
    let mut target = replicas.swap_remove(0);
    drop(replicas);
    let rest: Vec<&R::Change> = changes.iter().enumerate().filter(|(x, _)| !has[0][*x]).map(|(_, c)| c).collect();
    target.apply_many(&rest).map_err(|e| format!("final merge: {e}"))?;
    drop(rest);
    Ok((target, changes))
}

// ---------------------------------------------------------------------------------------------------------------
// Shoal, in memory

const TEXT: &str = "text";

fn ts(i: usize) -> shoaldb::Timestamp {
    shoaldb::Timestamp::new(1_600_000_000_000 + i as u64, 0)
}

fn shoal_patch(ed: &mut shoaldb::DocEditor<'_>, p: &Patch) -> Result<(), shoaldb::DocError> {
    trace::shoal_patch(ed, TEXT, p)
}

fn shoal_text(doc: &shoaldb::Document) -> Result<String, String> {
    match doc.get(TEXT).map_err(|e| e.to_string())? {
        Some(serde_json::Value::String(s)) => Ok(s),
        None => Ok(String::new()),
        Some(other) => Err(format!("the text field holds {other}")),
    }
}

struct ShoalReplica {
    doc: shoaldb::Document,
    peer: shoaldb::PeerId,
    next: u64,
}

impl Replica for ShoalReplica {
    type Change = Option<shoaldb::Change>;

    fn apply(&mut self, change: &Self::Change) -> Result<(), String> {
        match change {
            None => Ok(()),
            Some(c) => match self.doc.apply(c).map_err(|e| e.to_string())? {
                shoaldb::Applied::Applied => Ok(()),
                other => Err(format!("Document::apply returned {other:?}")),
            },
        }
    }

    fn edit(&mut self, index: usize, txn: &Txn) -> Result<Self::Change, String> {
        let mut ed = self.doc.edit(self.peer, self.next, ts(index));
        for p in &txn.patches {
            shoal_patch(&mut ed, p).map_err(|e| e.to_string())?;
        }
        self.next = ed.next_counter();
        Ok(ed.finish())
    }
}

/// Peer ids look random (a Store draws a random u64), which matters for the encoded size (varints).
fn shoal_replica(agent: usize) -> Result<ShoalReplica, String> {
    Ok(ShoalReplica { doc: shoaldb::Document::new(), peer: shoal_peer(agent), next: 1 })
}

/// `SHOAL_BENCH_PEERS=asc` gives agents small increasing peer ids, `desc` small decreasing ones (diagnostics).
fn shoal_peer(agent: usize) -> shoaldb::PeerId {
    match std::env::var("SHOAL_BENCH_PEERS").as_deref() {
        Ok("asc") => shoaldb::PeerId(0x5000 + agent as u64),
        Ok("desc") => shoaldb::PeerId(0x5000 - agent as u64),
        _ => shoaldb::PeerId(0x9e37_79b9_7f4a_7c15 ^ agent as u64),
    }
}

/// Diagnostics for concurrent traces: replay Shoal and yrs replicas in lockstep and report the first transaction
/// after which a Shoal replica's text differs from the yrs replica's.
fn diagnose(trace: &Trace) {
    struct Pair(ShoalReplica, y::YReplica);
    fn texts(p: &Pair) -> (String, String) {
        use yrs::{GetString, Transact};
        (shoal_text(&p.0.doc).unwrap_or_default(), p.1.text.get_string(&p.1.doc.transact()))
    }
    fn check(p: &Pair, what: &str) -> Result<(), String> {
        let (a, b) = texts(p);
        if a != b {
            let at = first_difference(&a, &b).unwrap_or(0);
            let ctx = |s: &str| s.chars().skip(at.saturating_sub(30)).take(60).collect::<String>();
            return Err(format!(
                "after {what}: shoal and yrs differ at {at} (lengths {} / {}):\n  shoal …{:?}…\n  yrs   …{:?}…",
                a.chars().count(),
                b.chars().count(),
                ctx(&a),
                ctx(&b)
            ));
        }
        Ok(())
    }
    impl Replica for Pair {
        type Change = (Option<shoaldb::Change>, Vec<u8>);
        fn apply(&mut self, c: &Self::Change) -> Result<(), String> {
            self.0.apply(&c.0)?;
            self.1.apply(&c.1)?;
            check(self, "applying a remote change")
        }
        fn apply_many(&mut self, cs: &[&Self::Change]) -> Result<(), String> {
            for c in cs {
                self.0.apply(&c.0)?;
                self.1.apply(&c.1)?;
            }
            check(self, &format!("applying {} remote changes", cs.len()))
        }
        fn edit(&mut self, index: usize, txn: &Txn) -> Result<Self::Change, String> {
            let a = self.0.edit(index, txn)?;
            let b = self.1.edit(index, txn)?;
            let pp: Vec<(usize, usize, &str)> = txn.patches.iter().map(|p| (p.pos, p.del, p.ins.as_str())).collect();
            check(
                self,
                &format!("local txn {index} (agent {}, parents {:?}, patches {pp:?})", txn.agent, txn.parents),
            )?;
            Ok((a, b))
        }
    }
    match replay_concurrent(trace, |a| Ok(Pair(shoal_replica(a)?, y::replica(a)?))) {
        Ok(_) => eprintln!("diagnose {}: shoal and yrs replicas agree at every step", trace.name),
        Err(e) => eprintln!("diagnose {}: {e}", trace.name),
    }
}

fn run_shoal(trace: &Trace) -> Outcome {
    let finish = |doc: shoaldb::Document| -> Result<(String, u64), String> {
        let text = shoal_text(&doc)?;
        Ok((text, doc.encode().len() as u64))
    };
    if trace.concurrent {
        measure(|| replay_concurrent(trace, shoal_replica).map(|(r, _changes)| r.doc), finish)
    } else {
        measure(
            || {
                let mut r = shoal_replica(0)?;
                if !trace.start.is_empty() {
                    let mut ed = r.doc.edit(r.peer, r.next, ts(0));
                    ed.text_insert(TEXT, 0, &trace.start).map_err(|e| e.to_string())?;
                    r.next = ed.next_counter();
                    ed.finish();
                }
                for (i, txn) in trace.txns.iter().enumerate() {
                    r.edit(i, txn).map_err(|e| format!("txn {i}: {e}"))?;
                }
                Ok(r.doc)
            },
            finish,
        )
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Shoal, persisted (a Store on a temporary file)

const COLLECTION: &str = "docs";
const DOC_ID: &str = "trace";
const PATCHES_PER_COMMIT: usize = 100;

/// Bytes this process has passed to write(2) so far (Linux), for diagnostics.
fn written_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines().find_map(|l| l.strip_prefix("wchar: ")).and_then(|v| v.trim().parse().ok())
}

/// `shoal-persisted`: the commits survive a crash of the app (`Durability::Normal`, as `write_bench` measures);
/// `shoal-persisted-full`: each is also synced to disk before it returns (`Durability::Full`, the default), which
/// adds an fsync per commit.
fn run_shoal_persisted(trace: &Trace, durability: shoaldb::Durability) -> (Outcome, Option<String>) {
    let w0 = written_bytes();
    let r = run_shoal_persisted_inner(trace, durability);
    if let (Some(a), Some(b)) = (w0, written_bytes()) {
        eprintln!("    wrote {} B to files during the run", b - a);
    }
    r
}

fn run_shoal_persisted_inner(trace: &Trace, durability: shoaldb::Durability) -> (Outcome, Option<String>) {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            return (
                Outcome { ms: 0.0, peak_bytes: 0, encoded_bytes: 0, text: String::new(), note: Some(e.to_string()) },
                None,
            )
        }
    };
    let db = dir.path().join("trace.db");
    let err = |e: shoaldb::Error| e.to_string();
    let mut note = None;
    let outcome = if trace.concurrent {
        note = Some(format!(
            "concurrent trace: per-agent in-memory replicas produce each txn's Change, which are applied to the Store with \
             apply_changes, {PATCHES_PER_COMMIT} txns per transaction; ms includes both"
        ));
        measure(
            || {
                let store = shoaldb::Store::open_with(&db, shoaldb::Options { durability, ..Default::default() })
                    .map_err(err)?;
                // The in-memory replica that merged everything is dropped after the clock stops, as in `shoal`.
                let (merged, changes) = replay_concurrent(trace, shoal_replica)?;
                // The changes as a sync session hands them to the store: a batch at a time.
                let mut changes = changes.into_iter().flatten();
                let mut batch = Vec::with_capacity(PATCHES_PER_COMMIT);
                loop {
                    batch.clear();
                    batch.extend(changes.by_ref().take(PATCHES_PER_COMMIT).map(|change| shoaldb::DocChange {
                        collection: COLLECTION.into(),
                        doc_id: DOC_ID.into(),
                        change,
                        signature: None,
                    }));
                    if batch.is_empty() {
                        break;
                    }
                    let rep = store.replica().apply_changes(&batch).map_err(err)?;
                    if rep.applied != batch.len() {
                        return Err(format!("apply_changes: {rep:?}"));
                    }
                }
                Ok((store, merged))
            },
            |(store, merged)| {
                drop(merged);
                finish_store(store, &db)
            },
        )
    } else {
        measure(
            || {
                let store = shoaldb::Store::open_with(&db, shoaldb::Options { durability, ..Default::default() })
                    .map_err(err)?;
                replay_into_store(&store, trace, (COLLECTION, DOC_ID, TEXT), PATCHES_PER_COMMIT)?;
                Ok(store)
            },
            |store| finish_store(store, &db),
        )
    };
    drop(dir);
    (outcome, note)
}

fn finish_store(store: shoaldb::Store, db: &Path) -> Result<(String, u64), String> {
    let doc = store.get(COLLECTION, DOC_ID).map_err(|e| e.to_string())?.ok_or("document missing")?;
    let text = match doc.get(TEXT) {
        Some(serde_json::Value::String(s)) => s.clone(),
        None => String::new(),
        Some(other) => return Err(format!("the text field holds {other}")),
    };
    // Where the bytes go (diagnostics on stderr).
    match store.storage_stats() {
        Ok(stats) => eprintln!("    {stats:?}"),
        Err(e) => eprintln!("    (cannot read the store's statistics: {e})"),
    }
    drop(store); // closing the last connection checkpoints the WAL into the file
    let size = store_files_size(db);
    Ok((text, size))
}

// ---------------------------------------------------------------------------------------------------------------
// yrs

mod y {
    use super::*;
    use yrs::updates::decoder::Decode;
    use yrs::{GetString, ReadTxn, Text, Transact};

    pub struct YReplica {
        pub doc: yrs::Doc,
        pub text: yrs::TextRef,
    }

    pub fn replica(agent: usize) -> Result<YReplica, String> {
        let mut opts = yrs::Options::with_client_id(yrs::ClientID::new(1 + agent as u64));
        // All traces here are BMP-only (checked by the caller), so UTF-16 offsets equal code point offsets.
        opts.offset_kind = yrs::OffsetKind::Utf16;
        let doc = yrs::Doc::with_options(opts);
        let text = doc.get_or_insert_text("text");
        Ok(YReplica { doc, text })
    }

    fn patch(text: &yrs::TextRef, tx: &mut yrs::TransactionMut, p: &Patch) {
        if p.del > 0 {
            text.remove_range(tx, p.pos as u32, p.del as u32);
        }
        if !p.ins.is_empty() {
            text.insert(tx, p.pos as u32, &p.ins);
        }
    }

    impl Replica for YReplica {
        type Change = Vec<u8>;
        fn apply(&mut self, change: &Vec<u8>) -> Result<(), String> {
            let u = yrs::Update::decode_v1(change).map_err(|e| e.to_string())?;
            self.doc.transact_mut().apply_update(u).map_err(|e| e.to_string())
        }
        fn edit(&mut self, _index: usize, txn: &Txn) -> Result<Vec<u8>, String> {
            let mut tx = self.doc.transact_mut();
            for p in &txn.patches {
                patch(&self.text, &mut tx, p);
            }
            Ok(tx.encode_update_v1())
        }
    }

    pub fn run(trace: &Trace) -> Outcome {
        let finish = |r: YReplica| -> Result<(String, u64), String> {
            let tx = r.doc.transact();
            let text = r.text.get_string(&tx);
            let v1 = tx.encode_state_as_update_v1(&yrs::StateVector::default()).len();
            let v2 = tx.encode_state_as_update_v2(&yrs::StateVector::default()).len();
            eprintln!("[{}/yrs] encoded: v1 {v1} bytes, v2 {v2} bytes (row reports v1)", trace.name);
            Ok((text, v1 as u64))
        };
        if !trace.bmp_only {
            return Outcome {
                ms: 0.0,
                peak_bytes: 0,
                encoded_bytes: 0,
                text: String::new(),
                note: Some("trace has characters outside the BMP; yrs counts UTF-16 units (not converted here)".into()),
            };
        }
        if trace.concurrent {
            measure(|| replay_concurrent(trace, replica).map(|(r, _)| r), finish)
        } else {
            measure(
                || {
                    let r = replica(0)?;
                    if !trace.start.is_empty() {
                        r.text.insert(&mut r.doc.transact_mut(), 0, &trace.start);
                    }
                    for txn in &trace.txns {
                        let mut tx = r.doc.transact_mut();
                        for p in &txn.patches {
                            patch(&r.text, &mut tx, p);
                        }
                    }
                    Ok(r)
                },
                finish,
            )
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// automerge

mod am {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::{ReadDoc, ROOT};

    pub struct AmReplica {
        pub doc: automerge::AutoCommit,
        pub text: automerge::ObjId,
    }

    fn actor(agent: usize) -> automerge::ActorId {
        automerge::ActorId::from(format!("agent-{agent:04}").into_bytes())
    }

    fn patch(r: &mut AmReplica, p: &Patch) -> Result<(), String> {
        trace::automerge_patch(&mut r.doc, &r.text, p)
    }

    /// A document holding an empty text object, that every replica forks from (so they share the object).
    fn base() -> Result<AmReplica, String> {
        let mut doc =
            automerge::AutoCommit::new_with_encoding(automerge::TextEncoding::UnicodeCodePoint).with_actor(actor(9999));
        let text = doc.put_object(ROOT, "text", automerge::ObjType::Text).map_err(|e| e.to_string())?;
        doc.commit();
        Ok(AmReplica { doc, text })
    }

    impl Replica for AmReplica {
        type Change = Option<automerge::Change>;
        fn apply(&mut self, change: &Self::Change) -> Result<(), String> {
            match change {
                Some(c) => self.doc.apply_changes([c.clone()]).map_err(|e| e.to_string()),
                None => Ok(()),
            }
        }
        fn apply_many(&mut self, changes: &[&Self::Change]) -> Result<(), String> {
            let cs: Vec<automerge::Change> = changes.iter().filter_map(|c| (*c).clone()).collect();
            self.doc.apply_changes(cs).map_err(|e| e.to_string())
        }
        fn edit(&mut self, _index: usize, txn: &Txn) -> Result<Self::Change, String> {
            for p in &txn.patches {
                patch(self, p)?;
            }
            Ok(self.doc.commit().and_then(|_| self.doc.get_last_local_change()))
        }
    }

    pub fn run(trace: &Trace) -> Outcome {
        let finish = |mut r: AmReplica| -> Result<(String, u64), String> {
            let text = r.doc.text(&r.text).map_err(|e| e.to_string())?;
            Ok((text, r.doc.save().len() as u64))
        };
        if trace.concurrent {
            measure(
                || {
                    let mut b = base()?;
                    replay_concurrent(trace, |a| {
                        let doc = b.doc.fork().with_actor(actor(a));
                        Ok(AmReplica { doc, text: b.text.clone() })
                    })
                    .map(|(r, _)| r)
                },
                finish,
            )
        } else {
            measure(
                || {
                    let mut r = base()?;
                    r.doc.set_actor(actor(0));
                    if !trace.start.is_empty() {
                        let text = r.text.clone();
                        r.doc.splice_text(&text, 0, 0, &trace.start).map_err(|e| e.to_string())?;
                        r.doc.commit();
                    }
                    for txn in &trace.txns {
                        for p in &txn.patches {
                            patch(&mut r, p)?;
                        }
                        r.doc.commit();
                    }
                    Ok(r)
                },
                finish,
            )
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// loro

mod lo {
    use super::*;

    pub struct LoroReplica {
        pub doc: loro::LoroDoc,
        pub text: loro::LoroText,
    }

    pub fn replica(agent: usize) -> Result<LoroReplica, String> {
        let doc = loro::LoroDoc::new();
        doc.set_peer_id(1 + agent as u64).map_err(|e| e.to_string())?;
        let text = doc.get_text("text");
        Ok(LoroReplica { doc, text })
    }

    fn patch(text: &loro::LoroText, p: &Patch) -> Result<(), String> {
        trace::loro_patch(text, p)
    }

    impl Replica for LoroReplica {
        type Change = Vec<u8>;
        fn apply(&mut self, change: &Vec<u8>) -> Result<(), String> {
            let status = self.doc.import(change).map_err(|e| e.to_string())?;
            if status.pending.is_some() {
                return Err("import left changes pending".into());
            }
            Ok(())
        }
        fn edit(&mut self, _index: usize, txn: &Txn) -> Result<Vec<u8>, String> {
            let before = self.doc.oplog_vv();
            for p in &txn.patches {
                patch(&self.text, p)?;
            }
            self.doc.commit();
            self.doc.export(loro::ExportMode::updates(&before)).map_err(|e| e.to_string())
        }
    }

    pub fn run(trace: &Trace) -> Outcome {
        let finish = |r: LoroReplica| -> Result<(String, u64), String> {
            let text = r.text.to_string();
            let snap = r.doc.export(loro::ExportMode::Snapshot).map_err(|e| e.to_string())?;
            Ok((text, snap.len() as u64))
        };
        if trace.concurrent {
            measure(|| replay_concurrent(trace, replica).map(|(r, _)| r), finish)
        } else {
            measure(
                || {
                    let r = replica(0)?;
                    if !trace.start.is_empty() {
                        r.text.insert(0, &trace.start).map_err(|e| e.to_string())?;
                        r.doc.commit();
                    }
                    for txn in &trace.txns {
                        for p in &txn.patches {
                            patch(&r.text, p)?;
                        }
                        r.doc.commit();
                    }
                    Ok(r)
                },
                finish,
            )
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// diamond-types

mod dt {
    use super::*;
    use diamond_types::list::encoding::EncodeOptions;
    use diamond_types::list::{ListCRDT, OpLog};

    pub fn run(trace: &Trace) -> Outcome {
        if trace.concurrent {
            // The oplog takes operations at explicit parent versions; positions are relative to that version.
            measure(
                || {
                    let mut oplog = OpLog::new();
                    let agents: Vec<_> =
                        (0..trace.num_agents).map(|a| oplog.get_or_create_agent_id(&format!("agent{a}"))).collect();
                    // The version right after each txn.
                    let mut after: Vec<Vec<usize>> = Vec::with_capacity(trace.txns.len());
                    for txn in &trace.txns {
                        let mut frontier: Vec<usize> = match txn.parents.as_slice() {
                            [] => Vec::new(),
                            [p] => after[*p].clone(),
                            ps => {
                                let mut v: Vec<usize> = after[ps[0]].clone();
                                for p in &ps[1..] {
                                    v = oplog.version_union(&v, &after[*p]).to_vec();
                                }
                                v
                            }
                        };
                        let agent = agents[txn.agent];
                        for p in &txn.patches {
                            if p.del > 0 {
                                let v = oplog.add_delete_at(agent, &frontier, p.pos..p.pos + p.del);
                                frontier = vec![v];
                            }
                            if !p.ins.is_empty() {
                                let v = oplog.add_insert_at(agent, &frontier, p.pos, &p.ins);
                                frontier = vec![v];
                            }
                        }
                        after.push(frontier);
                    }
                    drop(after);
                    let branch = oplog.checkout_tip();
                    Ok((oplog, branch))
                },
                |(oplog, branch)| {
                    let text = branch.content().to_string();
                    Ok((text, oplog.encode(EncodeOptions::default()).len() as u64))
                },
            )
        } else {
            measure(
                || {
                    let mut doc = ListCRDT::new();
                    let agent = doc.get_or_create_agent_id("agent0");
                    if !trace.start.is_empty() {
                        doc.insert(agent, 0, &trace.start);
                    }
                    for txn in &trace.txns {
                        for p in &txn.patches {
                            if p.del > 0 {
                                doc.delete(agent, p.pos..p.pos + p.del);
                            }
                            if !p.ins.is_empty() {
                                doc.insert(agent, p.pos, &p.ins);
                            }
                        }
                    }
                    Ok(doc)
                },
                |doc| {
                    let text = doc.branch.content().to_string();
                    Ok((text, doc.oplog.encode(EncodeOptions::default()).len() as u64))
                },
            )
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------

/// The implementations measured, in the order they run.
type Runner = fn(&Trace) -> (Outcome, Option<String>);
const RUNNERS: [(&str, Runner); 7] = [
    ("shoal", |t| (run_shoal(t), None)),
    ("shoal-persisted", |t| run_shoal_persisted(t, shoaldb::Durability::Normal)),
    ("shoal-persisted-full", |t| run_shoal_persisted(t, shoaldb::Durability::Full)),
    ("yrs", |t| (y::run(t), None)),
    ("automerge", |t| (am::run(t), None)),
    ("loro", |t| (lo::run(t), None)),
    ("diamond-types", |t| (dt::run(t), None)),
];

const USAGE: &str = "usage: trace_bench <trace.json[.gz]>... [--out DIR] [--only shoal,yrs,...] [--diagnose]";

/// One measurement, in this process (`--run TRACE IMPL`): replays the trace through the implementation and prints
/// its row. Fails when the trace cannot be read, or when Shoal does not reproduce it exactly.
fn run_one(file: &Path, imp: &str, out_dir: Option<&Path>) -> bool {
    let Some((_, run)) = RUNNERS.iter().find(|(name, _)| *name == imp) else {
        eprintln!("no implementation {imp:?}");
        return false;
    };
    let trace = match load_trace(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cannot load trace: {e}");
            return false;
        }
    };
    let (outcome, info) = run(&trace);
    let reproduced = imp != "shoal" || outcome.text == trace.end;
    if let Some(info) = info {
        eprintln!("  [{}/{imp}] {info}", trace.name);
    }
    report(&trace, imp, outcome, out_dir);
    reproduced
}

/// Each measurement runs in a process of its own (this program again, with `--run`), so that none inherits the heap,
/// the allocator's state or the freed memory of the ones before it: a row does not depend on which traces or
/// implementations ran before it in the same invocation.
fn main() {
    let mut files = Vec::new();
    let mut out_dir: Option<PathBuf> = None;
    let mut only: Option<Vec<String>> = None;
    let mut diagnose_only = false;
    let mut one: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out_dir = args.next().map(PathBuf::from),
            "--diagnose" => diagnose_only = true,
            "--only" => only = args.next().map(|s| s.split(',').map(str::to_string).collect()),
            "--run" => one = args.next(),
            "-h" | "--help" => {
                eprintln!("{USAGE}");
                return;
            }
            _ => files.push(PathBuf::from(a)),
        }
    }
    if files.is_empty() {
        eprintln!("{USAGE}");
        std::process::exit(2);
    }
    if let Some(imp) = one {
        let ok = files.len() == 1 && run_one(&files[0], &imp, out_dir.as_deref());
        std::process::exit(if ok { 0 } else { 1 });
    }
    let wanted = |imp: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == imp));
    let me = match std::env::current_exe() {
        Ok(me) => me,
        Err(e) => {
            eprintln!("cannot find this program to run each measurement: {e}");
            std::process::exit(2);
        }
    };
    let mut failed = false;
    for file in &files {
        let trace = match load_trace(file) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("cannot load trace: {e}");
                failed = true;
                continue;
            }
        };
        eprintln!(
            "trace {}: {} txns, {} patches, {}, {} agent(s), final {} chars",
            trace.name,
            trace.txns.len(),
            trace.total_patches,
            if trace.concurrent { "concurrent" } else { "sequential" },
            trace.num_agents,
            trace.end.chars().count()
        );
        if diagnose_only {
            if trace.concurrent {
                diagnose(&trace);
            }
            continue;
        }
        drop(trace);
        for (imp, _) in RUNNERS {
            if !wanted(imp) {
                continue;
            }
            eprintln!("  {imp}…");
            let mut child = std::process::Command::new(&me);
            child.arg(file).arg("--run").arg(imp);
            if let Some(dir) = &out_dir {
                child.arg("--out").arg(dir);
            }
            // The child's row goes straight to our stdout, its diagnostics to our stderr.
            match child.status() {
                Ok(status) if status.success() => {}
                Ok(status) => {
                    eprintln!("  {imp} on {}: {status}", file.display());
                    failed = true;
                }
                Err(e) => {
                    eprintln!("cannot run {imp} on {}: {e}", file.display());
                    failed = true;
                }
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}
