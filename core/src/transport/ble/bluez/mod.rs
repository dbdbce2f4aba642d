//! Bluetooth LE on Linux through BlueZ: [`BluezRadio`], a [`Radio`] bound to one adapter (`hci0`, `hci1`, ...).
//!
//! Feature `bluetooth-linux`. Needs a running `bluetoothd` (no `--experimental`) and the system D-Bus; building
//! needs libdbus (`libdbus-1-dev`). Everything about the protocol is in the core ([`super::links`]); this module
//! only moves packets, in both roles at once:
//!
//! * **Peripheral** (`bluer`): a GATT application with the Shoal service ([`super::SERVICE_UUID`]): RX (write /
//!   write without response), TX (notify, through BlueZ's notification socket, `AcquireNotify`) and PSM (read: the
//!   PSM of an L2CAP LE credit-based listener on this adapter, u16 little-endian). Accepted L2CAP channels are
//!   peripheral connections over [`Channel::L2cap`]; a GATT central becomes a peripheral connection over
//!   [`Channel::Gatt`] with its first write to RX (it subscribes to TX before it writes).
//! * **Advertising**: the service UUID in the advertisement and the service data (device tag + app tag) in the
//!   scan response, the same layout as Android: both do not fit in 31 bytes of legacy advertising data. BlueZ 5.66
//!   cannot put service data in a scan response through D-Bus, so the advertisement is added through the kernel's
//!   management socket (`MGMT_OP_ADD_ADVERTISING`, needs `CAP_NET_ADMIN`, e.g. root). Without that capability it
//!   falls back to a D-Bus advertisement: UUID + service data if the controller takes them (extended
//!   advertising), else the UUID alone (peers then learn the tags from the Hello, as with iOS).
//! * **Central** (`btleplug`): scanning with a service-UUID filter, `Discovered` (at most once a second per address,
//!   plus a sweep of the adapter's devices every [`SWEEP`]), connecting, service discovery, TX subscription, writes
//!   without response. The ATT MTU is read from BlueZ's `GattCharacteristic1.MTU` through `bluer` (btleplug does
//!   not expose it). When the peer publishes a PSM and [`ChannelChoice::PreferL2cap`] is set, an L2CAP channel is
//!   opened from this adapter with `bluer` instead of subscribing (and GATT is the fallback when it fails, after a
//!   few attempts when the failure looks transient).
//!
//! # Threads
//! The radio runs on its own thread with a current-thread tokio runtime, fed by an unbounded command queue (so
//! [`Radio::execute`] never blocks) and reporting through [`RadioEvents`]. Why not the node's runtime: `bluer`
//! runs every D-Bus method call of the GATT server in a task of its own (`tokio::spawn`). On a multi-thread
//! runtime a freshly spawned task may run before the ones spawned just before it (the LIFO slot), which would
//! reorder the central's writes — and a reordered packet breaks the link. A current-thread runtime runs tasks in
//! the order they were spawned, and RX writes are queued before the first await.
//!
//! # BlueZ limits this works around
//! * **Notifications are not per device.** A D-Bus GATT server characteristic has one notification socket (and
//!   one `Value`), and BlueZ sends whatever is written to it to *every* subscribed device. So this radio serves at
//!   most one GATT central at a time; another central that writes to RX is turned away (disconnected, or ignored
//!   when the same ACL carries another Shoal connection). The pair then ends up connected the other way round
//!   (this side dials), or over L2CAP, which is per connection.
//! * **Writes of more than 510 bytes are dropped.** BlueZ's GATT server (5.66) checks the whole write PDU, handle
//!   included, against the 512-byte limit of an attribute value, so it refuses values of 511 and 512 bytes, and
//!   drops such writes without response silently (it also reads at most 512 bytes per notification from its
//!   socket). So every Shoal link accepts GATT packets of at most 510 bytes and says so in its Hello
//!   ([`GATT_MAX_PACKET`](super::link::GATT_MAX_PACKET)): no peer, on any platform, sends BlueZ a longer one.
//! * **One ACL per pair of devices.** When both devices dial each other, the kernel reuses the existing LE link,
//!   so two Shoal connections (one per direction) may share an ACL. Ending one of them must not end the ACL while
//!   the other uses it: a central then only unsubscribes, a peripheral forgets the central.
//!
//! # Files
//! * here: the public API ([`BluezRadio`], [`BluezConfig`]), the radio's thread and task (`run`, `Actor`:
//!   commands, connections, ACL watching and release, shutdown) and what the connections' tasks share;
//! * `peripheral`: the GATT server (RX writes, TX notifications) and advertising;
//! * `central`: scanning and discovery, dialling (connect, services, PSM), the GATT client's reader and writer;
//! * `l2cap`: the L2CAP listener and accepted channels, dialling a channel (with retries), its reader and writer;
//! * `mgmt`: the kernel's management socket (an advertisement with a scan response).

mod central;
mod l2cap;
mod mgmt;
mod peripheral;

use central::{central_adapter, next_event, CentralEvents, Dialled};
use peripheral::{Advertising, RxWrite};

use super::links::RadioCommand;
use super::radio::{Radio, RadioEvent, RadioEvents};
use super::SERVICE_UUID_U128;
use crate::util::lock;

use bluer::gatt::local::ApplicationHandle;
use bluer::gatt::CharacteristicWriter;
use bluer::l2cap::{SocketAddr as L2capAddr, Stream as L2capStream};
use bluer::{Address, DeviceEvent, DeviceProperty};
use btleplug::api::{Central as _, Characteristic, Peripheral as _};
use btleplug::platform::{Adapter as BtAdapter, Peripheral as BtPeripheral};
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::{timeout, Instant};
use uuid::Uuid;

/// An address is reported [`RadioEvent::Discovered`] at most this often (unless its service data changes).
pub const DISCOVERY_THROTTLE: Duration = Duration::from_millis(1_000);
/// How often the adapter's known devices are swept for Shoal peripherals (in case BlueZ sends no signal).
pub const SWEEP: Duration = Duration::from_millis(2_000);
/// A connection attempt (connect, service discovery, subscription or L2CAP) is given up after this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(12);
/// A write that has not completed in this long ends the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// GATT writes of centrals waiting for the radio's task at most (beyond: dropped, which breaks that link).
const RX_QUEUE: usize = 1024;
/// [`Radio::detach`] waits this long at most for the radio to withdraw its advertisement and connections.
const DETACH_WAIT: Duration = Duration::from_secs(3);
/// How long BlueZ must be unreachable before retrying to bring the radio up.
const RETRY: Duration = Duration::from_secs(3);

fn service_uuid() -> Uuid {
    Uuid::from_u128(SERVICE_UUID_U128)
}

/// Which channel a central prefers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChannelChoice {
    /// GATT writes and notifications only.
    Gatt,
    /// An L2CAP channel when the peripheral publishes a PSM, else GATT.
    #[default]
    PreferL2cap,
}

/// How a [`BluezRadio`] runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BluezConfig {
    /// The adapter, by name (`hci0`).
    pub adapter: String,
    /// When not empty, the only peer addresses (`AA:BB:CC:DD:EE:FF`) dialled or accepted; everything else is
    /// neither reported nor served. For tests where every radio hears every other.
    pub allow: Vec<String>,
    /// The channel this side opens as a central.
    pub channel: ChannelChoice,
}

impl BluezConfig {
    /// Adapter `adapter`, every peer allowed, L2CAP preferred.
    pub fn new(adapter: impl Into<String>) -> BluezConfig {
        BluezConfig { adapter: adapter.into(), allow: Vec::new(), channel: ChannelChoice::default() }
    }

    /// Only `addresses` are dialled and accepted.
    pub fn allow(mut self, addresses: impl IntoIterator<Item = String>) -> BluezConfig {
        self.allow.extend(addresses.into_iter().map(|a| a.trim().to_ascii_uppercase()));
        self
    }

    /// Sets the channel a central opens.
    pub fn channel(mut self, channel: ChannelChoice) -> BluezConfig {
        self.channel = channel;
        self
    }

    /// Whether `address` may be dialled or accepted.
    pub fn allows(&self, address: &str) -> bool {
        self.allow.is_empty() || self.allow.iter().any(|a| a.eq_ignore_ascii_case(address))
    }
}

/// A Bluetooth LE radio on one BlueZ adapter (see the module docs).
pub struct BluezRadio {
    config: BluezConfig,
    running: Mutex<Option<Running>>,
}

struct Running {
    commands: mpsc::UnboundedSender<Cmd>,
    done: std::sync::mpsc::Receiver<()>,
}

enum Cmd {
    Radio(RadioCommand),
    Stop,
}

impl BluezRadio {
    /// A radio as `config` says; it starts when the node attaches it.
    pub fn new(config: BluezConfig) -> Arc<BluezRadio> {
        Arc::new(BluezRadio { config, running: Mutex::new(None) })
    }

    /// The configuration.
    pub fn config(&self) -> &BluezConfig {
        &self.config
    }
}

impl Radio for BluezRadio {
    fn attach(&self, events: RadioEvents) {
        let mut running = lock(&self.running);
        if running.is_some() {
            log::warn!("bluez({}): attached twice; ignoring", self.config.adapter);
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let config = self.config.clone();
        let name = format!("shoal-bluez-{}", config.adapter);
        let spawned = std::thread::Builder::new().name(name).spawn(move || {
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => {
                    rt.block_on(run(config, events, rx));
                    rt.shutdown_timeout(Duration::from_millis(200));
                }
                Err(e) => log::error!("bluez: cannot start a runtime: {e}"),
            }
            let _ = done_tx.send(());
        });
        match spawned {
            Ok(_) => *running = Some(Running { commands: tx, done: done_rx }),
            Err(e) => log::error!("bluez({}): cannot start the radio thread: {e}", self.config.adapter),
        }
    }

    fn execute(&self, command: RadioCommand) {
        if let Some(r) = lock(&self.running).as_ref() {
            let _ = r.commands.send(Cmd::Radio(command));
        }
    }

    fn detach(&self) {
        let Some(r) = lock(&self.running).take() else { return };
        let _ = r.commands.send(Cmd::Stop);
        // Wait (bounded) for the advertisement to be withdrawn: it is kernel state that outlives the process.
        let wait = || r.done.recv_timeout(DETACH_WAIT).is_ok();
        let in_multi_thread_runtime = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let finished = if in_multi_thread_runtime { tokio::task::block_in_place(wait) } else { wait() };
        if !finished {
            log::warn!("bluez({}): the radio did not stop within {DETACH_WAIT:?}", self.config.adapter);
        }
    }
}

/// What the radio's own tasks report to it.
enum Internal {
    /// A connection attempt ended.
    Dialled { address: String, result: Result<Dialled, String> },
    /// A connection's reader or writer ended (the connection is gone).
    Lost { conn: u64, why: String },
    /// The ACL to `address` went down at `at`.
    AclDown { address: String, at: Instant },
    /// A central opened an L2CAP channel.
    Accepted { stream: L2capStream, address: String },
    /// BlueZ handed over the TX notification socket.
    Notifier(CharacteristicWriter),
    /// The notification socket of generation `generation` closed.
    NotifierClosed { generation: u64 },
    /// Release the ACL to `address` unless it is in use again (after an L2CAP channel closed).
    ReleaseAcl { address: String, peripheral: BtPeripheral },
}

enum Kind {
    CentralGatt { peripheral: BtPeripheral, tx: Characteristic },
    CentralL2cap { peripheral: BtPeripheral },
    PeripheralGatt,
    PeripheralL2cap,
}

impl Kind {
    fn describe(&self) -> &'static str {
        match self {
            Kind::CentralGatt { .. } => "central, GATT",
            Kind::CentralL2cap { .. } => "central, L2CAP",
            Kind::PeripheralGatt => "peripheral, GATT",
            Kind::PeripheralL2cap => "peripheral, L2CAP",
        }
    }
}

/// Packets through a connection, for the debug log.
#[derive(Default)]
struct Traffic {
    /// Packets (or L2CAP reads) received.
    packets_in: AtomicU64,
    /// Packets handed to the writer.
    queued: AtomicU64,
    /// Packets the writer completed.
    packets_out: AtomicU64,
}

impl Traffic {
    fn summary(&self) -> (u64, u64, u64) {
        (
            self.packets_in.load(Ordering::Relaxed),
            self.queued.load(Ordering::Relaxed),
            self.packets_out.load(Ordering::Relaxed),
        )
    }
}

struct Conn {
    address: String,
    kind: Kind,
    /// Packets for the writer task.
    tx: mpsc::UnboundedSender<Vec<u8>>,
    /// Tasks to abort when the connection ends (an L2CAP writer is left to drain instead).
    tasks: Vec<AbortHandle>,
    att_mtu: u16,
    since: Instant,
    traffic: Arc<Traffic>,
    /// The traffic last logged.
    logged: (u64, u64, u64),
}

/// Aborts its tasks when dropped.
struct AbortOnDrop(Vec<AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// The parts that exist once BlueZ answered.
struct Up {
    _session: bluer::Session,
    adapter: bluer::Adapter,
    /// This adapter's address, for binding L2CAP sockets.
    local: L2capAddr,
    central: BtAdapter,
    _app: ApplicationHandle,
    tasks: Vec<AbortHandle>,
}

struct Actor {
    config: BluezConfig,
    name: String,
    events: RadioEvents,
    internal: mpsc::UnboundedSender<Internal>,
    up: Option<Up>,
    want_adv: Option<Vec<u8>>,
    want_scan: bool,
    scanning: bool,
    adv: Option<Advertising>,
    next_conn: u64,
    conns: BTreeMap<u64, Conn>,
    /// Connection attempts running, by address.
    connecting: HashMap<String, AbortHandle>,
    /// ACL watchers, by address.
    watchers: HashMap<String, AbortHandle>,
    /// The peripheral connection of the one GATT central served.
    gatt_central: Option<u64>,
    notifier: watch::Sender<Option<Arc<CharacteristicWriter>>>,
    notifier_generation: u64,
    psm: Arc<AtomicU16>,
    /// Known Shoal peripherals, by address.
    peripherals: HashMap<String, BtPeripheral>,
    /// When each btleplug device was last looked at / each address last reported (and with what data).
    checked: HashMap<String, Instant>,
    reported: HashMap<String, (Instant, Option<Vec<u8>>)>,
    /// When each turned-away central was last logged.
    rejected: HashMap<String, Instant>,
    /// ACLs being disconnected, by address: true once done. A new attempt to that address waits for it (it would
    /// otherwise find the old link still up and lose it half-way).
    releasing: HashMap<String, watch::Receiver<bool>>,
}

/// The radio's task: commands and BlueZ events in, radio events out, until [`Cmd::Stop`].
async fn run(config: BluezConfig, events: RadioEvents, mut commands: mpsc::UnboundedReceiver<Cmd>) {
    let (internal_tx, mut internal) = mpsc::unbounded_channel();
    let (rx_tx, mut rx_writes) = mpsc::channel::<RxWrite>(RX_QUEUE);
    let (notifier, _) = watch::channel(None);
    let mut actor = Actor {
        name: format!("bluez({})", config.adapter),
        config,
        events,
        internal: internal_tx,
        up: None,
        want_adv: None,
        want_scan: false,
        scanning: false,
        adv: None,
        next_conn: 0,
        conns: BTreeMap::new(),
        connecting: HashMap::new(),
        watchers: HashMap::new(),
        gatt_central: None,
        notifier,
        notifier_generation: 0,
        psm: Arc::new(AtomicU16::new(0)),
        peripherals: HashMap::new(),
        checked: HashMap::new(),
        reported: HashMap::new(),
        rejected: HashMap::new(),
        releasing: HashMap::new(),
    };
    let mut central_events: Option<CentralEvents> = None;
    let mut retry = tokio::time::interval(RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweep = tokio::time::interval(SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            c = commands.recv() => match c {
                Some(Cmd::Radio(c)) => actor.command(c).await,
                Some(Cmd::Stop) | None => break,
            },
            Some(i) = internal.recv() => actor.internal(i).await,
            Some(w) = rx_writes.recv() => actor.rx_write(w),
            e = next_event(&mut central_events) => match e {
                Some(e) => actor.central_event(e).await,
                None => {
                    log::warn!("{}: btleplug's event stream ended", actor.name);
                    central_events = None;
                }
            },
            _ = retry.tick(), if actor.up.is_none() => {
                let up = timeout(Duration::from_secs(20), actor.bring_up(rx_tx.clone())).await;
                match up.unwrap_or_else(|_| Err("timed out".into())) {
                    Ok(ev) => {
                        central_events = Some(ev);
                        actor.resume().await;
                    }
                    Err(e) => log::warn!("{}: BlueZ not usable yet ({e}); retrying in {RETRY:?}", actor.name),
                }
            }
            _ = sweep.tick(), if actor.up.is_some() => {
                actor.log_traffic();
                actor.sweep().await;
            }
        }
    }
    actor.shutdown().await;
}

impl Actor {
    fn report(&self, event: RadioEvent) {
        self.events.report(event);
    }

    /// Connects to bluetoothd, registers the GATT application and the L2CAP listener, opens btleplug's adapter.
    async fn bring_up(&mut self, rx_writes: mpsc::Sender<RxWrite>) -> Result<CentralEvents, String> {
        let session = bluer::Session::new().await.map_err(|e| format!("D-Bus/bluetoothd: {e}"))?;
        let adapter = session.adapter(&self.config.adapter).map_err(|e| format!("adapter: {e}"))?;
        if !adapter.is_powered().await.unwrap_or(false) {
            adapter.set_powered(true).await.map_err(|e| format!("powering on: {e}"))?;
        }
        let address = adapter.address().await.map_err(|e| format!("address: {e}"))?;
        let address_type = adapter.address_type().await.map_err(|e| format!("address type: {e}"))?;
        let local = L2capAddr::new(address, address_type, 0);
        // Tasks started here end if bringing the radio up fails half-way.
        let mut tasks = AbortOnDrop(Vec::new());

        // L2CAP listener on a dynamic PSM (optional: GATT works without it).
        if let Some(accept) = self.listen(local).await {
            tasks.0.push(accept);
        }

        // GATT application.
        let (app, control) = self.serve_gatt(&adapter, rx_writes).await?;
        tasks.0.push(control);

        // Central: btleplug's adapter with the same name.
        let (central, events) = central_adapter(&self.config.adapter).await?;
        log::info!("{}: up, address {address} ({address_type:?}), GATT service registered", self.name);
        let tasks = std::mem::take(&mut tasks.0);
        self.up = Some(Up { _session: session, adapter, local, central, _app: app, tasks });
        Ok(events)
    }

    /// Applies what was asked before BlueZ was up.
    async fn resume(&mut self) {
        if self.want_adv.is_some() {
            self.advertise().await;
        }
        if self.want_scan {
            self.scan().await;
        }
    }

    async fn command(&mut self, command: RadioCommand) {
        match command {
            RadioCommand::StartAdvertising { service_data } => {
                self.want_adv = Some(service_data);
                if self.up.is_some() {
                    self.advertise().await;
                }
            }
            RadioCommand::StartScanning => {
                self.want_scan = true;
                if self.up.is_some() {
                    self.scan().await;
                }
            }
            RadioCommand::Connect { address } => {
                self.connect(address);
                self.scan().await;
            }
            RadioCommand::CancelConnect { address } => {
                self.cancel_connect(&address.to_ascii_uppercase());
                self.scan().await;
            }
            RadioCommand::Disconnect { conn } => self.disconnect(conn),
            RadioCommand::Send { conn, packet } => match self.conns.get(&conn) {
                Some(c) => {
                    c.traffic.queued.fetch_add(1, Ordering::Relaxed);
                    if c.tx.send(packet).is_err() {
                        log::debug!("{}: connection {conn} has no writer", self.name);
                    }
                }
                None => log::trace!("{}: packet for unknown connection {conn}", self.name),
            },
        }
    }

    /// Logs (debug) the traffic of connections that moved since the last time.
    fn log_traffic(&mut self) {
        for (id, c) in &mut self.conns {
            let now = c.traffic.summary();
            if now != c.logged {
                let (packets_in, queued, out) = now;
                log::debug!(
                    "{}: connection {id} ({}, {}): {packets_in} in, {out} out, {} waiting",
                    self.name,
                    c.address,
                    c.kind.describe(),
                    queued.saturating_sub(out)
                );
                c.logged = now;
            }
        }
    }

    /// Whether any connection (either role) or attempt uses the ACL to `address`.
    fn in_use(&self, address: &str) -> bool {
        self.connecting.contains_key(address) || self.conns.values().any(|c| c.address == address)
    }

    /// Disconnects the ACL to `address` unless something uses it.
    fn release_acl(&mut self, address: &str) {
        if self.in_use(address) {
            return;
        }
        let Some(up) = &self.up else { return };
        let Ok(addr) = address.parse::<Address>() else { return };
        let Ok(device) = up.adapter.device(addr) else { return };
        let name = self.name.clone();
        let (done_tx, done) = watch::channel(false);
        tokio::spawn(async move {
            if device.is_connected().await.unwrap_or(false) {
                match timeout(Duration::from_secs(5), device.disconnect()).await {
                    Ok(Ok(())) => log::debug!("{name}: disconnected {addr}"),
                    Ok(Err(e)) => log::debug!("{name}: disconnecting {addr}: {e}"),
                    Err(_) => log::debug!("{name}: disconnecting {addr} timed out"),
                }
            }
            let _ = done_tx.send(true);
        });
        self.releasing.retain(|_, r| !*r.borrow());
        self.releasing.insert(address.to_string(), done);
    }

    fn new_conn(&mut self) -> u64 {
        self.next_conn += 1;
        self.next_conn
    }

    /// Where connection `conn`'s reader and writer report.
    fn wire(&self, conn: u64, traffic: &Arc<Traffic>) -> Wire {
        Wire { conn, traffic: traffic.clone(), events: self.events.clone(), internal: self.internal.clone() }
    }

    /// Starts watching the ACL to `address`, if not yet.
    fn watch(&mut self, address: &str) {
        if self.watchers.contains_key(address) {
            return;
        }
        let Some(up) = &self.up else { return };
        let task = tokio::spawn(watch_acl(up.adapter.clone(), address.to_string(), self.internal.clone()));
        self.watchers.insert(address.to_string(), task.abort_handle());
    }

    /// Forgets connection `conn` (its tasks stop); `None` if unknown.
    fn remove_conn(&mut self, conn: u64) -> Option<Conn> {
        let c = self.conns.remove(&conn)?;
        for t in &c.tasks {
            t.abort();
        }
        if self.gatt_central == Some(conn) {
            self.gatt_central = None;
        }
        if !self.conns.values().any(|o| o.address == c.address) {
            if let Some(w) = self.watchers.remove(&c.address) {
                w.abort();
            }
        }
        Some(c)
    }

    /// Connection `conn` ended on its own: report it, and release the ACL if this side opened it.
    fn lost(&mut self, conn: u64, why: &str) {
        let Some(c) = self.remove_conn(conn) else { return };
        log::info!("{}: connection {conn} ({}, {}) lost: {why}", self.name, c.address, c.kind.describe());
        self.report(RadioEvent::Disconnected { conn });
        if matches!(c.kind, Kind::CentralGatt { .. } | Kind::CentralL2cap { .. }) {
            self.release_acl(&c.address);
        }
    }

    /// [`RadioCommand::Disconnect`]: ends `conn` without taking down an ACL another connection uses.
    fn disconnect(&mut self, conn: u64) {
        let Some(c) = self.remove_conn(conn) else { return };
        let in_use = self.in_use(&c.address);
        log::info!("{}: disconnecting {conn} ({}, {})", self.name, c.address, c.kind.describe());
        match c.kind {
            Kind::CentralGatt { peripheral, tx } => {
                tokio::spawn(async move {
                    let _ = if in_use {
                        timeout(Duration::from_secs(5), peripheral.unsubscribe(&tx)).await
                    } else {
                        timeout(Duration::from_secs(5), peripheral.disconnect()).await
                    };
                });
            }
            Kind::CentralL2cap { peripheral } => {
                // The writer drains the last packets (a Close) first; then the ACL goes, unless used again.
                let internal = self.internal.clone();
                let address = c.address.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(800)).await;
                    let _ = internal.send(Internal::ReleaseAcl { address, peripheral });
                });
            }
            Kind::PeripheralGatt => self.release_acl(&c.address),
            Kind::PeripheralL2cap => {}
        }
    }

    async fn internal(&mut self, message: Internal) {
        match message {
            Internal::Dialled { address, result } => {
                self.dialled(address, result);
                self.scan().await;
            }
            Internal::Lost { conn, why } => self.lost(conn, &why),
            Internal::AclDown { address, at } => {
                self.watchers.remove(&address);
                let gone: Vec<u64> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.address == address && c.since <= at)
                    .map(|(id, _)| *id)
                    .collect();
                for conn in gone {
                    self.lost(conn, "ACL disconnected");
                }
                if self.conns.values().any(|c| c.address == address) {
                    self.watch(&address);
                }
            }
            Internal::Accepted { stream, address } => self.accepted(stream, address),
            Internal::Notifier(writer) => self.notifier_acquired(writer),
            Internal::NotifierClosed { generation } => self.notifier_closed(generation),
            Internal::ReleaseAcl { address, peripheral } => {
                if !self.in_use(&address) {
                    tokio::spawn(async move {
                        let _ = timeout(Duration::from_secs(5), peripheral.disconnect()).await;
                    });
                }
            }
        }
    }

    async fn shutdown(&mut self) {
        log::info!("{}: stopping", self.name);
        self.stop_advertising().await;
        let Some(up) = self.up.take() else { return };
        if self.scanning {
            let _ = timeout(Duration::from_secs(1), up.central.stop_scan()).await;
        }
        for t in self.connecting.values().chain(self.watchers.values()).chain(up.tasks.iter()) {
            t.abort();
        }
        let mut addresses: Vec<String> = self.conns.values().map(|c| c.address.clone()).collect();
        addresses.extend(self.connecting.keys().cloned());
        addresses.sort();
        addresses.dedup();
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            self.remove_conn(id);
        }
        let disconnects =
            addresses.iter().filter_map(|a| a.parse::<Address>().ok()).filter_map(|a| up.adapter.device(a).ok());
        let all = futures::future::join_all(disconnects.map(|d| async move {
            if d.is_connected().await.unwrap_or(false) {
                let _ = d.disconnect().await;
            }
        }));
        let _ = timeout(Duration::from_millis(1500), all).await;
        log::info!("{}: stopped", self.name);
    }
}

/// Reports [`Internal::AclDown`] when the ACL to `address` goes down (or is down already).
async fn watch_acl(adapter: bluer::Adapter, address: String, internal: mpsc::UnboundedSender<Internal>) {
    let down = |address: String| {
        let _ = internal.send(Internal::AclDown { address, at: Instant::now() });
    };
    let Ok(addr) = address.parse::<Address>() else { return };
    let Ok(device) = adapter.device(addr) else { return down(address) };
    let Ok(mut events) = device.events().await else { return };
    if !device.is_connected().await.unwrap_or(true) {
        return down(address);
    }
    while let Some(event) = events.next().await {
        if let DeviceEvent::PropertyChanged(DeviceProperty::Connected(false)) = event {
            break;
        }
    }
    down(address);
}

/// What a connection's reader and writer tasks report through.
#[derive(Clone)]
struct Wire {
    conn: u64,
    traffic: Arc<Traffic>,
    events: RadioEvents,
    internal: mpsc::UnboundedSender<Internal>,
}

impl Wire {
    fn received(&self, bytes: Vec<u8>) {
        self.traffic.packets_in.fetch_add(1, Ordering::Relaxed);
        self.events.report(RadioEvent::Packet { conn: self.conn, bytes });
    }

    fn sent(&self) {
        self.traffic.packets_out.fetch_add(1, Ordering::Relaxed);
        self.events.report(RadioEvent::Sent { conn: self.conn });
    }

    fn lost(&self, why: String) {
        let _ = self.internal.send(Internal::Lost { conn: self.conn, why });
    }
}

/// `send`, given [`WRITE_TIMEOUT`]; the error says what (`what`) failed.
async fn timed<E: std::fmt::Display>(
    what: &str,
    send: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), String> {
    match timeout(WRITE_TIMEOUT, send).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("{what} failed: {e}")),
        Err(_) => Err(format!("{what} timed out")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_is_case_insensitive_and_empty_allows_all() {
        let c = BluezConfig::new("hci0");
        assert!(c.allows("00:AA:01:00:00:00"));
        let c = c.allow(["00:aa:01:01:00:01".to_string()]);
        assert!(c.allows("00:AA:01:01:00:01"));
        assert!(c.allows("00:aa:01:01:00:01"));
        assert!(!c.allows("00:AA:01:00:00:00"));
    }
}
