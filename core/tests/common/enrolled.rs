//! Devices enrolled through the public API, each with a sync engine on its store, for tests that drive engines by
//! hand (`identity.rs`, `signed_changes.rs`).
#![allow(dead_code)]

use shoaldb::enrolment::{self, Validity};
use shoaldb::security::{Grant, SigningKey};
use shoaldb::sync::{Engine, Subscription};
use shoaldb::util::sources::Sources;
use shoaldb::Store;

pub const DAY: u64 = 86_400_000;
/// "Now" in these tests: 2026-06-01.
pub const NOW: u64 = 1_780_272_000_000;

/// A year of validity, from yesterday.
pub fn year() -> Validity {
    Validity::days_from(NOW - DAY, 365)
}

/// Reading and writing everything.
pub fn everything() -> Vec<Grant> {
    vec![Grant::read("*"), Grant::write("*")]
}

/// Grants from their text form.
pub fn grants(texts: &[&str]) -> Vec<Grant> {
    texts.iter().map(|t| Grant::parse(t).unwrap()).collect()
}

/// A store in `dir` enrolled through the public API (its keys made on the device, a certificate with `grants`
/// issued by `authority` and installed), and an engine on it (clock at [`NOW`]).
pub fn enrolled_engine_with(
    dir: &tempfile::TempDir,
    authority: &SigningKey,
    serial: u64,
    grants: Vec<Grant>,
) -> (Store, Engine) {
    let store = Store::open(dir.path().join(format!("{serial}.db"))).unwrap();
    let request = enrolment::request(&store, &format!("device {serial}")).unwrap();
    let c = enrolment::issue(authority, &request, serial, grants, year()).unwrap();
    enrolment::install(&store, &[c], &[authority.verifying_key()]).unwrap();
    (store.clone(), engine_on(&store, serial))
}

/// A sync engine on the enrolled `store` (as it is installed there), wanting everything.
pub fn engine_on(store: &Store, serial: u64) -> Engine {
    let e = enrolment::load(store).unwrap().unwrap();
    let identity = shoaldb::node::device_identity(store).unwrap();
    Engine::new(store.replica(), identity, e, &format!("device {serial}"), vec![Subscription::everything()], 0)
        .with_sources(Sources::system().with_clock(|| NOW))
}
