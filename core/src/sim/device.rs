//! What every simulated device is, in either world: a name, an identity and app secret drawn from the world's
//! seed, a real [`Store`] on the world's virtual clock, the real sync [`Engine`] on top of it, and what the engine
//! reported.

use super::{open_store, StoreDir};
use crate::security::{Access, AppSecret, DeviceKey, Enrolment, Grant, Identity, SigningKey};
use crate::store::Store;
use crate::sync::{Engine, EngineEvent, Subscription};
use crate::util::rng::SeededRng;
use crate::util::sources::Sources;

/// How a simulated device authenticates.
#[derive(Clone, Debug)]
pub enum Credentials {
    /// The development mode's shared secret (these bytes).
    Secret(Vec<u8>),
    /// Enrolled by `authority` (the world's app authority, pinned by every enrolled device) with `grants`: its
    /// signing key comes from the world's seed; its certificate's serial is its device number + 1 and it is valid
    /// for ten years from a day before the world's epoch.
    Enrolled {
        /// The app authority.
        authority: Box<SigningKey>,
        /// What the device may read and write.
        grants: Vec<Grant>,
    },
}

/// One simulated device (a [`super::SimWorld`] device or a [`super::RadioWorld`] phone).
pub struct Device {
    pub(crate) name: String,
    identity: Identity,
    /// How it authenticates, as it started (revocation lists it took in since are in its store).
    access: Access,
    pub(crate) store: Store,
    pub(crate) engine: Engine,
    events: Vec<(u64, EngineEvent)>,
}

impl Device {
    /// Device number `id` of a world made from `seed`: its identity and its store's randomness come from streams
    /// of the seed, its store is `{id}.db` in `dir` and reads `clock`.
    ///
    /// # Panics
    /// If the store cannot be created or `secret` is empty.
    pub(crate) fn new(
        seed: u64,
        id: usize,
        dir: &StoreDir,
        clock: impl Fn() -> u64 + Send + Sync + 'static,
        name: &str,
        subscriptions: Vec<Subscription>,
        credentials: &Credentials,
    ) -> Device {
        let id = id as u64;
        let store_seed = SeededRng::stream(seed, 7 << 32 | id).next_u64();
        // The engine reads the same virtual clock (presence sequence numbers).
        let clock = std::sync::Arc::new(clock);
        let engine_clock = clock.clone();
        let store = open_store(&dir.join(format!("{id}.db")), store_seed, move || clock());
        // The identity derives from the seed, so that everything the engines decide from keys is reproducible.
        let mut private = [0u8; 32];
        let mut sm = SeededRng::stream(seed, 1 << 32 | id);
        for chunk in private.chunks_mut(8) {
            chunk.copy_from_slice(&sm.next_u64().to_le_bytes());
        }
        let identity = Identity::from_private(&private).expect("a simulated identity");
        let access = match credentials {
            Credentials::Secret(secret) => Access::from(AppSecret::from_bytes(secret).expect("a non-empty app secret")),
            Credentials::Enrolled { authority, grants } => {
                let signing =
                    SigningKey::from_sources(&Sources::seeded(SeededRng::stream(seed, 13 << 32 | id).next_u64()));
                let request = crate::enrolment::EnrolmentRequest {
                    name: name.to_string(),
                    signing_key: signing.verifying_key(),
                    noise_key: identity.device_key(),
                };
                let day = 86_400_000;
                let validity = crate::enrolment::Validity::days_from(super::driver::EPOCH_MS - day, 3650);
                let cert = crate::enrolment::issue(authority, &request, id + 1, grants.clone(), validity)
                    .expect("valid simulated grants");
                let chain = crate::security::CertificateChain::single(cert);
                let enrolment = Enrolment::new(&identity, signing, chain, vec![authority.verifying_key()])
                    .expect("a simulated enrolment");
                // Kept in the store as on a device: it signs its changes and holds back writes beyond its grants.
                crate::enrolment::keep(&store, &enrolment).expect("the simulated enrolment kept");
                Access::from(enrolment)
            }
        };
        let engine = Engine::new(store.replica(), identity.clone(), access.clone(), name, subscriptions, 0)
            .with_sources(
                Sources::seeded(SeededRng::stream(seed, 11 << 32 | id).next_u64()).with_clock(move || engine_clock()),
            );
        Device { name: name.to_string(), identity, access, store, engine, events: Vec::new() }
    }

    /// The device's app restarts at `now` (virtual µs): its store is reopened from disk (with a new random stream
    /// drawn from `seed`, so that no id is drawn twice) and a new engine with the same identity and subscriptions
    /// starts. The old engine and store are dropped.
    ///
    /// # Panics
    /// If the store cannot be reopened.
    pub(crate) fn restart(&mut self, seed: u64, id: usize, now: u64, clock: impl Fn() -> u64 + Send + Sync + 'static) {
        let store_seed = SeededRng::stream(seed ^ now.rotate_left(32), 9 << 32 | id as u64).next_u64();
        let clock = std::sync::Arc::new(clock);
        let engine_clock = clock.clone();
        let store = open_store(self.store.path(), store_seed, move || clock());
        let subscriptions = self.engine.subscriptions().to_vec();
        // Presence sequence numbers must grow across restarts: they follow the (virtual) wall clock in ms, as on a
        // device (and the engine refuses numbers far ahead of it).
        let seq_base = engine_clock();
        // Revocation lists taken in before the restart were kept in the store.
        let mut access = self.access.clone();
        if let Access::Certificates(enrolment) = &mut access {
            crate::enrolment::take_kept_revocations(enrolment, &store).expect("the kept revocation lists");
        }
        self.engine = Engine::new(store.replica(), self.identity.clone(), access, &self.name, subscriptions, seq_base)
            .with_sources(
                Sources::seeded(SeededRng::stream(seed ^ now.rotate_left(32), 11 << 32 | id as u64).next_u64())
                    .with_clock(move || engine_clock()),
            );
        self.store = store;
    }

    /// How the device authenticates, as it started.
    pub fn access(&self) -> &Access {
        &self.access
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device's key (its identity's public key).
    pub fn key(&self) -> DeviceKey {
        self.engine.device_key()
    }

    /// The device's store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The device's sync engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Keeps what the engine reported, stamped `now`.
    pub(crate) fn drain_events(&mut self, now: u64) {
        while let Some(e) = self.engine.poll_event() {
            self.events.push((now, e));
        }
    }

    /// What the engine reported since the last call, with the virtual time of each.
    pub(crate) fn take_events(&mut self, now: u64) -> Vec<(u64, EngineEvent)> {
        self.drain_events(now);
        std::mem::take(&mut self.events)
    }
}
