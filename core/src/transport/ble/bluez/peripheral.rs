//! The peripheral side: the GATT server with the Shoal service (RX writes, TX notifications through BlueZ's
//! notification socket, the PSM) and advertising (through the kernel's management socket or D-Bus).

use super::mgmt;
use super::{service_uuid, timed, Actor, Conn, Internal, Kind, Traffic, Wire};
use crate::transport::ble::link::{Channel, Role};
use crate::transport::ble::packet::KIND_HELLO;
use crate::transport::ble::radio::RadioEvent;
use crate::transport::ble::{PSM_CHARACTERISTIC_UUID_U128, RX_CHARACTERISTIC_UUID_U128, TX_CHARACTERISTIC_UUID_U128};
use bluer::gatt::local::{
    characteristic_control, Application, ApplicationHandle, Characteristic as LocalCharacteristic,
    CharacteristicControlEvent, CharacteristicNotify, CharacteristicNotifyMethod, CharacteristicRead,
    CharacteristicWrite, CharacteristicWriteMethod, Service as LocalService,
};
use bluer::gatt::CharacteristicWriter;
use bluer::Address;
use futures::StreamExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::{timeout, Instant};
use uuid::Uuid;

/// How long a peripheral waits for BlueZ's notification socket after a central's first write.
const NOTIFIER_WAIT: Duration = Duration::from_secs(5);

/// A central's write to RX, as the GATT server got it.
pub(super) struct RxWrite {
    address: Address,
    mtu: u16,
    value: Vec<u8>,
}

pub(super) enum Advertising {
    Mgmt { index: u16, instance: u8 },
    Dbus(#[allow(dead_code)] bluer::adv::AdvertisementHandle),
}

impl Actor {
    /// Registers the GATT application with the Shoal service on `adapter`: RX writes go to `rx_writes`, in order;
    /// the TX notification sockets BlueZ hands over are reported by the returned task.
    pub(super) async fn serve_gatt(
        &self,
        adapter: &bluer::Adapter,
        rx_writes: mpsc::Sender<RxWrite>,
    ) -> Result<(ApplicationHandle, AbortHandle), String> {
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
        let control = tokio::spawn(async move {
            let mut control = Box::pin(tx_control);
            while let Some(event) = control.next().await {
                if let CharacteristicControlEvent::Notify(writer) = event {
                    if internal.send(Internal::Notifier(writer)).is_err() {
                        break;
                    }
                }
            }
        })
        .abort_handle();
        Ok((app, control))
    }

    /// [`Internal::Notifier`]: BlueZ handed over the TX notification socket.
    pub(super) fn notifier_acquired(&mut self, writer: CharacteristicWriter) {
        self.notifier_generation += 1;
        let generation = self.notifier_generation;
        log::debug!("{}: TX notifications acquired by {} (MTU {})", self.name, writer.device_address(), writer.mtu());
        let writer = Arc::new(writer);
        self.notifier.send_replace(Some(writer.clone()));
        let internal = self.internal.clone();
        tokio::spawn(async move {
            let _ = writer.closed().await;
            let _ = internal.send(Internal::NotifierClosed { generation });
        });
    }

    /// [`Internal::NotifierClosed`]: the notification socket of generation `generation` closed.
    pub(super) fn notifier_closed(&mut self, generation: u64) {
        if generation == self.notifier_generation {
            log::debug!("{}: TX notifications released", self.name);
            self.notifier.send_replace(None);
            // Nobody is subscribed any more: the central served has ended its connection.
            if let Some(conn) = self.gatt_central {
                self.lost(conn, "the central unsubscribed from TX");
            }
        }
    }

    pub(super) async fn advertise(&mut self) {
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

    pub(super) async fn stop_advertising(&mut self) {
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

    /// A central wrote to RX: a packet of the GATT central served, or a new one.
    pub(super) fn rx_write(&mut self, w: RxWrite) {
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
}

fn timed_out() -> bluer::Error {
    bluer::Error { kind: bluer::ErrorKind::Failed, message: "timed out".into() }
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
