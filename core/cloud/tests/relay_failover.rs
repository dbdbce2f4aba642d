//! A relay process is killed (SIGKILL: no goodbye) while a fresh phone is catching up through it; the phone
//! turns to another relay of the same database and ends with everything, and what it writes then reaches the
//! database.

mod common;

use shoaldb::node::{Node, NodeConfig};
use shoaldb::security::AppSecret;
use shoaldb::{Query, Store};

const SECRET: &[u8] = b"failover test secret";
const DOCS: usize = 3000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_phone_switches_relay_after_its_relay_is_killed_mid_catch_up() {
    let Some(url) = tokio::task::spawn_blocking(common::fresh_database).await.unwrap() else { return };
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let exe = env!("CARGO_BIN_EXE_shoal-cloud");
    let args = [std::ffi::OsStr::new("--secret-file"), secret_file.as_os_str()];
    let (mut a, addr_a) = common::spawn_relay(exe, &url, &args);
    let (mut b, addr_b) = common::spawn_relay(exe, &url, &args);
    let secret = AppSecret::from_bytes(SECRET).unwrap();

    // A phone fills the cloud through relay A.
    let source = Store::open(dir.path().join("source.db")).unwrap();
    source
        .write(|t| {
            for i in 0..DOCS {
                t.upsert("tasks", serde_json::json!({"_id": format!("t{i}"), "body": "x".repeat(1000)}))?;
            }
            Ok(())
        })
        .unwrap();
    let config = NodeConfig::new("source", secret.clone()).with_mdns(false).connect_to(addr_a);
    let source_node = Node::start(source.clone(), config).await.unwrap();
    // (A blocking PostgreSQL client: off the runtime's async threads.)
    let in_cloud = |url: &str| tokio::task::block_in_place(|| common::docs_in(url, "tasks"));
    let url2 = url.clone();
    common::eventually("the cloud holds every task", move || in_cloud(&url2) == Some(DOCS as i64)).await;
    source_node.shutdown().await;

    // A fresh phone catches up through A; A dies in the middle.
    let fresh = Store::open(dir.path().join("fresh.db")).unwrap();
    let config = NodeConfig::new("fresh", secret.clone()).with_mdns(false).connect_to(addr_a);
    let fresh_node = Node::start(fresh.clone(), config).await.unwrap();
    let held = || fresh.find("tasks", &Query::all()).map_or(0, |d| d.len());
    common::eventually("the catch-up has begun", || held() > 0).await;
    a.kill();
    let at_kill = held();
    assert!(at_kill < DOCS, "the catch-up was over before the relay was killed ({at_kill} of {DOCS})");

    fresh_node.connect(addr_b);
    common::eventually("the phone holds every task, through relay B", || held() == DOCS).await;
    fresh.upsert("tasks", serde_json::json!({"_id": "after the switch"})).unwrap();
    let url2 = url.clone();
    common::eventually("its new task reaches the database", move || in_cloud(&url2) == Some(DOCS as i64 + 1)).await;

    fresh_node.shutdown().await;
    b.kill();
}
