//! The platform radio behind a trait, and the task that drives the node's sync engine with it (through the
//! [`BleBridge`], the same glue the radio simulator runs).
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

use super::bridge::{BleBridge, BridgeNote};
use super::link::{Channel, Role};
use super::links::{BleConfig, BleLinks, RadioCommand};
use super::{AppTag, DeviceTag};
use crate::security::{AppSecret, DeviceKey};
use crate::sync::{Engine, TransportKind};
use crate::transport::hub::Hub;
use crate::util::lock;
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
    Discovered {
        /// The platform's address of the phone (what [`RadioCommand::Connect`] is given to dial it).
        address: String,
        /// The service data of the Shoal service in the advertisement, if any.
        service_data: Option<Vec<u8>>,
    },
    /// A connection is up and its channel ready (GATT: services discovered and notifications enabled; or an
    /// L2CAP channel open). `conn` is the radio's number for it, unique while it lasts.
    Connected {
        /// The radio's number for the connection; the later events and commands about it carry it.
        conn: u64,
        /// The other phone's address.
        address: String,
        /// Whether this phone dialled the connection (central) or accepted it (peripheral).
        role: Role,
        /// What the packets travel on, with its MTU.
        channel: Channel,
    },
    /// The ATT MTU of a GATT connection changed.
    Mtu {
        /// The connection.
        conn: u64,
        /// The new ATT MTU, in bytes (a packet holds 3 bytes fewer).
        mtu: u16,
    },
    /// A packet arrived (a GATT write or notification, or bytes read from an L2CAP channel).
    Packet {
        /// The connection it arrived on.
        conn: u64,
        /// The packet's bytes, as received.
        bytes: Vec<u8>,
    },
    /// The OS took the last packet handed over with [`RadioCommand::Send`] on `conn`.
    Sent {
        /// The connection the packet was sent on.
        conn: u64,
    },
    /// A connection ended.
    Disconnected {
        /// The connection that ended.
        conn: u64,
    },
    /// A [`RadioCommand::Connect`] failed.
    ConnectFailed {
        /// The address that could not be connected.
        address: String,
    },
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

/// Drive `radio` for the node of `hub` until it shuts down.
pub(crate) async fn run(hub: Arc<Hub>, radio: Arc<dyn Radio>, config: BleConfig, seed: u64) {
    let (tx, mut rx) = mpsc::channel(EVENT_QUEUE);
    radio.attach(RadioEvents { tx });
    let bridge = Arc::new(Mutex::new(BleBridge::new(BleLinks::new(config, seed, hub.now_ms()))));
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
        let (b, h) = (bridge.clone(), hub.clone());
        let commands = match hub.with_engine(move |engine| step(&h, &mut lock(&b), engine, batch, now)).await {
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
    radio.detach();
    let (b, h) = (bridge.clone(), hub.clone());
    let _ = hub
        .with_engine(move |engine| {
            let mut bridge = lock(&b);
            bridge.close_all(engine, "bluetooth stopped");
            take_notes(&h, &mut bridge);
        })
        .await;
    log::info!("bluetooth: stopped");
}

/// One round: radio events in, link events to the engine, engine frames out, radio commands back.
fn step(
    hub: &Hub,
    bridge: &mut BleBridge,
    engine: &mut Engine,
    events: Vec<RadioEvent>,
    now: u64,
) -> Vec<RadioCommand> {
    for e in events {
        bridge.on_radio_event(now, e);
    }
    bridge.tick(now);
    // Anything may have changed the engine since the last round (writes, other links).
    bridge.engine_changed();
    bridge.pump(engine);
    take_notes(hub, bridge);
    std::iter::from_fn(|| bridge.poll_command()).collect()
}

/// The hub tracks every link of the engine.
fn take_notes(hub: &Hub, bridge: &mut BleBridge) {
    while let Some(note) = bridge.poll_note() {
        match note {
            BridgeNote::LinkUp { link, .. } => {
                hub.register(link, TransportKind::Ble, None);
            }
            BridgeNote::LinkDown { link, .. } => hub.unregister(link),
        }
    }
}
