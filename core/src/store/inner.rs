//! The state behind a store's lock ([`Inner`]): the SQLite connection, the clock and counters of this store's
//! changes, the summary of what it holds, decoded documents and observers — and the `meta` table they persist in.

use super::docs::{self, DocCache};
use super::equivocation::DigestCache;
use super::observe::{self, Observers};
use super::pending::PendingCounts;
use super::Summary;
use crate::crdt::clock::{Hlc, PeerId, Timestamp};
use crate::error::{Error, Result};
use crate::query::Query;
use crate::security::vault::{self, KeyVault};
use crate::util::sources::Sources;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value as Json;
use std::collections::{HashMap, HashSet};

/// The state behind the store's lock.
pub(crate) struct Inner {
    pub(super) conn: Connection,
    /// Where the device's private keys are ([`super::Options::keys`]).
    pub(super) vault: std::sync::Arc<dyn KeyVault>,
    /// The author id of this store's changes: its peer id, until a write had to start a new chain (see
    /// [`Store::evict`]).
    pub(super) author: PeerId,
    /// This peer id, which never changes.
    pub(super) peer: PeerId,
    /// The device's signing key once it has one (enrolment), and the chain of it [`Inner::author`] is: the store
    /// then writes as the key's [`author`](crate::security::VerifyingKey::author)`(chain)` and signs every change.
    pub(super) signer: Option<(crate::security::SigningKey, u32)>,
    /// What the certificate installed on this device lets it write, and its device id: the store refuses writes
    /// beyond them (every other device would refuse them). `None` before a certificate is installed.
    pub(super) own_permissions: Option<std::sync::Arc<(crate::security::certificate::Permissions, PeerId)>>,
    pub(super) clock: Hlc,
    /// The time and randomness of this store.
    pub(super) sources: Sources,
    pub(super) next_counter: u64,
    pub(super) cache: DocCache,
    pub(super) held: Summary,
    /// The changes folded into snapshots and dropped from the log (the `folded` table, every document's; part of
    /// [`Inner::held`]).
    pub(super) folded: Summary,
    /// Rows in the `pending` table, per author.
    pub(super) pending: PendingCounts,
    /// Per-author digests, cached by bucket (see [`Inner::author_digest`]).
    pub(super) digests: DigestCache,
    /// The `evicted` table.
    pub(super) evicted: HashSet<docs::DocKey>,
    /// The `forgotten` table's rows of the current author: document → the last counter of its dropped changes.
    pub(super) forgotten: HashMap<docs::DocKey, u64>,
    pub(super) data_version: i64,
    /// Another connection's commits were taken in by a reload ([`Inner::refresh`]) that announced them to nobody:
    /// the next [`Store::poll_external_changes`](super::Store::poll_external_changes) calls the commit listeners
    /// and updates the observers all the same.
    pub(super) unannounced: bool,
    pub(super) observers: Observers,
    /// Counts the commits that may have changed documents, this store's own and (as a reload takes them in) other
    /// connections'; read without the lock (see [`Store::observe`](super::Store::observe)).
    pub(super) generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Where versions before the key vault kept the device's private keys (`meta` keys), and the vault entries they
/// move to (see [`Inner::move_keys_out`]).
const KEYS_IN_META: [(&str, &str); 2] =
    [("local:device_identity", vault::NOISE_KEY), ("local:signing_key", vault::SIGNING_KEY)];
/// The `meta` key of the device's certificate chain (a device-local setting: see [`crate::enrolment`]).
pub(super) const CHAIN_META: &str = "local:certificate_chain";

/// The epoch in the sidecar file, `None` when it is missing or not an epoch.
fn read_epoch(sidecar: &std::path::Path) -> Result<Option<u64>> {
    match std::fs::read(sidecar) {
        Ok(bytes) => Ok(<[u8; 8]>::try_from(bytes.as_slice()).ok().map(u64::from_le_bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Io(e)),
    }
}

pub(super) fn meta_get(conn: &Connection, key: &str) -> Result<Option<Vec<u8>>> {
    Ok(conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row(params![key], |r| r.get(0))
        .optional()?)
}

pub(super) fn meta_u64(conn: &Connection, key: &str) -> Result<Option<u64>> {
    match meta_get(conn, key)? {
        None => Ok(None),
        Some(b) => {
            let arr: [u8; 8] = b.as_slice().try_into().map_err(|_| Error::Corrupt(format!("meta {key}")))?;
            Ok(Some(u64::from_le_bytes(arr)))
        }
    }
}

pub(super) fn meta_put(conn: &Connection, key: &str, value: &[u8]) -> Result<()> {
    conn.prepare_cached("INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = ?2")?
        .execute(params![key, value])?;
    Ok(())
}

pub(super) fn meta_put_u64(conn: &Connection, key: &str, v: u64) -> Result<()> {
    meta_put(conn, key, &v.to_le_bytes())
}

impl Inner {
    /// Runs `f` in one write transaction (`BEGIN IMMEDIATE`) on the writer's connection: committed if it succeeds,
    /// rolled back if it fails.
    pub(super) fn immediate<R>(&self, f: impl FnOnce(&Connection) -> Result<R>) -> Result<R> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        match f(&self.conn) {
            Ok(r) => {
                self.conn.execute_batch("COMMIT")?;
                Ok(r)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    pub(super) fn data_version(&self) -> Result<i64> {
        Ok(self.conn.query_row("PRAGMA data_version", [], |r| r.get(0))?)
    }

    /// Reload what another process may have changed: counters, clock, the summary; drop decoded documents.
    ///
    /// The reads are not one snapshot (another process may commit while they run), so the `data_version` they are
    /// recorded against is read first: a commit landing meanwhile leaves it behind, and the next
    /// [`Inner::refresh`] or poll reloads again rather than keep a summary that lacks that commit's changes.
    pub(super) fn reload(&mut self) -> Result<()> {
        let version = self.data_version()?;
        let author = PeerId(meta_u64(&self.conn, "author_id")?.unwrap_or(self.peer.0));
        if author != self.author {
            // Another connection started a new author: its counters start afresh.
            self.author = author;
            self.next_counter = 1;
        }
        self.next_counter = self.next_counter.max(meta_u64(&self.conn, "next_counter")?.unwrap_or(1));
        let persisted = Timestamp(meta_u64(&self.conn, "hlc")?.unwrap_or(0));
        if persisted > self.clock.last() {
            self.clock = Hlc::new(persisted);
        }
        let mut held = Summary::new();
        let mut stmt = self.conn.prepare_cached("SELECT peer, start, end FROM changes")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            held.insert(PeerId(r.get::<_, i64>(0)? as u64), r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64);
        }
        drop(rows);
        drop(stmt);
        self.folded = super::compaction::all_folded(&self.conn)?;
        held.union_with(&self.folded);
        self.held = held;
        self.pending = PendingCounts::load(&self.conn)?;
        self.digests.clear();
        self.evicted = self
            .conn
            .prepare_cached("SELECT collection, id FROM evicted")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        self.forgotten = self
            .conn
            .prepare_cached("SELECT collection, id, end FROM forgotten WHERE author = ?1")?
            .query_map(params![self.author.0 as i64], |r| Ok(((r.get(0)?, r.get(1)?), r.get::<_, i64>(2)? as u64)))?
            .collect::<rusqlite::Result<_>>()?;
        self.cache.clear();
        self.load_signer()?;
        self.data_version = version;
        Ok(())
    }

    /// Take up the device's signing key if it has one (see [`Inner::signer`]). The first time, the store moves to
    /// the key's first author id (a fresh chain of it if that one was used already); its earlier changes stay as
    /// they were, unsigned.
    pub(super) fn load_signer(&mut self) -> Result<()> {
        self.own_permissions = None;
        let Some(bytes) = vault::load_bounded(&*self.vault, vault::SIGNING_KEY).map_err(Error::KeyVault)? else {
            self.signer = None;
            return Ok(());
        };
        let key = crate::security::SigningKey::from_bytes(&bytes).map_err(|e| {
            Error::KeyVault(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("the signing key: {e}")))
        })?;
        let public = key.verifying_key();
        if let Some(chain) = meta_get(&self.conn, CHAIN_META)? {
            match crate::security::CertificateChain::decode(&chain) {
                Ok(chain) if chain.leaf().body().signing_key == public => {
                    let device = chain.leaf().body().signing_key.device_id();
                    self.own_permissions = Some(std::sync::Arc::new((chain.permissions(), device)));
                }
                // The engine refuses to start on it too (`enrolment::load`); the store still opens.
                Ok(_) => log::warn!(
                    "the installed certificate is another device's (a database restored without its keys): enrol \
                     this device again"
                ),
                Err(e) => log::warn!("the device's installed certificate is unreadable: {e}"),
            }
        }
        let stored = meta_u64(&self.conn, "author_chain")?;
        match stored.and_then(|n| u32::try_from(n).ok()) {
            Some(n) if public.author(n) == self.author => self.signer = Some((key, n)),
            _ => {
                let first = public.author(0);
                let used = self.held.overlaps(first, 0, u64::MAX) || stored.is_some();
                self.signer = Some((key, 0));
                self.start_new_author_on(if used { None } else { Some(0) })?;
            }
        }
        Ok(())
    }

    /// Make sure our view is current (another process may have committed).
    pub(super) fn refresh(&mut self) -> Result<()> {
        if self.data_version()? != self.data_version {
            log::debug!("store changed by another connection; reloading");
            self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            self.reload()?;
            self.unannounced = true;
        }
        Ok(())
    }

    /// Continue under a new author id, with counters from 1 (the old author's chains are left as they are; its
    /// changes stay in the log and keep replicating).
    pub(super) fn start_new_author(&mut self) -> Result<()> {
        self.start_new_author_on(None)
    }

    /// [`Inner::start_new_author`]; with a signing key, as its author `chain` (a random chain when `None`: a
    /// restored copy of the store cannot know which chains the original used since).
    fn start_new_author_on(&mut self, chain: Option<u32>) -> Result<()> {
        let old = self.author;
        match &mut self.signer {
            Some((key, current)) => {
                let n = chain.unwrap_or_else(|| (self.sources.random_u64() as u32).max(1));
                *current = n;
                self.author = key.verifying_key().author(n);
                meta_put_u64(&self.conn, "author_chain", u64::from(n))?;
            }
            None => self.author = PeerId(self.sources.random_u64()),
        }
        self.next_counter = 1;
        meta_put_u64(&self.conn, "author_id", self.author.0)?;
        self.conn.execute("DELETE FROM forgotten", [])?;
        self.forgotten.clear();
        log::info!("store {} writes as author {} from now on (was {old})", self.peer, self.author);
        Ok(())
    }

    /// Before this store writes: when its author id shows counters it did not write — a change forged under its
    /// id, or written by the device a restored copy of this database came from — continue under a fresh author, so
    /// no change of its own can collide with one already made under its id. `peer:end` is such a change (or
    /// claim): seen at counter `next_counter` or beyond, it cannot be this store's.
    pub(super) fn notice_own_author(&mut self, peer: PeerId, end: u64) -> Result<()> {
        if peer == self.author && end >= self.next_counter {
            log::warn!(
                "store {} saw author {peer} (its own) at counter {end}, beyond the {} it wrote: a forgery or a restored copy; \
                 moving to a fresh author id",
                self.peer,
                self.next_counter - 1
            );
            self.start_new_author()?;
        }
        Ok(())
    }

    /// [`Inner::notice_own_author`] for everything the store holds or keeps pending (a store written to before this
    /// check existed may hold such changes already).
    pub(super) fn check_own_author(&mut self) -> Result<()> {
        let author = self.author;
        if self.held.overlaps(author, self.next_counter, u64::MAX) {
            return self.notice_own_author(author, u64::MAX);
        }
        if self.pending.of(author) > 0 {
            let start: Option<i64> = self
                .conn
                .prepare_cached("SELECT max(start) FROM pending WHERE peer = ?1")?
                .query_row(params![author.0 as i64], |r| r.get(0))?;
            if let Some(start) = start {
                self.notice_own_author(author, start as u64)?;
            }
        }
        Ok(())
    }

    /// Detect a restored copy of the database (a backup put back: Android Auto Backup, an iCloud restore, a copied
    /// file). At every open a fresh random epoch is written both into the database (`meta`) and into `sidecar`, a
    /// file the platform keeps out of backups; a database whose epoch differs from the sidecar's (or that has an
    /// epoch while the sidecar is missing) is not the file last opened here, so it continues under a fresh author:
    /// its author's counters past the copy's may have been used already by the device it was copied from.
    ///
    /// Runs inside one immediate transaction, so processes opening the file together see each other's epoch; the
    /// sidecar is written before the database commits, so a crash in between costs a needless new author, never a
    /// missed restore. Not caught: a copy taken after the last open and restored without another open in between
    /// (the sync-time rule, [`Inner::notice_own_author`], catches those as soon as a peer shows the original's
    /// changes).
    /// Whether the database is not the copy last opened here (see [`Inner::check_open_epoch`]), read without
    /// changing anything.
    pub(super) fn is_restored_copy(&self, sidecar: &std::path::Path) -> Result<bool> {
        let Some(in_db) = meta_u64(&self.conn, "open_epoch")? else { return Ok(false) };
        Ok(read_epoch(sidecar)? != Some(in_db))
    }

    /// Move the private keys an older version kept in the database into the key vault, and erase them from the
    /// file (`secure_delete` overwrites the freed bytes, a checkpoint rewrites the pages the WAL held). A database
    /// that is a restored copy (`restored`) holds another device's keys, or this one's from an older backup: they
    /// are erased without being taken up, and the device makes fresh keys. The vault's entry wins over the
    /// database's when both exist (a crash between the two steps).
    pub(super) fn move_keys_out(&mut self, restored: bool) -> Result<()> {
        let mut erased = false;
        for (meta, entry) in KEYS_IN_META {
            let Some(secret) = meta_get(&self.conn, meta)? else { continue };
            if restored {
                log::warn!("store {}: a restored copy held a device's {entry}: erased, not taken up", self.peer);
            } else if self.vault.create(entry, &secret).map_err(Error::KeyVault)? {
                log::info!("store {}: the device's {entry} moved out of the database into its key vault", self.peer);
            } else if vault::load_bounded(&*self.vault, entry).map_err(Error::KeyVault)?.as_ref() != Some(&secret) {
                log::warn!(
                    "store {}: the key vault holds another {entry} than the database: the vault's kept",
                    self.peer
                );
            }
            self.conn.pragma_update(None, "secure_delete", true)?;
            let deleted = self.conn.execute("DELETE FROM meta WHERE key = ?1", params![meta]);
            self.conn.pragma_update(None, "secure_delete", false)?;
            deleted?;
            erased = true;
        }
        if erased {
            // Busy readers elsewhere can keep an old page in the WAL until the next full checkpoint.
            if let Err(e) = super::checkpoints::checkpoint_whole(&self.conn) {
                log::warn!("store {}: checkpoint after erasing keys: {e}", self.peer);
            }
        }
        Ok(())
    }

    pub(super) fn check_open_epoch(&mut self, sidecar: &std::path::Path) -> Result<()> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let result = (|| {
            // Another process may have committed since the store loaded: load again now, while none can, so that
            // the `data_version` recorded below is that of what was loaded.
            self.refresh()?;
            let in_db = meta_u64(&self.conn, "open_epoch")?;
            let in_file = read_epoch(sidecar)?;
            if let Some(db) = in_db {
                if in_file != Some(db) {
                    log::warn!(
                        "store {}: the database is not the copy last opened here (epoch {db:016x}, sidecar {}): \
                         a restored backup; moving to a fresh author id",
                        self.peer,
                        in_file.map_or("missing".to_string(), |f| format!("{f:016x}"))
                    );
                    self.start_new_author()?;
                    self.save_meta()?;
                }
            }
            // Not drawn from the store's random stream, so that a seeded simulation's ids stay what they were; a
            // seeded store (a simulation) chains it from the last one and its clock, so that its file stays a
            // function of the seed.
            let epoch = if self.sources.is_seeded() {
                let seed = [self.peer.0, in_db.unwrap_or(0), self.sources.now_ms()];
                let h = blake3::hash(&seed.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
                u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or_default()).max(1)
            } else {
                crate::util::sources::Sources::system().random_u64()
            };
            std::fs::write(sidecar, epoch.to_le_bytes())?;
            meta_put_u64(&self.conn, "open_epoch", epoch)
        })();
        match result {
            Ok(()) => {
                // Read before the commit, while no other connection can commit: one landing just after is seen.
                let version = self.data_version()?;
                self.conn.execute_batch("COMMIT")?;
                self.data_version = version;
                Ok(())
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                self.reload()?;
                Err(e)
            }
        }
    }

    pub(super) fn save_meta(&self) -> Result<()> {
        meta_put_u64(&self.conn, "next_counter", self.next_counter)?;
        meta_put_u64(&self.conn, "hlc", self.clock.last().0)
    }

    /// Write the stale views (of `collection`, or of every collection) in a transaction of their own, so that
    /// reads of views see the documents as they are (see `docs::ViewWrite::Deferred`). Not inside a
    /// transaction: the cache would take documents as the transaction's rollback would not leave them.
    pub(super) fn flush_views(&mut self, collection: Option<&str>) -> Result<()> {
        let stale = super::docs::stale_views(&self.conn, collection)?;
        if stale.is_empty() {
            return Ok(());
        }
        // Taken out of the cache: should the transaction fail, they are loaded again when next needed.
        let mut docs: Vec<_> = stale.into_iter().map(|key| (self.cache.take(&key), key)).collect();
        self.immediate(|conn| {
            for (cached, (collection, id)) in docs.iter_mut() {
                if cached.is_none() {
                    *cached = super::docs::load(conn, collection, id)?;
                }
                if let Some(cached) = cached {
                    super::docs::refresh_view(conn, id, cached)?;
                }
            }
            Ok(())
        })?;
        log::debug!("wrote {} stale document views", docs.len());
        for (cached, key) in docs {
            if let Some(cached) = cached {
                self.cache.put(key, cached);
            }
        }
        Ok(())
    }

    /// Recompute every observer's result (after another process changed the store); the events to deliver.
    pub(super) fn refresh_all_observers(&mut self) -> Result<Vec<observe::Queued>> {
        if !self.observers.registered.is_empty() {
            self.flush_views(None)?;
        }
        let ids: Vec<u64> = self.observers.registered.keys().copied().collect();
        let mut events = Vec::new();
        for oid in ids {
            let Some((collection, query)) =
                self.observers.registered.get(&oid).map(|r| (r.collection.clone(), r.query.clone()))
            else {
                continue;
            };
            let fresh = self.query(&collection, &query)?;
            let Some(r) = self.observers.registered.get_mut(&oid) else { continue };
            if let Some(event) = observe::replace_result(r, fresh) {
                events.push(observe::Queued { callback: r.callback.clone(), alive: r.alive.clone(), event });
            }
        }
        Ok(events)
    }

    /// Every existing document of a collection matching `query`, sorted and limited: (id, view).
    pub(super) fn query(&self, collection: &str, query: &Query) -> Result<Vec<(String, Json)>> {
        super::find::run(&self.conn, collection, query)
    }
}

#[cfg(test)]
mod tests {
    use crate::store::{encryption, Replica, Store};
    use serde_json::json;

    /// Two processes open one store at once: the other's commit lands after this one loaded its summary and before
    /// it records its open epoch (the netns test's `shoal put` beside a starting `shoal peer`). The commit must not be
    /// taken as seen: the store's summary (what sync offers peers) has to include it.
    #[test]
    fn a_commit_landing_while_the_store_opens_is_not_lost() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("s.db");
        let opening = Store::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let other = Store::open(&path).unwrap_or_else(|e| panic!("{e}"));
        other.upsert("notes", json!({"_id": "x", "n": 1})).unwrap_or_else(|e| panic!("{e}"));
        // The step of `Store::open` after loading: recording the open epoch, in a write transaction of its own.
        opening.lock().check_open_epoch(&encryption::sibling(&path, "-epoch")).unwrap_or_else(|e| panic!("{e}"));
        let theirs = other.replica().summary().unwrap_or_else(|e| panic!("{e}"));
        let ours = opening.replica().summary().unwrap_or_else(|e| panic!("{e}"));
        assert!(!theirs.is_empty());
        assert_eq!(ours, theirs, "the other process's commit is missing from the summary");
    }
}
