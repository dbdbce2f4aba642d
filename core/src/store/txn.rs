//! Write transactions: several changes, across documents, committed atomically or not at all.

use super::docs::{self, CachedDoc, DocKey};
use super::inner::Inner;
use super::judge::{self, Judged, KeptAside, LoggedChange, LoggedEncoding, PendingChange};
use super::observe::{self, Queued};
use super::pending::PENDING_MAX_AGE_MS;
use super::replicate::CHANGE_HASH_BYTES;
use super::replicate::{ApplyReport, DocChange};
use super::{check_collection, check_doc_id, ids};
use crate::crdt::clock::{PeerId, Timestamp};
use crate::crdt::document::{DocEditor, Document};
use crate::crdt::path::{Path, PathSegment};
use crate::crdt::value::Kind;
use crate::crdt::value::Value;
use crate::error::{Error, Result};
use crate::security::{ChangeCheck, RefusalReason};
use rusqlite::params;
use serde_json::Value as Json;
use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

/// A document taken out of the cache for the length of a transaction.
struct TxnDoc {
    cached: CachedDoc,
    /// Changes applied in this transaction, in order, encoded for the log.
    new_changes: Vec<docs::LoggedChange>,
    /// Changes this transaction took in through merged states ([`WriteTxn::merge_state`]), not logged: folded
    /// into the document's snapshot, which is rewritten.
    merged: Option<super::Summary>,
    /// An attested state merged in this transaction, to keep ([`WriteTxn::merge_attested`]).
    attested: Option<super::AttestedState>,
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
    /// What judging the received changes recorded: changes applied (not in the log yet) and the report.
    judged: Judged,
    /// Documents evicted in this transaction.
    evicted: Vec<DocKey>,
    /// A write failed in a way that leaves a document of the transaction changed in memory (a write the device's
    /// certificate does not allow): the transaction cannot commit, even if the caller carried on.
    failed: Option<(String, String, String)>,
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

/// Drops from `obj` (the fields to write into the map at path `at` of `doc`) every entry equal to what `doc`
/// shows there, and prunes objects written over maps the same way, entry by entry.
fn keep_changed(doc: &Document, at: &mut Vec<PathSegment>, obj: &mut serde_json::Map<String, Json>) -> Result<()> {
    let mut unchanged = Vec::new();
    for (key, value) in obj.iter_mut() {
        at.push(PathSegment::Key(key.clone()));
        let path = Path::from_segments(at.clone())?;
        if doc.get(&path)?.as_ref() == Some(&*value) {
            unchanged.push(key.clone());
        } else if let Json::Object(inner) = value {
            if doc.kind_at(&path)? == Some(Kind::Map) {
                keep_changed(doc, at, inner)?;
                if inner.is_empty() {
                    unchanged.push(key.clone());
                }
            }
        }
        at.pop();
    }
    for key in unchanged {
        obj.remove(&key);
    }
    Ok(())
}

/// Up to this many documents, a transaction finds one by comparing keys rather than making one to look it up.
const SCAN_DOCS: usize = 8;

impl<'a> WriteTxn<'a> {
    pub(crate) fn new(inner: &'a mut Inner) -> Self {
        let ts = inner.clock.tick(inner.sources.now_ms());
        WriteTxn { inner, docs: BTreeMap::new(), ts, judged: Judged::default(), evicted: Vec::new(), failed: None }
    }

    /// Take a document into the transaction (from the cache or the database); with `create`, an empty document
    /// when the store has none. `None` if there is none and `create` is false.
    fn take_doc(&mut self, collection: &str, id: &str, create: bool) -> Result<Option<&mut TxnDoc>> {
        if self.docs.len() <= SCAN_DOCS && self.docs.keys().any(|(c, i)| c == collection && i == id) {
            return Ok(self.batch_doc(collection, id));
        }
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
                e.insert(TxnDoc {
                    cached,
                    new_changes: Vec::new(),
                    merged: None,
                    attested: None,
                    from_pending: Vec::new(),
                    created,
                })
            }
        };
        Ok(Some(td))
    }

    fn doc(&mut self, collection: &str, id: &str) -> Result<Option<&mut TxnDoc>> {
        self.take_doc(collection, id, false)
    }

    /// The document `collection/id` if the transaction has taken it: looked for without a key made (a change
    /// asks several times) when the transaction has few documents.
    fn batch_doc(&mut self, collection: &str, id: &str) -> Option<&mut TxnDoc> {
        if self.docs.len() <= SCAN_DOCS {
            return self.docs.iter_mut().find(|((c, i), _)| c == collection && i == id).map(|(_, td)| td);
        }
        self.docs.get_mut(&(collection.to_string(), id.to_string()))
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
        self.inner.check_own_author()?;
        if !self.inner.forgotten.is_empty() {
            let author = self.inner.author;
            if let Some(has) = self.take_doc(collection, id, create)?.map(|td| td.cached.doc.version().get(author)) {
                self.follow_own_chain(collection, id, has)?;
            }
        }
        let (peer, next, ts) = (self.inner.author, self.inner.next_counter, self.ts);
        let signer = self.inner.signer.clone();
        let permissions = self.inner.own_permissions.clone();
        // A write filter is evaluated on the document before the write (as every other device will).
        let before = match &permissions {
            Some(p) if p.0.filters_writes(collection) => {
                self.take_doc(collection, id, create)?.and_then(|td| td.cached.doc.view(id))
            }
            _ => None,
        };
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
        if let (Some(c), Some(p)) = (&change, &permissions) {
            let after = || td.cached.doc.view(id);
            let mut seen = || Ok(before.clone().or_else(after));
            if let Err(why) = p.0.check_write(collection, &crate::security::authorship::write_paths(c), p.1, &mut seen)
            {
                // The document in memory holds the refused change: the whole transaction must go.
                let reason = match why {
                    RefusalReason::NotPermitted(s) => s,
                    other => other.to_string(),
                };
                self.failed.get_or_insert_with(|| (collection.into(), id.into(), reason.clone()));
                return Err(Error::NotPermitted { collection: collection.into(), id: id.into(), reason });
            }
        }
        if let Some(c) = change {
            let mut logged = docs::LoggedChange::of(collection, id, &c);
            if let Some((key, chain)) = &signer {
                let signature = crate::security::ChangeSignature::sign(key, *chain, &logged.digest);
                logged = logged.with_signature(Some(&signature));
            }
            td.new_changes.push(logged);
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

    /// Like [`Self::upsert`], but writes only what differs from the stored document: a field whose value equals
    /// the stored one is left alone (so its last writer stays the last writer), an object over a stored map is
    /// compared field by field, and anything else that differs is written whole. For apps that write back a
    /// whole typed value they read earlier: the fields they did not change cannot beat a concurrent edit of them
    /// on another device. Fields the document has and `json` lacks are kept. Returns the id.
    pub fn upsert_changed(&mut self, collection: &str, json: Json) -> Result<String> {
        let Json::Object(mut obj) = json else {
            return Err(Error::InvalidJson("a document must be a JSON object".into()));
        };
        let id = match obj.get("_id") {
            Some(Json::String(s)) => Some(s.clone()),
            _ => None,
        };
        if let Some(id) = id {
            if let Some(doc) = self.document(collection, &id)? {
                obj.remove("_id");
                let mut at = Vec::new();
                keep_changed(&doc, &mut at, &mut obj)?;
                obj.insert("_id".into(), Json::String(id));
            }
        }
        self.upsert(collection, Json::Object(obj))
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

    /// The store's state under this transaction (its connection is inside the transaction).
    pub(super) fn inner(&self) -> &Inner {
        self.inner
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
        Ok(self.doc(collection, id)?.and_then(|td| td.cached.doc.view(id)))
    }

    /// Apply a change received from another replica (see [`crate::Store::apply_changes`]). A malformed change fails
    /// with an error (the caller drops the whole batch); a change that conflicts with what the store holds is
    /// refused alone (counted in [`ApplyReport::refused`]).
    ///
    /// With `check` (certificate mode), the change is applied only if its author may write it
    /// ([`ChangeCheck::may_write`], asked once its dependencies are here); otherwise it is refused alone.
    pub(crate) fn apply_remote(&mut self, dc: &DocChange, check: Option<&dyn ChangeCheck>) -> Result<()> {
        let c = &dc.change;
        check_collection(&dc.collection)?;
        check_doc_id(&dc.doc_id)?;
        c.validate()?;
        // Whether or not it is applied here, others may hold it: this store must not write at its counters.
        self.inner.notice_own_author(c.peer, c.end())?;
        judge::receive(self, dc, check)
    }

    /// A peer claims to hold `author` (this store's author when the claim was read) at `next` or beyond.
    pub(crate) fn notice_own_author_claim(&mut self, author: PeerId, next: u64) -> Result<()> {
        if self.inner.author == author && self.inner.next_counter <= next {
            self.inner.notice_own_author(author, next)?;
        }
        Ok(())
    }

    /// Drop pending changes older than [`PENDING_MAX_AGE_MS`], oldest first, at most
    /// [`PENDING_EXPIRED_PER_CALL`](super::pending::PENDING_EXPIRED_PER_CALL) of them.
    pub(crate) fn expire_pending(&mut self) -> Result<()> {
        if self.inner.pending.total() == 0 {
            return Ok(());
        }
        let cutoff = self.inner.sources.now_ms().saturating_sub(PENDING_MAX_AGE_MS).min(i64::MAX as u64) as i64;
        let rows: Vec<(i64, i64)> = self
            .inner
            .conn
            .prepare_cached("SELECT peer, start FROM pending WHERE received < ?1 ORDER BY received LIMIT ?2")?
            .query_map(params![cutoff, super::pending::PENDING_EXPIRED_PER_CALL as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        for &(peer, start) in &rows {
            self.delete_pending(PeerId(peer as u64), start)?;
        }
        if !rows.is_empty() {
            log::info!("dropped {} pending changes older than {} ms", rows.len(), PENDING_MAX_AGE_MS);
        }
        Ok(())
    }

    /// Delete the pending row `peer:start` (if it is there), keeping the per-author counts.
    fn delete_pending(&mut self, peer: PeerId, start: i64) -> Result<()> {
        let n = self
            .inner
            .conn
            .prepare_cached("DELETE FROM pending WHERE peer = ?1 AND start = ?2")?
            .execute(params![peer.0 as i64, start])?;
        self.inner.pending.remove(peer, n);
        Ok(())
    }

    /// Whether the transaction changed anything.
    pub(crate) fn wrote(&self) -> bool {
        !self.evicted.is_empty() || self.docs.values().any(|td| !td.new_changes.is_empty() || td.merged.is_some())
    }

    pub(crate) fn take_report(&mut self) -> ApplyReport {
        std::mem::take(&mut self.judged.report)
    }

    /// Write everything to the database (inside the open SQLite transaction) and compute observer events. The
    /// caller commits.
    pub(crate) fn persist(&mut self) -> Result<Vec<Queued>> {
        if let Some((collection, id, reason)) = self.failed.clone() {
            return Err(Error::NotPermitted { collection, id, reason });
        }
        let mut touched: BTreeMap<&str, Vec<(&str, Option<Json>)>> = BTreeMap::new();
        for ((collection, id), td) in self.docs.iter_mut() {
            if td.new_changes.is_empty() && td.merged.is_none() {
                continue;
            }
            for c in &td.new_changes {
                self.inner.digests.changed(c.peer, c.start);
            }
            // The view as a JSON value only when an observer of the collection needs it.
            let observed = self.inner.observers.registered.values().any(|r| r.collection == *collection);
            let value = if observed { td.cached.doc.view(id) } else { None };
            let resnapshot = td.merged.is_some();
            // A large document's view may wait (see `docs::may_defer_view`), unless an observer or a merged state
            // needs it now.
            let bytes = td.new_changes.iter().map(|c| c.body.len() as u64).sum();
            let defer = !observed && !resnapshot && docs::may_defer_view(&td.cached, bytes);
            let rendered = (!defer).then(|| docs::render_view(&td.cached, id));
            let view = match &rendered {
                Some(v) => docs::ViewWrite::Rendered(v.as_ref()),
                None => docs::ViewWrite::Deferred,
            };
            docs::save(&self.inner.conn, collection, id, &mut td.cached, &td.new_changes, view, resnapshot)?;
            if let (Some(merged), Some(row)) = (&td.merged, td.cached.row) {
                let mut folded = super::compaction::folded_of(&self.inner.conn, row)?;
                folded.union_with(merged);
                super::compaction::set_folded(&self.inner.conn, row, &folded)?;
                super::unsettled::merged(&self.inner.conn, row, merged)?;
            }
            if let (Some(attested), Some(row)) = (&td.attested, td.cached.row) {
                super::attest::keep(&self.inner.conn, row, attested)?;
            }
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

    /// Merge an attested state (checked by the caller: [`crate::security::Signers::check_attested`]) as
    /// [`WriteTxn::merge_state`] does, and keep it with its document.
    pub(crate) fn merge_attested(
        &mut self,
        a: &super::AttestedState,
        check: &dyn crate::security::ChangeCheck,
    ) -> Result<()> {
        self.merge_state(&a.state, Some(check))?;
        let key = (a.state.collection.clone(), a.state.doc_id.clone());
        if let Some(td) = self.docs.get_mut(&key) {
            td.attested = Some(a.clone());
            // Written at commit with the document, even when the state brought nothing new.
            td.merged.get_or_insert_with(super::Summary::new);
        }
        Ok(())
    }

    /// Merge a document state received from another device (see [`super::Replica::apply_states`]); kept-aside
    /// changes it makes ready are applied through `check` (certificate mode).
    pub(crate) fn merge_state(
        &mut self,
        s: &super::DocState,
        check: Option<&dyn crate::security::ChangeCheck>,
    ) -> Result<()> {
        let theirs = s.decode_checked()?;
        // Whether or not it is merged here, others hold these counters: this store must not write at them.
        for (peer, top) in theirs.version().iter() {
            self.inner.notice_own_author(peer, top)?;
        }
        if self.is_evicted(&s.collection, &s.doc_id) {
            self.judged.report.ignored_evicted += 1;
            return Ok(());
        }
        let new = s.changes.difference(&self.inner.held);
        let td = self.doc_or_new(&s.collection, &s.doc_id)?;
        let before = td.cached.doc.version().clone();
        td.cached.doc.join(&theirs)?;
        let changed = td.cached.doc.version() != &before;
        if !new.is_empty() {
            td.merged.get_or_insert_with(super::Summary::new).union_with(&new);
        }
        self.inner.held.union_with(&new);
        self.inner.folded.union_with(&new);
        if changed {
            self.judged.report.applied += 1;
        } else {
            self.judged.report.duplicates += 1;
        }
        judge::drain_pending(self, &s.collection, &s.doc_id, check)
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
                let folded = super::compaction::folded_of(conn, row)?;
                let own_folded =
                    folded.ranges_of(self.inner.author).and_then(|r| r.ranges().last()).map(|r| r.1 as i64);
                let own_end: Option<i64> = conn
                    .prepare_cached("SELECT max(end) FROM changes WHERE doc = ?1 AND peer = ?2")?
                    .query_row(params![row, self.inner.author.0 as i64], |r| r.get(0))?;
                if let Some(end) = own_end.max(own_folded) {
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
                    // A row may be a run of changes, starting in more than one bucket.
                    self.inner.digests.changed_range(crate::crdt::clock::PeerId(peer as u64), start as u64, end as u64);
                    self.inner.held.remove(crate::crdt::clock::PeerId(peer as u64), start as u64, end as u64);
                }
                // The changes folded into its snapshot go with it: this store no longer holds them.
                for (peer, ranges) in folded.peers() {
                    for &(start, end) in ranges.ranges() {
                        self.inner.held.remove(peer, start, end);
                        self.inner.folded.remove(peer, start, end);
                    }
                }
                let conn = &self.inner.conn;
                conn.prepare_cached("DELETE FROM changes WHERE doc = ?1")?.execute(params![row])?;
                conn.prepare_cached("DELETE FROM snapshots WHERE doc = ?1")?.execute(params![row])?;
                conn.prepare_cached("DELETE FROM view_parts WHERE doc = ?1")?.execute(params![row])?;
                conn.prepare_cached("DELETE FROM attachment_refs WHERE doc = ?1")?.execute(params![row])?;
                conn.prepare_cached("DELETE FROM folded WHERE doc = ?1")?.execute(params![row])?;
                conn.prepare_cached("DELETE FROM unsettled WHERE doc = ?1")?.execute(params![row])?;
                conn.prepare_cached("DELETE FROM attested WHERE doc = ?1")?.execute(params![row])?;
                conn.prepare_cached("DELETE FROM attested_changes WHERE doc = ?1")?.execute(params![row])?;
                conn.prepare_cached("DELETE FROM docs WHERE doc = ?1")?.execute(params![row])? > 0
            }
        };
        if dropped > 0 {
            self.inner.pending = super::pending::PendingCounts::load(&self.inner.conn)?;
        }
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

impl judge::Ledger for WriteTxn<'_> {
    fn judged(&mut self) -> &mut Judged {
        &mut self.judged
    }

    fn admit(&mut self, dc: &DocChange) -> Result<bool> {
        if self.is_evicted(&dc.collection, &dc.doc_id) {
            self.judged.report.ignored_evicted += 1;
            return Ok(false);
        }
        let c = &dc.change;
        if !self.inner.clock.observe(c.ts, self.inner.sources.now_ms()) {
            log::warn!("change {}:{} has a timestamp beyond the allowed clock skew; the local clock was not moved past the bound", c.peer, c.start);
        }
        Ok(true)
    }

    fn doc(&mut self, collection: &str, id: &str) -> Result<&mut Document> {
        Ok(&mut self.doc_or_new(collection, id)?.cached.doc)
    }

    fn new_changes(&self, collection: &str, id: &str) -> &[LoggedChange] {
        self.docs.get(&(collection.to_string(), id.to_string())).map_or(&[], |td| &td.new_changes)
    }

    fn applied_change(&self, author: PeerId, start: u64) -> Option<(&str, &str, &LoggedChange)> {
        self.docs.iter().find_map(|((c, i), td)| {
            Some((c.as_str(), i.as_str(), td.new_changes.iter().find(|n| n.peer == author && n.start == start)?))
        })
    }

    fn holds_any(&mut self, author: PeerId, start: u64, end: u64) -> Result<bool> {
        Ok(self.inner.held.overlaps(author, start, end))
    }

    fn folded_covers(&mut self, author: PeerId, start: u64, end: u64) -> Result<bool> {
        Ok(self.inner.folded.contains(author, start, end))
    }

    fn logged_before(&mut self, author: PeerId, counter: u64) -> Result<Option<(u64, u64, [u8; CHANGE_HASH_BYTES])>> {
        Ok(self.inner.logged_change_before(author, counter)?.map(|h| (h.start, h.end, h.hash)))
    }

    fn logged_change(&mut self, author: PeerId, start: u64) -> Result<LoggedEncoding> {
        Ok((self.inner.logged_encoding(author, start)?, self.inner.logged_signature(author, start)?))
    }

    fn logged_bodies(&mut self, collection: &str, id: &str) -> Result<Vec<Vec<u8>>> {
        let Some(row) = self.doc_or_new(collection, id)?.cached.row else { return Ok(Vec::new()) };
        let mut stmt = self
            .inner
            .conn
            .prepare_cached(&format!("SELECT {} FROM changes WHERE doc = ?1 ORDER BY seq", super::logrow::COLUMNS))?;
        let mut rows = stmt.query(params![row])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.extend(super::logrow::LogRow::read(r, 0)?.parts()?.into_iter().map(|p| p.body.to_vec()));
        }
        Ok(out)
    }

    fn record_equivocation(
        &mut self,
        author: PeerId,
        counter: u64,
        held: (&[u8], Option<&[u8]>),
        refused: (&[u8], Option<&[u8]>),
    ) -> Result<()> {
        self.inner.record_equivocation(author, counter, held, refused)
    }

    fn pending_count(&mut self, author: PeerId) -> Result<usize> {
        Ok(self.inner.pending.of(author))
    }

    fn pending_total(&mut self) -> Result<usize> {
        Ok(self.inner.pending.total())
    }

    fn pending_largest(&mut self) -> Result<Option<(PeerId, usize)>> {
        Ok(self.inner.pending.largest())
    }

    fn pending_drop_highest(&mut self, author: PeerId) -> Result<Option<u64>> {
        let top: Option<i64> = self
            .inner
            .conn
            .prepare_cached("SELECT max(start) FROM pending WHERE peer = ?1")?
            .query_row(params![author.0 as i64], |r| r.get(0))?;
        if let Some(top) = top {
            self.delete_pending(author, top)?;
        }
        Ok(top.map(|t| t as u64))
    }

    fn pending_insert(&mut self, dc: &DocChange, logged: &LoggedChange) -> Result<Option<KeptAside>> {
        let c = &dc.change;
        let now = self.inner.sources.now_ms() as i64;
        let n = self
            .inner
            .conn
            .prepare_cached(
                "INSERT OR IGNORE INTO pending (peer, start, collection, doc, body, received, sig) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![c.peer.0 as i64, c.start as i64, dc.collection, dc.doc_id, logged.body, now, logged.signature])?;
        self.inner.pending.add(c.peer, n);
        if n > 0 {
            return Ok(None);
        }
        let held = self
            .inner
            .conn
            .prepare_cached("SELECT collection, doc, body, sig FROM pending WHERE peer = ?1 AND start = ?2")?
            .query_row(params![c.peer.0 as i64, c.start as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?;
        Ok(Some(held))
    }

    fn pending_of(&mut self, collection: &str, id: &str) -> Result<Vec<PendingChange>> {
        // Asked after every change applied: nothing to look up when nothing waits.
        if self.inner.pending.total() == 0 {
            return Ok(Vec::new());
        }
        let rows = self
            .inner
            .conn
            .prepare_cached("SELECT peer, start, body, sig FROM pending WHERE collection = ?1 AND doc = ?2")?
            .query_map(params![collection, id], |r| {
                Ok((PeerId(r.get::<_, i64>(0)? as u64), r.get::<_, i64>(1)? as u64, r.get(2)?, r.get(3)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    fn pending_taken(&mut self, collection: &str, id: &str, author: PeerId, start: u64) -> Result<()> {
        self.delete_pending(author, start as i64)?;
        if let Some(td) = self.batch_doc(collection, id) {
            td.from_pending.push((author.0, start));
        }
        Ok(())
    }

    fn applied(&mut self, collection: &str, id: &str, logged: LoggedChange) {
        self.inner.held.insert(logged.peer, logged.start, logged.end);
        if let Some(td) = self.batch_doc(collection, id) {
            td.new_changes.push(logged);
        }
    }
}
