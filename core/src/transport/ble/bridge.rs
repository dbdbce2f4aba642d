//! The glue between a radio's links and the sync engine, without I/O: radio events in; engine calls and radio
//! commands out.
//!
//! ```text
//!  RadioEvent ──on_radio_event──▶ BleLinks ──BleEvent──▶ Engine (add_link / on_frame / remove_link)
//!  RadioCommand ◀──poll_command── BleLinks ◀──frames──── Engine (poll_frame, as the links take them)
//! ```
//!
//! [`BleBridge`] is the one piece of code that does this. The node's radio task ([`super::radio`]) drives it with a
//! real radio on a runtime; the radio simulator ([`crate::sim::radio`], feature `sim`) drives it with a simulated
//! air on a virtual clock — so the seeded BLE scenarios exercise the glue that ships.
//!
//! A round: feed the radio's events ([`BleBridge::on_radio_event`]) and the time ([`BleBridge::tick`]); then
//! [`BleBridge::pump`] moves everything that can move — links announced to the engine, frames into the engine,
//! links the engine closed closed on the radio, the engine's frames into the links while they take them — until
//! nothing moves; then carry out [`BleBridge::poll_command`]s on the radio and act on [`BleBridge::poll_note`]s
//! (links up and down, for the node's bookkeeping).

use super::links::{BleEvent, BleLinks, LinkClosedReason, RadioCommand};
use super::radio::RadioEvent;
use super::{tag_hex, DeviceTag};
use crate::sync::{Engine, LinkId, TransportKind};
use crate::transport::ble::link::LinkError;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Rounds of [`BleBridge::pump`] at most (each moves something; a bound against a peer that keeps it busy).
const MAX_ROUNDS: usize = 10_000;

/// What the bridge tells its driver about engine links.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BridgeNote {
    /// A BLE link was added to the engine.
    LinkUp {
        /// The radio's connection.
        conn: u64,
        /// The engine's link.
        link: LinkId,
        /// The peer's device tag (unauthenticated; the engine's handshake authenticates the peer).
        peer_tag: DeviceTag,
    },
    /// A BLE link was removed from the engine.
    LinkDown {
        /// The radio's connection.
        conn: u64,
        /// The engine's link.
        link: LinkId,
    },
}

/// Counters of a bridge, since it started or since [`BleBridge::take_stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BridgeStats {
    /// Frames handed to the engine.
    pub frames_in: u64,
    /// Bytes of those frames.
    pub frame_bytes_in: u64,
    /// Frames taken from the engine into the links.
    pub frames_out: u64,
    /// Bytes of those frames.
    pub frame_bytes_out: u64,
    /// Links added to the engine.
    pub links_up: u64,
    /// Links closed because another connection to the same phone was kept.
    pub duplicates_closed: u64,
    /// Links that failed (not counting a polite close by the peer).
    pub link_errors: u64,
}

/// A bug planted in the bridge, to show that the simulated scenarios notice one (feature `sim` only).
#[cfg(feature = "sim")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BridgeFault {
    /// After `frames` frames, no more of the engine's frames are handed to the links (a glue that stops
    /// draining the engine). A lost frame, by contrast, is no such bug: the engine notices it and the link is
    /// rebuilt.
    StallOutbound {
        /// Frames handed over before the stall.
        frames: u64,
    },
    /// The engine is told that this side dialled, whichever did (two initiators never complete a handshake).
    AlwaysInitiator,
}

/// The links of one radio and which engine link each of their connections is. See the module docs.
pub struct BleBridge {
    links: BleLinks,
    /// Radio connection → engine link, for links announced to the engine.
    engine_link: BTreeMap<u64, LinkId>,
    /// Connections whose peer the engine authenticated (told to the links).
    authenticated: BTreeSet<u64>,
    /// Engine links whose last `poll_frame` found nothing (valid until the engine changes).
    starved: BTreeSet<LinkId>,
    notes: VecDeque<BridgeNote>,
    stats: BridgeStats,
    #[cfg(feature = "sim")]
    fault: Option<BridgeFault>,
    /// Frames handed to the links since the bridge started (for [`BridgeFault::StallOutbound`]).
    #[cfg(feature = "sim")]
    frames_out_total: u64,
}

impl BleBridge {
    /// A bridge over `links`, with no connection yet.
    pub fn new(links: BleLinks) -> BleBridge {
        BleBridge {
            links,
            engine_link: BTreeMap::new(),
            authenticated: BTreeSet::new(),
            starved: BTreeSet::new(),
            notes: VecDeque::new(),
            stats: BridgeStats::default(),
            #[cfg(feature = "sim")]
            fault: None,
            #[cfg(feature = "sim")]
            frames_out_total: 0,
        }
    }

    /// Plants `fault` (see [`BridgeFault`]).
    #[cfg(feature = "sim")]
    pub fn inject_fault(&mut self, fault: BridgeFault) {
        self.fault = Some(fault);
    }

    /// The radio's links.
    pub fn links(&self) -> &BleLinks {
        &self.links
    }

    /// How many links the engine has from this radio.
    pub fn engine_link_count(&self) -> usize {
        self.engine_link.len()
    }

    /// Whether connection `conn` is a link of the engine.
    pub fn is_engine_link(&self, conn: u64) -> bool {
        self.engine_link.contains_key(&conn)
    }

    /// The counters since the last call (they restart at 0).
    pub fn take_stats(&mut self) -> BridgeStats {
        std::mem::take(&mut self.stats)
    }

    /// What the radio reported, at `now_ms`.
    pub fn on_radio_event(&mut self, now_ms: u64, event: RadioEvent) {
        let links = &mut self.links;
        match event {
            RadioEvent::Discovered { address, service_data } => {
                links.on_discovered(now_ms, &address, service_data.as_deref())
            }
            RadioEvent::Connected { conn, address, role, channel } => {
                links.on_connected(now_ms, conn, &address, role, channel)
            }
            RadioEvent::Mtu { conn, mtu } => links.on_mtu(conn, mtu),
            RadioEvent::Packet { conn, bytes } => links.on_packet(now_ms, conn, &bytes),
            RadioEvent::Sent { conn } => links.on_sent(conn),
            RadioEvent::Disconnected { conn } => links.on_disconnected(now_ms, conn),
            RadioEvent::ConnectFailed { address } => links.on_connect_failed(now_ms, &address),
        }
    }

    /// Gives the links the time (keepalives, timeouts, dialling, backoff).
    pub fn tick(&mut self, now_ms: u64) {
        self.links.tick(now_ms);
    }

    /// The engine changed outside the bridge (a write, another link, a tick): every link may have frames again.
    pub fn engine_changed(&mut self) {
        self.starved.clear();
    }

    /// Moves everything that can move between the links and `engine`, until nothing does. Returns whether the
    /// engine was called with something new (a link, a frame, a removal), which may give its other links frames.
    pub fn pump(&mut self, engine: &mut Engine) -> bool {
        let mut engine_touched = false;
        for _ in 0..MAX_ROUNDS {
            let mut moved = false;
            // Link events feed the engine.
            while let Some(event) = self.links.poll_event() {
                moved = true;
                engine_touched = true;
                self.on_link_event(engine, event);
            }
            // Links the engine closed (a duplicate, a protocol error) end on the radio too.
            let closed: Vec<u64> =
                self.engine_link.iter().filter(|(_, l)| engine.is_closed(**l)).map(|(c, _)| *c).collect();
            for conn in closed {
                moved = true;
                engine_touched = true;
                self.links.close(conn);
                self.remove(engine, conn, "closed by the engine");
            }
            if engine_touched {
                self.starved.clear();
                self.note_authenticated(engine);
            }
            // Frames out, as the links take them.
            for conn in self.links.conns_wanting_frames() {
                let Some(&link) = self.engine_link.get(&conn) else { continue };
                if self.starved.contains(&link) {
                    continue;
                }
                while self.links.wants_frame(conn) {
                    #[cfg(feature = "sim")]
                    if let Some(BridgeFault::StallOutbound { frames }) = self.fault {
                        if self.frames_out_total >= frames {
                            break;
                        }
                        self.frames_out_total += 1;
                    }
                    let Some(frame) = engine.poll_frame(link) else {
                        self.starved.insert(link);
                        break;
                    };
                    moved = true;
                    self.stats.frames_out += 1;
                    self.stats.frame_bytes_out += frame.len() as u64;
                    if let Err(e) = self.links.push_frame(conn, &frame) {
                        log::warn!("bluetooth: connection {conn}: {e}");
                        break;
                    }
                }
            }
            if !moved {
                return engine_touched;
            }
        }
        log::warn!("bluetooth: the links did not settle in {MAX_ROUNDS} rounds");
        engine_touched
    }

    /// The next command for the radio.
    pub fn poll_command(&mut self) -> Option<RadioCommand> {
        self.links.poll_command()
    }

    /// The next note about engine links.
    pub fn poll_note(&mut self) -> Option<BridgeNote> {
        self.notes.pop_front()
    }

    /// The radio stops: every link leaves the engine (each with a [`BridgeNote::LinkDown`]).
    pub fn close_all(&mut self, engine: &mut Engine, reason: &str) {
        self.links.log_connections();
        let conns: Vec<u64> = self.engine_link.keys().copied().collect();
        for conn in conns {
            self.remove(engine, conn, reason);
        }
    }

    fn on_link_event(&mut self, engine: &mut Engine, event: BleEvent) {
        match event {
            BleEvent::LinkReady { conn, initiator, peer_tag } => {
                #[cfg(feature = "sim")]
                let initiator = initiator || self.fault == Some(BridgeFault::AlwaysInitiator);
                match engine.add_link(TransportKind::Ble, initiator) {
                    Ok(link) => {
                        log::debug!("bluetooth: connection {conn} to {} is link {link}", tag_hex(&peer_tag));
                        self.engine_link.insert(conn, link);
                        self.stats.links_up += 1;
                        self.notes.push_back(BridgeNote::LinkUp { conn, link, peer_tag });
                    }
                    Err(e) => {
                        log::warn!("bluetooth: cannot add a link: {e}");
                        self.links.close(conn);
                    }
                }
            }
            BleEvent::Frame { conn, frame } => {
                if let Some(&link) = self.engine_link.get(&conn) {
                    self.stats.frames_in += 1;
                    self.stats.frame_bytes_in += frame.len() as u64;
                    engine.on_frame(link, &frame);
                }
            }
            BleEvent::LinkClosed { conn, reason } => {
                match &reason {
                    LinkClosedReason::Duplicate => self.stats.duplicates_closed += 1,
                    LinkClosedReason::Error(e) if !matches!(e, LinkError::ClosedByPeer(_)) => {
                        log::debug!("bluetooth: link on connection {conn} failed: {e}");
                        self.stats.link_errors += 1;
                    }
                    _ => {}
                }
                self.remove(engine, conn, &format!("bluetooth: {reason:?}"));
            }
        }
    }

    /// Tells the links which connections the engine authenticated since (its handshake proved the app secret), so
    /// that they stop counting as unauthenticated ([`BleLinks::authenticated`]).
    fn note_authenticated(&mut self, engine: &Engine) {
        let newly: Vec<u64> = self
            .engine_link
            .iter()
            .filter(|(c, l)| !self.authenticated.contains(*c) && engine.link_device(**l).is_some())
            .map(|(c, _)| *c)
            .collect();
        for conn in newly {
            self.authenticated.insert(conn);
            self.links.authenticated(conn);
        }
    }

    /// Removes the engine link of `conn`, if any.
    fn remove(&mut self, engine: &mut Engine, conn: u64, reason: &str) {
        self.authenticated.remove(&conn);
        if let Some(link) = self.engine_link.remove(&conn) {
            engine.remove_link(link, reason);
            self.starved.remove(&link);
            self.notes.push_back(BridgeNote::LinkDown { conn, link });
        }
    }
}
