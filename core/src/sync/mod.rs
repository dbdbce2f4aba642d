//! Sync: the replication protocol as a sans-IO state machine. Frames in, frames out, effects on a
//! [`Replica`](crate::store::Replica) (a device's [`Store`](crate::Store), or another backend): [`Engine`] owns a
//! device's links (secure channel + [`session`]) and presence; the transports and the simulators drive it. See
//! [`wire`] for the message format and [`session`] for what is sent when.

pub mod attachments;
#[cfg(test)]
mod deferred_tests;
pub mod engine;
pub mod first_copy;
pub(crate) mod link;
pub mod session;
pub mod wire;

pub use attachments::{FetchEvent, FetchId, MAX_HOPS};
pub use engine::{AppliedJob, ApplyJob, Engine, EngineEvent, LinkId, PeerPresence};
pub use session::{SessionStats, WINDOW};
pub use wire::{bounded_interest, Message, Subscription, TransportKind, WireError};

/// Why a link was closed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The handshake failed (typically: the other device uses another app secret) or the secure channel broke.
    #[error("secure channel: {0}")]
    Security(#[from] crate::security::SecurityError),
    /// The other device sent a message that could not be decoded or is not acceptable.
    #[error("bad message: {0}")]
    Wire(#[from] WireError),
    /// The other device broke the sync protocol: a message out of turn, an invalid change or filter, a link to
    /// itself, inconsistent attachment data (the message says which).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The local store failed while reading or applying changes or attachments.
    #[error("store: {0}")]
    Store(#[from] crate::Error),
    /// The other device stopped reading: more messages wait for it than
    /// [`MAX_OUTBOX_MESSAGES`](session::MAX_OUTBOX_MESSAGES) (how many). The link is closed rather than buffered for.
    #[error("the other device stopped reading ({0} messages waiting)")]
    NotReading(usize),
    /// The handshake did not finish within [`HANDSHAKE_TIMEOUT_MS`](engine::HANDSHAKE_TIMEOUT_MS).
    #[error("no handshake within {} ms", engine::HANDSHAKE_TIMEOUT_MS)]
    HandshakeTimeout,
    /// Another link over the same transport connects the same two devices; this one was closed in its favour.
    #[error("a link to this device already exists")]
    Duplicate,
}
