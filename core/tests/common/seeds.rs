//! Seeds of the simulation tests (`sim.rs`, `ble_sim.rs`): `SHOAL_SIM_SEED=N` runs only that seed (decimal or
//! `0x…`); `SHOAL_SIM_SEEDS=N` runs N seeds per test; `SHOAL_SIM_SEED_BASE=N` shifts the seeds tried;
//! `SHOAL_SIM_HEAVY=1` asks for larger sizes.
#![allow(dead_code)]

use shoaldb::util::rng::SeededRng;
use std::time::Instant;

pub fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

pub fn heavy() -> bool {
    std::env::var_os("SHOAL_SIM_HEAVY").is_some_and(|v| v != "0")
}

/// The seeds to run for `test`: `SHOAL_SIM_SEED` alone, or `SHOAL_SIM_SEEDS` (default `default`) seeds derived from
/// the test's name and `SHOAL_SIM_SEED_BASE`.
pub fn seeds(test: &str, default: u64) -> Vec<u64> {
    if let Some(seed) = env_u64("SHOAL_SIM_SEED") {
        return vec![seed];
    }
    let n = env_u64("SHOAL_SIM_SEEDS").unwrap_or(default);
    let base = env_u64("SHOAL_SIM_SEED_BASE").unwrap_or(0);
    let salt = test.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    (0..n).map(|i| SeededRng::stream(salt, base + i).next_u64() % 1_000_000_000).collect()
}

struct SeedGuard {
    test: &'static str,
    seed: u64,
}

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}: FAILED with seed {} — rerun with SHOAL_SIM_SEED={}", self.test, self.seed, self.seed);
        }
    }
}

pub fn for_each_seed(test: &'static str, default: u64, f: impl Fn(u64)) {
    for seed in seeds(test, default) {
        eprintln!("seed {seed}");
        let _guard = SeedGuard { test, seed };
        let started = Instant::now();
        f(seed);
        eprintln!("{test}: seed {seed} passed in {:.2?}", started.elapsed());
    }
}
