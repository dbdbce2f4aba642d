//! Attested states (issue 17, certificate mode): devices fold signed changes into snapshots once a state an
//! attester signed holds them, and send that state to a device that lacks them; every device checks it.
//!
//! The property test runs two fleets side by side from the same random actions — edits at several enrolled
//! devices (every field type, nesting, removals of fields and whole documents), syncs between random pairs, and,
//! in one fleet only, attestations by the attester and compactions at random devices — and requires every device
//! to hold exactly the same documents in both fleets after every sync: a device that stayed away across many
//! compactions comes back with its offline edits and ends as it would have with no compaction at all. The other
//! tests check what a device refuses: states signed by a device without the grant, altered ones, a revoked
//! attester's, and states holding changes of a revoked author.

#[path = "common/edits.rs"]
mod edits;
#[path = "common/wires.rs"]
mod wires;

use edits::{edit, DocSeen, Edit};
use proptest::prelude::*;
use serde_json::json;
use shoaldb::enrolment::{self, EnrolmentRequest, Validity};
use shoaldb::security::{
    vault, Attestation, Grant, Identity, KeyVault, MemoryVault, RefusalReason, Refused, Revocation, SigningKey,
};
use shoaldb::store::{AttestedState, Replica};
use shoaldb::sync::wire::Message;
use shoaldb::sync::{Engine, EngineEvent, Subscription};
use shoaldb::util::sources::Sources;
use shoaldb::{CompactionPolicy, Error, Options, Store, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const COLLECTION: &str = "c";
const DOCS: [&str; 3] = ["d0", "d1", "d2"];
const DAY: u64 = 86_400_000;
/// "Now" as the fleets start: 2026-06-01.
const NOW: u64 = 1_780_272_000_000;
/// Device 0 attests; the others read and write.
const ATTESTER: usize = 0;

struct Fleet {
    _dir: tempfile::TempDir,
    stores: Vec<Store>,
    engines: Vec<Engine>,
    /// The devices' clock (ms), moved by the test: two fleets given the same actions write the same timestamps.
    now: Arc<AtomicU64>,
}

impl Fleet {
    /// Devices enrolled by `authority`, their keys drawn from fixed seeds (two fleets hold the same keys, so the
    /// same author ids), each with the grants `grants(i)` and an engine wanting everything.
    fn new(authority: &SigningKey, devices: usize, grants: impl Fn(usize) -> Vec<Grant>) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let now = Arc::new(AtomicU64::new(NOW));
        let mut stores = Vec::new();
        let mut engines = Vec::new();
        for i in 0..devices {
            let seed = i as u64 + 1;
            let signing = SigningKey::from_sources(&Sources::seeded(1000 + seed));
            let identity = Identity::from_private(&[seed as u8; 32]).unwrap();
            let keys = MemoryVault::default();
            keys.create(vault::SIGNING_KEY, &signing.to_bytes()).unwrap();
            keys.create(vault::NOISE_KEY, &identity.to_bytes()).unwrap();
            let clock = now.clone();
            let sources = Sources::seeded(seed).with_clock(move || clock.load(Ordering::SeqCst));
            let options = Options { sources, keys: Some(Arc::new(keys)), ..Default::default() };
            let store = Store::open_with(dir.path().join(format!("{i}.db")), options).unwrap();
            let request = EnrolmentRequest {
                name: format!("device {i}"),
                signing_key: signing.verifying_key(),
                noise_key: identity.device_key(),
            };
            let validity = Validity::days_from(NOW - DAY, 3650);
            let certificate = enrolment::issue(authority, &request, seed, grants(i), validity).unwrap();
            let e = enrolment::install(&store, &[certificate], &[authority.verifying_key()]).unwrap();
            let clock = now.clone();
            let engine = Engine::new(store.replica(), identity, e, &request.name, vec![Subscription::everything()], 0)
                .with_sources(Sources::seeded(seed).with_clock(move || clock.load(Ordering::SeqCst)));
            stores.push(store);
            engines.push(engine);
        }
        Fleet { _dir: dir, stores, engines, now }
    }

    /// The attester (device 0: `attest *`) and `devices - 1` devices reading and writing everything.
    fn with_attester(authority: &SigningKey, devices: usize) -> Fleet {
        Fleet::new(authority, devices, |i| match i {
            ATTESTER => vec![Grant::read("*"), Grant::write("*"), Grant::attest("*")],
            _ => vec![Grant::read("*"), Grant::write("*")],
        })
    }

    /// `a` and `b` meet, sync until nothing moves, and part; the refusals either reported.
    fn sync(&mut self, a: usize, b: usize) -> Vec<Refused> {
        let (a, la, b, lb) = wires::connect(&mut self.engines, a, b);
        wires::settle(&mut self.engines, &[(a, la, b, lb)], None);
        self.engines[a].remove_link(la, "parted");
        self.engines[b].remove_link(lb, "parted");
        [a, b].iter().flat_map(|&d| self.refusals(d)).collect()
    }

    fn refusals(&mut self, device: usize) -> Vec<Refused> {
        let mut out = Vec::new();
        while let Some(ev) = self.engines[device].poll_event() {
            if let EngineEvent::Refused { refusals, .. } = ev {
                out.extend(refusals);
            }
        }
        out
    }

    /// Everything that must be equal: each document's view, its version vector and its conflicts.
    fn state(&self, device: usize) -> Vec<DocSeen> {
        edits::seen(&self.stores[device], COLLECTION, &DOCS)
    }

    /// The changes in device `d`'s log.
    fn logged(&self, d: usize) -> usize {
        let empty = shoaldb::Summary::new();
        self.stores[d].replica().log_missing(&empty, &empty, usize::MAX).unwrap().len()
    }
}

fn write(store: &Store, doc: usize, e: &Edit) {
    edits::write_edit(store, COLLECTION, DOCS[doc], e);
}

/// [`Action::Type`] on `store`.
fn type_and_cut(store: &Store, doc: usize, pos: u16, text: &str, cut: u8) {
    let id = DOCS[doc];
    if store.get(COLLECTION, id).unwrap().is_none_or(|v| !v["notes"].is_string()) {
        store.upsert(COLLECTION, json!({"_id": id})).unwrap();
        store.update(COLLECTION, id, |ed| Ok(ed.set("notes", Value::Text(String::new()))?)).unwrap();
    }
    write(store, doc, &Edit::TextInsert { which: 0, pos, text: text.to_string() });
    write(store, doc, &Edit::TextDelete { which: 0, pos, len: cut });
}

#[derive(Clone, Debug)]
enum Action {
    Edit {
        device: usize,
        doc: usize,
        edit: Edit,
    },
    /// Typing into `notes` (made first if need be), then deleting `cut` characters from where the typing started
    /// (a stretch of tombstones), each a change.
    Type {
        device: usize,
        doc: usize,
        pos: u16,
        text: String,
        cut: u8,
    },
    /// Several increments of one counter in a row, each a change.
    Count {
        device: usize,
        doc: usize,
        which: u8,
        times: u8,
    },
    Sync {
        a: usize,
        b: usize,
    },
    /// The attester signs its documents' states (in the fleet that compacts).
    Attest,
    /// A device folds every change an attested state holds (in the fleet that compacts).
    Compact {
        device: usize,
    },
    /// Every device acknowledges what it holds now: the next frontier is what all of them hold, for stores that
    /// hold what any of them does (as the cloud computes one from a day's acknowledgements: see
    /// `StableFrontier`).
    Acknowledge,
    /// The attester signs the frontier of the last acknowledgements, and a device keeps it (in the fleet that
    /// compacts): it folds counters under it once it holds what it requires.
    Frontier {
        device: usize,
    },
}

const DEVICES: usize = 3;

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => (0..DEVICES, 0..DOCS.len(), edit()).prop_map(|(device, doc, edit)| Action::Edit { device, doc, edit }),
        2 => (0..DEVICES, 0..DOCS.len(), any::<u8>(), 2u8..6)
            .prop_map(|(device, doc, which, times)| Action::Count { device, doc, which, times }),
        2 => (0..DEVICES, 0..DOCS.len(), any::<u16>(), "[a-z]{3,8}", 2u8..6)
            .prop_map(|(device, doc, pos, text, cut)| Action::Type { device, doc, pos, text, cut }),
        3 => (0..DEVICES, 0..DEVICES).prop_filter("two devices", |(a, b)| a != b).prop_map(|(a, b)| Action::Sync { a, b }),
        2 => Just(Action::Attest),
        3 => (0..DEVICES).prop_map(|device| Action::Compact { device }),
        1 => Just(Action::Acknowledge),
        2 => (0..DEVICES).prop_map(|device| Action::Frontier { device }),
    ]
}

/// The counter contributions (single increments and folded runs) device `d` keeps in its documents.
fn counter_entries(f: &Fleet, d: usize) -> u64 {
    DOCS.iter().filter_map(|id| f.stores[d].document(COLLECTION, id).unwrap()).map(|doc| doc.counter_entries()).sum()
}

/// The sequence items (weighted, tombstones included) device `d`'s documents hold.
fn items(f: &Fleet, d: usize) -> u64 {
    DOCS.iter().filter_map(|id| f.stores[d].document(COLLECTION, id).unwrap()).map(|mut doc| doc.items()).sum()
}

/// Run `actions` in a fleet that attests, compacts and folds under frontiers and in one that does none of it; the
/// devices of both must always agree. Returns how many counter contributions compactions folded away, and how many
/// sequence items (tombstones) they dropped, weighted as `Document::items` counts them.
fn run(authority: &SigningKey, actions: &[Action]) -> (u64, u64) {
    let mut compacted = Fleet::with_attester(authority, DEVICES);
    let mut plain = Fleet::with_attester(authority, DEVICES);
    let attester = enrolment::load(&compacted.stores[ATTESTER]).unwrap().unwrap();
    let mut acknowledged: Option<(shoaldb::Summary, shoaldb::Summary)> = None;
    let (mut folded, mut dropped) = (0, 0);
    for a in actions {
        match a {
            Action::Edit { device, doc, edit } => {
                for fleet in [&compacted, &plain] {
                    fleet.now.fetch_add(1_000, Ordering::SeqCst);
                }
                write(&compacted.stores[*device], *doc, edit);
                write(&plain.stores[*device], *doc, edit);
            }
            Action::Type { device, doc, pos, text, cut } => {
                for fleet in [&compacted, &plain] {
                    fleet.now.fetch_add(1_000, Ordering::SeqCst);
                    type_and_cut(&fleet.stores[*device], *doc, *pos, text, *cut);
                }
            }
            Action::Count { device, doc, which, times } => {
                for _ in 0..*times {
                    for fleet in [&compacted, &plain] {
                        fleet.now.fetch_add(1_000, Ordering::SeqCst);
                        write(&fleet.stores[*device], *doc, &Edit::Increment { which: *which, by: 1 });
                    }
                }
            }
            Action::Sync { a, b } => {
                let refused = compacted.sync(*a, *b);
                assert!(refused.is_empty(), "refused in the fleet that compacts: {refused:?}");
                assert!(plain.sync(*a, *b).is_empty());
                for d in [*a, *b] {
                    assert_eq!(compacted.state(d), plain.state(d), "device {d} differs from the fleet that keeps all");
                }
            }
            Action::Attest => {
                compacted.stores[ATTESTER].attest().unwrap();
            }
            Action::Compact { device } => {
                let before = (counter_entries(&compacted, *device), items(&compacted, *device));
                compacted.stores[*device].compact(&CompactionPolicy::everything()).unwrap();
                folded += before.0 - counter_entries(&compacted, *device);
                dropped += before.1 - items(&compacted, *device);
            }
            Action::Acknowledge => {
                let held: Vec<_> = (0..DEVICES).map(|d| compacted.stores[d].replica().summary().unwrap()).collect();
                let (mut every, mut some) = (held[0].clone(), shoaldb::Summary::new());
                for h in &held {
                    every = every.intersection(h);
                    some.union_with(h);
                }
                acknowledged = Some((every, some));
            }
            Action::Frontier { device } => {
                let Some((stable, required)) = acknowledged.clone() else { continue };
                let frontier = shoaldb::security::StableFrontier::sign(attester.signing_key(), NOW, stable, required);
                let replica = compacted.stores[*device].replica();
                // The attester's chain comes ahead of the frontier it signs.
                let id = attester.signing_key().verifying_key().device_id();
                replica.keep_certificate(id, &attester.chain().encode()).unwrap();
                replica.keep_frontier(&frontier).unwrap();
            }
        }
    }
    // Everyone meets everyone, in a line and back.
    for fleet in [&mut compacted, &mut plain] {
        for (a, b) in [(0, 1), (1, 2), (2, 1), (1, 0)] {
            fleet.sync(a, b);
        }
    }
    for d in 0..DEVICES {
        assert_eq!(compacted.state(d), plain.state(d), "device {d} differs from the fleet that keeps all");
        assert_eq!(compacted.state(d), compacted.state(0), "devices diverged");
    }
    (folded, dropped)
}

/// `before`, then a quiet spell in which everything becomes stable — every device meets the attester, the
/// attester signs, all acknowledge, every device keeps the frontier and compacts — then `after`.
fn settled(mut before: Vec<Action>, after: Vec<Action>) -> Vec<Action> {
    let meet = [(1, ATTESTER), (2, ATTESTER), (1, ATTESTER)].map(|(a, b)| Action::Sync { a, b });
    before.extend(meet.clone());
    before.push(Action::Attest);
    before.extend(meet);
    before.push(Action::Acknowledge);
    before.extend((0..DEVICES).flat_map(|device| [Action::Frontier { device }, Action::Compact { device }]));
    before.extend(after);
    before
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 1000, ..ProptestConfig::default() })]

    #[test]
    fn attested_compaction_never_changes_what_devices_end_with(
        actions in proptest::collection::vec(action(), 1..40),
        after in proptest::collection::vec(action(), 0..12),
    ) {
        run(&SigningKey::from_sources(&Sources::seeded(7)), &settled(actions, after));
    }
}

/// The random runs do fold counters under frontiers (else the property above would show nothing about it): over a
/// few generated runs, some contributions are folded away, and the devices still end as in the fleet that keeps
/// everything.
#[test]
fn the_random_runs_fold_counters_under_frontiers() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let actions = (proptest::collection::vec(action(), 60..80), proptest::collection::vec(action(), 0..12));
    let authority = SigningKey::from_sources(&Sources::seeded(7));
    let runs: Vec<(u64, u64)> = (0..6)
        .map(|_| {
            let (before, after) = actions.new_tree(&mut runner).unwrap().current();
            run(&authority, &settled(before, after))
        })
        .collect();
    assert!(runs.iter().map(|r| r.0).sum::<u64>() > 0, "no run folded a counter");
    assert!(runs.iter().map(|r| r.1).sum::<u64>() > 0, "no run dropped a tombstone");
}

/// Two devices write (a document removed, a field removed, text, a counter), sync through the attester, and
/// compact: nothing signed is folded before the attester signs; after, both fold everything, and a new device that
/// meets only one of them gets the documents — the removed one still removed — from attested states alone.
#[test]
fn signed_changes_are_folded_under_attested_states_and_a_new_device_catches_up_from_them() {
    let authority = SigningKey::generate().unwrap();
    let mut f = Fleet::with_attester(&authority, 4);
    let (a, b, new) = (1, 2, 3);
    f.stores[a].upsert(COLLECTION, json!({"_id": "d0", "title": "plan", "gone": true})).unwrap();
    f.stores[a].upsert(COLLECTION, json!({"_id": "d1", "title": "to remove"})).unwrap();
    f.stores[a].update(COLLECTION, "d0", |ed| Ok(ed.set("notes", Value::Text("hello world".into()))?)).unwrap();
    f.stores[b].upsert(COLLECTION, json!({"_id": "d2", "title": "b's"})).unwrap();
    f.stores[b].update(COLLECTION, "d2", |ed| Ok(ed.set("likes", Value::Counter(3))?)).unwrap();
    for (x, y) in [(a, ATTESTER), (b, ATTESTER), (a, ATTESTER)] {
        assert!(f.sync(x, y).is_empty());
    }
    f.stores[b].update(COLLECTION, "d0", |ed| Ok(ed.remove("gone")?)).unwrap();
    f.stores[b].update(COLLECTION, "d0", |ed| Ok(ed.text_delete("notes", 0, 6)?)).unwrap();
    f.stores[b].remove(COLLECTION, "d1").unwrap();
    for (x, y) in [(b, ATTESTER), (a, ATTESTER)] {
        assert!(f.sync(x, y).is_empty());
    }
    let before = f.logged(a);
    assert!(before >= 8, "a holds every change in its log: {before}");
    assert_eq!(f.stores[a].compact(&CompactionPolicy::everything()).unwrap().changes, 0, "nothing attested yet");

    // Only an attester may attest.
    assert!(matches!(f.stores[a].attest(), Err(Error::NotPermitted { .. })));
    let signed = f.stores[ATTESTER].attest().unwrap();
    assert_eq!(signed.documents, 3);
    assert_eq!(f.stores[ATTESTER].attest().unwrap().documents, 0, "nothing new to sign");
    // a and b ask for them as their next sessions start, and fold their logs.
    for (x, y) in [(a, ATTESTER), (b, ATTESTER)] {
        assert!(f.sync(x, y).is_empty());
    }
    for d in [ATTESTER, a, b] {
        let report = f.stores[d].compact(&CompactionPolicy::everything()).unwrap();
        assert!(report.changes > 0, "device {d} folded nothing");
        assert_eq!(f.logged(d), 0, "device {d} kept changes in its log");
        let stats = f.stores[d].storage_stats().unwrap();
        assert_eq!((stats.log_changes, stats.compacted_documents), (0, 3), "device {d}");
        assert!(stats.attested_bytes > 0, "device {d}: {stats:?}");
    }

    // A new device that meets only a gets everything from attested states, checks them, and takes no removed
    // document or field back.
    assert!(f.sync(new, a).is_empty());
    assert_eq!(f.state(new), f.state(a));
    assert_eq!(f.stores[new].get(COLLECTION, "d1").unwrap(), None);
    let d0 = f.stores[new].get(COLLECTION, "d0").unwrap().unwrap();
    assert_eq!((d0.get("gone"), &d0["notes"]), (None, &json!("world")));
    assert_eq!(f.stores[new].get(COLLECTION, "d2").unwrap().unwrap()["likes"], 3);
    // It can fold and serve them in turn, and its own edits travel as signed changes.
    assert!(f.stores[new].compact(&CompactionPolicy::everything()).unwrap().changes == 0);
    f.stores[new].update(COLLECTION, "d2", |ed| Ok(ed.increment("likes", 1)?)).unwrap();
    assert!(f.sync(new, b).is_empty());
    assert_eq!(f.stores[b].get(COLLECTION, "d2").unwrap().unwrap()["likes"], 4);
}

/// Signing more documents than one transaction of `attest` takes covers them all; a device then folds every one.
#[test]
fn attesting_more_documents_than_one_transaction_takes_covers_them_all() {
    let authority = SigningKey::generate().unwrap();
    let mut f = Fleet::with_attester(&authority, 2);
    let docs = 600;
    f.stores[1]
        .write(|t| {
            for i in 0..docs {
                t.upsert(COLLECTION, json!({"_id": format!("d{i:03}"), "n": i}))?;
            }
            Ok(())
        })
        .unwrap();
    assert!(f.sync(1, ATTESTER).is_empty());
    let signed = f.stores[ATTESTER].attest().unwrap();
    assert_eq!(signed.documents, docs, "{signed:?}");
    assert_eq!(f.stores[ATTESTER].attest().unwrap().documents, 0, "nothing new to sign");
    assert!(f.sync(1, ATTESTER).is_empty());
    let report = f.stores[1].compact(&CompactionPolicy::everything()).unwrap();
    assert_eq!((report.documents, report.changes), (docs, docs), "{report:?}");
    assert_eq!(f.logged(1), 0);
}

/// A device linked to the attester when it signs gets the states at once (no new session needed), and folds.
#[test]
fn states_signed_while_linked_reach_the_linked_devices() {
    let authority = SigningKey::generate().unwrap();
    let mut f = Fleet::with_attester(&authority, 3);
    let (a, relay) = (1, 2);
    f.stores[a].upsert(COLLECTION, json!({"_id": "d0", "n": 1})).unwrap();
    // a – relay – attester, linked throughout.
    let wires = [wires::connect(&mut f.engines, a, relay), wires::connect(&mut f.engines, relay, ATTESTER)];
    wires::settle(&mut f.engines, &wires, None);
    assert_eq!(f.stores[ATTESTER].get(COLLECTION, "d0").unwrap().unwrap()["n"], 1);
    assert_eq!(f.stores[ATTESTER].attest().unwrap().documents, 1);
    f.engines[ATTESTER].note_store_changed();
    wires::settle(&mut f.engines, &wires, None);
    // The relay kept it and passed it on (it holds the changes too, so a can fold).
    for d in [relay, a] {
        f.engines[d].note_store_changed();
    }
    wires::settle(&mut f.engines, &wires, None);
    for d in [a, relay, ATTESTER] {
        assert_eq!(f.stores[d].compact(&CompactionPolicy::everything()).unwrap().changes, 1, "device {d}");
        assert!(f.refusals(d).is_empty());
    }
}

/// A device away while the others edit, remove, attest and compact many times comes back with offline edits and
/// ends exactly where it would have had nobody compacted; the removed document and field stay removed.
#[test]
fn a_device_back_after_many_compactions_merges_its_offline_edits_and_nothing_removed_returns() {
    let authority = SigningKey::generate().unwrap();
    let run = |compact: bool| {
        let mut f = Fleet::with_attester(&authority, 3);
        let (a, away) = (1, 2);
        f.stores[a].upsert(COLLECTION, json!({"_id": "d0", "title": "t", "old": 1})).unwrap();
        f.stores[a].upsert(COLLECTION, json!({"_id": "d1", "title": "doomed"})).unwrap();
        f.stores[a].update(COLLECTION, "d0", |ed| Ok(ed.set("notes", Value::Text("abcdef".into()))?)).unwrap();
        assert!(f.sync(a, ATTESTER).is_empty());
        assert!(f.sync(away, ATTESTER).is_empty());
        // Away: edits of its own, to the document the others will remove and to the field they will remove.
        f.now.fetch_add(1_000, Ordering::SeqCst);
        f.stores[away].update(COLLECTION, "d0", |ed| Ok(ed.text_insert("notes", 3, "XY")?)).unwrap();
        f.stores[away].update(COLLECTION, "d0", |ed| Ok(ed.set("mine", Value::from(7))?)).unwrap();
        // Meanwhile, a month of days: edits, a removal, attestation and compaction each day.
        for day in 0..30u64 {
            f.now.fetch_add(DAY, Ordering::SeqCst);
            match day {
                3 => drop(f.stores[a].remove(COLLECTION, "d1").unwrap()),
                5 => f.stores[a].update(COLLECTION, "d0", |ed| Ok(ed.remove("old")?)).unwrap(),
                _ => f.stores[a].update(COLLECTION, "d0", |ed| Ok(ed.set("day", Value::from(day as i64))?)).unwrap(),
            }
            assert!(f.sync(a, ATTESTER).is_empty());
            if compact {
                f.stores[ATTESTER].attest().unwrap();
                assert!(f.sync(a, ATTESTER).is_empty());
                for d in [a, ATTESTER] {
                    f.stores[d].compact(&CompactionPolicy::everything()).unwrap();
                }
            }
        }
        if compact {
            assert_eq!(f.logged(a), 0, "a folded everything");
        }
        assert!(f.sync(away, a).is_empty());
        assert!(f.sync(away, ATTESTER).is_empty());
        assert!(f.sync(a, ATTESTER).is_empty());
        (0..3).map(|d| f.state(d)).collect::<Vec<_>>()
    };
    let (compacted, plain) = (run(true), run(false));
    assert_eq!(compacted, plain, "compaction changed what the devices end with");
    for state in &compacted {
        assert_eq!(state, &compacted[0], "devices diverged");
        let d0 = state[0].0.as_ref().unwrap();
        assert_eq!((&d0["notes"], &d0["mine"], d0.get("old")), (&json!("abcXYdef"), &json!(7), None));
        assert_eq!(state[1].0, None, "the removed document came back");
    }
}

/// The attested state of `d0` the attester keeps (after signing its documents).
fn attested_d0(f: &Fleet) -> AttestedState {
    let everything = f.stores[ATTESTER].replica().summary().unwrap();
    let states = f.stores[ATTESTER].replica().attested_states_wanted(&everything, 0, usize::MAX).unwrap();
    states.into_iter().map(|(_, s)| s).find(|s| s.state.doc_id == "d0").expect("d0 attested")
}

/// Device `d`'s certificate chain, encoded.
fn chain_of(f: &Fleet, d: usize) -> Vec<u8> {
    enrolment::load(&f.stores[d]).unwrap().unwrap().chain().encode()
}

/// A device that lacks the changes of `d0` is sent `chain` (a certificate chain) and then `states` directly, as a
/// peer would: what it refuses, and whether it took `d0`.
fn offer(
    f: &mut Fleet,
    to: usize,
    from: usize,
    chain: Option<Vec<u8>>,
    states: Vec<AttestedState>,
) -> (Vec<Refused>, bool) {
    let (x, lx, y, ly) = wires::connect(&mut f.engines, from, to);
    wires::settle(&mut f.engines, &[(x, lx, y, ly)], None);
    if let Some(chain) = chain {
        f.engines[from].send_raw(lx, &Message::Certificates { chains: vec![chain] }.encode()).unwrap();
    }
    f.engines[from].send_raw(lx, &Message::AttestedStates { states }.encode()).unwrap();
    wires::settle(&mut f.engines, &[(x, lx, y, ly)], None);
    let refused = f.refusals(to);
    let took = f.stores[to].get(COLLECTION, "d0").unwrap().is_some();
    f.engines[from].remove_link(lx, "parted");
    f.engines[to].remove_link(ly, "parted");
    (refused, took)
}

/// Device 1 writes; the attester (`attest c` only) signs. Devices 2 and 3 never met either: 3 offers 2 states,
/// some forged.
fn fleet_for_forgeries(authority: &SigningKey) -> Fleet {
    let mut f = Fleet::new(authority, 4, |i| match i {
        ATTESTER => vec![Grant::read("*"), Grant::write("*"), Grant::attest(COLLECTION)],
        _ => vec![Grant::read("*"), Grant::write("*")],
    });
    f.stores[1].upsert(COLLECTION, json!({"_id": "d0", "title": "real"})).unwrap();
    assert!(f.sync(1, ATTESTER).is_empty());
    assert_eq!(f.stores[ATTESTER].attest().unwrap().documents, 1);
    f
}

#[test]
fn states_signed_without_the_grant_or_altered_are_refused_alone() {
    let authority = SigningKey::generate().unwrap();
    let mut f = fleet_for_forgeries(&authority);
    let (target, forger) = (2, 3);
    let real = attested_d0(&f);

    // Altered after it was signed: a byte of the state, or the document it is said to be.
    let mut altered = real.clone();
    let last = altered.state.state.len() - 1;
    altered.state.state[last] ^= 1;
    let mut elsewhere = real.clone();
    elsewhere.state.doc_id = "d1".into();
    let chain = chain_of(&f, ATTESTER);
    let (refused, took) = offer(&mut f, target, forger, Some(chain), vec![altered, elsewhere]);
    assert!(!took && f.stores[target].get(COLLECTION, "d1").unwrap().is_none());
    assert_eq!(refused.iter().filter(|r| r.reason == RefusalReason::BadSignature).count(), 2, "{refused:?}");

    // Signed by a device whose certificate has no attest grant (the forger's own key).
    let forger_key = enrolment::load(&f.stores[forger]).unwrap().unwrap().signing_key().clone();
    let by_forger = AttestedState { attestation: Attestation::sign(&forger_key, &real.state), ..real.clone() };
    let (refused, took) = offer(&mut f, target, forger, None, vec![by_forger]);
    assert!(!took, "a state signed without the grant was taken");
    assert!(
        refused.iter().any(|r| matches!(&r.reason, RefusalReason::NotPermitted(s) if s.contains("attesting"))),
        "{refused:?}"
    );

    // The real one, sent the same way, is taken: the link stayed usable, and nothing refused before counted.
    let (refused, took) = offer(&mut f, target, forger, None, vec![real]);
    assert!(refused.is_empty() && took, "{refused:?}");
    assert_eq!(f.stores[target].get(COLLECTION, "d0").unwrap().unwrap()["title"], "real");
}

#[test]
fn a_revoked_attesters_states_and_states_holding_a_revoked_authors_changes_are_refused() {
    let authority = SigningKey::generate().unwrap();
    for revoked in ["attester", "author"] {
        let mut f = fleet_for_forgeries(&authority);
        let (target, relay) = (2, 3);
        let real = attested_d0(&f);
        let entry = match revoked {
            "attester" => Revocation::Device {
                signing_key: enrolment::load(&f.stores[ATTESTER]).unwrap().unwrap().signing_key().verifying_key(),
            },
            _ => {
                let author = real.state.changes.peers().next().unwrap().0;
                Revocation::Author { author, accept_until: Some(0) }
            }
        };
        // The target learns the attester's chain first (a revoked chain is not even learnt), then the revocation.
        let chain = chain_of(&f, ATTESTER);
        let (refused, _) = offer(&mut f, target, relay, Some(chain), vec![]);
        assert!(refused.is_empty());
        let list = enrolment::revoke(&authority, 1, NOW, vec![entry]).unwrap();
        f.engines[target].add_revocations(list).unwrap();
        let (refused, took) = offer(&mut f, target, relay, None, vec![real]);
        assert!(!took, "{revoked}: the state was taken");
        assert!(refused.iter().any(|r| matches!(r.reason, RefusalReason::Revoked(_))), "{revoked}: {refused:?}");
    }
}

/// A message of more states than a receiver checks in one go closes that link, before any is checked or merged.
#[test]
fn a_message_of_too_many_states_closes_only_its_link() {
    let authority = SigningKey::generate().unwrap();
    let mut f = fleet_for_forgeries(&authority);
    let (target, sender) = (2, 3);
    let real = attested_d0(&f);
    let many = vec![real; shoaldb::sync::wire::MAX_STATES_PER_MESSAGE + 1];
    let other = wires::connect(&mut f.engines, 1, target);
    let (x, lx, y, ly) = wires::connect(&mut f.engines, sender, target);
    wires::settle(&mut f.engines, &[other, (x, lx, y, ly)], None);
    f.engines[sender].send_raw(lx, &Message::AttestedStates { states: many }.encode()).unwrap();
    wires::settle(&mut f.engines, &[other, (x, lx, y, ly)], None);
    assert!(f.engines[target].is_closed(ly), "the link stayed open");
    assert!(!f.engines[target].is_closed(other.3), "another link closed too");
    assert!(f.refusals(target).is_empty(), "states were checked");
    // It took d0 through its other link (from device 1, in changes), not from the message.
    let summary = f.stores[target].replica().summary().unwrap();
    assert!(f.stores[1].replica().summary().unwrap().difference(&summary).is_empty());
}

#[test]
fn grants_to_attest_name_a_collection_and_nothing_else() {
    assert_eq!(Grant::parse("attest tasks").unwrap(), Grant::attest("tasks"));
    assert_eq!(Grant::attest("*").to_string(), "attest *");
    assert!(Grant::parse("attest tasks where done == true").is_err());
    assert!(Grant::parse("attest tasks fields title").is_err());
}

/// Tick the two engines of `wire` through a minute and a bit from `clock` (engine time, which it moves on), in
/// steps of 5 s (keepalives keep the link up), moving frames.
fn minute(f: &mut Fleet, wire: (usize, shoaldb::sync::LinkId, usize, shoaldb::sync::LinkId), clock: &mut u64) {
    for _ in 0..13 {
        *clock += 5_000;
        f.engines[wire.0].tick(*clock);
        f.engines[wire.2].tick(*clock);
        wires::settle(&mut f.engines, &[wire], None);
    }
}

/// The stable frontier travels (issue 17): one the attester keeps reaches a linked device at its next recheck (and
/// any device at link-up), and from there every device that device meets; one signed without the grant, or altered, is not taken, and the link
/// stays up.
#[test]
fn a_stable_frontier_travels_from_the_attester_and_only_signed_ones_are_taken() {
    use shoaldb::security::StableFrontier;
    let authority = SigningKey::generate().unwrap();
    let mut f = Fleet::with_attester(&authority, 3);
    f.stores[1].upsert(COLLECTION, json!({"_id": "d0", "n": 1})).unwrap();
    assert!(f.sync(1, ATTESTER).is_empty());
    let key = |f: &Fleet, d: usize| enrolment::load(&f.stores[d]).unwrap().unwrap().signing_key().clone();
    let kept = |f: &Fleet, d: usize| f.stores[d].replica().stable_frontier().unwrap();
    let held = f.stores[ATTESTER].replica().summary().unwrap();
    let frontier = StableFrontier::sign(&key(&f, ATTESTER), NOW, held.clone(), held.clone());
    // Kept beside the attester's engine while a link is up (as a relay's hourly signing does): its next recheck
    // sends it.
    let wire = wires::connect(&mut f.engines, ATTESTER, 1);
    wires::settle(&mut f.engines, &[wire], None);
    assert!(f.stores[ATTESTER].replica().keep_frontier(&frontier).unwrap());
    wires::settle(&mut f.engines, &[wire], None);
    assert_eq!(kept(&f, 1), None, "sent before the recheck");
    // A minute on, both ticking (keepalives keep the link up), the attester's recheck finds it.
    let mut clock = 0;
    minute(&mut f, wire, &mut clock);
    assert!(!f.engines[1].is_closed(wire.3));
    assert_eq!(kept(&f, 1), Some(frontier.clone()));
    f.engines[ATTESTER].remove_link(wire.1, "parted");
    f.engines[1].remove_link(wire.3, "parted");
    // Device 1 passes it on as it meets device 2 (with the attester's chain ahead of it).
    assert!(f.sync(1, 2).is_empty());
    assert_eq!(kept(&f, 2), Some(frontier.clone()));
    // Newer ones kept beside device 2's engine, sent at its next recheck: one no attester signed and one altered
    // are not taken by device 1, whose link stays up; a newer one the attester signed is.
    let by_device = StableFrontier::sign(&key(&f, 2), NOW + 1, held.clone(), held.clone());
    let mut altered = frontier.clone();
    altered.until_ms = NOW + 2;
    let newer = StableFrontier::sign(&key(&f, ATTESTER), NOW + 3, held.clone(), held.clone());
    f.engines[2].tick(clock);
    let wire = wires::connect(&mut f.engines, 1, 2);
    wires::settle(&mut f.engines, &[wire], None);
    for sent in [by_device, altered, newer.clone()] {
        f.stores[2].replica().keep_frontier(&sent).unwrap();
        minute(&mut f, wire, &mut clock);
        assert!(!f.engines[1].is_closed(wire.1));
        let expected = if sent == newer { &newer } else { &frontier };
        assert_eq!(kept(&f, 1).as_ref(), Some(expected), "{sent:?}");
    }
    // An older one is not taken over a newer.
    let older = StableFrontier::sign(&key(&f, ATTESTER), NOW - 1, held.clone(), held);
    assert!(!f.stores[1].replica().keep_frontier(&older).unwrap());
}

/// A store folds counters under a kept stable frontier (issue 17) only once it holds every change the frontier
/// requires, and only in the collections its attester may attest — and what it shows never changes. The frontier
/// here is what all three devices held after device 2 removed a counter that had seen only half of device 1's
/// increments, but device 1 had not received that removal yet: folded then, it would keep all the increments the
/// removal took (shown below on a copy), and differ for ever from device 2.
#[test]
fn a_store_folds_counters_under_a_frontier_only_when_it_holds_what_the_frontier_requires() {
    use shoaldb::security::StableFrontier;
    const OTHER: &str = "other";
    let authority = SigningKey::generate().unwrap();
    let mut f = Fleet::new(&authority, 3, |i| match i {
        ATTESTER => vec![Grant::read("*"), Grant::write("*"), Grant::attest(COLLECTION)],
        _ => vec![Grant::read("*"), Grant::write("*")],
    });
    let bump = |f: &Fleet, d: usize, collection: &str, field: &str, times: usize| {
        for _ in 0..times {
            f.stores[d].update(collection, "d0", |ed| Ok(ed.increment(field, 1)?)).unwrap();
        }
    };
    let entries = |f: &Fleet, d: usize, collection: &str| {
        f.stores[d].document(collection, "d0").unwrap().unwrap().counter_entries()
    };
    let value =
        |f: &Fleet, d: usize, field: &str| f.stores[d].get(COLLECTION, "d0").unwrap().unwrap()[field].as_i64().unwrap();
    // Device 1 counts 15 on `m`, both count on `n`; device 2 sees them, then removes `m` (it saw 15 of them).
    for collection in [COLLECTION, OTHER] {
        f.stores[1].upsert(collection, json!({"_id": "d0"})).unwrap();
    }
    bump(&f, 1, COLLECTION, "m", 15);
    bump(&f, 1, COLLECTION, "n", 10);
    bump(&f, 1, OTHER, "n", 40);
    assert!(f.sync(1, 2).is_empty());
    bump(&f, 2, COLLECTION, "n", 10);
    f.stores[2].update(COLLECTION, "d0", |ed| Ok(ed.remove("m")?)).unwrap();
    // Device 1 counts 15 more on `m`; the attester signs states holding all of it, before the removal reaches it.
    bump(&f, 1, COLLECTION, "m", 15);
    assert!(f.sync(1, ATTESTER).is_empty());
    f.stores[ATTESTER].attest().unwrap();
    assert!(f.sync(1, ATTESTER).is_empty());
    // Device 2 and the attester meet: both hold everything; device 1 lacks only the removal.
    assert!(f.sync(2, ATTESTER).is_empty());
    let summaries: Vec<_> = (0..3).map(|d| f.stores[d].replica().summary().unwrap()).collect();
    let stable = summaries[0].intersection(&summaries[1]).intersection(&summaries[2]);
    let signing = enrolment::load(&f.stores[ATTESTER]).unwrap().unwrap().signing_key().clone();
    let frontier = StableFrontier::sign(&signing, NOW, stable, summaries[ATTESTER].clone());
    assert!(f.stores[1].replica().keep_frontier(&frontier).unwrap());
    let before = (entries(&f, 1, COLLECTION), entries(&f, 1, OTHER));
    assert_eq!(before, (15 + 15 + 10, 40));
    // Compacted now, device 1 folds changes (the attested states hold them) but no counter: it lacks a change the
    // frontier requires.
    assert!(f.stores[1].compact(&CompactionPolicy::everything()).unwrap().changes > 0);
    assert_eq!((entries(&f, 1, COLLECTION), entries(&f, 1, OTHER)), before);
    // Why: folded now, its `m` would be one run that the removal (which saw only its first half) leaves whole.
    let mut early = f.stores[1].document(COLLECTION, "d0").unwrap().unwrap();
    early.collect_stable(&frontier.stable_version());
    early.join(&f.stores[2].document(COLLECTION, "d0").unwrap().unwrap()).unwrap();
    assert_eq!(early.to_json().unwrap()["m"], json!(30), "folded too early, the removal takes nothing");
    assert_eq!(value(&f, 2, "m"), 15);
    // Once it holds the removal (and an attested state holding it), device 1 folds: `m` keeps one run, and so do
    // device 1's increments of `n` (device 2's are not in the frontier: device 1 lacked them); the other
    // collection, which the attester may not attest, keeps every increment.
    assert!(f.sync(1, 2).is_empty());
    f.stores[ATTESTER].attest().unwrap();
    assert!(f.sync(1, ATTESTER).is_empty());
    assert!(f.stores[1].compact(&CompactionPolicy::everything()).unwrap().changes > 0);
    assert_eq!((entries(&f, 1, COLLECTION), entries(&f, 1, OTHER)), (1 + 1 + 10, 40));
    assert_eq!((value(&f, 1, "m"), value(&f, 1, "n")), (15, 20));
    assert_eq!(f.stores[1].get(COLLECTION, "d0").unwrap(), f.stores[2].get(COLLECTION, "d0").unwrap());
    // Devices that did not fold merge with it and it with them as before: all three agree after more edits.
    bump(&f, 2, COLLECTION, "m", 3);
    bump(&f, 1, COLLECTION, "n", 1);
    assert!(f.sync(1, 2).is_empty());
    assert!(f.sync(2, ATTESTER).is_empty());
    assert!(f.sync(1, ATTESTER).is_empty());
    let views: Vec<_> = (0..3).map(|d| f.stores[d].get(COLLECTION, "d0").unwrap()).collect();
    assert!(views.iter().all(|v| v == &views[0]), "{views:?}");
    assert_eq!((value(&f, 0, "m"), value(&f, 0, "n")), (18, 21));
}

/// Under a frontier covering a deletion, a store drops the tombstones no later insert can name — all but the first of
/// each stretch of deleted text and removed array elements — and keeps those of deletions the frontier does not
/// cover: an insert made by a device that has not seen such a deletion names the deleted items as its origins.
/// Devices that kept everything and the one that dropped go on editing and merge alike.
#[test]
fn a_store_drops_settled_tombstones_and_keeps_those_of_deletions_not_yet_stable() {
    use shoaldb::security::StableFrontier;
    let authority = SigningKey::generate().unwrap();
    let mut f = Fleet::with_attester(&authority, 3);
    let text = |f: &Fleet, d: usize| f.stores[d].get(COLLECTION, "d0").unwrap().unwrap()["notes"].clone();
    let tombstones = |f: &Fleet, d: usize| f.stores[d].document(COLLECTION, "d0").unwrap().unwrap().tombstones();
    let sync_all = |f: &mut Fleet| {
        for (x, y) in [(1, ATTESTER), (2, ATTESTER), (1, ATTESTER), (1, 2)] {
            assert!(f.sync(x, y).is_empty());
        }
    };
    let list = Value::Array((1..=6).map(|i| Value::from_json(&json!(i))).collect());
    f.stores[1].upsert(COLLECTION, json!({"_id": "d0"})).unwrap();
    f.stores[1]
        .update(COLLECTION, "d0", |ed| {
            ed.set("notes", Value::Text("hello wonderful world".into()))?;
            Ok(ed.set("list", list.clone())?)
        })
        .unwrap();
    sync_all(&mut f);
    // Device 2 deletes "wonderful " and three list items; everyone holds it.
    f.stores[2].update(COLLECTION, "d0", |ed| Ok(ed.text_delete("notes", 6, 10)?)).unwrap();
    f.stores[2].update(COLLECTION, "d0", |ed| Ok(ed.array_delete("list", 1, 3)?)).unwrap();
    sync_all(&mut f);
    let summaries: Vec<_> = (0..3).map(|d| f.stores[d].replica().summary().unwrap()).collect();
    let stable = summaries[0].intersection(&summaries[1]).intersection(&summaries[2]);
    // Device 1 then deletes "world" (not in the frontier), and sends it to no one yet.
    f.stores[1].update(COLLECTION, "d0", |ed| Ok(ed.text_delete("notes", 6, 5)?)).unwrap();
    f.stores[ATTESTER].attest().unwrap();
    assert!(f.sync(2, ATTESTER).is_empty());
    let signing = enrolment::load(&f.stores[ATTESTER]).unwrap().unwrap().signing_key().clone();
    let frontier = StableFrontier::sign(&signing, NOW, stable.clone(), stable);
    assert!(f.stores[1].replica().keep_frontier(&frontier).unwrap());
    assert_eq!(tombstones(&f, 1), 10 + 3 + 5);
    // The second attested state covers device 2's deletions; device 1 compacts under the frontier.
    assert!(f.sync(1, ATTESTER).is_empty());
    f.stores[1].compact(&CompactionPolicy::everything()).unwrap();
    // Of "wonderful " the first character stays (an insert right after "hello " names it), as does the first of
    // the three list items; "world", deleted by a change the frontier does not cover, stays whole.
    assert_eq!(tombstones(&f, 1), 1 + 1 + 5);
    assert_eq!(text(&f, 1), json!("hello "));
    // Device 2 has not seen "world" go: it types after "wor" and before it, and after "hello ".
    f.stores[2].update(COLLECTION, "d0", |ed| Ok(ed.text_insert("notes", 9, "k")?)).unwrap();
    f.stores[2].update(COLLECTION, "d0", |ed| Ok(ed.text_insert("notes", 6, "big ")?)).unwrap();
    f.stores[2].update(COLLECTION, "d0", |ed| Ok(ed.array_insert("list", 1, &[Value::from_json(&json!(9))])?)).unwrap();
    f.stores[1].update(COLLECTION, "d0", |ed| Ok(ed.text_insert("notes", 6, "new ")?)).unwrap();
    sync_all(&mut f);
    sync_all(&mut f);
    let views: Vec<_> = (0..3).map(|d| f.stores[d].get(COLLECTION, "d0").unwrap().unwrap()).collect();
    assert!(views.iter().all(|v| v == &views[0]), "{views:?}");
    let shown = views[0]["notes"].as_str().unwrap().to_string();
    assert!(shown == "hello new big k" || shown == "hello big new k", "{shown}");
    assert_eq!(views[0]["list"], json!([1, 9, 5, 6]));
}
