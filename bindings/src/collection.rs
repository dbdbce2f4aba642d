//! A collection of documents: reads, writes, queries and observers.

use crate::callbacks::{report, CollectionObserver, ObserverHandle};
use crate::error::{guard, ShoalError};
use crate::store::Store;
use crate::values::{
    fields_value, parse_json, to_text, AttachmentToken, ChangeEvent, CollectionIndex, Edit, FieldValue, Prepared,
    Query, QueryPlan,
};
use shoaldb::util::lock;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// The documents of one collection. Documents cross as JSON objects whose `_id` field is the document's id.
///
/// Reads and single-document writes are quick local SQLite operations; batches of writes go through
/// `Store.write`, which is `async`. A collection works while its store is open: once the store is closed (or
/// freed), its calls fail with `ShoalError.Closed`.
#[derive(uniffi::Object)]
pub struct Collection {
    store: Weak<Store>,
    name: String,
}

impl Collection {
    pub(crate) fn new(store: &Arc<Store>, name: String) -> Collection {
        Collection { store: Arc::downgrade(store), name }
    }

    fn db(&self) -> Result<shoaldb::Store, ShoalError> {
        Ok(self.store.upgrade().ok_or(ShoalError::Closed)?.get()?.store.clone())
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
    pub fn upsert(&self, json: String) -> Result<String, ShoalError> {
        guard(|| Ok(self.db()?.upsert(&self.name, parse_json(&json)?)?))
    }

    /// Insert or merge typed fields (choosing each field's CRDT) into document `id`, generated when `None`.
    /// Returns the id.
    pub fn put(&self, id: Option<String>, fields: HashMap<String, FieldValue>) -> Result<String, ShoalError> {
        guard(|| Ok(self.db()?.upsert_value(&self.name, id.as_deref(), fields_value(fields)?)?))
    }

    /// Apply `edits` to document `id` in one transaction (`ShoalError.NotFound` if it does not exist).
    pub fn update(&self, id: String, edits: Vec<Edit>) -> Result<(), ShoalError> {
        guard(|| {
            let edits = edits.into_iter().map(Prepared::new).collect::<Result<Vec<_>, _>>()?;
            Ok(self.db()?.update(&self.name, &id, |doc| Prepared::apply_all(edits, doc))?)
        })
    }

    /// Remove document `id`. Returns whether it existed.
    pub fn remove(&self, id: String) -> Result<bool, ShoalError> {
        guard(|| Ok(self.db()?.remove(&self.name, &id)?))
    }

    /// Document `id` as a JSON object, or `None`.
    pub fn get(&self, id: String) -> Result<Option<String>, ShoalError> {
        guard(|| Ok(self.db()?.get(&self.name, &id)?.map(|j| to_text(&j))))
    }

    /// One field of document `id` (`path` like `address.city` or `items[0]`) as JSON, or `None`.
    pub fn get_field(&self, id: String, path: String) -> Result<Option<String>, ShoalError> {
        guard(|| {
            let Some(doc) = self.db()?.document(&self.name, &id)? else { return Ok(None) };
            Ok(doc.get(path.as_str()).map_err(shoaldb::Error::from)?.map(|j| to_text(&j)))
        })
    }

    /// The values concurrent writers left in the register at `path` besides the shown one (JSON; empty when
    /// there was no conflict).
    pub fn conflicts(&self, id: String, path: String) -> Result<Vec<String>, ShoalError> {
        guard(|| {
            let Some(doc) = self.db()?.document(&self.name, &id)? else { return Ok(Vec::new()) };
            Ok(doc.conflicts(path.as_str()).map_err(shoaldb::Error::from)?.iter().map(to_text).collect())
        })
    }

    /// The attachment token in the field at `path` of document `id`, or `None`.
    pub fn attachment(&self, id: String, path: String) -> Result<Option<AttachmentToken>, ShoalError> {
        guard(|| {
            let Some(doc) = self.db()?.document(&self.name, &id)? else { return Ok(None) };
            Ok(doc.attachment(path.as_str()).map_err(shoaldb::Error::from)?.as_ref().map(AttachmentToken::from_core))
        })
    }

    /// The documents matching `query`, in its order.
    pub fn find(&self, query: Query) -> Result<Vec<String>, ShoalError> {
        guard(|| Ok(self.db()?.find(&self.name, &query.into_core()?)?.iter().map(to_text).collect()))
    }

    /// How `find` runs `query`: the indexes it uses, whether SQL does the filter and the sort, SQLite's plan.
    pub fn explain(&self, query: Query) -> Result<QueryPlan, ShoalError> {
        guard(|| Ok(QueryPlan::from_core(self.db()?.explain(&self.name, &query.into_core()?)?)))
    }

    /// Declare an index on the fields `paths` (most significant first, e.g. `["status", "due"]`), for queries that
    /// filter on them, sort by them, or both with a limit. Kept up to date as documents change, on this device only;
    /// declaring it again does nothing. Returns whether it is new. Takes time in proportion to the collection's size.
    pub fn create_index(&self, paths: Vec<String>) -> Result<bool, ShoalError> {
        guard(|| {
            let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
            Ok(self.db()?.create_index(&self.name, &paths)?)
        })
    }

    /// Drop the index on `paths` (as declared). Returns whether there was one.
    pub fn drop_index(&self, paths: Vec<String>) -> Result<bool, ShoalError> {
        guard(|| {
            let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
            Ok(self.db()?.drop_index(&self.name, &paths)?)
        })
    }

    /// The indexes declared on this collection.
    pub fn indexes(&self) -> Result<Vec<CollectionIndex>, ShoalError> {
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

    /// Every document, by id.
    pub fn all(&self) -> Result<Vec<String>, ShoalError> {
        guard(|| Ok(self.db()?.list(&self.name)?.iter().map(to_text).collect()))
    }

    /// Observe `query`: `observer` gets the current result now (as one event with every document inserted), then
    /// one event per committed transaction — local or from another device — that changes the result.
    pub fn observe(
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
