//! Where the time and random numbers come from: the system (what apps use), or injected — a clock and a seed — so
//! that a simulated run replays byte for byte.

use super::lock;
use super::rng::SeededRng;
use std::fmt;
use std::sync::{Arc, Mutex};

/// A wall clock: milliseconds since the Unix epoch.
pub type WallClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The time and randomness of a store (see [`crate::Options::sources`]). Cheap to clone; clones share the
/// random stream.
#[derive(Clone, Default)]
pub struct Sources {
    clock: Option<WallClock>,
    rng: Option<Arc<Mutex<SeededRng>>>,
}

impl Sources {
    /// The system clock and the operating system's random numbers (the default).
    pub fn system() -> Sources {
        Sources::default()
    }

    /// Random numbers drawn from `seed` instead of the operating system. Ids made from them (peer, author and
    /// document ids) are predictable: for simulations and tests, never for an app.
    pub fn seeded(seed: u64) -> Sources {
        Sources { clock: None, rng: Some(Arc::new(Mutex::new(SeededRng::new(seed)))) }
    }

    /// The same sources, with `clock` (milliseconds since the Unix epoch) instead of the system clock.
    pub fn with_clock(self, clock: impl Fn() -> u64 + Send + Sync + 'static) -> Sources {
        Sources { clock: Some(Arc::new(clock)), ..self }
    }

    /// Whether the random numbers come from a seed.
    pub fn is_seeded(&self) -> bool {
        self.rng.is_some()
    }

    /// The wall clock, in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        match &self.clock {
            Some(clock) => clock(),
            None => crate::crdt::clock::wall_clock_ms(),
        }
    }

    /// Fills `bytes` with random bytes. Without OS randomness, falls back to a hash of the time and an address
    /// (unique enough for ids on one device, never used for keys).
    pub fn fill(&self, bytes: &mut [u8]) {
        match &self.rng {
            Some(rng) => {
                let mut rng = lock(rng);
                for chunk in bytes.chunks_mut(8) {
                    let v = rng.next_u64().to_le_bytes();
                    chunk.copy_from_slice(&v[..chunk.len()]);
                }
            }
            None => {
                if getrandom::fill(bytes).is_err() {
                    let noise = blake3::hash(
                        &[self.now_ms().to_le_bytes(), (bytes.as_ptr() as usize as u64).to_le_bytes()].concat(),
                    );
                    let mut out = blake3::Hasher::new_keyed(noise.as_bytes()).finalize_xof();
                    out.fill(bytes);
                }
            }
        }
    }

    /// A random, non-zero 64-bit number.
    pub fn random_u64(&self) -> u64 {
        let mut b = [0u8; 8];
        self.fill(&mut b);
        u64::from_le_bytes(b).max(1)
    }
}

impl fmt::Debug for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match (&self.clock, &self.rng) {
            (None, None) => "Sources(system)",
            (Some(_), None) => "Sources(injected clock, OS randomness)",
            (None, Some(_)) => "Sources(system clock, seeded)",
            (Some(_), Some(_)) => "Sources(injected clock, seeded)",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_sources_repeat_and_system_ones_do_not() {
        let a = Sources::seeded(7).with_clock(|| 1_000);
        let b = Sources::seeded(7).with_clock(|| 1_000);
        assert!(a.is_seeded());
        assert_eq!((a.random_u64(), a.random_u64(), a.now_ms()), (b.random_u64(), b.random_u64(), b.now_ms()));
        let mut odd = [0u8; 5];
        a.fill(&mut odd);
        let system = Sources::system();
        assert!(!system.is_seeded());
        assert_ne!(system.random_u64(), system.random_u64());
    }
}
