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
use std::collections::{BTreeMap, HashMap};

/// A document in memory with what the snapshot policy needs to know.
#[derive(Clone, Debug, Default)]
pub(crate) struct CachedDoc {
    pub doc: Document,
    /// Encoded size of the last snapshot.
    pub snapshot_bytes: u64,
    /// Encoded size of the changes applied after it.
    pub tail_bytes: u64,
    /// The document's row number in `docs`, once it has one.
    pub row: Option<i64>,
}

pub(crate) type DocKey = (String, String);

/// Documents kept decoded between transactions, least recently used dropped first, bounded by an estimate of
/// their memory (a few times their encoded size).
pub(crate) struct DocCache {
    docs: HashMap<DocKey, (CachedDoc, u64, usize)>,
    by_use: BTreeMap<u64, DocKey>,
    tick: u64,
    bytes: usize,
    budget: usize,
}

impl CachedDoc {
    /// Rough heap size of the decoded document.
    fn estimated_bytes(&self) -> usize {
        ((self.snapshot_bytes + self.tail_bytes) as usize).saturating_mul(4).saturating_add(256)
    }
}

impl DocCache {
    pub fn new(budget: usize) -> Self {
        DocCache { docs: HashMap::new(), by_use: BTreeMap::new(), tick: 0, bytes: 0, budget }
    }

    pub fn take(&mut self, key: &DocKey) -> Option<CachedDoc> {
        let (doc, tick, size) = self.docs.remove(key)?;
        self.by_use.remove(&tick);
        self.bytes -= size;
        Some(doc)
    }

    pub fn put(&mut self, key: DocKey, doc: CachedDoc) {
        self.remove(&key);
        self.tick += 1;
        let size = doc.estimated_bytes();
        self.bytes += size;
        self.by_use.insert(self.tick, key.clone());
        self.docs.insert(key, (doc, self.tick, size));
        while self.bytes > self.budget {
            let Some((_, oldest)) = self.by_use.pop_first() else { break };
            if let Some((_, _, size)) = self.docs.remove(&oldest) {
                self.bytes -= size;
            }
        }
    }

    pub fn remove(&mut self, key: &DocKey) {
        self.take(key);
    }

    pub fn clear(&mut self) {
        self.docs.clear();
        self.by_use.clear();
        self.bytes = 0;
    }
}

pub(crate) fn encode_version(v: &VersionVector) -> Vec<u8> {
    postcard::to_stdvec(v).unwrap_or_default()
}

/// The row number of a document, if the store has one.
pub(crate) fn row_of(conn: &Connection, collection: &str, id: &str) -> Result<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT doc FROM docs WHERE collection = ?1 AND id = ?2")?
        .query_row(params![collection, id], |r| r.get(0))
        .optional()?)
}

/// Load a document: its snapshot, then every change stored after it, in the order they were applied.
pub(crate) fn load(conn: &Connection, collection: &str, id: &str) -> Result<Option<CachedDoc>> {
    let Some(row) = row_of(conn, collection, id)? else { return Ok(None) };
    let corrupt = |e: &dyn std::fmt::Display| Error::Corrupt(format!("{collection}/{id}: {e}"));
    let snapshot: Option<(Vec<u8>, i64)> = conn
        .prepare_cached("SELECT state, seq FROM snapshots WHERE doc = ?1")?
        .query_row(params![row], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let (mut doc, snapshot_bytes, after) = match snapshot {
        Some((state, seq)) => (Document::decode(&state).map_err(|e| corrupt(&e))?, state.len() as u64, seq),
        None => (Document::new(), 0, 0),
    };
    let mut tail_bytes = 0;
    let mut stmt = conn.prepare_cached("SELECT body FROM changes WHERE doc = ?1 AND seq > ?2 ORDER BY seq")?;
    let mut rows = stmt.query(params![row, after])?;
    while let Some(r) = rows.next()? {
        let body: Vec<u8> = r.get(0)?;
        tail_bytes += body.len() as u64;
        let change = Change::decode(&body).map_err(|e| corrupt(&e))?;
        match doc.apply(&change) {
            Ok(Applied::Applied) | Ok(Applied::Duplicate) => {}
            Ok(Applied::NotReady) => return Err(corrupt(&"stored change out of causal order")),
            Err(e) => return Err(corrupt(&e)),
        }
    }
    Ok(Some(CachedDoc { doc, snapshot_bytes, tail_bytes, row: Some(row) }))
}

/// The JSON view stored for reads and queries: the document with its `_id`, or `None` if it does not exist.
pub(crate) fn view(doc: &Document, id: &str) -> Option<serde_json::Value> {
    let mut m = doc.to_json()?;
    m.insert("_id".to_string(), serde_json::Value::String(id.to_string()));
    Some(serde_json::Value::Object(m))
}

/// Persist a document after `changes` were applied to it: its row (version and view), the changes, and — when the
/// changes since the last snapshot reach half its size (at least 1 KiB) — a new snapshot.
pub(crate) fn save(conn: &Connection, collection: &str, id: &str, cached: &mut CachedDoc, changes: &[Change], view_json: Option<&serde_json::Value>) -> Result<()> {
    let version = encode_version(cached.doc.version());
    let view_text = view_json.map(|v| v.to_string());
    let row = match cached.row {
        Some(row) => {
            conn.prepare_cached("UPDATE docs SET version = ?2, view = ?3 WHERE doc = ?1")?
                .execute(params![row, version, view_text])?;
            row
        }
        None => {
            conn.prepare_cached("INSERT INTO docs (collection, id, version, view) VALUES (?1, ?2, ?3, ?4)")?
                .execute(params![collection, id, version, view_text])?;
            conn.last_insert_rowid()
        }
    };
    cached.row = Some(row);
    let mut insert = conn.prepare_cached("INSERT INTO changes (peer, start, end, doc, body) VALUES (?1, ?2, ?3, ?4, ?5)")?;
    let mut last_seq = 0;
    for c in changes {
        let body = c.encode();
        cached.tail_bytes += body.len() as u64;
        insert.execute(params![c.peer.0 as i64, c.start as i64, c.end() as i64, row, body])?;
        last_seq = conn.last_insert_rowid();
    }
    if cached.tail_bytes >= (cached.snapshot_bytes / 2).max(1024) {
        let state = cached.doc.encode();
        conn.prepare_cached(
            "INSERT INTO snapshots (doc, state, seq) VALUES (?1, ?2, ?3) ON CONFLICT (doc) DO UPDATE SET state = ?2, seq = ?3",
        )?
        .execute(params![row, state, last_seq])?;
        cached.snapshot_bytes = state.len() as u64;
        cached.tail_bytes = 0;
    }
    Ok(())
}
