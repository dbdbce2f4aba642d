//! Write transactions: several changes, across documents, committed atomically or not at all.

use super::docs::{self, CachedDoc, DocKey};
use super::inner::Inner;
use super::observe::{self, Queued};
use super::replicate::{ApplyReport, DocChange};
use super::{check_collection, check_doc_id, ids};
use crate::crdt::change::Change;
use crate::crdt::clock::Timestamp;
use crate::crdt::document::{Applied, DocEditor, Document};
use crate::crdt::path::Path;
use crate::crdt::value::Value;
use crate::error::{Error, Result};
use rusqlite::params;
use serde_json::Value as Json;
use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

/// A document taken out of the cache for the length of a transaction.
struct TxnDoc {
    cached: CachedDoc,
    /// Changes applied in this transaction, in order, encoded for the log.
    new_changes: Vec<docs::LoggedChange>,
    /// Pending rows applied in this transaction (to delete on commit).
    from_pending: Vec<(u64, u64)>,
    /// The store had no row for it before this transaction.
    created: bool,
}

/// A write transaction. Everything done through it is committed together when the closure given to
/// [`crate::Store::write`] returns `Ok`, and nothing is when it returns an error.
pub struct WriteTxn<'a> {
    inner: &'a mut Inner,
    docs: BTreeMap<DocKey, TxnDoc>,
    ts: Timestamp,
    report: ApplyReport,
    /// Documents evicted in this transaction.
    evicted: Vec<DocKey>,
}

/// The JSON object of an upsert: `_id` is taken out (it names the document), the rest are fields.
fn fields_from_json(json: Json) -> Result<(Option<String>, Value)> {
    let Json::Object(mut obj) = json else {
        return Err(Error::InvalidJson("a document must be a JSON object".into()));
    };
    let id = match obj.remove("_id") {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) => Some(s),
        Some(other) => Some(other.to_string()),
    };
    Ok((id, Value::from_json_owned(Json::Object(obj))))
}

impl<'a> WriteTxn<'a> {
    pub(crate) fn new(inner: &'a mut Inner) -> Self {
        let ts = inner.clock.tick(inner.sources.now_ms());
        WriteTxn { inner, docs: BTreeMap::new(), ts, report: ApplyReport::default(), evicted: Vec::new() }
    }

    /// Take a document into the transaction (from the cache or the database); with `create`, an empty document
    /// when the store has none. `None` if there is none and `create` is false.
    fn take_doc(&mut self, collection: &str, id: &str, create: bool) -> Result<Option<&mut TxnDoc>> {
        let key = (collection.to_string(), id.to_string());
        let td = match self.docs.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let (cached, created) = match self.inner.cache.take(e.key()) {
                    Some(c) => (c, false),
                    None => match docs::load(&self.inner.conn, collection, id)? {
                        Some(c) => (c, false),
                        None if create => (CachedDoc::default(), true),
                        None => return Ok(None),
                    },
                };
                e.insert(TxnDoc { cached, new_changes: Vec::new(), from_pending: Vec::new(), created })
            }
        };
        Ok(Some(td))
    }

    fn doc(&mut self, collection: &str, id: &str) -> Result<Option<&mut TxnDoc>> {
        self.take_doc(collection, id, false)
    }

    fn doc_or_new(&mut self, collection: &str, id: &str) -> Result<&mut TxnDoc> {
        self.take_doc(collection, id, true)?.ok_or_else(|| Error::Corrupt("document vanished from transaction".into()))
    }

    fn is_evicted(&self, collection: &str, id: &str) -> bool {
        !self.inner.evicted.is_empty() && self.inner.evicted.contains(&(collection.to_string(), id.to_string()))
    }

    fn check_not_evicted(&self, collection: &str, id: &str) -> Result<()> {
        if self.is_evicted(collection, id) {
            return Err(Error::Evicted { collection: collection.into(), id: id.into() });
        }
        Ok(())
    }

    /// Edit one document with a [`DocEditor`]; creates the document when `create` and it does not exist.
    fn edit<R>(
        &mut self,
        collection: &str,
        id: &str,
        create: bool,
        f: impl FnOnce(&mut DocEditor<'_>) -> Result<R>,
    ) -> Result<R> {
        check_collection(collection)?;
        check_doc_id(id)?;
        self.check_not_evicted(collection, id)?;
        if !self.inner.forgotten.is_empty() {
            let author = self.inner.author;
            if let Some(has) = self.take_doc(collection, id, create)?.map(|td| td.cached.doc.version().get(author)) {
                self.follow_own_chain(collection, id, has)?;
            }
        }
        let (peer, next, ts) = (self.inner.author, self.inner.next_counter, self.ts);
        let td = if create {
            self.doc_or_new(collection, id)?
        } else {
            match self.doc(collection, id)? {
                Some(td) if td.cached.doc.exists() => td,
                _ => return Err(Error::NotFound { collection: collection.into(), id: id.into() }),
            }
        };
        let mut editor = td.cached.doc.edit(peer, next, ts);
        let result = f(&mut editor);
        let next_after = editor.next_counter();
        let change = editor.finish();
        // Even on error, ops that were applied are recorded, so the in-memory document and the change agree; the
        // transaction as a whole is rolled back by the caller anyway.
        let made = change.as_ref().map(|c| (c.peer, c.start, c.end()));
        if let Some(c) = change {
            td.new_changes.push(docs::LoggedChange::of(&c));
        }
        if let Some((peer, start, end)) = made {
            self.inner.held.insert(peer, start, end);
            self.inner.next_counter = next_after;
        }
        result
    }

    /// Before this store's author writes to a document of which it holds its own changes up to `has`: when it
    /// evicted later changes of its own there (they have not come back), a new change could not follow them, so the
    /// store starts a new author (see [`crate::Store::evict`]).
    fn follow_own_chain(&mut self, collection: &str, id: &str, has: u64) -> Result<()> {
        let key = (collection.to_string(), id.to_string());
        match self.inner.forgotten.get(&key) {
            Some(&end) if has < end => self.inner.start_new_author(),
            Some(_) => {
                // Its changes came back: nothing is missing any more.
                self.inner
                    .conn
                    .prepare_cached("DELETE FROM forgotten WHERE collection = ?1 AND id = ?2")?
                    .execute(params![collection, id])?;
                self.inner.forgotten.remove(&key);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Insert or update a document from a JSON object: fields given are set (objects merged field by field), the
    /// others kept. `_id` names the document; without it a new time-sortable id is generated. Returns the id.
    pub fn upsert(&mut self, collection: &str, json: Json) -> Result<String> {
        let (id, fields) = fields_from_json(json)?;
        self.upsert_value(collection, id.as_deref(), fields)
    }

    /// Insert or update a document from typed values (a [`Value::Map`] of fields), merging like [`Self::upsert`].
    pub fn upsert_value(&mut self, collection: &str, id: Option<&str>, fields: Value) -> Result<String> {
        let id = match id {
            Some(id) => id.to_string(),
            None => ids::generate(self.ts.wall_ms(), &self.inner.sources),
        };
        if !matches!(&fields, Value::Map(_)) {
            return Err(Error::InvalidJson("a document's fields must be a map".into()));
        }
        self.edit(collection, &id, true, |ed| Ok(ed.merge(Path::root(), fields)?))?;
        Ok(id)
    }

    /// Edit an existing document field by field. Fails with [`Error::NotFound`] if it does not exist.
    pub fn update<R>(
        &mut self,
        collection: &str,
        id: &str,
        f: impl FnOnce(&mut DocEditor<'_>) -> Result<R>,
    ) -> Result<R> {
        self.edit(collection, id, false, f)
    }

    /// Remove a document (a CRDT delete that replicates). Returns whether it existed.
    pub fn remove(&mut self, collection: &str, id: &str) -> Result<bool> {
        match self.edit(collection, id, false, |ed| Ok(ed.remove_document()?)) {
            Ok(()) => Ok(true),
            Err(Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Read a document as this transaction sees it (its own writes included).
    pub fn get(&mut self, collection: &str, id: &str) -> Result<Option<Json>> {
        check_collection(collection)?;
        check_doc_id(id)?;
        Ok(self.doc(collection, id)?.and_then(|td| docs::view(&td.cached.doc, id)))
    }

    /// Apply a change received from another replica (see [`crate::Store::apply_changes`]).
    pub(crate) fn apply_remote(&mut self, dc: &DocChange) -> Result<()> {
        let c = &dc.change;
        check_collection(&dc.collection)?;
        check_doc_id(&dc.doc_id)?;
        c.validate()?;
        if self.inner.held.contains(c.peer, c.start, c.end()) {
            self.report.duplicates += 1;
            return Ok(());
        }
        if self.is_evicted(&dc.collection, &dc.doc_id) {
            self.report.ignored_evicted += 1;
            return Ok(());
        }
        if !self.inner.clock.observe(c.ts, self.inner.sources.now_ms()) {
            log::warn!("change {}:{} has a timestamp beyond the allowed clock skew; the local clock was not moved past the bound", c.peer, c.start);
        }
        let td = self.doc_or_new(&dc.collection, &dc.doc_id)?;
        match td.cached.doc.apply_validated(c)? {
            Applied::Applied => {
                td.new_changes.push(docs::LoggedChange::of(c));
                self.inner.held.insert(c.peer, c.start, c.end());
                self.report.applied += 1;
                self.drain_pending(&dc.collection, &dc.doc_id)?;
            }
            Applied::Duplicate => self.report.duplicates += 1,
            Applied::NotReady => {
                if self.inner.pending_rows < super::MAX_PENDING_CHANGES {
                    self.inner.pending_rows += self
                        .inner
                        .conn
                        .prepare_cached(
                            "INSERT OR IGNORE INTO pending (peer, start, collection, doc, body, received) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        )?
                        .execute(params![c.peer.0 as i64, c.start as i64, dc.collection, dc.doc_id, c.encode(), self.inner.sources.now_ms() as i64])?;
                } else {
                    log::warn!("pending change buffer full; dropping {}:{} (it will be sent again)", c.peer, c.start);
                }
                self.report.pending += 1;
            }
        }
        Ok(())
    }

    /// Apply the pending changes of one document that have become ready, until none is.
    fn drain_pending(&mut self, collection: &str, id: &str) -> Result<()> {
        loop {
            let rows: Vec<(i64, i64, Vec<u8>)> = self
                .inner
                .conn
                .prepare_cached("SELECT peer, start, body FROM pending WHERE collection = ?1 AND doc = ?2")?
                .query_map(params![collection, id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let mut progressed = false;
            for (peer, start, body) in rows {
                let td = self.doc_or_new(collection, id)?;
                let drop_row = match Change::decode(&body) {
                    Ok(c) => match td.cached.doc.apply_validated(&c) {
                        Ok(Applied::Applied) => {
                            td.new_changes.push(docs::LoggedChange::of(&c));
                            self.inner.held.insert(c.peer, c.start, c.end());
                            self.report.applied += 1;
                            self.report.pending = self.report.pending.saturating_sub(1);
                            progressed = true;
                            true
                        }
                        Ok(Applied::Duplicate) => true,
                        Ok(Applied::NotReady) => false,
                        Err(e) => {
                            log::warn!("dropping pending change {peer}:{start} of {collection}/{id}: {e}");
                            true
                        }
                    },
                    Err(e) => {
                        log::warn!("dropping corrupt pending change {peer}:{start}: {e}");
                        true
                    }
                };
                if drop_row {
                    let deleted = self
                        .inner
                        .conn
                        .prepare_cached("DELETE FROM pending WHERE peer = ?1 AND start = ?2")?
                        .execute(params![peer, start])?;
                    self.inner.pending_rows = self.inner.pending_rows.saturating_sub(deleted);
                    if let Some(td) = self.docs.get_mut(&(collection.to_string(), id.to_string())) {
                        td.from_pending.push((peer as u64, start as u64));
                    }
                }
            }
            if !progressed {
                return Ok(());
            }
        }
    }

    /// Whether the transaction changed anything.
    pub(crate) fn wrote(&self) -> bool {
        !self.evicted.is_empty() || self.docs.values().any(|td| !td.new_changes.is_empty())
    }

    pub(crate) fn take_report(&mut self) -> ApplyReport {
        std::mem::take(&mut self.report)
    }

    /// Write everything to the database (inside the open SQLite transaction) and compute observer events. The
    /// caller commits.
    pub(crate) fn persist(&mut self) -> Result<Vec<Queued>> {
        let mut touched: BTreeMap<&str, Vec<(&str, Option<Json>)>> = BTreeMap::new();
        for ((collection, id), td) in self.docs.iter_mut() {
            if td.new_changes.is_empty() {
                continue;
            }
            // The view as a JSON value only when an observer of the collection needs it.
            let observed = self.inner.observers.registered.values().any(|r| r.collection == *collection);
            let value = if observed { docs::view(&td.cached.doc, id) } else { None };
            let view = docs::render_view(&td.cached, id);
            docs::save(&self.inner.conn, collection, id, &mut td.cached, &td.new_changes, view.as_ref())?;
            if observed {
                touched.entry(collection.as_str()).or_default().push((id.as_str(), value));
            }
        }
        for (collection, id) in &self.evicted {
            touched.entry(collection.as_str()).or_default().push((id.as_str(), None));
        }
        self.inner.save_meta()?;
        let mut events = Vec::new();
        for (collection, docs_touched) in &touched {
            let refs: Vec<(&str, Option<&Json>)> = docs_touched.iter().map(|(i, v)| (*i, v.as_ref())).collect();
            let ids: Vec<u64> = self
                .inner
                .observers
                .registered
                .iter()
                .filter(|(_, r)| r.collection == *collection)
                .map(|(id, _)| *id)
                .collect();
            for oid in ids {
                // A limited result can gain documents nobody touched (the next in line): recompute it.
                let fresh = match self.inner.observers.registered.get(&oid) {
                    Some(r) if r.query.limit.is_some() => Some(self.inner.query(collection, &r.query)?),
                    _ => None,
                };
                let Some(r) = self.inner.observers.registered.get_mut(&oid) else { continue };
                let ev = match fresh {
                    Some(new) => observe::replace_result(r, new),
                    None => observe::update_incrementally(r, &refs),
                };
                if let Some(event) = ev {
                    events.push(Queued { callback: r.callback.clone(), alive: r.alive.clone(), event });
                }
            }
        }
        Ok(events)
    }

    /// After a successful commit: put the documents back in the cache. Documents this transaction created are
    /// not admitted (they are cheap to load: no snapshot, a change or two), so a bulk import or a sync catching up
    /// on thousands of new documents does not push the documents in use out of the cache.
    pub(crate) fn finish(self) {
        for (key, td) in self.docs {
            if !td.created {
                self.inner.cache.put(key, td.cached);
            }
        }
    }

    /// Drop a document from this device (see [`crate::Store::evict`]).
    pub(crate) fn evict(&mut self, collection: &str, id: &str) -> Result<bool> {
        let key = (collection.to_string(), id.to_string());
        self.docs.remove(&key);
        self.inner.cache.remove(&key);
        let conn = &self.inner.conn;
        let dropped = conn
            .prepare_cached("DELETE FROM pending WHERE collection = ?1 AND doc = ?2")?
            .execute(params![collection, id])?;
        conn.prepare_cached("INSERT OR IGNORE INTO evicted (collection, id) VALUES (?1, ?2)")?
            .execute(params![collection, id])?;
        self.inner.evicted.insert(key.clone());
        let existed = match docs::row_of(conn, collection, id)? {
            None => false,
            Some(row) => {
                let own_end: Option<i64> = conn
                    .prepare_cached("SELECT max(end) FROM changes WHERE doc = ?1 AND peer = ?2")?
                    .query_row(params![row, self.inner.author.0 as i64], |r| r.get(0))?;
                if let Some(end) = own_end {
                    conn.prepare_cached(
                        "INSERT INTO forgotten (collection, id, author, end) VALUES (?1, ?2, ?3, ?4) \
                         ON CONFLICT (collection, id) DO UPDATE SET author = ?3, \
                         end = CASE WHEN author = ?3 THEN max(end, ?4) ELSE ?4 END",
                    )?
                    .execute(params![collection, id, self.inner.author.0 as i64, end])?;
                    let e = self.inner.forgotten.entry(key.clone()).or_default();
                    *e = (*e).max(end as u64);
                }
                let ranges: Vec<(i64, i64, i64)> = conn
                    .prepare_cached("SELECT peer, start, end FROM changes WHERE doc = ?1")?
                    .query_map(params![row], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect::<rusqlite::Result<_>>()?;
                for (peer, start, end) in ranges {
                    self.inner.held.remove(crate::crdt::clock::PeerId(peer as u64), start as u64, end as u64);
                }
                let conn = &self.inner.conn;
                conn.prepare_cached("DELETE FROM changes WHERE doc = ?1")?.execute(params![row])?;
                conn.prepare_cached("DELETE FROM snapshots WHERE doc = ?1")?.execute(params![row])?;
                conn.prepare_cached("DELETE FROM view_parts WHERE doc = ?1")?.execute(params![row])?;
                conn.prepare_cached("DELETE FROM docs WHERE doc = ?1")?.execute(params![row])? > 0
            }
        };
        self.inner.pending_rows = self.inner.pending_rows.saturating_sub(dropped);
        self.evicted.push(key);
        Ok(existed)
    }

    /// The document as this transaction sees it (typed access).
    pub fn document(&mut self, collection: &str, id: &str) -> Result<Option<Document>> {
        check_collection(collection)?;
        check_doc_id(id)?;
        Ok(self.doc(collection, id)?.map(|td| td.cached.doc.clone()))
    }
}
