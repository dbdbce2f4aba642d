//! An in-memory "air" for [`Radio`]s: radios in one process that see each other and connect instantly, with
//! GATT-sized packets. For tests of everything above the platform radio (nodes syncing over BLE links) without
//! Bluetooth hardware; the timing and constraints of real radios are modelled by the simulator instead
//! ([`crate::sim::radio`]).

use crate::transport::ble::link::{Channel, Role};
use crate::transport::ble::links::RadioCommand;
use crate::transport::ble::radio::{Radio, RadioEvent, RadioEvents};
use crate::util::lock;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Air {
    radios: BTreeMap<String, Station>,
    /// Pairs of addresses that cannot hear each other.
    blocked: BTreeSet<(String, String)>,
    /// conn → (address of this end, the other end's address, the other end's conn).
    conns: BTreeMap<u64, (String, String, u64)>,
    next_conn: u64,
}

#[derive(Default)]
struct Station {
    events: Option<RadioEvents>,
    advertising: Option<Vec<u8>>,
    scanning: bool,
}

/// Radios sharing one in-memory air. Cheap to clone.
#[derive(Clone, Default)]
pub struct MemoryAir {
    air: Arc<Mutex<Air>>,
    att_mtu: u16,
}

impl MemoryAir {
    /// An air where connections get ATT MTU `att_mtu`.
    pub fn new(att_mtu: u16) -> MemoryAir {
        MemoryAir { air: Arc::default(), att_mtu }
    }

    /// A radio with this address.
    pub fn radio(&self, address: &str) -> Arc<MemoryRadio> {
        lock(&self.air).radios.entry(address.to_string()).or_default();
        Arc::new(MemoryRadio { air: self.clone(), address: address.to_string() })
    }

    /// Whether `a` and `b` hear each other; making them deaf to each other drops their connections.
    pub fn set_in_range(&self, a: &str, b: &str, in_range: bool) {
        let mut air = lock(&self.air);
        let key = if a < b { (a.to_string(), b.to_string()) } else { (b.to_string(), a.to_string()) };
        if in_range {
            air.blocked.remove(&key);
            drop(air);
            self.rescan();
        } else {
            air.blocked.insert(key);
            let doomed: Vec<u64> = air
                .conns
                .iter()
                .filter(|(_, (me, other, _))| (me == a && other == b) || (me == b && other == a))
                .map(|(c, _)| *c)
                .collect();
            let mut reports = Vec::new();
            for c in doomed {
                if let Some((me, _, _)) = air.conns.remove(&c) {
                    reports.push((me, RadioEvent::Disconnected { conn: c }));
                }
            }
            Self::send_all(&air, reports);
        }
    }

    fn in_range(air: &Air, a: &str, b: &str) -> bool {
        let key = if a < b { (a.to_string(), b.to_string()) } else { (b.to_string(), a.to_string()) };
        !air.blocked.contains(&key)
    }

    fn send_all(air: &Air, reports: Vec<(String, RadioEvent)>) {
        for (to, e) in reports {
            if let Some(ev) = air.radios.get(&to).and_then(|s| s.events.as_ref()) {
                ev.report(e);
            }
        }
    }

    /// Every scanning radio hears every advertising radio in range.
    fn rescan(&self) {
        let air = lock(&self.air);
        let mut reports = Vec::new();
        for (scanner, s) in &air.radios {
            if !s.scanning {
                continue;
            }
            for (adv, a) in &air.radios {
                if adv != scanner && Self::in_range(&air, scanner, adv) {
                    if let Some(data) = &a.advertising {
                        let service_data = (!data.is_empty()).then(|| data.clone());
                        reports.push((scanner.clone(), RadioEvent::Discovered { address: adv.clone(), service_data }));
                    }
                }
            }
        }
        Self::send_all(&air, reports);
    }
}

/// One radio of a [`MemoryAir`].
pub struct MemoryRadio {
    air: MemoryAir,
    address: String,
}

impl MemoryRadio {
    /// Report the advertisers in range again (a scan result arrives periodically on real radios).
    pub fn rescan(&self) {
        self.air.rescan();
    }
}

impl Radio for MemoryRadio {
    fn attach(&self, events: RadioEvents) {
        lock(&self.air.air).radios.entry(self.address.clone()).or_default().events = Some(events);
    }

    fn execute(&self, command: RadioCommand) {
        let mtu = self.air.att_mtu;
        let mut air = lock(&self.air.air);
        let me = self.address.clone();
        let mut reports = Vec::new();
        match command {
            RadioCommand::StartAdvertising { service_data } => {
                air.radios.entry(me).or_default().advertising = Some(service_data);
                drop(air);
                self.air.rescan();
                return;
            }
            RadioCommand::StartScanning => {
                air.radios.entry(me).or_default().scanning = true;
                drop(air);
                self.air.rescan();
                return;
            }
            RadioCommand::Connect { address } => {
                let reachable = air.radios.get(&address).is_some_and(|s| s.advertising.is_some() && s.events.is_some())
                    && Self::reachable(&air, &me, &address);
                if reachable {
                    let (a, b) = (air.next_conn + 1, air.next_conn + 2);
                    air.next_conn += 2;
                    air.conns.insert(a, (me.clone(), address.clone(), b));
                    air.conns.insert(b, (address.clone(), me.clone(), a));
                    let channel = Channel::Gatt { att_mtu: mtu };
                    reports.push((
                        me.clone(),
                        RadioEvent::Connected { conn: a, address: address.clone(), role: Role::Central, channel },
                    ));
                    reports.push((
                        address,
                        RadioEvent::Connected { conn: b, address: me, role: Role::Peripheral, channel },
                    ));
                } else {
                    reports.push((me, RadioEvent::ConnectFailed { address }));
                }
            }
            RadioCommand::CancelConnect { .. } => {}
            RadioCommand::Disconnect { conn } => {
                if let Some((_, other, other_conn)) = air.conns.remove(&conn) {
                    air.conns.remove(&other_conn);
                    reports.push((other, RadioEvent::Disconnected { conn: other_conn }));
                }
            }
            RadioCommand::Send { conn, packet } => {
                if let Some((_, other, other_conn)) = air.conns.get(&conn).cloned() {
                    reports.push((other, RadioEvent::Packet { conn: other_conn, bytes: packet }));
                    reports.push((me, RadioEvent::Sent { conn }));
                }
            }
        }
        MemoryAir::send_all(&air, reports);
    }

    fn detach(&self) {
        let mut air = lock(&self.air.air);
        let me = self.address.clone();
        let mine: Vec<u64> = air.conns.iter().filter(|(_, (a, _, _))| *a == me).map(|(c, _)| *c).collect();
        let mut reports = Vec::new();
        for c in mine {
            if let Some((_, other, other_conn)) = air.conns.remove(&c) {
                air.conns.remove(&other_conn);
                reports.push((other, RadioEvent::Disconnected { conn: other_conn }));
            }
        }
        if let Some(s) = air.radios.get_mut(&me) {
            *s = Station::default();
        }
        MemoryAir::send_all(&air, reports);
    }
}

impl MemoryRadio {
    fn reachable(air: &Air, a: &str, b: &str) -> bool {
        MemoryAir::in_range(air, a, b)
    }
}
