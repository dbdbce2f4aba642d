//! The devices found by mDNS that the node dials, within bounds that fake records cannot exhaust.
//!
//! An mDNS record is a claim anyone on the LAN can make, with any device key and any addresses, and each record
//! costs the node a dialer. So the table of dial targets ([`DialTargets`]) holds at most
//! [`MAX_DISCOVERED_DEVICES`], of which at most [`MAX_DEVICES_PER_ADDRESS`] advertised at one address (its first,
//! preferred address; IPv6 by /64 prefix). When a new device would exceed either cap, a target is evicted to make
//! room — fairly, so that honest devices are still dialled while records flood in:
//! 1. a device linked now (it proved it holds the app secret) is never evicted;
//! 2. at a full address, that address's own targets make room (a flood from one address only churns itself);
//! 3. otherwise the target whose dials failed most often goes first (fake records lead nowhere, or to a device
//!    without the app secret), then one of the most crowded address, then the oldest (a newcomer gets its chance
//!    to be dialled, and once linked it stays).
//!
//! A new device that can make room for itself in none of these ways is not dialled (logged).

use super::slots::Source;
use crate::security::DeviceKey;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// The most discovered devices dialled at once: a LAN rarely holds more devices of one app, and each target costs
/// a dialer task and a connection attempt now and then.
pub const MAX_DISCOVERED_DEVICES: usize = 64;

/// The most discovered devices dialled at once that advertise the same (first) address: a host runs a few devices
/// of the app at most, so a flood of records naming one address churns only these.
pub const MAX_DEVICES_PER_ADDRESS: usize = 4;

/// How often dialling a target failed in a row (a connection error, or a connection that did not sync), shared
/// between the table and the target's dialer.
#[derive(Clone, Debug, Default)]
pub(crate) struct Failures(Arc<AtomicU32>);

impl Failures {
    /// One more failed attempt.
    pub fn failed(&self) {
        let _ = self.0.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_add(1));
    }

    /// The target synced: its record told the truth.
    pub fn synced(&self) {
        self.0.store(0, Ordering::Release);
    }

    fn get(&self) -> u32 {
        self.0.load(Ordering::Acquire)
    }
}

struct Entry<T> {
    source: Option<Source>,
    /// Insertion order (smaller is older).
    order: u64,
    failures: Failures,
    handle: T,
}

/// The discovered devices being dialled, each with the handle of its dialer (see the module docs).
pub(crate) struct DialTargets<T> {
    entries: HashMap<DeviceKey, Entry<T>>,
    next_order: u64,
}

impl<T> Default for DialTargets<T> {
    fn default() -> Self {
        DialTargets { entries: HashMap::new(), next_order: 0 }
    }
}

impl<T> DialTargets<T> {
    /// The dialer handle of `device`, if it is a target.
    pub fn get(&self, device: &DeviceKey) -> Option<&T> {
        self.entries.get(device).map(|e| &e.handle)
    }

    /// Stop dialling `device`.
    pub fn remove(&mut self, device: &DeviceKey) -> Option<T> {
        self.entries.remove(device).map(|e| e.handle)
    }

    /// Keep only the targets whose handle passes `keep`.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.entries.retain(|_, e| keep(&e.handle));
    }

    /// How many devices are targets.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Add `device`, advertised at `addrs` (preferred first), with its dialer's `handle` and failure counter,
    /// evicting targets as the module docs say; `linked` tells which devices are linked now. Returns the evicted
    /// targets (their dialers must stop), or the handle back when there is no room.
    pub fn insert(
        &mut self,
        device: DeviceKey,
        addrs: &[SocketAddr],
        failures: Failures,
        handle: T,
        linked: impl Fn(&DeviceKey) -> bool,
    ) -> Result<Vec<(DeviceKey, T)>, T> {
        let source = addrs.first().map(|a| Source::of(a.ip()));
        let mut evicted = Vec::new();
        if let Some(old) = self.entries.remove(&device) {
            evicted.push((device, old.handle));
        }
        let at_source = self.entries.values().filter(|e| e.source.is_some() && e.source == source).count();
        if at_source >= MAX_DEVICES_PER_ADDRESS {
            match self.victim(|e| e.source == source, &linked) {
                Some(v) => evicted.extend(self.remove(&v).map(|h| (v, h))),
                None => return Err(handle),
            }
        } else if self.entries.len() >= MAX_DISCOVERED_DEVICES {
            match self.victim(|_| true, &linked) {
                Some(v) => evicted.extend(self.remove(&v).map(|h| (v, h))),
                None => return Err(handle),
            }
        }
        let order = self.next_order;
        self.next_order += 1;
        self.entries.insert(device, Entry { source, order, failures, handle });
        Ok(evicted)
    }

    /// The target to evict among those passing `among`: not linked; most failures, then most crowded source,
    /// then oldest.
    fn victim(&self, among: impl Fn(&Entry<T>) -> bool, linked: &impl Fn(&DeviceKey) -> bool) -> Option<DeviceKey> {
        let mut crowd: HashMap<Option<Source>, usize> = HashMap::new();
        for e in self.entries.values() {
            *crowd.entry(e.source).or_default() += 1;
        }
        self.entries
            .iter()
            .filter(|(d, e)| among(e) && !linked(d))
            .max_by_key(|(_, e)| {
                (e.failures.get(), crowd.get(&e.source).copied().unwrap_or(0), std::cmp::Reverse(e.order))
            })
            .map(|(d, _)| *d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> DeviceKey {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&i.to_be_bytes());
        k[4] = 0xfa;
        DeviceKey(k)
    }

    fn addr(a: u8, b: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, a, b], 7000))
    }

    #[test]
    fn a_flood_of_records_from_one_address_leaves_room_for_an_honest_device() {
        let mut t: DialTargets<u32> = DialTargets::default();
        for i in 0..1000 {
            let _ = t.insert(key(i), &[addr(6, 6)], Failures::default(), i, |_| false);
        }
        assert_eq!(t.len(), MAX_DEVICES_PER_ADDRESS);
        let honest = DeviceKey([7; 32]);
        assert!(t.insert(honest, &[addr(1, 1)], Failures::default(), 7, |_| false).is_ok());
        for i in 1000..2000 {
            let _ = t.insert(key(i), &[addr(6, 6)], Failures::default(), i, |_| false);
        }
        assert_eq!(t.get(&honest), Some(&7), "the honest device is still dialled");
        assert_eq!(t.len(), MAX_DEVICES_PER_ADDRESS + 1);
    }

    #[test]
    fn a_flood_from_many_addresses_is_capped_and_evicts_failed_targets_first_never_linked_ones() {
        let mut t: DialTargets<u32> = DialTargets::default();
        let linked_dev = DeviceKey([1; 32]);
        assert!(t.insert(linked_dev, &[addr(1, 1)], Failures::default(), 1, |_| false).is_ok());
        let mut fakes = Vec::new();
        for i in 0..300u32 {
            let f = Failures::default();
            let a = addr(100 + (i / 250) as u8, (i % 250) as u8);
            if t.insert(key(i), &[a], f.clone(), i, |d| *d == linked_dev).is_ok() {
                fakes.push(f);
            }
            // Dialling the fake records fails.
            for f in &fakes {
                f.failed();
            }
            assert!(t.len() <= MAX_DISCOVERED_DEVICES);
        }
        assert_eq!(t.len(), MAX_DISCOVERED_DEVICES);
        assert_eq!(t.get(&linked_dev), Some(&1), "a linked device is never evicted");
        // An honest newcomer takes the place of a target whose dials failed, and stays through a further flood
        // of records that also fail.
        let honest = DeviceKey([7; 32]);
        let honest_failures = Failures::default();
        assert!(t.insert(honest, &[addr(2, 2)], honest_failures, 7, |d| *d == linked_dev).is_ok());
        for i in 300..400u32 {
            let f = Failures::default();
            f.failed();
            let _ = t.insert(key(i), &[addr(200, (i % 250) as u8)], f, i, |d| *d == linked_dev);
        }
        assert_eq!(t.get(&honest), Some(&7));
        assert_eq!(t.len(), MAX_DISCOVERED_DEVICES);
    }

    #[test]
    fn a_full_table_of_linked_devices_refuses_newcomers() {
        let mut t: DialTargets<u32> = DialTargets::default();
        for i in 0..MAX_DISCOVERED_DEVICES as u32 {
            assert!(t.insert(key(i), &[addr(3, i as u8)], Failures::default(), i, |_| true).is_ok());
        }
        assert_eq!(t.insert(DeviceKey([9; 32]), &[addr(4, 4)], Failures::default(), 99, |_| true), Err(99));
        // Re-announcing a target replaces it rather than counting twice.
        let evicted = t.insert(key(0), &[addr(3, 0)], Failures::default(), 100, |_| true);
        assert_eq!(evicted.map(|v| v.len()), Ok(1));
        assert_eq!(t.len(), MAX_DISCOVERED_DEVICES);
    }
}
