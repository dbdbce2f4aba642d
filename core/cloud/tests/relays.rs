//! Phones syncing through relays over real TCP links (Noise handshakes, the same engine as phone to phone): two
//! relays on one database, phones on either, every phone and the database end with byte-identical documents.

mod common;

use shoaldb::enrolment;
use shoaldb::node::{Node, NodeConfig};
use shoaldb::security::{AppSecret, Identity, SigningKey};
use shoaldb::store::Replica as _;
use shoaldb::{Query, Store};
use shoaldb_cloud::{Relay, RelayConfig};
use std::net::SocketAddr;

const PHONES: usize = 3;
const DOCS_EACH: usize = 5;

fn secret() -> AppSecret {
    AppSecret::from_bytes(b"shoal cloud test").unwrap()
}

async fn relay(url: &str) -> Relay {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    Relay::start(RelayConfig::new(url, any, secret())).await.expect("relay starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn phones_on_two_relays_of_one_database_converge_byte_identical() {
    let Some(url) = tokio::task::spawn_blocking(common::fresh_database).await.unwrap() else { return };
    let relays = [relay(&url).await, relay(&url).await];
    let dir = tempfile::tempdir().unwrap();
    let mut phones = Vec::new();
    for i in 0..PHONES {
        let store = Store::open(dir.path().join(format!("phone{i}.db"))).unwrap();
        // Phones 0 and 1 on the first relay, phone 2 on the second: they never meet directly.
        let via = relays[usize::from(i == PHONES - 1)].listen_addr().unwrap();
        let config = NodeConfig::new(format!("phone {i}"), secret()).with_mdns(false).connect_to(via);
        let node = Node::start(store.clone(), config).await.unwrap();
        for d in 0..DOCS_EACH {
            store
                .upsert("tasks", serde_json::json!({"_id": format!("p{i}-{d}"), "title": format!("task {d} of {i}")}))
                .unwrap();
        }
        // One document every phone edits: a counter each adds to, and a register they race on.
        store
            .write(|t| {
                if t.get("board", "shared")?.is_none() {
                    t.upsert("board", serde_json::json!({"_id": "shared", "title": "board"}))?;
                }
                t.update("board", "shared", |ed| {
                    ed.increment("visits", 1)?;
                    Ok(ed.set("last", format!("phone {i}"))?)
                })
            })
            .unwrap();
        phones.push((store, node));
    }
    let expect = PHONES * DOCS_EACH;
    common::eventually("every phone holds every task and every visit", || {
        phones.iter().all(|(s, _)| {
            s.find("tasks", &Query::all()).is_ok_and(|d| d.len() == expect)
                && s.get("board", "shared").ok().flatten().is_some_and(|b| b["visits"] == PHONES as i64)
        })
    })
    .await;
    // The documents as the cloud holds them, and as each phone does: the same bytes.
    let cloud = relays[0].replica().clone();
    let mut ids: Vec<(String, String)> =
        (0..PHONES).flat_map(|i| (0..DOCS_EACH).map(move |d| ("tasks".to_string(), format!("p{i}-{d}")))).collect();
    ids.push(("board".into(), "shared".into()));
    for (c, id) in &ids {
        let (c2, id2) = (c.clone(), id.clone());
        let in_cloud = {
            let cloud = cloud.clone();
            tokio::task::spawn_blocking(move || cloud.document(&c2, &id2)).await.unwrap().unwrap()
        };
        let in_cloud = in_cloud.unwrap_or_else(|| panic!("the cloud lacks {c}/{id}")).encode();
        for (i, (s, _)) in phones.iter().enumerate() {
            let on_phone = s.document(c, id).unwrap().expect("the phone holds it").encode();
            assert_eq!(on_phone, in_cloud, "{c}/{id} on phone {i} and in the cloud");
        }
    }
    for (_, node) in &phones {
        node.shutdown().await;
    }
    for r in relays {
        r.shutdown().await;
    }
}

/// A phone in development mode, dialling `via` (and nothing else).
async fn phone(dir: &tempfile::TempDir, name: &str, via: &[SocketAddr]) -> (Store, Node) {
    let store = Store::open(dir.path().join(format!("{name}.db"))).unwrap();
    let mut config = NodeConfig::new(name, secret()).with_mdns(false);
    config.connect = via.to_vec();
    let node = Node::start(store.clone(), config).await.unwrap();
    (store, node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_meshes_that_never_meet_converge_through_the_cloud() {
    let Some(url) = tokio::task::spawn_blocking(common::fresh_database).await.unwrap() else { return };
    let relays = [relay(&url).await, relay(&url).await];
    let dir = tempfile::tempdir().unwrap();
    // Two meshes: in each, a gateway phone linked to a relay (a different one for each mesh) and a phone linked
    // only to its gateway (listening on loopback as LAN peers do).
    let mut meshes = Vec::new();
    for (m, r) in relays.iter().enumerate() {
        let store = Store::open(dir.path().join(format!("gateway{m}.db"))).unwrap();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let config = NodeConfig::new(format!("gateway {m}"), secret())
            .with_mdns(false)
            .listen_on(any)
            .connect_to(r.listen_addr().unwrap());
        let gateway = Node::start(store.clone(), config).await.unwrap();
        let inner = phone(&dir, &format!("inner{m}"), &[gateway.listen_addr().unwrap()]).await;
        inner.0.upsert("notes", serde_json::json!({"_id": format!("from mesh {m}"), "text": "hello"})).unwrap();
        meshes.push(((store, gateway), inner));
    }
    common::eventually("each mesh's inner phone holds the other mesh's note", || {
        meshes.iter().all(|(_, (inner, _))| inner.find("notes", &Query::all()).is_ok_and(|d| d.len() == 2))
    })
    .await;
    for ((_, gateway), (_, inner)) in &meshes {
        inner.shutdown().await;
        gateway.shutdown().await;
    }
    for r in relays {
        r.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_device_receives_from_the_cloud_only_what_its_certificate_lets_it_read() {
    let Some(url) = tokio::task::spawn_blocking(common::fresh_database).await.unwrap() else { return };
    let dir = tempfile::tempdir().unwrap();
    let authority = SigningKey::generate().unwrap();
    // The relay is an enrolled device: its keys were made for it (here in a store of their own) and certified.
    let keys = Store::open(dir.path().join("relay-keys.db")).unwrap();
    let relay_enrolment = common::enrol(&keys, &authority, 1, &["read *", "write *"]);
    let identity: Identity = shoaldb::node::device_identity(&keys).unwrap();
    let mut config = RelayConfig::new(&url, "127.0.0.1:0".parse().unwrap(), relay_enrolment);
    config.identity = Some(identity);
    let relay = Relay::start(config).await.unwrap();
    let via = relay.listen_addr().unwrap();

    let start = |name: &str, serial: u64, grants: &'static [&'static str]| {
        let store = Store::open(dir.path().join(format!("{name}.db"))).unwrap();
        let e = common::enrol(&store, &authority, serial, grants);
        let config = NodeConfig::new(name, e).with_mdns(false).connect_to(via);
        (store, config)
    };
    let (writer, config) = start("writer", 2, &["read *", "write *"]);
    let writer_node = Node::start(writer.clone(), config).await.unwrap();
    for i in 0..5 {
        writer.upsert("tasks", serde_json::json!({"_id": format!("t{i}"), "title": "public"})).unwrap();
        writer.upsert("payroll", serde_json::json!({"_id": format!("p{i}"), "salary": 1000 + i})).unwrap();
    }
    let (reader, config) = start("reader", 3, &["read tasks", "write tasks"]);
    let reader_node = Node::start(reader.clone(), config).await.unwrap();
    common::eventually("the reader holds every task", || {
        reader.find("tasks", &Query::all()).is_ok_and(|d| d.len() == 5)
    })
    .await;
    // The cloud holds the payroll (its certificate reads everything) …
    let cloud = relay.replica().clone();
    let in_cloud = tokio::task::spawn_blocking(move || cloud.document("payroll", "p0")).await.unwrap().unwrap();
    assert!(in_cloud.is_some(), "the relay took in the payroll");
    // … and sent none of it to the reader, now or after a few more rounds of sync.
    reader.upsert("tasks", serde_json::json!({"_id": "from reader", "title": "x"})).unwrap();
    common::eventually("the writer holds the reader's task", || {
        writer.get("tasks", "from reader").is_ok_and(|d| d.is_some())
    })
    .await;
    assert_eq!(reader.find("payroll", &Query::all()).unwrap().len(), 0, "the reader received the payroll");
    reader_node.shutdown().await;
    writer_node.shutdown().await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revocation_one_relay_took_in_holds_for_a_relay_started_later() {
    use shoaldb::security::Revocation;
    let Some(url) = tokio::task::spawn_blocking(common::fresh_database).await.unwrap() else { return };
    let dir = tempfile::tempdir().unwrap();
    let authority = SigningKey::generate().unwrap();
    let relay_on = |serial: u64| {
        let keys = Store::open(dir.path().join(format!("relay{serial}.db"))).unwrap();
        let e = common::enrol(&keys, &authority, serial, &["read *", "write *"]);
        let mut config = RelayConfig::new(&url, "127.0.0.1:0".parse().unwrap(), e);
        config.identity = Some(shoaldb::node::device_identity(&keys).unwrap());
        config
    };
    let first = Relay::start(relay_on(1)).await.unwrap();
    let device = |name: &str, serial: u64, via: SocketAddr| {
        let store = Store::open(dir.path().join(format!("{name}.db"))).unwrap();
        let e = common::enrol(&store, &authority, serial, &["read *", "write *"]);
        (store, NodeConfig::new(name, e).with_mdns(false).connect_to(via))
    };
    // An honest phone takes the authority's list revoking serial 9 and hands it to the first relay.
    let (honest, config) = device("honest", 2, first.listen_addr().unwrap());
    let honest_node = Node::start(honest.clone(), config).await.unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let revoked = Revocation::Certificate { issuer: authority.verifying_key(), serial: 9 };
    let list = enrolment::revoke(&authority, 1, now, vec![revoked]).unwrap();
    honest_node.add_revocations(list).await.unwrap();
    let kept = first.replica().clone();
    common::eventually("the cloud keeps the list", move || {
        tokio::task::block_in_place(|| kept.revocation_lists().is_ok_and(|l| l.len() == 1))
    })
    .await;
    first.shutdown().await;

    // A relay started afterwards refuses the revoked device at once, and serves an honest one.
    let second = Relay::start(relay_on(3)).await.unwrap();
    let via = second.listen_addr().unwrap();
    let (lost, config) = device("lost", 9, via);
    lost.upsert("tasks", serde_json::json!({"_id": "from the lost phone"})).unwrap();
    let lost_node = Node::start(lost.clone(), config).await.unwrap();
    let (other, config) = device("other", 4, via);
    other.upsert("tasks", serde_json::json!({"_id": "from another phone"})).unwrap();
    let other_node = Node::start(other.clone(), config).await.unwrap();
    let cloud = second.replica().clone();
    let has = move |id: &'static str| {
        let cloud = cloud.clone();
        move || tokio::task::block_in_place(|| cloud.document("tasks", id).is_ok_and(|d| d.is_some()))
    };
    common::eventually("the honest phone's task reaches the cloud", has("from another phone")).await;
    // By then the revoked phone has had as long as the honest one to get its task through: it has not.
    assert!(!has("from the lost phone")(), "a revoked device's change reached the cloud");
    assert_eq!(other.get("tasks", "from the lost phone").unwrap(), None);
    for node in [honest_node, lost_node, other_node] {
        node.shutdown().await;
    }
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_takes_many_devices_from_one_address() {
    // A device takes at most 8 connections from one address; a relay is reached by many devices from one (carrier
    // NAT, a load balancer): here 12 phones, all on loopback.
    const MANY: usize = 12;
    let Some(url) = tokio::task::spawn_blocking(common::fresh_database).await.unwrap() else { return };
    let relay = relay(&url).await;
    let via = relay.listen_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut phones = Vec::new();
    for i in 0..MANY {
        let (store, node) = phone(&dir, &format!("phone{i}"), &[via]).await;
        store.upsert("roll", serde_json::json!({"_id": format!("present {i}")})).unwrap();
        phones.push((store, node));
    }
    common::eventually("every phone holds every phone's entry", || {
        phones.iter().all(|(s, _)| s.find("roll", &Query::all()).is_ok_and(|d| d.len() == MANY))
    })
    .await;
    assert_eq!(relay.node().link_count(), MANY);
    for (_, node) in &phones {
        node.shutdown().await;
    }
    relay.shutdown().await;
}

/// Phones that reach the cloud only through WebSocket (as through an HTTP load balancer) sync with phones on plain
/// TCP links to another relay of the same database.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_phone_on_a_websocket_syncs_with_a_phone_on_another_relay() {
    let Some(url) = tokio::task::spawn_blocking(common::fresh_database).await.unwrap() else { return };
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut config = RelayConfig::new(&url, any, secret());
    config.websocket = Some(any);
    let behind_balancer = Relay::start(config).await.unwrap();
    let plain = relay(&url).await;
    let dir = tempfile::tempdir().unwrap();
    let ws = format!("ws://{}/sync", behind_balancer.websocket_addr().unwrap());
    let store = Store::open(dir.path().join("ws.db")).unwrap();
    let on_ws = Node::start(store.clone(), NodeConfig::new("ws phone", secret()).with_mdns(false).connect_to_cloud(ws))
        .await
        .unwrap();
    let (tcp, on_tcp) = phone(&dir, "tcp phone", &[plain.listen_addr().unwrap()]).await;
    store.upsert("notes", serde_json::json!({"_id": "over websocket"})).unwrap();
    tcp.upsert("notes", serde_json::json!({"_id": "over tcp"})).unwrap();
    common::eventually("both phones hold both notes", || {
        [&store, &tcp].iter().all(|s| s.find("notes", &Query::all()).is_ok_and(|d| d.len() == 2))
    })
    .await;
    on_ws.shutdown().await;
    on_tcp.shutdown().await;
    behind_balancer.shutdown().await;
    plain.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_phone_and_the_cloud_holding_different_versions_of_a_change_both_find_it_by_digest() {
    let Some(url) = tokio::task::spawn_blocking(common::fresh_database).await.unwrap() else { return };
    // One author's change, and a forgery of it: the same counters, other contents.
    let author = Store::open(":memory:").unwrap();
    author.upsert("tasks", serde_json::json!({"_id": "a", "title": "honest"})).unwrap();
    let honest = author.replica().changes_since(&shoaldb::Summary::new()).unwrap();
    let mut forged = honest[0].clone();
    for op in &mut forged.change.ops {
        if let shoaldb::Op::Set { value, .. } = op {
            *value = shoaldb::Scalar::Str("forged".into());
        }
    }
    // The cloud holds the forgery, the phone the honest change: equal summaries, so nothing travels by summary.
    let (u, f) = (url.clone(), forged.clone());
    let cloud = tokio::task::spawn_blocking(move || {
        let cloud = shoaldb_cloud::PgReplica::connect(&u, 1).unwrap();
        cloud.apply_changes(&[f]).unwrap();
        cloud
    })
    .await
    .unwrap();
    let relay = relay(&url).await;
    let dir = tempfile::tempdir().unwrap();
    let (store, node) = phone(&dir, "phone", &[relay.listen_addr().unwrap()]).await;
    store.replica().apply_changes(&honest).unwrap();
    // The digests exchanged when the link comes up tell them apart; each sends its version, and each records the
    // pair.
    common::eventually("the phone records the equivocation", || !store.equivocations().unwrap().is_empty()).await;
    let c = cloud.clone();
    let mut seen = false;
    for _ in 0..600 {
        let c = c.clone();
        if tokio::task::spawn_blocking(move || !c.equivocations(10).unwrap().is_empty()).await.unwrap() {
            seen = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(seen, "the cloud did not record the equivocation");
    // Each keeps the version it held.
    assert_eq!(store.get("tasks", "a").unwrap().unwrap()["title"], "honest");
    node.shutdown().await;
    relay.shutdown().await;
}

/// A phone that folded all its changes into snapshots before it ever reached the cloud (issue 17) sends documents'
/// states over its link: the cloud merges them and serves them to a phone that reaches it later, whose own edits
/// made meanwhile merge by the usual rules; a document removed before the compaction stays removed everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_phone_that_compacted_before_reaching_the_cloud_leaves_it_complete() {
    let Some(url) = tokio::task::spawn_blocking(common::fresh_database).await.unwrap() else { return };
    let relay = relay(&url).await;
    let dir = tempfile::tempdir().unwrap();
    let early = Store::open(dir.path().join("early.db")).unwrap();
    for d in 0..4 {
        early.upsert("tasks", serde_json::json!({"_id": format!("t{d}"), "title": format!("task {d}")})).unwrap();
    }
    early.write(|t| t.update("tasks", "t0", |ed| Ok(ed.increment("visits", 3)?))).unwrap();
    early.remove("tasks", "t1").unwrap();
    let report = early.compact(&shoaldb::CompactionPolicy::everything()).unwrap();
    assert!(report.changes >= 6, "{report:?}");
    assert_eq!(early.storage_stats().unwrap().log_changes, 0);
    let early_changes = early.replica().summary().unwrap();
    // The other phone edits the same documents before it meets anyone.
    let late = Store::open(dir.path().join("late.db")).unwrap();
    late.write(|t| {
        t.upsert("tasks", serde_json::json!({"_id": "t0"}))?;
        t.update("tasks", "t0", |ed| Ok(ed.increment("visits", 1)?))
    })
    .unwrap();
    late.upsert("tasks", serde_json::json!({"_id": "t2", "owner": "late"})).unwrap();
    let via = [relay.listen_addr().unwrap()];
    let config = |name: &str| {
        let mut c = NodeConfig::new(name, secret()).with_mdns(false);
        c.connect = via.to_vec();
        c
    };
    let early_node = Node::start(early.clone(), config("early")).await.unwrap();
    let cloud = relay.replica().clone();
    common::eventually("the cloud holds what the early phone folded", || {
        let held = tokio::task::block_in_place(|| cloud.summary());
        held.is_ok_and(|s| early_changes.difference(&s).is_empty())
    })
    .await;
    let late_node = Node::start(late.clone(), config("late")).await.unwrap();
    common::eventually("both phones hold the same", || {
        late.replica().summary().ok() == early.replica().summary().ok() && {
            let all = |s: &Store| s.find("tasks", &Query::all()).unwrap();
            all(&late) == all(&early)
        }
    })
    .await;
    assert_eq!(late.get("tasks", "t0").unwrap().unwrap()["visits"], 4);
    assert_eq!(late.get("tasks", "t2").unwrap().unwrap()["owner"], "late");
    assert_eq!(late.get("tasks", "t2").unwrap().unwrap()["title"], "task 2");
    assert_eq!(late.get("tasks", "t1").unwrap(), None, "removed before the compaction, and stays removed");
    assert_eq!(late.find("tasks", &Query::all()).unwrap().len(), 3);
    // The cloud holds the early phone's changes only folded into the states it merged (no log rows): the late
    // phone, linked to nothing else, got them as states.
    let c = cloud.clone();
    let folded = tokio::task::spawn_blocking(move || {
        let mut all = shoaldb::Summary::new();
        for id in ["t0", "t1", "t2", "t3"] {
            all.union_with(&c.folded_of_doc(c.doc_number("tasks", id)?.unwrap_or(-1))?);
        }
        Ok::<_, shoaldb::Error>(all)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(folded, early_changes, "every change of the early phone, folded");
    // The relay kept what each phone said it holds (the fleet's frontier is within what both hold), and the early
    // phone's acknowledgements hold every change it made.
    let (c, u) = (cloud.clone(), url.clone());
    let (frontier, acks) = tokio::task::spawn_blocking(move || {
        let frontier = c.fleet_frontier(shoaldb::CompactionPolicy::default().horizon_ms).unwrap();
        let mut db = postgres::Client::connect(&u, postgres::NoTls).unwrap();
        let rows = db.query("SELECT summary FROM device_acks", &[]).unwrap();
        let acks: Vec<shoaldb::Summary> =
            rows.iter().map(|r| shoaldb::Summary::decode_dense(r.get(0)).unwrap()).collect();
        (frontier, acks)
    })
    .await
    .unwrap();
    assert_eq!(acks.len(), 2, "one row per phone");
    assert!(acks.iter().any(|a| early_changes.difference(a).is_empty()), "{acks:?}");
    let frontier = frontier.unwrap();
    for phone in [&early, &late] {
        assert!(frontier.difference(&phone.replica().summary().unwrap()).is_empty());
    }
    for id in ["t0", "t1", "t2", "t3"] {
        let c = cloud.clone();
        let in_cloud = tokio::task::spawn_blocking(move || c.document("tasks", id)).await.unwrap().unwrap();
        assert_eq!(in_cloud.map(|d| d.encode()), early.document("tasks", id).unwrap().map(|d| d.encode()), "{id}");
    }
    late_node.shutdown().await;
    early_node.shutdown().await;
    relay.shutdown().await;
}
