//! Running the `async` calls off the caller's thread, and cancelling them.
//!
//! Every `async` call of the API runs its store work on the store's runtime (the blocking pool for SQLite), so the
//! foreign executor polling it never blocks. A call stops in either of two ways:
//! - the foreign future is dropped — what Kotlin does when the calling coroutine is cancelled (UniFFI frees the Rust
//!   future): [`Work`]'s drop raises the flag the work checks and aborts the task if it has not started;
//! - its [`Cancellation`] is cancelled — what the Swift layer does when the calling `Task` is cancelled (Swift's
//!   generated code awaits the future to the end, so it needs a token): the work sees it at its next check and
//!   the call returns what the work ended with — [`ShoalError::Cancelled`] when it stopped, its result when it
//!   was past its last check (a write already committing), so the caller learns whether the write happened. An
//!   async task (an attachment fetch) is dropped at once.
//!
//! Work that is not done yet when it is stopped: a write that has not begun does not begin, a batch of writes
//! stops between two of them and rolls back, a file being streamed stops, an attachment fetch is cancelled. A
//! write that is already committing finishes (whole), and a read already running finishes.

use crate::error::{guard, panic_message, ShoalError};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Cancels the `async` calls it is passed to (their `cancel` argument). Swift's `ShoalDB` layer passes one tied to
/// the calling `Task`, so cancelling the task cancels the call; in Kotlin, cancelling the calling coroutine does it
/// without one. Cancelled calls fail with `ShoalError.Cancelled`. One token may serve several calls; it cannot be
/// reset.
#[derive(uniffi::Object)]
pub struct Cancellation {
    cancelled: watch::Sender<bool>,
}

#[uniffi::export]
impl Cancellation {
    /// A token not cancelled yet.
    #[uniffi::constructor]
    pub fn new() -> Arc<Cancellation> {
        Arc::new(Cancellation { cancelled: watch::channel(false).0 })
    }

    /// Cancel every call given this token, now and later.
    pub fn cancel(&self) {
        self.cancelled.send_replace(true);
    }

    /// Whether `cancel` was called.
    pub fn is_cancelled(&self) -> bool {
        *self.cancelled.borrow()
    }
}

impl Cancellation {
    /// Resolves once the token is cancelled.
    async fn cancelled(&self) {
        let mut rx = self.cancelled.subscribe();
        // The sender lives as long as `self`, so waiting cannot fail.
        let _ = rx.wait_for(|c| *c).await;
    }
}

/// What running work checks to learn that its caller gave up.
#[derive(Clone)]
pub(crate) struct Check {
    dropped: Arc<AtomicBool>,
    token: Option<Arc<Cancellation>>,
}

impl Check {
    fn new(token: Option<Arc<Cancellation>>) -> Check {
        Check { dropped: Arc::new(AtomicBool::new(false)), token }
    }

    /// Whether the caller gave up.
    pub(crate) fn cancelled(&self) -> bool {
        self.dropped.load(Ordering::Acquire) || self.token.as_ref().is_some_and(|t| t.is_cancelled())
    }

    /// `Err(Cancelled)` once the caller gave up: the work's checkpoint.
    pub(crate) fn go_on(&self) -> Result<(), ShoalError> {
        if self.cancelled() {
            Err(ShoalError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// The same checkpoint inside a store transaction (whose closure returns the core's error).
    pub(crate) fn go_on_core(&self) -> shoaldb::Result<()> {
        if self.cancelled() {
            Err(shoaldb::Error::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Wraps a reader so that reading fails once the caller gave up (a file being streamed into the store).
    pub(crate) fn reader<R: std::io::Read>(&self, inner: R) -> CheckedRead<R> {
        CheckedRead { inner, check: self.clone() }
    }
}

/// A reader whose reads fail (an I/O error, "cancelled") once its caller gave up.
pub(crate) struct CheckedRead<R> {
    inner: R,
    check: Check,
}

impl<R: std::io::Read> std::io::Read for CheckedRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.check.cancelled() {
            return Err(std::io::Error::other("cancelled"));
        }
        self.inner.read(buf)
    }
}

/// A task of the store's runtime that stops when its caller does: dropping it raises the flag the work checks and
/// aborts the task (which then never starts if it has not yet).
struct Work<T> {
    task: JoinHandle<Result<T, ShoalError>>,
    dropped: Arc<AtomicBool>,
}

impl<T> Future for Work<T> {
    type Output = Result<T, ShoalError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.task).poll(cx).map(|joined| joined.unwrap_or_else(|e| Err(join_error(e))))
    }
}

impl<T> Drop for Work<T> {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::Release);
        self.task.abort();
    }
}

/// What a task of the store's runtime that did not finish means for its caller: a panic is `Internal`; a task
/// cancelled under a caller still waiting was aborted by the runtime shutting down (a caller's own cancellation
/// drops [`Work`], so nobody sees that error), so the store is `Closed`.
pub(crate) fn join_error(e: tokio::task::JoinError) -> ShoalError {
    if e.is_panic() {
        ShoalError::Internal(panic_message(&*e.into_panic()))
    } else {
        ShoalError::Closed
    }
}

/// Waits for async `work`, or returns `Cancelled` as soon as `token` is cancelled (dropping, so stopping, it).
async fn until_cancelled<T>(work: Work<T>, token: Option<Arc<Cancellation>>) -> Result<T, ShoalError> {
    match token {
        None => work.await,
        Some(token) => tokio::select! {
            biased;
            () = token.cancelled() => Err(ShoalError::Cancelled),
            r = work => r,
        },
    }
}

/// Runs blocking store work `f` on `handle`'s blocking pool, giving it the [`Check`] to consult in long loops.
/// Work still waiting for a thread when its caller gives up does not start.
pub(crate) async fn blocking<T: Send + 'static>(
    handle: &Handle,
    token: Option<Arc<Cancellation>>,
    f: impl FnOnce(&Check) -> Result<T, ShoalError> + Send + 'static,
) -> Result<T, ShoalError> {
    let check = Check::new(token);
    check.go_on()?;
    let dropped = check.dropped.clone();
    let task = handle.spawn_blocking(move || {
        guard(|| {
            check.go_on()?;
            f(&check)
        })
    });
    Work { task, dropped }.await
}

/// Runs async work `f` on `handle` (the store's runtime), stopped by dropping when its caller gives up.
pub(crate) async fn spawned<T: Send + 'static>(
    handle: &Handle,
    token: Option<Arc<Cancellation>>,
    f: impl Future<Output = Result<T, ShoalError>> + Send + 'static,
) -> Result<T, ShoalError> {
    if token.as_ref().is_some_and(|t| t.is_cancelled()) {
        return Err(ShoalError::Cancelled);
    }
    let task = handle.spawn(f);
    until_cancelled(Work { task, dropped: Arc::new(AtomicBool::new(false)) }, token).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime")
    }

    /// Work that counts steps until told to stop; returns how far it got.
    fn counting(steps: Arc<AtomicUsize>) -> impl FnOnce(&Check) -> Result<usize, ShoalError> + Send + 'static {
        move |check| loop {
            check.go_on()?;
            steps.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        for _ in 0..10_000 {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!("timed out waiting until {what}");
    }

    #[test]
    fn a_token_stops_the_work_at_its_next_check_and_the_call_returns_cancelled() {
        let rt = runtime();
        let token = Cancellation::new();
        let steps = Arc::new(AtomicUsize::new(0));
        let handle = rt.handle().clone();
        let (work, cancel) = (counting(steps.clone()), Some(token.clone()));
        let outcome = rt.block_on(async {
            let call = tokio::spawn(async move { blocking(&handle, cancel, work).await });
            let seen = steps.clone();
            tokio::task::spawn_blocking(move || wait_until("the work runs", || seen.load(Ordering::SeqCst) > 0))
                .await
                .expect("join");
            token.cancel();
            call.await.expect("join")
        });
        assert!(matches!(outcome, Err(ShoalError::Cancelled)), "{outcome:?}");
        let stopped = steps.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(steps.load(Ordering::SeqCst), stopped, "the work had stopped when the call returned");
        assert!(token.is_cancelled());
    }

    #[test]
    fn work_past_its_last_check_returns_its_result_to_a_cancelled_caller() {
        // As a write that is committing: the caller learns that it happened.
        let rt = runtime();
        let token = Cancellation::new();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let handle = rt.handle().clone();
        let cancel = Some(token.clone());
        let call = rt.spawn(async move {
            blocking(&handle, cancel, move |_| {
                let _ = started_tx.send(());
                let _ = go_rx.recv();
                Ok("committed")
            })
            .await
        });
        started_rx.recv().expect("the work started");
        token.cancel();
        go_tx.send(()).expect("release the work");
        let outcome = rt.block_on(call).expect("join");
        assert_eq!(outcome.ok(), Some("committed"));
    }

    #[test]
    fn dropping_the_call_stops_the_work() {
        let rt = runtime();
        let steps = Arc::new(AtomicUsize::new(0));
        let mut call = Box::pin(blocking(rt.handle(), None, counting(steps.clone())));
        // Poll once so that the work is spawned, then drop the future as a foreign executor does on cancel.
        let waker = std::task::Waker::noop();
        assert!(call.as_mut().poll(&mut Context::from_waker(waker)).is_pending());
        wait_until("the work runs", || steps.load(Ordering::SeqCst) > 0);
        drop(call);
        let stopped = steps.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
        assert!(steps.load(Ordering::SeqCst) <= stopped + 1, "the work stopped at its next check");
    }

    #[test]
    fn a_call_with_a_cancelled_token_never_starts() {
        let rt = runtime();
        let token = Cancellation::new();
        token.cancel();
        let started = Arc::new(AtomicBool::new(false));
        let seen = started.clone();
        let outcome = rt.block_on(blocking(rt.handle(), Some(token.clone()), move |_| {
            seen.store(true, Ordering::SeqCst);
            Ok(())
        }));
        assert!(matches!(outcome, Err(ShoalError::Cancelled)));
        let outcome = rt.block_on(spawned(rt.handle(), Some(token), async { Ok(()) }));
        assert!(matches!(outcome, Err(ShoalError::Cancelled)));
        assert!(!started.load(Ordering::SeqCst));
    }

    #[test]
    fn work_that_ends_first_returns_its_result() {
        let rt = runtime();
        let token = Cancellation::new();
        assert_eq!(rt.block_on(blocking(rt.handle(), Some(token.clone()), |_| Ok(7))).ok(), Some(7));
        assert_eq!(rt.block_on(spawned(rt.handle(), Some(token), async { Ok(8) })).ok(), Some(8));
        let outcome: Result<(), ShoalError> = rt.block_on(blocking(rt.handle(), None, |_| panic!("boom")));
        assert!(matches!(outcome, Err(ShoalError::Internal(m)) if m == "boom"));
    }
}
