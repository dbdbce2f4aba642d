//! Discovery through the platform's DNS-SD ([`ServiceDiscovery`], what iOS's Network.framework adapter implements),
//! end to end: two nodes, each in a network namespace of its own joined by a veth pair, find each other only
//! through a fake DNS-SD (an in-process registry standing in for mDNSResponder: it hands each advertisement, with
//! the advertiser's address, to every browser) and sync over real TCP — no mDNS socket, no address given.
//!
//! With a platform's discovery set the core's own mDNS does not run, so the nodes can only find each other through
//! the fake's reports (a node that dropped them never syncs: checked by breaking it).
//!
//! Needs root (network namespaces), as CI runs; elsewhere it says so and does nothing. The nodes' addresses are
//! not loopback on purpose: discovery never dials loopback (an answer from the network must not make a device dial
//! itself), so the namespaces give each node a LAN address of its own.

use serde_json::json;
use shoaldb::security::AppSecret;
use shoaldb::transport::lan::discovery::{DiscoveryReports, ServiceAdvertisement, ServiceDiscovery};
use shoaldb::{Node, NodeConfig, Store};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The fake DNS-SD shared by every node: who advertises what, at which address, and who browses.
#[derive(Default)]
struct Registry {
    entries: Mutex<Vec<Entry>>,
}

struct Entry {
    ip: IpAddr,
    advertisement: Option<ServiceAdvertisement>,
    reports: DiscoveryReports,
}

impl Registry {
    fn report(to: &DiscoveryReports, ip: IpAddr, ad: &ServiceAdvertisement) {
        to.found(ad.instance.clone(), ad.txt.clone(), vec![SocketAddr::new(ip, ad.port)]);
    }
}

/// One device's view of the fake DNS-SD: its address on the shared link.
struct FakeDnsSd {
    registry: Arc<Registry>,
    ip: IpAddr,
    /// What the node asked to advertise (checked by the test).
    advertised: Mutex<Option<ServiceAdvertisement>>,
    stopped: Mutex<bool>,
}

impl ServiceDiscovery for FakeDnsSd {
    fn start(&self, advertisement: Option<ServiceAdvertisement>, reports: DiscoveryReports) {
        *self.advertised.lock().expect("lock") = advertisement.clone();
        let mut entries = self.registry.entries.lock().expect("lock");
        for other in entries.iter() {
            if let Some(ad) = &other.advertisement {
                Registry::report(&reports, other.ip, ad);
            }
            if let Some(ad) = &advertisement {
                Registry::report(&other.reports, self.ip, ad);
            }
        }
        entries.push(Entry { ip: self.ip, advertisement, reports });
    }

    fn stop(&self) {
        *self.stopped.lock().expect("lock") = true;
        let mut entries = self.registry.entries.lock().expect("lock");
        let Some(at) = entries.iter().position(|e| e.ip == self.ip) else { return };
        let gone = entries.remove(at);
        if let Some(ad) = gone.advertisement {
            for other in entries.iter() {
                other.reports.lost(ad.instance.clone());
            }
        }
    }
}

/// Two network namespaces joined by a veth pair, removed on drop.
struct Link {
    names: [String; 2],
    ips: [Ipv4Addr; 2],
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

impl Link {
    fn new() -> Link {
        let tag = format!("shsd{}", std::process::id());
        let names = [format!("{tag}a"), format!("{tag}b")];
        let ips = [Ipv4Addr::new(10, 233, 0, 1), Ipv4Addr::new(10, 233, 0, 2)];
        let link = Link { names, ips };
        for n in &link.names {
            ip(&["netns", "add", n]);
        }
        let (va, vb) = (format!("{tag}va"), format!("{tag}vb"));
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
        for (n, (v, addr)) in link.names.iter().zip([(&va, ips[0]), (&vb, ips[1])]) {
            ip(&["link", "set", v, "netns", n]);
            ip(&["-n", n, "link", "set", "lo", "up"]);
            ip(&["-n", n, "addr", "add", &format!("{addr}/24"), "dev", v]);
            ip(&["-n", n, "link", "set", v, "up"]);
        }
        link
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// Moves the calling thread into the network namespace `name` (sockets it and the threads it starts open are
/// there).
fn enter(name: &str) {
    let file = std::fs::File::open(format!("/var/run/netns/{name}")).expect("open the namespace");
    // SAFETY: setns on a valid descriptor of a network namespace changes only this thread's namespace.
    let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// Runs a node on `store` in namespace `netns` with `discovery`, until `stop` is dropped or sent.
fn run_node(
    netns: String,
    store: Store,
    name: &'static str,
    discovery: Arc<FakeDnsSd>,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        enter(&netns);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let secret = AppSecret::from_bytes(b"service discovery test").expect("secret");
            let config = NodeConfig::new(name, secret).with_service_discovery(discovery);
            let node = Node::start(store, config).await.expect("node starts");
            let _ = stop.await;
            node.shutdown().await;
        });
    })
}

fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn devices_found_through_the_platforms_dns_sd_sync_over_tcp() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: network namespaces need root (CI runs as root)");
        return;
    }
    let link = Link::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Arc::new(Registry::default());
    let stores = [Store::open(dir.path().join("a.db")).expect("a"), Store::open(dir.path().join("b.db")).expect("b")];
    let fakes: Vec<Arc<FakeDnsSd>> = link
        .ips
        .iter()
        .map(|ip| {
            Arc::new(FakeDnsSd {
                registry: registry.clone(),
                ip: IpAddr::V4(*ip),
                advertised: Mutex::new(None),
                stopped: Mutex::new(false),
            })
        })
        .collect();
    stores[0].upsert("notes", json!({"_id": "from-a", "text": "hello"})).expect("write at a");
    let (stop_a, rx_a) = tokio::sync::oneshot::channel();
    let (stop_b, rx_b) = tokio::sync::oneshot::channel();
    let a = run_node(link.names[0].clone(), stores[0].clone(), "a", fakes[0].clone(), rx_a);
    let b = run_node(link.names[1].clone(), stores[1].clone(), "b", fakes[1].clone(), rx_b);

    eventually("b has a's note, found through DNS-SD alone", || {
        stores[1].get("notes", "from-a").ok().flatten().is_some()
    });
    stores[1].upsert("notes", json!({"_id": "from-b", "text": "hi"})).expect("write at b");
    eventually("a has b's note", || stores[0].get("notes", "from-b").ok().flatten().is_some());

    // Each node advertised its real listening port under its device key, with the app's tag.
    for fake in &fakes {
        let ad = fake.advertised.lock().expect("lock").clone().expect("a listening node advertises");
        assert_eq!(ad.service_type, "_shoal._tcp");
        assert_eq!(ad.txt.get("dk").map(String::len), Some(64));
        assert!(ad.txt.contains_key("app") && ad.port != 0, "{ad:?}");
    }
    let _ = stop_a.send(());
    let _ = stop_b.send(());
    a.join().expect("node a");
    b.join().expect("node b");
    assert!(fakes.iter().all(|f| *f.stopped.lock().expect("lock")), "stopping sync stops discovery");
    assert!(registry.entries.lock().expect("lock").is_empty(), "the advertisements were withdrawn");
}
