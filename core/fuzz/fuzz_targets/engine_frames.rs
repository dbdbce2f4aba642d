//! Arbitrary frames into a sync engine, both before and after a genuine handshake: the engine never panics, a bad
//! frame closes the link, and nothing reaches the store from a link that failed.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoaldb::security::{AppSecret, Identity};
use shoaldb::sync::{Engine, Subscription, TransportKind};

mod common;

fuzz_target!(|data: &[u8]| {
    let dir = common::scratch_dir();
    let secret = AppSecret::from_bytes(b"fuzz").expect("secret");
    let open = |n: &str| common::open_store(dir.path(), n);
    let mut a = Engine::new(
        open("a.db").replica(),
        Identity::generate().expect("id"),
        secret.clone(),
        "a",
        vec![Subscription::everything()],
        0,
    );
    let mut b = Engine::new(
        open("b.db").replica(),
        Identity::generate().expect("id"),
        secret,
        "b",
        vec![Subscription::everything()],
        0,
    );
    let la = a.add_link(TransportKind::Lan, true).expect("link");
    let lb = b.add_link(TransportKind::Lan, false).expect("link");
    // Unauthenticated garbage first, on a separate link.
    let lx = b.add_link(TransportKind::Lan, false).expect("link");
    for piece in data.split(|&x| x == 0xff).take(8) {
        b.on_frame(lx, piece);
    }
    // A genuine handshake, then the fuzz input as frames.
    for _ in 0..4 {
        while let Some(f) = a.poll_frame(la) {
            b.on_frame(lb, &f);
        }
        while let Some(f) = b.poll_frame(lb) {
            a.on_frame(la, &f);
        }
    }
    let before = b.replica().summary().expect("summary");
    for piece in data.split(|&x| x == 0xfe).take(16) {
        b.on_frame(lb, piece);
    }
    if b.is_closed(lb) {
        assert_eq!(b.replica().summary().expect("summary"), before);
    }
});
