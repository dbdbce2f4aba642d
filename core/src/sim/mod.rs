//! Deterministic, seeded simulations of devices syncing, for tests and benchmarks — not part of an app's build
//! (cargo feature `sim`; the mobile bindings never enable it).
//!
//! * [`SimWorld`] ([`mesh`]): devices connected by abstract links (latency, bandwidth, MTU, loss) that the test
//!   opens, cuts and heals;
//! * [`RadioWorld`] ([`radio`]): phones with Bluetooth LE radios in a plane, whose links form and break as they
//!   move, driven by the shipped BLE glue ([`crate::transport::ble::bridge`]);
//! * [`MemoryAir`] ([`memory_air`]): radios in one process that connect at once, for tests of real nodes over
//!   BLE links on a real runtime.
//!
//! Both worlds run on one driver loop ([`driver::World`]: `step`, `run_for`, `run_until`, `run_until_quiet`) over a
//! virtual clock in microseconds ([`MILLISECOND`], [`SECOND`]); every random choice derives from the world's seed
//! ([`crate::util::rng::SeededRng`]).

pub mod device;
pub mod driver;
pub mod memory_air;
pub mod mesh;
pub mod pipe;
pub mod radio;

pub use device::{Credentials, Device};
pub use driver::{NotQuiet, World, MILLISECOND, SECOND};
pub use memory_air::{MemoryAir, MemoryRadio};
pub use mesh::SimWorld;
pub use pipe::LinkParams;
pub use radio::RadioWorld;

use crate::store::{Durability, Options, Store};
use crate::util::sources::Sources;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The app secret every device gets unless told otherwise.
pub const DEFAULT_SECRET: &[u8] = b"shoal simulator app secret";

/// The temporary directory of a world's stores, removed with the world.
pub(crate) struct StoreDir(PathBuf);

impl StoreDir {
    /// A new directory for a world of `kind` made from `seed`.
    ///
    /// # Panics
    /// If it cannot be created.
    fn new(kind: &str, seed: u64) -> StoreDir {
        static WORLDS: AtomicU64 = AtomicU64::new(0);
        let n = WORLDS.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("shoal-{kind}-{}-{n}-{seed:016x}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        StoreDir(dir)
    }

    pub(crate) fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for StoreDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Opens (or reopens) a simulated device's store: `Normal` durability, the world's virtual clock and randomness
/// from `seed` — so that ids, timestamps and with them every encoded change are a function of the world's seed.
///
/// # Panics
/// If the store cannot be opened.
fn open_store(path: &Path, seed: u64, clock: impl Fn() -> u64 + Send + Sync + 'static) -> Store {
    let sources = Sources::seeded(seed).with_clock(clock);
    Store::open_with(path, Options { durability: Durability::Normal, sources, ..Options::default() })
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}
