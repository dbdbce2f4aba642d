//! The BLE link protocol without a radio: two `BleLink`s back to back through a simulated packet pipe (random MTUs,
//! radio timing, frame sizes, stalled readers, loss and duplication), and phones running `BleLinks` in a small
//! simulated world (simultaneous dialling, app tags, backoff, timeouts, disconnections mid-frame).

use proptest::prelude::*;
use shoaldb::transport::ble::link::{
    BleLink, Channel, LinkConfig, LinkError, Role, TimeoutKind, ATT_MTU_MAX, ATT_MTU_MIN, HELLO_TIMEOUT_MS,
    IDLE_TIMEOUT_MS, PING_MS, RADIO_QUEUE,
};
use shoaldb::transport::ble::links::{BleConfig, BleEvent, BleLinks, LinkClosedReason, RadioCommand};
use shoaldb::transport::ble::packet::{Packet, KIND_DATA};
use shoaldb::transport::ble::{encode_service_data, AppTag, DeviceTag};
use shoaldb::transport::frame::{FrameError, MAX_FRAME_LEN};
use shoaldb::util::rng::SeededRng;
use std::collections::{BTreeMap, VecDeque};

const APP: AppTag = *b"shol";

/// `len` random bytes.
fn random_bytes(rng: &mut SeededRng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

// ---------------------------------------------------------------------------------------------------------------
// Two links back to back.

/// One end of the pipe: its link, the packets handed to its radio and not yet accepted, the bytes it has put on
/// the air (in order), the frames it still has to send, has sent, and has received.
struct End {
    link: BleLink,
    radio: VecDeque<Vec<u8>>,
    air: VecDeque<Vec<u8>>,
    air_stream: VecDeque<u8>,
    outbox: VecDeque<Vec<u8>>,
    pushed: Vec<Vec<u8>>,
    got: Vec<Vec<u8>>,
    paused_until: u64,
    mtu: u16,
}

impl End {
    fn new(role: Role, tag: DeviceTag, l2cap: bool, mtu: u16, window: u16, frames: Vec<Vec<u8>>) -> End {
        let channel = if l2cap { Channel::L2cap { mtu } } else { Channel::Gatt { att_mtu: mtu } };
        End {
            link: BleLink::with_config(role, channel, tag, APP, LinkConfig { window }, 0),
            radio: VecDeque::new(),
            air: VecDeque::new(),
            air_stream: VecDeque::new(),
            outbox: frames.into(),
            pushed: Vec::new(),
            got: Vec::new(),
            paused_until: 0,
            mtu,
        }
    }
}

fn both(ends: &mut [End; 2], i: usize) -> (&mut End, &mut End) {
    let (a, b) = ends.split_at_mut(1);
    if i == 0 {
        (&mut a[0], &mut b[0])
    } else {
        (&mut b[0], &mut a[0])
    }
}

fn frame_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        12 => 1usize..200,
        4 => 200usize..4_000,
        1 => 4_000usize..=MAX_FRAME_LEN,
        1 => Just(MAX_FRAME_LEN),
    ]
}

struct PairCase {
    l2cap: bool,
    mtus: [u16; 2],
    windows: [u16; 2],
    frames: [Vec<usize>; 2],
    seed: u64,
}

/// Runs two links back to back until every frame has arrived; checks the invariants at every step.
fn run_pair(case: &PairCase) -> Result<(), TestCaseError> {
    let mut rng = SeededRng::new(case.seed);
    let mut frames = [Vec::new(), Vec::new()];
    for (i, lens) in case.frames.iter().enumerate() {
        frames[i] = lens.iter().map(|&len| random_bytes(&mut rng, len)).collect::<Vec<_>>();
    }
    let [fa, fb] = frames;
    let mut ends = [
        End::new(Role::Central, [1; 8], case.l2cap, case.mtus[0], case.windows[0], fa),
        End::new(Role::Peripheral, [2; 8], case.l2cap, case.mtus[1], case.windows[1], fb),
    ];
    let mut now = 0u64;
    for _step in 0..5_000_000u64 {
        now += 1;
        for i in 0..2 {
            let (me, peer) = both(&mut ends, i);
            // The engine pushes frames while the link wants them.
            if rng.chance(0.9) {
                while me.link.wants_frame() {
                    let Some(frame) = me.outbox.pop_front() else { break };
                    me.link.push_frame(&frame).map_err(|e| TestCaseError::fail(format!("push: {e}")))?;
                    me.pushed.push(frame);
                }
            }
            // Packets go to the radio; the radio accepts them at random moments.
            while let Some(p) = me.link.poll_packet() {
                me.radio.push_back(p);
            }
            prop_assert!(me.radio.len() <= RADIO_QUEUE);
            let accept = rng.below(me.radio.len() as u64 + 1);
            for _ in 0..accept {
                if let Some(p) = me.radio.pop_front() {
                    me.link.on_sent();
                    if case.l2cap {
                        me.air_stream.extend(p);
                    } else {
                        me.air.push_back(p);
                    }
                }
            }
            // The air delivers in order, in random amounts (on L2CAP, in random pieces of the stream).
            if case.l2cap {
                let n = rng.below(me.air_stream.len() as u64 + 1) as usize;
                let piece: Vec<u8> = me.air_stream.drain(..n).collect();
                if !piece.is_empty() {
                    peer.link.on_packet(&piece, now).map_err(|e| TestCaseError::fail(format!("on_packet: {e}")))?;
                }
            } else {
                let n = rng.below(me.air.len() as u64 + 1);
                for _ in 0..n {
                    if let Some(p) = me.air.pop_front() {
                        prop_assert!(p.len() + 3 <= usize::from(me.mtu), "packet of {} bytes, MTU {}", p.len(), me.mtu);
                        peer.link.on_packet(&p, now).map_err(|e| TestCaseError::fail(format!("on_packet: {e}")))?;
                    }
                }
            }
            // The ATT MTU grows now and then (GATT).
            if !case.l2cap && rng.chance(0.002) && me.mtu < ATT_MTU_MAX {
                me.mtu = (me.mtu + 1 + rng.below(u64::from(ATT_MTU_MAX - me.mtu)) as u16).min(ATT_MTU_MAX);
                me.link.set_att_mtu(me.mtu);
            }
            // The app reads frames, except while it is paused.
            if now >= me.paused_until {
                if rng.chance(0.003) {
                    me.paused_until = now + rng.below(3_000);
                } else {
                    while let Some(frame) = me.link.poll_frame_in() {
                        me.got.push(frame);
                    }
                }
            }
            me.link.tick(now).map_err(|e| TestCaseError::fail(format!("tick: {e}")))?;
            // Invariants.
            prop_assert!(u32::from(me.link.in_flight()) <= me.link.send_allowance());
            if let Some(w) = me.link.peer_window() {
                prop_assert!(u32::from(me.link.in_flight()) <= u32::from(w), "in flight above the window");
            }
            prop_assert!(
                me.link.rx_buffered() <= me.link.rx_bound(),
                "receiver holds {} bytes, bound {}",
                me.link.rx_buffered(),
                me.link.rx_bound()
            );
            prop_assert!(me.got.len() <= peer.pushed.len());
            // Frames arrive intact and in order.
            if let Some(last) = me.got.len().checked_sub(1) {
                prop_assert!(me.got[last] == peer.pushed[last], "frame {last} corrupted");
            }
        }
        let done =
            ends.iter().all(|e| e.outbox.is_empty()) && ends[0].got == ends[1].pushed && ends[1].got == ends[0].pushed;
        if done {
            for e in &ends {
                let s = e.link.stats();
                prop_assert_eq!(s.frames_out as usize, e.pushed.len());
                prop_assert_eq!(s.frames_in as usize, e.got.len());
                prop_assert!(s.bytes_out >= s.data_bytes_out);
                prop_assert!(s.data_bytes_out >= s.frame_bytes_out);
            }
            return Ok(());
        }
    }
    Err(TestCaseError::fail(format!(
        "not done: sent {}/{} and {}/{}",
        ends[1].got.len(),
        ends[0].pushed.len(),
        ends[0].got.len(),
        ends[1].pushed.len()
    )))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn frames_arrive_intact_in_order_within_the_window_and_memory_bound(
        l2cap in prop::bool::weighted(0.25),
        mtu_a in ATT_MTU_MIN..=ATT_MTU_MAX,
        mtu_b in prop_oneof![Just(ATT_MTU_MIN), Just(185u16), ATT_MTU_MIN..=ATT_MTU_MAX],
        window_a in prop_oneof![Just(1u16), 1u16..8, 8u16..64],
        window_b in prop_oneof![Just(1u16), 1u16..8, 8u16..64],
        frames_a in proptest::collection::vec(frame_len(), 0..10),
        frames_b in proptest::collection::vec(frame_len(), 0..10),
        seed in any::<u64>(),
    ) {
        let (mtu_a, mtu_b) = if l2cap { (mtu_a.max(20) * 3, mtu_b.max(20)) } else { (mtu_a, mtu_b) };
        run_pair(&PairCase { l2cap, mtus: [mtu_a, mtu_b], windows: [window_a, window_b], frames: [frames_a, frames_b], seed })?;
    }
}

#[test]
fn a_stalled_reader_holds_a_window_and_the_sender_waits() {
    let mut a =
        BleLink::with_config(Role::Central, Channel::Gatt { att_mtu: 185 }, [1; 8], APP, LinkConfig { window: 8 }, 0);
    let mut b = BleLink::with_config(
        Role::Peripheral,
        Channel::Gatt { att_mtu: 185 },
        [2; 8],
        APP,
        LinkConfig { window: 8 },
        0,
    );
    shuttle(&mut a, &mut b, 0);
    // b never reads: a sends 8 packets and stops, however long it runs.
    let big: Vec<u8> = (0..MAX_FRAME_LEN).map(|i| (i % 253) as u8).collect();
    a.push_frame(&big).unwrap();
    for t in 1..200 {
        shuttle(&mut a, &mut b, t);
    }
    assert_eq!(a.in_flight(), 8);
    assert_eq!(b.stats().data_packets_in, 8);
    assert!(b.rx_buffered() <= 8 * 182, "{}", b.rx_buffered());
    // Once b reads, the frame completes.
    let mut got = None;
    for t in 200..10_000 {
        shuttle(&mut a, &mut b, t);
        if let Some(f) = b.poll_frame_in() {
            got = Some(f);
            break;
        }
    }
    assert_eq!(got.as_deref(), Some(&big[..]));
}

/// Moves every packet each way (the radio accepting at once), without reading frames.
fn shuttle(a: &mut BleLink, b: &mut BleLink, now: u64) {
    for _ in 0..4 {
        while let Some(p) = a.poll_packet() {
            a.on_sent();
            b.on_packet(&p, now).unwrap();
        }
        while let Some(p) = b.poll_packet() {
            b.on_sent();
            a.on_packet(&p, now).unwrap();
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Drop,
    Duplicate,
}

/// Sends `frames` from a to b over GATT, dropping or duplicating the `victim`-th Data packet; when no Data moves,
/// time passes (half a second at a time, up to 10 s: pings, the gap timeout). Returns what b delivered, b's
/// error and the Data packets a sent.
fn faulty_transfer(
    frames: &[Vec<u8>],
    mtu: u16,
    victim: usize,
    fault: Fault,
) -> (Vec<Vec<u8>>, Option<LinkError>, usize) {
    let mut a =
        BleLink::with_config(Role::Central, Channel::Gatt { att_mtu: mtu }, [1; 8], APP, LinkConfig { window: 4 }, 0);
    let mut b = BleLink::with_config(
        Role::Peripheral,
        Channel::Gatt { att_mtu: mtu },
        [2; 8],
        APP,
        LinkConfig { window: 4 },
        0,
    );
    shuttle(&mut a, &mut b, 0);
    let mut outbox: VecDeque<&Vec<u8>> = frames.iter().collect();
    let mut got = Vec::new();
    let mut data_seen = 0;
    let mut error = None;
    let mut now = 0;
    let mut idle_ms = 0;
    while idle_ms <= 10_000 {
        now += 1;
        while a.wants_frame() {
            let Some(f) = outbox.pop_front() else { break };
            a.push_frame(f).unwrap();
        }
        let mut moved = false;
        while let Some(p) = a.poll_packet() {
            a.on_sent();
            let copies = if p[0] == KIND_DATA {
                moved = true;
                data_seen += 1;
                match (data_seen - 1 == victim, fault) {
                    (true, Fault::Drop) => 0,
                    (true, Fault::Duplicate) => 2,
                    _ => 1,
                }
            } else {
                1
            };
            for _ in 0..copies {
                if let Err(e) = b.on_packet(&p, now) {
                    error.get_or_insert(e);
                }
            }
            while let Some(f) = b.poll_frame_in() {
                got.push(f);
            }
        }
        while let Some(p) = b.poll_packet() {
            b.on_sent();
            let _ = a.on_packet(&p, now);
        }
        if got.len() == frames.len() || error.is_some() {
            break;
        }
        if moved {
            idle_ms = 0;
        } else {
            now += 500;
            idle_ms += 500;
            let _ = a.tick(now);
            if let Err(e) = b.tick(now) {
                error.get_or_insert(e);
            }
        }
    }
    (got, error, data_seen)
}

#[test]
fn a_lost_packet_breaks_the_link_without_delivering_a_corrupt_frame() {
    let frames: Vec<Vec<u8>> = (1..=6u8).map(|n| vec![n; 50 * usize::from(n)]).collect();
    let (got, err, _) = faulty_transfer(&frames, 23, 5, Fault::Drop);
    // Packet 5 never comes: the later ones wait (GATT may reorder) until the gap timeout.
    assert_eq!(err, Some(LinkError::Lost { seq: 5 }));
    assert_eq!(got, frames[..got.len()].to_vec());
    assert!(got.len() < frames.len());

    let (got, err, _) = faulty_transfer(&frames, 23, 5, Fault::Duplicate);
    assert_eq!(err, Some(LinkError::OutOfSequence { expected: 6, got: 5 }));
    assert_eq!(got, frames[..got.len()].to_vec());
    assert!(got.len() < frames.len());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn loss_or_duplication_is_always_detected(
        lens in proptest::collection::vec(1usize..3_000, 1..8),
        mtu in ATT_MTU_MIN..=ATT_MTU_MAX,
        victim in any::<prop::sample::Index>(),
        duplicate in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let mut rng = SeededRng::new(seed);
        let frames: Vec<Vec<u8>> = lens.iter().map(|&l| random_bytes(&mut rng, l)).collect();
        let (_, clean_err, total) = faulty_transfer(&frames, mtu, usize::MAX, Fault::Drop);
        prop_assert_eq!(clean_err, None);
        let victim = victim.index(total);
        let fault = if duplicate { Fault::Duplicate } else { Fault::Drop };
        let (got, err, _) = faulty_transfer(&frames, mtu, victim, fault);
        // Whatever was delivered is a prefix of what was sent: never a corrupted frame.
        prop_assert!(got.len() <= frames.len());
        prop_assert_eq!(&got[..], &frames[..got.len()]);
        match fault {
            // Even the very last packet: the sender's Ping says it was sent.
            Fault::Drop => {
                prop_assert_eq!(err, Some(LinkError::Lost { seq: victim as u16 }));
                prop_assert!(got.len() < frames.len());
            }
            Fault::Duplicate => prop_assert!(matches!(err, Some(LinkError::OutOfSequence { .. })), "{:?}", err),
        }
    }
}

#[test]
fn a_new_link_after_an_abrupt_disconnect_mid_frame_is_clean() {
    let mut a = BleLink::new(Role::Central, Channel::Gatt { att_mtu: 23 }, [1; 8], APP, 0);
    let mut b = BleLink::new(Role::Peripheral, Channel::Gatt { att_mtu: 23 }, [2; 8], APP, 0);
    shuttle(&mut a, &mut b, 0);
    a.push_frame(&vec![7u8; 10_000]).unwrap();
    // Half the packets get through, then the connection is gone.
    for _ in 0..100 {
        if let Some(p) = a.poll_packet() {
            a.on_sent();
            b.on_packet(&p, 1).unwrap();
            assert_eq!(b.poll_frame_in(), None);
        }
        if let Some(p) = b.poll_packet() {
            b.on_sent();
            a.on_packet(&p, 1).unwrap();
        }
    }
    assert!(b.rx_buffered() > 0);
    drop((a, b));
    // The next connection starts from scratch.
    let mut a = BleLink::new(Role::Central, Channel::Gatt { att_mtu: 23 }, [1; 8], APP, 2);
    let mut b = BleLink::new(Role::Peripheral, Channel::Gatt { att_mtu: 23 }, [2; 8], APP, 2);
    shuttle(&mut a, &mut b, 2);
    a.push_frame(b"fresh").unwrap();
    shuttle(&mut a, &mut b, 3);
    assert_eq!(b.poll_frame_in().as_deref(), Some(&b"fresh"[..]));
    assert_eq!(b.poll_frame_in(), None);
}

#[test]
fn data_packets_fill_the_negotiated_payload() {
    let mut a = BleLink::new(Role::Central, Channel::Gatt { att_mtu: 23 }, [1; 8], APP, 0);
    let mut b = BleLink::new(Role::Peripheral, Channel::Gatt { att_mtu: 185 }, [2; 8], APP, 0);
    shuttle(&mut a, &mut b, 0);
    a.push_frame(&[1u8; 1000]).unwrap();
    let p = a.poll_packet().unwrap();
    assert_eq!(p.len(), 20);
    a.set_att_mtu(185);
    let p = a.poll_packet().unwrap();
    assert_eq!(p.len(), 182);
    assert!(matches!(Packet::decode(&p).unwrap(), Packet::Data { seq: 1, .. }));
    assert_eq!(a.push_frame(&[]), Err(LinkError::InvalidFrame(FrameError::Empty)));
}

// ---------------------------------------------------------------------------------------------------------------
// Phones running BleLinks in a simulated world.

struct Phone {
    links: BleLinks,
    address: String,
    advertising: Option<Option<Vec<u8>>>,
    scanning: bool,
    /// Frames to send on whatever link comes up.
    outbox: VecDeque<Vec<u8>>,
    got: Vec<(u64, Vec<u8>)>,
    events: Vec<(u64, BleEvent)>,
    connects: Vec<(u64, String)>,
    disconnects: Vec<(u64, u64)>,
}

enum Action {
    ConnectDone { central: usize, address: String },
    Deliver { phone: usize, conn: u64, packet: Vec<u8> },
    Sent { phone: usize, conn: u64 },
    Disconnected { phone: usize, conn: u64 },
}

struct World {
    now: u64,
    phones: Vec<Phone>,
    /// Radio connections: a phone's conn id → (phone, peer phone, peer's conn id).
    conns: BTreeMap<u64, (usize, usize, u64)>,
    next_conn: u64,
    actions: BTreeMap<(u64, u64), Action>,
    seq: u64,
    rng: SeededRng,
    /// Whether phone i can see phone j's advertisements.
    visible: Vec<Vec<bool>>,
    refuse_connects: bool,
    drop_packets: bool,
    /// Which phones answer connections (a mute one never sends a packet).
    mute: Vec<bool>,
}

impl World {
    fn new(configs: Vec<BleConfig>, seed: u64) -> World {
        let n = configs.len();
        let phones = configs
            .into_iter()
            .enumerate()
            .map(|(i, cfg)| Phone {
                links: BleLinks::new(cfg, seed.wrapping_add(i as u64), 0),
                address: format!("phone-{i}"),
                advertising: None,
                scanning: false,
                outbox: VecDeque::new(),
                got: Vec::new(),
                events: Vec::new(),
                connects: Vec::new(),
                disconnects: Vec::new(),
            })
            .collect();
        World {
            now: 0,
            phones,
            conns: BTreeMap::new(),
            next_conn: 100,
            actions: BTreeMap::new(),
            seq: 0,
            rng: SeededRng::new(seed ^ 0x5555),
            visible: vec![vec![true; n]; n],
            refuse_connects: false,
            drop_packets: false,
            mute: vec![false; n],
        }
    }

    fn schedule(&mut self, delay: u64, action: Action) {
        self.seq += 1;
        self.actions.insert((self.now + delay, self.seq), action);
    }

    /// Runs every phone's commands, events and frames until nothing moves.
    fn settle(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..self.phones.len() {
                while let Some(cmd) = self.phones[i].links.poll_command() {
                    moved = true;
                    self.command(i, cmd);
                }
                while let Some(ev) = self.phones[i].links.poll_event() {
                    moved = true;
                    let now = self.now;
                    let phone = &mut self.phones[i];
                    if let BleEvent::Frame { conn, frame } = &ev {
                        phone.got.push((*conn, frame.clone()));
                    }
                    // This world has no sync engine: a link counts as authenticated once it is up.
                    if let BleEvent::LinkReady { conn, .. } = &ev {
                        phone.links.authenticated(*conn);
                    }
                    phone.events.push((now, ev));
                }
                for conn in self.phones[i].links.conns_wanting_frames() {
                    let phone = &mut self.phones[i];
                    if let Some(frame) = phone.outbox.pop_front() {
                        phone.links.push_frame(conn, &frame).unwrap();
                        moved = true;
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn command(&mut self, i: usize, cmd: RadioCommand) {
        match cmd {
            RadioCommand::StartAdvertising { service_data } => {
                self.phones[i].advertising = Some(if service_data.is_empty() { None } else { Some(service_data) });
            }
            RadioCommand::StartScanning => self.phones[i].scanning = true,
            RadioCommand::Connect { address } => {
                self.phones[i].connects.push((self.now, address.clone()));
                let delay = 20 + self.rng.below(60);
                self.schedule(delay, Action::ConnectDone { central: i, address });
            }
            RadioCommand::CancelConnect { .. } => {}
            RadioCommand::Disconnect { conn } => {
                self.phones[i].disconnects.push((self.now, conn));
                self.drop_conn(conn);
            }
            RadioCommand::Send { conn, packet } => {
                let delay = 5 + self.rng.below(10);
                self.schedule(delay, Action::Sent { phone: i, conn });
                if let Some(&(_, peer, peer_conn)) = self.conns.get(&conn) {
                    if !self.drop_packets && !self.mute[i] {
                        // In order: deliveries of one connection never overtake each other.
                        self.schedule(15, Action::Deliver { phone: peer, conn: peer_conn, packet });
                    }
                }
            }
        }
    }

    /// The radio connection `conn` ends (both sides are told).
    fn drop_conn(&mut self, conn: u64) {
        if let Some((phone, peer, peer_conn)) = self.conns.remove(&conn) {
            self.conns.remove(&peer_conn);
            self.schedule(10, Action::Disconnected { phone, conn });
            self.schedule(10, Action::Disconnected { phone: peer, conn: peer_conn });
        }
    }

    fn act(&mut self, action: Action) {
        let now = self.now;
        match action {
            Action::ConnectDone { central, address } => {
                let target = self.phones.iter().position(|p| p.address == address);
                match target {
                    Some(p) if !self.refuse_connects => {
                        let (c, pc) = (self.next_conn, self.next_conn + 1);
                        self.next_conn += 2;
                        self.conns.insert(c, (central, p, pc));
                        self.conns.insert(pc, (p, central, c));
                        let channel = Channel::Gatt { att_mtu: 23 };
                        let central_addr = format!("{}-as-central", self.phones[central].address);
                        self.phones[central].links.on_connected(now, c, &address, Role::Central, channel);
                        self.phones[p].links.on_connected(now, pc, &central_addr, Role::Peripheral, channel);
                        self.phones[central].links.on_mtu(c, 185);
                        self.phones[p].links.on_mtu(pc, 185);
                    }
                    _ => self.phones[central].links.on_connect_failed(now, &address),
                }
            }
            Action::Deliver { phone, conn, packet } => {
                if self.conns.contains_key(&conn) {
                    self.phones[phone].links.on_packet(now, conn, &packet);
                }
            }
            Action::Sent { phone, conn } => self.phones[phone].links.on_sent(conn),
            Action::Disconnected { phone, conn } => self.phones[phone].links.on_disconnected(now, conn),
        }
    }

    /// Advances the clock by 5 ms steps until `until` or `stop` holds.
    fn run(&mut self, until: u64, stop: impl Fn(&World) -> bool) -> bool {
        loop {
            self.settle();
            if stop(self) {
                return true;
            }
            if self.now >= until {
                return false;
            }
            self.now += 5;
            while let Some(entry) = self.actions.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let action = entry.remove();
                self.act(action);
                self.settle();
            }
            if self.now % 100 == 0 {
                for p in &mut self.phones {
                    p.links.tick(self.now);
                }
            }
            if self.now % 200 == 0 {
                for i in 0..self.phones.len() {
                    for j in 0..self.phones.len() {
                        if i == j || !self.phones[i].scanning || !self.visible[i][j] {
                            continue;
                        }
                        if let Some(data) = self.phones[j].advertising.clone() {
                            let address = self.phones[j].address.clone();
                            self.phones[i].links.on_discovered(self.now, &address, data.as_deref());
                        }
                    }
                }
            }
        }
    }

    /// The links phone i has announced and not closed.
    fn linked(&self, i: usize) -> Vec<(u64, DeviceTag)> {
        self.phones[i].links.linked()
    }

    fn peer_conn(&self, conn: u64) -> Option<u64> {
        self.conns.get(&conn).map(|c| c.2)
    }
}

fn config(tag: u8, advertise_tag: bool) -> BleConfig {
    let mut cfg = BleConfig::new([tag; 8], APP);
    cfg.advertise_tag = advertise_tag;
    cfg
}

fn one_link_each(w: &World) -> bool {
    w.linked(0).len() == 1 && w.linked(1).len() == 1 && w.phones.iter().all(|p| p.links.connection_count() == 1)
}

#[test]
fn simultaneous_dialling_ends_with_one_link_on_both_sides() {
    for seed in 0..30u64 {
        // Neither phone advertises its tag (like two iPhones): both dial at once.
        let mut w = World::new(vec![config(0x20, false), config(0x10, false)], seed);
        assert!(w.run(10_000, one_link_each), "seed {seed}: no single link");
        // Let any late duplicate settle too.
        w.run(w.now + 3_000, |_| false);
        assert!(one_link_each(&w), "seed {seed}");
        assert_eq!(
            w.phones[0].connects.len(),
            1,
            "seed {seed}: phone 0 dialled {:?} {:?} {:?} {:?} {:?}",
            w.phones[0].connects,
            w.phones[0].events,
            w.phones[1].events,
            w.phones[0].disconnects,
            w.phones[1].disconnects
        );
        assert_eq!(w.phones[1].connects.len(), 1, "seed {seed}: phone 1 dialled");
        let (a_conn, a_peer) = w.linked(0)[0];
        let (b_conn, b_peer) = w.linked(1)[0];
        assert_eq!(a_peer, [0x10; 8]);
        assert_eq!(b_peer, [0x20; 8]);
        // Both kept the same radio connection: the one whose central has the smaller tag (phone 1).
        assert_eq!(w.peer_conn(a_conn), Some(b_conn), "seed {seed}");
        assert_eq!(w.phones[1].links.link(b_conn).unwrap().role(), Role::Central);
        let ready: Vec<_> = w.phones[1]
            .events
            .iter()
            .filter(|(_, e)| matches!(e, BleEvent::LinkReady { .. }))
            .map(|(_, e)| e.clone())
            .collect();
        assert!(ready.contains(&BleEvent::LinkReady { conn: b_conn, initiator: true, peer_tag: [0x20; 8] }));
        // And frames flow on it.
        w.phones[0].outbox.push_back(b"over the kept link".to_vec());
        assert!(w.run(w.now + 2_000, |w| !w.phones[1].got.is_empty()));
        assert_eq!(w.phones[1].got, vec![(b_conn, b"over the kept link".to_vec())]);
    }
}

#[test]
fn only_the_smaller_tag_dials_when_both_tags_are_advertised() {
    let mut w = World::new(vec![config(0x20, true), config(0x10, true)], 1);
    assert!(w.run(10_000, one_link_each));
    w.run(w.now + 5_000, |_| false);
    assert!(one_link_each(&w));
    assert!(w.phones[0].connects.is_empty(), "the larger tag did not dial");
    assert_eq!(w.phones[1].connects.len(), 1);
    assert_eq!(w.phones[1].connects[0].1, "phone-0");

    // When the smaller tag cannot see the larger, the larger dials after the grace period.
    let mut w = World::new(vec![config(0x20, true), config(0x10, true)], 2);
    w.visible[1][0] = false;
    assert!(w.run(10_000, one_link_each));
    assert!(w.phones[1].connects.is_empty());
    let (at, _) = w.phones[0].connects[0];
    assert!((3_000..3_500).contains(&at), "dialled at {at}");

    // A phone that cannot advertise its tag (iOS) waits for the one that can, even with the smaller tag.
    let mut w = World::new(vec![config(0x20, true), config(0x10, false)], 3);
    assert!(w.run(10_000, one_link_each));
    w.run(w.now + 5_000, |_| false);
    assert!(w.phones[1].connects.is_empty());
    assert_eq!(w.phones[0].connects.len(), 1);
    assert!(w.phones[0].connects[0].0 < 1_000);
}

#[test]
fn a_wrong_app_tag_is_refused() {
    let mut other = config(0x30, true);
    other.app_tag = *b"othr";
    // Advertised: never dialled.
    let mut w = World::new(vec![config(0x10, true), other.clone()], 4);
    w.run(20_000, |_| false);
    assert!(w.phones.iter().all(|p| p.connects.is_empty()));
    assert!(w.linked(0).is_empty() && w.linked(1).is_empty());

    // Not advertised (iOS): dialled once, refused at the Hello, never dialled again.
    other.advertise_tag = false;
    let mut w = World::new(vec![config(0x10, true), other], 5);
    w.run(60_000, |_| false);
    assert_eq!(w.phones[0].connects.len(), 1, "{:?} {:?}", w.phones[0].connects, w.phones[0].events);
    assert!(w.phones[1].connects.is_empty(), "the other app ignores our advertisement");
    assert!(w.phones.iter().all(|p| p.events.iter().all(|(_, e)| !matches!(e, BleEvent::LinkReady { .. }))));
    assert!(!w.phones[0].disconnects.is_empty() || !w.phones[1].disconnects.is_empty());
    assert!(w.phones.iter().all(|p| p.links.connection_count() == 0));
}

/// Links two phones, drops the connection, refuses the next three attempts; returns phone 1's dial times after
/// the drop.
fn reconnect_times(seed: u64) -> (u64, Vec<u64>) {
    let mut w = World::new(vec![config(0x20, true), config(0x10, true)], seed);
    assert!(w.run(10_000, one_link_each));
    let conn = w.linked(1)[0].0;
    let dropped = w.now;
    w.refuse_connects = true;
    w.drop_conn(conn);
    assert!(w.run(dropped + 60_000, |w| w.phones[1].connects.len() >= 5));
    w.refuse_connects = false;
    assert!(w.run(w.now + 60_000, one_link_each));
    let times = w.phones[1].connects.iter().skip(1).map(|(t, _)| *t).collect();
    // The link came back, with LinkClosed then LinkReady on both sides.
    for p in &w.phones {
        let closed = p
            .events
            .iter()
            .filter(|(_, e)| matches!(e, BleEvent::LinkClosed { reason: LinkClosedReason::Disconnected, .. }))
            .count();
        let ready = p.events.iter().filter(|(_, e)| matches!(e, BleEvent::LinkReady { .. })).count();
        assert_eq!((closed, ready), (1, 2));
    }
    (dropped, times)
}

#[test]
fn reconnection_backs_off_deterministically() {
    let (dropped, times) = reconnect_times(7);
    assert!(times.len() >= 4, "{times:?}");
    // First retry after about a second (±25%, plus the tick and the disconnection report), then doubling.
    let gaps: Vec<u64> = std::iter::once(times[0] - dropped).chain(times.windows(2).map(|w| w[1] - w[0])).collect();
    for (gap, base) in gaps.iter().zip([1_000u64, 2_000, 4_000, 8_000]) {
        assert!(*gap >= base * 3 / 4 && *gap <= base * 5 / 4 + 300, "gaps {gaps:?}");
    }
    // The same seed gives the same schedule; another seed another one.
    assert_eq!(reconnect_times(7), (dropped, times.clone()));
    assert_ne!(reconnect_times(8).1, times);
}

#[test]
fn phones_meeting_again_link_at_once_whatever_the_backoff() {
    let mut w = World::new(vec![config(0x20, true), config(0x10, true)], 11);
    assert!(w.run(10_000, one_link_each));
    let conn = w.linked(1)[0].0;
    // They walk apart: the connection drops, each stops seeing the other, attempts fail and the backoff grows.
    let apart = w.now;
    w.refuse_connects = true;
    w.visible = vec![vec![false; 2]; 2];
    w.drop_conn(conn);
    let before = w.phones[1].connects.len();
    w.run(apart + 40_000, |_| false);
    let attempts = w.phones[1].connects.len() - before;
    assert!(attempts >= 4, "the backoff grew ({attempts} attempts)");
    // They meet again: linked within a scan period or two, not when the next backed-off attempt comes.
    let back = w.now;
    w.refuse_connects = false;
    w.visible = vec![vec![true; 2]; 2];
    assert!(w.run(back + 3_000, one_link_each), "not linked again within 3 s");
}

#[test]
fn silent_links_time_out() {
    let mut w = World::new(vec![config(0x20, true), config(0x10, true)], 9);
    assert!(w.run(10_000, one_link_each));
    let (conn, _) = w.linked(1)[0];
    // The radio stays connected but nothing gets through any more.
    w.drop_packets = true;
    let silent = w.now;
    assert!(w.run(silent + IDLE_TIMEOUT_MS + 2_000, |w| w.linked(0).is_empty() && w.linked(1).is_empty()));
    // Whichever phone noticed first closed on the idle timeout (the other may have seen the disconnection
    // first), between one ping period and one tick of IDLE_TIMEOUT_MS after the silence began.
    let (phone, closed_at) = (0..2)
        .flat_map(|i| w.phones[i].events.iter().map(move |ev| (i, ev)))
        .find_map(|(i, (t, e))| match e {
            BleEvent::LinkClosed { reason: LinkClosedReason::Error(LinkError::Timeout(TimeoutKind::Idle)), .. } => {
                Some((i, *t))
            }
            _ => None,
        })
        .expect("an idle timeout");
    assert!(
        closed_at + PING_MS + 200 >= silent + IDLE_TIMEOUT_MS && closed_at <= silent + IDLE_TIMEOUT_MS + 200,
        "closed at {closed_at}, silent since {silent}"
    );
    // The radio connection is torn down (by the central at once, or by the peripheral after the linger time).
    w.run(w.now + 1_500, |_| false);
    assert!(!w.conns.contains_key(&conn), "phone {phone} timed out but the connection is still up");

    // A peer that never says Hello is dropped after the hello timeout, never announced.
    let mut w = World::new(vec![config(0x20, true), config(0x10, true)], 10);
    w.mute[0] = true;
    w.run(HELLO_TIMEOUT_MS + 1_000, |_| false);
    assert!(w.phones[1].events.is_empty());
    let (t, _) = w.phones[1].disconnects[0];
    assert!((HELLO_TIMEOUT_MS..=HELLO_TIMEOUT_MS + 500).contains(&t), "{t}");
}

#[test]
fn a_disconnection_mid_frame_leaves_nothing_behind() {
    let mut w = World::new(vec![config(0x20, true), config(0x10, true)], 11);
    assert!(w.run(10_000, one_link_each));
    let big = vec![0xAB; 40_000];
    w.phones[1].outbox.push_back(big);
    let conn = w.linked(1)[0].0;
    // Some of the frame gets across, not all.
    assert!(w.run(w.now + 10_000, |w| w.phones[0].links.link(w.linked(0)[0].0).unwrap().stats().data_bytes_in > 5_000));
    assert!(w.phones[0].got.is_empty());
    w.drop_conn(conn);
    assert!(w.run(w.now + 10_000, |w| w.linked(0).is_empty() && w.linked(1).is_empty()));
    assert!(w.run(w.now + 10_000, one_link_each));
    w.phones[1].outbox.extend([b"fresh one".to_vec(), vec![3; 3_000]]);
    w.phones[0].outbox.push_back(b"and back".to_vec());
    assert!(w.run(w.now + 20_000, |w| w.phones[0].got.len() == 2 && w.phones[1].got.len() == 1));
    let new_conn = w.linked(0)[0].0;
    assert_eq!(w.phones[0].got, vec![(new_conn, b"fresh one".to_vec()), (new_conn, vec![3; 3_000])]);
    assert_eq!(w.phones[1].got[0].1, b"and back".to_vec());
}

#[test]
fn the_link_cap_is_respected() {
    let mut hub = config(0x01, true);
    hub.max_links = 2;
    let mut configs = vec![hub];
    configs.extend((2..=5u8).map(|t| config(t, true)));
    let mut w = World::new(configs, 12);
    // The four others see only the hub (and the hub sees them all).
    for i in 1..5 {
        for j in 1..5 {
            w.visible[i][j] = false;
        }
    }
    for _ in 0..30 {
        w.run(w.now + 1_000, |_| false);
        assert!(w.linked(0).len() <= 2);
    }
    assert_eq!(w.linked(0).len(), 2);
    assert_eq!(w.phones[0].connects.len(), 2, "the hub stops dialling at its cap");
    // The others dialled the hub after the grace period and were turned away.
    let linked_peers = (1..5).filter(|&i| !w.linked(i).is_empty()).count();
    assert_eq!(linked_peers, 2);
    let turned_away = (1..5).filter(|&i| !w.phones[i].connects.is_empty()).count();
    assert_eq!(turned_away, 2);
}

#[test]
fn service_data_of_other_lengths_is_treated_as_unknown() {
    let mut l = BleLinks::new(BleConfig::new([1; 8], APP), 0, 0);
    while l.poll_command().is_some() {}
    l.on_discovered(0, "x", Some(&[1, 2, 3]));
    assert_eq!(l.poll_command(), Some(RadioCommand::Connect { address: "x".into() }));
    l.on_discovered(0, "y", Some(&encode_service_data(&[9; 8], &APP)));
    assert_eq!(l.poll_command(), Some(RadioCommand::Connect { address: "y".into() }));
    assert!(l.is_connecting("x") && l.is_connecting("y"));
    // Two attempts at most at once.
    l.on_discovered(0, "z", None);
    assert_eq!(l.poll_command(), None);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever arrives, a link never panics, never holds more than its bound, and stays failed once failed.
    #[test]
    fn arbitrary_input_never_panics(
        l2cap in any::<bool>(),
        packets in proptest::collection::vec(
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..600),
                (any::<u16>(), proptest::collection::vec(any::<u8>(), 1..300))
                    .prop_map(|(seq, p)| Packet::Data { seq: seq % 4, payload: &p }.to_vec()),
                (1u16..4, 20u16..600).prop_map(|(window, max_packet)| Packet::Hello {
                    version: 1, tag: [2; 8], app_tag: APP, window, max_packet
                }.to_vec()),
                (any::<u16>(), any::<u16>()).prop_map(|(ack, grant)| Packet::Credit { ack, grant }.to_vec()),
            ],
            0..40,
        ),
    ) {
        let channel = if l2cap { Channel::L2cap { mtu: 512 } } else { Channel::Gatt { att_mtu: 185 } };
        let mut link = BleLink::with_config(Role::Peripheral, channel, [1; 8], APP, LinkConfig { window: 3 }, 0);
        let _ = link.push_frame(b"x");
        let mut failed: Option<LinkError> = None;
        for (t, p) in packets.iter().enumerate() {
            let r = link.on_packet(p, t as u64);
            if let Some(f) = &failed {
                prop_assert_eq!(&r, &Err(f.clone()));
            } else if let Err(e) = r {
                failed = Some(e);
            }
            while let Some(out) = link.poll_packet() {
                prop_assert!(!out.is_empty() && out.len() <= 2050);
                link.on_sent();
            }
            if t % 3 == 0 {
                while let Some(frame) = link.poll_frame_in() {
                    prop_assert!(!frame.is_empty() && frame.len() <= MAX_FRAME_LEN);
                }
            }
            prop_assert!(link.rx_buffered() <= link.rx_bound());
            let _ = link.tick(t as u64);
        }
    }

    /// Random radio events in any order never make `BleLinks` panic or keep more connections than reported.
    #[test]
    fn arbitrary_radio_events_never_panic(events in proptest::collection::vec((0u8..9, 0u64..6, any::<u16>(), proptest::collection::vec(any::<u8>(), 0..40)), 0..200)) {
        let mut cfg = BleConfig::new([1; 8], APP);
        cfg.max_links = 3;
        let mut l = BleLinks::new(cfg, 1, 0);
        let mut now = 0;
        let mut open = std::collections::BTreeSet::new();
        for (kind, conn, x, bytes) in events {
            now += u64::from(x % 2_000);
            let address = format!("a{}", conn % 4);
            match kind {
                0 => l.on_discovered(now, &address, if x % 2 == 0 { None } else { Some(&bytes) }),
                1 => {
                    let role = if x % 2 == 0 { Role::Central } else { Role::Peripheral };
                    l.on_connected(now, conn, &address, role, Channel::Gatt { att_mtu: x });
                    open.insert(conn);
                }
                2 => l.on_mtu(conn, x),
                3 => l.on_packet(now, conn, &bytes),
                4 => l.on_sent(conn),
                5 => { l.on_disconnected(now, conn); open.remove(&conn); }
                6 => l.on_connect_failed(now, &address),
                7 => { let _ = l.push_frame(conn, &bytes); l.close(conn % 3); }
                _ => l.tick(now),
            }
            while let Some(cmd) = l.poll_command() {
                if let RadioCommand::Disconnect { conn } = cmd {
                    open.remove(&conn);
                }
            }
            while l.poll_event().is_some() {}
            prop_assert!(l.connection_count() <= open.len());
        }
    }
}
