//! Engines joined by in-memory wires, for tests that drive sync engines by hand (`hostile_sync.rs`,
//! `hostile_authors.rs`): frames move until nothing moves.
#![allow(dead_code)]

use shoaldb::sync::{Engine, LinkId};

/// A wire: (device a, its link, device b, its link).
pub type Wire = (usize, LinkId, usize, LinkId);

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
