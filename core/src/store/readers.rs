//! Connections that only read, so that reads never wait for the store's writer: SQLite in WAL mode lets a reader
//! see the last committed state while a write transaction (a sync catch-up being applied, say) is open on the
//! writer's connection.
//!
//! A small pool: a read takes an idle connection (or opens one), runs in one read transaction (one consistent
//! snapshot for all its statements) and gives it back. A store in memory has no file other connections can open:
//! its reads use the writer's connection, under the store's lock.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Mutex;

use rusqlite::Connection;

use super::encryption::{self, StoreKey};
use crate::util::lock;
use crate::Result;

/// Idle connections kept open (more may be open at once; the extra ones are closed after use).
const MAX_IDLE: usize = 4;

pub(crate) struct Readers {
    path: PathBuf,
    /// The key the file is encrypted with, if any (replaced by [`Readers::rekeyed`]), and how many times it was.
    key: Mutex<(u64, Option<StoreKey>)>,
    /// Idle connections, each with the number of re-keyings before it was opened.
    idle: Mutex<Vec<(u64, Connection)>>,
}

impl Readers {
    /// Readers of the store file at `path`; `None` for a store in memory.
    pub(crate) fn new(path: &FsPath, key: Option<StoreKey>) -> Option<Readers> {
        (!super::in_memory(path)).then(|| Readers {
            path: path.to_path_buf(),
            key: Mutex::new((0, key)),
            idle: Mutex::new(Vec::new()),
        })
    }

    fn open(&self) -> Result<(u64, Connection)> {
        let (generation, key) = lock(&self.key).clone();
        let conn = encryption::open_connection(&self.path, key.as_ref())?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.set_prepared_statement_cache_capacity(64);
        conn.pragma_update(None, "query_only", true)?;
        super::stable_query_plans(&conn);
        Ok((generation, conn))
    }

    /// Runs `f` in one read transaction on a reader's connection.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&Connection) -> Result<R>) -> Result<R> {
        self.read_one(|conn| {
            conn.execute_batch("BEGIN")?;
            let result = f(conn);
            let ended = conn.execute_batch(if result.is_ok() { "COMMIT" } else { "ROLLBACK" });
            let r = result?;
            ended?;
            Ok(r)
        })
    }

    /// Runs `f`, which runs a single statement (itself a consistent read), on a reader's connection.
    pub(crate) fn read_one<R>(&self, f: impl FnOnce(&Connection) -> Result<R>) -> Result<R> {
        let taken = lock(&self.idle).pop();
        let (generation, conn) = match taken {
            Some(c) => c,
            None => self.open()?,
        };
        let result = f(&conn);
        // A connection opened before the file was re-keyed (in use meanwhile) is closed, not kept.
        if conn.is_autocommit() && generation == lock(&self.key).0 {
            let mut idle = lock(&self.idle);
            if idle.len() < MAX_IDLE {
                idle.push((generation, conn));
            }
        }
        result
    }

    /// The file was re-encrypted under `key`: connections opened with the old key are closed.
    pub(crate) fn rekeyed(&self, key: StoreKey) {
        {
            let mut current = lock(&self.key);
            *current = (current.0 + 1, Some(key));
        }
        lock(&self.idle).clear();
    }
}
