//! A deterministic, seeded simulation of a world of phones with Bluetooth LE radios: real [`Store`]s, real sync
//! [`Engine`]s, real [`BleLinks`] (the whole BLE link protocol of [`crate::transport::ble`]) and the shipped glue
//! between them ([`BleBridge`]), with the simulator playing every phone's platform radio, on a virtual clock.
//!
//! ```text
//! RadioWorld::new(seed) ─ add_phone × n ─ move_to / set_velocity / walk_to ─ lan_link ─ edit ─ run_for / run_until_quiet
//! ```
//!
//! Where [`crate::sim::mesh`] connects engines by abstract links that the test opens and closes, here links
//! are not given: phones stand at positions in a plane (metres), each radio has a range, and links
//! form and break as the phones move — each phone's [`BleLinks`] scans, advertises, dials and dedupes exactly as on
//! a device, and the simulator only executes its
//! [`RadioCommand`](crate::transport::ble::links::RadioCommand)s and reports what the radio would ([`RadioEvent`]).
//!
//! # The radio
//! * **Discovery.** A scanning phone is told about every advertising phone within range every 100–300 ms
//!   ([`RadioParams::scan_period_us`], jittered), with its service data (none when the phone advertises none, as
//!   on iOS).
//! * **Connecting.** A [`RadioCommand::Connect`](crate::transport::ble::links::RadioCommand::Connect) completes after a few connection intervals
//!   ([`RadioParams::connect_setup_us`]) if the target still advertises, is in range, and both radios have a free
//!   connection ([`RadioParams::max_connections`]); otherwise the attempt fails
//!   ([`BleLinks::on_connect_failed`]) [`RadioParams::connect_fail_us`] after it started, unless it was cancelled.
//!   Both ends are told at once (the central as [`Role::Central`](crate::transport::ble::link::Role::Central)), over GATT with the default ATT MTU of 23.
//! * **Connections.** Each connection draws from the seed a connection interval (15–30 ms, in steps of 1.25 ms),
//!   an ATT MTU (185 or 247), which replaces the initial 23 one interval after the connection is up (the MTU
//!   exchange, [`BleLinks::on_mtu`]), and a budget of packets per direction per connection event (4–6). Every
//!   interval there is a *connection event*: a series of exchanges, each one PDU from the central then one from
//!   the peripheral (a packet, or an empty PDU), until neither side has anything to send, the budget is spent,
//!   the next anchor would be overrun, or another connection of either phone is waiting for the radio.
//! * **One radio per phone.** A phone's radio does one exchange at a time: an exchange occupies both phones'
//!   radios for its air time (2M PHY: 4 µs per byte, 11 bytes of link-layer overhead per PDU, 7 of L2CAP and ATT
//!   headers per packet, 150 µs between PDUs; data length extension, so one packet is one PDU). A connection
//!   event that finds a radio busy waits for it, and is given up once its interval has passed; a running event
//!   pauses after its current exchange when another connection of either phone is waiting, and resumes (within
//!   its interval) once the radio is free again. So a phone's air time per second is bounded and busy links share
//!   it: more links, less for each.
//! * **Loss.** Each PDU is lost with probability [`RadioParams::loss`] (one random stream per connection).
//!   The link layer retransmits: a lost packet ends the connection event and goes again first in the next one —
//!   a delay, never a gap. A phone out of range loses every PDU; when a connection has had no successful
//!   exchange for [`RadioParams::supervision_timeout_us`], it drops on both sides at once (packets still queued are
//!   lost) and both phones are told ([`BleLinks::on_disconnected`]).
//! * **Order.** With probability [`RadioParams::reorder`] a packet overtakes the one queued just before it on
//!   the same connection, as over Enhanced ATT's several bearers.
//! * **Sending.** [`RadioCommand::Send`](crate::transport::ble::links::RadioCommand::Send) queues the packet on its connection; [`BleLinks::on_sent`] is reported
//!   when it has been transmitted (acknowledged by the peer's link layer), the moment it leaves the radio queue.
//!   Every packet must fit the connection's current ATT MTU − 3; anything else is recorded as a protocol
//!   violation ([`RadioWorld::violations`]) and the connection is dropped.
//! * **Disconnect.** A phone's [`RadioCommand::Disconnect`](crate::transport::ble::links::RadioCommand::Disconnect) drops the connection at once; the peer is told one
//!   interval later.
//!
//! # Driving the engines
//! Each phone runs the code the node's BLE task runs on a device ([`crate::transport::ble::radio`]): a
//! [`BleBridge`] takes the radio's events, announces links to the engine ([`TransportKind::Ble`], initiator =
//! central), moves frames both ways and closes links either side ended. The bridge's ticks and [`Engine::tick`]
//! run every 150–250 ms of virtual time ([`RadioParams::tick_us`]).
//!
//! **LAN.** [`RadioWorld::lan_link`] gives two phones an extra engine-level link of [`TransportKind::Lan`]
//! carried directly by the simulator ([`RadioParams::lan`]: 0.5 ms, 10 MB/s by default), which the
//! engines prefer for data while BLE stands by.
//!
//! # Quiet
//! The engines and links keep talking forever (keepalives, pings, empty connection events), so "quiet" cannot mean
//! "no events". [`World::is_quiet`] holds when: no connection attempt is pending; every BLE connection is an
//! announced link (none forming or closing) and every engine link has finished its handshake; every pair of
//! phones of the same app that are within range of each other and have room for a link is linked; nothing is
//! queued on any connection; every frame pushed into a BLE link or a LAN link has been delivered to the peer's
//! engine; and no engine has a frame to send. A keepalive in flight makes a world momentarily not quiet;
//! [`World::run_until_quiet`] checks every [`QUIET_CHECK_US`].
//!
//! # Determinism
//! Every random choice derives from the seed: phone identities (hence device tags and every key-based decision of
//! the links and engines), each store's randomness (peer, author and document ids), each phone's scan and tick
//! jitter, each [`BleLinks`]'s backoff jitter, each connection's parameters and loss pattern, and the test's own
//! decisions ([`RadioWorld::rng`]). The stores read the world's virtual clock ([`crate::sim::driver::EPOCH_MS`]
//! onwards) for their hybrid logical clocks. Events are ordered by (time, sequence number) and all state is kept
//! in ordered maps, so a seed replays the same run: the same events at the same virtual times, and byte-identical
//! store files.
//!
//! Stores live in a temporary directory removed when the world is dropped.
//!
//! ```no_run
//! use shoaldb::sim::{RadioWorld, World, SECOND};
//! use shoaldb::sync::Subscription;
//!
//! let mut world = RadioWorld::new(7);
//! let a = world.add_phone("a", 0.0, 0.0, vec![Subscription::everything()]);
//! let b = world.add_phone("b", 20.0, 0.0, vec![Subscription::everything()]);
//! world.run_until_quiet(60 * SECOND).unwrap();
//! world.edit(a, |s| s.upsert("notes", serde_json::json!({"_id": "n1"})).unwrap());
//! world.run_until(|w| w.store(b).get("notes", "n1").unwrap().is_some(), 60 * SECOND).unwrap();
//! world.move_to(b, 500.0, 0.0); // out of range: the connection drops after the supervision timeout
//! ```

mod air;
mod lan;
mod motion;
pub mod params;

pub use motion::MOTION_STEP_US;
pub use params::{capacity_bytes_per_s, ConnInfo, PhoneOptions, PhoneStats, RadioParams, QUIET_CHECK_US};

use super::device::Device;
use super::driver::{QuietPoll, Timeline, World, MILLISECOND};
use super::StoreDir;
use crate::sync::{FetchId, LinkId, PeerPresence, Subscription, SyncError, TransportKind};
use crate::transport::ble::bridge::{BleBridge, BridgeFault, BridgeNote};
use crate::transport::ble::links::{BleConfig, BleLinks};
use crate::transport::ble::radio::{app_tag, device_tag, RadioEvent};
use crate::transport::ble::{AppTag, DeviceTag};
use crate::util::rng::SeededRng;
use air::{Attempt, RadioConn};
use lan::LanConn;
use motion::Motion;
use std::collections::{BTreeMap, BTreeSet};

/// A phone's index in its [`RadioWorld`].
pub type PhoneId = usize;

/// What happens in a radio world.
pub enum Event {
    /// A connection event is due.
    Anchor {
        /// The radio's number of the connection ([`ConnInfo::id`]).
        conn: u64,
    },
    /// A connection event that waited for a radio tries again.
    Start {
        /// The radio's number of the connection ([`ConnInfo::id`]).
        conn: u64,
        /// The anchor (virtual time, µs) of the event that waited; the wait is stale if a new event began since.
        anchor: u64,
    },
    /// An exchange of a connection event has finished.
    ExchangeDone {
        /// The radio's number of the connection ([`ConnInfo::id`]).
        conn: u64,
    },
    /// The MTU exchange of a connection completes.
    Mtu {
        /// The radio's number of the connection ([`ConnInfo::id`]).
        conn: u64,
    },
    /// A phone learns that a connection ended.
    Disconnected {
        /// The phone that learns it.
        phone: PhoneId,
        /// The radio's number of the connection ([`ConnInfo::id`]).
        conn: u64,
    },
    /// A connection attempt completes (or is found to fail).
    Attempt {
        /// The simulator's number of the attempt.
        id: u64,
    },
    /// A failed connection attempt is reported.
    AttemptFailed {
        /// The simulator's number of the attempt.
        id: u64,
    },
    /// A phone's scan window: it discovers the phones advertising in range.
    Scan {
        /// The scanning phone.
        phone: PhoneId,
    },
    /// A phone's links and engine are given the time (keepalives, timeouts, dialling).
    Tick {
        /// The phone.
        phone: PhoneId,
    },
    /// The phones move one step ([`MOTION_STEP_US`]).
    Motion,
    /// A frame reaches the other end of a LAN link.
    LanDeliver {
        /// The simulator's number of the LAN link.
        conn: u64,
        /// Its direction (0: from the phone that dialled).
        dir: usize,
        /// The frame.
        frame: Vec<u8>,
    },
    /// A frame has left the sender of a LAN link's direction: room in the backlog.
    LanWake {
        /// The simulator's number of the LAN link.
        conn: u64,
        /// Its direction (0: from the phone that dialled).
        dir: usize,
    },
}

struct Phone {
    /// What every simulated device is: name, identity, store, engine, events.
    dev: Device,
    address: String,
    tag: DeviceTag,
    app_tag: AppTag,
    range: f64,
    pos: (f64, f64),
    motion: Motion,
    /// The shipped glue between the phone's BLE links and its engine.
    bridge: BleBridge,
    advertising: Option<Vec<u8>>,
    scanning: bool,
    /// Engine link → LAN connection.
    lan_link: BTreeMap<LinkId, u64>,
    /// The engine changed since its links were last offered a frame.
    engine_dirty: bool,
    /// LAN links whose last `poll_frame` found nothing (valid until the engine changes).
    lan_starved: BTreeSet<LinkId>,
    /// When the radio is free again.
    radio_free: u64,
    /// Connections waiting for this radio, and when they will try to start.
    waiting: BTreeMap<u64, u64>,
    rng: SeededRng,
    /// Every phone this one has ever had a link announced with.
    linked_with: BTreeSet<PhoneId>,
    stats: PhoneStats,
}

/// A simulated world of phones with BLE radios. See the module documentation.
pub struct RadioWorld {
    timeline: Timeline<RadioWorld>,
    params: RadioParams,
    rng: SeededRng,
    phones: Vec<Phone>,
    by_address: BTreeMap<String, PhoneId>,
    by_tag: BTreeMap<DeviceTag, PhoneId>,
    conns: BTreeMap<u64, RadioConn>,
    next_conn: u64,
    attempts: BTreeMap<u64, Attempt>,
    next_attempt: u64,
    lan: BTreeMap<u64, LanConn>,
    next_lan: u64,
    dirty: BTreeSet<PhoneId>,
    motion_scheduled: bool,
    /// Bytes `from` → `to` over each transport: BLE packets delivered, LAN frames sent (with length prefixes).
    bytes_by_kind: BTreeMap<(PhoneId, PhoneId, TransportKind), u64>,
    violations: Vec<String>,
    /// Every packet delivered, in order (see [`RadioWorld::wire_digest`]).
    wire: blake3::Hasher,
    /// Last: removed after the stores closed.
    dir: StoreDir,
}

impl RadioWorld {
    /// An empty world with the default [`RadioParams`], every random choice derived from `seed`.
    pub fn new(seed: u64) -> RadioWorld {
        RadioWorld::with_params(seed, RadioParams::default())
    }

    /// An empty world with these radio parameters.
    ///
    /// # Panics
    /// If the temporary directory for the stores cannot be created.
    pub fn with_params(seed: u64, params: RadioParams) -> RadioWorld {
        RadioWorld {
            timeline: Timeline::new(seed),
            params,
            rng: SeededRng::stream(seed, 0),
            phones: Vec::new(),
            by_address: BTreeMap::new(),
            by_tag: BTreeMap::new(),
            conns: BTreeMap::new(),
            next_conn: 1,
            attempts: BTreeMap::new(),
            next_attempt: 0,
            lan: BTreeMap::new(),
            next_lan: 0,
            dirty: BTreeSet::new(),
            motion_scheduled: false,
            bytes_by_kind: BTreeMap::new(),
            violations: Vec::new(),
            wire: blake3::Hasher::new(),
            dir: StoreDir::new("radio", seed),
        }
    }

    /// The radio parameters of every phone.
    pub fn params(&self) -> &RadioParams {
        &self.params
    }

    /// The random stream for the test's own decisions.
    pub fn rng(&mut self) -> &mut SeededRng {
        &mut self.rng
    }

    /// A hash of every BLE packet and LAN frame delivered so far, in delivery order (with its connection and
    /// direction): two runs with the same seed put the same bytes on the air, encrypted handshakes included.
    pub fn wire_digest(&self) -> String {
        self.wire.finalize().to_hex().to_string()
    }

    /// Protocol violations seen by the radio (packets larger than the MTU allows, sends on a connection the phone
    /// is not part of): none is expected.
    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    // ---- phones ----

    /// Add a phone at (`x`, `y`) with the default options.
    pub fn add_phone(&mut self, name: &str, x: f64, y: f64, subscriptions: Vec<Subscription>) -> PhoneId {
        self.add_phone_with(name, x, y, subscriptions, PhoneOptions::default())
    }

    /// Add a phone at (`x`, `y`). It starts advertising and scanning at once.
    ///
    /// # Panics
    /// If its store cannot be created or its secret is empty.
    pub fn add_phone_with(
        &mut self,
        name: &str,
        x: f64,
        y: f64,
        subscriptions: Vec<Subscription>,
        options: PhoneOptions,
    ) -> PhoneId {
        let id = self.phones.len();
        let credentials = match &options.enrolled {
            Some(grants) => {
                super::device::Credentials::Enrolled { authority: Box::new(self.authority()), grants: grants.clone() }
            }
            None => super::device::Credentials::Secret(options.secret.clone()),
        };
        let dev =
            Device::new(self.seed(), id, &self.dir, self.timeline.wall_clock(), name, subscriptions, &credentials);
        let tag = device_tag(&dev.key());
        let app = options.app_tag.unwrap_or_else(|| app_tag(&dev.access().psk()));
        let mut config = BleConfig::new(tag, app);
        config.advertise_tag = options.advertise_tag;
        if let Some(m) = options.max_links {
            config.max_links = m;
        }
        let links_seed = SeededRng::stream(self.seed(), 5 << 32 | id as u64).next_u64();
        let links = BleLinks::new(config, links_seed, self.now() / MILLISECOND);
        let address = format!("02:53:48:{:02X}:{:02X}:{:02X}", (id >> 16) & 0xff, (id >> 8) & 0xff, id & 0xff);
        let mut rng = SeededRng::stream(self.seed(), 3 << 32 | id as u64);
        let (scan_at, tick_at) = (
            self.now() + rng.below(self.params.scan_period_us.1.max(1)),
            self.now() + rng.below(self.params.tick_us.1.max(1)),
        );
        self.phones.push(Phone {
            dev,
            address: address.clone(),
            tag,
            app_tag: app,
            range: options.range_m.unwrap_or(self.params.range_m),
            pos: (x, y),
            motion: Motion::Still,
            bridge: BleBridge::new(links),
            advertising: None,
            scanning: false,
            lan_link: BTreeMap::new(),
            engine_dirty: true,
            lan_starved: BTreeSet::new(),
            radio_free: 0,
            waiting: BTreeMap::new(),
            rng,
            linked_with: BTreeSet::new(),
            stats: PhoneStats::default(),
        });
        self.by_address.insert(address, id);
        self.by_tag.insert(tag, id);
        self.push(scan_at, Event::Scan { phone: id });
        self.push(tick_at, Event::Tick { phone: id });
        self.dirty.insert(id);
        self.settle();
        id
    }

    /// The phone with this name.
    pub fn phone(&self, name: &str) -> Option<PhoneId> {
        self.phones.iter().position(|p| p.dev.name == name)
    }

    /// The phone's BLE device tag.
    pub fn tag(&self, p: PhoneId) -> DeviceTag {
        self.phones[p].tag
    }

    /// The phone's BLE address.
    pub fn address(&self, p: PhoneId) -> &str {
        &self.phones[p].address
    }

    /// Plants a bug in phone `p`'s BLE glue (see [`BridgeFault`]): a scenario that passes with the shipped
    /// [`BleBridge`] must then fail, which shows that the scenarios run it.
    pub fn inject_bridge_fault(&mut self, p: PhoneId, fault: BridgeFault) {
        self.phones[p].bridge.inject_fault(fault);
    }

    /// The phone's BLE links (state and per-link counters).
    pub fn links(&self, p: PhoneId) -> &BleLinks {
        self.phones[p].bridge.links()
    }

    /// Who the phone reaches now ([`Engine::peers`]).
    pub fn peers(&self, p: PhoneId) -> Vec<PeerPresence> {
        self.phones[p].dev.engine.peers()
    }

    /// Start fetching an attachment on phone `p` ([`Engine::fetch_attachment`]).
    ///
    /// # Errors
    /// As [`Engine::fetch_attachment`].
    pub fn fetch_attachment(&mut self, p: PhoneId, hash: [u8; 32], len: u64) -> Result<FetchId, SyncError> {
        let r = self.engine_mut(p).fetch_attachment(hash, len);
        self.settle();
        r
    }

    /// Every phone `p` has ever had a BLE link with.
    pub fn ever_linked_with(&self, p: PhoneId) -> &BTreeSet<PhoneId> {
        &self.phones[p].linked_with
    }

    // ---- positions ----

    // ---- LAN ----

    // ---- connections ----

    /// Every BLE link announced at both ends, as (central, peripheral); a pair appears twice if it is linked
    /// twice.
    pub fn linked_pairs(&self) -> Vec<(PhoneId, PhoneId)> {
        self.conns
            .iter()
            .filter(|(id, c)| c.ends.iter().all(|p| self.phones[*p].bridge.is_engine_link(**id)))
            .map(|(_, c)| (c.ends[0], c.ends[1]))
            .collect()
    }

    /// Whether `a` and `b` have a BLE link announced at both ends.
    pub fn ble_linked(&self, a: PhoneId, b: PhoneId) -> bool {
        self.linked_pairs().iter().any(|&(x, y)| (x, y) == (a, b) || (x, y) == (b, a))
    }

    /// Every BLE connection of the radios (including those not ready yet or closing).
    pub fn connections(&self) -> Vec<ConnInfo> {
        self.conns
            .iter()
            .map(|(id, c)| ConnInfo {
                id: *id,
                central: c.ends[0],
                peripheral: c.ends[1],
                interval_us: c.interval,
                att_mtu: c.target_mtu,
                current_mtu: c.mtu,
                packets_per_event: c.budget,
                established_at: c.established,
            })
            .collect()
    }

    /// The BLE connection between `a` and `b` announced at both ends, if any.
    pub fn connection_between(&self, a: PhoneId, b: PhoneId) -> Option<ConnInfo> {
        let linked: BTreeSet<u64> = self
            .conns
            .keys()
            .copied()
            .filter(|id| self.conns[id].ends.iter().all(|p| self.phones[*p].bridge.is_engine_link(*id)))
            .collect();
        self.connections().into_iter().find(|c| {
            linked.contains(&c.id) && ((c.central, c.peripheral) == (a, b) || (c.central, c.peripheral) == (b, a))
        })
    }

    // ---- statistics ----

    /// The phone's counters since it was added or since the last [`RadioWorld::reset_stats`].
    pub fn stats(&self, p: PhoneId) -> &PhoneStats {
        &self.phones[p].stats
    }

    /// Bytes sent `from` → `to` over `kind`: BLE packets delivered (the link protocol's packets), LAN frames sent
    /// (with their length prefixes).
    pub fn bytes_sent_over(&self, from: PhoneId, to: PhoneId, kind: TransportKind) -> u64 {
        self.bytes_by_kind.get(&(from, to, kind)).copied().unwrap_or(0)
    }

    /// Every phone's counters added up.
    pub fn total_stats(&self) -> PhoneStats {
        let mut t = PhoneStats::default();
        for p in &self.phones {
            let s = &p.stats;
            t.packets_sent += s.packets_sent;
            t.packet_bytes_sent += s.packet_bytes_sent;
            t.air_bytes_sent += s.air_bytes_sent;
            t.retransmissions += s.retransmissions;
            t.empty_pdus += s.empty_pdus;
            t.packets_received += s.packets_received;
            t.packet_bytes_received += s.packet_bytes_received;
            t.airtime_us += s.airtime_us;
            t.ble_frames_sent += s.ble_frames_sent;
            t.ble_frame_bytes_sent += s.ble_frame_bytes_sent;
            t.ble_frames_received += s.ble_frames_received;
            t.ble_frame_bytes_received += s.ble_frame_bytes_received;
            t.lan_frames_sent += s.lan_frames_sent;
            t.lan_bytes_sent += s.lan_bytes_sent;
            t.connections += s.connections;
            t.connect_failures += s.connect_failures;
            t.supervision_drops += s.supervision_drops;
            t.packets_dropped += s.packets_dropped;
            t.links_up += s.links_up;
            t.duplicates_closed += s.duplicates_closed;
            t.packets_reordered += s.packets_reordered;
            t.link_errors += s.link_errors;
        }
        t
    }

    /// Zero every phone's [`PhoneStats`] and the counters of [`RadioWorld::bytes_sent_over`].
    pub fn reset_stats(&mut self) {
        for p in &mut self.phones {
            p.stats = PhoneStats::default();
        }
        self.bytes_by_kind.clear();
    }

    // ---- internals ----

    fn push(&mut self, time: u64, event: Event) {
        self.timeline.push(time, event);
    }

    fn drain_events(&mut self, p: PhoneId) {
        let now = self.now();
        self.phones[p].dev.drain_events(now);
    }

    fn on_tick(&mut self, p: PhoneId) {
        let now_ms = self.now() / MILLISECOND;
        let phone = &mut self.phones[p];
        phone.bridge.tick(now_ms);
        phone.dev.engine.tick(now_ms);
        phone.engine_dirty = true;
        self.dirty.insert(p);
        let (lo, hi) = self.params.tick_us;
        let next = self.phones[p].rng.range(lo, hi.max(lo) + 1);
        self.push(self.now() + next.max(1), Event::Tick { phone: p });
    }

    /// Lets every phone that something happened to react, until none has anything left to do.
    fn settle_phones(&mut self) {
        while let Some(p) = self.dirty.pop_first() {
            self.pump(p);
        }
    }

    /// Everything a phone does after an event: its BLE task's round (the shipped [`BleBridge`]: link events into
    /// the engine, engine frames into the links, radio commands out), its LAN links; until nothing moves.
    fn pump(&mut self, p: PhoneId) {
        for _ in 0..10_000 {
            let mut moved = false;
            let phone = &mut self.phones[p];
            if std::mem::take(&mut phone.engine_dirty) {
                phone.bridge.engine_changed();
                phone.lan_starved.clear();
            }
            if phone.bridge.pump(&mut phone.dev.engine) {
                // Frames or links changed the engine: the LAN links may have something to send now.
                phone.lan_starved.clear();
            }
            self.take_bridge_output(p);
            // LAN links the engine closed are dropped.
            let phone = &self.phones[p];
            let lan_closed: Vec<u64> =
                phone.lan_link.iter().filter(|(l, _)| phone.dev.engine.is_closed(**l)).map(|(_, c)| *c).collect();
            for c in lan_closed {
                moved = true;
                self.lan_teardown(c, "closed by the engine");
            }
            let lan: Vec<(LinkId, u64)> = self.phones[p].lan_link.iter().map(|(l, c)| (*l, *c)).collect();
            for (link, c) in lan {
                if !self.phones[p].lan_starved.contains(&link) {
                    moved |= self.lan_pull(c, p);
                }
            }
            let commands: Vec<_> = std::iter::from_fn(|| self.phones[p].bridge.poll_command()).collect();
            for cmd in commands {
                moved = true;
                self.execute(p, cmd);
            }
            self.drain_events(p);
            if !moved && !self.phones[p].engine_dirty {
                return;
            }
        }
        log::warn!("radio sim: {} did not settle", self.phones[p].dev.name);
    }

    /// The bridge's notes and counters, into the phone's record.
    fn take_bridge_output(&mut self, p: PhoneId) {
        let phone = &mut self.phones[p];
        while let Some(note) = phone.bridge.poll_note() {
            if let BridgeNote::LinkUp { peer_tag, .. } = note {
                if let Some(&q) = self.by_tag.get(&peer_tag) {
                    phone.linked_with.insert(q);
                }
            }
        }
        let b = phone.bridge.take_stats();
        let s = &mut phone.stats;
        s.ble_frames_sent += b.frames_out;
        s.ble_frame_bytes_sent += b.frame_bytes_out;
        s.ble_frames_received += b.frames_in;
        s.ble_frame_bytes_received += b.frame_bytes_in;
        s.links_up += b.links_up;
        s.duplicates_closed += b.duplicates_closed;
        s.link_errors += b.link_errors;
    }
}

impl World for RadioWorld {
    type Event = Event;
    const QUIET_POLL: QuietPoll = QuietPoll::Every(QUIET_CHECK_US);

    fn timeline(&self) -> &Timeline<RadioWorld> {
        &self.timeline
    }

    fn timeline_mut(&mut self) -> &mut Timeline<RadioWorld> {
        &mut self.timeline
    }

    fn handle(&mut self, event: Event) {
        let now_ms = self.now() / MILLISECOND;
        match event {
            Event::Anchor { conn } => self.on_anchor(conn),
            Event::Start { conn, anchor } => {
                if self.conns.get(&conn).is_some_and(|c| c.anchor == anchor && (!c.active || c.paused)) {
                    self.try_start(conn);
                } else {
                    // A stale wait (the event ended or a new one began): it no longer waits.
                    self.unwait(conn);
                }
            }
            Event::ExchangeDone { conn } => self.on_exchange_done(conn),
            Event::Mtu { conn } => self.on_mtu(conn),
            Event::Disconnected { phone, conn } => {
                self.phones[phone].bridge.on_radio_event(now_ms, RadioEvent::Disconnected { conn });
                self.dirty.insert(phone);
            }
            Event::Attempt { id } => self.on_attempt(id),
            Event::AttemptFailed { id } => {
                if let Some(a) = self.attempts.remove(&id) {
                    if !a.cancelled {
                        self.phones[a.from].stats.connect_failures += 1;
                        let failed = RadioEvent::ConnectFailed { address: a.address };
                        self.phones[a.from].bridge.on_radio_event(now_ms, failed);
                        self.dirty.insert(a.from);
                    }
                }
            }
            Event::Scan { phone } => self.on_scan(phone),
            Event::Tick { phone } => self.on_tick(phone),
            Event::Motion => self.on_motion(),
            Event::LanDeliver { conn, dir, frame } => self.lan_deliver(conn, dir, frame),
            Event::LanWake { conn, dir } => {
                if let Some(c) = self.lan.get(&conn) {
                    let p = c.ends[dir];
                    self.dirty.insert(p);
                }
            }
        }
    }

    fn settle(&mut self) {
        self.settle_phones();
    }

    fn device_count(&self) -> usize {
        self.phones.len()
    }

    fn device(&self, id: PhoneId) -> &Device {
        &self.phones[id].dev
    }

    fn device_mut(&mut self, id: PhoneId) -> &mut Device {
        &mut self.phones[id].dev
    }

    fn touched(&mut self, id: PhoneId) {
        self.phones[id].engine_dirty = true;
        self.dirty.insert(id);
    }

    /// Quiet (see the module docs): nothing is forming, queued or in flight, every pair that could be linked
    /// is, and no engine has a frame to send.
    fn quiet_check(&mut self) -> Result<(), String> {
        self.settle_phones();
        if let Some((_, a)) = self.attempts.iter().next() {
            return Err(format!("{} is connecting to {}", self.phones[a.from].dev.name, a.address));
        }
        for (id, c) in &self.conns {
            if c.queues.iter().any(|q| !q.is_empty()) || c.in_air.iter().any(Option::is_some) {
                return Err(format!("packets queued on connection {id}"));
            }
            for d in 0..2 {
                let (from, to) = (c.ends[d], c.ends[1 - d]);
                let (Some(out), Some(inn)) = (self.links(from).link(*id), self.links(to).link(*id)) else {
                    return Err(format!("connection {id} is not known at both ends"));
                };
                if out.stats().frame_bytes_out != inn.stats().frame_bytes_in {
                    return Err(format!(
                        "frames in flight on connection {id} ({} → {})",
                        self.phones[from].dev.name, self.phones[to].dev.name
                    ));
                }
            }
        }
        for (id, c) in &self.lan {
            if c.pipes.iter().any(|p| p.in_flight_bytes() > 0) {
                return Err(format!("frames in flight on LAN link {id}"));
            }
        }
        for p in &self.phones {
            if p.bridge.links().connection_count() != p.bridge.engine_link_count() {
                return Err(format!("{}: a BLE connection is forming or closing", p.dev.name));
            }
            if p.dev.engine.links().len() != p.bridge.engine_link_count() + p.lan_link.len() {
                return Err(format!("{}: a handshake is running", p.dev.name));
            }
        }
        for a in 0..self.phones.len() {
            for b in a + 1..self.phones.len() {
                let (pa, pb) = (&self.phones[a], &self.phones[b]);
                if pa.app_tag != pb.app_tag
                    || !self.in_range(a, b)
                    || pa.advertising.is_none()
                    || pb.advertising.is_none()
                {
                    continue;
                }
                let room = |p: &Phone| p.bridge.links().connection_count() < p.bridge.links().config().max_links;
                if !room(pa) || !room(pb) {
                    continue;
                }
                // Phones that refuse each other's certificates (one revoked) never link, however close.
                let wall_ms = super::driver::EPOCH_MS + self.now() / MILLISECOND;
                let refuses = |x: &Phone, y: &Phone| {
                    x.dev.engine.access().check_peer(&y.dev.access().credentials(), y.dev.key(), wall_ms).is_err()
                };
                if refuses(pa, pb) || refuses(pb, pa) {
                    continue;
                }
                if !pa.bridge.links().linked().iter().any(|(_, t)| *t == pb.tag) {
                    return Err(format!("{} and {} are in range but not linked", pa.dev.name, pb.dev.name));
                }
            }
        }
        for p in 0..self.phones.len() {
            let busy = self.phones[p].dev.engine.links_with_frames();
            if !busy.is_empty() {
                self.phones[p].engine_dirty = true;
                self.dirty.insert(p);
                self.settle_phones();
                return Err(format!("{} has frames to send on links {busy:?}", self.phones[p].dev.name));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SECOND;

    #[test]
    fn two_phones_link_and_sync() {
        let mut w = RadioWorld::new(1);
        let a = w.add_phone("a", 0.0, 0.0, vec![Subscription::everything()]);
        let b = w.add_phone("b", 10.0, 0.0, vec![Subscription::everything()]);
        let t = w.run_until_quiet(30 * SECOND).expect("quiet");
        eprintln!("quiet at {t}: {:?} {:?}", w.connections(), w.stats(a));
        assert_eq!(w.linked_pairs().len(), 1);
        w.edit(a, |s| s.upsert("notes", serde_json::json!({"_id": "n", "x": 1})).unwrap());
        let t0 = w.now();
        let t = w.run_until(|w| w.store(b).get("notes", "n").unwrap().is_some(), 30 * SECOND).expect("synced");
        eprintln!("synced in {} us; {:?}", t - t0, w.stats(b));
        w.run_for(60 * SECOND);
        assert_eq!(w.linked_pairs().len(), 1);
        eprintln!("after a minute: {:?} events {}", w.stats(b), w.events_processed());
        assert!(w.violations().is_empty(), "{:?}", w.violations());
    }
}
