//! How a replica judges a received change — the rules every replica applies, whatever it stores in.
//!
//! A change is a duplicate, an equivocation of its author (another change already holds some of its counters:
//! refused, both kept as evidence), waiting for its dependencies (kept aside within per-author and total quotas),
//! refused by its author's permissions, or applied with the CRDT code — and applying it may make changes kept
//! aside ready. These rules are written once, here, against a [`Ledger`]: what judging needs from the storage of
//! one batch. A phone's SQLite write transaction is one ledger; the cloud peer's PostgreSQL transaction
//! (`shoaldb-cloud`) is another. Both therefore reach the same state and the same [`ApplyReport`] for the same
//! changes.

use super::replicate::{encode_doc_change, ApplyReport, DocChange, CHANGE_HASH_BYTES};
use super::MAX_PENDING_CHANGES;
use crate::crdt::change::Change;
use crate::crdt::clock::PeerId;
use crate::crdt::document::{Applied, Document};
use crate::error::Result;
use crate::security::{ChangeCheck, ChangeSignature, RefusalReason, Refused};
use serde_json::Value as Json;
use std::collections::{BTreeMap, BTreeSet};

pub use super::docs::LoggedChange;
pub use super::pending::MAX_PENDING_PER_AUTHOR;

/// A document's (collection, id).
pub type DocKey = (String, String);

/// A change kept aside: its author, first counter, encoding ([`Change::encode`]) and encoded signature.
pub type PendingChange = (PeerId, u64, Vec<u8>, Option<Vec<u8>>);

/// A logged change in the form stores exchange ([`DocChange::encode`]) and its encoded signature (each `None` when
/// absent).
pub type LoggedEncoding = (Option<Vec<u8>>, Option<Vec<u8>>);

/// A change kept aside, as kept: its document's collection and id, its encoding and its encoded signature.
pub type KeptAside = (String, String, Vec<u8>, Option<Vec<u8>>);

/// What judging records while a batch goes on; each [`Ledger`] owns one.
#[derive(Debug, Default)]
pub struct Judged {
    /// Changes applied in this batch (not in the log yet): (author, start) → (end, content hash).
    pub added: BTreeMap<(PeerId, u64), (u64, [u8; CHANGE_HASH_BYTES])>,
    /// What happened to the batch's changes.
    pub report: ApplyReport,
    /// Changes of this batch kept aside (author, start): one that becomes ready within the batch and turns out
    /// malformed fails the batch, as it would have had its dependencies been here first.
    pub kept_aside: BTreeSet<(PeerId, u64)>,
}

/// How a received change relates to the changes held of its author.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// None of its counters is held.
    No,
    /// It is held: the same change.
    Same,
    /// Some of its counters are held by another change: an equivocation, recorded and refused.
    Conflict,
}

/// What judging a batch of received changes needs from the storage it writes into (inside one transaction).
pub trait Ledger {
    /// What judging recorded so far in this batch.
    fn judged(&mut self) -> &mut Judged;

    /// Whether judging goes on for a change none of whose counters is held (a phone ignores changes of documents it
    /// evicted, counting them in the report, and lets their clocks move its own).
    fn admit(&mut self, dc: &DocChange) -> Result<bool>;

    /// The document `collection/id` as the batch has it (loaded on first use; empty when the replica lacks it).
    fn doc(&mut self, collection: &str, id: &str) -> Result<&mut Document>;

    /// The changes this batch applied to the document `collection/id` so far, in order.
    fn new_changes(&self, collection: &str, id: &str) -> &[LoggedChange];

    /// The change of `author` starting at `start` that this batch applied, with its document's collection and id
    /// (looked for only when another change claims its counters: an equivocation within a batch).
    fn applied_change(&self, author: PeerId, start: u64) -> Option<(&str, &str, &LoggedChange)>;

    /// Whether any counter of `author`'s `start..=end` is held (logged, or applied in this batch).
    fn holds_any(&mut self, author: PeerId, start: u64, end: u64) -> Result<bool>;

    /// Whether every counter of `author`'s `start..=end` is held as a change folded into a snapshot (no longer in
    /// the log, so a received change cannot be compared with it). (The default, for replicas that do not compact:
    /// no.)
    fn folded_covers(&mut self, author: PeerId, start: u64, end: u64) -> Result<bool> {
        let _ = (author, start, end);
        Ok(false)
    }

    /// The logged change of `author` with the greatest start at or before `counter`: (start, end, content hash).
    fn logged_before(&mut self, author: PeerId, counter: u64) -> Result<Option<(u64, u64, [u8; CHANGE_HASH_BYTES])>>;

    /// The logged change `author:start` in the form stores exchange ([`DocChange::encode`]), and its encoded
    /// signature.
    fn logged_change(&mut self, author: PeerId, start: u64) -> Result<LoggedEncoding>;

    /// The encodings of the logged changes of `collection/id` (not this batch's), in log order.
    fn logged_bodies(&mut self, collection: &str, id: &str) -> Result<Vec<Vec<u8>>>;

    /// Keep the evidence that `author` made two different changes at `counter`: each in the form stores exchange,
    /// with its encoded signature.
    fn record_equivocation(
        &mut self,
        author: PeerId,
        counter: u64,
        held: (&[u8], Option<&[u8]>),
        refused: (&[u8], Option<&[u8]>),
    ) -> Result<()>;

    /// How many changes of `author` are kept aside.
    fn pending_count(&mut self, author: PeerId) -> Result<usize>;

    /// How many changes are kept aside in all.
    fn pending_total(&mut self) -> Result<usize>;

    /// The author with the most changes kept aside, and how many.
    fn pending_largest(&mut self) -> Result<Option<(PeerId, usize)>>;

    /// Drop the kept-aside change of `author` with the highest counter; returns its counter.
    fn pending_drop_highest(&mut self, author: PeerId) -> Result<Option<u64>>;

    /// Keep `dc` (encoded as `logged`) aside. When a change of the same author and first counter is kept aside
    /// already, nothing is written and that one is returned: (collection, id, encoding, signature).
    fn pending_insert(&mut self, dc: &DocChange, logged: &LoggedChange) -> Result<Option<KeptAside>>;

    /// The changes of `collection/id` kept aside (those this batch took out excluded).
    fn pending_of(&mut self, collection: &str, id: &str) -> Result<Vec<PendingChange>>;

    /// The kept-aside change `author:start` of `collection/id` was taken out: applied, or dropped.
    fn pending_taken(&mut self, collection: &str, id: &str, author: PeerId, start: u64) -> Result<()>;

    /// `logged` was just applied to the document `collection/id`: remember it as held and as part of the batch
    /// (after [`Ledger::judged`]'s `added`, which [`log_applied`] updates).
    fn applied(&mut self, collection: &str, id: &str, logged: LoggedChange);
}

/// Judge the received change `dc` (validated by the caller) and apply it if it is to be: see the module docs.
/// `check` is certificate mode's permission check.
pub fn receive(l: &mut impl Ledger, dc: &DocChange, check: Option<&dyn ChangeCheck>) -> Result<()> {
    let c = &dc.change;
    let logged = LoggedChange::of(&dc.collection, &dc.doc_id, c).with_signature(dc.signature.as_ref());
    match held(l, &dc.collection, &dc.doc_id, &logged)? {
        Held::Same => {
            l.judged().report.duplicates += 1;
            return Ok(());
        }
        Held::Conflict => {
            l.judged().report.refused += 1;
            return Ok(());
        }
        Held::No => {}
    }
    if !l.admit(dc)? {
        return Ok(());
    }
    match l.doc(&dc.collection, &dc.doc_id)?.readiness(c) {
        Err(e) => {
            log::warn!("refused change {}:{} of {}/{}: {e}", c.peer, c.start, dc.collection, dc.doc_id);
            l.judged().report.refused += 1;
        }
        Ok(Applied::Duplicate) => l.judged().report.duplicates += 1,
        Ok(Applied::NotReady) => {
            if keep_pending(l, dc, &logged)? {
                l.judged().report.pending += 1;
                l.judged().kept_aside.insert((c.peer, c.start));
            } else {
                l.judged().report.refused += 1;
            }
        }
        Ok(Applied::Applied) => {
            if let Err(reason) = may_write(l, dc, check) {
                l.judged().report.refuse(Refused::of(dc, reason));
                return Ok(());
            }
            l.doc(&dc.collection, &dc.doc_id)?.apply_validated(c)?;
            log_applied(l, &dc.collection, &dc.doc_id, logged);
            l.judged().report.applied += 1;
            drain_pending(l, &dc.collection, &dc.doc_id, check)?;
        }
    }
    Ok(())
}

/// Record a change just applied to a document of the batch.
fn log_applied(l: &mut impl Ledger, collection: &str, id: &str, logged: LoggedChange) {
    l.judged().added.insert((logged.peer, logged.start), (logged.end, logged.hash));
    l.applied(collection, id, logged);
}

/// Whether `check` (if any) lets `dc`'s author write it, its dependencies being here.
fn may_write(
    l: &mut impl Ledger,
    dc: &DocChange,
    check: Option<&dyn ChangeCheck>,
) -> std::result::Result<(), RefusalReason> {
    match check {
        None => Ok(()),
        Some(check) => check.may_write(dc, &mut || doc_as_seen(l, &dc.collection, &dc.doc_id, &dc.change)),
    }
}

/// The document `collection/id` as the author of `c` saw it (see [`ChangeCheck::may_write`]): its view at `c`'s
/// dependencies, or, if it did not exist then, as `c` makes it. When the document is at exactly those dependencies
/// (nothing concurrent arrived: the usual case) that is its current state; otherwise it is rebuilt from its changes
/// in the log that the dependencies cover.
fn doc_as_seen(l: &mut impl Ledger, collection: &str, id: &str, c: &Change) -> Result<Option<Json>> {
    let current = l.doc(collection, id)?;
    let mut doc = if current.version() == &c.deps {
        if let Some(view) = current.view(id) {
            return Ok(Some(view));
        }
        current.clone()
    } else {
        let mut bodies = l.logged_bodies(collection, id)?;
        bodies.extend(l.new_changes(collection, id).iter().map(|n| n.body.clone()));
        let mut doc = Document::new();
        for body in bodies {
            let earlier = Change::decode(&body)?;
            if earlier.end() <= c.deps.get(earlier.peer) {
                doc.apply(&earlier)?;
            }
        }
        if let Some(view) = doc.view(id) {
            return Ok(Some(view));
        }
        doc
    };
    doc.apply(c)?;
    Ok(doc.view(id))
}

/// Whether the replica holds `logged` (of document `collection/id`), none of its counters, or another change for
/// some of them — an equivocation of its author, which is logged and recorded with both versions.
fn held(l: &mut impl Ledger, collection: &str, id: &str, logged: &LoggedChange) -> Result<Held> {
    let (peer, start, end) = (logged.peer, logged.start, logged.end);
    if !l.holds_any(peer, start, end)? {
        return Ok(Held::No);
    }
    if l.folded_covers(peer, start, end)? {
        // Folded into a snapshot: held, but its content is gone. (Equivocation is detected on logged changes.)
        return Ok(Held::Same);
    }
    // The held change with the greatest start at or before `end`: received in this batch, or logged.
    let in_batch = l.judged().added.range(..=(peer, end)).next_back().filter(|((p, _), _)| *p == peer);
    let in_batch = in_batch.map(|(&(_, s), (e, h))| (s, *e, *h, true));
    let logged_before = l.logged_before(peer, end)?.map(|(s, e, h)| (s, e, h, false));
    let existing = match (in_batch, logged_before) {
        (Some(a), Some(b)) => Some(if a.0 >= b.0 { a } else { b }),
        (a, b) => a.or(b),
    };
    if existing.as_ref().is_some_and(|&(s, e, h, _)| s == start && e == end && h == logged.hash) {
        return Ok(Held::Same);
    }
    let (held, held_sig) = match &existing {
        Some((s, _, _, true)) => l
            .applied_change(peer, *s)
            .map(|(c, i, n)| (Some(encode_doc_change(c, i, &n.body)), n.signature.clone()))
            .unwrap_or_default(),
        Some((s, _, _, false)) => l.logged_change(peer, *s)?,
        None => (None, None),
    };
    log::warn!(
        "equivocation: author {peer} made two different changes at counters {start}..={end} (held: {}); refused {collection}/{id}'s",
        existing.map_or("an unknown change".to_string(), |(s, e, _, _)| format!("{s}..={e}"))
    );
    let refused = encode_doc_change(collection, id, &logged.body);
    l.record_equivocation(
        peer,
        start,
        (&held.unwrap_or_default(), held_sig.as_deref()),
        (&refused, logged.signature.as_deref()),
    )?;
    Ok(Held::Conflict)
}

/// Keep a change whose dependencies have not arrived, within the per-author quota and the total cap, shared fairly
/// (when full, the author holding most gives up its highest counter). Returns `false` when another change for the
/// same author and counter is kept aside already (an equivocation: recorded, and this one refused).
fn keep_pending(l: &mut impl Ledger, dc: &DocChange, logged: &LoggedChange) -> Result<bool> {
    let c = &dc.change;
    let mine = l.pending_count(c.peer)?;
    if mine >= MAX_PENDING_PER_AUTHOR {
        log::warn!(
            "author {} has {mine} changes pending already; dropping {}:{} (it will be sent again)",
            c.peer,
            c.peer,
            c.start
        );
        return Ok(true);
    }
    if l.pending_total()? >= MAX_PENDING_CHANGES {
        match l.pending_largest()? {
            Some((big, rows)) if rows > mine + 1 => {
                // Make room at the expense of the largest holder: its highest counter goes.
                if let Some(top) = l.pending_drop_highest(big)? {
                    log::warn!(
                        "pending changes full; dropped {big}:{top} (of the author holding most) for {}:{}",
                        c.peer,
                        c.start
                    );
                }
            }
            _ => {
                log::warn!("pending changes full; dropping {}:{} (it will be sent again)", c.peer, c.start);
                return Ok(true);
            }
        }
    }
    if let Some((held_collection, held_id, held_body, held_sig)) = l.pending_insert(dc, logged)? {
        // Already pending: the same change, or another one at the same counter (an equivocation).
        if held_body != logged.body || held_collection != dc.collection || held_id != dc.doc_id {
            log::warn!(
                "equivocation: author {} made two different changes at counter {} (both pending); keeping the first",
                c.peer,
                c.start
            );
            let held = encode_doc_change(&held_collection, &held_id, &held_body);
            let refused = encode_doc_change(&dc.collection, &dc.doc_id, &logged.body);
            l.record_equivocation(
                c.peer,
                c.start,
                (&held, held_sig.as_deref()),
                (&refused, logged.signature.as_deref()),
            )?;
            return Ok(false);
        }
    }
    Ok(true)
}

/// Apply the changes of one document kept aside that have become ready, until none is.
pub fn drain_pending(l: &mut impl Ledger, collection: &str, id: &str, check: Option<&dyn ChangeCheck>) -> Result<()> {
    loop {
        let mut progressed = false;
        for (peer, start, body, sig) in l.pending_of(collection, id)? {
            let taken = match Change::decode(&body) {
                Ok(change) => {
                    let signature = sig.as_deref().and_then(ChangeSignature::decode);
                    let dc = DocChange { collection: collection.into(), doc_id: id.into(), change, signature };
                    let logged = LoggedChange::of(collection, id, &dc.change).with_signature(dc.signature.as_ref());
                    let (taken, applied) = take_pending(l, &dc, logged, check)?;
                    progressed |= applied;
                    taken
                }
                Err(e) => {
                    log::warn!("dropping corrupt pending change {peer}:{start}: {e}");
                    true
                }
            };
            if taken {
                l.pending_taken(collection, id, peer, start)?;
            }
        }
        if !progressed {
            return Ok(());
        }
    }
}

/// Judge a change kept aside again. Returns whether it leaves the changes kept aside, and whether it was applied.
fn take_pending(
    l: &mut impl Ledger,
    dc: &DocChange,
    logged: LoggedChange,
    check: Option<&dyn ChangeCheck>,
) -> Result<(bool, bool)> {
    let (collection, id) = (dc.collection.as_str(), dc.doc_id.as_str());
    match held(l, collection, id, &logged)? {
        Held::Same => return Ok((true, false)),
        Held::Conflict => {
            let report = &mut l.judged().report;
            report.refused += 1;
            report.pending = report.pending.saturating_sub(1);
            return Ok((true, false));
        }
        Held::No => {}
    }
    let refusal = match l.doc(collection, id)?.readiness(&dc.change) {
        Ok(Applied::Applied) => may_write(l, dc, check).err(),
        _ => None,
    };
    let applied = match refusal {
        Some(reason) => {
            let report = &mut l.judged().report;
            report.pending = report.pending.saturating_sub(1);
            report.refuse(Refused::of(dc, reason));
            Ok(Applied::Duplicate)
        }
        None => l.doc(collection, id)?.apply_validated(&dc.change),
    };
    match applied {
        Ok(Applied::Applied) => {
            log_applied(l, collection, id, logged);
            let report = &mut l.judged().report;
            report.applied += 1;
            report.pending = report.pending.saturating_sub(1);
            Ok((true, true))
        }
        Ok(Applied::Duplicate) => Ok((true, false)),
        Ok(Applied::NotReady) => Ok((false, false)),
        // Malformed, and received in this batch: the batch fails (nothing of it is written).
        Err(e) if l.judged().kept_aside.contains(&(dc.change.peer, dc.change.start)) => Err(e.into()),
        Err(e) => {
            // Received earlier: the batch that made it ready is not at fault.
            log::warn!("dropping pending change {}:{} of {collection}/{id}: {e}", dc.change.peer, dc.change.start);
            Ok((true, false))
        }
    }
}
