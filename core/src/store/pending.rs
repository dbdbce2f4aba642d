//! Changes kept aside until the changes they depend on arrive (the `pending` table): bounded per author and in
//! total, shared fairly, and expired.
//!
//! One author (any device can make up author ids) cannot crowd out the others: it holds at most
//! [`MAX_PENDING_PER_AUTHOR`] rows, and when all [`MAX_PENDING_CHANGES`](super::MAX_PENDING_CHANGES) are taken, a
//! change of an author holding fewer rows than the largest holder takes the place of that holder's highest-counter
//! row. So an honest author can always keep as many changes pending as the largest other author. Rows older than
//! [`PENDING_MAX_AGE_MS`] are dropped. Nothing is lost for good by dropping a pending row: it is not part of the
//! store's summary, so peers send it again.

use crate::crdt::clock::PeerId;
use crate::error::Result;
use rusqlite::Connection;
use std::collections::{BTreeSet, HashMap};

/// The most changes of one author kept pending: a tenth of
/// [`MAX_PENDING_CHANGES`](super::MAX_PENDING_CHANGES), far more than sync ever leaves waiting (it sends each
/// document's changes in causal order), so that ten made-up authors are needed to fill the table — and even then
/// the fair share above keeps room for honest authors.
pub const MAX_PENDING_PER_AUTHOR: usize = 10_000;

/// How long a pending change is kept, in milliseconds (7 days): long enough for the device holding its
/// dependencies to come by again in an offline mesh; past it the change is dropped (and sent again by a peer that
/// has it, once its dependencies are here).
pub const PENDING_MAX_AGE_MS: u64 = 7 * 24 * 3600 * 1000;

/// The most expired pending changes dropped per [`Replica::apply_changes`](super::Replica::apply_changes) call, so
/// that expiry never makes one call slow; the rest go with the next calls.
pub const PENDING_EXPIRED_PER_CALL: usize = 1000;

/// The `pending` rows per author, kept in memory (loaded at open, updated with every insert and delete).
#[derive(Clone, Debug, Default)]
pub(crate) struct PendingCounts {
    by_author: HashMap<PeerId, usize>,
    /// (rows, author), to find the largest holder.
    order: BTreeSet<(usize, PeerId)>,
    total: usize,
}

impl PendingCounts {
    pub fn load(conn: &Connection) -> Result<PendingCounts> {
        let mut out = PendingCounts::default();
        let mut stmt = conn.prepare_cached("SELECT peer, count(*) FROM pending GROUP BY peer")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            out.add(PeerId(r.get::<_, i64>(0)? as u64), r.get::<_, i64>(1)? as usize);
        }
        Ok(out)
    }

    fn set(&mut self, author: PeerId, rows: usize) {
        let old = self.by_author.get(&author).copied().unwrap_or(0);
        self.order.remove(&(old, author));
        self.total = self.total - old + rows;
        if rows == 0 {
            self.by_author.remove(&author);
        } else {
            self.by_author.insert(author, rows);
            self.order.insert((rows, author));
        }
    }

    pub fn add(&mut self, author: PeerId, rows: usize) {
        self.set(author, self.of(author).saturating_add(rows));
    }

    pub fn remove(&mut self, author: PeerId, rows: usize) {
        self.set(author, self.of(author).saturating_sub(rows));
    }

    /// Rows of one author.
    pub fn of(&self, author: PeerId) -> usize {
        self.by_author.get(&author).copied().unwrap_or(0)
    }

    /// All rows.
    pub fn total(&self) -> usize {
        self.total
    }

    /// The author holding the most rows, and how many.
    pub fn largest(&self) -> Option<(PeerId, usize)> {
        self.order.last().map(|&(n, p)| (p, n))
    }
}
