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
//! (bytes taken from the engine whose last packet has not left yet) is under [`BACKLOG_LIMIT`](super::pipe::BACKLOG_LIMIT), as a socket with a
//! small send buffer would, so the engine's own flow control (credit, [`crate::sync::WINDOW`]) is what bounds the
//! data in flight. After every delivered frame, every finished transmission and every edit, the device concerned
//! offers each of its links a chance to send.
//!
//! **Determinism — what is and is not reproducible.** All randomness of the simulator comes from the seed: the
//! test's own choices ([`SimWorld::rng`]), the device identities (derived from the seed, so the engines' key-based
//! choices are reproducible) and each link's loss pattern (one stream per link, derived from the seed and the
//! link's creation number, so "the n-th packet of the k-th link is lost" does not depend on anything else). Given
//! the same seed, a test that draws its decisions from [`SimWorld::rng`] produces the same topology changes,
//! partitions and edits at the same virtual times. Each [`Store`] draws its ids from its own stream of the seed and
//! reads the virtual clock, so a run repeats byte for byte: the same events at the same times, byte-identical
//! store files (convergence, which the simulation tests check, must hold whatever the seed).
//!
//! Stores live in a temporary directory removed when the world is dropped. The engines' keepalives and link
//! timeouts ([`Engine::tick`]) are not driven: simulated links only go down when the test says so.
//!
//! ```
//! use shoaldb::sim::{LinkParams, SimWorld, World, MILLISECOND, SECOND};
//! use shoaldb::sync::Subscription;
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
//! # Ok::<(), shoaldb::sim::NotQuiet>(())
//! ```

use super::device::Credentials;
use super::device::Device;
use super::driver::{QuietPoll, Timeline, World};
use super::pipe::{LinkParams, Pipe, Transmission};
use super::{StoreDir, DEFAULT_SECRET};
use crate::security::Grant;
use crate::sync::{LinkId, SessionStats, Subscription, TransportKind};
use crate::transport::frame::HEADER_LEN;
use crate::util::rng::SeededRng;
use std::collections::{BTreeMap, BTreeSet};

/// A device's index in its [`SimWorld`].
pub type DeviceId = usize;

/// Counters of one direction between two devices, summed over every link they had.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirStats {
    /// Frames taken from the sending engine.
    pub frames_sent: u64,
    /// Their bytes, with the 4-byte length prefix of each.
    pub bytes_sent: u64,
    /// Frames handed to the receiving engine (not those lost with a dropped link).
    pub frames_delivered: u64,
    /// Their bytes, counted like [`DirStats::bytes_sent`].
    pub bytes_delivered: u64,
    /// Packets put on the wire, retransmissions included.
    pub packets: u64,
    /// Of those, packets lost on the way (each one was sent again).
    pub packets_lost: u64,
    /// Frames lost because the link was dropped while they were in flight.
    pub frames_dropped: u64,
    /// The most unsent bytes the simulator held for this direction (bounded by about [`BACKLOG_LIMIT`](super::pipe::BACKLOG_LIMIT) plus one
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

/// What happens in a mesh.
pub enum Event {
    /// A frame reaches the other end of `conn`.
    Deliver {
        /// The simulator's number of the link.
        conn: u64,
        /// Its direction (0: from the end that dialled).
        dir: usize,
        /// The frame.
        frame: Vec<u8>,
    },
    /// A frame has left the sender of `conn`'s direction: room in the backlog.
    Wake {
        /// The simulator's number of the link.
        conn: u64,
        /// Its direction (0: from the end that dialled).
        dir: usize,
    },
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
    dev: Device,
    /// The engine's links and the connection of each.
    links: BTreeMap<LinkId, u64>,
}

/// A simulated mesh: devices, links, a virtual clock and an event queue. See the module documentation.
pub struct SimWorld {
    timeline: Timeline<SimWorld>,
    rng: SeededRng,
    devices: Vec<SimDevice>,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    /// Links cut by [`SimWorld::partition`], restored by [`SimWorld::heal`].
    cut: Vec<(DeviceId, DeviceId, LinkParams)>,
    stats: BTreeMap<(DeviceId, DeviceId), DirStats>,
    bytes_by_kind: BTreeMap<(DeviceId, DeviceId, TransportKind), u64>,
    /// Devices whose links must be offered a chance to send.
    dirty: BTreeSet<DeviceId>,
    /// Every frame delivered, in order (see [`SimWorld::wire_digest`]).
    wire: blake3::Hasher,
    /// Last: removed after the stores closed.
    dir: StoreDir,
}

impl SimWorld {
    /// An empty world whose every random choice derives from `seed`.
    ///
    /// # Panics
    /// If the temporary directory for the stores cannot be created.
    pub fn new(seed: u64) -> SimWorld {
        SimWorld {
            timeline: Timeline::new(seed),
            rng: SeededRng::stream(seed, 0),
            dir: StoreDir::new("sim", seed),
            devices: Vec::new(),
            conns: BTreeMap::new(),
            next_conn: 0,
            cut: Vec::new(),
            stats: BTreeMap::new(),
            bytes_by_kind: BTreeMap::new(),
            dirty: BTreeSet::new(),
            wire: blake3::Hasher::new(),
        }
    }

    /// The random stream for the test's own decisions (topology, edits, timings).
    pub fn rng(&mut self) -> &mut SeededRng {
        &mut self.rng
    }

    /// A hash of every frame delivered so far, in delivery order (with its link and direction): two runs with the
    /// same seed put the same bytes on the wire, encrypted handshakes included.
    pub fn wire_digest(&self) -> String {
        self.wire.finalize().to_hex().to_string()
    }

    /// Events waiting in the queue.
    pub fn pending_events(&self) -> usize {
        self.timeline.pending()
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
        self.add_device_with(name, subscriptions, &Credentials::Secret(secret.to_vec()))
    }

    /// Add a device enrolled by the world's app authority ([`World::authority`]) with `grants`: it links only
    /// with devices that present a valid certificate of that authority (see [`Credentials::Enrolled`]).
    ///
    /// # Panics
    /// If its store cannot be created or a grant is malformed.
    pub fn add_enrolled_device(
        &mut self,
        name: &str,
        subscriptions: Vec<Subscription>,
        grants: Vec<Grant>,
    ) -> DeviceId {
        let authority = self.authority();
        self.add_device_with(name, subscriptions, &Credentials::Enrolled { authority: Box::new(authority), grants })
    }

    /// Add a device that authenticates with `credentials`.
    ///
    /// # Panics
    /// If its store cannot be created or its credentials are malformed.
    pub fn add_device_with(
        &mut self,
        name: &str,
        subscriptions: Vec<Subscription>,
        credentials: &Credentials,
    ) -> DeviceId {
        let id = self.devices.len();
        let dev = Device::new(self.seed(), id, &self.dir, self.timeline.wall_clock(), name, subscriptions, credentials);
        self.devices.push(SimDevice { dev, links: BTreeMap::new() });
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
        let (seed, now, clock) = (self.seed(), self.now(), self.timeline.wall_clock());
        self.devices[device].dev.restart(seed, device, now, clock);
        self.dirty.insert(device);
        for (_, a, b, params) in had {
            self.link(a, b, params);
        }
        self.settle();
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
        let la = self.devices[a].dev.engine.add_link(params.kind, true).expect("add_link");
        let lb = self.devices[b].dev.engine.add_link(params.kind, false).expect("add_link");
        let id = self.next_conn;
        self.next_conn += 1;
        let pipes = [
            Pipe::new(SeededRng::stream(self.seed(), 2 << 32 | id << 1)),
            Pipe::new(SeededRng::stream(self.seed(), 2 << 32 | id << 1 | 1)),
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

    /// Whether `a` and `b` are linked now, over any transport.
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

    /// Zero every counter of [`SimWorld::stats`] and [`SimWorld::bytes_sent_over`].
    pub fn reset_stats(&mut self) {
        self.stats.clear();
        self.bytes_by_kind.clear();
    }

    // ---- running ----

    /// Offer every link of every device a chance to send (after changes made directly through [`SimWorld::store`]).
    pub fn pump_all(&mut self) {
        self.dirty.extend(0..self.devices.len());
        self.settle_devices();
    }

    // ---- internals ----

    fn push(&mut self, time: u64, event: Event) {
        self.timeline.push(time, event);
    }

    fn stats_mut(&mut self, from: DeviceId, to: DeviceId) -> &mut DirStats {
        self.stats.entry((from, to)).or_default()
    }

    /// Offer the links of every dirty device a chance to send, until none is dirty.
    fn settle_devices(&mut self) {
        while let Some(d) = self.dirty.pop_first() {
            self.pump_device(d);
        }
    }

    fn pump_device(&mut self, d: DeviceId) {
        // Links the engine closed are dropped, as a transport would.
        let closed: Vec<u64> = {
            let dev = &self.devices[d];
            dev.links.iter().filter(|(l, _)| dev.dev.engine.is_closed(**l)).map(|(_, c)| *c).collect()
        };
        for c in closed {
            self.teardown(c, "closed by the engine");
        }
        let ready = self.devices[d].dev.engine.links_with_frames();
        for link in ready {
            if let Some(&c) = self.devices[d].links.get(&link) {
                let dir = self.conns[&c].dir_from(d);
                self.pull(c, dir);
            }
        }
        self.drain_events(d);
    }

    fn drain_events(&mut self, d: DeviceId) {
        let now = self.now();
        self.devices[d].dev.drain_events(now);
    }

    /// Take frames from the sender of `c`'s direction `dir` while its backlog has room.
    fn pull(&mut self, c: u64, dir: usize) {
        let now = self.now();
        loop {
            let Some(conn) = self.conns.get_mut(&c) else { return };
            let (from, link) = (conn.ends[dir], conn.links[dir]);
            if !conn.pipes[dir].has_room(now) {
                break;
            }
            let engine = &mut self.devices[from].dev.engine;
            let frame = if engine.is_closed(link) { None } else { engine.poll_frame(link) };
            match frame {
                Some(frame) => self.transmit(c, dir, frame),
                None => {
                    if self.devices[from].dev.engine.is_closed(link) {
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
        let now = self.now();
        let Some(conn) = self.conns.get_mut(&c) else { return };
        let params = conn.params;
        let (from, to) = (conn.ends[dir], conn.ends[1 - dir]);
        let pipe = &mut conn.pipes[dir];
        let wire = frame.len() + HEADER_LEN;
        let Transmission { sent_at: t, deliver_at, packets, lost } = pipe.transmit(now, &params, wire);
        let (unsent, in_flight) = (pipe.unsent_bytes() as u64, pipe.in_flight_bytes() as u64);
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
        self.wire.update(&c.to_le_bytes()).update(&[dir as u8]).update(&frame);
        let s = self.stats_mut(from, to);
        s.frames_delivered += 1;
        s.bytes_delivered += wire as u64;
        self.devices[to].dev.engine.on_frame(link, &frame);
        // The receiver may have applied changes or learnt something: all its links may have something to send.
        self.dirty.insert(to);
        self.observe_outstanding(c, dir);
    }

    /// Record the change bytes the sender of `c`'s direction `dir` has outstanding.
    fn observe_outstanding(&mut self, c: u64, dir: usize) {
        let Some(conn) = self.conns.get(&c) else { return };
        let (from, to) = (conn.ends[dir], conn.ends[1 - dir]);
        let sent = self.devices[from].dev.engine.link_stats(conn.links[dir]);
        let received = self.devices[to].dev.engine.link_stats(conn.links[1 - dir]);
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
        for event in self.timeline.events() {
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
            self.devices[device].dev.engine.remove_link(link, reason);
            self.dirty.insert(device);
        }
    }
}

impl World for SimWorld {
    type Event = Event;
    const QUIET_POLL: QuietPoll = QuietPoll::EveryEvent;

    fn timeline(&self) -> &Timeline<SimWorld> {
        &self.timeline
    }

    fn timeline_mut(&mut self) -> &mut Timeline<SimWorld> {
        &mut self.timeline
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver { conn, dir, frame } => self.deliver(conn, dir, frame),
            Event::Wake { conn, dir } => self.pull(conn, dir),
        }
    }

    fn settle(&mut self) {
        self.settle_devices();
    }

    fn device_count(&self) -> usize {
        self.devices.len()
    }

    fn device(&self, id: DeviceId) -> &Device {
        &self.devices[id].dev
    }

    fn device_mut(&mut self, id: DeviceId) -> &mut Device {
        &mut self.devices[id].dev
    }

    fn touched(&mut self, id: DeviceId) {
        self.dirty.insert(id);
    }

    /// Quiet: no event queued and no engine with a frame to send (every device is offered a chance to send once
    /// the queue is empty).
    fn quiet_check(&mut self) -> Result<(), String> {
        if self.timeline.pending() == 0 {
            self.pump_all();
        }
        match self.timeline.pending() {
            0 => Ok(()),
            n => Err(format!("{n} events pending")),
        }
    }
}
