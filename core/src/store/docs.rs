//! Loading and saving documents: a snapshot of the CRDT state plus the tail of changes applied after it, and a JSON
//! view for reads and queries.
//!
//! The tail lives in the document's row (rewritten on every commit anyway), so an update costs one row write plus
//! an append to the change log. The snapshot is rewritten, and the tail emptied, when the tail reaches half the
//! snapshot's size (at least 1 KiB, at most 64 KiB), which keeps the replay on load short and the write
//! amplification a small constant.

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
    /// The changes applied after it, encoded and length-prefixed.
    pub tail: Vec<u8>,
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
        (self.snapshot_bytes as usize + self.tail.len()).saturating_mul(4).saturating_add(256)
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

/// Load a document: its snapshot, then the changes of its tail, in the order they were applied.
pub(crate) fn load(conn: &Connection, collection: &str, id: &str) -> Result<Option<CachedDoc>> {
    let row: Option<(i64, Vec<u8>)> = conn
        .prepare_cached("SELECT doc, tail FROM docs WHERE collection = ?1 AND id = ?2")?
        .query_row(params![collection, id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((row, tail)) = row else { return Ok(None) };
    let corrupt = |e: &dyn std::fmt::Display| Error::Corrupt(format!("{collection}/{id}: {e}"));
    let state: Option<Vec<u8>> = conn
        .prepare_cached("SELECT state FROM snapshots WHERE doc = ?1")?
        .query_row(params![row], |r| r.get(0))
        .optional()?;
    let (mut doc, snapshot_bytes) = match state {
        Some(state) => (Document::decode(&state).map_err(|e| corrupt(&e))?, state.len() as u64),
        None => (Document::new(), 0),
    };
    let mut rest = tail.as_slice();
    while !rest.is_empty() {
        let (len, body) = rest.split_first_chunk::<4>().ok_or_else(|| corrupt(&"truncated tail"))?;
        let len = u32::from_le_bytes(*len) as usize;
        let body_rest = body.split_at_checked(len).ok_or_else(|| corrupt(&"truncated tail"))?;
        let change = Change::decode(body_rest.0).map_err(|e| corrupt(&e))?;
        rest = body_rest.1;
        match doc.apply(&change) {
            Ok(Applied::Applied) | Ok(Applied::Duplicate) => {}
            Ok(Applied::NotReady) => return Err(corrupt(&"stored change out of causal order")),
            Err(e) => return Err(corrupt(&e)),
        }
    }
    Ok(Some(CachedDoc { doc, snapshot_bytes, tail, row: Some(row) }))
}

/// The JSON view stored for reads and queries: the document with its `_id`, or `None` if it does not exist.
pub(crate) fn view(doc: &Document, id: &str) -> Option<serde_json::Value> {
    let mut m = doc.to_json()?;
    m.insert("_id".to_string(), serde_json::Value::String(id.to_string()));
    Some(serde_json::Value::Object(m))
}

/// Persist a document after `changes` were applied to it: the changes go to the log and the document's tail, its
/// row gets the new version and view, and a new snapshot replaces the tail when the tail has grown enough.
pub(crate) fn save(conn: &Connection, collection: &str, id: &str, cached: &mut CachedDoc, changes: &[Change], view_json: Option<&serde_json::Value>) -> Result<()> {
    let mut bodies = Vec::with_capacity(changes.len());
    for c in changes {
        let body = c.encode();
        cached.tail.extend_from_slice(&(body.len() as u32).to_le_bytes());
        cached.tail.extend_from_slice(&body);
        bodies.push(body);
    }
    let snapshot = if cached.tail.len() as u64 >= (cached.snapshot_bytes / 2).clamp(1024, 64 << 10) {
        let state = cached.doc.encode();
        cached.snapshot_bytes = state.len() as u64;
        cached.tail.clear();
        Some(state)
    } else {
        None
    };
    let version = encode_version(cached.doc.version());
    let view_text = view_json.map(|v| v.to_string());
    let row = match cached.row {
        Some(row) => {
            conn.prepare_cached("UPDATE docs SET version = ?2, view = ?3, tail = ?4 WHERE doc = ?1")?
                .execute(params![row, version, view_text, cached.tail])?;
            row
        }
        None => {
            conn.prepare_cached("INSERT INTO docs (collection, id, version, view, tail) VALUES (?1, ?2, ?3, ?4, ?5)")?
                .execute(params![collection, id, version, view_text, cached.tail])?;
            conn.last_insert_rowid()
        }
    };
    cached.row = Some(row);
    let mut insert = conn.prepare_cached("INSERT INTO changes (peer, start, end, doc, body) VALUES (?1, ?2, ?3, ?4, ?5)")?;
    for (c, body) in changes.iter().zip(bodies) {
        insert.execute(params![c.peer.0 as i64, c.start as i64, c.end() as i64, row, body])?;
    }
    if let Some(state) = snapshot {
        conn.prepare_cached("INSERT INTO snapshots (doc, state) VALUES (?1, ?2) ON CONFLICT (doc) DO UPDATE SET state = ?2")?
            .execute(params![row, state])?;
    }
    Ok(())
}
