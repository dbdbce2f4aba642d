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

use super::link::{Channel, Role, ATT_MTU_MIN, L2CAP_MAX_PACKET};
use super::links::RadioCommand;
use super::packet::{KIND_HELLO, MIN_PACKET, RECORD_HEADER_LEN};
use super::radio::{Radio, RadioEvent, RadioEvents};
use super::{
    PSM_CHARACTERISTIC_UUID_U128, RX_CHARACTERISTIC_UUID_U128, SERVICE_UUID_U128, TX_CHARACTERISTIC_UUID_U128,
};
use crate::transport::lan::hub::lock;

use bluer::gatt::local::{
    characteristic_control, Application, ApplicationHandle, Characteristic as LocalCharacteristic,
    CharacteristicControlEvent, CharacteristicNotify, CharacteristicNotifyMethod, CharacteristicRead,
    CharacteristicWrite, CharacteristicWriteMethod, Service as LocalService,
};
use bluer::gatt::CharacteristicWriter;
use bluer::l2cap::{Socket as L2capSocket, SocketAddr as L2capAddr, Stream as L2capStream, StreamListener};
use bluer::{Address, DeviceEvent, DeviceProperty};
use btleplug::api::{
    Central as _, CentralEvent, Characteristic, Manager as _, Peripheral as _, ScanFilter, ValueNotification, WriteType,
};
use btleplug::platform::{Adapter as BtAdapter, Manager as BtManager, Peripheral as BtPeripheral};
use futures::{Stream, StreamExt};
use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
/// A central gives up opening an L2CAP channel (all attempts together) and uses GATT after this long.
const L2CAP_TIMEOUT: Duration = Duration::from_secs(8);
/// A central tries this many times at most to open an L2CAP channel before it falls back to GATT.
const L2CAP_ATTEMPTS: u32 = 4;
/// The pause after the first failed L2CAP attempt; doubled after each further one (0.25, 0.5, 1 s).
const L2CAP_BACKOFF: Duration = Duration::from_millis(250);
/// A write that has not completed in this long ends the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a peripheral waits for BlueZ's notification socket after a central's first write.
const NOTIFIER_WAIT: Duration = Duration::from_secs(5);
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

/// A central's write to RX, as the GATT server got it.
struct RxWrite {
    address: Address,
    mtu: u16,
    value: Vec<u8>,
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

/// A successful connection attempt.
enum Dialled {
    Gatt { peripheral: BtPeripheral, rx: Characteristic, tx: Characteristic, notes: Notifications, att_mtu: u16 },
    L2cap { peripheral: BtPeripheral, stream: L2capStream },
}

type Notifications = Pin<Box<dyn Stream<Item = ValueNotification> + Send>>;
type CentralEvents = Pin<Box<dyn Stream<Item = CentralEvent> + Send>>;

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

enum Advertising {
    Mgmt { index: u16, instance: u8 },
    Dbus(#[allow(dead_code)] bluer::adv::AdvertisementHandle),
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

async fn next_event(events: &mut Option<CentralEvents>) -> Option<CentralEvent> {
    match events {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
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
        match StreamListener::bind(local).await {
            Ok(listener) => {
                let psm = listener.as_ref().local_addr().map(|a| a.psm).unwrap_or(0);
                self.psm.store(psm, Ordering::Relaxed);
                let internal = self.internal.clone();
                let name = self.name.clone();
                tasks.0.push(
                    tokio::spawn(async move {
                        loop {
                            match listener.accept().await {
                                Ok((stream, peer)) => {
                                    let address = peer.addr.to_string().to_ascii_uppercase();
                                    if internal.send(Internal::Accepted { stream, address }).is_err() {
                                        break;
                                    }
                                }
                                Err(e) => {
                                    log::warn!("{name}: L2CAP accept failed: {e}");
                                    tokio::time::sleep(Duration::from_millis(500)).await;
                                }
                            }
                        }
                    })
                    .abort_handle(),
                );
                log::info!("{}: L2CAP listener on PSM {psm:#04x}", self.name);
            }
            Err(e) => log::warn!("{}: no L2CAP listener ({e}); GATT only", self.name),
        }

        // GATT application.
        let (tx_control, tx_handle) = characteristic_control();
        let psm = self.psm.clone();
        let write: bluer::gatt::local::CharacteristicWriteFun = Box::new(move |value, req| {
            // Queued before the first await: the writes keep their order (see the module docs).
            let w = RxWrite { address: req.device_address, mtu: req.mtu, value };
            if let Err(mpsc::error::TrySendError::Full(_)) = rx_writes.try_send(w) {
                log::warn!("bluez: RX queue full, dropped a write");
            }
            Box::pin(async { Ok(()) })
        });
        let app = Application {
            services: vec![LocalService {
                uuid: service_uuid(),
                primary: true,
                characteristics: vec![
                    LocalCharacteristic {
                        uuid: Uuid::from_u128(RX_CHARACTERISTIC_UUID_U128),
                        write: Some(CharacteristicWrite {
                            write: true,
                            write_without_response: true,
                            method: CharacteristicWriteMethod::Fun(write),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    LocalCharacteristic {
                        uuid: Uuid::from_u128(TX_CHARACTERISTIC_UUID_U128),
                        notify: Some(CharacteristicNotify {
                            notify: true,
                            method: CharacteristicNotifyMethod::Io,
                            ..Default::default()
                        }),
                        control_handle: tx_handle,
                        ..Default::default()
                    },
                    LocalCharacteristic {
                        uuid: Uuid::from_u128(PSM_CHARACTERISTIC_UUID_U128),
                        read: Some(CharacteristicRead {
                            read: true,
                            fun: Box::new(move |_req| {
                                let v = psm.load(Ordering::Relaxed).to_le_bytes().to_vec();
                                Box::pin(async move { Ok(v) })
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        let app = adapter.serve_gatt_application(app).await.map_err(|e| format!("GATT application: {e}"))?;
        let internal = self.internal.clone();
        tasks.0.push(
            tokio::spawn(async move {
                let mut control = Box::pin(tx_control);
                while let Some(event) = control.next().await {
                    if let CharacteristicControlEvent::Notify(writer) = event {
                        if internal.send(Internal::Notifier(writer)).is_err() {
                            break;
                        }
                    }
                }
            })
            .abort_handle(),
        );

        // Central: btleplug's adapter with the same name.
        let manager = BtManager::new().await.map_err(|e| format!("btleplug: {e}"))?;
        let mut central = None;
        for a in manager.adapters().await.map_err(|e| format!("btleplug adapters: {e}"))? {
            let info = a.adapter_info().await.unwrap_or_default();
            if info.split_whitespace().next() == Some(self.config.adapter.as_str()) {
                central = Some(a);
                break;
            }
        }
        let central = central.ok_or_else(|| format!("btleplug has no adapter {}", self.config.adapter))?;
        let events = central.events().await.map_err(|e| format!("btleplug events: {e}"))?;
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

    async fn advertise(&mut self) {
        let Some(service_data) = self.want_adv.clone() else { return };
        self.stop_advertising().await;
        let Some(up) = &self.up else { return };
        let index = self.config.adapter.strip_prefix("hci").and_then(|i| i.parse::<u16>().ok());
        if let Some(index) = index {
            let data = service_data.clone();
            match tokio::task::spawn_blocking(move || mgmt::advertise(index, &data)).await {
                Ok(Ok(instance)) => {
                    log::info!(
                        "{}: advertising (mgmt instance {instance}: service UUID, {} bytes of service data in the scan response)",
                        self.name,
                        service_data.len()
                    );
                    self.adv = Some(Advertising::Mgmt { index, instance });
                    return;
                }
                Ok(Err(e)) => log::info!("{}: cannot advertise through mgmt ({e}); using D-Bus", self.name),
                Err(e) => log::warn!("{}: {e}", self.name),
            }
        }
        let mut adv = bluer::adv::Advertisement {
            advertisement_type: bluer::adv::Type::Peripheral,
            service_uuids: [service_uuid()].into_iter().collect(),
            discoverable: Some(true),
            ..Default::default()
        };
        if !service_data.is_empty() {
            adv.service_data.insert(service_uuid(), service_data.clone());
        }
        let first =
            timeout(Duration::from_secs(5), up.adapter.advertise(adv)).await.unwrap_or_else(|_| Err(timed_out()));
        let handle = match first {
            Ok(h) => {
                log::info!("{}: advertising (D-Bus: service UUID + service data)", self.name);
                Ok(h)
            }
            Err(e) if !service_data.is_empty() => {
                log::info!("{}: advertisement with service data refused ({e}); advertising the UUID only", self.name);
                let adv = bluer::adv::Advertisement {
                    advertisement_type: bluer::adv::Type::Peripheral,
                    service_uuids: [service_uuid()].into_iter().collect(),
                    discoverable: Some(true),
                    ..Default::default()
                };
                timeout(Duration::from_secs(5), up.adapter.advertise(adv)).await.unwrap_or_else(|_| Err(timed_out()))
            }
            Err(e) => Err(e),
        };
        match handle {
            Ok(h) => self.adv = Some(Advertising::Dbus(h)),
            Err(e) => log::error!("{}: cannot advertise: {e}", self.name),
        }
    }

    async fn stop_advertising(&mut self) {
        match self.adv.take() {
            Some(Advertising::Mgmt { index, instance }) => {
                match tokio::task::spawn_blocking(move || mgmt::remove_advertising(index, instance)).await {
                    Ok(Ok(())) => log::debug!("{}: advertisement removed", self.name),
                    Ok(Err(e)) => log::warn!("{}: cannot remove the advertisement: {e}", self.name),
                    Err(e) => log::warn!("{}: {e}", self.name),
                }
            }
            Some(Advertising::Dbus(handle)) => drop(handle),
            None => {}
        }
    }

    /// Scans when asked to and no connection attempt runs: the kernel initiates a pending LE connection from its
    /// passive background scan, which does not run during discovery (an attempt would wait for bluetoothd's next
    /// 10-second discovery cycle to end).
    async fn scan(&mut self) {
        let Some(up) = &self.up else { return };
        let wanted = self.want_scan && self.connecting.is_empty();
        if wanted == self.scanning {
            return;
        }
        if wanted {
            let filter = ScanFilter { services: vec![service_uuid()] };
            match timeout(Duration::from_secs(3), up.central.start_scan(filter)).await {
                Ok(Ok(())) => {
                    self.scanning = true;
                    log::debug!("{}: scanning", self.name);
                }
                Ok(Err(e)) => log::error!("{}: cannot scan: {e}", self.name),
                Err(_) => log::warn!("{}: starting to scan timed out", self.name),
            }
        } else {
            match timeout(Duration::from_secs(2), up.central.stop_scan()).await {
                Ok(Ok(())) => log::debug!("{}: scanning paused while connecting", self.name),
                Ok(Err(e)) => log::debug!("{}: cannot pause scanning: {e}", self.name),
                Err(_) => log::debug!("{}: pausing scanning timed out", self.name),
            }
            self.scanning = false;
        }
    }

    /// A btleplug event: maybe a Shoal peripheral to report.
    async fn central_event(&mut self, event: CentralEvent) {
        let id = match &event {
            CentralEvent::DeviceDiscovered(id) | CentralEvent::DeviceUpdated(id) => id,
            CentralEvent::ServiceDataAdvertisement { id, .. } | CentralEvent::ServicesAdvertisement { id, .. } => id,
            _ => return,
        };
        let key = id.to_string();
        let now = Instant::now();
        if self.checked.get(&key).is_some_and(|t| now.duration_since(*t) < DISCOVERY_THROTTLE) {
            return;
        }
        if self.checked.len() > 1024 {
            self.checked.clear();
        }
        self.checked.insert(key, now);
        let Some(up) = &self.up else { return };
        if let Ok(Ok(p)) = timeout(Duration::from_secs(1), up.central.peripheral(id)).await {
            self.consider(p, false).await;
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

    /// Reports the adapter's devices that advertise the Shoal service (throttled).
    async fn sweep(&mut self) {
        let Some(up) = &self.up else { return };
        if !self.scanning {
            return;
        }
        if let Ok(Ok(list)) = timeout(Duration::from_secs(1), up.central.peripherals()).await {
            for p in list {
                self.consider(p, true).await;
            }
        }
    }

    /// Reports `p` as discovered if it advertises the Shoal service and is allowed (at most once a second).
    async fn consider(&mut self, p: BtPeripheral, require_rssi: bool) {
        // Every await of this task is bounded: a stalled bluetoothd must not stall the radio.
        let Ok(Ok(Some(props))) = timeout(Duration::from_secs(1), p.properties()).await else { return };
        let data = props.service_data.get(&service_uuid()).cloned();
        if data.is_none() && !props.services.contains(&service_uuid()) {
            return;
        }
        if require_rssi && props.rssi.is_none() {
            return;
        }
        let address = p.address().to_string().to_ascii_uppercase();
        if !self.config.allows(&address) {
            return;
        }
        let now = Instant::now();
        if let Some((when, last)) = self.reported.get(&address) {
            if now.duration_since(*when) < DISCOVERY_THROTTLE && *last == data {
                return;
            }
        }
        if self.reported.len() > 1024 {
            self.reported.clear();
            self.peripherals.clear();
        }
        if !self.reported.contains_key(&address) {
            log::info!(
                "{}: discovered {address} ({})",
                self.name,
                data.as_ref().map_or("no service data".to_string(), |d| format!("{} bytes of service data", d.len()))
            );
        }
        self.reported.insert(address.clone(), (now, data.clone()));
        self.peripherals.insert(address.clone(), p);
        self.report(RadioEvent::Discovered { address, service_data: data });
    }

    fn connect(&mut self, address: String) {
        let address = address.to_ascii_uppercase();
        let Some(up) = &self.up else {
            self.report(RadioEvent::ConnectFailed { address });
            return;
        };
        if !self.config.allows(&address) {
            log::debug!("{}: not dialling {address} (not allowed)", self.name);
            self.report(RadioEvent::ConnectFailed { address });
            return;
        }
        if self.connecting.contains_key(&address) {
            return;
        }
        log::info!("{}: connecting to {address}", self.name);
        let releasing = self.releasing.remove(&address);
        let attempt = dial(Dial {
            central: up.central.clone(),
            adapter: up.adapter.clone(),
            local: up.local,
            cached: self.peripherals.get(&address).cloned(),
            address: address.clone(),
            choice: self.config.channel,
            name: self.name.clone(),
            releasing,
        });
        let internal = self.internal.clone();
        let a = address.clone();
        let task = tokio::spawn(async move {
            let result = match timeout(CONNECT_TIMEOUT, attempt).await {
                Ok(r) => r,
                Err(_) => Err(format!("no connection within {CONNECT_TIMEOUT:?}")),
            };
            let _ = internal.send(Internal::Dialled { address: a, result });
        });
        self.connecting.insert(address, task.abort_handle());
    }

    fn cancel_connect(&mut self, address: &str) {
        if let Some(task) = self.connecting.remove(address) {
            task.abort();
            log::info!("{}: gave up connecting to {address}", self.name);
            self.release_acl(address);
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
            Internal::Notifier(writer) => {
                self.notifier_generation += 1;
                let generation = self.notifier_generation;
                log::debug!(
                    "{}: TX notifications acquired by {} (MTU {})",
                    self.name,
                    writer.device_address(),
                    writer.mtu()
                );
                let writer = Arc::new(writer);
                self.notifier.send_replace(Some(writer.clone()));
                let internal = self.internal.clone();
                tokio::spawn(async move {
                    let _ = writer.closed().await;
                    let _ = internal.send(Internal::NotifierClosed { generation });
                });
            }
            Internal::NotifierClosed { generation } => {
                if generation == self.notifier_generation {
                    log::debug!("{}: TX notifications released", self.name);
                    self.notifier.send_replace(None);
                    // Nobody is subscribed any more: the central served has ended its connection.
                    if let Some(conn) = self.gatt_central {
                        self.lost(conn, "the central unsubscribed from TX");
                    }
                }
            }
            Internal::ReleaseAcl { address, peripheral } => {
                if !self.in_use(&address) {
                    tokio::spawn(async move {
                        let _ = timeout(Duration::from_secs(5), peripheral.disconnect()).await;
                    });
                }
            }
        }
    }

    fn dialled(&mut self, address: String, result: Result<Dialled, String>) {
        let wanted = self.connecting.remove(&address).is_some();
        let dialled = match result {
            Ok(d) if wanted => d,
            Ok(_) => {
                log::debug!("{}: connected to {address} after giving up; dropping it", self.name);
                self.release_acl(&address);
                return;
            }
            Err(e) => {
                log::info!("{}: connecting to {address} failed: {e}", self.name);
                if wanted {
                    self.report(RadioEvent::ConnectFailed { address: address.clone() });
                }
                self.release_acl(&address);
                return;
            }
        };
        let conn = self.new_conn();
        let (tx, queue) = mpsc::unbounded_channel();
        let traffic = Arc::new(Traffic::default());
        let wire = self.wire(conn, &traffic);
        let (kind, channel, tasks) = match dialled {
            Dialled::Gatt { peripheral, rx, tx: tx_char, notes, att_mtu } => {
                let writer = tokio::spawn(gatt_central_writer(peripheral.clone(), rx, queue, wire.clone()));
                let reader = tokio::spawn(gatt_central_reader(notes, wire));
                (
                    Kind::CentralGatt { peripheral, tx: tx_char },
                    Channel::Gatt { att_mtu },
                    vec![writer.abort_handle(), reader.abort_handle()],
                )
            }
            Dialled::L2cap { peripheral, stream } => {
                let mtu = l2cap_packet_size(&stream);
                let (r, w) = stream.into_split();
                tokio::spawn(l2cap_writer(w, queue, wire.clone()));
                let reader = tokio::spawn(l2cap_reader(r, wire));
                (Kind::CentralL2cap { peripheral }, Channel::L2cap { mtu }, vec![reader.abort_handle()])
            }
        };
        let att_mtu = match channel {
            Channel::Gatt { att_mtu } => att_mtu,
            Channel::L2cap { .. } => 0,
        };
        log::info!("{}: connected {conn} to {address} as central over {channel:?}", self.name);
        self.conns.insert(
            conn,
            Conn {
                address: address.clone(),
                kind,
                tx,
                tasks,
                att_mtu,
                since: Instant::now(),
                traffic,
                logged: (0, 0, 0),
            },
        );
        self.report(RadioEvent::Connected { conn, address: address.clone(), role: Role::Central, channel });
        self.watch(&address);
    }

    fn accepted(&mut self, stream: L2capStream, address: String) {
        if !self.config.allows(&address) {
            log::debug!("{}: refusing an L2CAP channel from {address} (not allowed)", self.name);
            return;
        }
        let conn = self.new_conn();
        let mtu = l2cap_packet_size(&stream);
        let (r, w) = stream.into_split();
        let (tx, queue) = mpsc::unbounded_channel();
        let traffic = Arc::new(Traffic::default());
        let wire = self.wire(conn, &traffic);
        tokio::spawn(l2cap_writer(w, queue, wire.clone()));
        let reader = tokio::spawn(l2cap_reader(r, wire));
        let channel = Channel::L2cap { mtu };
        log::info!("{}: connected {conn} to {address} as peripheral over {channel:?}", self.name);
        self.conns.insert(
            conn,
            Conn {
                address: address.clone(),
                kind: Kind::PeripheralL2cap,
                tx,
                tasks: vec![reader.abort_handle()],
                att_mtu: 0,
                since: Instant::now(),
                traffic,
                logged: (0, 0, 0),
            },
        );
        self.report(RadioEvent::Connected { conn, address: address.clone(), role: Role::Peripheral, channel });
        self.watch(&address);
    }

    /// A central wrote to RX: a packet of the GATT central served, or a new one.
    fn rx_write(&mut self, w: RxWrite) {
        let address = w.address.to_string().to_ascii_uppercase();
        let att_mtu = w.mtu;
        if let Some(conn) = self.gatt_central {
            let restarted = w.value.first() == Some(&KIND_HELLO);
            if restarted && self.conns.get(&conn).is_some_and(|c| c.address == address) {
                // A central's first packet is a Hello: a second one means it dialled again over the same LE link
                // (GATT gives the peripheral no other sign of a new connection).
                self.lost(conn, "the central started a new connection");
            }
        }
        if let Some(conn) = self.gatt_central {
            if let Some(c) = self.conns.get_mut(&conn) {
                if c.address == address {
                    if att_mtu > c.att_mtu {
                        c.att_mtu = att_mtu;
                        self.events.report(RadioEvent::Mtu { conn, mtu: att_mtu });
                    }
                    c.traffic.packets_in.fetch_add(1, Ordering::Relaxed);
                    self.events.report(RadioEvent::Packet { conn, bytes: w.value });
                    return;
                }
            }
        }
        if !self.config.allows(&address) {
            self.reject(&address, "not allowed");
            return;
        }
        if self.gatt_central.is_some() {
            // BlueZ would send this central's notifications to the one already served too (module docs).
            self.reject(&address, "already serving a GATT central");
            return;
        }
        let conn = self.new_conn();
        let (tx, queue) = mpsc::unbounded_channel();
        let traffic = Arc::new(Traffic { packets_in: AtomicU64::new(1), ..Traffic::default() });
        let writer = tokio::spawn(gatt_peripheral_writer(self.notifier.subscribe(), queue, self.wire(conn, &traffic)));
        let channel = Channel::Gatt { att_mtu };
        log::info!("{}: connected {conn} to {address} as peripheral over {channel:?}", self.name);
        self.conns.insert(
            conn,
            Conn {
                address: address.clone(),
                kind: Kind::PeripheralGatt,
                tx,
                tasks: vec![writer.abort_handle()],
                att_mtu,
                since: Instant::now(),
                traffic,
                logged: (0, 0, 0),
            },
        );
        self.gatt_central = Some(conn);
        self.report(RadioEvent::Connected { conn, address: address.clone(), role: Role::Peripheral, channel });
        self.report(RadioEvent::Packet { conn, bytes: w.value });
        self.watch(&address);
    }

    /// Turns away a GATT central: disconnects it, unless its ACL carries another connection.
    fn reject(&mut self, address: &str, why: &str) {
        let now = Instant::now();
        let log_it = self.rejected.get(address).is_none_or(|t| now.duration_since(*t) > Duration::from_secs(5));
        if log_it {
            if self.rejected.len() > 256 {
                self.rejected.clear();
            }
            self.rejected.insert(address.to_string(), now);
            log::info!("{}: turning away GATT central {address}: {why}", self.name);
            self.release_acl(address);
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

fn timed_out() -> bluer::Error {
    bluer::Error { kind: bluer::ErrorKind::Failed, message: "timed out".into() }
}

/// The packet size for an L2CAP channel: one record (packet + its 2-byte length) per SDU of the peer's MTU.
fn l2cap_packet_size(stream: &L2capStream) -> u16 {
    let send_mtu = stream.as_ref().send_mtu().ok().filter(|m| *m >= 23).unwrap_or(23);
    send_mtu.saturating_sub(RECORD_HEADER_LEN as u16).clamp(MIN_PACKET, L2CAP_MAX_PACKET)
}

/// What a connection attempt needs.
struct Dial {
    central: BtAdapter,
    adapter: bluer::Adapter,
    /// This adapter's address, for the L2CAP socket.
    local: L2capAddr,
    /// btleplug's peripheral for the address, if discovery met it.
    cached: Option<BtPeripheral>,
    address: String,
    choice: ChannelChoice,
    /// The radio's name, for logs.
    name: String,
    /// Set when this side is taking down an earlier link to the address.
    releasing: Option<watch::Receiver<bool>>,
}

/// Connects to `address` as central: ACL, services, then an L2CAP channel (if preferred and offered) or the TX
/// subscription.
async fn dial(d: Dial) -> Result<Dialled, String> {
    let Dial { central, adapter, local, cached, address, choice, name, releasing } = d;
    if let Some(mut done) = releasing {
        // This side is still taking down an earlier link to the address: let it finish first.
        let _ = timeout(Duration::from_secs(6), done.wait_for(|d| *d)).await;
    }
    let p = match cached {
        Some(p) => p,
        None => {
            let all = central.peripherals().await.map_err(|e| format!("listing devices: {e}"))?;
            all.into_iter()
                .find(|p| p.address().to_string().eq_ignore_ascii_case(&address))
                .ok_or_else(|| "unknown device".to_string())?
        }
    };
    let started = Instant::now();
    if p.is_connected().await.unwrap_or(false) {
        log::debug!("{name}: {address} is connected already (the peer dialled this side: one LE link for both)");
    } else if let Err(e) = p.connect().await {
        // Connected meanwhile (e.g. the peer dialled this side: the kernel shares one LE link)?
        if !p.is_connected().await.unwrap_or(false) {
            return Err(format!("connect: {e}"));
        }
    }
    log::debug!("{name}: LE link to {address} up after {:?}", started.elapsed());
    // btleplug only waits for BlueZ's service discovery when it connected itself.
    let device = adapter.device(address.parse().map_err(|e| format!("{e}"))?).map_err(|e| e.to_string())?;
    while !device.is_services_resolved().await.unwrap_or(false) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    p.discover_services().await.map_err(|e| format!("service discovery: {e}"))?;
    log::debug!("{name}: services of {address} resolved after {:?}", started.elapsed());
    let chars = p.characteristics();
    let find =
        |u: u128| chars.iter().find(|c| c.uuid == Uuid::from_u128(u) && c.service_uuid == service_uuid()).cloned();
    let (Some(rx), Some(tx)) = (find(RX_CHARACTERISTIC_UUID_U128), find(TX_CHARACTERISTIC_UUID_U128)) else {
        return Err("no Shoal service".into());
    };
    if choice == ChannelChoice::PreferL2cap {
        match find(PSM_CHARACTERISTIC_UUID_U128) {
            Some(psm_char) => match p.read(&psm_char).await {
                Ok(v) if v.len() >= 2 && u16::from_le_bytes([v[0], v[1]]) != 0 => {
                    let psm = u16::from_le_bytes([v[0], v[1]]);
                    match l2cap_dial(&adapter, local, &address, psm, &name).await {
                        Ok(stream) => return Ok(Dialled::L2cap { peripheral: p, stream }),
                        Err(e) => log::warn!("{name}: L2CAP to {address} PSM {psm:#04x} failed ({e}); using GATT"),
                    }
                }
                Ok(_) => log::debug!("{name}: {address} offers no L2CAP channel"),
                Err(e) => log::debug!("{name}: reading the PSM of {address}: {e}"),
            },
            None => log::debug!("{name}: {address} has no PSM characteristic"),
        }
    }
    let notes = p.notifications().await.map_err(|e| format!("notifications: {e}"))?;
    p.subscribe(&tx).await.map_err(|e| format!("subscribing: {e}"))?;
    let att_mtu = match central_att_mtu(&adapter, &address).await {
        Some(m) => m,
        None => {
            log::debug!("{name}: ATT MTU of {address} unknown; assuming {ATT_MTU_MIN}");
            ATT_MTU_MIN
        }
    };
    Ok(Dialled::Gatt { peripheral: p, rx, tx, notes, att_mtu })
}

/// The ATT MTU BlueZ negotiated with `address` (btleplug does not expose it).
async fn central_att_mtu(adapter: &bluer::Adapter, address: &str) -> Option<u16> {
    let device = adapter.device(address.parse().ok()?).ok()?;
    for service in device.services().await.ok()? {
        if service.uuid().await.ok()? != service_uuid() {
            continue;
        }
        for c in service.characteristics().await.ok()? {
            if c.uuid().await.ok()? == Uuid::from_u128(TX_CHARACTERISTIC_UUID_U128) {
                // bluer reports the MTU less 5 bytes (its "MTU workaround").
                let mtu = c.mtu().await.ok()?;
                return u16::try_from(mtu + 5).ok();
            }
        }
    }
    None
}

/// Why opening an L2CAP channel failed.
#[derive(Debug)]
enum L2capError {
    /// Before connecting (address, device, socket): another attempt would fail the same way.
    Setup(String),
    /// The kernel's connect failed.
    Connect(std::io::Error),
    /// No channel within the time left.
    TimedOut,
}

impl L2capError {
    /// Whether another attempt may succeed soon. A central also sees transient failures on real devices, mostly
    /// right after the LE link came up or while both devices dial each other over one LE link: the peer refuses the
    /// channel (ECONNREFUSED), resets it (ECONNRESET) or the link aborts it (ECONNABORTED), or the local controller
    /// is busy with another connection attempt (EBUSY, EAGAIN). Not retried: a timeout (it used up the time) and
    /// everything else (permissions, an unsupported PSM or address type, a bad argument).
    fn transient(&self) -> bool {
        match self {
            L2capError::Connect(e) => matches!(
                e.raw_os_error(),
                Some(libc::ECONNREFUSED | libc::ECONNRESET | libc::ECONNABORTED | libc::EBUSY | libc::EAGAIN)
            ),
            L2capError::Setup(_) | L2capError::TimedOut => false,
        }
    }
}

impl std::fmt::Display for L2capError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            L2capError::Setup(e) => f.write_str(e),
            L2capError::Connect(e) => write!(f, "{e}"),
            L2capError::TimedOut => f.write_str("timed out"),
        }
    }
}

/// Opens an L2CAP LE credit-based channel from this adapter to `address` on `psm`: up to [`L2CAP_ATTEMPTS`]
/// attempts within [`L2CAP_TIMEOUT`], with a growing pause ([`L2CAP_BACKOFF`]) after a transient failure
/// ([`L2capError::transient`]). Failed attempts are logged at debug level (`name`: the radio's, for the log); the
/// error returned is the last one, with the number of attempts if there were several.
async fn l2cap_dial(
    adapter: &bluer::Adapter,
    local: L2capAddr,
    address: &str,
    psm: u16,
    name: &str,
) -> Result<L2capStream, String> {
    let deadline = Instant::now() + L2CAP_TIMEOUT;
    let mut backoff = L2CAP_BACKOFF;
    let mut attempt = 1;
    let mut failed = String::new();
    loop {
        let e = match l2cap_connect(adapter, local, address, psm, deadline).await {
            Ok(stream) => {
                if attempt > 1 {
                    log::info!("{name}: L2CAP channel to {address} open at attempt {attempt} (before: {failed})");
                }
                return Ok(stream);
            }
            Err(e) => e,
        };
        // Only retry when the pause leaves the next attempt a fair chance (a second) before the deadline.
        let retry =
            e.transient() && attempt < L2CAP_ATTEMPTS && Instant::now() + backoff + Duration::from_secs(1) <= deadline;
        if !retry {
            return Err(if attempt > 1 { format!("{e}; {attempt} attempts") } else { e.to_string() });
        }
        log::debug!("{name}: L2CAP to {address} PSM {psm:#04x}: attempt {attempt} failed ({e}); again in {backoff:?}");
        failed = e.to_string();
        tokio::time::sleep(backoff).await;
        backoff *= 2;
        attempt += 1;
    }
}

/// One attempt of [`l2cap_dial`], given up at `deadline`.
async fn l2cap_connect(
    adapter: &bluer::Adapter,
    local: L2capAddr,
    address: &str,
    psm: u16,
    deadline: Instant,
) -> Result<L2capStream, L2capError> {
    let addr: Address = address.parse().map_err(|e| L2capError::Setup(format!("{e}")))?;
    let device = adapter.device(addr).map_err(|e| L2capError::Setup(e.to_string()))?;
    let addr_type = device.address_type().await.map_err(|e| L2capError::Setup(e.to_string()))?;
    let socket = L2capSocket::<L2capStream>::new_stream().map_err(|e| L2capError::Setup(e.to_string()))?;
    socket.bind(local).map_err(|e| L2capError::Setup(format!("bind: {e}")))?;
    match tokio::time::timeout_at(deadline, socket.connect(L2capAddr::new(addr, addr_type, psm))).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(L2capError::Connect(e)),
        Err(_) => Err(L2capError::TimedOut),
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

async fn gatt_central_writer(
    p: BtPeripheral,
    rx: Characteristic,
    mut queue: mpsc::UnboundedReceiver<Vec<u8>>,
    wire: Wire,
) {
    while let Some(packet) = queue.recv().await {
        if let Err(why) = timed("write", p.write(&rx, &packet, WriteType::WithoutResponse)).await {
            return wire.lost(why);
        }
        wire.sent();
    }
}

async fn gatt_central_reader(mut notes: Notifications, wire: Wire) {
    let tx = Uuid::from_u128(TX_CHARACTERISTIC_UUID_U128);
    while let Some(n) = notes.next().await {
        if n.uuid == tx {
            wire.received(n.value);
        }
    }
    wire.lost("notifications ended".into());
}

/// The current TX notification socket, waiting up to [`NOTIFIER_WAIT`] for BlueZ to hand one over.
async fn current_notifier(
    rx: &mut watch::Receiver<Option<Arc<CharacteristicWriter>>>,
) -> Option<Arc<CharacteristicWriter>> {
    let deadline = Instant::now() + NOTIFIER_WAIT;
    loop {
        let current = rx.borrow_and_update().clone();
        if let Some(n) = current {
            if !n.is_closed().unwrap_or(true) {
                return Some(n);
            }
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            _ => return None,
        }
    }
}

async fn gatt_peripheral_writer(
    mut notifier: watch::Receiver<Option<Arc<CharacteristicWriter>>>,
    mut queue: mpsc::UnboundedReceiver<Vec<u8>>,
    wire: Wire,
) {
    while let Some(packet) = queue.recv().await {
        let Some(n) = current_notifier(&mut notifier).await else {
            return wire.lost("the central is not subscribed to TX".into());
        };
        if let Err(why) = timed("notification", n.send(&packet)).await {
            return wire.lost(why);
        }
        wire.sent();
    }
}

async fn l2cap_writer(
    mut w: bluer::l2cap::stream::OwnedWriteHalf,
    mut queue: mpsc::UnboundedReceiver<Vec<u8>>,
    wire: Wire,
) {
    while let Some(packet) = queue.recv().await {
        if let Err(why) = timed("write", w.write_all(&packet)).await {
            return wire.lost(why);
        }
        wire.sent();
    }
    // Closed from this side: an LE CoC socket closed right after a write can lose what the kernel still holds
    // for lack of credits (the Close packet), so give it a moment before the socket goes.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

async fn l2cap_reader(mut r: bluer::l2cap::stream::OwnedReadHalf, wire: Wire) {
    let mut buf = vec![0u8; 4096];
    let why = loop {
        match r.read(&mut buf).await {
            Ok(0) => break "closed by the peer".to_string(),
            Ok(n) => wire.received(buf.get(..n).unwrap_or_default().to_vec()),
            Err(e) => break format!("read failed: {e}"),
        }
    };
    wire.lost(why);
}

/// The kernel's Bluetooth management API (`HCI_CHANNEL_CONTROL`), for an advertisement with a scan response.
mod mgmt {
    use super::SERVICE_UUID_U128;
    use std::io::{self, Read, Write};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::time::{Duration, Instant};

    const AF_BLUETOOTH: libc::c_int = 31;
    const BTPROTO_HCI: libc::c_int = 1;
    const HCI_DEV_NONE: u16 = 0xffff;
    const HCI_CHANNEL_CONTROL: u16 = 3;
    const EV_CMD_COMPLETE: u16 = 0x0001;
    const EV_CMD_STATUS: u16 = 0x0002;
    const OP_READ_ADV_FEATURES: u16 = 0x003d;
    const OP_ADD_ADVERTISING: u16 = 0x003e;
    const OP_REMOVE_ADVERTISING: u16 = 0x003f;
    const FLAG_CONNECTABLE: u32 = 1 << 0;
    const FLAG_DISCOVERABLE: u32 = 1 << 1;
    /// AD types: complete list of 128-bit service UUIDs; service data with a 128-bit UUID.
    const AD_UUID128_ALL: u8 = 0x07;
    const AD_SERVICE_DATA128: u8 = 0x21;

    #[repr(C)]
    struct SockaddrHci {
        family: libc::sa_family_t,
        dev: u16,
        channel: u16,
    }

    struct Mgmt {
        socket: std::fs::File,
    }

    impl Mgmt {
        fn open() -> io::Result<Mgmt> {
            // SAFETY: socket(2) with constant arguments; the descriptor is owned at once.
            let fd = unsafe { libc::socket(AF_BLUETOOTH, libc::SOCK_RAW | libc::SOCK_CLOEXEC, BTPROTO_HCI) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` is a fresh descriptor nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let addr = SockaddrHci {
                family: AF_BLUETOOTH as libc::sa_family_t,
                dev: HCI_DEV_NONE,
                channel: HCI_CHANNEL_CONTROL,
            };
            // SAFETY: `addr` is a valid sockaddr_hci of the given size, alive during the call.
            let r = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    std::ptr::from_ref(&addr).cast::<libc::sockaddr>(),
                    std::mem::size_of::<SockaddrHci>() as libc::socklen_t,
                )
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            let tv = libc::timeval { tv_sec: 0, tv_usec: 200_000 };
            // SAFETY: `tv` is a valid timeval of the given size, alive during the call.
            let r = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    std::ptr::from_ref(&tv).cast::<libc::c_void>(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                )
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Mgmt { socket: std::fs::File::from(fd) })
        }

        /// Sends a command for controller `index` and returns its reply's parameters.
        fn command(&mut self, index: u16, opcode: u16, params: &[u8]) -> io::Result<Vec<u8>> {
            let len = u16::try_from(params.len()).map_err(|_| io::Error::other("parameters too long"))?;
            let mut msg = Vec::with_capacity(6 + params.len());
            msg.extend_from_slice(&opcode.to_le_bytes());
            msg.extend_from_slice(&index.to_le_bytes());
            msg.extend_from_slice(&len.to_le_bytes());
            msg.extend_from_slice(params);
            self.socket.write_all(&msg)?;
            let deadline = Instant::now() + Duration::from_secs(3);
            let mut buf = [0u8; 1024];
            while Instant::now() < deadline {
                let n = match self.socket.read(&mut buf) {
                    Ok(n) => n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                        ) =>
                    {
                        continue
                    }
                    Err(e) => return Err(e),
                };
                let Some(ev) = buf.get(..n) else { continue };
                if ev.len() < 9 {
                    continue;
                }
                let code = u16::from_le_bytes([ev[0], ev[1]]);
                let ev_index = u16::from_le_bytes([ev[2], ev[3]]);
                let op = u16::from_le_bytes([ev[6], ev[7]]);
                let status = ev[8];
                if ev_index != index || op != opcode || !matches!(code, EV_CMD_COMPLETE | EV_CMD_STATUS) {
                    continue;
                }
                if status != 0 {
                    return Err(io::Error::other(format!("mgmt command {opcode:#06x} failed: status {status:#04x}")));
                }
                if code == EV_CMD_COMPLETE {
                    return Ok(ev.get(9..).unwrap_or_default().to_vec());
                }
            }
            Err(io::Error::new(io::ErrorKind::TimedOut, format!("no reply to mgmt command {opcode:#06x}")))
        }
    }

    /// Advertises the Shoal service on controller `index`, connectable: the service UUID in the advertising data,
    /// `service_data` (if any) in the scan response. Returns the advertising instance.
    pub(super) fn advertise(index: u16, service_data: &[u8]) -> io::Result<u8> {
        let mut m = Mgmt::open()?;
        let features = m.command(index, OP_READ_ADV_FEATURES, &[])?;
        let (Some(&max_scan_rsp), Some(&max_instances)) = (features.get(5), features.get(6)) else {
            return Err(io::Error::other("short reply to Read Advertising Features"));
        };
        if max_instances == 0 {
            return Err(io::Error::other("the controller has no advertising instances"));
        }
        // The last instance: bluetoothd hands out its D-Bus advertisements from 1 up.
        let instance = max_instances;
        let uuid = SERVICE_UUID_U128.to_le_bytes();
        let mut adv = vec![17, AD_UUID128_ALL];
        adv.extend_from_slice(&uuid);
        let mut rsp = Vec::new();
        if !service_data.is_empty() && 2 + 16 + service_data.len() <= usize::from(max_scan_rsp) {
            rsp.push(u8::try_from(1 + 16 + service_data.len()).unwrap_or(u8::MAX));
            rsp.push(AD_SERVICE_DATA128);
            rsp.extend_from_slice(&uuid);
            rsp.extend_from_slice(service_data);
        }
        let mut params = vec![instance];
        params.extend_from_slice(&(FLAG_CONNECTABLE | FLAG_DISCOVERABLE).to_le_bytes());
        params.extend_from_slice(&0u16.to_le_bytes()); // duration: default
        params.extend_from_slice(&0u16.to_le_bytes()); // timeout: none
        params.push(u8::try_from(adv.len()).unwrap_or(u8::MAX));
        params.push(u8::try_from(rsp.len()).unwrap_or(u8::MAX));
        params.extend_from_slice(&adv);
        params.extend_from_slice(&rsp);
        m.command(index, OP_ADD_ADVERTISING, &params)?;
        Ok(instance)
    }

    /// Withdraws advertising instance `instance` of controller `index`.
    pub(super) fn remove_advertising(index: u16, instance: u8) -> io::Result<()> {
        Mgmt::open()?.command(index, OP_REMOVE_ADVERTISING, &[instance]).map(|_| ())
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
