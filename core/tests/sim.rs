//! Deterministic simulation tests: meshes of real stores and sync engines on simulated links (latency, bandwidth,
//! MTU, loss), with partitions, heals and random edits, on a virtual clock (see `shoaldb::sim::mesh`).
//!
//! Every run prints its seed. Environment:
//! - `SHOAL_SIM_SEED=N` runs only that seed (decimal or `0x…`), to reproduce a failure;
//! - `SHOAL_SIM_SEEDS=N` runs N seeds per test (default 3);
//! - `SHOAL_SIM_SEED_BASE=N` shifts the seeds tried, to explore new ones;
//! - `SHOAL_SIM_HEAVY=1` uses larger sizes (longer runs, more data);
//! - `SHOAL_SIM_LOSS=0.3` sets the packet loss of lossy links (default 0.05).

#[path = "common/edits.rs"]
mod edits;
#[path = "common/random_edits.rs"]
mod random_edits;

use serde_json::{json, Value as Json};
use shoaldb::sim::mesh::DeviceId;
use shoaldb::sim::pipe::BACKLOG_LIMIT;
use shoaldb::sim::{LinkParams, SimWorld, World, MILLISECOND, SECOND};
use shoaldb::store::Replica;
use shoaldb::sync::wire::BATCH_BYTES;
use shoaldb::sync::{EngineEvent, Subscription, WINDOW};
use shoaldb::transport::frame::MAX_FRAME_LEN;
use shoaldb::util::rng::SeededRng;
use shoaldb::{Query, Store};
use std::collections::{BTreeMap, BTreeSet};

#[path = "common/seeds.rs"]
mod seed_runs;
use random_edits::{apply_edit, doc_id, draw_edit, Edit, EditKind, DOC_IDS};
use seed_runs::{for_each_seed, heavy};

// ---- random edits ----

/// The collections the chaos tests edit (each scenario may pass fewer to `draw_edit`).
const COLLECTIONS: [&str; 3] = ["tasks", "notes", "chat"];

// ---- comparing devices ----

/// Paths whose concurrent values are compared between devices.
const CONFLICT_PATHS: [&str; 6] = ["title", "done", "m", "m.a", "likes", "m.items"];

type DocState = (Option<serde_json::Map<String, Json>>, Vec<Vec<Json>>, String);

/// A document's full CRDT state as far as it can be compared: its view, the concurrent values at a few paths and
/// its version vector.
fn doc_state(store: &Store, c: &str, id: &str) -> Option<DocState> {
    let doc = store.document(c, id).expect("document")?;
    let conflicts = CONFLICT_PATHS.iter().map(|p| doc.conflicts(*p).expect("conflicts")).collect();
    Some((doc.to_json(), conflicts, format!("{:?}", doc.version())))
}

fn by_id(docs: Vec<Json>) -> BTreeMap<String, Json> {
    docs.into_iter().map(|d| (d["_id"].as_str().expect("_id").to_string(), d)).collect()
}

/// `a` and `b` hold the same documents of `c`, down to their CRDT state.
fn assert_same_collection(w: &SimWorld, a: DeviceId, b: DeviceId, c: &str) {
    let (sa, sb) = (w.store(a), w.store(b));
    assert_eq!(sa.list(c).unwrap(), sb.list(c).unwrap(), "{} and {} differ on collection {c}", w.name(a), w.name(b));
    for i in 0..DOC_IDS as u64 {
        let id = doc_id(i);
        assert_eq!(doc_state(sa, c, &id), doc_state(sb, c, &id), "{} and {} differ on {c}/{id}", w.name(a), w.name(b));
    }
}

fn is_everything(subs: &[Subscription]) -> bool {
    subs.contains(&Subscription::everything())
}

/// Every pair of devices with the same subscriptions holds the same data; devices subscribed to whole collections
/// hold them exactly as a device subscribed to everything does.
fn assert_converged(w: &SimWorld, subs: &[Vec<Subscription>]) {
    let n = subs.len();
    for d in 0..n {
        w.store(d).check_integrity().expect("the database is intact");
    }
    let full: Vec<DeviceId> = (0..n).filter(|d| is_everything(&subs[*d])).collect();
    for a in 0..n {
        for b in a + 1..n {
            if subs[a] != subs[b] {
                continue;
            }
            if is_everything(&subs[a]) {
                assert_eq!(
                    w.store(a).replica().summary().unwrap(),
                    w.store(b).replica().summary().unwrap(),
                    "{} and {} hold different changes",
                    w.name(a),
                    w.name(b)
                );
                for c in COLLECTIONS {
                    assert_same_collection(w, a, b, c);
                }
            } else {
                for s in &subs[a] {
                    let c = s.collection.as_deref().expect("a collection");
                    match &s.filter {
                        None => assert_same_collection(w, a, b, c),
                        Some(f) => {
                            let q = Query::filter(f).unwrap();
                            assert_eq!(
                                w.store(a).find(c, &q).unwrap(),
                                w.store(b).find(c, &q).unwrap(),
                                "{} and {} differ on {c}:{f}",
                                w.name(a),
                                w.name(b)
                            );
                        }
                    }
                }
            }
        }
    }
    if let Some(&reference) = full.first() {
        for (d, sub) in subs.iter().enumerate() {
            for s in sub {
                if let (Some(c), None) = (&s.collection, &s.filter) {
                    assert_same_collection(w, reference, d, c);
                }
            }
        }
    }
}

fn report(w: &SimWorld, label: &str) {
    let t = w.total_stats();
    eprintln!(
        "  {label}: t={:.3}s virtual, {} events, {} frames / {} bytes sent, {} packets ({} lost), {} frames dropped with links",
        w.now() as f64 / SECOND as f64,
        w.events_processed(),
        t.frames_sent,
        t.bytes_sent,
        t.packets,
        t.packets_lost,
        t.frames_dropped
    );
}

// ---- topologies ----

/// The loss rate of lossy links: `SHOAL_SIM_LOSS` (a fraction), 0.05 by default.
fn lossy() -> f64 {
    std::env::var("SHOAL_SIM_LOSS").ok().and_then(|v| v.parse().ok()).unwrap_or(0.05)
}

/// A random link: fast or slow, clean or lossy.
fn random_params(rng: &mut SeededRng) -> LinkParams {
    let base = if rng.chance(0.5) { LinkParams::lan() } else { LinkParams::ble() };
    if rng.chance(0.5) {
        base.with_loss(lossy())
    } else {
        base
    }
}

fn line(n: usize) -> Vec<(DeviceId, DeviceId)> {
    (1..n).map(|i| (i - 1, i)).collect()
}

fn star(n: usize) -> Vec<(DeviceId, DeviceId)> {
    (1..n).map(|i| (0, i)).collect()
}

/// A random spanning tree plus a few more edges.
fn random_connected(rng: &mut SeededRng, n: usize) -> Vec<(DeviceId, DeviceId)> {
    let mut order: Vec<DeviceId> = (0..n).collect();
    rng.shuffle(&mut order);
    let mut edges = BTreeSet::new();
    for i in 1..n {
        let parent = order[rng.index(i)];
        let (a, b) = (parent.min(order[i]), parent.max(order[i]));
        edges.insert((a, b));
    }
    for _ in 0..rng.below(n as u64) {
        let (a, b) = (rng.index(n), rng.index(n));
        if a != b {
            edges.insert((a.min(b), a.max(b)));
        }
    }
    edges.into_iter().collect()
}

/// Random edits on random devices, random partitions and heals, links dropped and restored; then everything healed
/// and run until quiet.
/// With `resubscribe` non-empty, devices other than the first sometimes change their subscriptions to one of those
/// (and `subs` ends up holding the final ones).
fn chaos(
    w: &mut SimWorld,
    subs: &mut [Vec<Subscription>],
    edges: &[(DeviceId, DeviceId)],
    steps: usize,
    collections: &[&'static str],
    resubscribe: &[Vec<Subscription>],
) {
    let n = subs.len();
    let params: Vec<LinkParams> = edges.iter().map(|_| random_params(w.rng())).collect();
    for (&(a, b), p) in edges.iter().zip(&params) {
        w.link(a, b, *p);
    }
    let (mut edits, mut committed, mut partitions, mut restarts) = (0, 0, 0, 0);
    for _ in 0..steps {
        match w.rng().below(100) {
            0..=64 => {
                let d = w.rng().index(n);
                let e = draw_edit(w.rng(), collections);
                edits += 1;
                committed += w.edit(d, |s| apply_edit(s, &e)) as usize;
            }
            65..=71 => {
                let k = w.rng().range(2, 4) as usize;
                let mut groups = vec![Vec::new(); k];
                for d in 0..n {
                    let g = w.rng().index(k);
                    groups[g].push(d);
                }
                partitions += 1;
                w.partition(&groups);
            }
            72..=79 => {
                w.heal();
            }
            80..=89 => {
                let i = w.rng().index(edges.len());
                let (a, b) = edges[i];
                if !w.unlink(a, b) {
                    w.link(a, b, params[i]);
                    if w.rng().chance(0.3) {
                        // Both dial at once: the engines keep one link.
                        w.dial(b, a, params[i]);
                    }
                }
            }
            90..=92 => {
                let d = w.rng().index(n);
                restarts += 1;
                w.restart(d);
            }
            93..=95 if !resubscribe.is_empty() && n > 1 => {
                let d = 1 + w.rng().index(n - 1);
                subs[d] = w.rng().pick(resubscribe).clone();
                w.set_subscriptions(d, subs[d].clone());
            }
            _ => {}
        }
        let dt = w.rng().below(300 * MILLISECOND);
        w.run_for(dt);
    }
    w.heal();
    for (&(a, b), p) in edges.iter().zip(&params) {
        w.link(a, b, *p);
    }
    // A last burst of edits on the healed, now static mesh: sessions that have been up since before the heal
    // must carry them as well as the new ones.
    w.run_until_quiet(3600 * SECOND).expect("the mesh goes quiet");
    for _ in 0..steps / 4 {
        let d = w.rng().index(n);
        let e = draw_edit(w.rng(), collections);
        edits += 1;
        committed += w.edit(d, |s| apply_edit(s, &e)) as usize;
        let dt = w.rng().below(50 * MILLISECOND);
        w.run_for(dt);
    }
    let quiet = w.run_until_quiet(3600 * SECOND).expect("the mesh goes quiet");
    let pairs: BTreeSet<(DeviceId, DeviceId)> =
        w.linked_pairs().into_iter().map(|(a, b)| (a.min(b), a.max(b))).collect();
    assert_eq!(pairs.len(), w.linked_pairs().len(), "one link per pair");
    assert_eq!(pairs, edges.iter().copied().collect(), "every link is up");
    let duplicates: usize = (0..n)
        .map(|d| {
            w.take_events(d)
                .iter()
                .filter(|(_, e)| matches!(e, EngineEvent::LinkDown { reason, .. } if reason.contains("already exists")))
                .count()
        })
        .sum();
    eprintln!(
        "  {edits} edits ({committed} committed), {partitions} partitions, {restarts} restarts, {duplicates} duplicate links closed; quiet at {:.3}s",
        quiet as f64 / SECOND as f64
    );
    report(w, "network");
    // Flow control held on every link (documents here are small: far below a batch).
    let t = w.total_stats();
    assert!(
        t.max_outstanding_change_bytes <= WINDOW + 5 * BATCH_BYTES as u64,
        "outstanding {}",
        t.max_outstanding_change_bytes
    );
    assert!(t.max_unsent_bytes as usize <= BACKLOG_LIMIT + MAX_FRAME_LEN + 4);
    assert_converged(w, subs);
}

/// Mostly devices subscribed to everything; some to two whole collections. At least two of each kind when n ≥ 4.
fn mixed_subscriptions(rng: &mut SeededRng, n: usize) -> Vec<Vec<Subscription>> {
    (0..n)
        .map(|d| {
            let partial = if d < 2 {
                false
            } else if d < 4 {
                true
            } else {
                rng.chance(0.25)
            };
            if partial {
                vec![Subscription::collection("chat"), Subscription::collection("tasks")]
            } else {
                vec![Subscription::everything()]
            }
        })
        .collect()
}

fn add_devices(w: &mut SimWorld, subs: &[Vec<Subscription>]) {
    for (i, s) in subs.iter().enumerate() {
        w.add_device(&format!("dev{i}"), s.clone());
    }
}

fn chaos_steps() -> usize {
    if heavy() {
        500
    } else {
        120
    }
}

// ---- 1. random topologies ----

#[test]
fn chaos_line_of_10() {
    for_each_seed("chaos_line_of_10", 3, |seed| {
        let mut w = SimWorld::new(seed);
        let mut subs = mixed_subscriptions(w.rng(), 10);
        add_devices(&mut w, &subs);
        chaos(&mut w, &mut subs, &line(10), chaos_steps(), &COLLECTIONS, &[]);
    });
}

#[test]
fn chaos_star_of_8() {
    for_each_seed("chaos_star_of_8", 3, |seed| {
        let mut w = SimWorld::new(seed);
        let mut subs = mixed_subscriptions(w.rng(), 8);
        add_devices(&mut w, &subs);
        chaos(&mut w, &mut subs, &star(8), chaos_steps(), &COLLECTIONS, &[]);
    });
}

#[test]
fn chaos_random_connected_graphs() {
    for_each_seed("chaos_random_connected_graphs", 3, |seed| {
        let mut w = SimWorld::new(seed);
        let n = w.rng().range(6, 11) as usize;
        let mut subs = mixed_subscriptions(w.rng(), n);
        add_devices(&mut w, &subs);
        let edges = random_connected(w.rng(), n);
        eprintln!("  {n} devices, edges {edges:?}");
        chaos(&mut w, &mut subs, &edges, chaos_steps(), &COLLECTIONS, &[]);
    });
}

// ---- 2. multi-hop through relays that subscribe to nothing ----

#[test]
fn multi_hop_line_through_non_subscribing_relays() {
    for_each_seed("multi_hop_line_through_non_subscribing_relays", 3, |seed| {
        let mut w = SimWorld::new(seed);
        let subs = vec![vec![Subscription::everything()], vec![], vec![], vec![Subscription::everything()]];
        for (name, s) in ["A", "B", "C", "D"].iter().zip(&subs) {
            w.add_device(name, s.clone());
        }
        let (a, d) = (0, 3);
        let params: Vec<LinkParams> = (0..3).map(|_| random_params(w.rng())).collect();
        for (i, p) in params.iter().enumerate() {
            w.link(i, i + 1, *p);
        }
        let steps = if heavy() { 300 } else { 50 };
        for step in 0..steps {
            let at = if w.rng().chance(0.5) { a } else { d };
            let e = draw_edit(w.rng(), &COLLECTIONS);
            w.edit(at, |s| apply_edit(s, &e));
            if step == steps / 3 {
                // Cut the middle for a few seconds: both ends keep editing.
                w.partition(&[vec![0, 1], vec![2, 3]]);
                let outage = w.rng().range(1, 5) * SECOND;
                w.schedule(outage, |w| {
                    w.heal();
                });
            }
            let dt = w.rng().below(200 * MILLISECOND);
            w.run_for(dt);
        }
        // How long does one more edit at A take to show at D, three hops away?
        let start = w.now();
        w.edit(a, |s| s.upsert("chat", json!({"_id": "last", "from": "A"})).unwrap());
        let seen = w
            .run_until(|w| w.store(d).get("chat", "last").unwrap().is_some(), 600 * SECOND)
            .expect("A's last edit reaches D");
        eprintln!("  A's last edit visible at D after {:.1} ms", (seen - start) as f64 / MILLISECOND as f64);
        w.run_until_quiet(3600 * SECOND).expect("quiet");
        report(&w, "network");
        assert_converged(&w, &subs);
        // Presence: A sees B, C and D, D three hops away.
        let peers = w.engine(a).peers();
        assert_eq!(
            peers.iter().map(|p| (p.name.as_str(), p.hops)).collect::<Vec<_>>(),
            vec![("B", 1), ("C", 2), ("D", 3)]
        );
    });
}

// ---- 3. filtered subscriptions ----

const OPEN_TASKS: &str = "done == false";

/// The filtered device `f` holds exactly the open tasks the fully subscribed `full` holds, with identical content
/// and CRDT state, and every other task it still holds (one that left the filter) is up to date too.
fn assert_filtered_view(w: &SimWorld, full: DeviceId, f: DeviceId) {
    let q = Query::filter(OPEN_TASKS).unwrap();
    let expected = by_id(w.store(full).find("tasks", &q).unwrap());
    let got = by_id(w.store(f).find("tasks", &q).unwrap());
    assert_eq!(got, expected, "{} does not hold exactly the open tasks of {}", w.name(f), w.name(full));
    let held = by_id(w.store(f).list("tasks").unwrap());
    for (id, doc) in &held {
        assert_eq!(
            Some(doc),
            w.store(full).get("tasks", id).unwrap().as_ref(),
            "{} holds a stale tasks/{id}",
            w.name(f)
        );
    }
    for i in 0..DOC_IDS as u64 {
        let id = doc_id(i);
        if expected.contains_key(&id) || held.contains_key(&id) {
            assert_eq!(
                doc_state(w.store(f), "tasks", &id),
                doc_state(w.store(full), "tasks", &id),
                "tasks/{id} at {}",
                w.name(f)
            );
        }
    }
}

#[test]
fn filtered_subscriptions_converge() {
    for_each_seed("filtered_subscriptions_converge", 3, |seed| {
        let mut w = SimWorld::new(seed);
        // Two full devices, three filtered ones. Every filtered device has a full neighbour; filtered devices are
        // also linked to each other, so documents reach them both ways.
        let full = vec![Subscription::everything()];
        let filtered = vec![Subscription::filtered("tasks", OPEN_TASKS)];
        let subs = vec![full.clone(), full.clone(), filtered.clone(), filtered.clone(), filtered.clone()];
        add_devices(&mut w, &subs);
        let mut edges = vec![(0, 1), (0, 2), (1, 3), (0, 4), (2, 3), (3, 4)];
        if w.rng().chance(0.5) {
            edges.push((1, 4));
        }
        let steps = if heavy() { 400 } else { 80 };
        // Tasks mostly, flipping `done` often: documents enter and leave the filter, by edits made anywhere.
        let params: Vec<LinkParams> = edges.iter().map(|_| random_params(w.rng())).collect();
        for (&(a, b), p) in edges.iter().zip(&params) {
            w.link(a, b, *p);
        }
        for _ in 0..steps {
            match w.rng().below(100) {
                0..=74 => {
                    let dev = w.rng().index(subs.len());
                    let mut e = draw_edit(w.rng(), &["tasks", "tasks", "tasks", "notes"]);
                    if w.rng().chance(0.4) {
                        e.kind = EditKind::SetDone(w.rng().chance(0.5));
                    }
                    w.edit(dev, |s| apply_edit(s, &e));
                }
                75..=84 => {
                    let i = w.rng().index(edges.len());
                    let (a, b) = edges[i];
                    if !w.unlink(a, b) {
                        w.link(a, b, params[i]);
                    }
                }
                85..=89 => {
                    w.heal();
                }
                90..=94 => {
                    let groups = [vec![0, 2, 3], vec![1, 4]];
                    w.partition(&groups);
                }
                _ => {}
            }
            let dt = w.rng().below(300 * MILLISECOND);
            w.run_for(dt);
        }
        w.heal();
        for (&(a, b), p) in edges.iter().zip(&params) {
            w.link(a, b, *p);
        }
        w.run_until_quiet(3600 * SECOND).expect("quiet");
        report(&w, "network");
        assert_converged(&w, &subs);
        let open = w.store(0).find("tasks", &Query::filter(OPEN_TASKS).unwrap()).unwrap().len();
        eprintln!("  {open} open tasks of {}", w.store(0).list("tasks").unwrap().len());
        for f in 2..5 {
            assert_filtered_view(&w, 0, f);
        }
    });
}

/// Random connected meshes where devices want different things — everything, whole collections, open tasks only,
/// nothing (pure relays) — so filtered devices and relays carry documents for each other over routes that change;
/// devices also change their subscriptions during the run.
#[test]
fn chaos_mixed_subscriptions() {
    for_each_seed("chaos_mixed_subscriptions", 3, |seed| {
        let mut w = SimWorld::new(seed);
        let n = w.rng().range(5, 10) as usize;
        let mut subs: Vec<Vec<Subscription>> = (0..n)
            .map(|d| match if d == 0 { 0 } else { w.rng().below(5) } {
                0 => vec![Subscription::everything()],
                1 => vec![Subscription::collection("chat"), Subscription::collection("tasks")],
                2 | 3 => vec![Subscription::filtered("tasks", OPEN_TASKS)],
                _ => vec![],
            })
            .collect();
        add_devices(&mut w, &subs);
        let edges = random_connected(w.rng(), n);
        eprintln!(
            "  {n} devices, subscriptions {:?}, edges {edges:?}",
            subs.iter().map(|s| s.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",")).collect::<Vec<_>>()
        );
        let choices = [
            vec![Subscription::everything()],
            vec![Subscription::collection("chat"), Subscription::collection("tasks")],
            vec![Subscription::filtered("tasks", OPEN_TASKS)],
            vec![],
        ];
        chaos(&mut w, &mut subs, &edges, chaos_steps(), &["tasks", "tasks", "chat", "notes"], &choices);
        for (f, sub) in subs.iter().enumerate() {
            if sub.iter().any(|s| s.filter.is_some()) {
                assert_filtered_view(&w, 0, f);
            }
        }
    });
}

/// One fully subscribed device; every other device wants open tasks only, or nothing: the filtered devices are each
/// other's relays, and every change that closes or removes a task beyond them must find its way to whoever holds it.
#[test]
fn chaos_filtered_relays() {
    for_each_seed("chaos_filtered_relays", 3, |seed| {
        let mut w = SimWorld::new(seed);
        let n = w.rng().range(4, 8) as usize;
        let mut subs: Vec<Vec<Subscription>> = (0..n)
            .map(|d| match if d == 0 { 0 } else { 1 + w.rng().below(4) } {
                0 => vec![Subscription::everything()],
                1..=3 => vec![Subscription::filtered("tasks", OPEN_TASKS)],
                _ => vec![],
            })
            .collect();
        add_devices(&mut w, &subs);
        let edges = random_connected(w.rng(), n);
        eprintln!("  {n} devices, edges {edges:?}");
        chaos(&mut w, &mut subs, &edges, chaos_steps(), &["tasks"], &[]);
        // Then the fully subscribed device closes or removes every task, on the static mesh.
        for i in 0..DOC_IDS as u64 {
            let kind = if w.rng().chance(0.5) { EditKind::SetDone(true) } else { EditKind::RemoveDocument };
            w.edit(0, |s| apply_edit(s, &Edit { collection: "tasks", id: doc_id(i), kind }));
        }
        w.run_until_quiet(3600 * SECOND).expect("quiet");
        assert_converged(&w, &subs);
        for (f, sub) in subs.iter().enumerate().skip(1) {
            if !sub.is_empty() {
                assert_filtered_view(&w, 0, f);
            }
        }
    });
}

/// The case that needs whole documents: a task that starts to match because of an edit made on another device
/// arrives at a filtered device with its whole history, through a relay.
#[test]
fn filtered_device_gets_documents_that_start_to_match_elsewhere() {
    for_each_seed("filtered_device_gets_documents_that_start_to_match_elsewhere", 3, |seed| {
        let mut w = SimWorld::new(seed);
        let s = w.add_device("S", vec![Subscription::everything()]);
        let r = w.add_device("R", vec![]);
        let f = w.add_device("F", vec![Subscription::filtered("tasks", OPEN_TASKS)]);
        let t = w.add_device("T", vec![Subscription::everything()]);
        let p = random_params(w.rng());
        w.link(s, r, p);
        w.link(r, f, p);
        w.link(t, s, LinkParams::lan());
        for i in 0..DOC_IDS as u64 {
            w.edit(s, |st| {
                st.upsert("tasks", json!({"_id": doc_id(i), "done": true, "title": format!("t{i}")})).unwrap()
            });
            w.edit(s, |st| st.update("tasks", &doc_id(i), |d| Ok(d.text_insert("notes", 0, "history")?)).unwrap());
        }
        w.run_until_quiet(600 * SECOND).expect("quiet");
        assert!(w.store(f).list("tasks").unwrap().is_empty(), "F holds only open tasks");
        // T (two hops from F) reopens a task.
        let which = doc_id(w.rng().below(DOC_IDS as u64));
        w.edit(t, |st| st.update("tasks", &which, |d| Ok(d.set("done", false)?)).unwrap());
        let at = w
            .run_until(|w| w.store(f).get("tasks", &which).unwrap().is_some(), 600 * SECOND)
            .expect("the reopened task reaches F");
        eprintln!("  reopened task visible at F at {:.1} ms", at as f64 / MILLISECOND as f64);
        w.run_until_quiet(600 * SECOND).expect("quiet");
        assert_filtered_view(&w, s, f);
        assert_eq!(w.store(f).get("tasks", &which).unwrap().unwrap()["notes"], "history");
        // And closing it again (at F itself this time) reaches everyone.
        w.edit(f, |st| st.update("tasks", &which, |d| Ok(d.set("done", true)?)).unwrap());
        w.run_until_quiet(600 * SECOND).expect("quiet");
        assert_eq!(w.store(t).get("tasks", &which).unwrap().unwrap()["done"], true);
        assert_filtered_view(&w, s, f);
    });
}

// ---- 4. a device with the wrong secret ----

#[test]
fn wrong_secret_receives_nothing_and_changes_nothing() {
    for_each_seed("wrong_secret_receives_nothing_and_changes_nothing", 3, |seed| {
        let mut w = SimWorld::new(seed);
        let all = vec![Subscription::everything()];
        let good: Vec<DeviceId> = (0..3).map(|i| w.add_device(&format!("good{i}"), all.clone())).collect();
        let intruder = w.add_device_with_secret("intruder", all.clone(), b"not the app's secret");
        let (p01, p12) = (random_params(w.rng()), random_params(w.rng()));
        w.link(good[0], good[1], p01);
        w.link(good[1], good[2], p12);
        for i in 0..10u64 {
            let d = good[w.rng().index(3)];
            let e = draw_edit(w.rng(), &COLLECTIONS);
            w.edit(d, |s| apply_edit(s, &e));
            w.edit(intruder, |s| s.upsert("chat", json!({"_id": format!("evil{i}"), "text": "let me in"})).unwrap());
        }
        let intruder_before = w.store(intruder).replica().summary().unwrap();
        // The intruder keeps trying: dialling and being dialled, on every good device, while edits go on.
        let mut attempts = 0;
        for round in 0..6 {
            let g = good[w.rng().index(3)];
            let p = random_params(w.rng());
            let linked = if round % 2 == 0 { w.link(intruder, g, p) } else { w.link(g, intruder, p) };
            attempts += linked as usize;
            let e = draw_edit(w.rng(), &COLLECTIONS);
            w.edit(g, |s| apply_edit(s, &e));
            let dt = w.rng().below(500 * MILLISECOND);
            w.run_for(dt);
            // The handshake fails within a few round trips (more when packets are lost): the link is dropped.
            w.run_until(|w| !w.is_linked(intruder, g), 60 * SECOND).expect("the link with the intruder is dropped");
        }
        w.run_until_quiet(600 * SECOND).expect("quiet");
        report(&w, "network");
        assert!(attempts > 0);
        // The intruder got nothing: its store holds exactly what it wrote itself.
        assert_eq!(w.store(intruder).replica().summary().unwrap(), intruder_before);
        assert_eq!(w.store(intruder).collections().unwrap(), vec!["chat".to_string()]);
        assert!(w.store(intruder).list("chat").unwrap().iter().all(|d| d["_id"].as_str().unwrap().starts_with("evil")));
        // And changed nothing: no good device holds any of its changes, and none of them ever had a session with it.
        let evil_peer = w.store(intruder).peer_id();
        for &g in &good {
            let summary = w.store(g).replica().summary().unwrap();
            assert!(summary.peers().all(|(p, _)| p != evil_peer), "{} holds the intruder's changes", w.name(g));
            assert!(w.store(g).list("chat").unwrap().iter().all(|d| !d["_id"].as_str().unwrap().starts_with("evil")));
            let intruder_key = w.device_key(intruder);
            for (_, e) in w.take_events(g) {
                assert!(
                    !matches!(e, EngineEvent::LinkUp { device, .. } if device == intruder_key),
                    "a link with the intruder came up"
                );
            }
            assert!(w.engine(g).peers().iter().all(|p| p.device != intruder_key));
            // What it sent: handshake messages only.
            let s = w.stats(intruder, g);
            assert!(s.bytes_sent <= 512 * attempts as u64, "the intruder sent {} bytes to {}", s.bytes_sent, w.name(g));
        }
        // The good devices (the first three) still converge among themselves.
        assert_converged(&w, &[all.clone(), all.clone(), all]);
    });
}

// ---- 5. flow control ----

#[test]
fn flow_control_bounds_outstanding_data_on_ble() {
    for_each_seed("flow_control_bounds_outstanding_data_on_ble", 3, |seed| {
        let mut w = SimWorld::new(seed);
        let all = vec![Subscription::everything()];
        let a = w.add_device("A", all.clone());
        let b = w.add_device("B", all.clone());
        // A few MB in documents of about 4 KB (a few batches' worth per pump); some with a long history.
        let megabytes = if heavy() { 12 } else { 3 };
        let docs = megabytes * 256;
        let mut doc_bytes_max = 0usize;
        w.edit(a, |s| {
            s.write(|t| {
                for i in 0..docs {
                    t.upsert("blobs", json!({"_id": format!("b{i:05}"), "data": format!("{i:08}").repeat(500)}))?;
                }
                Ok(())
            })
            .unwrap()
        });
        for i in 0..20 {
            w.edit(a, |s| {
                s.update("blobs", "b00000", |d| Ok(d.text_insert("log", 0, &format!("entry {i} ").repeat(20))?))
                    .unwrap()
            });
        }
        for c in w.store(a).replica().changes_since(&shoaldb::Summary::new()).unwrap() {
            doc_bytes_max = doc_bytes_max.max(c.encode().len());
        }
        w.edit(b, |s| s.upsert("notes", json!({"_id": "from-b", "text": "hello"})).unwrap());
        let params = if w.rng().chance(0.5) { LinkParams::ble() } else { LinkParams::ble().with_loss(lossy()) };
        w.link(a, b, params);
        let quiet = w.run_until_quiet(3600 * 10 * SECOND).expect("quiet");
        report(&w, "network");
        let s = w.stats(a, b);
        let total_change_bytes =
            w.engine(a).links().first().and_then(|(l, ..)| w.engine(a).link_stats(*l)).unwrap().change_bytes_sent;
        eprintln!(
            "  {} change bytes in {:.1}s virtual ({:.1} kB/s); peak outstanding {} bytes (WINDOW {}), peak unsent {} bytes, peak in flight {} bytes",
            total_change_bytes,
            quiet as f64 / SECOND as f64,
            s.bytes_delivered as f64 / (quiet as f64 / SECOND as f64) / 1000.0,
            s.max_outstanding_change_bytes,
            WINDOW,
            s.max_unsent_bytes,
            s.max_in_flight_bytes
        );
        assert!(total_change_bytes > 2 * WINDOW, "the transfer needed credit several times");
        // The bound: a session starts a batch only while it has credit, and its credit is WINDOW plus what the
        // receiver acknowledged minus what it sent, so what is sent and not yet processed stays under WINDOW plus
        // the last pump's overshoot: one budget (4 batches) plus one document's changes taken whole.
        let bound = WINDOW + 4 * BATCH_BYTES as u64 + doc_bytes_max as u64 + 1024;
        assert!(
            s.max_outstanding_change_bytes <= bound,
            "outstanding {} > bound {bound}",
            s.max_outstanding_change_bytes
        );
        assert!(
            s.max_outstanding_change_bytes >= WINDOW / 2,
            "the window was used ({})",
            s.max_outstanding_change_bytes
        );
        // The simulator itself holds at most its backlog plus one frame.
        assert!(s.max_unsent_bytes as usize <= BACKLOG_LIMIT + MAX_FRAME_LEN + 4);
        // Everything arrived.
        assert_eq!(w.store(a).replica().summary().unwrap(), w.store(b).replica().summary().unwrap());
        assert_eq!(w.store(b).list("blobs").unwrap().len(), docs);
        assert_eq!(w.store(a).list("blobs").unwrap(), w.store(b).list("blobs").unwrap());
        assert!(w.store(a).get("notes", "from-b").unwrap().is_some());
    });
}

/// A large transfer over a slow link, cut several times in the middle: each time the link comes back, only what
/// had not arrived travels again — at most what the simulator had taken from the engine and not delivered — and
/// everything arrives.
#[test]
fn interrupted_transfer_resumes_where_it_stopped() {
    for_each_seed("interrupted_transfer_resumes_where_it_stopped", 3, |seed| {
        let mut w = SimWorld::new(seed);
        let all = vec![Subscription::everything()];
        let a = w.add_device("A", all.clone());
        let b = w.add_device("B", all.clone());
        let docs = if heavy() { 2048 } else { 512 };
        w.edit(a, |s| {
            s.write(|t| {
                for i in 0..docs {
                    t.upsert("blobs", json!({"_id": format!("b{i:05}"), "data": format!("{i:08}").repeat(500)}))?;
                }
                Ok(())
            })
            .unwrap()
        });
        let data: usize = w
            .store(a)
            .replica()
            .changes_since(&shoaldb::Summary::new())
            .unwrap()
            .iter()
            .map(|c| c.encode().len())
            .sum();
        let params = if w.rng().chance(0.5) { LinkParams::ble() } else { LinkParams::ble().with_loss(lossy()) };
        w.link(a, b, params);
        let cuts = 4;
        for _ in 0..cuts {
            let dt = w.rng().range(1, 8) * SECOND;
            w.run_for(dt);
            w.unlink(a, b);
            let dt = w.rng().below(2 * SECOND);
            w.run_for(dt);
            w.link(a, b, params);
        }
        w.run_until_quiet(3600 * SECOND).expect("quiet");
        report(&w, "network");
        assert_eq!(w.store(a).replica().summary().unwrap(), w.store(b).replica().summary().unwrap());
        assert_eq!(w.store(a).list("blobs").unwrap(), w.store(b).list("blobs").unwrap());
        let s = w.stats(a, b);
        // Each cut wastes at most what was on the wire or in the simulator's backlog; each session costs a few KB.
        let per_cut = (BACKLOG_LIMIT + MAX_FRAME_LEN) as u64 + 8192;
        let bound = data as u64 + data as u64 / 100 + (cuts as u64 + 1) * 4096 + cuts as u64 * per_cut;
        eprintln!(
            "  {data} bytes of changes; {} bytes sent to B over {} links, {} frames lost with them (bound {bound})",
            s.bytes_sent,
            cuts + 1,
            s.frames_dropped
        );
        assert!(s.bytes_sent <= bound, "{} bytes sent for {data} bytes of changes", s.bytes_sent);
    });
}

// ---- 6. catch-up cost ----

#[test]
fn catch_up_after_relink_sends_only_the_new_changes() {
    for_each_seed("catch_up_after_relink_sends_only_the_new_changes", 3, |seed| {
        let mut w = SimWorld::new(seed);
        let all = vec![Subscription::everything()];
        let a = w.add_device("A", all.clone());
        let b = w.add_device("B", all.clone());
        let docs = if heavy() { 10_000 } else { 1_000 };
        w.edit(a, |s| {
            s.write(|t| {
                for i in 0..docs {
                    t.upsert("docs", json!({"_id": format!("d{i:05}"), "title": format!("document {i}"), "n": i}))?;
                }
                Ok(())
            })
            .unwrap()
        });
        let params = random_params(w.rng());
        w.link(a, b, params);
        w.run_until_quiet(3600 * SECOND).expect("quiet");
        let first = w.stats(a, b).bytes_sent + w.stats(b, a).bytes_sent;
        assert_eq!(w.store(a).replica().summary().unwrap(), w.store(b).replica().summary().unwrap());
        w.unlink(a, b);
        let b_had = w.store(b).replica().summary().unwrap();
        for _ in 0..5 {
            let i = w.rng().below(docs);
            w.edit(a, |s| s.update("docs", &format!("d{i:05}"), |d| Ok(d.set("title", "changed")?)).unwrap());
        }
        let new_changes: usize =
            w.store(a).replica().changes_since(&b_had).unwrap().iter().map(|c| c.encode().len()).sum();
        w.reset_stats();
        w.link(a, b, params);
        w.run_until_quiet(3600 * SECOND).expect("quiet");
        let again = w.stats(a, b).bytes_sent + w.stats(b, a).bytes_sent;
        eprintln!("  first sync {first} bytes; after relinking {again} bytes for {new_changes} bytes of new changes");
        assert_eq!(w.store(a).replica().summary().unwrap(), w.store(b).replica().summary().unwrap());
        assert_eq!(w.store(a).list("docs").unwrap(), w.store(b).list("docs").unwrap());
        assert!(again < new_changes as u64 + 3000, "catch-up sent {again} bytes for {new_changes} bytes of changes");
        assert!(again * 20 < first, "never everything again");
    });
}

// ---- the simulator itself ----

/// The schedule is a function of the seed: the same seed gives the same decisions at the same virtual times and
/// the same loss pattern; another seed gives another.
#[test]
fn the_schedule_is_a_function_of_the_seed() {
    fn trace(seed: u64) -> (Vec<String>, u64) {
        let mut w = SimWorld::new(seed);
        let subs = vec![vec![Subscription::everything()]; 4];
        add_devices(&mut w, &subs);
        let edges = random_connected(w.rng(), 4);
        for (a, b) in &edges {
            w.link(*a, *b, LinkParams::ble().with_loss(0.2));
        }
        let mut log = vec![format!("{edges:?}")];
        for _ in 0..20 {
            let d = w.rng().index(4);
            let e = draw_edit(w.rng(), &COLLECTIONS);
            log.push(format!("t={} dev{d} {e:?}", w.now()));
            w.edit(d, |s| apply_edit(s, &e));
            let dt = w.rng().below(100 * MILLISECOND);
            w.run_for(dt);
        }
        w.run_until_quiet(3600 * SECOND).expect("quiet");
        assert_converged(&w, &subs);
        (log, w.total_stats().packets_lost)
    }
    for_each_seed("the_schedule_is_a_function_of_the_seed", 3, |seed| {
        let (a, lost) = trace(seed);
        let (b, _) = trace(seed);
        assert_eq!(a, b);
        assert!(lost > 0, "losses happened");
        let (c, _) = trace(seed ^ 1);
        assert_ne!(a, c);
    });
}

/// A filtered device that gets a document through one neighbour must get the later edits that make it leave the
/// filter through another, even when that neighbour (a filtered relay) learnt the document after its session with
/// the fully subscribed device had started.
///
/// S–F1–F2 carry an open task to F2; S closes it while F2 is cut off; S–F3 comes up (F3 does not get the task:
/// it is closed and F3 never had it); then F2–F3: F2 hands the task (as it knew it) to F3, which carries it for S.
#[test]
fn filtered_devices_get_the_edit_that_closes_a_task_through_a_new_route() {
    for_each_seed("filtered_devices_get_the_edit_that_closes_a_task_through_a_new_route", 3, |seed| {
        let mut w = SimWorld::new(seed);
        let filtered = vec![Subscription::filtered("tasks", OPEN_TASKS)];
        let s = w.add_device("S", vec![Subscription::everything()]);
        let f1 = w.add_device("F1", filtered.clone());
        let f2 = w.add_device("F2", filtered.clone());
        let f3 = w.add_device("F3", filtered.clone());
        let p = random_params(w.rng());
        w.link(s, f1, p);
        w.link(f1, f2, p);
        w.edit(s, |st| st.upsert("tasks", json!({"_id": "t", "done": false, "title": "open"})).unwrap());
        w.run_until_quiet(600 * SECOND).expect("quiet");
        assert!(w.store(f2).get("tasks", "t").unwrap().is_some());
        w.unlink(f1, f2);
        w.edit(s, |st| st.update("tasks", "t", |d| Ok(d.set("done", true)?)).unwrap());
        w.run_until_quiet(600 * SECOND).expect("quiet");
        w.link(s, f3, p);
        w.run_until_quiet(600 * SECOND).expect("quiet");
        assert!(w.store(f3).get("tasks", "t").unwrap().is_none());
        w.link(f2, f3, p);
        w.run_until_quiet(600 * SECOND).expect("quiet");
        for f in [f1, f2, f3] {
            assert_filtered_view(&w, s, f);
        }
    });
}

// ---- transport choice ----

/// `n` random edits at random devices, a random pause (under 100 ms) after each.
fn random_edits(w: &mut SimWorld, n: usize) {
    for _ in 0..n {
        let devices = w.device_count();
        let at = w.rng().index(devices);
        let e = draw_edit(w.rng(), &COLLECTIONS);
        w.edit(at, |s| apply_edit(s, &e));
        let dt = w.rng().below(100 * MILLISECOND);
        w.run_for(dt);
    }
}

/// A line of six phones over BLE; phones 1, 2 and 3 also share a LAN. Bulk data between LAN neighbours goes over
/// the LAN while their BLE links stand by; when the LAN goes, BLE carries everything and all converge, with no
/// change lost; when it comes back, the LAN carries the data again.
#[test]
fn phones_on_a_lan_and_ble_send_bulk_over_the_lan_and_fall_back_to_ble() {
    use shoaldb::sync::TransportKind::{Ble, Lan};
    for_each_seed("phones_on_a_lan_and_ble_send_bulk_over_the_lan_and_fall_back_to_ble", 3, |seed| {
        let mut w = SimWorld::new(seed);
        let subs: Vec<Vec<Subscription>> = (0..6).map(|_| vec![Subscription::everything()]).collect();
        add_devices(&mut w, &subs);
        for i in 0..5 {
            w.link(i, i + 1, LinkParams::ble());
        }
        w.link(1, 2, LinkParams::lan());
        w.link(2, 3, LinkParams::lan());
        w.link(1, 3, LinkParams::lan());
        w.run_until_quiet(60 * SECOND).expect("quiet");
        let p = w.engine(2).peers();
        let one = p.iter().find(|p| p.name == w.name(1)).expect("1 is a peer of 2");
        assert_eq!((one.transport, one.direct.clone()), (Lan, vec![Lan, Ble]), "{p:?}");
        w.reset_stats();

        // Bulk at phone 2: LAN neighbours get it over the LAN; BLE only carries it to the ends.
        w.edit(2, |s| {
            for i in 0..40 {
                s.upsert("photos", json!({"_id": format!("p{i}"), "caption": "x".repeat(1000)})).unwrap();
            }
        });
        random_edits(&mut w, 30);
        w.run_until_quiet(3600 * SECOND).expect("quiet");
        assert_converged(&w, &subs);
        for (a, b) in [(1, 2), (2, 3), (2, 1), (3, 2)] {
            let (lan, ble) = (w.bytes_sent_over(a, b, Lan), w.bytes_sent_over(a, b, Ble));
            assert!(lan > 40_000 || a != 2, "{a}→{b}: the bulk went over the LAN ({lan} B)");
            assert!(ble < 10_000, "{a}→{b}: BLE stood by ({ble} B over BLE, {lan} B over the LAN)");
        }
        assert!(w.bytes_sent_over(3, 4, Ble) > 40_000, "the far end gets the bulk over BLE");

        // The LAN goes: BLE carries everything; edits everywhere converge.
        for (a, b) in [(1, 2), (2, 3), (1, 3)] {
            w.unlink_over(a, b, Lan);
        }
        random_edits(&mut w, 30);
        w.run_until_quiet(3600 * SECOND).expect("quiet");
        assert_converged(&w, &subs);
        assert_eq!(w.engine(2).peers().iter().find(|p| p.name == w.name(1)).map(|p| p.transport), Some(Ble));

        // The LAN comes back and carries the data again.
        w.link(1, 2, LinkParams::lan());
        w.run_until_quiet(60 * SECOND).expect("quiet");
        w.reset_stats();
        w.edit(1, |s| {
            for i in 0..20 {
                s.upsert("photos", json!({"_id": format!("q{i}"), "caption": "y".repeat(1000)})).unwrap();
            }
        });
        w.run_until_quiet(3600 * SECOND).expect("quiet");
        assert_converged(&w, &subs);
        assert!(w.bytes_sent_over(1, 2, Lan) > 20_000);
        assert!(w.bytes_sent_over(1, 2, Ble) < 5_000, "{} B over BLE", w.bytes_sent_over(1, 2, Ble));
        report(&w, "mixed");
    });
}

// ---- device identity (issue 14): enrolled devices, read grants, a revocation spreading ----

#[test]
fn enrolled_mesh_enforces_read_grants_and_spreads_a_revocation() {
    use shoaldb::security::{Grant, Revocation};
    for_each_seed("enrolled_mesh_enforces_read_grants_and_spreads_a_revocation", 3, |seed| {
        let mut w = SimWorld::new(seed);
        let g = |t: &str| Grant::parse(t).unwrap();
        let all = || vec![g("read *"), g("write *")];
        let everything = || vec![Subscription::everything()];
        // A writes; B is a relay that may read notes only; C may read northern tasks and notes; D reads
        // everything but reaches A only through B; R (reads everything, linked to D) gets revoked half way.
        let a = w.add_enrolled_device("A", everything(), all());
        let b = w.add_enrolled_device("B", everything(), vec![g("read notes"), g("write *")]);
        let c =
            w.add_enrolled_device("C", everything(), vec![g("read tasks where team == \"north\""), g("read notes")]);
        let d = w.add_enrolled_device("D", everything(), all());
        let r = w.add_enrolled_device("R", everything(), all());
        for (x, y) in [(a, b), (b, d), (a, c), (d, r)] {
            let p = random_params(w.rng());
            w.link(x, y, p);
        }
        let steps = if heavy() { 200 } else { 40 };
        for step in 0..steps {
            let k = w.rng().below(12);
            if w.rng().chance(0.5) {
                // Tasks keep their team for life (a task moving out of C's rules would leave C a stale copy).
                let team = if k % 3 == 0 { "south" } else { "north" };
                w.edit(a, |s| s.upsert("tasks", json!({"_id": format!("t{k}"), "team": team, "n": step})).unwrap());
            } else {
                let at = if w.rng().chance(0.7) { a } else { r };
                w.edit(at, |s| s.upsert("notes", json!({"_id": format!("n{k}"), "step": step})).unwrap());
            }
            if step == steps / 2 {
                w.run_until_quiet(3600 * SECOND).expect("quiet before the revocation");
                assert!(w.engine(d).links().iter().any(|l| l.1 == w.engine(r).device_key()), "R linked to D");
                let authority = w.authority();
                let revoked = vec![Revocation::Certificate { issuer: authority.verifying_key(), serial: r as u64 + 1 }];
                let list = shoaldb::enrolment::revoke(&authority, 1, 0, revoked).unwrap();
                assert!(w.add_revocations(a, list).unwrap());
            }
            let dt = w.rng().below(200 * MILLISECOND);
            w.run_for(dt);
        }
        w.run_until_quiet(3600 * SECOND).expect("quiet");
        // The revocation crossed A–B–D and cut R off at D.
        assert!(!w.engine(d).links().iter().any(|l| l.1 == w.engine(r).device_key()), "D dropped the revoked R");
        w.edit(r, |s| s.upsert("notes", json!({"_id": "from-revoked", "x": 1})).unwrap());
        w.run_until_quiet(3600 * SECOND).expect("quiet");
        for x in [a, b, c, d] {
            assert!(w.store(x).get("notes", "from-revoked").unwrap().is_none(), "a revoked device's write arrived");
        }
        // Notes everywhere they may be read (R's from before its revocation included) are identical.
        let notes_a = by_id(w.store(a).list("notes").unwrap());
        for x in [b, c, d] {
            assert_eq!(by_id(w.store(x).list("notes").unwrap()), notes_a, "notes differ on device {x}");
        }
        // Tasks: C holds exactly A's northern ones; the relay B and D behind it hold none.
        let north: BTreeMap<String, Json> =
            by_id(w.store(a).list("tasks").unwrap()).into_iter().filter(|(_, t)| t["team"] == "north").collect();
        assert!(!north.is_empty());
        assert_eq!(by_id(w.store(c).list("tasks").unwrap()), north);
        assert!(w.store(b).list("tasks").unwrap().is_empty());
        assert!(w.store(d).list("tasks").unwrap().is_empty());
    });
}

/// Issue 17: a device offline for a simulated month while the other three edit every day (removing documents and
/// fields among the rest) and compact every day (horizon one day), then back: it converges with them, and every
/// device ends exactly as in the same world, same seed, with no compaction at all — so nothing removed came back
/// and none of its offline edits was lost.
#[test]
fn a_month_away_while_the_others_compact_every_day() {
    for_each_seed("a_month_away_while_the_others_compact_every_day", 2, |seed| month_away(seed, false));
}

/// The same month in certificate mode: every change signed, device `a` attesting every day before the home devices
/// compact (they fold only what attested states hold, and the traveller catches up from attested states). `a` also
/// signs each day the stable frontier of the four devices (the traveller's acknowledgements are what it held as it
/// left), which travels from `a` to the others over their links; the home devices fold counters under it, and `b` and
/// `c` drop the tombstones of a note drafted and cut before the traveller left (`a` attests: it keeps them); the
/// traveller still comes back to what it would have without any of it.
#[test]
fn a_month_away_while_the_others_attest_and_compact_every_day() {
    for_each_seed("a_month_away_while_the_others_attest_and_compact_every_day", 2, |seed| month_away(seed, true));
}

/// Device `signer` (an attester) signs the stable frontier of `members` — what each holds now — and of the
/// acknowledgements `acked` of one more, as the cloud would from the day's acknowledgements, and keeps it: its engine
/// sends it on at its next recheck.
fn sign_frontier(w: &SimWorld, signer: DeviceId, members: &[DeviceId], acked: &shoaldb::Summary, until_ms: u64) {
    let mut every = acked.clone();
    let mut some = acked.clone();
    for &m in members {
        let held = w.store(m).replica().summary().unwrap();
        every = every.intersection(&held);
        some.union_with(&held);
    }
    let shoaldb::security::Access::Certificates(enrolment) = w.device(signer).access() else {
        panic!("{} is not enrolled", w.name(signer))
    };
    let frontier = shoaldb::security::StableFrontier::sign(enrolment.signing_key(), until_ms, every, some);
    w.store(signer).replica().keep_frontier(&frontier).unwrap();
}

/// The counter contributions a store keeps in the documents of `collections` (the random edits' and `tally`).
fn counter_entries(store: &Store, collections: &[&str]) -> u64 {
    let ids = (0..DOC_IDS as u64).map(doc_id).chain(["tally".to_string()]);
    let docs = collections.iter().flat_map(|c| ids.clone().map(move |id| (*c, id)));
    docs.filter_map(|(c, id)| store.document(c, &id).unwrap()).map(|d| d.counter_entries()).sum()
}

fn month_away(seed: u64, certificates: bool) {
    use shoaldb::security::Grant;
    const DAY: u64 = 24 * 3600 * SECOND;
    let days = if heavy() { 60 } else { 30 };
    let edits_per_day = if heavy() { 30 } else { 8 };
    let policy = shoaldb::CompactionPolicy { horizon_ms: DAY / 1000, ..Default::default() };
    let collections = ["tasks", "notes"];
    // The same world twice: compacting, and not.
    let mut worlds = [SimWorld::new(seed), SimWorld::new(seed)];
    for w in &mut worlds {
        for name in ["a", "b", "c", "traveller"] {
            let everything = vec![Subscription::everything()];
            if certificates {
                let mut grants = vec![Grant::read("*"), Grant::write("*")];
                grants.extend((name == "a").then(|| Grant::attest("*")));
                w.add_enrolled_device(name, everything, grants);
            } else {
                w.add_device(name, everything);
            }
        }
        w.link(0, 1, LinkParams::lan());
        w.link(1, 2, LinkParams::lan());
        w.link(3, 0, LinkParams::lan());
    }
    let mut rng = SeededRng::new(seed ^ 0x6d6f_6e74_6821);
    let quiet = |w: &mut SimWorld, what: &str| {
        w.run_until_quiet(600 * SECOND).unwrap_or_else(|e| panic!("{what}: {e}"));
    };
    let edit_both = |worlds: &mut [SimWorld; 2], device: DeviceId, e: &Edit| {
        for w in worlds.iter_mut() {
            w.edit(device, |s| apply_edit(s, e));
        }
    };
    for _ in 0..edits_per_day {
        let e = draw_edit(&mut rng, &collections);
        edit_both(&mut worlds, rng.below(4) as DeviceId, &e);
    }
    if certificates {
        // The home devices count on a document of their own before the traveller leaves (the random edits do not
        // touch it): increments the frontier will cover.
        let count = Edit {
            collection: "tasks",
            id: "tally".into(),
            kind: EditKind::Field(edits::Edit::Increment { which: 0, by: 1 }),
        };
        for _ in 0..5 {
            for d in 0..3 {
                edit_both(&mut worlds, d, &count);
            }
        }
        // And `b` drafts a note and cuts most of it: tombstones the frontier will settle.
        for w in worlds.iter_mut() {
            w.edit(1, |s| {
                s.upsert("notes", json!({"_id": "draft"})).unwrap();
                let text = shoaldb::Value::Text("a draft of a note, most of which goes again".into());
                s.update("notes", "draft", |d| Ok(d.set("body", text.clone())?)).unwrap();
                s.update("notes", "draft", |d| Ok(d.text_delete("body", 8, 30)?)).unwrap();
            });
        }
    }
    for w in &mut worlds {
        quiet(w, "before leaving");
        w.unlink(3, 0);
    }
    // What the traveller acknowledged before it left: a stable frontier is what all four had acknowledged.
    let traveller_acked = worlds[0].store(3).replica().summary().unwrap();
    let start = worlds[0].now();
    for day in 1..=days {
        for w in &mut worlds {
            // Each day starts at the same virtual time in both worlds: the same clocks stamp the same edits.
            let target = start + day * DAY;
            let now = w.now();
            w.run_for(target.saturating_sub(now));
        }
        for _ in 0..edits_per_day {
            let e = draw_edit(&mut rng, &collections);
            edit_both(&mut worlds, rng.below(3) as DeviceId, &e);
            let gap = rng.below(10 * SECOND);
            for w in &mut worlds {
                w.run_for(gap);
            }
        }
        if day % 3 == 0 {
            let e = draw_edit(&mut rng, &collections);
            edit_both(&mut worlds, 3, &e);
        }
        for w in &mut worlds {
            quiet(w, "a day's edits");
        }
        if certificates {
            // The states reach b and c over their open links before they compact.
            worlds[0].edit(0, |s| s.attest().expect("attest"));
            quiet(&mut worlds[0], "attested states");
            // So does the day's stable frontier: `a` sends it as its link to `b` comes up again (the simulator does
            // not drive the engines' rechecks), and `b` passes it on to `c`.
            sign_frontier(&worlds[0], 0, &[0, 1, 2], &traveller_acked, day * DAY / 1000);
            worlds[0].unlink(0, 1);
            worlds[0].link(0, 1, LinkParams::lan());
            quiet(&mut worlds[0], "the stable frontier");
        }
        for d in 0..3 {
            worlds[0].edit(d, |s| s.compact(&policy).expect("compact"));
        }
    }
    for d in 0..3 {
        let folded = worlds[0].store(d).storage_stats().unwrap();
        assert!(folded.compacted_documents > 0, "{} compacted: {folded:?}", worlds[0].name(d));
        assert!(!certificates || folded.attested_bytes > 0, "{} kept attested states", worlds[0].name(d));
    }
    if certificates {
        // The frontier reached every home device, and they folded counters under it.
        for d in 0..3 {
            assert!(worlds[0].store(d).replica().stable_frontier().unwrap().is_some(), "{}", worlds[0].name(d));
        }
        let entries = |w: &SimWorld| -> u64 { (1..3).map(|d| counter_entries(w.store(d), &collections)).sum() };
        let (folded, kept) = (entries(&worlds[0]), entries(&worlds[1]));
        assert!(folded < kept, "b and c keep {folded} counter contributions, {kept} without folding");
        // And dropped the draft's tombstones but the first.
        let items =
            |w: &SimWorld, d: DeviceId| w.store(d).document("notes", "draft").unwrap().map(|mut doc| doc.items());
        for d in 1..3 {
            let (dropped, kept) = (items(&worlds[0], d), items(&worlds[1], d));
            assert_eq!((dropped, kept), (Some(43 - 29), Some(43)), "{}: the draft's items", worlds[0].name(d));
        }
    }
    for w in &mut worlds {
        w.link(3, 0, LinkParams::lan());
        quiet(w, "back");
    }
    report(&worlds[0], "a month away");
    let subs = vec![vec![Subscription::everything()]; 4];
    assert_converged(&worlds[0], &subs);
    for d in 0..4 {
        for c in collections {
            assert_eq!(
                worlds[0].store(d).list(c).unwrap(),
                worlds[1].store(d).list(c).unwrap(),
                "{} differs from the world without compaction on {c}",
                worlds[0].name(d)
            );
            for i in 0..DOC_IDS as u64 {
                let id = doc_id(i);
                assert_eq!(
                    doc_state(worlds[0].store(d), c, &id),
                    doc_state(worlds[1].store(d), c, &id),
                    "{}: {c}/{id} differs from the world without compaction",
                    worlds[0].name(d)
                );
            }
        }
    }
}
