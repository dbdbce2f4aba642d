//! The platform radio behind a trait, and the task that drives [`BleLinks`] and the node's sync engine with it.
//!
//! A platform (Android, iOS, BlueZ on Linux) implements [`Radio`]: it carries out [`RadioCommand`]s — advertise,
//! scan, connect, send a packet — and reports what happens through the [`RadioEvents`] it was given in
//! [`Radio::attach`]. Everything else (which phone to dial, fragmentation, credits, one link per pair, backoff,
//! keepalives) is decided here, in the core, by [`BleLinks`]; the frames it carries are the sync engine's, over
//! the same authenticated, encrypted link protocol as the LAN ([`TransportKind::Ble`]).
//!
//! Events from the radio go through a bounded queue ([`EVENT_QUEUE`]): a radio that reports faster than the node
//! can take loses the excess, which the link protocol notices (a gap in a link's packet numbers breaks that link,
//! and sync resumes on the next one), so memory stays bounded whatever the radio does.

use super::link::{Channel, Role};
use super::links::{BleConfig, BleEvent, BleLinks, RadioCommand};
use super::{AppTag, DeviceTag};
use crate::security::{AppSecret, DeviceKey};
use crate::sync::{Engine, LinkId, TransportKind};
use crate::transport::lan::hub::{lock, Hub};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Radio events queued for the node at most (beyond that they are dropped; see the module docs).
pub const EVENT_QUEUE: usize = 4096;
/// How often links are given the time (keepalives, timeouts, dialling, backoff).
const TICK: Duration = Duration::from_millis(200);

/// A platform's Bluetooth LE radio, as the core needs it. Implementations must not block: start the operation,
/// return, and report the outcome through [`RadioEvents`].
pub trait Radio: Send + Sync + 'static {
    /// The node starts using the radio: report events to `events` from now on.
    fn attach(&self, events: RadioEvents);
    /// Carry out one command (see [`RadioCommand`] for what each expects).
    fn execute(&self, command: RadioCommand);
    /// The node stops: stop advertising and scanning, close every connection, report nothing more.
    fn detach(&self);
}

/// What a radio reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RadioEvent {
    /// A phone advertising the Shoal service was seen (`service_data`: the service data of the advertisement,
    /// when the platform delivers it).
    Discovered { address: String, service_data: Option<Vec<u8>> },
    /// A connection is up and its channel ready (GATT: services discovered and notifications enabled; or an
    /// L2CAP channel open). `conn` is the radio's number for it, unique while it lasts.
    Connected { conn: u64, address: String, role: Role, channel: Channel },
    /// The ATT MTU of a GATT connection changed.
    Mtu { conn: u64, mtu: u16 },
    /// A packet arrived (a GATT write or notification, or bytes read from an L2CAP channel).
    Packet { conn: u64, bytes: Vec<u8> },
    /// The OS took the last packet handed over with [`RadioCommand::Send`] on `conn`.
    Sent { conn: u64 },
    /// A connection ended.
    Disconnected { conn: u64 },
    /// A [`RadioCommand::Connect`] failed.
    ConnectFailed { address: String },
}

/// Where a [`Radio`] reports events. Cheap to clone; usable from any thread; never blocks.
#[derive(Clone, Debug)]
pub struct RadioEvents {
    tx: mpsc::Sender<RadioEvent>,
}

impl RadioEvents {
    /// Report an event. Returns false when it was dropped (the node stopped, or its queue is full).
    pub fn report(&self, event: RadioEvent) -> bool {
        match self.tx.try_send(event) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(e)) => {
                log::warn!("bluetooth: event queue full, dropped {}", kind_of(&e));
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

fn kind_of(e: &RadioEvent) -> &'static str {
    match e {
        RadioEvent::Discovered { .. } => "a discovery",
        RadioEvent::Connected { .. } => "a connection",
        RadioEvent::Mtu { .. } => "an MTU change",
        RadioEvent::Packet { .. } => "a packet",
        RadioEvent::Sent { .. } => "a sent report",
        RadioEvent::Disconnected { .. } => "a disconnection",
        RadioEvent::ConnectFailed { .. } => "a failed connection",
    }
}

/// A radio for [`crate::NodeConfig`] (a named wrapper so that the configuration stays printable).
#[derive(Clone)]
pub struct BleRadio(pub Arc<dyn Radio>);

impl std::fmt::Debug for BleRadio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BleRadio(..)")
    }
}

/// This device's tag in advertisements and Hellos: the first 8 bytes of the BLAKE3 hash of its key.
pub fn device_tag(device: &DeviceKey) -> DeviceTag {
    let h = blake3::hash(&device.0);
    let mut tag = [0u8; 8];
    tag.copy_from_slice(&h.as_bytes()[..8]);
    tag
}

/// The app's tag: the first 4 bytes of the BLAKE3 hash of the app secret's public tag (devices of other apps are
/// never linked; the secret itself is never revealed).
pub fn app_tag(secret: &AppSecret) -> AppTag {
    let h = blake3::hash(secret.tag().as_bytes());
    let mut tag = [0u8; 4];
    tag.copy_from_slice(&h.as_bytes()[..4]);
    tag
}

/// The links of the radio and which engine link each connection is.
struct State {
    links: BleLinks,
    engine_link: HashMap<u64, LinkId>,
}

/// Drive `radio` for the node of `hub` until it shuts down.
pub(crate) async fn run(hub: Arc<Hub>, radio: Arc<dyn Radio>, config: BleConfig, seed: u64) {
    let (tx, mut rx) = mpsc::channel(EVENT_QUEUE);
    radio.attach(RadioEvents { tx });
    let state =
        Arc::new(Mutex::new(State { links: BleLinks::new(config, seed, hub.now_ms()), engine_link: HashMap::new() }));
    let mut wake = hub.wake_receiver();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    log::info!("bluetooth: started");
    loop {
        let mut batch = Vec::new();
        tokio::select! {
            () = hub.shutting_down() => break,
            e = rx.recv() => match e {
                Some(e) => batch.push(e),
                None => break,
            },
            _ = tick.tick() => {}
            r = wake.changed() => if r.is_err() { break },
        }
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        let now = hub.now_ms();
        let (st, h) = (state.clone(), hub.clone());
        let commands = match hub.with_engine(move |engine| step(&h, &st, engine, batch, now)).await {
            Ok(c) => c,
            Err(e) => {
                log::error!("bluetooth: {e}");
                continue;
            }
        };
        for c in commands {
            radio.execute(c);
        }
    }
    lock(&state).links.log_connections();
    radio.detach();
    let links: Vec<LinkId> = lock(&state).engine_link.values().copied().collect();
    let h = hub.clone();
    let _ = hub
        .with_engine(move |engine| {
            for link in links {
                engine.remove_link(link, "bluetooth stopped");
                h.unregister(link);
            }
        })
        .await;
    log::info!("bluetooth: stopped");
}

/// One round: radio events in, link events to the engine, engine frames out, radio commands back.
fn step(hub: &Hub, state: &Mutex<State>, engine: &mut Engine, events: Vec<RadioEvent>, now: u64) -> Vec<RadioCommand> {
    let mut st = lock(state);
    let State { links, engine_link } = &mut *st;
    for e in events {
        match e {
            RadioEvent::Discovered { address, service_data } => {
                links.on_discovered(now, &address, service_data.as_deref())
            }
            RadioEvent::Connected { conn, address, role, channel } => {
                links.on_connected(now, conn, &address, role, channel)
            }
            RadioEvent::Mtu { conn, mtu } => links.on_mtu(conn, mtu),
            RadioEvent::Packet { conn, bytes } => links.on_packet(now, conn, &bytes),
            RadioEvent::Sent { conn } => links.on_sent(conn),
            RadioEvent::Disconnected { conn } => links.on_disconnected(now, conn),
            RadioEvent::ConnectFailed { address } => links.on_connect_failed(now, &address),
        }
    }
    links.tick(now);
    // Until nothing moves: link events feed the engine, whose answers feed the links.
    for _ in 0..64 {
        let mut moved = false;
        while let Some(event) = links.poll_event() {
            moved = true;
            match event {
                BleEvent::LinkReady { conn, initiator, peer_tag } => {
                    match engine.add_link(TransportKind::Ble, initiator) {
                        Ok(link) => {
                            log::debug!("bluetooth: connection {conn} to {} is link {link}", hex8(&peer_tag));
                            engine_link.insert(conn, link);
                            hub.register(link, None);
                        }
                        Err(e) => {
                            log::warn!("bluetooth: cannot add a link: {e}");
                            links.close(conn);
                        }
                    }
                }
                BleEvent::Frame { conn, frame } => {
                    if let Some(&link) = engine_link.get(&conn) {
                        engine.on_frame(link, &frame);
                    }
                }
                BleEvent::LinkClosed { conn, reason } => {
                    if let Some(link) = engine_link.remove(&conn) {
                        engine.remove_link(link, &format!("bluetooth: {reason:?}"));
                        hub.unregister(link);
                    }
                }
            }
        }
        // Links the engine closed (a duplicate, a protocol error) end on the radio too.
        let closed: Vec<u64> = engine_link.iter().filter(|(_, l)| engine.is_closed(**l)).map(|(c, _)| *c).collect();
        for conn in closed {
            links.close(conn);
            moved = true;
        }
        for conn in links.conns_wanting_frames() {
            let Some(&link) = engine_link.get(&conn) else { continue };
            while links.wants_frame(conn) {
                let Some(frame) = engine.poll_frame(link) else { break };
                moved = true;
                if let Err(e) = links.push_frame(conn, &frame) {
                    log::warn!("bluetooth: connection {conn}: {e}");
                    break;
                }
            }
        }
        if !moved {
            break;
        }
    }
    let mut commands = Vec::new();
    while let Some(c) = links.poll_command() {
        commands.push(c);
    }
    commands
}

fn hex8(tag: &DeviceTag) -> String {
    tag.iter().map(|b| format!("{b:02x}")).collect()
}
