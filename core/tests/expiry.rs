//! Expiry (issue 17): a collection's time to live removes its documents not modified for that long, as ordinary
//! removals that replicate; a document's age is the time its latest change was made, the same on every device.

#[path = "common/wires.rs"]
mod wires;

use serde_json::json;
use shoaldb::util::sources::Sources;
use shoaldb::{Options, Query, Store};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const HOUR: u64 = 3600 * 1000;
const DAY: u64 = 24 * HOUR;

/// Devices whose clocks the test moves (each its own).
struct Fleet {
    dir: tempfile::TempDir,
    stores: Vec<Store>,
    clocks: Vec<Arc<AtomicU64>>,
}

impl Fleet {
    fn new(devices: usize) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let clocks: Vec<Arc<AtomicU64>> = (0..devices).map(|_| Arc::new(AtomicU64::new(1_800_000_000_000))).collect();
        let stores = clocks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let clock = c.clone();
                let sources = Sources::seeded(i as u64 + 1).with_clock(move || clock.load(Ordering::SeqCst));
                Store::open_with(dir.path().join(format!("{i}.db")), Options { sources, ..Default::default() }).unwrap()
            })
            .collect();
        Fleet { dir, stores, clocks }
    }

    fn advance(&self, ms: u64) {
        for c in &self.clocks {
            c.fetch_add(ms, Ordering::SeqCst);
        }
    }

    fn sync(&self, a: usize, b: usize) {
        let mut engines = wires::engines(&[&self.stores[a], &self.stores[b]], b"expiry test secret");
        let wire = wires::connect(&mut engines, 0, 1);
        wires::settle(&mut engines, &[wire], None);
    }

    fn ids(&self, device: usize, collection: &str) -> Vec<String> {
        let docs = self.stores[device].find(collection, &Query::all()).unwrap();
        docs.iter().map(|d| d["_id"].as_str().unwrap().to_string()).collect()
    }
}

fn expired(store: &Store) -> Vec<(String, String)> {
    store.expire().unwrap().into_iter().map(|e| (e.collection, e.id)).collect()
}

fn pair(collection: &str, id: &str) -> (String, String) {
    (collection.to_string(), id.to_string())
}

#[test]
fn documents_not_modified_for_their_time_to_live_are_removed_and_the_removal_replicates() {
    let f = Fleet::new(2);
    let a = &f.stores[0];
    a.set_time_to_live("sessions", Some(DAY)).unwrap();
    assert_eq!(a.time_to_live("sessions").unwrap(), Some(DAY));
    assert_eq!(a.time_to_live("notes").unwrap(), None);
    for id in ["s1", "s2", "s3"] {
        a.upsert("sessions", json!({"_id": id, "user": id})).unwrap();
    }
    a.upsert("notes", json!({"_id": "n1", "text": "kept"})).unwrap();
    f.sync(0, 1);
    assert_eq!(expired(a), vec![], "nothing is a day old");

    f.advance(12 * HOUR);
    a.update("sessions", "s2", |d| Ok(d.set("seen", 1)?)).unwrap();
    // Device 1 touches s3: its change reaches device 0, and s3's age starts again there too.
    f.stores[1].update("sessions", "s3", |d| Ok(d.set("seen", 2)?)).unwrap();
    f.sync(1, 0);
    let removed = Arc::new(Mutex::new(Vec::new()));
    let seen = removed.clone();
    let (_, _observer) = a
        .observe("sessions", Query::all(), move |e: &shoaldb::ChangeEvent| {
            seen.lock().unwrap().extend(e.removed.clone())
        })
        .unwrap();

    f.advance(13 * HOUR);
    let report = a.expire().unwrap();
    assert_eq!(report.len(), 1, "{report:?}");
    assert_eq!((report[0].collection.as_str(), report[0].id.as_str()), ("sessions", "s1"));
    assert_eq!(report[0].modified_ms, 1_800_000_000_000, "when s1 was written");
    assert_eq!(*removed.lock().unwrap(), vec!["s1".to_string()], "observers see the removal");
    assert_eq!(f.ids(0, "sessions"), ["s2", "s3"]);
    assert_eq!(f.ids(0, "notes"), ["n1"], "a collection without a time to live keeps its documents");
    assert_eq!(expired(a), vec![], "expired once");

    // The removal replicates: device 1, which has no policy, loses s1 too.
    f.sync(0, 1);
    assert_eq!(f.ids(1, "sessions"), ["s2", "s3"]);
    assert_eq!(expired(&f.stores[1]), vec![], "device 1 has no policy");

    // A day after their last changes, the others go; a document written again lives again.
    f.advance(DAY);
    a.upsert("sessions", json!({"_id": "s1", "user": "back"})).unwrap();
    assert_eq!(expired(a), vec![pair("sessions", "s2"), pair("sessions", "s3")]);
    assert_eq!(f.ids(0, "sessions"), ["s1"]);
    // No policy, no expiry.
    a.set_time_to_live("sessions", None).unwrap();
    f.advance(2 * DAY);
    assert_eq!(expired(a), vec![]);
    assert_eq!(f.ids(0, "sessions"), ["s1"]);
}

/// A document's age is the time its latest change was made, wherever it arrives: a change made two days ago on a
/// device that was away arrives already expired, and a device with the same policy removes it alike.
#[test]
fn age_is_the_time_of_the_latest_change_on_every_device() {
    let f = Fleet::new(2);
    f.stores[1].upsert("sessions", json!({"_id": "old", "v": 1})).unwrap();
    f.advance(2 * DAY);
    f.stores[1].upsert("sessions", json!({"_id": "new", "v": 2})).unwrap();
    f.sync(1, 0);
    for s in &f.stores {
        s.set_time_to_live("sessions", Some(DAY)).unwrap();
    }
    let report = f.stores[0].expire().unwrap();
    assert_eq!(report.len(), 1);
    assert_eq!((report[0].id.as_str(), report[0].modified_ms), ("old", 1_800_000_000_000));
    // Device 1 expires the same document (concurrently): both removals merge into one outcome.
    assert_eq!(expired(&f.stores[1]), vec![pair("sessions", "old")]);
    f.sync(0, 1);
    assert_eq!(f.ids(0, "sessions"), ["new"]);
    assert_eq!(f.ids(1, "sessions"), ["new"]);
}

/// Documents whose time is not known (written before it was recorded) are dated by the first expiry; more than a
/// transaction's worth expire in one call.
#[test]
fn documents_of_unknown_age_and_many_documents() {
    let f = Fleet::new(1);
    let s = &f.stores[0];
    s.write(|t| {
        for i in 0..600 {
            t.upsert("logs", json!({"_id": format!("l{i:03}"), "i": i}))?;
        }
        Ok(())
    })
    .unwrap();
    let conn = rusqlite::Connection::open(f.dir.path().join("0.db")).unwrap();
    conn.execute("UPDATE docs SET modified = NULL WHERE id < 'l100'", []).unwrap();
    s.set_time_to_live("logs", Some(DAY)).unwrap();
    f.advance(2 * DAY);
    let report = s.expire().unwrap();
    assert_eq!(report.len(), 500, "all but the 100 of unknown age");
    assert_eq!(s.find("logs", &Query::all()).unwrap().len(), 100);
    f.advance(DAY - 1);
    assert_eq!(expired(s), vec![]);
    f.advance(2);
    assert_eq!(s.expire().unwrap().len(), 100, "a day after the first expiry met them");
    assert!(s.find("logs", &Query::all()).unwrap().is_empty());
}

/// A running node expires documents by itself (every 10 minutes by default; here every 50 ms).
#[tokio::test(flavor = "multi_thread")]
async fn a_running_node_expires_documents_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("node.db")).unwrap();
    store.set_time_to_live("sessions", Some(0)).unwrap();
    store.upsert("sessions", json!({"_id": "s1", "user": "ana"})).unwrap();
    store.upsert("notes", json!({"_id": "n1", "text": "kept"})).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let secret = shoaldb::security::AppSecret::from_bytes(b"expiry test secret").unwrap();
    let config = shoaldb::NodeConfig::new("expiring", secret)
        .with_mdns(false)
        .with_expiry_every(Some(std::time::Duration::from_millis(50)));
    let node = shoaldb::Node::start(store.clone(), config).await.unwrap();
    let mut gone = false;
    for _ in 0..1200 {
        if store.get("sessions", "s1").unwrap().is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    node.shutdown().await;
    assert!(gone, "the node never expired s1");
    assert!(store.get("notes", "n1").unwrap().is_some());
}

#[derive(Clone, Debug)]
enum Action {
    Write { device: usize, doc: usize, value: i64 },
    Remove { device: usize, doc: usize },
    Wait { hours: u64 },
    Expire { device: usize },
    Sync { a: usize, b: usize },
}

const DEVICES: usize = 3;
const DOCS: usize = 4;

fn action() -> impl proptest::strategy::Strategy<Value = Action> {
    use proptest::prelude::*;
    prop_oneof![
        4 => (0..DEVICES, 0..DOCS, 0..100i64).prop_map(|(device, doc, value)| Action::Write { device, doc, value }),
        1 => (0..DEVICES, 0..DOCS).prop_map(|(device, doc)| Action::Remove { device, doc }),
        2 => (1..30u64).prop_map(|hours| Action::Wait { hours }),
        2 => (0..DEVICES).prop_map(|device| Action::Expire { device }),
        3 => (0..DEVICES, 0..DEVICES).prop_filter("two devices", |(a, b)| a != b).prop_map(|(a, b)| Action::Sync { a, b }),
    ]
}

/// Random writes, removals, waits, expiries at random devices (two of three have the policy) and syncs between
/// random pairs: every device ends with the same documents, and once every device with the policy has expired
/// and synced again, none holds a document whose latest change is older than the time to live.
fn run(actions: &[Action]) {
    let f = Fleet::new(DEVICES);
    for s in &f.stores[..2] {
        s.set_time_to_live("c", Some(DAY)).unwrap();
    }
    let doc = |i: usize| format!("d{i}");
    for a in actions {
        match a {
            Action::Write { device, doc: d, value } => {
                f.stores[*device].upsert("c", json!({"_id": doc(*d), "v": value, "by": device})).unwrap();
            }
            Action::Remove { device, doc: d } => {
                f.stores[*device].remove("c", &doc(*d)).unwrap();
            }
            Action::Wait { hours } => f.advance(hours * HOUR),
            Action::Expire { device } => {
                f.stores[*device].expire().unwrap();
            }
            Action::Sync { a, b } => f.sync(*a, *b),
        }
    }
    let everyone = |f: &Fleet| {
        for (a, b) in [(0, 1), (1, 2), (2, 1), (1, 0)] {
            f.sync(a, b);
        }
    };
    everyone(&f);
    let held = |f: &Fleet, d: usize| (0..DOCS).map(|i| f.stores[d].get("c", &doc(i)).unwrap()).collect::<Vec<_>>();
    for d in 1..DEVICES {
        assert_eq!(held(&f, d), held(&f, 0), "device {d} differs from device 0");
    }
    for s in &f.stores[..2] {
        s.expire().unwrap();
    }
    everyone(&f);
    let now = f.clocks[0].load(Ordering::SeqCst);
    for d in 0..DEVICES {
        assert_eq!(held(&f, d), held(&f, 0), "device {d} differs after the last expiry");
        let conn = rusqlite::Connection::open(f.dir.path().join(format!("{d}.db"))).unwrap();
        let stale: i64 = conn
            .query_row(
                "SELECT count(*) FROM docs WHERE collection = 'c' AND view IS NOT NULL AND modified < ?1",
                [(now - DAY) as i64],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(stale, 0, "device {d} still holds a document past its time to live");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(32),
        ..Default::default()
    })]

    #[test]
    fn expiry_converges(actions in proptest::collection::vec(action(), 1..40)) {
        run(&actions);
    }
}
