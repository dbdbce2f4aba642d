//! One BLE link ([`BleLink`]): the sync engine's frames over a channel of small packets, sans-IO.
//!
//! ```text
//!   push_frame ─▶ [frame being cut | ≤ 1 frame waiting] ─▶ poll_packet ─▶ radio ─ ─ ─▶ on_packet
//!                                                          on_sent ◀── radio            │
//!   poll_frame_in ◀── FrameDecoder ◀── [≤ window Data packets] ◀──────────────────────────┘
//! ```
//!
//! # Sending
//! A frame pushed with [`BleLink::push_frame`] is given its 4-byte length prefix ([`encode_frame`]) and
//! appended to the outgoing byte stream, which [`BleLink::poll_packet`] cuts into Data packets as large as the
//! channel and the peer allow. The link takes a frame only when [`BleLink::wants_frame`]: while one frame is being
//! cut into packets, at most one more may wait. A packet is handed to the radio only while
//! * the peer's credit allows it (Data only): at most *window* (+ *grant*) Data packets beyond the last one the
//!   peer acknowledged, the window coming from the peer's Hello and the acknowledgements from its Credit packets;
//! * fewer than [`RADIO_QUEUE`] packets were handed to the radio and not yet confirmed by [`BleLink::on_sent`]
//!   (control packets — Hello, Credit, Ping, Pong, Close — bypass the credit but count here, and go first).
//!
//! # Receiving
//! [`BleLink::on_packet`] checks every packet: Data must come within the credit this side granted
//! ([`LinkError::CreditExceeded`]) and never twice ([`LinkError::OutOfSequence`]); the frame lengths in the stream
//! are checked as the bytes arrive in order ([`LinkError::BadFraming`]). The payloads wait in a queue until the
//! app asks for frames with [`BleLink::poll_frame_in`], which moves them through a [`FrameDecoder`]; once half the
//! window has been consumed this way, a Credit packet acknowledges them.
//!
//! # Order and loss
//! An L2CAP channel is one ordered stream: a Data packet out of sequence there is a
//! [`LinkError::OutOfSequence`] at once. GATT may reorder: with Enhanced ATT (several ATT bearers on one
//! connection — BlueZ's default, and iOS and Android where both sides support it) writes and notifications go
//! over whichever bearer is free. So on GATT a Data packet ahead of the next expected one waits (within the
//! window, so memory stays bounded) until the packets before it arrive, Data may come before the peer's Hello,
//! and a stale Credit or Ping is ignored. A packet that never comes is *lost* (the platform dropped it): the
//! receiver knows one is missing when a later Data packet, or a Ping — which carries the sender's next sequence
//! number — shows that it was sent; if it has not arrived [`GAP_TIMEOUT_MS`] later (at once on L2CAP), the link
//! fails with [`LinkError::Lost`] and the sync engine resumes on the next link (see the module docs of [`super`]
//! for why a link is not repaired). A sender stalled on credit pings every [`STALL_PING_MS`], so a lost tail is
//! noticed within seconds, not at the idle timeout.
//!
//! # Memory bound
//! The receive queue never holds more than *window* packets: the sender can only send that many beyond the last
//! acknowledgement, and this side acknowledges only what the app consumed. The frame decoder holds at most one
//! partial frame plus the payload of the last packet moved into it. So the input buffered by a link is below
//! [`BleLink::rx_bound`] = (window + 1) × max_packet + [`HEADER_LEN`] + [`MAX_FRAME_LEN`] bytes, whatever the
//! peer sends and however long the app stops reading (the sender stalls instead). On the sending side, a link
//! holds at most two frames. The control packets waiting to go out are at most one of each kind.
//!
//! # Keepalive and timeouts
//! [`BleLink::tick`] fails the link when the peer's Hello has not arrived within [`HELLO_TIMEOUT_MS`], nothing
//! has arrived for [`IDLE_TIMEOUT_MS`], or a missing Data packet has not come for [`GAP_TIMEOUT_MS`], and queues a
//! Ping when nothing was sent for [`PING_MS`] (answered by a Pong), so an idle but healthy link never times out.
//!
//! # Errors and closing
//! Any error from the peer's input fails the link for good: the error is returned again by every later
//! [`on_packet`](BleLink::on_packet) and [`tick`](BleLink::tick), nothing more is delivered or sent except a
//! Close packet telling the peer why (not after [`LinkError::ClosedByPeer`]), and the caller should disconnect.
//! [`BleLink::close`] ends a link from this side the same way.

use std::collections::{BTreeMap, VecDeque};

use log::{debug, info, trace};

use super::packet::{
    encode_record, CloseReason, Packet, PacketError, StreamDecoder, DATA_HEADER_LEN, KIND_DATA, MIN_PACKET,
    PROTOCOL_VERSION,
};
use super::{tag_hex, AppTag, DeviceTag};
use crate::transport::frame::{encode_frame, FrameDecoder, FrameError, HEADER_LEN, MAX_FRAME_LEN};

/// A link fails when the peer's Hello has not arrived this long after the link was created.
pub const HELLO_TIMEOUT_MS: u64 = 10_000;
/// A link fails when nothing at all has arrived for this long.
pub const IDLE_TIMEOUT_MS: u64 = 20_000;
/// A link sends a Ping when it has sent nothing for this long.
pub const PING_MS: u64 = 5_000;
/// A link waiting for credit with data to send pings this often (the Ping tells the peer how much was sent).
pub const STALL_PING_MS: u64 = 1_000;
/// On GATT, a Data packet known to have been sent (a later one, or a Ping, says so) that has not arrived this long
/// after it was due is lost, and the link fails.
pub const GAP_TIMEOUT_MS: u64 = 3_000;
/// At most this many packets are handed to the radio and not yet confirmed by [`BleLink::on_sent`].
pub const RADIO_QUEUE: usize = 4;
/// The receive window (in Data packets) a link announces unless configured otherwise.
pub const DEFAULT_WINDOW: u16 = 32;
/// The largest receive window a link announces (a larger configured window is reduced to this).
pub const MAX_WINDOW: u16 = 1024;
/// The smallest ATT MTU (the default before an MTU exchange).
pub const ATT_MTU_MIN: u16 = 23;
/// The largest ATT MTU.
pub const ATT_MTU_MAX: u16 = 517;
/// The ATT header of a write or notification: an ATT value is at most ATT_MTU − this.
pub const ATT_HEADER_LEN: u16 = 3;
/// The longest ATT attribute value (Core spec, Vol 3, Part F, 3.2.9): a GATT packet is never longer, whatever the
/// MTU (with ATT MTU 517, ATT_MTU − 3 would be 514; BlueZ's GATT server drops longer writes and cuts longer
/// notifications, Android refuses them).
pub const ATT_MAX_VALUE_LEN: u16 = 512;
/// The largest GATT packet a link accepts, announced in its Hello (so the largest any peer sends it): 2 bytes
/// under [`ATT_MAX_VALUE_LEN`], because BlueZ's GATT server (5.66) checks the whole write PDU, handle included,
/// against 512 and silently drops writes of 511 and 512 bytes.
pub const GATT_MAX_PACKET: u16 = ATT_MAX_VALUE_LEN - 2;
/// The largest packet on an L2CAP channel (sent or accepted).
pub const L2CAP_MAX_PACKET: u16 = 2048;
/// A sender never has more Data packets unacknowledged than this, whatever the peer grants, so that 16-bit
/// sequence numbers stay unambiguous.
const MAX_OUTSTANDING: u32 = 0x4000;

/// Which side of the BLE connection this device is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// This device connected to the peer (it dialled): it writes packets to the RX characteristic.
    Central,
    /// The peer connected to this device: it sends packets as notifications of the TX characteristic.
    Peripheral,
}

/// The channel a link's packets travel on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    /// GATT writes / notifications: one packet per ATT value, at most `att_mtu` − 3 bytes. `att_mtu` is the ATT
    /// MTU known when the link is created (23 before the MTU exchange; clamped to 23..=517).
    Gatt {
        /// The ATT MTU.
        att_mtu: u16,
    },
    /// An L2CAP connection-oriented channel, used as a byte stream of length-prefixed packets; `mtu` is the
    /// largest packet to send on it (e.g. Android's `getMaxTransmitPacketSize`; clamped to 20..=2048).
    L2cap {
        /// The largest packet to send.
        mtu: u16,
    },
}

/// Tunables of a [`BleLink`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkConfig {
    /// The receive window announced to the peer: how many Data packets this side buffers (1..=[`MAX_WINDOW`]).
    pub window: u16,
}

impl Default for LinkConfig {
    fn default() -> LinkConfig {
        LinkConfig { window: DEFAULT_WINDOW }
    }
}

/// Which timeout expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TimeoutKind {
    /// The peer's Hello did not arrive within [`HELLO_TIMEOUT_MS`].
    Hello,
    /// Nothing arrived for [`IDLE_TIMEOUT_MS`].
    Idle,
    /// The sync engine had not authenticated the peer (its handshake proves the app secret) within
    /// [`super::links::BleConfig::auth_timeout_ms`].
    Authentication,
}

impl std::fmt::Display for TimeoutKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TimeoutKind::Hello => write!(f, "no hello within {} ms", HELLO_TIMEOUT_MS),
            TimeoutKind::Idle => write!(f, "nothing received for {} ms", IDLE_TIMEOUT_MS),
            TimeoutKind::Authentication => f.write_str("not authenticated in time"),
        }
    }
}

/// Why a link failed, or why a call was refused.
///
/// [`LinkError::NotWanted`], [`LinkError::InvalidFrame`] and [`LinkError::UnknownConnection`] are the caller's
/// mistakes and leave the link as it was; every other error ends the link.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The peer sent a malformed packet.
    #[error("malformed packet: {0}")]
    Packet(#[from] PacketError),
    /// The peer sent a packet larger than this side announced it accepts.
    #[error("packet of {len} bytes exceeds the {max} bytes this side accepts")]
    PacketTooLarge {
        /// The packet's length.
        len: usize,
        /// The largest packet this side accepts.
        max: usize,
    },
    /// The peer's Hello carries another app tag.
    #[error("the peer belongs to another app (app tag {got:02x?})")]
    WrongApp {
        /// The peer's app tag.
        got: AppTag,
    },
    /// The peer's Hello carries this device's own tag.
    #[error("connected to this device itself")]
    SelfConnection,
    /// The peer sent a second Hello.
    #[error("second hello from the peer")]
    DuplicateHello,
    /// The peer sent something other than Hello or Close before its Hello.
    #[error("packet of kind {kind:#04x} before the peer's hello")]
    HelloExpected {
        /// The packet's kind byte.
        kind: u8,
    },
    /// A Data packet with an unexpected sequence number: repeated, or (on L2CAP) out of order.
    #[error("data packet {got} out of sequence (expected {expected}): a packet was lost or repeated")]
    OutOfSequence {
        /// The sequence number expected.
        expected: u16,
        /// The one received.
        got: u16,
    },
    /// Data packet `seq`, which the peer sent (a later one or its Ping says so), never arrived.
    #[error("data packet {seq} was lost")]
    Lost {
        /// The sequence number of the missing packet.
        seq: u16,
    },
    /// The peer sent more Data packets than this side granted.
    #[error("data packet {seq} exceeds the credit granted (window {window})")]
    CreditExceeded {
        /// The packet's sequence number.
        seq: u16,
        /// This side's window.
        window: u16,
    },
    /// The peer acknowledged a Data packet that was never sent (or went back on an acknowledgement).
    #[error("credit acknowledging data packet {ack}, which was not sent")]
    BadCredit {
        /// The sequence number acknowledged.
        ack: u16,
    },
    /// The frame lengths in the peer's byte stream are invalid.
    #[error("bad framing in the data stream: {0}")]
    BadFraming(FrameError),
    /// A timeout expired.
    #[error("timed out: {0}")]
    Timeout(TimeoutKind),
    /// The peer closed the link.
    #[error("closed by the peer: {0}")]
    ClosedByPeer(CloseReason),
    /// [`BleLink::push_frame`] was called while [`BleLink::wants_frame`] was false (the frame was not taken).
    #[error("the link does not take a frame now")]
    NotWanted,
    /// [`BleLink::push_frame`] was given an empty or too large frame (it was not taken).
    #[error("invalid frame: {0}")]
    InvalidFrame(FrameError),
    /// A connection id the caller named does not exist (see [`super::links::BleLinks`]).
    #[error("unknown connection {0}")]
    UnknownConnection(u64),
}

impl LinkError {
    /// The reason this side gives the peer in its Close packet when failing with this error.
    pub fn close_reason(&self) -> CloseReason {
        match self {
            LinkError::WrongApp { .. } => CloseReason::WrongApp,
            LinkError::SelfConnection => CloseReason::SelfConnection,
            LinkError::Timeout(_) => CloseReason::Timeout,
            LinkError::ClosedByPeer(reason) => *reason,
            _ => CloseReason::ProtocolError,
        }
    }
}

/// Traffic counters of a link. "Bytes" are what is handed to or received from the radio (packets, and on L2CAP
/// their length prefixes); "data bytes" are the payloads of Data packets (frames with their length prefixes);
/// "frame bytes" are the frames themselves. Goodput is frame bytes ÷ bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Packets handed to the radio.
    pub packets_out: u64,
    /// Bytes handed to the radio.
    pub bytes_out: u64,
    /// Data packets handed to the radio.
    pub data_packets_out: u64,
    /// Payload bytes of those Data packets.
    pub data_bytes_out: u64,
    /// Frames accepted by [`BleLink::push_frame`].
    pub frames_out: u64,
    /// Bytes of those frames (without length prefixes).
    pub frame_bytes_out: u64,
    /// Packets received (including any that failed the link).
    pub packets_in: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Data packets accepted.
    pub data_packets_in: u64,
    /// Payload bytes of those Data packets.
    pub data_bytes_in: u64,
    /// Data packets that arrived ahead of an earlier one (GATT: held until it came).
    pub data_packets_early: u64,
    /// Frames delivered by [`BleLink::poll_frame_in`].
    pub frames_in: u64,
    /// Bytes of those frames.
    pub frame_bytes_in: u64,
}

impl LinkStats {
    /// Frame bytes sent ÷ bytes handed to the radio (0 when nothing was sent).
    pub fn goodput_out(&self) -> f64 {
        ratio(self.frame_bytes_out, self.bytes_out)
    }

    /// Frame bytes delivered ÷ bytes received (0 when nothing was received).
    pub fn goodput_in(&self) -> f64 {
        ratio(self.frame_bytes_in, self.bytes_in)
    }
}

#[allow(clippy::cast_precision_loss)]
fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// What the peer's Hello told.
#[derive(Clone, Copy, Debug)]
struct PeerHello {
    tag: DeviceTag,
    window: u16,
    max_packet: u16,
}

/// Where a link is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Running (waiting for the peer's Hello, or ready).
    Open,
    /// Ending: a Close packet with this reason is the only thing left to send.
    Closing(CloseReason),
    /// Ended: nothing more is sent or delivered.
    Closed,
}

/// Checks the frame lengths of a byte stream as it arrives, without buffering it: the same rules as
/// [`FrameDecoder`], applied early so that a bad stream fails in [`BleLink::on_packet`].
#[derive(Debug, Default)]
struct FrameCheck {
    header: [u8; HEADER_LEN],
    header_len: usize,
    remaining: usize,
}

impl FrameCheck {
    fn feed(&mut self, mut bytes: &[u8]) -> Result<(), FrameError> {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let take = self.remaining.min(bytes.len());
                self.remaining -= take;
                bytes = bytes.get(take..).unwrap_or_default();
                continue;
            }
            let Some((&b, rest)) = bytes.split_first() else { break };
            bytes = rest;
            if let Some(slot) = self.header.get_mut(self.header_len) {
                *slot = b;
            }
            self.header_len += 1;
            if self.header_len == HEADER_LEN {
                self.header_len = 0;
                let len = usize::try_from(u32::from_be_bytes(self.header)).unwrap_or(usize::MAX);
                if len == 0 {
                    return Err(FrameError::Empty);
                }
                if len > MAX_FRAME_LEN {
                    return Err(FrameError::TooLarge { len, max: MAX_FRAME_LEN });
                }
                self.remaining = len;
            }
        }
        Ok(())
    }
}

/// One BLE link: frames in and out over a packet channel, with hello, credit flow control, keepalive and
/// timeouts (see the module docs). Sans-IO: the caller moves packets between it and the radio.
#[derive(Debug)]
pub struct BleLink {
    role: Role,
    channel: Channel,
    tag: DeviceTag,
    app_tag: AppTag,
    /// This side's receive window (packets).
    window: u16,
    /// The largest packet this side accepts.
    max_packet_in: u16,
    /// The latest time seen.
    now: u64,
    created: u64,
    last_rx: u64,
    last_tx: u64,
    state: State,
    failed: Option<LinkError>,
    hello_sent: bool,
    peer: Option<PeerHello>,
    credit_due: bool,
    pong_due: bool,
    ping_due: bool,
    /// Packets handed to the radio and not yet confirmed.
    radio_pending: usize,
    // Sending.
    /// The encoded frame being cut into packets, and how much of it has been.
    tx_cur: Vec<u8>,
    tx_pos: usize,
    /// At most one encoded frame waiting behind it.
    tx_next: Option<Vec<u8>>,
    /// The sequence number of the next Data packet.
    next_seq: u16,
    /// The last Data packet the peer acknowledged (`next_seq - 1` when all were).
    peer_ack: u16,
    /// The peer's latest grant beyond its window.
    peer_grant: u16,
    /// When a Data packet or a Ping last told the peer how many Data packets were sent.
    last_sent_told: u64,
    // Receiving.
    /// The sequence number expected next.
    rx_next: u16,
    /// GATT: Data packets that arrived ahead of `rx_next`, by sequence number (all within the window).
    rx_ahead: BTreeMap<u16, Vec<u8>>,
    /// How many Data packets from `rx_next` on the peer is known to have sent (0: none missing).
    rx_known_ahead: u16,
    /// Since when a Data packet known to be sent is missing (and no progress was made).
    gap_since: Option<u64>,
    /// The last Data packet consumed by the app.
    consumed: u16,
    /// The acknowledgement last sent to the peer.
    sent_ack: u16,
    rx_queue: VecDeque<Vec<u8>>,
    /// Bytes in `rx_queue` and `rx_ahead`.
    rx_queue_bytes: usize,
    rx_check: FrameCheck,
    decoder: FrameDecoder,
    /// Cuts the byte stream into packets on L2CAP.
    stream: Option<StreamDecoder>,
    stats: LinkStats,
}

impl BleLink {
    /// A link over `channel`, created at `now_ms`, with the default [`LinkConfig`]. Its first packet will be a
    /// Hello carrying `tag` and `app_tag`.
    pub fn new(role: Role, channel: Channel, tag: DeviceTag, app_tag: AppTag, now_ms: u64) -> BleLink {
        BleLink::with_config(role, channel, tag, app_tag, LinkConfig::default(), now_ms)
    }

    /// A link with explicit tunables (see [`BleLink::new`]).
    pub fn with_config(
        role: Role,
        channel: Channel,
        tag: DeviceTag,
        app_tag: AppTag,
        config: LinkConfig,
        now_ms: u64,
    ) -> BleLink {
        let channel = match channel {
            Channel::Gatt { att_mtu } => Channel::Gatt { att_mtu: att_mtu.clamp(ATT_MTU_MIN, ATT_MTU_MAX) },
            Channel::L2cap { mtu } => Channel::L2cap { mtu: mtu.clamp(MIN_PACKET, L2CAP_MAX_PACKET) },
        };
        let (max_packet_in, stream) = match channel {
            Channel::Gatt { .. } => (GATT_MAX_PACKET, None),
            Channel::L2cap { .. } => (L2CAP_MAX_PACKET, Some(StreamDecoder::new(usize::from(L2CAP_MAX_PACKET)))),
        };
        let window = config.window.clamp(1, MAX_WINDOW);
        debug!("ble link: new {role:?} link over {channel:?}, window {window}");
        BleLink {
            role,
            channel,
            tag,
            app_tag,
            window,
            max_packet_in,
            now: now_ms,
            created: now_ms,
            last_rx: now_ms,
            last_tx: now_ms,
            state: State::Open,
            failed: None,
            hello_sent: false,
            peer: None,
            credit_due: false,
            pong_due: false,
            ping_due: false,
            radio_pending: 0,
            tx_cur: Vec::new(),
            tx_pos: 0,
            tx_next: None,
            next_seq: 0,
            peer_ack: u16::MAX,
            peer_grant: 0,
            last_sent_told: now_ms,
            rx_next: 0,
            rx_ahead: BTreeMap::new(),
            rx_known_ahead: 0,
            gap_since: None,
            consumed: u16::MAX,
            sent_ack: u16::MAX,
            rx_queue: VecDeque::new(),
            rx_queue_bytes: 0,
            rx_check: FrameCheck::default(),
            decoder: FrameDecoder::new(),
            stream,
            stats: LinkStats::default(),
        }
    }

    /// This side's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The channel (with the current ATT MTU on GATT).
    pub fn channel(&self) -> Channel {
        self.channel
    }

    /// Whether packets may arrive out of order (GATT, see the module docs).
    fn reorders(&self) -> bool {
        matches!(self.channel, Channel::Gatt { .. })
    }

    /// Whether the peer's Hello has arrived and the link is open: frames can flow.
    pub fn is_ready(&self) -> bool {
        self.peer.is_some() && self.state == State::Open && self.failed.is_none()
    }

    /// The peer's device tag, once its Hello has arrived.
    pub fn peer_tag(&self) -> Option<DeviceTag> {
        self.peer.map(|p| p.tag)
    }

    /// The peer's receive window, once its Hello has arrived.
    pub fn peer_window(&self) -> Option<u16> {
        self.peer.map(|p| p.window)
    }

    /// This side's receive window.
    pub fn window(&self) -> u16 {
        self.window
    }

    /// The largest packet this side accepts (announced in its Hello).
    pub fn max_packet_in(&self) -> usize {
        usize::from(self.max_packet_in)
    }

    /// The size of the next Data packets: the channel's packet size, limited by what the peer accepts.
    pub fn max_packet_out(&self) -> usize {
        let channel = match self.channel {
            Channel::Gatt { att_mtu } => att_mtu.saturating_sub(ATT_HEADER_LEN).min(ATT_MAX_VALUE_LEN),
            Channel::L2cap { mtu } => mtu,
        };
        let peer = self.peer.map_or(u16::MAX, |p| p.max_packet);
        usize::from(channel.min(peer).max(MIN_PACKET))
    }

    /// Data packets sent and not yet acknowledged by the peer.
    pub fn in_flight(&self) -> u16 {
        self.next_seq.wrapping_sub(self.peer_ack).wrapping_sub(1)
    }

    /// How many Data packets may be unacknowledged at once: the peer's window plus its latest grant (0 before
    /// its Hello).
    pub fn send_allowance(&self) -> u32 {
        self.peer.map_or(0, |p| (u32::from(p.window) + u32::from(self.peer_grant)).min(MAX_OUTSTANDING))
    }

    /// Packets handed to the radio and not yet confirmed by [`on_sent`](Self::on_sent).
    pub fn radio_pending(&self) -> usize {
        self.radio_pending
    }

    /// The bytes of input held: undelivered Data payloads and the frame decoder's buffer.
    pub fn rx_buffered(&self) -> usize {
        self.rx_queue_bytes + self.decoder.buffered_len()
    }

    /// The bound on [`rx_buffered`](Self::rx_buffered): (window + 1) × max packet + frame header + largest frame.
    pub fn rx_bound(&self) -> usize {
        (usize::from(self.window) + 1) * self.max_packet_in() + HEADER_LEN + MAX_FRAME_LEN
    }

    /// Whether the link has ended and has nothing more to send (its Close, if any, was handed to the radio).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The error that failed the link, if any.
    pub fn error(&self) -> Option<&LinkError> {
        self.failed.as_ref()
    }

    /// The traffic counters.
    pub fn stats(&self) -> &LinkStats {
        &self.stats
    }

    /// The ATT MTU exchange completed with `att_mtu` (GATT only; clamped to 23..=517; the MTU only grows).
    pub fn set_att_mtu(&mut self, att_mtu: u16) {
        match &mut self.channel {
            Channel::Gatt { att_mtu: current } => {
                let new = att_mtu.clamp(ATT_MTU_MIN, ATT_MTU_MAX);
                if new > *current {
                    debug!("ble link: ATT MTU {} -> {new}", *current);
                    *current = new;
                }
            }
            Channel::L2cap { .. } => trace!("ble link: ignoring an ATT MTU on an L2CAP channel"),
        }
    }

    /// Whether the link takes a frame now ([`push_frame`](Self::push_frame)): it is ready and no frame is waiting
    /// behind the one being sent.
    pub fn wants_frame(&self) -> bool {
        self.is_ready() && self.tx_next.is_none()
    }

    /// Queues a frame (1..=[`MAX_FRAME_LEN`] bytes) to send.
    ///
    /// # Errors
    /// [`LinkError::NotWanted`] unless [`wants_frame`](Self::wants_frame), [`LinkError::InvalidFrame`] for an
    /// empty or too large frame; the frame is not taken and the link is unchanged.
    pub fn push_frame(&mut self, frame: &[u8]) -> Result<(), LinkError> {
        if !self.wants_frame() {
            return Err(LinkError::NotWanted);
        }
        let mut encoded = Vec::new();
        encode_frame(frame, &mut encoded).map_err(LinkError::InvalidFrame)?;
        if self.tx_pos >= self.tx_cur.len() {
            self.tx_cur = encoded;
            self.tx_pos = 0;
        } else {
            self.tx_next = Some(encoded);
        }
        self.stats.frames_out += 1;
        self.stats.frame_bytes_out += frame.len() as u64;
        trace!("ble link: queued a frame of {} bytes", frame.len());
        Ok(())
    }

    /// The next packet to hand to the radio, if any may go now (see the module docs): on GATT one ATT value, on
    /// L2CAP the bytes to write to the stream (a length-prefixed record).
    pub fn poll_packet(&mut self) -> Option<Vec<u8>> {
        if self.radio_pending >= RADIO_QUEUE {
            return None;
        }
        let packet = self.next_packet()?;
        let out = match self.channel {
            Channel::Gatt { .. } => packet,
            Channel::L2cap { .. } => match encode_record(&packet) {
                Ok(record) => record,
                Err(err) => {
                    // Packets are never empty and never above L2CAP_MAX_PACKET.
                    debug!("ble link: cannot frame a packet for L2CAP: {err}");
                    return None;
                }
            },
        };
        self.radio_pending += 1;
        self.stats.packets_out += 1;
        self.stats.bytes_out += out.len() as u64;
        self.last_tx = self.now;
        Some(out)
    }

    /// The radio accepted a packet handed out by [`poll_packet`](Self::poll_packet) (Android:
    /// `onCharacteristicWrite` / `onNotificationSent`; iOS: `peripheralIsReady(toSendWriteWithoutResponse:)` /
    /// `peripheralManagerIsReady(toUpdateSubscribers:)`; L2CAP: the write to the stream completed). Call it once
    /// per packet, in any order. When the OS queue is full (iOS `updateValue` returning false, Android
    /// `writeCharacteristic` busy), the radio keeps the packet and retries when the OS is ready: it must never
    /// drop one, since a lost packet breaks the link ([`LinkError::OutOfSequence`] at the peer); if it cannot
    /// send it at all, it should disconnect.
    pub fn on_sent(&mut self) {
        if self.radio_pending == 0 {
            debug!("ble link: on_sent without a packet pending");
        }
        self.radio_pending = self.radio_pending.saturating_sub(1);
    }

    /// Ends the link from this side: a Close packet with `reason` is the only packet left to send, and nothing
    /// more is delivered. No effect on a link that has already ended.
    pub fn close(&mut self, reason: CloseReason) {
        if self.state == State::Open && self.failed.is_none() {
            info!("ble link: closing ({reason})");
            self.state = State::Closing(reason);
            self.drop_buffers();
        }
    }

    /// Handles bytes received at `now_ms`: on GATT one packet (an ATT value), on L2CAP any piece of the stream.
    ///
    /// # Errors
    /// Any [`LinkError`] about the peer's input; the link has then failed (see the module docs) and returns the
    /// same error from every later call. Input that arrives after [`close`](Self::close) is ignored.
    pub fn on_packet(&mut self, bytes: &[u8], now_ms: u64) -> Result<(), LinkError> {
        self.advance(now_ms);
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        if self.state != State::Open {
            trace!("ble link: ignoring {} bytes after close", bytes.len());
            return Ok(());
        }
        self.last_rx = self.now;
        self.stats.bytes_in += bytes.len() as u64;
        let result = match self.stream.take() {
            Some(mut stream) => {
                let result = stream.feed(bytes, |packet| self.handle_packet(packet));
                self.stream = Some(stream);
                result
            }
            None => self.handle_packet(bytes),
        };
        result.map_err(|err| self.fail(err))
    }

    /// The next frame received, whole and in order, if one is complete. Moving the received packets into frames
    /// is what frees the receive window: call this until it returns `None`, or the peer stalls.
    pub fn poll_frame_in(&mut self) -> Option<Vec<u8>> {
        if !self.is_ready() {
            return None;
        }
        loop {
            match self.decoder.next_frame() {
                Ok(Some(frame)) => {
                    self.stats.frames_in += 1;
                    self.stats.frame_bytes_in += frame.len() as u64;
                    trace!("ble link: delivering a frame of {} bytes", frame.len());
                    return Some(frame);
                }
                Ok(None) => {}
                Err(err) => {
                    // Cannot happen: FrameCheck accepted the same bytes. Fail rather than trust the stream.
                    self.fail(LinkError::BadFraming(err));
                    return None;
                }
            }
            let payload = self.rx_queue.pop_front()?;
            self.rx_queue_bytes = self.rx_queue_bytes.saturating_sub(payload.len());
            self.decoder.push(&payload);
            self.consumed = self.consumed.wrapping_add(1);
            if self.consumed.wrapping_sub(self.sent_ack) >= (self.window / 2).max(1) {
                self.credit_due = true;
            }
        }
    }

    /// Gives the link the time: fails it on a timeout, queues a Ping when it has been quiet.
    ///
    /// # Errors
    /// [`LinkError::Timeout`], or the error that failed the link earlier.
    pub fn tick(&mut self, now_ms: u64) -> Result<(), LinkError> {
        self.advance(now_ms);
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        if self.state != State::Open {
            return Ok(());
        }
        let now = self.now;
        if self.peer.is_none() && now.saturating_sub(self.created) >= HELLO_TIMEOUT_MS {
            return Err(self.fail(LinkError::Timeout(TimeoutKind::Hello)));
        }
        if now.saturating_sub(self.last_rx) >= IDLE_TIMEOUT_MS {
            return Err(self.fail(LinkError::Timeout(TimeoutKind::Idle)));
        }
        if self.gap_since.is_some_and(|since| now.saturating_sub(since) >= GAP_TIMEOUT_MS) {
            return Err(self.fail(LinkError::Lost { seq: self.rx_next }));
        }
        if self.peer.is_some() && !self.ping_due {
            if now.saturating_sub(self.last_tx) >= PING_MS {
                trace!("ble link: quiet for {} ms, pinging", now.saturating_sub(self.last_tx));
                self.ping_due = true;
            } else if self.stalled() && now.saturating_sub(self.last_sent_told) >= STALL_PING_MS {
                trace!("ble link: waiting for credit, pinging");
                self.ping_due = true;
            }
        }
        Ok(())
    }

    /// Whether bytes wait to go out and the peer's credit is used up.
    fn stalled(&self) -> bool {
        self.tx_pos < self.tx_cur.len() && u32::from(self.in_flight()) >= self.send_allowance()
    }

    fn advance(&mut self, now_ms: u64) {
        self.now = self.now.max(now_ms);
    }

    /// Fails the link with `err` (from the peer's input or a timeout) and returns it.
    fn fail(&mut self, err: LinkError) -> LinkError {
        if self.failed.is_none() {
            debug!("ble link ({:?}): failed: {err}", self.role);
            self.state = match err {
                LinkError::ClosedByPeer(_) => State::Closed,
                _ => State::Closing(err.close_reason()),
            };
            self.failed = Some(err.clone());
            self.drop_buffers();
        }
        err
    }

    fn drop_buffers(&mut self) {
        self.tx_cur = Vec::new();
        self.tx_pos = 0;
        self.tx_next = None;
        self.rx_queue = VecDeque::new();
        self.rx_ahead = BTreeMap::new();
        self.rx_queue_bytes = 0;
        self.gap_since = None;
        self.decoder = FrameDecoder::new();
        self.stream = None;
        self.credit_due = false;
        self.ping_due = false;
        self.pong_due = false;
    }

    /// Handles one packet.
    fn handle_packet(&mut self, bytes: &[u8]) -> Result<(), LinkError> {
        self.stats.packets_in += 1;
        if bytes.len() > self.max_packet_in() {
            return Err(LinkError::PacketTooLarge { len: bytes.len(), max: self.max_packet_in() });
        }
        let packet = Packet::decode(bytes)?;
        trace!("ble link: received {packet:?}");
        match packet {
            Packet::Hello { tag, app_tag, window, max_packet, .. } => {
                if self.peer.is_some() {
                    return Err(LinkError::DuplicateHello);
                }
                if app_tag != self.app_tag {
                    return Err(LinkError::WrongApp { got: app_tag });
                }
                if tag == self.tag {
                    return Err(LinkError::SelfConnection);
                }
                info!(
                    "ble link ({:?}): ready, peer {} (window {window}, packets up to {max_packet} bytes)",
                    self.role,
                    tag_hex(&tag)
                );
                self.peer = Some(PeerHello { tag, window, max_packet });
                Ok(())
            }
            Packet::Close { reason } => {
                info!("ble link ({:?}): closed by the peer ({reason})", self.role);
                Err(LinkError::ClosedByPeer(reason))
            }
            // On GATT the peer's Data may overtake its Hello (it is held like any packet ahead of its turn).
            Packet::Data { seq, payload } if self.peer.is_some() || self.reorders() => self.on_data(seq, payload),
            _ if self.peer.is_none() => Err(LinkError::HelloExpected { kind: bytes.first().copied().unwrap_or(0) }),
            Packet::Data { .. } => Err(LinkError::HelloExpected { kind: KIND_DATA }),
            Packet::Credit { ack, grant } => {
                if self.reorders() && self.peer_ack.wrapping_sub(ack) <= MAX_OUTSTANDING as u16 && ack != self.peer_ack
                {
                    trace!("ble link: ignoring a stale credit ({ack}, now {})", self.peer_ack);
                    return Ok(());
                }
                if ack.wrapping_sub(self.peer_ack) > self.in_flight() {
                    return Err(LinkError::BadCredit { ack });
                }
                self.peer_ack = ack;
                self.peer_grant = grant;
                Ok(())
            }
            Packet::Ping { sent } => {
                self.pong_due = true;
                self.peer_sent(sent)
            }
            Packet::Pong => Ok(()),
        }
    }

    /// A Data packet numbered `seq`.
    fn on_data(&mut self, seq: u16, payload: &[u8]) -> Result<(), LinkError> {
        let ahead = seq.wrapping_sub(self.rx_next);
        if ahead != 0 {
            let behind = self.rx_next.wrapping_sub(seq);
            if !self.reorders() || behind <= MAX_OUTSTANDING as u16 || self.rx_ahead.contains_key(&seq) {
                return Err(LinkError::OutOfSequence { expected: self.rx_next, got: seq });
            }
        }
        if seq.wrapping_sub(self.sent_ack) > self.window {
            return Err(LinkError::CreditExceeded { seq, window: self.window });
        }
        self.stats.data_packets_in += 1;
        self.stats.data_bytes_in += payload.len() as u64;
        self.rx_queue_bytes += payload.len();
        if ahead != 0 {
            trace!("ble link: data packet {seq} ahead of {}, held", self.rx_next);
            self.stats.data_packets_early += 1;
            self.rx_ahead.insert(seq, payload.to_vec());
            return self.peer_sent(seq.wrapping_add(1));
        }
        self.accept_in_order(payload.to_vec())?;
        while let Some(next) = self.rx_ahead.remove(&self.rx_next) {
            self.accept_in_order(next)?;
        }
        if self.rx_known_ahead == 0 {
            self.gap_since = None;
        } else {
            // Progress: the packets still missing get their own time.
            self.gap_since = Some(self.now);
        }
        Ok(())
    }

    /// The Data packet numbered `rx_next` (its bytes already counted in `rx_queue_bytes`).
    fn accept_in_order(&mut self, payload: Vec<u8>) -> Result<(), LinkError> {
        self.rx_check.feed(&payload).map_err(LinkError::BadFraming)?;
        self.rx_next = self.rx_next.wrapping_add(1);
        self.rx_known_ahead = self.rx_known_ahead.saturating_sub(1);
        self.rx_queue.push_back(payload);
        Ok(())
    }

    /// The peer has sent every Data packet before `sent`: any of them not received yet is missing.
    fn peer_sent(&mut self, sent: u16) -> Result<(), LinkError> {
        let ahead = sent.wrapping_sub(self.rx_next);
        if ahead == 0 || self.rx_next.wrapping_sub(sent) <= MAX_OUTSTANDING as u16 {
            // Nothing missing, or a stale Ping.
            return Ok(());
        }
        if sent.wrapping_sub(self.sent_ack) > self.window.saturating_add(1) {
            return Err(LinkError::CreditExceeded { seq: sent.wrapping_sub(1), window: self.window });
        }
        if !self.reorders() {
            return Err(LinkError::Lost { seq: self.rx_next });
        }
        if ahead > self.rx_known_ahead {
            self.rx_known_ahead = ahead;
        }
        if self.gap_since.is_none() {
            self.gap_since = Some(self.now);
        }
        Ok(())
    }

    /// The next packet that may go now, by priority: Close, Hello, Credit, Pong, Ping, Data.
    fn next_packet(&mut self) -> Option<Vec<u8>> {
        match self.state {
            State::Closed => return None,
            State::Closing(reason) => {
                self.state = State::Closed;
                return Some(Packet::Close { reason }.to_vec());
            }
            State::Open => {}
        }
        if !self.hello_sent {
            self.hello_sent = true;
            return Some(
                Packet::Hello {
                    version: PROTOCOL_VERSION,
                    tag: self.tag,
                    app_tag: self.app_tag,
                    window: self.window,
                    max_packet: self.max_packet_in,
                }
                .to_vec(),
            );
        }
        self.peer?;
        if self.credit_due {
            self.credit_due = false;
            self.sent_ack = self.consumed;
            return Some(Packet::Credit { ack: self.consumed, grant: 0 }.to_vec());
        }
        if self.pong_due {
            self.pong_due = false;
            return Some(Packet::Pong.to_vec());
        }
        if self.ping_due {
            self.ping_due = false;
            self.last_sent_told = self.now;
            return Some(Packet::Ping { sent: self.next_seq }.to_vec());
        }
        self.next_data()
    }

    /// The next Data packet, if there are bytes to send and credit for them.
    fn next_data(&mut self) -> Option<Vec<u8>> {
        if u32::from(self.in_flight()) >= self.send_allowance() {
            return None;
        }
        let cap = self.max_packet_out();
        let mut packet = Vec::with_capacity(cap);
        packet.push(KIND_DATA);
        packet.extend_from_slice(&self.next_seq.to_le_bytes());
        while packet.len() < cap {
            if self.tx_pos >= self.tx_cur.len() {
                match self.tx_next.take() {
                    Some(next) => {
                        self.tx_cur = next;
                        self.tx_pos = 0;
                    }
                    None => break,
                }
            }
            let available = self.tx_cur.get(self.tx_pos..).unwrap_or_default();
            let take = available.len().min(cap - packet.len());
            packet.extend_from_slice(available.get(..take).unwrap_or_default());
            self.tx_pos += take;
        }
        if self.tx_pos >= self.tx_cur.len() {
            match self.tx_next.take() {
                Some(next) => {
                    self.tx_cur = next;
                    self.tx_pos = 0;
                }
                None if !self.tx_cur.is_empty() => {
                    self.tx_cur = Vec::new();
                    self.tx_pos = 0;
                }
                None => {}
            }
        }
        let payload_len = packet.len() - DATA_HEADER_LEN;
        if payload_len == 0 {
            return None;
        }
        trace!("ble link: data packet {} of {payload_len} bytes", self.next_seq);
        self.next_seq = self.next_seq.wrapping_add(1);
        self.last_sent_told = self.now;
        self.stats.data_packets_out += 1;
        self.stats.data_bytes_out += payload_len as u64;
        Some(packet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: AppTag = *b"shoa";
    const A: DeviceTag = [1; 8];
    const B: DeviceTag = [2; 8];

    fn pair(window: u16, mtu: u16) -> (BleLink, BleLink) {
        let cfg = LinkConfig { window };
        let a = BleLink::with_config(Role::Central, Channel::Gatt { att_mtu: mtu }, A, APP, cfg, 0);
        let b = BleLink::with_config(Role::Peripheral, Channel::Gatt { att_mtu: mtu }, B, APP, cfg, 0);
        (a, b)
    }

    /// Moves every packet that may go from `from` to `to`, confirming each at once.
    fn pump(from: &mut BleLink, to: &mut BleLink, now: u64) -> Result<usize, LinkError> {
        let mut n = 0;
        while let Some(p) = from.poll_packet() {
            from.on_sent();
            to.on_packet(&p, now)?;
            n += 1;
        }
        Ok(n)
    }

    fn handshake(a: &mut BleLink, b: &mut BleLink) {
        pump(a, b, 0).unwrap();
        pump(b, a, 0).unwrap();
        assert!(a.is_ready() && b.is_ready());
    }

    #[test]
    fn hello_first_and_nothing_else_before_the_peers() {
        let (mut a, mut b) = pair(8, 23);
        assert!(!a.wants_frame());
        let hello = a.poll_packet().unwrap();
        assert_eq!(
            Packet::decode(&hello).unwrap(),
            Packet::Hello { version: PROTOCOL_VERSION, tag: A, app_tag: APP, window: 8, max_packet: GATT_MAX_PACKET }
        );
        assert_eq!(a.poll_packet(), None);
        a.tick(PING_MS + 1).unwrap();
        assert_eq!(a.poll_packet(), None, "no ping before the peer's hello");
        b.on_packet(&hello, 1).unwrap();
        assert!(b.is_ready());
        assert_eq!(b.peer_tag(), Some(A));
        // b's data before its own hello is impossible: the hello goes first.
        assert_eq!(Packet::decode(&b.poll_packet().unwrap()).unwrap().encoded_len(), 18);
    }

    #[test]
    fn frames_flow_both_ways() {
        let (mut a, mut b) = pair(4, 23);
        handshake(&mut a, &mut b);
        a.push_frame(b"hello over ble, a bit longer than one packet").unwrap();
        b.push_frame(b"x").unwrap();
        pump(&mut a, &mut b, 1).unwrap();
        pump(&mut b, &mut a, 1).unwrap();
        assert_eq!(b.poll_frame_in().unwrap(), b"hello over ble, a bit longer than one packet");
        assert_eq!(a.poll_frame_in().unwrap(), b"x");
        assert_eq!(a.poll_frame_in(), None);
        assert!(a.stats().goodput_out() > 0.0);
    }

    #[test]
    fn backpressure_two_frames_at_most() {
        let (mut a, mut b) = pair(4, 23);
        handshake(&mut a, &mut b);
        assert!(a.wants_frame());
        a.push_frame(b"one").unwrap();
        assert!(a.wants_frame());
        a.push_frame(b"two").unwrap();
        assert!(!a.wants_frame());
        assert_eq!(a.push_frame(b"three"), Err(LinkError::NotWanted));
        assert_eq!(a.push_frame(&[]), Err(LinkError::NotWanted));
        let p = a.poll_packet().unwrap();
        // Both small frames fit one packet.
        assert_eq!(p.len(), 3 + 4 + 3 + 4 + 3);
        assert!(a.wants_frame());
        assert_eq!(a.push_frame(&[]), Err(LinkError::InvalidFrame(FrameError::Empty)));
    }

    #[test]
    fn credit_limits_and_replenishes() {
        let (mut a, mut b) = pair(2, 23);
        handshake(&mut a, &mut b);
        a.push_frame(&[9u8; 200]).unwrap();
        let mut sent = 0;
        while let Some(p) = a.poll_packet() {
            a.on_sent();
            b.on_packet(&p, 1).unwrap();
            sent += 1;
        }
        assert_eq!(sent, 2, "window of 2");
        assert_eq!(a.in_flight(), 2);
        // b consumes; credit flows back after half the window.
        assert_eq!(b.poll_frame_in(), None);
        let credit = b.poll_packet().unwrap();
        assert_eq!(Packet::decode(&credit).unwrap(), Packet::Credit { ack: 1, grant: 0 });
        a.on_packet(&credit, 2).unwrap();
        assert_eq!(a.in_flight(), 0);
        assert!(a.poll_packet().is_some());
    }

    #[test]
    fn radio_queue_limits_packets_until_on_sent() {
        let (mut a, mut b) = pair(32, 23);
        handshake(&mut a, &mut b);
        a.push_frame(&[1u8; 1000]).unwrap();
        for _ in 0..RADIO_QUEUE {
            assert!(a.poll_packet().is_some());
        }
        assert_eq!(a.poll_packet(), None);
        a.on_sent();
        assert!(a.poll_packet().is_some());
        assert_eq!(a.radio_pending(), RADIO_QUEUE);
    }

    #[test]
    fn wrong_app_and_self_connection() {
        let mut a = BleLink::new(Role::Central, Channel::Gatt { att_mtu: 23 }, A, APP, 0);
        let mut other = BleLink::new(Role::Peripheral, Channel::Gatt { att_mtu: 23 }, B, *b"nope", 0);
        let hello = other.poll_packet().unwrap();
        assert_eq!(a.on_packet(&hello, 0), Err(LinkError::WrongApp { got: *b"nope" }));
        // The error sticks, and the only packet left is a Close.
        assert_eq!(a.on_packet(&hello, 0), Err(LinkError::WrongApp { got: *b"nope" }));
        assert_eq!(a.poll_packet(), Some(vec![6, 3]));
        assert_eq!(a.poll_packet(), None);
        assert!(a.is_closed());

        let mut a = BleLink::new(Role::Central, Channel::Gatt { att_mtu: 23 }, A, APP, 0);
        let mut me = BleLink::new(Role::Peripheral, Channel::Gatt { att_mtu: 23 }, A, APP, 0);
        let hello = me.poll_packet().unwrap();
        assert_eq!(a.on_packet(&hello, 0), Err(LinkError::SelfConnection));
    }

    #[test]
    fn protocol_violations() {
        let (_, mut b) = pair(2, 23);
        assert_eq!(b.on_packet(&Packet::Ping { sent: 0 }.to_vec(), 0), Err(LinkError::HelloExpected { kind: 4 }));
        // On L2CAP nothing overtakes the Hello: Data before it is a violation.
        let mut l = BleLink::new(Role::Peripheral, Channel::L2cap { mtu: 100 }, B, APP, 0);
        let data = encode_record(&Packet::Data { seq: 0, payload: &[0, 0, 0, 1, 7] }.to_vec()).unwrap();
        assert_eq!(l.on_packet(&data, 0), Err(LinkError::HelloExpected { kind: 2 }));

        let (mut a2, mut b2) = pair(2, 23);
        handshake(&mut a2, &mut b2);
        let h = Packet::Hello { version: PROTOCOL_VERSION, tag: A, app_tag: APP, window: 1, max_packet: 20 }.to_vec();
        assert_eq!(b2.on_packet(&h, 0), Err(LinkError::DuplicateHello));

        let (mut a3, mut b3) = pair(2, 23);
        handshake(&mut a3, &mut b3);
        for seq in 0..2u16 {
            let d = Packet::Data { seq, payload: &[0] }.to_vec();
            b3.on_packet(&d, 0).unwrap();
        }
        let d = Packet::Data { seq: 2, payload: &[0] }.to_vec();
        assert_eq!(b3.on_packet(&d, 0), Err(LinkError::CreditExceeded { seq: 2, window: 2 }));

        let (mut a, mut b) = pair(2, 23);
        handshake(&mut a, &mut b);
        assert_eq!(a.on_packet(&[3, 0, 0, 0, 0], 0), Err(LinkError::BadCredit { ack: 0 }));

        let (mut a4, mut b4) = pair(2, 23);
        handshake(&mut a4, &mut b4);
        let d = Packet::Data { seq: 0, payload: &[0, 0, 0, 0] }.to_vec();
        assert_eq!(b4.on_packet(&d, 0), Err(LinkError::BadFraming(FrameError::Empty)));
        assert_eq!(b4.on_packet(&[0; 600], 0), Err(LinkError::BadFraming(FrameError::Empty)));

        let (_, mut b5) = pair(2, 23);
        assert_eq!(b5.on_packet(&[0; 600], 0), Err(LinkError::PacketTooLarge { len: 600, max: 510 }));
        let (_, mut b6) = pair(2, 23);
        assert_eq!(b6.on_packet(&[9], 0), Err(LinkError::Packet(PacketError::UnknownKind(9))));
        assert_eq!(b6.poll_packet(), Some(vec![6, 5]));
    }

    #[test]
    fn timeouts_and_keepalive() {
        let (mut a, mut b) = pair(4, 23);
        a.tick(HELLO_TIMEOUT_MS - 1).unwrap();
        assert_eq!(a.tick(HELLO_TIMEOUT_MS), Err(LinkError::Timeout(TimeoutKind::Hello)));

        let (mut a, _) = pair(4, 23);
        handshake(&mut a, &mut b);
        let _ = a.poll_packet();
        // Quiet for PING_MS: a pings; b answers.
        a.tick(PING_MS).unwrap();
        let ping = a.poll_packet().unwrap();
        a.on_sent();
        assert_eq!(ping, vec![4, 0, 0]);
        assert_eq!(a.poll_packet(), None, "one ping at a time");
        b.on_packet(&ping, PING_MS).unwrap();
        let pong = b.poll_packet().unwrap();
        assert_eq!(pong, vec![5]);
        a.on_packet(&pong, PING_MS + 10).unwrap();
        a.tick(PING_MS + 10 + IDLE_TIMEOUT_MS - 1).unwrap();
        assert_eq!(a.tick(PING_MS + 10 + IDLE_TIMEOUT_MS), Err(LinkError::Timeout(TimeoutKind::Idle)));
        assert_eq!(a.on_packet(&pong, 0), Err(LinkError::Timeout(TimeoutKind::Idle)));
    }

    #[test]
    fn close_both_ways() {
        let (mut a, mut b) = pair(4, 23);
        handshake(&mut a, &mut b);
        a.push_frame(b"lost").unwrap();
        a.close(CloseReason::Normal);
        assert!(!a.wants_frame());
        let close = a.poll_packet().unwrap();
        assert_eq!(close, vec![6, 0]);
        assert!(a.is_closed());
        assert_eq!(a.poll_packet(), None);
        assert_eq!(b.on_packet(&close, 1), Err(LinkError::ClosedByPeer(CloseReason::Normal)));
        assert!(b.is_closed());
        assert_eq!(b.poll_packet(), None, "no close in answer to a close");
        assert_eq!(a.on_packet(b"\x04", 2), Ok(()), "input after close is ignored");
    }

    #[test]
    fn sequence_numbers_wrap() {
        let (mut a, mut b) = pair(16, 23);
        handshake(&mut a, &mut b);
        let frame: Vec<u8> = (0..996u32).map(|i| (i % 251) as u8).collect();
        let mut frames_sent = 0;
        let mut frames_got = 0;
        // 17 × 70 frames of 1000 bytes (with their headers) in 17-byte payloads: 70,000 packets, past 65,535.
        for round in 0..17 {
            for _ in 0..70 {
                while !a.wants_frame() {
                    pump(&mut a, &mut b, round).unwrap();
                    while let Some(f) = b.poll_frame_in() {
                        assert_eq!(f, frame);
                        frames_got += 1;
                    }
                    pump(&mut b, &mut a, round).unwrap();
                }
                a.push_frame(&frame).unwrap();
                frames_sent += 1;
            }
        }
        for _ in 0..100 {
            pump(&mut a, &mut b, 17).unwrap();
            while let Some(f) = b.poll_frame_in() {
                assert_eq!(f, frame);
                frames_got += 1;
            }
            pump(&mut b, &mut a, 17).unwrap();
        }
        assert_eq!(frames_got, frames_sent);
        assert!(a.stats().data_packets_out > 65_536, "{}", a.stats().data_packets_out);
        assert_eq!(a.in_flight(), 0);
    }

    #[test]
    fn mtu_only_grows_and_is_clamped() {
        let (mut a, mut b) = pair(4, 23);
        handshake(&mut a, &mut b);
        assert_eq!(a.max_packet_out(), 20);
        a.set_att_mtu(185);
        assert_eq!(a.max_packet_out(), 182);
        a.set_att_mtu(100);
        assert_eq!(a.max_packet_out(), 182);
        a.set_att_mtu(9000);
        assert_eq!(a.channel(), Channel::Gatt { att_mtu: 517 });
        // An ATT value is at most 512 bytes, even with the largest MTU, and a peer accepts at most 510.
        assert_eq!(b.max_packet_in(), usize::from(GATT_MAX_PACKET));
        assert_eq!(a.max_packet_out(), 510);
    }

    #[test]
    fn l2cap_records_cross_the_stream() {
        let mut a = BleLink::new(Role::Central, Channel::L2cap { mtu: 5000 }, A, APP, 0);
        let mut b = BleLink::new(Role::Peripheral, Channel::L2cap { mtu: 100 }, B, APP, 0);
        let mut stream = Vec::new();
        stream.extend(a.poll_packet().unwrap());
        b.on_packet(&stream, 0).unwrap();
        stream.clear();
        stream.extend(b.poll_packet().unwrap());
        a.on_packet(&stream, 0).unwrap();
        assert_eq!(a.max_packet_out(), 2048);
        assert_eq!(b.max_packet_out(), 100);
        let frame: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        a.push_frame(&frame).unwrap();
        let mut bytes = Vec::new();
        while let Some(p) = a.poll_packet() {
            a.on_sent();
            bytes.extend(p);
        }
        for piece in bytes.chunks(7) {
            b.on_packet(piece, 1).unwrap();
        }
        assert_eq!(b.poll_frame_in().unwrap(), frame);
    }

    /// Packets of `from` until none may go, confirmed at once.
    fn drain(from: &mut BleLink) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(p) = from.poll_packet() {
            from.on_sent();
            out.push(p);
        }
        out
    }

    #[test]
    fn gatt_packets_out_of_order_within_the_window_are_put_back_in_order() {
        // Enhanced ATT: packets over several bearers. Every order of a window's worth of packets is delivered in
        // order, including Data that overtakes the Hello, and a stale Credit is ignored.
        let frame: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        for round in 0..200u64 {
            let (mut a, mut b) = pair(8, 23 + (round % 5) as u16 * 40);
            let hello_b = drain(&mut b);
            let hello_a = drain(&mut a);
            a.on_packet(&hello_b[0], 0).unwrap();
            let mut got = Vec::new();
            let mut credits = Vec::new();
            a.push_frame(&frame).unwrap();
            let mut first = true;
            while got.len() < frame.len() {
                let mut packets = drain(&mut a);
                if first {
                    packets.splice(0..0, hello_a.clone());
                    first = false;
                }
                // Shuffle (Fisher–Yates, xorshift).
                for i in (1..packets.len()).rev() {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    packets.swap(i, (rng % (i as u64 + 1)) as usize);
                }
                for p in &packets {
                    b.on_packet(p, 1).unwrap();
                }
                assert!(b.rx_buffered() <= b.rx_bound());
                while let Some(f) = b.poll_frame_in() {
                    got.extend(f);
                }
                // New credits, then the older ones again: stale by now.
                let new = drain(&mut b);
                for c in new.iter().chain(credits.iter()) {
                    a.on_packet(c, 1).unwrap();
                }
                credits.extend(new);
                assert!(a.tick(2).is_ok() && b.tick(2).is_ok());
            }
            assert_eq!(got, frame, "round {round}");
        }
    }

    #[test]
    fn a_repeated_gatt_packet_still_breaks_the_link() {
        let (mut a, mut b) = pair(8, 23);
        handshake(&mut a, &mut b);
        a.push_frame(&[5u8; 100]).unwrap();
        let packets = drain(&mut a);
        b.on_packet(&packets[1], 0).unwrap();
        assert_eq!(b.on_packet(&packets[1], 0), Err(LinkError::OutOfSequence { expected: 0, got: 1 }));
        let (mut a, mut b) = pair(8, 23);
        handshake(&mut a, &mut b);
        a.push_frame(&[5u8; 100]).unwrap();
        let packets = drain(&mut a);
        b.on_packet(&packets[0], 0).unwrap();
        assert_eq!(b.on_packet(&packets[0], 0), Err(LinkError::OutOfSequence { expected: 1, got: 0 }));
    }

    #[test]
    fn a_lost_gatt_packet_fails_the_link_after_the_gap_timeout() {
        let (mut a, mut b) = pair(8, 23);
        handshake(&mut a, &mut b);
        a.push_frame(&[5u8; 100]).unwrap();
        let packets = drain(&mut a);
        // Packet 1 never arrives; later ones do.
        for (i, p) in packets.iter().enumerate() {
            if i != 1 {
                b.on_packet(p, 100).unwrap();
            }
        }
        b.tick(100 + GAP_TIMEOUT_MS - 1).unwrap();
        assert_eq!(b.tick(100 + GAP_TIMEOUT_MS), Err(LinkError::Lost { seq: 1 }));
        assert!(b.rx_buffered() == 0, "buffers dropped");
    }

    #[test]
    fn a_lost_tail_is_noticed_from_the_senders_ping() {
        for channel in [Channel::Gatt { att_mtu: 23 }, Channel::L2cap { mtu: 20 }] {
            let cfg = LinkConfig { window: 8 };
            let mut a = BleLink::with_config(Role::Central, channel, A, APP, cfg, 0);
            let mut b = BleLink::with_config(Role::Peripheral, channel, B, APP, cfg, 0);
            handshake(&mut a, &mut b);
            a.push_frame(&[5u8; 500]).unwrap();
            let packets = drain(&mut a);
            assert_eq!(packets.len(), 8, "a window's worth");
            // Only the first two arrive (too few for a credit): nothing later comes, and a waits for credit.
            for p in &packets[..2] {
                b.on_packet(p, 10).unwrap();
            }
            while b.poll_frame_in().is_some() {}
            for p in drain(&mut b) {
                a.on_packet(&p, 10).unwrap();
            }
            a.tick(STALL_PING_MS - 1).unwrap();
            assert!(drain(&mut a).is_empty(), "no ping yet");
            a.tick(STALL_PING_MS).unwrap();
            let ping = drain(&mut a);
            assert_eq!(
                ping,
                vec![Packet::Ping { sent: 8 }.to_vec()]
                    .into_iter()
                    .map(|p| match channel {
                        Channel::L2cap { .. } => encode_record(&p).unwrap(),
                        Channel::Gatt { .. } => p,
                    })
                    .collect::<Vec<_>>()
            );
            let now = 10 + STALL_PING_MS + 20;
            match channel {
                // An ordered stream: the Ping came after packets 2 and 3, so they are lost.
                Channel::L2cap { .. } => assert_eq!(b.on_packet(&ping[0], now), Err(LinkError::Lost { seq: 2 })),
                // They may still come over another bearer, for a while.
                Channel::Gatt { .. } => {
                    b.on_packet(&ping[0], now).unwrap();
                    b.tick(now + GAP_TIMEOUT_MS - 1).unwrap();
                    assert_eq!(b.tick(now + GAP_TIMEOUT_MS), Err(LinkError::Lost { seq: 2 }));
                }
            }
        }
    }

    #[test]
    fn a_gap_that_keeps_moving_is_not_a_loss() {
        // One packet always late (1, 3, 0, 5, 2, 7, 4, ...), a second between arrivals: a gap is open the whole
        // time, far longer than GAP_TIMEOUT_MS, but the stream keeps moving, so nothing is lost.
        let (mut a, mut b) = pair(64, 23);
        handshake(&mut a, &mut b);
        let frame = vec![3u8; 64 * 17 - 4];
        a.push_frame(&frame).unwrap();
        let packets = drain(&mut a);
        assert_eq!(packets.len(), 64);
        let odds: Vec<usize> = (1..64).step_by(2).collect();
        let evens: Vec<usize> = (0..64).step_by(2).collect();
        let mut order = vec![odds[0]];
        for (i, even) in evens.iter().enumerate() {
            order.extend(odds.get(i + 1));
            order.push(*even);
        }
        let mut now = 0;
        for i in order {
            now += 1_000;
            b.on_packet(&packets[i], now).unwrap();
            b.tick(now).unwrap();
        }
        assert!(now > 20 * GAP_TIMEOUT_MS);
        assert_eq!(b.poll_frame_in().unwrap(), frame);
    }
}
