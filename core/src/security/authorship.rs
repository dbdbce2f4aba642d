//! Signed changes: authorship every device can check, offline.
//!
//! An enrolled device signs every change it makes ([`ChangeSignature`]: Ed25519 over the BLAKE3 digest of the
//! change's [`DocChange`] encoding, so the collection and document are signed too). The signature names the signing
//! device (its id, [`VerifyingKey::device_id`]) and which of its author chains the change belongs to: the change's
//! author must be that key's [`VerifyingKey::author`]`(chain)`, so nobody can write under another device's author
//! id. The log keeps each signature beside its change and sync forwards both unchanged, so a change arrives signed
//! however many devices relayed it.
//!
//! A device in certificate mode checks every change it receives before applying it ([`CertificateCheck`]), relays
//! included:
//!
//! 1. on receipt — the signature, the signer's certificate chain (to a pinned authority; chains travel in
//!    [`Message::Certificates`](crate::sync::wire::Message::Certificates) ahead of the changes that need them, and
//!    are kept, so a relay can pass them on), that the author is one of the signer's, and revocation (a revoked
//!    certificate or key, or an author's changes past a revocation's `accept_until`);
//! 2. when it applies — the signer's write permission: the collection, the field paths the change touches, and the
//!    grant's filter, evaluated on the document **as the author saw it** (its state at the change's dependencies,
//!    or — for a document that did not exist then — as the change makes it). That state is the same on every
//!    device whatever order changes arrive in, so every device accepts and refuses the same changes and all
//!    converge.
//!
//! A change that fails is refused alone ([`Refused`], counted in [`ApplyReport::refused`](crate::ApplyReport)); the
//! others of its batch are applied. Certificates are not checked against their validity period here (that bounds
//! links, and an expired device cannot open one): a change made while its author was enrolled stays good. To cut
//! off what a device wrote after some point, the authority revokes its author with `accept_until`.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::access::Enrolment;
use super::certificate::{CertificateChain, CertificateError, VerifiedDevice};
use super::signing::{PreparedKey, Signature, SigningKey, VerifyingKey};
use crate::crdt::change::Seg;
use crate::crdt::clock::PeerId;
use crate::crdt::path::PathSegment;
use crate::store::{DocChange, Replica};

/// The signature context of changes.
const CHANGE_CONTEXT: &str = "shoal change v1";

/// The most threads that check the signatures of one batch of received changes.
pub const MAX_VERIFY_THREADS: usize = 4;

/// The fewest changes in a batch whose signatures are checked on several threads (fewer are not worth a thread).
const PARALLEL_VERIFY_MIN: usize = 16;

/// The most signer certificates a device keeps decoded in memory (those beyond are read from its store again when
/// needed): a fleet's worth.
pub const MAX_CACHED_SIGNERS: usize = 65_536;

/// A change's signature by its author's device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeSignature {
    /// The signing device's id ([`VerifyingKey::device_id`]): whose certificate the signature is checked with.
    pub device: PeerId,
    /// Which of the device's author ids wrote the change: the change's author is the key's
    /// [`author`](VerifyingKey::author)`(chain)`.
    pub chain: u32,
    /// Ed25519 over the change's digest ([`crate::store::change_digest`]).
    pub signature: Signature,
}

impl ChangeSignature {
    /// `key`'s signature of the change whose digest is `digest`, written as its author `chain`.
    pub(crate) fn sign(key: &SigningKey, chain: u32, digest: &[u8; 32]) -> ChangeSignature {
        let device = key.verifying_key().device_id();
        ChangeSignature { device, chain, signature: key.sign(CHANGE_CONTEXT, digest) }
    }

    /// Whether this is `key`'s signature of the change of `author` with `digest`.
    pub(crate) fn verifies(&self, key: &VerifyingKey, author: PeerId, digest: &[u8; 32]) -> Result<(), RefusalReason> {
        let prepared = key.prepare().ok_or(RefusalReason::BadSignature)?;
        self.verifies_prepared(key, &prepared, author, digest)
    }

    fn verifies_prepared(
        &self,
        key: &VerifyingKey,
        prepared: &PreparedKey,
        author: PeerId,
        digest: &[u8; 32],
    ) -> Result<(), RefusalReason> {
        self.is_authors(key, author)?;
        match PreparedKey::verify_batch(CHANGE_CONTEXT, &[(prepared, digest, &self.signature)]) {
            true => Ok(()),
            false => Err(RefusalReason::BadSignature),
        }
    }

    /// Whether the change's `author` is one of `key`'s author ids (the one of this signature's chain).
    fn is_authors(&self, key: &VerifyingKey, author: PeerId) -> Result<(), RefusalReason> {
        match key.author(self.chain) == author {
            true => Ok(()),
            false => Err(RefusalReason::NotAuthor { device: self.device }),
        }
    }

    /// The stored form (postcard).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Reads the stored form; `None` if it is not one.
    pub fn decode(bytes: &[u8]) -> Option<ChangeSignature> {
        postcard::from_bytes(bytes).ok()
    }
}

/// The signature context of presence records.
const PRESENCE_CONTEXT: &str = "shoal presence v1";

/// A presence record's signature by the device it describes (certificate mode): relays flood the record with it
/// unchanged, and every device checks it against that device's certificate (whose Noise key must be the record's
/// origin), so no device can announce links — or a name — for another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceSignature {
    /// The signing device's id (whose certificate to check it with).
    pub device: PeerId,
    /// Ed25519 over the record (see [`presence_message`]).
    pub signature: Signature,
}

/// What a presence record's signature covers: its origin, number, name and links.
fn presence_message(origin: &[u8; 32], seq: u64, name: &str, links: &[crate::sync::wire::PresenceLink]) -> Vec<u8> {
    postcard::to_stdvec(&(origin, seq, name, links)).unwrap_or_default()
}

impl PresenceSignature {
    /// `enrolment`'s signature of the record of this device (`origin`, its Noise key).
    pub(crate) fn sign(
        enrolment: &Enrolment,
        origin: &[u8; 32],
        seq: u64,
        name: &str,
        links: &[crate::sync::wire::PresenceLink],
    ) -> PresenceSignature {
        let key = enrolment.signing_key();
        PresenceSignature {
            device: key.verifying_key().device_id(),
            signature: key.sign(PRESENCE_CONTEXT, &presence_message(origin, seq, name, links)),
        }
    }
}

/// Why a received change was refused (see the [module documentation](self)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefusalReason {
    /// The change carries no signature (its author was not enrolled, or the signature was stripped).
    #[error("it is not signed")]
    Unsigned,
    /// No valid certificate chain is known for the signing device (none was sent ahead of the change).
    #[error("no certificate is known for its signer {0}")]
    UnknownSigner(PeerId),
    /// The signature does not verify: the change was altered, or signed by someone else.
    #[error("its signature does not verify")]
    BadSignature,
    /// The change's author is not one of the signing device's author ids: an attempt to write under another
    /// device's id.
    #[error("its author is not one of signer {device}'s")]
    NotAuthor {
        /// The device that signed.
        device: PeerId,
    },
    /// The signer's certificate (or key, or author) is revoked.
    #[error("revoked: {0}")]
    Revoked(String),
    /// The signer may not write this: the text says what (the collection, a field path, or the grant's filter).
    #[error("not permitted: {0}")]
    NotPermitted(String),
}

/// A received change refused by the checks of certificate mode, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("change {author}:{start} of {collection}/{doc_id} refused: {reason}")]
pub struct Refused {
    /// The change's author.
    pub author: PeerId,
    /// Its first counter.
    pub start: u64,
    /// Its document's collection.
    pub collection: String,
    /// Its document's id.
    pub doc_id: String,
    /// Why.
    pub reason: RefusalReason,
}

impl Refused {
    /// The refusal of `dc`, for `reason`.
    pub fn of(dc: &DocChange, reason: RefusalReason) -> Refused {
        Refused {
            author: dc.change.peer,
            start: dc.change.start,
            collection: dc.collection.clone(),
            doc_id: dc.doc_id.clone(),
            reason,
        }
    }
}

/// What the store asks before applying a received change (see [`Replica::apply_checked`]).
pub trait ChangeCheck {
    /// Whether the signer of `change` (already found authentic on receipt) may write it. `as_seen` gives the
    /// document as the change's author saw it: its JSON view at the change's dependencies, or — if it did not
    /// exist then — as the change makes it (`None` when it does not exist either way); it is computed only when a
    /// filter needs it.
    ///
    /// # Errors
    /// The reason the change is refused.
    fn may_write(
        &self,
        change: &DocChange,
        as_seen: &mut dyn FnMut() -> crate::Result<Option<serde_json::Value>>,
    ) -> Result<(), RefusalReason>;
}

/// A signer's certificate, checked once (its chain leads to a pinned authority); revocation is checked at each use.
#[derive(Debug)]
struct KnownSigner {
    chain: CertificateChain,
    encoded: Vec<u8>,
    device: VerifiedDevice,
    key: PreparedKey,
}

/// The certificates of the devices whose changes this device has checked: from handshakes, from
/// [`Message::Certificates`](crate::sync::wire::Message::Certificates), and from its store (where they are kept so
/// that they hold across restarts and can be passed on).
#[derive(Debug, Default)]
pub struct Signers {
    known: Mutex<HashMap<PeerId, Arc<KnownSigner>>>,
}

impl Signers {
    /// Checks `chain` (encoded) against the pinned authorities and the revocation lists of `enrolment`, ignoring
    /// its validity period, and keeps it (in memory, and in `replica` when `keep`). Returns the device's id, or
    /// `None` when the chain is revoked (it is then neither kept nor an error: a peer that has not seen the
    /// revocation yet passes it on in good faith).
    ///
    /// # Errors
    /// Any other failure of the chain: a broken or forged chain, an unknown authority.
    pub fn learn(
        &self,
        enrolment: &Enrolment,
        replica: &dyn Replica,
        encoded: &[u8],
        keep: bool,
    ) -> Result<Option<PeerId>, CertificateError> {
        let chain = CertificateChain::decode(encoded)?;
        let device = match verify_ignoring_time(&chain, enrolment) {
            Ok(d) => d,
            Err(CertificateError::Revoked(why)) => {
                log::debug!("a revoked certificate chain was offered ({why}); not kept");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let id = device.device_id();
        let key = device
            .signing_key
            .prepare()
            .ok_or_else(|| CertificateError::Malformed(format!("signer {id}'s key is not a valid Ed25519 key")))?;
        let new = {
            let mut known = crate::util::lock(&self.known);
            if known.len() >= MAX_CACHED_SIGNERS && !known.contains_key(&id) {
                known.clear();
            }
            let signer = KnownSigner { chain, encoded: encoded.to_vec(), device, key };
            known.insert(id, Arc::new(signer)).is_none_or(|old| old.encoded != encoded)
        };
        if keep && new {
            if let Err(e) = replica.keep_certificate(id, encoded) {
                log::warn!("could not keep the certificate of signer {id}: {e}");
            }
        }
        Ok(Some(id))
    }

    /// The signer `device`, from memory or from `replica`.
    fn get(&self, enrolment: &Enrolment, replica: &dyn Replica, device: PeerId) -> Option<Arc<KnownSigner>> {
        if let Some(s) = crate::util::lock(&self.known).get(&device) {
            return Some(s.clone());
        }
        if device == enrolment.signing_key().verifying_key().device_id() {
            let own = enrolment.chain().encode();
            self.learn(enrolment, replica, &own, true).ok()??;
        } else {
            let stored = replica.certificate(device).ok()??;
            // Kept after checking it; checked again, as the pinned authorities or revocations may differ now.
            self.learn(enrolment, replica, &stored, false).ok()??;
        }
        crate::util::lock(&self.known).get(&device).cloned()
    }

    /// Checks what can be checked of each received change on receipt: that it is signed, by a known signer whose
    /// author it is, with a signature that verifies (`digest`: [`crate::store::change_digest`] of the change, as
    /// received), and that nothing of it is revoked. The signatures of a large batch are checked on several threads.
    pub fn check_received(
        &self,
        enrolment: &Enrolment,
        replica: &dyn Replica,
        changes: &[(DocChange, [u8; 32])],
    ) -> Vec<Result<(), RefusalReason>> {
        // Signers first (they may be read from the store), then the signatures (pure computation, in parallel).
        let signers: Vec<Result<(Arc<KnownSigner>, &ChangeSignature), RefusalReason>> = changes
            .iter()
            .map(|(dc, _)| {
                let sig = dc.signature.as_ref().ok_or(RefusalReason::Unsigned)?;
                let signer =
                    self.get(enrolment, replica, sig.device).ok_or(RefusalReason::UnknownSigner(sig.device))?;
                Ok((signer, sig))
            })
            .collect();
        // Everything but the signature, change by change; then the signatures of those that passed, as one batch
        // (one by one if the batch fails, to find the bad ones).
        let verify = |range: std::ops::Range<usize>| -> Vec<Result<(), RefusalReason>> {
            let mut out: Vec<Result<(), RefusalReason>> = range
                .clone()
                .map(|i| {
                    let (signer, sig) = signers[i].as_ref().map_err(Clone::clone)?;
                    let dc = &changes[i].0;
                    sig.is_authors(&signer.device.signing_key, dc.change.peer)?;
                    check_revocation(enrolment, signer, dc)
                })
                .collect();
            let item = |i: usize| {
                let (signer, sig) = signers[i].as_ref().ok()?;
                Some((&signer.key, &changes[i].1[..], &sig.signature))
            };
            let to_check: Vec<usize> = range.clone().filter(|&i| out[i - range.start].is_ok()).collect();
            let batch: Vec<_> = to_check.iter().filter_map(|&i| item(i)).collect();
            if !PreparedKey::verify_batch(CHANGE_CONTEXT, &batch) {
                for &i in &to_check {
                    if !item(i).is_some_and(|one| PreparedKey::verify_batch(CHANGE_CONTEXT, &[one])) {
                        out[i - range.start] = Err(RefusalReason::BadSignature);
                    }
                }
            }
            out
        };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_VERIFY_THREADS);
        if threads < 2 || changes.len() < PARALLEL_VERIFY_MIN {
            return verify(0..changes.len());
        }
        let per = changes.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let verify = &verify;
            let parts: Vec<_> = (0..changes.len())
                .step_by(per)
                .map(|lo| scope.spawn(move || verify(lo..(lo + per).min(changes.len()))))
                .collect();
            parts
                .into_iter()
                .flat_map(|p| p.join().unwrap_or_else(|_| vec![Err(RefusalReason::BadSignature); per]))
                .take(changes.len())
                .collect()
        })
    }

    /// Checks a presence record: signed by a known, unrevoked device whose certificate names `origin` as its Noise
    /// key.
    ///
    /// # Errors
    /// Why it is refused.
    pub(crate) fn check_presence(
        &self,
        enrolment: &Enrolment,
        replica: &dyn Replica,
        (origin, seq, name, links): (&[u8; 32], u64, &str, &[crate::sync::wire::PresenceLink]),
        signature: Option<&PresenceSignature>,
    ) -> Result<(), RefusalReason> {
        let sig = signature.ok_or(RefusalReason::Unsigned)?;
        let signer = self.get(enrolment, replica, sig.device).ok_or(RefusalReason::UnknownSigner(sig.device))?;
        if signer.device.noise_key.0 != *origin {
            return Err(RefusalReason::NotAuthor { device: sig.device });
        }
        let message = presence_message(origin, seq, name, links);
        if !PreparedKey::verify_batch(PRESENCE_CONTEXT, &[(&signer.key, &message, &sig.signature)]) {
            return Err(RefusalReason::BadSignature);
        }
        check_chain_revocation(enrolment, &signer)
    }

    /// Checks a received attested state ([`super::attestation`]): signed by a known attester whose certificate
    /// chain is not revoked and lets it attest the state's collection, with a signature over the state's
    /// [`digest`](super::attestation::digest) that verifies, and holding no change of an author revoked past it.
    /// (The state itself is checked when it is merged: [`crate::store::DocState::decode_checked`].)
    ///
    /// # Errors
    /// Why it is refused.
    pub fn check_attested(
        &self,
        enrolment: &Enrolment,
        replica: &dyn Replica,
        attested: &crate::store::AttestedState,
    ) -> Result<(), RefusalReason> {
        let state = &attested.state;
        self.check_attester(
            enrolment,
            replica,
            &attested.attestation,
            |permissions| permissions.may_attest(&state.collection),
            || format!("attesting collection {:?}", state.collection),
            (super::attestation::ATTESTATION_CONTEXT, &super::attestation::digest(state)),
        )?;
        for (author, ranges) in state.changes.peers() {
            let last = ranges.ranges().last().map_or(0, |r| r.1);
            match enrolment.revocations().author_limit(author) {
                None => {}
                Some(Some(until)) if last <= until => {}
                Some(until) => {
                    return Err(RefusalReason::Revoked(format!(
                        "the state holds changes of author {author}, accepted only {}",
                        until.map_or("never".to_string(), |n| format!("up to counter {n}"))
                    )))
                }
            }
        }
        Ok(())
    }

    /// Check a [`StableFrontier`](super::StableFrontier) before a store folds under it: its signer's chain (known,
    /// leading to a pinned authority, not revoked), that the signer may attest some collection (a store folds only
    /// documents of the collections it may attest), and the signature.
    pub fn check_frontier(
        &self,
        enrolment: &Enrolment,
        replica: &dyn Replica,
        frontier: &super::StableFrontier,
    ) -> Result<(), RefusalReason> {
        self.check_attester(
            enrolment,
            replica,
            &frontier.attestation,
            |permissions| permissions.attests_anything(),
            || "signing a stable frontier".into(),
            (super::attestation::FRONTIER_CONTEXT, &super::attestation::frontier_digest(frontier)),
        )
    }

    /// What an attester's statement needs: a known signer whose chain is not revoked, whose permissions `permitted`
    /// takes (else refused as `what`), and a signature over `digest` in `context` that verifies.
    fn check_attester(
        &self,
        enrolment: &Enrolment,
        replica: &dyn Replica,
        att: &super::Attestation,
        permitted: impl FnOnce(&super::certificate::Permissions) -> bool,
        what: impl FnOnce() -> String,
        (context, digest): (&str, &[u8; 32]),
    ) -> Result<(), RefusalReason> {
        let signer = self.get(enrolment, replica, att.device).ok_or(RefusalReason::UnknownSigner(att.device))?;
        check_chain_revocation(enrolment, &signer)?;
        if !permitted(&signer.device.permissions) {
            return Err(RefusalReason::NotPermitted(what()));
        }
        if !PreparedKey::verify_batch(context, &[(&signer.key, &digest[..], &att.signature)]) {
            return Err(RefusalReason::BadSignature);
        }
        Ok(())
    }

    /// The check [`Replica::apply_checked`] runs as each change is applied.
    pub fn write_check<'a>(&'a self, enrolment: &'a Enrolment, replica: &'a dyn Replica) -> CertificateCheck<'a> {
        CertificateCheck { signers: self, enrolment, replica }
    }
}

/// What a device in certificate mode checks the changes it receives against: the signers it knows, and its
/// enrolment (pinned authorities, revocation lists).
#[derive(Clone, Copy, Debug)]
pub struct Checks<'a> {
    /// The signers known.
    pub signers: &'a Signers,
    /// This device's enrolment.
    pub enrolment: &'a Enrolment,
}

/// Applies changes received from a peer to `store`: as they are in development mode (`checks` is `None`); in
/// certificate mode each is checked on receipt ([`Signers::check_received`]) and as it is applied
/// ([`CertificateCheck`]), and one that fails is refused alone.
///
/// # Errors
/// As [`Replica::apply_changes`]: a malformed change fails the whole batch.
///
/// `changes` come with their digests ([`crate::store::change_digest`], of the bytes received).
pub fn apply_received(
    checks: Option<Checks<'_>>,
    store: &dyn Replica,
    changes: Vec<(DocChange, [u8; 32])>,
) -> crate::Result<crate::ApplyReport> {
    apply_received_batches(checks, store, vec![changes])
        .pop()
        .unwrap_or_else(|| Err(crate::Error::Corrupt("a batch applied gave no report".into())))
}

/// [`apply_received`] for several batches (received on several links) at once, through
/// [`Replica::apply_batches`]: a report or an error each, in order.
pub fn apply_received_batches(
    checks: Option<Checks<'_>>,
    store: &dyn Replica,
    batches: Vec<Vec<(DocChange, [u8; 32])>>,
) -> Vec<crate::Result<crate::ApplyReport>> {
    let Some(c) = checks else {
        let batches: Vec<Vec<DocChange>> =
            batches.into_iter().map(|b| b.into_iter().map(|(dc, _)| dc).collect()).collect();
        let slices: Vec<&[DocChange]> = batches.iter().map(Vec::as_slice).collect();
        return store.apply_batches(&slices, None);
    };
    // Signatures first: what fails them is refused alone, and only the rest is applied.
    let mut refused = Vec::with_capacity(batches.len());
    let mut accepted = Vec::with_capacity(batches.len());
    for changes in batches {
        let mut report = crate::ApplyReport::default();
        let mut ok = Vec::with_capacity(changes.len());
        let verdicts = c.signers.check_received(c.enrolment, store, &changes);
        for ((dc, _), verdict) in changes.into_iter().zip(verdicts) {
            match verdict {
                Ok(()) => ok.push(dc),
                Err(reason) => report.refuse(Refused::of(&dc, reason)),
            }
        }
        refused.push(report);
        accepted.push(ok);
    }
    let slices: Vec<&[DocChange]> = accepted.iter().map(Vec::as_slice).collect();
    let check = c.signers.write_check(c.enrolment, store);
    let applied = store.apply_batches(&slices, Some(&check));
    refused
        .into_iter()
        .zip(applied)
        .map(|(mut report, applied)| {
            report.add(applied?);
            Ok(report)
        })
        .collect()
}

/// The chain checked against `enrolment`'s authorities and revocations, at a time within every certificate's
/// validity (the period itself is not checked: see the module documentation).
fn verify_ignoring_time(chain: &CertificateChain, enrolment: &Enrolment) -> Result<VerifiedDevice, CertificateError> {
    let at = chain.certificates().iter().map(|c| c.body().not_before_ms).max().unwrap_or(0);
    chain.verify(enrolment.authorities(), enrolment.revocations(), at)
}

/// Whether a certificate of `signer`'s chain (or its key) is revoked by the lists `enrolment` holds now.
fn check_chain_revocation(enrolment: &Enrolment, signer: &KnownSigner) -> Result<(), RefusalReason> {
    let revocations = enrolment.revocations();
    match signer.chain.certificates().iter().find_map(|c| revocations.revokes(c)) {
        Some(why) => Err(RefusalReason::Revoked(why)),
        None => Ok(()),
    }
}

/// [`check_chain_revocation`], and whether `dc`'s author is revoked past `dc`'s counters.
fn check_revocation(enrolment: &Enrolment, signer: &KnownSigner, dc: &DocChange) -> Result<(), RefusalReason> {
    check_chain_revocation(enrolment, signer)?;
    match enrolment.revocations().author_limit(dc.change.peer) {
        None => Ok(()),
        Some(Some(until)) if dc.change.end() <= until => Ok(()),
        Some(until) => Err(RefusalReason::Revoked(format!(
            "author {} is accepted only {}",
            dc.change.peer,
            until.map_or("never".to_string(), |n| format!("up to counter {n}"))
        ))),
    }
}

/// The write-permission check of certificate mode (see [`Signers::write_check`]).
pub struct CertificateCheck<'a> {
    signers: &'a Signers,
    enrolment: &'a Enrolment,
    replica: &'a dyn Replica,
}

impl fmt::Debug for CertificateCheck<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateCheck").finish_non_exhaustive()
    }
}

impl ChangeCheck for CertificateCheck<'_> {
    fn may_write(
        &self,
        dc: &DocChange,
        as_seen: &mut dyn FnMut() -> crate::Result<Option<serde_json::Value>>,
    ) -> Result<(), RefusalReason> {
        let sig = dc.signature.as_ref().ok_or(RefusalReason::Unsigned)?;
        let signer = self
            .signers
            .get(self.enrolment, self.replica, sig.device)
            .ok_or(RefusalReason::UnknownSigner(sig.device))?;
        // A revocation may have arrived since the change was received (it waited for its dependencies).
        check_revocation(self.enrolment, &signer, dc)?;
        let paths = write_paths(&dc.change);
        // `check_write` asks for the document at most once, and only when a filter needs it.
        let mut view = || as_seen().map_err(|e| RefusalReason::NotPermitted(format!("document unreadable: {e}")));
        signer.device.permissions.check_write(&dc.collection, &paths, sig.device, &mut view)
    }
}

/// The fields `change` writes, as permission paths (see [`field_path`]).
pub(crate) fn write_paths(change: &crate::Change) -> Vec<Vec<PathSegment>> {
    change.ops.iter().map(|op| field_path(op.path())).collect()
}

/// The field an operation writes, as a permission path: its keys from the document root, up to the first array
/// element (a grant names fields by key; everything inside a field it names is covered). Empty for the document
/// itself (creating or removing it).
fn field_path(path: &[Seg]) -> Vec<PathSegment> {
    path.iter()
        .map_while(|s| match s {
            Seg::Key(k) => Some(PathSegment::Key(k.clone())),
            Seg::Elem(_) => None,
        })
        .collect()
}

/// A permission path, spelled for error messages.
pub(crate) fn describe_path(path: &[PathSegment]) -> String {
    if path.is_empty() {
        return "the document itself (creating or removing it)".into();
    }
    let keys: Vec<String> = path
        .iter()
        .map(|s| match s {
            PathSegment::Key(k) => k.clone(),
            PathSegment::Index(i) => format!("[{i}]"),
        })
        .collect();
    format!("field {}", keys.join("."))
}
