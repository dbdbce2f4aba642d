//! Engines joined by in-memory wires, for tests that drive sync engines by hand (`hostile_sync.rs`,
//! `hostile_authors.rs`, `compaction.rs`, `crash.rs`): frames move until nothing moves.
#![allow(dead_code)]

use shoaldb::security::{AppSecret, Identity};
use shoaldb::sync::{Engine, LinkId, Subscription, TransportKind};

/// A wire: (device a, its link, device b, its link).
pub type Wire = (usize, LinkId, usize, LinkId);

/// One engine per store (device `i` named `dev{i}`), in the fleet of `secret`, each subscribed to everything.
pub fn engines(stores: &[&shoaldb::Store], secret: &[u8]) -> Vec<Engine> {
    let secret = AppSecret::from_bytes(secret).unwrap();
    stores
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let id = Identity::generate().unwrap();
            Engine::new(s.replica(), id, secret.clone(), &format!("dev{i}"), vec![Subscription::everything()], 0)
        })
        .collect()
}

/// A wire between devices `a` (which dials) and `b`, over new LAN links.
pub fn connect(engines: &mut [Engine], a: usize, b: usize) -> Wire {
    let la = engines[a].add_link(TransportKind::Lan, true).unwrap();
    let lb = engines[b].add_link(TransportKind::Lan, false).unwrap();
    (a, la, b, lb)
}

/// Move frames along every wire, both ways, until nothing moves — except to `deaf = (wire, device)`, which stops
/// reading that wire. Panics if the network never settles.
pub fn settle(engines: &mut [Engine], wires: &[Wire], deaf: Option<(usize, usize)>) {
    for _ in 0..1_000_000 {
        let mut moved = false;
        for (i, &(a, la, b, lb)) in wires.iter().enumerate() {
            for (from, lf, to, lt) in [(a, la, b, lb), (b, lb, a, la)] {
                if deaf == Some((i, to)) {
                    continue;
                }
                while let Some(f) = engines[from].poll_frame(lf) {
                    engines[to].on_frame(lt, &f);
                    moved = true;
                }
            }
        }
        if !moved {
            return;
        }
    }
    panic!("the network did not settle");
}
