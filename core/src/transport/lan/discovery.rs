//! Finding devices of the same app on the LAN with mDNS / DNS-SD ([`SERVICE_TYPE`]).
//!
//! Each node advertises one service instance named after its short device key, on every non-loopback interface,
//! with the port it listens on and two TXT entries: `dk` (the full device key, hex) and `app` (the app's tag,
//! [`AppSecret::tag`](crate::security::AppSecret::tag)). It browses for the same service type and reports every
//! other device of the same app as [`Found::Up`] (again whenever its record is refreshed, with its current
//! addresses) and [`Found::Gone`] when its record is withdrawn. The mDNS daemon runs on its own thread; its events
//! reach tokio through the channel's async receiver.

use crate::security::DeviceKey;
use crate::transport::hub::Hub;
use mdns_sd::{IfKind, ScopedIp, ServiceDaemon, ServiceEvent, ServiceInfo};
use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The DNS-SD service type of Shoal nodes.
pub const SERVICE_TYPE: &str = "_shoal._tcp.local.";

/// The most discovered service instances remembered at once.
const MAX_DISCOVERED: usize = 256;

/// What discovery reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// A device of the same app, reachable at these addresses (IPv4 first).
    Up { device: DeviceKey, addrs: Vec<SocketAddr> },
    /// The device withdrew its record.
    Gone { device: DeviceKey },
}

/// A running mDNS advertisement and browse.
pub(crate) struct Discovery {
    daemon: ServiceDaemon,
    fullname: Option<String>,
}

impl Discovery {
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
        let device = hub.device();
        let mut fullname = None;
        match listen {
            Some(addr) if addr.ip().is_loopback() => {
                log::warn!("listening on {addr} (loopback): not advertising on mDNS");
            }
            Some(addr) => {
                let instance = device.to_string();
                let host = format!("shoal-{instance}.local.");
                let props = [("dk", device.to_hex()), ("app", app_tag.to_string())];
                let info = if addr.ip().is_unspecified() {
                    ServiceInfo::new(SERVICE_TYPE, &instance, &host, (), addr.port(), &props[..])?.enable_addr_auto()
                } else {
                    ServiceInfo::new(SERVICE_TYPE, &instance, &host, addr.ip(), addr.port(), &props[..])?
                };
                fullname = Some(info.get_fullname().to_string());
                daemon.register(info)?;
                log::info!("advertising {instance}.{SERVICE_TYPE} on port {}", addr.port());
            }
            None => log::info!("not listening: browsing mDNS without advertising"),
        }
        let events = daemon.browse(SERVICE_TYPE)?;
        hub.spawn(browse(hub.clone(), events, app_tag.to_string(), found));
        Ok(Discovery { daemon, fullname })
    }

    /// Withdraw the advertisement (goodbye packets) and stop the daemon.
    pub async fn stop(self) {
        if let Some(name) = &self.fullname {
            if let Ok(rx) = self.daemon.unregister(name) {
                let _ = tokio::time::timeout(Duration::from_secs(1), rx.recv_async()).await;
            }
        }
        let _ = self.daemon.stop_browse(SERVICE_TYPE);
        if let Ok(rx) = self.daemon.shutdown() {
            let _ = tokio::time::timeout(Duration::from_secs(1), rx.recv_async()).await;
        }
    }

    /// Stop the daemon without waiting (when a node is dropped without shutting down).
    pub fn stop_now(&self) {
        let _ = self.daemon.shutdown();
    }
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
                let Some(device) = info.get_property_val_str("dk").and_then(parse_device_key) else {
                    log::debug!("mDNS: {} has no valid device key", info.get_fullname());
                    continue;
                };
                if device == hub.device() {
                    continue;
                }
                if info.get_property_val_str("app") != Some(app_tag.as_str()) {
                    log::debug!("mDNS: {} belongs to another app", info.get_fullname());
                    continue;
                }
                let addrs = socket_addrs(info.get_addresses(), info.get_port());
                if addrs.is_empty() {
                    continue;
                }
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
