//! Two Linux peers (the core's Bluetooth LE stack over `linux::AirRadio`) on the air, driven as the mesh drives
//! phones: a note crosses over GATT with a window of one packet in flight, and over L2CAP; nothing is sent over
//! the MTU or into a full window; a fresh store syncs again; an unknown command fails.

use serde_json::{json, Value};
use shoaldb_air::control::Control;
use shoaldb_air::{linux, server};
use std::time::{Duration, Instant};

/// Polls `ask` until `done` holds for its answer (the phones' timing is their own), or fails after a minute.
async fn until(what: &str, control: &Control, phone: &str, done: impl Fn(&Value) -> bool) {
    let start = Instant::now();
    loop {
        let notes = control.run(phone, json!({"cmd": "notes"})).await.expect("notes");
        if done(&notes["notes"]) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{what}: not within 60 s; last {notes}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linux_peers_sync_over_gatt_and_l2cap() {
    let air = server::serve(0, 3).await.expect("serve");
    let address = air.address.to_string();
    let peers: Vec<_> = ["L1", "L2"]
        .into_iter()
        .map(|name| {
            let address = address.clone();
            tokio::spawn(async move { linux::run(&address, name).await })
        })
        .collect();
    let control = Control::connect(air.address).await.expect("control");
    let start = Instant::now();
    // The air lists phones in the order they joined, which is the two tasks' race.
    let joined = |t: Value| {
        let mut names: Vec<String> =
            t["phones"].as_array().into_iter().flatten().filter_map(|p| p.as_str().map(str::to_owned)).collect();
        names.sort();
        names
    };
    while joined(control.traffic().await.expect("traffic")) != ["L1", "L2"] {
        assert!(start.elapsed() < Duration::from_secs(30), "the peers did not join");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (round, l2cap) in [false, true].into_iter().enumerate() {
        control.ask(json!({"op": "reset", "window": 1})).await.expect("reset");
        for peer in ["L1", "L2"] {
            let opened = control.run(peer, json!({"cmd": "open", "l2cap": l2cap})).await.expect("open");
            assert_eq!(opened["ok"], true, "{opened}");
        }
        let text = "x".repeat(10_000) + &round.to_string();
        control.run("L1", json!({"cmd": "put", "doc": "n1", "text": text})).await.expect("put");
        until("L1's note at L2", &control, "L2", |notes| notes["n1"] == json!(text)).await;
        let t = control.traffic().await.expect("traffic");
        assert_eq!((t["oversized"].as_u64(), t["overrun"].as_u64()), (Some(0), Some(0)), "{t}");
        if l2cap {
            assert!(t["channels"].as_u64() >= Some(1) && t["stream_bytes"].as_u64() > Some(10_000), "{t}");
        } else {
            // 10 KB in packets of at most 514 bytes (ATT MTU 517 − 3).
            let packets = t["writes"].as_u64().unwrap_or(0) + t["notifications"].as_u64().unwrap_or(0);
            assert!(t["channels"] == 0 && packets > 10_000 / 514, "{t}");
        }
    }
    let bogus = control.run("L1", json!({"cmd": "fly"})).await.expect_err("an unknown command");
    assert!(bogus.to_string().contains("unknown command"), "{bogus}");
    for peer in ["L1", "L2"] {
        control.run(peer, json!({"cmd": "quit"})).await.expect("quit");
    }
    for peer in peers {
        assert_eq!(peer.await.expect("join"), Ok(()));
    }
}
