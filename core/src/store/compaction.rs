//! Log compaction: changes folded into their documents' snapshots and dropped from the change log.
//!
//! Every document is kept as a snapshot of its CRDT state plus the changes applied after it (see [`super::docs`]);
//! the change log also serves sync. Compacting a document writes its snapshot at its current state and deletes
//! the log rows of the changes chosen (a prefix of the document's log, in application order), recording exactly
//! which changes were folded (`docs.folded`). The store goes on holding them — its summary still lists them, so no
//! device sends them again — and a device that lacks some of them gets the document's state instead, merged by
//! [`Document::join`](crate::Document::join): exactly equivalent to applying the changes, removals included, so
//! nothing deleted comes back however long that device was away, and its own edits made meanwhile still merge.
//!
//! What is folded: the changes made (by their hybrid-logical-clock time) more than [`CompactionPolicy::horizon_ms`]
//! ago. Not folded: signed changes (certificate mode: a state carries no author's signature, so devices would have
//! to trust the sender; they keep the changes, which relays forward unaltered), and documents whose state is over
//! [`MAX_STATE_BYTES`] (too large to send as one state).

use super::{Inner, Store, Summary};
use crate::crdt::change::Change;
use crate::error::{Error, Result};
use rusqlite::{params, Connection, OptionalExtension};

/// The largest encoded document state a store sends or accepts (a [`crate::sync::Message::States`] carries it
/// whole): the size of the largest change. A document whose state is larger keeps its changes in the log.
pub const MAX_STATE_BYTES: usize = crate::crdt::change::MAX_ENCODED_CHANGE_BYTES;

/// Which changes [`Store::compact`] folds into snapshots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactionPolicy {
    /// Fold the changes made more than this long ago (milliseconds, by the changes' hybrid-logical-clock time; 0:
    /// every change).
    /// Devices that come back after longer get states rather than changes: correct either way, but a state costs
    /// its document's size where the changes it lacked might have been fewer bytes. Default: 30 days.
    pub horizon_ms: u64,
}

impl Default for CompactionPolicy {
    fn default() -> Self {
        CompactionPolicy { horizon_ms: 30 * 24 * 60 * 60 * 1000 }
    }
}

impl CompactionPolicy {
    /// Fold every change (what `compact` with a horizon of 0 does): for tests, benchmarks and devices short of
    /// space.
    pub fn everything() -> Self {
        CompactionPolicy { horizon_ms: 0 }
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
}

/// The changes folded into document `row`'s snapshot (empty when none were).
pub(super) fn folded_of(conn: &Connection, row: i64) -> Result<Summary> {
    let blob: Option<Vec<u8>> = conn
        .prepare_cached("SELECT folded FROM docs WHERE doc = ?1")?
        .query_row(params![row], |r| r.get(0))
        .optional()?
        .flatten();
    decode(blob.as_deref())
}

fn decode(blob: Option<&[u8]>) -> Result<Summary> {
    match blob {
        None => Ok(Summary::new()),
        Some(b) => Summary::decode_dense(b).map_err(|e| Error::Corrupt(format!("folded changes of a document: {e}"))),
    }
}

/// Record `folded` as the changes folded into document `row`'s snapshot.
pub(super) fn set_folded(conn: &Connection, row: i64, folded: &Summary) -> Result<()> {
    let blob = (!folded.is_empty()).then(|| folded.encode_dense());
    conn.prepare_cached("UPDATE docs SET folded = ?2 WHERE doc = ?1")?.execute(params![row, blob])?;
    Ok(())
}

/// Every change folded into a snapshot, over all documents.
pub(super) fn all_folded(conn: &Connection) -> Result<Summary> {
    let mut out = Summary::new();
    let mut stmt = conn.prepare_cached("SELECT folded FROM docs WHERE folded IS NOT NULL")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        out.union_with(&decode(r.get::<_, Option<Vec<u8>>>(0)?.as_deref())?);
    }
    Ok(out)
}

/// The `meta` keys of what the cloud acknowledged (an encoded [`Summary`]) and when it last did (ms).
const CLOUD_ACKED: &str = "cloud_acked";
const CLOUD_ACKED_AT: &str = "cloud_acked_at";

/// Add `summary` (from the cloud) to what the cloud is known to hold, and note the time.
pub(super) fn keep_cloud_summary(conn: &Connection, summary: &Summary, now_ms: u64) -> Result<()> {
    let mut acked = cloud_acked(conn)?.map_or_else(Summary::new, |(s, _)| s);
    acked.union_with(summary);
    super::inner::meta_put(conn, CLOUD_ACKED, &acked.encode())?;
    super::inner::meta_put_u64(conn, CLOUD_ACKED_AT, now_ms)
}

/// What the cloud is known to hold, and when it last said so; `None` if this store never synced with the cloud.
fn cloud_acked(conn: &Connection) -> Result<Option<(Summary, u64)>> {
    let Some(bytes) = super::inner::meta_get(conn, CLOUD_ACKED)? else { return Ok(None) };
    let acked = Summary::decode(&bytes).map_err(|e| Error::Corrupt(format!("the cloud's summary: {e}")))?;
    Ok(Some((acked, super::inner::meta_u64(conn, CLOUD_ACKED_AT)?.unwrap_or(0))))
}

/// One log row of a document being compacted.
struct Row {
    seq: i64,
    peer: u64,
    start: u64,
    end: u64,
    bytes: u64,
}

impl Store {
    /// Fold the changes `policy` selects into their documents' snapshots and drop them from the change log (see
    /// the module docs of `store::compaction`): the store keeps holding them, and serves a document's state to a
    /// device that lacks some of them. One transaction; afterwards [`Store::collect_garbage`] returns the freed
    /// pages to the system. Linear in the log and in the documents compacted.
    pub fn compact(&self, policy: &CompactionPolicy) -> Result<CompactionReport> {
        let mut inner = self.lock();
        inner.refresh()?;
        // A horizon of 0 folds every change, even one stamped ahead of this device's clock.
        let cutoff = match policy.horizon_ms {
            0 => u64::MAX,
            h => inner.sources.now_ms().saturating_sub(h),
        };
        let report = inner.immediate(|conn| {
            // The cloud does not merge states: while it is reached within the horizon, what it has not acknowledged
            // stays in the log (a device away from it for longer compacts without it).
            let acked = cloud_acked(conn)?.filter(|(_, at)| policy.horizon_ms == 0 || *at >= cutoff).map(|(s, _)| s);
            compact_all(conn, cutoff, acked.as_ref())
        })?;
        // Snapshots and logs changed under the cached documents, and the log rows the digests read are gone.
        inner.cache.clear();
        inner.digests.clear();
        inner.folded = all_folded(&inner.conn)?;
        log::info!(
            "store {}: folded {} changes ({} bytes) of {} documents into snapshots",
            inner.peer,
            report.changes,
            report.bytes,
            report.documents
        );
        Ok(report)
    }
}

fn compact_all(conn: &Connection, cutoff_ms: u64, acked: Option<&Summary>) -> Result<CompactionReport> {
    let docs: Vec<(i64, String, String)> = conn
        .prepare(
            "SELECT d.doc, d.collection, d.id FROM docs d WHERE EXISTS (SELECT 1 FROM changes c WHERE c.doc = d.doc)",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut report = CompactionReport::default();
    for (row, collection, id) in docs {
        let (changes, bytes) = compact_doc(conn, row, &collection, &id, cutoff_ms, acked)?;
        if changes > 0 {
            report.documents += 1;
            report.changes += changes;
            report.bytes += bytes;
        }
    }
    Ok(report)
}

/// Fold the prefix of document `row`'s log made before `cutoff_ms` (unsigned changes only, and only those in
/// `acked` when given): (changes, bytes).
fn compact_doc(
    conn: &Connection,
    row: i64,
    collection: &str,
    id: &str,
    cutoff_ms: u64,
    acked: Option<&Summary>,
) -> Result<(u64, u64)> {
    let mut fold: Vec<Row> = Vec::new();
    {
        let mut stmt = conn.prepare_cached(
            "SELECT seq, peer, start, end, body, sig IS NOT NULL FROM changes WHERE doc = ?1 ORDER BY seq",
        )?;
        let mut rows = stmt.query(params![row])?;
        while let Some(r) = rows.next()? {
            let body: Vec<u8> = r.get(4)?;
            let signed: bool = r.get(5)?;
            let made = Change::decode(&body).map_err(|e| Error::Corrupt(format!("{collection}/{id}: {e}")))?.ts;
            let (peer, start, end): (i64, i64, i64) = (r.get(1)?, r.get(2)?, r.get(3)?);
            let unacked = acked.is_some_and(|a| !a.contains(crate::PeerId(peer as u64), start as u64, end as u64));
            if signed || made.wall_ms() >= cutoff_ms || unacked {
                break;
            }
            fold.push(Row {
                seq: r.get(0)?,
                peer: peer as u64,
                start: start as u64,
                end: end as u64,
                bytes: body.len() as u64,
            });
        }
    }
    let Some(last) = fold.last().map(|r| r.seq) else { return Ok((0, 0)) };
    // The snapshot at the document's current state (every change in its log), so that it holds what is folded.
    let Some(cached) = super::docs::load(conn, collection, id)? else { return Ok((0, 0)) };
    let state = cached.doc.encode();
    if state.len() > MAX_STATE_BYTES {
        log::info!("{collection}/{id}: not compacted: its state of {} bytes is too large to send", state.len());
        return Ok((0, 0));
    }
    super::docs::write_snapshot(conn, row, &state)?;
    let mut folded = folded_of(conn, row)?;
    for r in &fold {
        folded.insert(crate::PeerId(r.peer), r.start, r.end);
    }
    set_folded(conn, row, &folded)?;
    conn.prepare_cached("DELETE FROM changes WHERE doc = ?1 AND seq <= ?2")?.execute(params![row, last])?;
    // The snapshot holds every change of the log. With some left, it stands at the last of them; with none, at 0:
    // SQLite numbers a new row one past the largest left in the table, so once the rows at the end of the log are
    // deleted the next change of this document may get a number at or below the one the snapshot stood at.
    let top = super::docs::last_logged(conn, row)?;
    conn.prepare_cached("UPDATE docs SET snap_seq = ?2 WHERE doc = ?1")?.execute(params![row, top])?;
    Ok((fold.len() as u64, fold.iter().map(|r| r.bytes).sum()))
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
                    "SELECT doc, collection, id, folded FROM docs WHERE folded IS NOT NULL AND doc >= ?1 \
                     ORDER BY doc LIMIT 64",
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
                bytes += self.push_state(row, collection, id, changes, &mut out)?;
            }
        }
        Ok(out)
    }

    /// Push document `row`'s current state with `changes` (its folded changes) and the changes of its log: the
    /// state's size.
    fn push_state(
        &mut self,
        row: i64,
        collection: String,
        id: String,
        mut changes: Summary,
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
        let mut stmt = self.conn.prepare_cached("SELECT peer, start, end FROM changes WHERE doc = ?1")?;
        let mut rows = stmt.query(params![row])?;
        while let Some(r) = rows.next()? {
            let (peer, start, end): (i64, i64, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
            changes.insert(crate::PeerId(peer as u64), start as u64, end as u64);
        }
        let len = state.len();
        out.push((row, super::DocState { collection, doc_id: id, state, changes }));
        Ok(len)
    }
}
