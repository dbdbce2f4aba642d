//! The air itself, without I/O: connections come and go, messages arrive, time passes, and the air answers with the
//! messages to send (see PROTOCOL.md). The server ([`crate::server`]) drives it from sockets and a clock.
//!
//! Modelled: advertising and scanning with service filters and repeated sightings, iOS background rules, GATT
//! connections (MTU exchange, discovery, reads and descriptor writes answered by the peripheral's app, one request at
//! a time), writes without response and notifications paced through a per-direction window, L2CAP channels as byte
//! streams, range, seeded loss (failed attempts, dropped links) and seeded EATT-like reordering. Not modelled: radio
//! timing beyond pacing, signal strength (every sighting is -60 dBm), advertisement size limits, bonding.

use base64::Engine as _;
use serde_json::{json, Map, Value};
use shoaldb::util::rng::SeededRng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// A connection to the air, numbered by the server.
pub type ConnId = u64;

/// Messages to send: to whom, what.
pub type Out = Vec<(ConnId, Value)>;

/// How often a scanner that asked for duplicates hears each advertisement again, in ms.
pub const SIGHTING_INTERVAL_MS: u64 = 500;
/// How long a request may wait for the peripheral's answer, in ms.
pub const REQUEST_TIMEOUT_MS: u64 = 30_000;
/// How long one packet takes to cross a link, per direction, in ms (about what a 15 ms connection interval with a
/// few packets per event gives).
pub const PACKET_MS: u64 = 2;
/// How many bytes an L2CAP channel carries per ms and direction (100 KB/s, about what phones reach).
pub const CHANNEL_BYTES_PER_MS: u64 = 100;
/// The largest L2CAP `data` message.
pub const MAX_DATA: usize = 64 * 1024;
/// The ATT MTU of a new link, before an exchange.
pub const DEFAULT_MTU: u64 = 23;

const STATUS_LOST: u64 = 8;
const STATUS_REMOTE_CLOSED: u64 = 19;
const STATUS_LOCAL_CLOSED: u64 = 22;
const STATUS_GATT_ERROR: u64 = 133;
const STATUS_BUSY: u64 = 143;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Platform {
    Android,
    Ios,
    Linux,
}

#[derive(Clone, Debug)]
struct Advertisement {
    services: Vec<String>,
    service_data: Map<String, Value>,
    name: Value,
}

#[derive(Clone, Debug)]
struct Scan {
    filter: Option<Vec<String>>,
    duplicates: bool,
    /// Advertisers reported since the scan (or their advertisement) started, for scans without duplicates.
    reported: BTreeSet<ConnId>,
    next_repeat_ms: u64,
}

#[derive(Debug)]
struct Phone {
    name: String,
    address: String,
    platform: Platform,
    mtu: u64,
    background: bool,
    advertising: Option<Advertisement>,
    scanning: Option<Scan>,
    services: Vec<Value>,
    listening: BTreeSet<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Dir {
    /// Central to peripheral (writes without response).
    Write,
    /// Peripheral to central (notifications).
    Notify,
}

impl Dir {
    fn name(self) -> &'static str {
        match self {
            Dir::Write => "write",
            Dir::Notify => "notify",
        }
    }
}

#[derive(Debug)]
struct Packet {
    char: String,
    value: String,
}

#[derive(Debug, Default)]
struct Lane {
    queue: VecDeque<Packet>,
    next_due_ms: u64,
}

#[derive(Debug)]
struct Request {
    op: &'static str,
    char: String,
    descriptor: Option<String>,
    deadline_ms: u64,
}

#[derive(Debug)]
struct Link {
    central: ConnId,
    peripheral: ConnId,
    mtu: u64,
    window: usize,
    lanes: BTreeMap<Dir, Lane>,
    request: Option<(u64, Request)>,
}

impl Link {
    fn end(&self, conn: ConnId) -> Option<Dir> {
        if conn == self.central {
            Some(Dir::Write)
        } else if conn == self.peripheral {
            Some(Dir::Notify)
        } else {
            None
        }
    }

    fn other(&self, conn: ConnId) -> ConnId {
        if conn == self.central {
            self.peripheral
        } else {
            self.central
        }
    }
}

#[derive(Debug)]
struct Channel {
    ends: [ConnId; 2],
    /// Bytes on their way to `ends[i]`, and when the next message of them arrives.
    lanes: [(VecDeque<(String, usize)>, u64); 2],
}

#[derive(Debug)]
struct PendingConnect {
    central: ConnId,
    peer: String,
    deadline_ms: Option<u64>,
    /// Not completed before this time (the air's connection latency).
    ready_ms: u64,
    /// The attempt was lost (drawn once, when it was made): it never completes, and fails only at its deadline
    /// (none: it lasts until cancelled, as on iOS).
    lost: bool,
}

/// What crossed the air since the last reset (a control's `traffic` reads it).
#[derive(Debug, Default)]
struct Traffic {
    writes: u64,
    notifications: u64,
    oversized: u64,
    overrun: u64,
    reordered: u64,
    channels: u64,
    stream_bytes: u64,
    lost_links: u64,
    /// Connection attempts the air lost (`loss.connect`).
    lost_attempts: u64,
    /// Links made, as "central>peripheral" by phone name.
    connections: BTreeSet<String>,
    /// Connection attempts, as "central>peripheral" (made or not).
    dials: BTreeSet<String>,
}

/// The shared air.
pub struct Air {
    phones: BTreeMap<ConnId, Phone>,
    controls: BTreeSet<ConnId>,
    links: BTreeMap<u64, Link>,
    channels: BTreeMap<u64, Channel>,
    pending: BTreeMap<(ConnId, u64), PendingConnect>,
    /// Commands forwarded to phones: the air's id → (control connection, the control's id).
    commands: BTreeMap<u64, (ConnId, Value)>,
    hears: Option<BTreeSet<(String, String)>>,
    window: usize,
    loss_connect: f64,
    drop_link: f64,
    reorder: f64,
    connect_ms: u64,
    rng: SeededRng,
    traffic: Traffic,
    next_id: u64,
    next_address: u64,
    next_psm: u64,
}

impl Default for Air {
    fn default() -> Self {
        Air::new(0)
    }
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn number(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

fn strings(v: &Value) -> Option<Vec<String>> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_lowercase)).collect())
}

/// The service with every `"uuid"` in lower case (Android writes UUIDs in lower case, CoreBluetooth in upper).
fn lowercase_uuids(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| match (k.as_str(), v) {
                    ("uuid", Value::String(u)) => (k.clone(), Value::String(u.to_lowercase())),
                    _ => (k.clone(), lowercase_uuids(v)),
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(lowercase_uuids).collect()),
        other => other.clone(),
    }
}

fn error(conn: ConnId, what: impl Into<String>) -> Out {
    vec![(conn, json!({"op": "error", "what": what.into()}))]
}

fn decoded_len(b64: &str) -> Option<usize> {
    base64::engine::general_purpose::STANDARD.decode(b64).ok().map(|b| b.len())
}

impl Air {
    /// An empty air whose loss and reordering follow `seed`.
    pub fn new(seed: u64) -> Air {
        Air {
            phones: BTreeMap::new(),
            controls: BTreeSet::new(),
            links: BTreeMap::new(),
            channels: BTreeMap::new(),
            pending: BTreeMap::new(),
            commands: BTreeMap::new(),
            hears: None,
            window: 8,
            loss_connect: 0.0,
            drop_link: 0.0,
            reorder: 0.0,
            connect_ms: 0,
            rng: SeededRng::new(seed),
            traffic: Traffic::default(),
            next_id: 1,
            next_address: 1,
            next_psm: 0x80,
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn name_of(&self, conn: ConnId) -> String {
        self.phones.get(&conn).map(|p| p.name.clone()).unwrap_or_default()
    }

    fn by_address(&self, address: &str) -> Option<ConnId> {
        self.phones.iter().find(|(_, p)| p.address.eq_ignore_ascii_case(address)).map(|(c, _)| *c)
    }

    fn by_name(&self, name: &str) -> Option<ConnId> {
        self.phones.iter().find(|(_, p)| p.name == name).map(|(c, _)| *c)
    }

    /// Whether two phones hear each other.
    fn in_range(&self, a: ConnId, b: ConnId) -> bool {
        let (Some(pa), Some(pb)) = (self.phones.get(&a), self.phones.get(&b)) else { return false };
        match &self.hears {
            None => true,
            Some(pairs) => {
                pairs.contains(&(pa.name.clone(), pb.name.clone()))
                    || pairs.contains(&(pb.name.clone(), pa.name.clone()))
            }
        }
    }

    /// The sighting `scanner` gets of `advertiser` now, if it sees it at all.
    fn sighting(&self, scanner: ConnId, advertiser: ConnId) -> Option<Value> {
        if scanner == advertiser || !self.in_range(scanner, advertiser) {
            return None;
        }
        let s = self.phones.get(&scanner)?;
        let a = self.phones.get(&advertiser)?;
        let scan = s.scanning.as_ref()?;
        let adv = a.advertising.as_ref()?;
        let matches = |filter: &Vec<String>| adv.services.iter().any(|u| filter.contains(u));
        if s.platform == Platform::Ios && s.background && scan.filter.is_none() {
            return None;
        }
        if let Some(filter) = &scan.filter {
            if !matches(filter) {
                return None;
            }
        }
        if a.platform == Platform::Ios && a.background {
            // Apple's overflow area: only an iPhone scanning for one of the services sees it, with no data or name.
            let filter = scan.filter.as_ref()?;
            if s.platform != Platform::Ios || !matches(filter) {
                return None;
            }
            return Some(json!({"op": "seen", "peer": a.address, "services": adv.services,
                "service_data": {}, "name": null, "rssi": -60}));
        }
        Some(json!({"op": "seen", "peer": a.address, "services": adv.services,
            "service_data": adv.service_data, "name": adv.name, "rssi": -60}))
    }

    /// Sightings due now: every pair not yet reported (or every pair, for `repeat` scanners that take duplicates).
    fn sightings(&mut self, now_ms: u64, out: &mut Out) {
        let scanners: Vec<ConnId> = self.phones.iter().filter(|(_, p)| p.scanning.is_some()).map(|(c, _)| *c).collect();
        let advertisers: Vec<ConnId> =
            self.phones.iter().filter(|(_, p)| p.advertising.is_some()).map(|(c, _)| *c).collect();
        for s in scanners {
            let repeat = {
                let p = &self.phones[&s];
                let scan = p.scanning.as_ref().expect("scanning");
                scan.duplicates && !(p.platform == Platform::Ios && p.background) && now_ms >= scan.next_repeat_ms
            };
            for &a in &advertisers {
                let Some(seen) = self.sighting(s, a) else { continue };
                let Some(scan) = self.phones.get_mut(&s).and_then(|p| p.scanning.as_mut()) else { continue };
                let first = scan.reported.insert(a);
                if repeat || first {
                    out.push((s, seen));
                }
            }
            if repeat {
                if let Some(scan) = self.phones.get_mut(&s).and_then(|p| p.scanning.as_mut()) {
                    scan.next_repeat_ms = now_ms + SIGHTING_INTERVAL_MS;
                }
            }
        }
    }

    /// A connection closed: a phone leaves without a word, a control's commands are forgotten.
    pub fn closed(&mut self, conn: ConnId, now_ms: u64) -> Out {
        let mut out = Out::new();
        self.controls.remove(&conn);
        self.commands.retain(|_, (c, _)| *c != conn);
        if self.phones.contains_key(&conn) {
            self.drop_phone_links(conn, |_| true, &mut out);
            self.pending.retain(|(c, _), _| *c != conn);
            self.phones.remove(&conn);
            for p in self.phones.values_mut() {
                if let Some(scan) = p.scanning.as_mut() {
                    scan.reported.remove(&conn);
                }
            }
        }
        self.advance(now_ms, &mut out);
        out
    }

    /// Drops `conn`'s links and channels to the phones `which` picks, both ends told (status 8).
    fn drop_phone_links(&mut self, conn: ConnId, which: impl Fn(ConnId) -> bool, out: &mut Out) {
        let lost: Vec<u64> = self
            .links
            .iter()
            .filter(|(_, l)| l.end(conn).is_some() && which(l.other(conn)))
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            self.lose_link(id, out);
        }
        let closed: Vec<u64> = self
            .channels
            .iter()
            .filter(|(_, c)| c.ends.contains(&conn) && which(if c.ends[0] == conn { c.ends[1] } else { c.ends[0] }))
            .map(|(id, _)| *id)
            .collect();
        for id in closed {
            if let Some(c) = self.channels.remove(&id) {
                for end in c.ends {
                    out.push((end, json!({"op": "closed", "chan": id})));
                }
            }
        }
    }

    fn lose_link(&mut self, id: u64, out: &mut Out) {
        if let Some(link) = self.links.remove(&id) {
            self.traffic.lost_links += 1;
            for end in [link.central, link.peripheral] {
                if self.phones.contains_key(&end) {
                    out.push((end, json!({"op": "disconnected", "link": id, "status": STATUS_LOST})));
                }
            }
        }
    }

    /// One message from `conn`.
    pub fn message(&mut self, conn: ConnId, now_ms: u64, msg: Value) -> Out {
        let op = msg.get("op").and_then(Value::as_str).unwrap_or("").to_owned();
        let mut out = if op == "hello" {
            self.hello(conn, &msg)
        } else if self.controls.contains(&conn) {
            self.control(conn, &op, &msg)
        } else if self.phones.contains_key(&conn) {
            self.phone(conn, now_ms, &op, &msg)
        } else {
            error(conn, "say hello first")
        };
        self.advance(now_ms, &mut out);
        out
    }

    fn hello(&mut self, conn: ConnId, msg: &Value) -> Out {
        if self.phones.contains_key(&conn) || self.controls.contains(&conn) {
            return error(conn, "hello twice");
        }
        match text(msg, "role").as_deref() {
            Some("control") => {
                self.controls.insert(conn);
                vec![(conn, json!({"op": "welcome"}))]
            }
            Some("phone") => {
                let Some(name) = text(msg, "phone").filter(|n| !n.is_empty() && n.len() <= 64) else {
                    return error(conn, "a phone needs a name");
                };
                if self.by_name(&name).is_some() {
                    return error(conn, format!("phone {name} is already on the air"));
                }
                let platform = match text(msg, "platform").as_deref() {
                    Some("android") => Platform::Android,
                    Some("ios") => Platform::Ios,
                    Some("linux") => Platform::Linux,
                    _ => return error(conn, "platform: android, ios or linux"),
                };
                let mtu = number(msg, "mtu").unwrap_or(DEFAULT_MTU).clamp(DEFAULT_MTU, 517);
                let n = self.next_address;
                self.next_address += 1;
                let address = format!("02:00:00:00:{:02X}:{:02X}", (n >> 8) & 0xff, n & 0xff);
                log::info!("phone {name} ({platform:?}) joins as {address}");
                self.phones.insert(
                    conn,
                    Phone {
                        name,
                        address: address.clone(),
                        platform,
                        mtu,
                        background: false,
                        advertising: None,
                        scanning: None,
                        services: Vec::new(),
                        listening: BTreeSet::new(),
                    },
                );
                vec![(conn, json!({"op": "welcome", "address": address, "window": self.window}))]
            }
            _ => error(conn, "role: phone or control"),
        }
    }

    fn control(&mut self, conn: ConnId, op: &str, msg: &Value) -> Out {
        let mut out = Out::new();
        match op {
            "range" => {
                self.hears = match msg.get("hears") {
                    Some(Value::Array(pairs)) => Some(
                        pairs
                            .iter()
                            .filter_map(|p| {
                                let p = p.as_array()?;
                                Some((p.first()?.as_str()?.to_owned(), p.get(1)?.as_str()?.to_owned()))
                            })
                            .collect(),
                    ),
                    _ => None,
                };
                let phones: Vec<ConnId> = self.phones.keys().copied().collect();
                for &a in &phones {
                    let apart: BTreeSet<ConnId> = phones.iter().copied().filter(|&b| !self.in_range(a, b)).collect();
                    self.drop_phone_links(a, |b| apart.contains(&b), &mut out);
                    for &b in &apart {
                        if let Some(scan) = self.phones.get_mut(&a).and_then(|p| p.scanning.as_mut()) {
                            scan.reported.remove(&b);
                        }
                    }
                }
                out.push((conn, json!({"op": "ok"})));
            }
            "app_state" => {
                let Some(phone) = text(msg, "phone").and_then(|n| self.by_name(&n)) else {
                    return error(conn, "app_state: no such phone");
                };
                let background = msg.get("background").and_then(Value::as_bool).unwrap_or(false);
                if let Some(p) = self.phones.get_mut(&phone) {
                    p.background = background;
                }
                for p in self.phones.values_mut() {
                    if let Some(scan) = p.scanning.as_mut() {
                        scan.reported.remove(&phone);
                    }
                }
                if let Some(scan) = self.phones.get_mut(&phone).and_then(|p| p.scanning.as_mut()) {
                    scan.reported.clear();
                }
                out.push((conn, json!({"op": "ok"})));
            }
            "loss" => {
                self.loss_connect = msg.get("connect").and_then(Value::as_f64).unwrap_or(0.0).clamp(0.0, 1.0);
                self.drop_link = msg.get("drop_link").and_then(Value::as_f64).unwrap_or(0.0).clamp(0.0, 1.0);
                out.push((conn, json!({"op": "ok"})));
            }
            "reorder" => {
                self.reorder = msg.get("chance").and_then(Value::as_f64).unwrap_or(0.0).clamp(0.0, 1.0);
                out.push((conn, json!({"op": "ok"})));
            }
            "latency" => {
                self.connect_ms = number(msg, "connect_ms").unwrap_or(0).min(60_000);
                out.push((conn, json!({"op": "ok"})));
            }
            "seed" => {
                self.rng = SeededRng::new(number(msg, "seed").unwrap_or(0));
                out.push((conn, json!({"op": "ok"})));
            }
            "reset" => {
                self.traffic = Traffic::default();
                self.hears = None;
                self.loss_connect = 0.0;
                self.drop_link = 0.0;
                self.reorder = 0.0;
                self.connect_ms = 0;
                self.window = number(msg, "window").unwrap_or(8).clamp(1, 64) as usize;
                for p in self.phones.values_mut() {
                    p.background = false;
                }
                out.push((conn, json!({"op": "ok"})));
            }
            "traffic" => {
                let t = &self.traffic;
                let phones: Vec<&str> = self.phones.values().map(|p| p.name.as_str()).collect();
                let scanning: Vec<&str> =
                    self.phones.values().filter(|p| p.scanning.is_some()).map(|p| p.name.as_str()).collect();
                out.push((
                    conn,
                    json!({"op": "traffic", "writes": t.writes, "notifications": t.notifications,
                        "oversized": t.oversized, "overrun": t.overrun, "reordered": t.reordered,
                        "channels": t.channels, "stream_bytes": t.stream_bytes, "lost_links": t.lost_links, "lost_attempts": t.lost_attempts,
                        "connections": t.connections, "dials": t.dials, "phones": phones, "scanning": scanning, "attempts": self.pending.len(), "links": self.links.len()}),
                ));
            }
            "do" => {
                let Some(phone) = text(msg, "phone").and_then(|n| self.by_name(&n)) else {
                    return error(conn, format!("do: no phone {}", msg.get("phone").unwrap_or(&Value::Null)));
                };
                let id = self.id();
                let mut command = msg.clone();
                if let Some(obj) = command.as_object_mut() {
                    obj.remove("phone");
                    obj.insert("id".into(), json!(id));
                }
                self.commands.insert(id, (conn, msg.get("id").cloned().unwrap_or(Value::Null)));
                out.push((phone, command));
            }
            _ => return error(conn, format!("unknown control op {op:?}")),
        }
        out
    }

    fn phone(&mut self, conn: ConnId, now_ms: u64, op: &str, msg: &Value) -> Out {
        let mut out = Out::new();
        match op {
            "done" => {
                let Some((control, id)) = number(msg, "id").and_then(|id| self.commands.remove(&id)) else {
                    return error(conn, "done: no such command");
                };
                let mut answer = msg.clone();
                if let Some(obj) = answer.as_object_mut() {
                    obj.insert("id".into(), id);
                    obj.insert("phone".into(), json!(self.name_of(conn)));
                }
                out.push((control, answer));
            }
            "advertise" => {
                let adv = Advertisement {
                    services: msg.get("services").and_then(strings).unwrap_or_default(),
                    service_data: msg
                        .get("service_data")
                        .and_then(Value::as_object)
                        .map(|m| m.iter().map(|(k, v)| (k.to_lowercase(), v.clone())).collect())
                        .unwrap_or_default(),
                    name: msg.get("name").cloned().unwrap_or(Value::Null),
                };
                if let Some(p) = self.phones.get_mut(&conn) {
                    p.advertising = Some(adv);
                }
                for p in self.phones.values_mut() {
                    if let Some(scan) = p.scanning.as_mut() {
                        scan.reported.remove(&conn);
                    }
                }
                out.push((conn, json!({"op": "advertising", "ok": true})));
            }
            "stop_advertise" => {
                if let Some(p) = self.phones.get_mut(&conn) {
                    p.advertising = None;
                }
            }
            "scan" => {
                let filter = msg.get("services").and_then(strings);
                let duplicates = msg.get("duplicates").and_then(Value::as_bool).unwrap_or(false);
                if let Some(p) = self.phones.get_mut(&conn) {
                    p.scanning = Some(Scan { filter, duplicates, reported: BTreeSet::new(), next_repeat_ms: now_ms });
                }
            }
            "stop_scan" => {
                if let Some(p) = self.phones.get_mut(&conn) {
                    p.scanning = None;
                }
            }
            "add_service" => {
                let Some(service) = msg.get("service").filter(|s| s.get("uuid").and_then(Value::as_str).is_some())
                else {
                    return error(conn, "add_service: a service needs a uuid");
                };
                let service = lowercase_uuids(service);
                let uuid = text(&service, "uuid").unwrap_or_default();
                if let Some(p) = self.phones.get_mut(&conn) {
                    if p.services.len() >= 16 {
                        return vec![(conn, json!({"op": "service_added", "uuid": uuid, "ok": false}))];
                    }
                    p.services.push(service);
                }
                out.push((conn, json!({"op": "service_added", "uuid": uuid, "ok": true})));
                self.services_changed(conn, &mut out);
            }
            "remove_services" => {
                if let Some(p) = self.phones.get_mut(&conn) {
                    p.services.clear();
                }
                self.services_changed(conn, &mut out);
            }
            "connect" => {
                let (Some(peer), Some(r)) = (text(msg, "peer"), number(msg, "ref")) else {
                    return error(conn, "connect: peer and ref");
                };
                let deadline_ms = number(msg, "timeout_ms").map(|t| now_ms + t);
                let ready_ms = now_ms + self.connect_ms;
                if let Some(target) = self.by_address(&peer) {
                    self.traffic.dials.insert(format!("{}>{}", self.name_of(conn), self.name_of(target)));
                }
                let lost = self.rng.chance(self.loss_connect);
                self.traffic.lost_attempts += u64::from(lost);
                self.pending.insert((conn, r), PendingConnect { central: conn, peer, deadline_ms, ready_ms, lost });
            }
            "cancel_connect" => {
                if let Some(r) = number(msg, "ref") {
                    self.pending.remove(&(conn, r));
                }
            }
            "exchange_mtu" => {
                let Some((id, link)) = self.own_link(conn, msg) else {
                    return error(conn, "exchange_mtu: no such link");
                };
                if link.central != conn {
                    return error(conn, "exchange_mtu: only the central asks");
                }
                let asked = number(msg, "mtu").unwrap_or(DEFAULT_MTU).max(DEFAULT_MTU);
                let ends = (link.central, link.peripheral);
                let mtu = [asked, self.phones[&ends.0].mtu, self.phones[&ends.1].mtu].into_iter().min().unwrap_or(23);
                if let Some(link) = self.links.get_mut(&id) {
                    link.mtu = mtu;
                }
                for end in [ends.0, ends.1] {
                    out.push((end, json!({"op": "mtu", "link": id, "mtu": mtu})));
                }
            }
            "disconnect" => {
                let Some((id, _)) = self.own_link(conn, msg) else { return Out::new() };
                if let Some(link) = self.links.remove(&id) {
                    out.push((
                        link.other(conn),
                        json!({"op": "disconnected", "link": id, "status": STATUS_REMOTE_CLOSED}),
                    ));
                    out.push((conn, json!({"op": "disconnected", "link": id, "status": STATUS_LOCAL_CLOSED})));
                }
            }
            "discover" => {
                let Some((id, link)) = self.own_link(conn, msg) else { return error(conn, "discover: no such link") };
                let services = self.phones[&link.peripheral].services.clone();
                out.push((conn, json!({"op": "services", "link": id, "services": services})));
            }
            "read" | "write_descriptor" => return self.request(conn, now_ms, op, msg),
            "respond" => {
                let Some((id, link)) = self.own_link(conn, msg) else { return error(conn, "respond: no such link") };
                if link.peripheral != conn {
                    return error(conn, "respond: only the peripheral answers");
                }
                let central = link.central;
                let req = number(msg, "req");
                let Some(link) = self.links.get_mut(&id) else { return Out::new() };
                let Some((_, request)) = link.request.take_if(|(r, _)| Some(*r) == req) else {
                    return error(conn, "respond: no such request");
                };
                let status = number(msg, "status").unwrap_or(0);
                out.push((central, self.answer(id, &request, status, msg.get("value").cloned())));
            }
            "write" | "notify" => self.packet(conn, now_ms, op, msg, &mut out),
            "l2cap_listen" => {
                let psm = self.next_psm;
                self.next_psm += 1;
                if let Some(p) = self.phones.get_mut(&conn) {
                    p.listening.insert(psm);
                }
                out.push((conn, json!({"op": "l2cap_listening", "psm": psm})));
            }
            "l2cap_unlisten" => {
                let psm = number(msg, "psm").unwrap_or(0);
                if let Some(p) = self.phones.get_mut(&conn) {
                    p.listening.remove(&psm);
                }
            }
            "l2cap_open" => {
                let r = number(msg, "ref").unwrap_or(0);
                let psm = number(msg, "psm").unwrap_or(0);
                let peer = text(msg, "peer").and_then(|a| self.by_address(&a));
                let listener = peer.filter(|&p| {
                    self.in_range(conn, p) && self.phones.get(&p).is_some_and(|ph| ph.listening.contains(&psm))
                });
                match listener {
                    Some(p) if !self.rng.chance(self.loss_connect) => {
                        let chan = self.id();
                        self.channels.insert(chan, Channel { ends: [conn, p], lanes: Default::default() });
                        self.traffic.channels += 1;
                        let from = self.phones[&conn].address.clone();
                        out.push((conn, json!({"op": "l2cap_opened", "ref": r, "chan": chan})));
                        out.push((p, json!({"op": "l2cap_incoming", "chan": chan, "peer": from, "psm": psm})));
                    }
                    _ => out.push((conn, json!({"op": "l2cap_failed", "ref": r}))),
                }
            }
            "data" => {
                let Some((chan, other)) = self.own_channel(conn, msg) else {
                    return error(conn, "data: no such channel");
                };
                let bytes = text(msg, "bytes").unwrap_or_default();
                match decoded_len(&bytes) {
                    Some(n) if n <= MAX_DATA => {
                        let Some(c) = self.channels.get_mut(&chan) else { return Out::new() };
                        let lane = &mut c.lanes[usize::from(c.ends[1] == other)];
                        if lane.0.is_empty() {
                            lane.1 = lane.1.max(now_ms + 1);
                        }
                        lane.0.push_back((bytes, n));
                    }
                    _ => return error(conn, "data: bytes must be base64, at most 64 KiB"),
                }
            }
            "close" => {
                let Some((chan, other)) = self.own_channel(conn, msg) else { return Out::new() };
                // What was written before the close still arrives, then the end.
                if let Some(c) = self.channels.remove(&chan) {
                    for (end, lane) in c.ends.iter().zip(c.lanes) {
                        for (bytes, n) in lane.0 {
                            self.traffic.stream_bytes += n as u64;
                            out.push((*end, json!({"op": "data", "chan": chan, "bytes": bytes})));
                        }
                    }
                }
                out.push((other, json!({"op": "closed", "chan": chan})));
            }
            _ => return error(conn, format!("unknown op {op:?}")),
        }
        out
    }

    /// The GATT table of `peripheral` changed: the centrals connected to it get the Service Changed indication.
    fn services_changed(&self, peripheral: ConnId, out: &mut Out) {
        let Some(phone) = self.phones.get(&peripheral) else { return };
        let uuids: Vec<&Value> = phone.services.iter().filter_map(|s| s.get("uuid")).collect();
        for (&id, link) in self.links.iter().filter(|(_, l)| l.peripheral == peripheral) {
            out.push((link.central, json!({"op": "services_changed", "link": id, "services": uuids})));
        }
    }

    fn own_link(&self, conn: ConnId, msg: &Value) -> Option<(u64, &Link)> {
        let id = number(msg, "link")?;
        let link = self.links.get(&id)?;
        link.end(conn)?;
        Some((id, link))
    }

    fn own_channel(&self, conn: ConnId, msg: &Value) -> Option<(u64, ConnId)> {
        let id = number(msg, "chan")?;
        let c = self.channels.get(&id)?;
        let other = if c.ends[0] == conn {
            c.ends[1]
        } else if c.ends[1] == conn {
            c.ends[0]
        } else {
            return None;
        };
        Some((id, other))
    }

    /// A read or descriptor write from the central, forwarded to the peripheral's app (one at a time per link).
    fn request(&mut self, conn: ConnId, now_ms: u64, op: &str, msg: &Value) -> Out {
        let req_id = self.id();
        let Some((id, link)) = self.own_link(conn, msg) else { return error(conn, format!("{op}: no such link")) };
        if link.central != conn {
            return error(conn, format!("{op}: only the central asks"));
        }
        let peripheral = link.peripheral;
        let char = text(msg, "char").unwrap_or_default().to_lowercase();
        let request = Request {
            op: if op == "read" { "read" } else { "write_descriptor" },
            char: char.clone(),
            descriptor: text(msg, "descriptor"),
            deadline_ms: now_ms + REQUEST_TIMEOUT_MS,
        };
        let Some(link) = self.links.get_mut(&id) else { return Out::new() };
        if link.request.is_some() {
            return vec![(conn, self.answer(id, &request, STATUS_BUSY, None))];
        }
        let forward = if op == "read" {
            json!({"op": "read_request", "link": id, "req": req_id, "char": char, "offset": 0})
        } else {
            json!({"op": "descriptor_write_request", "link": id, "req": req_id, "char": char,
                "descriptor": request.descriptor, "value": msg.get("value").cloned().unwrap_or(Value::Null)})
        };
        link.request = Some((req_id, request));
        vec![(peripheral, forward)]
    }

    fn answer(&self, link: u64, request: &Request, status: u64, value: Option<Value>) -> Value {
        if request.op == "read" {
            json!({"op": "read_result", "link": link, "char": request.char, "status": status,
                "value": value.unwrap_or(Value::Null)})
        } else {
            json!({"op": "descriptor_written", "link": link, "char": request.char,
                "descriptor": request.descriptor, "status": status})
        }
    }

    /// A write without response or a notification: checked against the MTU and the window, then queued.
    fn packet(&mut self, conn: ConnId, now_ms: u64, op: &str, msg: &Value, out: &mut Out) {
        let Some((id, link)) = self.own_link(conn, msg) else {
            out.extend(error(conn, format!("{op}: no such link")));
            return;
        };
        let dir = if op == "write" { Dir::Write } else { Dir::Notify };
        if link.end(conn) != Some(dir) {
            out.extend(error(conn, format!("{op}: wrong end of the link")));
            return;
        }
        let value = text(msg, "value").unwrap_or_default();
        let Some(len) = decoded_len(&value) else {
            out.extend(error(conn, format!("{op}: value must be base64")));
            return;
        };
        if len as u64 > link.mtu.saturating_sub(3) {
            log::warn!("{op} of {len} bytes over link {id} (ATT MTU {}): dropped", link.mtu);
            self.traffic.oversized += 1;
            return;
        }
        let (window, queued) = (link.window, link.lanes.get(&dir).map_or(0, |l| l.queue.len()));
        if queued >= window {
            log::warn!(
                "{op} into a full window on link {id} (central {}, sent by {}): dropped",
                self.name_of(link.central),
                self.name_of(conn)
            );
            self.traffic.overrun += 1;
            return;
        }
        let reorder = self.rng.chance(self.reorder);
        let Some(link) = self.links.get_mut(&id) else { return };
        let lane = link.lanes.entry(dir).or_default();
        if lane.queue.is_empty() {
            lane.next_due_ms = lane.next_due_ms.max(now_ms + PACKET_MS);
        }
        let packet = Packet { char: text(msg, "char").unwrap_or_default().to_lowercase(), value };
        if reorder && !lane.queue.is_empty() {
            // EATT-like: this packet overtakes the one before it.
            let at = lane.queue.len() - 1;
            lane.queue.insert(at, packet);
            self.traffic.reordered += 1;
        } else {
            lane.queue.push_back(packet);
        }
    }

    /// Delivers due packets, fails overdue requests and connection attempts, completes connections that can be made
    /// and reports due sightings.
    fn advance(&mut self, now_ms: u64, out: &mut Out) {
        // Connection attempts.
        let keys: Vec<(ConnId, u64)> = self.pending.keys().copied().collect();
        for key in keys {
            let Some(p) = self.pending.get_mut(&key) else { continue };
            if now_ms >= p.ready_ms {
                p.ready_ms = 0; // latency served (and no longer a deadline)
            }
            let p = &self.pending[&key];
            let target = self.by_address(&p.peer);
            let reachable = target
                .filter(|&t| t != p.central && self.in_range(p.central, t) && self.phones[&t].advertising.is_some());
            let central = p.central;
            let overdue = p.deadline_ms.is_some_and(|d| now_ms >= d);
            let reachable = reachable.filter(|_| p.ready_ms == 0 && !p.lost);
            match reachable {
                Some(t) => {
                    self.pending.remove(&key);
                    let id = self.id();
                    self.links.insert(
                        id,
                        Link {
                            central,
                            peripheral: t,
                            mtu: DEFAULT_MTU,
                            window: self.window,
                            lanes: BTreeMap::new(),
                            request: None,
                        },
                    );
                    let name = format!("{}>{}", self.phones[&central].name, self.phones[&t].name);
                    log::info!("link {id}: {name}");
                    self.traffic.connections.insert(name);
                    let from = self.phones[&central].address.clone();
                    out.push((
                        central,
                        json!({"op": "connected", "ref": key.1, "link": id, "mtu": DEFAULT_MTU, "window": self.window}),
                    ));
                    out.push((
                        t,
                        json!({"op": "incoming", "link": id, "peer": from, "mtu": DEFAULT_MTU, "window": self.window}),
                    ));
                }
                _ if overdue => {
                    self.pending.remove(&key);
                    out.push((central, json!({"op": "connect_failed", "ref": key.1, "status": STATUS_GATT_ERROR})));
                }
                _ => {}
            }
        }
        // Packets and requests.
        let ids: Vec<u64> = self.links.keys().copied().collect();
        for id in ids {
            for dir in [Dir::Write, Dir::Notify] {
                while let Some(link) = self.links.get_mut(&id) {
                    let (to, from) = match dir {
                        Dir::Write => (link.peripheral, link.central),
                        Dir::Notify => (link.central, link.peripheral),
                    };
                    let Some(lane) = link.lanes.get_mut(&dir) else { break };
                    if lane.queue.is_empty() || lane.next_due_ms > now_ms {
                        break;
                    }
                    let Some(packet) = lane.queue.pop_front() else { break };
                    lane.next_due_ms += PACKET_MS;
                    if !lane.queue.is_empty() && lane.next_due_ms < now_ms {
                        lane.next_due_ms = now_ms;
                    }
                    if self.rng.chance(self.drop_link) {
                        self.lose_link(id, out);
                        break;
                    }
                    let arrived = match dir {
                        Dir::Write => {
                            self.traffic.writes += 1;
                            json!({"op": "written", "link": id, "char": packet.char, "value": packet.value})
                        }
                        Dir::Notify => {
                            self.traffic.notifications += 1;
                            json!({"op": "notified", "link": id, "char": packet.char, "value": packet.value})
                        }
                    };
                    out.push((to, arrived));
                    out.push((from, json!({"op": "delivered", "link": id, "dir": dir.name()})));
                }
            }
            if let Some(link) = self.links.get_mut(&id) {
                if let Some((_, request)) = link.request.take_if(|(_, r)| now_ms >= r.deadline_ms) {
                    let central = link.central;
                    out.push((central, self.answer(id, &request, STATUS_GATT_ERROR, None)));
                }
            }
        }
        // L2CAP bytes.
        for (&id, c) in self.channels.iter_mut() {
            for (end, lane) in c.ends.iter().zip(c.lanes.iter_mut()) {
                while lane.1 <= now_ms {
                    let Some((bytes, n)) = lane.0.pop_front() else { break };
                    self.traffic.stream_bytes += n as u64;
                    lane.1 += (n as u64 / CHANNEL_BYTES_PER_MS).max(1);
                    out.push((*end, json!({"op": "data", "chan": id, "bytes": bytes})));
                }
            }
        }
        self.sightings(now_ms, out);
    }

    /// Time passed: whatever fell due.
    pub fn tick(&mut self, now_ms: u64) -> Out {
        let mut out = Out::new();
        self.advance(now_ms, &mut out);
        out
    }

    /// When the air next has something to do on its own (None: only when a message arrives).
    pub fn next_deadline(&self) -> Option<u64> {
        let lanes =
            self.links.values().flat_map(|l| l.lanes.values()).filter(|l| !l.queue.is_empty()).map(|l| l.next_due_ms);
        let requests = self.links.values().filter_map(|l| l.request.as_ref().map(|(_, r)| r.deadline_ms));
        let connects =
            self.pending.values().flat_map(|p| p.deadline_ms.into_iter().chain(Some(p.ready_ms).filter(|&r| r > 0)));
        let channels = self.channels.values().flat_map(|c| c.lanes.iter()).filter(|l| !l.0.is_empty()).map(|l| l.1);
        let repeats =
            self.phones.values().filter_map(|p| p.scanning.as_ref().filter(|s| s.duplicates).map(|s| s.next_repeat_ms));
        lanes.chain(requests).chain(connects).chain(repeats).chain(channels).min()
    }
}
