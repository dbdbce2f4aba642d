//! The UniFFI surface of [`shoaldb`]: what Kotlin and Swift apps call.
//!
//! Thin by design: every function here converts foreign-friendly records into the core's types, calls the core,
//! and converts back. Nothing is re-implemented. The shapes follow what foreign callers handle well:
//! - documents cross as JSON text (parsed with the app's own JSON library, or `Codable` in Swift);
//! - typed field values and edits cross as small enums ([`FieldValue`], [`Edit`], [`WriteOp`]);
//! - every error is one [`ShoalError`], and a Rust panic becomes [`ShoalError::Internal`], never a crash;
//! - observers, presence, attachment progress, logging, the key vault, the Bluetooth radio and local-network
//!   discovery are foreign traits the app implements;
//! - every read and write is `async` (Kotlin `suspend`, Swift `async`) and runs on the store's own tokio runtime, so
//!   it never blocks the caller's thread, and stops when the caller is cancelled ([`Cancellation`]); reads and writes
//!   also have `…Blocking` twins for code already on a background thread.

mod bluetooth;
mod callbacks;
mod cancel;
mod collection;
mod discovery;
mod enrolment;
mod error;
mod logger;
mod storage;
mod store;
mod values;
mod vault;

pub use bluetooth::{bluetooth_uuids, BluetoothChannel, BluetoothEvents, BluetoothRadio, BluetoothUuids};
pub use callbacks::{AttachmentProgress, CallbackError, CollectionObserver, ObserverHandle, PresenceObserver};
pub use cancel::Cancellation;
pub use collection::Collection;
pub use discovery::{LocalNetworkDiscovery, LocalNetworkEvents, ServiceAdvertisement};
pub use enrolment::{Authority, CertificateInfo, Revocation};
pub use error::ShoalError;
pub use logger::{set_logger, LogLevel, ShoalLogger};
pub use store::{encrypt_store_file, Peer, Store, StoreConfig, SyncConfig, Transport};
pub use values::{
    AttachmentToken, ChangeEvent, CollectionIndex, Edit, FieldValue, Query, QueryPlan, QueryValue, SortKey, WriteOp,
};
pub use vault::KeyVault;

uniffi::setup_scaffolding!();

/// The version of the Shoal library (the Rust core inside this binding).
#[uniffi::export]
pub fn shoal_version() -> String {
    shoaldb::VERSION.to_string()
}
