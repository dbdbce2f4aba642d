//! Callbacks the app implements (foreign traits), and the handle that keeps one registered.

use crate::store::Peer;
use crate::values::ChangeEvent;
use shoaldb::util::lock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The error a callback may throw. Shoal logs it and carries on; it never reaches the operation that caused the
/// callback — except from a `KeyVault`, whose failure fails `Store.open` (`Storage`, with this reason). Any other
/// exception thrown by a callback is turned into this one.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum CallbackError {
    /// The callback failed.
    #[error("callback failed: {reason}")]
    Failed { reason: String },
}

impl From<uniffi::UnexpectedUniFFICallbackError> for CallbackError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> CallbackError {
        CallbackError::Failed { reason: e.reason }
    }
}

/// Receives the changes to an observed query (`Collection.observe`).
#[uniffi::export(foreign)]
pub trait CollectionObserver: Send + Sync {
    /// Called first with the current result (every document `inserted`), then once per committed transaction —
    /// local or from sync — that changes the result. Called on the thread that committed; return quickly.
    fn on_change(&self, event: ChangeEvent) -> Result<(), CallbackError>;
}

/// Receives the devices this device can reach (`Store.observePresence`).
#[uniffi::export(foreign)]
pub trait PresenceObserver: Send + Sync {
    /// Called first with the current list, then whenever a device appears, disappears or changes route. Called
    /// on one of the store's threads.
    fn on_presence(&self, peers: Vec<Peer>) -> Result<(), CallbackError>;
}

/// Receives the progress of an attachment fetch (`Store.fetchAttachment`).
#[uniffi::export(foreign)]
pub trait AttachmentProgress: Send + Sync {
    /// `done` of `total` bytes are here.
    fn on_progress(&self, done: u64, total: u64) -> Result<(), CallbackError>;
}

enum Registration {
    Observer(shoaldb::ObserverHandle),
    /// A task calling the observer; the flag is checked before each call.
    Task(tokio::task::AbortHandle, Arc<AtomicBool>),
}

/// Keeps an observer registered. Call `cancel` (or close it: it is `AutoCloseable` in Kotlin) to stop it; no
/// callback starts after `cancel` returns (one already running on another thread may finish).
#[derive(uniffi::Object)]
pub struct ObserverHandle {
    registration: Mutex<Option<Registration>>,
}

impl ObserverHandle {
    pub(crate) fn observer(h: shoaldb::ObserverHandle) -> ObserverHandle {
        ObserverHandle { registration: Mutex::new(Some(Registration::Observer(h))) }
    }

    pub(crate) fn task(h: tokio::task::AbortHandle, alive: Arc<AtomicBool>) -> ObserverHandle {
        ObserverHandle { registration: Mutex::new(Some(Registration::Task(h, alive))) }
    }
}

#[uniffi::export]
impl ObserverHandle {
    /// Stop observing. Calling it again does nothing.
    pub fn cancel(&self) {
        let taken = lock(&self.registration).take();
        match taken {
            Some(Registration::Observer(h)) => h.cancel(),
            Some(Registration::Task(h, alive)) => {
                alive.store(false, Ordering::Release);
                h.abort();
            }
            None => {}
        }
    }
}

impl Drop for ObserverHandle {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// Logs a failed callback (never propagated: the operation that triggered it already succeeded).
pub(crate) fn report(what: &str, r: Result<(), CallbackError>) {
    if let Err(e) = r {
        log::warn!("{what}: {e}");
    }
}
