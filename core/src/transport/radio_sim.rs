//! A deterministic, seeded simulation of a world of phones with Bluetooth LE radios: real [`Store`]s, real sync
//! [`Engine`]s and real [`BleLinks`] (the whole BLE link protocol of [`crate::transport::ble`]), with the simulator
//! playing every phone's platform radio, on a virtual clock.
//!
//! ```text
//! RadioWorld::new(seed) ─ add_phone × n ─ move_to / set_velocity / walk_to ─ lan_link ─ edit ─ run_for / run_until_quiet
//! ```
//!
//! Where [`crate::transport::sim`] connects engines by abstract links that the test opens and closes, here links
//! are not given: phones stand at positions in a plane (metres), each radio has a range, and links form and break
//! as the phones move — each phone's [`BleLinks`] scans, advertises, dials and dedupes exactly as on a device, and
//! the simulator only executes its [`RadioCommand`]s and reports what the radio would (`on_*`).
//!
//! # The radio
//! * **Discovery.** A scanning phone is told about every advertising phone within range every 100–300 ms
//!   ([`RadioParams::scan_period_us`], jittered), with its service data (none when the phone advertises none, as
//!   on iOS).
//! * **Connecting.** A [`RadioCommand::Connect`] completes after a few connection intervals
//!   ([`RadioParams::connect_setup_us`]) if the target still advertises, is in range, and both radios have a free
//!   connection ([`RadioParams::max_connections`]); otherwise the attempt fails
//!   ([`BleLinks::on_connect_failed`]) [`RadioParams::connect_fail_us`] after it started, unless it was cancelled.
//!   Both ends are told at once (the central as [`Role::Central`]), over GATT with the default ATT MTU of 23.
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
//! * **Sending.** [`RadioCommand::Send`] queues the packet on its connection; [`BleLinks::on_sent`] is reported
//!   when it has been transmitted (acknowledged by the peer's link layer), the moment it leaves the radio queue.
//!   Every packet must fit the connection's current ATT MTU − 3; anything else is recorded as a protocol
//!   violation ([`RadioWorld::violations`]) and the connection is dropped.
//! * **Disconnect.** A phone's [`RadioCommand::Disconnect`] drops the connection at once; the peer is told one
//!   interval later.
//!
//! # Driving the engines
//! Each phone is driven as the node's BLE task drives a device ([`crate::transport::ble::radio`]):
//! [`BleEvent::LinkReady`] → [`Engine::add_link`] ([`TransportKind::Ble`], initiator = central), frames both ways
//! ([`Engine::poll_frame`] whenever [`BleLinks::wants_frame`]), [`BleEvent::LinkClosed`] →
//! [`Engine::remove_link`], links the engine closed → [`BleLinks::close`]. [`BleLinks::tick`] and
//! [`Engine::tick`] run every 150–250 ms of virtual time ([`RadioParams::tick_us`]).
//!
//! **LAN.** [`RadioWorld::lan_link`] gives two phones an extra engine-level link of [`TransportKind::Lan`]
//! carried directly by the simulator ([`RadioParams::lan`]: 0.5 ms, 10 MB/s by default), which the engines prefer
//! for data while BLE stands by.
//!
//! # Quiet
//! The engines and links keep talking forever (keepalives, pings, empty connection events), so "quiet" cannot mean
//! "no events". [`RadioWorld::is_quiet`] holds when: no connection attempt is pending; every BLE connection is an
//! announced link (none forming or closing) and every engine link has finished its handshake; every pair of
//! phones of the same app that are within range of each other and have room for a link is linked; nothing is
//! queued on any connection; every frame pushed into a BLE link or a LAN link has been delivered to the peer's
//! engine; and no engine has a frame to send. A keepalive in flight makes a world momentarily not quiet;
//! [`RadioWorld::run_until_quiet`] checks every [`QUIET_CHECK_US`].
//!
//! # Determinism
//! Every random choice derives from the seed: phone identities (hence device tags and every key-based decision of
//! the links and engines), each store's peer id, each phone's scan and tick jitter, each [`BleLinks`]'s backoff
//! jitter, each connection's parameters and loss pattern, and the test's own decisions ([`RadioWorld::rng`]).
//! Events are ordered by (time, sequence number) and all state is kept in ordered maps, so a seed replays the
//! same schedule. What is not reproducible: each [`Store`] stamps changes with the wall clock (hybrid logical
//! clock), so the winner of a concurrent register write can differ between runs, and with it the documents that
//! later edits see. A run without such conflicts repeats exactly — event for event, byte for byte of every
//! counter.
//!
//! Stores live in a temporary directory removed when the world is dropped.
//!
//! ```no_run
//! use shoaldb::sync::Subscription;
//! use shoaldb::transport::radio_sim::RadioWorld;
//! use shoaldb::transport::sim::SECOND;
//!
//! let mut world = RadioWorld::new(7);
//! let a = world.add_phone("a", 0.0, 0.0, vec![Subscription::everything()]);
//! let b = world.add_phone("b", 20.0, 0.0, vec![Subscription::everything()]);
//! world.run_until_quiet(60 * SECOND).unwrap();
//! world.edit(a, |s| s.upsert("notes", serde_json::json!({"_id": "n1"})).unwrap());
//! world.run_until(|w| w.store(b).get("notes", "n1").unwrap().is_some(), 60 * SECOND).unwrap();
//! world.move_to(b, 500.0, 0.0); // out of range: the connection drops after the supervision timeout
//! ```

use crate::security::{AppSecret, DeviceKey, Identity};
use crate::store::{Durability, Options, Store};
use crate::sync::{Engine, EngineEvent, FetchId, LinkId, PeerPresence, Subscription, SyncError, TransportKind};
use crate::transport::ble::link::{Channel, LinkError, Role, ATT_HEADER_LEN, ATT_MTU_MIN};
use crate::transport::ble::links::{BleConfig, BleEvent, BleLinks, LinkClosedReason, RadioCommand};
use crate::transport::ble::radio::{app_tag, device_tag};
use crate::transport::ble::{AppTag, DeviceTag};
use crate::transport::frame::HEADER_LEN;
pub use crate::transport::sim::NotQuiet;
use crate::transport::sim::{probability, EventQueue, LinkParams, Pipe, SimRng, DEFAULT_SECRET, MILLISECOND, SECOND};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;

/// A phone's index in its [`RadioWorld`].
pub type PhoneId = usize;

/// How often [`RadioWorld::run_until_quiet`] checks whether the world is quiet (virtual µs).
pub const QUIET_CHECK_US: u64 = 50 * MILLISECOND;
/// How often moving phones are moved (virtual µs).
pub const MOTION_STEP_US: u64 = 100 * MILLISECOND;
/// Air time of one byte on the 2M PHY (µs).
pub const BYTE_US: u64 = 4;
/// Link-layer bytes of every PDU on the 2M PHY: preamble 2, access address 4, header 2, CRC 3.
pub const LL_OVERHEAD: usize = 11;
/// L2CAP (4) and ATT (3) header bytes carried with every packet.
pub const PACKET_OVERHEAD: usize = 7;
/// The inter-frame space between two PDUs (µs).
pub const IFS_US: u64 = 150;
/// Connection intervals are multiples of this (µs).
pub const INTERVAL_UNIT_US: u64 = 1_250;

/// Air time of a PDU carrying `packet` bytes (an empty PDU for `None`).
pub fn pdu_us(packet: Option<usize>) -> u64 {
    pdu_air_bytes(packet) as u64 * BYTE_US
}

/// Bytes on the air of a PDU carrying `packet` bytes (an empty PDU for `None`).
pub fn pdu_air_bytes(packet: Option<usize>) -> usize {
    LL_OVERHEAD + packet.map_or(0, |n| n + PACKET_OVERHEAD)
}

/// How the radios of a [`RadioWorld`] behave.
#[derive(Clone, Debug, PartialEq)]
pub struct RadioParams {
    /// The radio range of a phone unless given ([`PhoneOptions::range_m`]), in metres. Two phones hear each other
    /// while their distance is at most the smaller of their ranges.
    pub range_m: f64,
    /// The ATT MTUs a connection may negotiate (one drawn per connection).
    pub att_mtus: Vec<u16>,
    /// The connection interval is drawn from this range (inclusive, µs; rounded to 1.25 ms steps).
    pub interval_us: (u64, u64),
    /// The packets per direction per connection event are drawn from this range (inclusive).
    pub packets_per_event: (usize, usize),
    /// Probability that a PDU is lost (and retransmitted). Capped at 0.9.
    pub loss: f64,
    /// Probability that a GATT packet overtakes the one queued just before it (Enhanced ATT: several ATT bearers
    /// per connection, each packet on whichever is free). Capped at 0.9.
    pub reorder: f64,
    /// A connection with no successful exchange for this long drops.
    pub supervision_timeout_us: u64,
    /// Discovery reports come every (drawn from this range, µs).
    pub scan_period_us: (u64, u64),
    /// A connection attempt takes this long (drawn from this range, µs).
    pub connect_setup_us: (u64, u64),
    /// A connection attempt that cannot succeed fails this long after it started.
    pub connect_fail_us: u64,
    /// The most connections (any role, including ones closing) a radio holds at once.
    pub max_connections: usize,
    /// Links and engines get the time every (drawn from this range, µs).
    pub tick_us: (u64, u64),
    /// Links made by [`RadioWorld::lan_link`].
    pub lan: LinkParams,
}

impl Default for RadioParams {
    fn default() -> RadioParams {
        RadioParams {
            range_m: 30.0,
            att_mtus: vec![185, 247],
            interval_us: (15 * MILLISECOND, 30 * MILLISECOND),
            packets_per_event: (4, 6),
            loss: 0.01,
            reorder: 0.02,
            supervision_timeout_us: 2 * SECOND,
            scan_period_us: (100 * MILLISECOND, 300 * MILLISECOND),
            connect_setup_us: (30 * MILLISECOND, 120 * MILLISECOND),
            connect_fail_us: 2 * SECOND,
            max_connections: 8,
            tick_us: (150 * MILLISECOND, 250 * MILLISECOND),
            lan: LinkParams::LAN,
        }
    }
}

impl RadioParams {
    fn loss_rate(&self) -> f64 {
        probability(self.loss)
    }

    fn reorder_rate(&self) -> f64 {
        probability(self.reorder)
    }
}

/// How one phone differs from the defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct PhoneOptions {
    /// Its radio range (metres); [`RadioParams::range_m`] when `None`.
    pub range_m: Option<f64>,
    /// Its app secret ([`DEFAULT_SECRET`] by default).
    pub secret: Vec<u8>,
    /// Its app tag; derived from the secret ([`app_tag`]) when `None`.
    pub app_tag: Option<AppTag>,
    /// Whether it advertises its tags (Android: true; iOS: false, so it is always dialled and never skipped).
    pub advertise_tag: bool,
    /// Its [`BleConfig::max_links`], when not the default.
    pub max_links: Option<usize>,
}

impl Default for PhoneOptions {
    fn default() -> PhoneOptions {
        PhoneOptions {
            range_m: None,
            secret: DEFAULT_SECRET.to_vec(),
            app_tag: None,
            advertise_tag: true,
            max_links: None,
        }
    }
}

impl PhoneOptions {
    /// An iOS-like phone: advertises no service data.
    pub fn ios() -> PhoneOptions {
        PhoneOptions { advertise_tag: false, ..PhoneOptions::default() }
    }

    /// A phone of another app (another secret, hence another app tag).
    pub fn other_app(secret: &[u8]) -> PhoneOptions {
        PhoneOptions { secret: secret.to_vec(), ..PhoneOptions::default() }
    }
}

/// Counters of one phone (since the last [`RadioWorld::reset_stats`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PhoneStats {
    /// BLE packets (ATT values) this radio transmitted, retransmissions included.
    pub packets_sent: u64,
    /// Their bytes (the link protocol's packets), retransmissions included.
    pub packet_bytes_sent: u64,
    /// Bytes this radio put on the air: data PDUs with every header, and empty PDUs.
    pub air_bytes_sent: u64,
    /// Data PDUs that were lost and sent again.
    pub retransmissions: u64,
    /// Empty PDUs sent (polls and acknowledgements).
    pub empty_pdus: u64,
    /// BLE packets received (delivered to [`BleLinks::on_packet`]) and their bytes.
    pub packets_received: u64,
    pub packet_bytes_received: u64,
    /// Time this phone's radio was busy (µs).
    pub airtime_us: u64,
    /// Frames handed to / received from the BLE links, and their bytes.
    pub ble_frames_sent: u64,
    pub ble_frame_bytes_sent: u64,
    pub ble_frames_received: u64,
    pub ble_frame_bytes_received: u64,
    /// LAN frames sent and their bytes (with the 4-byte length prefix of each).
    pub lan_frames_sent: u64,
    pub lan_bytes_sent: u64,
    /// Connections established (either role), failed attempts, connections dropped by supervision, packets lost
    /// with a dropped connection.
    pub connections: u64,
    pub connect_failures: u64,
    pub supervision_drops: u64,
    pub packets_dropped: u64,
    /// Links announced to the engine, and links closed as duplicates of another connection to the same phone.
    pub links_up: u64,
    pub duplicates_closed: u64,
    /// Packets this radio sent ahead of the one queued before them ([`RadioParams::reorder`]).
    pub packets_reordered: u64,
    /// Links that failed on this phone's side (a protocol error or a timeout; not a Close from the peer).
    pub link_errors: u64,
}

/// One BLE connection, as [`RadioWorld::connections`] describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// The radio's connection id (the same at both ends).
    pub id: u64,
    pub central: PhoneId,
    pub peripheral: PhoneId,
    pub interval_us: u64,
    /// The negotiated ATT MTU (the current one is 23 until the exchange completed).
    pub att_mtu: u16,
    pub current_mtu: u16,
    pub packets_per_event: usize,
    pub established_at: u64,
}

impl ConnInfo {
    /// The connection's raw rate per direction in this model: packets per event × (ATT MTU − 3) ÷ interval, in
    /// bytes per second.
    pub fn capacity_bytes_per_s(&self) -> f64 {
        capacity_bytes_per_s(self.att_mtu, self.interval_us, self.packets_per_event)
    }
}

/// Packets per event × (ATT MTU − 3) ÷ interval, in bytes per second.
pub fn capacity_bytes_per_s(att_mtu: u16, interval_us: u64, packets_per_event: usize) -> f64 {
    packets_per_event as f64 * f64::from(att_mtu.saturating_sub(ATT_HEADER_LEN)) * SECOND as f64
        / interval_us.max(1) as f64
}

/// How a phone moves.
#[derive(Clone, Debug, PartialEq)]
enum Motion {
    Still,
    Velocity { vx: f64, vy: f64 },
    Walk { points: VecDeque<(f64, f64)>, speed: f64 },
}

/// A closure the test scheduled.
type Action = Box<dyn FnOnce(&mut RadioWorld)>;

enum Event {
    /// A connection event is due.
    Anchor {
        conn: u64,
    },
    /// A connection event that waited for a radio tries again.
    Start {
        conn: u64,
        anchor: u64,
    },
    /// An exchange of a connection event has finished.
    ExchangeDone {
        conn: u64,
    },
    /// The MTU exchange of a connection completes.
    Mtu {
        conn: u64,
    },
    /// A phone learns that a connection ended.
    Disconnected {
        phone: PhoneId,
        conn: u64,
    },
    /// A connection attempt completes (or is found to fail).
    Attempt {
        id: u64,
    },
    /// A failed connection attempt is reported.
    AttemptFailed {
        id: u64,
    },
    Scan {
        phone: PhoneId,
    },
    Tick {
        phone: PhoneId,
    },
    Motion,
    LanDeliver {
        conn: u64,
        dir: usize,
        frame: Vec<u8>,
    },
    LanWake {
        conn: u64,
        dir: usize,
    },
    Call(Action),
}

struct Attempt {
    from: PhoneId,
    address: String,
    started: u64,
    cancelled: bool,
}

/// A BLE connection: `ends[0]` is the central. Direction `d` goes from `ends[d]` to `ends[1 - d]`.
struct RadioConn {
    ends: [PhoneId; 2],
    interval: u64,
    budget: usize,
    target_mtu: u16,
    mtu: u16,
    queues: [VecDeque<Vec<u8>>; 2],
    rng: SimRng,
    established: u64,
    /// The last exchange in which the peer heard the central.
    last_ok: u64,
    /// The anchor of the current (or last) connection event.
    anchor: u64,
    /// A connection event is running.
    active: bool,
    /// The running event let another connection have the radio and waits to resume.
    paused: bool,
    /// Exchanges in the current event.
    slots: usize,
    /// Packets of the exchange on the air, delivered when it ends.
    in_air: [Option<Vec<u8>>; 2],
    /// A PDU of the exchange on the air was lost: the event ends after it.
    end_after: bool,
}

struct LanConn {
    ends: [PhoneId; 2],
    links: [LinkId; 2],
    pipes: [Pipe; 2],
}

struct Phone {
    name: String,
    address: String,
    tag: DeviceTag,
    app_tag: AppTag,
    range: f64,
    pos: (f64, f64),
    motion: Motion,
    engine: Engine,
    links: BleLinks,
    advertising: Option<Vec<u8>>,
    scanning: bool,
    /// Radio connection → engine link, for links announced to the engine.
    conn_link: BTreeMap<u64, LinkId>,
    /// Engine link → LAN connection.
    lan_link: BTreeMap<LinkId, u64>,
    /// The engine changed since its links were last offered a frame.
    engine_dirty: bool,
    /// Engine links whose last `poll_frame` found nothing (valid until the engine changes).
    starved: BTreeSet<LinkId>,
    /// When the radio is free again.
    radio_free: u64,
    /// Connections waiting for this radio, and when they will try to start.
    waiting: BTreeMap<u64, u64>,
    rng: SimRng,
    events: Vec<(u64, EngineEvent)>,
    /// Every phone this one has ever had a link announced with.
    linked_with: BTreeSet<PhoneId>,
    stats: PhoneStats,
}

/// Opens a new store whose peer id is `peer` rather than a random one, so that the sizes of encoded changes (and
/// with them every packet count and time) are a function of the seed. (The store has no option for this: the
/// id is written into its `meta` table between a first open, which creates the schema, and the real one.)
fn open_store(path: &std::path::Path, peer: u64) -> Result<Store, Box<dyn std::error::Error>> {
    let options = || Options { durability: Durability::Normal, ..Options::default() };
    drop(Store::open_with(path, options())?);
    let conn = rusqlite::Connection::open(path)?;
    let updated = conn.execute("UPDATE meta SET value = ?1 WHERE key = 'peer_id'", [peer.to_le_bytes().to_vec()])?;
    drop(conn);
    let store = Store::open_with(path, options())?;
    if updated != 1 || store.peer_id().0 != peer {
        log::warn!("radio sim: could not choose the peer id of {}; it stays random", path.display());
    }
    Ok(store)
}

static WORLDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A simulated world of phones with BLE radios. See the module documentation.
pub struct RadioWorld {
    seed: u64,
    params: RadioParams,
    rng: SimRng,
    now: u64,
    queue: EventQueue<Event>,
    dir: PathBuf,
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
    events_processed: u64,
    /// Events processed in a row at the same instant.
    same_time: u64,
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
        let n = WORLDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("shoal-radio-{}-{n}-{seed:016x}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        RadioWorld {
            seed,
            params,
            rng: SimRng::stream(seed, 0),
            now: 0,
            queue: EventQueue::new(),
            dir,
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
            events_processed: 0,
            same_time: 0,
        }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn params(&self) -> &RadioParams {
        &self.params
    }

    /// Virtual time, in microseconds.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// The random stream for the test's own decisions.
    pub fn rng(&mut self) -> &mut SimRng {
        &mut self.rng
    }

    /// Events processed so far.
    pub fn events_processed(&self) -> u64 {
        self.events_processed
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
        let path = self.dir.join(format!("{id}.db"));
        let store_peer = SimRng::stream(self.seed, 7 << 32 | id as u64).next_u64();
        let store = open_store(&path, store_peer).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        let mut private = [0u8; 32];
        let mut sm = SimRng::stream(self.seed, 1 << 32 | id as u64);
        for chunk in private.chunks_mut(8) {
            chunk.copy_from_slice(&sm.next_u64().to_le_bytes());
        }
        let identity = Identity::from_private(&private).expect("a simulated identity");
        let secret = AppSecret::from_bytes(&options.secret).expect("a non-empty app secret");
        let key = DeviceKey(identity.public_key());
        let tag = device_tag(&key);
        let app = options.app_tag.unwrap_or_else(|| app_tag(&secret));
        let engine = Engine::new(store, identity, secret, name, subscriptions, 0);
        let mut config = BleConfig::new(tag, app);
        config.advertise_tag = options.advertise_tag;
        if let Some(m) = options.max_links {
            config.max_links = m;
        }
        let links_seed = SimRng::stream(self.seed, 5 << 32 | id as u64).next_u64();
        let links = BleLinks::new(config, links_seed, self.now / MILLISECOND);
        let address = format!("02:53:48:{:02X}:{:02X}:{:02X}", (id >> 16) & 0xff, (id >> 8) & 0xff, id & 0xff);
        let mut rng = SimRng::stream(self.seed, 3 << 32 | id as u64);
        let (scan_at, tick_at) = (
            self.now + rng.below(self.params.scan_period_us.1.max(1)),
            self.now + rng.below(self.params.tick_us.1.max(1)),
        );
        self.phones.push(Phone {
            name: name.to_string(),
            address: address.clone(),
            tag,
            app_tag: app,
            range: options.range_m.unwrap_or(self.params.range_m),
            pos: (x, y),
            motion: Motion::Still,
            engine,
            links,
            advertising: None,
            scanning: false,
            conn_link: BTreeMap::new(),
            lan_link: BTreeMap::new(),
            engine_dirty: true,
            starved: BTreeSet::new(),
            radio_free: 0,
            waiting: BTreeMap::new(),
            rng,
            events: Vec::new(),
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

    pub fn phone_count(&self) -> usize {
        self.phones.len()
    }

    pub fn name(&self, p: PhoneId) -> &str {
        &self.phones[p].name
    }

    /// The phone with this name.
    pub fn phone(&self, name: &str) -> Option<PhoneId> {
        self.phones.iter().position(|p| p.name == name)
    }

    pub fn device_key(&self, p: PhoneId) -> DeviceKey {
        self.phones[p].engine.device_key()
    }

    /// The phone's BLE device tag.
    pub fn tag(&self, p: PhoneId) -> DeviceTag {
        self.phones[p].tag
    }

    /// The phone's BLE address.
    pub fn address(&self, p: PhoneId) -> &str {
        &self.phones[p].address
    }

    pub fn store(&self, p: PhoneId) -> &Store {
        self.phones[p].engine.store()
    }

    pub fn engine(&self, p: PhoneId) -> &Engine {
        &self.phones[p].engine
    }

    /// The engine, to change (subscriptions…); the phone's links are offered frames at the next step.
    pub fn engine_mut(&mut self, p: PhoneId) -> &mut Engine {
        self.dirty.insert(p);
        let phone = &mut self.phones[p];
        phone.engine_dirty = true;
        &mut phone.engine
    }

    /// The phone's BLE links (state and per-link counters).
    pub fn links(&self, p: PhoneId) -> &BleLinks {
        &self.phones[p].links
    }

    /// Who the phone reaches now ([`Engine::peers`]).
    pub fn peers(&self, p: PhoneId) -> Vec<PeerPresence> {
        self.phones[p].engine.peers()
    }

    /// Edit a phone's store through `f`; its links are then offered frames.
    pub fn edit<R>(&mut self, p: PhoneId, f: impl FnOnce(&Store) -> R) -> R {
        let r = f(self.phones[p].engine.store());
        self.phones[p].engine_dirty = true;
        self.dirty.insert(p);
        self.settle();
        r
    }

    /// Start fetching an attachment on phone `p` ([`Engine::fetch_attachment`]).
    ///
    /// # Errors
    /// As [`Engine::fetch_attachment`].
    pub fn fetch_attachment(&mut self, p: PhoneId, hash: [u8; 32]) -> Result<FetchId, SyncError> {
        let r = self.engine_mut(p).fetch_attachment(hash);
        self.settle();
        r
    }

    /// Change a phone's subscriptions.
    pub fn set_subscriptions(&mut self, p: PhoneId, subscriptions: Vec<Subscription>) {
        self.engine_mut(p).set_subscriptions(subscriptions);
        self.settle();
    }

    /// What the phone's engine reported, with the virtual time, since the last call.
    pub fn take_events(&mut self, p: PhoneId) -> Vec<(u64, EngineEvent)> {
        self.drain_events(p);
        std::mem::take(&mut self.phones[p].events)
    }

    /// Every phone `p` has ever had a BLE link with.
    pub fn ever_linked_with(&self, p: PhoneId) -> &BTreeSet<PhoneId> {
        &self.phones[p].linked_with
    }

    // ---- positions ----

    pub fn position(&self, p: PhoneId) -> (f64, f64) {
        self.phones[p].pos
    }

    pub fn distance(&self, a: PhoneId, b: PhoneId) -> f64 {
        let (pa, pb) = (self.phones[a].pos, self.phones[b].pos);
        (pa.0 - pb.0).hypot(pa.1 - pb.1)
    }

    /// Whether `a` and `b` hear each other (distance ≤ the smaller of their ranges).
    pub fn in_range(&self, a: PhoneId, b: PhoneId) -> bool {
        a != b && self.distance(a, b) <= self.phones[a].range.min(self.phones[b].range)
    }

    /// Set a phone's radio range (metres).
    pub fn set_range(&mut self, p: PhoneId, range_m: f64) {
        self.phones[p].range = range_m;
    }

    /// Put a phone at (`x`, `y`) now, and stop it.
    pub fn move_to(&mut self, p: PhoneId, x: f64, y: f64) {
        self.phones[p].pos = (x, y);
        self.phones[p].motion = Motion::Still;
    }

    /// Make a phone move at a constant velocity (m/s) until told otherwise.
    pub fn set_velocity(&mut self, p: PhoneId, vx: f64, vy: f64) {
        self.phones[p].motion = Motion::Velocity { vx, vy };
        self.schedule_motion();
    }

    /// Make a phone walk through `waypoints` at `speed` (m/s), then stop.
    pub fn walk(&mut self, p: PhoneId, waypoints: &[(f64, f64)], speed: f64) {
        self.phones[p].motion = Motion::Walk { points: waypoints.iter().copied().collect(), speed };
        self.schedule_motion();
    }

    /// Make a phone walk to (`x`, `y`) at `speed` (m/s), then stop.
    pub fn walk_to(&mut self, p: PhoneId, x: f64, y: f64, speed: f64) {
        self.walk(p, &[(x, y)], speed);
    }

    /// Stop a phone where it is.
    pub fn stop(&mut self, p: PhoneId) {
        self.phones[p].motion = Motion::Still;
    }

    /// Whether a phone is moving.
    pub fn is_moving(&self, p: PhoneId) -> bool {
        self.phones[p].motion != Motion::Still
    }

    fn schedule_motion(&mut self) {
        if !self.motion_scheduled {
            self.motion_scheduled = true;
            self.push(self.now + MOTION_STEP_US, Event::Motion);
        }
    }

    fn on_motion(&mut self) {
        self.motion_scheduled = false;
        let dt = MOTION_STEP_US as f64 / SECOND as f64;
        let mut any = false;
        for phone in &mut self.phones {
            match &mut phone.motion {
                Motion::Still => {}
                Motion::Velocity { vx, vy } => {
                    phone.pos.0 += *vx * dt;
                    phone.pos.1 += *vy * dt;
                    any = true;
                }
                Motion::Walk { points, speed } => {
                    let mut step = *speed * dt;
                    while step > 0.0 {
                        let Some(&(x, y)) = points.front() else { break };
                        let d = (x - phone.pos.0).hypot(y - phone.pos.1);
                        if d <= step {
                            phone.pos = (x, y);
                            step -= d;
                            points.pop_front();
                        } else {
                            phone.pos.0 += (x - phone.pos.0) / d * step;
                            phone.pos.1 += (y - phone.pos.1) / d * step;
                            step = 0.0;
                        }
                    }
                    if points.is_empty() {
                        phone.motion = Motion::Still;
                    } else {
                        any = true;
                    }
                }
            }
        }
        if any {
            self.schedule_motion();
        }
    }

    // ---- LAN ----

    /// Give `a` and `b` a LAN link (`a` dials). Returns false if they have one already.
    ///
    /// # Panics
    /// If `a == b`.
    pub fn lan_link(&mut self, a: PhoneId, b: PhoneId) -> bool {
        assert_ne!(a, b, "a phone cannot be linked to itself");
        if self.lan_between(a, b).is_some() {
            return false;
        }
        let la = self.phones[a].engine.add_link(TransportKind::Lan, true).expect("add_link");
        let lb = self.phones[b].engine.add_link(TransportKind::Lan, false).expect("add_link");
        let id = self.next_lan;
        self.next_lan += 1;
        let pipes = [0, 1].map(|dir| Pipe::new(SimRng::stream(self.seed, 8 << 32 | id << 1 | dir)));
        self.lan.insert(id, LanConn { ends: [a, b], links: [la, lb], pipes });
        for (p, l) in [(a, la), (b, lb)] {
            self.phones[p].lan_link.insert(l, id);
            self.phones[p].engine_dirty = true;
            self.dirty.insert(p);
        }
        self.settle();
        true
    }

    /// Drop the LAN link between `a` and `b` (frames in flight are lost). Returns whether there was one.
    pub fn lan_unlink(&mut self, a: PhoneId, b: PhoneId) -> bool {
        match self.lan_between(a, b) {
            Some(c) => {
                self.lan_teardown(c, "LAN unlinked");
                self.settle();
                true
            }
            None => false,
        }
    }

    /// The pairs with a LAN link (dialler first).
    pub fn lan_pairs(&self) -> Vec<(PhoneId, PhoneId)> {
        self.lan.values().map(|c| (c.ends[0], c.ends[1])).collect()
    }

    fn lan_between(&self, a: PhoneId, b: PhoneId) -> Option<u64> {
        self.lan.iter().find(|(_, c)| c.ends == [a, b] || c.ends == [b, a]).map(|(id, _)| *id)
    }

    // ---- connections ----

    /// Every BLE link announced at both ends, as (central, peripheral); a pair appears twice if it is linked
    /// twice.
    pub fn linked_pairs(&self) -> Vec<(PhoneId, PhoneId)> {
        self.conns
            .iter()
            .filter(|(id, c)| c.ends.iter().all(|p| self.phones[*p].conn_link.contains_key(id)))
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
            .filter(|id| self.conns[id].ends.iter().all(|p| self.phones[*p].conn_link.contains_key(id)))
            .collect();
        self.connections().into_iter().find(|c| {
            linked.contains(&c.id) && ((c.central, c.peripheral) == (a, b) || (c.central, c.peripheral) == (b, a))
        })
    }

    // ---- statistics ----

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

    pub fn reset_stats(&mut self) {
        for p in &mut self.phones {
            p.stats = PhoneStats::default();
        }
        self.bytes_by_kind.clear();
    }

    // ---- running ----

    /// Run `f` at `now() + delay`.
    pub fn schedule(&mut self, delay: u64, f: impl FnOnce(&mut RadioWorld) + 'static) {
        self.push(self.now + delay, Event::Call(Box::new(f)));
    }

    /// Process the next event. Returns false when there is none (never, once a phone exists).
    pub fn step(&mut self) -> bool {
        self.settle();
        let Some((time, event)) = self.queue.pop() else { return false };
        // A bug in the radio model could make it loop at one instant; say so rather than hang.
        if time == self.now {
            self.same_time += 1;
            assert!(self.same_time < 1_000_000, "radio simulation stuck at t={} µs (seed {})", self.now, self.seed);
        } else {
            self.same_time = 0;
        }
        self.now = self.now.max(time);
        self.events_processed += 1;
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
                self.phones[phone].links.on_disconnected(self.now / MILLISECOND, conn);
                self.dirty.insert(phone);
            }
            Event::Attempt { id } => self.on_attempt(id),
            Event::AttemptFailed { id } => {
                if let Some(a) = self.attempts.remove(&id) {
                    if !a.cancelled {
                        self.phones[a.from].stats.connect_failures += 1;
                        self.phones[a.from].links.on_connect_failed(self.now / MILLISECOND, &a.address);
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
            Event::Call(f) => f(self),
        }
        self.settle();
        true
    }

    /// Run every event due in the next `duration`; the clock then reads `now + duration`.
    pub fn run_for(&mut self, duration: u64) {
        let deadline = self.now + duration;
        self.settle();
        while self.queue.due_by(deadline) {
            self.step();
        }
        self.now = deadline;
    }

    /// Run until `done(self)` holds (checked before and after every event) and return the time it first held;
    /// `None` if it still does not after `max_duration`.
    pub fn run_until(&mut self, mut done: impl FnMut(&RadioWorld) -> bool, max_duration: u64) -> Option<u64> {
        let deadline = self.now.saturating_add(max_duration);
        self.settle();
        if done(self) {
            return Some(self.now);
        }
        while self.queue.due_by(deadline) {
            self.step();
            if done(self) {
                return Some(self.now);
            }
        }
        self.now = self.now.max(deadline);
        None
    }

    /// Run until the world is quiet ([`RadioWorld::is_quiet`], checked every [`QUIET_CHECK_US`]) and return the
    /// time; give up after `max_duration` of virtual time.
    ///
    /// # Errors
    /// [`NotQuiet`] with what was still going on.
    pub fn run_until_quiet(&mut self, max_duration: u64) -> Result<u64, NotQuiet> {
        let deadline = self.now.saturating_add(max_duration);
        loop {
            match self.quiet_check() {
                Ok(()) => return Ok(self.now),
                Err(why) if self.now >= deadline => return Err(NotQuiet { now: self.now, why }),
                Err(_) => self.run_for(QUIET_CHECK_US.min(deadline - self.now)),
            }
        }
    }

    /// Whether the world is quiet (see the module docs). Offers the engines a chance to produce frames.
    pub fn is_quiet(&mut self) -> bool {
        self.quiet_check().is_ok()
    }

    /// What keeps the world from being quiet, if anything.
    pub fn quiet_check(&mut self) -> Result<(), String> {
        self.settle();
        if let Some((_, a)) = self.attempts.iter().next() {
            return Err(format!("{} is connecting to {}", self.phones[a.from].name, a.address));
        }
        for (id, c) in &self.conns {
            if c.queues.iter().any(|q| !q.is_empty()) || c.in_air.iter().any(Option::is_some) {
                return Err(format!("packets queued on connection {id}"));
            }
            for d in 0..2 {
                let (from, to) = (c.ends[d], c.ends[1 - d]);
                let (Some(out), Some(inn)) = (self.phones[from].links.link(*id), self.phones[to].links.link(*id))
                else {
                    return Err(format!("connection {id} is not known at both ends"));
                };
                if out.stats().frame_bytes_out != inn.stats().frame_bytes_in {
                    return Err(format!(
                        "frames in flight on connection {id} ({} → {})",
                        self.phones[from].name, self.phones[to].name
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
            if p.links.connection_count() != p.conn_link.len() {
                return Err(format!("{}: a BLE connection is forming or closing", p.name));
            }
            if p.engine.links().len() != p.conn_link.len() + p.lan_link.len() {
                return Err(format!("{}: a handshake is running", p.name));
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
                let room = |p: &Phone| p.links.connection_count() < p.links.config().max_links;
                if !room(pa) || !room(pb) {
                    continue;
                }
                if !pa.links.linked().iter().any(|(_, t)| *t == pb.tag) {
                    return Err(format!("{} and {} are in range but not linked", pa.name, pb.name));
                }
            }
        }
        for p in 0..self.phones.len() {
            let busy = self.phones[p].engine.links_with_frames();
            if !busy.is_empty() {
                self.phones[p].engine_dirty = true;
                self.dirty.insert(p);
                self.settle();
                return Err(format!("{} has frames to send on links {busy:?}", self.phones[p].name));
            }
        }
        Ok(())
    }

    // ---- internals: scheduling ----

    fn push(&mut self, time: u64, event: Event) {
        self.queue.push(time, event);
    }

    fn settle(&mut self) {
        while let Some(p) = self.dirty.pop_first() {
            self.pump(p);
        }
    }

    fn drain_events(&mut self, p: PhoneId) {
        let now = self.now;
        let phone = &mut self.phones[p];
        while let Some(e) = phone.engine.poll_event() {
            phone.events.push((now, e));
        }
    }

    fn on_scan(&mut self, p: PhoneId) {
        let now_ms = self.now / MILLISECOND;
        if self.phones[p].scanning {
            for q in 0..self.phones.len() {
                if q == p || !self.in_range(p, q) {
                    continue;
                }
                let Some(data) = self.phones[q].advertising.clone() else { continue };
                let address = self.phones[q].address.clone();
                let data = if data.is_empty() { None } else { Some(data.as_slice()) };
                self.phones[p].links.on_discovered(now_ms, &address, data);
                self.dirty.insert(p);
            }
        }
        let (lo, hi) = self.params.scan_period_us;
        let next = self.phones[p].rng.range(lo, hi.max(lo) + 1);
        self.push(self.now + next.max(1), Event::Scan { phone: p });
    }

    fn on_tick(&mut self, p: PhoneId) {
        let now_ms = self.now / MILLISECOND;
        let phone = &mut self.phones[p];
        phone.links.tick(now_ms);
        phone.engine.tick(now_ms);
        phone.engine_dirty = true;
        self.dirty.insert(p);
        let (lo, hi) = self.params.tick_us;
        let next = self.phones[p].rng.range(lo, hi.max(lo) + 1);
        self.push(self.now + next.max(1), Event::Tick { phone: p });
    }

    // ---- internals: driving a phone ----

    /// Everything a phone's BLE task does after an event: link events into the engine, engine frames into the
    /// links (and the LAN), radio commands out; until nothing moves.
    fn pump(&mut self, p: PhoneId) {
        for _ in 0..10_000 {
            let mut moved = false;
            // Link events feed the engine.
            while let Some(event) = self.phones[p].links.poll_event() {
                moved = true;
                self.on_ble_event(p, event);
            }
            // BLE links the engine closed end on the radio too.
            let phone = &mut self.phones[p];
            let closed: Vec<(u64, LinkId)> =
                phone.conn_link.iter().filter(|(_, l)| phone.engine.is_closed(**l)).map(|(c, l)| (*c, *l)).collect();
            for (conn, link) in closed {
                moved = true;
                phone.links.close(conn);
                phone.conn_link.remove(&conn);
                phone.engine.remove_link(link, "closed by the engine");
                phone.engine_dirty = true;
            }
            let lan_closed: Vec<u64> =
                phone.lan_link.iter().filter(|(l, _)| phone.engine.is_closed(**l)).map(|(_, c)| *c).collect();
            for c in lan_closed {
                moved = true;
                self.lan_teardown(c, "closed by the engine");
            }
            let phone = &mut self.phones[p];
            if phone.engine_dirty {
                phone.engine_dirty = false;
                phone.starved.clear();
            }
            // Frames out, as the links take them.
            for conn in phone.links.conns_wanting_frames() {
                let Some(&link) = phone.conn_link.get(&conn) else { continue };
                if phone.starved.contains(&link) {
                    continue;
                }
                while phone.links.wants_frame(conn) {
                    match phone.engine.poll_frame(link) {
                        Some(frame) => {
                            moved = true;
                            phone.stats.ble_frames_sent += 1;
                            phone.stats.ble_frame_bytes_sent += frame.len() as u64;
                            if let Err(e) = phone.links.push_frame(conn, &frame) {
                                log::warn!("radio sim: {}: connection {conn}: {e}", phone.name);
                                break;
                            }
                        }
                        None => {
                            phone.starved.insert(link);
                            break;
                        }
                    }
                }
            }
            let lan: Vec<(LinkId, u64)> = phone.lan_link.iter().map(|(l, c)| (*l, *c)).collect();
            for (link, c) in lan {
                if !self.phones[p].starved.contains(&link) {
                    moved |= self.lan_pull(c, p);
                }
            }
            // Radio commands.
            let mut commands = Vec::new();
            while let Some(cmd) = self.phones[p].links.poll_command() {
                commands.push(cmd);
            }
            for cmd in commands {
                moved = true;
                self.execute(p, cmd);
            }
            self.drain_events(p);
            if !moved {
                return;
            }
        }
        log::warn!("radio sim: {} did not settle", self.phones[p].name);
    }

    fn on_ble_event(&mut self, p: PhoneId, event: BleEvent) {
        let by_tag = &self.by_tag;
        let phone = &mut self.phones[p];
        match event {
            BleEvent::LinkReady { conn, initiator, peer_tag } => {
                match phone.engine.add_link(TransportKind::Ble, initiator) {
                    Ok(link) => {
                        phone.conn_link.insert(conn, link);
                        phone.engine_dirty = true;
                        phone.stats.links_up += 1;
                        if let Some(&q) = by_tag.get(&peer_tag) {
                            phone.linked_with.insert(q);
                        }
                    }
                    Err(e) => {
                        log::warn!("radio sim: {}: cannot add a link: {e}", phone.name);
                        phone.links.close(conn);
                    }
                }
            }
            BleEvent::Frame { conn, frame } => {
                if let Some(&link) = phone.conn_link.get(&conn) {
                    phone.stats.ble_frames_received += 1;
                    phone.stats.ble_frame_bytes_received += frame.len() as u64;
                    phone.engine.on_frame(link, &frame);
                    phone.engine_dirty = true;
                }
            }
            BleEvent::LinkClosed { conn, reason } => {
                match &reason {
                    LinkClosedReason::Duplicate => phone.stats.duplicates_closed += 1,
                    LinkClosedReason::Error(e) if !matches!(e, LinkError::ClosedByPeer(_)) => {
                        log::debug!("radio sim: {}: link on connection {conn} failed: {e}", phone.name);
                        phone.stats.link_errors += 1;
                    }
                    _ => {}
                }
                if let Some(link) = phone.conn_link.remove(&conn) {
                    phone.engine.remove_link(link, &format!("bluetooth: {reason:?}"));
                    phone.engine_dirty = true;
                }
            }
        }
    }

    fn violation(&mut self, what: String) {
        log::warn!("radio sim: {what}");
        self.violations.push(what);
    }

    fn execute(&mut self, p: PhoneId, cmd: RadioCommand) {
        match cmd {
            RadioCommand::StartAdvertising { service_data } => self.phones[p].advertising = Some(service_data),
            RadioCommand::StartScanning => self.phones[p].scanning = true,
            RadioCommand::Connect { address } => {
                let id = self.next_attempt;
                self.next_attempt += 1;
                let mut rng = SimRng::stream(self.seed, 6 << 32 | id);
                let (lo, hi) = self.params.connect_setup_us;
                let setup = rng.range(lo, hi.max(lo) + 1);
                self.attempts.insert(id, Attempt { from: p, address, started: self.now, cancelled: false });
                self.push(self.now + setup, Event::Attempt { id });
            }
            RadioCommand::CancelConnect { address } => {
                for a in self.attempts.values_mut() {
                    if a.from == p && a.address == address {
                        a.cancelled = true;
                    }
                }
            }
            RadioCommand::Disconnect { conn } => {
                let Some(c) = self.conns.get(&conn) else { return };
                if !c.ends.contains(&p) {
                    self.violation(format!(
                        "{} disconnected connection {conn}, which is not its own",
                        self.phones[p].name
                    ));
                    return;
                }
                let other = if c.ends[0] == p { c.ends[1] } else { c.ends[0] };
                let interval = c.interval;
                self.remove_conn(conn);
                self.push(self.now + interval, Event::Disconnected { phone: other, conn });
            }
            RadioCommand::Send { conn, packet } => {
                let reorder = self.params.reorder_rate();
                let Some(c) = self.conns.get_mut(&conn) else {
                    // The connection is gone; the phone is told (or about to be).
                    return;
                };
                let Some(dir) = c.ends.iter().position(|e| *e == p) else {
                    let what = format!("{} sent on connection {conn}, which is not its own", self.phones[p].name);
                    self.violation(what);
                    return;
                };
                let max = usize::from(c.mtu.saturating_sub(ATT_HEADER_LEN));
                if packet.len() > max || packet.is_empty() {
                    let what = format!(
                        "{} sent a packet of {} bytes on connection {conn} whose ATT MTU is {}",
                        self.phones[p].name,
                        packet.len(),
                        c.mtu
                    );
                    self.violation(what);
                    self.drop_conn(conn);
                    return;
                }
                let queue = &mut c.queues[dir];
                if reorder > 0.0 && !queue.is_empty() && c.rng.chance(reorder) {
                    queue.insert(queue.len() - 1, packet);
                    self.phones[p].stats.packets_reordered += 1;
                } else {
                    queue.push_back(packet);
                }
            }
        }
    }

    fn on_attempt(&mut self, id: u64) {
        let Some(a) = self.attempts.get(&id) else { return };
        if a.cancelled {
            self.attempts.remove(&id);
            return;
        }
        let (from, started) = (a.from, a.started);
        let target = self.by_address.get(&a.address).copied();
        let max = self.params.max_connections;
        let conns_of = |w: &RadioWorld, p: PhoneId| w.conns.values().filter(|c| c.ends.contains(&p)).count();
        let ok = target.is_some_and(|t| {
            t != from
                && self.phones[t].advertising.is_some()
                && self.in_range(from, t)
                && conns_of(self, from) < max
                && conns_of(self, t) < max
        });
        match target {
            Some(t) if ok => {
                self.attempts.remove(&id);
                self.establish(from, t);
            }
            _ => {
                let at = (started + self.params.connect_fail_us).max(self.now);
                self.push(at, Event::AttemptFailed { id });
            }
        }
    }

    fn establish(&mut self, central: PhoneId, peripheral: PhoneId) {
        let id = self.next_conn;
        self.next_conn += 1;
        let mut rng = SimRng::stream(self.seed, 4 << 32 | id);
        let (lo, hi) = self.params.interval_us;
        let (lo_u, hi_u) = ((lo / INTERVAL_UNIT_US).max(6), (hi.max(lo) / INTERVAL_UNIT_US).max(6));
        let interval = rng.range(lo_u, hi_u.max(lo_u) + 1) * INTERVAL_UNIT_US;
        let (blo, bhi) = self.params.packets_per_event;
        let budget = rng.range(blo.max(1) as u64, bhi.max(blo).max(1) as u64 + 1) as usize;
        let target_mtu = if self.params.att_mtus.is_empty() { ATT_MTU_MIN } else { *rng.pick(&self.params.att_mtus) };
        let offset = rng.below(interval);
        self.conns.insert(
            id,
            RadioConn {
                ends: [central, peripheral],
                interval,
                budget,
                target_mtu,
                mtu: ATT_MTU_MIN,
                queues: [VecDeque::new(), VecDeque::new()],
                rng,
                established: self.now,
                last_ok: self.now,
                anchor: self.now,
                active: false,
                paused: false,
                slots: 0,
                in_air: [None, None],
                end_after: false,
            },
        );
        self.push(self.now + offset, Event::Anchor { conn: id });
        self.push(self.now + interval, Event::Mtu { conn: id });
        let now_ms = self.now / MILLISECOND;
        let (ca, pa) = (self.phones[central].address.clone(), self.phones[peripheral].address.clone());
        let channel = Channel::Gatt { att_mtu: ATT_MTU_MIN };
        self.phones[central].links.on_connected(now_ms, id, &pa, Role::Central, channel);
        self.phones[peripheral].links.on_connected(now_ms, id, &ca, Role::Peripheral, channel);
        for p in [central, peripheral] {
            self.phones[p].stats.connections += 1;
            self.dirty.insert(p);
        }
    }

    fn on_mtu(&mut self, conn: u64) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        c.mtu = c.target_mtu;
        let (mtu, ends) = (c.mtu, c.ends);
        for p in ends {
            self.phones[p].links.on_mtu(conn, mtu);
            self.dirty.insert(p);
        }
    }

    /// Remove a connection from the radios (no one is told).
    fn remove_conn(&mut self, conn: u64) -> Option<RadioConn> {
        let c = self.conns.remove(&conn)?;
        let lost = c.queues.iter().map(VecDeque::len).sum::<usize>() + c.in_air.iter().filter(|p| p.is_some()).count();
        for p in c.ends {
            self.phones[p].waiting.remove(&conn);
        }
        self.phones[c.ends[0]].stats.packets_dropped += lost as u64;
        Some(c)
    }

    /// The connection breaks (supervision timeout): both phones are told now.
    fn drop_conn(&mut self, conn: u64) {
        let Some(c) = self.remove_conn(conn) else { return };
        let now_ms = self.now / MILLISECOND;
        for p in c.ends {
            self.phones[p].links.on_disconnected(now_ms, conn);
            self.dirty.insert(p);
        }
    }

    // ---- internals: connection events ----

    fn on_anchor(&mut self, conn: u64) {
        let now = self.now;
        let supervision = self.params.supervision_timeout_us;
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let interval = c.interval;
        if now.saturating_sub(c.last_ok) > supervision {
            let ends = c.ends;
            log::debug!(
                "radio sim: connection {conn} ({} – {}) lost (supervision timeout)",
                self.phones[ends[0]].name,
                self.phones[ends[1]].name
            );
            for p in ends {
                self.phones[p].stats.supervision_drops += 1;
            }
            self.drop_conn(conn);
            return;
        }
        self.push(now + interval, Event::Anchor { conn });
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if c.in_air.iter().any(Option::is_some) {
            // Cannot happen (an exchange ends strictly before the next anchor); skip this event.
            return;
        }
        // A previous event still paused ends here.
        c.active = false;
        c.paused = false;
        c.anchor = now;
        c.slots = 0;
        self.unwait(conn);
        self.try_start(conn);
    }

    /// Start (or resume) `conn`'s connection event now if both radios are free, else wait for them (or give the
    /// event up if they are not free before it would end).
    fn try_start(&mut self, conn: u64) {
        let now = self.now;
        let Some(c) = self.conns.get(&conn) else { return };
        let [a, b] = c.ends;
        let free = self.phones[a].radio_free.max(self.phones[b].radio_free);
        if free > now {
            let minimum = pdu_us(None) * 2 + 2 * IFS_US;
            if free + minimum >= c.anchor + c.interval {
                // This event is over; the next anchor comes.
                for p in [a, b] {
                    self.phones[p].waiting.remove(&conn);
                }
                self.end_event(conn);
                return;
            }
            let anchor = c.anchor;
            for p in [a, b] {
                self.phones[p].waiting.insert(conn, free);
            }
            self.push(free, Event::Start { conn, anchor });
            return;
        }
        for p in [a, b] {
            self.phones[p].waiting.remove(&conn);
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            if !c.active {
                c.active = true;
                c.slots = 0;
            }
            c.paused = false;
        }
        self.exchange(conn);
    }

    fn end_event(&mut self, conn: u64) {
        self.unwait(conn);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.active = false;
            c.paused = false;
        }
    }

    /// `conn` no longer waits for any radio.
    fn unwait(&mut self, conn: u64) {
        if let Some(c) = self.conns.get(&conn) {
            for p in c.ends {
                self.phones[p].waiting.remove(&conn);
            }
        }
    }

    /// The next exchange of `conn`'s running event, or its end.
    fn exchange(&mut self, conn: u64) {
        let now = self.now;
        let loss = self.params.loss_rate();
        let Some(c) = self.conns.get(&conn) else { return };
        let [a, b] = c.ends;
        let lens = [c.queues[0].front().map(Vec::len), c.queues[1].front().map(Vec::len)];
        let idle = lens == [None, None];
        let others_waiting =
            self.phones[a].waiting.iter().chain(self.phones[b].waiting.iter()).any(|(w, at)| *w != conn && *at <= now);
        if c.slots > 0 && (idle || c.slots >= c.budget) {
            self.end_event(conn);
            return;
        }
        if c.slots > 0 && others_waiting {
            // Another connection of either phone waits for the radio: let it have it, and resume after.
            let anchor = c.anchor;
            if let Some(c) = self.conns.get_mut(&conn) {
                c.paused = true;
            }
            self.push(now, Event::Start { conn, anchor });
            return;
        }
        let dur = pdu_us(lens[0]) + pdu_us(lens[1]) + 2 * IFS_US;
        if now + dur >= c.anchor + c.interval {
            self.end_event(conn);
            return;
        }
        let in_range = self.in_range(a, b);
        for p in [a, b] {
            self.phones[p].radio_free = now + dur;
            self.phones[p].stats.airtime_us += dur;
        }
        let c = self.conns.get_mut(&conn).expect("the connection");
        c.slots += 1;
        let central_heard = in_range && !(loss > 0.0 && c.rng.chance(loss));
        let peripheral_heard = central_heard && !(loss > 0.0 && c.rng.chance(loss));
        let mut in_air = [None, None];
        if central_heard {
            c.last_ok = now;
            if lens[0].is_some() {
                in_air[0] = c.queues[0].pop_front();
            }
        }
        if peripheral_heard && lens[1].is_some() {
            in_air[1] = c.queues[1].pop_front();
        }
        c.end_after = !central_heard || !peripheral_heard;
        // Air and loss statistics: the central always transmits; the peripheral only when it heard the central.
        let transmitted = [true, central_heard];
        let heard = [central_heard, peripheral_heard];
        for d in 0..2 {
            if !transmitted[d] {
                continue;
            }
            let s = &mut self.phones[c.ends[d]].stats;
            s.air_bytes_sent += pdu_air_bytes(lens[d]) as u64;
            match lens[d] {
                Some(n) => {
                    s.packets_sent += 1;
                    s.packet_bytes_sent += n as u64;
                    if !heard[d] {
                        s.retransmissions += 1;
                    }
                }
                None => s.empty_pdus += 1,
            }
        }
        if idle {
            // An empty exchange: the event ends (its radio time is reserved).
            c.active = false;
            return;
        }
        c.in_air = in_air;
        self.push(now + dur, Event::ExchangeDone { conn });
    }

    fn on_exchange_done(&mut self, conn: u64) {
        let now_ms = self.now / MILLISECOND;
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let in_air = std::mem::take(&mut c.in_air);
        let (ends, end_after) = (c.ends, c.end_after);
        for (d, packet) in in_air.into_iter().enumerate() {
            let Some(packet) = packet else { continue };
            let (from, to) = (ends[d], ends[1 - d]);
            *self.bytes_by_kind.entry((from, to, TransportKind::Ble)).or_default() += packet.len() as u64;
            let rx = &mut self.phones[to];
            rx.stats.packets_received += 1;
            rx.stats.packet_bytes_received += packet.len() as u64;
            rx.links.on_packet(now_ms, conn, &packet);
            self.phones[from].links.on_sent(conn);
            self.dirty.insert(from);
            self.dirty.insert(to);
        }
        self.settle();
        if self.conns.get(&conn).is_some_and(|c| c.active && !c.paused) {
            if end_after {
                self.end_event(conn);
            } else {
                self.exchange(conn);
            }
        }
    }

    // ---- internals: LAN ----

    /// Take frames from phone `p`'s end of LAN link `c` while the backlog has room. Returns whether any was taken.
    fn lan_pull(&mut self, c: u64, p: PhoneId) -> bool {
        let mut moved = false;
        loop {
            let now = self.now;
            let Some(conn) = self.lan.get_mut(&c) else { return moved };
            let dir = if conn.ends[0] == p { 0 } else { 1 };
            let link = conn.links[dir];
            let to = conn.ends[1 - dir];
            let pipe = &mut conn.pipes[dir];
            if !pipe.has_room(now) {
                return moved;
            }
            let phone = &mut self.phones[p];
            let Some(frame) = phone.engine.poll_frame(link) else {
                phone.starved.insert(link);
                return moved;
            };
            moved = true;
            let wire = frame.len() + HEADER_LEN;
            let sent = pipe.transmit(now, &self.params.lan, wire);
            phone.stats.lan_frames_sent += 1;
            phone.stats.lan_bytes_sent += wire as u64;
            *self.bytes_by_kind.entry((p, to, TransportKind::Lan)).or_default() += wire as u64;
            self.push(sent.sent_at, Event::LanWake { conn: c, dir });
            self.push(sent.deliver_at, Event::LanDeliver { conn: c, dir, frame });
        }
    }

    fn lan_deliver(&mut self, c: u64, dir: usize, frame: Vec<u8>) {
        let Some(conn) = self.lan.get_mut(&c) else { return };
        conn.pipes[dir].delivered(frame.len() + HEADER_LEN);
        let (to, link) = (conn.ends[1 - dir], conn.links[1 - dir]);
        let phone = &mut self.phones[to];
        phone.engine.on_frame(link, &frame);
        phone.engine_dirty = true;
        self.dirty.insert(to);
    }

    fn lan_teardown(&mut self, c: u64, reason: &str) {
        let Some(conn) = self.lan.remove(&c) else { return };
        for d in 0..2 {
            let (p, link) = (conn.ends[d], conn.links[d]);
            let phone = &mut self.phones[p];
            phone.lan_link.remove(&link);
            phone.engine.remove_link(link, reason);
            phone.engine_dirty = true;
            self.dirty.insert(p);
        }
    }
}

impl Drop for RadioWorld {
    fn drop(&mut self) {
        self.phones.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn air_time_and_capacity() {
        assert_eq!(pdu_air_bytes(None), 11);
        assert_eq!(pdu_air_bytes(Some(244)), 262);
        assert_eq!(pdu_us(Some(244)), 1048);
        // Six full exchanges both ways fit the shortest interval.
        assert!(6 * (2 * pdu_us(Some(244)) + 2 * IFS_US) <= 15 * MILLISECOND);
        let cap = capacity_bytes_per_s(247, 15 * MILLISECOND, 6);
        assert!((cap - 97_600.0).abs() < 1.0, "{cap}");
        let cap = capacity_bytes_per_s(185, 30 * MILLISECOND, 4);
        assert!((cap - 24_266.7).abs() < 1.0, "{cap}");
    }

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
