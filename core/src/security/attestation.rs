//! Attested states (issue 17): documents' states signed by a device the fleet trusts, so that devices in
//! certificate mode can drop signed changes from their logs.
//!
//! In certificate mode every change carries its author's signature, and every device checks it; a document's
//! state carries none, so a device cannot check a state a peer sends it — which is why, without this, a device in
//! certificate mode keeps every signed change for ever. An **attester** is a device whose certificate has an
//! `attest` grant on the collection ([`Right::Attest`](super::Right::Attest)): it checked each change it applied,
//! so it can vouch for the state they make. [`crate::Store::attest`] signs the current state of its documents
//! ([`Attestation`]: Ed25519 over [`digest`], which covers the collection, the document's id, the changes the
//! state holds and the state's bytes), and keeps it with the state. The attested state travels like the changes it
//! stands for; every device checks the signature, that the attester's certificate leads to a pinned authority and
//! is not revoked, that it may attest the collection, and that no author in it is revoked for the counters it
//! holds ([`Signers::check_attested`](super::Signers::check_attested)); then it merges the state and keeps it too.
//!
//! A device then folds the signed changes an attested state it holds covers (as [`crate::Store::compact`]
//! chooses them), and sends that state — never one of its own — to a device that lacks some of them. What is
//! trusted: the attester, for the content of the states it signs (as the authority is trusted with the
//! certificates it issues). An attester that signs a forged state is found out by the signature it left, like an
//! author signing two versions of a change, and is revoked by the authority.

use serde::{Deserialize, Serialize};

use super::signing::{Signature, SigningKey};
use crate::crdt::clock::PeerId;
use crate::store::DocState;

/// The signature context of attested states.
pub(crate) const ATTESTATION_CONTEXT: &str = "shoal attested state v1";

/// An attester's signature of a document's state (see the [module documentation](self)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attestation {
    /// The attesting device's id ([`VerifyingKey::device_id`](super::VerifyingKey::device_id)): whose certificate
    /// the signature is checked with.
    pub device: PeerId,
    /// Ed25519 over the state's [`digest`].
    pub signature: Signature,
}

impl Attestation {
    /// `key`'s attestation of `state` ([`crate::Store::attest`] signs with the device's key; every receiver checks
    /// that the key's certificate lets it attest the collection).
    pub fn sign(key: &SigningKey, state: &DocState) -> Attestation {
        Attestation {
            device: key.verifying_key().device_id(),
            signature: key.sign(ATTESTATION_CONTEXT, &digest(state)),
        }
    }
}

/// The signature context of stable frontiers.
pub(crate) const FRONTIER_CONTEXT: &str = "shoal stable frontier v2";

/// A roster's stable frontier (issue 17), signed by an attester: the changes every member of the roster (a
/// [`Revocation::Roster`](super::Revocation::Roster)) had acknowledged to the attester by the end of a day before
/// the roster's time (`stable`), and what the attester held when it signed (`required`). Checked by
/// [`Signers::check_frontier`](super::Signers::check_frontier).
///
/// # What makes `stable` causally stable
/// A change a store does not hold yet, and that has not seen all of `stable`, could only have been made
/// - by a member, before it acknowledged `stable`: the attester signs only once it holds everything each member
///   said it held then (a member's own changes included), so such a change is in `required`;
/// - by a device certified after the roster's time: not a member; it takes its first copy of a document whole
///   (`sync::first_copy`) from a device that then held at least what it had acknowledged, so its changes have seen
///   `stable`;
/// - by the attester's own writers, before it signed: in `required`.
///
/// So a store that holds every change of `required` holds every change that has not seen `stable`: it may collect
/// what `stable` makes garbage ([`crate::Document::collect_stable`]) in the
/// collections the attester may attest ([`crate::Store::compact`]). A store that does not (a device whose
/// subscriptions or permissions leave some changes out) does not fold under it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StableFrontier {
    /// The roster's time (ms since the Unix epoch): a newer roster's frontier replaces an older one's.
    pub until_ms: u64,
    /// The changes every member had acknowledged, by author and counter ranges.
    pub stable: crate::store::Summary,
    /// What the attester held when it signed: a store folds under `stable` only once it holds all of it.
    pub required: crate::store::Summary,
    /// The attester's signature of [`frontier_digest`].
    pub attestation: Attestation,
}

impl StableFrontier {
    /// `key`'s signed statement that `stable` is the frontier of the roster of `until_ms`, for stores that hold
    /// `required`.
    pub fn sign(
        key: &SigningKey,
        until_ms: u64,
        stable: crate::store::Summary,
        required: crate::store::Summary,
    ) -> StableFrontier {
        let mut frontier = StableFrontier {
            until_ms,
            stable,
            required,
            attestation: Attestation { device: key.verifying_key().device_id(), signature: Signature([0; 64]) },
        };
        frontier.attestation.signature = key.sign(FRONTIER_CONTEXT, &frontier_digest(&frontier));
        frontier
    }

    /// Whether this frontier replaces `kept`: it is of a later roster, or of the same one and holds more (the
    /// cloud's holdings it is cut to only grow).
    pub fn replaces(&self, kept: &StableFrontier) -> bool {
        self.until_ms > kept.until_ms
            || (self.until_ms == kept.until_ms
                && self.stable != kept.stable
                && kept.stable.difference(&self.stable).is_empty())
    }

    /// The bytes of its two summaries (dense encoding): at most [`crate::sync::wire::MAX_FRONTIER_BYTES`] travel.
    pub fn summaries_len(&self) -> usize {
        self.stable.encode_dense().len().saturating_add(self.required.encode_dense().len())
    }

    /// Each writer's counters that `stable` covers from its first (`stable`'s first range for the writer, when it
    /// starts at counter 1): what a store folds under ([`crate::Document::collect_stable`]).
    pub fn stable_version(&self) -> crate::VersionVector {
        self.stable.dense_prefix()
    }
}

/// What a kept [`StableFrontier`] lets a store collect (issue 17), in the documents of the collections its attester
/// may attest ([`crate::Document::collect_stable`]): each counter's increments its `stable` covers, folded into one
/// run per writer, what removed array elements held that it covers, and (where the store knows which deletions are
/// not stable yet) the sequences' settled tombstones. Used by [`crate::Store::compact`] and the cloud's compaction.
pub struct Stability {
    /// Each writer's counters the frontier covers from its first.
    stable: crate::VersionVector,
    /// The attester's grants (from its certificate chain, checked when the frontier was kept).
    attester: super::certificate::Permissions,
}

impl Stability {
    /// What `frontier` lets a store holding `held` fold, `chain` being the attester's certificate chain as kept —
    /// `None` when the store lacks some change of the frontier's `required` (it may lack a change that has not seen
    /// the frontier), or keeps no chain of the attester (both logged).
    pub fn of(frontier: &StableFrontier, held: &crate::store::Summary, chain: Option<&[u8]>) -> Option<Stability> {
        let lacking = frontier.required.difference(held);
        if !lacking.is_empty() {
            log::info!(
                "the stable frontier of the roster of {}: {} ranges of the changes it requires are not held yet; \
                 nothing folded under it",
                frontier.until_ms,
                lacking.range_count()
            );
            return None;
        }
        let signer = frontier.attestation.device;
        let chain = chain
            .and_then(|c| super::CertificateChain::decode(c).ok())
            .filter(|c| c.leaf().body().signing_key.device_id() == signer);
        let Some(chain) = chain else {
            log::warn!("the stable frontier's attester {signer}: no certificate chain kept; nothing folded under it");
            return None;
        };
        Some(Stability { stable: frontier.stable_version(), attester: chain.permissions() })
    }

    /// Whether the attester may attest `collection`: only there does the frontier collect anything.
    pub fn covers(&self, collection: &str) -> bool {
        self.attester.may_attest(collection)
    }

    /// Each writer's counters the frontier covers from its first.
    pub fn stable(&self) -> &crate::VersionVector {
        &self.stable
    }

    /// Fold what the frontier makes garbage in `doc`, of `collection`, when the attester may attest the collection;
    /// with `unsettled` (the deletions of the changes `doc` holds that the frontier does not cover, all of them
    /// known: [`crate::crdt::tombstones::Unsettled`]), also drop the tombstones it settles
    /// ([`crate::Document::collect_tombstones`]). Returns whether the document's state changed (what it shows never
    /// does).
    pub fn collect(
        &self,
        collection: &str,
        doc: &mut crate::Document,
        unsettled: Option<crate::crdt::tombstones::Unsettled>,
    ) -> bool {
        if !self.covers(collection) {
            return false;
        }
        let folded = doc.collect_stable(&self.stable);
        let dropped = unsettled.map_or(0, |u| doc.collect_tombstones(&self.stable, u));
        folded || dropped > 0
    }
}

/// What a [`StableFrontier`] signs: the BLAKE3 digest of the roster's time and its two summaries' dense encodings,
/// each preceded by its length.
pub fn frontier_digest(frontier: &StableFrontier) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&frontier.until_ms.to_le_bytes());
    for summary in [&frontier.stable, &frontier.required] {
        let encoded = summary.encode_dense();
        h.update(&(encoded.len() as u64).to_le_bytes());
        h.update(&encoded);
    }
    *h.finalize().as_bytes()
}

/// What an attestation signs: the BLAKE3 digest of the state's collection, document id, changes (their dense
/// encoding) and bytes, each preceded by its length.
pub fn digest(state: &DocState) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    let changes = state.changes.encode_dense();
    for part in [state.collection.as_bytes(), state.doc_id.as_bytes(), &changes, &state.state] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    *h.finalize().as_bytes()
}
