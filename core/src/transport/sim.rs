//! A deterministic, seeded, discrete-event simulator of a mesh of devices, in the style of FoundationDB's and
//! TigerBeetle's simulation testing: real [`Store`]s and real sync [`Engine`]s, connected by simulated links with
//! latency, bandwidth, an MTU and packet loss, on a virtual clock.
//!
//! ```text
//! SimWorld::new(seed) ─ add_device × n ─ link / unlink / partition / heal ─ edit ─ run_for / run_until_quiet
//! ```
//!
//! **Time and events.** The clock counts virtual microseconds ([`SimWorld::now`]); nothing ever sleeps. Pending
//! work is a priority queue of events ordered by (time, sequence number), so simultaneous events run in the order
//! they were scheduled. An event is the delivery of a frame, the moment a frame has finished leaving its sender
//! (which frees room in the link's backlog), or a closure scheduled by the test ([`SimWorld::schedule`]).
//!
//! **Links.** A link ([`LinkParams`]) models a reliable, ordered byte stream such as TCP or a BLE L2CAP channel.
//! Each frame (plus its 4-byte length prefix, as on a real stream) is cut into MTU-sized packets which serialise
//! one after another at the link's bandwidth. Each packet is lost with probability `loss`; the sender then stalls
//! for a retransmission timeout ([`LinkParams::rto_us`]) and sends it again, which delays everything behind it. A
//! frame is delivered `latency_us` after its last packet left, and never before an earlier frame of the same
//! direction. [`SimWorld::unlink`] drops a link at once: frames in flight are lost, both engines are told
//! ([`Engine::remove_link`]).
//!
//! **Backpressure.** The simulator pulls frames from [`Engine::poll_frame`] only while the link's unsent backlog
//! (bytes taken from the engine whose last packet has not left yet) is under [`BACKLOG_LIMIT`], as a socket with a
//! small send buffer would, so the engine's own flow control (credit, [`crate::sync::WINDOW`]) is what bounds the
//! data in flight. After every delivered frame, every finished transmission and every edit, the device concerned
//! offers each of its links a chance to send.
//!
//! **Determinism — what is and is not reproducible.** All randomness of the simulator comes from the seed: the
//! test's own choices ([`SimWorld::rng`]), the device identities (derived from the seed, so the engines' key-based
//! choices are reproducible) and each link's loss pattern (one stream per link, derived from the seed and the
//! link's creation number, so "the n-th packet of the k-th link is lost" does not depend on anything else). Given
//! the same seed, a test that draws its decisions from [`SimWorld::rng`] produces the same topology changes,
//! partitions and edits at the same virtual times. What is *not* reproducible byte for byte: each [`Store`] draws
//! its peer id at random and stamps changes with the wall clock (hybrid logical clock), so encoded sizes differ by
//! a few bytes between runs (which shifts packet counts and delivery times by microseconds), and the winner of a
//! concurrent register write may differ. Convergence — every device ending with the same state — must hold
//! whatever those values are, which is what the simulation tests check; a failing seed reproduces the same
//! schedule of faults and edits, which in practice reproduces the failure.
//!
//! Stores live in a temporary directory removed when the world is dropped. The engines' keepalives and link
//! timeouts ([`Engine::tick`]) are not driven: simulated links only go down when the test says so.
//!
//! ```
//! use shoaldb::sync::Subscription;
//! use shoaldb::transport::sim::{LinkParams, SimWorld, MILLISECOND, SECOND};
//!
//! let mut world = SimWorld::new(42);
//! let a = world.add_device("a", vec![Subscription::everything()]);
//! let b = world.add_device("b", vec![Subscription::everything()]);
//! world.link(a, b, LinkParams::ble().with_loss(0.05));
//! world.run_until_quiet(60 * SECOND)?;
//! world.edit(a, |s| s.upsert("tasks", serde_json::json!({"_id": "t1", "title": "milk"})).unwrap());
//! let edited = world.now();
//! let seen = world.run_until(|w| w.store(b).get("tasks", "t1").unwrap().is_some(), 60 * SECOND).unwrap();
//! assert!(seen - edited >= 15 * MILLISECOND); // at least one BLE latency
//! world.run_until_quiet(60 * SECOND)?;
//! assert!(world.stats(a, b).frames_delivered > 0);
//! # Ok::<(), shoaldb::transport::sim::NotQuiet>(())
//! ```

use crate::security::{AppSecret, DeviceKey, Identity};
use crate::store::{Durability, Options, Store};
use crate::sync::{Engine, EngineEvent, LinkId, SessionStats, Subscription, TransportKind};
use crate::transport::frame::HEADER_LEN;
use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::path::PathBuf;

/// A device's index in its [`SimWorld`].
pub type DeviceId = usize;

/// One virtual millisecond, in the simulator's microseconds.
pub const MILLISECOND: u64 = 1_000;
/// One virtual second, in the simulator's microseconds.
pub const SECOND: u64 = 1_000_000;

/// The simulator takes frames from an engine only while a link direction has fewer unsent bytes than this (the
/// send buffer of a socket).
pub const BACKLOG_LIMIT: usize = 64 << 10;

/// The app secret every device gets unless told otherwise ([`SimWorld::add_device_with_secret`]).
pub const DEFAULT_SECRET: &[u8] = b"shoal simulator app secret";

// ---- randomness ----

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A small, fast, seeded pseudo-random generator (xoshiro256**, seeded through SplitMix64). Not for keys.
#[derive(Clone, Debug)]
pub struct SimRng {
    s: [u64; 4],
}

impl SimRng {
    pub fn new(seed: u64) -> SimRng {
        let mut sm = seed;
        SimRng { s: [splitmix64(&mut sm), splitmix64(&mut sm), splitmix64(&mut sm), splitmix64(&mut sm)] }
    }

    /// An independent stream for `(seed, stream)`: what one stream draws does not shift another.
    pub fn stream(seed: u64, stream: u64) -> SimRng {
        let mut sm = seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
        SimRng::new(splitmix64(&mut sm))
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "SimRng::below(0)");
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in `lo..hi` (`lo < hi`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo)
    }

    /// Uniform index into a collection of `len` (> 0) items.
    pub fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.index(items.len())]
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.index(i + 1);
            items.swap(i, j);
        }
    }
}

// ---- links ----

/// How a simulated link behaves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkParams {
    /// One-way propagation delay.
    pub latency_us: u64,
    /// Serialisation rate of each direction.
    pub bandwidth_bytes_per_s: u64,
    /// The largest packet; frames are cut into packets of this size.
    pub mtu: usize,
    /// Probability that a packet is lost (and retransmitted after [`LinkParams::rto_us`]). Capped at 0.9.
    pub loss: f64,
    /// The transport the engines are told the link is (the sync engine prefers the LAN when a pair of devices is
    /// linked over both).
    pub kind: TransportKind,
}

impl LinkParams {
    /// A local network: 0.5 ms, 10 MB/s, MTU 1500, no loss.
    pub const LAN: LinkParams = LinkParams {
        latency_us: 500,
        bandwidth_bytes_per_s: 10_000_000,
        mtu: 1500,
        loss: 0.0,
        kind: TransportKind::Lan,
    };
    /// Bluetooth LE-like: 15 ms, 50 kB/s, MTU 185, no loss.
    pub const BLE: LinkParams =
        LinkParams { latency_us: 15_000, bandwidth_bytes_per_s: 50_000, mtu: 185, loss: 0.0, kind: TransportKind::Ble };

    pub fn lan() -> LinkParams {
        LinkParams::LAN
    }

    pub fn ble() -> LinkParams {
        LinkParams::BLE
    }

    /// The same link with packet loss probability `loss`.
    pub fn with_loss(self, loss: f64) -> LinkParams {
        LinkParams { loss, ..self }
    }

    /// How long a sender waits before retransmitting a lost packet: two latencies (a round trip) plus 2 ms.
    pub fn rto_us(&self) -> u64 {
        2 * self.latency_us + 2 * MILLISECOND
    }

    /// Time to put `bytes` on the wire (at least 1 µs).
    pub fn transmit_us(&self, bytes: usize) -> u64 {
        ((bytes as u64).saturating_mul(SECOND)).div_ceil(self.bandwidth_bytes_per_s.max(1)).max(1)
    }

    fn loss(&self) -> f64 {
        probability(self.loss)
    }
}

/// A configured probability made safe: NaN is 0, and it is at most 0.9.
pub(crate) fn probability(p: f64) -> f64 {
    if p.is_nan() {
        0.0
    } else {
        p.clamp(0.0, 0.9)
    }
}

/// Counters of one direction between two devices, summed over every link they had.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirStats {
    /// Frames taken from the sending engine.
    pub frames_sent: u64,
    /// Their bytes, with the 4-byte length prefix of each.
    pub bytes_sent: u64,
    pub frames_delivered: u64,
    pub bytes_delivered: u64,
    /// Packets put on the wire, retransmissions included.
    pub packets: u64,
    pub packets_lost: u64,
    /// Frames lost because the link was dropped while they were in flight.
    pub frames_dropped: u64,
    /// The most unsent bytes the simulator held for this direction (bounded by about [`BACKLOG_LIMIT`] plus one
    /// frame).
    pub max_unsent_bytes: u64,
    /// The most bytes taken from the sender and not yet delivered.
    pub max_in_flight_bytes: u64,
    /// The most bytes of changes the sending session had queued but the receiving session had not yet processed
    /// (its `change_bytes_sent` minus the peer's `change_bytes_received`): everything flow control governs — the
    /// engine's queues, the simulator's backlog and the wire.
    pub max_outstanding_change_bytes: u64,
}

impl DirStats {
    fn add(&mut self, o: &DirStats) {
        self.frames_sent += o.frames_sent;
        self.bytes_sent += o.bytes_sent;
        self.frames_delivered += o.frames_delivered;
        self.bytes_delivered += o.bytes_delivered;
        self.packets += o.packets;
        self.packets_lost += o.packets_lost;
        self.frames_dropped += o.frames_dropped;
        self.max_unsent_bytes = self.max_unsent_bytes.max(o.max_unsent_bytes);
        self.max_in_flight_bytes = self.max_in_flight_bytes.max(o.max_in_flight_bytes);
        self.max_outstanding_change_bytes = self.max_outstanding_change_bytes.max(o.max_outstanding_change_bytes);
    }
}

/// A simulation's `run_until_quiet` ([`SimWorld`], [`super::radio_sim::RadioWorld`]) reached its time limit with
/// work still pending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotQuiet {
    /// Virtual time when it gave up.
    pub now: u64,
    /// What was still going on.
    pub why: String,
}

impl std::fmt::Display for NotQuiet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not quiet at t={} µs: {}", self.now, self.why)
    }
}

impl std::error::Error for NotQuiet {}

/// A closure the test scheduled.
type Action = Box<dyn FnOnce(&mut SimWorld)>;

enum Event {
    /// A frame reaches the other end of `conn`.
    Deliver {
        conn: u64,
        dir: usize,
        frame: Vec<u8>,
    },
    /// A frame has left the sender of `conn`'s direction: room in the backlog.
    Wake {
        conn: u64,
        dir: usize,
    },
    Call(Action),
}

/// The events of a simulation by virtual time; events at the same time come in the order they were pushed, so
/// a run is a function of its seed. (Shared with [`super::radio_sim`].)
pub(crate) struct EventQueue<E> {
    next_seq: u64,
    heap: BinaryHeap<Reverse<Scheduled<E>>>,
}

struct Scheduled<E> {
    time: u64,
    seq: u64,
    event: E,
}

impl<E> PartialEq for Scheduled<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.seq) == (other.time, other.seq)
    }
}
impl<E> Eq for Scheduled<E> {}
impl<E> PartialOrd for Scheduled<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<E> Ord for Scheduled<E> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.time, self.seq).cmp(&(other.time, other.seq))
    }
}

impl<E> EventQueue<E> {
    pub(crate) fn new() -> Self {
        EventQueue { next_seq: 0, heap: BinaryHeap::new() }
    }

    pub(crate) fn push(&mut self, time: u64, event: E) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Reverse(Scheduled { time, seq, event }));
    }

    /// The earliest event and its time.
    pub(crate) fn pop(&mut self) -> Option<(u64, E)> {
        self.heap.pop().map(|Reverse(s)| (s.time, s.event))
    }

    /// The time of the earliest event.
    pub(crate) fn next_time(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse(s)| s.time)
    }

    /// Whether an event is due at or before `deadline`.
    pub(crate) fn due_by(&self, deadline: u64) -> bool {
        self.next_time().is_some_and(|t| t <= deadline)
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Every queued event, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &E> {
        self.heap.iter().map(|Reverse(s)| &s.event)
    }
}

/// One direction of a simulated connection (a [`SimWorld`] link, or a LAN link of a
/// [`super::radio_sim::RadioWorld`]): an ordered stream with a bandwidth, a latency, and packets that may be lost and
/// sent again.
pub(crate) struct Pipe {
    /// Loss decisions of this direction.
    rng: SimRng,
    /// When the sender's wire is free again.
    busy_until: u64,
    /// When the last frame is delivered (frames are delivered in order).
    last_delivery: u64,
    /// (time its last packet leaves, bytes) of frames not yet fully sent.
    unsent: VecDeque<(u64, usize)>,
    unsent_bytes: usize,
    /// Bytes taken from the sender and not yet delivered.
    in_flight_bytes: usize,
}

/// What [`Pipe::transmit`] did with a frame.
pub(crate) struct Transmission {
    /// When its last packet has left the sender (room in the backlog again).
    pub sent_at: u64,
    /// When it reaches the other end.
    pub deliver_at: u64,
    /// Packets sent, and of those lost (and sent again).
    pub packets: u64,
    pub lost: u64,
}

impl Pipe {
    pub(crate) fn new(rng: SimRng) -> Pipe {
        Pipe { rng, busy_until: 0, last_delivery: 0, unsent: VecDeque::new(), unsent_bytes: 0, in_flight_bytes: 0 }
    }

    /// Whether the sender's backlog has room for another frame at `now` ([`BACKLOG_LIMIT`]).
    pub(crate) fn has_room(&mut self, now: u64) -> bool {
        while let Some(&(t, bytes)) = self.unsent.front() {
            if t > now {
                break;
            }
            self.unsent.pop_front();
            self.unsent_bytes -= bytes;
        }
        self.unsent_bytes < BACKLOG_LIMIT
    }

    /// Put a frame of `wire` bytes on the wire at `now`: cut to `params.mtu`, each packet lost with
    /// `params.loss` and sent again after the retransmission timeout, everything behind it waiting (ordered).
    pub(crate) fn transmit(&mut self, now: u64, params: &LinkParams, wire: usize) -> Transmission {
        let (mut packets, mut lost) = (0u64, 0u64);
        let mut t = self.busy_until.max(now);
        let mut remaining = wire;
        let loss = params.loss();
        while remaining > 0 {
            let size = remaining.min(params.mtu.max(1));
            remaining -= size;
            loop {
                t += params.transmit_us(size);
                packets += 1;
                if loss > 0.0 && self.rng.chance(loss) {
                    lost += 1;
                    t += params.rto_us();
                } else {
                    break;
                }
            }
        }
        self.busy_until = t;
        self.unsent.push_back((t, wire));
        self.unsent_bytes += wire;
        self.in_flight_bytes += wire;
        let deliver_at = (t + params.latency_us).max(self.last_delivery);
        self.last_delivery = deliver_at;
        Transmission { sent_at: t, deliver_at, packets, lost }
    }

    /// A frame of `wire` bytes reached the other end.
    pub(crate) fn delivered(&mut self, wire: usize) {
        self.in_flight_bytes -= wire;
    }

    /// Bytes taken from the sender and not yet delivered.
    pub(crate) fn in_flight_bytes(&self) -> usize {
        self.in_flight_bytes
    }
}

/// A link between two devices: `ends[0]` dialled. Direction `d` goes from `ends[d]` to `ends[1 - d]`.
struct Conn {
    ends: [DeviceId; 2],
    links: [LinkId; 2],
    params: LinkParams,
    pipes: [Pipe; 2],
}

impl Conn {
    fn dir_from(&self, device: DeviceId) -> usize {
        if self.ends[0] == device {
            0
        } else {
            1
        }
    }
}

struct SimDevice {
    name: String,
    identity: Identity,
    secret: AppSecret,
    engine: Engine,
    /// The engine's links and the connection of each.
    links: BTreeMap<LinkId, u64>,
    events: Vec<(u64, EngineEvent)>,
}

/// A simulated mesh: devices, links, a virtual clock and an event queue. See the module documentation.
pub struct SimWorld {
    seed: u64,
    rng: SimRng,
    now: u64,
    queue: EventQueue<Event>,
    dir: PathBuf,
    devices: Vec<SimDevice>,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    /// Links cut by [`SimWorld::partition`], restored by [`SimWorld::heal`].
    cut: Vec<(DeviceId, DeviceId, LinkParams)>,
    stats: BTreeMap<(DeviceId, DeviceId), DirStats>,
    bytes_by_kind: BTreeMap<(DeviceId, DeviceId, TransportKind), u64>,
    /// Devices whose links must be offered a chance to send.
    dirty: BTreeSet<DeviceId>,
    events_processed: u64,
}

static WORLDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl SimWorld {
    /// An empty world whose every random choice derives from `seed`.
    ///
    /// # Panics
    /// If the temporary directory for the stores cannot be created.
    pub fn new(seed: u64) -> SimWorld {
        let n = WORLDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("shoal-sim-{}-{n}-{seed:016x}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        SimWorld {
            seed,
            rng: SimRng::stream(seed, 0),
            now: 0,
            queue: EventQueue::new(),
            dir,
            devices: Vec::new(),
            conns: BTreeMap::new(),
            next_conn: 0,
            cut: Vec::new(),
            stats: BTreeMap::new(),
            bytes_by_kind: BTreeMap::new(),
            dirty: BTreeSet::new(),
            events_processed: 0,
        }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Virtual time, in microseconds.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// The random stream for the test's own decisions (topology, edits, timings).
    pub fn rng(&mut self) -> &mut SimRng {
        &mut self.rng
    }

    /// Events processed so far.
    pub fn events_processed(&self) -> u64 {
        self.events_processed
    }

    /// Events waiting in the queue.
    pub fn pending_events(&self) -> usize {
        self.queue.len()
    }

    // ---- devices ----

    /// Add a device with the shared app secret ([`DEFAULT_SECRET`]).
    ///
    /// # Panics
    /// If its store cannot be created.
    pub fn add_device(&mut self, name: &str, subscriptions: Vec<Subscription>) -> DeviceId {
        self.add_device_with_secret(name, subscriptions, DEFAULT_SECRET)
    }

    /// Add a device holding another app secret (it cannot complete a handshake with the others).
    ///
    /// # Panics
    /// If its store cannot be created or `secret` is empty.
    pub fn add_device_with_secret(&mut self, name: &str, subscriptions: Vec<Subscription>, secret: &[u8]) -> DeviceId {
        let id = self.devices.len();
        let path = self.dir.join(format!("{id}.db"));
        let options = Options { durability: Durability::Normal, ..Options::default() };
        let store = Store::open_with(&path, options).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        // The identity derives from the seed, so that everything the engines decide from keys is reproducible.
        let mut private = [0u8; 32];
        let mut sm = SimRng::stream(self.seed, 1 << 32 | id as u64);
        for chunk in private.chunks_mut(8) {
            chunk.copy_from_slice(&sm.next_u64().to_le_bytes());
        }
        let identity = Identity::from_private(&private).expect("a simulated identity");
        let secret = AppSecret::from_bytes(secret).expect("a non-empty app secret");
        let engine = Engine::new(store, identity.clone(), secret.clone(), name, subscriptions, 0);
        self.devices.push(SimDevice {
            name: name.to_string(),
            identity,
            secret,
            engine,
            links: BTreeMap::new(),
            events: Vec::new(),
        });
        id
    }

    /// Restart a device's app: its links drop (frames in flight are lost), its store is reopened from disk and a new
    /// engine (same identity, same subscriptions) starts; then the links it had come back, as when the device
    /// dials its neighbours again.
    ///
    /// # Panics
    /// If its store cannot be reopened.
    pub fn restart(&mut self, device: DeviceId) {
        let had: Vec<(u64, DeviceId, DeviceId, LinkParams)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.ends.contains(&device))
            .map(|(id, c)| (*id, c.ends[0], c.ends[1], c.params))
            .collect();
        for (c, ..) in &had {
            self.teardown(*c, "restarted");
        }
        self.drain_events(device);
        let dev = &mut self.devices[device];
        let path = dev.engine.store().path().to_path_buf();
        let options = Options { durability: Durability::Normal, ..Options::default() };
        let store = Store::open_with(&path, options).unwrap_or_else(|e| panic!("reopening {}: {e}", path.display()));
        let subscriptions = dev.engine.subscriptions().to_vec();
        // Presence sequence numbers must grow across restarts: start from the virtual clock, with room for 2^20
        // link changes per microsecond.
        let seq_base = (self.now + 1) << 20;
        let engine = Engine::new(store, dev.identity.clone(), dev.secret.clone(), &dev.name, subscriptions, seq_base);
        // The old engine (and its store) goes.
        dev.engine = engine;
        self.dirty.insert(device);
        for (_, a, b, params) in had {
            self.link(a, b, params);
        }
        self.settle();
    }

    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    pub fn name(&self, device: DeviceId) -> &str {
        &self.devices[device].name
    }

    pub fn device_key(&self, device: DeviceId) -> DeviceKey {
        self.devices[device].engine.device_key()
    }

    pub fn store(&self, device: DeviceId) -> &Store {
        self.devices[device].engine.store()
    }

    pub fn engine(&self, device: DeviceId) -> &Engine {
        &self.devices[device].engine
    }

    /// The engine, to change (subscriptions, attachments…). The device's links are offered a chance to send at the
    /// next step of the simulation.
    pub fn engine_mut(&mut self, device: DeviceId) -> &mut Engine {
        self.dirty.insert(device);
        &mut self.devices[device].engine
    }

    /// Change a device's subscriptions.
    pub fn set_subscriptions(&mut self, device: DeviceId, subscriptions: Vec<Subscription>) {
        self.devices[device].engine.set_subscriptions(subscriptions);
        self.dirty.insert(device);
        self.settle();
    }

    /// Edit a device's store (any writes through `f`); its links are then offered a chance to send.
    pub fn edit<R>(&mut self, device: DeviceId, f: impl FnOnce(&Store) -> R) -> R {
        let r = f(self.devices[device].engine.store());
        self.dirty.insert(device);
        self.settle();
        r
    }

    /// What the device's engine reported, with the virtual time, since the last call.
    pub fn take_events(&mut self, device: DeviceId) -> Vec<(u64, EngineEvent)> {
        self.drain_events(device);
        std::mem::take(&mut self.devices[device].events)
    }

    // ---- topology ----

    /// Connect `a` (dialling) and `b`. Returns false (and does nothing) if they are linked already over the same
    /// transport (`params.kind`); a pair may be linked over several transports at once.
    ///
    /// # Panics
    /// If `a == b`.
    pub fn link(&mut self, a: DeviceId, b: DeviceId, params: LinkParams) -> bool {
        if self.conn_over(a, b, params.kind).is_some() {
            return false;
        }
        self.dial(a, b, params);
        true
    }

    /// Open a link from `a` to `b` even if they are linked already — as when both dial each other at once: the
    /// engines then keep one link per pair and close the other (which the simulator then drops).
    ///
    /// # Panics
    /// If `a == b`.
    pub fn dial(&mut self, a: DeviceId, b: DeviceId, params: LinkParams) {
        assert_ne!(a, b, "a device cannot be linked to itself");
        let la = self.devices[a].engine.add_link(params.kind, true).expect("add_link");
        let lb = self.devices[b].engine.add_link(params.kind, false).expect("add_link");
        let id = self.next_conn;
        self.next_conn += 1;
        let pipes = [
            Pipe::new(SimRng::stream(self.seed, 2 << 32 | id << 1)),
            Pipe::new(SimRng::stream(self.seed, 2 << 32 | id << 1 | 1)),
        ];
        self.conns.insert(id, Conn { ends: [a, b], links: [la, lb], params, pipes });
        self.devices[a].links.insert(la, id);
        self.devices[b].links.insert(lb, id);
        self.dirty.insert(a);
        self.dirty.insert(b);
        self.settle();
    }

    /// Drop the links between `a` and `b`, over every transport (frames in flight are lost). Returns whether there
    /// was one.
    pub fn unlink(&mut self, a: DeviceId, b: DeviceId) -> bool {
        let mut any = false;
        while let Some(c) = self.conn_between(a, b) {
            self.teardown(c, "unlinked");
            any = true;
        }
        self.settle();
        any
    }

    /// Drop the link between `a` and `b` over `kind` only. Returns whether there was one.
    pub fn unlink_over(&mut self, a: DeviceId, b: DeviceId, kind: TransportKind) -> bool {
        match self.conn_over(a, b, kind) {
            Some(c) => {
                self.teardown(c, "unlinked");
                self.settle();
                true
            }
            None => false,
        }
    }

    pub fn is_linked(&self, a: DeviceId, b: DeviceId) -> bool {
        self.conn_between(a, b).is_some()
    }

    /// Every link (dialler first); a pair appears twice while both of its links are open.
    pub fn linked_pairs(&self) -> Vec<(DeviceId, DeviceId)> {
        self.conns.values().map(|c| (c.ends[0], c.ends[1])).collect()
    }

    /// The parameters of the link between `a` and `b`.
    pub fn link_params(&self, a: DeviceId, b: DeviceId) -> Option<LinkParams> {
        self.conn_between(a, b).map(|c| self.conns[&c].params)
    }

    fn conn_between(&self, a: DeviceId, b: DeviceId) -> Option<u64> {
        self.conns.iter().find(|(_, c)| c.ends == [a, b] || c.ends == [b, a]).map(|(id, _)| *id)
    }

    fn conn_over(&self, a: DeviceId, b: DeviceId, kind: TransportKind) -> Option<u64> {
        self.conns
            .iter()
            .find(|(_, c)| (c.ends == [a, b] || c.ends == [b, a]) && c.params.kind == kind)
            .map(|(id, _)| *id)
    }

    /// Cut every link between devices of different groups (a device in no group is alone in its own). The cut
    /// links are remembered and restored by [`SimWorld::heal`]. Returns how many were cut.
    pub fn partition<G: AsRef<[DeviceId]>>(&mut self, groups: &[G]) -> usize {
        let group_of = |d: DeviceId| groups.iter().position(|g| g.as_ref().contains(&d));
        let doomed: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                let (ga, gb) = (group_of(c.ends[0]), group_of(c.ends[1]));
                ga.is_none() || gb.is_none() || ga != gb
            })
            .map(|(id, _)| *id)
            .collect();
        for c in &doomed {
            let conn = &self.conns[c];
            self.cut.push((conn.ends[0], conn.ends[1], conn.params));
            self.teardown(*c, "partitioned");
        }
        self.settle();
        doomed.len()
    }

    /// Restore every link cut by [`SimWorld::partition`]. Returns how many were restored.
    pub fn heal(&mut self) -> usize {
        let mut n = 0;
        for (a, b, params) in std::mem::take(&mut self.cut) {
            n += self.link(a, b, params) as usize;
        }
        n
    }

    // ---- statistics ----

    /// Counters of the direction `from` → `to`, over every link they had since the last [`SimWorld::reset_stats`].
    pub fn stats(&self, from: DeviceId, to: DeviceId) -> DirStats {
        self.stats.get(&(from, to)).cloned().unwrap_or_default()
    }

    /// Counters of every direction added up (maxima: the largest).
    pub fn total_stats(&self) -> DirStats {
        let mut t = DirStats::default();
        for s in self.stats.values() {
            t.add(s);
        }
        t
    }

    /// Bytes sent `from` → `to` over links of `kind` since the last [`SimWorld::reset_stats`].
    pub fn bytes_sent_over(&self, from: DeviceId, to: DeviceId, kind: TransportKind) -> u64 {
        self.bytes_by_kind.get(&(from, to, kind)).copied().unwrap_or(0)
    }

    pub fn reset_stats(&mut self) {
        self.stats.clear();
        self.bytes_by_kind.clear();
    }

    // ---- running ----

    /// Run `f` at `now() + delay`.
    pub fn schedule(&mut self, delay: u64, f: impl FnOnce(&mut SimWorld) + 'static) {
        self.push(self.now + delay, Event::Call(Box::new(f)));
    }

    /// Offer every link of every device a chance to send (after changes made directly through [`SimWorld::store`]).
    pub fn pump_all(&mut self) {
        self.dirty.extend(0..self.devices.len());
        self.settle();
    }

    /// Process the next event. Returns false when there is none.
    pub fn step(&mut self) -> bool {
        self.settle();
        let Some((time, event)) = self.queue.pop() else { return false };
        debug_assert!(time >= self.now);
        self.now = self.now.max(time);
        self.events_processed += 1;
        match event {
            Event::Deliver { conn, dir, frame } => self.deliver(conn, dir, frame),
            Event::Wake { conn, dir } => self.pull(conn, dir),
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

    /// Run until nothing is left to do — no event queued and no engine with a frame to send — and return the time;
    /// give up after `max_duration` of virtual time.
    pub fn run_until_quiet(&mut self, max_duration: u64) -> Result<u64, NotQuiet> {
        let deadline = self.now.saturating_add(max_duration);
        self.pump_all();
        loop {
            match self.queue.next_time() {
                None => {
                    self.pump_all();
                    if self.queue.is_empty() {
                        return Ok(self.now);
                    }
                }
                Some(time) if time > deadline => {
                    self.now = deadline;
                    return Err(NotQuiet { now: self.now, why: format!("{} events pending", self.queue.len()) });
                }
                Some(_) => {
                    self.step();
                }
            }
        }
    }

    /// Run until `done(self)` holds (checked before and after every event) and return the time it first held; `None`
    /// if it still does not after `max_duration` or when nothing is left to happen.
    pub fn run_until(&mut self, mut done: impl FnMut(&SimWorld) -> bool, max_duration: u64) -> Option<u64> {
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
        None
    }

    // ---- internals ----

    fn push(&mut self, time: u64, event: Event) {
        self.queue.push(time, event);
    }

    fn stats_mut(&mut self, from: DeviceId, to: DeviceId) -> &mut DirStats {
        self.stats.entry((from, to)).or_default()
    }

    /// Offer the links of every dirty device a chance to send, until none is dirty.
    fn settle(&mut self) {
        while let Some(d) = self.dirty.pop_first() {
            self.pump_device(d);
        }
    }

    fn pump_device(&mut self, d: DeviceId) {
        // Links the engine closed are dropped, as a transport would.
        let closed: Vec<u64> = {
            let dev = &self.devices[d];
            dev.links.iter().filter(|(l, _)| dev.engine.is_closed(**l)).map(|(_, c)| *c).collect()
        };
        for c in closed {
            self.teardown(c, "closed by the engine");
        }
        let ready = self.devices[d].engine.links_with_frames();
        for link in ready {
            if let Some(&c) = self.devices[d].links.get(&link) {
                let dir = self.conns[&c].dir_from(d);
                self.pull(c, dir);
            }
        }
        self.drain_events(d);
    }

    fn drain_events(&mut self, d: DeviceId) {
        let now = self.now;
        let dev = &mut self.devices[d];
        while let Some(e) = dev.engine.poll_event() {
            dev.events.push((now, e));
        }
    }

    /// Take frames from the sender of `c`'s direction `dir` while its backlog has room.
    fn pull(&mut self, c: u64, dir: usize) {
        loop {
            let Some(conn) = self.conns.get_mut(&c) else { return };
            let (from, link) = (conn.ends[dir], conn.links[dir]);
            if !conn.pipes[dir].has_room(self.now) {
                break;
            }
            let engine = &mut self.devices[from].engine;
            let frame = if engine.is_closed(link) { None } else { engine.poll_frame(link) };
            match frame {
                Some(frame) => self.transmit(c, dir, frame),
                None => {
                    if self.devices[from].engine.is_closed(link) {
                        self.teardown(c, "closed by the engine");
                        return;
                    }
                    break;
                }
            }
        }
        self.observe_outstanding(c, dir);
    }

    /// Put a frame on the wire: packets, losses, retransmissions; schedule its delivery.
    fn transmit(&mut self, c: u64, dir: usize, frame: Vec<u8>) {
        let now = self.now;
        let Some(conn) = self.conns.get_mut(&c) else { return };
        let params = conn.params;
        let (from, to) = (conn.ends[dir], conn.ends[1 - dir]);
        let pipe = &mut conn.pipes[dir];
        let wire = frame.len() + HEADER_LEN;
        let Transmission { sent_at: t, deliver_at, packets, lost } = pipe.transmit(now, &params, wire);
        let (unsent, in_flight) = (pipe.unsent_bytes as u64, pipe.in_flight_bytes as u64);
        *self.bytes_by_kind.entry((from, to, params.kind)).or_default() += wire as u64;
        let s = self.stats_mut(from, to);
        s.frames_sent += 1;
        s.bytes_sent += wire as u64;
        s.packets += packets;
        s.packets_lost += lost;
        s.max_unsent_bytes = s.max_unsent_bytes.max(unsent);
        s.max_in_flight_bytes = s.max_in_flight_bytes.max(in_flight);
        self.push(t, Event::Wake { conn: c, dir });
        self.push(deliver_at, Event::Deliver { conn: c, dir, frame });
    }

    fn deliver(&mut self, c: u64, dir: usize, frame: Vec<u8>) {
        // A frame of a link dropped since is lost with it.
        let Some(conn) = self.conns.get_mut(&c) else { return };
        let wire = frame.len() + HEADER_LEN;
        conn.pipes[dir].delivered(wire);
        let (from, to, link) = (conn.ends[dir], conn.ends[1 - dir], conn.links[1 - dir]);
        let s = self.stats_mut(from, to);
        s.frames_delivered += 1;
        s.bytes_delivered += wire as u64;
        self.devices[to].engine.on_frame(link, &frame);
        // The receiver may have applied changes or learnt something: all its links may have something to send.
        self.dirty.insert(to);
        self.observe_outstanding(c, dir);
    }

    /// Record the change bytes the sender of `c`'s direction `dir` has outstanding.
    fn observe_outstanding(&mut self, c: u64, dir: usize) {
        let Some(conn) = self.conns.get(&c) else { return };
        let (from, to) = (conn.ends[dir], conn.ends[1 - dir]);
        let sent = self.devices[from].engine.link_stats(conn.links[dir]);
        let received = self.devices[to].engine.link_stats(conn.links[1 - dir]);
        if let (Some(SessionStats { change_bytes_sent, .. }), Some(SessionStats { change_bytes_received, .. })) =
            (sent, received)
        {
            let outstanding = change_bytes_sent.saturating_sub(change_bytes_received);
            let s = self.stats_mut(from, to);
            s.max_outstanding_change_bytes = s.max_outstanding_change_bytes.max(outstanding);
        }
    }

    /// Drop connection `c`: both engines are told, frames in flight are lost.
    fn teardown(&mut self, c: u64, reason: &str) {
        let Some(conn) = self.conns.remove(&c) else { return };
        // Frames of this connection still queued for delivery are skipped when their time comes.
        let mut dropped = [0u64; 2];
        for event in self.queue.iter() {
            if let Event::Deliver { conn, dir, .. } = event {
                if *conn == c {
                    dropped[*dir] += 1;
                }
            }
        }
        for (d, lost) in dropped.into_iter().enumerate() {
            let (device, link) = (conn.ends[d], conn.links[d]);
            if lost > 0 {
                self.stats_mut(device, conn.ends[1 - d]).frames_dropped += lost;
            }
            self.devices[device].links.remove(&link);
            self.devices[device].engine.remove_link(link, reason);
            self.dirty.insert(device);
        }
    }
}

impl Drop for SimWorld {
    fn drop(&mut self) {
        self.devices.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
