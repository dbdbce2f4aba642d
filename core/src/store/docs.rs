//! Loading and saving documents: a snapshot of the CRDT state plus the changes applied after it, and a JSON view
//! for reads and queries.
//!
//! A snapshot is rewritten when the changes since the last one add up to half its size (at least 1 KiB), so the
//! replay on load stays short and the write amplification stays a small constant.

use crate::crdt::change::Change;
use crate::crdt::document::{Applied, Document};
use crate::crdt::version::VersionVector;
use crate::error::{Error, Result};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;

/// A document in memory with what the snapshot policy needs to know.
#[derive(Clone, Debug, Default)]
pub(crate) struct CachedDoc {
    pub doc: Document,
    pub snapshot_bytes: u64,
    pub tail_bytes: u64,
    /// Whether a row exists in `docs`.
    pub stored: bool,
}

pub(crate) type DocKey = (String, String);

/// Documents kept decoded between transactions. Bounded; evicts the least recently used.
pub(crate) struct DocCache {
    docs: HashMap<DocKey, (CachedDoc, u64)>,
    tick: u64,
    capacity: usize,
}

impl DocCache {
    pub fn new(capacity: usize) -> Self {
        DocCache { docs: HashMap::new(), tick: 0, capacity: capacity.max(1) }
    }

    pub fn take(&mut self, key: &DocKey) -> Option<CachedDoc> {
        self.docs.remove(key).map(|(d, _)| d)
    }

    pub fn put(&mut self, key: DocKey, doc: CachedDoc) {
        self.tick += 1;
        self.docs.insert(key, (doc, self.tick));
        if self.docs.len() > self.capacity {
            // Drop the older half: amortised O(1) per insert.
            let mut ticks: Vec<u64> = self.docs.values().map(|(_, t)| *t).collect();
            ticks.sort_unstable();
            let cutoff = ticks[ticks.len() / 2];
            self.docs.retain(|_, (_, t)| *t > cutoff);
        }
    }

    pub fn remove(&mut self, key: &DocKey) {
        self.docs.remove(key);
    }

    pub fn clear(&mut self) {
        self.docs.clear();
    }
}

pub(crate) fn encode_version(v: &VersionVector) -> Vec<u8> {
    postcard::to_stdvec(v).unwrap_or_default()
}

/// Load a document: its snapshot, then every change stored after it, in the order they were applied.
pub(crate) fn load(conn: &Connection, collection: &str, id: &str) -> Result<Option<CachedDoc>> {
    let row = conn
        .prepare_cached(
            "SELECT snapshot, snapshot_seq, snapshot_bytes, tail_bytes FROM docs WHERE collection = ?1 AND id = ?2",
        )?
        .query_row(params![collection, id], |r| {
            Ok((r.get::<_, Option<Vec<u8>>>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?))
        })
        .optional()?;
    let Some((snapshot, snapshot_seq, snapshot_bytes, tail_bytes)) = row else { return Ok(None) };
    let mut doc = match snapshot {
        Some(bytes) => Document::decode(&bytes).map_err(|e| Error::Corrupt(format!("{collection}/{id}: {e}")))?,
        None => Document::new(),
    };
    let mut stmt =
        conn.prepare_cached("SELECT body FROM changes WHERE collection = ?1 AND doc = ?2 AND seq > ?3 ORDER BY seq")?;
    let mut rows = stmt.query(params![collection, id, snapshot_seq])?;
    while let Some(r) = rows.next()? {
        let body: Vec<u8> = r.get(0)?;
        let change = Change::decode(&body).map_err(|e| Error::Corrupt(format!("{collection}/{id}: {e}")))?;
        match doc.apply(&change) {
            Ok(Applied::Applied) | Ok(Applied::Duplicate) => {}
            Ok(Applied::NotReady) => {
                return Err(Error::Corrupt(format!("{collection}/{id}: stored change out of causal order")))
            }
            Err(e) => return Err(Error::Corrupt(format!("{collection}/{id}: {e}"))),
        }
    }
    Ok(Some(CachedDoc { doc, snapshot_bytes: snapshot_bytes as u64, tail_bytes: tail_bytes as u64, stored: true }))
}

/// Append changes of one document to the log. Returns the seq of the last one.
pub(crate) fn append_changes(conn: &Connection, collection: &str, id: &str, changes: &[Change], bytes: &mut u64) -> Result<i64> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO changes (peer, start, end, collection, doc, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    let mut last = 0;
    for c in changes {
        let body = c.encode();
        *bytes += body.len() as u64;
        stmt.execute(params![c.peer.0 as i64, c.start as i64, c.end() as i64, collection, id, body])?;
        last = conn.last_insert_rowid();
    }
    Ok(last)
}

/// The JSON view stored for reads and queries: the document with its `_id`, or `None` if it does not exist.
pub(crate) fn view(doc: &Document, id: &str) -> Option<serde_json::Value> {
    let mut m = doc.to_json()?;
    m.insert("_id".to_string(), serde_json::Value::String(id.to_string()));
    Some(serde_json::Value::Object(m))
}

/// Save a document after changes were appended (`added_bytes` of them, the last with seq `last_seq`).
pub(crate) fn save(conn: &Connection, collection: &str, id: &str, cached: &mut CachedDoc, view_json: Option<&serde_json::Value>, last_seq: i64, added_bytes: u64) -> Result<()> {
    let version = encode_version(cached.doc.version());
    let view_text = view_json.map(|v| v.to_string());
    cached.tail_bytes += added_bytes;
    let snapshot_due = !cached.stored || cached.tail_bytes >= (cached.snapshot_bytes / 2).max(1024);
    if snapshot_due {
        let snapshot = cached.doc.encode();
        cached.snapshot_bytes = snapshot.len() as u64;
        cached.tail_bytes = 0;
        conn.prepare_cached(
            "INSERT INTO docs (collection, id, version, view, snapshot, snapshot_seq, snapshot_bytes, tail_bytes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0)
             ON CONFLICT (collection, id) DO UPDATE SET version = ?3, view = ?4, snapshot = ?5, snapshot_seq = ?6,
               snapshot_bytes = ?7, tail_bytes = 0",
        )?
        .execute(params![collection, id, version, view_text, snapshot, last_seq, cached.snapshot_bytes as i64])?;
    } else {
        conn.prepare_cached(
            "UPDATE docs SET version = ?3, view = ?4, tail_bytes = ?5 WHERE collection = ?1 AND id = ?2",
        )?
        .execute(params![collection, id, version, view_text, cached.tail_bytes as i64])?;
    }
    cached.stored = true;
    Ok(())
}
