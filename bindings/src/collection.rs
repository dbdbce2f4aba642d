//! A collection of documents: reads, writes, queries and observers.

use crate::callbacks::{report, CollectionObserver, ObserverHandle};
use crate::cancel::Cancellation;
use crate::error::{guard, ShoalError};
use crate::store::{Open, Store};
use crate::values::{
    fields_value, parse_json, to_text, AttachmentToken, ChangeEvent, CollectionIndex, Edit, FieldValue, Prepared,
    Query, QueryPlan,
};
use shoaldb::util::lock;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// The documents of one collection. Documents cross as JSON objects whose `_id` field is the document's id.
///
/// Every read and write is `async` (Kotlin `suspend`, Swift `async`): it runs on the store's own threads, never on
/// the caller's, and stops when the caller is cancelled (see `Cancellation`). Each also has a `…Blocking` twin that
/// runs on the calling thread, for code already on a background thread. Reads see the last committed state and never
/// wait for writes (a sync catch-up being applied included); writes are serialized. A collection works while its
/// store is open: once the store is closed (or freed), its calls fail with `ShoalError.Closed`.
#[derive(uniffi::Object)]
pub struct Collection {
    store: Weak<Store>,
    name: String,
}

impl Collection {
    pub(crate) fn new(store: &Arc<Store>, name: String) -> Collection {
        Collection { store: Arc::downgrade(store), name }
    }

    fn open(&self) -> Result<Arc<Open>, ShoalError> {
        self.store.upgrade().ok_or(ShoalError::Closed)?.get()
    }

    fn db(&self) -> Result<shoaldb::Store, ShoalError> {
        Ok(self.open()?.store.clone())
    }
}

#[uniffi::export]
impl Collection {
    /// The collection's name.
    pub fn name(&self) -> String {
        self.name.clone()
    }

    /// Insert a JSON object, or merge it into the document named by its `_id` (other fields are kept). Objects
    /// become nested maps merged field by field; every other value is a last-writer-wins register. Returns the
    /// document's id (generated, time-sortable, when there is no `_id`).
    #[uniffi::method(default(cancel = None))]
    pub async fn upsert(
        self: Arc<Self>,
        json: String,
        cancel: Option<Arc<Cancellation>>,
    ) -> Result<String, ShoalError> {
        self.open()?.background(cancel, move |_| self.upsert_blocking(json)).await
    }

    /// Like `upsert`, on the calling thread (blocking it until done): for background threads only.
    pub fn upsert_blocking(&self, json: String) -> Result<String, ShoalError> {
        guard(|| Ok(self.db()?.upsert(&self.name, parse_json(&json)?)?))
    }

    /// Write a whole JSON object back as document `_id`, changing only what differs from the stored document:
    /// fields equal to the stored ones are not written (so their last writer stays the last writer: writing back an
    /// unchanged field cannot beat a concurrent edit of it on another device), objects over maps are compared field
    /// by field, other differing values are written as `upsert` writes them, and fields the object lacks are kept.
    /// Inserts like `upsert` when there is no such document. What typed documents (Kotlin `collection<T>()`, Swift
    /// `Codable`) write. Returns the id.
    #[uniffi::method(default(cancel = None))]
    pub async fn upsert_changed(
        self: Arc<Self>,
        json: String,
        cancel: Option<Arc<Cancellation>>,
    ) -> Result<String, ShoalError> {
        self.open()?.background(cancel, move |_| self.upsert_changed_blocking(json)).await
    }

    /// Like `upsertChanged`, on the calling thread (blocking it until done): for background threads only.
    pub fn upsert_changed_blocking(&self, json: String) -> Result<String, ShoalError> {
        guard(|| Ok(self.db()?.upsert_changed(&self.name, parse_json(&json)?)?))
    }

    /// Insert or merge typed fields (choosing each field's CRDT) into document `id`, generated when `None`.
    /// Returns the id.
    #[uniffi::method(default(cancel = None))]
    pub async fn put(
        self: Arc<Self>,
        id: Option<String>,
        fields: HashMap<String, FieldValue>,
        cancel: Option<Arc<Cancellation>>,
    ) -> Result<String, ShoalError> {
        self.open()?.background(cancel, move |_| self.put_blocking(id, fields)).await
    }

    /// Like `put`, on the calling thread (blocking it until done): for background threads only.
    pub fn put_blocking(&self, id: Option<String>, fields: HashMap<String, FieldValue>) -> Result<String, ShoalError> {
        guard(|| Ok(self.db()?.upsert_value(&self.name, id.as_deref(), fields_value(fields)?)?))
    }

    /// Apply `edits` to document `id` in one transaction (`ShoalError.NotFound` if it does not exist).
    #[uniffi::method(default(cancel = None))]
    pub async fn update(
        self: Arc<Self>,
        id: String,
        edits: Vec<Edit>,
        cancel: Option<Arc<Cancellation>>,
    ) -> Result<(), ShoalError> {
        self.open()?.background(cancel, move |_| self.update_blocking(id, edits)).await
    }

    /// Like `update`, on the calling thread (blocking it until done): for background threads only.
    pub fn update_blocking(&self, id: String, edits: Vec<Edit>) -> Result<(), ShoalError> {
        guard(|| {
            let edits = edits.into_iter().map(Prepared::new).collect::<Result<Vec<_>, _>>()?;
            Ok(self.db()?.update(&self.name, &id, |doc| Prepared::apply_all(edits, doc))?)
        })
    }

    /// Remove document `id`. Returns whether it existed.
    #[uniffi::method(default(cancel = None))]
    pub async fn remove(self: Arc<Self>, id: String, cancel: Option<Arc<Cancellation>>) -> Result<bool, ShoalError> {
        self.open()?.background(cancel, move |_| self.remove_blocking(id)).await
    }

    /// Like `remove`, on the calling thread (blocking it until done): for background threads only.
    pub fn remove_blocking(&self, id: String) -> Result<bool, ShoalError> {
        guard(|| Ok(self.db()?.remove(&self.name, &id)?))
    }

    /// Document `id` as a JSON object, or `None`.
    #[uniffi::method(default(cancel = None))]
    pub async fn get(
        self: Arc<Self>,
        id: String,
        cancel: Option<Arc<Cancellation>>,
    ) -> Result<Option<String>, ShoalError> {
        self.open()?.background(cancel, move |_| self.get_blocking(id)).await
    }

    /// Like `get`, on the calling thread (blocking it until done): for background threads only.
    pub fn get_blocking(&self, id: String) -> Result<Option<String>, ShoalError> {
        guard(|| Ok(self.db()?.get(&self.name, &id)?.map(|j| to_text(&j))))
    }

    /// One field of document `id` (`path` like `address.city` or `items[0]`) as JSON, or `None`.
    #[uniffi::method(default(cancel = None))]
    pub async fn get_field(
        self: Arc<Self>,
        id: String,
        path: String,
        cancel: Option<Arc<Cancellation>>,
    ) -> Result<Option<String>, ShoalError> {
        self.open()?.background(cancel, move |_| self.get_field_blocking(id, path)).await
    }

    /// Like `getField`, on the calling thread (blocking it until done): for background threads only.
    pub fn get_field_blocking(&self, id: String, path: String) -> Result<Option<String>, ShoalError> {
        guard(|| {
            let Some(doc) = self.db()?.document(&self.name, &id)? else { return Ok(None) };
            Ok(doc.get(path.as_str()).map_err(shoaldb::Error::from)?.map(|j| to_text(&j)))
        })
    }

    /// The values concurrent writers left in the register at `path` besides the shown one (JSON; empty when
    /// there was no conflict).
    #[uniffi::method(default(cancel = None))]
    pub async fn conflicts(
        self: Arc<Self>,
        id: String,
        path: String,
        cancel: Option<Arc<Cancellation>>,
    ) -> Result<Vec<String>, ShoalError> {
        self.open()?.background(cancel, move |_| self.conflicts_blocking(id, path)).await
    }

    /// Like `conflicts`, on the calling thread (blocking it until done): for background threads only.
    pub fn conflicts_blocking(&self, id: String, path: String) -> Result<Vec<String>, ShoalError> {
        guard(|| {
            let Some(doc) = self.db()?.document(&self.name, &id)? else { return Ok(Vec::new()) };
            Ok(doc.conflicts(path.as_str()).map_err(shoaldb::Error::from)?.iter().map(to_text).collect())
        })
    }

    /// The attachment token in the field at `path` of document `id`, or `None`.
    #[uniffi::method(default(cancel = None))]
    pub async fn attachment(
        self: Arc<Self>,
        id: String,
        path: String,
        cancel: Option<Arc<Cancellation>>,
    ) -> Result<Option<AttachmentToken>, ShoalError> {
        self.open()?.background(cancel, move |_| self.attachment_blocking(id, path)).await
    }

    /// Like `attachment`, on the calling thread (blocking it until done): for background threads only.
    pub fn attachment_blocking(&self, id: String, path: String) -> Result<Option<AttachmentToken>, ShoalError> {
        guard(|| {
            let Some(doc) = self.db()?.document(&self.name, &id)? else { return Ok(None) };
            Ok(doc.attachment(path.as_str()).map_err(shoaldb::Error::from)?.as_ref().map(AttachmentToken::from_core))
        })
    }

    /// The documents matching `query`, in its order.
    #[uniffi::method(default(cancel = None))]
    pub async fn find(
        self: Arc<Self>,
        query: Query,
        cancel: Option<Arc<Cancellation>>,
    ) -> Result<Vec<String>, ShoalError> {
        self.open()?.background(cancel, move |_| self.find_blocking(query)).await
    }

    /// Like `find`, on the calling thread (blocking it until done): for background threads only.
    pub fn find_blocking(&self, query: Query) -> Result<Vec<String>, ShoalError> {
        guard(|| Ok(self.db()?.find(&self.name, &query.into_core()?)?.iter().map(to_text).collect()))
    }

    /// How `find` runs `query`: the indexes it uses, whether SQL does the filter and the sort, SQLite's plan.
    #[uniffi::method(default(cancel = None))]
    pub async fn explain(
        self: Arc<Self>,
        query: Query,
        cancel: Option<Arc<Cancellation>>,
    ) -> Result<QueryPlan, ShoalError> {
        self.open()?.background(cancel, move |_| self.explain_blocking(query)).await
    }

    /// Like `explain`, on the calling thread (blocking it until done): for background threads only.
    pub fn explain_blocking(&self, query: Query) -> Result<QueryPlan, ShoalError> {
        guard(|| Ok(QueryPlan::from_core(self.db()?.explain(&self.name, &query.into_core()?)?)))
    }

    /// Declare an index on the fields `paths` (most significant first, e.g. `["status", "due"]`), for queries that
    /// filter on them, sort by them, or both with a limit. Kept up to date as documents change, on this device only;
    /// declaring it again does nothing. Returns whether it is new. Takes time in proportion to the collection's size.
    #[uniffi::method(default(cancel = None))]
    pub async fn create_index(
        self: Arc<Self>,
        paths: Vec<String>,
        cancel: Option<Arc<Cancellation>>,
    ) -> Result<bool, ShoalError> {
        self.open()?.background(cancel, move |_| self.create_index_blocking(paths)).await
    }

    /// Like `createIndex`, on the calling thread (blocking it until done): for background threads only.
    pub fn create_index_blocking(&self, paths: Vec<String>) -> Result<bool, ShoalError> {
        guard(|| {
            let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
            Ok(self.db()?.create_index(&self.name, &paths)?)
        })
    }

    /// Drop the index on `paths` (as declared). Returns whether there was one.
    #[uniffi::method(default(cancel = None))]
    pub async fn drop_index(
        self: Arc<Self>,
        paths: Vec<String>,
        cancel: Option<Arc<Cancellation>>,
    ) -> Result<bool, ShoalError> {
        self.open()?.background(cancel, move |_| self.drop_index_blocking(paths)).await
    }

    /// Like `dropIndex`, on the calling thread (blocking it until done): for background threads only.
    pub fn drop_index_blocking(&self, paths: Vec<String>) -> Result<bool, ShoalError> {
        guard(|| {
            let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
            Ok(self.db()?.drop_index(&self.name, &paths)?)
        })
    }

    /// The indexes declared on this collection.
    #[uniffi::method(default(cancel = None))]
    pub async fn indexes(
        self: Arc<Self>,
        cancel: Option<Arc<Cancellation>>,
    ) -> Result<Vec<CollectionIndex>, ShoalError> {
        self.open()?.background(cancel, move |_| self.indexes_blocking()).await
    }

    /// Like `indexes`, on the calling thread (blocking it until done): for background threads only.
    pub fn indexes_blocking(&self) -> Result<Vec<CollectionIndex>, ShoalError> {
        guard(|| {
            Ok(self
                .db()?
                .indexes()?
                .into_iter()
                .filter(|i| i.collection == self.name)
                .map(|i| CollectionIndex { paths: i.paths.iter().map(ToString::to_string).collect(), name: i.name })
                .collect())
        })
    }

    /// Drop a document from this device only (not a removal: nothing replicates). Its changes are forgotten here,
    /// and changes to it arriving from other devices are ignored until `unevict`. Returns whether it was here.
    #[uniffi::method(default(cancel = None))]
    pub async fn evict(self: Arc<Self>, id: String, cancel: Option<Arc<Cancellation>>) -> Result<bool, ShoalError> {
        self.open()?.background(cancel, move |_| self.evict_blocking(id)).await
    }

    /// Like `evict`, on the calling thread (blocking it until done): for background threads only.
    pub fn evict_blocking(&self, id: String) -> Result<bool, ShoalError> {
        guard(|| Ok(self.db()?.evict(&self.name, &id)?))
    }

    /// Accept a document evicted earlier again: sync brings its changes back. Until then it is empty here; a write
    /// to it meanwhile merges with its earlier content like a concurrent write from another device.
    #[uniffi::method(default(cancel = None))]
    pub async fn unevict(self: Arc<Self>, id: String, cancel: Option<Arc<Cancellation>>) -> Result<(), ShoalError> {
        self.open()?.background(cancel, move |_| self.unevict_blocking(id)).await
    }

    /// Like `unevict`, on the calling thread (blocking it until done): for background threads only.
    pub fn unevict_blocking(&self, id: String) -> Result<(), ShoalError> {
        guard(|| Ok(self.db()?.unevict(&self.name, &id)?))
    }

    /// Remove this collection's documents once they have not been modified for `ttl_ms` milliseconds, at each
    /// `Store.expire`; `null`/`nil` stops it. The policy is this device's; the removals replicate as any other,
    /// and a document's age is the time of its latest change, the same on every device.
    #[uniffi::method(default(cancel = None))]
    pub async fn set_time_to_live(
        self: Arc<Self>,
        ttl_ms: Option<u64>,
        cancel: Option<Arc<Cancellation>>,
    ) -> Result<(), ShoalError> {
        self.open()?.background(cancel, move |_| self.set_time_to_live_blocking(ttl_ms)).await
    }

    /// Like `setTimeToLive`, on the calling thread (blocking it until done): for background threads only.
    pub fn set_time_to_live_blocking(&self, ttl_ms: Option<u64>) -> Result<(), ShoalError> {
        guard(|| Ok(self.db()?.set_time_to_live(&self.name, ttl_ms)?))
    }

    /// This collection's time to live (ms), if it has one.
    #[uniffi::method(default(cancel = None))]
    pub async fn time_to_live(self: Arc<Self>, cancel: Option<Arc<Cancellation>>) -> Result<Option<u64>, ShoalError> {
        self.open()?.background(cancel, move |_| self.time_to_live_blocking()).await
    }

    /// Like `timeToLive`, on the calling thread (blocking it until done): for background threads only.
    pub fn time_to_live_blocking(&self) -> Result<Option<u64>, ShoalError> {
        guard(|| Ok(self.db()?.time_to_live(&self.name)?))
    }

    /// Every document, by id.
    #[uniffi::method(default(cancel = None))]
    pub async fn all(self: Arc<Self>, cancel: Option<Arc<Cancellation>>) -> Result<Vec<String>, ShoalError> {
        self.open()?.background(cancel, move |_| self.all_blocking()).await
    }

    /// Like `all`, on the calling thread (blocking it until done): for background threads only.
    pub fn all_blocking(&self) -> Result<Vec<String>, ShoalError> {
        guard(|| Ok(self.db()?.list(&self.name)?.iter().map(to_text).collect()))
    }

    /// Observe `query`: `observer` gets the current result first (as one event with every document inserted),
    /// before this returns, then one event per committed transaction — local or from another device — that changes
    /// the result, on one of the store's threads.
    #[uniffi::method(default(cancel = None))]
    pub async fn observe(
        self: Arc<Self>,
        query: Query,
        observer: Arc<dyn CollectionObserver>,
        cancel: Option<Arc<Cancellation>>,
    ) -> Result<Arc<ObserverHandle>, ShoalError> {
        self.open()?.background(cancel, move |_| self.observe_blocking(query, observer)).await
    }

    /// Like `observe`, on the calling thread (blocking it until the first result is delivered): for background
    /// threads only.
    pub fn observe_blocking(
        &self,
        query: Query,
        observer: Arc<dyn CollectionObserver>,
    ) -> Result<Arc<ObserverHandle>, ShoalError> {
        guard(|| {
            let query = query.into_core()?;
            // Events committed before the first one is delivered wait behind it, so the observer sees the
            // current result first, then the changes in commit order.
            let backlog: Arc<Mutex<Option<Vec<ChangeEvent>>>> = Arc::new(Mutex::new(Some(Vec::new())));
            let (current, handle) = {
                let backlog = backlog.clone();
                let observer = observer.clone();
                self.db()?.observe(&self.name, query, move |event| {
                    let event = ChangeEvent::from_core(event);
                    if let Some(waiting) = lock(&backlog).as_mut() {
                        waiting.push(event);
                        return;
                    }
                    report("collection observer", observer.on_change(event));
                })?
            };
            let docs: Vec<String> = current.iter().map(to_text).collect();
            let first = ChangeEvent {
                collection: self.name.clone(),
                inserted: docs.clone(),
                updated: Vec::new(),
                removed: Vec::new(),
                results: docs,
            };
            report("collection observer", observer.on_change(first));
            loop {
                let batch = {
                    let mut guard = lock(&backlog);
                    match guard.as_mut() {
                        Some(waiting) if !waiting.is_empty() => std::mem::take(waiting),
                        _ => {
                            *guard = None;
                            break;
                        }
                    }
                };
                for event in batch {
                    report("collection observer", observer.on_change(event));
                }
            }
            Ok(Arc::new(ObserverHandle::observer(handle)))
        })
    }
}
