//! Log compaction (issue 17): changes folded into snapshots and dropped from the log, and devices that lack them
//! catching up from the documents' states through the sync engine.
//!
//! The property test runs two worlds side by side from the same random actions — edits at several devices (every
//! field type, nesting, removals of fields and whole documents), syncs between random pairs, and, in one world
//! only, compactions at random devices — and requires every device to hold exactly the same documents in both
//! worlds after every sync: a device that stayed away across many compactions and comes back with offline edits
//! ends as it would have with no compaction at all, so nothing removed comes back and nothing written is lost.

#[path = "common/edits.rs"]
mod edits;

#[path = "common/wires.rs"]
mod wires;

use edits::{edit, DocSeen, Edit};
use proptest::prelude::*;
use serde_json::{json, Value as Json};
use shoaldb::security::{AppSecret, Identity};
use shoaldb::store::{DocState, Replica};
use shoaldb::sync::{Engine, Subscription, TransportKind};
use shoaldb::util::sources::Sources;
use shoaldb::{CompactionPolicy, Document, Error, Options, Store};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const COLLECTION: &str = "c";
const DOCS: [&str; 3] = ["d0", "d1", "d2"];

struct World {
    _dir: tempfile::TempDir,
    stores: Vec<Store>,
    engines: Vec<Engine>,
    /// The stores' clock (ms), moved by the test: two worlds given the same actions write the same timestamps.
    now: Arc<AtomicU64>,
}

impl World {
    fn new(devices: usize) -> World {
        let dir = tempfile::tempdir().unwrap();
        let now = Arc::new(AtomicU64::new(1_800_000_000_000));
        let stores: Vec<Store> = (0..devices)
            .map(|i| {
                let clock = now.clone();
                // Seeded: the same peer and author ids in both worlds.
                let sources = Sources::seeded(i as u64 + 1).with_clock(move || clock.load(Ordering::SeqCst));
                Store::open_with(dir.path().join(format!("{i}.db")), Options { sources, ..Default::default() }).unwrap()
            })
            .collect();
        let engines = wires::engines(&stores.iter().collect::<Vec<_>>(), b"compaction test secret");
        World { _dir: dir, stores, engines, now }
    }

    /// `a` and `b` meet, sync until nothing moves, and part; the changes and states either sent the other.
    fn sync(&mut self, a: usize, b: usize) -> u64 {
        let (a, la, b, lb) = wires::connect(&mut self.engines, a, b);
        wires::settle(&mut self.engines, &[(a, la, b, lb)], None);
        let sent = [(a, la), (b, lb)]
            .iter()
            .filter_map(|&(d, l)| self.engines[d].link_stats(l))
            .map(|s| s.changes_sent + s.states_sent)
            .sum();
        self.engines[a].remove_link(la, "parted");
        self.engines[b].remove_link(lb, "parted");
        sent
    }

    fn docs(&self, device: usize) -> Vec<Option<Json>> {
        DOCS.iter().map(|d| self.stores[device].get(COLLECTION, d).unwrap()).collect()
    }

    /// Everything that must be equal: each document's view, its version vector and its conflicts.
    fn state(&self, device: usize) -> Vec<DocSeen> {
        edits::seen(&self.stores[device], COLLECTION, &DOCS)
    }
}

fn write(store: &Store, doc: usize, e: &Edit) {
    edits::write_edit(store, COLLECTION, DOCS[doc], e);
}

#[derive(Clone, Debug)]
enum Action {
    Edit {
        device: usize,
        doc: usize,
        edit: Edit,
    },
    Sync {
        a: usize,
        b: usize,
    },
    /// Every change (`everything`), or only those every device heard from holds (`acknowledged`: the default
    /// policy; every change here is recent).
    Compact {
        device: usize,
        acknowledged: bool,
    },
}

const DEVICES: usize = 3;

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => (0..DEVICES, 0..DOCS.len(), edit()).prop_map(|(device, doc, edit)| Action::Edit { device, doc, edit }),
        2 => (0..DEVICES, 0..DEVICES).prop_filter("two devices", |(a, b)| a != b).prop_map(|(a, b)| Action::Sync { a, b }),
        2 => (0..DEVICES, any::<bool>()).prop_map(|(device, acknowledged)| Action::Compact { device, acknowledged }),
    ]
}

fn run(actions: &[Action]) {
    let mut compacted = World::new(DEVICES);
    let mut plain = World::new(DEVICES);
    for a in actions {
        match a {
            Action::Edit { device, doc, edit } => {
                for world in [&compacted, &plain] {
                    world.now.fetch_add(1_000, Ordering::SeqCst);
                }
                write(&compacted.stores[*device], *doc, edit);
                write(&plain.stores[*device], *doc, edit);
            }
            Action::Sync { a, b } => {
                compacted.sync(*a, *b);
                plain.sync(*a, *b);
                for d in [*a, *b] {
                    assert_eq!(
                        compacted.state(d),
                        plain.state(d),
                        "device {d} differs from the world without compaction"
                    );
                }
            }
            Action::Compact { device, acknowledged } => {
                let policy = if *acknowledged { CompactionPolicy::default() } else { CompactionPolicy::everything() };
                compacted.stores[*device].compact(&policy).unwrap();
            }
        }
    }
    // Everyone meets everyone, in a line and back.
    for world in [&mut compacted, &mut plain] {
        for (a, b) in [(0, 1), (1, 2), (2, 1), (1, 0)] {
            world.sync(a, b);
        }
    }
    for d in 0..DEVICES {
        assert_eq!(compacted.state(d), plain.state(d), "device {d} differs from the world without compaction");
        assert_eq!(compacted.state(d), compacted.state(0), "devices diverged");
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(32)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 1000, ..ProptestConfig::default() })]

    #[test]
    fn compaction_never_changes_what_devices_end_with(actions in proptest::collection::vec(action(), 1..40)) {
        run(&actions);
    }
}

#[test]
fn compacting_empties_the_log_and_keeps_every_document() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("a.db")).unwrap();
    for i in 0..20 {
        store.upsert(COLLECTION, json!({"_id": format!("d{i}"), "n": i, "m": {"x": [1, 2, {"y": "z"}]}})).unwrap();
    }
    for i in 0..20 {
        store.update(COLLECTION, &format!("d{i}"), |d| Ok(d.text_insert("t", 0, "hello")?)).unwrap();
    }
    store.remove(COLLECTION, "d3").unwrap();
    store.update(COLLECTION, "d4", |d| Ok(d.remove("m")?)).unwrap();
    let before: Vec<Json> = store.list(COLLECTION).unwrap();
    let summary = store.replica().summary().unwrap();
    let old = store.replica().changes_since(&shoaldb::Summary::new()).unwrap();
    let stats = store.storage_stats().unwrap();
    assert!(stats.log_changes >= 42, "{stats:?}");
    let report = store.compact(&CompactionPolicy::everything()).unwrap();
    assert_eq!(report.changes, stats.log_changes);
    assert_eq!(report.documents, 20);
    let after = store.storage_stats().unwrap();
    assert_eq!((after.log_changes, after.log_bytes), (0, 0));
    assert_eq!(store.list(COLLECTION).unwrap(), before);
    assert_eq!(store.get(COLLECTION, "d3").unwrap(), None);
    assert_eq!(store.replica().summary().unwrap(), summary, "the store still holds every change");
    // Received again, the folded changes are duplicates (not equivocations: their content is gone, not different).
    let again = store.replica().apply_changes(&old).unwrap();
    assert_eq!((again.duplicates, again.refused, again.applied), (old.len(), 0, 0));
    assert!(store.equivocations().unwrap().is_empty());
    assert_eq!(store.list(COLLECTION).unwrap(), before);
    // Writing on top of compacted documents, and reopening.
    store.update(COLLECTION, "d5", |d| Ok(d.set("n", 55i64)?)).unwrap();
    drop(store);
    let store = Store::open(dir.path().join("a.db")).unwrap();
    assert_eq!(store.get(COLLECTION, "d5").unwrap().unwrap()["n"], 55);
    assert_eq!(store.get(COLLECTION, "d4").unwrap().unwrap().get("m"), None);
    assert_eq!(store.get(COLLECTION, "d7").unwrap().unwrap()["t"], "hello");
    // Compacting again folds only what is new.
    assert_eq!(store.compact(&CompactionPolicy::everything()).unwrap().changes, 1);
    // A horizon keeps recent changes.
    store.update(COLLECTION, "d6", |d| Ok(d.set("n", 66i64)?)).unwrap();
    assert_eq!(store.compact(&CompactionPolicy::default()).unwrap().changes, 0);
}

/// A device away while another removed a document and a field, and compacted: back with edits of its own, it
/// gets the states, keeps its edits, and nothing removed comes back; then a new device gets it all through it.
#[test]
fn a_returning_device_and_a_new_one_catch_up_from_states() {
    let mut w = World::new(3);
    w.stores[0].upsert(COLLECTION, json!({"_id": "d0", "title": "gone soon", "n": 1, "m": {"a": 1, "b": 2}})).unwrap();
    w.stores[0].upsert(COLLECTION, json!({"_id": "d1", "keep": true})).unwrap();
    w.stores[0].update(COLLECTION, "d1", |d| Ok(d.text_insert("notes", 0, "abc")?)).unwrap();
    w.sync(0, 1);
    // Device 0: removes d0 and d1's "keep", edits text; then compacts everything.
    w.stores[0].remove(COLLECTION, "d0").unwrap();
    w.stores[0].update(COLLECTION, "d1", |d| Ok(d.remove("keep")?)).unwrap();
    w.stores[0].update(COLLECTION, "d1", |d| Ok(d.text_insert("notes", 3, "def")?)).unwrap();
    w.stores[0].upsert(COLLECTION, json!({"_id": "d2", "new": 1})).unwrap();
    w.stores[0].compact(&CompactionPolicy::everything()).unwrap();
    assert_eq!(w.stores[0].storage_stats().unwrap().log_changes, 0);
    // Device 1, away: edits d0 (concurrently with its removal) and d1's text.
    w.stores[1].update(COLLECTION, "d0", |d| Ok(d.set("n", 2i64)?)).unwrap();
    w.stores[1].update(COLLECTION, "d1", |d| Ok(d.text_insert("notes", 0, ">")?)).unwrap();
    w.sync(0, 1);
    let expected = vec![
        Some(json!({"_id": "d0", "n": 2})),
        Some(json!({"_id": "d1", "notes": ">abcdef"})),
        Some(json!({"_id": "d2", "new": 1})),
    ];
    assert_eq!(w.docs(0), expected);
    assert_eq!(w.docs(1), expected);
    // Device 2, new, meets only device 1 — which holds what device 0 folded as folded changes of its own.
    w.stores[1].compact(&CompactionPolicy::everything()).unwrap();
    w.sync(1, 2);
    assert_eq!(w.docs(2), expected);
    let summaries: Vec<_> = w.stores.iter().map(|s| s.replica().summary().unwrap()).collect();
    assert!(summaries.iter().all(|s| s == &summaries[0]), "every device holds every change");
    // Meeting again sends nothing: no author is suspected of equivocating (and its changes sent again) because
    // one device folded its changes and the other did not.
    assert_eq!((w.sync(1, 2), w.sync(0, 2), w.sync(0, 1)), (0, 0, 0));
    assert!(w.stores.iter().all(|s| s.equivocations().unwrap().is_empty()));
}

/// An evicted document whose changes were folded leaves the store's summary with it, so sync brings it back
/// after `unevict`.
#[test]
fn an_evicted_compacted_document_comes_back() {
    let mut w = World::new(2);
    w.stores[0].upsert(COLLECTION, json!({"_id": "d0", "n": 1})).unwrap();
    w.sync(0, 1);
    w.stores[1].compact(&CompactionPolicy::everything()).unwrap();
    w.stores[1].evict(COLLECTION, "d0").unwrap();
    assert!(w.stores[1].replica().summary().unwrap().is_empty());
    w.stores[1].unevict(COLLECTION, "d0").unwrap();
    w.stores[0].compact(&CompactionPolicy::everything()).unwrap();
    w.sync(0, 1);
    assert_eq!(w.stores[1].get(COLLECTION, "d0").unwrap(), Some(json!({"_id": "d0", "n": 1})));
}

/// States are checked before anything is written: one that does not decode, holds more than its version covers,
/// or lists changes that do not fit its version fails the call, and the store is unchanged.
#[test]
fn malformed_states_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let source = Store::open(dir.path().join("s.db")).unwrap();
    source.upsert(COLLECTION, json!({"_id": "x", "a": 1, "t": "text"})).unwrap();
    let state = source.document(COLLECTION, "x").unwrap().unwrap();
    let changes = source.replica().summary().unwrap();
    let store = Store::open(dir.path().join("t.db")).unwrap();
    store.upsert(COLLECTION, json!({"_id": "x", "b": 2})).unwrap();
    let before = (store.list(COLLECTION).unwrap(), store.replica().summary().unwrap());
    let good = DocState { collection: COLLECTION.into(), doc_id: "x".into(), state: state.encode(), changes };
    let mut garbage = good.clone();
    garbage.state.truncate(garbage.state.len() / 2);
    let mut misfit = good.clone();
    misfit.changes = shoaldb::Summary::new();
    let mut beyond = good.clone();
    let mut other = shoaldb::Summary::new();
    other.insert(shoaldb::PeerId(99), 1, 1);
    beyond.changes.union_with(&other);
    let mut empty_id = good.clone();
    empty_id.doc_id = String::new();
    for bad in [garbage, misfit, beyond, empty_id] {
        let err = store.replica().apply_states(&[good.clone(), bad]).unwrap_err();
        assert!(matches!(err, Error::Change(_) | Error::InvalidName { .. }), "{err:?}");
        assert_eq!((store.list(COLLECTION).unwrap(), store.replica().summary().unwrap()), before);
    }
    // The good one alone merges.
    let report = store.replica().apply_states(&[good]).unwrap();
    assert_eq!(report.applied, 1);
    assert_eq!(store.get(COLLECTION, "x").unwrap(), Some(json!({"_id": "x", "a": 1, "b": 2, "t": "text"})));
    // A state is a document's: Document::decode of anything else fails.
    assert!(Document::decode(b"not a state").is_err());
}

/// Partial replication: a document of which a filtered device held nothing, its changes folded, enters the filter
/// through a later edit — made at the compacted device, or elsewhere and relayed by it — while the filtered device
/// stays connected, and the filtered device gets it whole.
#[test]
fn a_compacted_document_entering_a_filter_arrives_whole() {
    let mut w = World::new(3);
    let filtered = vec![Subscription::filtered(COLLECTION, "done == false")];
    let id = Identity::generate().unwrap();
    let secret = AppSecret::from_bytes(b"compaction test secret").unwrap();
    w.engines[1] = Engine::new(w.stores[1].replica(), id, secret, "filtered", filtered, 0);
    for (i, done) in [(0, false), (1, true), (2, true)] {
        w.stores[0].upsert(COLLECTION, json!({"_id": format!("d{i}"), "done": done, "v": i})).unwrap();
        w.stores[0].update(COLLECTION, &format!("d{i}"), |d| Ok(d.text_insert("t", 0, "abc")?)).unwrap();
    }
    w.sync(0, 2);
    w.stores[0].compact(&CompactionPolicy::everything()).unwrap();
    w.stores[2].compact(&CompactionPolicy::everything()).unwrap();
    let link = |w: &mut World, a: usize, b: usize| {
        let la = w.engines[a].add_link(TransportKind::Lan, true).unwrap();
        let lb = w.engines[b].add_link(TransportKind::Lan, false).unwrap();
        (a, la, b, lb)
    };
    let ab = link(&mut w, 0, 1);
    wires::settle(&mut w.engines, &[ab], None);
    assert_eq!(w.stores[1].list(COLLECTION).unwrap().len(), 1, "only the open document");
    // Made at the compacted device itself.
    w.stores[0].update(COLLECTION, "d1", |d| Ok(d.set("done", false)?)).unwrap();
    wires::settle(&mut w.engines, &[ab], None);
    let d1 = w.stores[1].get(COLLECTION, "d1").unwrap();
    assert_eq!(d1, Some(json!({"_id": "d1", "done": false, "v": 1, "t": "abc"})));
    // Made elsewhere and relayed by the compacted device.
    w.stores[2].update(COLLECTION, "d2", |d| Ok(d.set("done", false)?)).unwrap();
    let ca = link(&mut w, 2, 0);
    wires::settle(&mut w.engines, &[ab, ca], None);
    let d2 = w.stores[1].get(COLLECTION, "d2").unwrap();
    assert_eq!(d2, Some(json!({"_id": "d2", "done": false, "v": 2, "t": "abc"})));
}

/// Changes every device heard from within the horizon holds are folded however recent — only those: a device
/// that has not acknowledged a change keeps it in the log, until it has not been heard from for a horizon.
#[test]
fn changes_every_device_acknowledged_are_folded() {
    let mut w = World::new(3);
    let recent = CompactionPolicy::default();
    let log = |w: &World| w.stores[0].storage_stats().unwrap().log_changes;
    w.stores[0].upsert(COLLECTION, json!({"_id": "d0", "n": 0})).unwrap();
    assert_eq!(w.stores[0].compact(&recent).unwrap().changes, 0, "no device heard from yet");
    w.sync(0, 1);
    assert_eq!(w.stores[0].compact(&recent).unwrap().changes, 0, "device 1's summary came before the change");
    // Acknowledged at the next meeting (device 1's summary as the session starts).
    w.sync(0, 1);
    let off = CompactionPolicy { fold_acknowledged: false, ..CompactionPolicy::default() };
    assert_eq!(w.stores[0].compact(&off).unwrap().changes, 0, "acknowledgements not used");
    let report = w.stores[0].compact(&recent).unwrap();
    assert_eq!((report.documents, report.changes, log(&w)), (1, 1, 0), "{report:?}");

    // Device 2 meets device 0 (and gets d0's state); a new change reaches device 1 only.
    w.sync(0, 2);
    w.stores[0].upsert(COLLECTION, json!({"_id": "d1", "n": 1})).unwrap();
    w.sync(0, 1);
    w.sync(0, 1);
    assert_eq!(w.stores[0].compact(&recent).unwrap().changes, 0, "device 2 lacks d1's change");
    assert_eq!(log(&w), 1);
    w.sync(0, 2);
    w.sync(0, 2);
    assert_eq!(w.stores[0].compact(&recent).unwrap().changes, 1, "both hold it now");

    // Device 2 goes away for longer than the horizon: not waited for any more.
    let day = CompactionPolicy { horizon_ms: 24 * 60 * 60 * 1000, ..CompactionPolicy::default() };
    w.now.fetch_add(2 * day.horizon_ms, Ordering::SeqCst);
    w.stores[0].update(COLLECTION, "d1", |d| Ok(d.set("n", 11)?)).unwrap();
    w.stores[2].update(COLLECTION, "d1", |d| Ok(d.set("away", true)?)).unwrap();
    assert_eq!(w.stores[0].compact(&day).unwrap().changes, 0, "device 1 lacks it");
    w.sync(0, 1);
    w.sync(0, 1);
    assert_eq!(w.stores[0].compact(&day).unwrap().changes, 1, "device 1 is the only one heard from within a day");
    // The device back catches up from d1's state, and its own edit of d1 made away merges.
    w.sync(2, 0);
    w.sync(0, 1);
    for d in 1..3 {
        assert_eq!(w.state(d), w.state(0), "device {d}");
    }
    assert_eq!(w.stores[0].get(COLLECTION, "d1").unwrap(), Some(json!({"_id": "d1", "n": 11, "away": true})));
}

/// The cloud does not merge states: a device that syncs with it keeps in its log what the cloud has not
/// acknowledged — until it has not reached the cloud for longer than the horizon.
#[test]
fn changes_the_cloud_lacks_stay_in_the_log() {
    let mut w = World::new(2);
    let over_cloud = |w: &mut World| {
        let la = w.engines[0].add_link(TransportKind::Cloud, true).unwrap();
        let lb = w.engines[1].add_link(TransportKind::Lan, false).unwrap();
        wires::settle(&mut w.engines, &[(0, la, 1, lb)], None);
        w.engines[0].remove_link(la, "parted");
        w.engines[1].remove_link(lb, "parted");
    };
    w.stores[0].upsert(COLLECTION, json!({"_id": "d0", "n": 0})).unwrap();
    over_cloud(&mut w);
    // Acknowledged at the next meeting (the cloud's summary as the session starts).
    over_cloud(&mut w);
    w.stores[0].upsert(COLLECTION, json!({"_id": "d1", "n": 1})).unwrap();
    let report = w.stores[0].compact(&CompactionPolicy::everything()).unwrap();
    assert_eq!((report.documents, report.changes), (1, 1), "only d0's change: {report:?}");
    assert_eq!(w.stores[0].storage_stats().unwrap().log_changes, 1);
    over_cloud(&mut w);
    over_cloud(&mut w);
    assert_eq!(w.stores[0].compact(&CompactionPolicy::everything()).unwrap().changes, 1, "d1's, acknowledged now");
    // Away from the cloud for longer than the horizon: compacts without it.
    w.stores[0].upsert(COLLECTION, json!({"_id": "d2", "n": 2})).unwrap();
    let policy = CompactionPolicy { horizon_ms: 24 * 60 * 60 * 1000, ..Default::default() };
    assert_eq!(w.stores[0].compact(&policy).unwrap().changes, 0);
    w.now.fetch_add(2 * policy.horizon_ms, Ordering::SeqCst);
    assert_eq!(w.stores[0].compact(&policy).unwrap().changes, 1);
}

/// A compaction of more log rows than one transaction folds takes several, and lets the app's writes in between:
/// a thread writing to the documents being compacted loses nothing, and every change ends folded or in the log.
#[test]
fn a_large_compaction_goes_in_several_transactions_beside_the_apps_writes() {
    let mut w = World::new(2);
    let docs = 5000;
    w.stores[0]
        .write(|t| {
            for i in 0..docs {
                t.upsert(COLLECTION, json!({"_id": format!("doc{i:04}"), "n": i}))?;
            }
            Ok(())
        })
        .unwrap();
    let logged = w.stores[0].storage_stats().unwrap().log_changes;
    assert_eq!(logged, docs, "one change per document");
    let writer = {
        let store = w.stores[0].clone();
        std::thread::spawn(move || {
            for i in (0..docs).step_by(50) {
                store.update(COLLECTION, &format!("doc{i:04}"), |d| Ok(d.set("written", true)?)).unwrap();
            }
        })
    };
    let report = w.stores[0].compact(&CompactionPolicy::everything()).unwrap();
    writer.join().unwrap();
    assert!(report.transactions >= 2, "{report:?}");
    assert!(report.changes >= docs && report.changes <= docs + docs / 50, "{report:?}");
    let stats = w.stores[0].storage_stats().unwrap();
    assert_eq!(report.changes + stats.log_changes, docs + docs / 50, "every change folded or in the log: {stats:?}");
    for i in (0..docs).step_by(50) {
        assert_eq!(w.stores[0].get(COLLECTION, &format!("doc{i:04}")).unwrap().unwrap()["written"], true);
    }
    // The folded changes stay held: the summary is the same as the changes written, and a new device gets it all.
    let again = w.stores[0].compact(&CompactionPolicy::everything()).unwrap();
    assert_eq!(w.stores[0].storage_stats().unwrap().log_changes, 0, "{again:?}");
    w.sync(0, 1);
    assert_eq!(w.stores[1].list(COLLECTION).unwrap(), w.stores[0].list(COLLECTION).unwrap());
    assert_eq!(w.stores[1].replica().summary().unwrap(), w.stores[0].replica().summary().unwrap());
}

/// One document with more log rows than a transaction folds is folded over several, the rest of its rows left for
/// the next (and changes written to it in between stay in the log or are folded with their snapshot rewritten).
#[test]
fn a_document_with_more_log_rows_than_a_transaction_folds_goes_over_several() {
    let mut w = World::new(2);
    // Changes to `hot` alternate with changes to `other`, so that no two of `hot`'s follow on (each is a log row of
    // its own, not a run).
    let rows = 2600;
    for id in ["hot", "other"] {
        w.stores[0].upsert(COLLECTION, json!({"_id": id})).unwrap();
    }
    for i in 0..rows {
        w.stores[0].update(COLLECTION, "hot", |d| Ok(d.set("n", i as i64)?)).unwrap();
        w.stores[0].update(COLLECTION, "other", |d| Ok(d.set("n", i as i64)?)).unwrap();
    }
    let stats = w.stores[0].storage_stats().unwrap();
    assert_eq!(stats.log_changes, 2 * rows as u64 + 2);
    let writer = {
        let store = w.stores[0].clone();
        std::thread::spawn(move || {
            for i in 0..20 {
                store.update(COLLECTION, "hot", |d| Ok(d.set("late", i as i64)?)).unwrap();
            }
        })
    };
    let report = w.stores[0].compact(&CompactionPolicy::everything()).unwrap();
    writer.join().unwrap();
    assert!(report.transactions >= 6, "2 × 2,600 rows, about a thousand per transaction: {report:?}");
    assert_eq!(report.documents, 2, "each document counted once, however many transactions it took: {report:?}");
    let stats = w.stores[0].storage_stats().unwrap();
    assert_eq!(
        report.changes + stats.log_changes,
        2 * rows as u64 + 22,
        "every change folded or in the log: {stats:?}"
    );
    let hot = w.stores[0].get(COLLECTION, "hot").unwrap().unwrap();
    assert_eq!((hot["n"].clone(), hot["late"].clone()), (json!(rows - 1), json!(19)));
    w.stores[0].compact(&CompactionPolicy::everything()).unwrap();
    assert_eq!(w.stores[0].storage_stats().unwrap().log_changes, 0);
    // Reopened, the snapshots hold everything; a new device gets both documents whole.
    assert_eq!(w.stores[0].get(COLLECTION, "hot").unwrap().unwrap(), hot);
    w.sync(0, 1);
    assert_eq!(w.stores[1].list(COLLECTION).unwrap(), w.stores[0].list(COLLECTION).unwrap());
    assert_eq!(w.stores[1].replica().summary().unwrap(), w.stores[0].replica().summary().unwrap());
}

/// States of many documents go over several pumps (each as far as credit allows) and all arrive.
#[test]
fn many_compacted_documents_reach_a_new_device() {
    let mut w = World::new(2);
    w.stores[0]
        .write(|t| {
            for i in 0..400 {
                t.upsert(COLLECTION, json!({"_id": format!("doc{i:03}"), "body": "x".repeat(1000), "n": i}))?;
            }
            Ok(())
        })
        .unwrap();
    w.stores[0].update(COLLECTION, "doc007", |d| Ok(d.set("n", -7i64)?)).unwrap();
    w.stores[0].compact(&CompactionPolicy::everything()).unwrap();
    assert_eq!(w.sync(0, 1), 400, "one state per document");
    assert_eq!(w.stores[1].list(COLLECTION).unwrap(), w.stores[0].list(COLLECTION).unwrap());
    assert_eq!(w.stores[1].replica().summary().unwrap(), w.stores[0].replica().summary().unwrap());
}

/// A device's claims count only for the changes this store holds, and only while it is among the
/// [`shoaldb::store::MAX_PEER_ACKS`] devices heard from most recently: many devices, or a device claiming to hold
/// everything, cost a bounded table and cannot make a change foldable that another device lacks.
#[test]
fn acknowledgements_are_bounded() {
    use shoaldb::security::DeviceKey;
    use shoaldb::store::{Summary, MAX_PEER_ACKS};
    let w = World::new(1);
    let replica = w.stores[0].replica();
    w.stores[0].upsert(COLLECTION, json!({"_id": "d0", "n": 0})).unwrap();
    let mut everything = replica.summary().unwrap();
    for author in 0..200u64 {
        everything.insert(shoaldb::PeerId(author.wrapping_mul(0x9e37_79b9_7f4a_7c15)), 1, u64::MAX);
    }
    let key = |i: u64| {
        let mut k = [0u8; 32];
        k[..8].copy_from_slice(&i.to_le_bytes());
        DeviceKey(k)
    };
    // An honest device that lacks d0's change, then many devices claiming everything.
    replica.keep_peer_summary(&key(0), false, &Summary::new()).unwrap();
    for i in 1..=MAX_PEER_ACKS as u64 + 10 {
        replica.keep_peer_summary(&key(i), false, &everything).unwrap();
    }
    let file = w._dir.path().join("0.db");
    let conn = rusqlite::Connection::open(&file).unwrap();
    let (rows, largest): (i64, i64) = conn
        .query_row("SELECT count(*), max(length(summary)) FROM peer_acks", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap();
    assert_eq!(rows as usize, MAX_PEER_ACKS);
    assert!(largest < 64, "only what the store holds is kept: {largest} bytes");
    // All heard at the same time: the honest device is still counted (ties keep the smaller keys).
    assert_eq!(w.stores[0].compact(&CompactionPolicy::default()).unwrap().changes, 0);
    // Heard from again a minute later (the time is written again), the claimers push the honest device out: its
    // changes are folded without it.
    w.now.fetch_add(61_000, Ordering::SeqCst);
    for i in 1..=MAX_PEER_ACKS as u64 {
        replica.keep_peer_summary(&key(i), false, &everything).unwrap();
    }
    let honest: i64 =
        conn.query_row("SELECT count(*) FROM peer_acks WHERE device = ?1", [key(0).0], |r| r.get(0)).unwrap();
    assert_eq!(honest, 0, "the device heard from least recently is forgotten");
    assert_eq!(w.stores[0].compact(&CompactionPolicy::default()).unwrap().changes, 1);
}

/// What the cloud acknowledged, kept in `meta` before schema 12, still keeps unacknowledged changes in the log.
#[test]
fn the_clouds_acknowledgements_survive_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("old.db");
    let store = Store::open(&file).unwrap();
    store.upsert(COLLECTION, json!({"_id": "d0", "n": 0})).unwrap();
    drop(store);
    let conn = rusqlite::Connection::open(&file).unwrap();
    // Schema 11: the cloud said it holds nothing.
    conn.execute_batch(
        "DROP TABLE peer_acks; DROP TABLE expiry; ALTER TABLE docs DROP COLUMN modified; \
         ALTER TABLE docs DROP COLUMN used; ALTER TABLE blobs DROP COLUMN used; \
         ALTER TABLE snapshots DROP COLUMN tombstones; ALTER TABLE changes DROP COLUMN parts; \
         DROP TABLE folded; DROP TABLE attested; DROP TABLE attested_changes; ALTER TABLE docs ADD COLUMN folded BLOB; \
         CREATE INDEX docs_folded ON docs (doc) WHERE folded IS NOT NULL; \
         DROP INDEX docs_unversioned; ALTER TABLE docs DROP COLUMN version; DROP TABLE unsettled; PRAGMA user_version = 11;",
    )
    .unwrap();
    let empty = shoaldb::store::Summary::new().encode();
    conn.execute("INSERT INTO meta (key, value) VALUES ('cloud_acked', ?1)", [empty]).unwrap();
    conn.execute("INSERT INTO meta (key, value) VALUES ('cloud_acked_at', ?1)", [1u64.to_le_bytes()]).unwrap();
    drop(conn);
    let store = Store::open(&file).unwrap();
    assert_eq!(store.compact(&CompactionPolicy::everything()).unwrap().changes, 0, "the cloud lacks it");
    let conn = rusqlite::Connection::open(&file).unwrap();
    let left: i64 =
        conn.query_row("SELECT count(*) FROM meta WHERE key LIKE 'cloud_acked%'", [], |r| r.get(0)).unwrap();
    assert_eq!(left, 0);
}

/// Documents written before versions were kept (schema 15) are sent without one until compaction writes their
/// versions down; then every change read from the log carries its document's version.
#[test]
fn compaction_writes_down_the_versions_of_documents_from_before_they_were_kept() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("old.db");
    let store = Store::open(&file).unwrap();
    for i in 0..300 {
        store.upsert(COLLECTION, json!({"_id": format!("d{}", i % 270), "n": i})).unwrap();
    }
    drop(store);
    let conn = rusqlite::Connection::open(&file).unwrap();
    conn.execute_batch("DROP INDEX docs_unversioned; ALTER TABLE docs DROP COLUMN version; DROP TABLE unsettled; PRAGMA user_version = 15;")
        .unwrap();
    drop(conn);
    let store = Store::open(&file).unwrap();
    let log = || store.replica().log_missing(&shoaldb::Summary::new(), &shoaldb::Summary::new(), usize::MAX).unwrap();
    assert!(log().iter().all(|e| e.version.is_none()), "no version was kept");
    // Nothing to fold (no device acknowledged anything): only the versions are written, over two transactions.
    assert_eq!(store.compact(&CompactionPolicy::default()).unwrap().changes, 0);
    let entries = log();
    assert_eq!(entries.len(), 300);
    for e in entries {
        let doc = store.document(&e.collection, &e.doc_id).unwrap().unwrap();
        assert_eq!(e.version.as_deref(), Some(doc.version()), "{}", e.doc_id);
    }
}
