//! Bluetooth LE: the radio the platform implements (a foreign trait), and where it reports what happens.
//!
//! The platform code only scans, advertises, connects and moves packets; the core decides everything else (whom
//! to dial, fragmentation to the MTU, credits, one link per pair of phones, backoff, keepalives) and runs the same
//! authenticated, encrypted sync as over the LAN. Android's implementation is `AndroidBluetoothRadio` (in the
//! Android library), iOS's `CoreBluetoothRadio` (in the Swift package).

use crate::callbacks::CallbackError;
use shoaldb::transport::ble::link::{Channel, Role};
use shoaldb::transport::ble::links::RadioCommand;
use shoaldb::transport::ble::radio::{Radio, RadioEvent, RadioEvents};
use shoaldb::util::lock;
use std::sync::{Arc, Mutex};

/// The UUIDs of Shoal's GATT service and characteristics, for the platform radio.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct BluetoothUuids {
    /// The service every phone advertises and serves.
    pub service: String,
    /// Central → peripheral packets (write without response).
    pub rx: String,
    /// Peripheral → central packets (notify).
    pub tx: String,
    /// The peripheral's L2CAP PSM, u16 little-endian (read; 0 = no L2CAP channel).
    pub psm: String,
}

/// The UUIDs the platform radio must use.
#[uniffi::export]
pub fn bluetooth_uuids() -> BluetoothUuids {
    use shoaldb::transport::ble as b;
    BluetoothUuids {
        service: b::SERVICE_UUID.into(),
        rx: b::RX_CHARACTERISTIC_UUID.into(),
        tx: b::TX_CHARACTERISTIC_UUID.into(),
        psm: b::PSM_CHARACTERISTIC_UUID.into(),
    }
}

/// What a connection carries packets over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum BluetoothChannel {
    /// GATT: one packet per write / notification, at most `attMtu` − 3 bytes.
    Gatt { att_mtu: u16 },
    /// An L2CAP connection-oriented channel used as a byte stream; `mtu` is the largest write.
    L2cap { mtu: u16 },
}

/// A Bluetooth LE radio, implemented by the platform. Every method must return quickly: start the operation and
/// report its outcome through the [`BluetoothEvents`] given to `start`. Errors thrown are logged and ignored.
#[uniffi::export(foreign)]
pub trait BluetoothRadio: Send + Sync {
    /// Sync starts using the radio: report events to `events` from now on.
    fn start(&self, events: Arc<BluetoothEvents>) -> Result<(), CallbackError>;
    /// Advertise the Shoal service (connectable), with `serviceData` as its service data when not empty and the
    /// platform allows it.
    fn start_advertising(&self, service_data: Vec<u8>) -> Result<(), CallbackError>;
    /// Scan for the Shoal service; report each sighting with `discovered`.
    fn start_scanning(&self) -> Result<(), CallbackError>;
    /// Connect to `address` as central: connect, request the largest MTU, discover the service, subscribe to the
    /// TX characteristic (or open the L2CAP channel), then report `connected` — or `connectFailed`.
    fn connect(&self, address: String) -> Result<(), CallbackError>;
    /// Give up a connection attempt still running.
    fn cancel_connect(&self, address: String) -> Result<(), CallbackError>;
    /// Close a connection.
    fn disconnect(&self, connection: u64) -> Result<(), CallbackError>;
    /// Send one packet on a connection (central: write without response to RX; peripheral: notify TX; L2CAP:
    /// write), then report `sent` once the OS has taken it. Never drop a packet: queue it until the OS is ready.
    fn send(&self, connection: u64, packet: Vec<u8>) -> Result<(), CallbackError>;
    /// Sync stops: stop advertising and scanning, close every connection, report nothing more.
    fn stop(&self) -> Result<(), CallbackError>;
}

/// Where the platform radio reports what happens. Thread-safe; never blocks.
#[derive(uniffi::Object)]
pub struct BluetoothEvents {
    events: RadioEvents,
}

#[uniffi::export]
impl BluetoothEvents {
    /// A phone advertising the Shoal service was seen at `address` (with the advertisement's service data for the
    /// Shoal service, when the platform delivers it).
    pub fn discovered(&self, address: String, service_data: Option<Vec<u8>>) {
        self.events.report(RadioEvent::Discovered { address, service_data });
    }

    /// A connection is up and ready to carry packets. `connection`: the platform's number for it, unique while it
    /// lasts; `central`: this phone dialled it.
    pub fn connected(&self, connection: u64, address: String, central: bool, channel: BluetoothChannel) {
        let role = if central { Role::Central } else { Role::Peripheral };
        let channel = match channel {
            BluetoothChannel::Gatt { att_mtu } => Channel::Gatt { att_mtu },
            BluetoothChannel::L2cap { mtu } => Channel::L2cap { mtu },
        };
        self.events.report(RadioEvent::Connected { conn: connection, address, role, channel });
    }

    /// The ATT MTU of a GATT connection changed.
    pub fn mtu_changed(&self, connection: u64, mtu: u16) {
        self.events.report(RadioEvent::Mtu { conn: connection, mtu });
    }

    /// A packet arrived on a connection (L2CAP: any bytes read from the channel).
    pub fn received(&self, connection: u64, packet: Vec<u8>) {
        self.events.report(RadioEvent::Packet { conn: connection, bytes: packet });
    }

    /// The OS took the packet last given to `send` on `connection`.
    pub fn sent(&self, connection: u64) {
        self.events.report(RadioEvent::Sent { conn: connection });
    }

    /// A connection ended.
    pub fn disconnected(&self, connection: u64) {
        self.events.report(RadioEvent::Disconnected { conn: connection });
    }

    /// A `connect` failed.
    pub fn connect_failed(&self, address: String) {
        self.events.report(RadioEvent::ConnectFailed { address });
    }
}

impl BluetoothEvents {
    /// The core's event sink behind this object (for radios written in Rust, e.g. tests).
    pub fn radio_events(&self) -> RadioEvents {
        self.events.clone()
    }
}

/// The core's [`Radio`] over a platform's [`BluetoothRadio`].
pub(crate) struct ForeignRadio {
    radio: Arc<dyn BluetoothRadio>,
    attached: Mutex<bool>,
}

impl ForeignRadio {
    pub(crate) fn new(radio: Arc<dyn BluetoothRadio>) -> ForeignRadio {
        ForeignRadio { radio, attached: Mutex::new(false) }
    }
}

fn logged(what: &str, r: Result<(), CallbackError>) {
    if let Err(e) = r {
        log::warn!("bluetooth radio: {what}: {e}");
    }
}

impl Radio for ForeignRadio {
    fn attach(&self, events: RadioEvents) {
        *lock(&self.attached) = true;
        logged("start", self.radio.start(Arc::new(BluetoothEvents { events })));
    }

    fn execute(&self, command: RadioCommand) {
        let r = match command {
            RadioCommand::StartAdvertising { service_data } => self.radio.start_advertising(service_data),
            RadioCommand::StartScanning => self.radio.start_scanning(),
            RadioCommand::Connect { address } => self.radio.connect(address),
            RadioCommand::CancelConnect { address } => self.radio.cancel_connect(address),
            RadioCommand::Disconnect { conn } => self.radio.disconnect(conn),
            RadioCommand::Send { conn, packet } => self.radio.send(conn, packet),
        };
        logged("command", r);
    }

    fn detach(&self) {
        let mut attached = lock(&self.attached);
        if std::mem::take(&mut *attached) {
            logged("stop", self.radio.stop());
        }
    }
}
