//! PostgreSQL crashes (`pg_ctl restart -m immediate`: no shutdown checkpoint, as on power loss) while a phone keeps
//! writing through a relay: nothing the database had committed is lost, the relay recovers by itself (its pool
//! and its follower reconnect), and every change the phone wrote ends up in the database.
//!
//! Alone in its test binary: it restarts the server the other tests share.

mod common;

use shoaldb::node::{Node, NodeConfig};
use shoaldb::security::AppSecret;
use shoaldb::Store;
use shoaldb_cloud::{Relay, RelayConfig};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_of_postgres_loses_nothing_and_the_relay_recovers() {
    let Some(url) = tokio::task::spawn_blocking(common::fresh_database).await.unwrap() else { return };
    let secret = AppSecret::from_bytes(b"restart test").unwrap();
    let relay = Relay::start(RelayConfig::new(&url, "127.0.0.1:0".parse().unwrap(), secret.clone())).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("phone.db")).unwrap();
    let config = NodeConfig::new("phone", secret).with_mdns(false).connect_to(relay.listen_addr().unwrap());
    let node = Node::start(store.clone(), config).await.unwrap();

    let count = |url: &str| {
        let url = url.to_string();
        async move { tokio::task::spawn_blocking(move || common::docs_in(&url, "log")).await.unwrap() }
    };
    let wait_for = |n: i64, what: &'static str| {
        let url = url.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(90);
            while Instant::now() < deadline {
                if count(&url).await == Some(n) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("timed out waiting for {what}: {:?} of {n} documents", count(&url).await);
        }
    };
    for i in 0..100 {
        store.upsert("log", serde_json::json!({"_id": format!("before {i}")})).unwrap();
    }
    wait_for(100, "the first hundred in PostgreSQL").await;

    // The crash, while the phone goes on writing.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..100 {
                store.upsert("log", serde_json::json!({"_id": format!("during {i}")})).unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    tokio::task::spawn_blocking(|| common::pg_ctl(&["-m", "immediate", "restart"])).await.unwrap();
    let after = count(&url).await.expect("PostgreSQL is back");
    assert!(after >= 100, "{after} documents after the crash: committed changes were lost");
    writer.await.unwrap();
    wait_for(200, "every change the phone wrote, after the crash").await;

    node.shutdown().await;
    relay.shutdown().await;
}
