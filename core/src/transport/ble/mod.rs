//! The Bluetooth LE link protocol: everything about BLE links that does not need a radio.
//!
//! The radio itself (scanning, advertising, the GATT server and client, L2CAP channels) is platform code —
//! Android's `BluetoothLeScanner` / `BluetoothLeAdvertiser` / `BluetoothGattServer`, iOS's CoreBluetooth, desktop
//! `btleplug` — that only executes commands and reports events. This module owns the protocol on top of it, in
//! the same sans-IO style as the rest of [`crate::transport`]: no threads, no clocks (the time is passed in as
//! `now_ms`, milliseconds on any monotonic clock), no I/O. Every byte that arrives from the radio is untrusted: no
//! input makes these types panic or grow without bound, and every violation is a typed error.
//!
//! ```text
//!  sync engine ──frames──▶ BleLinks ──RadioCommand──▶ platform radio
//!       ▲                  (BleLink per connection)        │
//!       └────BleEvent────────────  ◀──events (on_*)────────┘
//! ```
//!
//! * [`packet`] — the packet codec ([`packet::Packet`]) and the [`packet::StreamDecoder`] for L2CAP streams;
//! * [`link`] — one connection ([`link::BleLink`]): hello, fragmentation of frames into packets, reassembly,
//!   credit flow control, keepalive and timeouts;
//! * [`links`] — all connections of one radio ([`links::BleLinks`]): discovery, dialling, one link per pair of
//!   phones, reconnection with backoff, a cap on simultaneous links;
//! * [`bridge`] — the glue between a radio's links and the sync engine ([`bridge::BleBridge`]), the one the node
//!   and the radio simulator both run;
//! * [`radio`] — the platform radio's trait ([`radio::Radio`]) and the node's task that drives it.
//!
//! # Roles
//! Every phone is both a **central** (it scans, and connects to the phones it finds) and a **peripheral** (it
//! advertises the Shoal service and runs a GATT server). Two phones can therefore end up connected twice at once,
//! once in each direction; [`links::BleLinks`] keeps exactly one of the two (see *Dedupe* below). The central is
//! the side that dialled: it reports the link to the sync engine with `initiator = true`.
//!
//! # Advertisement
//! A peripheral advertises the 128-bit service UUID [`SERVICE_UUID`]. Where the platform allows it (Android), the
//! advertisement also carries **service data** for that UUID: the 8-byte device tag followed by the 4-byte app
//! tag ([`encode_service_data`], [`parse_service_data`]). With it, a scanner can skip devices of other apps and
//! devices it is already linked to without connecting. iOS cannot advertise service data, so the tags are always
//! exchanged again in the [`Hello`](packet::Packet::Hello) packet, and a device seen without service data is
//! simply dialled. The *device tag* is a short, stable identifier of a device (the caller derives it, e.g. from
//! the first 8 bytes of a hash of its device key); the *app tag* tells apart the apps that use Shoal (e.g. the
//! first 4 bytes of a hash of the app id). Neither is authenticated: they only steer connection management; the
//! sync engine's Noise handshake authenticates the peer.
//!
//! # Channels
//! A connection carries packets over one of two channels ([`link::Channel`]):
//! * **GATT** — the central writes packets to the [RX characteristic](RX_CHARACTERISTIC_UUID) (write without
//!   response) and the peripheral sends packets as notifications of the [TX characteristic](TX_CHARACTERISTIC_UUID).
//!   One packet is one ATT value, so it is at most ATT_MTU − 3 bytes: 20 bytes with the default ATT MTU of 23,
//!   182 on iOS (MTU 185), up to 510 with MTU 513 and above (2 under the longest attribute value, for BlueZ:
//!   [`link::GATT_MAX_PACKET`]). The MTU exchange may complete after the
//!   connection is up ([`link::BleLink::set_att_mtu`]).
//! * **L2CAP** connection-oriented channels (Android API 29+, iOS 11+) — faster, but iOS exposes them as a byte
//!   stream, so packet boundaries are not preserved: each packet travels as a record prefixed with its length
//!   (u16 little-endian) and the receiver cuts the stream back into packets ([`packet::StreamDecoder`]). The
//!   peripheral publishes its PSM in the [PSM characteristic](PSM_CHARACTERISTIC_UUID) (u16 little-endian, 0 when
//!   it offers no L2CAP channel); a central that finds a non-zero PSM may open the channel and use it instead of
//!   GATT.
//!
//! # Packets
//! The first byte of a packet is its kind; the fields follow, little-endian ([`packet::Packet`]). A link starts
//! with a **Hello** each way (protocol version, device tag, app tag, receive window, largest packet accepted);
//! nothing else is sent before the peer's Hello has arrived. The sync engine's frames (each with the 4-byte
//! length prefix of [`crate::transport::frame`]) are concatenated into one byte stream that is cut into **Data**
//! packets, each numbered with a 16-bit wrapping sequence number, each as large as both the channel and the peer
//! allow; a Data packet may hold the end of one frame and the start of the next.
//!
//! # Credits
//! Flow control is by packet credits. Each side announces in its Hello a *window*: how many Data packets it can
//! buffer. A sender may have at most window (+ the latest grant) Data packets beyond the last one the receiver
//! acknowledged; the receiver acknowledges with **Credit** packets (cumulative: "I have consumed every Data
//! packet up to this sequence number") once half its window has been consumed by the app. A receiver therefore
//! never holds more than a window of undelivered packets, whatever the sender does: a sender that exceeds its
//! credit is cut off. Towards the sync engine, a link accepts a frame only when the previous one has started to
//! go out ([`link::BleLink::wants_frame`]), which is the backpressure that makes the engine produce frames lazily.
//!
//! # Loss and order
//! GATT writes without response and notifications are reliable within a connection (the link layer retransmits
//! until acknowledged, and drops the connection if it cannot), but not always ordered: with Enhanced ATT a
//! connection has several ATT bearers, and packets take whichever is free. A receiver on GATT therefore puts
//! packets back in order within its window; an L2CAP channel is a single ordered stream. A Data packet that never
//! arrives means the platform dropped it (e.g. a full OS queue); the receiver learns that it was sent from a later
//! packet or from the sender's Ping (which carries its next sequence number), and the link is broken
//! ([`link::LinkError::Lost`]) and dropped rather than repaired, as is a repeated packet
//! ([`link::LinkError::OutOfSequence`]). Nothing is lost by that: the sync engine resumes from what the other
//! side has acknowledged on the next connection. See [`link`] for the timings.
//!
//! # Keepalive and timeouts
//! A link sends a **Ping** when it has sent nothing for [`link::PING_MS`] (or has waited [`link::STALL_PING_MS`]
//! for credit); the peer answers **Pong**. A link fails when the peer's Hello has not arrived within
//! [`link::HELLO_TIMEOUT_MS`], when a lost Data packet has not come for [`link::GAP_TIMEOUT_MS`], or when nothing
//! at all has arrived for
//! [`link::IDLE_TIMEOUT_MS`] (so a phone that walked out of range is noticed even when the OS has not reported the
//! disconnection yet). **Close** ends a link politely, with a reason.
//!
//! # Dedupe, dialling and reconnection
//! See [`links::BleLinks`]: one link per pair of phones (when both connected to each other, both keep the
//! connection whose central has the smaller device tag), the smaller tag dials when both tags are advertised,
//! reconnection with exponential backoff and deterministic jitter, a cap on simultaneous links.

#[cfg(feature = "bluetooth-linux")]
pub mod bluez;
pub mod bridge;
pub mod link;
pub mod links;
pub mod packet;
pub mod radio;

/// A device's short, stable tag: exchanged in advertisements and Hello packets to recognise a device before the
/// sync engine's handshake (see the module docs).
pub type DeviceTag = [u8; 8];

/// The tag of an app that uses Shoal: devices of other apps are neither dialled nor linked.
pub type AppTag = [u8; 4];

/// The Shoal GATT service, advertised by every peripheral.
pub const SERVICE_UUID: &str = "8f4c0001-5d2a-4b8e-9c31-53484f414c00";
/// [`SERVICE_UUID`] as a number.
pub const SERVICE_UUID_U128: u128 = 0x8f4c_0001_5d2a_4b8e_9c31_5348_4f41_4c00;

/// The RX characteristic: packets from the central to the peripheral (write without response).
pub const RX_CHARACTERISTIC_UUID: &str = "8f4c0002-5d2a-4b8e-9c31-53484f414c00";
/// [`RX_CHARACTERISTIC_UUID`] as a number.
pub const RX_CHARACTERISTIC_UUID_U128: u128 = 0x8f4c_0002_5d2a_4b8e_9c31_5348_4f41_4c00;

/// The TX characteristic: packets from the peripheral to the central (notify).
pub const TX_CHARACTERISTIC_UUID: &str = "8f4c0003-5d2a-4b8e-9c31-53484f414c00";
/// [`TX_CHARACTERISTIC_UUID`] as a number.
pub const TX_CHARACTERISTIC_UUID_U128: u128 = 0x8f4c_0003_5d2a_4b8e_9c31_5348_4f41_4c00;

/// The PSM characteristic (read): the peripheral's L2CAP PSM as a u16 little-endian; 0 means no L2CAP channel.
pub const PSM_CHARACTERISTIC_UUID: &str = "8f4c0004-5d2a-4b8e-9c31-53484f414c00";
/// [`PSM_CHARACTERISTIC_UUID`] as a number.
pub const PSM_CHARACTERISTIC_UUID_U128: u128 = 0x8f4c_0004_5d2a_4b8e_9c31_5348_4f41_4c00;

/// The length of the advertised service data: the device tag, then the app tag.
pub const SERVICE_DATA_LEN: usize = 8 + 4;

/// The service data a peripheral advertises (where the platform allows): `tag` then `app_tag`.
pub fn encode_service_data(tag: &DeviceTag, app_tag: &AppTag) -> [u8; SERVICE_DATA_LEN] {
    let mut out = [0u8; SERVICE_DATA_LEN];
    let (t, a) = out.split_at_mut(8);
    t.copy_from_slice(tag);
    a.copy_from_slice(app_tag);
    out
}

/// The device tag and app tag of advertised service data, or `None` if it is not exactly
/// [`SERVICE_DATA_LEN`] bytes long (it came from something else, or from a later protocol version).
pub fn parse_service_data(data: &[u8]) -> Option<(DeviceTag, AppTag)> {
    if data.len() != SERVICE_DATA_LEN {
        return None;
    }
    let (t, a) = data.split_at(8);
    Some((t.try_into().ok()?, a.try_into().ok()?))
}

/// Formats a device tag as 16 hex digits, for logs.
pub(crate) fn tag_hex(tag: &DeviceTag) -> String {
    crate::util::hex(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uuid_u128(s: &str) -> u128 {
        u128::from_str_radix(&s.replace('-', ""), 16).expect("hex")
    }

    #[test]
    fn uuid_strings_and_numbers_agree() {
        assert_eq!(uuid_u128(SERVICE_UUID), SERVICE_UUID_U128);
        assert_eq!(uuid_u128(RX_CHARACTERISTIC_UUID), RX_CHARACTERISTIC_UUID_U128);
        assert_eq!(uuid_u128(TX_CHARACTERISTIC_UUID), TX_CHARACTERISTIC_UUID_U128);
        assert_eq!(uuid_u128(PSM_CHARACTERISTIC_UUID), PSM_CHARACTERISTIC_UUID_U128);
        // Only the first group's last digit differs.
        assert_eq!(RX_CHARACTERISTIC_UUID_U128 - SERVICE_UUID_U128, 1 << 96);
        assert_eq!(PSM_CHARACTERISTIC_UUID_U128 - SERVICE_UUID_U128, 3 << 96);
    }

    #[test]
    fn service_data_round_trip_and_bad_lengths() {
        let tag = [1, 2, 3, 4, 5, 6, 7, 8];
        let app = [9, 10, 11, 12];
        let data = encode_service_data(&tag, &app);
        assert_eq!(data, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        assert_eq!(parse_service_data(&data), Some((tag, app)));
        assert_eq!(parse_service_data(&data[..11]), None);
        assert_eq!(parse_service_data(&[0; 13]), None);
        assert_eq!(parse_service_data(&[]), None);
        assert_eq!(tag_hex(&tag), "0102030405060708");
    }
}
