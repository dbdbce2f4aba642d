//! One sync session: the state of replication with one directly connected device, without I/O.
//!
//! Each side tells the other what it wants ([`Message::Interest`]) and what it holds ([`Message::Summary`]). From
//! then on each side sends the changes the other lacks for that interest, batch by batch, as flow control allows,
//! and keeps doing so as new changes commit — there is no separate "catch-up" and "live" mode: both are "send what
//! the peer lacks", computed from what the peer is known to hold.
//!
//! What the peer holds is known exactly from its summary plus everything sent and received since, so after a
//! disconnection only the missing changes travel. Changes examined and found of no interest to the peer are
//! remembered (`skipped`) so they are not examined again; they are sent after all when their document becomes of
//! interest: a document is of interest when it matches one of the peer's subscriptions *or the peer already holds
//! some of its changes* (so a document that leaves a filter still gets the edit that made it leave, and removals
//! reach everyone who has the document). When any change of a document is sent, every change of it the peer lacks
//! is sent with it, in log order, so a document that starts to match because of an edit made elsewhere arrives
//! whole.
//!
//! Flow control: the receiver grants credit in bytes of changes processed ([`Message::Credit`]); the sender never
//! has more than [`WINDOW`] bytes of changes outstanding (plus one batch), so a slow link never makes memory grow.
//!
//! Bounds against a hostile peer: handling a message never reads the change log — a summary's claims (cut to what
//! this store holds) and a new interest only mark what to look at again, and the pump (`Session::pump`) looks at most
//! [`PUMP_SCAN_BYTES`] of log per call; summaries merge linearly; the outbox coalesces what the session queues on
//! its own (one summary, one interest, one credit grant, one announcement, one presence record per device), and a
//! peer with more than [`MAX_OUTBOX_MESSAGES`] messages waiting has stopped reading: the engine closes the link.

use super::first_copy::{version_wire_len, FirstCopies, Received, MAX_VERSION_BYTES};
use super::wire::{Message, Subscription, WireChange, BATCH_BYTES, MAX_DIGESTS_PER_MESSAGE, MAX_STATES_PER_MESSAGE};
use super::SyncError;
use crate::crdt::change::{Change, MAX_BATCH_COST, MAX_CHANGE_COST};
use crate::crdt::version::VersionVector;
use crate::query::Query;
use crate::security::authorship::{apply_received, Checks};
use crate::security::Attestation;
use crate::store::{ApplyReport, AttestedState, DocChange, DocState, LogEntry, Replica, Summary};
use serde_json::Value as Json;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// Bytes of changes a sender may have outstanding before the receiver grants more.
pub const WINDOW: u64 = 1 << 20;

/// Bytes of the change log one pump of a session (`Session::pump`) may examine (changes read to decide what the peer lacks, whether
/// sent or found of no interest). Past it, the pump stops and resumes at the next call: however much a message
/// makes the session look at again (a new interest, a summary claiming many changes), the work done at once under
/// How many bytes of log one byte of filter counts for when a document is checked against a peer's filters (see
/// [`PUMP_SCAN_BYTES`]): measured here, one byte of filter costs about as much to evaluate as eight bytes of log
/// cost to read, so a peer asking for the longest filters allowed gets a handful of documents checked per call.
pub const FILTER_WORK_WEIGHT: usize = 8;

/// the engine's lock stays bounded and the other links keep being served.
pub const PUMP_SCAN_BYTES: usize = 1 << 20;

/// The most counter ranges kept of what a peer is believed to hold. A summary is the peer's claim: ranges beyond
/// what this device holds itself only save a resend later, so past this bound the belief is cut down to what this
/// device holds (memory then grows with the store, never with what a peer claims).
pub const MAX_PEER_KNOWN_RANGES: usize = 1 << 16;

/// The most messages a session queues for its peer. Everything a session queues on its own is coalesced (one
/// summary, one interest, one credit grant, one presence record per device) or limited by flow control (changes);
/// a queue longer than this means the peer stopped reading while it keeps asking (attachment requests, resyncs):
/// the link is closed ([`SyncError::NotReading`]) rather than buffered for.
pub const MAX_OUTBOX_MESSAGES: usize = 4096;

/// A peer's subscriptions, with their filters parsed, by collection (a document is checked against the filters of
/// its own collection only).
#[derive(Clone, Debug, Default)]
pub(crate) struct Interest {
    subs: Vec<Subscription>,
    /// Every collection wanted whole.
    everything: bool,
    /// Per collection: `None` when the collection is wanted whole, else its filters.
    collections: BTreeMap<String, Option<Vec<Query>>>,
    /// Per collection with filters: their total length in bytes, the measure of the work of checking one document
    /// against them (charged to the pump's budget, [`PUMP_SCAN_BYTES`]).
    filter_bytes: BTreeMap<String, usize>,
}

impl Interest {
    /// Parse a peer's subscriptions. The message was validated ([`Message::decode`]): at most
    /// [`MAX_FILTERS_PER_COLLECTION`](super::wire::MAX_FILTERS_PER_COLLECTION) filters of bounded size per
    /// collection, so checking one document costs at most that.
    pub fn new(subs: &[Subscription]) -> Result<Interest, SyncError> {
        let mut out = Interest { subs: subs.to_vec(), ..Interest::default() };
        for s in subs {
            let Some(c) = &s.collection else {
                // A filter without a collection is refused when decoded; `*` wants everything.
                out.everything = true;
                continue;
            };
            match &s.filter {
                None => {
                    out.collections.insert(c.clone(), None);
                }
                Some(f) => {
                    let q = Query::filter(f).map_err(|e| SyncError::Protocol(format!("filter {f:?}: {e}")))?;
                    *out.filter_bytes.entry(c.clone()).or_default() += f.len();
                    if let Some(filters) = out.collections.entry(c.clone()).or_insert_with(|| Some(Vec::new())) {
                        filters.push(q);
                    }
                }
            }
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }

    /// The work of checking one document of `collection` against the filters (their bytes; 0 without filters).
    pub fn filter_work(&self, collection: &str) -> usize {
        self.filter_bytes.get(collection).copied().unwrap_or(0)
    }

    /// Whether a document of `collection` with `view` (`None` when removed) matches a subscription.
    pub fn matches(&self, collection: &str, view: Option<&Json>) -> bool {
        if self.everything {
            return true;
        }
        match self.collections.get(collection) {
            None => false,
            Some(None) => true,
            Some(Some(filters)) => view.is_some_and(|v| filters.iter().any(|q| q.matches(v).unwrap_or(false))),
        }
    }

    /// Whether an unfiltered subscription covers `collection` (every document of it is wanted, removed or not).
    pub fn wants_all_of(&self, collection: &str) -> bool {
        self.everything || matches!(self.collections.get(collection), Some(None))
    }

    /// Whether any subscription may concern `collection`.
    pub fn covers_collection(&self, collection: &str) -> bool {
        self.everything || self.collections.contains_key(collection)
    }
}

/// A message waiting to be sent. Those the session produces on its own are coalesced: one entry stands for the
/// latest value, read when the message is sent.
#[derive(Debug)]
enum Out {
    /// A message as it is.
    Message(Message),
    /// This store's summary, as it is when sent (the first one, and answers to [`Message::Resync`]).
    Summary,
    /// The interest last set ([`Session::set_interest`]).
    Interest,
    /// The changes received from other devices since the last announcement ([`Session::announce`]).
    Announce,
    /// The credit granted since the last grant (or a keepalive).
    Credit,
    /// The latest presence record of this device key.
    Presence([u8; 32]),
    /// The certificate chain of this signing device, as the store keeps it (certificate mode).
    Certificate(crate::PeerId),
}

/// What handling one message did, for the engine.
#[derive(Debug, Default)]
pub(crate) struct Handled {
    /// The peer's interest changed (the engine recomputes what it carries for others).
    pub interest_changed: bool,
    /// Changes were applied to the store (other sessions have something new to send).
    pub applied: Option<ApplyReport>,
    /// The changes of that batch (the store now holds those of them it applied or held already): the engine
    /// announces to its other peers those the store holds ([`Session::announce`]).
    pub received: Option<Summary>,
    /// Messages that are not the session's business (presence, attachments).
    pub other: Option<Message>,
}

/// A batch of changes received, decoded and ready to apply to the store ([`Session::receive_changes`]): the
/// application itself may run apart from the session (without the engine's lock), then
/// [`Session::changes_applied`] finishes.
pub(crate) struct ReceivedChanges {
    /// The changes with the digests of their encodings as received (certificate mode checks signatures on them),
    /// their sizes as received and the versions their sender attached (see [`super::first_copy`]).
    arrived: Vec<(Received, usize, Option<VersionVector>)>,
    /// The session's documents held aside until their first copy is whole, while the batch is sorted apart.
    first_copies: FirstCopies,
    /// The counter ranges of the changes applied (those of the batch not held aside, and those held before that
    /// it released).
    applied: Summary,
    /// The counter ranges of the batch.
    pub sent: Summary,
    /// The documents to look at again once applied (they may have become of interest to the peer).
    docs: Vec<(String, String)>,
    count: u64,
    bytes: u64,
}

impl ReceivedChanges {
    /// The changes to apply now: held aside those of documents the store holds nothing of until their first copy
    /// is whole, with those held before that this batch made whole ([`FirstCopies::sort`]).
    pub fn take_ready(&mut self, store: &dyn Replica) -> crate::Result<Vec<Received>> {
        let batch = self.first_copies.sort(store, std::mem::take(&mut self.arrived))?;
        self.applied = summary_of(batch.iter().map(|(dc, _)| dc));
        Ok(batch)
    }

    /// How many changes arrived in the batch.
    pub fn len(&self) -> usize {
        self.count as usize
    }
}

/// The counter ranges of `changes`, built in counter order (inserting them one by one in another order could cost
/// the square of their number).
fn summary_of<'a>(changes: impl Iterator<Item = &'a DocChange>) -> Summary {
    let mut ranges: Vec<(crate::PeerId, u64, u64)> =
        changes.map(|dc| (dc.change.peer, dc.change.start, dc.change.end())).collect();
    ranges.sort_unstable();
    let mut out = Summary::new();
    for &(peer, start, end) in &ranges {
        out.insert(peer, start, end);
    }
    out
}

pub(crate) struct Session {
    /// Documents the peer sent whose first copy here is not whole yet ([`super::first_copy`]).
    first_copies: FirstCopies,
    /// What the peer wants from us.
    peer_interest: Interest,
    /// The peer's interest arrived (even if empty).
    got_interest: bool,
    /// What the peer holds, as far as we know.
    peer_known: Summary,
    got_summary: bool,
    /// Changes examined and found of no interest to the peer.
    skipped: Summary,
    /// Changes this store holds that the peer newly said it holds, while some were skipped: their documents are to
    /// be looked at again (the peer now holds some of their changes, so they are of interest to it), a slice per
    /// pump.
    recheck: Summary,
    /// Bytes of changes we may still send.
    send_credit: i64,
    /// Bytes of changes received and processed since we last granted credit.
    received_unacked: u64,
    /// Credit granted and not sent yet (an [`Out::Credit`] is queued when it is non-zero).
    credit_due: u64,
    credit_queued: bool,
    /// Messages ready to send, in order.
    outbox: VecDeque<Out>,
    /// An [`Out::Summary`] is queued.
    summary_queued: bool,
    /// An [`Out::Interest`] is queued.
    interest_queued: bool,
    /// Changes to announce (an [`Out::Announce`] is queued when it is not empty).
    announce_due: Summary,
    /// Presence records to send, by device (an [`Out::Presence`] is queued for each); one record is shared by
    /// every session it is flooded to.
    presence_due: BTreeMap<[u8; 32], Arc<Message>>,
    /// Documents the peer sent changes of, to look at again (they may have become of interest to it).
    touched_by_peer: BTreeSet<i64>,
    /// The interest we last sent.
    sent_interest: Option<Vec<Subscription>>,
    /// Changes being gathered into the next [`Message::Changes`] (several documents share a batch).
    batch: Vec<WireChange>,
    batch_bytes: usize,
    /// The [`Change::cost`] of the changes in `batch`.
    batch_cost: u64,
    /// Another link to the same device carries the data (a faster transport): this session sends no changes,
    /// only control messages; it still applies whatever the peer sends. See [`Session::set_standby`].
    standby: bool,
    /// Came back from standby and asked the peer for its summary ([`Message::Resync`]): send nothing until it
    /// arrives.
    awaiting_summary: bool,
    /// Statistics.
    pub stats: SessionStats,
    /// Equivocation (issue 13): authors whose changes were sent since the last [`Message::Digests`].
    digest_authors: BTreeSet<crate::PeerId>,
    /// Authors whose changes were sent again because the peer's digest differed (once per author and session).
    resent_authors: BTreeSet<crate::PeerId>,
    /// Authors to send again at the next pump (not at once: changes of theirs the peer sends meanwhile would mark
    /// them as held by the peer again).
    resend: Vec<crate::PeerId>,
    /// What the peer may read (its certificate's read grants); `None` in development mode (everything). Only
    /// documents these allow are sent, whatever the peer's interest.
    reads: Option<crate::security::certificate::ReadRules>,
    /// Certificate mode: the chain of each signer goes ahead of the first change it signed on this link.
    send_certificates: bool,
    /// Certificate mode: signed changes the peer wants attested states of ([`Message::WantAttested`]), and the
    /// document to look on from.
    attest_wanted: Summary,
    attest_wanted_from: i64,
    /// Certificate mode: the number of the last attested state kept by the store that this session has looked at
    /// for the peer (those kept later are sent to it when it holds some of their changes); `None` in development
    /// mode.
    attested_seq: Option<i64>,
    /// The signers whose chains were queued on this link.
    certificates_sent: BTreeSet<crate::PeerId>,
    /// Where [`Session::pump_states`] goes on looking for documents whose states the peer lacks (a local number).
    states_from: i64,
}

/// Counters of one session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Changes sent to the peer (put into [`Message::Changes`] messages).
    pub changes_sent: u64,
    /// Changes received from the peer, duplicates included.
    pub changes_received: u64,
    /// Bytes of the changes sent: their [`crate::DocChange`] encodings, without message framing or encryption.
    pub change_bytes_sent: u64,
    /// Bytes of the changes received, counted like [`SessionStats::change_bytes_sent`]; flow control grants credit
    /// in these bytes.
    pub change_bytes_received: u64,
    /// Documents' states sent in place of changes folded into their snapshots ([`Message::States`]).
    pub states_sent: u64,
    /// Bytes of those states (counted against flow control's credit like changes).
    pub state_bytes_sent: u64,
    /// Documents' versions attached to changes sent: one with the first change of a document the peer may lack,
    /// so that it applies its first copy whole (see `sync::first_copy`).
    pub versions_sent: u64,
}

impl Session {
    /// A new session; queue our hello, interest and summary.
    pub fn start(store: &dyn Replica, name: &str, interest: Vec<Subscription>) -> Result<Session, SyncError> {
        let mut s = Session {
            first_copies: FirstCopies::default(),
            peer_interest: Interest::default(),
            got_interest: false,
            peer_known: Summary::new(),
            got_summary: false,
            skipped: Summary::new(),
            recheck: Summary::new(),
            send_credit: WINDOW as i64,
            received_unacked: 0,
            credit_due: 0,
            credit_queued: false,
            outbox: VecDeque::new(),
            summary_queued: false,
            interest_queued: false,
            announce_due: Summary::new(),
            presence_due: BTreeMap::new(),
            touched_by_peer: BTreeSet::new(),
            sent_interest: None,
            batch: Vec::new(),
            batch_bytes: 0,
            batch_cost: 0,
            standby: false,
            awaiting_summary: false,
            stats: SessionStats::default(),
            digest_authors: BTreeSet::new(),
            resent_authors: BTreeSet::new(),
            resend: Vec::new(),
            reads: None,
            send_certificates: false,
            attest_wanted: Summary::new(),
            attest_wanted_from: 0,
            attested_seq: None,
            certificates_sent: BTreeSet::new(),
            states_from: 0,
        };
        s.outbox.push_back(Out::Message(Message::Hello { name: name.to_string(), store_peer: store.peer_id().0 }));
        s.set_interest(interest);
        s.queue_summary();
        Ok(s)
    }

    /// Tell the peer what we want from it (when it differs from what we last said).
    pub fn set_interest(&mut self, interest: Vec<Subscription>) {
        if self.sent_interest.as_ref() != Some(&interest) {
            self.sent_interest = Some(interest);
            if !self.interest_queued {
                self.interest_queued = true;
                self.outbox.push_back(Out::Interest);
            }
        }
    }

    /// Queue this store's summary (once: a summary queued already goes out as the store is then).
    fn queue_summary(&mut self) {
        if !self.summary_queued {
            self.summary_queued = true;
            self.outbox.push_back(Out::Summary);
        }
    }

    /// Grant the peer `bytes` more credit (0: a keepalive), coalesced with a grant not sent yet.
    pub fn grant(&mut self, bytes: u64) {
        self.credit_due = self.credit_due.saturating_add(bytes);
        if !self.credit_queued {
            self.credit_queued = true;
            self.outbox.push_back(Out::Credit);
        }
    }

    /// The subscriptions the peer declared.
    pub fn peer_subscriptions(&self) -> &[Subscription] {
        &self.peer_interest.subs
    }

    /// Handle one message from the peer. The work is bounded by the message's size and the store's summary; what
    /// a message makes the session look at in the log is looked at by [`Session::pump`], a bounded slice at a time.
    ///
    /// Received changes are applied through `checks` in certificate mode (see [`apply_received`]).
    pub fn handle(
        &mut self,
        store: &dyn Replica,
        msg: Message,
        checks: Option<Checks<'_>>,
    ) -> Result<Handled, SyncError> {
        let mut out = Handled::default();
        match msg {
            Message::Hello { .. } => {}
            Message::Interest { subscriptions } => {
                self.peer_interest = Interest::new(&subscriptions)?;
                self.got_interest = true;
                // What was of no interest before may be now.
                self.skipped = Summary::new();
                self.recheck = Summary::new();
                out.interest_changed = true;
            }
            Message::Summary { summary } => {
                store.notice_summary(&summary)?;
                if !self.got_summary {
                    // The authors of which the peer holds the same counters as we do: the digests it can compare
                    // (issue 13). Those of the others would be of no use to it (a server holding every author would
                    // send a phone thousands).
                    let held = store.summary()?;
                    let same: Vec<crate::PeerId> =
                        summary.peers().filter(|(a, r)| held.ranges_of(*a) == Some(*r)).map(|(a, _)| a).collect();
                    if !same.is_empty() {
                        self.queue_digests(store, &same)?;
                    }
                }
                if self.got_summary && !self.skipped.is_empty() {
                    // An update: the peer got these changes from another device. Their documents are now of interest
                    // to it (it holds some of their changes), even those we skipped: look at them again — only the
                    // changes this store holds, so a claim never costs more than the log it meets.
                    let new = summary.difference(&self.peer_known).intersection(&store.summary()?);
                    self.recheck.union_with(&new);
                }
                self.peer_known.union_with(&summary);
                if self.peer_known.range_count() > MAX_PEER_KNOWN_RANGES {
                    self.peer_known = self.peer_known.intersection(&store.summary()?);
                }
                self.got_summary = true;
                self.awaiting_summary = false;
            }
            Message::Changes { changes } => {
                let mut received = self.receive_changes(changes, checks.is_some())?;
                let report = match received.take_ready(store) {
                    Ok(batch) => apply_received(checks, store, batch).map_err(SyncError::from),
                    Err(e) => Err(e.into()),
                };
                return self.changes_applied(store, received, report);
            }
            Message::States { states } => {
                if checks.is_some() {
                    return Err(SyncError::Protocol("document states are not accepted with certificates".into()));
                }
                let released = self.release_first_copies(states.iter());
                let handled = self.receive_states(store, states)?;
                return self.apply_released(store, handled, released, None);
            }
            Message::AttestedStates { states } => {
                let released = self.release_first_copies(states.iter().map(|a| &a.state));
                let handled = match checks {
                    Some(checks) => self.receive_attested_states(store, states, checks)?,
                    // Development mode trusts every state; the signatures are not needed.
                    None => self.receive_states(store, states.into_iter().map(|a| a.state).collect())?,
                };
                return self.apply_released(store, handled, released, checks);
            }
            // Certificate mode only: in development mode states are sent as they are.
            Message::WantAttested { changes } => {
                if self.reads.is_some() {
                    self.attest_wanted = changes;
                    self.attest_wanted_from = 0;
                }
            }
            Message::Resync => self.queue_summary(),
            Message::Credit { bytes } => {
                self.send_credit =
                    self.send_credit.saturating_add(bytes.min(i64::MAX as u64) as i64).min(2 * WINDOW as i64);
            }
            // Equivocation (issue 13): an author of which the peer holds other changes than we do at the same
            // counters: send it ours again (once per session), so that it finds and records the pair.
            Message::Digests { authors } => {
                for author in store.differing_authors(&authors)? {
                    if self.resent_authors.insert(author) {
                        self.resend.push(author);
                    }
                }
            }
            other => out.other = Some(other),
        }
        Ok(out)
    }

    /// Decode a batch of changes from the peer, ready to apply (`digests`: certificate mode, where signatures are
    /// checked on the encodings as received). The peer holds them (it sent them): from now on they are not sent
    /// back to it, even while they are being applied.
    pub fn receive_changes(&mut self, changes: Vec<WireChange>, digests: bool) -> Result<ReceivedChanges, SyncError> {
        let mut bytes = 0u64;
        let mut arrived = Vec::with_capacity(changes.len());
        for c in changes {
            bytes += c.change.len() as u64;
            let mut dc = DocChange::decode(&c.change).map_err(|e| SyncError::Protocol(format!("bad change: {e}")))?;
            dc.signature = c.signature;
            if c.version.as_ref().is_some_and(|v| !v.is_well_formed()) {
                return Err(SyncError::Protocol("a change's document version is malformed".into()));
            }
            // What its author signed: the encoding as received (an honest sender's is the canonical one).
            let digest = if digests { *blake3::hash(&c.change).as_bytes() } else { [0; 32] };
            arrived.push(((dc, digest), c.change.len(), c.version));
        }
        let sent = summary_of(arrived.iter().map(|((dc, _), _, _)| dc));
        self.peer_known.union_with(&sent);
        let docs: Vec<(String, String)> = arrived
            .iter()
            // A document of a collection the peer wants whole, with nothing ever skipped for it, needs no second
            // look: whatever of it the peer lacks, the log will list. Nor does one of a collection its interest does
            // not cover (were the interest to change, everything would be looked at again).
            .filter(|((dc, _), _, _)| {
                self.peer_interest.covers_collection(&dc.collection)
                    && !(self.skipped.is_empty() && self.peer_interest.wants_all_of(&dc.collection))
            })
            .map(|((dc, _), _, _)| (dc.collection.clone(), dc.doc_id.clone()))
            .collect();
        let count = arrived.len() as u64;
        let first_copies = std::mem::take(&mut self.first_copies);
        Ok(ReceivedChanges { arrived, first_copies, applied: Summary::new(), sent, docs, count, bytes })
    }

    /// Finish a batch of [`Session::receive_changes`] once `report` says how applying it went (an error closes
    /// the link).
    pub fn changes_applied(
        &mut self,
        store: &dyn Replica,
        received: ReceivedChanges,
        report: Result<ApplyReport, SyncError>,
    ) -> Result<Handled, SyncError> {
        self.first_copies = received.first_copies;
        let report = report?;
        // Announced: what the store now holds of the changes applied (those held aside are not yet).
        let mut out = Handled { received: Some(received.applied), ..Handled::default() };
        for (collection, doc_id) in &received.docs {
            if let Some(n) = store.doc_number(collection, doc_id)? {
                self.touched_by_peer.insert(n);
            }
        }
        self.stats.changes_received += received.count;
        self.stats.change_bytes_received += received.bytes;
        self.count_received(received.bytes);
        out.applied = Some(report);
        Ok(out)
    }

    /// The changes held aside for the documents of `states` (a state is a whole copy of what its sender folded;
    /// the changes held are applied right after it).
    fn release_first_copies<'a>(&mut self, states: impl Iterator<Item = &'a DocState>) -> Vec<Received> {
        if self.first_copies.is_empty() {
            return Vec::new();
        }
        states.flat_map(|s| self.first_copies.release(&s.collection, &s.doc_id)).collect()
    }

    /// Apply `released` (changes held aside, see [`Session::release_first_copies`]) after the states `handled`
    /// merged, adding up what was done.
    fn apply_released(
        &mut self,
        store: &dyn Replica,
        mut handled: Handled,
        released: Vec<Received>,
        checks: Option<Checks<'_>>,
    ) -> Result<Handled, SyncError> {
        if released.is_empty() {
            return Ok(handled);
        }
        let applied = summary_of(released.iter().map(|(dc, _)| dc));
        let report = apply_received(checks, store, released)?;
        handled.applied.get_or_insert_with(ApplyReport::default).add(report);
        handled.received.get_or_insert_with(Summary::new).union_with(&applied);
        Ok(handled)
    }

    /// Merge documents' states from the peer (issue 17: in place of changes it folded into their snapshots). The
    /// peer holds their changes; the bytes count for flow control like changes. An error closes the link.
    fn receive_states(&mut self, store: &dyn Replica, states: Vec<DocState>) -> Result<Handled, SyncError> {
        let bytes = states.iter().map(|s| s.state.len() as u64).sum();
        let report = store.apply_states(&states)?;
        self.states_merged(store, states.iter(), bytes, report)
    }

    /// Certificate mode: attested states received. Each is checked ([`crate::security::Signers::check_attested`]);
    /// one that fails is refused alone (in the report), the others are merged and kept.
    fn receive_attested_states(
        &mut self,
        store: &dyn Replica,
        states: Vec<AttestedState>,
        checks: Checks<'_>,
    ) -> Result<Handled, SyncError> {
        let bytes = states.iter().map(|a| a.state.state.len() as u64).sum();
        let mut refused = ApplyReport::default();
        let mut accepted = Vec::with_capacity(states.len());
        for a in states {
            match checks.signers.check_attested(checks.enrolment, store, &a) {
                Ok(()) => accepted.push(a),
                Err(reason) => refused.refuse(crate::security::Refused {
                    author: a.attestation.device,
                    start: 0,
                    collection: a.state.collection.clone(),
                    doc_id: a.state.doc_id.clone(),
                    reason,
                }),
            }
        }
        let mut report =
            store.apply_attested_states(&accepted, &checks.signers.write_check(checks.enrolment, store))?;
        report.add(refused);
        self.states_merged(store, accepted.iter().map(|a| &a.state), bytes, report)
    }

    /// States (`bytes` received in all) were merged: the peer holds their changes, and their documents may be of
    /// interest to it now.
    fn states_merged<'a>(
        &mut self,
        store: &dyn Replica,
        states: impl Iterator<Item = &'a DocState>,
        bytes: u64,
        report: ApplyReport,
    ) -> Result<Handled, SyncError> {
        let mut sent = Summary::new();
        for s in states {
            sent.union_with(&s.changes);
            if self.peer_interest.covers_collection(&s.collection) {
                if let Some(n) = store.doc_number(&s.collection, &s.doc_id)? {
                    self.touched_by_peer.insert(n);
                }
            }
        }
        self.peer_known.union_with(&sent);
        self.count_received(bytes);
        Ok(Handled { applied: Some(report), received: Some(sent), ..Handled::default() })
    }

    /// `bytes` of changes or states received were processed: grant the peer credit for them once they make half
    /// a window.
    fn count_received(&mut self, bytes: u64) {
        self.received_unacked += bytes;
        if self.received_unacked >= WINDOW / 2 {
            let bytes = std::mem::take(&mut self.received_unacked);
            self.grant(bytes);
        }
    }

    /// Send the states of the documents whose changes this store folded into their snapshots and the peer lacks
    /// (issue 17), those of interest to it, while credit allows; the others are remembered as skipped. In
    /// certificate mode, the attested states this store keeps (see [`crate::security::attestation`]), after their
    /// attesters' certificates. Returns whether anything was queued.
    fn pump_states(&mut self, store: &dyn Replica) -> Result<bool, SyncError> {
        if self.send_credit <= 0 {
            return Ok(false);
        }
        let budget = (self.send_credit as usize).min(BATCH_BYTES * 4);
        let mut batch: Vec<(DocState, Option<Attestation>)> = Vec::new();
        let mut batch_bytes = 0usize;
        let mut queued = false;
        // From where the last look stopped, then once more from the start (documents before it may lack some now).
        let mut states = self.states_missing(store, self.states_from, budget)?;
        if states.is_empty() && self.states_from > 0 {
            states = self.states_missing(store, 0, budget)?;
        }
        self.states_from = states.last().map_or(0, |(doc, _, _)| doc + 1);
        for (doc, s, attestation) in states {
            let held =
                s.changes.peers().any(|(p, r)| r.ranges().iter().any(|&(a, b)| self.peer_known.overlaps(p, a, b)));
            if !self.of_interest(store, doc, &s.collection, held)? {
                self.skipped.union_with(&s.changes);
                continue;
            }
            self.peer_known.union_with(&s.changes);
            batch_bytes += s.state.len();
            batch.push(self.state_to_send(s, attestation));
            queued = true;
            if batch_bytes >= BATCH_BYTES {
                self.queue_states(std::mem::take(&mut batch));
                batch_bytes = 0;
            }
        }
        self.queue_states(batch);
        let wanted = self.pump_wanted_attested(store)?;
        Ok(self.pump_new_attested(store)? || wanted || queued)
    }

    /// Certificate mode: the attested states the store kept since the session started (made here, or received),
    /// from this session's last look (see [`Session::watch_attested_states`]).
    pub fn watch_attested_states(&mut self, from: i64) {
        self.attested_seq = Some(from);
    }

    /// Send the attested states kept since the last look that hold changes the peer holds (so that it can fold
    /// them) while credit allows.
    fn pump_new_attested(&mut self, store: &dyn Replica) -> Result<bool, SyncError> {
        let mut queued = false;
        while let Some(after) = self.attested_seq {
            if self.send_credit <= 0 {
                break;
            }
            let budget = (self.send_credit as usize).min(BATCH_BYTES * 4);
            let (states, last) = store.attested_kept_after(after, &self.peer_known, budget)?;
            if last == after {
                break;
            }
            self.attested_seq = Some(last);
            let mut batch = Vec::new();
            for (doc, a) in states {
                if !self.of_interest(store, doc, &a.state.collection, true)? {
                    continue;
                }
                queued = true;
                batch.push(self.state_to_send(a.state, Some(a.attestation)));
            }
            self.queue_states(batch);
        }
        Ok(queued)
    }

    /// A state about to be sent, counted against credit; an attested one's attester's chain goes ahead of it.
    fn state_to_send(&mut self, s: DocState, attestation: Option<Attestation>) -> (DocState, Option<Attestation>) {
        if let Some(a) = &attestation {
            if self.send_certificates && self.certificates_sent.insert(a.device) {
                self.outbox.push_back(Out::Certificate(a.device));
            }
        }
        self.send_credit -= s.state.len() as i64;
        self.stats.states_sent += 1;
        self.stats.state_bytes_sent += s.state.len() as u64;
        (s, attestation)
    }

    /// Send the attested states the peer asked for ([`Message::WantAttested`]) while credit allows.
    fn pump_wanted_attested(&mut self, store: &dyn Replica) -> Result<bool, SyncError> {
        let mut queued = false;
        while !self.attest_wanted.is_empty() && self.send_credit > 0 {
            let budget = (self.send_credit as usize).min(BATCH_BYTES * 4);
            let states = store.attested_states_wanted(&self.attest_wanted, self.attest_wanted_from, budget)?;
            let Some(last) = states.last().map(|(doc, _)| *doc) else {
                self.attest_wanted = Summary::new();
                break;
            };
            self.attest_wanted_from = last + 1;
            let mut batch = Vec::new();
            for (doc, a) in states {
                self.attest_wanted = self.attest_wanted.difference(&a.state.changes);
                if !self.of_interest(store, doc, &a.state.collection, true)? {
                    continue;
                }
                batch.push(self.state_to_send(a.state, Some(a.attestation)));
                queued = true;
            }
            self.queue_states(batch);
        }
        Ok(queued)
    }

    /// The states the peer lacks (see [`Replica::states_missing`]; in certificate mode, attested ones:
    /// [`Replica::attested_states_missing`]).
    #[allow(clippy::type_complexity)]
    fn states_missing(
        &self,
        store: &dyn Replica,
        from: i64,
        budget: usize,
    ) -> Result<Vec<(i64, DocState, Option<Attestation>)>, SyncError> {
        let (have, skip) = (&self.peer_known, &self.skipped);
        Ok(match self.reads {
            Some(_) => store
                .attested_states_missing(have, skip, from, budget)?
                .into_iter()
                .map(|(doc, a)| (doc, a.state, Some(a.attestation)))
                .collect(),
            None => {
                store.states_missing(have, skip, from, budget)?.into_iter().map(|(doc, s)| (doc, s, None)).collect()
            }
        })
    }

    /// Queue a batch of states as messages of at most [`MAX_STATES_PER_MESSAGE`] states: attested ones
    /// (certificate mode) or plain ones.
    fn queue_states(&mut self, mut batch: Vec<(DocState, Option<Attestation>)>) {
        while batch.len() > MAX_STATES_PER_MESSAGE {
            let rest = batch.split_off(MAX_STATES_PER_MESSAGE);
            self.queue_states(std::mem::replace(&mut batch, rest));
        }
        if batch.is_empty() {
            return;
        }
        let msg = match batch.iter().all(|(_, a)| a.is_some()) {
            true => Message::AttestedStates {
                states: batch
                    .into_iter()
                    .filter_map(|(state, a)| a.map(|attestation| AttestedState { state, attestation }))
                    .collect(),
            },
            false => Message::States { states: batch.into_iter().map(|(s, _)| s).collect() },
        };
        self.outbox.push_back(Out::Message(msg));
    }

    /// Whether a change to the store may give the session something to send (it sends changes, or may).
    pub fn may_pump(&self) -> bool {
        self.is_ready() && !self.peer_interest.is_empty() && !self.standby && !self.awaiting_summary
    }

    /// Whether announcements of what this store received from others are of use to the peer (what we asked it
    /// for is not everything: see [`Session::announce`]).
    pub fn wants_announcements(&self) -> bool {
        !self.sent_interest.as_ref().is_some_and(|i| i.contains(&Subscription::everything()))
    }

    /// Whether the peer has said what it wants and what it has.
    pub fn is_ready(&self) -> bool {
        self.got_interest && self.got_summary
    }

    /// Put the session on standby (another link to the same device carries the data) or make it carry the data
    /// again. Coming back from standby, it tells the peer what this store holds now (a [`Message::Summary`]) and
    /// asks for the peer's ([`Message::Resync`]), since much may have travelled over the other link, and sends no
    /// change until that summary arrives. What a session believes the peer holds comes only from the peer's own
    /// summaries and the changes exchanged on this link, so it can be short of the truth but never ahead of it:
    /// nothing the peer lacks is skipped, and a change it got twice is applied once (changes are idempotent).
    pub fn set_standby(&mut self, standby: bool) {
        if self.standby && !standby {
            self.queue_summary();
            self.outbox.push_back(Out::Message(Message::Resync));
            self.awaiting_summary = true;
        }
        self.standby = standby;
    }

    /// Whether the session is on standby.
    pub fn is_standby(&self) -> bool {
        self.standby
    }

    /// Produce change batches while credit allows, examining at most about [`PUMP_SCAN_BYTES`] of the log. Returns
    /// whether anything was queued. When the budget ran out before anything could be queued, a keepalive is queued
    /// so that the transport comes back for more (and the pump goes on where it stopped).
    pub fn pump(&mut self, store: &dyn Replica) -> Result<bool, SyncError> {
        if !self.is_ready() || self.peer_interest.is_empty() || self.standby || self.awaiting_summary {
            return Ok(false);
        }
        for author in std::mem::take(&mut self.resend) {
            self.peer_known.remove_author(author);
            self.skipped.remove_author(author);
        }
        let mut queued = false;
        let mut scanned = 0usize;
        // The documents of changes the peer newly holds, a slice at a time.
        if !self.recheck.is_empty() {
            let held = store.summary()?;
            while !self.recheck.is_empty() && scanned < PUMP_SCAN_BYTES {
                let entries = store.log_missing(&held.difference(&self.recheck), &Summary::new(), BATCH_BYTES * 4)?;
                if entries.is_empty() {
                    self.recheck = Summary::new();
                    break;
                }
                let mut seen = Summary::new();
                for e in entries {
                    scanned += e.wire_len();
                    seen.insert(e.peer, e.start, e.end);
                    self.touched_by_peer.insert(e.doc);
                }
                self.recheck = self.recheck.difference(&seen);
            }
        }
        // Documents the peer itself changed may have become of interest to it.
        while scanned < PUMP_SCAN_BYTES {
            let Some(doc) = self.touched_by_peer.pop_first() else { break };
            let (q, n) = self.send_doc_if_interesting(store, doc, None)?;
            queued |= q;
            scanned += n;
        }
        // States go ahead of changes: a change the peer gets of a document whose earlier changes were folded here
        // waits there for the state.
        queued |= self.pump_states(store)?;
        while self.send_credit > 0 && scanned < PUMP_SCAN_BYTES {
            let budget = (self.send_credit as usize).min(BATCH_BYTES * 4);
            let entries = store.log_missing(&self.peer_known, &self.skipped, budget)?;
            if entries.is_empty() {
                // Caught up: tell the peer what we hold of the authors just sent, to compare (issue 13).
                self.flush_batch();
                let authors: Vec<crate::PeerId> = std::mem::take(&mut self.digest_authors).into_iter().collect();
                if !authors.is_empty() {
                    self.queue_digests(store, &authors)?;
                }
                break;
            }
            // Group by document, in log order of first appearance.
            let mut by_doc: BTreeMap<i64, Vec<LogEntry>> = BTreeMap::new();
            let mut order = Vec::new();
            for e in entries {
                scanned += e.wire_len();
                if !by_doc.contains_key(&e.doc) {
                    order.push(e.doc);
                }
                by_doc.entry(e.doc).or_default().push(e);
            }
            for doc in order {
                // Documents not looked at for lack of budget are listed again by the next pump (they are neither
                // sent nor skipped).
                if scanned >= PUMP_SCAN_BYTES {
                    break;
                }
                let entries = by_doc.remove(&doc).unwrap_or_default();
                let (q, n) = self.send_doc_if_interesting(store, doc, Some(entries))?;
                queued |= q;
                scanned += n;
            }
        }
        self.flush_batch();
        // Documents that became of interest to the peer while changes were sent (see `send_doc_if_interesting`).
        queued |= self.pump_states(store)?;
        if !queued && scanned >= PUMP_SCAN_BYTES {
            self.grant(0);
        }
        Ok(queued)
    }

    /// Send every change of `doc` the peer lacks if the document is of interest to it; otherwise remember `seen`
    /// (the entries that led us here) as skipped. Returns whether anything was queued, and the bytes of log read
    /// besides `seen`.
    fn send_doc_if_interesting(
        &mut self,
        store: &dyn Replica,
        doc: i64,
        seen: Option<Vec<LogEntry>>,
    ) -> Result<(bool, usize), SyncError> {
        // Fast path: the peer wants the whole collection and nothing was ever skipped for it, so every change of
        // the document it lacks is among those the log just listed (or comes in a later batch): no need to read
        // the document's whole log.
        if let Some(seen) = &seen {
            if self.skipped.is_empty()
                && seen
                    .first()
                    .is_some_and(|e| self.peer_interest.wants_all_of(&e.collection) && self.reads_all_of(&e.collection))
            {
                let missing: Vec<LogEntry> =
                    seen.iter().filter(|e| !self.peer_known.contains(e.peer, e.start, e.end)).cloned().collect();
                return Ok((self.send_entries(missing), 0));
            }
        }
        let log = store.log_of_doc(doc)?;
        let mut read: usize = log.iter().map(LogEntry::wire_len).sum();
        let Some(first) = log.first() else { return Ok((false, read)) };
        // Checking the document against long filters costs more than reading it: charged too.
        read += self.peer_interest.filter_work(&first.collection) * FILTER_WORK_WEIGHT;
        let held = log.iter().any(|e| self.peer_known.contains(e.peer, e.start, e.end));
        if !self.of_interest(store, doc, &first.collection, held)? {
            for e in seen.unwrap_or_default() {
                self.skipped.insert(e.peer, e.start, e.end);
            }
            return Ok((false, read));
        }
        // Changes folded into the document's snapshot that the peer lacks come as its state, which an earlier look
        // may have skipped: look at it again.
        let folded = store.folded_of_doc(doc)?;
        if !folded.is_empty() {
            self.skipped = self.skipped.difference(&folded);
        }
        let missing: Vec<LogEntry> =
            log.into_iter().filter(|e| !self.peer_known.contains(e.peer, e.start, e.end)).collect();
        Ok((self.send_entries(missing), read))
    }

    /// Whether document `doc` of `collection` is to be sent to the peer: its interest covers the collection, the
    /// document matches it or the peer holds some of it already (`held`), and the peer may read it.
    fn of_interest(&self, store: &dyn Replica, doc: i64, collection: &str, held: bool) -> Result<bool, SyncError> {
        if !self.peer_interest.covers_collection(collection) {
            return Ok(false);
        }
        if self.reads_all_of(collection) {
            return Ok(held || self.peer_interest.matches(collection, store.view_of_doc(doc)?.as_ref()));
        }
        // The read rules are a hard limit: a document the peer may not read now is not sent, even when the peer
        // holds an earlier version of it (it keeps that stale copy rather than learn what changed).
        let view = store.view_of_doc(doc)?;
        Ok(self.reads.as_ref().is_none_or(|r| r.may_read(collection, view.as_ref()))
            && (held || self.peer_interest.matches(collection, view.as_ref())))
    }

    /// Queue `missing` (changes the peer lacks) into change batches; whether there were any.
    fn send_entries(&mut self, missing: Vec<LogEntry>) -> bool {
        if missing.is_empty() {
            return false;
        }
        // The document's version goes with its first change, unless the peer holds some of the document: a change
        // reaching a writer's counter in it, or one the first change depends on (a live edit of a document the peer
        // has); see `first_copy`.
        let holds = |writer, counter| counter > 0 && self.peer_known.contains(writer, counter, counter);
        let first = missing.first();
        let mut version = first
            .and_then(|e| e.version.as_deref())
            .filter(|v| version_wire_len(v) <= MAX_VERSION_BYTES)
            .filter(|v| !v.iter().any(|(w, n)| holds(w, n)))
            .filter(|_| {
                first.is_some_and(|e| Change::decode(&e.body).is_ok_and(|c| !c.deps.iter().any(|(w, n)| holds(w, n))))
            })
            .cloned();
        for e in missing {
            self.peer_known.insert(e.peer, e.start, e.end);
            self.digest_authors.insert(e.peer);
            // A batch must stay within what the receiver accepts in one `apply_changes` (MAX_BATCH_COST): a few
            // bytes can cost much (a delete of a whole long text), so batches are cut by cost as well as by size.
            let cost = Change::decode(&e.body).map_or(MAX_CHANGE_COST, |c| c.cost());
            if self.batch_cost.saturating_add(cost) > MAX_BATCH_COST / 2 {
                self.flush_batch();
            }
            self.batch_cost = self.batch_cost.saturating_add(cost);
            if let Some(sig) = &e.signature {
                if self.send_certificates && self.certificates_sent.insert(sig.device) {
                    // Ahead of the batch this change goes in (the batch is queued when flushed).
                    self.outbox.push_back(Out::Certificate(sig.device));
                }
            }
            let wire = e.to_wire();
            let version = version.take();
            self.stats.versions_sent += u64::from(version.is_some());
            let len = wire.len() + version.as_ref().map_or(0, version_wire_len);
            self.batch_bytes += len;
            self.send_credit -= len as i64;
            self.batch.push(WireChange { change: wire, signature: e.signature, version });
            if self.batch_bytes >= BATCH_BYTES {
                self.flush_batch();
            }
        }
        true
    }

    /// Queue [`Message::Digests`] of `authors` for the peer to compare (issue 13).
    fn queue_digests(&mut self, store: &dyn Replica, authors: &[crate::PeerId]) -> Result<(), SyncError> {
        let digests = store.author_digests(Some(authors))?;
        for chunk in digests.chunks(MAX_DIGESTS_PER_MESSAGE) {
            self.outbox.push_back(Out::Message(Message::Digests { authors: chunk.to_vec() }));
        }
        Ok(())
    }

    /// Queue the changes gathered so far as one message.
    fn flush_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let changes = std::mem::take(&mut self.batch);
        self.batch_cost = 0;
        self.stats.changes_sent += changes.len() as u64;
        self.stats.change_bytes_sent += std::mem::take(&mut self.batch_bytes) as u64;
        self.outbox.push_back(Out::Message(Message::Changes { changes }));
    }

    /// Tell the peer we now hold `changes`, received from another device, unless what we asked it for is
    /// everything (then it sends us every change anyway). Without this, a peer deciding what is of interest to us
    /// by filter would not know we hold a document we got elsewhere, and would skip the edit that makes it leave
    /// the filter (or removes it): we would keep a stale copy. Announcements not sent yet are merged into one.
    pub fn announce(&mut self, changes: &Summary) {
        if self.wants_announcements() && !changes.is_empty() {
            if self.announce_due.is_empty() {
                self.outbox.push_back(Out::Announce);
            }
            self.announce_due.union_with(changes);
        }
    }

    /// Queue a presence record (a [`Message::Presence`]); one not sent yet for the same device is replaced.
    pub fn queue_presence(&mut self, origin: [u8; 32], msg: Arc<Message>) {
        if let Message::Presence { signature: Some(sig), .. } = &*msg {
            if self.send_certificates && self.certificates_sent.insert(sig.device) {
                // Its signer's chain goes ahead of it, as for changes.
                self.outbox.push_back(Out::Certificate(sig.device));
            }
        }
        if self.presence_due.insert(origin, msg).is_none() {
            self.outbox.push_back(Out::Presence(origin));
        }
    }

    /// Send the peer only the documents `rules` let it read (from its certificate, checked in the handshake).
    pub fn set_read_rules(&mut self, rules: crate::security::certificate::ReadRules) {
        self.reads = Some(rules);
    }

    /// Send the chain of each signer ahead of its first change (certificate mode).
    pub fn send_certificates(&mut self) {
        self.send_certificates = true;
    }

    /// The peer holds the chain of signer `device` (its own): never send it.
    pub fn peer_holds_certificate(&mut self, device: crate::PeerId) {
        self.certificates_sent.insert(device);
    }

    /// What the peer may read (its certificate's read grants); `None` in development mode.
    pub fn read_rules(&self) -> Option<&crate::security::certificate::ReadRules> {
        self.reads.as_ref()
    }

    /// Whether the peer may read every document of `collection`.
    fn reads_all_of(&self, collection: &str) -> bool {
        self.reads.as_ref().is_none_or(|r| r.reads_all_of(collection))
    }

    /// Queue a message to go before everything queued (revocation lists, first thing on a link).
    pub fn queue_first(&mut self, msg: Message) {
        self.outbox.push_front(Out::Message(msg));
    }

    /// Queue a message that is not the session's own (attachments).
    pub fn queue(&mut self, msg: Message) {
        self.outbox.push_back(Out::Message(msg));
    }

    /// Queue a stable frontier ([`Message::Frontier`]), after its attester's chain when the peer may lack it.
    pub fn queue_frontier(&mut self, frontier: crate::security::StableFrontier) {
        if self.send_certificates && self.certificates_sent.insert(frontier.attestation.device) {
            self.outbox.push_back(Out::Certificate(frontier.attestation.device));
        }
        self.queue(Message::Frontier { frontier });
    }

    /// Whether the peer stopped reading: more than [`MAX_OUTBOX_MESSAGES`] messages wait for it.
    pub fn is_backlogged(&self) -> bool {
        self.outbox.len() > MAX_OUTBOX_MESSAGES
    }

    /// How many messages wait to be sent.
    pub fn queued(&self) -> usize {
        self.outbox.len()
    }

    /// Whether messages other than presence records wait to be sent (each record queued has one entry).
    pub fn has_urgent_output(&self) -> bool {
        self.outbox.len() > self.presence_due.len()
    }

    /// The next message to send.
    pub fn poll_message(&mut self, store: &dyn Replica) -> Result<Option<Message>, SyncError> {
        while let Some(next) = self.outbox.pop_front() {
            if let Some(m) = self.produce(store, next)? {
                return Ok(Some(m));
            }
        }
        Ok(None)
    }

    /// The message an outbox entry stands for, as of now.
    fn produce(&mut self, store: &dyn Replica, next: Out) -> Result<Option<Message>, SyncError> {
        Ok(Some(match next {
            Out::Message(m) => m,
            Out::Summary => {
                self.summary_queued = false;
                Message::Summary { summary: store.summary()? }
            }
            Out::Interest => {
                self.interest_queued = false;
                Message::Interest { subscriptions: self.sent_interest.clone().unwrap_or_default() }
            }
            Out::Announce => Message::Summary { summary: std::mem::take(&mut self.announce_due) },
            Out::Credit => {
                self.credit_queued = false;
                Message::Credit { bytes: std::mem::take(&mut self.credit_due) }
            }
            Out::Presence(origin) => return Ok(self.presence_due.remove(&origin).map(Arc::unwrap_or_clone)),
            Out::Certificate(device) => match store.certificate(device)? {
                Some(chain) => Message::Certificates { chains: vec![chain] },
                None => {
                    log::warn!("no certificate chain kept for signer {device}; its changes will be refused");
                    return Ok(None);
                }
            },
        }))
    }
}
