//! The central side: scanning and discovery, dialling a peripheral (LE link, services, PSM; then an L2CAP
//! channel or the TX subscription) and the GATT client's reader and writer.

use super::l2cap::{l2cap_dial, l2cap_packet_size, l2cap_reader, l2cap_writer};
use super::{
    service_uuid, timed, Actor, ChannelChoice, Conn, Internal, Kind, Traffic, Wire, CONNECT_TIMEOUT, DISCOVERY_THROTTLE,
};
use crate::transport::ble::link::{Channel, Role, ATT_MTU_MIN};
use crate::transport::ble::radio::RadioEvent;
use crate::transport::ble::{PSM_CHARACTERISTIC_UUID_U128, RX_CHARACTERISTIC_UUID_U128, TX_CHARACTERISTIC_UUID_U128};
use bluer::l2cap::{SocketAddr as L2capAddr, Stream as L2capStream};
use btleplug::api::{
    Central as _, CentralEvent, Characteristic, Manager as _, Peripheral as _, ScanFilter, ValueNotification, WriteType,
};
use btleplug::platform::{Adapter as BtAdapter, Manager as BtManager, Peripheral as BtPeripheral};
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::{timeout, Instant};
use uuid::Uuid;

/// A successful connection attempt.
pub(super) enum Dialled {
    Gatt { peripheral: BtPeripheral, rx: Characteristic, tx: Characteristic, notes: Notifications, att_mtu: u16 },
    L2cap { peripheral: BtPeripheral, stream: L2capStream },
}

type Notifications = Pin<Box<dyn Stream<Item = ValueNotification> + Send>>;

pub(super) type CentralEvents = Pin<Box<dyn Stream<Item = CentralEvent> + Send>>;

pub(super) async fn next_event(events: &mut Option<CentralEvents>) -> Option<CentralEvent> {
    match events {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// btleplug's adapter named `adapter` (`hci0`) and its event stream.
pub(super) async fn central_adapter(adapter: &str) -> Result<(BtAdapter, CentralEvents), String> {
    let manager = BtManager::new().await.map_err(|e| format!("btleplug: {e}"))?;
    let mut central = None;
    for a in manager.adapters().await.map_err(|e| format!("btleplug adapters: {e}"))? {
        let info = a.adapter_info().await.unwrap_or_default();
        if info.split_whitespace().next() == Some(adapter) {
            central = Some(a);
            break;
        }
    }
    let central = central.ok_or_else(|| format!("btleplug has no adapter {adapter}"))?;
    let events = central.events().await.map_err(|e| format!("btleplug events: {e}"))?;
    Ok((central, events))
}

impl Actor {
    /// Scans when asked to and no connection attempt runs: the kernel initiates a pending LE connection from its
    /// passive background scan, which does not run during discovery (an attempt would wait for bluetoothd's next
    /// 10-second discovery cycle to end).
    pub(super) async fn scan(&mut self) {
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
    pub(super) async fn central_event(&mut self, event: CentralEvent) {
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

    /// Reports the adapter's devices that advertise the Shoal service (throttled).
    pub(super) async fn sweep(&mut self) {
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

    pub(super) fn connect(&mut self, address: String) {
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

    pub(super) fn cancel_connect(&mut self, address: &str) {
        if let Some(task) = self.connecting.remove(address) {
            task.abort();
            log::info!("{}: gave up connecting to {address}", self.name);
            self.release_acl(address);
        }
    }

    pub(super) fn dialled(&mut self, address: String, result: Result<Dialled, String>) {
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
