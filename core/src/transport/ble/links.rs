//! All the BLE links of one phone ([`BleLinks`]): discovery, dialling, one link per pair of phones, reconnection
//! with backoff, a cap on simultaneous links. Sans-IO.
//!
//! The radio (platform code, behind a foreign trait) only executes [`RadioCommand`]s and reports what happens
//! through the `on_*` methods; the sync engine's driver exchanges frames and learns about links through
//! [`BleEvent`]s. After any call, the caller drains [`BleLinks::poll_command`] and [`BleLinks::poll_event`] (and
//! offers frames to [`BleLinks::conns_wanting_frames`]) until all are empty: taking a frame out may free credit
//! that produces a packet, and vice versa. It calls [`BleLinks::tick`] regularly (every 100–1000 ms) for
//! keepalives, timeouts and dialling.
//!
//! ```text
//!   radio events:  on_discovered  on_connected  on_mtu  on_packet  on_sent  on_disconnected  on_connect_failed
//!   time:          tick
//!   commands out:  StartAdvertising  StartScanning  Connect  CancelConnect  Disconnect  Send
//!   engine side:   poll_event (LinkReady, Frame, LinkClosed)   wants_frame / push_frame   close
//! ```
//!
//! # Connection ids and roles
//! The radio names every connection with a `u64` id of its choosing, unique among its live connections, and says
//! which role this phone has in it. A connection in the central role is one this phone dialled
//! ([`RadioCommand::Connect`]); in the peripheral role the peer dialled. The radio reports a peripheral-role
//! connection once the central has subscribed to the TX characteristic (or opened the L2CAP channel), since this
//! side cannot send before. Closing a connection sends a Close packet first; in the central role,
//! [`RadioCommand::Disconnect`] follows once the radio has accepted it; in the peripheral role the central is
//! left to disconnect (iOS cannot disconnect a central, and a peripheral that cuts the connection at once may
//! lose the packets still on their way), and `Disconnect` follows only if it has not after [`CLOSE_LINGER_MS`].
//!
//! # One link per pair of phones
//! Each phone is central and peripheral at once, so two phones may connect to each other simultaneously. Once
//! both Hellos of a connection have been exchanged, the peer's device tag is known; if another connection to the
//! same tag is already up, the pair keeps **the connection whose central has the smaller tag** and closes the
//! other ([`CloseReason::Duplicate`]). Both phones compute the same answer, so they keep the same connection.
//! (Should both connections have this phone in the same role — the peer reachable at two addresses — the one
//! that became ready first is kept.) To avoid the race in the first place:
//! * an address is not dialled while it is connecting or connected, nor when the tag it advertises is already
//!   linked or being dialled at another address;
//! * when the peer advertises its tag and this phone advertises its own too, only the phone with the smaller tag
//!   dials; the other waits [`BleConfig::dial_grace_ms`] first (so a peer that cannot see it still gets linked).
//!   A phone that cannot advertise its tag (iOS, [`BleConfig::advertise_tag`] false) always waits the grace
//!   period before dialling a peer whose tag it knows, since that peer will dial it at once.
//!
//! # Reconnection
//! A failed attempt (or [`BleConfig::connect_timeout_ms`] without an answer, after which the attempt is
//! cancelled) or a lost link schedules the next attempt at that address after an exponential backoff
//! ([`BleConfig::backoff_min_ms`] doubling up to [`BleConfig::backoff_max_ms`], each delay jittered by ±25%), reset
//! once a link is up, or when the address is discovered again after [`REAPPEARED_AFTER_MS`] unseen (two phones
//! that walked apart and meet again link at once, not when the grown backoff runs out). The jitter is drawn from
//! a generator seeded by the constructor, so a run is reproducible.
//! Addresses not seen for [`BleConfig::forget_after_ms`] are forgotten (phones rotate their random addresses),
//! and at most [`BleConfig::max_known_addresses`] are remembered.
//!
//! # Limits
//! At most [`BleConfig::max_links`] connections are up at once (dialling stops there; a connection beyond it is
//! closed with [`CloseReason::TooManyLinks`]), at most [`BleConfig::max_connecting`] attempts run at once, and each
//! link bounds its own memory ([`super::link`]).
//!
//! # Unauthenticated connections
//! Anyone in radio range can connect, or advertise the service to be dialled, without the app secret. Until the
//! sync engine's handshake has authenticated the peer ([`BleLinks::authenticated`], which the bridge calls), a
//! connection is *unauthenticated*, and such connections get only a share of the [`BleConfig::max_links`]:
//! at most [`BleConfig::max_unauthenticated`] accepted ones — when the share is full, a new connection closes the
//! oldest unauthenticated one if that has had [`UNAUTHENTICATED_GRACE_MS`] for its handshake, else the new one is
//! closed ([`CloseReason::TooManyLinks`]) —, and a dialled connection counts as a running attempt ([`BleConfig::max_connecting`]) until it authenticates.
//! Any connection not authenticated within [`BleConfig::auth_timeout_ms`] of connecting is closed
//! ([`TimeoutKind::Authentication`]). So a device without the app secret holds at most
//! `max_unauthenticated + max_connecting` of the links, and only for a few seconds each.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use log::{debug, info, trace, warn};

use super::link::{BleLink, Channel, LinkConfig, LinkError, Role, TimeoutKind, DEFAULT_WINDOW};
use super::packet::CloseReason;
use super::{encode_service_data, parse_service_data, tag_hex, AppTag, DeviceTag};
use crate::util::rng::SeededRng;

/// Default [`BleConfig::max_links`].
pub const DEFAULT_MAX_LINKS: usize = 7;
/// Default [`BleConfig::max_connecting`].
pub const DEFAULT_MAX_CONNECTING: usize = 2;
/// Default [`BleConfig::max_unauthenticated`]: two accepted connections at once may be handshaking (an honest
/// peer's, and one more racing it), leaving the other links to authenticated peers.
pub const DEFAULT_MAX_UNAUTHENTICATED: usize = 2;
/// Default [`BleConfig::auth_timeout_ms`]: a handshake is a few packets each way (well under a second on BLE);
/// this leaves room for the link's own Hello ([`super::link::HELLO_TIMEOUT_MS`] is its bound) on a busy radio,
/// and frees a slot held by a device without the app secret within seconds.
pub const AUTH_TIMEOUT_MS: u64 = 10_000;
/// An accepted connection not authenticated yet is safe this long from being closed to make room for another one
/// (see the module docs): every newcomer, an honest phone too, gets at least this long for its handshake, and an
/// attacker reconnecting at once cannot keep the share of unauthenticated connections to itself for longer.
pub const UNAUTHENTICATED_GRACE_MS: u64 = 2_000;
/// Default [`BleConfig::backoff_min_ms`].
pub const BACKOFF_MIN_MS: u64 = 1_000;
/// Default [`BleConfig::backoff_max_ms`].
pub const BACKOFF_MAX_MS: u64 = 30_000;
/// Default [`BleConfig::dial_grace_ms`].
pub const DIAL_GRACE_MS: u64 = 3_000;
/// Default [`BleConfig::connect_timeout_ms`].
pub const CONNECT_TIMEOUT_MS: u64 = 10_000;
/// An address seen again after not being seen for this long is dialled without waiting out its backoff.
pub const REAPPEARED_AFTER_MS: u64 = 5_000;
/// Default [`BleConfig::forget_after_ms`].
pub const FORGET_AFTER_MS: u64 = 60_000;
/// Default [`BleConfig::max_known_addresses`].
pub const MAX_KNOWN_ADDRESSES: usize = 64;
/// A closing connection still up this long after it started closing is disconnected (a central disconnects as
/// soon as its Close packet has been accepted by the radio; a peripheral waits for the central to disconnect).
pub const CLOSE_LINGER_MS: u64 = 1_000;
/// Addresses longer than this (in bytes) are ignored (an Android MAC is 17, an iOS identifier 36).
pub const MAX_ADDRESS_LEN: usize = 64;

/// How one phone runs its BLE links.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BleConfig {
    /// This device's tag.
    pub tag: DeviceTag,
    /// This app's tag.
    pub app_tag: AppTag,
    /// Whether the platform advertises service data (the tags): true on Android, false on iOS.
    pub advertise_tag: bool,
    /// The most connections up at once.
    pub max_links: usize,
    /// The most connection attempts running at once (an attempt runs until its link authenticates).
    pub max_connecting: usize,
    /// The most accepted (peripheral-role) connections at once whose peer the engine has not authenticated.
    pub max_unauthenticated: usize,
    /// A connection whose peer the engine has not authenticated this long after it connected is closed.
    pub auth_timeout_ms: u64,
    /// The receive window of each link ([`LinkConfig::window`]).
    pub window: u16,
    /// The first delay before dialling an address again.
    pub backoff_min_ms: u64,
    /// The longest delay before dialling an address again.
    pub backoff_max_ms: u64,
    /// How long the phone with the larger tag waits for the other to dial before dialling itself.
    pub dial_grace_ms: u64,
    /// A connection attempt not answered within this time is cancelled and counts as failed.
    pub connect_timeout_ms: u64,
    /// An address not seen (advertising) for this long is forgotten, unless connected.
    pub forget_after_ms: u64,
    /// The most addresses remembered.
    pub max_known_addresses: usize,
}

impl BleConfig {
    /// The defaults, for a device with tag `tag` in the app with tag `app_tag`.
    pub fn new(tag: DeviceTag, app_tag: AppTag) -> BleConfig {
        BleConfig {
            tag,
            app_tag,
            advertise_tag: true,
            max_links: DEFAULT_MAX_LINKS,
            max_connecting: DEFAULT_MAX_CONNECTING,
            max_unauthenticated: DEFAULT_MAX_UNAUTHENTICATED,
            auth_timeout_ms: AUTH_TIMEOUT_MS,
            window: DEFAULT_WINDOW,
            backoff_min_ms: BACKOFF_MIN_MS,
            backoff_max_ms: BACKOFF_MAX_MS,
            dial_grace_ms: DIAL_GRACE_MS,
            connect_timeout_ms: CONNECT_TIMEOUT_MS,
            forget_after_ms: FORGET_AFTER_MS,
            max_known_addresses: MAX_KNOWN_ADDRESSES,
        }
    }
}

/// What the radio is asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RadioCommand {
    /// Advertise the Shoal service ([`super::SERVICE_UUID`]), with this service data if not empty.
    StartAdvertising {
        /// The service data ([`encode_service_data`]); empty when [`BleConfig::advertise_tag`] is false.
        service_data: Vec<u8>,
    },
    /// Scan for the Shoal service and report what is found ([`BleLinks::on_discovered`]).
    StartScanning,
    /// Connect to `address` as central; report [`BleLinks::on_connected`] or [`BleLinks::on_connect_failed`].
    Connect {
        /// The address, as reported by [`BleLinks::on_discovered`].
        address: String,
    },
    /// Give up a connection attempt that has not completed (it timed out); no report is expected.
    CancelConnect {
        /// The address being connected.
        address: String,
    },
    /// End a connection (best effort in the peripheral role); [`BleLinks::on_disconnected`] is not needed after.
    Disconnect {
        /// The connection.
        conn: u64,
    },
    /// Send a packet on a connection (write without response / notification / L2CAP write), then report
    /// [`BleLinks::on_sent`] once the OS has accepted it. A packet the OS cannot take yet is retried when it is
    /// ready, never dropped (see [`BleLink::on_sent`]).
    Send {
        /// The connection.
        conn: u64,
        /// The bytes.
        packet: Vec<u8>,
    },
}

/// Why a link announced with [`BleEvent::LinkReady`] ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkClosedReason {
    /// The radio reported the connection lost.
    Disconnected,
    /// Another connection to the same phone is kept instead.
    Duplicate,
    /// [`BleLinks::close`] was called.
    Local,
    /// The link failed (including a Close from the peer and timeouts).
    Error(LinkError),
}

/// What the sync engine's driver learns from [`BleLinks::poll_event`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BleEvent {
    /// A link is up: add it to the engine (`initiator` is true when this phone dialled, i.e. is the central).
    LinkReady {
        /// The connection.
        conn: u64,
        /// Whether this phone is the central of the connection.
        initiator: bool,
        /// The peer's device tag.
        peer_tag: DeviceTag,
    },
    /// A frame arrived on a link.
    Frame {
        /// The connection.
        conn: u64,
        /// The frame.
        frame: Vec<u8>,
    },
    /// A link announced by [`BleEvent::LinkReady`] ended: remove it from the engine.
    LinkClosed {
        /// The connection.
        conn: u64,
        /// Why.
        reason: LinkClosedReason,
    },
}

/// The deterministic source of backoff jitter (the crate's seeded generator).
#[derive(Clone, Debug)]
struct Jitter(SeededRng);

impl Jitter {
    fn new(seed: u64) -> Jitter {
        Jitter(SeededRng::new(seed))
    }

    /// `ms` times a factor in [0.75, 1.25].
    fn apply(&mut self, ms: u64) -> u64 {
        let factor = 750 + u128::from(self.0.below(501));
        u64::try_from(u128::from(ms) * factor / 1000).unwrap_or(u64::MAX)
    }
}

/// Exponential backoff in milliseconds.
#[derive(Clone, Debug)]
struct Backoff {
    min: u64,
    max: u64,
    next: u64,
}

impl Backoff {
    fn new(min: u64, max: u64) -> Backoff {
        Backoff { min, max: max.max(min), next: min }
    }

    fn next_delay(&mut self, jitter: &mut Jitter) -> u64 {
        let base = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        jitter.apply(base)
    }

    fn reset(&mut self) {
        self.next = self.min;
    }
}

/// What this phone does about an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PeerState {
    Idle,
    Connecting { since: u64 },
    Connected { conn: u64 },
}

/// An address seen advertising the Shoal service.
#[derive(Clone, Debug)]
struct Peer {
    /// Its device tag: from its advertisement, or learnt from a Hello.
    tag: Option<DeviceTag>,
    /// Whether `tag` came from its advertisement.
    tag_advertised: bool,
    last_seen: u64,
    state: PeerState,
    backoff: Backoff,
    /// Not dialled before this time.
    next_attempt: u64,
    /// Since when the dialling grace period counts (first seen, or when a link to its tag ended).
    wait_from: u64,
    /// Never dialled (it is this phone, or another app).
    banned: bool,
}

/// A connection.
#[derive(Debug)]
struct Conn {
    address: String,
    role: Role,
    link: BleLink,
    /// Whether the link became ready (both Hellos exchanged).
    ready: bool,
    /// Whether [`BleEvent::LinkReady`] was emitted and no [`BleEvent::LinkClosed`] since.
    announced: bool,
    /// When the connection started closing.
    closing: Option<u64>,
    /// When the connection came up.
    opened: u64,
    /// The engine authenticated the peer ([`BleLinks::authenticated`]).
    authenticated: bool,
}

fn log_counts(conn: u64, c: &Conn, when: &str) {
    let st = c.link.stats();
    info!(
        "ble: connection {conn} ({}) {when}: {} data packets in ({} out of order), {} out",
        c.address, st.data_packets_in, st.data_packets_early, st.data_packets_out
    );
}

/// The BLE links of one phone (see the module docs).
#[derive(Debug)]
pub struct BleLinks {
    config: BleConfig,
    jitter: Jitter,
    now: u64,
    peers: BTreeMap<String, Peer>,
    conns: BTreeMap<u64, Conn>,
    commands: VecDeque<RadioCommand>,
    events: VecDeque<BleEvent>,
    /// The connection that last sent a packet / delivered a frame (round robin).
    send_cursor: u64,
    frame_cursor: u64,
}

impl BleLinks {
    /// Links for a phone configured by `config`, starting at `now_ms`; `seed` seeds the backoff jitter. The first
    /// commands are [`RadioCommand::StartAdvertising`] and [`RadioCommand::StartScanning`].
    pub fn new(config: BleConfig, seed: u64, now_ms: u64) -> BleLinks {
        let service_data =
            if config.advertise_tag { encode_service_data(&config.tag, &config.app_tag).to_vec() } else { Vec::new() };
        let mut commands = VecDeque::new();
        commands.push_back(RadioCommand::StartAdvertising { service_data });
        commands.push_back(RadioCommand::StartScanning);
        info!("ble: starting as {}", tag_hex(&config.tag));
        BleLinks {
            config,
            jitter: Jitter::new(seed),
            now: now_ms,
            peers: BTreeMap::new(),
            conns: BTreeMap::new(),
            commands,
            events: VecDeque::new(),
            send_cursor: 0,
            frame_cursor: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &BleConfig {
        &self.config
    }

    /// The link of a connection, for its state and statistics.
    pub fn link(&self, conn: u64) -> Option<&BleLink> {
        self.conns.get(&conn).map(|c| &c.link)
    }

    /// The links announced to the engine and still up, with the peers' tags.
    pub fn linked(&self) -> Vec<(u64, DeviceTag)> {
        self.conns
            .iter()
            .filter(|(_, c)| c.announced)
            .filter_map(|(id, c)| c.link.peer_tag().map(|t| (*id, t)))
            .collect()
    }

    /// The connections held, including those not ready yet and those closing.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// The addresses remembered.
    pub fn known_addresses(&self) -> usize {
        self.peers.len()
    }

    /// Whether a connection attempt to `address` is running.
    pub fn is_connecting(&self, address: &str) -> bool {
        self.peers.get(address).is_some_and(|p| matches!(p.state, PeerState::Connecting { .. }))
    }

    /// The scanner found `address` advertising the Shoal service, with `service_data` if the advertisement
    /// carried any. Devices of other apps (by their service data) and this phone itself are ignored.
    pub fn on_discovered(&mut self, now_ms: u64, address: &str, service_data: Option<&[u8]>) {
        self.advance(now_ms);
        let parsed = service_data.and_then(parse_service_data);
        if service_data.is_some_and(|d| !d.is_empty()) && parsed.is_none() {
            trace!("ble: unrecognised service data from {address}; treating its tag as unknown");
        }
        if let Some((tag, app)) = parsed {
            if app != self.config.app_tag {
                trace!("ble: {address} belongs to another app");
                return;
            }
            if tag == self.config.tag {
                trace!("ble: {address} is this phone");
                return;
            }
        }
        if address.is_empty() || address.len() > MAX_ADDRESS_LEN {
            debug!("ble: ignoring an address of {} bytes", address.len());
            return;
        }
        let now = self.now;
        if !self.peers.contains_key(address) {
            if self.peers.len() >= self.config.max_known_addresses && !self.evict_one() {
                trace!("ble: too many addresses known; ignoring {address}");
                return;
            }
            debug!("ble: discovered {address}");
            self.peers.insert(
                address.to_owned(),
                Peer {
                    tag: None,
                    tag_advertised: false,
                    last_seen: now,
                    state: PeerState::Idle,
                    backoff: Backoff::new(self.config.backoff_min_ms, self.config.backoff_max_ms),
                    next_attempt: now,
                    wait_from: now,
                    banned: false,
                },
            );
        }
        if let Some(peer) = self.peers.get_mut(address) {
            if now.saturating_sub(peer.last_seen) >= REAPPEARED_AFTER_MS && peer.state == PeerState::Idle {
                // Back in range after a while (the attempts that failed meanwhile said nothing about now): dial
                // without waiting out the backoff.
                debug!("ble: {address} is back after {} ms", now.saturating_sub(peer.last_seen));
                peer.backoff.reset();
                peer.next_attempt = peer.next_attempt.min(now);
            }
            peer.last_seen = now;
            if let Some((tag, _)) = parsed {
                peer.tag = Some(tag);
                peer.tag_advertised = true;
            }
        }
        self.dial();
    }

    /// A connection is up: `conn` (the radio's id) to `address`, in `role`, over `channel`.
    pub fn on_connected(&mut self, now_ms: u64, conn: u64, address: &str, role: Role, channel: Channel) {
        self.advance(now_ms);
        if self.conns.contains_key(&conn) {
            debug!("ble: connection {conn} reported twice; ignoring");
            return;
        }
        let link = BleLink::with_config(
            role,
            channel,
            self.config.tag,
            self.config.app_tag,
            LinkConfig { window: self.config.window },
            self.now,
        );
        let address: String = address.chars().take(MAX_ADDRESS_LEN).collect();
        if role == Role::Central {
            if let Some(peer) = self.peers.get_mut(&address) {
                peer.state = PeerState::Connected { conn };
            }
        }
        let mut c = Conn {
            address,
            role,
            link,
            ready: false,
            announced: false,
            closing: None,
            opened: self.now,
            authenticated: false,
        };
        // The oldest accepted connection still unauthenticated, and how many there are.
        let mut unauthenticated = 0;
        let mut oldest: Option<(u64, u64)> = None;
        for (id, other) in &self.conns {
            if other.role == Role::Peripheral && other.closing.is_none() && !other.authenticated {
                unauthenticated += 1;
                if oldest.is_none_or(|(_, opened)| other.opened < opened) {
                    oldest = Some((*id, other.opened));
                }
            }
        }
        let evictable = oldest.filter(|(_, opened)| self.now.saturating_sub(*opened) >= UNAUTHENTICATED_GRACE_MS);
        let share_full = role == Role::Peripheral && unauthenticated >= self.config.max_unauthenticated;
        if share_full {
            if let Some((old, _)) = evictable {
                warn!(
                    "ble: connection {old} not authenticated after {UNAUTHENTICATED_GRACE_MS} ms; closing it for {conn}"
                );
                let err = LinkError::Timeout(TimeoutKind::Authentication);
                self.close_conn(old, CloseReason::TooManyLinks, LinkClosedReason::Error(err));
            }
        }
        let live = self.live_count();
        if live >= self.config.max_links {
            info!(
                "ble: connection {conn} ({}) beyond the cap of {} links; closing it",
                c.address, self.config.max_links
            );
            c.link.close(CloseReason::TooManyLinks);
            c.closing = Some(self.now);
        } else if share_full && evictable.is_none() {
            warn!(
                "ble: connection {conn} ({}) refused: {unauthenticated} accepted connections are not authenticated yet",
                c.address
            );
            c.link.close(CloseReason::TooManyLinks);
            c.closing = Some(self.now);
        } else {
            info!("ble: connected {conn} to {} as {role:?}", c.address);
        }
        self.conns.insert(conn, c);
    }

    /// The sync engine authenticated the peer of `conn` (its handshake proved the app secret): the connection no
    /// longer counts as unauthenticated and the authentication deadline no longer applies.
    pub fn authenticated(&mut self, conn: u64) {
        if let Some(c) = self.conns.get_mut(&conn) {
            if !c.authenticated {
                debug!("ble: connection {conn} ({}) authenticated", c.address);
                c.authenticated = true;
            }
        }
        self.dial();
    }

    /// The ATT MTU of a connection is now `mtu`.
    pub fn on_mtu(&mut self, conn: u64, mtu: u16) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.link.set_att_mtu(mtu);
        }
    }

    /// Bytes arrived on a connection (on GATT one packet, on L2CAP any piece of the stream).
    pub fn on_packet(&mut self, now_ms: u64, conn: u64, bytes: &[u8]) {
        self.advance(now_ms);
        let now = self.now;
        let Some(c) = self.conns.get_mut(&conn) else {
            trace!("ble: {} bytes on unknown connection {conn}", bytes.len());
            return;
        };
        let result = c.link.on_packet(bytes, now);
        if c.closing.is_some() {
            return;
        }
        match result {
            Err(err) => self.fail_conn(conn, err),
            Ok(()) if !c.ready && c.link.is_ready() => self.on_ready(conn),
            Ok(()) => {}
        }
    }

    /// The radio accepted a packet of `conn` ([`RadioCommand::Send`]).
    pub fn on_sent(&mut self, conn: u64) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.link.on_sent();
        }
    }

    /// Log every connection's packet counters (e.g. when the node stops: connections that end then are not
    /// reported one by one).
    pub fn log_connections(&self) {
        for (conn, c) in &self.conns {
            log_counts(*conn, c, "at the end");
        }
    }

    /// A connection ended (whoever ended it).
    pub fn on_disconnected(&mut self, now_ms: u64, conn: u64) {
        self.advance(now_ms);
        let Some(c) = self.conns.remove(&conn) else {
            trace!("ble: disconnection of unknown connection {conn}");
            return;
        };
        log_counts(conn, &c, "ended");
        if c.announced {
            self.events.push_back(BleEvent::LinkClosed { conn, reason: LinkClosedReason::Disconnected });
        }
        self.after_gone(conn, &c);
        self.dial();
    }

    /// A connection attempt to `address` failed.
    pub fn on_connect_failed(&mut self, now_ms: u64, address: &str) {
        self.advance(now_ms);
        let now = self.now;
        if let Some(peer) = self.peers.get_mut(address) {
            if matches!(peer.state, PeerState::Connecting { .. }) {
                let delay = peer.backoff.next_delay(&mut self.jitter);
                peer.state = PeerState::Idle;
                peer.next_attempt = now.saturating_add(delay);
                debug!("ble: connecting to {address} failed; again in {delay} ms");
            }
        }
        self.dial();
    }

    /// Gives the links the time: keepalives, timeouts, connection attempts that take too long, forgetting
    /// addresses, dialling.
    pub fn tick(&mut self, now_ms: u64) {
        self.advance(now_ms);
        let now = self.now;
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            let Some(c) = self.conns.get_mut(&id) else { continue };
            if let Some(since) = c.closing {
                if now.saturating_sub(since) >= CLOSE_LINGER_MS {
                    debug!("ble: connection {id} still up {CLOSE_LINGER_MS} ms after closing; disconnecting");
                    self.finish(id);
                }
                continue;
            }
            if let Err(err) = c.link.tick(now) {
                self.fail_conn(id, err);
                continue;
            }
            if !c.authenticated && now.saturating_sub(c.opened) >= self.config.auth_timeout_ms {
                warn!(
                    "ble: connection {id} ({}) not authenticated within {} ms; closing it",
                    c.address, self.config.auth_timeout_ms
                );
                let err = LinkError::Timeout(TimeoutKind::Authentication);
                self.close_conn(id, CloseReason::Timeout, LinkClosedReason::Error(err));
            }
        }
        let timeout = self.config.connect_timeout_ms;
        for (address, peer) in &mut self.peers {
            if let PeerState::Connecting { since } = peer.state {
                if now.saturating_sub(since) >= timeout {
                    let delay = peer.backoff.next_delay(&mut self.jitter);
                    debug!("ble: connecting to {address} timed out; again in {delay} ms");
                    peer.state = PeerState::Idle;
                    peer.next_attempt = now.saturating_add(delay);
                    self.commands.push_back(RadioCommand::CancelConnect { address: address.clone() });
                }
            }
        }
        let forget = self.config.forget_after_ms;
        self.peers.retain(|address, p| {
            let keep = p.state != PeerState::Idle || now.saturating_sub(p.last_seen) < forget;
            if !keep {
                debug!("ble: forgetting {address}");
            }
            keep
        });
        self.dial();
    }

    /// The next command for the radio: queued commands first, then packets of the links in turn.
    pub fn poll_command(&mut self) -> Option<RadioCommand> {
        loop {
            if let Some(cmd) = self.commands.pop_front() {
                return Some(cmd);
            }
            let mut finished = false;
            for id in rotation(&self.conns, self.send_cursor) {
                let Some(c) = self.conns.get_mut(&id) else { continue };
                if let Some(packet) = c.link.poll_packet() {
                    self.send_cursor = id;
                    return Some(RadioCommand::Send { conn: id, packet });
                }
                // A central disconnects once its Close has been accepted by the radio; a peripheral waits for the
                // central to disconnect (it may not be able to itself), until CLOSE_LINGER_MS.
                if c.closing.is_some() && c.role == Role::Central && c.link.is_closed() && c.link.radio_pending() == 0 {
                    self.finish(id);
                    finished = true;
                    break;
                }
            }
            if !finished {
                return None;
            }
        }
    }

    /// The next event for the sync engine's driver: link changes first, then frames of the links in turn.
    pub fn poll_event(&mut self) -> Option<BleEvent> {
        if let Some(event) = self.events.pop_front() {
            return Some(event);
        }
        for id in rotation(&self.conns, self.frame_cursor) {
            let Some(c) = self.conns.get_mut(&id) else { continue };
            if !c.announced || c.closing.is_some() {
                continue;
            }
            if let Some(frame) = c.link.poll_frame_in() {
                self.frame_cursor = id;
                return Some(BleEvent::Frame { conn: id, frame });
            }
            if let Some(err) = c.link.error().cloned() {
                self.fail_conn(id, err);
                return self.events.pop_front();
            }
        }
        None
    }

    /// Whether the link of `conn` takes a frame now.
    pub fn wants_frame(&self, conn: u64) -> bool {
        self.conns.get(&conn).is_some_and(|c| c.announced && c.closing.is_none() && c.link.wants_frame())
    }

    /// The connections whose links take a frame now.
    pub fn conns_wanting_frames(&self) -> Vec<u64> {
        self.conns.keys().copied().filter(|id| self.wants_frame(*id)).collect()
    }

    /// Queues a frame on the link of `conn`.
    ///
    /// # Errors
    /// [`LinkError::UnknownConnection`], or [`LinkError::NotWanted`] / [`LinkError::InvalidFrame`] as
    /// [`BleLink::push_frame`] (also for a link not announced, or closing).
    pub fn push_frame(&mut self, conn: u64, frame: &[u8]) -> Result<(), LinkError> {
        let c = self.conns.get_mut(&conn).ok_or(LinkError::UnknownConnection(conn))?;
        if !c.announced || c.closing.is_some() {
            return Err(LinkError::NotWanted);
        }
        c.link.push_frame(frame)
    }

    /// Ends the link of `conn` (the engine closed it): a Close packet, then [`RadioCommand::Disconnect`]; a
    /// [`BleEvent::LinkClosed`] with [`LinkClosedReason::Local`] follows if it had been announced.
    pub fn close(&mut self, conn: u64) {
        self.close_conn(conn, CloseReason::Normal, LinkClosedReason::Local);
    }

    fn advance(&mut self, now_ms: u64) {
        self.now = self.now.max(now_ms);
    }

    /// Connections up or coming up (not closing).
    fn live_count(&self) -> usize {
        self.conns.values().filter(|c| c.closing.is_none()).count()
    }

    /// Forgets the idle address seen longest ago; false if every address is busy.
    fn evict_one(&mut self) -> bool {
        let oldest = self
            .peers
            .iter()
            .filter(|(_, p)| p.state == PeerState::Idle)
            .min_by_key(|(_, p)| p.last_seen)
            .map(|(a, _)| a.clone());
        match oldest {
            Some(address) => {
                self.peers.remove(&address);
                true
            }
            None => false,
        }
    }

    /// When `peer` may be dialled.
    fn dial_at(&self, peer: &Peer) -> u64 {
        let yields =
            peer.tag_advertised && peer.tag.is_some_and(|tag| !self.config.advertise_tag || self.config.tag > tag);
        if yields {
            peer.next_attempt.max(peer.wait_from.saturating_add(self.config.dial_grace_ms))
        } else {
            peer.next_attempt
        }
    }

    /// Dials the addresses that may be dialled now, within the limits.
    fn dial(&mut self) {
        let now = self.now;
        let mut busy: BTreeSet<DeviceTag> =
            self.conns.values().filter(|c| c.closing.is_none()).filter_map(|c| c.link.peer_tag()).collect();
        // A dialled connection is an attempt until it authenticates.
        let mut connecting =
            self.conns.values().filter(|c| c.role == Role::Central && c.closing.is_none() && !c.authenticated).count();
        let mut pending = 0;
        for peer in self.peers.values() {
            match peer.state {
                PeerState::Connecting { .. } => pending += 1,
                PeerState::Connected { .. } => {}
                PeerState::Idle => continue,
            }
            if let Some(tag) = peer.tag {
                busy.insert(tag);
            }
        }
        let mut slots = self.config.max_links.saturating_sub(self.live_count() + pending);
        connecting += pending;
        let mut to_dial = Vec::new();
        for (address, peer) in &self.peers {
            if slots == 0 || connecting >= self.config.max_connecting {
                break;
            }
            if peer.state != PeerState::Idle || peer.banned || peer.tag.is_some_and(|t| busy.contains(&t)) {
                continue;
            }
            if now < self.dial_at(peer) {
                continue;
            }
            if let Some(tag) = peer.tag {
                busy.insert(tag);
            }
            to_dial.push(address.clone());
            slots -= 1;
            connecting += 1;
        }
        for address in to_dial {
            if let Some(peer) = self.peers.get_mut(&address) {
                peer.state = PeerState::Connecting { since: now };
            }
            info!("ble: dialling {address}");
            self.commands.push_back(RadioCommand::Connect { address });
        }
    }

    /// Both Hellos of `id` have been exchanged: keep it (and announce it) or drop it as a duplicate.
    fn on_ready(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        c.ready = true;
        let Some(tag) = c.link.peer_tag() else { return };
        let role = c.role;
        if role == Role::Central {
            if let Some(peer) = self.peers.get_mut(&c.address) {
                if peer.tag != Some(tag) {
                    peer.tag = Some(tag);
                    peer.tag_advertised = false;
                }
            }
        }
        for peer in self.peers.values_mut().filter(|p| p.tag == Some(tag)) {
            peer.backoff.reset();
        }
        let other = self
            .conns
            .iter()
            .find(|(oid, oc)| **oid != id && oc.ready && oc.closing.is_none() && oc.link.peer_tag() == Some(tag))
            .map(|(oid, oc)| (*oid, oc.role));
        match other {
            None => self.announce(id, role, tag),
            Some((other, other_role)) => {
                // Keep the connection whose central has the smaller tag; with the same role twice, the older one.
                let keep_new = role != other_role && ((role == Role::Central) == (self.config.tag < tag));
                let (keep, drop) = if keep_new { (id, other) } else { (other, id) };
                info!("ble: connections {keep} and {drop} both lead to {}; keeping {keep}", tag_hex(&tag));
                self.close_conn(drop, CloseReason::Duplicate, LinkClosedReason::Duplicate);
                if keep_new {
                    self.announce(id, role, tag);
                }
            }
        }
    }

    fn announce(&mut self, id: u64, role: Role, peer_tag: DeviceTag) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.announced = true;
            info!("ble: link {id} up with {} ({role:?})", tag_hex(&peer_tag));
            self.events.push_back(BleEvent::LinkReady { conn: id, initiator: role == Role::Central, peer_tag });
        }
    }

    /// Starts closing `id` from this side.
    fn close_conn(&mut self, id: u64, reason: CloseReason, event: LinkClosedReason) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        if c.closing.is_some() {
            return;
        }
        c.link.close(reason);
        c.closing = Some(self.now);
        if c.announced {
            c.announced = false;
            self.events.push_back(BleEvent::LinkClosed { conn: id, reason: event });
        }
    }

    /// The link of `id` failed.
    fn fail_conn(&mut self, id: u64, err: LinkError) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        if c.closing.is_some() {
            return;
        }
        info!("ble: connection {id} ({}) failed: {err}", c.address);
        c.closing = Some(self.now);
        let refused = matches!(
            err,
            LinkError::WrongApp { .. }
                | LinkError::SelfConnection
                | LinkError::ClosedByPeer(CloseReason::WrongApp | CloseReason::SelfConnection)
        );
        if c.role == Role::Central && refused {
            if let Some(peer) = self.peers.get_mut(&c.address) {
                peer.banned = true;
            }
        }
        if c.announced {
            c.announced = false;
            self.events.push_back(BleEvent::LinkClosed { conn: id, reason: LinkClosedReason::Error(err) });
        }
    }

    /// A closing connection has said goodbye (or lingered too long): disconnect it.
    fn finish(&mut self, id: u64) {
        if let Some(c) = self.conns.remove(&id) {
            debug!("ble: disconnecting {id}");
            self.commands.push_back(RadioCommand::Disconnect { conn: id });
            self.after_gone(id, &c);
        }
    }

    /// Schedules the next attempts after connection `id` is gone.
    fn after_gone(&mut self, id: u64, c: &Conn) {
        let now = self.now;
        let tag = c.link.peer_tag();
        for (address, peer) in &mut self.peers {
            let dialled = c.role == Role::Central && *address == c.address;
            let same_tag = tag.is_some() && peer.tag == tag;
            if !dialled && !same_tag {
                continue;
            }
            match peer.state {
                PeerState::Connected { conn } if conn == id => peer.state = PeerState::Idle,
                PeerState::Idle => {}
                _ => continue,
            }
            let delay = peer.backoff.next_delay(&mut self.jitter);
            peer.next_attempt = peer.next_attempt.max(now.saturating_add(delay));
            peer.wait_from = now;
            debug!("ble: may dial {address} again in {delay} ms");
        }
    }
}

/// The keys of `map` after `cursor`, then those up to it.
fn rotation<V>(map: &BTreeMap<u64, V>, cursor: u64) -> Vec<u64> {
    let after = map.range(cursor.saturating_add(1)..).map(|(k, _)| *k);
    let before = map.range(..=cursor).map(|(k, _)| *k);
    if cursor == u64::MAX {
        map.keys().copied().collect()
    } else {
        after.chain(before).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_is_deterministic_and_within_a_quarter() {
        let mut a = Jitter::new(7);
        let mut b = Jitter::new(7);
        for _ in 0..1000 {
            let x = a.apply(1000);
            assert_eq!(x, b.apply(1000));
            assert!((750..=1250).contains(&x), "{x}");
        }
        assert_ne!(Jitter::new(1).apply(1_000_000), Jitter::new(2).apply(1_000_000));
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut j = Jitter::new(3);
        let mut b = Backoff::new(1000, 30_000);
        for base in [1000u64, 2000, 4000, 8000, 16_000, 30_000, 30_000] {
            let d = b.next_delay(&mut j);
            assert!(d >= base * 3 / 4 && d <= base * 5 / 4, "{d} vs {base}");
        }
        b.reset();
        assert!(b.next_delay(&mut j) <= 1250);
    }

    #[test]
    fn rotation_starts_after_the_cursor() {
        let map: BTreeMap<u64, ()> = [1, 3, 5].into_iter().map(|k| (k, ())).collect();
        assert_eq!(rotation(&map, 0), vec![1, 3, 5]);
        assert_eq!(rotation(&map, 3), vec![5, 1, 3]);
        assert_eq!(rotation(&map, 5), vec![1, 3, 5]);
        assert_eq!(rotation(&map, u64::MAX), vec![1, 3, 5]);
    }

    #[test]
    fn starts_advertising_and_scanning() {
        let mut l = BleLinks::new(BleConfig::new([1; 8], [2; 4]), 0, 0);
        assert_eq!(
            l.poll_command(),
            Some(RadioCommand::StartAdvertising { service_data: vec![1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2] })
        );
        assert_eq!(l.poll_command(), Some(RadioCommand::StartScanning));
        assert_eq!(l.poll_command(), None);
        let mut cfg = BleConfig::new([1; 8], [2; 4]);
        cfg.advertise_tag = false;
        let mut l = BleLinks::new(cfg, 0, 0);
        assert_eq!(l.poll_command(), Some(RadioCommand::StartAdvertising { service_data: vec![] }));
    }

    #[test]
    fn addresses_are_bounded_and_forgotten() {
        let mut cfg = BleConfig::new([1; 8], [2; 4]);
        cfg.max_links = 0; // never dial, so every address stays idle
        cfg.max_known_addresses = 4;
        let mut l = BleLinks::new(cfg, 0, 0);
        for i in 0..10u64 {
            l.on_discovered(i, &format!("addr-{i}"), None);
        }
        assert_eq!(l.known_addresses(), 4);
        l.on_discovered(10, &"x".repeat(MAX_ADDRESS_LEN + 1), None);
        assert_eq!(l.known_addresses(), 4);
        l.tick(9 + FORGET_AFTER_MS);
        assert_eq!(l.known_addresses(), 0);
    }

    #[test]
    fn other_apps_and_self_are_not_remembered() {
        let mut l = BleLinks::new(BleConfig::new([1; 8], [2; 4]), 0, 0);
        while l.poll_command().is_some() {}
        l.on_discovered(0, "other", Some(&encode_service_data(&[3; 8], &[9; 4])));
        l.on_discovered(0, "me", Some(&encode_service_data(&[1; 8], &[2; 4])));
        assert_eq!(l.known_addresses(), 0);
        assert_eq!(l.poll_command(), None);
    }
}
