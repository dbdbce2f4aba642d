//! The packet codec of BLE links.
//!
//! A *packet* is one ATT value on GATT (a write without response from the central, a notification from the
//! peripheral), so at most ATT_MTU − 3 bytes; on an L2CAP channel it is one record of the byte stream, prefixed
//! with its length as a u16 little-endian ([`encode_record`], [`StreamDecoder`]).
//!
//! The first byte is the packet's kind; the fields follow, little-endian:
//!
//! | kind | packet | fields                                                                   | length |
//! |------|--------|--------------------------------------------------------------------------|--------|
//! | 0x01 | Hello  | version u8 (= 2), tag (8 bytes), app tag (4 bytes), window u16, max packet u16 | 18 |
//! | 0x02 | Data   | seq u16, payload (≥ 1 byte)                                              | ≥ 4    |
//! | 0x03 | Credit | ack u16, grant u16                                                       | 5      |
//! | 0x04 | Ping   | sent u16 (the sequence number of the sender's next Data packet)           | 3      |
//! | 0x05 | Pong   | —                                                                        | 1      |
//! | 0x06 | Close  | reason u8 ([`CloseReason::code`])                                        | 2      |
//!
//! Decoding is strict: an unknown kind, a packet shorter or (except Data) longer than its kind requires, a
//! version other than [`PROTOCOL_VERSION`], a window of 0, a largest packet under [`MIN_PACKET`] or an empty
//! Data payload are each a [`PacketError`].

use log::{debug, trace};

use super::{AppTag, DeviceTag};

/// The protocol version this implementation speaks (carried in Hello).
/// Version 2: Ping carries the sender's next sequence number.
pub const PROTOCOL_VERSION: u8 = 2;

/// The smallest packet every BLE channel carries: the payload of the default ATT MTU (23 − 3). A peer that
/// accepts less is refused.
pub const MIN_PACKET: u16 = 20;

/// The largest packet an L2CAP record can hold (its length prefix is a u16).
pub const MAX_RECORD: usize = u16::MAX as usize;

/// The length of an L2CAP record's length prefix.
pub const RECORD_HEADER_LEN: usize = 2;

/// The length of a Data packet's header (kind and sequence number).
pub const DATA_HEADER_LEN: usize = 3;

/// The length of a Hello packet.
pub const HELLO_LEN: usize = 18;

/// Kind byte of [`Packet::Hello`].
pub const KIND_HELLO: u8 = 0x01;
/// Kind byte of [`Packet::Data`].
pub const KIND_DATA: u8 = 0x02;
/// Kind byte of [`Packet::Credit`].
pub const KIND_CREDIT: u8 = 0x03;
/// Kind byte of [`Packet::Ping`].
pub const KIND_PING: u8 = 0x04;
/// Kind byte of [`Packet::Pong`].
pub const KIND_PONG: u8 = 0x05;
/// Kind byte of [`Packet::Close`].
pub const KIND_CLOSE: u8 = 0x06;

/// Why a link is closed, as carried by [`Packet::Close`] (one byte on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The app or the sync engine ended the link (code 0).
    Normal,
    /// The two phones are connected twice; this connection is the one dropped (code 1).
    Duplicate,
    /// The sender already has as many links as it allows (code 2).
    TooManyLinks,
    /// The peer belongs to another app (code 3).
    WrongApp,
    /// The peer is the sender itself (code 4).
    SelfConnection,
    /// The peer broke the protocol (code 5).
    ProtocolError,
    /// The peer did not answer in time (code 6).
    Timeout,
    /// A code this version does not know (kept as is).
    Other(u8),
}

impl CloseReason {
    /// The reason's code on the wire.
    pub fn code(self) -> u8 {
        match self {
            CloseReason::Normal => 0,
            CloseReason::Duplicate => 1,
            CloseReason::TooManyLinks => 2,
            CloseReason::WrongApp => 3,
            CloseReason::SelfConnection => 4,
            CloseReason::ProtocolError => 5,
            CloseReason::Timeout => 6,
            CloseReason::Other(code) => code,
        }
    }

    /// The reason with wire code `code` (unknown codes become [`CloseReason::Other`]).
    pub fn from_code(code: u8) -> CloseReason {
        match code {
            0 => CloseReason::Normal,
            1 => CloseReason::Duplicate,
            2 => CloseReason::TooManyLinks,
            3 => CloseReason::WrongApp,
            4 => CloseReason::SelfConnection,
            5 => CloseReason::ProtocolError,
            6 => CloseReason::Timeout,
            other => CloseReason::Other(other),
        }
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::Normal => f.write_str("normal close"),
            CloseReason::Duplicate => f.write_str("duplicate connection"),
            CloseReason::TooManyLinks => f.write_str("too many links"),
            CloseReason::WrongApp => f.write_str("wrong app"),
            CloseReason::SelfConnection => f.write_str("connection to self"),
            CloseReason::ProtocolError => f.write_str("protocol error"),
            CloseReason::Timeout => f.write_str("timeout"),
            CloseReason::Other(code) => write!(f, "reason {code}"),
        }
    }
}

/// One packet of a BLE link (see the module docs for the wire format).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    /// The first packet each way: who the sender is and what it can receive.
    Hello {
        /// The protocol version ([`PROTOCOL_VERSION`]; decoding refuses others).
        version: u8,
        /// The sender's device tag.
        tag: DeviceTag,
        /// The sender's app tag.
        app_tag: AppTag,
        /// How many Data packets the sender can receive unacknowledged (≥ 1).
        window: u16,
        /// The largest packet the sender accepts, in bytes (≥ [`MIN_PACKET`]).
        max_packet: u16,
    },
    /// A slice of the framed byte stream.
    Data {
        /// The packet's sequence number: 0 for the first Data packet of a link, then +1 (wrapping).
        seq: u16,
        /// The bytes (never empty).
        payload: &'a [u8],
    },
    /// Flow-control credit from a receiver.
    Credit {
        /// The sequence number of the last Data packet consumed (cumulative: every earlier one was too).
        ack: u16,
        /// Extra packets the sender may send beyond its window, counted from `ack` (0 = just the window).
        grant: u16,
    },
    /// "Are you there?" — answered by [`Packet::Pong`]. Also tells the receiver how many Data packets were sent,
    /// so that lost ones are noticed even when no later Data packet comes.
    Ping {
        /// The sequence number of the sender's next Data packet (every earlier one was sent).
        sent: u16,
    },
    /// The answer to [`Packet::Ping`].
    Pong,
    /// The sender ends the link.
    Close {
        /// Why.
        reason: CloseReason,
    },
}

/// Why a packet (or an L2CAP record) could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// A packet of zero bytes.
    #[error("empty packet")]
    Empty,
    /// The kind byte is not one this version knows.
    #[error("unknown packet kind {0:#04x}")]
    UnknownKind(u8),
    /// The packet is shorter than its kind requires.
    #[error("packet of kind {kind:#04x} is {len} bytes, needs {need}")]
    Truncated {
        /// The kind byte.
        kind: u8,
        /// The packet's length.
        len: usize,
        /// The length its kind requires (the minimum, for Data).
        need: usize,
    },
    /// The packet is longer than its (fixed-size) kind allows.
    #[error("packet of kind {kind:#04x} is {len} bytes, expected {expected}")]
    TrailingBytes {
        /// The kind byte.
        kind: u8,
        /// The packet's length.
        len: usize,
        /// The length of that kind.
        expected: usize,
    },
    /// A Hello with a protocol version other than [`PROTOCOL_VERSION`].
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// A Hello announcing a receive window of 0 packets.
    #[error("hello with a window of 0")]
    ZeroWindow,
    /// A Hello announcing a largest packet under [`MIN_PACKET`].
    #[error("hello accepting packets of at most {0} bytes (the minimum is 20)")]
    MaxPacketTooSmall(u16),
    /// An L2CAP record of length 0.
    #[error("empty record on the stream")]
    EmptyRecord,
    /// A packet (or L2CAP record) longer than the receiver accepts.
    #[error("packet of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The largest length accepted.
        max: usize,
    },
}

impl<'a> Packet<'a> {
    /// Decodes one packet; a Data packet's payload borrows from `bytes`.
    ///
    /// # Errors
    /// Any [`PacketError`] but [`PacketError::EmptyRecord`] and [`PacketError::TooLarge`] (which are about
    /// lengths the caller checks).
    pub fn decode(bytes: &'a [u8]) -> Result<Packet<'a>, PacketError> {
        let Some((&kind, body)) = bytes.split_first() else {
            return Err(PacketError::Empty);
        };
        let fixed = |expected: usize| -> Result<(), PacketError> {
            if bytes.len() < expected {
                Err(PacketError::Truncated { kind, len: bytes.len(), need: expected })
            } else if bytes.len() > expected {
                Err(PacketError::TrailingBytes { kind, len: bytes.len(), expected })
            } else {
                Ok(())
            }
        };
        let u16_at = |at: usize| -> u16 {
            // Only called after the length was checked; a short read yields 0 rather than a panic.
            match body.get(at..at + 2) {
                Some(&[lo, hi]) => u16::from_le_bytes([lo, hi]),
                _ => 0,
            }
        };
        match kind {
            KIND_HELLO => {
                fixed(HELLO_LEN)?;
                let version = body.first().copied().unwrap_or(0);
                if version != PROTOCOL_VERSION {
                    return Err(PacketError::UnsupportedVersion(version));
                }
                let mut tag = [0u8; 8];
                let mut app_tag = [0u8; 4];
                if let (Some(t), Some(a)) = (body.get(1..9), body.get(9..13)) {
                    tag.copy_from_slice(t);
                    app_tag.copy_from_slice(a);
                }
                let window = u16_at(13);
                let max_packet = u16_at(15);
                if window == 0 {
                    return Err(PacketError::ZeroWindow);
                }
                if max_packet < MIN_PACKET {
                    return Err(PacketError::MaxPacketTooSmall(max_packet));
                }
                Ok(Packet::Hello { version, tag, app_tag, window, max_packet })
            }
            KIND_DATA => {
                let need = DATA_HEADER_LEN + 1;
                if bytes.len() < need {
                    return Err(PacketError::Truncated { kind, len: bytes.len(), need });
                }
                let seq = u16_at(0);
                let payload = body.get(2..).unwrap_or_default();
                Ok(Packet::Data { seq, payload })
            }
            KIND_CREDIT => {
                fixed(5)?;
                Ok(Packet::Credit { ack: u16_at(0), grant: u16_at(2) })
            }
            KIND_PING => {
                fixed(3)?;
                Ok(Packet::Ping { sent: u16_at(0) })
            }
            KIND_PONG => {
                fixed(1)?;
                Ok(Packet::Pong)
            }
            KIND_CLOSE => {
                fixed(2)?;
                Ok(Packet::Close { reason: CloseReason::from_code(body.first().copied().unwrap_or(0)) })
            }
            other => Err(PacketError::UnknownKind(other)),
        }
    }

    /// Appends the packet's encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Packet::Hello { version, tag, app_tag, window, max_packet } => {
                out.reserve(HELLO_LEN);
                out.push(KIND_HELLO);
                out.push(version);
                out.extend_from_slice(&tag);
                out.extend_from_slice(&app_tag);
                out.extend_from_slice(&window.to_le_bytes());
                out.extend_from_slice(&max_packet.to_le_bytes());
            }
            Packet::Data { seq, payload } => {
                out.reserve(DATA_HEADER_LEN + payload.len());
                out.push(KIND_DATA);
                out.extend_from_slice(&seq.to_le_bytes());
                out.extend_from_slice(payload);
            }
            Packet::Credit { ack, grant } => {
                out.push(KIND_CREDIT);
                out.extend_from_slice(&ack.to_le_bytes());
                out.extend_from_slice(&grant.to_le_bytes());
            }
            Packet::Ping { sent } => {
                out.push(KIND_PING);
                out.extend_from_slice(&sent.to_le_bytes());
            }
            Packet::Pong => out.push(KIND_PONG),
            Packet::Close { reason } => {
                out.push(KIND_CLOSE);
                out.push(reason.code());
            }
        }
    }

    /// The packet's encoding.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// The length of the packet's encoding.
    pub fn encoded_len(&self) -> usize {
        match self {
            Packet::Hello { .. } => HELLO_LEN,
            Packet::Data { payload, .. } => DATA_HEADER_LEN + payload.len(),
            Packet::Credit { .. } => 5,
            Packet::Ping { .. } => 3,
            Packet::Pong => 1,
            Packet::Close { .. } => 2,
        }
    }
}

/// Wraps a packet as an L2CAP record: its length as a u16 little-endian, then the packet.
///
/// # Errors
/// [`PacketError::Empty`] for an empty packet, [`PacketError::TooLarge`] for one longer than [`MAX_RECORD`].
pub fn encode_record(packet: &[u8]) -> Result<Vec<u8>, PacketError> {
    if packet.is_empty() {
        return Err(PacketError::Empty);
    }
    let len = u16::try_from(packet.len()).map_err(|_| PacketError::TooLarge { len: packet.len(), max: MAX_RECORD })?;
    let mut out = Vec::with_capacity(RECORD_HEADER_LEN + packet.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(packet);
    Ok(out)
}

/// Cuts an L2CAP byte stream, delivered in arbitrary pieces, back into packets (records of [`encode_record`]).
///
/// # Memory
/// A packet that lies whole within one piece is handed on without being copied; only a packet split across pieces
/// is buffered, and never more than `max_packet` bytes of it: a record header declaring a length of 0 or more than
/// `max_packet` fails the decoder as soon as its two bytes have arrived. So whatever the pieces, the decoder holds
/// at most `max_packet` + 2 bytes. A failed decoder drops its buffer and returns the same error from every later
/// call: the stream is out of step and the link must be closed.
#[derive(Debug)]
pub struct StreamDecoder {
    /// The largest record length accepted.
    max_packet: usize,
    /// The bytes of a length prefix received so far (`header_len` of them).
    header: [u8; RECORD_HEADER_LEN],
    /// How many bytes of `header` are filled.
    header_len: usize,
    /// The length of the record being received, once its header is complete.
    need: Option<usize>,
    /// The part of the current record received so far, when it is split across pieces.
    partial: Vec<u8>,
    /// Set once the stream broke the rules.
    failed: Option<PacketError>,
}

impl StreamDecoder {
    /// A decoder accepting records of at most `max_packet` bytes (itself at most [`MAX_RECORD`]).
    pub fn new(max_packet: usize) -> StreamDecoder {
        StreamDecoder {
            max_packet: max_packet.clamp(1, MAX_RECORD),
            header: [0; RECORD_HEADER_LEN],
            header_len: 0,
            need: None,
            partial: Vec::new(),
            failed: None,
        }
    }

    /// Feeds the next piece of the stream, calling `on_packet` with every packet it completes, in order.
    ///
    /// If `on_packet` fails, feeding stops there and its error is returned; the decoder stays consistent (the
    /// rest of the piece is dropped, so the caller should treat the stream as broken).
    ///
    /// # Errors
    /// [`PacketError::EmptyRecord`] or [`PacketError::TooLarge`] (as `E`) for a record header declaring a length
    /// of 0 or more than `max_packet`; the decoder then stays failed. Or the error of `on_packet`.
    pub fn feed<E: From<PacketError>>(
        &mut self,
        mut bytes: &[u8],
        mut on_packet: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        if let Some(err) = self.failed {
            trace!("stream decoder: ignoring {} bytes after {err}", bytes.len());
            return Err(err.into());
        }
        while !bytes.is_empty() {
            let need = match self.need {
                Some(need) => need,
                None => {
                    while self.header_len < RECORD_HEADER_LEN {
                        let Some((&b, rest)) = bytes.split_first() else { return Ok(()) };
                        if let Some(slot) = self.header.get_mut(self.header_len) {
                            *slot = b;
                        }
                        self.header_len += 1;
                        bytes = rest;
                    }
                    self.header_len = 0;
                    let len = usize::from(u16::from_le_bytes(self.header));
                    if len == 0 {
                        return Err(self.fail(PacketError::EmptyRecord).into());
                    }
                    if len > self.max_packet {
                        return Err(self.fail(PacketError::TooLarge { len, max: self.max_packet }).into());
                    }
                    self.need = Some(len);
                    len
                }
            };
            if self.partial.is_empty() && bytes.len() >= need {
                let (packet, rest) = bytes.split_at(need);
                bytes = rest;
                self.need = None;
                on_packet(packet)?;
                continue;
            }
            let take = need.saturating_sub(self.partial.len()).min(bytes.len());
            let (head, rest) = bytes.split_at(take);
            self.partial.extend_from_slice(head);
            bytes = rest;
            if self.partial.len() >= need {
                let packet = std::mem::take(&mut self.partial);
                self.need = None;
                on_packet(&packet)?;
                // Keep one buffer's worth of capacity for the next split packet.
                self.partial = packet;
                self.partial.clear();
            }
        }
        Ok(())
    }

    /// Feeds a piece and collects the packets it completes (a convenience over [`feed`](Self::feed)).
    ///
    /// # Errors
    /// As [`feed`](Self::feed).
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, PacketError> {
        let mut out = Vec::new();
        self.feed(bytes, |p| {
            out.push(p.to_vec());
            Ok::<(), PacketError>(())
        })?;
        Ok(out)
    }

    /// The number of bytes held (a split header and a split packet).
    pub fn buffered_len(&self) -> usize {
        self.header_len + self.partial.len()
    }

    /// Whether the stream broke the rules.
    pub fn is_failed(&self) -> bool {
        self.failed.is_some()
    }

    fn fail(&mut self, err: PacketError) -> PacketError {
        debug!("stream decoder: {err}; the stream is no longer usable");
        self.failed = Some(err);
        self.partial = Vec::new();
        self.header_len = 0;
        self.need = None;
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TAG: DeviceTag = [1, 2, 3, 4, 5, 6, 7, 8];
    const APP: AppTag = [0xA, 0xB, 0xC, 0xD];

    fn hello(window: u16, max_packet: u16) -> Packet<'static> {
        Packet::Hello { version: PROTOCOL_VERSION, tag: TAG, app_tag: APP, window, max_packet }
    }

    fn round_trip(p: Packet<'_>) {
        let bytes = p.to_vec();
        assert_eq!(bytes.len(), p.encoded_len());
        assert_eq!(Packet::decode(&bytes), Ok(p));
    }

    #[test]
    fn every_kind_round_trips() {
        round_trip(hello(32, 514));
        round_trip(hello(1, MIN_PACKET));
        round_trip(hello(u16::MAX, u16::MAX));
        round_trip(Packet::Data { seq: 0, payload: b"x" });
        round_trip(Packet::Data { seq: 0xFFFF, payload: &[7; 511] });
        round_trip(Packet::Credit { ack: 0xFFFF, grant: 0 });
        round_trip(Packet::Credit { ack: 12, grant: 300 });
        round_trip(Packet::Ping { sent: 0x1234 });
        round_trip(Packet::Pong);
        for code in 0..=255u8 {
            let reason = CloseReason::from_code(code);
            assert_eq!(reason.code(), code);
            round_trip(Packet::Close { reason });
        }
    }

    #[test]
    fn encodings_are_little_endian_and_exact() {
        assert_eq!(
            hello(0x0120, 0x0202).to_vec(),
            [1, 2, 1, 2, 3, 4, 5, 6, 7, 8, 0xA, 0xB, 0xC, 0xD, 0x20, 0x01, 0x02, 0x02]
        );
        assert_eq!(Packet::Data { seq: 0x0102, payload: b"ab" }.to_vec(), [2, 0x02, 0x01, b'a', b'b']);
        assert_eq!(Packet::Credit { ack: 0x0304, grant: 0x0506 }.to_vec(), [3, 4, 3, 6, 5]);
        assert_eq!(Packet::Ping { sent: 0x0102 }.to_vec(), [4, 2, 1]);
        assert_eq!(Packet::Pong.to_vec(), [5]);
        assert_eq!(Packet::Close { reason: CloseReason::Duplicate }.to_vec(), [6, 1]);
    }

    #[test]
    fn decode_errors() {
        assert_eq!(Packet::decode(&[]), Err(PacketError::Empty));
        assert_eq!(Packet::decode(&[0]), Err(PacketError::UnknownKind(0)));
        assert_eq!(Packet::decode(&[7, 1, 2]), Err(PacketError::UnknownKind(7)));
        assert_eq!(Packet::decode(&[0xFF]), Err(PacketError::UnknownKind(0xFF)));

        let h = hello(4, 100).to_vec();
        assert_eq!(Packet::decode(&h[..17]), Err(PacketError::Truncated { kind: 1, len: 17, need: 18 }));
        assert_eq!(Packet::decode(&h[..1]), Err(PacketError::Truncated { kind: 1, len: 1, need: 18 }));
        let mut long = h.clone();
        long.push(0);
        assert_eq!(Packet::decode(&long), Err(PacketError::TrailingBytes { kind: 1, len: 19, expected: 18 }));
        let mut v1 = h.clone();
        v1[1] = 1;
        assert_eq!(Packet::decode(&v1), Err(PacketError::UnsupportedVersion(1)), "version 1 had a shorter Ping");
        let mut v0 = h.clone();
        v0[1] = 0;
        assert_eq!(Packet::decode(&v0), Err(PacketError::UnsupportedVersion(0)));
        assert_eq!(Packet::decode(&hello(0, 100).to_vec()), Err(PacketError::ZeroWindow));
        assert_eq!(Packet::decode(&hello(4, 19).to_vec()), Err(PacketError::MaxPacketTooSmall(19)));
        assert_eq!(Packet::decode(&hello(4, 0).to_vec()), Err(PacketError::MaxPacketTooSmall(0)));

        assert_eq!(Packet::decode(&[2]), Err(PacketError::Truncated { kind: 2, len: 1, need: 4 }));
        assert_eq!(Packet::decode(&[2, 0, 0]), Err(PacketError::Truncated { kind: 2, len: 3, need: 4 }));
        assert_eq!(Packet::decode(&[3, 0, 0, 0]), Err(PacketError::Truncated { kind: 3, len: 4, need: 5 }));
        assert_eq!(
            Packet::decode(&[3, 0, 0, 0, 0, 0]),
            Err(PacketError::TrailingBytes { kind: 3, len: 6, expected: 5 })
        );
        assert_eq!(Packet::decode(&[4, 0]), Err(PacketError::Truncated { kind: 4, len: 2, need: 3 }));
        assert_eq!(Packet::decode(&[4, 0, 0, 0]), Err(PacketError::TrailingBytes { kind: 4, len: 4, expected: 3 }));
        assert_eq!(Packet::decode(&[5, 0]), Err(PacketError::TrailingBytes { kind: 5, len: 2, expected: 1 }));
        assert_eq!(Packet::decode(&[6]), Err(PacketError::Truncated { kind: 6, len: 1, need: 2 }));
        assert_eq!(Packet::decode(&[6, 0, 0]), Err(PacketError::TrailingBytes { kind: 6, len: 3, expected: 2 }));
    }

    #[test]
    fn error_messages_are_readable() {
        assert_eq!(PacketError::UnknownKind(9).to_string(), "unknown packet kind 0x09");
        assert_eq!(
            PacketError::Truncated { kind: 1, len: 3, need: 18 }.to_string(),
            "packet of kind 0x01 is 3 bytes, needs 18"
        );
        assert_eq!(PacketError::UnsupportedVersion(2).to_string(), "unsupported protocol version 2");
        assert_eq!(CloseReason::Other(99).to_string(), "reason 99");
    }

    #[test]
    fn records_round_trip_and_reject_bad_lengths() {
        assert_eq!(encode_record(&[4]), Ok(vec![1, 0, 4]));
        assert_eq!(encode_record(&[]), Err(PacketError::Empty));
        assert_eq!(
            encode_record(&vec![0; MAX_RECORD + 1]),
            Err(PacketError::TooLarge { len: MAX_RECORD + 1, max: MAX_RECORD })
        );
        let mut d = StreamDecoder::new(100);
        assert_eq!(d.push(&[0, 0]), Err(PacketError::EmptyRecord));
        assert!(d.is_failed());
        assert_eq!(d.push(&[1, 0, 4]), Err(PacketError::EmptyRecord));

        let mut d = StreamDecoder::new(100);
        assert_eq!(d.push(&[1, 0, 4, 101]), Ok(vec![vec![4]]));
        assert_eq!(d.buffered_len(), 1);
        assert_eq!(d.push(&[0]), Err(PacketError::TooLarge { len: 101, max: 100 }));
        assert_eq!(d.buffered_len(), 0);
        assert_eq!(d.push(&[1, 0, 4]), Err(PacketError::TooLarge { len: 101, max: 100 }));
    }

    #[test]
    fn a_callback_error_stops_feeding() {
        let mut stream = encode_record(&[4]).unwrap();
        stream.extend(encode_record(&[5]).unwrap());
        let mut d = StreamDecoder::new(10);
        let mut seen = Vec::new();
        let r = d.feed(&stream, |p| {
            seen.push(p.to_vec());
            Err(PacketError::UnknownKind(p[0]))
        });
        assert_eq!(r, Err(PacketError::UnknownKind(4)));
        assert_eq!(seen, vec![vec![4]]);
    }

    proptest! {
        #[test]
        fn stream_decoder_with_arbitrary_chunking(
            packets in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 0..40),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..60),
        ) {
            let mut stream = Vec::new();
            for p in &packets {
                stream.extend(encode_record(p).unwrap());
            }
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
            points.push(0);
            points.push(stream.len());
            points.sort_unstable();
            let mut d = StreamDecoder::new(299);
            let mut got = Vec::new();
            for pair in points.windows(2) {
                got.extend(d.push(&stream[pair[0]..pair[1]]).unwrap());
                prop_assert!(d.buffered_len() <= 299 + RECORD_HEADER_LEN);
            }
            prop_assert_eq!(got, packets);
            prop_assert_eq!(d.buffered_len(), 0);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(p) = Packet::decode(&bytes) {
                prop_assert_eq!(p.to_vec(), bytes.clone());
            }
            let mut d = StreamDecoder::new(40);
            for chunk in bytes.chunks(5) {
                match d.push(chunk) {
                    Ok(ps) => for p in ps { prop_assert!(!p.is_empty() && p.len() <= 40) },
                    Err(_) => prop_assert!(d.is_failed()),
                }
                prop_assert!(d.buffered_len() <= 42);
            }
        }
    }
}
