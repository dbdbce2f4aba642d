//! Sync: the replication protocol as a sans-IO state machine. Frames in, frames out, effects on a
//! [`Replica`](crate::store::Replica) (a device's [`Store`](crate::Store), or another backend): [`Engine`] owns a
//! device's links (secure channel + [`session`]) and presence; the transports and the simulators drive it. See
//! [`wire`] for the message format and [`session`] for what is sent when.

pub mod attachments;
pub mod engine;
pub(crate) mod link;
pub mod session;
pub mod wire;

pub use attachments::{FetchEvent, FetchId, MAX_HOPS};
pub use engine::{Engine, EngineEvent, LinkId, PeerPresence};
pub use session::{SessionStats, WINDOW};
pub use wire::{Message, Subscription, TransportKind, WireError};

/// Why a link was closed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("secure channel: {0}")]
    Security(#[from] crate::security::SecurityError),
    #[error("bad message: {0}")]
    Wire(#[from] WireError),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("store: {0}")]
    Store(#[from] crate::Error),
    #[error("a link to this device already exists")]
    Duplicate,
}
