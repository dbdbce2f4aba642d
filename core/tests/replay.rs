//! A simulated run is a function of its seed: two runs of the same scenario with the same seed produce the same
//! event log (every engine event of every device, with its virtual time), the same bytes on the wire (encrypted
//! handshakes included: the engines' ephemeral keys come from the seed too) and byte-identical store files — in both
//! simulated worlds, with concurrent writes (whose winners depend on the stores' clocks), generated document ids,
//! restarts, partitions and phones that move. Stores get the world's virtual clock and a stream of its seed
//! (`Options::sources`); nothing else of a run may depend on the machine, the wall clock or the OS's randomness.

#[path = "common/edits.rs"]
mod edits;
#[path = "common/random_edits.rs"]
mod random_edits;
#[path = "common/seeds.rs"]
mod seed_runs;

use random_edits::{apply_edit, draw_edit};
use seed_runs::seeds;
use serde_json::json;
use shoaldb::sim::mesh::DeviceId;
use shoaldb::sim::radio::PhoneId;
use shoaldb::sim::{LinkParams, RadioWorld, SimWorld, World, MILLISECOND, SECOND};
use shoaldb::sync::Subscription;
use shoaldb::Store;

const COLLECTIONS: [&str; 2] = ["tasks", "notes"];

/// What a run leaves: its event log, and the BLAKE3 hash of each store's file (after a checkpoint, so that the
/// file holds everything).
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    log: Vec<String>,
    files: Vec<String>,
    /// Every frame or packet delivered (the simulators' wire digest).
    wire: String,
}

fn file_hash(store: &Store) -> String {
    store.checkpoint().expect("checkpoint");
    let bytes = std::fs::read(store.path()).expect("reading the store file");
    blake3::hash(&bytes).to_hex().to_string()
}

/// Edits every device of `on` makes at the same virtual instant: concurrent writes to one register (the winner is
/// decided by the stores' clocks and ids), a new document with a generated id, a counter.
fn concurrent_edits(store: &Store, who: usize) {
    store
        .update("notes", "shared", |d| {
            d.set("title", format!("from {who}"))?;
            d.increment("edits", 1)?;
            Ok(())
        })
        .or_else(|_| store.upsert("notes", json!({"_id": "shared", "title": format!("from {who}")})).map(|_| ()))
        .expect("a concurrent write");
    store.upsert("tasks", json!({"title": format!("task of {who}"), "done": false})).expect("a generated id");
}

fn radio_run(seed: u64) -> Outcome {
    let mut w = RadioWorld::new(seed);
    let all = || vec![Subscription::everything()];
    let phones: Vec<PhoneId> = (0..4).map(|i| w.add_phone(&format!("p{i}"), 18.0 * i as f64, 0.0, all())).collect();
    w.run_for(2 * SECOND);
    for &p in &phones {
        w.edit(p, |s| concurrent_edits(s, p));
    }
    w.walk_to(3, 150.0, 0.0, 12.0);
    for _ in 0..30 {
        let p = *w.rng().pick(&phones);
        let e = draw_edit(w.rng(), &COLLECTIONS);
        w.edit(p, |s| apply_edit(s, &e));
        let dt = w.rng().below(400 * MILLISECOND);
        w.run_for(dt);
    }
    w.walk_to(3, 40.0, 0.0, 12.0);
    w.run_for(30 * SECOND);
    let _ = w.run_until_quiet(60 * SECOND);
    let mut log = Vec::new();
    for &p in &phones {
        log.extend(w.take_events(p).into_iter().map(|(t, e)| format!("{t} p{p} {e:?}")));
    }
    log.push(format!("{:?} events {}", w.total_stats(), w.events_processed()));
    let files = phones.iter().map(|&p| file_hash(w.store(p))).collect();
    Outcome { log, files, wire: w.wire_digest() }
}

fn mesh_run(seed: u64) -> Outcome {
    let mut w = SimWorld::new(seed);
    let all = || vec![Subscription::everything()];
    let devices: Vec<DeviceId> = (0..4).map(|i| w.add_device(&format!("d{i}"), all())).collect();
    for pair in devices.windows(2) {
        w.link(pair[0], pair[1], LinkParams::ble().with_loss(0.02));
    }
    w.link(0, 3, LinkParams::lan());
    for &d in &devices {
        w.edit(d, |s| concurrent_edits(s, d));
    }
    w.partition(&[vec![0, 1], vec![2, 3]]);
    for i in 0..30 {
        let d = *w.rng().pick(&devices);
        let e = draw_edit(w.rng(), &COLLECTIONS);
        w.edit(d, |s| apply_edit(s, &e));
        if i == 15 {
            w.restart(2);
        }
        let dt = w.rng().below(50 * MILLISECOND);
        w.run_for(dt);
    }
    w.heal();
    let _ = w.run_until_quiet(60 * SECOND);
    let mut log = Vec::new();
    for &d in &devices {
        log.extend(w.take_events(d).into_iter().map(|(t, e)| format!("{t} d{d} {e:?}")));
    }
    log.push(format!("{:?} events {}", w.total_stats(), w.events_processed()));
    let files = devices.iter().map(|&d| file_hash(w.store(d))).collect();
    Outcome { log, files, wire: w.wire_digest() }
}

fn assert_replays(name: &str, run: fn(u64) -> Outcome) {
    let mut previous: Option<Outcome> = None;
    for seed in seeds(name, 2) {
        let (a, b) = (run(seed), run(seed));
        assert!(a.log.len() > 10, "{name}: the scenario did little: {:?}", a.log);
        assert_eq!(a.log, b.log, "{name}, seed {seed}: the event logs differ");
        assert_eq!(a.files, b.files, "{name}, seed {seed}: the store files differ");
        assert_eq!(a.wire, b.wire, "{name}, seed {seed}: the bytes on the wire differ");
        // The hashes say something: another seed (other ids, other timings) gives other files.
        if let Some(p) = previous {
            assert_ne!(p.files, a.files, "{name}: two seeds gave identical files");
        }
        previous = Some(a);
    }
}

#[test]
fn a_radio_world_replays_byte_for_byte() {
    assert_replays("a_radio_world_replays_byte_for_byte", radio_run);
}

#[test]
fn a_mesh_replays_byte_for_byte() {
    assert_replays("a_mesh_replays_byte_for_byte", mesh_run);
}
