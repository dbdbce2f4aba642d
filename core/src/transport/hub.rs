//! The hub of a node: its sync [`Engine`], shared by the tasks of every transport (LAN connections, the Bluetooth
//! radio task), and what the engine's events mean for those tasks — which links must stop, who is present, which
//! devices are linked. Transport-neutral: a transport registers each link it opens ([`Hub::register`]) and watches
//! the [`LinkState`] it gets back; sockets, radios and their tables stay in the transport's own module.
//!
//! Every engine call goes through [`Hub::with_engine`]: it runs on tokio's blocking pool (engine calls read and
//! write SQLite), holds the engine's lock only for the call and the dispatch of the events it produced (so they are
//! published in order), then wakes the writers of the links the engine says may have something to send
//! ([`Engine::take_wakes`]) — not every writer, which with many links would cost the square of their number. No lock is ever held across an `.await`. Lock order: the engine, then the connection table
//! (the store's commit listener runs while the engine is locked and only bumps a watch channel).

use crate::security::DeviceKey;
use crate::sync::{AppliedJob, ApplyJob, Engine, EngineEvent, LinkId, PeerPresence, TransportKind};
use crate::util::lock;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::runtime::Handle;
use tokio::sync::{oneshot, watch, Notify};

/// Why an engine call could not run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HubError {
    /// The blocking task running the call panicked or was cancelled (a bug; the link is dropped).
    #[error("engine call failed: {0}")]
    Call(String),
}

/// One link of a transport, as the hub knows it.
pub(crate) struct LinkState {
    /// The transport that carries it.
    transport: TransportKind,
    /// The remote end as the transport names it (an IP address and port, a Bluetooth address), for logs.
    remote: Option<String>,
    /// Set to `true` when the connection must close; its reader and writer watch it.
    stop: watch::Sender<bool>,
    /// The first reason given for closing.
    reason: Mutex<Option<String>>,
    /// The link finished its handshake and the peer said hello (a watch, so that a transport can wait for it).
    synced: watch::Sender<bool>,
    /// The authenticated device and its name, once known.
    device: Mutex<Option<(DeviceKey, String)>>,
    /// Wakes the link's writer: the engine may have something to send on it ([`Engine::take_wakes`]).
    writer: Notify,
}

impl LinkState {
    fn new(transport: TransportKind, remote: Option<String>) -> LinkState {
        LinkState {
            transport,
            remote,
            stop: watch::Sender::new(false),
            reason: Mutex::new(None),
            synced: watch::Sender::new(false),
            device: Mutex::new(None),
            writer: Notify::new(),
        }
    }

    /// Resolves once the engine may have something to send on this link (at once if it was said since the last
    /// time this resolved).
    pub async fn writer_woken(&self) {
        self.writer.notified().await;
    }

    /// Ask the link's tasks to stop; the first reason is kept.
    pub fn stop(&self, reason: impl Into<String>) {
        let mut r = lock(&self.reason);
        if r.is_none() {
            *r = Some(reason.into());
        }
        drop(r);
        self.stop.send_replace(true);
    }

    /// Resolves once [`Connection::stop`] was called.
    pub async fn stopped(&self) {
        let mut rx = self.stop.subscribe();
        // The sender lives as long as `self`, so this only returns when stopped.
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Whether [`Connection::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Why the connection closed (for the engine's `remove_link`).
    pub fn reason(&self) -> String {
        lock(&self.reason).clone().unwrap_or_else(|| "connection closed".into())
    }

    /// Whether the link synced (handshake done, hello received).
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Resolves once the link synced (never, if it does not).
    pub async fn synced(&self) {
        let mut rx = self.synced.subscribe();
        // The sender lives as long as `self`, so this only returns once synced.
        let _ = rx.wait_for(|s| *s).await;
    }

    /// The authenticated device, once known.
    pub fn device(&self) -> Option<DeviceKey> {
        lock(&self.device).as_ref().map(|(d, _)| *d)
    }

    /// The device's name and key, for logs.
    fn describe(&self) -> Option<String> {
        lock(&self.device).as_ref().map(|(d, name)| format!("{name} ({d})"))
    }
}

/// What one engine call produced, collected under the engine's lock.
struct EventBatch {
    events: Vec<EngineEvent>,
    peers: Option<Vec<PeerPresence>>,
    linked: Option<BTreeSet<DeviceKey>>,
}

impl EventBatch {
    fn drain(engine: &mut Engine) -> EventBatch {
        let events: Vec<EngineEvent> = std::iter::from_fn(|| engine.poll_event()).collect();
        let presence = events.iter().any(|e| matches!(e, EngineEvent::PresenceChanged));
        let links = events.iter().any(|e| matches!(e, EngineEvent::LinkUp { .. } | EngineEvent::LinkDown { .. }));
        EventBatch {
            peers: presence.then(|| engine.presence().to_vec()),
            linked: links.then(|| engine.linked_devices()),
            events,
        }
    }
}

/// Until the node shuts down: tell the engine of each change of the store ([`Hub::wake_writers`]), which wakes
/// the writers of the links that send changes. A burst of changes is told once or twice, not once each.
async fn tell_store_news(hub: std::sync::Weak<Hub>, news: Arc<Notify>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            () = news.notified() => {}
        }
        let Some(hub) = hub.upgrade() else { return };
        if let Err(e) = hub.with_engine(Engine::note_store_changed).await {
            log::error!("telling the engine the store changed: {e}");
        }
    }
}

/// Counts running tasks so that shutdown can wait for all of them.
#[derive(Default)]
struct TaskCount {
    running: AtomicUsize,
    idle: Notify,
}

/// Decrements the count when the task ends (normally, by panic or by abort).
struct TaskGuard(Arc<Hub>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if self.0.tasks.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.tasks.idle.notify_waiters();
        }
    }
}

/// The engine and the state shared by every task of a node.
pub(crate) struct Hub {
    engine: Mutex<Engine>,
    device: DeviceKey,
    runtime: Handle,
    /// Bumped on any news (a frame was handled, the store changed, subscriptions changed), for the transports
    /// that watch the engine as a whole (the Bluetooth radio). The LAN's writers are woken one by one instead
    /// ([`LinkState::writer_woken`]).
    wake: watch::Sender<u64>,
    /// The store changed by another way than the engine's calls ([`Hub::wake_writers`]): a task tells the engine
    /// ([`Engine::note_store_changed`]), and wakes the writers of the links that send changes.
    store_news: Arc<Notify>,
    /// `true` once the node shuts down.
    shutdown: watch::Sender<bool>,
    presence: watch::Sender<Vec<PeerPresence>>,
    /// Devices with a synced link now.
    linked: watch::Sender<BTreeSet<DeviceKey>>,
    links: Mutex<HashMap<LinkId, Arc<LinkState>>>,
    tasks: TaskCount,
    /// The origin of the engine's clock ([`Hub::now_ms`]).
    origin: Instant,
    /// Attachment fetch progress and outcomes.
    fetches: tokio::sync::broadcast::Sender<crate::sync::FetchEvent>,
    /// Batches of changes waiting to be applied apart from the engine ([`Hub::apply`]).
    applier: Mutex<Applier>,
}

/// At most this many batches of changes (of different links) are applied at once ([`Hub::apply`]); batches that
/// arrive meanwhile wait, and are applied together by the next applier free.
pub const MAX_APPLIERS: usize = 4;

/// The most changes applied together ([`Hub::apply`]): more waiting are left to the next round (a batch of more
/// is applied alone).
pub const MAX_APPLIED_TOGETHER: usize = 4096;

/// The batches waiting for [`Hub::apply`], and how many appliers run.
#[derive(Default)]
struct Applier {
    queue: VecDeque<(ApplyJob, oneshot::Sender<AppliedJob>)>,
    running: usize,
}

/// Counts an applier out when it ends, however it ends.
struct ApplierRunning<'h>(&'h Mutex<Applier>);

impl Drop for ApplierRunning<'_> {
    fn drop(&mut self) {
        let mut a = lock(self.0);
        a.running = a.running.saturating_sub(1);
    }
}

impl Hub {
    /// A hub driving `engine` on `runtime`.
    pub fn new(engine: Engine, runtime: Handle) -> Arc<Hub> {
        let store_news = Arc::new(Notify::new());
        let hub = Arc::new(Hub {
            store_news: store_news.clone(),
            device: engine.device_key(),
            engine: Mutex::new(engine),
            runtime,
            wake: watch::Sender::new(0),
            shutdown: watch::Sender::new(false),
            presence: watch::Sender::new(Vec::new()),
            linked: watch::Sender::new(BTreeSet::new()),
            links: Mutex::new(HashMap::new()),
            tasks: TaskCount::default(),
            origin: Instant::now(),
            fetches: tokio::sync::broadcast::Sender::new(1024),
            applier: Mutex::default(),
        });
        hub.runtime.spawn(tell_store_news(Arc::downgrade(&hub), store_news, hub.shutdown.subscribe()));
        hub
    }

    /// This device's key.
    pub fn device(&self) -> DeviceKey {
        self.device
    }

    /// Milliseconds since the hub was created: the engine's clock (monotonic).
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The runtime the node's tasks run on.
    pub fn runtime(&self) -> &Handle {
        &self.runtime
    }

    /// Run `f` on the engine on the blocking pool, and dispatch the events it produced.
    pub async fn with_engine<R, F>(self: &Arc<Self>, f: F) -> Result<R, HubError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Engine) -> R + Send + 'static,
    {
        let hub = self.clone();
        self.runtime.spawn_blocking(move || hub.with_engine_now(f)).await.map_err(|e| HubError::Call(e.to_string()))
    }

    /// Run a call on the engine right here, and dispatch the events it produced. Only for cheap calls (no store
    /// access) from async code.
    ///
    /// Events are dispatched before the engine's lock is released, so that they are published in the order the
    /// engine produced them (presence and links are never replaced by an older state).
    ///
    /// Then the writers of the links that may have something to send now are woken ([`Engine::take_wakes`]).
    pub fn with_engine_now<R>(&self, f: impl FnOnce(&mut Engine) -> R) -> R {
        let mut engine = lock(&self.engine);
        let r = f(&mut engine);
        let batch = EventBatch::drain(&mut engine);
        self.dispatch(batch);
        let wakes = engine.take_wakes();
        drop(engine);
        self.wake_links(&wakes);
        r
    }

    fn dispatch(&self, batch: EventBatch) {
        for event in batch.events {
            match event {
                EngineEvent::LinkUp { link, device, name, transport } => {
                    let conn = self.link(link);
                    let addr =
                        conn.as_ref().and_then(|c| c.remote.as_ref()).map(|a| format!(" at {a}")).unwrap_or_default();
                    log::info!("peer up: {name} ({device}) over {transport}{addr}");
                    if let Some(c) = conn {
                        *lock(&c.device) = Some((device, name));
                        c.synced.send_replace(true);
                    }
                }
                EngineEvent::LinkDown { link, device, reason } => {
                    let conn = self.link(link);
                    match conn.as_ref().filter(|c| c.is_synced()).and_then(|c| c.describe()) {
                        Some(who) => log::info!("peer down: {who}: {reason}"),
                        None => log::debug!(
                            "link {link} down ({}): {reason}",
                            device.map(|d| d.to_string()).unwrap_or_else(|| "unauthenticated".into())
                        ),
                    }
                    if let Some(c) = conn {
                        c.stop(reason);
                    }
                }
                EngineEvent::PresenceChanged => {}
                EngineEvent::Applied { link, applied } => log::debug!("link {link}: applied {applied} changes"),
                // Each refusal was logged (warn) where it was decided.
                EngineEvent::Refused { .. } => {}
                EngineEvent::Fetch(f) => {
                    // Nobody listening is fine: fetches started by request rows are followed by polling.
                    let _ = self.fetches.send(f);
                }
            }
        }
        if let Some(peers) = batch.peers {
            self.presence.send_replace(peers);
        }
        if let Some(linked) = batch.linked {
            self.linked.send_if_modified(|now| {
                let changed = *now != linked;
                *now = linked;
                changed
            });
        }
    }

    /// Attachment fetch events, from now on.
    pub fn fetch_events(&self) -> tokio::sync::broadcast::Receiver<crate::sync::FetchEvent> {
        self.fetches.subscribe()
    }

    /// Apply a batch of changes received on a link apart from the engine ([`Engine::take_apply`]), on tokio's
    /// blocking pool; the result is for [`Engine::finish_apply`]. With many links (a server), batches that arrive
    /// while [`MAX_APPLIERS`] are being applied wait and are then applied together ([`ApplyJob::run_all`]: one
    /// transaction for all of them on a server's replica) — a relay of many devices commits once per round, not
    /// once per device. `None` if the node is going away.
    pub async fn apply(self: &Arc<Self>, job: ApplyJob) -> Option<AppliedJob> {
        let (done, result) = oneshot::channel();
        let start = {
            let mut a = lock(&self.applier);
            a.queue.push_back((job, done));
            let start = a.running < MAX_APPLIERS;
            if start {
                a.running += 1;
            }
            start
        };
        if start {
            let hub = self.clone();
            self.runtime.spawn_blocking(move || hub.run_applier());
        }
        result.await.ok()
    }

    /// An applier: applies what waits, together, until nothing does.
    fn run_applier(&self) {
        let _running = ApplierRunning(&self.applier);
        loop {
            let (jobs, senders): (Vec<ApplyJob>, Vec<oneshot::Sender<AppliedJob>>) = {
                let mut a = lock(&self.applier);
                let mut taken = Vec::new();
                let mut changes = 0;
                while let Some((job, _)) = a.queue.front() {
                    if !taken.is_empty() && changes + job.len() > MAX_APPLIED_TOGETHER {
                        break;
                    }
                    changes += job.len();
                    taken.extend(a.queue.pop_front());
                }
                if taken.is_empty() {
                    return;
                }
                taken.into_iter().unzip()
            };
            for (done, sender) in ApplyJob::run_all(jobs).into_iter().zip(senders) {
                // (A link gone meanwhile no longer waits for it.)
                let _ = sender.send(done);
            }
        }
    }

    /// Wake the writers of `links` (after the engine call that reported them: [`Engine::take_wakes`]).
    fn wake_links(&self, links: &[LinkId]) {
        if links.is_empty() {
            return;
        }
        let table = lock(&self.links);
        for link in links {
            if let Some(l) = table.get(link) {
                l.writer.notify_one();
            }
        }
    }

    /// Tell the transports that watch the engine as a whole (the Bluetooth radio) that something happened.
    pub fn nudge(&self) {
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The store changed (a commit, another process's write) or the engine's state did: wake the writers of the
    /// links that may have something to send now. Never blocks (the store's commit listener calls it with the
    /// engine locked): the engine is asked by a task of the hub.
    pub fn wake_writers(&self) {
        self.store_news.notify_one();
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that changes whenever [`Hub::wake_writers`] or [`Hub::nudge`] is called.
    pub fn wake_receiver(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }

    /// The devices reachable now, and their changes.
    pub fn presence(&self) -> watch::Receiver<Vec<PeerPresence>> {
        self.presence.subscribe()
    }

    /// The devices with a synced link now, and their changes.
    pub fn linked(&self) -> watch::Receiver<BTreeSet<DeviceKey>> {
        self.linked.subscribe()
    }

    /// Track a new link of `transport` (to `remote`, as the transport names it).
    pub fn register(&self, link: LinkId, transport: TransportKind, remote: Option<String>) -> Arc<LinkState> {
        let conn = Arc::new(LinkState::new(transport, remote));
        lock(&self.links).insert(link, conn.clone());
        if self.is_shutting_down() {
            conn.stop("shutting down");
        }
        conn
    }

    /// Forget a link that ended.
    pub fn unregister(&self, link: LinkId) {
        lock(&self.links).remove(&link);
    }

    fn link(&self, link: LinkId) -> Option<Arc<LinkState>> {
        lock(&self.links).get(&link).cloned()
    }

    /// How many links of `transport` are open.
    pub fn link_count(&self, transport: TransportKind) -> usize {
        lock(&self.links).values().filter(|l| l.transport == transport).count()
    }

    /// Spawn a task that shutdown waits for.
    pub fn spawn(self: &Arc<Self>, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.running.fetch_add(1, Ordering::AcqRel);
        let guard = TaskGuard(self.clone());
        self.runtime.spawn(async move {
            let _guard = guard;
            fut.await;
        });
    }

    /// Tell every task to stop: listeners, dialers, connections.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
        let conns: Vec<Arc<LinkState>> = lock(&self.links).values().cloned().collect();
        for c in conns {
            c.stop("shutting down");
        }
    }

    /// Whether the node is shutting down.
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Resolves once the node shuts down.
    pub async fn shutting_down(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Resolves once every task spawned with [`Hub::spawn`] has ended.
    pub async fn tasks_done(&self) {
        loop {
            let idle = self.tasks.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.tasks.running.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}
