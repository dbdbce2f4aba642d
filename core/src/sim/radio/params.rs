//! The radio model's parameters and units: air time of PDUs, [`RadioParams`] (the defaults of every radio),
//! [`PhoneOptions`] (how one phone differs), and what is counted ([`PhoneStats`], [`ConnInfo`]).

use super::PhoneId;
use crate::sim::pipe::{probability, LinkParams};
use crate::sim::{DEFAULT_SECRET, MILLISECOND, SECOND};
use crate::transport::ble::link::ATT_HEADER_LEN;
use crate::transport::ble::AppTag;

/// How often [`World::run_until_quiet`](crate::sim::World::run_until_quiet) checks whether the world is quiet (virtual µs).
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

/// How the radios of a [`RadioWorld`](super::RadioWorld) behave.
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
    /// Links made by [`RadioWorld::lan_link`](super::RadioWorld::lan_link).
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
    pub(super) fn loss_rate(&self) -> f64 {
        probability(self.loss)
    }

    pub(super) fn reorder_rate(&self) -> f64 {
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
    /// Enrolled by the world's app authority ([`World::authority`](crate::sim::World::authority)) with these
    /// grants instead of holding `secret` (see [`Credentials::Enrolled`](crate::sim::Credentials::Enrolled)).
    pub enrolled: Option<Vec<crate::security::Grant>>,
    /// Its app tag; derived from the secret ([`crate::transport::ble::radio::app_tag`]) when `None`.
    pub app_tag: Option<AppTag>,
    /// Whether it advertises its tags (Android: true; iOS: false, so it is always dialled and never skipped).
    pub advertise_tag: bool,
    /// Its [`BleConfig::max_links`](crate::transport::ble::links::BleConfig::max_links), when not the default.
    pub max_links: Option<usize>,
}

impl Default for PhoneOptions {
    fn default() -> PhoneOptions {
        PhoneOptions {
            range_m: None,
            secret: DEFAULT_SECRET.to_vec(),
            enrolled: None,
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

    /// A phone enrolled by the world's authority with `grants`.
    pub fn enrolled(grants: Vec<crate::security::Grant>) -> PhoneOptions {
        PhoneOptions { enrolled: Some(grants), ..PhoneOptions::default() }
    }
}

/// Counters of one phone (since the last [`RadioWorld::reset_stats`](super::RadioWorld::reset_stats)).
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
    /// BLE packets received (delivered to the phone's links).
    pub packets_received: u64,
    /// Their bytes.
    pub packet_bytes_received: u64,
    /// Time this phone's radio was busy (µs).
    pub airtime_us: u64,
    /// Sync engine frames handed to the BLE links, to send.
    pub ble_frames_sent: u64,
    /// Their bytes.
    pub ble_frame_bytes_sent: u64,
    /// Sync engine frames received from the BLE links.
    pub ble_frames_received: u64,
    /// Their bytes.
    pub ble_frame_bytes_received: u64,
    /// LAN frames sent.
    pub lan_frames_sent: u64,
    /// Their bytes, with the 4-byte length prefix of each.
    pub lan_bytes_sent: u64,
    /// Connections established, in either role.
    pub connections: u64,
    /// Connection attempts of this phone that failed.
    pub connect_failures: u64,
    /// Connections dropped by supervision (no successful exchange for [`RadioParams::supervision_timeout_us`]).
    pub supervision_drops: u64,
    /// Packets lost with a dropped connection, queued or in the air when it went (counted at the central, for both
    /// directions).
    pub packets_dropped: u64,
    /// Links announced to the engine.
    pub links_up: u64,
    /// Links closed as duplicates of another connection to the same phone.
    pub duplicates_closed: u64,
    /// Packets this radio sent ahead of the one queued before them ([`RadioParams::reorder`]).
    pub packets_reordered: u64,
    /// Links that failed on this phone's side (a protocol error or a timeout; not a Close from the peer).
    pub link_errors: u64,
}

/// One BLE connection, as [`RadioWorld::connections`](super::RadioWorld::connections) describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// The radio's connection id (the same at both ends).
    pub id: u64,
    /// The phone that dialled (the central).
    pub central: PhoneId,
    /// The phone that accepted (the peripheral).
    pub peripheral: PhoneId,
    /// The connection interval, in µs (virtual time).
    pub interval_us: u64,
    /// The negotiated ATT MTU (the current one is 23 until the exchange completed).
    pub att_mtu: u16,
    /// The ATT MTU in use now: 23 until the MTU exchange completes, then [`ConnInfo::att_mtu`].
    pub current_mtu: u16,
    /// The most packets per direction in one connection event.
    pub packets_per_event: usize,
    /// When the connection was established (virtual time, µs).
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
}
