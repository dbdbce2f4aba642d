//! Phones syncing through relays over real TCP links (Noise handshakes, the same engine as phone to phone): two
//! relays on one database, phones on either, every phone and the database end with byte-identical documents.

mod common;

use shoaldb::node::{Node, NodeConfig};
use shoaldb::security::AppSecret;
use shoaldb::{Query, Store};
use shoaldb_cloud::{Relay, RelayConfig};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const PHONES: usize = 3;
const DOCS_EACH: usize = 5;

/// Wait until `f` holds, up to a minute (a slow, shared machine).
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

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
    eventually("every phone holds every task and every visit", || {
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
