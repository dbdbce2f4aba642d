//! Values whose drop blocks, kept off the async runtime's threads.

/// A value whose drop blocks — a pool of blocking PostgreSQL connections: closing one runs a runtime of its own,
/// which must not happen on a thread that drives async tasks. When it is dropped on such a thread (the last owner
/// may go anywhere), it is dropped on a thread of its own instead.
pub(crate) struct OffRuntime<T: Send + 'static>(Option<T>);

impl<T: Send + 'static> OffRuntime<T> {
    pub(crate) fn new(value: T) -> OffRuntime<T> {
        OffRuntime(Some(value))
    }

    /// The value; `None` only while it is being dropped.
    pub(crate) fn get(&self) -> Option<&T> {
        self.0.as_ref()
    }
}

impl<T: Send + 'static> Drop for OffRuntime<T> {
    fn drop(&mut self) {
        if let Some(value) = self.0.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                let _ = std::thread::Builder::new().name("shoal-cloud-close".into()).spawn(move || drop(value));
            }
        }
    }
}
