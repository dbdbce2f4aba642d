//! A Linux peer on the air: the core's own Bluetooth LE stack — [`Node`] with its link manager, link protocol and
//! sync engine, what `shoal peer --ble` runs — over [`AirRadio`], a radio that speaks the air's protocol the way a
//! BlueZ peer behaves (ATT MTU 517, its tag in the advertisement's service data, the GATT server and L2CAP
//! listener of `BluezRadio`, a 12 s connect timeout). The radio is test code: the shipped Linux radio,
//! `BluezRadio`, drives BlueZ over D-Bus and kernel sockets, which this air cannot stand in for (it is verified on
//! BlueZ in a VM). What a Linux peer here shows is the core meeting the phones' radios: its links, its dialling
//! rules between a peer that advertises its tag and iPhones that cannot, GATT and L2CAP both ways.
//!
//! `shoal-air linux-phone ADDRESS NAME` is the phone program: it joins the air as NAME (platform linux) and runs
//! the driver commands of PROTOCOL.md ("Phone drivers") with [`Store`]s opened in fresh directories.

use crate::server::read_line;
use base64::Engine as _;
use serde_json::{json, Value};
use shoaldb::security::AppSecret;
use shoaldb::transport::ble::link::{Channel, Role};
use shoaldb::transport::ble::links::RadioCommand;
use shoaldb::transport::ble::radio::{Radio, RadioEvent, RadioEvents};
use shoaldb::transport::ble::{
    PSM_CHARACTERISTIC_UUID as PSM, RX_CHARACTERISTIC_UUID as RX, SERVICE_UUID as SERVICE, TX_CHARACTERISTIC_UUID as TX,
};
use shoaldb::{AttachmentToken, Node, NodeConfig, Store};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// The ATT MTU a BlueZ peer accepts.
const ATT_MTU: u64 = 517;
/// How long a connection attempt may take before the air fails it (BlueZ's `CONNECT_TIMEOUT`).
const CONNECT_TIMEOUT_MS: u64 = 12_000;
/// The largest packet on an L2CAP channel.
const L2CAP_MTU: u16 = 2048;
/// The app secret of every phone on the air (PROTOCOL.md).
const SECRET: &str = "shoal air";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(v: Option<&Value>) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(v?.as_str()?).ok()
}

/// What the radio and the program ask of the phone's connection.
enum Ask {
    Attach(RadioEvents, bool),
    Execute(RadioCommand),
    Detach,
    /// A line for the air (the program's answers).
    Send(Value),
    /// The program is done: the connection closes once what was asked before went out.
    Quit,
}

/// The core's radio on this phone's air connection. Every store the program opens gets a new one; the newest
/// attached is the phone's radio.
pub struct AirRadio {
    asks: mpsc::UnboundedSender<Ask>,
    l2cap: bool,
}

impl Radio for AirRadio {
    fn attach(&self, events: RadioEvents) {
        let _ = self.asks.send(Ask::Attach(events, self.l2cap));
    }
    fn execute(&self, command: RadioCommand) {
        let _ = self.asks.send(Ask::Execute(command));
    }
    fn detach(&self) {
        let _ = self.asks.send(Ask::Detach);
    }
}

/// A GATT link's progress, central role: MTU exchange, discovery, the PSM, then L2CAP or the TX subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Mtu,
    Discover,
    Psm,
    L2cap,
    Subscribe,
    /// Reported to the core (or, peripheral role, waiting for the central's subscription).
    Up,
}

struct Link {
    peer: String,
    central: bool,
    stage: Stage,
    mtu: u64,
    window: u64,
    in_flight: u64,
    queued: VecDeque<Vec<u8>>,
    /// The core's number for it, once reported (over GATT; an L2CAP channel opened on it has its own).
    conn: Option<u64>,
}

impl Link {
    /// A link `connected` (central) or `incoming` (peripheral) announced.
    fn new(peer: String, central: bool, announced: &Value) -> Link {
        let n = |k: &str| announced.get(k).and_then(Value::as_u64);
        Link {
            peer,
            central,
            // A central starts with the MTU exchange; a peripheral waits for the central's subscription.
            stage: if central { Stage::Mtu } else { Stage::Up },
            mtu: n("mtu").unwrap_or(23),
            window: n("window").unwrap_or(1).max(1),
            in_flight: 0,
            queued: VecDeque::new(),
            conn: None,
        }
    }
}

/// What carries a connection the core knows.
#[derive(Clone, Copy)]
enum Carrier {
    Gatt(u64),
    L2cap { chan: u64, link: Option<u64> },
}

/// The radio's state: what the air said and what the core asked, without I/O (`out` collects lines for the air).
#[derive(Default)]
struct RadioState {
    events: Option<RadioEvents>,
    l2cap: bool,
    published: bool,
    psm: u64,
    next: u64,
    /// Connection attempts: ref → address.
    attempts: BTreeMap<u64, String>,
    links: BTreeMap<u64, Link>,
    /// L2CAP opens in flight: ref → the GATT link they were read from.
    opening: BTreeMap<u64, u64>,
    /// Channels: air id → the core's number.
    channels: BTreeMap<u64, u64>,
    conns: BTreeMap<u64, Carrier>,
    out: Vec<Value>,
}

impl RadioState {
    fn report(&self, event: RadioEvent) {
        if let Some(events) = &self.events {
            events.report(event);
        }
    }

    fn number(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// Everything of an earlier radio ends (a new store's radio starts afresh; a detached one stops).
    fn reset(&mut self) {
        for (&link, _) in self.links.iter() {
            self.out.push(json!({"op": "disconnect", "link": link}));
        }
        for (&chan, _) in self.channels.iter() {
            self.out.push(json!({"op": "close", "chan": chan}));
        }
        for &r in self.attempts.keys() {
            self.out.push(json!({"op": "cancel_connect", "ref": r}));
        }
        self.out.push(json!({"op": "stop_scan"}));
        self.out.push(json!({"op": "stop_advertise"}));
        self.out.push(json!({"op": "remove_services"}));
        if self.psm != 0 {
            self.out.push(json!({"op": "l2cap_unlisten", "psm": self.psm}));
        }
        let out = std::mem::take(&mut self.out);
        *self = RadioState { next: self.next, out, ..RadioState::default() };
    }

    fn execute(&mut self, command: RadioCommand) {
        match command {
            RadioCommand::StartAdvertising { service_data } => {
                if !self.published {
                    self.published = true;
                    self.out.push(json!({"op": "add_service", "service": {"uuid": SERVICE, "chars": [
                        {"uuid": RX, "props": ["write_no_response"]},
                        {"uuid": TX, "props": ["notify"]},
                        {"uuid": PSM, "props": ["read"]}]}}));
                    if self.l2cap {
                        self.out.push(json!({"op": "l2cap_listen"}));
                    }
                }
                let data = if service_data.is_empty() { json!({}) } else { json!({ SERVICE: b64(&service_data) }) };
                self.out.push(json!({"op": "advertise", "services": [SERVICE], "service_data": data, "name": null}));
            }
            RadioCommand::StartScanning => {
                self.out.push(json!({"op": "scan", "services": [SERVICE], "duplicates": true}));
            }
            RadioCommand::Connect { address } => {
                let r = self.number();
                self.attempts.insert(r, address.clone());
                self.out.push(json!({"op": "connect", "peer": address, "ref": r, "timeout_ms": CONNECT_TIMEOUT_MS}));
            }
            RadioCommand::CancelConnect { address } => {
                let refs: Vec<u64> = self.attempts.iter().filter(|(_, a)| **a == address).map(|(r, _)| *r).collect();
                for r in refs {
                    self.attempts.remove(&r);
                    self.out.push(json!({"op": "cancel_connect", "ref": r}));
                }
                // A link still being set up for it goes too.
                let setting_up: Vec<u64> = self
                    .links
                    .iter()
                    .filter(|(_, l)| l.central && l.conn.is_none() && l.peer == address)
                    .map(|(id, _)| *id)
                    .collect();
                for id in setting_up {
                    self.links.remove(&id);
                    self.out.push(json!({"op": "disconnect", "link": id}));
                }
            }
            RadioCommand::Disconnect { conn } => match self.conns.remove(&conn) {
                Some(Carrier::Gatt(link)) => {
                    self.links.remove(&link);
                    self.out.push(json!({"op": "disconnect", "link": link}));
                }
                Some(Carrier::L2cap { chan, link }) => {
                    self.channels.remove(&chan);
                    self.out.push(json!({"op": "close", "chan": chan}));
                    if let Some(link) = link {
                        self.links.remove(&link);
                        self.out.push(json!({"op": "disconnect", "link": link}));
                    }
                }
                None => {}
            },
            RadioCommand::Send { conn, packet } => match self.conns.get(&conn).copied() {
                Some(Carrier::Gatt(id)) => {
                    let Some(link) = self.links.get_mut(&id) else { return };
                    link.queued.push_back(packet);
                    self.flush(id);
                }
                Some(Carrier::L2cap { chan, .. }) => {
                    self.out.push(json!({"op": "data", "chan": chan, "bytes": b64(&packet)}));
                    self.report(RadioEvent::Sent { conn });
                }
                None => {}
            },
        }
    }

    /// Sends what the link's window has room for, reporting each packet taken.
    fn flush(&mut self, id: u64) {
        let Some(link) = self.links.get_mut(&id) else { return };
        let Some(conn) = link.conn else { return };
        while link.in_flight < link.window {
            let Some(packet) = link.queued.pop_front() else { break };
            link.in_flight += 1;
            let (op, char) = if link.central { ("write", RX) } else { ("notify", TX) };
            self.out.push(json!({"op": op, "link": id, "char": char, "value": b64(&packet)}));
            if let Some(events) = &self.events {
                events.report(RadioEvent::Sent { conn });
            }
        }
    }

    /// A link the core knows went away (or one being set up failed).
    fn lost(&mut self, id: u64) {
        let Some(link) = self.links.remove(&id) else { return };
        match link.conn {
            Some(conn) => {
                self.conns.remove(&conn);
                self.report(RadioEvent::Disconnected { conn });
            }
            None if link.central => {
                // An L2CAP channel opened on it carries on alone; an attempt still being set up failed.
                let on_it = self.conns.values().any(|c| matches!(c, Carrier::L2cap { link: Some(l), .. } if *l == id));
                if !on_it {
                    self.report(RadioEvent::ConnectFailed { address: link.peer });
                }
            }
            None => {}
        }
    }

    /// GATT link `id` is ready: the core learns of it.
    fn up(&mut self, id: u64) {
        let conn = self.number();
        let Some(link) = self.links.get_mut(&id) else { return };
        link.stage = Stage::Up;
        link.conn = Some(conn);
        let (address, role) = (link.peer.clone(), if link.central { Role::Central } else { Role::Peripheral });
        let channel = Channel::Gatt { att_mtu: u16::try_from(link.mtu).unwrap_or(u16::MAX) };
        self.conns.insert(conn, Carrier::Gatt(id));
        self.report(RadioEvent::Connected { conn, address, role, channel });
    }

    fn channel_up(&mut self, chan: u64, address: String, role: Role, link: Option<u64>) {
        let conn = self.number();
        self.channels.insert(chan, conn);
        self.conns.insert(conn, Carrier::L2cap { chan, link });
        self.report(RadioEvent::Connected { conn, address, role, channel: Channel::L2cap { mtu: L2CAP_MTU } });
    }

    fn subscribe(&mut self, id: u64) {
        if let Some(link) = self.links.get_mut(&id) {
            link.stage = Stage::Subscribe;
        }
        self.out.push(json!({"op": "write_descriptor", "link": id, "char": TX, "descriptor": "2902", "value": "AQA="}));
    }

    /// What the air said to this phone.
    fn heard(&mut self, m: &Value) {
        let op = m.get("op").and_then(Value::as_str).unwrap_or("");
        let n = |k: &str| m.get(k).and_then(Value::as_u64);
        let s = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_owned);
        let link_id = n("link").unwrap_or(0);
        match op {
            "seen" => {
                let Some(peer) = s("peer") else { return };
                let service_data = unb64(m.get("service_data").and_then(|d| d.get(SERVICE)));
                self.report(RadioEvent::Discovered { address: peer, service_data });
            }
            "connected" => {
                let Some(peer) = n("ref").and_then(|r| self.attempts.remove(&r)) else {
                    self.out.push(json!({"op": "disconnect", "link": link_id}));
                    return;
                };
                self.links.insert(link_id, Link::new(peer, true, m));
                self.out.push(json!({"op": "exchange_mtu", "link": link_id, "mtu": ATT_MTU}));
            }
            "connect_failed" => {
                if let Some(address) = n("ref").and_then(|r| self.attempts.remove(&r)) {
                    self.report(RadioEvent::ConnectFailed { address });
                }
            }
            "incoming" => {
                let Some(peer) = s("peer") else { return };
                self.links.insert(link_id, Link::new(peer, false, m));
            }
            "mtu" => {
                let Some(link) = self.links.get_mut(&link_id) else { return };
                link.mtu = n("mtu").unwrap_or(link.mtu);
                match (link.stage, link.conn) {
                    (Stage::Mtu, _) if link.central => {
                        link.stage = Stage::Discover;
                        self.out.push(json!({"op": "discover", "link": link_id}));
                    }
                    (Stage::Up, Some(conn)) => {
                        let mtu = u16::try_from(link.mtu).unwrap_or(u16::MAX);
                        self.report(RadioEvent::Mtu { conn, mtu });
                    }
                    _ => {}
                }
            }
            "services" => {
                if !self.links.get(&link_id).is_some_and(|l| l.stage == Stage::Discover) {
                    return;
                }
                let ours = m
                    .get("services")
                    .and_then(Value::as_array)
                    .and_then(|list| list.iter().find(|s| s.get("uuid").and_then(Value::as_str) == Some(SERVICE)));
                let chars: BTreeSet<&str> = ours
                    .and_then(|s| s.get("chars"))
                    .and_then(Value::as_array)
                    .map(|cs| cs.iter().filter_map(|c| c.get("uuid").and_then(Value::as_str)).collect())
                    .unwrap_or_default();
                if !chars.contains(RX) || !chars.contains(TX) {
                    self.out.push(json!({"op": "disconnect", "link": link_id}));
                    self.lost(link_id);
                } else if self.l2cap && chars.contains(PSM) {
                    if let Some(link) = self.links.get_mut(&link_id) {
                        link.stage = Stage::Psm;
                    }
                    self.out.push(json!({"op": "read", "link": link_id, "char": PSM}));
                } else {
                    self.subscribe(link_id);
                }
            }
            "read_result" => {
                let Some(link) = self.links.get(&link_id).filter(|l| l.stage == Stage::Psm) else { return };
                let value = unb64(m.get("value")).unwrap_or_default();
                let psm = match value[..] {
                    [lo, hi] if n("status") == Some(0) => u64::from(u16::from_le_bytes([lo, hi])),
                    _ => 0,
                };
                if psm == 0 {
                    return self.subscribe(link_id);
                }
                let peer = link.peer.clone();
                let r = self.number();
                self.opening.insert(r, link_id);
                if let Some(link) = self.links.get_mut(&link_id) {
                    link.stage = Stage::L2cap;
                }
                self.out.push(json!({"op": "l2cap_open", "peer": peer, "psm": psm, "ref": r}));
            }
            "l2cap_opened" | "l2cap_failed" => {
                let (Some(r), chan) = (n("ref"), n("chan")) else { return };
                let Some(id) = self.opening.remove(&r).filter(|id| self.links.contains_key(id)) else {
                    if let Some(chan) = chan {
                        self.out.push(json!({"op": "close", "chan": chan}));
                    }
                    return;
                };
                match chan {
                    Some(chan) if op == "l2cap_opened" => {
                        let peer = self.links.get(&id).map(|l| l.peer.clone()).unwrap_or_default();
                        self.channel_up(chan, peer, Role::Central, Some(id));
                    }
                    _ => self.subscribe(id),
                }
            }
            "descriptor_written" => {
                if !self.links.get(&link_id).is_some_and(|l| l.stage == Stage::Subscribe) {
                    return;
                }
                if n("status") == Some(0) {
                    self.up(link_id);
                } else {
                    self.out.push(json!({"op": "disconnect", "link": link_id}));
                    self.lost(link_id);
                }
            }
            "notified" | "written" => {
                let Some(conn) = self.links.get(&link_id).and_then(|l| l.conn) else { return };
                if let Some(bytes) = unb64(m.get("value")) {
                    self.report(RadioEvent::Packet { conn, bytes });
                }
            }
            "delivered" => {
                if let Some(link) = self.links.get_mut(&link_id) {
                    link.in_flight = link.in_flight.saturating_sub(1);
                }
                self.flush(link_id);
            }
            "descriptor_write_request" => {
                let req = n("req").unwrap_or(0);
                self.out.push(json!({"op": "respond", "link": link_id, "req": req, "status": 0}));
                let enable = unb64(m.get("value")).is_some_and(|v| v.first().is_some_and(|b| b & 3 != 0));
                let Some(link) = self.links.get(&link_id).filter(|l| !l.central) else { return };
                if s("char").as_deref() != Some(TX) {
                    return;
                }
                match (enable, link.conn) {
                    (true, None) => self.up(link_id),
                    (false, Some(_)) => {
                        self.out.push(json!({"op": "disconnect", "link": link_id}));
                        self.lost(link_id);
                    }
                    _ => {}
                }
            }
            "read_request" => {
                let req = n("req").unwrap_or(0);
                let answer = if s("char").as_deref() == Some(PSM) {
                    let psm = u16::try_from(self.psm).unwrap_or(0).to_le_bytes();
                    json!({"op": "respond", "link": link_id, "req": req, "status": 0, "value": b64(&psm)})
                } else {
                    json!({"op": "respond", "link": link_id, "req": req, "status": 10})
                };
                self.out.push(answer);
            }
            "disconnected" => self.lost(link_id),
            "services_changed" if self.links.get(&link_id).is_some_and(|l| l.central) => {
                // The peer's app restarted or stopped sync: its session is gone (a setup fails, and is retried).
                self.out.push(json!({"op": "disconnect", "link": link_id}));
                self.lost(link_id);
            }
            "l2cap_listening" => self.psm = n("psm").unwrap_or(0),
            "l2cap_incoming" => {
                let (Some(chan), Some(peer)) = (n("chan"), s("peer")) else { return };
                if self.events.is_none() || !self.l2cap {
                    self.out.push(json!({"op": "close", "chan": chan}));
                    return;
                }
                self.channel_up(chan, peer, Role::Peripheral, None);
            }
            "data" => {
                let Some(&conn) = n("chan").and_then(|c| self.channels.get(&c)) else { return };
                if let Some(bytes) = unb64(m.get("bytes")) {
                    self.report(RadioEvent::Packet { conn, bytes });
                }
            }
            "closed" => {
                let Some(conn) = n("chan").and_then(|c| self.channels.remove(&c)) else { return };
                if let Some(Carrier::L2cap { link: Some(link), .. }) = self.conns.remove(&conn) {
                    self.links.remove(&link);
                    self.out.push(json!({"op": "disconnect", "link": link}));
                }
                self.report(RadioEvent::Disconnected { conn });
            }
            _ => {}
        }
    }
}

/// Runs the Linux phone program: joins the air at `address` as `name`, runs the driver's commands until told to
/// quit (Ok) or until the air closes the connection.
pub async fn run(address: &str, name: &str) -> Result<(), String> {
    let stream = TcpStream::connect(address).await.map_err(|e| format!("connecting to the air at {address}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (read, mut write) = stream.into_split();
    let hello = json!({"op": "hello", "role": "phone", "phone": name, "platform": "linux", "mtu": ATT_MTU});
    write.write_all(format!("{hello}\n").as_bytes()).await.map_err(|e| e.to_string())?;
    let (asks, mut asked) = mpsc::unbounded_channel::<Ask>();
    let (commands, mut command_rx) = mpsc::unbounded_channel::<Value>();
    let state = Arc::new(Mutex::new(RadioState::default()));
    // The connection: lines from the air go to the radio (or, commands, to the program); the radio's lines and
    // the program's answers go to the air.
    let connection = tokio::spawn(async move {
        let (mut reader, mut line) = (BufReader::new(read), Vec::new());
        loop {
            let out = tokio::select! {
                read = read_line(&mut reader, &mut line) => {
                    let Ok(true) = read else { break };
                    let parsed = serde_json::from_slice::<Value>(&line);
                    line.clear();
                    let Ok(m) = parsed else { continue };
                    if m.get("op").and_then(Value::as_str) == Some("do") {
                        let _ = commands.send(m);
                        continue;
                    }
                    let Ok(mut st) = state.lock() else { break };
                    st.heard(&m);
                    std::mem::take(&mut st.out)
                }
                ask = asked.recv() => {
                    let Some(ask) = ask else { break };
                    let Ok(mut st) = state.lock() else { break };
                    match ask {
                        Ask::Attach(events, l2cap) => {
                            st.reset();
                            st.events = Some(events);
                            st.l2cap = l2cap;
                        }
                        Ask::Execute(command) => st.execute(command),
                        Ask::Detach => st.reset(),
                        Ask::Send(v) => st.out.push(v),
                        Ask::Quit => break,
                    }
                    std::mem::take(&mut st.out)
                }
            };
            for v in out {
                if write.write_all(format!("{v}\n").as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    });
    let mut program = Program { name: name.to_owned(), asks, open: None, fetching: Arc::default() };
    let mut quit = false;
    while let Some(command) = command_rx.recv().await {
        let cmd = command.get("cmd").and_then(Value::as_str).unwrap_or("").to_owned();
        let mut answer = match program.execute(&cmd, &command).await {
            Ok(fields) => fields,
            Err(e) => {
                eprintln!("[linux-phone {name}] {cmd} failed: {e}");
                json!({"ok": false, "error": e})
            }
        };
        answer["op"] = json!("done");
        answer["id"] = command.get("id").cloned().unwrap_or(Value::Null);
        if answer.get("ok").is_none() {
            answer["ok"] = json!(true);
        }
        let _ = program.asks.send(Ask::Send(answer));
        if cmd == "quit" {
            quit = true;
            break;
        }
    }
    program.close().await;
    let _ = program.asks.send(Ask::Quit);
    let _ = connection.await;
    if quit {
        Ok(())
    } else {
        Err("the air closed the connection".into())
    }
}

/// An open store, its node and its directory.
struct Open {
    node: Arc<Node>,
    dir: PathBuf,
}

struct Program {
    name: String,
    asks: mpsc::UnboundedSender<Ask>,
    open: Option<Open>,
    /// Attachments being fetched, by hash (asked for again only after a fetch ended without them).
    fetching: Arc<Mutex<BTreeSet<[u8; 32]>>>,
}

impl Program {
    fn store(&self) -> Result<&Store, String> {
        self.open.as_ref().map(|o| o.node.store()).ok_or_else(|| "no store open (send \"open\" first)".into())
    }

    async fn execute(&mut self, cmd: &str, command: &Value) -> Result<Value, String> {
        let arg = |k: &str| {
            command.get(k).and_then(Value::as_str).map(str::to_owned).ok_or_else(|| format!("missing \"{k}\""))
        };
        let err = |e: shoaldb::Error| e.to_string();
        match cmd {
            "open" => {
                self.close().await;
                let l2cap = command.get("l2cap").and_then(Value::as_bool).unwrap_or(true);
                let dir = std::env::temp_dir().join(format!("shoal-linux-phone-{}-{}", self.name, std::process::id()));
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                let store = Store::open(dir.join(format!("{}.db", self.name))).map_err(err)?;
                let secret = AppSecret::from_bytes(SECRET.as_bytes()).map_err(|e| e.to_string())?;
                let mut config = NodeConfig::new(self.name.clone(), secret).with_mdns(false);
                config.listen = None;
                let radio = Arc::new(AirRadio { asks: self.asks.clone(), l2cap });
                let node = Node::start(store, config.with_ble(radio)).await.map_err(|e| e.to_string())?;
                self.open = Some(Open { node: Arc::new(node), dir });
                Ok(json!({}))
            }
            "put" => {
                let (doc, text) = (arg("doc")?, arg("text")?);
                self.store()?.upsert("notes", json!({"_id": doc, "text": text})).map_err(err)?;
                Ok(json!({}))
            }
            "notes" => {
                let mut notes = serde_json::Map::new();
                for doc in self.store()?.list("notes").map_err(err)? {
                    if let Some(id) = doc.get("_id").and_then(Value::as_str) {
                        notes.insert(id.to_owned(), doc.get("text").cloned().unwrap_or(Value::Null));
                    }
                }
                Ok(json!({ "notes": notes }))
            }
            "attach" => {
                let doc = arg("doc")?;
                let bytes = unb64(command.get("bytes")).ok_or("attach: bytes is not base64")?;
                let store = self.store()?;
                let token = store.put_attachment_bytes(&bytes, Default::default()).map_err(err)?;
                store.upsert("files", json!({"_id": doc, "blob": token.to_json()})).map_err(err)?;
                Ok(json!({}))
            }
            "attachment" => {
                let doc = arg("doc")?;
                let open = self.open.as_ref().ok_or("no store open (send \"open\" first)")?;
                let store = open.node.store();
                let token: Option<AttachmentToken> =
                    store.document("files", &doc).map_err(err)?.and_then(|d| d.attachment("blob").ok().flatten());
                let Some(token) = token else { return Ok(json!({"bytes": null})) };
                if store.has_attachment(&token).map_err(err)? {
                    return Ok(json!({"bytes": b64(&store.attachment_bytes(&token).map_err(err)?)}));
                }
                // Fetched in the background, once at a time.
                let asked = self.fetching.lock().map(|mut f| f.insert(token.hash)).unwrap_or(false);
                if asked {
                    let (node, fetching) = (open.node.clone(), self.fetching.clone());
                    tokio::spawn(async move {
                        if let Err(e) = node.fetch_attachment(&token, |_, _| {}).await {
                            eprintln!("[linux-phone] fetching an attachment: {e}");
                        }
                        if let Ok(mut f) = fetching.lock() {
                            f.remove(&token.hash);
                        }
                    });
                }
                Ok(json!({"bytes": null}))
            }
            "close" | "quit" => {
                self.close().await;
                Ok(json!({}))
            }
            _ => Err(format!("unknown command \"{cmd}\"")),
        }
    }

    async fn close(&mut self) {
        if let Some(open) = self.open.take() {
            open.node.shutdown().await;
            let _ = std::fs::remove_dir_all(&open.dir);
        }
    }
}
