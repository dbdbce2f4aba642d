//! The storage budget (issue 17): `fit_budget` evicts attachments' bytes and documents outside the device's
//! subscriptions, least recently used first, until the store's pages in use fit — and says what it evicted.

use serde_json::json;
use shoaldb::store::{Evicted, StorageBudget};
use shoaldb::sync::Subscription;
use shoaldb::util::sources::Sources;
use shoaldb::{Error, Options, Store};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const T0: u64 = 1_800_000_000_000;

fn store() -> (tempfile::TempDir, Store, Arc<AtomicU64>) {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicU64::new(T0));
    let clock = now.clone();
    let sources = Sources::seeded(7).with_clock(move || clock.load(Ordering::SeqCst));
    let store = Store::open_with(dir.path().join("s.db"), Options { sources, ..Default::default() }).unwrap();
    (dir, store, now)
}

/// The store's pages in use now (a budget nothing exceeds evicts nothing and reports them).
fn in_use(store: &Store) -> u64 {
    let report = store.fit_budget(&StorageBudget { max_bytes: u64::MAX, keep: vec![] }).unwrap();
    assert!(report.evicted.is_empty());
    report.bytes_after
}

fn bytes(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(seed).wrapping_add(i as u8 >> 3)).collect()
}

#[test]
fn least_recently_used_attachments_go_first_until_the_store_fits() {
    let (_dir, store, now) = store();
    let mut tokens = Vec::new();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        now.store(T0 + i as u64 * 1000, Ordering::SeqCst);
        let token = store.put_attachment_bytes(&bytes(i as u8 * 2 + 3, 1 << 20), BTreeMap::new()).unwrap();
        store.upsert("photos", json!({"_id": name, "file": token.to_json()})).unwrap();
        tokens.push(token);
    }
    // `a`, the oldest, was looked at since.
    now.store(T0 + 10_000, Ordering::SeqCst);
    assert_eq!(store.attachment_bytes(&tokens[0]).unwrap().len(), 1 << 20);
    let before = in_use(&store);
    let everything = vec![Subscription::everything()];
    let budget = StorageBudget { max_bytes: before - 1_500_000, keep: everything.clone() };
    let report = store.fit_budget(&budget).unwrap();
    let evicted: Vec<(Evicted, u64)> = report.evicted.iter().map(|e| (e.what.clone(), e.last_used_ms)).collect();
    assert_eq!(
        evicted,
        vec![
            (Evicted::Attachment { hash: tokens[1].hash_hex() }, T0 + 1000),
            (Evicted::Attachment { hash: tokens[2].hash_hex() }, T0 + 2000),
        ],
        "b then c, least recently used first: {report:?}"
    );
    assert!(report.bytes_after <= budget.max_bytes, "{report:?}");
    assert_eq!(report.bytes_before, before);
    assert!(store.has_attachment(&tokens[0]).unwrap());
    assert!(!store.has_attachment(&tokens[1]).unwrap() && !store.has_attachment(&tokens[2]).unwrap());
    // The documents still name them (a device fetches them again on demand).
    assert_eq!(store.list("photos").unwrap().len(), 3);
    assert!(store.fit_budget(&budget).unwrap().evicted.is_empty(), "it fits now");
}

#[test]
fn documents_outside_the_subscriptions_are_evicted_least_recently_used_first() {
    let (_dir, store, now) = store();
    let text = |i: usize| format!("{i:04} {}", "relayed text ".repeat(2000));
    for i in 0..40 {
        now.store(T0 + i as u64 * 1000, Ordering::SeqCst);
        store.upsert("relayed", json!({"_id": format!("r{i:02}"), "text": text(i)})).unwrap();
        store.upsert("mine", json!({"_id": format!("m{i:02}"), "text": text(i)})).unwrap();
        let owner = if i % 2 == 0 { "me" } else { "them" };
        store.upsert("shared", json!({"_id": format!("s{i:02}"), "owner": owner, "text": text(i)})).unwrap();
    }
    // Old documents read lately are used lately.
    now.store(T0 + 100_000, Ordering::SeqCst);
    assert!(store.get("relayed", "r00").unwrap().is_some());
    let found = store.find("shared", &shoaldb::Query::filter("owner == \"them\"").unwrap()).unwrap();
    assert_eq!(found.len(), 20);
    let keep = vec![Subscription::collection("mine"), Subscription::filtered("shared", "owner == \"me\"")];
    let before = in_use(&store);
    let budget = StorageBudget { max_bytes: before - 400_000, keep };
    let report = store.fit_budget(&budget).unwrap();
    assert!(report.bytes_after <= budget.max_bytes, "{report:?}");
    let evicted: Vec<(String, String)> = report
        .evicted
        .iter()
        .map(|e| match &e.what {
            Evicted::Document { collection, id } => (collection.clone(), id.clone()),
            other => panic!("no attachment here: {other:?}"),
        })
        .collect();
    assert!(evicted.len() >= 3, "{evicted:?}");
    // Least recently used first: the relayed documents by age, r00 (read lately) not among them; nothing kept.
    let used: Vec<u64> = report.evicted.iter().map(|e| e.last_used_ms).collect();
    assert!(used.windows(2).all(|w| w[0] <= w[1]), "{used:?}");
    assert_eq!(evicted[0], ("relayed".to_string(), "r01".to_string()));
    for (collection, id) in &evicted {
        assert_eq!(collection, "relayed", "{id}: only relayed documents are older than the shared ones read lately");
        assert_ne!(id, "r00");
        assert_eq!(store.get(collection, id).unwrap(), None);
    }
    assert_eq!(store.storage_stats().unwrap().evicted_documents, evicted.len() as u64);
    assert_eq!(store.list("mine").unwrap().len(), 40);
    assert_eq!(store.list("shared").unwrap().len(), 40);
    assert!(store.get("relayed", "r00").unwrap().is_some());

    // A budget nothing can meet evicts every document outside the subscriptions, and stops there.
    let report = store.fit_budget(&StorageBudget { max_bytes: 0, ..budget }).unwrap();
    assert!(report.bytes_after > 0);
    assert!(store.list("relayed").unwrap().is_empty());
    let shared = store.list("shared").unwrap();
    assert_eq!(shared.len(), 20, "the shared documents of others went too");
    assert!(shared.iter().all(|d| d["owner"] == "me"));
    assert_eq!(store.list("mine").unwrap().len(), 40);
}

/// Evicting more than one transaction evicts (64) goes least recently used first throughout, beside a thread writing
/// to the store (which loses nothing).
#[test]
fn many_evictions_go_least_recently_used_first_beside_the_apps_writes() {
    let (_dir, store, now) = store();
    let n = 300;
    store
        .write(|t| {
            for i in 0..n {
                t.upsert("relayed", json!({"_id": format!("r{i:03}"), "text": format!("{i} {}", "x".repeat(400))}))?;
            }
            Ok(())
        })
        .unwrap();
    for (k, i) in (0..n).rev().step_by(7).enumerate() {
        now.store(T0 + 1000 + k as u64, Ordering::SeqCst);
        assert!(store.get("relayed", &format!("r{i:03}")).unwrap().is_some());
    }
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            for i in 0..50 {
                store.upsert("mine", json!({"_id": format!("m{i:02}")})).unwrap();
            }
        })
    };
    let keep = vec![Subscription::collection("mine")];
    let report = store.fit_budget(&StorageBudget { max_bytes: 0, keep }).unwrap();
    writer.join().unwrap();
    assert_eq!(report.evicted.len(), n, "every relayed document: {} evicted", report.evicted.len());
    let used: Vec<u64> = report.evicted.iter().map(|e| e.last_used_ms).collect();
    assert!(used.windows(2).all(|w| w[0] <= w[1]), "least recently used first: {used:?}");
    // Those read lately (in reverse order of their ids) go last, the latest read last of all.
    assert_eq!(
        report.evicted.last().map(|e| e.what.clone()),
        Some(Evicted::Document { collection: "relayed".into(), id: "r005".into() })
    );
    assert!(store.list("relayed").unwrap().is_empty());
    assert_eq!(store.list("mine").unwrap().len(), 50);
    assert_eq!(store.storage_stats().unwrap().evicted_documents, n as u64);
}

#[test]
fn a_filter_that_does_not_parse_changes_nothing() {
    let (_dir, store, _) = store();
    store.upsert("notes", json!({"_id": "n", "text": "x"})).unwrap();
    let keep = vec![Subscription::filtered("notes", "owner ==")];
    let err = store.fit_budget(&StorageBudget { max_bytes: 0, keep }).unwrap_err();
    assert!(matches!(err, Error::Query(_)), "{err:?}");
    assert!(store.get("notes", "n").unwrap().is_some());
}

/// Reads noted in memory are written down when the store is closed: the next process knows them.
#[test]
fn reads_survive_closing_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let now = Arc::new(AtomicU64::new(T0));
    let open = |now: &Arc<AtomicU64>| {
        let clock = now.clone();
        let sources = Sources::seeded(9).with_clock(move || clock.load(Ordering::SeqCst));
        Store::open_with(&path, Options { sources, ..Default::default() }).unwrap()
    };
    let store = open(&now);
    let text = "relayed text ".repeat(2000);
    for id in ["old", "new"] {
        store.upsert("relayed", json!({"_id": id, "text": text})).unwrap();
        now.fetch_add(1000, Ordering::SeqCst);
    }
    now.fetch_add(10_000, Ordering::SeqCst);
    assert!(store.get("relayed", "old").unwrap().is_some());
    drop(store);
    let store = open(&now);
    let before = in_use(&store);
    let report = store.fit_budget(&StorageBudget { max_bytes: before - 1, keep: vec![] }).unwrap();
    let first = &report.evicted[0];
    assert_eq!(first.what, Evicted::Document { collection: "relayed".into(), id: "new".into() }, "{report:?}");
    assert_eq!(first.last_used_ms, T0 + 1000);
}
