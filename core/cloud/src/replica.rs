//! [`PgReplica`]: the replica seam on PostgreSQL.
//!
//! The change log is a table of changes as received (the bytes their authors signed), with what is held of each
//! author kept as a range set per author, so that "summary in, missing changes out" is a range scan per author.
//! Each document's merged state is its CRDT encoded exactly as a phone encodes it, next to a JSONB view for
//! queries. Applying a batch is one transaction: the documents and authors it touches are locked (advisory locks,
//! always in the same order, so relays applying batches at once neither deadlock nor interleave), each change is
//! judged as a phone's store judges it — a duplicate, an equivocation (kept as evidence), waiting for its
//! dependencies, refused by the author's permissions, or applied with the CRDT code of `shoaldb` — and everything
//! is written before one commit, which also tells the other relays (`NOTIFY`).

use crate::digests::DigestCache;
use crate::jsonb::jsonb_safe;
use crate::offruntime::OffRuntime;
use crate::pg::{Manager, Tx};
use crate::schema;
use crate::CloudError;
use serde_json::Value as Json;
use shoaldb::crdt::change::Change;
use shoaldb::security::certificate::ReadRules;
use shoaldb::security::{ChangeCheck, ChangeSignature};
use shoaldb::store::judge::{self, DocKey, Judged, KeptAside, Ledger, LoggedChange, LoggedEncoding, PendingChange};
use shoaldb::store::{
    attachment_hashes, check_collection, check_doc_id, ranges_digest, AuthorDigest, LogEntry, RangeSet,
    CHANGE_HASH_BYTES, CHUNK_SIZE, MAX_ATTACHMENT_READ_CHECKS, MAX_EQUIVOCATION_RECORDS, PENDING_EXPIRED_PER_CALL,
    PENDING_MAX_AGE_MS,
};
use shoaldb::{
    ApplyReport, AttestedState, DocChange, DocState, Document, Error, PeerId, Replica, Result, Summary, VersionVector,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

mod attested;
mod compaction;
pub use compaction::RosterAcks;
mod states;

/// The pool of connections a replica draws from.
type Pool = r2d2::Pool<Manager>;

/// The channel on which a relay announces its commits to the others (the payload is the last change's `seq`).
pub const CHANGES_CHANNEL: &str = "shoal_changes";

/// How many log rows one round trip reads while collecting changes a peer lacks.
const LOG_PAGE: i64 = 512;

/// How many counter ranges (of one author each) one statement looks up while collecting changes a peer lacks
/// ([`Replica::log_missing`]), and how many rows of each it reads at first ([`LOG_PAGE`] at a time after that):
/// a peer lacking a few changes of many authors costs a statement per this many authors, not two per author.
const LOG_RANGES_PER_STATEMENT: usize = 64;
const LOG_FIRST_PAGE: i64 = 32;

/// The columns of a log row as [`entry`] reads them.
macro_rules! entry_columns {
    () => {
        "c.seq, c.doc, d.collection, d.doc_id, c.author, c.start_ctr, c.end_ctr, c.body, c.sig, d.version"
    };
}

/// The parts of a statement that take the rows of `gone` (changes kept aside, just deleted: `author`) off the
/// counts of schema migration 4.
macro_rules! pending_uncounted {
    () => {
        "counts AS (SELECT author, count(*) AS k FROM gone GROUP BY author), \
         last AS (DELETE FROM pending_authors p USING counts c WHERE p.author = c.author AND p.n <= c.k), \
         fewer AS (UPDATE pending_authors p SET n = p.n - c.k FROM counts c WHERE p.author = c.author AND p.n > c.k), \
         total AS (UPDATE pending_total SET n = n - (SELECT count(*) FROM gone))"
    };
}

/// The most log rows a summary refresh reads to bring the summary up to date ([`PgReplica::summary`]); when more
/// were written since the last read, the summary is read whole instead (one row per author).
const SUMMARY_CATCH_UP_ROWS: i64 = 4096;

/// What is held of each author a batch looked at: its ranges, and whether the batch changed them.
type AuthorRanges = BTreeMap<PeerId, (RangeSet, bool)>;

/// A range set as `held` and `folded_held` keep it (postcard).
fn held_ranges(bytes: &[u8]) -> Result<RangeSet> {
    postcard::from_bytes(bytes).map_err(|e| Error::Corrupt(format!("held ranges: {e}")))
}

/// A PostgreSQL failure, as the replica seam reports it: with its causes (a bare `db error` says nothing).
fn pg(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::Backend(crate::describe(&*e.into()).into())
}

/// A [`Replica`] kept in PostgreSQL. Cheap to clone (clones share the pool); any number of them, in any number of
/// processes, may work on one database at once.
#[derive(Clone)]
pub struct PgReplica {
    pool: Arc<OffRuntime<Pool>>,
    peer: PeerId,
    /// The summary as last read, kept up to date by this process's own commits, and brought up to date from the
    /// log after a notice of another's ([`PgReplica::changed`]): every link asks for it on every round of sending.
    summary: Arc<Mutex<SummaryCache>>,
    /// The per-author digests' bucket hashes computed so far ([`Replica::author_digests`]).
    digests: Arc<DigestCache>,
}

/// See [`PgReplica::summary`]. What the cache holds is always part of what the database holds (never more): it is
/// read from the database, and grows only by what commits added.
#[derive(Default)]
struct SummaryCache {
    /// Bumped by every commit of this process and every notice of another's, so that a read that started before
    /// one does not pass for up to date.
    epoch: u64,
    summary: Option<Summary>,
    /// What of `summary` is held only folded into documents' states (merged from devices that compacted: see
    /// [`crate::replica::states`]), with no log row.
    folded: Summary,
    /// Another process may have committed since the summary was read ([`PgReplica::changed`]).
    stale: bool,
    /// Every log row written by a transaction older than this one (PostgreSQL's `xid8`) is in `summary`: the
    /// oldest transaction still running when it was read. Rows of this transaction and later ones are read to
    /// bring a stale summary up to date.
    complete_below: i64,
}
impl std::fmt::Debug for PgReplica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgReplica").field("peer", &self.peer).field("pool", &self.pool.get().map(Pool::state)).finish()
    }
}

impl PgReplica {
    /// Connect to the PostgreSQL database at `url` (a libpq connection string or URL, e.g.
    /// `postgres://shoal@db.internal/shoal`) with a pool of at most `connections`, and migrate its schema
    /// ([`schema::migrate`]).
    ///
    /// # Errors
    /// [`CloudError::Config`] for an unreadable URL, [`CloudError::Pool`] when PostgreSQL cannot be reached,
    /// [`CloudError::SchemaTooNew`] when a newer relay migrated the database.
    pub fn connect(url: &str, connections: u32) -> Result<PgReplica, CloudError> {
        let config: postgres::Config = url.parse().map_err(|e| CloudError::Config(format!("{url:?}: {e}")))?;
        let pool = r2d2::Pool::builder().max_size(connections.max(1)).build(Manager::new(config))?;
        schema::migrate(pool.get()?.client())?;
        let mut id = [0u8; 8];
        getrandom(&mut id)?;
        Ok(PgReplica {
            pool: Arc::new(OffRuntime::new(pool)),
            peer: PeerId(u64::from_le_bytes(id)),
            summary: Arc::default(),
            digests: Arc::default(),
        })
    }

    /// A connection from the pool (with its prepared statements).
    fn client(&self) -> Result<r2d2::PooledConnection<Manager>> {
        // The pool is taken out only when the last handle drops.
        self.pool.get().ok_or_else(|| pg("the replica is closed"))?.get().map_err(pg)
    }

    /// Another process committed changes to the database (a relay's follower saw its `NOTIFY`): bring the summary
    /// up to date next time it is asked for (reading the log rows written since it was read).
    pub fn changed(&self) {
        let mut cache = shoaldb::util::lock(&self.summary);
        cache.epoch += 1;
        cache.stale = true;
    }

    /// This process committed `held`, the whole ranges now held of the authors a batch changed (read under their
    /// locks), and `folded`, those held only folded into states: the cached summary takes them in, and a read
    /// under way does not pass for up to date.
    fn committed(&self, held: &AuthorRanges, folded: &AuthorRanges, added: &[(PeerId, u64)]) {
        for &(author, start) in added {
            self.digests.changed(author, start);
        }
        let mut cache = shoaldb::util::lock(&self.summary);
        cache.epoch += 1;
        let take = |into: &mut Summary, from: &AuthorRanges| {
            for (author, (ranges, _)) in from.iter().filter(|(_, (_, changed))| *changed) {
                for &(s, e) in ranges.ranges() {
                    into.insert(*author, s, e);
                }
            }
        };
        let SummaryCache { summary, folded: cached_folded, .. } = &mut *cache;
        if let Some(summary) = summary {
            take(summary, held);
            take(cached_folded, folded);
        }
    }

    /// Read the summary and what of it is held only folded into states: whole (a row per author of `held` and
    /// of `folded_held`), or — given the cached ones, complete below transaction `since` — only the log rows and
    /// merges written since. Returns them and the oldest transaction still running when they were read (every
    /// row of an older one is in them).
    fn read_summary(&self, since: Option<(Summary, Summary, i64)>) -> Result<(Summary, Summary, i64)> {
        let mut client = self.client()?;
        if let Some((mut summary, mut folded, since)) = since {
            // One statement, so that the oldest running transaction is the one of the snapshot the rows come from
            // (in the order of the indexes on `xact`, which a generic plan then scans rather than the whole log).
            let rows = client
                .query(
                    "SELECT 0, 0::bigint, 0::bigint, 0::bigint, NULL::bytea, \
                     pg_snapshot_xmin(pg_current_snapshot())::text::bigint \
                     UNION ALL (SELECT 1, author, start_ctr, end_ctr, NULL::bytea, 0::bigint FROM changes \
                     WHERE xact >= $1::bigint::text::xid8 ORDER BY xact LIMIT $2) \
                     UNION ALL (SELECT 2, author, 0::bigint, 0::bigint, ranges, 0::bigint FROM merged \
                     WHERE xact >= $1::bigint::text::xid8 ORDER BY xact LIMIT $2)",
                    &[&since, &SUMMARY_CATCH_UP_ROWS],
                )
                .map_err(pg)?;
            let (mut below, mut logged, mut merges) = (None, 0, 0);
            for r in &rows {
                let author = PeerId(r.get::<_, i64>(1) as u64);
                match r.get::<_, i32>(0) {
                    0 => below = Some(r.get::<_, i64>(5)),
                    1 => {
                        logged += 1;
                        let (s, e) = (r.get::<_, i64>(2), r.get::<_, i64>(3));
                        summary.insert(author, s.max(0) as u64, e.max(0) as u64);
                        self.digests.changed(author, s.max(0) as u64);
                    }
                    _ => {
                        merges += 1;
                        for &(s, e) in held_ranges(r.get(4))?.ranges() {
                            summary.insert(author, s, e);
                            folded.insert(author, s, e);
                        }
                    }
                }
            }
            if let Some(below) = below.filter(|_| logged < SUMMARY_CATCH_UP_ROWS && merges < SUMMARY_CATCH_UP_ROWS) {
                return Ok((summary, folded, below));
            }
        }
        // The oldest running transaction first: whatever it did not see finished, the read after it sees.
        let below: i64 =
            client.query_one("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint", &[]).map_err(pg)?.get(0);
        let rows = client
            .query("SELECT author, ranges, false FROM held UNION ALL SELECT author, ranges, true FROM folded_held", &[])
            .map_err(pg)?;
        // What changed since the digests were computed is not known change by change.
        self.digests.clear();
        let (mut summary, mut folded) = (Summary::new(), Summary::new());
        for r in rows {
            let author = PeerId(r.get::<_, i64>(0) as u64);
            let into = if r.get::<_, bool>(2) { &mut folded } else { &mut summary };
            for &(s, e) in held_ranges(r.get(1))?.ranges() {
                into.insert(author, s, e);
            }
        }
        Ok((summary, folded, below))
    }

    /// `f` of the summary ([`Replica::summary`]) and of what of it is held only folded into documents' states:
    /// the cached ones (under the cache's lock, nothing copied) when they are up to date, else those brought up to
    /// date. Every round of sending asks, on every link.
    fn with_held<R>(&self, f: impl FnOnce(&Summary, &Summary) -> R) -> Result<R> {
        let (epoch, since) = {
            let cache = shoaldb::util::lock(&self.summary);
            match &cache.summary {
                Some(summary) if !cache.stale => return Ok(f(summary, &cache.folded)),
                Some(summary) => (cache.epoch, Some((summary.clone(), cache.folded.clone(), cache.complete_below))),
                None => (cache.epoch, None),
            }
        };
        let (summary, folded, below) = self.read_summary(since)?;
        let mut cache = shoaldb::util::lock(&self.summary);
        if cache.epoch == epoch {
            // Nothing happened meanwhile: up to date.
            cache.summary = Some(summary.clone());
            cache.folded = folded.clone();
            cache.complete_below = below;
            cache.stale = false;
        } else {
            // A commit or a notice came meanwhile: what was read joins what the cache gained since (both are part
            // of what the database holds), and the next call reads again from the older of the two points.
            match cache.summary.as_mut() {
                Some(kept) => kept.union_with(&summary),
                None => cache.summary = Some(summary.clone()),
            }
            cache.folded.union_with(&folded);
            cache.complete_below = cache.complete_below.max(below);
            cache.stale = true;
        }
        Ok(f(&summary, &folded))
    }

    /// Drop the changes kept aside for longer than [`PENDING_MAX_AGE_MS`] (7 days, as phones do), oldest first, in
    /// transactions of at most [`PENDING_EXPIRED_PER_CALL`] each, keeping the counts exact: a device that sends
    /// changes whose dependencies never come cannot hold its share of the table for good. Nothing is lost: they
    /// are not held, so a device that has them sends them again once their dependencies are here. Every relay
    /// calls it every [`crate::relay::EXPIRE_EVERY`]. Returns how many were dropped.
    pub fn expire_pending(&self) -> Result<usize> {
        let age_secs = PENDING_MAX_AGE_MS as f64 / 1000.0;
        let mut dropped = 0;
        loop {
            let mut client = self.client()?;
            let mut tx = client.transaction().map_err(pg)?;
            // The counts' lock first, as every statement that takes changes kept aside.
            tx.execute("SELECT n FROM pending_total FOR UPDATE", &[]).map_err(pg)?;
            let n: i64 = tx
                .query_one(
                    concat!(
                        "WITH gone AS (DELETE FROM pending WHERE (author, start_ctr) IN \
                         (SELECT author, start_ctr FROM pending WHERE received < now() - make_interval(secs => $1) \
                         ORDER BY received LIMIT $2) RETURNING author), ",
                        pending_uncounted!(),
                        " SELECT count(*) FROM gone"
                    ),
                    &[&age_secs, &(PENDING_EXPIRED_PER_CALL as i64)],
                )
                .map_err(pg)?
                .get(0);
            tx.commit().map_err(pg)?;
            dropped += n as usize;
            if (n as usize) < PENDING_EXPIRED_PER_CALL {
                break;
            }
        }
        if dropped > 0 {
            log::info!("dropped {dropped} changes kept aside for longer than {PENDING_MAX_AGE_MS} ms");
        }
        Ok(dropped)
    }

    /// The merged document `collection/id`, if this database holds it.
    pub fn document(&self, collection: &str, id: &str) -> Result<Option<Document>> {
        let row = self
            .client()?
            .query_opt("SELECT state FROM docs WHERE collection = $1 AND doc_id = $2", &[&collection, &id])
            .map_err(pg)?;
        row.map(|r| Document::decode(r.get(0)).map_err(Error::from)).transpose()
    }

    /// The revocation lists kept ([`Replica::keep_revocation_lists`]), encoded.
    pub fn revocation_lists(&self) -> Result<Vec<Vec<u8>>> {
        let rows = self.client()?.query("SELECT list FROM revocation_lists ORDER BY idx", &[]).map_err(pg)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// The equivocations recorded: (author, counter) of each, at most `max`.
    pub fn equivocations(&self, max: usize) -> Result<Vec<(PeerId, u64)>> {
        let rows = self
            .client()?
            .query("SELECT author, counter FROM equivocations ORDER BY author, counter LIMIT $1", &[&limit(max)])
            .map_err(pg)?;
        Ok(rows.iter().map(|r| (PeerId(r.get::<_, i64>(0) as u64), r.get::<_, i64>(1) as u64)).collect())
    }

    /// Apply a batch (see [`Replica::apply_changes`]), with `check` in certificate mode.
    fn apply(&self, changes: &[DocChange], check: Option<&dyn ChangeCheck>) -> Result<ApplyReport> {
        // A malformed change fails the whole call before anything is read or written.
        validate(changes)?;
        let mut reports = self.apply_together(&[changes], check)?;
        reports.pop().ok_or_else(|| Error::Corrupt("a batch applied gave no report".into()))
    }

    /// Apply valid batches one after the other in one transaction (see [`Replica::apply_batches`]): a report each.
    /// Nothing is written if any fails.
    fn apply_together(&self, batches: &[&[DocChange]], check: Option<&dyn ChangeCheck>) -> Result<Vec<ApplyReport>> {
        let changes = || batches.iter().flat_map(|b| b.iter());
        if changes().next().is_none() {
            return Ok(vec![ApplyReport::default(); batches.len()]);
        }
        let keys = || {
            changes().flat_map(|dc| {
                [
                    (1, lock_key(dc.collection.as_bytes(), dc.doc_id.as_bytes())),
                    (2, lock_key(&dc.change.peer.0.to_le_bytes(), b"")),
                ]
            })
        };
        match self.apply_under(batches, check, lock_all(keys())) {
            Err(e) if is_outside_locks(&e) => self.apply_under(batches, check, Locks::Database),
            other => other,
        }
    }

    /// [`PgReplica::apply_together`] under `locks`.
    fn apply_under(
        &self,
        batches: &[&[DocChange]],
        check: Option<&dyn ChangeCheck>,
        locks: Locks,
    ) -> Result<Vec<ApplyReport>> {
        let changes = || batches.iter().flat_map(|b| b.iter());
        let mut client = self.client()?;
        let mut tx = client.transaction().map_err(pg)?;
        locks.take(&mut tx)?;
        let mut batch = Batch::new(&mut tx, locks);
        let all: Vec<&DocChange> = changes().collect();
        batch.prefetch(&all)?;
        let mut reports = Vec::with_capacity(batches.len());
        for changes in batches {
            for dc in *changes {
                judge::receive(&mut batch, dc, check)?;
            }
            reports.push(std::mem::take(&mut batch.judged.report));
        }
        // (Written with the rest, the notice goes to the other relays when the transaction commits.)
        let wrote = batch.persist()?;
        let (held, folded) = (std::mem::take(&mut batch.held), std::mem::take(&mut batch.folded));
        let added: Vec<(PeerId, u64)> = batch.judged.added.keys().copied().collect();
        tx.commit().map_err(pg)?;
        log::debug!("applied {} batches of {} changes in all: {reports:?}", batches.len(), all.len());
        if wrote {
            self.committed(&held, &folded, &added);
        }
        Ok(reports)
    }
}

/// The most document and author locks one transaction takes. PostgreSQL's lock table is shared by every
/// connection and sized for `max_locks_per_transaction` (64 by default) per connection: a transaction taking a
/// lock per document and author of a batch naming thousands of them (a hostile device's, or many links' batches
/// applied together) would run out of it and make every other relay's transactions fail meanwhile.
const MAX_FINE_LOCKS: usize = 63;

/// The locks a transaction takes (see [`lock_all`]).
#[derive(Clone, Debug)]
enum Locks {
    /// The database-wide lock (space 0) shared, then these document (space 1) and author (space 2) locks
    /// (space, [`lock_key`]), sorted.
    Fine(Vec<(i32, i32)>),
    /// The database-wide lock alone, exclusively.
    Database,
}

impl Locks {
    /// Take them, in one statement, in one global order: a deadlock with another relay's transaction is
    /// impossible.
    fn take(&self, tx: &mut Tx<'_>) -> Result<()> {
        match self {
            Locks::Database => {
                tx.execute("SELECT pg_advisory_xact_lock(0, 0)", &[]).map_err(pg)?;
            }
            Locks::Fine(keys) => {
                let (spaces, lock_keys): (Vec<i32>, Vec<i32>) =
                    std::iter::once((0, 0)).chain(keys.iter().copied()).unzip();
                tx.execute(
                    "SELECT count(CASE WHEN s = 0 THEN pg_advisory_xact_lock_shared(s, k) \
                     ELSE pg_advisory_xact_lock(s, k) END) \
                     FROM (SELECT s, k FROM unnest($1::int[], $2::int[]) AS t(s, k) ORDER BY s, k) AS ordered",
                    &[&spaces, &lock_keys],
                )
                .map_err(pg)?;
            }
        }
        Ok(())
    }

    /// Whether a transaction holding these may read and write what is held of `author`.
    fn cover_author(&self, author: PeerId) -> bool {
        match self {
            Locks::Database => true,
            Locks::Fine(keys) => keys.binary_search(&(2, lock_key(&author.0.to_le_bytes(), b""))).is_ok(),
        }
    }
}

/// The locks of every document (space 1) and author (space 2) a transaction touches — `keys` are (space,
/// [`lock_key`]) — after the database-wide lock (space 0) shared. A transaction that would need more than
/// [`MAX_FINE_LOCKS`] takes the database-wide lock alone, exclusively: it waits for the transactions under way and
/// holds the others back until it commits (rare: a catch-up of many small documents at once).
fn lock_all(keys: impl Iterator<Item = (i32, i32)>) -> Locks {
    let mut keys: Vec<(i32, i32)> = keys.collect();
    keys.sort_unstable();
    keys.dedup();
    if keys.len() > MAX_FINE_LOCKS {
        log::debug!("a transaction of {} documents and authors locks the database", keys.len());
        return Locks::Database;
    }
    Locks::Fine(keys)
}

/// A batch met changes kept aside, now ready, of an author its locks do not cover: it is applied again under the
/// database-wide lock (what is held of an author is read and written whole, so it must not change meanwhile).
#[derive(Debug, thiserror::Error)]
#[error("changes kept aside of an author outside the transaction's locks")]
struct OutsideLocks;

fn is_outside_locks(e: &Error) -> bool {
    matches!(e, Error::Backend(b) if b.is::<OutsideLocks>())
}

/// Checks every change of a batch is well formed (a malformed one fails the batch before anything is read).
fn validate(changes: &[DocChange]) -> Result<()> {
    for dc in changes {
        check_collection(&dc.collection)?;
        check_doc_id(&dc.doc_id)?;
        dc.change.validate()?;
    }
    Ok(())
}

/// A 32-bit advisory lock key for a document or an author (a collision only serialises two unrelated batches).
fn lock_key(a: &[u8], b: &[u8]) -> i32 {
    let mut h = blake3::Hasher::new();
    h.update(&(a.len() as u64).to_le_bytes());
    h.update(a);
    h.update(b);
    let bytes = h.finalize();
    i32::from_le_bytes([bytes.as_bytes()[0], bytes.as_bytes()[1], bytes.as_bytes()[2], bytes.as_bytes()[3]])
}

/// Random bytes from the operating system.
fn getrandom(out: &mut [u8]) -> Result<(), CloudError> {
    ::getrandom::fill(out).map_err(|e| CloudError::Config(format!("no randomness: {e}")))
}

/// `max` as a SQL limit.
fn limit(max: usize) -> i64 {
    i64::try_from(max).unwrap_or(i64::MAX)
}

/// A document of a batch: its state and the changes the batch applied to it.
struct BatchDoc {
    doc: Document,
    new_changes: Vec<LoggedChange>,
    /// States the batch merged into it ([`states`]).
    merged: Option<states::MergedDoc>,
}

impl BatchDoc {
    fn new(doc: Document) -> BatchDoc {
        BatchDoc { doc, new_changes: Vec::new(), merged: None }
    }
}

/// One batch being applied, inside its transaction: the [`Ledger`] the shared rules of `shoaldb` judge it with.
struct Batch<'t, 'c> {
    tx: &'t mut Tx<'c>,
    docs: BTreeMap<DocKey, BatchDoc>,
    /// What is held of each author the batch looked at (loaded on first use; written back when changed).
    held: AuthorRanges,
    /// What of that is held only folded into documents' states (loaded with it; written back when changed).
    folded: AuthorRanges,
    /// The batch's documents that have changes kept aside (read once; a change kept aside adds its document).
    with_pending: BTreeSet<DocKey>,
    /// This transaction holds the lock on the count of changes kept aside ([`Batch::lock_pending`]).
    pending_locked: bool,
    /// The locks the transaction holds.
    locks: Locks,
    judged: Judged,
}

impl<'t, 'c> Batch<'t, 'c> {
    /// A batch in `tx`, which holds `locks`: those of what it touches.
    fn new(tx: &'t mut Tx<'c>, locks: Locks) -> Self {
        Batch {
            tx,
            docs: BTreeMap::new(),
            held: BTreeMap::new(),
            folded: BTreeMap::new(),
            with_pending: BTreeSet::new(),
            pending_locked: false,
            locks,
            judged: Judged::default(),
        }
    }

    /// Lock the count of the changes kept aside (once per transaction): every statement that counts, adds or takes
    /// changes kept aside runs after it, so that they are serialised across relays and the counts stay exact
    /// (schema migration 4).
    fn lock_pending(&mut self) -> Result<()> {
        if !self.pending_locked {
            self.tx.execute("SELECT n FROM pending_total FOR UPDATE", &[]).map_err(pg)?;
            self.pending_locked = true;
        }
        Ok(())
    }

    /// Read what judging the batch will ask about, in one statement rather than several per change: the
    /// documents' states (kind 0), which documents have changes kept aside (kind 1), and the authors' held ranges
    /// (kind 2) and those held only folded into states (kind 3).
    fn prefetch(&mut self, changes: &[&DocChange]) -> Result<()> {
        let mut keys: Vec<(&str, &str)> =
            changes.iter().map(|dc| (dc.collection.as_str(), dc.doc_id.as_str())).collect();
        keys.sort_unstable();
        keys.dedup();
        let (collections, ids): (Vec<&str>, Vec<&str>) = keys.iter().copied().unzip();
        let mut authors: Vec<i64> = changes.iter().map(|dc| dc.change.peer.0 as i64).collect();
        authors.sort_unstable();
        authors.dedup();
        let rows = self
            .tx
            .query(
                "SELECT 0, d.collection, d.doc_id, d.state, 0::bigint FROM docs d \
                 JOIN unnest($1::text[], $2::text[]) AS k(c, i) ON d.collection = k.c AND d.doc_id = k.i \
                 UNION ALL SELECT DISTINCT 1, p.collection, p.doc_id, NULL::bytea, 0::bigint FROM pending p \
                 JOIN unnest($1::text[], $2::text[]) AS k(c, i) ON p.collection = k.c AND p.doc_id = k.i \
                 UNION ALL SELECT 2, NULL::text, NULL::text, h.ranges, h.author FROM held h WHERE h.author = ANY($3) \
                 UNION ALL SELECT 3, NULL::text, NULL::text, f.ranges, f.author FROM folded_held f \
                 WHERE f.author = ANY($3)",
                &[&collections, &ids, &authors],
            )
            .map_err(pg)?;
        for r in rows {
            match r.get::<_, i32>(0) {
                0 => {
                    let doc = Document::decode(r.get(3))?;
                    self.docs.insert((r.get(1), r.get(2)), BatchDoc::new(doc));
                }
                1 => {
                    self.with_pending.insert((r.get(1), r.get(2)));
                }
                kind => {
                    let into = if kind == 2 { &mut self.held } else { &mut self.folded };
                    into.insert(PeerId(r.get::<_, i64>(4) as u64), (held_ranges(r.get(3))?, false));
                }
            }
        }
        for (c, i) in &keys {
            let key = (c.to_string(), i.to_string());
            self.docs.entry(key).or_insert_with(|| BatchDoc::new(Document::new()));
        }
        for a in authors {
            self.held.entry(PeerId(a as u64)).or_insert_with(|| (RangeSet::default(), false));
            self.folded.entry(PeerId(a as u64)).or_insert_with(|| (RangeSet::default(), false));
        }
        Ok(())
    }

    /// The ranges held of `author` (locked by the batch).
    fn ranges(&mut self, author: PeerId) -> Result<&mut (RangeSet, bool)> {
        self.load_ranges(author)?;
        self.held.get_mut(&author).ok_or_else(|| Error::Corrupt("held ranges vanished".into()))
    }

    /// The ranges of `author` held only folded into documents' states (locked by the batch).
    fn folded_ranges(&mut self, author: PeerId) -> Result<&mut (RangeSet, bool)> {
        self.load_ranges(author)?;
        self.folded.get_mut(&author).ok_or_else(|| Error::Corrupt("folded ranges vanished".into()))
    }

    /// Read what is held of `author`, and what of it only folded, unless the batch has it.
    fn load_ranges(&mut self, author: PeerId) -> Result<()> {
        if self.held.contains_key(&author) && self.folded.contains_key(&author) {
            return Ok(());
        }
        let rows = self
            .tx
            .query(
                "SELECT ranges, false FROM held WHERE author = $1 \
                 UNION ALL SELECT ranges, true FROM folded_held WHERE author = $1",
                &[&(author.0 as i64)],
            )
            .map_err(pg)?;
        let (mut held, mut folded) = (RangeSet::default(), RangeSet::default());
        for r in rows {
            *(if r.get::<_, bool>(1) { &mut folded } else { &mut held }) = held_ranges(r.get(0))?;
        }
        self.held.entry(author).or_insert((held, false));
        self.folded.entry(author).or_insert((folded, false));
        Ok(())
    }

    /// Write the batch, in two statements whatever its size: each touched document's state and view; then its
    /// new changes in the log, the attachments it names, the authors' ranges and the notice to the other relays.
    /// Returns whether anything was written.
    fn persist(&mut self) -> Result<bool> {
        let written: Vec<(&DocKey, &BatchDoc)> =
            self.docs.iter().filter(|(_, d)| !d.new_changes.is_empty() || d.merged.is_some()).collect();
        if written.is_empty() {
            return Ok(false);
        }
        let (mut collections, mut ids, mut states, mut views) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut versions = Vec::new();
        let mut refs: Vec<(usize, [u8; 32])> = Vec::new();
        for (n, ((collection, id), d)) in written.iter().enumerate() {
            // Rendered once: scanned for attachment tokens (hex: untouched by `jsonb_safe`), then parsed as JSONB.
            let view = d.doc.view(id).map(|v| jsonb_safe(v).to_string());
            if let Some(text) = &view {
                refs.extend(attachment_hashes(text).map(|h| (n, h)));
            }
            collections.push(collection.as_str());
            ids.push(id.as_str());
            states.push(d.doc.encode());
            views.push(view);
            versions.push(d.doc.version().to_bytes());
        }
        let rows = self
            .tx
            .query(
                "INSERT INTO docs (collection, doc_id, state, view, version) \
                 SELECT c, i, s, v::jsonb, r FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], $5::bytea[]) \
                 AS t(c, i, s, v, r) \
                 ON CONFLICT (collection, doc_id) DO UPDATE SET state = excluded.state, view = excluded.view, \
                 version = excluded.version \
                 RETURNING collection, doc_id, num",
                &[&collections, &ids, &states, &views, &versions],
            )
            .map_err(pg)?;
        let nums: BTreeMap<(String, String), i64> = rows.iter().map(|r| ((r.get(0), r.get(1)), r.get(2))).collect();
        let num_of = |n: usize| -> Result<i64> {
            let (key, _) = written[n];
            nums.get(key)
                .copied()
                .ok_or_else(|| Error::Corrupt(format!("document {}/{} was not written", key.0, key.1)))
        };
        let (mut authors, mut starts, mut ends, mut docs) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut hashes, mut bodies, mut sigs) = (Vec::new(), Vec::new(), Vec::new());
        for (n, (_, d)) in written.iter().enumerate() {
            let num = num_of(n)?;
            for c in &d.new_changes {
                authors.push(c.peer.0 as i64);
                starts.push(sql_counter(c.start));
                ends.push(sql_counter(c.end));
                docs.push(num);
                hashes.push(&c.hash[..]);
                bodies.push(c.body.as_slice());
                sigs.push(c.signature.as_deref());
            }
        }
        let (mut ref_hashes, mut ref_docs): (Vec<&[u8]>, Vec<i64>) = (Vec::new(), Vec::new());
        for (n, h) in &refs {
            ref_hashes.push(&h[..]);
            ref_docs.push(num_of(*n)?);
        }
        let (held_authors, held_encoded) = states::changed_ranges(&self.held)?;
        // The log in the batch's order, which is causal within each document (unnest keeps it, and so do the
        // seqs), the attachments named, the authors' ranges, and the notice to the other relays (the last seq,
        // sent by PostgreSQL at commit), in one statement.
        self.tx
            .execute(
                "WITH added AS (INSERT INTO changes (author, start_ctr, end_ctr, doc, hash, body, sig) \
                 SELECT a, s, e, d, h, b, g FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], \
                 $5::bytea[], $6::bytea[], $7::bytea[]) WITH ORDINALITY AS t(a, s, e, d, h, b, g, o) ORDER BY o \
                 ON CONFLICT DO NOTHING RETURNING seq), \
                 refs AS (INSERT INTO attachment_refs (hash, doc) SELECT * FROM unnest($8::bytea[], $9::bigint[]) \
                 ON CONFLICT DO NOTHING), \
                 ranges AS (INSERT INTO held (author, ranges) SELECT * FROM unnest($10::bigint[], $11::bytea[]) \
                 ON CONFLICT (author) DO UPDATE SET ranges = excluded.ranges), \
                 notice AS (SELECT pg_notify($12, m::text) FROM (SELECT max(seq) AS m FROM added) AS last \
                 WHERE m IS NOT NULL) \
                 SELECT count(*) FROM notice",
                &[
                    &authors,
                    &starts,
                    &ends,
                    &docs,
                    &hashes,
                    &bodies,
                    &sigs,
                    &ref_hashes,
                    &ref_docs,
                    &held_authors,
                    &held_encoded,
                    &CHANGES_CHANNEL,
                ],
            )
            .map_err(pg)?;
        let merged: Vec<(i64, &states::MergedDoc)> = written
            .iter()
            .enumerate()
            .filter_map(|(n, (_, d))| Some((n, d.merged.as_ref()?)))
            .map(|(n, m)| Ok((num_of(n)?, m)))
            .collect::<Result<_>>()?;
        if !merged.is_empty() {
            states::persist_merges(self.tx, &self.folded, merged, None)?;
        }
        Ok(true)
    }
}

impl Ledger for Batch<'_, '_> {
    fn judged(&mut self) -> &mut Judged {
        &mut self.judged
    }

    fn admit(&mut self, _dc: &DocChange) -> Result<bool> {
        // The cloud evicts nothing, and writes nothing of its own that a clock would order.
        Ok(true)
    }

    fn doc(&mut self, collection: &str, id: &str) -> Result<&mut Document> {
        let key = (collection.to_string(), id.to_string());
        if !self.docs.contains_key(&key) {
            let row = self
                .tx
                .query_opt("SELECT state FROM docs WHERE collection = $1 AND doc_id = $2", &[&collection, &id])
                .map_err(pg)?;
            let doc = match row {
                Some(r) => Document::decode(r.get(0))?,
                None => Document::new(),
            };
            self.docs.insert(key.clone(), BatchDoc::new(doc));
        }
        Ok(&mut self.docs.get_mut(&key).ok_or_else(|| Error::Corrupt("batch document vanished".into()))?.doc)
    }

    fn new_changes(&self, collection: &str, id: &str) -> &[LoggedChange] {
        self.docs.get(&(collection.to_string(), id.to_string())).map_or(&[], |d| &d.new_changes)
    }

    fn applied_change(&self, author: PeerId, start: u64) -> Option<(&str, &str, &LoggedChange)> {
        self.docs.iter().find_map(|((c, i), d)| {
            Some((c.as_str(), i.as_str(), d.new_changes.iter().find(|n| n.peer == author && n.start == start)?))
        })
    }

    fn holds_any(&mut self, author: PeerId, start: u64, end: u64) -> Result<bool> {
        Ok(self.ranges(author)?.0.overlaps(start, end))
    }

    fn folded_covers(&mut self, author: PeerId, start: u64, end: u64) -> Result<bool> {
        Ok(self.folded_ranges(author)?.0.contains_range(start, end))
    }

    fn logged_before(&mut self, author: PeerId, counter: u64) -> Result<Option<(u64, u64, [u8; CHANGE_HASH_BYTES])>> {
        let row = self
            .tx
            .query_opt(
                "SELECT start_ctr, end_ctr, hash FROM changes WHERE author = $1 AND start_ctr <= $2 \
                 ORDER BY start_ctr DESC LIMIT 1",
                &[&(author.0 as i64), &sql_counter(counter)],
            )
            .map_err(pg)?;
        Ok(row.map(|r| {
            // Written by a relay from the change itself; a row of another length cannot match any change.
            let hash = <[u8; CHANGE_HASH_BYTES]>::try_from(r.get::<_, &[u8]>(2)).unwrap_or_default();
            (r.get::<_, i64>(0) as u64, r.get::<_, i64>(1) as u64, hash)
        }))
    }

    fn logged_change(&mut self, author: PeerId, start: u64) -> Result<LoggedEncoding> {
        let row = self
            .tx
            .query_opt(
                "SELECT d.collection, d.doc_id, c.body, c.sig FROM changes c JOIN docs d ON d.num = c.doc \
                 WHERE c.author = $1 AND c.start_ctr = $2",
                &[&(author.0 as i64), &sql_counter(start)],
            )
            .map_err(pg)?;
        Ok(row.map_or((None, None), |r| (Some(wire(r.get(0), r.get(1), r.get(2))), r.get(3))))
    }

    fn logged_bodies(&mut self, collection: &str, id: &str) -> Result<Vec<Vec<u8>>> {
        let rows = self
            .tx
            .query(
                "SELECT c.body FROM changes c JOIN docs d ON d.num = c.doc \
                 WHERE d.collection = $1 AND d.doc_id = $2 ORDER BY c.seq",
                &[&collection, &id],
            )
            .map_err(pg)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn record_equivocation(
        &mut self,
        author: PeerId,
        counter: u64,
        held: (&[u8], Option<&[u8]>),
        refused: (&[u8], Option<&[u8]>),
    ) -> Result<()> {
        let n: i64 = self.tx.query_one("SELECT count(*) FROM equivocations", &[]).map_err(pg)?.get(0);
        if n >= limit(MAX_EQUIVOCATION_RECORDS) {
            log::warn!("equivocation of author {author} at {counter} not recorded: {n} recorded already");
            return Ok(());
        }
        self.tx
            .execute(
                "INSERT INTO equivocations (author, counter, held, held_sig, refused, refused_sig) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                &[&(author.0 as i64), &sql_counter(counter), &held.0, &held.1, &refused.0, &refused.1],
            )
            .map_err(pg)?;
        Ok(())
    }

    fn pending_count(&mut self, author: PeerId) -> Result<usize> {
        self.lock_pending()?;
        let n: i64 = self
            .tx
            .query_one("SELECT coalesce((SELECT n FROM pending_authors WHERE author = $1), 0)", &[&(author.0 as i64)])
            .map_err(pg)?
            .get(0);
        Ok(n.max(0) as usize)
    }

    fn pending_total(&mut self) -> Result<usize> {
        self.lock_pending()?;
        let n: i64 = self.tx.query_one("SELECT n FROM pending_total", &[]).map_err(pg)?.get(0);
        Ok(n.max(0) as usize)
    }

    fn pending_largest(&mut self) -> Result<Option<(PeerId, usize)>> {
        self.lock_pending()?;
        let row = self
            .tx
            .query_opt("SELECT author, n FROM pending_authors WHERE n > 0 ORDER BY n DESC, author LIMIT 1", &[])
            .map_err(pg)?;
        Ok(row.map(|r| (PeerId(r.get::<_, i64>(0) as u64), r.get::<_, i64>(1).max(0) as usize)))
    }

    fn pending_drop_highest(&mut self, author: PeerId) -> Result<Option<u64>> {
        self.lock_pending()?;
        let row = self
            .tx
            .query_opt(
                concat!(
                    "WITH gone AS (DELETE FROM pending WHERE author = $1 AND start_ctr = \
                     (SELECT max(start_ctr) FROM pending WHERE author = $1) RETURNING author, start_ctr), ",
                    pending_uncounted!(),
                    " SELECT start_ctr FROM gone"
                ),
                &[&(author.0 as i64)],
            )
            .map_err(pg)?;
        Ok(row.map(|r| r.get::<_, i64>(0) as u64))
    }

    fn pending_insert(&mut self, dc: &DocChange, logged: &LoggedChange) -> Result<Option<KeptAside>> {
        let (author, start) = (logged.peer.0 as i64, sql_counter(logged.start));
        self.with_pending.insert((dc.collection.clone(), dc.doc_id.clone()));
        self.lock_pending()?;
        let n: i64 = self
            .tx
            .query_one(
                "WITH added AS (INSERT INTO pending (author, start_ctr, collection, doc_id, body, sig) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING author), \
                 per_author AS (INSERT INTO pending_authors (author, n) SELECT author, 1 FROM added \
                 ON CONFLICT (author) DO UPDATE SET n = pending_authors.n + 1), \
                 total AS (UPDATE pending_total SET n = n + (SELECT count(*) FROM added)) \
                 SELECT count(*) FROM added",
                &[&author, &start, &dc.collection, &dc.doc_id, &logged.body, &logged.signature],
            )
            .map_err(pg)?
            .get(0);
        if n > 0 {
            return Ok(None);
        }
        let r = self
            .tx
            .query_one(
                "SELECT collection, doc_id, body, sig FROM pending WHERE author = $1 AND start_ctr = $2",
                &[&author, &start],
            )
            .map_err(pg)?;
        Ok(Some((r.get(0), r.get(1), r.get(2), r.get(3))))
    }

    fn pending_of(&mut self, collection: &str, id: &str) -> Result<Vec<PendingChange>> {
        if !self.with_pending.contains(&(collection.to_string(), id.to_string())) {
            return Ok(Vec::new());
        }
        let rows = self
            .tx
            .query(
                "SELECT author, start_ctr, body, sig FROM pending WHERE collection = $1 AND doc_id = $2 \
                 ORDER BY author, start_ctr",
                &[&collection, &id],
            )
            .map_err(pg)?;
        let pending: Vec<PendingChange> = rows
            .iter()
            .map(|r| (PeerId(r.get::<_, i64>(0) as u64), r.get::<_, i64>(1) as u64, r.get(2), r.get(3)))
            .collect();
        // Taking them writes what is held of their authors: those must be locked too.
        if pending.iter().any(|(author, ..)| !self.locks.cover_author(*author)) {
            return Err(Error::Backend(Box::new(OutsideLocks)));
        }
        Ok(pending)
    }

    fn pending_taken(&mut self, _collection: &str, _id: &str, author: PeerId, start: u64) -> Result<()> {
        self.lock_pending()?;
        self.tx
            .execute(
                concat!(
                    "WITH gone AS (DELETE FROM pending WHERE author = $1 AND start_ctr = $2 RETURNING author), ",
                    pending_uncounted!(),
                    " SELECT count(*) FROM gone"
                ),
                &[&(author.0 as i64), &sql_counter(start)],
            )
            .map_err(pg)?;
        Ok(())
    }

    fn applied(&mut self, collection: &str, id: &str, logged: LoggedChange) {
        if let Some(held) = self.held.get_mut(&logged.peer) {
            held.0.insert(logged.start, logged.end);
            held.1 = true;
        }
        if let Some(d) = self.docs.get_mut(&(collection.to_string(), id.to_string())) {
            d.new_changes.push(logged);
        }
    }
}

/// A counter as PostgreSQL's `bigint` holds it (counters stay far below 2^63; a larger one is clamped, never
/// wrapped, so range comparisons keep their order).
fn sql_counter(c: u64) -> i64 {
    i64::try_from(c).unwrap_or(i64::MAX)
}

/// The change `body` of `collection/id` in the form stores exchange.
fn wire(collection: &str, id: &str, body: &[u8]) -> Vec<u8> {
    LogEntry {
        seq: 0,
        doc: 0,
        collection: collection.into(),
        doc_id: id.into(),
        peer: PeerId(0),
        start: 0,
        end: 0,
        body: body.to_vec(),
        signature: None,
        version: None,
    }
    .to_wire()
}

/// A log row as a [`LogEntry`] (columns from `at`: seq, doc, collection, doc_id, author, start, end, body, sig,
/// the document's version).
fn entry(r: &postgres::Row, at: usize) -> LogEntry {
    LogEntry {
        seq: r.get(at),
        doc: r.get(at + 1),
        collection: r.get(at + 2),
        doc_id: r.get(at + 3),
        peer: PeerId(r.get::<_, i64>(at + 4) as u64),
        start: r.get::<_, i64>(at + 5) as u64,
        end: r.get::<_, i64>(at + 6) as u64,
        body: r.get(at + 7),
        signature: r.get::<_, Option<Vec<u8>>>(at + 8).as_deref().and_then(ChangeSignature::decode),
        version: r.get::<_, Option<&[u8]>>(at + 9).and_then(VersionVector::from_bytes).map(std::sync::Arc::new),
    }
}

impl Replica for PgReplica {
    fn peer_id(&self) -> PeerId {
        self.peer
    }

    fn summary(&self) -> Result<Summary> {
        self.with_held(|summary, _| summary.clone())
    }

    fn changes_since(&self, summary: &Summary) -> Result<Vec<DocChange>> {
        self.log_missing(summary, &Summary::new(), usize::MAX)?
            .into_iter()
            .map(|e| {
                let change = Change::decode(&e.body)?;
                Ok(DocChange { collection: e.collection, doc_id: e.doc_id, change, signature: e.signature })
            })
            .collect()
    }

    fn apply_changes(&self, changes: &[DocChange]) -> Result<ApplyReport> {
        self.apply(changes, None)
    }

    fn apply_checked(&self, changes: &[DocChange], check: &dyn ChangeCheck) -> Result<ApplyReport> {
        self.apply(changes, Some(check))
    }

    /// The batches in one transaction (one commit for the batches of many links); a malformed batch gets its error
    /// and stays out. Should the transaction fail (a batch that fails judging, PostgreSQL), each batch is applied
    /// alone, so that one batch's failure costs the others nothing.
    fn apply_batches(&self, batches: &[&[DocChange]], check: Option<&dyn ChangeCheck>) -> Vec<Result<ApplyReport>> {
        let alone = |changes: &[DocChange]| self.apply(changes, check);
        if batches.len() < 2 {
            return batches.iter().map(|b| alone(b)).collect();
        }
        let mut out: Vec<Option<Result<ApplyReport>>> = Vec::with_capacity(batches.len());
        let mut valid = Vec::with_capacity(batches.len());
        for (n, changes) in batches.iter().enumerate() {
            match validate(changes) {
                Ok(()) => {
                    valid.push((n, *changes));
                    out.push(None);
                }
                Err(e) => out.push(Some(Err(e))),
            }
        }
        let slices: Vec<&[DocChange]> = valid.iter().map(|(_, b)| *b).collect();
        match self.apply_together(&slices, check) {
            Ok(reports) => {
                for ((n, _), report) in valid.iter().zip(reports) {
                    out[*n] = Some(Ok(report));
                }
            }
            Err(e) => {
                log::debug!("{} batches applied together failed ({e}): each alone", valid.len());
                for (n, changes) in &valid {
                    out[*n] = Some(alone(changes));
                }
            }
        }
        out.into_iter().map(|r| r.unwrap_or_else(|| Err(Error::Corrupt("a batch was not applied".into())))).collect()
    }

    fn author_digests(&self, authors: Option<&[PeerId]>) -> Result<Vec<AuthorDigest>> {
        // The summary first: brought up to date, it marks what other relays changed. An author some of whose
        // changes are held only folded into states has no digest (as on a phone): they have no log row to hash.
        let held: Vec<(PeerId, [u8; CHANGE_HASH_BYTES])> = self.with_held(|summary, folded| {
            let held: Vec<(PeerId, &RangeSet)> = match authors {
                Some(authors) => authors.iter().filter_map(|&a| Some((a, summary.ranges_of(a)?))).collect(),
                None => summary.peers().collect(),
            };
            held.into_iter()
                .filter(|(a, _)| folded.ranges_of(*a).is_none())
                .map(|(a, ranges)| (a, ranges_digest(a, ranges)))
                .collect()
        })?;
        let ids: Vec<PeerId> = held.iter().map(|(a, _)| *a).collect();
        let changes = self.digests.changes_digests(&mut *self.client()?, &ids)?;
        Ok(held
            .into_iter()
            .zip(changes)
            .map(|((author, ranges), (_, changes))| AuthorDigest { author, ranges, changes })
            .collect())
    }

    fn differing_authors(&self, theirs: &[AuthorDigest]) -> Result<Vec<PeerId>> {
        // Only authors of which both hold the same counters, none of them folded into a state here, compare.
        let same_ranges: Vec<&AuthorDigest> = self.with_held(|summary, folded| {
            theirs
                .iter()
                .filter(|d| summary.ranges_of(d.author).is_some_and(|r| ranges_digest(d.author, r) == d.ranges))
                .filter(|d| folded.ranges_of(d.author).is_none())
                .collect()
        })?;
        let ids: Vec<PeerId> = same_ranges.iter().map(|d| d.author).collect();
        let mine = self.digests.changes_digests(&mut *self.client()?, &ids)?;
        let mut out = Vec::new();
        for (d, (_, changes)) in same_ranges.iter().zip(mine) {
            if changes != d.changes {
                log::warn!(
                    "equivocation: a peer holds the same counters of author {} as the cloud, but other changes",
                    d.author
                );
                out.push(d.author);
            }
        }
        Ok(out)
    }

    fn log_missing(&self, have: &Summary, skip: &Summary, max_bytes: usize) -> Result<Vec<LogEntry>> {
        // Changes held only folded into states have no row: a peer lacking them is sent states instead.
        let wanted = self.with_held(|summary, folded| summary.difference(folded).difference(have).difference(skip))?;
        if wanted.is_empty() {
            // Nothing held is missing there: no statement at all.
            return Ok(Vec::new());
        }
        let keep = |e: &LogEntry| !have.contains(e.peer, e.start, e.end) && !skip.contains(e.peer, e.start, e.end);
        let ranges: Vec<(i64, i64, i64)> = wanted
            .peers()
            .flat_map(|(author, ranges)| {
                ranges.ranges().iter().map(move |&(lo, hi)| (author.0 as i64, sql_counter(lo), sql_counter(hi)))
            })
            .collect();
        let mut client = self.client()?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        'chunks: for chunk in ranges.chunks(LOG_RANGES_PER_STATEMENT) {
            // For each range of the chunk, in one statement: the change that starts before it and may reach into
            // it, then its first rows.
            let (authors, los, his): (Vec<i64>, Vec<i64>, Vec<i64>) = (
                chunk.iter().map(|r| r.0).collect(),
                chunk.iter().map(|r| r.1).collect(),
                chunk.iter().map(|r| r.2).collect(),
            );
            let rows = client
                .query(
                    concat!(
                        "SELECT w.o, x.* FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) WITH ORDINALITY \
                         AS w(a, lo, hi, o) CROSS JOIN LATERAL ((SELECT ",
                        entry_columns!(),
                        " FROM changes c JOIN docs d ON d.num = c.doc WHERE c.author = w.a AND c.start_ctr < w.lo \
                         ORDER BY c.start_ctr DESC LIMIT 1) UNION ALL (SELECT ",
                        entry_columns!(),
                        " FROM changes c JOIN docs d ON d.num = c.doc \
                         WHERE c.author = w.a AND c.start_ctr >= w.lo AND c.start_ctr <= w.hi \
                         ORDER BY c.start_ctr LIMIT $4)) AS x ORDER BY w.o, x.start_ctr"
                    ),
                    &[&authors, &los, &his, &LOG_FIRST_PAGE],
                )
                .map_err(pg)?;
            let mut rows = rows.iter().peekable();
            for (n, &(author, lo, hi)) in chunk.iter().enumerate() {
                let mut page = 0i64;
                let mut from = lo;
                while let Some(r) = rows.next_if(|r| r.get::<_, i64>(0) == n as i64 + 1) {
                    let e = entry(r, 1);
                    if sql_counter(e.start) < lo {
                        if sql_counter(e.end) >= lo && keep(&e) {
                            bytes += e.wire_len();
                            out.push(e);
                        }
                        continue;
                    }
                    page += 1;
                    from = sql_counter(e.start).saturating_add(1);
                    if keep(&e) && bytes < max_bytes {
                        bytes += e.wire_len();
                        out.push(e);
                    }
                }
                // A range with more rows than the first page: the rest, a page at a time.
                let mut full = page == LOG_FIRST_PAGE;
                while full {
                    if bytes >= max_bytes {
                        break 'chunks;
                    }
                    let rows = client
                        .query(
                            concat!(
                                "SELECT ",
                                entry_columns!(),
                                " FROM changes c JOIN docs d ON d.num = c.doc \
                                 WHERE c.author = $1 AND c.start_ctr >= $2 AND c.start_ctr <= $3 \
                                 ORDER BY c.start_ctr LIMIT $4"
                            ),
                            &[&author, &from, &hi, &LOG_PAGE],
                        )
                        .map_err(pg)?;
                    full = rows.len() as i64 == LOG_PAGE;
                    for r in &rows {
                        let e = entry(r, 0);
                        from = sql_counter(e.start).saturating_add(1);
                        if keep(&e) && bytes < max_bytes {
                            bytes += e.wire_len();
                            out.push(e);
                        }
                    }
                }
                if bytes >= max_bytes {
                    break 'chunks;
                }
            }
        }
        out.sort_by_key(|e| e.seq);
        out.dedup_by_key(|e| e.seq);
        Ok(out)
    }

    fn keep_frontier(&self, frontier: &shoaldb::security::StableFrontier) -> Result<bool> {
        self.keep_frontier_row(frontier)
    }

    fn stable_frontier(&self) -> Result<Option<shoaldb::security::StableFrontier>> {
        self.newest_frontier()
    }

    fn keep_peer_summary(&self, device: &shoaldb::security::DeviceKey, _cloud: bool, summary: &Summary) -> Result<()> {
        self.keep_device_summary(device, summary)
    }

    fn folded_of_doc(&self, doc: i64) -> Result<Summary> {
        self.read_folded_of(doc)
    }

    fn states_missing(
        &self,
        have: &Summary,
        skip: &Summary,
        from_doc: i64,
        max_bytes: usize,
    ) -> Result<Vec<(i64, DocState)>> {
        let wanted = |changes: &Summary| !changes.difference(have).difference(skip).is_empty();
        if !self.with_held(|_, folded| wanted(folded))? {
            return Ok(Vec::new());
        }
        self.read_states_missing(&wanted, (from_doc, max_bytes))
    }

    fn apply_states(&self, states: &[DocState]) -> Result<ApplyReport> {
        let states: Vec<_> = states.iter().map(|s| (s, None)).collect();
        self.merge_states(&states, None)
    }

    fn attested_states_missing(
        &self,
        have: &Summary,
        skip: &Summary,
        from_doc: i64,
        max_bytes: usize,
    ) -> Result<Vec<(i64, AttestedState)>> {
        self.read_attested_missing(have, skip, from_doc, max_bytes)
    }

    // `attestation_wanted`: the default (nothing). The cloud does not ask devices for attested states of its log's
    // changes (see the `attested` module).

    fn attested_states_wanted(
        &self,
        want: &Summary,
        from_doc: i64,
        max_bytes: usize,
    ) -> Result<Vec<(i64, AttestedState)>> {
        self.read_attested_wanted(want, from_doc, max_bytes)
    }

    fn attested_seq(&self) -> Result<i64> {
        self.read_attested_seq()
    }

    fn attested_kept_after(
        &self,
        after: i64,
        held: &Summary,
        max_bytes: usize,
    ) -> Result<(Vec<(i64, AttestedState)>, i64)> {
        self.read_attested_after(after, held, max_bytes)
    }

    fn apply_attested_states(&self, states: &[AttestedState], check: &dyn ChangeCheck) -> Result<ApplyReport> {
        let states: Vec<_> = states.iter().map(|a| (&a.state, Some(&a.attestation))).collect();
        self.merge_states(&states, Some(check))
    }

    fn log_of_doc(&self, doc: i64) -> Result<Vec<LogEntry>> {
        let rows = self
            .client()?
            .query(
                concat!(
                    "SELECT ",
                    entry_columns!(),
                    " FROM changes c JOIN docs d ON d.num = c.doc WHERE c.doc = $1 ORDER BY c.seq"
                ),
                &[&doc],
            )
            .map_err(pg)?;
        Ok(rows.iter().map(|r| entry(r, 0)).collect())
    }

    fn view_of_doc(&self, doc: i64) -> Result<Option<Json>> {
        // From the state, not the JSONB column: exact (U+0000 and all).
        let row = self.client()?.query_opt("SELECT doc_id, state FROM docs WHERE num = $1", &[&doc]).map_err(pg)?;
        match row {
            None => Ok(None),
            Some(r) => Ok(Document::decode(r.get(1))?.view(r.get(0))),
        }
    }

    fn doc_number(&self, collection: &str, id: &str) -> Result<Option<i64>> {
        check_collection(collection)?;
        check_doc_id(id)?;
        let row = self
            .client()?
            .query_opt("SELECT num FROM docs WHERE collection = $1 AND doc_id = $2", &[&collection, &id])
            .map_err(pg)?;
        Ok(row.map(|r| r.get(0)))
    }

    fn has_docs(&self, docs: &[(&str, &str)]) -> Result<Vec<bool>> {
        for (collection, id) in docs {
            check_collection(collection)?;
            check_doc_id(id)?;
        }
        let (collections, ids): (Vec<&str>, Vec<&str>) = docs.iter().copied().unzip();
        let rows = self
            .client()?
            .query(
                "SELECT t.o FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(c, i, o) \
                 WHERE EXISTS (SELECT 1 FROM docs d WHERE d.collection = t.c AND d.doc_id = t.i)",
                &[&collections, &ids],
            )
            .map_err(pg)?;
        let mut out = vec![false; docs.len()];
        for r in rows {
            if let Some(slot) = usize::try_from(r.get::<_, i64>(0) - 1).ok().and_then(|n| out.get_mut(n)) {
                *slot = true;
            }
        }
        Ok(out)
    }

    fn attachment_len(&self, hash: &[u8; 32]) -> Result<Option<u64>> {
        let row = self.client()?.query_opt("SELECT len FROM attachments WHERE hash = $1", &[&&hash[..]]).map_err(pg)?;
        Ok(row.map(|r| r.get::<_, i64>(0) as u64))
    }

    fn read_attachment_chunk(&self, hash: &[u8; 32], idx: u64) -> Result<Vec<u8>> {
        let row = self
            .client()?
            .query_opt(
                "SELECT data FROM attachment_chunks WHERE hash = $1 AND idx = $2",
                &[&&hash[..], &sql_counter(idx)],
            )
            .map_err(pg)?;
        row.map(|r| r.get(0)).ok_or_else(|| Error::AttachmentNotFound { hash: shoaldb::util::hex(hash) })
    }

    fn attachment_received(&self, hash: &[u8; 32]) -> Result<u64> {
        let row = self
            .client()?
            .query_one(
                "SELECT coalesce(max(offset_bytes + length(data)), 0)::bigint FROM attachment_parts WHERE hash = $1",
                &[&&hash[..]],
            )
            .map_err(pg)?;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }

    fn read_attachment_received(&self, hash: &[u8; 32], offset: u64) -> Result<Option<Vec<u8>>> {
        let row = self
            .client()?
            .query_opt(
                "SELECT offset_bytes, data FROM attachment_parts WHERE hash = $1 AND offset_bytes <= $2 \
                 ORDER BY offset_bytes DESC LIMIT 1",
                &[&&hash[..], &sql_counter(offset)],
            )
            .map_err(pg)?;
        Ok(row.and_then(|r| {
            let start = r.get::<_, i64>(0) as u64;
            let mut data: Vec<u8> = r.get(1);
            let skip = usize::try_from(offset - start).ok()?;
            (skip < data.len()).then(|| data.split_off(skip))
        }))
    }

    fn forget_attachment_received_from(&self, hash: &[u8; 32], offset: u64) -> Result<()> {
        self.client()?
            .execute(
                "DELETE FROM attachment_parts WHERE hash = $1 AND offset_bytes >= $2",
                &[&&hash[..], &sql_counter(offset)],
            )
            .map_err(pg)?;
        Ok(())
    }

    fn attachments_received(&self, max: usize) -> Result<Vec<[u8; 32]>> {
        let rows =
            self.client()?.query("SELECT DISTINCT hash FROM attachment_parts LIMIT $1", &[&limit(max)]).map_err(pg)?;
        Ok(rows.iter().filter_map(|r| <[u8; 32]>::try_from(r.get::<_, &[u8]>(0)).ok()).collect())
    }

    fn receive_attachment_part(&self, hash: &[u8; 32], offset: u64, data: &[u8]) -> Result<u64> {
        let have = self.attachment_received(hash)?;
        if offset != have {
            return Err(Error::AttachmentCorrupt {
                hash: shoaldb::util::hex(hash),
                reason: format!("part at {offset}, expected {have}"),
            });
        }
        if !data.is_empty() {
            self.client()?
                .execute(
                    "INSERT INTO attachment_parts (hash, offset_bytes, data) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    &[&&hash[..], &sql_counter(offset), &data],
                )
                .map_err(pg)?;
        }
        Ok(have + data.len() as u64)
    }

    fn finish_attachment(&self, hash: &[u8; 32], total: u64) -> Result<()> {
        let corrupt = |reason: String| Error::AttachmentCorrupt { hash: shoaldb::util::hex(hash), reason };
        let mut client = self.client()?;
        let mut tx = client.transaction().map_err(pg)?;
        // Stream the parts in order: hash them and cut them into chunks, one part in memory at a time.
        let parts = tx
            .query("SELECT offset_bytes FROM attachment_parts WHERE hash = $1 ORDER BY offset_bytes", &[&&hash[..]])
            .map_err(pg)?;
        let mut hasher = blake3::Hasher::new();
        let mut chunk = Vec::with_capacity(CHUNK_SIZE);
        let (mut idx, mut len) = (0i64, 0u64);
        let mut result = Ok(());
        for p in parts {
            let offset: i64 = p.get(0);
            if offset as u64 != len {
                result = Err(corrupt(format!("a gap in the received bytes at {len}")));
                break;
            }
            let data: Vec<u8> = tx
                .query_one(
                    "SELECT data FROM attachment_parts WHERE hash = $1 AND offset_bytes = $2",
                    &[&&hash[..], &offset],
                )
                .map_err(pg)?
                .get(0);
            hasher.update(&data);
            len += data.len() as u64;
            let mut rest = &data[..];
            while !rest.is_empty() {
                let take = (CHUNK_SIZE - chunk.len()).min(rest.len());
                chunk.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if chunk.len() == CHUNK_SIZE {
                    tx.execute(
                        "INSERT INTO attachment_chunks (hash, idx, data) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                        &[&&hash[..], &idx, &chunk],
                    )
                    .map_err(pg)?;
                    chunk.clear();
                    idx += 1;
                }
            }
        }
        if result.is_ok() && len != total {
            result = Err(corrupt(format!("{len} of {total} bytes received")));
        }
        if result.is_ok() && hasher.finalize().as_bytes() != hash {
            result = Err(corrupt("received bytes do not match the hash".into()));
        }
        if let Err(e) = result {
            drop(tx);
            // Rolled back; the bytes that do not match go, so the next fetch starts afresh.
            client.execute("DELETE FROM attachment_parts WHERE hash = $1", &[&&hash[..]]).map_err(pg)?;
            return Err(e);
        }
        if !chunk.is_empty() {
            tx.execute(
                "INSERT INTO attachment_chunks (hash, idx, data) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&&hash[..], &idx, &chunk],
            )
            .map_err(pg)?;
        }
        tx.execute(
            "INSERT INTO attachments (hash, len) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&&hash[..], &sql_counter(total)],
        )
        .map_err(pg)?;
        tx.execute("DELETE FROM attachment_parts WHERE hash = $1", &[&&hash[..]]).map_err(pg)?;
        tx.commit().map_err(pg)?;
        Ok(())
    }

    fn keep_revocation_lists(&self, lists: &[Vec<u8>]) -> Result<()> {
        let mut client = self.client()?;
        let mut tx = client.transaction().map_err(pg)?;
        tx.execute("DELETE FROM revocation_lists", &[]).map_err(pg)?;
        for (i, list) in lists.iter().enumerate() {
            let idx = i32::try_from(i).unwrap_or(i32::MAX);
            tx.execute("INSERT INTO revocation_lists (idx, list) VALUES ($1, $2)", &[&idx, list]).map_err(pg)?;
        }
        tx.commit().map_err(pg)
    }

    fn attachment_readable(&self, hash: &[u8; 32], rules: &ReadRules) -> Result<bool> {
        // The documents that name the hash (an index lookup), each checked against the rules, at most
        // MAX_ATTACHMENT_READ_CHECKS of them; a document's view from its state (exact, as the rules see it).
        let rows = self
            .client()?
            .query(
                "SELECT d.collection, d.doc_id, d.state FROM attachment_refs r JOIN docs d ON d.num = r.doc \
                 WHERE r.hash = $1 ORDER BY r.doc LIMIT $2",
                &[&&hash[..], &limit(MAX_ATTACHMENT_READ_CHECKS)],
            )
            .map_err(pg)?;
        for r in rows {
            let (collection, id): (String, String) = (r.get(0), r.get(1));
            // An unreadable state counts as absent.
            let Ok(doc) = Document::decode(r.get(2)) else { continue };
            if let Some(view) = doc.view(&id) {
                if rules.may_read(&collection, Some(&view)) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    fn keep_certificate(&self, device: PeerId, chain: &[u8]) -> Result<()> {
        self.client()?
            .execute(
                "INSERT INTO certificates (device, chain) VALUES ($1, $2) \
                 ON CONFLICT (device) DO UPDATE SET chain = excluded.chain",
                &[&(device.0 as i64), &chain],
            )
            .map_err(pg)?;
        Ok(())
    }

    fn certificate(&self, device: PeerId) -> Result<Option<Vec<u8>>> {
        let row = self
            .client()?
            .query_opt("SELECT chain FROM certificates WHERE device = $1", &[&(device.0 as i64)])
            .map_err(pg)?;
        Ok(row.map(|r| r.get(0)))
    }
}
