//! Expiry: a per-collection time to live. A document of such a collection not modified for that long is removed
//! by [`Store::expire`] — an ordinary removal, which replicates like any other, so every device converges on it,
//! and which an edit made concurrently elsewhere meets by the usual rules.
//!
//! A document's age is measured from the time its latest change was made (`docs.modified`, the change's
//! hybrid-logical-clock time), the same on every device, so devices with the same policy expire it alike. A
//! document whose time is not known (written before this was recorded, or arrived as a merged state) is dated
//! by the first expiry that meets it: it lives at least its time to live from then.

use super::{check_collection, Store};
use crate::error::Result;
use rusqlite::{params, OptionalExtension};

/// The most documents one transaction of [`Store::expire`] removes (it takes as many as it needs).
const EXPIRE_BATCH: usize = 256;

/// A document [`Store::expire`] removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expired {
    /// Its collection.
    pub collection: String,
    /// Its id.
    pub id: String,
    /// When its latest change was made (ms since the Unix epoch), or when an earlier expiry first met it.
    pub modified_ms: u64,
}

impl Store {
    /// Remove the documents of `collection` once they have not been modified for `ttl_ms` milliseconds, at each
    /// [`Store::expire`]; `None` stops it. The policy is this device's: devices that share it expire documents
    /// alike (their age is the time of their latest change), and a removal replicates as any other.
    pub fn set_time_to_live(&self, collection: &str, ttl_ms: Option<u64>) -> Result<()> {
        check_collection(collection)?;
        let inner = self.lock();
        match ttl_ms {
            Some(ttl) => inner.conn.execute(
                "INSERT INTO expiry (collection, ttl_ms) VALUES (?1, ?2) ON CONFLICT (collection) DO UPDATE SET ttl_ms = ?2",
                params![collection, ttl.min(i64::MAX as u64) as i64],
            )?,
            None => inner.conn.execute("DELETE FROM expiry WHERE collection = ?1", params![collection])?,
        };
        Ok(())
    }

    /// The time to live of `collection`'s documents (ms), if it has one.
    pub fn time_to_live(&self, collection: &str) -> Result<Option<u64>> {
        let inner = self.lock();
        let ttl: Option<i64> = inner
            .conn
            .query_row("SELECT ttl_ms FROM expiry WHERE collection = ?1", params![collection], |r| r.get(0))
            .optional()?;
        Ok(ttl.map(|t| t as u64))
    }

    /// Remove every document whose collection has a time to live and which was not modified for that long (see
    /// [`Store::set_time_to_live`]), in transactions of up to 256 documents: what was removed, and when each was
    /// last modified. Observers see the removals as any other. Call it now and then (at start, hourly).
    pub fn expire(&self) -> Result<Vec<Expired>> {
        let policies: Vec<(String, i64)> = {
            let inner = self.lock();
            let mut stmt = inner.conn.prepare("SELECT collection, ttl_ms FROM expiry ORDER BY collection")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut out = Vec::new();
        for (collection, ttl) in policies {
            super::in_turns(|| {
                let batch = self.write(|t| {
                    let now = t.inner().sources.now_ms().min(i64::MAX as u64) as i64;
                    let conn = &t.inner().conn;
                    conn.prepare_cached("UPDATE docs SET modified = ?2 WHERE collection = ?1 AND modified IS NULL")?
                        .execute(params![collection, now])?;
                    let due: Vec<(String, i64)> = conn
                        .prepare_cached(
                            "SELECT id, modified FROM docs WHERE collection = ?1 AND modified < ?2 \
                             AND view IS NOT NULL ORDER BY modified, id LIMIT ?3",
                        )?
                        .query_map(params![collection, now.saturating_sub(ttl), EXPIRE_BATCH as i64], |r| {
                            Ok((r.get(0)?, r.get(1)?))
                        })?
                        .collect::<rusqlite::Result<_>>()?;
                    let mut removed = Vec::with_capacity(due.len());
                    for (id, modified) in due {
                        if t.remove(&collection, &id)? {
                            removed.push(Expired { collection: collection.clone(), id, modified_ms: modified as u64 });
                        }
                    }
                    Ok(removed)
                })?;
                let full = batch.len() == EXPIRE_BATCH;
                out.extend(batch);
                Ok(!full)
            })?;
        }
        if !out.is_empty() {
            log::info!("store {}: expired {} documents", self.shared.peer, out.len());
        }
        Ok(out)
    }
}
