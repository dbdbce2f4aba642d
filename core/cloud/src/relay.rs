//! A relay: a [`ReplicaNode`] on a [`PgReplica`], listening for devices, and following the other relays'
//! commits.
//!
//! Relays hold no state of their own: everything a relay acknowledges is committed in PostgreSQL first (the
//! engine counts a change as received only once [`Replica::apply_changes`](shoaldb::Replica::apply_changes)
//! returned), so killing one loses nothing, and a device reconnects to any other. Each commit is announced on
//! [`CHANGES_CHANNEL`] (`NOTIFY`, sent by PostgreSQL when the transaction commits); every relay `LISTEN`s there
//! on a connection of its own and offers the news to its linked devices at once: no polling.

use crate::backoffice::{BackOfficeConfig, FollowerStatus, Server};
use crate::replica::CHANGES_CHANNEL;
use crate::{CloudError, PgReplica};
use postgres::fallible_iterator::FallibleIterator;
use shoaldb::node::{NodeConfig, ReplicaNode};
use shoaldb::security::{Access, Identity};
use shoaldb::transport::lan::ListenLimits;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long the follower waits for a notification before checking whether the relay stops.
const FOLLOW_POLL: Duration = Duration::from_millis(500);

/// How often a relay drops the changes kept aside for longer than
/// [`PENDING_MAX_AGE_MS`](shoaldb::store::PENDING_MAX_AGE_MS) ([`PgReplica::expire_pending`]).
pub const EXPIRE_EVERY: Duration = Duration::from_secs(600);

/// How often a relay folds changes out of the change log ([`PgReplica::compact`], with
/// [`RelayConfig::compaction`]), after signing documents' states when its certificate lets it attest
/// ([`PgReplica::attest`]).
pub const COMPACT_EVERY: Duration = Duration::from_secs(3600);

/// What a relay folds out of the change log every [`COMPACT_EVERY`] ([`PgReplica::compact`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudCompaction {
    /// The changes below the fleet's frontier (every device heard from within the horizon holds them), and those
    /// received longer ago than the horizon whoever lacks them. Default: [`CompactionPolicy::default`] (30 days,
    /// the frontier on).
    ///
    /// [`CompactionPolicy::default`]: shoaldb::CompactionPolicy::default
    pub policy: shoaldb::CompactionPolicy,
    /// How long (ms) the back office's feed keeps a change as a change after the cloud received it: a consumer
    /// further behind is told to read the documents again. Default: 7 days.
    pub feed_retention_ms: u64,
}

impl Default for CloudCompaction {
    fn default() -> Self {
        CloudCompaction { policy: shoaldb::CompactionPolicy::default(), feed_retention_ms: 7 * 24 * 60 * 60 * 1000 }
    }
}

/// How long the follower waits before reconnecting after losing PostgreSQL.
const FOLLOW_RETRY: Duration = Duration::from_secs(1);

/// How a relay starts.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// The PostgreSQL database (a libpq connection string or URL).
    pub postgres: String,
    /// Where devices connect (TCP, the Noise handshake of every Shoal link).
    pub listen: SocketAddr,
    /// The relay's name, shown to devices.
    pub name: String,
    /// How devices are admitted: certificates from the app authority, or the development mode's shared secret.
    pub access: Access,
    /// The relay's device key pair. `None`: a new one for this run (the relay writes nothing in its own name, so
    /// it needs no lasting identity in development mode; in certificate mode, the key its certificate names).
    pub identity: Option<Identity>,
    /// Connections to PostgreSQL in the relay's pool.
    pub connections: u32,
    /// How many devices the relay takes at once, and from whom ([`ListenLimits::SERVER`] by default: many
    /// devices reach a relay from one address, behind carrier NAT or a load balancer).
    pub limits: ListenLimits,
    /// The back office's HTTP API ([`crate::backoffice`]), if it is served.
    pub http: Option<BackOfficeConfig>,
    /// Where devices connect with sync links inside WebSocket connections (through an HTTP load balancer), if
    /// anywhere; within the same [`RelayConfig::limits`].
    pub websocket: Option<SocketAddr>,
    /// What the relay folds out of the change log, if anything (default: [`CloudCompaction::default`]).
    pub compaction: Option<CloudCompaction>,
}

impl RelayConfig {
    /// A relay on the database `postgres` for devices of the app `access` admits to, listening on `listen`.
    pub fn new(postgres: impl Into<String>, listen: SocketAddr, access: impl Into<Access>) -> RelayConfig {
        RelayConfig {
            postgres: postgres.into(),
            listen,
            name: "shoal cloud".into(),
            access: access.into(),
            identity: None,
            connections: 8,
            limits: ListenLimits::SERVER,
            http: None,
            websocket: None,
            compaction: Some(CloudCompaction::default()),
        }
    }
}

/// A running relay. Dropping it without [`Relay::shutdown`] still stops it, without waiting.
pub struct Relay {
    node: ReplicaNode,
    replica: PgReplica,
    stop: Arc<AtomicBool>,
    follower: Option<std::thread::JoinHandle<()>>,
    backoffice: Option<Server>,
}

impl Relay {
    /// Connect to PostgreSQL (migrating its schema), start listening for devices and following the other relays.
    ///
    /// # Errors
    /// [`CloudError`] when PostgreSQL cannot be reached or migrated, or the address is taken.
    pub async fn start(config: RelayConfig) -> Result<Relay, CloudError> {
        let (url, connections) = (config.postgres.clone(), config.connections);
        let replica = tokio::task::spawn_blocking(move || PgReplica::connect(&url, connections))
            .await
            .map_err(|e| CloudError::Config(format!("connecting: {e}")))??;
        // Revocations taken in by any relay hold for this one from its first link.
        let mut access = config.access.clone();
        if let Access::Certificates(enrolment) = &mut access {
            let kept = replica.clone();
            let lists = tokio::task::spawn_blocking(move || kept.revocation_lists())
                .await
                .map_err(|e| CloudError::Config(format!("reading revocation lists: {e}")))??;
            shoaldb::enrolment::accept_kept_revocations(enrolment, &lists);
            // Known as one of the cloud's relays: a roster lists it, and what it holds is the cloud's (issue 17).
            let (kept, key) = (replica.clone(), enrolment.signing_key().verifying_key());
            tokio::task::spawn_blocking(move || kept.register_relay(&key))
                .await
                .map_err(|e| CloudError::Config(format!("registering the relay: {e}")))??;
        }
        let identity = match config.identity {
            Some(identity) => identity,
            None => Identity::generate()?,
        };
        let mut node_config = NodeConfig::new(config.name.clone(), access.clone())
            .with_mdns(false)
            .listen_on(config.listen)
            .with_listen_limits(config.limits);
        node_config.websocket_listen = config.websocket;
        let node = ReplicaNode::start(replica.clone(), identity, node_config).await.map_err(|e| match e {
            shoaldb::NodeError::Lan(e) => CloudError::Lan(e),
            other => CloudError::Config(other.to_string()),
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(FollowerStatus::default());
        let (commits, commits_seen) = tokio::sync::watch::channel(0u64);
        let follower = {
            let (node, replica, stop, url) = (node.clone(), replica.clone(), stop.clone(), config.postgres.clone());
            let compaction = config.compaction.clone();
            // A relay whose certificate lets it attest signs documents' states (issue 17).
            let attester = match &access {
                Access::Certificates(e) if e.chain().permissions().attests_anything() => Some((**e).clone()),
                _ => None,
            };
            let following = Following { node, replica, stop, status: status.clone(), commits, compaction, attester };
            std::thread::Builder::new()
                .name("shoal-cloud-follow".into())
                .spawn(move || follow(&url, &following))
                .map_err(|e| CloudError::Config(format!("starting the follower: {e}")))?
        };
        let mut relay = Relay { node, replica, stop, follower: Some(follower), backoffice: None };
        if let Some(http) = &config.http {
            let started = Server::start(
                http,
                &config.postgres,
                relay.replica.clone(),
                relay.node.clone(),
                access,
                status,
                commits_seen,
            )
            .await;
            match started {
                Ok(server) => relay.backoffice = Some(server),
                Err(e) => {
                    relay.shutdown().await;
                    return Err(e);
                }
            }
        }
        log::info!("relay {} listening on {:?}", relay.node.device_key(), relay.node.listen_addr());
        Ok(relay)
    }

    /// The address devices connect to.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.node.listen_addr()
    }

    /// Where devices connect over WebSocket, if they may.
    pub fn websocket_addr(&self) -> Option<SocketAddr> {
        self.node.websocket_addr()
    }

    /// Where the back office's HTTP API listens, if it is served.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.backoffice.as_ref().map(|b| b.addr)
    }

    /// The relay's node (its links, the devices it reaches).
    pub fn node(&self) -> &ReplicaNode {
        &self.node
    }

    /// The relay's replica (the database it serves).
    pub fn replica(&self) -> &PgReplica {
        &self.replica
    }

    /// Close every link cleanly (devices reconnect to another relay) and stop following.
    pub async fn shutdown(mut self) {
        if let Some(backoffice) = self.backoffice.take() {
            backoffice.shutdown().await;
        }
        self.stop.store(true, Ordering::Release);
        self.node.shutdown().await;
        if let Some(follower) = self.follower.take() {
            let _ = tokio::task::spawn_blocking(move || follower.join()).await;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// What the follower thread works with.
struct Following {
    node: ReplicaNode,
    replica: PgReplica,
    stop: Arc<AtomicBool>,
    status: Arc<FollowerStatus>,
    /// Bumped at each announcement (the back office's feed polls wait on it).
    commits: tokio::sync::watch::Sender<u64>,
    compaction: Option<CloudCompaction>,
    /// The relay's credentials, when its certificate lets it attest ([`PgReplica::attest`]).
    attester: Option<shoaldb::security::Enrolment>,
}

impl Following {
    /// Something may have been committed: tell the replica, the links and the feed.
    fn news(&self) {
        self.replica.changed();
        self.node.replica_changed();
        self.commits.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// `LISTEN` on [`CHANGES_CHANNEL`] and wake the node's links on every notification, until `stop`; reconnects
/// after losing PostgreSQL (and then wakes the links once, for whatever was committed meanwhile). Between
/// notifications, drops the changes kept aside for too long, every [`EXPIRE_EVERY`] (first as it starts), and
/// attests (with an `attest` grant) and compacts the change log every [`COMPACT_EVERY`] (first an interval after it
/// starts).
fn follow(url: &str, f: &Following) {
    let (stop, status) = (&f.stop, &f.status);
    let mut expired_at: Option<std::time::Instant> = None;
    let mut compacted_at = std::time::Instant::now();
    while !stop.load(Ordering::Acquire) {
        status.connected.store(false, Ordering::Release);
        let mut client = match postgres::Client::connect(url, postgres::NoTls) {
            Ok(client) => client,
            Err(e) => {
                log::warn!("following the other relays: {}; retrying", crate::describe(&e));
                std::thread::sleep(FOLLOW_RETRY);
                continue;
            }
        };
        if let Err(e) = client.batch_execute(&format!("LISTEN {CHANGES_CHANNEL}")) {
            log::warn!("following the other relays: {}; retrying", crate::describe(&e));
            std::thread::sleep(FOLLOW_RETRY);
            continue;
        }
        status.connected.store(true, Ordering::Release);
        f.news();
        'listening: while !stop.load(Ordering::Acquire) {
            let mut notifications = client.notifications();
            let mut iter = notifications.timeout_iter(FOLLOW_POLL);
            loop {
                if expired_at.is_none_or(|t| t.elapsed() >= EXPIRE_EVERY) {
                    expired_at = Some(std::time::Instant::now());
                    if let Err(e) = f.replica.expire_pending() {
                        log::warn!("expiring changes kept aside: {e}");
                    }
                }
                if compacted_at.elapsed() >= COMPACT_EVERY {
                    compacted_at = std::time::Instant::now();
                    // Attested first: the compaction then folds the signed changes the new states hold.
                    if let Some(Err(e)) = f.attester.as_ref().map(|e| f.replica.attest(e)) {
                        log::warn!("attesting documents' states: {e}");
                    }
                    // And the newest roster's stable frontier (issue 17).
                    if let Some(Err(e)) = f.attester.as_ref().map(|e| f.replica.sign_frontier(e)) {
                        log::warn!("signing the stable frontier: {e}");
                    }
                    if let Some(Err(e)) =
                        f.compaction.as_ref().map(|c| f.replica.compact(&c.policy, c.feed_retention_ms))
                    {
                        log::warn!("compacting the change log: {e}");
                    }
                }
                match iter.next() {
                    // The watch channel behind the wake-up coalesces a burst of them into one round of sending.
                    Ok(Some(_)) => {
                        status.notifications.fetch_add(1, Ordering::Relaxed);
                        f.news();
                    }
                    Ok(None) => break,
                    Err(e) => {
                        log::warn!("following the other relays: {}; reconnecting", crate::describe(&e));
                        break 'listening;
                    }
                }
            }
        }
    }
}
