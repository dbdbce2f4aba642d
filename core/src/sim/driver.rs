//! The one driver loop of every simulated world: a virtual clock, an event queue ordered by (time, sequence
//! number), and [`World`]'s provided methods — [`World::step`], [`World::run_for`], [`World::run_until`],
//! [`World::run_until_quiet`] — that [`super::SimWorld`] and [`super::RadioWorld`] both run on.

use super::device::Device;
use crate::security::DeviceKey;
use crate::store::Store;
use crate::sync::{Engine, EngineEvent, Subscription};
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;

/// One virtual millisecond, in the simulators' microseconds.
pub const MILLISECOND: u64 = 1_000;
/// One virtual second, in the simulators' microseconds.
pub const SECOND: u64 = 1_000_000;

/// The wall-clock reading of virtual time 0, in milliseconds since the Unix epoch (2026-01-01T00:00:00Z): the
/// stores of a world stamp their changes with virtual time from there ([`Timeline::wall_clock`]).
pub const EPOCH_MS: u64 = 1_767_225_600_000;

/// Events processed in a row at one instant before a world is declared stuck (a bug in its model would otherwise
/// loop forever without the clock moving).
const STUCK_AFTER: u64 = 1_000_000;

/// A world's `run_until_quiet` reached its time limit with work still pending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotQuiet {
    /// Virtual time when it gave up.
    pub now: u64,
    /// What was still going on.
    pub why: String,
}

impl std::fmt::Display for NotQuiet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not quiet at t={} µs: {}", self.now, self.why)
    }
}

impl std::error::Error for NotQuiet {}

/// How [`World::run_until_quiet`] looks for quiet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuietPoll {
    /// After every event: quiet is a state the world reaches and stays in (nothing queued).
    EveryEvent,
    /// Every so many microseconds of virtual time: the world never runs out of events (keepalives, scans), so
    /// quiet is a condition checked now and then.
    Every(u64),
}

/// What is queued: a world's own event, or a closure the test scheduled ([`World::schedule`]).
pub enum Entry<W: World> {
    /// The world's own event.
    Event(W::Event),
    /// A closure the test scheduled.
    Call(Box<dyn FnOnce(&mut W)>),
}

/// The virtual clock and event queue of a world. Events at the same time come in the order they were pushed, so a
/// run is a function of its seed.
pub struct Timeline<W: World> {
    seed: u64,
    now: u64,
    /// `now`, for the stores' clocks.
    shared_now: Arc<AtomicU64>,
    queue: EventQueue<Entry<W>>,
    events_processed: u64,
    same_time: u64,
}

impl<W: World> Timeline<W> {
    /// A timeline at time 0 of a world made from `seed` (named when a world is stuck).
    pub fn new(seed: u64) -> Timeline<W> {
        Timeline {
            seed,
            now: 0,
            shared_now: Arc::new(AtomicU64::new(0)),
            queue: EventQueue::new(),
            events_processed: 0,
            same_time: 0,
        }
    }

    /// A wall clock (milliseconds since the Unix epoch) that reads this timeline's virtual time, from [`EPOCH_MS`]:
    /// for the stores of the world ([`crate::util::sources::Sources::with_clock`]).
    pub fn wall_clock(&self) -> impl Fn() -> u64 + Send + Sync + 'static {
        let now = self.shared_now.clone();
        move || EPOCH_MS + now.load(AtomicOrdering::Relaxed) / MILLISECOND
    }

    /// Moves the clock to `time` (never backwards).
    fn advance_to(&mut self, time: u64) {
        if time > self.now {
            self.now = time;
            self.shared_now.store(time, AtomicOrdering::Relaxed);
        }
    }

    /// Virtual time, in microseconds.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Queues `event` at `time` (not before now).
    pub fn push(&mut self, time: u64, event: W::Event) {
        self.queue.push(time.max(self.now), Entry::Event(event));
    }

    /// How many events are queued.
    pub fn pending(&self) -> usize {
        self.queue.len()
    }

    /// Every queued event of the world's own, in no particular order.
    pub fn events(&self) -> impl Iterator<Item = &W::Event> {
        self.queue.iter().filter_map(|e| match e {
            Entry::Event(e) => Some(e),
            Entry::Call(_) => None,
        })
    }

    /// The next entry due at or before `deadline`, with the clock moved to its time.
    fn pop_due(&mut self, deadline: u64) -> Option<Entry<W>> {
        if !self.queue.due_by(deadline) {
            return None;
        }
        let (time, entry) = self.queue.pop()?;
        if time <= self.now {
            self.same_time += 1;
            assert!(self.same_time < STUCK_AFTER, "simulation stuck at t={} µs (seed {})", self.now, self.seed);
        } else {
            self.same_time = 0;
            self.advance_to(time);
        }
        self.events_processed += 1;
        Some(entry)
    }
}

/// A simulated world of devices, driven by one loop. Implement the required methods; call the provided ones.
pub trait World: Sized + 'static {
    /// The world's own events.
    type Event;
    /// How [`World::run_until_quiet`] looks for quiet.
    const QUIET_POLL: QuietPoll;

    /// The world's clock and queue.
    fn timeline(&self) -> &Timeline<Self>;
    /// The world's clock and queue, to change.
    fn timeline_mut(&mut self) -> &mut Timeline<Self>;
    /// Carries out one of the world's events (the clock reads its time).
    fn handle(&mut self, event: Self::Event);
    /// Lets every participant react to what just happened, until nothing moves (run before and after each event).
    fn settle(&mut self);
    /// What keeps the world from being quiet, if anything (see each world's documentation of quiet).
    fn quiet_check(&mut self) -> Result<(), String>;
    /// How many devices the world has (numbered from 0).
    fn device_count(&self) -> usize;
    /// Device `id`.
    fn device(&self, id: usize) -> &Device;
    /// Device `id`, to change.
    fn device_mut(&mut self, id: usize) -> &mut Device;
    /// Device `id` changed outside the world's own events (an edit, new subscriptions): it is offered a chance to
    /// send at the next step.
    fn touched(&mut self, id: usize);

    /// Device `id`'s name.
    fn name(&self, id: usize) -> &str {
        self.device(id).name()
    }

    /// Device `id`'s key.
    fn device_key(&self, id: usize) -> DeviceKey {
        self.device(id).key()
    }

    /// Device `id`'s store.
    fn store(&self, id: usize) -> &Store {
        self.device(id).store()
    }

    /// Device `id`'s sync engine.
    fn engine(&self, id: usize) -> &Engine {
        self.device(id).engine()
    }

    /// Device `id`'s engine, to change (subscriptions, attachments…); its links are offered a chance to send at the
    /// next step.
    fn engine_mut(&mut self, id: usize) -> &mut Engine {
        self.touched(id);
        &mut self.device_mut(id).engine
    }

    /// Edits device `id`'s store through `f` (any writes); its links are then offered a chance to send.
    fn edit<R>(&mut self, id: usize, f: impl FnOnce(&Store) -> R) -> R {
        let r = f(self.device(id).store());
        self.touched(id);
        self.settle();
        r
    }

    /// Changes device `id`'s subscriptions.
    fn set_subscriptions(&mut self, id: usize, subscriptions: Vec<Subscription>) {
        self.engine_mut(id).set_subscriptions(subscriptions);
        self.settle();
    }

    /// What device `id`'s engine reported since the last call, with the virtual time of each.
    fn take_events(&mut self, id: usize) -> Vec<(u64, EngineEvent)> {
        let now = self.now();
        self.device_mut(id).take_events(now)
    }

    /// Virtual time, in microseconds.
    fn now(&self) -> u64 {
        self.timeline().now
    }

    /// The seed every random choice of the world derives from.
    fn seed(&self) -> u64 {
        self.timeline().seed
    }

    /// The world's app authority, drawn from its seed: it enrols the devices added as enrolled, and a scenario
    /// issues revocation lists with it.
    fn authority(&self) -> crate::security::SigningKey {
        let seed = crate::util::rng::SeededRng::stream(self.seed(), 17 << 32).next_u64();
        crate::security::SigningKey::from_sources(&crate::util::sources::Sources::seeded(seed))
    }

    /// Hands `list` (from [`World::authority`]) to `device`, as an app would; returns whether it was new there.
    ///
    /// # Errors
    /// As [`Engine::add_revocations`].
    fn add_revocations(
        &mut self,
        device: usize,
        list: crate::security::RevocationList,
    ) -> Result<bool, crate::sync::SyncError> {
        self.engine_mut(device).add_revocations(list)
    }

    /// Events processed so far (a measure of the simulation's work).
    fn events_processed(&self) -> u64 {
        self.timeline().events_processed
    }

    /// Runs `f` at `now() + delay`.
    fn schedule(&mut self, delay: u64, f: impl FnOnce(&mut Self) + 'static) {
        let t = self.timeline_mut();
        let at = t.now.saturating_add(delay);
        t.queue.push(at, Entry::Call(Box::new(f)));
    }

    /// Processes the next event. Returns false when none is queued.
    fn step(&mut self) -> bool {
        self.step_by(u64::MAX)
    }

    /// Processes the next event if it is due at or before `deadline`; returns whether there was one.
    fn step_by(&mut self, deadline: u64) -> bool {
        self.settle();
        let Some(entry) = self.timeline_mut().pop_due(deadline) else { return false };
        match entry {
            Entry::Event(e) => self.handle(e),
            Entry::Call(f) => f(self),
        }
        self.settle();
        true
    }

    /// Runs every event due in the next `duration`; the clock then reads `now + duration`.
    fn run_for(&mut self, duration: u64) {
        let deadline = self.now().saturating_add(duration);
        while self.step_by(deadline) {}
        self.timeline_mut().advance_to(deadline);
    }

    /// Runs until `done(self)` holds (checked before and after every event) and returns the time it first held;
    /// `None` if it still does not after `max_duration` (the clock then reads `now + max_duration`).
    fn run_until(&mut self, mut done: impl FnMut(&Self) -> bool, max_duration: u64) -> Option<u64> {
        let deadline = self.now().saturating_add(max_duration);
        self.settle();
        if done(self) {
            return Some(self.now());
        }
        while self.step_by(deadline) {
            if done(self) {
                return Some(self.now());
            }
        }
        self.timeline_mut().advance_to(deadline);
        None
    }

    /// Runs until the world is quiet ([`World::quiet_check`], looked for as [`World::QUIET_POLL`] says) and returns
    /// the time; gives up after `max_duration` of virtual time.
    ///
    /// # Errors
    /// [`NotQuiet`] with what was still going on.
    fn run_until_quiet(&mut self, max_duration: u64) -> Result<u64, NotQuiet> {
        let deadline = self.now().saturating_add(max_duration);
        loop {
            match self.quiet_check() {
                Ok(()) => return Ok(self.now()),
                Err(why) if self.now() >= deadline => return Err(NotQuiet { now: self.now(), why }),
                Err(_) => match Self::QUIET_POLL {
                    QuietPoll::EveryEvent => {
                        if !self.step_by(deadline) {
                            self.timeline_mut().advance_to(deadline);
                        }
                    }
                    QuietPoll::Every(us) => self.run_for(us.min(deadline - self.now())),
                },
            }
        }
    }

    /// Whether the world is quiet now ([`World::quiet_check`]).
    fn is_quiet(&mut self) -> bool {
        self.quiet_check().is_ok()
    }
}

/// Events by virtual time; events at the same time come in the order they were pushed.
struct EventQueue<E> {
    next_seq: u64,
    heap: BinaryHeap<Reverse<Scheduled<E>>>,
}

struct Scheduled<E> {
    time: u64,
    seq: u64,
    event: E,
}

impl<E> PartialEq for Scheduled<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.seq) == (other.time, other.seq)
    }
}
impl<E> Eq for Scheduled<E> {}
impl<E> PartialOrd for Scheduled<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<E> Ord for Scheduled<E> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.time, self.seq).cmp(&(other.time, other.seq))
    }
}

impl<E> EventQueue<E> {
    fn new() -> Self {
        EventQueue { next_seq: 0, heap: BinaryHeap::new() }
    }

    fn push(&mut self, time: u64, event: E) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Reverse(Scheduled { time, seq, event }));
    }

    fn pop(&mut self) -> Option<(u64, E)> {
        self.heap.pop().map(|Reverse(s)| (s.time, s.event))
    }

    fn due_by(&self, deadline: u64) -> bool {
        self.heap.peek().is_some_and(|Reverse(s)| s.time <= deadline)
    }

    fn len(&self) -> usize {
        self.heap.len()
    }

    fn iter(&self) -> impl Iterator<Item = &E> {
        self.heap.iter().map(|Reverse(s)| &s.event)
    }
}
