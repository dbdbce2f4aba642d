//! Log compaction: changes folded into their documents' snapshots and dropped from the change log.
//!
//! Every document is kept as a snapshot of its CRDT state plus the changes applied after it (see [`super::docs`]);
//! the change log also serves sync. Compacting a document writes its snapshot at its current state and deletes
//! the log rows of the changes chosen (a prefix of the document's log, in application order), recording exactly
//! which changes were folded (table `folded`). The store goes on holding them — its summary still lists them, so no
//! device sends them again — and a device that lacks some of them gets the document's state instead, merged by
//! [`Document::join`](crate::Document::join): exactly equivalent to applying the changes, removals included, so
//! nothing deleted comes back however long that device was away, and its own edits made meanwhile still merge.
//!
//! What is folded:
//! - the changes every device heard from within the horizon holds (**causally stable**, as far as this device
//!   can know): each device's summaries — as a session starts, and the announcements after it — are kept per device
//!   (`peer_acks`, see [`keep_peer_summary`]), and compaction folds what all the recent ones list. No device will
//!   ask for these as changes; one never met, or away for longer, gets states;
//! - the changes made (by their hybrid-logical-clock time) more than [`CompactionPolicy::horizon_ms`] ago, whoever
//!   lacks them.
//!
//! Not folded: changes a cloud peer reached within the horizon has not acknowledged (it merges states, but a change
//! it receives whole keeps its content for the back office's feed and the cloud's equivocation checks);
//! signed changes that the document's attested state does not hold, and with a signing key (certificate mode) any
//! change it does not hold (a state carries no author's signature, so a device in certificate mode takes only a
//! state an attester signed: see [`super::attest`]); and documents whose state is over [`MAX_STATE_BYTES`] (too
//! large to send as one state).
//!
//! In certificate mode, the snapshots a compaction writes also collect what the stable frontier the store keeps makes
//! garbage (each counter's stable increments, one run per writer; what removed array elements held that it covers;
//! the sequences' tombstones it settles, outside the collections this store attests, knowing which deletions are not
//! stable from its log and [`super::unsettled`]), once the store holds every change the frontier requires, in the
//! collections its attester may attest ([`crate::security::attestation::Stability`]).

use super::{Inner, Store, Summary};
use crate::crdt::change::Change;
use crate::error::{Error, Result};
use crate::security::attestation::Stability;
use rusqlite::{params, Connection, OptionalExtension};

/// The largest encoded document state a store sends or accepts (a [`crate::sync::Message::States`] carries it
/// whole): the size of the largest change. A document whose state is larger keeps its changes in the log.
pub const MAX_STATE_BYTES: usize = crate::crdt::change::MAX_ENCODED_CHANGE_BYTES;

/// Which changes [`Store::compact`] folds into snapshots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactionPolicy {
    /// Fold the changes made more than this long ago (milliseconds, by the changes' hybrid-logical-clock time; 0:
    /// every change), and wait only for the devices heard from within it.
    /// Devices that come back after longer get states rather than changes: correct either way, but a state costs
    /// its document's size where the changes it lacked might have been fewer bytes. Default: 30 days.
    pub horizon_ms: u64,
    /// Also fold, however recent, the changes that every device this store synced with within the horizon said it
    /// holds (causally stable: none of them will ask for them again). Default: on.
    pub fold_acknowledged: bool,
}

impl Default for CompactionPolicy {
    fn default() -> Self {
        CompactionPolicy { horizon_ms: 30 * 24 * 60 * 60 * 1000, fold_acknowledged: true }
    }
}

impl CompactionPolicy {
    /// Fold every change (what `compact` with a horizon of 0 does): for tests, benchmarks and devices short of
    /// space.
    pub fn everything() -> Self {
        CompactionPolicy { horizon_ms: 0, ..Default::default() }
    }
}

/// What [`Store::compact`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// Documents whose changes were folded.
    pub documents: u64,
    /// Changes folded and dropped from the log.
    pub changes: u64,
    /// Bytes of change bodies dropped from the log.
    pub bytes: u64,
    /// The transactions it took: a compaction folds a thousand log rows or so at a time, and lets other writers in
    /// between (each transaction is whole; what it folded stays folded if a later one fails).
    pub transactions: u64,
}

impl CompactionReport {
    /// Add what `other` (another part of one compaction) did.
    pub fn add(&mut self, other: &CompactionReport) {
        self.documents += other.documents;
        self.changes += other.changes;
        self.bytes += other.bytes;
        self.transactions += other.transactions;
    }
}

/// How many log rows one transaction of [`Store::compact`] folds at most (a document with more has them folded over
/// several): the store's writers wait for at most one such transaction, tens of milliseconds, rather than for the
/// whole compaction (seconds for a million changes).
const COMPACT_ROWS_PER_TRANSACTION: u64 = 1024;

/// The changes folded into document `row`'s snapshot (empty when none were).
pub(super) fn folded_of(conn: &Connection, row: i64) -> Result<Summary> {
    let blob: Option<Vec<u8>> = conn
        .prepare_cached("SELECT summary FROM folded WHERE doc = ?1")?
        .query_row(params![row], |r| r.get(0))
        .optional()?;
    decode(blob.as_deref())
}

fn decode(blob: Option<&[u8]>) -> Result<Summary> {
    match blob {
        None => Ok(Summary::new()),
        Some(b) => Summary::decode_dense(b).map_err(|e| Error::Corrupt(format!("folded changes of a document: {e}"))),
    }
}

/// Record `folded` as the changes folded into document `row`'s snapshot (and keep its attested state's record of
/// its changes right: [`super::attest::folded_changing`]).
pub(super) fn set_folded(conn: &Connection, row: i64, folded: &Summary) -> Result<()> {
    super::attest::folded_changing(conn, row, folded)?;
    if folded.is_empty() {
        conn.prepare_cached("DELETE FROM folded WHERE doc = ?1")?.execute(params![row])?;
    } else {
        conn.prepare_cached(
            "INSERT INTO folded (doc, summary) VALUES (?1, ?2) ON CONFLICT (doc) DO UPDATE SET summary = ?2",
        )?
        .execute(params![row, folded.encode_dense()])?;
    }
    Ok(())
}

/// Every change folded into a snapshot, over all documents.
pub(super) fn all_folded(conn: &Connection) -> Result<Summary> {
    let mut out = Summary::new();
    let mut stmt = conn.prepare_cached("SELECT summary FROM folded")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        out.union_with(&decode(r.get::<_, Option<Vec<u8>>>(0)?.as_deref())?);
    }
    Ok(out)
}

/// The most devices whose acknowledgements a store keeps; past it, the one heard from least recently is forgotten
/// (its changes are then folded without waiting for it: it gets states if it comes back lacking them).
pub const MAX_PEER_ACKS: usize = 1024;

/// How often (ms) the time a device was last heard from is written again when its summary adds nothing.
const ACK_REFRESH_MS: u64 = 60_000;

/// A device said (in a summary) that it holds `summary`: keep what of it this store holds (`held`) as that
/// device's acknowledgements, with the time, in `peer_acks`. A device's row only grows. Writes nothing when the
/// summary adds nothing and the time was written less than a minute ago, so announcements cost a read.
pub(super) fn keep_peer_summary(
    inner: &super::Inner,
    device: &[u8],
    cloud: bool,
    summary: &Summary,
    now_ms: u64,
) -> Result<()> {
    let held = summary.intersection(&inner.held);
    let fresh = |conn: &Connection| -> Result<Option<(Summary, u64, bool)>> {
        let row: Option<(Vec<u8>, i64, bool)> = conn
            .prepare_cached("SELECT summary, heard, cloud FROM peer_acks WHERE device = ?1")?
            .query_row(params![device], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        row.map(|(s, heard, cloud)| Ok((decode_ack(&s)?, heard as u64, cloud))).transpose()
    };
    if let Some((acked, heard, was_cloud)) = fresh(&inner.conn)? {
        if was_cloud == cloud && held.difference(&acked).is_empty() && now_ms.saturating_sub(heard) < ACK_REFRESH_MS {
            return Ok(());
        }
    }
    inner.immediate(|conn| {
        let mut acked = fresh(conn)?.map_or_else(Summary::new, |(s, _, _)| s);
        acked.union_with(&held);
        conn.prepare_cached(
            "INSERT INTO peer_acks (device, summary, heard, cloud) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (device) DO UPDATE SET summary = ?2, heard = ?3, cloud = ?4",
        )?
        .execute(params![device, acked.encode_dense(), now_ms as i64, cloud])?;
        // Bounded: the devices heard from least recently are forgotten.
        conn.prepare_cached(
            "DELETE FROM peer_acks WHERE device IN \
             (SELECT device FROM peer_acks ORDER BY heard DESC, device LIMIT -1 OFFSET ?1)",
        )?
        .execute(params![MAX_PEER_ACKS as i64])?;
        Ok(())
    })
}

fn decode_ack(blob: &[u8]) -> Result<Summary> {
    Summary::decode_dense(blob).map_err(|e| Error::Corrupt(format!("a device's acknowledgements: {e}")))
}

/// What must hold for a change to be folded, from the devices heard from since `since_ms`: what every cloud peer
/// among them acknowledged (`None`: no cloud), and what every one of them did (`None`: no device).
fn acknowledged(conn: &Connection, since_ms: u64) -> Result<(Option<Summary>, Option<Summary>)> {
    let mut stmt = conn.prepare_cached("SELECT summary, cloud FROM peer_acks WHERE heard >= ?1")?;
    let mut rows = stmt.query(params![since_ms.min(i64::MAX as u64) as i64])?;
    let (mut clouds, mut all): (Option<Summary>, Option<Summary>) = (None, None);
    let meet = |into: &mut Option<Summary>, s: &Summary| {
        *into = Some(into.as_ref().map_or_else(|| s.clone(), |i| i.intersection(s)));
    };
    while let Some(r) = rows.next()? {
        let acked = decode_ack(&r.get::<_, Vec<u8>>(0)?)?;
        if r.get::<_, bool>(1)? {
            meet(&mut clouds, &acked);
        }
        meet(&mut all, &acked);
    }
    Ok((clouds, all))
}

/// Which changes of the log [`compact_doc`] folds.
struct Rule {
    /// Only those the document's attested state holds, signed or not (a store with a signing key: it sends
    /// attested states only; see [`super::attest`]). Signed changes are folded only so in any case.
    attested_only: bool,
    /// Changes made (hybrid-logical-clock time, ms) before this.
    cutoff_ms: u64,
    /// Whatever their time, those in here (acknowledged by every device heard from within the horizon).
    stable: Option<Summary>,
    /// Never those outside this (what a cloud peer reached within the horizon acknowledged).
    cloud: Option<Summary>,
    /// What the kept stable frontier lets the snapshots written fold.
    frontier: Option<Stability>,
    /// This store's own grants (certificate mode).
    own: Option<std::sync::Arc<(crate::security::certificate::Permissions, crate::PeerId)>>,
}

impl Rule {
    fn folds(&self, peer: crate::PeerId, start: u64, end: u64, made_ms: u64) -> bool {
        let old = made_ms < self.cutoff_ms;
        let stable = self.stable.as_ref().is_some_and(|s| s.contains(peer, start, end));
        (old || stable) && self.cloud.as_ref().is_none_or(|c| c.contains(peer, start, end))
    }

    /// The frontier, when it lets snapshots of `collection` drop settled tombstones: not in a collection this store
    /// attests, whose states it signs for other devices to merge — those keep every item, so that a device merging
    /// one places each item by its origins (see [`crate::crdt::sequence::Sequence::join`]).
    fn drops_tombstones(&self, collection: &str) -> Option<&Stability> {
        let attests = self.own.as_ref().is_some_and(|p| p.0.may_attest(collection));
        self.frontier.as_ref().filter(|f| f.covers(collection) && !attests)
    }
}

/// What the stable frontier this store keeps lets [`Store::compact`] fold in the snapshots it writes
/// ([`Stability`]).
fn kept_stability(conn: &Connection, held: &Summary) -> Result<Option<Stability>> {
    let Some(frontier) = super::replica::kept_frontier(conn)? else { return Ok(None) };
    let chain = super::replica::certificate_of(conn, frontier.attestation.device)?;
    Ok(Stability::of(&frontier, held, chain.as_deref()))
}

/// One log row of a document being compacted.
struct Row {
    seq: i64,
    peer: u64,
    start: u64,
    end: u64,
    /// How many changes it holds (a run holds several).
    changes: u64,
    bytes: u64,
}

impl Store {
    /// Fold the changes `policy` selects into their documents' snapshots and drop them from the change log (see
    /// the module docs of `store::compaction`): the store keeps holding them, and serves a document's state to a
    /// device that lacks some of them. A transaction per thousand log rows or so ([`CompactionReport::transactions`]),
    /// with the store's other writers and readers let in between, so that compacting a large log from a background
    /// thread never holds an app's writes for long; each is whole (a crash keeps what the ones before it folded).
    /// The snapshots it writes fold counters under the stable frontier the store keeps, when it may (see the module
    /// docs). Afterwards [`Store::collect_garbage`] returns the freed pages to the system. Linear in the log and in
    /// the documents compacted.
    pub fn compact(&self, policy: &CompactionPolicy) -> Result<CompactionReport> {
        self.fill_versions()?;
        let (rule, docs) = {
            let mut inner = self.lock();
            inner.refresh()?;
            // A horizon of 0 folds every change, even one stamped ahead of this device's clock.
            let cutoff = match policy.horizon_ms {
                0 => u64::MAX,
                h => inner.sources.now_ms().saturating_sub(h),
            };
            let attested_only = inner.signer.is_some();
            // The devices heard from within the horizon (with a horizon of 0, every cloud peer ever heard from: what
            // the cloud has not acknowledged stays in the log, to reach it whole, until it has not been reached for
            // longer than a horizon; then it gets states).
            let since = if policy.horizon_ms == 0 { 0 } else { cutoff };
            let (cloud, all) = acknowledged(&inner.conn, since)?;
            let stable = all.filter(|_| policy.fold_acknowledged);
            let frontier = kept_stability(&inner.conn, &inner.held)?;
            let own = inner.own_permissions.clone();
            (Rule { attested_only, cutoff_ms: cutoff, stable, cloud, frontier, own }, logged_docs(&inner.conn)?)
        };
        // About a thousand log rows per transaction, the store's lock let go between them.
        let mut report = CompactionReport::default();
        let mut rest = &docs[..];
        // Whether the first document of `rest` was partly folded by the transaction before (counted there).
        let mut unfinished = false;
        if !rest.is_empty() {
            self.in_steps(|inner| {
                inner.refresh()?;
                let part = inner.immediate(|conn| compact_some(conn, rest, &rule, unfinished))?;
                // A document not finished (more rows than a transaction folds) stays first; one that folded nothing
                // is not looked at again.
                let done = if part.taken == 0 && part.report.changes == 0 { 1 } else { part.taken };
                rest = &rest[done.min(rest.len())..];
                unfinished = part.unfinished;
                report.add(&part.report);
                if part.report.changes > 0 {
                    // Snapshots and logs changed under the cached documents, and the log rows the digests read are
                    // gone.
                    inner.cache.clear();
                    inner.digests.clear();
                    inner.folded.union_with(&part.folded);
                }
                Ok(rest.is_empty())
            })?;
        }
        log::info!(
            "store {}: folded {} changes ({} bytes) of {} documents into snapshots, in {} transactions",
            self.peer_id(),
            report.changes,
            report.bytes,
            report.documents,
            report.transactions
        );
        Ok(report)
    }
}

impl Store {
    /// Write down the version of each document written before versions were kept (schema 16), a few hundred per
    /// transaction: a sender attaches it to the first change of a document it sends, so that the receiver applies
    /// its first copy whole (`sync::first_copy`). Until then such a document is sent without it, and taken in parts.
    fn fill_versions(&self) -> Result<()> {
        const PER_TRANSACTION: i64 = 256;
        let (mut filled, mut after) = (0usize, 0i64);
        self.in_steps(|inner| {
            inner.refresh()?;
            let n = inner.immediate(|conn| {
                let docs: Vec<(i64, String, String)> = conn
                    .prepare_cached(
                        "SELECT doc, collection, id FROM docs WHERE version IS NULL AND doc > ?1 ORDER BY doc LIMIT ?2",
                    )?
                    .query_map(params![after, PER_TRANSACTION], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect::<rusqlite::Result<_>>()?;
                after = docs.last().map_or(after, |d| d.0);
                let mut update = conn.prepare_cached("UPDATE docs SET version = ?2 WHERE doc = ?1")?;
                for (row, collection, id) in &docs {
                    let version = match super::docs::load(conn, collection, id)? {
                        Some(cached) => cached.doc.version().to_bytes(),
                        None => continue,
                    };
                    update.execute(params![row, version])?;
                }
                Ok(docs.len())
            })?;
            filled += n;
            Ok(n < PER_TRANSACTION as usize)
        })?;
        if filled > 0 {
            log::info!("store {}: wrote down the versions of {filled} documents", self.peer_id());
        }
        Ok(())
    }
}

/// The documents with rows in the change log, by number: what [`Store::compact`] and [`Store::attest`] look at.
pub(super) fn logged_docs(conn: &Connection) -> Result<Vec<(i64, String, String)>> {
    Ok(conn
        .prepare(
            "SELECT d.doc, d.collection, d.id FROM docs d \
             WHERE EXISTS (SELECT 1 FROM changes c WHERE c.doc = d.doc) ORDER BY d.doc",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?)
}

/// What one transaction of [`Store::compact`] did.
struct Part {
    report: CompactionReport,
    /// How many documents, from the first, it finished.
    taken: usize,
    /// The changes it folded.
    folded: Summary,
    /// It stopped inside the document after the last it finished (more rows than it could fold).
    unfinished: bool,
}

/// One transaction of [`Store::compact`]: the documents of `docs`, from the first, until
/// [`COMPACT_ROWS_PER_TRANSACTION`] log rows are folded. `continued`: the first was partly folded by the
/// transaction before, which counted it in its report.
fn compact_some(conn: &Connection, docs: &[(i64, String, String)], rule: &Rule, continued: bool) -> Result<Part> {
    let mut part = Part {
        report: CompactionReport { transactions: 1, ..CompactionReport::default() },
        taken: 0,
        folded: Summary::new(),
        unfinished: false,
    };
    let mut rows = 0u64;
    for (i, (row, collection, id)) in docs.iter().enumerate() {
        if rows >= COMPACT_ROWS_PER_TRANSACTION {
            break;
        }
        let done = compact_doc(conn, *row, collection, id, rule, COMPACT_ROWS_PER_TRANSACTION - rows)?;
        if done.changes > 0 {
            if !(i == 0 && continued) {
                part.report.documents += 1;
            }
            part.report.changes += done.changes;
            part.report.bytes += done.bytes;
            rows += done.rows;
            part.folded.union_with(&done.folded);
        }
        if done.more {
            // The rest of this document's rows in the next transaction.
            part.unfinished = true;
            break;
        }
        part.taken += 1;
    }
    Ok(part)
}

/// What [`compact_doc`] folded of one document.
#[derive(Default)]
struct DocFolded {
    changes: u64,
    bytes: u64,
    /// Log rows (a run holds several changes).
    rows: u64,
    /// The changes folded.
    folded: Summary,
    /// It stopped at `max_rows`: the next rows may fold too.
    more: bool,
}

/// Fold the prefix of document `row`'s log that `rule` folds (signed changes only when its attested state holds
/// them), at most `max_rows` log rows of it.
fn compact_doc(
    conn: &Connection,
    row: i64,
    collection: &str,
    id: &str,
    rule: &Rule,
    max_rows: u64,
) -> Result<DocFolded> {
    let mut fold: Vec<Row> = Vec::new();
    // The changes of `fold`.
    let mut changes: Vec<Change> = Vec::new();
    let mut more = false;
    let attested = super::attest::attested_changes_of(conn, row)?;
    {
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT seq, peer, sig IS NOT NULL, {} FROM changes WHERE doc = ?1 ORDER BY seq",
            super::logrow::COLUMNS
        ))?;
        let mut rows = stmt.query(params![row])?;
        'rows: while let Some(r) = rows.next()? {
            if fold.len() as u64 >= max_rows {
                more = true;
                break;
            }
            let (peer, signed): (i64, bool) = (r.get(1)?, r.get(2)?);
            let logged = super::logrow::LogRow::read(r, 3)?;
            // A row is folded whole, when the rule folds every change it holds.
            let parts = logged.parts()?;
            let mut row_changes = Vec::with_capacity(parts.len());
            for part in &parts {
                let made = Change::decode(part.body).map_err(|e| Error::Corrupt(format!("{collection}/{id}: {e}")))?;
                let author = crate::PeerId(peer as u64);
                let unattested = !attested.as_ref().is_some_and(|a| a.contains(author, part.start, part.end));
                if ((signed || rule.attested_only) && unattested)
                    || !rule.folds(author, part.start, part.end, made.ts.wall_ms())
                {
                    break 'rows;
                }
                row_changes.push(made);
            }
            changes.append(&mut row_changes);
            fold.push(Row {
                seq: r.get(0)?,
                peer: peer as u64,
                start: logged.start,
                end: logged.end,
                changes: parts.len() as u64,
                bytes: logged.body.len() as u64,
            });
        }
    }
    let Some(last) = fold.last().map(|r| r.seq) else { return Ok(DocFolded::default()) };
    // The snapshot at the document's current state (every change in its log), so that it holds what is folded —
    // unless it already holds every row of the log (the document's last save or an earlier transaction of this
    // compaction wrote it, and no change came since) and the frontier folds nothing more in it.
    let snap_seq: i64 =
        conn.prepare_cached("SELECT snap_seq FROM docs WHERE doc = ?1")?.query_row(params![row], |r| r.get(0))?;
    let current = snap_seq >= super::docs::last_logged(conn, row)?;
    let mut written = false;
    if !current || rule.frontier.is_some() {
        let Some(mut cached) = super::docs::load(conn, collection, id)? else { return Ok(DocFolded::default()) };
        let collected = match &rule.frontier {
            Some(f) => {
                let unsettled = match rule.drops_tombstones(collection) {
                    Some(f) => super::unsettled::of(conn, row, f.stable())?,
                    None => None,
                };
                f.collect(collection, &mut cached.doc, unsettled)
            }
            None => false,
        };
        if !current || collected {
            let state = cached.doc.encode();
            if state.len() > MAX_STATE_BYTES {
                log::info!("{collection}/{id}: not compacted: its state of {} bytes is too large to send", state.len());
                return Ok(DocFolded::default());
            }
            super::docs::write_snapshot(conn, row, &cached.doc, &state)?;
            written = true;
        }
    }
    if !written {
        let bytes: i64 = conn
            .prepare_cached("SELECT length(state) FROM snapshots WHERE doc = ?1")?
            .query_row(params![row], |r| r.get(0))
            .optional()?
            .unwrap_or(0);
        if bytes as usize > MAX_STATE_BYTES {
            log::info!("{collection}/{id}: not compacted: its state of {bytes} bytes is too large to send");
            return Ok(DocFolded::default());
        }
    }
    let mut added = Summary::new();
    for r in &fold {
        added.insert(crate::PeerId(r.peer), r.start, r.end);
    }
    super::unsettled::folding(conn, row, &changes, rule.drops_tombstones(collection).map(|f| f.stable()))?;
    let mut folded = folded_of(conn, row)?;
    folded.union_with(&added);
    set_folded(conn, row, &folded)?;
    conn.prepare_cached("DELETE FROM changes WHERE doc = ?1 AND seq <= ?2")?.execute(params![row, last])?;
    // The snapshot holds every change of the log. With some left, it stands at the last of them; with none, at 0:
    // SQLite numbers a new row one past the largest left in the table, so once the rows at the end of the log are
    // deleted the next change of this document may get a number at or below the one the snapshot stood at.
    let top = super::docs::last_logged(conn, row)?;
    conn.prepare_cached("UPDATE docs SET snap_seq = ?2 WHERE doc = ?1")?.execute(params![row, top])?;
    Ok(DocFolded {
        changes: fold.iter().map(|r| r.changes).sum(),
        bytes: fold.iter().map(|r| r.bytes).sum(),
        rows: fold.len() as u64,
        folded: added,
        more,
    })
}

impl Inner {
    /// The states of the documents with folded changes in neither `have` nor `skip` (see
    /// [`super::Replica::states_missing`]): each document's current state, and every change it holds (folded, or
    /// still in the log).
    pub(super) fn states_missing(
        &mut self,
        have: &Summary,
        skip: &Summary,
        from_doc: i64,
        max_bytes: usize,
    ) -> Result<Vec<(i64, super::DocState)>> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut from = from_doc;
        while bytes < max_bytes {
            // A page of documents with folded changes, in document order from where the last call stopped.
            let page: Vec<(i64, String, String, Option<Vec<u8>>)> = self
                .conn
                .prepare_cached(
                    "SELECT d.doc, d.collection, d.id, f.summary FROM folded f JOIN docs d ON d.doc = f.doc \
                     WHERE f.doc >= ?1 ORDER BY f.doc LIMIT 64",
                )?
                .query_map(params![from], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let Some(last) = page.last().map(|p| p.0) else { break };
            from = last + 1;
            for (row, collection, id, folded) in page {
                if bytes >= max_bytes {
                    break;
                }
                let changes = decode(folded.as_deref())?;
                if changes.difference(have).difference(skip).is_empty() {
                    continue;
                }
                let changes = self.state_changes(row, changes)?;
                bytes += self.push_state(row, collection, id, changes, &mut out)?;
            }
        }
        Ok(out)
    }

    /// The changes document `row`'s state holds: `folded` (its folded changes) and those of its log.
    pub(super) fn state_changes(&self, row: i64, mut folded: Summary) -> Result<Summary> {
        let mut stmt = self.conn.prepare_cached("SELECT peer, start, end FROM changes WHERE doc = ?1")?;
        let mut rows = stmt.query(params![row])?;
        while let Some(r) = rows.next()? {
            let (peer, start, end): (i64, i64, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
            folded.insert(crate::PeerId(peer as u64), start as u64, end as u64);
        }
        Ok(folded)
    }

    /// Push document `row`'s current state with `changes`, those it holds ([`Inner::state_changes`]): the state's
    /// size.
    pub(super) fn push_state(
        &mut self,
        row: i64,
        collection: String,
        id: String,
        changes: Summary,
        out: &mut Vec<(i64, super::DocState)>,
    ) -> Result<usize> {
        let key = (collection.clone(), id.clone());
        let cached = match self.cache.take(&key) {
            Some(c) => c,
            None => match super::docs::load(&self.conn, &collection, &id)? {
                Some(c) => c,
                None => return Ok(0),
            },
        };
        let state = cached.doc.encode();
        self.cache.put(key, cached);
        let len = state.len();
        out.push((row, super::DocState { collection, doc_id: id, state, changes }));
        Ok(len)
    }
}
