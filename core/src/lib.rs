//! # Shoal
//!
//! An offline-first, peer-to-peer document database for mobile apps. Every device keeps its own database (one
//! SQLite file), organised into collections of documents; every field of a document is its own CRDT — causal
//! last-writer-wins registers, counters, attachments, add-wins maps, arrays and text — and maps and arrays nest.
//! Stores exchange [`DocChange`]s and always converge to the same state, whatever the order or duplication of
//! delivery.
//!
//! ```
//! use shoaldb::{Store, Query};
//! # let dir = tempfile::tempdir().unwrap();
//! let store = Store::open(dir.path().join("app.db"))?;
//! let id = store.upsert("tasks", serde_json::json!({"title": "Buy milk", "done": false}))?;
//! store.update("tasks", &id, |doc| {
//!     doc.increment("priority", 2)?;          // a counter
//!     doc.text_insert("notes", 0, "2 litres")?; // collaborative text
//!     Ok(())
//! })?;
//! let open = store.find("tasks", &Query::filter("done == false")?)?;
//! assert_eq!(open[0]["notes"], "2 litres");
//! # Ok::<(), shoaldb::Error>(())
//! ```
//!
//! Layers, bottom to top:
//! * [`crdt`] — pure data types and merge: clocks, registers, counters, sequences and text, maps, documents,
//!   changes;
//! * [`store`] — SQLite persistence: the app's [`Store`] (documents, transactions, queries, observers,
//!   attachments) and the replica seam sync uses ([`Replica`]);
//! * [`query`] — the filter language;
//! * [`security`] — device identity, the app secret and the Noise handshake;
//! * [`sync`] — the replication protocol as a sans-IO engine ([`sync::Engine`]): sessions, presence, attachment
//!   fetches;
//! * [`transport`] — links: framing, the LAN (TCP + mDNS), Bluetooth LE (the link protocol, the glue to the engine,
//!   the platform radio's trait, BlueZ), the runtime hub;
//! * [`node`] — a running device: a store, its engine and its transports on a tokio runtime ([`Node`]);
//! * [`util`] — small helpers (locks, hex, a seeded generator, the store's time and randomness);
//! * `sim` (cargo feature `sim`) — deterministic simulators for tests and benchmarks, never in an app.

#![warn(missing_docs)]

pub mod crdt;
pub mod enrolment;
pub mod error;
pub mod node;
pub mod query;
pub mod security;
#[cfg(feature = "sim")]
pub mod sim;
pub mod store;
pub mod sync;
pub mod transport;
pub mod util;

pub use crdt::change::{Change, ChangeError, Op};
pub use crdt::clock::{PeerId, Timestamp};
pub use crdt::document::{Applied, DocEditor, DocError, Document};
pub use crdt::path::{Path, PathSegment};
pub use crdt::value::{AttachmentToken, Kind, Scalar, Value};
pub use crdt::version::VersionVector;
pub use error::{Error, Result};
pub use node::{Node, NodeConfig, NodeError, ReplicaNode};
pub use query::{Filter, Query, QueryError, SortOrder};
pub use store::{
    ApplyReport, AttachmentReader, AttestReport, AttestedState, ChangeEvent, CompactionPolicy, CompactionReport,
    DocChange, DocState, Durability, Expired, ObserverHandle, Options, Replica, Store, StoreKey, Summary, WriteTxn,
};

/// The version of this library.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The README's Rust example, compiled as a doctest so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
mod readme {}
