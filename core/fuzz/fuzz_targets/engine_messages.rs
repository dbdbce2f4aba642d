//! Plaintext messages from a hostile device into a sync engine, past the encryption: an attacker engine completes a
//! genuine handshake with the victim (same app secret), then sends structured messages built from the fuzz bytes
//! (and raw byte messages) through `Engine::send_raw`, and relays what the victim answers. Invariants: the victim
//! never panics; a message that makes the victim close the link changed nothing in its store (summary and
//! documents as they were before that message; changes from earlier, accepted messages may have applied); the
//! victim's store stays consistent and still takes local writes; a closed link stays closed.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoaldb::security::{AppSecret, Identity};
use shoaldb::store::Replica;
use shoaldb::sync::{Engine, LinkId, Subscription, TransportKind};
use shoaldb::Store;

mod common;
use common::Input;

fn engine(store: &Store, name: &str, secret: &AppSecret) -> Engine {
    let id = Identity::generate().expect("identity");
    Engine::new(store.replica(), id, secret.clone(), name, vec![Subscription::everything()], 0)
}

/// Move frames both ways until neither side has any (bounded).
fn pump(a: &mut Engine, la: LinkId, v: &mut Engine, lv: LinkId) {
    for _ in 0..16 {
        let mut moved = false;
        while let Some(f) = a.poll_frame(la) {
            moved = true;
            v.on_frame(lv, &f);
        }
        while let Some(f) = v.poll_frame(lv) {
            moved = true;
            a.on_frame(la, &f);
        }
        if !moved {
            break;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let dir = common::scratch_dir();
    let secret = AppSecret::from_bytes(b"fuzz").expect("secret");
    let victim_store = common::open_store(dir.path(), "victim.db");
    victim_store.upsert("c", serde_json::json!({"_id": "x", "a": 1, "t": "text"})).expect("seed");
    let attacker_store = common::open_store(dir.path(), "attacker.db");
    attacker_store.upsert("d", serde_json::json!({"_id": "y", "b": 2})).expect("seed");
    let mut v = engine(&victim_store, "victim", &secret);
    let mut a = engine(&attacker_store, "attacker", &secret);
    let la = a.add_link(TransportKind::Lan, true).expect("link");
    let lv = v.add_link(TransportKind::Lan, false).expect("link");
    pump(&mut a, la, &mut v, lv);
    assert!(!v.is_closed(lv), "the genuine handshake failed");
    let mut input = Input::new(data);
    let mut sent = 0;
    while !input.is_empty() && sent < 8 && !v.is_closed(lv) {
        sent += 1;
        let msg = common::message(&mut input);
        let summary = victim_store.replica().summary().expect("summary");
        let docs = common::documents(&victim_store);
        if a.send_raw(la, &msg).is_err() {
            break;
        }
        pump(&mut a, la, &mut v, lv);
        if v.is_closed(lv) {
            assert_eq!(
                victim_store.replica().summary().expect("summary"),
                summary,
                "a refused message changed the store"
            );
            assert_eq!(common::documents(&victim_store), docs, "a refused message changed a document");
        }
    }
    v.tick(60_000);
    victim_store.check_integrity().expect("the victim's store stays consistent");
    victim_store.upsert("c", serde_json::json!({"_id": "local", "ok": true})).expect("the victim still writes");
});
