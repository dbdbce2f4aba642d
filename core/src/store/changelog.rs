//! The change log as sync reads it: what a peer lacks (the log minus a summary), every change of one document, and
//! notices of new commits — this process's, or another process's on the same file.

use super::inner::Inner;
use super::Store;
use crate::crdt::clock::PeerId;
use crate::error::Result;
use crate::util::lock;
use rusqlite::params;
use std::sync::Arc;

/// One change of the log, still encoded, with the document it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// Local order of application (causal within a document): its log row's. The changes of one row (a run,
    /// see `store::logrow`) share it and were applied in counter order.
    pub seq: i64,
    /// The document's local number.
    pub doc: i64,
    /// The document's collection.
    pub collection: String,
    /// The document's id within its collection.
    pub doc_id: String,
    /// The change's author.
    pub peer: PeerId,
    /// The counter of the change's first operation.
    pub start: u64,
    /// The counter of the change's last operation.
    pub end: u64,
    /// The change in its versioned encoding ([`crate::Change::encode`]).
    pub body: Vec<u8>,
    /// Its author's signature, as received or made (`None` when unsigned).
    pub signature: Option<crate::security::ChangeSignature>,
    /// The document's version vector when the entry was read (`None` when not known), which a sender attaches to a
    /// document's first change (see [`crate::sync::first_copy`]).
    pub version: Option<std::sync::Arc<crate::crdt::version::VersionVector>>,
}

impl LogEntry {
    /// The entry in the form stores exchange ([`super::DocChange::encode`]), without decoding the change.
    pub fn to_wire(&self) -> Vec<u8> {
        super::replicate::encode_doc_change(&self.collection, &self.doc_id, &self.body)
    }

    /// Encoded size on the wire, about (with its signature).
    pub fn wire_len(&self) -> usize {
        self.body.len() + self.collection.len() + self.doc_id.len() + 4 + self.signature.as_ref().map_or(0, |_| 80)
    }
}

pub(super) const ENTRY_COLUMNS: &str =
    "c.seq, c.doc, d.collection, d.id, c.peer, c.sig, d.version, c.start, c.end, c.body, c.hash, c.parts";

/// Append to `out` the changes of the log row `r` (read with [`ENTRY_COLUMNS`]) that `wanted` takes, in order.
pub(super) fn row_entries(
    r: &rusqlite::Row<'_>,
    mut wanted: impl FnMut(&super::logrow::Part<'_>) -> bool,
    out: &mut Vec<LogEntry>,
) -> Result<()> {
    let (seq, doc, collection, doc_id): (i64, i64, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
    let peer = PeerId(r.get::<_, i64>(4)? as u64);
    // Written by this store; a signature it cannot read is sent as none (receivers that need one refuse it).
    let signature = r.get::<_, Option<Vec<u8>>>(5)?.and_then(|b| crate::security::ChangeSignature::decode(&b));
    let version = r.get::<_, Option<Vec<u8>>>(6)?.and_then(|b| decode_version(&b)).map(std::sync::Arc::new);
    for part in super::logrow::LogRow::read(r, 7)?.parts()? {
        if wanted(&part) {
            out.push(LogEntry {
                seq,
                doc,
                collection: collection.clone(),
                doc_id: doc_id.clone(),
                peer,
                start: part.start,
                end: part.end,
                body: part.body.to_vec(),
                // Only a row of one change is signed.
                signature: signature.clone(),
                version: version.clone(),
            });
        }
    }
    Ok(())
}

/// A document's version kept in `docs.version`; `None` (sent without one) when it does not decode.
fn decode_version(bytes: &[u8]) -> Option<crate::crdt::version::VersionVector> {
    let v = crate::crdt::version::VersionVector::from_bytes(bytes);
    if v.is_none() {
        log::warn!("a document's stored version does not decode; its changes are sent without it");
    }
    v
}

/// A registered commit listener; dropping it unregisters.
pub struct CommitListener {
    id: u64,
    shared: std::sync::Weak<super::Shared>,
}

impl Drop for CommitListener {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            lock(&shared.listeners).retain(|(id, _)| *id != self.id);
        }
    }
}

pub(crate) type Listener = Arc<dyn Fn() + Send + Sync>;

impl Inner {
    /// The log entries in `peer:lo..=hi`, plus the one that starts before `lo` and reaches into it, in counter
    /// order, stopping once `keep` has accepted entries of `max_bytes` (returns the bytes accepted).
    pub(super) fn entries_in(
        &self,
        peer: PeerId,
        lo: u64,
        hi: u64,
        max_bytes: usize,
        mut keep: impl FnMut(&LogEntry) -> bool,
        out: &mut Vec<LogEntry>,
    ) -> Result<usize> {
        let mut bytes = 0;
        let sql_peer = peer.0 as i64;
        let mut found = Vec::new();
        let mut before = self.conn.prepare_cached(&format!(
            "SELECT {ENTRY_COLUMNS} FROM changes c JOIN docs d ON d.doc = c.doc \
             WHERE c.peer = ?1 AND c.start < ?2 ORDER BY c.start DESC LIMIT 1"
        ))?;
        let mut rows = before.query(params![sql_peer, lo as i64])?;
        if let Some(r) = rows.next()? {
            row_entries(r, |p| p.end >= lo && p.start <= hi, &mut found)?;
        }
        drop(rows);
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {ENTRY_COLUMNS} FROM changes c JOIN docs d ON d.doc = c.doc \
             WHERE c.peer = ?1 AND c.start >= ?2 AND c.start <= ?3 ORDER BY c.start"
        ))?;
        let mut rows = stmt.query(params![sql_peer, lo as i64, hi.min(i64::MAX as u64) as i64])?;
        loop {
            for e in found.drain(..) {
                if bytes >= max_bytes {
                    return Ok(bytes);
                }
                if keep(&e) {
                    bytes += e.wire_len();
                    out.push(e);
                }
            }
            if bytes >= max_bytes {
                return Ok(bytes);
            }
            let Some(r) = rows.next()? else { return Ok(bytes) };
            row_entries(r, |p| p.start <= hi, &mut found)?;
        }
    }
}

impl Store {
    /// Call `f` after every commit that changed the store (on the committing thread, outside the store's lock),
    /// and when [`Store::poll_external_changes`] finds changes made by another process. Keep `f` short: it is
    /// meant to wake up whoever needs to look.
    pub fn on_commit(&self, f: impl Fn() + Send + Sync + 'static) -> CommitListener {
        let mut listeners = lock(&self.shared.listeners);
        let id = self.shared.next_listener.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        listeners.push((id, Arc::new(f)));
        CommitListener { id, shared: Arc::downgrade(&self.shared) }
    }

    pub(crate) fn notify_commit(&self) {
        let listeners: Vec<Listener> = lock(&self.shared.listeners).iter().map(|(_, f)| f.clone()).collect();
        for f in listeners {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f())).is_err() {
                log::error!("a commit listener panicked");
            }
        }
    }

    /// Look for commits made by another process (or connection) on the same file. When there are, reload, update
    /// every observer's result (delivering their events) and call the commit listeners — also when an operation of
    /// this store since the last poll already reloaded them (a read does, to see them), since that told no one.
    /// Returns whether anything changed. Cheap when nothing did (one `PRAGMA data_version`).
    pub fn poll_external_changes(&self) -> Result<bool> {
        let mut inner = self.lock();
        let changed = inner.data_version()? != inner.data_version;
        if !changed && !inner.unannounced {
            return Ok(false);
        }
        if changed {
            log::debug!("store changed by another process; reloading");
            inner.reload()?;
        }
        inner.unannounced = false;
        let events = inner.refresh_all_observers()?;
        self.shared.delivery.enqueue(events);
        drop(inner);
        self.shared.delivery.run();
        self.notify_commit();
        Ok(true)
    }
}
