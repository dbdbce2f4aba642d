//! The replica seam: what sync needs from storage, and nothing an app needs.
//!
//! The sync [`Engine`](crate::sync::Engine) reads and writes a device's data only through a [`Replica`]: the
//! summary of the changes held, the changes another replica lacks (by summary, from the change log), applying
//! received changes, and the parts of attachments in transfer. A [`Store`] is one implementation
//! ([`Store::replica`] gives its [`StoreReplica`] handle: SQLite on a device); another storage backend (a server on
//! PostgreSQL) implements the same trait, and the engine runs unchanged on top of it. Apps use [`Store`] itself:
//! documents, queries, observers, attachments.

use super::changelog::{row_entries, ENTRY_COLUMNS};
use super::{
    check_collection, check_doc_id, ApplyReport, AttestedState, AuthorDigest, DocChange, DocState, LogEntry, Store,
    Summary,
};
use crate::error::{Error, Result};
use crate::security::{ChangeCheck, RefusalReason};
use crate::store::blobs;
use rusqlite::{params, OptionalExtension};
use serde_json::Value as Json;

/// What sync needs from storage (see the module docs). Every call is a unit: it either happens whole or fails with
/// an error and changes nothing.
pub trait Replica: Send + Sync + 'static {
    /// The replica's peer id (sent in the sync Hello, informational).
    fn peer_id(&self) -> crate::PeerId;

    /// A compact summary of the changes this store holds, to send to another store.
    fn summary(&self) -> Result<Summary>;

    /// The changes this store holds that a store with `summary` lacks, in an order that applies cleanly.
    fn changes_since(&self, summary: &Summary) -> Result<Vec<DocChange>>;

    /// Apply changes received from other stores, in one transaction. Idempotent and order-independent: duplicates
    /// are skipped, and changes whose dependencies have not arrived are kept aside and applied once they do.
    ///
    /// Two kinds of bad change are told apart. A **malformed** change — one that fails validation, or refers to
    /// things its own declared dependencies do not contain, so that every honest store refuses it — fails the whole
    /// call with an error and nothing is written (the sync engine closes the link it came over: its sender is
    /// broken or hostile). A change that **conflicts** with what this store holds — another change of the same
    /// author covers some of its counters (an equivocation: see [`crate::Store::equivocations`]), or it does not
    /// follow its author's earlier changes to the document — is refused alone, counted in
    /// [`ApplyReport::refused`], and the rest of the batch is applied: a relay that received a forgery first must
    /// not refuse the honest changes that come after it.
    ///
    /// A change under this store's own author id that it did not write (a forgery, or the device a restored copy
    /// of this database came from) moves the store to a fresh author id before its next write.
    ///
    /// Cost: linear in the operations applied (one change of 60,000 operations costs ten times one of 6,000:
    /// `core/bench/complexity.sh` checks it on instruction counts), plus rewriting each touched document's view.
    fn apply_changes(&self, changes: &[DocChange]) -> Result<ApplyReport>;

    /// [`Replica::apply_changes`] in certificate mode: each change is applied only if `check` lets its author write
    /// it ([`ChangeCheck::may_write`], asked when the change's dependencies are here — at once, or when it leaves
    /// the pending changes); a change it does not is refused alone ([`ApplyReport::refusals`]), and the rest of the
    /// batch applied. (The default, for replicas that cannot evaluate permissions: every change refused.)
    fn apply_checked(&self, changes: &[DocChange], check: &dyn ChangeCheck) -> Result<ApplyReport> {
        let _ = check;
        let mut report = ApplyReport::default();
        for dc in changes {
            let why = RefusalReason::NotPermitted("this replica cannot check write permissions".into());
            report.refuse(crate::security::Refused::of(dc, why));
        }
        Ok(report)
    }

    /// Several batches (received on several links) applied at once: each as [`Replica::apply_changes`] (`check`
    /// `None`) or [`Replica::apply_checked`] would apply it alone, with a report — or an error, for a malformed
    /// batch — each, in order. A replica may write them in one transaction (a server with many links commits once
    /// for all of them), but a batch's error must not cost the others theirs. The default applies them one after
    /// the other.
    fn apply_batches(&self, batches: &[&[DocChange]], check: Option<&dyn ChangeCheck>) -> Vec<Result<ApplyReport>> {
        batches
            .iter()
            .map(|changes| match check {
                Some(check) => self.apply_checked(changes, check),
                None => self.apply_changes(changes),
            })
            .collect()
    }

    /// A peer's summary arrived: when it shows this store's author at counters the store never reached (changes
    /// forged under its id, or written by the device a restored copy of this database came from), the store moves
    /// to a fresh author id before its next write, so that none of its changes collides with one the mesh holds.
    fn notice_summary(&self, summary: &Summary) -> Result<()> {
        let _ = summary;
        Ok(())
    }

    /// The [`AuthorDigest`] of each author in `authors` this store holds changes of (every author it holds when
    /// `authors` is `None`), for a peer to compare with its own ([`Replica::differing_authors`]).
    fn author_digests(&self, authors: Option<&[crate::PeerId]>) -> Result<Vec<AuthorDigest>> {
        let _ = authors;
        Ok(Vec::new())
    }

    /// The authors of `theirs` of which this store holds the same counters as the peer that sent the digests, but
    /// other changes: an equivocation of each (logged here). Authors whose counters differ are not compared.
    fn differing_authors(&self, theirs: &[AuthorDigest]) -> Result<Vec<crate::PeerId>> {
        let _ = theirs;
        Ok(Vec::new())
    }

    /// `device` (a cloud peer if `cloud`) said it holds `summary`: compaction folds, however recent, what every
    /// device heard from within its horizon holds, and never what a cloud peer reached within it lacks (the cloud
    /// merges states, but keeps changes whole for its feed and equivocation checks). (The default, for replicas
    /// that do not compact: nothing kept.)
    fn keep_peer_summary(&self, device: &crate::security::DeviceKey, cloud: bool, summary: &Summary) -> Result<()> {
        let _ = (device, cloud, summary);
        Ok(())
    }

    /// The changes folded into the snapshot of the document with local number `doc`. (The default: none.)
    fn folded_of_doc(&self, doc: i64) -> Result<Summary> {
        let _ = doc;
        Ok(Summary::new())
    }

    /// The states of the documents with folded changes in neither `have` nor `skip`, each with the document's
    /// local number, in the order of those numbers from `from_doc` on, about `max_bytes` of them at most (at least
    /// one when there is any). Linear in the documents with folded changes it looks at. (The default: none.)
    fn states_missing(
        &self,
        have: &Summary,
        skip: &Summary,
        from_doc: i64,
        max_bytes: usize,
    ) -> Result<Vec<(i64, DocState)>> {
        let _ = (have, skip, from_doc, max_bytes);
        Ok(Vec::new())
    }

    /// Merge document states received from another device in one transaction (see [`DocState`]): each is merged
    /// into its document ([`crate::Document::join`]), after which the store holds its changes; kept-aside changes
    /// waiting for them are applied. A malformed state — one that does not decode, is over
    /// [`crate::store::MAX_STATE_BYTES`], holds what its version does not cover, or lists changes that do not fit
    /// its version — fails the whole call and nothing is written. States are trusted like unsigned changes:
    /// development mode only (certificate mode exchanges signed changes). (The default, for replicas that cannot
    /// merge states: each refused.)
    fn apply_states(&self, states: &[DocState]) -> Result<ApplyReport> {
        log::warn!("this replica cannot merge document states; {} refused", states.len());
        Ok(ApplyReport { refused: states.len(), ..ApplyReport::default() })
    }

    /// Certificate mode: the attested states (see [`crate::security::attestation`]) of the documents whose folded
    /// changes are not all in `have` or `skip`, as [`Replica::states_missing`] lists states: from document
    /// `from_doc` on, about `max_bytes` of them. (The default, for replicas that fold no signed change: none.)
    fn attested_states_missing(
        &self,
        have: &Summary,
        skip: &Summary,
        from_doc: i64,
        max_bytes: usize,
    ) -> Result<Vec<(i64, AttestedState)>> {
        let _ = (have, skip, from_doc, max_bytes);
        Ok(Vec::new())
    }

    /// Certificate mode: the changes this store holds but did not fold that no attested state it keeps holds (what
    /// it asks its peers for attested states of: [`crate::sync::wire::Message::WantAttested`]). (The default, for
    /// replicas that do not ask: none.)
    fn attestation_wanted(&self) -> Result<Summary> {
        Ok(Summary::new())
    }

    /// Certificate mode: the attested states this store keeps that hold some of `want`, from document `from_doc`
    /// on, about `max_bytes` of them. (The default: none.)
    fn attested_states_wanted(
        &self,
        want: &Summary,
        from_doc: i64,
        max_bytes: usize,
    ) -> Result<Vec<(i64, AttestedState)>> {
        let _ = (want, from_doc, max_bytes);
        Ok(Vec::new())
    }

    /// Certificate mode: the number of the last attested state this store kept (0: none; each one kept is numbered
    /// one past the ones before). (The default: 0.)
    fn attested_seq(&self) -> Result<i64> {
        Ok(0)
    }

    /// Certificate mode: the attested states kept after number `after` that hold some of `held` (the changes a
    /// peer holds, which it may then fold), in the order they were kept, about `max_bytes` of them; and the number
    /// of the last one looked at. (The default: none.)
    fn attested_kept_after(
        &self,
        after: i64,
        held: &Summary,
        max_bytes: usize,
    ) -> Result<(Vec<(i64, AttestedState)>, i64)> {
        let _ = (held, max_bytes);
        Ok((Vec::new(), after))
    }

    /// Certificate mode: merge attested states received from another device, already checked
    /// ([`crate::security::Signers::check_attested`]), in one transaction, as [`Replica::apply_states`] merges
    /// states, and keep them (to send on, and to fold the changes they hold). Kept-aside changes they make ready
    /// are applied through `check`. (The default, for replicas that cannot keep them: each refused.)
    fn apply_attested_states(&self, states: &[AttestedState], check: &dyn ChangeCheck) -> Result<ApplyReport> {
        let _ = check;
        log::warn!("this replica cannot keep attested states; {} refused", states.len());
        Ok(ApplyReport { refused: states.len(), ..ApplyReport::default() })
    }

    /// Changes this store holds that are in neither `have` nor `skip`, in log order (causal within each
    /// document), about `max_bytes` of them at most (always at least one when there is any).
    fn log_missing(&self, have: &Summary, skip: &Summary, max_bytes: usize) -> Result<Vec<LogEntry>>;

    /// Every change of one document, in log order.
    fn log_of_doc(&self, doc: i64) -> Result<Vec<LogEntry>>;

    /// A document's JSON view by its local number (`None` when it does not exist or was removed).
    fn view_of_doc(&self, doc: i64) -> Result<Option<Json>>;

    /// A document's local number, if the store has it.
    fn doc_number(&self, collection: &str, id: &str) -> Result<Option<i64>>;

    /// Which of `docs` (collection, id) the store has, in their order: [`Replica::doc_number`] for many at once
    /// (override it where one look-up for all is cheaper).
    fn has_docs(&self, docs: &[(&str, &str)]) -> Result<Vec<bool>> {
        docs.iter().map(|(collection, id)| Ok(self.doc_number(collection, id)?.is_some())).collect()
    }

    /// The length of the attachment `hash` if its bytes are stored here.
    fn attachment_len(&self, hash: &[u8; 32]) -> Result<Option<u64>>;

    /// Stored chunk `idx` (of [`CHUNK_SIZE`](super::CHUNK_SIZE) bytes, the last one shorter) of attachment `hash`.
    fn read_attachment_chunk(&self, hash: &[u8; 32], idx: u64) -> Result<Vec<u8>>;

    /// Bytes of the attachment `hash` received so far from other devices (a fetch resumes from there).
    fn attachment_received(&self, hash: &[u8; 32]) -> Result<u64>;

    /// Received bytes of the attachment `hash` from `offset` on, as far as one received part goes; `None` when
    /// the bytes at `offset` have not been received (a relay passes parts on with this while it still fetches).
    fn read_attachment_received(&self, hash: &[u8; 32], offset: u64) -> Result<Option<Vec<u8>>>;

    /// Drop the received bytes of attachment `hash` from `offset` on (a fetch resumes from there). `offset` must be
    /// where one received part starts, e.g. where a request to another device began.
    fn forget_attachment_received_from(&self, hash: &[u8; 32], offset: u64) -> Result<()>;

    /// The attachments of which received bytes are kept (fetches in progress, or left by an earlier run), at most
    /// `max` of them. The engine lets those nobody fetches expire. (The default, for replicas that keep no parts
    /// across runs: none.)
    fn attachments_received(&self, max: usize) -> Result<Vec<[u8; 32]>> {
        let _ = max;
        Ok(Vec::new())
    }

    /// Keep the revocation lists this device holds (each encoded, one per issuer; they replace those kept before),
    /// so that they hold across restarts ([`crate::enrolment::load`] reads them back). (The default, for replicas
    /// that keep no device settings: nothing kept.)
    fn keep_revocation_lists(&self, lists: &[Vec<u8>]) -> Result<()> {
        let _ = lists;
        Ok(())
    }

    /// Certificate mode: keep `frontier` (checked by the caller) when it is newer than the one kept: a later
    /// roster's, or the same roster's holding more. Returns whether it was kept. (The default, for replicas that
    /// keep none: not kept.)
    fn keep_frontier(&self, frontier: &crate::security::StableFrontier) -> Result<bool> {
        let _ = frontier;
        Ok(false)
    }

    /// The stable frontier kept ([`Replica::keep_frontier`]). (The default: none.)
    fn stable_frontier(&self) -> Result<Option<crate::security::StableFrontier>> {
        Ok(None)
    }

    /// Whether a device that may read what `rules` allow may read some document of this store that references the
    /// attachment `hash` (certificate mode: attachment bytes go only to devices that may read a document holding
    /// their token, or that held it once: its readers received that change). At most
    /// [`MAX_ATTACHMENT_READ_CHECKS`] of the documents naming the hash are looked at, so that a peer asking for
    /// many attachments costs an index lookup and a bounded number of checks each. (The default, for replicas that
    /// cannot tell: no.)
    fn attachment_readable(&self, hash: &[u8; 32], rules: &crate::security::certificate::ReadRules) -> Result<bool> {
        let _ = (hash, rules);
        Ok(false)
    }

    /// Keep the certificate chain (encoded) of the signing device `device`, checked by the caller, replacing one
    /// kept before (see [`crate::security::Signers`]). (The default: nothing kept; chains are then sent again.)
    fn keep_certificate(&self, device: crate::PeerId, chain: &[u8]) -> Result<()> {
        let _ = (device, chain);
        Ok(())
    }

    /// The certificate chain kept for the signing device `device` ([`Replica::keep_certificate`]).
    fn certificate(&self, device: crate::PeerId) -> Result<Option<Vec<u8>>> {
        let _ = device;
        Ok(None)
    }

    /// Keep `data`, the bytes of attachment `hash` at `offset`, received from another device. `offset` must be
    /// where the received bytes end. Returns the bytes received so far.
    fn receive_attachment_part(&self, hash: &[u8; 32], offset: u64, data: &[u8]) -> Result<u64>;

    /// All `total` bytes of attachment `hash` were received: verify them against the hash and store the attachment
    /// (in one transaction). On a mismatch the received bytes are dropped and an error returned.
    fn finish_attachment(&self, hash: &[u8; 32], total: u64) -> Result<()>;
}

/// The certificate chain kept for the signing device `device` ([`keep_certificate`]).
pub(super) fn certificate_of(conn: &rusqlite::Connection, device: crate::PeerId) -> Result<Option<Vec<u8>>> {
    Ok(conn
        .prepare_cached("SELECT chain FROM certificates WHERE device = ?1")?
        .query_row(params![device.0 as i64], |r| r.get(0))
        .optional()?)
}

/// The stable frontier this store keeps ([`Replica::keep_frontier`]).
pub(super) fn kept_frontier(conn: &rusqlite::Connection) -> Result<Option<crate::security::StableFrontier>> {
    let Some(bytes) = super::inner::meta_get(conn, &format!("local:{}", super::FRONTIER_SETTING))? else {
        return Ok(None);
    };
    // Written by this store only; unreadable bytes count as none kept (it comes again from peers).
    Ok(postcard::from_bytes(&bytes).ok())
}

/// Keep the certificate chain (encoded) of the signing device `device`, replacing one kept before.
pub(super) fn keep_certificate(conn: &rusqlite::Connection, device: crate::PeerId, chain: &[u8]) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO certificates (device, chain) VALUES (?1, ?2) ON CONFLICT (device) DO UPDATE SET chain = ?2",
    )?
    .execute(params![device.0 as i64, chain])?;
    Ok(())
}

/// How many of the documents referring to an attachment [`Replica::attachment_readable`] checks against a
/// device's read rules at most (the first ones it wrote, by local number).
pub const MAX_ATTACHMENT_READ_CHECKS: usize = 1024;

/// A [`Store`] as a [`Replica`]: the engine's handle on a device's SQLite store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct StoreReplica {
    store: Store,
}

impl Store {
    /// This store as a [`Replica`], for the sync engine (or for moving changes between stores by hand:
    /// `b.replica().apply_changes(&a.replica().changes_since(&b.replica().summary()?)?)`).
    pub fn replica(&self) -> StoreReplica {
        StoreReplica { store: self.clone() }
    }
}

impl StoreReplica {
    /// The store, locked and current, when some changes folded into its documents are in neither `have` nor
    /// `skip` (a peer lacks them); `None` when none are.
    fn lacking_folded(
        &self,
        have: &Summary,
        skip: &Summary,
    ) -> Result<Option<std::sync::MutexGuard<'_, super::Inner>>> {
        let mut inner = self.store.lock();
        inner.refresh()?;
        Ok((!inner.folded.difference(have).difference(skip).is_empty()).then_some(inner))
    }
}

impl Replica for StoreReplica {
    fn peer_id(&self) -> crate::PeerId {
        self.store.peer_id()
    }

    fn summary(&self) -> Result<Summary> {
        let mut inner = self.store.lock();
        inner.refresh()?;
        Ok(inner.held.clone())
    }

    fn changes_since(&self, summary: &Summary) -> Result<Vec<DocChange>> {
        self.log_missing(summary, &Summary::new(), usize::MAX)?
            .into_iter()
            .map(|e| {
                let change =
                    crate::crdt::change::Change::decode(&e.body).map_err(|err| Error::Corrupt(err.to_string()))?;
                Ok(DocChange { collection: e.collection, doc_id: e.doc_id, change, signature: e.signature })
            })
            .collect()
    }

    fn apply_changes(&self, changes: &[DocChange]) -> Result<ApplyReport> {
        self.store.apply_remote_changes(changes, None)
    }

    fn apply_checked(&self, changes: &[DocChange], check: &dyn ChangeCheck) -> Result<ApplyReport> {
        self.store.apply_remote_changes(changes, Some(check))
    }

    fn keep_peer_summary(&self, device: &crate::security::DeviceKey, cloud: bool, summary: &Summary) -> Result<()> {
        let mut inner = self.store.lock();
        inner.refresh()?;
        let now = inner.sources.now_ms();
        super::compaction::keep_peer_summary(&inner, &device.0, cloud, summary, now)
    }

    fn folded_of_doc(&self, doc: i64) -> Result<Summary> {
        let inner = self.store.lock();
        super::compaction::folded_of(&inner.conn, doc)
    }

    fn states_missing(
        &self,
        have: &Summary,
        skip: &Summary,
        from_doc: i64,
        max_bytes: usize,
    ) -> Result<Vec<(i64, DocState)>> {
        match self.lacking_folded(have, skip)? {
            Some(mut inner) => inner.states_missing(have, skip, from_doc, max_bytes),
            None => Ok(Vec::new()),
        }
    }

    fn apply_states(&self, states: &[DocState]) -> Result<ApplyReport> {
        let ((), report) = self.store.transact(|txn| {
            for s in states {
                txn.merge_state(s, None)?;
            }
            Ok(())
        })?;
        Ok(report)
    }

    fn attested_states_missing(
        &self,
        have: &Summary,
        skip: &Summary,
        from_doc: i64,
        max_bytes: usize,
    ) -> Result<Vec<(i64, AttestedState)>> {
        match self.lacking_folded(have, skip)? {
            Some(mut inner) => inner.attested_states_missing(have, skip, from_doc, max_bytes),
            None => Ok(Vec::new()),
        }
    }

    fn attestation_wanted(&self) -> Result<Summary> {
        let mut inner = self.store.lock();
        inner.refresh()?;
        super::attest::wanted(&inner)
    }

    fn attested_states_wanted(
        &self,
        want: &Summary,
        from_doc: i64,
        max_bytes: usize,
    ) -> Result<Vec<(i64, AttestedState)>> {
        let mut inner = self.store.lock();
        inner.refresh()?;
        super::attest::overlapping(&inner.conn, want, from_doc, max_bytes)
    }

    fn attested_seq(&self) -> Result<i64> {
        let mut inner = self.store.lock();
        inner.refresh()?;
        super::attest::last_seq(&inner.conn)
    }

    fn attested_kept_after(
        &self,
        after: i64,
        held: &Summary,
        max_bytes: usize,
    ) -> Result<(Vec<(i64, AttestedState)>, i64)> {
        let mut inner = self.store.lock();
        inner.refresh()?;
        super::attest::kept_after(&inner.conn, after, held, max_bytes)
    }

    fn apply_attested_states(&self, states: &[AttestedState], check: &dyn ChangeCheck) -> Result<ApplyReport> {
        let ((), report) = self.store.transact(|txn| {
            for s in states {
                txn.merge_attested(s, check)?;
            }
            Ok(())
        })?;
        Ok(report)
    }

    fn attachment_readable(&self, hash: &[u8; 32], rules: &crate::security::certificate::ReadRules) -> Result<bool> {
        // The documents that name the hash (an index lookup), each checked against the rules, at most
        // MAX_ATTACHMENT_READ_CHECKS of them; their views fresh.
        let mut inner = self.store.lock();
        inner.flush_views(None)?;
        let mut stmt = inner.conn.prepare_cached(
            "SELECT d.doc, d.collection, d.view, d.parts FROM attachment_refs r JOIN docs d ON d.doc = r.doc \
             WHERE r.hash = ?1 AND d.view IS NOT NULL LIMIT ?2",
        )?;
        let mut rows = stmt.query(params![&hash[..], MAX_ATTACHMENT_READ_CHECKS as i64])?;
        while let Some(r) = rows.next()? {
            let collection: String = r.get(1)?;
            let Ok(text) = r.get_ref(2)?.as_str() else { continue };
            // Unreadable (quarantined) documents count as absent.
            let Ok(view) = super::docs::read_view(&inner.conn, r.get(0)?, text, r.get(3)?) else { continue };
            if rules.may_read(&collection, Some(&view)) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn keep_certificate(&self, device: crate::PeerId, chain: &[u8]) -> Result<()> {
        keep_certificate(&self.store.lock().conn, device, chain)
    }

    fn certificate(&self, device: crate::PeerId) -> Result<Option<Vec<u8>>> {
        certificate_of(&self.store.lock().conn, device)
    }

    fn notice_summary(&self, summary: &Summary) -> Result<()> {
        let mut inner = self.store.lock();
        inner.refresh()?;
        let author = inner.author;
        let next = inner.next_counter;
        if !summary.overlaps(author, next, u64::MAX) {
            return Ok(());
        }
        drop(inner);
        self.store.transact(|txn| txn.notice_own_author_claim(author, next))?;
        Ok(())
    }

    fn author_digests(&self, authors: Option<&[crate::PeerId]>) -> Result<Vec<AuthorDigest>> {
        let mut inner = self.store.lock();
        inner.refresh()?;
        let all: Vec<crate::PeerId>;
        let authors = match authors {
            Some(a) => a,
            None => {
                all = inner.held.peers().map(|(p, _)| p).collect();
                &all
            }
        };
        let mut out = Vec::with_capacity(authors.len());
        // An author some of whose changes were folded here has no digest: they are no longer in the log to hash,
        // and a digest of the rest would differ from a peer's that keeps them all.
        for &a in authors {
            if inner.folded.ranges_of(a).is_none() {
                out.extend(inner.author_digest(a)?);
            }
        }
        Ok(out)
    }

    fn differing_authors(&self, theirs: &[AuthorDigest]) -> Result<Vec<crate::PeerId>> {
        let mut inner = self.store.lock();
        inner.refresh()?;
        let mut out = Vec::new();
        for d in theirs {
            if inner.ranges_digest(d.author) != Some(d.ranges) || inner.folded.ranges_of(d.author).is_some() {
                continue;
            }
            if inner.author_digest(d.author)?.is_some_and(|mine| mine.changes != d.changes) {
                log::warn!(
                    "equivocation: a peer holds the same counters of author {} as this store, but other changes",
                    d.author
                );
                out.push(d.author);
            }
        }
        Ok(out)
    }

    fn log_missing(&self, have: &Summary, skip: &Summary, max_bytes: usize) -> Result<Vec<LogEntry>> {
        let mut inner = self.store.lock();
        inner.refresh()?;
        let wanted = inner.held.difference(have).difference(skip);
        let mut out = Vec::new();
        let mut bytes = 0;
        let keep = |e: &LogEntry| !have.contains(e.peer, e.start, e.end) && !skip.contains(e.peer, e.start, e.end);
        'peers: for (peer, ranges) in wanted.peers() {
            for &(lo, hi) in ranges.ranges() {
                bytes += inner.entries_in(peer, lo, hi, max_bytes.saturating_sub(bytes), keep, &mut out)?;
                if bytes >= max_bytes {
                    break 'peers;
                }
            }
        }
        out.sort_by_key(|e| (e.seq, e.start));
        out.dedup_by_key(|e| (e.seq, e.start));
        Ok(out)
    }

    fn log_of_doc(&self, doc: i64) -> Result<Vec<LogEntry>> {
        let inner = self.store.lock();
        let mut stmt = inner.conn.prepare_cached(&format!(
            "SELECT {ENTRY_COLUMNS} FROM changes c JOIN docs d ON d.doc = c.doc WHERE c.doc = ?1 ORDER BY c.seq"
        ))?;
        let mut rows = stmt.query(params![doc])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            row_entries(r, |_| true, &mut out)?;
        }
        Ok(out)
    }

    fn view_of_doc(&self, doc: i64) -> Result<Option<Json>> {
        self.store.read_views(None, |conn| {
            super::docs::stored_view(conn, "SELECT doc, view, parts FROM docs WHERE doc = ?1", params![doc])
        })
    }

    fn doc_number(&self, collection: &str, id: &str) -> Result<Option<i64>> {
        check_collection(collection)?;
        check_doc_id(id)?;
        let inner = self.store.lock();
        super::docs::row_of(&inner.conn, collection, id)
    }

    fn has_docs(&self, docs: &[(&str, &str)]) -> Result<Vec<bool>> {
        let inner = self.store.lock();
        docs.iter()
            .map(|(collection, id)| {
                check_collection(collection)?;
                check_doc_id(id)?;
                Ok(super::docs::row_of(&inner.conn, collection, id)?.is_some())
            })
            .collect()
    }

    fn attachment_len(&self, hash: &[u8; 32]) -> Result<Option<u64>> {
        let inner = self.store.lock();
        blobs::stored_len(&inner.conn, hash)
    }

    fn read_attachment_chunk(&self, hash: &[u8; 32], idx: u64) -> Result<Vec<u8>> {
        let inner = self.store.lock();
        blobs::read_chunk(&inner.conn, hash, idx)?.ok_or_else(|| blobs::not_found(hash))
    }

    fn attachment_received(&self, hash: &[u8; 32]) -> Result<u64> {
        let inner = self.store.lock();
        blobs::partial_len(&inner.conn, hash)
    }

    fn read_attachment_received(&self, hash: &[u8; 32], offset: u64) -> Result<Option<Vec<u8>>> {
        let inner = self.store.lock();
        blobs::read_partial(&inner.conn, hash, offset)
    }

    fn keep_revocation_lists(&self, lists: &[Vec<u8>]) -> Result<()> {
        self.store.set_revocation_lists(lists)
    }

    fn keep_frontier(&self, frontier: &crate::security::StableFrontier) -> Result<bool> {
        if !self.stable_frontier()?.is_none_or(|kept| frontier.replaces(&kept)) {
            return Ok(false);
        }
        let bytes = postcard::to_stdvec(frontier).map_err(|e| Error::Corrupt(format!("stable frontier: {e}")))?;
        self.store.set_local_value(super::FRONTIER_SETTING, &bytes)?;
        Ok(true)
    }

    fn stable_frontier(&self) -> Result<Option<crate::security::StableFrontier>> {
        kept_frontier(&self.store.lock().conn)
    }

    fn attachments_received(&self, max: usize) -> Result<Vec<[u8; 32]>> {
        let inner = self.store.lock();
        let mut stmt = inner.conn.prepare_cached("SELECT DISTINCT hash FROM partial_blobs LIMIT ?1")?;
        let hashes = stmt.query_map(params![max.min(i64::MAX as usize) as i64], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for h in hashes {
            // A row of another length cannot have been written by this store; it is left alone.
            if let Ok(hash) = <[u8; 32]>::try_from(h?.as_slice()) {
                out.push(hash);
            }
        }
        Ok(out)
    }

    fn forget_attachment_received_from(&self, hash: &[u8; 32], offset: u64) -> Result<()> {
        let inner = self.store.lock();
        inner
            .conn
            .prepare_cached("DELETE FROM partial_blobs WHERE hash = ?1 AND offset >= ?2")?
            .execute(params![&hash[..], offset as i64])?;
        Ok(())
    }

    fn receive_attachment_part(&self, hash: &[u8; 32], offset: u64, data: &[u8]) -> Result<u64> {
        let inner = self.store.lock();
        let have = blobs::partial_len(&inner.conn, hash)?;
        if offset != have {
            return Err(Error::AttachmentCorrupt {
                hash: crate::util::hex(hash),
                reason: format!("part at {offset}, expected {have}"),
            });
        }
        if !data.is_empty() {
            inner
                .conn
                .prepare_cached("INSERT INTO partial_blobs (hash, offset, data) VALUES (?1, ?2, ?3)")?
                .execute(params![&hash[..], offset as i64, data])?;
        }
        Ok(have + data.len() as u64)
    }

    fn finish_attachment(&self, hash: &[u8; 32], total: u64) -> Result<()> {
        let result = self.store.blob_transaction(|conn, staging| blobs::finish_parts(conn, hash, total, staging));
        if let Err(Error::AttachmentCorrupt { .. }) = &result {
            // Rolled back; drop the bytes that do not match so the next fetch starts afresh.
            self.store.lock().conn.execute("DELETE FROM partial_blobs WHERE hash = ?1", params![&hash[..]])?;
        }
        result
    }
}
