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
pub(crate) const FRONTIER_CONTEXT: &str = "shoal stable frontier v1";

/// A roster's stable frontier (issue 17), signed by an attester: the changes every member of the roster (a
/// [`Revocation::Roster`](super::Revocation::Roster)) had acknowledged to the attester by the end of a day before
/// the roster's time. A device certified after that time is not a member, and takes its first copy of a document
/// whole from a device that then held at least that much, so no device that may still write lacks any of these
/// changes: they are causally stable, and a store may fold what they make garbage (a counter's increments into runs,
/// [`crate::Document::collect_stable`]) in the collections the attester may attest. Checked by
/// [`Signers::check_frontier`](super::Signers::check_frontier).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StableFrontier {
    /// The roster's time (ms since the Unix epoch): a newer roster's frontier replaces an older one's.
    pub until_ms: u64,
    /// The changes every member had acknowledged, by author and counter ranges.
    pub stable: crate::store::Summary,
    /// The attester's signature of [`frontier_digest`].
    pub attestation: Attestation,
}

impl StableFrontier {
    /// `key`'s signed statement that `stable` is the frontier of the roster of `until_ms`.
    pub fn sign(key: &SigningKey, until_ms: u64, stable: crate::store::Summary) -> StableFrontier {
        let digest = frontier_digest(until_ms, &stable);
        let attestation =
            Attestation { device: key.verifying_key().device_id(), signature: key.sign(FRONTIER_CONTEXT, &digest) };
        StableFrontier { until_ms, stable, attestation }
    }

    /// Whether this frontier replaces `kept`: it is of a later roster, or of the same one and holds more (the
    /// cloud's holdings it is cut to only grow).
    pub fn replaces(&self, kept: &StableFrontier) -> bool {
        self.until_ms > kept.until_ms
            || (self.until_ms == kept.until_ms
                && self.stable != kept.stable
                && kept.stable.difference(&self.stable).is_empty())
    }
}

/// What a [`StableFrontier`] signs: the BLAKE3 digest of the roster's time and the frontier's dense encoding.
pub fn frontier_digest(until_ms: u64, stable: &crate::store::Summary) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&until_ms.to_le_bytes());
    let encoded = stable.encode_dense();
    h.update(&(encoded.len() as u64).to_le_bytes());
    h.update(&encoded);
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
