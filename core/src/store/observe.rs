//! Observers (live queries): the current result of a query, then one event per committed transaction that changed
//! it — local or applied from another replica — with what was inserted, updated and removed.
//!
//! Events are computed inside the committing transaction (so none is missed or doubled) and delivered after the
//! store lock is released, in commit order, on the committing thread. A callback may use the store, including
//! writing to it; the events of such a nested write are delivered after the callback returns.

use crate::query::Query;
use crate::util::lock;
use serde_json::Value as Json;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// One change to an observed query's result.
#[derive(Clone, Debug, PartialEq)]
pub struct ChangeEvent {
    /// The observed collection.
    pub collection: String,
    /// Documents that entered the result.
    pub inserted: Vec<Json>,
    /// Documents still in the result whose content changed.
    pub updated: Vec<Json>,
    /// Ids of documents that left the result.
    pub removed: Vec<String>,
    /// The whole result after the transaction, in query order.
    pub results: Vec<Json>,
}

/// The callback of an observer.
pub type Callback = Arc<dyn Fn(&ChangeEvent) + Send + Sync>;

pub(crate) struct Registered {
    pub collection: String,
    pub query: Query,
    /// The current result, in query order: (id, document).
    pub results: Vec<(String, Json)>,
    pub callback: Callback,
    pub alive: Arc<AtomicBool>,
}

/// Every observer of one store.
#[derive(Default)]
pub(crate) struct Observers {
    next_id: u64,
    pub registered: HashMap<u64, Registered>,
}

impl Observers {
    pub fn add(&mut self, r: Registered) -> u64 {
        self.next_id += 1;
        self.registered.insert(self.next_id, r);
        self.next_id
    }

    pub fn remove(&mut self, id: u64) {
        self.registered.remove(&id);
    }
}

/// An event of `r`'s collection that changes nothing yet.
fn no_change(r: &Registered) -> ChangeEvent {
    ChangeEvent {
        collection: r.collection.clone(),
        inserted: vec![],
        updated: vec![],
        removed: vec![],
        results: vec![],
    }
}

/// Update one observer's result with the new views of the documents a transaction touched (`None` = gone), when
/// its query has no limit. Returns the event if the result changed.
pub(crate) fn update_incrementally(r: &mut Registered, touched: &[(&str, Option<&Json>)]) -> Option<ChangeEvent> {
    let mut ev = no_change(r);
    for &(id, view) in touched {
        let matches = view.is_some_and(|v| {
            r.query.matches(v).unwrap_or_else(|e| {
                log::warn!("observer query failed on {}/{id}: {e}", r.collection);
                false
            })
        });
        let pos = r.results.iter().position(|(i, _)| i == id);
        match (pos, matches, view) {
            (None, true, Some(v)) => {
                ev.inserted.push(v.clone());
                r.results.push((id.to_string(), v.clone()));
            }
            (Some(p), true, Some(v)) if &r.results[p].1 != v => {
                ev.updated.push(v.clone());
                r.results[p].1 = v.clone();
            }
            (Some(p), false, _) => {
                r.results.remove(p);
                ev.removed.push(id.to_string());
            }
            _ => {}
        }
    }
    if ev.inserted.is_empty() && ev.updated.is_empty() && ev.removed.is_empty() {
        return None;
    }
    r.query.order_and_limit(&mut r.results);
    ev.results = r.results.iter().map(|(_, v)| v.clone()).collect();
    Some(ev)
}

/// Replace an observer's result by a freshly computed one (queries with a limit). Returns the event if it changed.
pub(crate) fn replace_result(r: &mut Registered, new: Vec<(String, Json)>) -> Option<ChangeEvent> {
    let mut ev = no_change(r);
    let old: HashMap<&str, &Json> = r.results.iter().map(|(i, v)| (i.as_str(), v)).collect();
    let new_ids: std::collections::HashSet<&str> = new.iter().map(|(i, _)| i.as_str()).collect();
    for (id, v) in &new {
        match old.get(id.as_str()) {
            None => ev.inserted.push(v.clone()),
            Some(o) if *o != v => ev.updated.push(v.clone()),
            _ => {}
        }
    }
    for (id, _) in &r.results {
        if !new_ids.contains(id.as_str()) {
            ev.removed.push(id.clone());
        }
    }
    let order_changed = r.results.iter().map(|(i, _)| i).ne(new.iter().map(|(i, _)| i));
    if ev.inserted.is_empty() && ev.updated.is_empty() && ev.removed.is_empty() && !order_changed {
        return None;
    }
    ev.results = new.iter().map(|(_, v)| v.clone()).collect();
    r.results = new;
    Some(ev)
}

/// An event waiting to be delivered.
pub(crate) struct Queued {
    pub callback: Callback,
    pub alive: Arc<AtomicBool>,
    pub event: ChangeEvent,
}

/// Delivers events in commit order, one thread at a time, without holding the store lock.
#[derive(Default)]
pub(crate) struct Delivery {
    queue: Mutex<VecDeque<Queued>>,
    running: Mutex<()>,
}

impl Delivery {
    /// Queue events. Must be called while the store lock is still held, so that queue order is commit order.
    pub fn enqueue(&self, events: Vec<Queued>) {
        if events.is_empty() {
            return;
        }
        lock(&self.queue).extend(events);
    }

    /// Deliver what is queued, unless another thread (or an outer call on this one) is already doing so.
    pub fn run(&self) {
        loop {
            let Ok(_running) = self.running.try_lock() else { return };
            loop {
                let next = lock(&self.queue).pop_front();
                let Some(q) = next else { break };
                if q.alive.load(Ordering::Acquire) {
                    let cb = q.callback.clone();
                    let ev = q.event;
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cb(&ev))).is_err() {
                        log::error!("an observer callback panicked; the event was dropped for it");
                    }
                }
            }
            drop(_running);
            if lock(&self.queue).is_empty() {
                return;
            }
        }
    }
}
