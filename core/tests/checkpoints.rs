//! The WAL is checkpointed by a thread of the store's, off the writer's path (`store/checkpoints.rs`): a commit never
//! waits for the WAL to be copied into the database file, and the WAL stays bounded all the same.
//!
//! One test in this file: it counts the process's checkpointing threads.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use shoaldb::Store;

/// Bytes of one frame of the WAL: its header and a 4 KiB page.
const FRAME: u64 = 24 + 4096;

fn len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Frames the WAL file has room for (its length only grows until the WAL starts over, then stays).
fn wal_frames(path: &Path) -> u64 {
    len(&path.with_extension("db-wal")).saturating_sub(32) / FRAME
}

/// The process's threads named as the store names its checkpointing thread.
fn checkpointing_threads() -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "shoal-checkpt")
        .count()
}

/// A document of about 200 KB (its change, view and snapshot take about 150 pages).
fn put(store: &Store, i: usize) {
    let body: String = (0..200_000).map(|k| char::from(b'a' + ((i * 7 + k) % 26) as u8)).collect();
    store.upsert("blobs", json!({"_id": format!("d{i}"), "n": i, "body": body})).unwrap();
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_wal_is_checkpointed_off_the_writers_path_and_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = Store::open(&path).unwrap();

    // A few small writes: no thread, nothing copied into the file yet.
    for i in 0..3 {
        store.upsert("small", json!({"_id": format!("s{i}"), "n": i})).unwrap();
    }
    assert_eq!(checkpointing_threads(), 0, "a store that wrote little starts no thread");

    // Past 4,000 pages of WAL the writer stops; nothing commits after. Only the store's thread can now copy the WAL
    // into the database file (SQLite's automatic checkpoint would have done it inside the commit).
    let file_before = len(&path);
    let mut n = 0;
    while wal_frames(&path) < 4000 {
        put(&store, n);
        n += 1;
        assert!(n < 400, "the WAL did not grow");
    }
    let written = wal_frames(&path);
    assert!(written < 8000, "one write added too much to tell the two checkpoints apart: {written} frames");
    // (A thread names itself once it runs.)
    wait_until("the commit past 4,000 pages started the thread", || checkpointing_threads() == 1);
    wait_until("the thread copied the WAL into the file", || len(&path) > file_before + 8 * 1024 * 1024);

    // The WAL started over: writing on (more than twice 8,000 pages) keeps it bounded.
    let frames_before = wal_frames(&path);
    for _ in 0..250 {
        put(&store, n);
        n += 1;
    }
    let frames = wal_frames(&path);
    assert!(
        frames <= 10_000,
        "the WAL grew to {frames} frames (it had {frames_before}) while {n} documents were written"
    );

    // The last handle going stops the thread; everything written is there when the store opens again.
    drop(store);
    assert_eq!(checkpointing_threads(), 0, "the thread outlived its store");
    let store = Store::open(&path).unwrap();
    for i in [0, n / 2, n - 1] {
        let doc = store.get("blobs", &format!("d{i}")).unwrap().unwrap();
        assert_eq!(doc["n"], json!(i));
        assert_eq!(doc["body"].as_str().map(str::len), Some(200_000));
    }
    assert_eq!(store.list("blobs").unwrap().len(), n);
}
