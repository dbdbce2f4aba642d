//! Crash test: a child process writes transactions in a loop and is killed with SIGKILL at random moments. After
//! reopening, every transaction it reported committed is present, none is half-applied, and SQLite's integrity
//! check passes. A second child compacts the log after every transaction: a kill in the middle of a compaction (or
//! of writing a view that waited) loses nothing either, and a new device still catches up from the store. Rounds:
//! `SHOAL_CRASH_ROUNDS` (default 12).

#[path = "common/wires.rs"]
mod wires;

use serde_json::json;
use shoaldb::{CompactionPolicy, Store};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "SHOAL_CRASH_CHILD_DB";

/// The writer: each transaction i sets `x{i}` in doc `a{i%5}`, `y{i}` in doc `b{i%3}`, increments the counter
/// `sum.total` and appends i to `log.items`; then prints `committed i`.
fn child(path: &str) {
    let store = Store::open(path).unwrap();
    let start = store.get("c", "sum").unwrap().and_then(|d| d["total"].as_i64()).unwrap_or(0) as u64;
    let mut i = start;
    loop {
        store
            .write(|t| {
                t.upsert("c", json!({"_id": format!("a{}", i % 5), format!("x{i}"): i}))?;
                t.upsert("c", json!({"_id": format!("b{}", i % 3), format!("y{i}"): i}))?;
                if t.get("c", "sum")?.is_none() {
                    t.upsert("c", json!({"_id": "sum"}))?;
                }
                t.update("c", "sum", |d| Ok(d.increment("total", 1)?))?;
                if t.get("c", "log")?.is_none() {
                    t.upsert("c", json!({"_id": "log"}))?;
                }
                t.update("c", "log", |d| Ok(d.array_push("items", &[(i as i64).into()])?))?;
                Ok(())
            })
            .unwrap();
        println!("committed {i}");
        i += 1;
    }
}

fn check(path: &std::path::Path, committed: &[u64]) -> u64 {
    let store = Store::open(path).unwrap();
    store.check_integrity().unwrap();
    let total = store.get("c", "sum").unwrap().map(|d| d["total"].as_u64().unwrap()).unwrap_or(0);
    let log = store.get("c", "log").unwrap().map(|d| d["items"].as_array().unwrap().clone()).unwrap_or_default();
    assert_eq!(log.len() as u64, total, "the counter and the array were written in the same transactions");
    let docs = |prefix: &str, n: u64| -> Vec<serde_json::Value> {
        (0..n).map(|k| store.get("c", &format!("{prefix}{k}")).unwrap().unwrap_or(json!({}))).collect()
    };
    let (a_docs, b_docs) = (docs("a", 5), docs("b", 3));
    for i in 0..total {
        assert_eq!(log[i as usize], json!(i), "transactions are applied in order, none twice");
        assert_eq!(a_docs[(i % 5) as usize][format!("x{i}")], json!(i), "transaction {i} is half-applied (x missing)");
        assert_eq!(b_docs[(i % 3) as usize][format!("y{i}")], json!(i), "transaction {i} is half-applied (y missing)");
    }
    // Nothing beyond `total` is visible.
    let a = store.get("c", &format!("a{}", total % 5)).unwrap();
    assert!(a.is_none_or(|a| a.get(format!("x{total}")).is_none()), "a transaction past the counter is visible");
    if let Some(&last) = committed.last() {
        assert!(total > last, "transaction {last} was reported committed but is missing (total {total})");
    }
    total
}

#[test]
fn killed_writer_loses_nothing_it_reported_committed() {
    kill_rounds("killed_writer_loses_nothing_it_reported_committed", child, |_| {}, check);
}

/// The crash test `name`: in the child process (started by it, with the store's path in [`CHILD_ENV`]) run
/// `child`; otherwise prepare a new store with `setup` and run the child on it for `SHOAL_CRASH_ROUNDS` rounds,
/// each killed with SIGKILL at a random moment after its first commit. After each kill `check` gets what the child
/// reported committed and returns how many transactions the store holds, which must never go down.
fn kill_rounds(
    name: &str,
    child: fn(&str),
    setup: impl FnOnce(&std::path::Path),
    mut check: impl FnMut(&std::path::Path, &[u64]) -> u64,
) {
    if let Ok(path) = std::env::var(CHILD_ENV) {
        child(&path);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = &dir.path().join("crash.db");
    setup(db);
    let rounds: usize = std::env::var("SHOAL_CRASH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(12);
    let mut seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("crash test seed {seed}");
    let mut total = 0;
    for round in 0..rounds {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, db)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let kill_after = Duration::from_millis(20 + seed % 400);
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // The child's last line says what it was doing when killed.
        let reader = std::thread::spawn(move || {
            let mut last = String::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("committed ") {
                    if tx.send(n.parse::<u64>().unwrap()).is_err() {
                        break;
                    }
                }
                last = line;
            }
            last
        });
        // Wait for the first commit (the child has to start), then let it run a random while and kill it.
        let first = rx.recv_timeout(Duration::from_secs(60)).expect("child never committed");
        let started = Instant::now();
        let mut committed = vec![first];
        while started.elapsed() < kill_after {
            if let Ok(n) = rx.recv_timeout(Duration::from_millis(1)) {
                committed.push(n);
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let last = reader.join().unwrap();
        committed.extend(rx.try_iter());
        let new_total = check(db, &committed);
        assert!(new_total >= total);
        eprintln!(
            "round {round}: killed after {kill_after:?} (its last line: {last:?}), {} reported committed, {new_total} in \
             store",
            committed.len()
        );
        total = new_total;
    }
    assert!(total > 0);
}

const SMALL_DOCS: u64 = 20;
const LONG_TEXT: usize = 20_000;

/// The compacting writer: each transaction i sets `x{i}` in every document `s{j}` and types `"{i},"` at the start
/// of the long text of `long` (whose view then waits, being large), setting its `n` to i + 1; then prints
/// `committed i` and compacts the whole log.
fn compacting_child(path: &str) {
    let store = Store::open(path).unwrap();
    let mut i = store.get("c", "long").unwrap().and_then(|d| d["n"].as_u64()).unwrap_or(0);
    loop {
        store
            .write(|t| {
                for j in 0..SMALL_DOCS {
                    t.upsert("c", json!({"_id": format!("s{j}"), format!("x{i}"): i}))?;
                }
                t.update("c", "long", |d| {
                    d.text_insert("body", 0, &format!("{i},"))?;
                    Ok(d.set("n", (i + 1) as i64)?)
                })
            })
            .unwrap();
        println!("committed {i}");
        println!("compacting");
        store.compact(&CompactionPolicy::everything()).unwrap();
        println!("compacted");
        i += 1;
    }
}

/// After a kill: the store is intact, holds every transaction reported committed, whole and in order, and a new
/// device that syncs with it (states of the compacted documents, changes of the rest) ends with the same documents.
fn check_compacted(path: &std::path::Path, committed: &[u64]) -> u64 {
    let store = Store::open(path).unwrap();
    store.check_integrity().unwrap();
    let long = store.get("c", "long").unwrap().unwrap();
    let total = long["n"].as_u64().unwrap();
    let typed: String = (0..total).rev().map(|i| format!("{i},")).collect();
    assert_eq!(long["body"].as_str().unwrap(), format!("{typed}{}", "a".repeat(LONG_TEXT)));
    for j in 0..SMALL_DOCS {
        let doc = store.get("c", &format!("s{j}")).unwrap().unwrap_or(json!({}));
        for i in 0..total {
            assert_eq!(doc[format!("x{i}")], json!(i), "transaction {i} is half-applied");
        }
        assert!(doc.get(format!("x{total}")).is_none(), "a transaction past the counter is visible");
    }
    if let Some(&last) = committed.last() {
        assert!(total > last, "transaction {last} was reported committed but is missing (total {total})");
    }

    let dir = tempfile::tempdir().unwrap();
    let fresh = Store::open(dir.path().join("fresh.db")).unwrap();
    let mut engines = wires::engines(&[&store, &fresh], b"crash test secret");
    let wire = wires::connect(&mut engines, 0, 1);
    wires::settle(&mut engines, &[wire], None);
    let all = |s: &Store| s.find("c", &shoaldb::Query::all()).unwrap();
    assert_eq!(all(&fresh), all(&store), "a new device catches up on everything, compacted or not");
    total
}

#[test]
fn killed_compaction_loses_nothing_and_a_new_device_still_catches_up() {
    let setup = |db: &std::path::Path| {
        let store = Store::open(db).unwrap();
        store.upsert("c", json!({"_id": "long", "n": 0})).unwrap();
        store.update("c", "long", |d| Ok(d.text_insert("body", 0, &"a".repeat(LONG_TEXT))?)).unwrap();
    };
    kill_rounds(
        "killed_compaction_loses_nothing_and_a_new_device_still_catches_up",
        compacting_child,
        setup,
        check_compacted,
    );
}
