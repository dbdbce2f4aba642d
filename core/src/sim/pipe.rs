//! Simulated point-to-point links: [`LinkParams`] (latency, bandwidth, MTU, loss) and the pipe that carries one
//! direction of a link as an ordered stream with packets that may be lost and sent again. Used by the links of a
//! [`super::SimWorld`] and the LAN links of a [`super::RadioWorld`].

use super::driver::{MILLISECOND, SECOND};
use crate::sync::TransportKind;
use crate::util::rng::SeededRng;
use std::collections::VecDeque;

/// The simulator takes frames from an engine only while a link direction has fewer unsent bytes than this (the
/// send buffer of a socket).
pub const BACKLOG_LIMIT: usize = 64 << 10;

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

    /// [`LinkParams::LAN`].
    pub fn lan() -> LinkParams {
        LinkParams::LAN
    }

    /// [`LinkParams::BLE`].
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

/// One direction of a simulated connection (a [`super::SimWorld`] link, or a LAN link of a
/// [`super::RadioWorld`]): an ordered stream with a bandwidth, a latency, and packets that may be lost and
/// sent again.
pub(crate) struct Pipe {
    /// Loss decisions of this direction.
    rng: SeededRng,
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
    pub(crate) fn new(rng: SeededRng) -> Pipe {
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

    /// Bytes taken from the sender whose last packet has not left yet.
    pub(crate) fn unsent_bytes(&self) -> usize {
        self.unsent_bytes
    }

    /// Bytes taken from the sender and not yet delivered.
    pub(crate) fn in_flight_bytes(&self) -> usize {
        self.in_flight_bytes
    }
}
