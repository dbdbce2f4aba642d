//! The air's rules, driven without sockets: what each phone is told, and what the air refuses.

use serde_json::{json, Value};
use shoaldb_air::air::{Air, ConnId, Out, PACKET_MS};

const SERVICE: &str = "5e1f0000-0000-4000-8000-000000000001";
const RX: &str = "5e1f0000-0000-4000-8000-000000000002";

/// An air with phones joined by name; what each phone was told is kept per connection.
struct Test {
    air: Air,
    now: u64,
    inbox: Vec<(ConnId, Value)>,
}

impl Test {
    fn new() -> Test {
        let mut t = Test { air: Air::new(7), now: 0, inbox: Vec::new() };
        t.send(100, json!({"op": "hello", "role": "control"}));
        t
    }

    fn take(&mut self, out: Out) {
        self.inbox.extend(out);
    }

    fn send(&mut self, conn: ConnId, msg: Value) {
        let out = self.air.message(conn, self.now, msg);
        self.take(out);
    }

    fn phone(&mut self, conn: ConnId, name: &str, platform: &str, mtu: u64) -> String {
        self.send(conn, json!({"op": "hello", "role": "phone", "phone": name, "platform": platform, "mtu": mtu}));
        let welcome = self.told(conn, "welcome").pop().expect("welcome");
        welcome["address"].as_str().expect("address").to_owned()
    }

    fn advance(&mut self, ms: u64) {
        let end = self.now + ms;
        while let Some(due) = self.air.next_deadline().filter(|&d| d <= end) {
            self.now = due.max(self.now);
            let out = self.air.tick(self.now);
            self.take(out);
        }
        self.now = end;
        let out = self.air.tick(self.now);
        self.take(out);
    }

    /// The messages `op` told `conn` since last asked (and forgets them).
    fn told(&mut self, conn: ConnId, op: &str) -> Vec<Value> {
        let (mine, rest): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.inbox).into_iter().partition(|(c, m)| *c == conn && m["op"] == op);
        self.inbox = rest;
        mine.into_iter().map(|(_, m)| m).collect()
    }

    fn traffic(&mut self) -> Value {
        self.send(100, json!({"op": "traffic"}));
        self.told(100, "traffic").pop().expect("traffic")
    }

    /// Phone 1 (central) connected to phone 2 (peripheral, advertising): the link id.
    fn link(&mut self) -> u64 {
        self.send(2, json!({"op": "advertise", "services": [SERVICE]}));
        let b = self.told(2, "welcome");
        assert!(b.is_empty());
        let peer = self.address_of(2);
        self.send(1, json!({"op": "connect", "peer": peer, "ref": 1, "timeout_ms": 1000}));
        let connected = self.told(1, "connected");
        assert_eq!(connected.len(), 1, "{:?}", self.inbox);
        assert_eq!(self.told(2, "incoming").len(), 1);
        connected[0]["link"].as_u64().expect("link")
    }

    fn address_of(&self, conn: ConnId) -> String {
        format!("02:00:00:00:00:{conn:02X}")
    }
}

fn b64(n: usize) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(vec![7u8; n])
}

#[test]
fn scanners_see_matching_advertisements_once_or_repeatedly() {
    let mut t = Test::new();
    t.phone(1, "A1", "android", 517);
    t.phone(2, "I1", "ios", 185);
    t.phone(3, "A2", "android", 517);
    t.send(1, json!({"op": "scan", "services": [SERVICE], "duplicates": false}));
    t.send(3, json!({"op": "scan", "services": null, "duplicates": true}));
    t.send(2, json!({"op": "advertise", "services": [SERVICE.to_uppercase()], "service_data": {}, "name": "x"}));
    assert_eq!(t.told(2, "advertising").len(), 1);
    let seen = t.told(1, "seen");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["peer"], t.address_of(2));
    assert_eq!(t.told(3, "seen").len(), 1);
    assert!(t.told(2, "seen").is_empty(), "a phone never sees itself");
    t.advance(2_100);
    assert!(t.told(1, "seen").is_empty(), "no duplicates asked for");
    assert_eq!(t.told(3, "seen").len(), 4, "every 500 ms with duplicates");
    // A filter that does not match sees nothing.
    t.send(1, json!({"op": "scan", "services": ["0000feed-0000-1000-8000-00805f9b34fb"], "duplicates": true}));
    t.advance(1_000);
    assert!(t.told(1, "seen").is_empty());
}

#[test]
fn a_backgrounded_iphone_is_seen_only_by_iphones_scanning_for_its_service() {
    let mut t = Test::new();
    t.phone(1, "A1", "android", 517);
    t.phone(2, "I1", "ios", 185);
    t.phone(3, "I2", "ios", 185);
    t.send(100, json!({"op": "app_state", "phone": "I1", "background": true}));
    t.send(2, json!({"op": "advertise", "services": [SERVICE], "service_data": {SERVICE: "AQI="}, "name": "n"}));
    t.send(1, json!({"op": "scan", "services": [SERVICE], "duplicates": false}));
    t.send(3, json!({"op": "scan", "services": [SERVICE], "duplicates": false}));
    assert!(t.told(1, "seen").is_empty(), "Android does not see a backgrounded iPhone");
    let seen = t.told(3, "seen");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["service_data"], json!({}), "the overflow area carries no data");
    assert_eq!(seen[0]["name"], Value::Null);
    // It is connectable all the same: the Android phone can dial an address it knows.
    let peer = t.address_of(2);
    t.send(1, json!({"op": "connect", "peer": peer, "ref": 5, "timeout_ms": 100}));
    assert_eq!(t.told(1, "connected").len(), 1);
}

#[test]
fn the_mtu_is_the_smallest_of_what_is_asked_and_both_stacks() {
    let mut t = Test::new();
    t.phone(1, "A1", "android", 517);
    t.phone(2, "I1", "ios", 185);
    let link = t.link();
    t.send(1, json!({"op": "exchange_mtu", "link": link, "mtu": 517}));
    assert_eq!(t.told(1, "mtu")[0]["mtu"], 185);
    assert_eq!(t.told(2, "mtu")[0]["mtu"], 185);
    // Only the central asks.
    t.send(2, json!({"op": "exchange_mtu", "link": link, "mtu": 517}));
    assert_eq!(t.told(2, "error").len(), 1);
    // A write of MTU - 3 bytes arrives; one byte more is dropped and counted.
    t.send(1, json!({"op": "write", "link": link, "char": RX, "value": b64(182)}));
    t.send(1, json!({"op": "write", "link": link, "char": RX, "value": b64(183)}));
    t.advance(50);
    assert_eq!(t.told(2, "written").len(), 1);
    assert_eq!(t.told(1, "delivered").len(), 1);
    assert_eq!(t.traffic()["oversized"], 1);
}

#[test]
fn packets_are_paced_through_a_window_and_a_full_window_drops() {
    let mut t = Test::new();
    t.phone(1, "A1", "android", 517);
    t.phone(2, "A2", "android", 517);
    t.send(100, json!({"op": "reset", "window": 2}));
    let link = t.link();
    for i in 0..3u8 {
        t.send(1, json!({"op": "write", "link": link, "char": RX, "value": b64(usize::from(i) + 1)}));
    }
    assert!(t.told(2, "written").is_empty(), "nothing arrives before its time");
    assert_eq!(t.traffic()["overrun"], 1, "the third write found the window full");
    t.advance(PACKET_MS);
    assert_eq!(t.told(2, "written").len(), 1);
    assert_eq!(t.told(1, "delivered").len(), 1);
    t.advance(PACKET_MS);
    let written = t.told(2, "written");
    assert_eq!(written.len(), 1);
    assert_eq!(written[0]["value"], b64(2), "in order");
}

#[test]
fn requests_go_to_the_peripherals_app_one_at_a_time() {
    let mut t = Test::new();
    t.phone(1, "A1", "android", 517);
    t.phone(2, "I1", "ios", 185);
    let link = t.link();
    t.send(1, json!({"op": "read", "link": link, "char": RX}));
    t.send(1, json!({"op": "read", "link": link, "char": RX}));
    let busy = t.told(1, "read_result");
    assert_eq!(busy.len(), 1);
    assert_eq!(busy[0]["status"], 143, "one request at a time");
    let req = t.told(2, "read_request").pop().expect("request")["req"].clone();
    t.send(2, json!({"op": "respond", "link": link, "req": req, "status": 0, "value": "gAA="}));
    let read = t.told(1, "read_result");
    assert_eq!(read[0]["value"], "gAA=");
    // The central cannot answer its own request, nor a stale one be answered twice.
    t.send(2, json!({"op": "respond", "link": link, "req": req, "status": 0}));
    assert_eq!(t.told(2, "error").len(), 1);
    // An unanswered request fails after 30 s.
    t.send(1, json!({"op": "write_descriptor", "link": link, "char": RX, "descriptor": "2902", "value": "AQA="}));
    assert_eq!(t.told(2, "descriptor_write_request").len(), 1);
    t.advance(30_001);
    assert_eq!(t.told(1, "descriptor_written")[0]["status"], 133);
}

#[test]
fn leaving_range_drops_links_and_channels_and_coming_back_is_announced() {
    let mut t = Test::new();
    t.phone(1, "A1", "android", 517);
    t.phone(2, "I1", "ios", 185);
    t.phone(3, "A2", "android", 517);
    let link = t.link();
    t.send(2, json!({"op": "l2cap_listen"}));
    let psm = t.told(2, "l2cap_listening")[0]["psm"].clone();
    let peer = t.address_of(2);
    t.send(1, json!({"op": "l2cap_open", "peer": peer, "psm": psm, "ref": 3}));
    let chan = t.told(1, "l2cap_opened")[0]["chan"].clone();
    assert_eq!(t.told(2, "l2cap_incoming").len(), 1);
    t.send(1, json!({"op": "data", "chan": chan, "bytes": b64(1000)}));
    t.advance(20);
    assert_eq!(t.told(2, "data")[0]["bytes"], b64(1000));
    t.send(1, json!({"op": "scan", "services": null, "duplicates": false}));
    assert_eq!(t.told(1, "seen").len(), 1);
    t.send(100, json!({"op": "range", "hears": [["A1", "A2"]]}));
    assert_eq!(t.told(1, "disconnected")[0]["status"], 8);
    assert_eq!(t.told(2, "disconnected")[0]["link"], link);
    assert_eq!(t.told(1, "closed").len(), 1);
    assert_eq!(t.told(2, "closed").len(), 1);
    // Out of range: neither a connection nor a channel.
    t.send(1, json!({"op": "connect", "peer": peer, "ref": 9, "timeout_ms": 1000}));
    t.send(1, json!({"op": "l2cap_open", "peer": peer, "psm": psm, "ref": 4}));
    assert_eq!(t.told(1, "l2cap_failed").len(), 1);
    t.advance(1_000);
    assert_eq!(t.told(1, "connect_failed")[0]["status"], 133);
    // Back in range: seen again by the scan that saw it before.
    t.send(100, json!({"op": "range", "hears": null}));
    assert_eq!(t.told(1, "seen").len(), 1);
    // A phone that leaves (its connection closes) drops its links without a word from it.
    let link = t.link();
    let out = t.air.closed(2, t.now);
    t.take(out);
    let lost = t.told(1, "disconnected");
    assert_eq!((lost[0]["link"].as_u64(), lost[0]["status"].as_u64()), (Some(link), Some(8)));
}

#[test]
fn a_connection_attempt_without_a_timeout_waits_until_the_peer_is_reachable() {
    let mut t = Test::new();
    t.phone(1, "I1", "ios", 185);
    t.phone(2, "A1", "android", 517);
    t.send(100, json!({"op": "range", "hears": []}));
    t.send(2, json!({"op": "advertise", "services": [SERVICE]}));
    let peer = t.address_of(2);
    t.send(1, json!({"op": "connect", "peer": peer, "ref": 1, "timeout_ms": null}));
    t.advance(60_000);
    assert!(t.told(1, "connect_failed").is_empty() && t.told(1, "connected").is_empty());
    t.send(100, json!({"op": "range", "hears": null}));
    assert_eq!(t.told(1, "connected").len(), 1);
}

#[test]
fn hostile_messages_are_refused_and_change_nothing() {
    let mut t = Test::new();
    t.send(5, json!({"op": "advertise"}));
    assert_eq!(t.told(5, "error").len(), 1, "hello first");
    t.phone(1, "A1", "android", 517);
    t.phone(2, "A2", "android", 517);
    t.phone(3, "A3", "android", 517);
    let link = t.link();
    // A phone that is not on the link can neither write into it nor close it.
    t.send(3, json!({"op": "write", "link": link, "char": RX, "value": "AA=="}));
    t.send(3, json!({"op": "disconnect", "link": link}));
    assert_eq!(t.told(3, "error").len(), 1);
    assert!(t.told(1, "disconnected").is_empty());
    // Not base64, a second hello, a name already taken, a phone sending control ops.
    t.send(1, json!({"op": "write", "link": link, "char": RX, "value": "not base64!"}));
    t.send(1, json!({"op": "hello", "role": "phone", "phone": "X", "platform": "ios"}));
    t.send(1, json!({"op": "range", "hears": []}));
    assert_eq!(t.told(1, "error").len(), 3);
    t.send(4, json!({"op": "hello", "role": "phone", "phone": "A1", "platform": "ios"}));
    assert_eq!(t.told(4, "error").len(), 1);
    assert_eq!(t.traffic()["links"], 1);
}

#[test]
fn connections_take_the_airs_latency_and_every_attempt_is_recorded() {
    let mut t = Test::new();
    t.phone(1, "A1", "android", 517);
    t.phone(2, "I1", "ios", 185);
    t.send(100, json!({"op": "latency", "connect_ms": 4000}));
    t.send(1, json!({"op": "advertise", "services": [SERVICE]}));
    t.send(2, json!({"op": "advertise", "services": [SERVICE]}));
    let (a, i) = (t.address_of(1), t.address_of(2));
    t.send(1, json!({"op": "connect", "peer": i, "ref": 1, "timeout_ms": null}));
    t.advance(3_000);
    t.send(2, json!({"op": "connect", "peer": a, "ref": 1, "timeout_ms": null}));
    assert!(t.told(1, "connected").is_empty());
    let traffic = t.traffic();
    assert_eq!(traffic["dials"], json!(["A1>I1", "I1>A1"]));
    assert_eq!(traffic["attempts"], 2);
    t.advance(1_000);
    assert_eq!(t.told(1, "connected").len(), 1, "A1's attempt, after 4 s");
    assert!(t.told(2, "connected").is_empty(), "I1's, 1 s old");
    // The second attempt cancelled: nothing more happens, and the air goes quiet (no deadline left).
    t.send(2, json!({"op": "cancel_connect", "ref": 1}));
    t.advance(10_000);
    assert!(t.told(2, "connected").is_empty());
    assert_eq!(t.traffic()["attempts"], 0);
    assert_eq!(t.air.next_deadline(), None);
}

#[test]
fn a_lost_connection_attempt_stays_lost_until_its_deadline_or_cancel() {
    let mut t = Test::new();
    t.phone(1, "A1", "android", 517);
    t.phone(2, "I1", "ios", 185);
    t.send(100, json!({"op": "loss", "connect": 0.5}));
    t.send(2, json!({"op": "advertise", "services": [SERVICE]}));
    let peer = t.address_of(2);
    // Each attempt is drawn once: about half complete at once, the others never do, however long the air runs
    // (were the chance drawn again on every pass, nearly all would complete within a few passes).
    let (mut made, mut failed, mut hanging) = (0, 0, 0);
    for r in 0..200 {
        let timeout = if r % 2 == 0 { json!(5_000) } else { Value::Null };
        t.send(1, json!({"op": "connect", "peer": peer, "ref": r, "timeout_ms": timeout}));
        t.advance(4_000);
        let connected = t.told(1, "connected");
        if let Some(c) = connected.first() {
            made += 1;
            t.send(1, json!({"op": "disconnect", "link": c["link"]}));
            continue;
        }
        t.advance(2_000);
        if t.told(1, "connect_failed").len() == 1 {
            failed += 1;
        } else {
            assert!(timeout.is_null(), "an attempt with a timeout fails at it");
            assert!(t.told(1, "connected").is_empty());
            hanging += 1;
            t.send(1, json!({"op": "cancel_connect", "ref": r}));
        }
    }
    assert!((70..=130).contains(&made), "made {made} of 200");
    assert!(failed > 20 && hanging > 20, "failed {failed}, hanging {hanging}");
    assert_eq!(t.traffic()["attempts"], 0);
}

#[test]
fn a_peripheral_changing_its_services_tells_its_centrals() {
    let mut t = Test::new();
    t.phone(1, "A1", "android", 517);
    t.phone(2, "I1", "ios", 185);
    t.phone(3, "A2", "android", 517);
    let link = t.link();
    t.send(2, json!({"op": "remove_services"}));
    t.send(2, json!({"op": "add_service", "service": {"uuid": SERVICE, "chars": []}}));
    let changed = t.told(1, "services_changed");
    assert_eq!(
        changed,
        vec![
            json!({"op": "services_changed", "link": link, "services": []}),
            json!({"op": "services_changed", "link": link, "services": [SERVICE]})
        ]
    );
    assert!(t.told(2, "services_changed").is_empty() && t.told(3, "services_changed").is_empty());
    // The central's own table changing tells nobody (it is not the peripheral of any link).
    t.send(1, json!({"op": "remove_services"}));
    assert!(t.told(2, "services_changed").is_empty());
}
