//! A device's sync engine, without I/O: every link's secure channel and session, what the device carries for its
//! neighbours, and presence. A transport (TCP, BLE, the simulator) only moves frames in and out:
//!
//! ```text
//! add_link → on_frame(link, bytes)* → poll_frame(link) → … → remove_link
//!     tick(now) about once a second; poll_event() for what happened
//!     (after a commit, poll_frame again: each call finds what the peer lacks from the store itself)
//! ```
//!
//! **Multi-hop.** The interest a device declares to a neighbour is its own subscriptions plus those of its other
//! neighbours, so a device in the middle fetches — and stores — what the devices beyond it want, and passes it on
//! (store-and-forward). A line A–B–C–D converges even though A and D never meet, and even when B and C subscribe to
//! nothing themselves. (In a mesh with cycles, a subscription can keep circulating after the device that made it has
//! left, until the cycle is broken; the cost is only data carried, never correctness.)
//!
//! **One link per pair and transport.** When two devices end up with two links over the same transport (both
//! dialled), both keep the one dialled by the device with the smaller key and close the other.
//!
//! **Transport choice.** Two devices linked over several transports (the LAN and Bluetooth LE) keep every link, but
//! only the one over the preferred transport ([`TransportKind::preference`]) carries data; the others are on
//! standby — authenticated, kept alive, exchanging presence — and take over when it goes (see
//! [`Session::set_standby`] for why no change is lost or applied twice in the switch).
//!
//! **Presence.** Each device floods a record of its direct links (with a sequence number) through the mesh; every
//! device computes who is reachable, in how many hops and over which transport from the breadth-first search of
//! those records. Records are not signed (yet): a record expires [`PRESENCE_TTL_MS`] after it arrived unless its
//! device floods it again (every [`PRESENCE_REFRESH_MS`]); a sequence number is the wall clock in ms and one too far
//! ahead ([`PRESENCE_MAX_AHEAD_MS`]) is refused; a device is believed about itself over a direct link; at most
//! [`MAX_PRESENCE_RECORDS`] are kept. A forged record lasts at most as long as its forger keeps sending it.
//!
//! **Many links** (a relay serving many devices). A transport may have received changes applied apart from the
//! engine ([`Engine::on_frame_deferring`], [`ApplyJob`]): batches of several links then reach the store at once,
//! while the engine serves the others. After each call it asks which links may have something to send
//! ([`Engine::take_wakes`]) and wakes only those. A device with more than [`PACED_FLOOD_LINKS`] links floods its own
//! presence record, and sends others' records, at ticks; one that knows of more than [`PACED_PRESENCE_DEVICES`]
//! devices works out who is reachable at ticks too: otherwise each of these would cost the square (or the cube)
//! of the number of devices.
//!
//! **Bounds.** Links whose handshake does not finish within [`HANDSHAKE_TIMEOUT_MS`] are closed; messages in
//! reassembly share a node-wide budget ([`REASSEMBLY_FREE_BYTES`] per link, [`REASSEMBLY_SHARED_BYTES`] for all);
//! a peer that stops reading is disconnected ([`SyncError::NotReading`]); the interest sent to a neighbour is
//! always one it accepts ([`bounded_interest`]).

use super::attachments::{Attachments, FetchEvent, FetchId};
use super::link::LinkCodec;
use super::session::{Handled, ReceivedChanges, Session, SessionStats};
use super::wire::{
    bounded_interest, bounded_interest_of, Message, PresenceLink, Subscription, TransportKind, MAX_MESSAGE_BYTES,
    MAX_PRESENCE_LINKS,
};
use super::SyncError;
use crate::security::authorship::{apply_received_batches, Checks};
use crate::security::{
    Access, CertificateError, DeviceKey, Enrolment, Identity, PresenceSignature, RevocationList, SecurityError, Signers,
};
use crate::store::Replica;
use crate::util::sources::Sources;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// A link's number within one engine.
pub type LinkId = u64;

/// What the engine reports.
#[derive(Clone, Debug, PartialEq)]
pub enum EngineEvent {
    /// A link finished its handshake and started syncing.
    LinkUp {
        /// The link, as [`Engine::add_link`] numbered it.
        link: LinkId,
        /// The device at the other end, authenticated by the handshake.
        device: DeviceKey,
        /// The name that device gave itself.
        name: String,
        /// What carries the link.
        transport: TransportKind,
    },
    /// A link was closed by the engine (error, duplicate) — the transport should drop it — or removed.
    LinkDown {
        /// The link, as [`Engine::add_link`] numbered it.
        link: LinkId,
        /// The device at the other end; `None` if the link closed before the handshake authenticated it.
        device: Option<DeviceKey>,
        /// Why, in words (for logs).
        reason: String,
    },
    /// The set of reachable devices changed (see [`Engine::peers`]).
    PresenceChanged,
    /// Changes from a peer were applied to the store.
    Applied {
        /// The link they came over.
        link: LinkId,
        /// How many changes are now part of the store (duplicates and changes still waiting for their dependencies
        /// are not counted).
        applied: usize,
    },
    /// Changes from a peer were refused by the checks of certificate mode (see
    /// [`crate::security::authorship`]): unsigned, forged, revoked, or not permitted to their author. The others of
    /// their batch were applied.
    Refused {
        /// The link they came over.
        link: LinkId,
        /// Each refused change and why (at most [`MAX_REPORTED_REFUSALS`](crate::store::MAX_REPORTED_REFUSALS)
        /// per batch).
        refusals: Vec<crate::security::Refused>,
    },
    /// Progress or outcome of an attachment fetch ([`Engine::fetch_attachment`]).
    Fetch(FetchEvent),
}

/// A device reachable now, directly or through others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerPresence {
    /// The device's key, its stable identity.
    pub device: DeviceKey,
    /// The name the device gave itself.
    pub name: String,
    /// 1 for a direct link.
    pub hops: u32,
    /// The transport of the first hop (for a direct link, the one carrying the data).
    pub transport: TransportKind,
    /// Every transport this device is linked to it by directly, preferred first (empty when it is reached through
    /// others).
    pub direct: Vec<TransportKind>,
}

struct Slot {
    codec: LinkCodec,
    transport: TransportKind,
    initiator: bool,
    session: Option<Session>,
    device: Option<DeviceKey>,
    name: String,
    /// The peer's hello arrived (later ones are ignored).
    greeted: bool,
    closed: bool,
    /// When (engine time, ms) the link was opened, a frame last arrived, and a message was last queued.
    opened: u64,
    last_rx: u64,
    last_tx: u64,
    /// The transport applies received changes apart ([`Engine::on_frame_deferring`]).
    defer_applies: bool,
    /// Received changes to be applied apart: waiting for [`Engine::take_apply`] (`Some(Some(_))`) or being
    /// applied (`Some(None)`).
    applying: Option<Option<ApplyJob>>,
    /// Messages received after those changes, handled once they are applied (in order).
    inbox: VecDeque<Message>,
    /// The link was reported by [`Engine::take_wakes`] and has not been polled since.
    wake_pending: bool,
}

/// A batch of changes received on a link, to be applied to the replica apart from the engine (without the lock
/// that guards it), so that batches of several links are applied at once; see [`Engine::on_frame_deferring`].
pub struct ApplyJob {
    link: LinkId,
    replica: Arc<dyn Replica>,
    /// Certificate mode: what the changes are checked with (as the engine held it when they arrived).
    checks: Option<(Arc<Signers>, Arc<Enrolment>)>,
    received: ReceivedChanges,
}

impl std::fmt::Debug for ApplyJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApplyJob").field("link", &self.link).field("changes", &self.received.len()).finish()
    }
}

impl ApplyJob {
    /// The link the changes came over.
    pub fn link(&self) -> LinkId {
        self.link
    }

    /// How many changes the batch holds.
    pub fn len(&self) -> usize {
        self.received.len()
    }

    /// Whether the batch holds no change.
    pub fn is_empty(&self) -> bool {
        self.received.len() == 0
    }

    /// Apply the changes to the replica (checked as the engine checks them), for [`Engine::finish_apply`]. Reads
    /// and writes the replica, and nothing of the engine.
    pub fn run(self) -> AppliedJob {
        let mut done = ApplyJob::run_all(vec![self]);
        done.pop().unwrap_or_else(|| unreachable!("one job gives one result"))
    }

    /// [`ApplyJob::run`] for the batches of several links at once, one result each in the same order: those of
    /// one replica checked alike are applied together ([`Replica::apply_batches`]: a server's replica commits
    /// them in one transaction).
    pub fn run_all(jobs: Vec<ApplyJob>) -> Vec<AppliedJob> {
        let mut slots: Vec<Option<AppliedJob>> = jobs.iter().map(|_| None).collect();
        let mut jobs: Vec<(usize, ApplyJob)> = jobs.into_iter().enumerate().collect();
        while let Some((_, first)) = jobs.first() {
            let (replica, shared) = (first.replica.clone(), first.checks.clone());
            // The jobs applied like the first: the same replica, the same checks.
            let alike = |j: &ApplyJob| {
                Arc::ptr_eq(&j.replica, &replica)
                    && match (&j.checks, &shared) {
                        (None, None) => true,
                        (Some((s1, e1)), Some((s2, e2))) => Arc::ptr_eq(s1, s2) && Arc::ptr_eq(e1, e2),
                        _ => false,
                    }
            };
            let (group, rest): (Vec<_>, Vec<_>) = jobs.into_iter().partition(|(_, j)| alike(j));
            jobs = rest;
            let checks = shared.as_ref().map(|(signers, enrolment)| Checks { signers, enrolment });
            let mut batches = Vec::with_capacity(group.len());
            let mut pending = Vec::with_capacity(group.len());
            for (at, mut job) in group {
                // Documents whose first copy is not whole yet are held aside (`first_copy`).
                match job.received.take_ready(&*replica) {
                    Ok(batch) => {
                        batches.push(batch);
                        pending.push((at, job));
                    }
                    Err(e) => {
                        slots[at] = Some(AppliedJob { link: job.link, received: job.received, report: Err(e.into()) })
                    }
                }
            }
            let reports = apply_received_batches(checks, &*replica, batches);
            let mut reports = reports.into_iter();
            for (at, job) in pending {
                let report = reports
                    .next()
                    .unwrap_or_else(|| Err(crate::Error::Corrupt("a batch applied gave no report".into())))
                    .map_err(SyncError::from);
                slots[at] = Some(AppliedJob { link: job.link, received: job.received, report });
            }
        }
        slots.into_iter().flatten().collect()
    }
}

/// An [`ApplyJob`] that ran: what [`Engine::finish_apply`] takes.
pub struct AppliedJob {
    link: LinkId,
    received: ReceivedChanges,
    report: Result<crate::store::ApplyReport, SyncError>,
}

impl std::fmt::Debug for AppliedJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppliedJob").field("link", &self.link).field("report", &self.report).finish()
    }
}

/// A link on which nothing arrived for this long (ms) is closed as dead (keepalives keep live links talking).
pub const LINK_TIMEOUT_MS: u64 = 20_000;
/// A synced link with nothing to say for this long (ms) sends a keepalive.
pub const KEEPALIVE_MS: u64 = 5_000;
/// A link whose handshake has not finished this long (ms) after it opened is closed: a connection that does not
/// prove it holds the app secret holds a slot only briefly (a handshake takes two round trips, well under a second
/// even over Bluetooth LE).
pub const HANDSHAKE_TIMEOUT_MS: u64 = 5_000;

/// Bytes a link may reassemble of one message on its own (a batch of changes is about
/// [`BATCH_BYTES`](super::wire::BATCH_BYTES)).
pub const REASSEMBLY_FREE_BYTES: usize = 1 << 20;
/// Bytes all links together may reassemble beyond their [`REASSEMBLY_FREE_BYTES`] each: one message of up to
/// [`MAX_MESSAGE_BYTES`] (a large change) at a time. A link whose message would go over is closed (its peer may
/// retry later): the memory held by messages in reassembly is at most `links × REASSEMBLY_FREE_BYTES +
/// REASSEMBLY_SHARED_BYTES`, whatever the peers send.
pub const REASSEMBLY_SHARED_BYTES: usize = MAX_MESSAGE_BYTES;

/// A presence record not renewed for this long (ms, engine time since it arrived) is dropped: a device that left
/// (or never existed) disappears, and a forged record stops counting.
pub const PRESENCE_TTL_MS: u64 = 60_000;
/// Every device floods its own presence record again this often (ms), well within [`PRESENCE_TTL_MS`].
pub const PRESENCE_REFRESH_MS: u64 = 20_000;
/// Presence sequence numbers are the wall clock in ms (plus one per record when records come faster). A record
/// whose number is further ahead of this device's wall clock than this (ms) is refused, so that a forged number
/// (`u64::MAX`) cannot freeze a device's presence; a device whose clock is more than that ahead is seen only by
/// its direct neighbours.
pub const PRESENCE_MAX_AHEAD_MS: u64 = 60 * 60 * 1000;
/// The most presence records kept (devices of the mesh); past it, the least recently received one is dropped.
pub const MAX_PRESENCE_RECORDS: usize = 1024;

#[derive(Clone, Debug)]
struct Record {
    seq: u64,
    name: String,
    links: Vec<PresenceLink>,
    /// The origin's signature (certificate mode), flooded with the record.
    signature: Option<crate::security::PresenceSignature>,
    /// When it arrived (engine time, ms).
    received: u64,
}

/// The sync engine of one device.
pub struct Engine {
    /// The device's data, as sync sees it.
    replica: Arc<dyn Replica>,
    identity: Identity,
    access: Access,
    name: String,
    key: DeviceKey,
    own_subscriptions: Vec<Subscription>,
    links: BTreeMap<LinkId, Slot>,
    next_link: LinkId,
    records: BTreeMap<DeviceKey, Record>,
    own_seq: u64,
    /// When this device last flooded its own record (engine time, ms).
    own_flooded: u64,
    last_peers: Vec<PeerPresence>,
    events: VecDeque<EngineEvent>,
    attachments: Attachments,
    /// The time given to the last [`Engine::tick`], in ms.
    now: u64,
    /// Where the handshakes' ephemeral keys come from ([`Engine::with_sources`]).
    sources: Sources,
    /// When the links' certificates were last checked again (engine time, ms).
    rechecked: u64,
    /// Certificate mode: the stable frontier kept (issue 17), sent on every new link. Read from the replica as
    /// each link comes up and at each recheck (not in `new`: a replica may not be read from the async context that
    /// builds the engine).
    frontier: Option<crate::security::StableFrontier>,
    /// Certificate mode: the signers whose changes this device has checked (see [`crate::security::authorship`]).
    signers: Arc<Signers>,
    /// Certificate mode: the enrolment as it is now, shared with the batches applied apart ([`ApplyJob`]); made
    /// again when revocations change it.
    shared_enrolment: Option<Arc<Enrolment>>,
    /// The replica changed since [`Engine::take_wakes`] last ran: every link that sends changes may have some.
    store_changed: bool,
    /// Links that received something since [`Engine::take_wakes`] last ran (they may have something to say).
    poked: BTreeSet<LinkId>,
    /// Who is reachable may have changed: checked (and [`EngineEvent::PresenceChanged`] raised) when the events
    /// are read, once for all that happened since.
    presence_dirty: bool,
    /// When (engine time, ms) who is reachable was last worked out at a tick.
    presence_settled: u64,
    /// A tick came since [`Engine::take_wakes`] last ran.
    ticked: bool,
    /// This device's own record is to be flooded again at a later tick (a device with many links floods it less
    /// often: see [`PACED_FLOOD_LINKS`]).
    own_flood_due: bool,
}

/// A device with more links than this (a server: a device holds [`MAX_CONNECTIONS`](crate::transport::lan::MAX_CONNECTIONS)
/// at most) floods its own presence record at a tick rather than on every change of its links, and at most once a
/// second per this many links (every 15 s with 1,000 links; at least every [`PRESENCE_REFRESH_MS`]): the record
/// lists every link and goes to every link, so flooding it on each of `n` links coming up would cost `n³` bytes,
/// and every second, `n²` bytes a second.
pub const PACED_FLOOD_LINKS: usize = 64;

/// A device that knows of more links and presence records than this works out who is reachable (an
/// [`EngineEvent::PresenceChanged`]) at a tick rather than after every record or link that changes it, and at
/// most once a second per this many devices it knows of (about every 8 s for 1,000): that costs in proportion to
/// the devices known, so doing it for every record of a mesh of `n` devices would cost `n²` (a relay with many
/// devices, and each of them, hear of every device), and doing it every second on each of them, `n²` per second.
pub const PACED_PRESENCE_DEVICES: usize = 128;

/// How often the certificates of open links are checked again (they may expire while a link is up).
pub const RECHECK_MS: u64 = 60_000;

impl Engine {
    /// `seq_base` starts the presence sequence numbers (use the wall clock in ms, so a restarted device's records
    /// replace its old ones); they follow the wall clock of the engine's [`Sources`] from then on.
    pub fn new(
        replica: impl Replica,
        identity: Identity,
        access: impl Into<Access>,
        name: &str,
        subscriptions: Vec<Subscription>,
        seq_base: u64,
    ) -> Engine {
        let key = DeviceKey(identity.public_key());
        Engine {
            frontier: None,
            replica: Arc::new(replica),
            identity,
            access: access.into(),
            name: name.to_string(),
            key,
            own_subscriptions: bounded_interest(subscriptions),
            links: BTreeMap::new(),
            next_link: 1,
            records: BTreeMap::new(),
            own_seq: seq_base,
            own_flooded: 0,
            last_peers: Vec::new(),
            events: VecDeque::new(),
            attachments: Attachments::default(),
            now: 0,
            sources: Sources::system(),
            rechecked: 0,
            signers: Arc::default(),
            shared_enrolment: None,
            store_changed: false,
            poked: BTreeSet::new(),
            presence_dirty: false,
            presence_settled: 0,
            ticked: false,
            own_flood_due: false,
        }
    }

    /// The same engine, with its links' handshakes drawing their ephemeral keys from `sources` (the operating
    /// system by default). Only a simulation seeds them, so that a seed replays every byte on the wire.
    pub fn with_sources(mut self, sources: Sources) -> Engine {
        self.sources = sources;
        self
    }

    /// This device's key.
    pub fn device_key(&self) -> DeviceKey {
        self.key
    }

    /// The device's data, as sync sees it.
    pub fn replica(&self) -> &dyn Replica {
        &*self.replica
    }

    /// Open a link; the side that dialled is the `initiator`. Its first frames (handshake) are ready at once.
    pub fn add_link(&mut self, transport: TransportKind, initiator: bool) -> Result<LinkId, SyncError> {
        let codec = LinkCodec::new(initiator, &self.identity, &self.access, &self.sources)?;
        let id = self.next_link;
        self.next_link += 1;
        let now = self.now;
        self.links.insert(
            id,
            Slot {
                codec,
                transport,
                initiator,
                session: None,
                device: None,
                name: String::new(),
                greeted: false,
                closed: false,
                opened: now,
                last_rx: now,
                last_tx: now,
                defer_applies: false,
                applying: None,
                inbox: VecDeque::new(),
                wake_pending: false,
            },
        );
        log::debug!("link {id} opened ({transport}, {})", if initiator { "dialled" } else { "accepted" });
        Ok(id)
    }

    /// The transport dropped a link.
    pub fn remove_link(&mut self, link: LinkId, reason: &str) {
        self.poked.remove(&link);
        if let Some(slot) = self.links.remove(&link) {
            if !slot.closed {
                self.events.push_back(EngineEvent::LinkDown { link, device: slot.device, reason: reason.to_string() });
            }
            if slot.session.is_some() {
                self.carrier_lost(slot.device);
                self.links_changed();
            }
            self.attachments_link_down(link);
        }
    }

    /// A link to `device` went: another one may have to carry the data now.
    fn carrier_lost(&mut self, device: Option<DeviceKey>) {
        if let Some(device) = device {
            if let Err(e) = self.choose_carrier(device) {
                log::warn!("could not switch the link to {device}: {e}");
            }
        }
    }

    /// The links that carry data (not on standby), for attachment fetches.
    /// The links that sync (not on standby), over the preferred transports first ([`TransportKind::preference`]):
    /// attachments are asked for in this order.
    fn synced_links(&self) -> Vec<LinkId> {
        let mut links: Vec<(u8, LinkId)> = self
            .links
            .iter()
            .filter(|(_, s)| !s.closed && s.session.as_ref().is_some_and(|x| !x.is_standby()))
            .map(|(id, s)| (s.transport.preference(), *id))
            .collect();
        links.sort_unstable();
        links.into_iter().map(|(_, id)| id).collect()
    }

    /// Of the links to `device`, let the one over the preferred transport (the oldest among equals) carry the data
    /// and put the others on standby.
    fn choose_carrier(&mut self, device: DeviceKey) -> Result<(), SyncError> {
        let carrier = self
            .links
            .iter()
            .filter(|(_, s)| !s.closed && s.device == Some(device) && s.session.is_some())
            .min_by_key(|(id, s)| (s.transport.preference(), **id))
            .map(|(id, _)| *id);
        for (id, slot) in self.links.iter_mut() {
            if slot.closed || slot.device != Some(device) {
                continue;
            }
            if let Some(session) = slot.session.as_mut() {
                let standby = Some(*id) != carrier;
                if session.is_standby() != standby {
                    log::info!(
                        "link {id} ({}) to {device}: {}",
                        slot.transport,
                        if standby { "standby" } else { "carries the data" }
                    );
                }
                session.set_standby(standby);
            }
        }
        Ok(())
    }

    fn attachments_link_down(&mut self, link: LinkId) {
        let links = self.synced_links();
        let mut out = Vec::new();
        if let Err(e) = self.attachments.link_down(&*self.replica, link, &links, &mut out) {
            log::warn!("attachment fetches after link {link} went down: {e}");
        }
        self.send_all(out);
    }

    fn send_all(&mut self, out: Vec<(LinkId, Message)>) {
        for (link, msg) in out {
            self.send(link, msg);
        }
        for e in self.attachments.events.drain(..) {
            self.events.push_back(EngineEvent::Fetch(e));
        }
    }

    /// Fetch the bytes of the attachment `hash`, `len` bytes long (both from its
    /// [`AttachmentToken`](crate::AttachmentToken)), from the connected devices (directly or through them). A
    /// device that says the attachment has another length is not believed (its link is closed and the next one
    /// asked): no more than `len` bytes are ever stored for it. Progress and the outcome come as
    /// [`EngineEvent::Fetch`]; when the store has the bytes already, `Done` comes at once.
    pub fn fetch_attachment(&mut self, hash: [u8; 32], len: u64) -> Result<FetchId, SyncError> {
        let links = self.synced_links();
        let mut out = Vec::new();
        let id = self.attachments.fetch(&*self.replica, hash, len, &links, &mut out)?;
        self.send_all(out);
        Ok(id)
    }

    /// Stop fetching for the app (see [`Attachments::cancel`](super::attachments::Attachments::cancel)): the
    /// fetch's waits end with [`FetchEvent::Failed`]. Returns whether it was going on.
    pub fn cancel_fetch(&mut self, fetch: FetchId) -> bool {
        let cancelled = self.attachments.cancel(fetch);
        self.send_all(Vec::new());
        cancelled
    }

    /// Whether the engine closed this link (the transport should drop it).
    pub fn is_closed(&self, link: LinkId) -> bool {
        self.links.get(&link).is_none_or(|s| s.closed)
    }

    /// The device authenticated on `link` by its handshake, even when the engine then closed the link (a duplicate
    /// of another link, or this device itself): lets a transport stop dialling an address that leads there.
    pub fn link_device(&self, link: LinkId) -> Option<DeviceKey> {
        self.links.get(&link).and_then(|s| s.device.or_else(|| s.codec.peer()))
    }

    /// How this device authenticates, with the revocation lists taken in so far (the simulator asks which devices
    /// refuse each other).
    #[cfg(feature = "sim")]
    pub(crate) fn access(&self) -> &Access {
        &self.access
    }

    /// The revocation lists this device holds, encoded (none in development mode).
    fn revocation_lists(&self) -> Vec<Vec<u8>> {
        match &self.access {
            Access::Certificates(e) => e.revocations().lists().map(RevocationList::encode).collect(),
            Access::SharedSecret(_) => Vec::new(),
        }
    }

    /// Takes in a revocation list from the app authority (handed to this device, or received from a peer): when it
    /// is newer than the one held from its issuer it is kept (in the replica, across restarts), takes effect at
    /// once — links to every device it revokes close — and goes to every linked device. Returns whether it was new.
    ///
    /// # Errors
    /// [`SyncError::Security`] if this device is in development mode (no authority to check the list against) or
    /// the list's issuer is not a pinned authority; [`SyncError::Store`] if it cannot be kept.
    pub fn add_revocations(&mut self, list: RevocationList) -> Result<bool, SyncError> {
        self.take_revocations(list, None)
    }

    fn on_revocations(&mut self, link: LinkId, bytes: &[u8]) -> Result<(), SyncError> {
        if matches!(self.access, Access::SharedSecret(_)) {
            log::debug!("link {link}: a revocation list, ignored in development mode");
            return Ok(());
        }
        let list = RevocationList::decode(bytes).map_err(SecurityError::from)?;
        self.take_revocations(list, Some(link))?;
        Ok(())
    }

    /// Certificate mode: a stable frontier from the peer (issue 17). One that passes the checks and is newer than
    /// the one kept is kept and passed on to the other links; one that fails them is ignored (logged), as a state
    /// an attester did not sign is refused alone.
    fn on_frontier(&mut self, link: LinkId, frontier: crate::security::StableFrontier) -> Result<(), SyncError> {
        let Access::Certificates(enrolment) = &self.access else {
            log::debug!("link {link}: a stable frontier, ignored in development mode");
            return Ok(());
        };
        if self.frontier.as_ref().is_some_and(|kept| !frontier.replaces(kept)) {
            return Ok(());
        }
        if let Err(reason) = self.signers.check_frontier(enrolment, &*self.replica, &frontier) {
            log::warn!("link {link}: a stable frontier refused: {reason}");
            return Ok(());
        }
        if self.replica.keep_frontier(&frontier)? {
            log::info!("link {link}: took the stable frontier of the roster of {}", frontier.until_ms);
            self.spread_frontier(frontier, Some(link));
        }
        Ok(())
    }

    /// Certificate mode: the frontier the replica keeps, when it replaces the one this engine sends (one kept beside
    /// the engine: a relay signs one every hour). Not read in development mode.
    fn newer_kept_frontier(&self) -> Result<Option<crate::security::StableFrontier>, SyncError> {
        if !matches!(self.access, Access::Certificates(_)) {
            return Ok(None);
        }
        let kept = self.replica.stable_frontier()?;
        Ok(kept.filter(|kept| self.frontier.as_ref().is_none_or(|f| kept.replaces(f))))
    }

    /// Remember `frontier` as the one kept and send it on every link but `from`.
    fn spread_frontier(&mut self, frontier: crate::security::StableFrontier, from: Option<LinkId>) {
        for (id, slot) in self.links.iter_mut() {
            if Some(*id) != from {
                if let Some(s) = slot.session.as_mut() {
                    s.queue_frontier(frontier.clone());
                }
            }
        }
        self.frontier = Some(frontier);
    }

    /// Certificate chains of signers, ahead of their changes: checked and kept. One that does not lead to a pinned
    /// authority closes the link (its sender is broken or hostile); a revoked one is ignored.
    fn on_certificates(&mut self, link: LinkId, chains: &[Vec<u8>]) -> Result<(), SyncError> {
        let Access::Certificates(enrolment) = &self.access else {
            log::debug!("link {link}: certificate chains, ignored in development mode");
            return Ok(());
        };
        for chain in chains {
            self.signers.learn(enrolment, &*self.replica, chain, true).map_err(SecurityError::from)?;
        }
        Ok(())
    }

    fn take_revocations(&mut self, list: RevocationList, from: Option<LinkId>) -> Result<bool, SyncError> {
        let Access::Certificates(enrolment) = &mut self.access else {
            return Err(SecurityError::from(CertificateError::Malformed(
                "a device in development mode holds no revocation lists".into(),
            ))
            .into());
        };
        // (`accept` logs a list it takes in.)
        let encoded = list.encode();
        if !enrolment.accept_revocations(list).map_err(SecurityError::from)? {
            return Ok(false);
        }
        // Batches received from now on are checked against the new lists.
        self.shared_enrolment = None;
        self.replica.keep_revocation_lists(&self.revocation_lists())?;
        for (id, slot) in self.links.iter_mut() {
            if Some(*id) != from {
                if let Some(s) = slot.session.as_mut() {
                    s.queue(Message::Revocations { list: encoded.clone() });
                }
            }
        }
        self.recheck_links();
        Ok(true)
    }

    /// Checks every link's certificate again (revocations arrived, or time passed), closing those that no longer
    /// pass.
    fn recheck_links(&mut self) {
        let now = self.sources.now_ms();
        let failed: Vec<(LinkId, String)> = self
            .links
            .iter()
            .filter(|(_, s)| !s.closed)
            .filter_map(|(id, s)| s.codec.recheck(&self.access, now).err().map(|e| (*id, e)))
            .map(|(id, e)| (id, SyncError::from(SecurityError::from(e)).to_string()))
            .collect();
        for (id, reason) in failed {
            self.close(id, reason);
        }
    }

    /// What the certificate chain the device on `link` presented in its handshake establishes — its name, keys
    /// and permissions — once checked; `None` in development mode (shared secret) and before the check.
    pub fn link_certificate(&self, link: LinkId) -> Option<&crate::security::VerifiedDevice> {
        self.links.get(&link).and_then(|s| s.codec.verified())
    }

    fn close(&mut self, link: LinkId, reason: String) {
        let Some(slot) = self.links.get_mut(&link) else { return };
        if slot.closed {
            return;
        }
        log::warn!(
            "closing link {link} ({}): {reason}",
            slot.device.map(|d| d.to_string()).unwrap_or_else(|| "unauthenticated".into())
        );
        slot.closed = true;
        slot.codec.release();
        let had_session = slot.session.take().is_some();
        let device = slot.device;
        self.events.push_back(EngineEvent::LinkDown { link, device, reason });
        if had_session {
            self.carrier_lost(device);
            self.links_changed();
            self.attachments_link_down(link);
        }
    }

    /// A frame arrived on `link`. Errors close the link (and are reported as [`EngineEvent::LinkDown`]).
    pub fn on_frame(&mut self, link: LinkId, frame: &[u8]) {
        self.poked.insert(link);
        if let Err(e) = self.on_frame_inner(link, frame) {
            self.close(link, e.to_string());
        }
        self.close_backlogged();
    }

    /// Close the links whose peer stopped reading (a message may have queued something on every link).
    fn close_backlogged(&mut self) {
        let backlogged: Vec<(LinkId, usize)> = self
            .links
            .iter()
            .filter_map(|(id, s)| s.session.as_ref().filter(|x| x.is_backlogged()).map(|x| (*id, x.queued())))
            .collect();
        for (id, queued) in backlogged {
            self.close(id, SyncError::NotReading(queued).to_string());
        }
    }

    /// What `link` may reassemble of one message now: its own [`REASSEMBLY_FREE_BYTES`], plus what the other links
    /// leave of [`REASSEMBLY_SHARED_BYTES`].
    fn reassembly_limit(&self, link: LinkId) -> usize {
        let shared: usize = self
            .links
            .iter()
            .filter(|(id, _)| **id != link)
            .map(|(_, s)| s.codec.reassembling().saturating_sub(REASSEMBLY_FREE_BYTES))
            .sum();
        REASSEMBLY_FREE_BYTES + REASSEMBLY_SHARED_BYTES.saturating_sub(shared)
    }

    fn on_frame_inner(&mut self, link: LinkId, frame: &[u8]) -> Result<(), SyncError> {
        let now = self.now;
        let limit = self.reassembly_limit(link);
        let Some(slot) = self.links.get_mut(&link) else { return Ok(()) };
        if slot.closed {
            return Ok(());
        }
        slot.last_rx = now;
        let was_open = slot.codec.is_open();
        let messages = slot.codec.on_frame(frame, limit, &self.access)?;
        if !was_open && slot.codec.is_open() {
            self.handshake_done(link)?;
        }
        for m in messages {
            let msg = Message::decode(&m)?;
            // Behind a batch of changes being applied apart, messages wait their turn.
            match self.links.get_mut(&link) {
                Some(slot) if slot.applying.is_some() || !slot.inbox.is_empty() => slot.inbox.push_back(msg),
                _ => self.on_message(link, msg)?,
            }
        }
        Ok(())
    }

    /// [`Engine::on_frame`], for a transport that applies received changes apart from the engine: a batch of
    /// changes is not applied here but handed out by [`Engine::take_apply`] (the messages after it wait), to be
    /// run ([`ApplyJob::run`]) without holding the engine, and given back with [`Engine::finish_apply`]. The
    /// engine then goes on as [`Engine::on_frame`] would have. Batches of several links are so applied at once,
    /// while the engine serves the others.
    pub fn on_frame_deferring(&mut self, link: LinkId, frame: &[u8]) {
        if let Some(slot) = self.links.get_mut(&link) {
            slot.defer_applies = true;
        }
        self.on_frame(link, frame);
    }

    /// The batch of changes received on `link` waiting to be applied ([`Engine::on_frame_deferring`]), if any.
    pub fn take_apply(&mut self, link: LinkId) -> Option<ApplyJob> {
        let slot = self.links.get_mut(&link)?;
        match &mut slot.applying {
            Some(job @ Some(_)) => job.take(),
            _ => None,
        }
    }

    /// A batch of [`Engine::take_apply`] was applied: finish it as handling the message would have, then handle
    /// the messages that arrived after it (up to the next batch of changes, if any: [`Engine::take_apply`]).
    pub fn finish_apply(&mut self, done: AppliedJob) {
        let link = done.link;
        self.poked.insert(link);
        let store = self.replica.clone();
        let handled = match self.links.get_mut(&link) {
            Some(slot) if !slot.closed => {
                slot.applying = None;
                match slot.session.as_mut() {
                    Some(session) => session.changes_applied(&*store, done.received, done.report),
                    None => Err(SyncError::Protocol("message before the handshake finished".into())),
                }
            }
            // The link went meanwhile; what was applied stays applied, and the other links hear of it.
            _ => match done.report {
                Ok(report) => {
                    Ok(Handled { applied: Some(report), received: Some(done.received.sent), ..Handled::default() })
                }
                Err(e) => {
                    log::debug!("link {link} closed while its changes were applied: {e}");
                    return;
                }
            },
        };
        let result = handled.and_then(|h| self.after_handled(link, h)).and_then(|()| self.handle_inbox(link));
        if let Err(e) = result {
            self.close(link, e.to_string());
        }
        self.close_backlogged();
    }

    /// Handle the messages that waited behind a batch of changes, until the next batch to apply apart.
    fn handle_inbox(&mut self, link: LinkId) -> Result<(), SyncError> {
        loop {
            let Some(slot) = self.links.get_mut(&link) else { return Ok(()) };
            if slot.closed || slot.applying.is_some() {
                return Ok(());
            }
            let Some(msg) = slot.inbox.pop_front() else { return Ok(()) };
            self.on_message(link, msg)?;
        }
    }

    /// The replica changed by another way than this engine (another process wrote to it): the links that send
    /// changes are reported by the next [`Engine::take_wakes`].
    pub fn note_store_changed(&mut self) {
        self.store_changed = true;
    }

    /// The links that may have something to send now and were not reported since they were last polled
    /// ([`Engine::poll_frame`]): those with messages or frames waiting, those that received something, and —
    /// when the replica changed — those that send changes or attachment bytes. A transport calls it after each
    /// call into the engine and wakes only their writers (with many links, waking every writer on every frame
    /// would cost the square of their number). On a device with more than [`PACED_FLOOD_LINKS`] links, a link
    /// with only presence records to send is reported at the next [`Engine::tick`], with all of them: a relay of
    /// `n` devices passes each one's record to every other, and sending them as they come would cost a round of
    /// sending per record and link.
    pub fn take_wakes(&mut self) -> Vec<LinkId> {
        let changed = std::mem::take(&mut self.store_changed);
        let poked = std::mem::take(&mut self.poked);
        let lazy = !std::mem::take(&mut self.ticked) && self.links.len() > PACED_FLOOD_LINKS;
        let mut out = Vec::new();
        for (id, slot) in self.links.iter_mut() {
            if slot.closed || slot.wake_pending {
                continue;
            }
            let output = |s: &Session| if lazy { s.has_urgent_output() } else { s.queued() > 0 };
            let wake = poked.contains(id)
                || slot.codec.has_frames()
                || slot.session.as_ref().is_some_and(|s| output(s) || (changed && s.may_pump()))
                || (changed && self.attachments.serves(*id));
            if wake {
                slot.wake_pending = true;
                out.push(*id);
            }
        }
        out
    }

    fn handshake_done(&mut self, link: LinkId) -> Result<(), SyncError> {
        let Some(slot) = self.links.get(&link) else { return Ok(()) };
        let Some(device) = slot.codec.peer() else { return Ok(()) };
        if device == self.key {
            return Err(SyncError::Protocol("connected to itself".into()));
        }
        // One link per pair: keep the one dialled by the smaller key (the newest, if both are).
        let me = self.key;
        let dialler_of = move |initiator: bool| if initiator { me } else { device };
        let this_dialler = dialler_of(slot.initiator);
        let preferred = self.key.min(device);
        let others: Vec<(LinkId, bool)> = self
            .links
            .iter()
            .filter(|(id, s)| **id != link && !s.closed && s.device == Some(device) && s.transport == slot.transport)
            .map(|(id, s)| (*id, s.initiator))
            .collect();
        for (other, other_initiator) in others {
            let other_dialler = dialler_of(other_initiator);
            if other_dialler == preferred && this_dialler != preferred {
                return Err(SyncError::Duplicate);
            }
            self.close(other, SyncError::Duplicate.to_string());
        }
        if let Some(slot) = self.links.get_mut(&link) {
            slot.device = Some(device);
        }
        let interest = self.interest_for(link);
        let mut session = Session::start(&*self.replica, &self.name, interest)?;
        if let Some(device) = self.links.get(&link).and_then(|s| s.codec.verified()) {
            session.set_read_rules(device.permissions.read_rules(device.device_id()));
        }
        if let Access::Certificates(enrolment) = &self.access {
            // The peer's chain, checked in the handshake, is known here now; and the peer knows its own, and ours.
            session.peer_holds_certificate(enrolment.signing_key().verifying_key().device_id());
            if let Some(chain) = self.links.get(&link).and_then(|s| s.codec.presented_chain()) {
                if let Some(id) =
                    self.signers.learn(enrolment, &*self.replica, chain, true).map_err(SecurityError::from)?
                {
                    session.peer_holds_certificate(id);
                }
            }
            session.send_certificates();
            // Signed changes no attested state here holds: the peer may keep one that does (issue 17).
            session.watch_attested_states(self.replica.attested_seq()?);
            let wanted = self.replica.attestation_wanted()?;
            if !wanted.is_empty() {
                session.queue(Message::WantAttested { changes: wanted });
            }
        }
        // Revocation lists first, so that a stale peer catches up before anything else.
        for list in self.revocation_lists() {
            session.queue_first(Message::Revocations { list });
        }
        // Certificate mode: the stable frontier kept (issue 17).
        if let Some(kept) = self.newer_kept_frontier()? {
            self.frontier = Some(kept);
        }
        if let Some(frontier) = &self.frontier {
            session.queue_frontier(frontier.clone());
        }
        if let Some(slot) = self.links.get_mut(&link) {
            slot.session = Some(session);
        }
        log::info!("link {link}: authenticated {device}");
        self.choose_carrier(device)?;
        // The new neighbour learns the mesh as we know it.
        let records: Vec<([u8; 32], Message)> = self
            .records
            .iter()
            .map(|(d, r)| {
                let (name, links, signature) = (r.name.clone(), r.links.clone(), r.signature.clone());
                (d.0, Message::Presence { origin: d.0, seq: r.seq, name, links, signature })
            })
            .collect();
        if let Some(s) = self.links.get_mut(&link).and_then(|s| s.session.as_mut()) {
            for (origin, m) in records {
                s.queue_presence(origin, Arc::new(m));
            }
        }
        self.links_changed();
        let links = self.synced_links();
        let mut out = Vec::new();
        self.attachments.link_up(&*self.replica, &links, &mut out)?;
        self.send_all(out);
        Ok(())
    }

    fn on_message(&mut self, link: LinkId, msg: Message) -> Result<(), SyncError> {
        if let Message::Hello { name, .. } = &msg {
            // One hello per link: a peer repeating it does not flood the app with events.
            if let Some(slot) = self.links.get_mut(&link).filter(|s| !s.greeted) {
                slot.greeted = true;
                slot.name = name.clone();
                if let Some(device) = slot.device {
                    self.events.push_back(EngineEvent::LinkUp {
                        link,
                        device,
                        name: name.clone(),
                        transport: slot.transport,
                    });
                }
            }
        }
        let store = self.replica.clone();
        let shared = match (&self.access, &msg) {
            (Access::Certificates(_), Message::Changes { .. }) => Some(self.shared_checks()),
            _ => None,
        };
        let Some(slot) = self.links.get_mut(&link) else { return Ok(()) };
        let Some(session) = slot.session.as_mut() else {
            return Err(SyncError::Protocol("message before the handshake finished".into()));
        };
        if slot.defer_applies {
            if let Message::Changes { changes } = msg {
                // Applied apart (Engine::take_apply); the messages after it wait.
                let received = session.receive_changes(changes, shared.is_some())?;
                let job = ApplyJob { link, replica: store, checks: shared.flatten(), received };
                slot.applying = Some(Some(job));
                return Ok(());
            }
        }
        let checks = match &self.access {
            Access::Certificates(enrolment) => Some(Checks { signers: &self.signers, enrolment }),
            Access::SharedSecret(_) => None,
        };
        // What the device holds: compaction folds what every device acknowledged, and keeps in the log what a
        // cloud peer has not (issue 17).
        if let (Message::Summary { summary }, Some(device)) = (&msg, slot.device) {
            store.keep_peer_summary(&device, slot.transport == TransportKind::Cloud, summary)?;
        }
        let handled = session.handle(&*store, msg, checks)?;
        self.after_handled(link, handled)
    }

    /// Certificate mode: the signers and the enrolment, shared with a batch applied apart.
    fn shared_checks(&mut self) -> Option<(Arc<Signers>, Arc<Enrolment>)> {
        let Access::Certificates(enrolment) = &self.access else { return None };
        let shared = self.shared_enrolment.get_or_insert_with(|| Arc::new((**enrolment).clone()));
        Some((self.signers.clone(), shared.clone()))
    }

    /// What a message handled by `link`'s session means for the engine and the other links.
    fn after_handled(&mut self, link: LinkId, handled: Handled) -> Result<(), SyncError> {
        let store = self.replica.clone();
        if handled.interest_changed {
            self.refresh_interests(Some(link));
        }
        if let Some(report) = handled.applied {
            if report.applied > 0 {
                self.store_changed = true;
            }
            self.events.push_back(EngineEvent::Applied { link, applied: report.applied });
            if !report.refusals.is_empty() {
                self.events.push_back(EngineEvent::Refused { link, refusals: report.refusals });
            }
        }
        if let Some(sent) = handled.received {
            // Announced to the other devices' links that want announcements: the changes of the batch the store
            // holds now.
            let sender = self.links.get(&link).and_then(|s| s.device);
            let others = |id: &LinkId, slot: &Slot| *id != link && (sender.is_none() || slot.device != sender);
            let wanted = self
                .links
                .iter()
                .any(|(id, slot)| others(id, slot) && slot.session.as_ref().is_some_and(Session::wants_announcements));
            if wanted {
                let received = sent.intersection(&store.summary()?);
                for (id, slot) in self.links.iter_mut() {
                    if others(id, slot) {
                        if let Some(s) = slot.session.as_mut() {
                            s.announce(&received);
                        }
                    }
                }
            }
        }
        match handled.other {
            Some(Message::Presence { origin, seq, name, links, signature }) => {
                self.on_presence(link, DeviceKey(origin), seq, name, links, signature)
            }
            Some(Message::Revocations { list }) => self.on_revocations(link, &list)?,
            Some(Message::Frontier { frontier }) => self.on_frontier(link, frontier)?,
            Some(Message::Certificates { chains }) => self.on_certificates(link, &chains)?,
            Some(
                m @ (Message::FetchAttachment { .. }
                | Message::AttachmentChunk { .. }
                | Message::AttachmentUnavailable { .. }),
            ) => {
                let links = self.synced_links();
                let mut out = Vec::new();
                let reads = self.links.get(&link).and_then(|s| s.session.as_ref()).and_then(|s| s.read_rules());
                self.attachments.on_message(&*store, link, m, &links, reads, &mut out)?;
                self.send_all(out);
                // Attachment bytes stored may be what other links serve.
                self.store_changed = true;
            }
            _ => {}
        }
        Ok(())
    }

    /// Change this device's own subscriptions.
    pub fn set_subscriptions(&mut self, subscriptions: Vec<Subscription>) {
        self.own_subscriptions = bounded_interest(subscriptions);
        self.refresh_interests(None);
    }

    /// This device's own subscriptions (normalised; the simulator restarts a device with them).
    #[cfg(feature = "sim")]
    pub(crate) fn subscriptions(&self) -> &[Subscription] {
        &self.own_subscriptions
    }

    /// What we ask of `link`'s peer: our subscriptions plus those of every other neighbour.
    fn interest_for(&self, link: LinkId) -> Vec<Subscription> {
        self.interests_for(std::iter::once(link)).pop().map(|(_, i)| i).unwrap_or_default()
    }

    /// What we ask of each of `links`' peers: our subscriptions plus those of every other neighbouring device (not
    /// what the peer itself asked for over another link: we would fetch its own wishes from it). Each neighbour's
    /// subscriptions are gathered once and only what is sent is copied, so a new interest costs about
    /// `links × neighbours' subscriptions` comparisons — each bounded ([`MAX_SUBSCRIPTIONS`](super::wire::MAX_SUBSCRIPTIONS)
    /// and [`MAX_INTEREST_FILTER_BYTES`](super::wire::MAX_INTEREST_FILTER_BYTES) per neighbour).
    fn interests_for(&self, links: impl Iterator<Item = LinkId>) -> Vec<(LinkId, Vec<Subscription>)> {
        let mut by_device: BTreeMap<DeviceKey, BTreeSet<&Subscription>> = BTreeMap::new();
        for slot in self.links.values() {
            if let (Some(d), Some(s)) = (slot.device, &slot.session) {
                by_device.entry(d).or_default().extend(s.peer_subscriptions());
            }
        }
        // How many neighbouring devices want each subscription.
        let mut wanted_by: BTreeMap<&Subscription, usize> = BTreeMap::new();
        for subs in by_device.values() {
            for s in subs {
                *wanted_by.entry(s).or_default() += 1;
            }
        }
        links
            .map(|link| {
                let peer = self.links.get(&link).and_then(|s| s.device).and_then(|d| by_device.get(&d));
                let others = wanted_by
                    .iter()
                    .filter(|(s, n)| **n > usize::from(peer.is_some_and(|p| p.contains(**s))))
                    .map(|(s, _)| *s);
                (link, bounded_interest_of(self.own_subscriptions.iter().chain(others)))
            })
            .collect()
    }

    fn refresh_interests(&mut self, except: Option<LinkId>) {
        let ids: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(id, s)| Some(**id) != except && s.session.is_some())
            .map(|(id, _)| *id)
            .collect();
        for (id, interest) in self.interests_for(ids.into_iter()) {
            if let Some(s) = self.links.get_mut(&id).and_then(|s| s.session.as_mut()) {
                s.set_interest(interest);
            }
        }
    }

    /// The passing of time (ms, from any fixed origin; call about once a second). Links silent for
    /// [`LINK_TIMEOUT_MS`] are closed, and links whose handshake has not finished within [`HANDSHAKE_TIMEOUT_MS`];
    /// synced links with nothing to say for [`KEEPALIVE_MS`] send a keepalive, so a peer that vanished without
    /// closing (out of range, cable pulled) is noticed on both sides. Presence records older than
    /// [`PRESENCE_TTL_MS`] are dropped, and this device's own record is flooded again every
    /// [`PRESENCE_REFRESH_MS`].
    pub fn tick(&mut self, now_ms: u64) {
        self.now = self.now.max(now_ms);
        self.ticked = true;
        let now = self.now;
        let mut dead = Vec::new();
        for (id, slot) in self.links.iter_mut() {
            if slot.closed {
                continue;
            }
            if slot.session.is_none() && now.saturating_sub(slot.opened) >= HANDSHAKE_TIMEOUT_MS {
                dead.push((*id, SyncError::HandshakeTimeout.to_string()));
            } else if now.saturating_sub(slot.last_rx) >= LINK_TIMEOUT_MS {
                dead.push((*id, format!("nothing received for {} s", LINK_TIMEOUT_MS / 1000)));
            } else if now.saturating_sub(slot.last_tx) >= KEEPALIVE_MS {
                if let Some(s) = slot.session.as_mut() {
                    // An empty credit grant: harmless, and proof of life.
                    s.grant(0);
                    slot.last_tx = now;
                }
            }
        }
        for (id, reason) in dead {
            self.close(id, reason);
        }
        if now.saturating_sub(self.rechecked) >= RECHECK_MS {
            self.rechecked = now;
            self.recheck_links();
            // A frontier kept by another part of the device (a relay signs one every hour) goes to every link.
            match self.newer_kept_frontier() {
                Ok(Some(kept)) => self.spread_frontier(kept, None),
                Ok(None) => {}
                Err(e) => log::warn!("reading the stable frontier: {e}"),
            }
        }
        let before = self.records.len();
        self.records.retain(|_, r| now.saturating_sub(r.received) < PRESENCE_TTL_MS);
        if self.records.len() != before {
            self.check_presence();
        }
        // Every tick — or, knowing of many devices, every second per PACED_PRESENCE_DEVICES of them.
        let every = (self.links.len() + self.records.len()) as u64 / PACED_PRESENCE_DEVICES as u64 * 1000;
        if now.saturating_sub(self.presence_settled) >= every {
            self.presence_settled = now;
            self.settle_presence();
        }
        if self.own_flood_due || now.saturating_sub(self.own_flooded) >= PRESENCE_REFRESH_MS {
            self.flood_own();
        }
        if let Err(e) = self.attachments.expire(&*self.replica, now) {
            log::warn!("dropping expired attachment parts: {e}");
        }
        self.close_backlogged();
    }

    /// How many presence records of other devices this engine keeps (at most [`MAX_PRESENCE_RECORDS`]).
    pub fn presence_records(&self) -> usize {
        self.records.len()
    }

    /// The next frame to send on `link`, producing more (changes the peer lacks, as flow control allows) when the
    /// queue is empty.
    pub fn poll_frame(&mut self, link: LinkId) -> Option<Vec<u8>> {
        if let Some(slot) = self.links.get_mut(&link) {
            slot.wake_pending = false;
        }
        if let Err(e) = self.fill(link) {
            self.close(link, e.to_string());
        }
        self.links.get_mut(&link)?.codec.poll_frame()
    }

    fn fill(&mut self, link: LinkId) -> Result<(), SyncError> {
        let store = self.replica.clone();
        let Some(slot) = self.links.get_mut(&link) else { return Ok(()) };
        if slot.codec.has_frames() || slot.closed {
            return Ok(());
        }
        let Some(session) = slot.session.as_mut() else { return Ok(()) };
        let mut next = session.poll_message(&*store)?;
        if next.is_none() {
            session.pump(&*store)?;
            next = session.poll_message(&*store)?;
        }
        if next.is_none() {
            // Attachment bytes go when the link has nothing else to say.
            next = self.attachments.next_chunk(&*store, link)?;
        }
        let Some(slot) = self.links.get_mut(&link) else { return Ok(()) };
        if let Some(msg) = next {
            slot.codec.send(&msg.encode())?;
            slot.last_tx = self.now;
        }
        Ok(())
    }

    /// Seal `plaintext` as one message on `link`'s secure channel, exactly as the engine would send an encoded
    /// [`Message`] — but any bytes: a simulated hostile device (tests, fuzz targets, the attack benchmark) speaks
    /// through a real handshake and encryption to reach the other side's message and session code.
    #[cfg(feature = "sim")]
    pub fn send_raw(&mut self, link: LinkId, plaintext: &[u8]) -> Result<(), SyncError> {
        let slot = self.links.get_mut(&link).ok_or_else(|| SyncError::Protocol("no such link".into()))?;
        slot.codec.send(plaintext)?;
        slot.last_tx = self.now;
        Ok(())
    }

    /// Links with frames to send now (after producing what is due).
    pub fn links_with_frames(&mut self) -> Vec<LinkId> {
        let ids: Vec<LinkId> = self.links.keys().copied().collect();
        let mut out = Vec::new();
        for id in ids {
            if let Err(e) = self.fill(id) {
                self.close(id, e.to_string());
            }
            if self.links.get(&id).is_some_and(|s| s.codec.has_frames()) {
                out.push(id);
            }
        }
        out
    }

    /// Queue a message (attachments) on a synced link.
    fn send(&mut self, link: LinkId, msg: Message) -> bool {
        match self.links.get_mut(&link).and_then(|s| s.session.as_mut()) {
            Some(s) => {
                s.queue(msg);
                true
            }
            None => false,
        }
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<EngineEvent> {
        if self.presence_dirty && self.links.len() + self.records.len() <= PACED_PRESENCE_DEVICES {
            self.settle_presence();
        }
        self.events.pop_front()
    }

    /// Who is reachable, as of the last [`EngineEvent::PresenceChanged`] (what [`Engine::peers`] said then).
    pub fn presence(&self) -> &[PeerPresence] {
        &self.last_peers
    }

    /// Work out who is reachable now, if it may have changed; [`EngineEvent::PresenceChanged`] if it did.
    fn settle_presence(&mut self) {
        if std::mem::take(&mut self.presence_dirty) {
            let now = self.peers();
            if now != self.last_peers {
                self.last_peers = now;
                self.events.push_back(EngineEvent::PresenceChanged);
            }
        }
    }

    /// Synced links: (link, device, name, transport).
    pub fn links(&self) -> Vec<(LinkId, DeviceKey, String, TransportKind)> {
        self.links
            .iter()
            .filter(|(_, s)| s.session.is_some())
            .filter_map(|(id, s)| Some((*id, s.device?, s.name.clone(), s.transport)))
            .collect()
    }

    /// The devices with a synced link.
    pub fn linked_devices(&self) -> BTreeSet<DeviceKey> {
        self.links.values().filter(|s| s.session.is_some()).filter_map(|s| s.device).collect()
    }

    /// A synced link's counters.
    pub fn link_stats(&self, link: LinkId) -> Option<SessionStats> {
        self.links.get(&link)?.session.as_ref().map(|s| s.stats.clone())
    }

    // ---- presence ----

    fn links_changed(&mut self) {
        self.flood_own();
        self.refresh_interests(None);
        self.check_presence();
    }

    /// Flood this device's record, with a new sequence number: the wall clock in ms, or one more than the last
    /// when records come faster.
    fn flood_own(&mut self) {
        let synced = self.links.values().filter(|s| s.session.is_some() && !s.closed).count();
        if synced > PACED_FLOOD_LINKS && self.own_flooded > 0 {
            let every = (synced / PACED_FLOOD_LINKS) as u64 * 1000;
            if self.now.saturating_sub(self.own_flooded) < every.min(PRESENCE_REFRESH_MS) {
                // Flooded not long ago: again at a later tick.
                self.own_flood_due = true;
                return;
            }
        }
        self.own_flood_due = false;
        self.own_seq = self.own_seq.saturating_add(1).max(self.sources.now_ms());
        self.own_flooded = self.now;
        // At most as many links as a record may list (every receiver refuses a longer one).
        let links: Vec<PresenceLink> = self
            .links
            .values()
            .filter(|s| s.session.is_some() && !s.closed)
            .filter_map(|s| {
                // (As the LAN: see TransportKind::Cloud.)
                let transport = if s.transport == TransportKind::Cloud { TransportKind::Lan } else { s.transport };
                Some(PresenceLink { device: s.device?.0, transport })
            })
            .take(MAX_PRESENCE_LINKS)
            .collect();
        let signature = match &self.access {
            Access::Certificates(e) => Some(PresenceSignature::sign(e, &self.key.0, self.own_seq, &self.name, &links)),
            Access::SharedSecret(_) => None,
        };
        let msg =
            Message::Presence { origin: self.key.0, seq: self.own_seq, name: self.name.clone(), links, signature };
        self.flood(self.key, msg, None);
    }

    /// A presence record arrived on `from`. It replaces the one kept when its sequence number is higher — or when
    /// it comes from the device it describes itself, over this link (authenticated by the handshake: a device is
    /// the authority on its own links, even after another sent a higher number for it). A number further ahead
    /// of the wall clock than [`PRESENCE_MAX_AHEAD_MS`] is refused. In certificate mode a record must be signed by
    /// the device it describes ([`PresenceSignature`]); one that is not is dropped (and not flooded further).
    fn on_presence(
        &mut self,
        from: LinkId,
        origin: DeviceKey,
        seq: u64,
        name: String,
        links: Vec<PresenceLink>,
        signature: Option<PresenceSignature>,
    ) {
        if origin == self.key {
            return;
        }
        if let Access::Certificates(enrolment) = &self.access {
            let record = (&origin.0, seq, name.as_str(), links.as_slice());
            if let Err(why) = self.signers.check_presence(enrolment, &*self.replica, record, signature.as_ref()) {
                log::warn!("link {from}: refused a presence record of {origin}: {why}");
                return;
            }
        }
        let limit = self.sources.now_ms().saturating_add(PRESENCE_MAX_AHEAD_MS);
        if seq > limit {
            log::warn!("link {from}: refused a presence record of {origin} numbered {seq}, ahead of the clock");
            return;
        }
        let from_origin = self.links.get(&from).and_then(|s| s.device) == Some(origin);
        let newer = match self.records.get(&origin) {
            None => true,
            Some(r) => r.seq < seq || (from_origin && r.seq != seq),
        };
        if !newer {
            return;
        }
        if !self.records.contains_key(&origin) && self.records.len() >= MAX_PRESENCE_RECORDS {
            let oldest = self.records.iter().min_by_key(|(d, r)| (r.received, **d)).map(|(d, _)| *d);
            if let Some(oldest) = oldest {
                log::warn!("presence: {MAX_PRESENCE_RECORDS} records kept; dropping the oldest ({oldest})");
                self.records.remove(&oldest);
            }
        }
        let received = self.now;
        let record = Record { seq, name: name.clone(), links: links.clone(), signature: signature.clone(), received };
        self.records.insert(origin, record);
        self.flood(origin, Message::Presence { origin: origin.0, seq, name, links, signature }, Some(from));
        self.check_presence();
    }

    fn flood(&mut self, origin: DeviceKey, msg: Message, except: Option<LinkId>) {
        // One record shared by every link's queue (it is copied only when sent).
        let msg = Arc::new(msg);
        for (id, slot) in self.links.iter_mut() {
            if Some(*id) != except && !slot.closed {
                if let Some(s) = slot.session.as_mut() {
                    s.queue_presence(origin.0, msg.clone());
                }
            }
        }
    }

    /// Who is reachable may have changed: checked when the events are read ([`Engine::poll_event`]), once for
    /// everything that happened since (a device learning the records of many devices at once computes who is
    /// reachable once, not once per record) — or, for a device that knows of more than
    /// [`PACED_PRESENCE_DEVICES`] links and records, at a later [`Engine::tick`].
    fn check_presence(&mut self) {
        self.presence_dirty = true;
    }

    /// Every device reachable now, directly or through others, nearest first.
    pub fn peers(&self) -> Vec<PeerPresence> {
        let mut seen: BTreeMap<DeviceKey, PeerPresence> = BTreeMap::new();
        let mut queue: VecDeque<DeviceKey> = VecDeque::new();
        for s in self.links.values() {
            let (Some(device), Some(session)) = (s.device, s.session.as_ref()) else { continue };
            if s.closed {
                continue;
            }
            let p = seen.entry(device).or_insert_with(|| {
                queue.push_back(device);
                PeerPresence { device, name: s.name.clone(), hops: 1, transport: s.transport, direct: Vec::new() }
            });
            if !session.is_standby() {
                p.transport = s.transport;
                if !s.name.is_empty() {
                    p.name = s.name.clone();
                }
            }
            p.direct.push(s.transport);
        }
        for p in seen.values_mut() {
            p.direct.sort_by_key(|t| t.preference());
            p.direct.dedup();
        }
        while let Some(d) = queue.pop_front() {
            let Some((hops, transport)) = seen.get(&d).map(|p| (p.hops, p.transport)) else { continue };
            let Some(record) = self.records.get(&d) else { continue };
            for l in &record.links {
                let next = DeviceKey(l.device);
                if next == self.key || seen.contains_key(&next) {
                    continue;
                }
                let name = self.records.get(&next).map(|r| r.name.clone()).unwrap_or_default();
                seen.insert(next, PeerPresence { device: next, name, hops: hops + 1, transport, direct: Vec::new() });
                queue.push_back(next);
            }
        }
        for p in seen.values_mut() {
            if p.name.is_empty() {
                if let Some(r) = self.records.get(&p.device) {
                    p.name = r.name.clone();
                }
            }
        }
        let mut out: Vec<PeerPresence> = seen.into_values().collect();
        out.sort_by_key(|a| (a.hops, a.device));
        out
    }
}
