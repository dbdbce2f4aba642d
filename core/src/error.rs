//! The one error type of the public API.

use crate::crdt::change::ChangeError;
use crate::crdt::document::DocError;
use crate::crdt::path::PathError;

/// Everything that can go wrong through Shoal's API. Nothing is written when an operation fails.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Document(DocError),
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(transparent)]
    Change(#[from] ChangeError),
    #[error(transparent)]
    Query(#[from] crate::query::QueryError),
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    #[error("invalid {what}: {reason}")]
    InvalidName { what: &'static str, reason: String },
    #[error("document {collection}/{id} not found")]
    NotFound { collection: String, id: String },
    #[error("document {collection}/{id} was evicted from this device; sync it again before editing it")]
    Evicted { collection: String, id: String },
    #[error("attachment {hash} is not in this store")]
    AttachmentNotFound { hash: String },
    #[error("attachment {hash} is corrupt: {reason}")]
    AttachmentCorrupt { hash: String, reason: String },
    #[error("the store's data is corrupt: {0}")]
    Corrupt(String),
    #[error("store schema version {found} is newer than this build supports ({supported})")]
    UnsupportedSchema { found: i64, supported: i64 },
}

/// Shorthand for results of Shoal's API.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<DocError> for Error {
    fn from(e: DocError) -> Error {
        match e {
            DocError::Path(p) => Error::Path(p),
            DocError::Change(c) => Error::Change(c),
            other => Error::Document(other),
        }
    }
}
