//! A device on the network: a [`Store`] synced with the devices around it.
//!
//! [`Node::start`] wires the store, the sans-IO sync [`Engine`] and the LAN transport (TCP links, mDNS discovery)
//! on the caller's tokio runtime, and returns at once; everything then runs in spawned tasks until
//! [`Node::shutdown`]. Local writes, writes by other processes on the same file (polled every 250 ms) and changes
//! from peers all reach the other devices by themselves.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use shoaldb::node::{Node, NodeConfig};
//! use shoaldb::security::AppSecret;
//!
//! let store = shoaldb::Store::open("app.db")?;
//! let config = NodeConfig::new("alice's phone", AppSecret::from_bytes(b"the app's secret")?);
//! let node = Node::start(store.clone(), config).await?;
//! store.upsert("tasks", serde_json::json!({"title": "Buy milk"}))?; // reaches every device of the app
//! let mut presence = node.presence();
//! presence.changed().await?;
//! println!("near me: {:?}", node.peers());
//! node.shutdown().await;
//! # Ok(()) }
//! ```

use crate::security::{Access, DeviceKey, Identity, SecurityError};
use crate::store::{CommitListener, Replica, Store};
use crate::sync::{Engine, PeerPresence, Subscription};
use crate::transport::ble::{
    self,
    links::BleConfig,
    radio::{BleRadio, Radio},
};
use crate::transport::hub::Hub;
use crate::transport::lan::discovery::{PlatformDiscovery, ServiceDiscovery};
use crate::transport::lan::{Lan, LanError, ListenLimits};
use crate::util::lock;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// How often the store is checked for writes by other processes.
pub const EXTERNAL_POLL: Duration = Duration::from_millis(250);

/// How often the engine is given the time.
const TICK: Duration = Duration::from_secs(1);

/// How often a node expires documents by default (see [`NodeConfig::expire_every`]).
pub const EXPIRE_EVERY: Duration = Duration::from_secs(600);

/// How long [`Node::shutdown`] waits for its tasks before leaving them to stop on their own.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// [`Node::start`] was not called from within a tokio runtime.
    #[error("a node must be started from within a tokio runtime")]
    NoRuntime,
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] crate::Error),
    /// The device identity could not be created or the stored one is invalid.
    #[error("device identity: {0}")]
    Identity(#[from] SecurityError),
    /// The LAN transport could not start.
    #[error(transparent)]
    Lan(#[from] LanError),
    /// A task the node needed failed (a bug).
    #[error("internal task failed: {0}")]
    Task(String),
    /// No connected device could provide the attachment (every one asked said it does not have it).
    #[error("attachment {hash} not available: {reason}")]
    AttachmentUnavailable {
        /// The attachment's BLAKE3 hash, as 64 hex digits.
        hash: String,
        /// Why the fetch failed, in words (for logs).
        reason: String,
    },
    /// The sync engine refused the request.
    #[error("sync: {0}")]
    Sync(#[from] crate::sync::SyncError),
    /// The configuration asks for something this build or its values cannot do (a WebSocket without the
    /// `websocket` feature, a cloud URL that is not `ws://host[:port]/path` or `wss://…`, a trusted certificate that
    /// is not one).
    #[error("configuration: {0}")]
    Config(String),
}

/// How a [`Node`] joins the network.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This device's name, shown to the other devices.
    pub name: String,
    /// How this device proves it belongs to the app and checks the devices it meets: certificates from the app
    /// authority ([`Enrolment`](crate::security::Enrolment)), or the development mode's shared secret.
    pub access: Access,
    /// Where to accept connections. `None` means nowhere, unless `mdns` is on, which listens on `0.0.0.0:0` (every
    /// interface, a free port) so that discovered devices can dial us.
    pub listen: Option<SocketAddr>,
    /// How many connections the listener takes, and from whom: a device's by default; servers take more.
    pub listen_limits: ListenLimits,
    /// Addresses to dial (and dial again when the link is lost).
    pub connect: Vec<SocketAddr>,
    /// Advertise and discover devices of the same app on the LAN with mDNS.
    pub mdns: bool,
    /// With `mdns` on: advertise and discover through the platform's DNS-SD (iOS: Network.framework and the
    /// system's mDNSResponder) instead of the core's own multicast sockets. `None`: the core's own.
    pub service_discovery: Option<PlatformDiscovery>,
    /// What this device wants from the others.
    pub subscriptions: Vec<Subscription>,
    /// A Bluetooth LE radio to sync over as well (phones with no network in common); `None`: the LAN only.
    pub ble: Option<BleRadio>,
    /// Where to accept sync links inside WebSocket connections (a relay of the cloud, behind an HTTP load
    /// balancer; see [`crate::transport::websocket`]). Needs the `websocket` feature.
    pub websocket_listen: Option<SocketAddr>,
    /// The cloud's relays to dial over WebSocket (`wss://relay.example.com/sync` through a load balancer that
    /// terminates HTTPS, or `ws://…`), and dial again whenever the link is lost, beside the LAN and Bluetooth: the
    /// device syncs through the cloud whenever it can reach it, and so does every device it meets. Needs the
    /// `websocket` feature.
    pub cloud: Vec<String>,
    /// Certificate authorities (PEM) trusted for `wss://` besides Mozilla's: an organisation's private one, for
    /// relays behind a load balancer whose certificate it issued.
    pub cloud_trust: Vec<String>,
    /// How often the node removes the documents past their collection's time to live ([`Store::expire`]), first
    /// as it starts; `None`: never (the app calls `expire` itself). Default: every 10 minutes.
    pub expire_every: Option<Duration>,
}

impl NodeConfig {
    /// A node named `name` for the app `access` admits to (an [`Enrolment`](crate::security::Enrolment), or an
    /// [`AppSecret`] in development mode): mDNS on, listening on every interface, subscribed to everything.
    pub fn new(name: impl Into<String>, access: impl Into<Access>) -> NodeConfig {
        NodeConfig {
            name: name.into(),
            access: access.into(),
            listen: None,
            listen_limits: ListenLimits::DEVICE,
            connect: Vec::new(),
            mdns: true,
            service_discovery: None,
            subscriptions: vec![Subscription::everything()],
            ble: None,
            websocket_listen: None,
            cloud: Vec::new(),
            cloud_trust: Vec::new(),
            expire_every: Some(EXPIRE_EVERY),
        }
    }

    /// Remove the documents past their time to live this often (see [`NodeConfig::expire_every`]).
    pub fn with_expiry_every(mut self, every: Option<Duration>) -> NodeConfig {
        self.expire_every = every;
        self
    }

    /// Accept sync links inside WebSocket connections on `addr` (see [`NodeConfig::websocket_listen`]).
    pub fn listen_websocket_on(mut self, addr: SocketAddr) -> NodeConfig {
        self.websocket_listen = Some(addr);
        self
    }

    /// Also dial the cloud's relay at `url` over WebSocket (see [`NodeConfig::cloud`]).
    pub fn connect_to_cloud(mut self, url: impl Into<String>) -> NodeConfig {
        self.cloud.push(url.into());
        self
    }

    /// Also trust the certificate authority `pem` (a PEM certificate) for the cloud's `wss://` URLs (see
    /// [`NodeConfig::cloud_trust`]).
    pub fn trust_cloud_certificate(mut self, pem: impl Into<String>) -> NodeConfig {
        self.cloud_trust.push(pem.into());
        self
    }

    /// Listen on `addr`.
    pub fn listen_on(mut self, addr: SocketAddr) -> NodeConfig {
        self.listen = Some(addr);
        self
    }

    /// Take connections within `limits` rather than a device's.
    pub fn with_listen_limits(mut self, limits: ListenLimits) -> NodeConfig {
        self.listen_limits = limits;
        self
    }

    /// Also dial `addr`.
    pub fn connect_to(mut self, addr: SocketAddr) -> NodeConfig {
        self.connect.push(addr);
        self
    }

    /// Turn mDNS discovery on or off.
    pub fn with_mdns(mut self, on: bool) -> NodeConfig {
        self.mdns = on;
        self
    }

    /// Discover devices through the platform's DNS-SD (see [`NodeConfig::service_discovery`]); turns mDNS on.
    pub fn with_service_discovery(mut self, discovery: Arc<dyn ServiceDiscovery>) -> NodeConfig {
        self.mdns = true;
        self.service_discovery = Some(PlatformDiscovery(discovery));
        self
    }

    /// Also sync over Bluetooth LE through `radio` (see [`crate::transport::ble::radio`]).
    pub fn with_ble(mut self, radio: Arc<dyn Radio>) -> NodeConfig {
        self.ble = Some(BleRadio(radio));
        self
    }

    /// Replace the subscriptions.
    pub fn with_subscriptions(mut self, subscriptions: Vec<Subscription>) -> NodeConfig {
        self.subscriptions = subscriptions;
        self
    }

    /// The address the node will listen on: `listen`, or `0.0.0.0:0` when mDNS is on.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen.or_else(|| self.mdns.then_some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))))
    }
}

/// This device's identity key pair (its Noise static key), kept in the store's key vault
/// ([`Options::keys`](crate::Options::keys)), never in the database, so that the device keeps its key across
/// restarts and no backup of the database carries it; made on first use.
pub fn device_identity(store: &Store) -> Result<Identity, NodeError> {
    let make = || Ok::<_, NodeError>(Identity::generate()?.to_bytes().to_vec());
    let bytes = store.device_secret(crate::security::vault::NOISE_KEY, make)?;
    Identity::from_bytes(&bytes).map_err(NodeError::from)
}

/// A running device: its store synced over the LAN. Cheap to clone (all clones drive the same node); `Send + Sync`.
///
/// Dropping the last clone without [`Node::shutdown`] still stops the node's tasks, without waiting for them.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

/// Cancels an attachment fetch when the app's wait for it is dropped before it ended.
struct CancelFetch {
    hub: Arc<Hub>,
    fetch: Option<crate::sync::FetchId>,
}

impl Drop for CancelFetch {
    fn drop(&mut self) {
        if let Some(fetch) = self.fetch.take() {
            self.hub.with_engine_now(|e| e.cancel_fetch(fetch));
        }
    }
}

struct Inner {
    hub: Arc<Hub>,
    lan: Lan,
    store: Store,
    device: DeviceKey,
    commits: Mutex<Option<CommitListener>>,
    stopped: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.hub.begin_shutdown();
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("device", &self.inner.device).field("listen", &self.listen_addr()).finish()
    }
}

impl Node {
    /// Start syncing `store` as `config` says, on the current tokio runtime.
    pub async fn start(store: Store, config: NodeConfig) -> Result<Node, NodeError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NodeError::NoRuntime)?;
        let identity = {
            let store = store.clone();
            runtime
                .spawn_blocking(move || device_identity(&store))
                .await
                .map_err(|e| NodeError::Task(e.to_string()))??
        };
        let device = identity.device_key();
        let (hub, lan) = start_engine(store.replica(), identity, &config).await?;
        let weak = Arc::downgrade(&hub);
        let commits = store.on_commit(move || {
            if let Some(hub) = weak.upgrade() {
                hub.wake_writers();
            }
        });
        hub.spawn(poll_external_changes(hub.clone(), store.clone()));
        hub.spawn(serve_attachment_requests(hub.clone(), store.clone()));
        if let Some(every) = config.expire_every {
            hub.spawn(expire_documents(hub.clone(), store.clone(), every));
        }
        log::info!("node {} ({device}) started", config.name);
        Ok(Node {
            inner: Arc::new(Inner {
                hub,
                lan,
                store,
                device,
                commits: Mutex::new(Some(commits)),
                stopped: AtomicBool::new(false),
            }),
        })
    }

    /// The address accepting connections, if the node listens.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.inner.lan.listen_addr()
    }

    /// The address accepting WebSocket links, if the node accepts them ([`NodeConfig::websocket_listen`]).
    #[cfg(feature = "websocket")]
    pub fn websocket_addr(&self) -> Option<SocketAddr> {
        self.inner.lan.websocket_addr()
    }

    /// This device's key.
    pub fn device_key(&self) -> DeviceKey {
        self.inner.device
    }

    /// The store this node syncs.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The devices reachable now, directly or through others, nearest first.
    pub fn peers(&self) -> Vec<PeerPresence> {
        self.inner.hub.presence().borrow().clone()
    }

    /// The devices reachable now, as a watch channel that changes whenever they do.
    pub fn presence(&self) -> watch::Receiver<Vec<PeerPresence>> {
        self.inner.hub.presence()
    }

    /// Replace this device's subscriptions; the peers are told at once.
    pub fn set_subscriptions(&self, subscriptions: Vec<Subscription>) {
        self.inner.hub.with_engine_now(|e| e.set_subscriptions(subscriptions));
        self.inner.hub.wake_writers();
    }

    /// Takes in a revocation list from the app authority (see [`Engine::add_revocations`]): kept in the store,
    /// effective at once (links to the devices it revokes close) and passed on to every linked device, which pass
    /// it on in turn. Returns whether it was new to this device.
    ///
    /// # Errors
    /// [`NodeError::Sync`] if the node runs in development mode or the list's issuer is not a pinned authority.
    pub async fn add_revocations(&self, list: crate::security::RevocationList) -> Result<bool, NodeError> {
        let news = self
            .inner
            .hub
            .with_engine(move |e| e.add_revocations(list))
            .await
            .map_err(|e| NodeError::Task(e.to_string()))??;
        self.inner.hub.wake_writers();
        Ok(news)
    }

    /// Dial `addr` (and again whenever the link is lost, with backoff) until shutdown.
    pub fn connect(&self, addr: SocketAddr) {
        self.inner.lan.connect(addr);
    }

    /// Fetch the bytes of `token`'s attachment from the connected devices — directly, or through them up to
    /// [`crate::sync::MAX_HOPS`] away — into the store, calling `progress(done, total)` as bytes arrive. Returns
    /// when the bytes are stored and verified against the hash; at once when they already are. A broken link is not
    /// a failure: the fetch resumes where it was with the next device, or when a device comes back (wrap the call
    /// in a timeout to bound the wait). Fails with [`NodeError::AttachmentUnavailable`] when every connected device
    /// was asked and none could provide it. Dropping the future cancels the fetch (the bytes received so far stay
    /// for a while, so fetching again resumes from them).
    pub async fn fetch_attachment(
        &self,
        token: &crate::AttachmentToken,
        progress: impl Fn(u64, u64) + Send,
    ) -> Result<(), NodeError> {
        if self.inner.store.has_attachment(token)? {
            progress(token.len, token.len);
            return Ok(());
        }
        let (hash, len) = (token.hash, token.len);
        let mut events = self.inner.hub.fetch_events();
        let id = self
            .inner
            .hub
            .with_engine(move |e| e.fetch_attachment(hash, len))
            .await
            .map_err(|e| NodeError::Task(e.to_string()))??;
        self.inner.hub.wake_writers();
        // Dropping this future (the app cancelled) stops the fetch; the guard is disarmed once it has ended.
        let mut fetching = CancelFetch { hub: self.inner.hub.clone(), fetch: Some(id) };
        let outcome = self.wait_fetch(token, id, &mut events, &progress).await;
        fetching.fetch = None;
        outcome
    }

    async fn wait_fetch(
        &self,
        token: &crate::AttachmentToken,
        id: crate::sync::FetchId,
        events: &mut tokio::sync::broadcast::Receiver<crate::sync::FetchEvent>,
        progress: &(impl Fn(u64, u64) + Send),
    ) -> Result<(), NodeError> {
        use crate::sync::FetchEvent;
        loop {
            let event = tokio::select! {
                () = self.inner.hub.shutting_down() => return Err(NodeError::Task("the node stopped".into())),
                e = events.recv() => e,
            };
            match event {
                Ok(FetchEvent::Progress { fetch, done, total, .. }) if fetch == id => progress(done, total),
                Ok(FetchEvent::Done { fetch, .. }) if fetch == id => return Ok(()),
                Ok(FetchEvent::Failed { fetch, reason, .. }) if fetch == id => {
                    return Err(NodeError::AttachmentUnavailable { hash: token.hash_hex(), reason });
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    if self.inner.store.has_attachment(token)? {
                        return Ok(());
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    return Err(NodeError::Task("the node stopped".into()))
                }
            }
        }
    }

    /// Close every link cleanly, withdraw the mDNS advertisement and stop every task. The store stays open.
    pub async fn shutdown(&self) {
        if self.inner.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        lock(&self.inner.commits).take();
        stop(&self.inner.hub, &self.inner.lan).await;
    }
}

/// The engine on `replica` with `identity`, the hub driving it, the LAN transport and the clock as `config` says;
/// the Bluetooth radio too when it gives one. What every kind of node runs.
async fn start_engine(
    replica: impl Replica,
    identity: Identity,
    config: &NodeConfig,
) -> Result<(Arc<Hub>, Lan), NodeError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| NodeError::NoRuntime)?;
    let device = identity.device_key();
    let seq_base = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let engine =
        Engine::new(replica, identity, config.access.clone(), &config.name, config.subscriptions.clone(), seq_base);
    let hub = Hub::new(engine, runtime);
    let tag = config.access.psk().tag();
    let mdns = config.mdns.then_some(tag.as_str());
    let platform = config.service_discovery.as_ref().map(|p| p.0.clone());
    let lan =
        Lan::start(hub.clone(), config.listen_addr(), config.listen_limits, &config.connect, mdns, platform).await;
    let lan = match lan {
        Ok(lan) => lan,
        Err(e) => {
            hub.begin_shutdown();
            return Err(e.into());
        }
    };
    if let Err(e) = start_websocket(&lan, config).await {
        hub.begin_shutdown();
        return Err(e);
    }
    hub.spawn(tick(hub.clone()));
    if let Some(BleRadio(radio)) = &config.ble {
        let ble = BleConfig::new(ble::radio::device_tag(&device), ble::radio::app_tag(&config.access.psk()));
        hub.spawn(ble::radio::run(
            hub.clone(),
            radio.clone(),
            ble,
            seq_base ^ u64::from_le_bytes(ble::radio::device_tag(&device)),
        ));
    }
    Ok((hub, lan))
}

/// Accept and dial WebSocket links as `config` says.
#[cfg(feature = "websocket")]
async fn start_websocket(lan: &Lan, config: &NodeConfig) -> Result<(), NodeError> {
    let endpoints = config
        .cloud
        .iter()
        .map(|url| crate::transport::websocket::Endpoint::parse(url, &config.cloud_trust))
        .collect::<Result<Vec<_>, _>>()
        .map_err(NodeError::Config)?;
    if let Some(addr) = config.websocket_listen {
        lan.listen_websocket(addr, config.listen_limits).await?;
    }
    for endpoint in endpoints {
        lan.connect_websocket(endpoint);
    }
    Ok(())
}

/// Without the `websocket` feature, a configuration that asks for WebSocket links is refused.
#[cfg(not(feature = "websocket"))]
async fn start_websocket(_lan: &Lan, config: &NodeConfig) -> Result<(), NodeError> {
    if config.websocket_listen.is_some() || !config.cloud.is_empty() {
        return Err(NodeError::Config("WebSocket links need the `websocket` feature".into()));
    }
    Ok(())
}

/// Close every link cleanly, withdraw the mDNS advertisement and stop every task of a node.
async fn stop(hub: &Hub, lan: &Lan) {
    lan.stop_discovery().await;
    hub.begin_shutdown();
    if tokio::time::timeout(SHUTDOWN_WAIT, hub.tasks_done()).await.is_err() {
        log::warn!("node tasks still running {SHUTDOWN_WAIT:?} after shutdown");
    }
    log::info!("node {} stopped", hub.device());
}

/// A device on the network that syncs any [`Replica`] rather than an app's [`Store`]: the cloud peer's relays
/// (`shoaldb-cloud`, on PostgreSQL) are this. The same engine, links and transports as a [`Node`]; it writes
/// nothing of its own, and is told with [`ReplicaNode::replica_changed`] when its replica changed by another way
/// than its links (another relay wrote to the same database). Cheap to clone; dropping the last clone without
/// [`ReplicaNode::shutdown`] still stops its tasks.
#[derive(Clone)]
pub struct ReplicaNode {
    inner: Arc<ReplicaInner>,
}

struct ReplicaInner {
    hub: Arc<Hub>,
    lan: Lan,
    stopped: AtomicBool,
}

impl Drop for ReplicaInner {
    fn drop(&mut self) {
        self.hub.begin_shutdown();
    }
}

impl ReplicaNode {
    /// Start syncing `replica` as `identity` (the device key its links authenticate with), as `config` says, on the
    /// current tokio runtime.
    ///
    /// # Errors
    /// [`NodeError::NoRuntime`] outside a tokio runtime; [`NodeError::Lan`] when the listening address is taken.
    pub async fn start(
        replica: impl Replica,
        identity: Identity,
        config: NodeConfig,
    ) -> Result<ReplicaNode, NodeError> {
        let (hub, lan) = start_engine(replica, identity, &config).await?;
        log::info!("node {} ({}) started on its replica", config.name, hub.device());
        Ok(ReplicaNode { inner: Arc::new(ReplicaInner { hub, lan, stopped: AtomicBool::new(false) }) })
    }

    /// The address accepting connections, if the node listens.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.inner.lan.listen_addr()
    }

    /// The address accepting WebSocket links, if the node accepts them ([`NodeConfig::websocket_listen`]).
    #[cfg(feature = "websocket")]
    pub fn websocket_addr(&self) -> Option<SocketAddr> {
        self.inner.lan.websocket_addr()
    }

    /// This device's key.
    pub fn device_key(&self) -> DeviceKey {
        self.inner.hub.device()
    }

    /// The devices reachable now, directly or through others, nearest first.
    pub fn peers(&self) -> Vec<PeerPresence> {
        self.inner.hub.presence().borrow().clone()
    }

    /// How many links are open now.
    pub fn link_count(&self) -> usize {
        self.inner.hub.with_engine_now(|e| e.links().len())
    }

    /// The replica changed by another way than this node's links: offer the news to every linked device.
    pub fn replica_changed(&self) {
        self.inner.hub.wake_writers();
    }

    /// Dial `addr` (and again whenever the link is lost, with backoff) until shutdown.
    pub fn connect(&self, addr: SocketAddr) {
        self.inner.lan.connect(addr);
    }

    /// Close every link cleanly and stop every task. The replica stays as it is.
    pub async fn shutdown(&self) {
        if self.inner.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        stop(&self.inner.hub, &self.inner.lan).await;
    }
}

/// Give the engine the time about once a second (its keepalives and link timeout), and wake the writers to send
/// the keepalives it queued.
async fn tick(hub: Arc<Hub>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = hub.shutting_down() => return,
            _ = tick.tick() => {}
        }
        let now = hub.now_ms();
        if let Err(e) = hub.with_engine(move |e| e.tick(now)).await {
            log::error!("engine tick: {e}");
        }
        hub.wake_writers();
    }
}

/// Fetch the attachments other processes asked for through the store ([`Store::request_attachment`], e.g. the
/// `shoal fetch-attachment` command while a peer runs), and record the outcome there.
async fn serve_attachment_requests(hub: Arc<Hub>, store: Store) {
    use crate::sync::FetchEvent;
    let mut tick = tokio::time::interval(EXTERNAL_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut events = hub.fetch_events();
    let mut running: std::collections::BTreeMap<crate::sync::FetchId, [u8; 32]> = Default::default();
    loop {
        tokio::select! {
            () = hub.shutting_down() => return,
            _ = tick.tick() => {
                let s = store.clone();
                let wanted = match hub.runtime().spawn_blocking(move || s.requested_attachments()).await {
                    Ok(Ok(w)) => w,
                    _ => continue,
                };
                for (hash, len) in wanted {
                    if running.values().any(|h| *h == hash) {
                        continue;
                    }
                    match hub.with_engine(move |e| e.fetch_attachment(hash, len)).await {
                        Ok(Ok(id)) => {
                            running.insert(id, hash);
                            hub.wake_writers();
                        }
                        Ok(Err(e)) => log::warn!("fetching a requested attachment: {e}"),
                        Err(e) => log::error!("fetching a requested attachment: {e}"),
                    }
                }
            }
            e = events.recv() => {
                let outcome = match e {
                    Ok(FetchEvent::Done { fetch, .. }) => running.remove(&fetch).map(|h| (h, None)),
                    Ok(FetchEvent::Failed { fetch, reason, .. }) => running.remove(&fetch).map(|h| (h, Some(reason))),
                    Ok(FetchEvent::Progress { fetch, done, total, .. }) => {
                        if let Some(h) = running.get(&fetch) {
                            let _ = store.record_attachment_progress(h, done, total);
                        }
                        None
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => None,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                if let Some((hash, failure)) = outcome {
                    if let Err(e) = store.end_attachment_request(&hash, failure.as_deref()) {
                        log::warn!("recording an attachment request's outcome: {e}");
                    }
                }
            }
        }
    }
}

/// Remove the documents past their collection's time to live ([`Store::expire`]) every `every`, first at once.
async fn expire_documents(hub: Arc<Hub>, store: Store, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = hub.shutting_down() => return,
            _ = tick.tick() => {}
        }
        let s = store.clone();
        match hub.runtime().spawn_blocking(move || s.expire()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => log::warn!("expiring documents: {e}"),
            Err(e) => log::error!("expiry task failed: {e}"),
        }
    }
}

/// Look for writes by other processes on the store's file; the store's commit listeners (ours wakes the writers)
/// are called when there are.
async fn poll_external_changes(hub: Arc<Hub>, store: Store) {
    let mut tick = tokio::time::interval(EXTERNAL_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            () = hub.shutting_down() => return,
            _ = tick.tick() => {}
        }
        let s = store.clone();
        match hub.runtime().spawn_blocking(move || s.poll_external_changes()).await {
            Ok(Ok(_)) => failing = false,
            Ok(Err(e)) if !failing => {
                log::warn!("checking the store for other processes' writes: {e}");
                failing = true;
            }
            Ok(Err(e)) => log::debug!("checking the store for other processes' writes: {e}"),
            Err(e) => log::error!("store poll task failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::AppSecret;

    fn assert_send_sync<T: Send + Sync + Clone>() {}

    #[test]
    fn a_node_is_send_sync_and_clone() {
        assert_send_sync::<Node>();
    }

    #[test]
    fn listening_defaults_follow_mdns() {
        let secret = AppSecret::from_bytes(b"s").unwrap_or_else(|e| panic!("{e}"));
        let config = NodeConfig::new("n", secret);
        assert!(config.mdns);
        assert_eq!(config.subscriptions, vec![Subscription::everything()]);
        assert_eq!(config.listen_addr(), Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))));
        let config = config.with_mdns(false);
        assert_eq!(config.listen_addr(), None);
        let addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 7000));
        assert_eq!(config.listen_on(addr).listen_addr(), Some(addr));
    }

    #[tokio::test]
    async fn starting_outside_a_runtime_is_an_error_not_a_panic() {
        // From a plain thread (no runtime) it fails; inside a runtime it starts.
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(dir.path().join("n.db")).unwrap_or_else(|e| panic!("{e}"));
        let secret = AppSecret::from_bytes(b"s").unwrap_or_else(|e| panic!("{e}"));
        let config = NodeConfig::new("n", secret).with_mdns(false);
        let outside = std::thread::spawn({
            let (store, config) = (store.clone(), config.clone());
            move || {
                let fut = Node::start(store, config);
                // Poll once without a runtime: `start` must fail cleanly.
                let waker = std::task::Waker::noop();
                let mut cx = std::task::Context::from_waker(waker);
                use std::future::Future;
                let mut fut = std::pin::pin!(fut);
                matches!(fut.as_mut().poll(&mut cx), std::task::Poll::Ready(Err(NodeError::NoRuntime)))
            }
        })
        .join()
        .unwrap_or(false);
        assert!(outside);
        let node = Node::start(store, config).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(node.listen_addr(), None);
        node.shutdown().await;
    }
}
