//! Checkpoints off the writer's path.
//!
//! In WAL mode a commit appends the pages it changed to the write-ahead log (WAL); a checkpoint copies them into the
//! database file, syncs both files, and lets the WAL start over. SQLite's automatic checkpoint runs inside the commit
//! that crosses its threshold: that commit — and every write waiting for the store's lock, a sync session's batch
//! or an app's edit — waits while up to 16 MiB are copied and synced (tens of ms on a desktop disk, more on a phone's
//! flash). Here the writer's connection has no automatic checkpoint; a commit that finds the WAL past
//! [`BACKGROUND_PAGES`] wakes a thread of the store's, which checkpoints on a connection of its own in SQLite's
//! `PASSIVE` mode: it neither waits for nor blocks the writer and the readers, and copies what no reader still
//! needs. The WAL starts over at the next write once all of it is copied.
//!
//! The thread is woken once per WAL. When writes come in bursts (a sync batch, an edit), its checkpoint ends while
//! the writer is idle and the WAL starts over at the next write, without any commit having waited. When the writer
//! goes on writing meanwhile, the WAL cannot start over (pages were added after the checkpoint began); should it
//! reach [`FOREGROUND_PAGES`] — that, or the thread is behind, or its checkpoint failed — the commit that finds it
//! checkpoints itself, as SQLite's automatic checkpoint would (copying only what the thread did not), and the WAL
//! starts over: it stays bounded as before. What the WAL holds is as durable either way: a checkpoint only moves
//! committed pages.
//!
//! The thread starts the first time it is needed (a store whose WAL never reaches 16 MiB never has one) and stops
//! when the store's last handle goes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::readers::Readers;
use crate::util::lock;

/// Pages in the WAL at which a commit wakes the checkpointing thread (16 MiB with 4 KiB pages). A checkpoint copies
/// each page once however often it was rewritten since the last one, so the WAL is let grow this far rather than
/// SQLite's default 1,000 pages: an index's hot pages and often-updated documents are copied once, not four times.
const BACKGROUND_PAGES: i32 = 4000;

/// Pages in the WAL at which a commit checkpoints itself (32 MiB with 4 KiB pages).
const FOREGROUND_PAGES: i32 = 2 * BACKGROUND_PAGES;

/// The name of the checkpointing thread (at most 15 bytes: Linux keeps no more).
const THREAD_NAME: &str = "shoal-checkpt";

/// A store's checkpointing: the hook the writer's connection calls after each commit, and the thread it wakes.
pub(crate) struct Checkpoints {
    readers: Arc<Readers>,
    wake: Arc<Wake>,
    /// The thread was woken since the WAL last started over: it is woken once per WAL. A checkpoint the thread makes
    /// while the writer goes on writing cannot let the WAL start over (pages were added meanwhile); the commit that
    /// finds it at [`FOREGROUND_PAGES`] then copies only what was added since, and the WAL starts over after it.
    woken: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The store (its file), named in log messages.
    name: String,
}

#[derive(Default)]
struct Wake {
    state: Mutex<WakeState>,
    cv: Condvar,
}

#[derive(Default)]
struct WakeState {
    wanted: bool,
    stop: bool,
}

impl Checkpoints {
    /// Checkpointing for the store file the `readers` open; `name` names the store in log messages.
    pub(crate) fn new(readers: Arc<Readers>, name: String) -> Arc<Checkpoints> {
        Arc::new(Checkpoints {
            readers,
            wake: Arc::default(),
            woken: AtomicBool::new(false),
            thread: Mutex::new(None),
            name,
        })
    }

    /// Installs the hook on the writer's connection, in place of SQLite's automatic checkpoint.
    pub(crate) fn install(this: &Arc<Checkpoints>, conn: &mut Connection) -> crate::Result<()> {
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let hook = this.clone();
        conn.wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, pages: std::ffi::c_int| {
            hook.committed(wal, pages);
            // An error here would fail the statement that committed, though its commit stands: never return one.
            Ok(())
        }))?;
        Ok(())
    }

    /// A commit left `pages` pages in the WAL.
    fn committed(&self, wal: &mut rusqlite::hooks::Wal, pages: i32) {
        if pages < BACKGROUND_PAGES {
            // The WAL started over (or has not grown far yet).
            self.woken.store(false, Ordering::Relaxed);
            return;
        }
        if pages >= FOREGROUND_PAGES {
            match wal.checkpoint_v2(rusqlite::wal::CheckpointMode::PASSIVE) {
                Ok((log, copied)) => {
                    log::info!("store {}: the WAL reached {pages} pages; checkpointed {copied} of {log}", self.name)
                }
                Err(e) => log::warn!("store {}: the WAL reached {pages} pages; checkpoint failed: {e}", self.name),
            }
            return;
        }
        if !self.woken.swap(true, Ordering::Relaxed) {
            self.wake_thread();
        }
    }

    fn wake_thread(&self) {
        {
            let mut thread = lock(&self.thread);
            if thread.is_none() {
                let (wake, readers, name) = (self.wake.clone(), self.readers.clone(), self.name.clone());
                match std::thread::Builder::new().name(THREAD_NAME.into()).spawn(move || run(&wake, &readers, &name)) {
                    Ok(handle) => *thread = Some(handle),
                    Err(e) => {
                        // The commit that reaches FOREGROUND_PAGES checkpoints instead.
                        log::warn!("store {}: cannot start the checkpointing thread: {e}", self.name);
                        return;
                    }
                }
            }
        }
        lock(&self.wake.state).wanted = true;
        self.wake.cv.notify_one();
    }

    /// Stops the thread (if it started) and waits for it: a checkpoint under way ends first.
    pub(crate) fn stop(&self) {
        lock(&self.wake.state).stop = true;
        self.wake.cv.notify_one();
        if let Some(handle) = lock(&self.thread).take() {
            if handle.join().is_err() {
                log::error!("store {}: the checkpointing thread panicked", self.name);
            }
        }
    }
}

/// How long [`checkpoint_whole`] waits for a checkpoint under way elsewhere to end.
const WHOLE_CHECKPOINT_WAIT: Duration = Duration::from_secs(10);

/// Copies the whole WAL into the database file and empties it (`PRAGMA wal_checkpoint(TRUNCATE)`: waits for the
/// file's writers and readers through the connection's busy handler). Only one checkpoint runs at a time, and
/// SQLite answers one started while another is under way — the store's thread, another handle on the file, another
/// process — with "busy" at once, without waiting: this waits for it to end and starts again, for up to
/// [`WHOLE_CHECKPOINT_WAIT`]. Returns whether the whole WAL was copied (not: a reader kept part of it in use).
pub(crate) fn checkpoint_whole(conn: &Connection) -> crate::Result<bool> {
    let deadline = Instant::now() + WHOLE_CHECKPOINT_WAIT;
    loop {
        let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        if busy == 0 {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            log::warn!("a checkpoint of the whole WAL stayed busy for {WHOLE_CHECKPOINT_WAIT:?}: part of it is in use");
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The thread: a checkpoint each time it is woken, until stopped.
fn run(wake: &Wake, readers: &Readers, name: &str) {
    loop {
        {
            let mut state = lock(&wake.state);
            while !state.wanted && !state.stop {
                state = wake.cv.wait(state).unwrap_or_else(PoisonError::into_inner);
            }
            if state.stop {
                return;
            }
            state.wanted = false;
        }
        let done = readers.read_one(|conn| {
            Ok(conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
            })?)
        });
        match done {
            Ok((busy, log, copied)) => {
                log::debug!("store {name}: checkpointed {copied} of the WAL's {log} pages (busy: {busy})")
            }
            // The commit that reaches FOREGROUND_PAGES checkpoints instead.
            Err(e) => log::warn!("store {name}: checkpoint failed: {e}"),
        }
    }
}
