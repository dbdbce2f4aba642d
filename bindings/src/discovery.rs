//! Local-network discovery done by the platform (a foreign trait), for where the core's own mDNS cannot run.
//!
//! iOS lets an app send and receive raw multicast (what mDNS needs) only with Apple's managed multicast
//! entitlement. Bonjour through the system — Network.framework's `NWBrowser`, DNS-SD registration — needs only the
//! Local Network permission. So on Apple platforms the app hands the store a [`LocalNetworkDiscovery`] (the Swift
//! package's `BonjourDiscovery`): it advertises this device's service and browses for the others', and the core
//! checks every report exactly as it checks an mDNS answer and dials the devices it finds over its own TCP sockets
//! (plain unicast TCP needs no entitlement either).

use crate::callbacks::{report, CallbackError};
use shoaldb::transport::lan::discovery::{self as core, DiscoveryReports};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::sync::Arc;

/// This device's DNS-SD service, for the platform to advertise.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct ServiceAdvertisement {
    /// The service type, `_shoal._tcp` (declare it in `NSBonjourServices`).
    pub service_type: String,
    /// The instance name (this device's short key).
    pub name: String,
    /// The TCP port this device listens on.
    pub port: u16,
    /// The TXT record's entries.
    pub txt: HashMap<String, String>,
}

/// Advertising and browsing on the local network through the platform's DNS-SD (see the module documentation).
/// Every method must return quickly; report from any thread. Errors thrown are logged and ignored.
#[uniffi::export(foreign)]
pub trait LocalNetworkDiscovery: Send + Sync {
    /// Sync starts: advertise `advertisement` when given (absent when this device does not listen), browse for
    /// the same service type, and report to `events` every instance found — with its TXT record and the addresses
    /// it resolves to — and every instance that goes away.
    fn start(
        &self,
        advertisement: Option<ServiceAdvertisement>,
        events: Arc<LocalNetworkEvents>,
    ) -> Result<(), CallbackError>;
    /// Sync stops: withdraw the advertisement, stop browsing, report nothing more.
    fn stop(&self) -> Result<(), CallbackError>;
}

/// Where the platform reports what it finds. Thread-safe; never blocks. Reports are checked like any answer
/// from the network (bounded, the app's tag and the device key checked, loopback never dialled).
#[derive(uniffi::Object)]
pub struct LocalNetworkEvents {
    reports: DiscoveryReports,
}

#[uniffi::export]
impl LocalNetworkEvents {
    /// The instance `name` was found (or its record changed): its TXT entries, and the IP addresses it resolves to
    /// (`192.168.1.20`, `fe80::1%4` — a link-local IPv6 address needs its interface index), with its `port`.
    /// Addresses that are not IP literals are skipped.
    pub fn found(&self, name: String, txt: HashMap<String, String>, addresses: Vec<String>, port: u16) {
        let addrs = addresses.iter().take(core::MAX_REPORTED_ADDRESSES).filter_map(|a| socket_addr(a, port)).collect();
        self.reports.found(name, txt.into_iter().collect(), addrs);
    }

    /// The instance `name` went away.
    pub fn lost(&self, name: String) {
        self.reports.lost(name);
    }
}

/// `ip` (with an optional `%index` scope) and `port` as a socket address.
fn socket_addr(ip: &str, port: u16) -> Option<SocketAddr> {
    let (addr, scope) = match ip.split_once('%') {
        Some((addr, scope)) => (addr, Some(scope.parse::<u32>().ok()?)),
        None => (ip, None),
    };
    match addr.parse::<IpAddr>().ok()? {
        IpAddr::V6(v6) => Some(SocketAddr::V6(SocketAddrV6::new(v6, port, 0, scope.unwrap_or(0)))),
        v4 if scope.is_none() => Some(SocketAddr::new(v4, port)),
        IpAddr::V4(_) => None,
    }
}

/// The app's [`LocalNetworkDiscovery`] as the core's [`core::ServiceDiscovery`].
pub(crate) struct ForeignDiscovery(pub(crate) Arc<dyn LocalNetworkDiscovery>);

impl core::ServiceDiscovery for ForeignDiscovery {
    fn start(&self, advertisement: Option<core::ServiceAdvertisement>, reports: DiscoveryReports) {
        let advertisement = advertisement.map(|a| ServiceAdvertisement {
            service_type: a.service_type,
            name: a.instance,
            port: a.port,
            txt: a.txt.into_iter().collect(),
        });
        report("local network discovery", self.0.start(advertisement, Arc::new(LocalNetworkEvents { reports })));
    }

    fn stop(&self) {
        report("local network discovery", self.0.stop());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_their_scope() {
        assert_eq!(socket_addr("192.168.1.20", 7000), Some("192.168.1.20:7000".parse().expect("v4")));
        let v6 = socket_addr("fe80::1%4", 7000).expect("scoped v6");
        assert!(matches!(v6, SocketAddr::V6(a) if a.scope_id() == 4 && a.port() == 7000));
        assert_eq!(socket_addr("fe80::1%en0", 7000), None, "an interface name is not an index");
        assert_eq!(socket_addr("10.0.0.1%3", 7000), None);
        assert_eq!(socket_addr("phone.local", 7000), None);
    }
}
