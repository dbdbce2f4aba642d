//! Finding devices of the same app on the LAN with mDNS / DNS-SD ([`SERVICE_TYPE`]).
//!
//! Each node advertises one service instance named after its short device key, on every non-loopback interface,
//! with the port it listens on and two TXT entries: `dk` (the full device key, hex) and `app` (the app's tag,
//! [`AppSecret::tag`](crate::security::AppSecret::tag)). It browses for the same service type and reports every
//! other device of the same app as [`Found::Up`] (again whenever its record is refreshed, with its current
//! addresses) and [`Found::Gone`] when its record is withdrawn. The mDNS daemon runs on its own thread; its events
//! reach tokio through the channel's async receiver.
//!
//! Where raw multicast sockets are not allowed (iOS without Apple's managed multicast entitlement), the platform
//! advertises and browses instead, through the system's own DNS-SD service, behind [`ServiceDiscovery`]: it gets
//! the same advertisement (instance name, port, TXT entries) and reports what it finds to [`DiscoveryReports`],
//! whose every report is checked here exactly like an mDNS answer (it comes from the network: a bounded number of
//! instances, TXT entries and addresses; the device key and the app's tag must be right). Connections stay the
//! core's own TCP sockets.

use crate::security::DeviceKey;
use crate::transport::hub::Hub;
use mdns_sd::{IfKind, ScopedIp, ServiceDaemon, ServiceEvent, ServiceInfo};
use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The DNS-SD service type of Shoal nodes.
pub const SERVICE_TYPE: &str = "_shoal._tcp.local.";

/// The most discovered service instances remembered at once.
const MAX_DISCOVERED: usize = 256;

/// The most addresses kept from one report of platform discovery.
pub const MAX_REPORTED_ADDRESSES: usize = 16;

/// The longest instance name, TXT key or TXT value taken from platform discovery (a DNS label, and DNS-SD's
/// largest TXT string).
pub const MAX_REPORTED_TEXT: usize = 255;

/// The most TXT entries taken from one report of platform discovery.
pub const MAX_REPORTED_TXT_ENTRIES: usize = 32;

/// How many reports of platform discovery wait to be checked before more are dropped (the platform must never
/// block: it reports from its own threads).
const REPORT_QUEUE: usize = 256;

/// This device's DNS-SD service, for platform discovery to advertise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAdvertisement {
    /// The service type without the domain, `_shoal._tcp` ([`SERVICE_TYPE`] is the same with `.local.`).
    pub service_type: String,
    /// The instance name (this device's short key).
    pub instance: String,
    /// The TCP port this device listens on.
    pub port: u16,
    /// The TXT entries: `dk` (the device key, hex) and `app` (the app's tag).
    pub txt: BTreeMap<String, String>,
}

/// Advertising and browsing DNS-SD done by the platform rather than by the core's own multicast sockets (see the
/// module's documentation). Calls must return quickly; report from any thread.
pub trait ServiceDiscovery: Send + Sync {
    /// Advertise `advertisement` (when this device listens) and browse for [`ServiceAdvertisement::service_type`],
    /// reporting each instance found, with its TXT entries and resolved addresses, to `reports`.
    fn start(&self, advertisement: Option<ServiceAdvertisement>, reports: DiscoveryReports);
    /// Withdraw the advertisement and stop browsing; report nothing more.
    fn stop(&self);
}

/// A [`ServiceDiscovery`] in a [`NodeConfig`](crate::NodeConfig) (which is `Debug`).
#[derive(Clone)]
pub struct PlatformDiscovery(pub Arc<dyn ServiceDiscovery>);

impl std::fmt::Debug for PlatformDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PlatformDiscovery(..)")
    }
}

/// Where platform discovery reports what it finds. Cheap to clone; never blocks.
#[derive(Clone)]
pub struct DiscoveryReports {
    tx: mpsc::Sender<Report>,
}

/// One report of platform discovery, as the platform gave it (unchecked).
#[derive(Debug)]
enum Report {
    Found { instance: String, txt: BTreeMap<String, String>, addrs: Vec<SocketAddr> },
    Lost { instance: String },
}

impl DiscoveryReports {
    /// The instance `instance` of the service was found (or its record changed), with its TXT entries and the
    /// addresses it resolved to (each with the service's port).
    pub fn found(&self, instance: String, txt: BTreeMap<String, String>, addrs: Vec<SocketAddr>) {
        // Bounded before anything is queued.
        if instance.len() > MAX_REPORTED_TEXT || txt.len() > MAX_REPORTED_TXT_ENTRIES {
            log::debug!("service discovery: an oversized report was dropped");
            return;
        }
        if txt.iter().any(|(k, v)| k.len() > MAX_REPORTED_TEXT || v.len() > MAX_REPORTED_TEXT) {
            log::debug!("service discovery: a report with an oversized TXT entry was dropped");
            return;
        }
        let addrs = addrs.into_iter().take(MAX_REPORTED_ADDRESSES).collect();
        self.queue(Report::Found { instance, txt, addrs });
    }

    /// The instance `instance` withdrew its record.
    pub fn lost(&self, instance: String) {
        if instance.len() <= MAX_REPORTED_TEXT {
            self.queue(Report::Lost { instance });
        }
    }

    fn queue(&self, report: Report) {
        if self.tx.try_send(report).is_err() {
            log::debug!("service discovery: report dropped (queue full or discovery stopped)");
        }
    }
}

/// What discovery reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// A device of the same app, reachable at these addresses (IPv4 first).
    Up { device: DeviceKey, addrs: Vec<SocketAddr> },
    /// The device withdrew its record.
    Gone { device: DeviceKey },
}

/// A running advertisement and browse: the core's mDNS daemon, or the platform's DNS-SD.
pub(crate) enum Discovery {
    Mdns { daemon: ServiceDaemon, fullname: Option<String> },
    Platform(Arc<dyn ServiceDiscovery>),
}

/// What this device advertises: `listen`'s port under its short device key, with `dk` and `app`; `None` when it
/// does not listen, or only on loopback (of no use to other devices).
fn advertisement(device: DeviceKey, app_tag: &str, listen: Option<SocketAddr>) -> Option<ServiceAdvertisement> {
    match listen {
        Some(addr) if addr.ip().is_loopback() => {
            log::warn!("listening on {addr} (loopback): not advertising");
            None
        }
        Some(addr) => Some(ServiceAdvertisement {
            service_type: "_shoal._tcp".into(),
            instance: device.to_string(),
            port: addr.port(),
            txt: [("dk".to_string(), device.to_hex()), ("app".to_string(), app_tag.to_string())].into(),
        }),
        None => {
            log::info!("not listening: browsing without advertising");
            None
        }
    }
}

/// The device an answer names, if it is another device of this app with an address to dial.
fn admit(
    own: DeviceKey,
    app_tag: &str,
    name: &str,
    dk: Option<&str>,
    app: Option<&str>,
    addrs: &[SocketAddr],
) -> Option<DeviceKey> {
    let Some(device) = dk.and_then(parse_device_key) else {
        log::debug!("discovery: {name} has no valid device key");
        return None;
    };
    if device == own {
        return None;
    }
    if app != Some(app_tag) {
        log::debug!("discovery: {name} belongs to another app");
        return None;
    }
    (!addrs.is_empty()).then_some(device)
}

impl Discovery {
    /// Let `platform` advertise `listen` and browse, reporting devices of the app `app_tag` on `found`.
    pub fn start_platform(
        hub: &Arc<Hub>,
        platform: Arc<dyn ServiceDiscovery>,
        app_tag: &str,
        listen: Option<SocketAddr>,
        found: mpsc::Sender<Found>,
    ) -> Discovery {
        let (tx, rx) = mpsc::channel(REPORT_QUEUE);
        hub.spawn(check_reports(hub.clone(), rx, app_tag.to_string(), found));
        platform.start(advertisement(hub.device(), app_tag, listen), DiscoveryReports { tx });
        log::info!("discovery through the platform's DNS-SD");
        Discovery::Platform(platform)
    }

    /// Start the mDNS daemon, advertise `listen` (when the node listens) and browse, reporting devices of the app
    /// `app_tag` on `found`.
    pub fn start(
        hub: &Arc<Hub>,
        app_tag: &str,
        listen: Option<SocketAddr>,
        found: mpsc::Sender<Found>,
    ) -> Result<Discovery, mdns_sd::Error> {
        let daemon = ServiceDaemon::new()?;
        // Loopback multicast is of no use to other devices.
        daemon.disable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6])?;
        let mut fullname = None;
        if let (Some(ad), Some(addr)) = (advertisement(hub.device(), app_tag, listen), listen) {
            let host = format!("shoal-{}.local.", ad.instance);
            let props: Vec<(&str, &str)> = ad.txt.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let info = if addr.ip().is_unspecified() {
                ServiceInfo::new(SERVICE_TYPE, &ad.instance, &host, (), ad.port, &props[..])?.enable_addr_auto()
            } else {
                ServiceInfo::new(SERVICE_TYPE, &ad.instance, &host, addr.ip(), ad.port, &props[..])?
            };
            fullname = Some(info.get_fullname().to_string());
            daemon.register(info)?;
            log::info!("advertising {}.{SERVICE_TYPE} on port {}", ad.instance, ad.port);
        }
        let events = daemon.browse(SERVICE_TYPE)?;
        hub.spawn(browse(hub.clone(), events, app_tag.to_string(), found));
        Ok(Discovery::Mdns { daemon, fullname })
    }

    /// Withdraw the advertisement (goodbye packets) and stop discovery.
    pub async fn stop(self) {
        match self {
            Discovery::Mdns { daemon, fullname } => {
                if let Some(name) = &fullname {
                    if let Ok(rx) = daemon.unregister(name) {
                        let _ = tokio::time::timeout(Duration::from_secs(1), rx.recv_async()).await;
                    }
                }
                let _ = daemon.stop_browse(SERVICE_TYPE);
                if let Ok(rx) = daemon.shutdown() {
                    let _ = tokio::time::timeout(Duration::from_secs(1), rx.recv_async()).await;
                }
            }
            Discovery::Platform(platform) => platform.stop(),
        }
    }

    /// Stop without waiting (when a node is dropped without shutting down).
    pub fn stop_now(&self) {
        match self {
            Discovery::Mdns { daemon, .. } => {
                let _ = daemon.shutdown();
            }
            Discovery::Platform(platform) => platform.stop(),
        }
    }
}

/// Checks the platform's reports like mDNS answers and passes devices of the app on to `found`.
async fn check_reports(
    hub: Arc<Hub>,
    mut reports: mpsc::Receiver<Report>,
    app_tag: String,
    found: mpsc::Sender<Found>,
) {
    let mut checker = Checker { own: hub.device(), app_tag, instances: HashMap::new() };
    loop {
        let report = tokio::select! {
            () = hub.shutting_down() => return,
            r = reports.recv() => match r {
                Some(r) => r,
                None => return,
            },
        };
        let Some(event) = checker.check(report) else { continue };
        if found.send(event).await.is_err() {
            return;
        }
    }
}

/// What platform discovery has reported so far, to check the next report against.
struct Checker {
    own: DeviceKey,
    app_tag: String,
    /// Instance name → device, to report removals (at most [`MAX_DISCOVERED`]).
    instances: HashMap<String, DeviceKey>,
}

impl Checker {
    /// What `report` means for the dialler, if anything.
    fn check(&mut self, report: Report) -> Option<Found> {
        match report {
            Report::Found { instance, txt, addrs } => {
                let addrs = dialable(addrs);
                let (dk, app) = (txt.get("dk").map(String::as_str), txt.get("app").map(String::as_str));
                let device = admit(self.own, &self.app_tag, &instance, dk, app, &addrs)?;
                if self.instances.len() < MAX_DISCOVERED || self.instances.contains_key(&instance) {
                    self.instances.insert(instance, device);
                }
                log::debug!("discovery: found {device} at {addrs:?}");
                Some(Found::Up { device, addrs })
            }
            Report::Lost { instance } => self.instances.remove(&instance).map(|device| Found::Gone { device }),
        }
    }
}

/// The addresses worth dialling, IPv4 first: no loopback (IPv4-mapped included), unspecified or multicast
/// address, no port 0 — an answer from the network must not make this device dial itself.
fn dialable(mut addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    addrs.retain(|a| {
        let ip = a.ip().to_canonical();
        a.port() != 0 && !ip.is_loopback() && !ip.is_unspecified() && !ip.is_multicast()
    });
    addrs.sort_by_key(|a| (a.is_ipv6(), *a));
    addrs.dedup();
    addrs
}

async fn browse(hub: Arc<Hub>, events: mdns_sd::Receiver<ServiceEvent>, app_tag: String, found: mpsc::Sender<Found>) {
    // Instance name → device, to report removals.
    let mut instances: HashMap<String, DeviceKey> = HashMap::new();
    loop {
        let event = tokio::select! {
            () = hub.shutting_down() => return,
            e = events.recv_async() => match e {
                Ok(e) => e,
                Err(_) => return,
            },
        };
        let report = match event {
            ServiceEvent::ServiceResolved(info) => {
                let addrs = dialable(socket_addrs(info.get_addresses(), info.get_port()));
                let (dk, app) = (info.get_property_val_str("dk"), info.get_property_val_str("app"));
                let Some(device) = admit(hub.device(), &app_tag, info.get_fullname(), dk, app, &addrs) else {
                    continue;
                };
                if instances.len() < MAX_DISCOVERED || instances.contains_key(info.get_fullname()) {
                    instances.insert(info.get_fullname().to_string(), device);
                }
                log::debug!("mDNS: found {device} at {addrs:?}");
                Found::Up { device, addrs }
            }
            ServiceEvent::ServiceRemoved(_, fullname) => match instances.remove(&fullname) {
                Some(device) => {
                    log::debug!("mDNS: {device} withdrew its record");
                    Found::Gone { device }
                }
                None => continue,
            },
            _ => continue,
        };
        if found.send(report).await.is_err() {
            return;
        }
    }
}

/// The addresses to dial, IPv4 first; loopback and unspecified addresses are left out, link-local IPv6 addresses
/// keep their interface.
fn socket_addrs(ips: &std::collections::HashSet<ScopedIp>, port: u16) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = ips
        .iter()
        .filter(|ip| !ip.is_loopback() && !ip.to_ip_addr().is_unspecified())
        .map(|ip| match ip {
            ScopedIp::V4(v4) => SocketAddr::V4(SocketAddrV4::new(*v4.addr(), port)),
            ScopedIp::V6(v6) => {
                let link_local = (v6.addr().segments()[0] & 0xffc0) == 0xfe80;
                let scope = if link_local { v6.scope_id().index } else { 0 };
                SocketAddr::V6(SocketAddrV6::new(*v6.addr(), port, 0, scope))
            }
            other => SocketAddr::new(other.to_ip_addr(), port),
        })
        .collect();
    out.sort_by_key(|a| (a.is_ipv6(), *a));
    out.dedup();
    out
}

/// A device key from its 64 hex digits.
fn parse_device_key(hex: &str) -> Option<DeviceKey> {
    crate::util::parse_hex(hex).map(DeviceKey)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(instance: &str, dk: &str, app: &str, addrs: &[&str]) -> Report {
        Report::Found {
            instance: instance.into(),
            txt: [("dk".to_string(), dk.to_string()), ("app".to_string(), app.to_string())].into(),
            addrs: addrs.iter().map(|a| a.parse().expect("address")).collect(),
        }
    }

    #[test]
    fn platform_reports_are_checked_like_mdns_answers() {
        let own = DeviceKey([1; 32]);
        let other = DeviceKey([2; 32]);
        let mut c = Checker { own, app_tag: "app".into(), instances: HashMap::new() };
        let up = |addrs: &[&str]| {
            Some(Found::Up { device: other, addrs: addrs.iter().map(|a| a.parse().unwrap()).collect() })
        };
        // Another device of the app: its dialable addresses, IPv4 first.
        assert_eq!(
            c.check(found("b", &other.to_hex(), "app", &["[fe80::1%2]:7000", "10.0.0.2:7000", "127.0.0.1:7000"])),
            up(&["10.0.0.2:7000", "[fe80::1%2]:7000"])
        );
        // Never a way to make this device dial itself or nothing: loopback (IPv4-mapped too), unspecified,
        // multicast, port 0.
        let bad = ["127.0.0.1:1", "[::1]:1", "[::ffff:127.0.0.1]:1", "0.0.0.0:1", "224.0.0.251:5353", "10.0.0.2:0"];
        assert_eq!(c.check(found("b", &other.to_hex(), "app", &bad)), None);
        // Another app, this device itself, a malformed key: ignored.
        assert_eq!(c.check(found("x", &other.to_hex(), "other app", &["10.0.0.2:7000"])), None);
        assert_eq!(c.check(found("self", &own.to_hex(), "app", &["10.0.0.1:7000"])), None);
        assert_eq!(c.check(found("y", "zz", "app", &["10.0.0.3:7000"])), None);
        // A withdrawn record of a known instance is a departure; of an unknown one, nothing.
        assert_eq!(c.check(Report::Lost { instance: "x".into() }), None);
        assert_eq!(c.check(Report::Lost { instance: "b".into() }), Some(Found::Gone { device: other }));
        assert_eq!(c.check(Report::Lost { instance: "b".into() }), None);
    }

    #[test]
    fn platform_reports_are_bounded_before_they_are_queued() {
        let (tx, mut rx) = mpsc::channel(REPORT_QUEUE);
        let reports = DiscoveryReports { tx };
        let many: Vec<SocketAddr> = (1..=200u8).map(|i| SocketAddr::from(([10, 0, 1, i], 7000))).collect();
        reports.found("a".into(), BTreeMap::new(), many);
        let Ok(Report::Found { addrs, .. }) = rx.try_recv() else { panic!("the report is queued") };
        assert_eq!(addrs.len(), MAX_REPORTED_ADDRESSES);
        reports.found("n".repeat(MAX_REPORTED_TEXT + 1), BTreeMap::new(), Vec::new());
        let txt: BTreeMap<String, String> =
            (0..=MAX_REPORTED_TXT_ENTRIES).map(|i| (i.to_string(), String::new())).collect();
        reports.found("a".into(), txt, Vec::new());
        reports.found("a".into(), [("dk".to_string(), "x".repeat(MAX_REPORTED_TEXT + 1))].into(), Vec::new());
        reports.lost("n".repeat(MAX_REPORTED_TEXT + 1));
        assert!(rx.try_recv().is_err(), "oversized reports are dropped");
        // A platform flooding reports never blocks: what the queue cannot take is dropped.
        for _ in 0..REPORT_QUEUE * 4 {
            reports.lost("a".into());
        }
        let mut queued = 0;
        while rx.try_recv().is_ok() {
            queued += 1;
        }
        assert_eq!(queued, REPORT_QUEUE);
    }

    #[test]
    fn device_keys_parse_from_hex() {
        let key = DeviceKey([0xab; 32]);
        assert_eq!(parse_device_key(&key.to_hex()), Some(key));
        assert_eq!(parse_device_key("ab"), None);
        assert_eq!(parse_device_key(&"zz".repeat(32)), None);
        assert_eq!(parse_device_key(&"é".repeat(32)), None);
    }

    #[test]
    fn addresses_skip_loopback_and_put_ipv4_first() {
        let ips: std::collections::HashSet<ScopedIp> = ["127.0.0.1", "10.1.2.3", "2001:db8::1", "0.0.0.0"]
            .iter()
            .map(|s| ScopedIp::from(s.parse::<std::net::IpAddr>().unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]))))
            .collect();
        let addrs = socket_addrs(&ips, 7000);
        assert_eq!(addrs, vec!["10.1.2.3:7000".parse().unwrap(), "[2001:db8::1]:7000".parse().unwrap()]);
    }
}
