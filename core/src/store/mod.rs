//! Persistence: one SQLite file per store (WAL), documents with their change log and snapshots, attachments,
//! observers, and the replication interface sync builds on.
//!
//! A [`Store`] is cheap to share between threads (`Send + Sync`). Writes take the store's lock for as long as they
//! touch the database; reads of documents and queries use connections of their own (WAL readers, see `readers`)
//! and never wait for a write. Several processes may open the same file: every write starts with an immediate
//! SQLite transaction, and a process notices another's commits (SQLite's `data_version`) before it reads its caches.

mod attest;
mod blobs;
mod budget;
mod changelog;
mod checkpoints;
mod compaction;
mod docs;
mod encryption;
mod equivocation;
mod expiry;
mod find;
mod ids;
mod indexes;
mod inner;
pub mod judge;
mod logrow;
mod observe;
mod pending;
mod readers;
mod replica;
mod replicate;
mod requests;
mod schema;
mod storage;
mod txn;
mod unsettled;

pub use attest::AttestReport;
pub use blobs::CHUNK_SIZE;
pub use budget::{BudgetReport, Evicted, Eviction, StorageBudget, MAX_NOTED_READS};
pub use changelog::{CommitListener, LogEntry};
pub use compaction::{CompactionPolicy, CompactionReport, MAX_PEER_ACKS, MAX_STATE_BYTES};
pub use docs::{attachment_hashes, Quarantined};
pub use encryption::{StoreKey, ENCRYPTION_AVAILABLE};
pub use equivocation::{
    bucket_hashes, changes_digest, ranges_digest, Equivocation, DIGEST_BUCKET_BITS, MAX_EQUIVOCATION_RECORDS,
};
pub use expiry::Expired;
pub use find::QueryPlan;
pub use indexes::{Index, MAX_INDEXES, MAX_INDEX_PATHS};
pub use observe::{Callback, ChangeEvent};
pub use pending::{MAX_PENDING_PER_AUTHOR, PENDING_EXPIRED_PER_CALL, PENDING_MAX_AGE_MS};
pub use replica::{Replica, StoreReplica, MAX_ATTACHMENT_READ_CHECKS};
pub use replicate::{
    change_digest, change_hash, ApplyReport, AttestedState, AuthorDigest, DocChange, DocState, RangeSet, Summary,
    CHANGE_HASH_BYTES, MAX_REPORTED_REFUSALS,
};
pub use requests::AttachmentRequest;
pub use schema::SCHEMA_VERSION;
pub use storage::{GarbagePolicy, GarbageReport, StorageStats};
pub use txn::WriteTxn;

use crate::crdt::clock::{Hlc, PeerId, Timestamp};
use crate::crdt::document::{DocEditor, Document};
use crate::crdt::value::{AttachmentToken, Value};
use crate::error::{Error, Result};
use crate::query::Query;
use crate::security::vault::{self, KeyVault};
use crate::util::lock;
use crate::util::sources::Sources;
use docs::DocCache;
use inner::{meta_get, meta_put, meta_put_u64, meta_u64, Inner};
use observe::{Delivery, Observers, Registered};
use rusqlite::{params, Connection};
use serde_json::Value as Json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// The most changes kept aside waiting for their dependencies, all authors together (see [`MAX_PENDING_PER_AUTHOR`]
/// for how they are shared).
pub const MAX_PENDING_CHANGES: usize = 100_000;
/// The longest collection name or document id, in bytes.
pub const MAX_NAME_BYTES: usize = 512;

/// How hard a commit works to survive power loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Every commit is synced to disk before it returns (SQLite `synchronous=FULL`). Survives power loss.
    Full,
    /// Commits survive a crash of the app but the last ones may be lost on power loss (`synchronous=NORMAL`).
    Normal,
}

/// Options for [`Store::open_with`].
#[derive(Clone)]
pub struct Options {
    /// How hard a commit works to survive a power loss.
    pub durability: Durability,
    /// About how much memory decoded documents may keep between transactions (bytes).
    pub cache_bytes: usize,
    /// Where the store gets the time (hybrid logical clock readings, document ids) and random numbers (peer,
    /// author and document ids): the system by default; a simulation injects its clock and a seed.
    pub sources: Sources,
    /// Where the store keeps its open-epoch marker, which tells a restored backup of the database from the file
    /// last opened here (see [`Store::open_with`]). It must be a file the platform leaves out of backups: on
    /// Android a file in `Context.getNoBackupFilesDir()`, on iOS a file marked `isExcludedFromBackup`. `None`
    /// (the default): the database's path with `-epoch` appended, beside it — which catches a database file copied
    /// or restored alone, not a backup that restores both files.
    pub epoch_file: Option<PathBuf>,
    /// The key of an encrypted store (cargo feature `encryption`; without it a key fails with
    /// [`Error::EncryptionUnavailable`]). A new store is created encrypted with it; an existing one opens only with
    /// the key it was created (or last re-keyed, [`Store::change_key`]) with — [`Error::WrongKey`] otherwise, and
    /// [`Error::NotEncrypted`] for a store created without a key ([`Store::encrypt_file`] converts it). `None`
    /// (the default): the store is not encrypted.
    pub key: Option<StoreKey>,
    /// Where the device's private keys are kept (its Noise key and signing key): never in the database, so that no
    /// backup or copy of the database file carries them (see [`crate::security::vault`]). `None` (the default): a
    /// [`FileVault`](crate::security::FileVault) in the directory `<database>-keys` beside the database (a
    /// [`MemoryVault`](crate::security::MemoryVault) for `:memory:`). A phone app passes its platform's vault.
    pub keys: Option<Arc<dyn KeyVault>>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("durability", &self.durability)
            .field("cache_bytes", &self.cache_bytes)
            .field("sources", &self.sources)
            .field("epoch_file", &self.epoch_file)
            .field("key", &self.key)
            .field("keys", &self.keys.as_ref().map(|_| ".."))
            .finish()
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            durability: Durability::Full,
            cache_bytes: 64 << 20,
            sources: Sources::system(),
            epoch_file: None,
            key: None,
            keys: None,
        }
    }
}

/// The device-local setting that holds the revocation lists taken in.
const REVOCATIONS_SETTING: &str = "revocation_lists";

/// The device-local setting that holds the stable frontier taken in (issue 17, certificate mode).
const FRONTIER_SETTING: &str = "stable_frontier";

fn in_memory(path: &FsPath) -> bool {
    path.as_os_str() == ":memory:" || path.as_os_str().is_empty()
}

/// Keeps a prepared query's plan when the values bound to it change (SQLite's query planner stability guarantee).
/// Without it SQLite prepares a query again at each run whose parameters it compared while planning — as it does
/// to match a query's terms to a partial index ([`indexes`]) — which would cost each indexed query a full prepare.
pub(crate) fn stable_query_plans(conn: &Connection) {
    if let Err(e) = conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true) {
        log::warn!("could not keep query plans stable: {e}");
    }
}

pub(crate) fn check_name(what: &'static str, s: &str) -> Result<()> {
    let reason = if s.is_empty() {
        "empty"
    } else if s.len() > MAX_NAME_BYTES {
        "too long"
    } else if s.chars().any(char::is_control) {
        "contains control characters"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName { what, reason: reason.to_string() })
}

/// Check a collection name: non-empty, at most [`MAX_NAME_BYTES`], no control characters.
pub fn check_collection(s: &str) -> Result<()> {
    check_name("collection name", s)
}

/// Check a document id: non-empty, at most [`MAX_NAME_BYTES`], no control characters.
pub fn check_doc_id(s: &str) -> Result<()> {
    check_name("document id", s)
}

struct Shared {
    inner: Mutex<Inner>,
    delivery: Delivery,
    path: PathBuf,
    peer: PeerId,
    /// Opened with a key ([`Options::key`]).
    encrypted: bool,
    /// Where the device's private keys are ([`Options::keys`]).
    vault: Arc<dyn KeyVault>,
    listeners: Mutex<Vec<(u64, changelog::Listener)>>,
    next_listener: std::sync::atomic::AtomicU64,
    /// Connections for reads, beside the writer's (`None` in memory).
    readers: Option<Arc<readers::Readers>>,
    /// Checkpoints of the WAL off the writer's path (`None` in memory).
    checkpoints: Option<Arc<checkpoints::Checkpoints>>,
    /// [`Inner::generation`].
    generation: Arc<std::sync::atomic::AtomicU64>,
    /// Reads not yet written down, for [`Store::fit_budget`]; and the clock they are noted by.
    usage: Mutex<budget::Usage>,
    usage_clock: crate::util::sources::Sources,
}

impl Drop for Shared {
    /// The last handle of the store goes: the checkpointing thread stops, and the reads noted for the storage budget
    /// are written down.
    fn drop(&mut self) {
        if let Some(checkpoints) = &self.checkpoints {
            checkpoints.stop();
        }
        let usage = self.usage.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        if usage.is_empty() {
            return;
        }
        let inner = self.inner.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) = inner.immediate(|conn| usage.write_down(conn)) {
            log::warn!("store {}: the reads noted for the storage budget were not written down: {e}", self.peer);
        }
    }
}

/// One device's database: collections of documents whose fields are CRDTs, persisted in one SQLite file.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.shared.path).field("peer", &self.shared.peer).finish()
    }
}

/// Keeps an observer registered; dropping it (or calling [`ObserverHandle::cancel`]) unregisters it.
pub struct ObserverHandle {
    id: u64,
    alive: Arc<AtomicBool>,
    shared: Weak<Shared>,
}

impl ObserverHandle {
    /// Stop observing. No event is delivered after this returns.
    pub fn cancel(&self) {
        self.alive.store(false, Ordering::Release);
        if let Some(shared) = self.shared.upgrade() {
            let mut inner = lock(&shared.inner);
            inner.observers.remove(self.id);
        }
    }
}

impl Drop for ObserverHandle {
    fn drop(&mut self) {
        self.cancel();
    }
}

impl Store {
    /// Open (or create) the store at `path` with default options.
    pub fn open(path: impl AsRef<FsPath>) -> Result<Store> {
        Self::open_with(path, Options::default())
    }

    /// Open (or create) the store at `path`.
    ///
    /// A database file that is not the one last opened here — a backup restored by the platform (Android Auto
    /// Backup, an iCloud restore) or a copied file — is recognised by its open epoch, a random number written at
    /// every open into the database and into [`Options::epoch_file`]; the store then writes under a fresh author id
    /// ([`Store::author_id`]), since the device it was copied from may have used its author's next counters already.
    ///
    /// With [`Options::key`], the file is encrypted; a key that does not open it fails with [`Error::WrongKey`] (or
    /// [`Error::NotEncrypted`]) before anything is written, and so does opening an encrypted store without a key.
    pub fn open_with(path: impl AsRef<FsPath>, options: Options) -> Result<Store> {
        let path = path.as_ref().to_path_buf();
        let mut conn = encryption::open_connection(&path, options.key.as_ref())?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // The store uses a few dozen distinct statements; rusqlite's default cache of 16 would re-prepare them.
        conn.set_prepared_statement_cache_capacity(64);
        stable_query_plans(&conn);
        // A new file returns the pages deletions free to the system when asked (`Store::collect_garbage`); on a
        // file that already has tables this changes nothing (the collection converts it).
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(
            None,
            "synchronous",
            match options.durability {
                Durability::Full => "FULL",
                Durability::Normal => "NORMAL",
            },
        )?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // A store in memory has no WAL. A file's WAL is checkpointed by a thread of the store's, off the writer's
        // path (see `checkpoints`).
        let readers = readers::Readers::new(&path, options.key.clone()).map(Arc::new);
        let checkpoints = match &readers {
            Some(readers) => {
                let checkpoints = checkpoints::Checkpoints::new(readers.clone(), path.display().to_string());
                checkpoints::Checkpoints::install(&checkpoints, &mut conn)?;
                Some(checkpoints)
            }
            None => None,
        };
        schema::migrate(&mut conn)?;
        let peer = {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let peer = match meta_u64(&tx, "peer_id")? {
                Some(p) => p,
                None => {
                    let p = options.sources.random_u64();
                    meta_put_u64(&tx, "peer_id", p)?;
                    log::info!("new store at {} with peer id {:016x}", path.display(), p);
                    p
                }
            };
            tx.commit()?;
            PeerId(peer)
        };
        let vault: Arc<dyn KeyVault> = match &options.keys {
            Some(vault) => vault.clone(),
            None if in_memory(&path) => Arc::new(crate::security::MemoryVault::default()),
            None => Arc::new(crate::security::FileVault::new(encryption::sibling(&path, "-keys"))),
        };
        let sidecar = (!in_memory(&path))
            .then(|| options.epoch_file.clone().unwrap_or_else(|| encryption::sibling(&path, "-epoch")));
        let mut inner = Inner {
            conn,
            vault: vault.clone(),
            author: peer,
            peer,
            signer: None,
            own_permissions: None,
            clock: Hlc::new(Timestamp::ZERO),
            sources: options.sources.clone(),
            next_counter: 1,
            cache: DocCache::new(options.cache_bytes),
            held: Summary::new(),
            folded: Summary::new(),
            pending: pending::PendingCounts::default(),
            digests: equivocation::DigestCache::default(),
            evicted: HashSet::new(),
            forgotten: HashMap::new(),
            data_version: 0,
            unannounced: false,
            observers: Observers::default(),
            generation: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        };
        let generation = inner.generation.clone();
        // Before the store takes up its signing key: keys an older version kept in the database move to the vault.
        let restored = match &sidecar {
            Some(sidecar) => inner.is_restored_copy(sidecar)?,
            None => false,
        };
        inner.move_keys_out(restored)?;
        inner.reload()?;
        inner.backfill_change_hashes()?;
        if let Some(sidecar) = &sidecar {
            // The sidecar holds only the epoch (8 random bytes), nothing of the store's data: it needs no encryption.
            inner.check_open_epoch(sidecar)?;
        }
        Ok(Store {
            shared: Arc::new(Shared {
                inner: Mutex::new(inner),
                delivery: Delivery::default(),
                path,
                peer,
                encrypted: options.key.is_some(),
                vault,
                listeners: Mutex::new(Vec::new()),
                next_listener: std::sync::atomic::AtomicU64::new(1),
                readers,
                checkpoints,
                generation,
                usage: Mutex::new(budget::Usage::default()),
                usage_clock: options.sources.clone(),
            }),
        })
    }

    /// This store's peer id (persistent). It is also the author id of the store's changes, unless a write after
    /// [`Store::evict`] had to start a new author (see [`Store::author_id`]).
    pub fn peer_id(&self) -> PeerId {
        self.shared.peer
    }

    /// The author id under which this store's next changes are made ([`Change::peer`](crate::Change)): its peer
    /// id, or a new id once a write to a document whose earlier changes by this store were evicted (and have not
    /// come back) had to start a new chain of changes, or once the store saw its author id at counters it never
    /// wrote (a change forged under its id, a peer's summary claiming such changes, a restored copy of its database
    /// file: see [`Store::open_with`]). Nothing written before is lost: the old author's changes keep replicating.
    pub fn author_id(&self) -> Result<PeerId> {
        let mut inner = self.lock();
        inner.refresh()?;
        Ok(inner.author)
    }

    /// The database file.
    pub fn path(&self) -> &FsPath {
        &self.shared.path
    }

    /// Writes everything committed into the database file itself (a WAL checkpoint), e.g. before the file is
    /// copied or compared. Waits for other connections' readers and writers of this file, and for a checkpoint
    /// under way (the store's own, in the background: see `store/checkpoints.rs`), up to 10 s each.
    pub fn checkpoint(&self) -> Result<()> {
        let inner = self.lock();
        checkpoints::checkpoint_whole(&inner.conn)?;
        Ok(())
    }

    /// Whether the store was opened with a key ([`Options::key`]): its file is encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.shared.encrypted
    }

    /// Re-encrypt the store under `new` (SQLCipher's `PRAGMA rekey`): every page is rewritten under the new key in
    /// one transaction — a crash leaves the store under the old key or the new one, whole — then the WAL is
    /// checkpointed into the file. From then on only `new` opens it. Other connections to the file (another
    /// process) must be closed first: they keep the old key and fail on their next read. Takes time in proportion
    /// to the file's size. Fails with [`Error::NotEncrypted`] on a store opened without a key (see
    /// [`Store::encrypt_file`]).
    pub fn change_key(&self, new: &StoreKey) -> Result<()> {
        if !self.shared.encrypted {
            return Err(Error::NotEncrypted);
        }
        let inner = self.lock();
        encryption::change_key(&inner.conn, new)?;
        if let Some(readers) = &self.shared.readers {
            readers.rekeyed(new.clone());
        }
        log::info!("store {} re-keyed", self.shared.path.display());
        Ok(())
    }

    /// Encrypt the unencrypted store at `path` with `key`, in place, so that it opens with [`Options::key`] from
    /// then on (an app that turns encryption on for stores created before). The store must be closed everywhere
    /// (every [`Store`] on it in this process and others dropped): it fails with an I/O error of kind
    /// `ResourceBusy` when it sees it open. The encrypted copy is written beside it (`<path>-encrypting`, SQLCipher's
    /// `sqlcipher_export`) and renamed over it once complete, so a crash leaves either file whole. Fails with
    /// [`Error::WrongKey`] when `path` is not an unencrypted store (e.g. already encrypted), and with
    /// [`Error::EncryptionUnavailable`] without the cargo feature `encryption`.
    pub fn encrypt_file(path: impl AsRef<FsPath>, key: &StoreKey) -> Result<()> {
        let path = path.as_ref();
        encryption::encrypt_file(path, key)?;
        log::info!("store {} encrypted", path.display());
        Ok(())
    }

    // ---- device-local settings ----

    /// A device-local setting (e.g. the device's identity key): kept in this file only, never replicated.
    /// `None` when it was never set.
    pub fn local_value(&self, key: &str) -> Result<Option<Vec<u8>>> {
        check_name("setting name", key)?;
        let inner = self.lock();
        meta_get(&inner.conn, &format!("local:{key}"))
    }

    /// Set a device-local setting (see [`Store::local_value`]), replacing any previous value.
    pub fn set_local_value(&self, key: &str, value: &[u8]) -> Result<()> {
        check_name("setting name", key)?;
        meta_put(&self.lock().conn, &format!("local:{key}"), value)
    }

    /// The device-local setting `key`, set to `value` first if it was never set — atomically, so that two
    /// processes opening the same file for the first time agree on one value. Returns the value in force.
    pub fn local_value_or_insert(&self, key: &str, value: &[u8]) -> Result<Vec<u8>> {
        check_name("setting name", key)?;
        let key = format!("local:{key}");
        let inner = self.lock();
        inner
            .conn
            .prepare_cached("INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING")?
            .execute(params![key, value])?;
        meta_get(&inner.conn, &key)?.ok_or_else(|| Error::Corrupt(format!("setting {key} vanished")))
    }

    /// The revocation lists this device keeps (each encoded; see [`crate::enrolment::install_revocations`]).
    pub(crate) fn revocation_lists(&self) -> Result<Vec<Vec<u8>>> {
        let Some(bytes) = self.local_value(REVOCATIONS_SETTING)? else { return Ok(Vec::new()) };
        // Written by this store only; unreadable bytes count as none kept (the lists come again from peers).
        Ok(postcard::from_bytes(&bytes).unwrap_or_default())
    }

    /// Replaces the revocation lists this device keeps.
    pub(crate) fn set_revocation_lists(&self, lists: &[Vec<u8>]) -> Result<()> {
        let bytes = postcard::to_stdvec(lists).map_err(|e| Error::Corrupt(format!("revocation lists: {e}")))?;
        self.set_local_value(REVOCATIONS_SETTING, &bytes)
    }

    /// Forget a device-local setting (see [`Store::local_value`]).
    pub fn remove_local_value(&self, key: &str) -> Result<()> {
        check_name("setting name", key)?;
        self.lock().conn.execute("DELETE FROM meta WHERE key = ?1", params![format!("local:{key}")])?;
        Ok(())
    }

    /// Apply received changes in one transaction (see [`Replica::apply_changes`]), checked by `check` in
    /// certificate mode.
    pub(crate) fn apply_remote_changes(
        &self,
        changes: &[DocChange],
        check: Option<&dyn crate::security::ChangeCheck>,
    ) -> Result<ApplyReport> {
        crate::crdt::change::check_batch_cost(changes.iter().map(|dc| &dc.change))?;
        let ((), report) = self.transact(|txn| {
            txn.expire_pending()?;
            for dc in changes {
                txn.apply_remote(dc, check)?;
            }
            Ok(())
        })?;
        Ok(report)
    }

    /// The device's secret `name` ([`vault::NOISE_KEY`], [`vault::SIGNING_KEY`]) from the store's key vault; the
    /// first time, `make` makes it and the vault keeps it. Of two callers at once (threads, processes) one makes
    /// the secret both get.
    pub(crate) fn device_secret<E: From<Error>>(
        &self,
        name: &str,
        make: impl FnOnce() -> std::result::Result<Vec<u8>, E>,
    ) -> std::result::Result<Vec<u8>, E> {
        let vault = &*self.shared.vault;
        if let Some(secret) = vault::load_bounded(vault, name).map_err(Error::KeyVault)? {
            return Ok(secret);
        }
        if vault.create(name, &make()?).map_err(Error::KeyVault)? {
            log::info!("store {}: made the device's {name}", self.shared.peer);
        }
        let kept = vault::load_bounded(vault, name).map_err(Error::KeyVault)?;
        Ok(kept.ok_or_else(|| Error::KeyVault(std::io::Error::other(format!("the vault lost the {name} it made"))))?)
    }

    /// Take up the device's signing key (just made by [`crate::enrolment`]): from now on this store writes under
    /// author ids derived from it and signs every change (see [`crate::security::authorship`]).
    pub(crate) fn load_signing_key(&self) -> Result<()> {
        let mut inner = self.lock();
        inner.refresh()?;
        inner.load_signer()
    }

    /// Run a long piece of upkeep (compaction, attestation, vacuum) as `step` under the store's lock, again and
    /// again until it says it is done, letting the threads waiting for the lock — an app's writes — take it between
    /// two steps. The lock is not fair: a thread that lets it go and takes it again at once keeps it from threads it
    /// just woke (measured: an app's write waited 7 s through a compaction of 200 transactions of a third of a second
    /// each); a millisecond asleep lets them in.
    fn in_steps(&self, mut step: impl FnMut(&mut Inner) -> Result<bool>) -> Result<()> {
        in_turns(|| step(&mut self.lock()))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        match self.shared.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => {
                // A panic while holding the lock: forget decoded state, roll back whatever was open.
                let mut g = poisoned.into_inner();
                if !g.conn.is_autocommit() {
                    let _ = g.conn.execute_batch("ROLLBACK");
                }
                g.cache.clear();
                g.data_version = -1;
                g
            }
        }
    }

    /// Run `f` in one write transaction: all its changes commit together, or none (when `f` or the commit fails).
    /// Observers get one event per observed result the transaction changed, after it commits.
    pub fn write<R>(&self, f: impl FnOnce(&mut WriteTxn<'_>) -> Result<R>) -> Result<R> {
        let (r, _) = self.transact(|txn| f(txn))?;
        Ok(r)
    }

    fn transact<R>(&self, f: impl FnOnce(&mut WriteTxn<'_>) -> Result<R>) -> Result<(R, ApplyReport)> {
        let mut inner = self.lock();
        inner.conn.execute_batch("BEGIN IMMEDIATE")?;
        let outcome = (|| {
            inner.refresh()?;
            let saved = (inner.held.clone(), inner.folded.clone(), inner.next_counter, inner.clock.clone());
            let author = inner.author;
            let mut txn = WriteTxn::new(&mut inner);
            match f(&mut txn).and_then(|r| Ok((r, txn.persist()?))) {
                Ok((r, events)) => {
                    let report = txn.take_report();
                    let wrote = txn.wrote();
                    txn.finish();
                    Ok((r, events, report, wrote))
                }
                Err(e) => {
                    drop(txn);
                    (inner.held, inner.folded, inner.next_counter, inner.clock) = saved;
                    if inner.author != author {
                        // A new author was started and rolled back: read everything again from the database.
                        inner.author = author;
                        inner.data_version = -1;
                    }
                    Err(e)
                }
            }
        })();
        match outcome {
            Ok((r, events, report, wrote)) => match inner.conn.execute_batch("COMMIT") {
                Ok(()) => {
                    self.shared.generation.fetch_add(1, Ordering::AcqRel);
                    // Our own commits do not change `data_version`: no reload needed.
                    self.shared.delivery.enqueue(events);
                    drop(inner);
                    self.shared.delivery.run();
                    if wrote {
                        self.notify_commit();
                    }
                    Ok((r, report))
                }
                Err(e) => {
                    let _ = inner.conn.execute_batch("ROLLBACK");
                    inner.cache.clear();
                    inner.data_version = -1;
                    Err(e.into())
                }
            },
            Err(e) => {
                let _ = inner.conn.execute_batch("ROLLBACK");
                // The pending rows as committed (the transaction may have added or dropped some).
                match pending::PendingCounts::load(&inner.conn) {
                    Ok(p) => inner.pending = p,
                    Err(_) => inner.data_version = -1,
                }
                // Documents touched by the failed transaction were taken out of the cache and are reloaded from the
                // database when next needed.
                Err(e)
            }
        }
    }

    /// Insert or update a document from a JSON object (see [`WriteTxn::upsert`]). Returns its id.
    pub fn upsert(&self, collection: &str, json: Json) -> Result<String> {
        self.write(move |t| t.upsert(collection, json))
    }

    /// Insert or update a document, writing only what differs from the stored one (see
    /// [`WriteTxn::upsert_changed`]). Returns its id.
    pub fn upsert_changed(&self, collection: &str, json: Json) -> Result<String> {
        self.write(move |t| t.upsert_changed(collection, json))
    }

    /// Insert or update a document from a JSON text.
    pub fn upsert_json(&self, collection: &str, json: &str) -> Result<String> {
        let v: Json = serde_json::from_str(json).map_err(|e| Error::InvalidJson(e.to_string()))?;
        self.upsert(collection, v)
    }

    /// Insert or update a document from typed values (see [`WriteTxn::upsert_value`]). Returns its id.
    pub fn upsert_value(&self, collection: &str, id: Option<&str>, fields: Value) -> Result<String> {
        self.write(move |t| t.upsert_value(collection, id, fields))
    }

    /// Edit an existing document field by field, in one transaction. Cost: what the edit changed, not the
    /// document's size (register values over 16 KiB are kept beside the document's view and not rewritten).
    pub fn update<R>(&self, collection: &str, id: &str, f: impl FnOnce(&mut DocEditor<'_>) -> Result<R>) -> Result<R> {
        self.write(|t| t.update(collection, id, f))
    }

    /// Remove a document: a delete that replicates. Returns whether it existed.
    pub fn remove(&self, collection: &str, id: &str) -> Result<bool> {
        self.write(|t| t.remove(collection, id))
    }

    /// Drop a document from this device only (not a delete; nothing replicates). Its changes are forgotten here,
    /// and changes to it arriving from other devices are ignored, until [`Store::unevict`]. Returns whether it was
    /// here.
    ///
    /// After [`Store::unevict`], the document is empty here until sync brings its changes back. A write to it
    /// before then knows nothing of its earlier content, so it merges with that content like a concurrent write
    /// from another device: nothing is lost on either side. (If this store had written to the document, it then
    /// continues under a new author id: its changes to one document must each follow the one before.)
    pub fn evict(&self, collection: &str, id: &str) -> Result<bool> {
        check_collection(collection)?;
        check_doc_id(id)?;
        let (existed, _) = self.transact(|txn| txn.evict(collection, id))?;
        Ok(existed)
    }

    /// Accept a document evicted earlier again: changes to it arriving from other devices are applied.
    pub fn unevict(&self, collection: &str, id: &str) -> Result<()> {
        let mut inner = self.lock();
        inner.conn.execute("DELETE FROM evicted WHERE collection = ?1 AND id = ?2", params![collection, id])?;
        inner.evicted.remove(&(collection.to_string(), id.to_string()));
        Ok(())
    }

    /// A document as JSON (with its `_id`), or `None`.
    pub fn get(&self, collection: &str, id: &str) -> Result<Option<Json>> {
        check_collection(collection)?;
        check_doc_id(id)?;
        const SQL: &str = "SELECT doc, view, parts FROM docs WHERE collection = ?1 AND id = ?2";
        // One statement when the view is whole and not stale (nearly always); with large values beside it, a read
        // transaction for the view and its parts together.
        if let Some(readers) = &self.shared.readers {
            const WHOLE: &str = "SELECT doc, view, CASE WHEN stale = 1 THEN -1 ELSE parts END \
                                 FROM docs WHERE collection = ?1 AND id = ?2";
            let whole = readers.read_one(|conn| docs::whole_view(conn, WHOLE, params![collection, id]))?;
            if let Some(found) = whole {
                if found.is_some() {
                    self.note_doc_read(collection, id);
                }
                return Ok(found);
            }
        }
        let found = self.read_views(Some(collection), |conn| docs::stored_view(conn, SQL, params![collection, id]))?;
        if found.is_some() {
            self.note_doc_read(collection, id);
        }
        Ok(found)
    }

    /// A document's full CRDT state, for typed reads (conflicts, kinds, counters' contributions).
    pub fn document(&self, collection: &str, id: &str) -> Result<Option<Document>> {
        check_collection(collection)?;
        check_doc_id(id)?;
        let mut inner = self.lock();
        inner.refresh()?;
        let key = (collection.to_string(), id.to_string());
        let cached = match inner.cache.take(&key) {
            Some(c) => Some(c),
            None => docs::load(&inner.conn, collection, id)?,
        };
        let doc = cached.map(|c| {
            let doc = c.doc.clone();
            inner.cache.put(key, c);
            doc
        });
        drop(inner);
        if doc.is_some() {
            self.note_doc_read(collection, id);
        }
        Ok(doc)
    }

    /// Every existing document of a collection, by id.
    pub fn list(&self, collection: &str) -> Result<Vec<Json>> {
        self.find(collection, &Query::all())
    }

    /// The documents of a collection matching `query`, in its order, up to its limit.
    ///
    /// Runs in SQLite: the filter, sort and limit become SQL over the documents' JSON views, using the indexes
    /// declared on the collection ([`Store::create_index`]), and only the rows returned are parsed (see
    /// [`Store::explain`]). Reads the last committed state on a connection of its own: it does not wait for a write
    /// in progress (a sync catch-up being applied, say).
    pub fn find(&self, collection: &str, query: &Query) -> Result<Vec<Json>> {
        check_collection(collection)?;
        let found = self.read_views(Some(collection), |conn| find::run(conn, collection, query))?;
        let now = self.shared.usage_clock.now_ms();
        let mut usage = self.usage();
        Ok(found
            .into_iter()
            .map(|(id, v)| {
                usage.doc(collection, &id, now);
                v
            })
            .collect())
    }

    /// How [`Store::find`] runs `query` on `collection`: the indexes it uses, whether the filter and the sort are
    /// done in SQL, and SQLite's plan.
    pub fn explain(&self, collection: &str, query: &Query) -> Result<QueryPlan> {
        check_collection(collection)?;
        self.read(|conn| find::explain(conn, collection, query))
    }

    /// Declare an index on the fields `paths` (most significant first) of `collection`'s documents, for queries
    /// that filter on them (equalities, ranges, `in`), sort by them, or both, with a limit: an index on
    /// `["status", "due"]` serves `status == "open"` sorted by `due`. Kept up to date as documents change, in this
    /// store only (indexes are not replicated); declaring it again does nothing. Returns whether it is new. Takes
    /// time in proportion to the collection's size when the collection is not empty.
    ///
    /// Fails with [`Error::InvalidIndex`] for no path, more than [`MAX_INDEX_PATHS`], a key holding `"`, `\` or a
    /// control character, or beyond [`MAX_INDEXES`] indexes.
    pub fn create_index(&self, collection: &str, paths: &[&str]) -> Result<bool> {
        check_collection(collection)?;
        let paths = paths.iter().map(|p| crate::query::Path::parse(p)).collect::<std::result::Result<Vec<_>, _>>()?;
        let inner = self.lock();
        indexes::create(&inner.conn, collection, &paths)
    }

    /// Drop the index on `paths` of `collection` ([`Store::create_index`]). Returns whether there was one.
    pub fn drop_index(&self, collection: &str, paths: &[&str]) -> Result<bool> {
        check_collection(collection)?;
        let paths = paths.iter().map(|p| crate::query::Path::parse(p)).collect::<std::result::Result<Vec<_>, _>>()?;
        let inner = self.lock();
        indexes::drop(&inner.conn, collection, &paths)
    }

    /// The indexes declared on this store, by collection.
    pub fn indexes(&self) -> Result<Vec<Index>> {
        self.read(indexes::list)
    }

    /// Runs `f` on a connection for reads: a reader's, in one read transaction (it does not wait for the writer),
    /// or, for a store in memory, the writer's under the store's lock.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&Connection) -> Result<R>) -> Result<R> {
        match &self.shared.readers {
            Some(readers) => readers.read(f),
            None => f(&self.lock().conn),
        }
    }

    /// [`Store::read`] for `f` reading documents' stored views (of `collection`, or of every collection): the
    /// stale ones are written first (see [`docs::may_defer_view`]). When there are none — a reader finds so in
    /// the same read transaction as `f` — nothing waits for the writer.
    pub(crate) fn read_views<R>(&self, collection: Option<&str>, f: impl Fn(&Connection) -> Result<R>) -> Result<R> {
        if let Some(readers) = &self.shared.readers {
            let fresh =
                readers.read(|conn| if docs::any_stale(conn, collection)? { Ok(None) } else { f(conn).map(Some) })?;
            if let Some(r) = fresh {
                return Ok(r);
            }
        }
        let mut inner = self.lock();
        inner.refresh()?;
        inner.flush_views(collection)?;
        // Under the store's lock no write can leave another view stale before `f` reads.
        match &self.shared.readers {
            Some(readers) => readers.read(f),
            None => f(&inner.conn),
        }
    }

    /// The documents this store cannot read: a stored view that does not parse, or a CRDT state that cannot be
    /// rebuilt (a snapshot that does not decode is rebuilt from the change log, so it is listed only when the log
    /// is damaged too). They are quarantined: reads, queries and observers skip them (`get` gives `None`) with a
    /// warning in the log, and the rest of the store keeps working and syncing. Linear in the store.
    pub fn quarantined(&self) -> Result<Vec<Quarantined>> {
        docs::quarantined(&self.lock().conn)
    }

    /// Run SQLite's integrity check on the database file: `Ok` when it reports `ok`.
    pub fn check_integrity(&self) -> Result<()> {
        let inner = self.lock();
        let mut stmt = inner.conn.prepare("PRAGMA integrity_check")?;
        let lines = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<rusqlite::Result<Vec<String>>>()?;
        if lines == ["ok"] {
            Ok(())
        } else {
            Err(Error::Corrupt(lines.join("; ")))
        }
    }

    /// Every equivocation this store has seen — two different changes for one author and counter, the one it holds
    /// and the one it refused — by author and counter (at most [`MAX_EQUIVOCATION_RECORDS`]). Evidence that the
    /// author (or whoever holds its id) forged or forked its changes.
    pub fn equivocations(&self) -> Result<Vec<Equivocation>> {
        let mut inner = self.lock();
        inner.refresh()?;
        inner.equivocations()
    }

    /// How many received changes wait for their dependencies (at most [`MAX_PENDING_CHANGES`]).
    pub fn pending_changes(&self) -> Result<usize> {
        let mut inner = self.lock();
        inner.refresh()?;
        Ok(inner.pending.total())
    }

    /// The names of the collections holding at least one document.
    pub fn collections(&self) -> Result<Vec<String>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached("SELECT DISTINCT collection FROM docs ORDER BY collection")?;
            let names = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(names)
        })
    }

    /// Observe a query on a collection: returns the current result and a handle; `callback` then gets one
    /// [`ChangeEvent`] per committed transaction (local or from sync) that changes the result.
    pub fn observe(
        &self,
        collection: &str,
        query: Query,
        callback: impl Fn(&ChangeEvent) + Send + Sync + 'static,
    ) -> Result<(Vec<Json>, ObserverHandle)> {
        check_collection(collection)?;
        // The first result from a reader (without waiting for a write in progress), taken as the observer's if no
        // commit landed between it and the registration; otherwise computed again under the lock.
        let seen = self.shared.generation.load(Ordering::Acquire);
        let first = match &self.shared.readers {
            Some(_) => Some(self.read_views(Some(collection), |conn| find::run(conn, collection, &query))?),
            None => None,
        };
        let mut inner = self.lock();
        inner.refresh()?;
        let results = match first {
            Some(first) if self.shared.generation.load(Ordering::Acquire) == seen => first,
            _ => {
                inner.flush_views(Some(collection))?;
                inner.query(collection, &query)?
            }
        };
        let current = results.iter().map(|(_, v)| v.clone()).collect();
        let alive = Arc::new(AtomicBool::new(true));
        let id = inner.observers.add(Registered {
            collection: collection.to_string(),
            query,
            results,
            callback: Arc::new(callback),
            alive: alive.clone(),
        });
        Ok((current, ObserverHandle { id, alive, shared: Arc::downgrade(&self.shared) }))
    }

    // ---- replication ----

    // ---- attachments ----

    /// Store an attachment read from `reader` (streamed: never all in memory) and return its token, to put in a
    /// document field. Content already stored is kept once.
    pub fn put_attachment(&self, reader: impl Read, meta: BTreeMap<String, String>) -> Result<AttachmentToken> {
        self.blob_transaction(|conn, temp| blobs::write(conn, reader, meta, temp))
    }

    /// Run `f` in one transaction with a fresh temporary key for chunks whose hash is not known yet.
    fn blob_transaction<R>(&self, f: impl FnOnce(&Connection, blobs::Staging) -> Result<R>) -> Result<R> {
        let inner = self.lock();
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&inner.sources.random_u64().to_le_bytes());
        key[8..16].copy_from_slice(b"tmp-blob");
        let staging = blobs::Staging { key, now_ms: inner.sources.now_ms() };
        inner.immediate(|conn| f(conn, staging))
    }

    /// Store an attachment from bytes in memory.
    pub fn put_attachment_bytes(&self, bytes: &[u8], meta: BTreeMap<String, String>) -> Result<AttachmentToken> {
        self.put_attachment(bytes, meta)
    }

    /// Whether the bytes of an attachment are stored here.
    pub fn has_attachment(&self, token: &AttachmentToken) -> Result<bool> {
        let inner = self.lock();
        Ok(blobs::stored_len(&inner.conn, &token.hash)?.is_some())
    }

    /// Read an attachment's bytes as a stream. The content is checked against the token's hash as it is read: a
    /// mismatch is reported as an `InvalidData` I/O error at the end.
    pub fn open_attachment(&self, token: &AttachmentToken) -> Result<AttachmentReader> {
        let inner = self.lock();
        let len = blobs::stored_len(&inner.conn, &token.hash)?.ok_or_else(|| blobs::not_found(&token.hash))?;
        if len != token.len {
            return Err(Error::AttachmentCorrupt {
                hash: token.hash_hex(),
                reason: "length differs from token".into(),
            });
        }
        drop(inner);
        self.note_blob_read(token.hash);
        Ok(AttachmentReader {
            store: self.clone(),
            hash: token.hash,
            len,
            next_chunk: 0,
            buf: Vec::new(),
            pos: 0,
            read: 0,
            hasher: blake3::Hasher::new(),
        })
    }

    /// An attachment's bytes in memory (for small attachments; see [`Store::open_attachment`] for a stream).
    pub fn attachment_bytes(&self, token: &AttachmentToken) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(token.len.min(1 << 30) as usize);
        self.open_attachment(token)?.read_to_end(&mut out)?;
        Ok(out)
    }
}

/// A stream over an attachment's bytes, verified against its hash. Reads one chunk at a time.
pub struct AttachmentReader {
    store: Store,
    hash: [u8; 32],
    len: u64,
    next_chunk: u64,
    buf: Vec<u8>,
    pos: usize,
    read: u64,
    hasher: blake3::Hasher,
}

impl AttachmentReader {
    /// Total length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the attachment has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Read for AttachmentReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.buf.len() {
            if self.read >= self.len {
                return Ok(0);
            }
            let chunk = {
                let inner = self.store.lock();
                blobs::read_chunk(&inner.conn, &self.hash, self.next_chunk)
                    .map_err(|e| std::io::Error::other(e.to_string()))?
            };
            let chunk = chunk
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "attachment chunk missing"))?;
            if chunk.is_empty() {
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "empty attachment chunk"));
            }
            self.hasher.update(&chunk);
            self.read += chunk.len() as u64;
            self.next_chunk += 1;
            if self.read > self.len || (self.read == self.len && *self.hasher.finalize().as_bytes() != self.hash) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "attachment content does not match its hash",
                ));
            }
            self.buf = chunk;
            self.pos = 0;
        }
        Ok(blobs::drain(&self.buf, &mut self.pos, out))
    }
}

/// Run `turn` (which takes the store's lock, or opens a write transaction, and lets it go) until it says it is done,
/// asleep for a millisecond between two turns so that the threads it kept waiting for the lock go first (see
/// [`Store::in_steps`]).
fn in_turns(mut turn: impl FnMut() -> Result<bool>) -> Result<()> {
    loop {
        if turn()? {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}
