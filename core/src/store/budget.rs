//! A storage budget: when the store's pages in use exceed it, [`Store::fit_budget`] evicts, least recently used
//! first, attachments' bytes (a document naming one fetches it again on demand) and documents outside the
//! device's subscriptions (as [`Store::evict`] does: dropped here, refused from sync until
//! [`Store::unevict`]), until they fit.
//!
//! "Used" is the later of when this device last read a thing and when it was last written: documents read with
//! `get`, `document` or `find`, and attachments opened, are noted in memory ([`Usage`], at most
//! [`MAX_NOTED_READS`] of each kind) and written down (`docs.used`, `blobs.used`) by the next `fit_budget` or when
//! the store's last handle is dropped; a document's last write is the time of its latest change (`docs.modified`),
//! an attachment's is when it was stored here. Reads noted but not written down are lost if the process dies: the
//! store then knows only the writes and the reads it wrote down.

use super::Store;
use crate::error::Result;
use crate::sync::Subscription;
use rusqlite::{params, Connection};
use std::collections::HashMap;

/// The most reads of documents, and of attachments, a store notes between two [`Store::fit_budget`]s; reads of
/// further ones are not noted (those things look older than they are).
pub const MAX_NOTED_READS: usize = 65_536;

/// The most rounds of eviction one [`Store::fit_budget`] makes: each evicts what its estimate says is enough,
/// then measures the file again.
const MAX_ROUNDS: usize = 3;

/// What [`Store::fit_budget`] keeps the store within.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageBudget {
    /// The most bytes the store's file may hold in pages in use (its size less its free pages).
    pub max_bytes: u64,
    /// Documents matching any of these are never evicted: the device's own subscriptions (sync would bring them
    /// back). Attachments are evicted whichever document names them.
    pub keep: Vec<Subscription>,
}

/// What was evicted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Evicted {
    /// An attachment's bytes; the documents naming it still do, and fetch it again on demand.
    Attachment {
        /// Its hash, 64 hex digits.
        hash: String,
    },
    /// A document, as [`Store::evict`] does.
    Document {
        /// Its collection.
        collection: String,
        /// Its id.
        id: String,
    },
}

/// One thing [`Store::fit_budget`] evicted, and why it was chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Eviction {
    /// What.
    pub what: Evicted,
    /// About how many bytes it took (an attachment's length; a document's view, snapshot and log).
    pub bytes: u64,
    /// When it was last used (read or written here, ms since the Unix epoch): nothing kept was used longer ago.
    pub last_used_ms: u64,
}

/// What [`Store::fit_budget`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BudgetReport {
    /// The pages in use before (bytes).
    pub bytes_before: u64,
    /// And after, with the freed pages returned to the system.
    pub bytes_after: u64,
    /// What was evicted, least recently used first.
    pub evicted: Vec<Eviction>,
}

/// Reads noted in memory until [`Store::fit_budget`] writes them down: when (ms) each document (by collection,
/// then id) and attachment (by hash) was last read here.
#[derive(Default)]
pub(crate) struct Usage {
    docs: HashMap<String, HashMap<String, u64>>,
    doc_count: usize,
    blobs: HashMap<[u8; 32], u64>,
}

impl Usage {
    /// Note that `collection`/`id` was read at `now_ms`.
    pub(crate) fn doc(&mut self, collection: &str, id: &str, now_ms: u64) {
        if let Some(ids) = self.docs.get_mut(collection) {
            if let Some(at) = ids.get_mut(id) {
                *at = now_ms;
                return;
            }
        }
        if self.doc_count >= MAX_NOTED_READS {
            return;
        }
        self.doc_count += 1;
        self.docs.entry(collection.to_string()).or_default().insert(id.to_string(), now_ms);
    }

    /// Note that the attachment `hash` was read at `now_ms`.
    pub(crate) fn blob(&mut self, hash: [u8; 32], now_ms: u64) {
        if self.blobs.len() < MAX_NOTED_READS || self.blobs.contains_key(&hash) {
            self.blobs.insert(hash, now_ms);
        }
    }

    /// Whether no read is noted.
    pub(crate) fn is_empty(&self) -> bool {
        self.doc_count == 0 && self.blobs.is_empty()
    }

    /// Write the noted reads down, in the caller's write transaction, and forget them.
    pub(crate) fn write_down(&mut self, conn: &Connection) -> Result<()> {
        let mut doc =
            conn.prepare_cached("UPDATE docs SET used = max(coalesce(used, 0), ?3) WHERE collection = ?1 AND id = ?2")?;
        for (collection, ids) in self.docs.drain() {
            for (id, at) in ids {
                doc.execute(params![collection, id, at.min(i64::MAX as u64) as i64])?;
            }
        }
        self.doc_count = 0;
        let mut blob = conn.prepare_cached("UPDATE blobs SET used = max(coalesce(used, 0), ?2) WHERE hash = ?1")?;
        for (hash, at) in self.blobs.drain() {
            blob.execute(params![&hash[..], at.min(i64::MAX as u64) as i64])?;
        }
        Ok(())
    }
}

/// A candidate for eviction.
struct Candidate {
    used: u64,
    bytes: u64,
    what: Evicted,
    /// An attachment's hash.
    hash: Option<Vec<u8>>,
}

impl Store {
    /// Note that a document was read (for [`Store::fit_budget`]'s least-recently-used order).
    pub(crate) fn note_doc_read(&self, collection: &str, id: &str) {
        let now = self.shared.usage_clock.now_ms();
        self.usage().doc(collection, id, now);
    }

    /// Note that an attachment was read.
    pub(crate) fn note_blob_read(&self, hash: [u8; 32]) {
        let now = self.shared.usage_clock.now_ms();
        self.usage().blob(hash, now);
    }

    pub(super) fn usage(&self) -> std::sync::MutexGuard<'_, Usage> {
        self.shared.usage.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keep the store within `budget`: while its pages in use exceed `budget.max_bytes`, evict the least recently
    /// used attachments' bytes and documents outside `budget.keep` (see the module docs of `store::budget`), then
    /// return the freed pages to the system. Returns what was evicted, least recently used first, and why (when
    /// each was last used). Evicting nothing when the store fits; when everything that may go is gone and it
    /// still does not fit, it stops there (the report's `bytes_after` says so). Linear in the store.
    pub fn fit_budget(&self, budget: &StorageBudget) -> Result<BudgetReport> {
        for filter in budget.keep.iter().filter_map(|s| s.filter.as_deref()) {
            crate::Query::filter(filter)?;
        }
        let interest = crate::sync::session::Interest::new(&budget.keep)
            .map_err(|e| crate::Error::Corrupt(format!("a subscription to keep: {e}")))?;
        let mut report = BudgetReport { bytes_before: self.bytes_in_use()?, ..BudgetReport::default() };
        let mut in_use = report.bytes_before;
        for _ in 0..MAX_ROUNDS {
            if in_use <= budget.max_bytes {
                break;
            }
            let round = self.evict_lru(in_use - budget.max_bytes, &interest)?;
            if round.is_empty() {
                break;
            }
            report.evicted.extend(round);
            if !super::in_memory(self.path()) {
                self.vacuum()?;
            }
            in_use = self.bytes_in_use()?;
        }
        report.bytes_after = in_use;
        if !report.evicted.is_empty() {
            log::info!(
                "store {}: evicted {} attachments and documents to fit {} bytes ({} → {} bytes in use)",
                self.shared.peer,
                report.evicted.len(),
                budget.max_bytes,
                report.bytes_before,
                report.bytes_after
            );
        }
        Ok(report)
    }

    /// The bytes of the file's pages in use.
    fn bytes_in_use(&self) -> Result<u64> {
        let inner = self.lock();
        let (page_size, pages, free) = super::storage::pages(&inner.conn)?;
        Ok(page_size * pages.saturating_sub(free))
    }

    /// One round: evict, least recently used first, until the estimated bytes freed reach `excess` — in
    /// transactions of at most [`EVICTIONS_PER_TRANSACTION`], the app's writes let in between (see
    /// [`Store::in_steps`]). A candidate used (read or written) since the round chose it is left.
    fn evict_lru(&self, excess: u64, keep: &crate::sync::session::Interest) -> Result<Vec<Eviction>> {
        let candidates = self.candidates(keep)?;
        self.evict_candidates(candidates, excess)
    }

    /// What may be evicted, least recently used first (the largest first among things used at the same time).
    /// The uses noted in memory are written down first (one short transaction); the scan of every attachment and
    /// document then runs on a reader's connection, so the app's writes go on meanwhile (a store in memory scans
    /// under its lock).
    fn candidates(&self, keep: &crate::sync::session::Interest) -> Result<Vec<Candidate>> {
        let mut usage = std::mem::take(&mut *self.usage());
        if !usage.is_empty() {
            self.lock().immediate(|conn| usage.write_down(conn))?;
        }
        // Subscriptions with filters are matched against the views: stale ones are written first.
        let mut candidates = self.read_views(None, |conn| {
            let mut candidates = attachments(conn)?;
            candidates.extend(documents(conn, keep)?);
            Ok(candidates)
        })?;
        candidates.sort_by(|a, b| a.used.cmp(&b.used).then(a.bytes.cmp(&b.bytes).reverse()));
        Ok(candidates)
    }

    /// Evict `candidates` in their order until the bytes freed reach `excess`, leaving those used since.
    fn evict_candidates(&self, candidates: Vec<Candidate>, excess: u64) -> Result<Vec<Eviction>> {
        let (mut freed, mut out) = (0u64, Vec::new());
        let mut rest = candidates.into_iter().peekable();
        super::in_turns(|| {
            let mut usage = std::mem::take(&mut *self.usage());
            let (evicted, _) = self.transact(|txn| {
                usage.write_down(&txn.inner().conn)?;
                let mut evicted = Vec::new();
                while evicted.len() < EVICTIONS_PER_TRANSACTION && freed < excess {
                    let Some(c) = rest.next() else { break };
                    if last_used(&txn.inner().conn, &c)? != Some(c.used) {
                        continue;
                    }
                    match (&c.what, &c.hash) {
                        (_, Some(hash)) => {
                            let conn = &txn.inner().conn;
                            conn.prepare_cached("DELETE FROM blob_chunks WHERE hash = ?1")?.execute(params![hash])?;
                            conn.prepare_cached("DELETE FROM blobs WHERE hash = ?1")?.execute(params![hash])?;
                            conn.prepare_cached("DELETE FROM gc_marks WHERE hash = ?1")?.execute(params![hash])?;
                        }
                        (Evicted::Document { collection, id }, None) => {
                            txn.evict(collection, id)?;
                        }
                        (Evicted::Attachment { .. }, None) => continue,
                    }
                    freed += c.bytes;
                    evicted.push(Eviction { what: c.what, bytes: c.bytes, last_used_ms: c.used });
                }
                Ok(evicted)
            })?;
            out.extend(evicted);
            Ok(freed >= excess || rest.peek().is_none())
        })?;
        Ok(out)
    }
}

/// The most attachments and documents one transaction of [`Store::fit_budget`] evicts.
const EVICTIONS_PER_TRANSACTION: usize = 64;

/// When `c` was last used, as its candidate row reads it now (`None` once it is gone).
fn last_used(conn: &Connection, c: &Candidate) -> Result<Option<u64>> {
    use rusqlite::OptionalExtension;
    let used: Option<i64> = match (&c.what, &c.hash) {
        (_, Some(hash)) => conn
            .prepare_cached("SELECT coalesce(used, 0) FROM blobs WHERE hash = ?1")?
            .query_row(params![hash], |r| r.get(0))
            .optional()?,
        (Evicted::Document { collection, id }, None) => conn
            .prepare_cached(
                "SELECT max(coalesce(used, 0), coalesce(modified, 0)) FROM docs WHERE collection = ?1 AND id = ?2",
            )?
            .query_row(params![collection, id], |r| r.get(0))
            .optional()?,
        (Evicted::Attachment { .. }, None) => None,
    };
    Ok(used.map(|u| u.max(0) as u64))
}

/// Every attachment stored here, with its size and last use.
fn attachments(conn: &Connection) -> Result<Vec<Candidate>> {
    let mut stmt = conn.prepare("SELECT hash, len, coalesce(used, 0) FROM blobs")?;
    let rows = stmt.query_map([], |r| {
        let hash: Vec<u8> = r.get(0)?;
        Ok(Candidate {
            used: r.get::<_, i64>(2)?.max(0) as u64,
            bytes: r.get::<_, i64>(1)?.max(0) as u64,
            what: Evicted::Attachment { hash: crate::util::hex(&hash) },
            hash: Some(hash),
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Every document here that `keep` does not match, with its size and last use.
fn documents(conn: &Connection, keep: &crate::sync::session::Interest) -> Result<Vec<Candidate>> {
    let mut stmt = conn.prepare(
        "SELECT d.doc, d.collection, d.id, d.view, d.parts, max(coalesce(d.used, 0), coalesce(d.modified, 0)), \
         coalesce(length(CAST(d.view AS BLOB)), 0) \
         + coalesce((SELECT sum(length(p.json)) FROM view_parts p WHERE p.doc = d.doc), 0) \
         + coalesce((SELECT sum(length(s.state)) FROM snapshots s WHERE s.doc = d.doc), 0) \
         + coalesce((SELECT sum(length(c.body)) FROM changes c WHERE c.doc = d.doc), 0) \
         + coalesce((SELECT length(f.summary) FROM folded f WHERE f.doc = d.doc), 0) \
         FROM docs d",
    )?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let collection: String = r.get(1)?;
        let kept = if keep.wants_all_of(&collection) {
            true
        } else if !keep.covers_collection(&collection) {
            false
        } else {
            match r.get_ref(3)? {
                rusqlite::types::ValueRef::Null => keep.matches(&collection, None),
                _ => match super::docs::row_view(
                    conn,
                    r,
                    [0, 3, 4],
                    &format!("{collection}/{}", r.get::<_, String>(2)?),
                )? {
                    Some(view) => keep.matches(&collection, Some(&view)),
                    // Quarantined (its view cannot be read): kept, nothing being known of it.
                    None => true,
                },
            }
        };
        if kept {
            continue;
        }
        out.push(Candidate {
            used: r.get::<_, i64>(5)?.max(0) as u64,
            bytes: r.get::<_, i64>(6)?.max(0) as u64,
            what: Evicted::Document { collection, id: r.get(2)? },
            hash: None,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::sources::Sources;
    use serde_json::json;

    /// A candidate read (or written) after the round chose it is left: it is not the least recently used any more.
    #[test]
    fn a_candidate_used_since_it_was_chosen_is_left() {
        let now = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1_000));
        let clock = now.clone();
        let sources = Sources::seeded(3).with_clock(move || clock.load(std::sync::atomic::Ordering::SeqCst));
        let store = Store::open_with(":memory:", crate::Options { sources, ..Default::default() }).unwrap();
        for id in ["a", "b", "c", "d"] {
            store.upsert("relayed", json!({"_id": id})).unwrap();
        }
        let keep = crate::sync::session::Interest::new(&[]).unwrap();
        let candidates = store.candidates(&keep).unwrap();
        assert_eq!(candidates.len(), 4);
        now.store(5_000, std::sync::atomic::Ordering::SeqCst);
        assert!(store.get("relayed", "b").unwrap().is_some());
        store.upsert("relayed", json!({"_id": "c", "n": 1})).unwrap();
        let evicted = store.evict_candidates(candidates, u64::MAX).unwrap();
        let ids: Vec<String> = evicted
            .iter()
            .filter_map(|e| match &e.what {
                Evicted::Document { id, .. } => Some(id.clone()),
                Evicted::Attachment { .. } => None,
            })
            .collect();
        assert_eq!(ids, ["a", "d"]);
        assert!(store.get("relayed", "b").unwrap().is_some() && store.get("relayed", "c").unwrap().is_some());
    }
}
