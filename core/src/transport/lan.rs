//! The LAN transport: sync links over TCP, found by mDNS / DNS-SD or given as addresses, driven on tokio.
//!
//! This is a thin async driver around the sans-IO [`Engine`](crate::sync::Engine) (the quinn pattern): all protocol
//! logic — handshake, sessions, one link per pair, presence — stays in the engine; this module only moves bytes,
//! dials, listens and discovers. Its parts:
//!
//! - `hub`: the engine shared by all tasks, and the dispatch of its events;
//! - `connection`: one TCP connection = a reader task and a writer task around one engine link;
//! - `dialer`: dialling addresses and discovered devices, with exponential backoff;
//! - [`discovery`]: mDNS advertisement and browsing (or the platform's DNS-SD);
//! - [`slots`]: the listener's connection slots, per source address, so that no one source holds them all;
//! - [`targets`]: the discovered devices dialled, within bounds that fake mDNS records cannot exhaust.
//!
//! A connection that has not authenticated within [`HANDSHAKE_DEADLINE`] is closed by the transport itself.
//!
//! Apps use it through [`Node`](crate::node::Node).

pub(crate) mod connection;
pub(crate) mod dialer;
pub mod discovery;
pub mod slots;
pub mod targets;

pub use connection::HANDSHAKE_DEADLINE;
pub use dialer::{Backoff, BACKOFF_MAX, BACKOFF_MIN};
pub use discovery::SERVICE_TYPE;

use crate::sync::TransportKind;
use crate::transport::hub::Hub;
use crate::util::lock;
use discovery::{Discovery, Found};
pub use slots::ListenLimits;
use slots::Slots;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use targets::{DialTargets, Failures};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

/// The most connections a device holds open at once (accepted and dialled; [`ListenLimits::DEVICE`]); more are
/// refused.
pub const MAX_CONNECTIONS: usize = 64;

/// The most addresses given by the app dialled at once (discovered devices: [`targets`]).
const MAX_DIAL_TARGETS: usize = 256;

/// Why the LAN transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum LanError {
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// mDNS could not start.
    #[error("mDNS discovery: {0}")]
    Discovery(#[from] mdns_sd::Error),
}

/// A running LAN transport: the listener, the dialers and discovery of one node.
pub(crate) struct Lan {
    hub: Arc<Hub>,
    listen_addr: Option<SocketAddr>,
    /// The addresses and URLs dialled (as [`dialer::Target::describe`] writes them).
    dialled: Mutex<HashSet<String>>,
    /// Where WebSocket links are accepted, if they are.
    #[cfg(feature = "websocket")]
    websocket_addr: Mutex<Option<SocketAddr>>,
    discovery: Mutex<Option<Discovery>>,
}

impl Lan {
    /// Listen on `listen` (if any) within `limits`, dial `connect`, and run discovery for the app `mdns_tag` (if
    /// any): through `platform` when given, otherwise the core's own mDNS.
    pub async fn start(
        hub: Arc<Hub>,
        listen: Option<SocketAddr>,
        limits: ListenLimits,
        connect: &[SocketAddr],
        mdns_tag: Option<&str>,
        platform: Option<Arc<dyn discovery::ServiceDiscovery>>,
    ) -> Result<Lan, LanError> {
        let mut listen_addr = None;
        if let Some(addr) = listen {
            let listener = TcpListener::bind(addr).await.map_err(|source| LanError::Bind { addr, source })?;
            let local = listener.local_addr().map_err(|source| LanError::Bind { addr, source })?;
            log::info!("listening on {local}");
            listen_addr = Some(local);
            hub.spawn(accept(hub.clone(), listener, Slots::with_limits(limits), |hub, stream, _, slot| async move {
                connection::run(hub, stream, false, Some(slot)).await;
            }));
        }
        let lan = Lan {
            hub: hub.clone(),
            listen_addr,
            dialled: Mutex::new(HashSet::new()),
            #[cfg(feature = "websocket")]
            websocket_addr: Mutex::new(None),
            discovery: Mutex::new(None),
        };
        if let Some(tag) = mdns_tag {
            let (tx, rx) = mpsc::channel(64);
            let discovery = match platform {
                Some(platform) => Discovery::start_platform(&hub, platform, tag, listen_addr, tx),
                None => Discovery::start(&hub, tag, listen_addr, tx)?,
            };
            *lock(&lan.discovery) = Some(discovery);
            hub.spawn(dial_discovered(hub.clone(), rx));
        }
        for addr in connect {
            lan.connect(*addr);
        }
        Ok(lan)
    }

    /// The address the listener is bound to.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen_addr
    }

    /// Dial `addr`, and again whenever the link is lost (with backoff), until shutdown. Dialling an address twice
    /// does nothing.
    pub fn connect(&self, addr: SocketAddr) {
        self.dial(dialer::Target::Address(addr));
    }

    /// Dial `target` until shutdown, unless it is dialled already or [`MAX_DIAL_TARGETS`] are.
    fn dial(&self, target: dialer::Target) {
        if self.hub.is_shutting_down() {
            return;
        }
        let what = target.describe();
        {
            let mut dialled = lock(&self.dialled);
            if dialled.len() >= MAX_DIAL_TARGETS {
                log::warn!("not dialling {what}: already dialling {MAX_DIAL_TARGETS} addresses");
                return;
            }
            if !dialled.insert(what.clone()) {
                return;
            }
        }
        log::info!("dialling {what}");
        self.hub.spawn(dialer::dial(self.hub.clone(), target));
    }

    /// Accept sync links inside WebSocket connections on `addr`, within `limits` (see [`crate::transport::websocket`]).
    /// Returns the address bound.
    #[cfg(feature = "websocket")]
    pub async fn listen_websocket(&self, addr: SocketAddr, limits: ListenLimits) -> Result<SocketAddr, LanError> {
        let listener = TcpListener::bind(addr).await.map_err(|source| LanError::Bind { addr, source })?;
        let local = listener.local_addr().map_err(|source| LanError::Bind { addr, source })?;
        log::info!("accepting WebSocket links on {local}");
        *lock(&self.websocket_addr) = Some(local);
        let hub = self.hub.clone();
        self.hub.spawn(accept(hub, listener, Slots::with_limits(limits), |hub, stream, peer, slot| async move {
            // The upgrade too must complete within the handshake deadline, holding its slot meanwhile.
            match tokio::time::timeout(HANDSHAKE_DEADLINE, crate::transport::websocket::accept(stream)).await {
                Ok(Ok((rd, wr))) => {
                    connection::run_halves(hub, rd, wr, Some(peer), TransportKind::Cloud, false, Some(slot)).await;
                }
                Ok(Err(e)) => log::warn!("refusing a WebSocket connection from {peer}: {e}"),
                Err(_) => log::warn!("refusing a WebSocket connection from {peer}: no upgrade within the deadline"),
            }
        }));
        Ok(local)
    }

    /// Where WebSocket links are accepted, if they are.
    #[cfg(feature = "websocket")]
    pub fn websocket_addr(&self) -> Option<SocketAddr> {
        *lock(&self.websocket_addr)
    }

    /// Dial the sync WebSocket at `endpoint` (`ws://host:port/path` or `wss://…`), and again whenever the link is
    /// lost (with backoff), until shutdown. Dialling a URL twice does nothing.
    #[cfg(feature = "websocket")]
    pub(crate) fn connect_websocket(&self, endpoint: crate::transport::websocket::Endpoint) {
        self.dial(dialer::Target::WebSocket(endpoint));
    }

    /// Withdraw the mDNS advertisement and stop discovery.
    pub async fn stop_discovery(&self) {
        let discovery = lock(&self.discovery).take();
        if let Some(d) = discovery {
            d.stop().await;
        }
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        if let Some(d) = lock(&self.discovery).take() {
            d.stop_now();
        }
    }
}

/// Accept connections until shutdown, each within the limits of `slots` (in all and per source), and `serve` each
/// (on a task of its own) with its slot.
async fn accept<F, Fut>(hub: Arc<Hub>, listener: TcpListener, slots: Arc<Slots>, serve: F)
where
    F: Fn(Arc<Hub>, tokio::net::TcpStream, SocketAddr, slots::Slot) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let max = slots.limits().connections;
    loop {
        let accepted = tokio::select! {
            () = hub.shutting_down() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                // (TCP and WebSocket connections alike.)
                if hub.link_count(TransportKind::Lan) + hub.link_count(TransportKind::Cloud) >= max {
                    log::warn!("refusing a connection from {peer}: {max} connections open");
                    continue;
                }
                let slot = match slots.admit(peer.ip()) {
                    Ok(slot) => slot,
                    Err(e) => {
                        log::warn!("refusing a connection from {peer}: {e}");
                        continue;
                    }
                };
                hub.spawn(serve(hub.clone(), stream, peer, slot));
            }
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                log::warn!("accepting a connection: {e}");
                tokio::select! {
                    () = hub.shutting_down() => return,
                    () = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
                }
            }
        }
    }
}

/// Keep one dialer per discovered device, fed with its current addresses, within the bounds of [`targets`].
async fn dial_discovered(hub: Arc<Hub>, mut found: mpsc::Receiver<Found>) {
    let mut targets: DialTargets<watch::Sender<Option<Vec<SocketAddr>>>> = DialTargets::default();
    loop {
        let event = tokio::select! {
            () = hub.shutting_down() => return,
            e = found.recv() => match e {
                Some(e) => e,
                None => return,
            },
        };
        // Forget dialers that ended on their own.
        targets.retain(|tx| !tx.is_closed());
        match event {
            Found::Up { device, addrs } => match targets.get(&device) {
                Some(tx) => {
                    tx.send_if_modified(|now| {
                        let changed = now.as_ref() != Some(&addrs);
                        *now = Some(addrs);
                        changed
                    });
                }
                None => {
                    let (tx, rx) = watch::channel(Some(addrs.clone()));
                    let failures = Failures::default();
                    let linked = hub.linked().borrow().clone();
                    match targets.insert(device, &addrs, failures.clone(), tx, |d| linked.contains(d)) {
                        Ok(evicted) => {
                            for (old, tx) in evicted {
                                log::warn!("not dialling {old} any more: making room for {device}");
                                tx.send_replace(None);
                            }
                            log::info!("discovered {device} at {addrs:?}");
                            let target = dialer::Target::Device { device, addrs: rx, failures };
                            hub.spawn(dialer::dial(hub.clone(), target));
                        }
                        Err(_) => log::warn!("not dialling {device} at {addrs:?}: too many discovered devices"),
                    }
                }
            },
            Found::Gone { device } => {
                if let Some(tx) = targets.remove(&device) {
                    tx.send_replace(None);
                }
            }
        }
    }
}
