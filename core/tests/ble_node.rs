//! Nodes syncing over Bluetooth LE links: the node's BLE task driving the link protocol over radios that share an
//! in-memory air (`shoaldb::sim::memory_air`), on a real tokio runtime. A line of three phones with no network at
//! all, phones both on a LAN and in radio range (the LAN carries the data, BLE stands by and takes over), and a
//! phone of another app. Every wait polls a condition for up to 30 s: nothing asserts on timing.

use serde_json::json;
use shoaldb::node::{Node, NodeConfig};
use shoaldb::security::AppSecret;
use shoaldb::sim::memory_air::MemoryAir;
use shoaldb::store::Replica;
use shoaldb::sync::TransportKind;
use shoaldb::Store;
use std::path::Path;
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(30);

fn open(dir: &Path, name: &str) -> Store {
    Store::open(dir.join(format!("{name}.db"))).expect("store")
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn phone(dir: &Path, air: &MemoryAir, name: &str, secret: &[u8], lan: bool) -> Node {
    let secret = AppSecret::from_bytes(secret).expect("secret");
    let mut config = NodeConfig::new(name, secret).with_mdns(false).with_ble(air.radio(name));
    if lan {
        config = config.listen_on("127.0.0.1:0".parse().expect("addr"));
    }
    Node::start(open(dir, name), config).await.expect("node starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_phones_in_a_line_sync_over_ble_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let air = MemoryAir::new(185);
    // a – b – c: a and c are out of each other's range.
    air.set_in_range("a", "c", false);
    let a = phone(dir.path(), &air, "a", b"ble secret", false).await;
    let b = phone(dir.path(), &air, "b", b"ble secret", false).await;
    let c = phone(dir.path(), &air, "c", b"ble secret", false).await;
    a.store().upsert("notes", json!({"_id": "from-a", "text": "x".repeat(5000)})).expect("write");
    c.store().upsert("notes", json!({"_id": "from-c", "n": 1})).expect("write");
    eventually("a's note reaches c through b", || c.store().get("notes", "from-a").ok().flatten().is_some()).await;
    eventually("c's note reaches a through b", || a.store().get("notes", "from-c").ok().flatten().is_some()).await;
    eventually("identical stores", || {
        a.store().replica().summary().ok() == c.store().replica().summary().ok()
            && b.store().replica().summary().ok() == a.store().replica().summary().ok()
    })
    .await;
    eventually("presence over BLE, c two hops from a", || {
        let p = a.peers();
        p.iter().any(|p| p.name == "b" && p.hops == 1 && p.transport == TransportKind::Ble)
            && p.iter().any(|p| p.name == "c" && p.hops == 2)
    })
    .await;
    // Live edits keep flowing, and a phone walking out of range and back catches up.
    air.set_in_range("b", "c", false);
    a.store().update("notes", "from-a", |d| Ok(d.set("text", "edited while c was away")?)).expect("edit");
    air.set_in_range("b", "c", true);
    eventually("c catches up after coming back into range", || {
        c.store().get("notes", "from-a").ok().flatten().is_some_and(|d| d["text"] == "edited while c was away")
    })
    .await;
    for n in [&a, &b, &c] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lan_carries_the_data_and_ble_stands_by() {
    let dir = tempfile::tempdir().expect("tempdir");
    let air = MemoryAir::new(247);
    let a = phone(dir.path(), &air, "a", b"ble secret", true).await;
    let b = phone(dir.path(), &air, "b", b"ble secret", true).await;
    eventually("a BLE link", || b.peers().iter().any(|p| p.name == "a" && p.direct.contains(&TransportKind::Ble)))
        .await;
    b.connect(a.listen_addr().expect("a listens"));
    eventually("both links, the LAN carrying", || {
        b.peers().iter().any(|p| {
            p.name == "a" && p.transport == TransportKind::Lan && p.direct == [TransportKind::Lan, TransportKind::Ble]
        })
    })
    .await;
    for i in 0..50 {
        a.store().upsert("docs", json!({"_id": format!("d{i}"), "body": "y".repeat(1000)})).expect("write");
    }
    eventually("b has every document", || b.store().replica().summary().ok() == a.store().replica().summary().ok())
        .await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_of_another_app_is_never_linked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let air = MemoryAir::new(185);
    let a = phone(dir.path(), &air, "a", b"ble secret", false).await;
    let b = phone(dir.path(), &air, "b", b"ble secret", false).await;
    let other = phone(dir.path(), &air, "other", b"another app", false).await;
    other.store().upsert("notes", json!({"_id": "secret"})).expect("write");
    a.store().upsert("notes", json!({"_id": "mine"})).expect("write");
    eventually("a and b linked", || b.store().get("notes", "mine").ok().flatten().is_some()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(a.peers().iter().all(|p| p.name != "other"), "{:?}", a.peers());
    assert!(a.store().get("notes", "secret").expect("read").is_none());
    assert!(other.store().get("notes", "mine").expect("read").is_none());
    for n in [&a, &b, &other] {
        n.shutdown().await;
    }
}
