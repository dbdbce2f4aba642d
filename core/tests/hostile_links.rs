//! Hostile links: a stranger without the app secret tries to hold every connection slot of a victim — TCP
//! connections that never finish their handshake, Bluetooth LE connections that never authenticate — while an
//! honest device still connects and syncs. Loopback only (127.0.0.1, and 127.0.0.2 as the attacker's source,
//! loopback too on Linux); the BLE side is driven sans-IO. Waits poll a condition for up to 30 s: nothing here
//! asserts on timing.

use serde_json::json;
use shoaldb::node::{Node, NodeConfig};
use shoaldb::security::AppSecret;
use shoaldb::transport::lan::MAX_CONNECTIONS;
use shoaldb::Store;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpSocket;

const PATIENCE: Duration = Duration::from_secs(30);

fn secret() -> AppSecret {
    AppSecret::from_bytes(b"hostile links secret").expect("secret")
}

async fn start(store: &Store, name: &str, listen: Option<SocketAddr>, connect: &[SocketAddr]) -> Node {
    let mut config = NodeConfig::new(name, secret()).with_mdns(false);
    config.listen = listen;
    config.connect = connect.to_vec();
    Node::start(store.clone(), config).await.expect("node starts")
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One attacker connection after another from `source` to `victim`, each held (sending nothing) until the victim
/// closes it, then opened again at once, until `stop`. Counts the connections opened.
async fn hold_a_slot(source: std::net::IpAddr, victim: SocketAddr, stop: Arc<AtomicBool>, opened: Arc<AtomicUsize>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(socket) = TcpSocket::new_v4() else { return };
        if socket.bind(SocketAddr::new(source, 0)).is_err() {
            return;
        }
        let Ok(mut stream) = socket.connect(victim).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        opened.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 256];
        loop {
            tokio::select! {
                r = stream.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                },
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                }
            }
        }
        // Not a busy loop: the machine running the test is shared.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_attacker_holding_every_tcp_connection_it_can_does_not_lock_out_an_honest_peer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sv, sh) = (
        Store::open(dir.path().join("victim.db")).expect("store"),
        Store::open(dir.path().join("h.db")).expect("store"),
    );
    let victim = start(&sv, "victim", Some("127.0.0.1:0".parse().expect("addr")), &[]).await;
    let addr = victim.listen_addr().expect("listens");
    // The attacker (no app secret, from 127.0.0.2) opens more connections than there are slots, and reopens each
    // one the victim closes at once.
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let attacker: std::net::IpAddr = "127.0.0.2".parse().expect("addr");
    let mut tasks = Vec::new();
    for _ in 0..MAX_CONNECTIONS + 16 {
        tasks.push(tokio::spawn(hold_a_slot(attacker, addr, stop.clone(), opened.clone())));
    }
    eventually("the attacker opened every slot", || opened.load(Ordering::Relaxed) > MAX_CONNECTIONS).await;
    // An honest device with the app secret still connects and syncs, both ways, while the attacker keeps at it.
    sh.upsert("tasks", json!({"_id": "h1", "title": "from the honest peer"})).expect("write");
    sv.upsert("tasks", json!({"_id": "v1", "title": "from the victim"})).expect("write");
    let honest = start(&sh, "honest", None, &[addr]).await;
    eventually("the victim has the honest peer's document", || sv.get("tasks", "h1").expect("get").is_some()).await;
    eventually("the honest peer has the victim's document", || sh.get("tasks", "v1").expect("get").is_some()).await;
    assert!(victim.peers().iter().any(|p| p.device == honest.device_key()), "the victim lists the honest peer");
    // The victim still writes, and the write reaches the honest peer.
    sv.upsert("tasks", json!({"_id": "v2", "title": "later"})).expect("the victim still writes");
    eventually("the later write arrives", || sh.get("tasks", "v2").expect("get").is_some()).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    for n in [victim, honest] {
        n.shutdown().await;
    }
}

mod ble {
    use shoaldb::transport::ble::link::{BleLink, Channel, LinkError, Role, TimeoutKind};
    use shoaldb::transport::ble::links::{
        BleConfig, BleEvent, BleLinks, LinkClosedReason, RadioCommand, AUTH_TIMEOUT_MS, DEFAULT_MAX_LINKS,
        DEFAULT_MAX_UNAUTHENTICATED, UNAUTHENTICATED_GRACE_MS,
    };
    use shoaldb::transport::ble::AppTag;
    use std::collections::BTreeMap;

    const APP: AppTag = *b"hstl";
    const GATT: Channel = Channel::Gatt { att_mtu: 185 };

    /// The victim's BLE links and the far ends of its connections (each a link of its own), wired together.
    struct Air {
        victim: BleLinks,
        far: BTreeMap<u64, BleLink>,
        events: Vec<BleEvent>,
        now: u64,
    }

    impl Air {
        /// Move packets both ways and collect the victim's events until nothing moves.
        fn settle(&mut self) {
            loop {
                let mut moved = false;
                while let Some(cmd) = self.victim.poll_command() {
                    moved = true;
                    match cmd {
                        RadioCommand::Send { conn, packet } => {
                            if let Some(far) = self.far.get_mut(&conn) {
                                let _ = far.on_packet(&packet, self.now);
                            }
                            self.victim.on_sent(conn);
                        }
                        RadioCommand::Disconnect { conn } => {
                            self.far.remove(&conn);
                        }
                        _ => {}
                    }
                }
                for (conn, far) in &mut self.far {
                    while let Some(p) = far.poll_packet() {
                        moved = true;
                        far.on_sent();
                        self.victim.on_packet(self.now, *conn, &p);
                    }
                }
                while let Some(ev) = self.victim.poll_event() {
                    moved = true;
                    self.events.push(ev);
                }
                if !moved {
                    return;
                }
            }
        }

        /// A device dials the victim (the victim is the peripheral) and says its link Hello — the app tag is public
        /// (it is in every advertisement), so an attacker gets this far without the app secret.
        fn dial_victim(&mut self, conn: u64, tag: u8) {
            self.victim.on_connected(self.now, conn, &format!("device-{conn}"), Role::Peripheral, GATT);
            self.far.insert(conn, BleLink::new(Role::Central, GATT, [tag; 8], APP, self.now));
            self.settle();
        }

        fn tick(&mut self, to: u64) {
            while self.now < to {
                self.now = (self.now + 250).min(to);
                for far in self.far.values_mut() {
                    let _ = far.tick(self.now);
                }
                self.victim.tick(self.now);
                self.settle();
            }
        }

        fn ready(&self, conn: u64) -> bool {
            self.events.iter().any(|e| matches!(e, BleEvent::LinkReady { conn: c, .. } if *c == conn))
        }
    }

    #[test]
    fn an_attacker_device_cannot_hold_every_ble_link_and_its_links_time_out() {
        let config = BleConfig::new([1; 8], APP);
        let mut air = Air { victim: BleLinks::new(config, 7, 0), far: BTreeMap::new(), events: Vec::new(), now: 0 };
        air.settle();
        // The attacker connects again and again (each time with a new address, as a phone rotating its random
        // address would, and a new device tag), says Hello, and never authenticates (it has no app secret).
        for conn in 0..3 * DEFAULT_MAX_LINKS as u64 {
            air.dial_victim(conn, 0x80 | (conn % 64) as u8);
        }
        air.tick(air.now + 1_500);
        let held: Vec<u64> = (0..3 * DEFAULT_MAX_LINKS as u64).filter(|c| air.victim.link(*c).is_some()).collect();
        assert_eq!(held.len(), DEFAULT_MAX_UNAUTHENTICATED, "the attacker holds {held:?}");
        // An honest phone still connects (once the attacker's connections had their grace period, one of them
        // makes room); the engine authenticates it, and the attacker connecting again cannot push it out.
        air.tick(air.now + UNAUTHENTICATED_GRACE_MS);
        let honest = 1_000;
        air.dial_victim(honest, 0x22);
        assert!(air.ready(honest), "the honest phone's link is up");
        air.victim.authenticated(honest);
        for conn in 2_000..2_000 + 3 * DEFAULT_MAX_LINKS as u64 {
            air.dial_victim(conn, 0x80 | (conn % 64) as u8);
            air.tick(air.now + UNAUTHENTICATED_GRACE_MS);
            let unauthenticated = (0..3_000).filter(|c| *c != honest && air.victim.link(*c).is_some()).count();
            assert!(unauthenticated <= DEFAULT_MAX_UNAUTHENTICATED + 1, "{unauthenticated} attacker connections held");
        }
        assert!(air.victim.linked().iter().any(|(c, _)| *c == honest), "the honest link was pushed out");
        let held: Vec<u64> = (0..3_000).filter(|c| *c != honest && air.victim.link(*c).is_some()).collect();
        // The attacker's links are closed once the authentication deadline passes; the honest one stays.
        air.tick(air.now + AUTH_TIMEOUT_MS + 2_000);
        for conn in &held {
            assert!(air.victim.link(*conn).is_none(), "attacker connection {conn} still held");
        }
        assert!(air.events.iter().any(|e| matches!(
            e,
            BleEvent::LinkClosed {
                reason: LinkClosedReason::Error(LinkError::Timeout(TimeoutKind::Authentication)),
                ..
            }
        )));
        assert_eq!(air.victim.linked().iter().map(|(c, _)| *c).collect::<Vec<_>>(), vec![honest]);
    }
}
