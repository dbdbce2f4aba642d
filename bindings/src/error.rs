//! The one error of the foreign API, and the guard that turns a Rust panic into it.

use std::panic::{catch_unwind, AssertUnwindSafe};

/// Everything that can go wrong when calling Shoal. Kotlin sees `ShoalException.<Variant>`, Swift
/// `ShoalError.<Variant>`; the message says what happened in words meant for a developer. A failed call changes
/// nothing.
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum ShoalError {
    /// An argument was refused: malformed JSON, an invalid collection name, document id, path, query or address,
    /// an edit that does not fit the field's type (e.g. `increment` on text).
    #[error("{0}")]
    InvalidArgument(String),
    /// The document or attachment does not exist on this device.
    #[error("{0}")]
    NotFound(String),
    /// No reachable device could provide the attachment.
    #[error("{0}")]
    AttachmentUnavailable(String),
    /// The database file could not be read or written (disk full, permissions, corruption, newer schema).
    #[error("{0}")]
    Storage(String),
    /// The store's file is encrypted and the key given (`StoreConfig.key`) is not its key, or no key was given.
    /// Nothing was changed.
    #[error("{0}")]
    WrongKey(String),
    /// Sync could not start or failed (e.g. the listen address is taken).
    #[error("{0}")]
    Sync(String),
    /// Device identity: a certificate, certificate chain, enrolment request, grant or revocation list was
    /// refused (malformed, forged, not this device's, not from the pinned authority), or sync has neither a
    /// certificate nor an app secret to start with. The message says why.
    #[error("{0}")]
    Certificate(String),
    /// The device's certificate does not allow this write (the collection, a field, or the document: the message
    /// says which). Every other device would refuse it, so the store refuses it first; nothing was changed.
    #[error("{0}")]
    NotPermitted(String),
    /// The call was cancelled through its `Cancellation` (Swift: the calling `Task` was cancelled, and the Swift
    /// layer throws `CancellationError` instead; Kotlin callers see the coroutine's `CancellationException`). A
    /// call that ends with it changed nothing: a write that was already committing when cancelled finishes and
    /// returns its result.
    #[error("cancelled")]
    Cancelled,
    /// The store was closed; open it again.
    #[error("the store is closed")]
    Closed,
    /// A bug in Shoal (a Rust panic was caught). Please report it with the message.
    #[error("internal error in Shoal: {0}")]
    Internal(String),
}

impl From<shoaldb::Error> for ShoalError {
    fn from(e: shoaldb::Error) -> ShoalError {
        use shoaldb::Error as E;
        let msg = e.to_string();
        match e {
            E::Database(_)
            | E::Io(_)
            | E::Corrupt(_)
            | E::KeyVault(_)
            | E::Backend(_)
            | E::UnsupportedSchema { .. }
            | E::AttachmentCorrupt { .. }
            | E::EncryptionUnavailable => ShoalError::Storage(msg),
            E::WrongKey => ShoalError::WrongKey(msg),
            E::Cancelled => ShoalError::Cancelled,
            E::NotEncrypted | E::InvalidKey { .. } | E::InvalidIndex(_) => ShoalError::InvalidArgument(msg),
            E::NotFound { .. } | E::Evicted { .. } | E::AttachmentNotFound { .. } => ShoalError::NotFound(msg),
            E::NotPermitted { .. } => ShoalError::NotPermitted(msg),
            E::Document(_) | E::Path(_) | E::Change(_) | E::Query(_) | E::InvalidJson(_) | E::InvalidName { .. } => {
                ShoalError::InvalidArgument(msg)
            }
        }
    }
}

impl From<shoaldb::NodeError> for ShoalError {
    fn from(e: shoaldb::NodeError) -> ShoalError {
        use shoaldb::NodeError as E;
        match e {
            E::Store(inner) => inner.into(),
            E::AttachmentUnavailable { .. } => ShoalError::AttachmentUnavailable(e.to_string()),
            E::Identity(shoaldb::security::SecurityError::Certificate(inner)) => {
                ShoalError::Certificate(inner.to_string())
            }
            other => ShoalError::Sync(other.to_string()),
        }
    }
}

impl From<shoaldb::QueryError> for ShoalError {
    fn from(e: shoaldb::QueryError) -> ShoalError {
        ShoalError::InvalidArgument(e.to_string())
    }
}

/// Runs `f`, turning a panic into [`ShoalError::Internal`] so that it never unwinds into foreign code.
pub(crate) fn guard<T>(f: impl FnOnce() -> Result<T, ShoalError>) -> Result<T, ShoalError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| Err(ShoalError::Internal(panic_message(&*payload))))
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_internal_error() {
        let r: Result<(), ShoalError> = guard(|| panic!("boom {}", 7));
        match r {
            Err(ShoalError::Internal(m)) => assert_eq!(m, "boom 7"),
            other => panic!("expected Internal, got {other:?}"),
        }
        assert_eq!(guard(|| Ok(3)).ok(), Some(3));
    }

    #[test]
    fn core_errors_map_to_the_kind_an_app_handles() {
        let e: ShoalError = shoaldb::Error::NotFound { collection: "c".into(), id: "x".into() }.into();
        assert!(matches!(e, ShoalError::NotFound(ref m) if m == "document c/x not found"), "{e:?}");
        let e: ShoalError = shoaldb::Error::InvalidJson("eof".into()).into();
        assert!(matches!(e, ShoalError::InvalidArgument(_)), "{e:?}");
    }
}
