//! Shoal's cloud peer: sync relays that keep everything in PostgreSQL.
//!
//! A relay is one more Shoal device, seen from a phone: it speaks the same sync protocol over the same Noise
//! links, and the same sans-IO [`Engine`](shoaldb::sync::Engine) drives it. What differs is where its data lives:
//! not in a SQLite file but in PostgreSQL, through [`PgReplica`], a second implementation of the
//! [`Replica`](shoaldb::Replica) seam. Documents are merged with the same CRDT code the phones run, so the merged
//! state a relay keeps is byte for byte the state a phone reaches. Relays keep nothing of their own: any number
//! of them can serve one database, a phone may connect to any, and a change one relay receives reaches the devices
//! linked to the others at once (PostgreSQL `NOTIFY`, see [`relay`]).
//!
//! Phone builds never pull this crate (or a PostgreSQL client): it sits beside `shoaldb`, not inside it.

#![warn(missing_docs)]

pub mod backoffice;
mod digests;
mod jsonb;
pub mod logging;
mod offruntime;
mod pg;
pub mod relay;
pub mod replica;
pub mod schema;
pub mod writer;

pub use backoffice::BackOfficeConfig;
pub use relay::{CloudCompaction, Relay, RelayConfig};
pub use replica::{PgReplica, RosterAcks};

/// What can go wrong setting up the cloud peer. (Failures while syncing are the replica seam's
/// [`shoaldb::Error::Backend`], which close only the link concerned.)
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// PostgreSQL refused a statement or the connection failed.
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] postgres::Error),
    /// No connection could be taken from the pool (PostgreSQL unreachable for the pool's timeout).
    #[error("PostgreSQL connection pool: {0}")]
    Pool(#[from] r2d2::Error),
    /// The database was migrated by a newer relay: this one does not know its schema and must not write to it.
    #[error("the database is at schema version {found}; this relay knows up to {known} (upgrade the relay)")]
    SchemaTooNew {
        /// The version found in the database.
        found: i32,
        /// The newest version this relay knows.
        known: i32,
    },
    /// The relay's connection settings are not valid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The sync transport could not start (the listening address is taken, …).
    #[error(transparent)]
    Lan(#[from] shoaldb::transport::lan::LanError),
    /// The replica failed while the relay started (reading what it keeps in PostgreSQL).
    #[error("replica: {0}")]
    Replica(#[from] shoaldb::Error),
    /// The relay's keys or certificate could not be read.
    #[error("the relay's keys: {0}")]
    Keys(String),
    /// The device identity could not be made.
    #[error("identity: {0}")]
    Identity(#[from] shoaldb::security::SecurityError),
}

/// An error with its causes, for logs (`db error: ERROR: relation "x" does not exist` rather than `db error`).
pub fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
