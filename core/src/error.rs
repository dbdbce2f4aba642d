//! The one error type of the public API.

use crate::crdt::change::ChangeError;
use crate::crdt::document::DocError;
use crate::crdt::path::PathError;

/// Everything that can go wrong through Shoal's API. Nothing is written when an operation fails.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SQLite failed: the database file could not be opened or written (disk full, permissions, locked by another
    /// process for too long).
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
    /// Reading the bytes of an attachment to store failed (the reader given to [`crate::Store::put_attachment`]).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// An edit does not fit the document: a type mismatch, a missing field, an index out of bounds, an invalid
    /// value.
    #[error(transparent)]
    Document(DocError),
    /// A field path is not valid.
    #[error(transparent)]
    Path(#[from] PathError),
    /// A change received from another device is malformed; nothing of it was applied.
    #[error(transparent)]
    Change(#[from] ChangeError),
    /// A query or filter is not valid, or a parameter it names is missing.
    #[error(transparent)]
    Query(#[from] crate::query::QueryError),
    /// The text is not JSON, or not the JSON expected (a document must be an object).
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// A collection name, document id or setting name is empty, too long or contains control characters.
    #[error("invalid {what}: {reason}")]
    InvalidName {
        /// Which kind of name: `"collection name"`, `"document id"` or `"setting name"`.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The device's certificate does not let it make this write (see [`crate::security::certificate`]): every other
    /// device would refuse it, so the store refuses it first and the transaction changes nothing.
    #[error("not permitted to write {collection}/{id}: {reason}")]
    NotPermitted {
        /// The document's collection.
        collection: String,
        /// The document's id.
        id: String,
        /// What the certificate does not allow.
        reason: String,
    },
    /// The document does not exist (it never did, or it was removed).
    #[error("document {collection}/{id} not found")]
    NotFound {
        /// The document's collection.
        collection: String,
        /// The document's id.
        id: String,
    },
    /// The document was evicted from this device ([`crate::Store::evict`]): it cannot be edited here until it is
    /// accepted again ([`crate::Store::unevict`]).
    #[error("document {collection}/{id} was evicted from this device; sync it again before editing it")]
    Evicted {
        /// The document's collection.
        collection: String,
        /// The document's id.
        id: String,
    },
    /// The attachment's bytes are not stored on this device (yet): fetch them from another device first.
    #[error("attachment {hash} is not in this store")]
    AttachmentNotFound {
        /// The attachment's BLAKE3 hash, as 64 hex digits.
        hash: String,
    },
    /// The attachment's stored or received bytes do not match its hash or length; they are not used.
    #[error("attachment {hash} is corrupt: {reason}")]
    AttachmentCorrupt {
        /// The attachment's BLAKE3 hash, as 64 hex digits.
        hash: String,
        /// What does not match.
        reason: String,
    },
    /// The database file holds data this build cannot make sense of (damaged, or edited by other software).
    #[error("the store's data is corrupt: {0}")]
    Corrupt(String),
    /// The database file was written by a newer release of Shoal; open it with that release or a later one.
    #[error("store schema version {found} is newer than this build supports ({supported})")]
    UnsupportedSchema {
        /// The schema version of the file.
        found: i64,
        /// The newest schema version this build reads.
        supported: i64,
    },
    /// The key given does not open the store's file ([`crate::Options::key`]): a wrong key, no key for an
    /// encrypted store, or a file that is not a database at all. The database and its WAL are left untouched (a WAL
    /// left by a crash gets its index, `-shm`, rebuilt: frame and page numbers only).
    #[error(
        "the store cannot be read with the key given: a wrong key, no key for an encrypted store, or not a database"
    )]
    WrongKey,
    /// A key was given ([`crate::Options::key`], [`crate::Store::change_key`]) for a store that is not encrypted;
    /// [`crate::Store::encrypt_file`] encrypts it. Nothing was written.
    #[error("the store is not encrypted: encrypt it first (Store::encrypt_file) or open it without a key")]
    NotEncrypted,
    /// A key was given but this build of Shoal cannot encrypt (built without the cargo feature `encryption`).
    /// Nothing was written: a store is never left unencrypted when a key was asked for.
    #[error("this build of Shoal cannot encrypt stores (cargo feature `encryption`)")]
    EncryptionUnavailable,
    /// The store's key vault ([`crate::Options::keys`]) could not be read or written, or holds something that is
    /// not a key. Nothing was written to the store.
    #[error("the key vault: {0}")]
    KeyVault(std::io::Error),
    /// A storage backend other than a device's SQLite failed (the cloud peer's PostgreSQL, behind the
    /// [`crate::Replica`] seam): a connection lost, a transaction refused. Nothing was written.
    #[error("storage backend: {0}")]
    Backend(Box<dyn std::error::Error + Send + Sync>),
    /// An index that cannot be declared: no paths, too many, a path SQLite cannot name (a key holding `"`, `\` or a
    /// control character), or more indexes than a store keeps ([`crate::store::MAX_INDEXES`]). Nothing was changed.
    #[error("invalid index: {0}")]
    InvalidIndex(String),
    /// A store key is not [`crate::store::StoreKey::LEN`] bytes long.
    #[error("a store key is 32 bytes, not {len}")]
    InvalidKey {
        /// The length given.
        len: usize,
    },
    /// The caller cancelled the operation before it was done (e.g. a write transaction's closure returned it after
    /// seeing its caller give up). A write that ends so changed nothing.
    #[error("cancelled")]
    Cancelled,
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
