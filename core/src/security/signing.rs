//! Ed25519 signing keys: the app authority's, and each enrolled device's (which signs its changes). A device's
//! author ids are derived from its signing key, so anyone holding the key's certificate can check that a change
//! claiming an author really is that device's.

use std::fmt;

use ed25519_dalek::Signer as _;
use serde::{Deserialize, Serialize};

use super::certificate::CertificateError;
use super::SecurityError;
use crate::crdt::clock::PeerId;
use crate::util::hex;
use crate::util::sources::Sources;

/// The length of an Ed25519 public key, private key (seed) or half a signature.
pub const SIGNING_KEY_LEN: usize = 32;

/// The length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// The blake3 key-derivation context of author ids.
const AUTHOR_CONTEXT: &str = "shoal author id v1";

/// An Ed25519 key pair: the app authority's, an intermediate authority's, or a device's signing key. The private
/// half never leaves where it was generated; its `Debug` output never shows it.
#[derive(Clone)]
pub struct SigningKey(ed25519_dalek::SigningKey);

impl SigningKey {
    /// A fresh key pair from the operating system's random numbers.
    ///
    /// # Errors
    /// [`SecurityError::InvalidKey`] if the operating system has no randomness to give.
    pub fn generate() -> Result<SigningKey, SecurityError> {
        let mut seed = [0u8; SIGNING_KEY_LEN];
        getrandom::fill(&mut seed)
            .map_err(|e| SecurityError::InvalidKey(format!("no randomness for a signing key: {e}")))?;
        Ok(SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// A key pair drawn from `sources` (a simulation's seed: predictable, never for an app).
    pub fn from_sources(sources: &Sources) -> SigningKey {
        let mut seed = [0u8; SIGNING_KEY_LEN];
        sources.fill(&mut seed);
        SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    /// Restores a key pair from its 32-byte private key ([`to_bytes`](Self::to_bytes)).
    ///
    /// # Errors
    /// [`SecurityError::InvalidKey`] if `bytes` is not 32 bytes or is all zeros (uninitialised storage).
    pub fn from_bytes(bytes: &[u8]) -> Result<SigningKey, SecurityError> {
        let seed = <[u8; SIGNING_KEY_LEN]>::try_from(bytes).map_err(|_| {
            SecurityError::InvalidKey(format!("a signing key is {SIGNING_KEY_LEN} bytes, not {}", bytes.len()))
        })?;
        if seed == [0u8; SIGNING_KEY_LEN] {
            return Err(SecurityError::InvalidKey("the signing key is all zeros".into()));
        }
        Ok(SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// The 32-byte private key. Keep it secret.
    pub fn to_bytes(&self) -> [u8; SIGNING_KEY_LEN] {
        self.0.to_bytes()
    }

    /// The public half, which certificates carry and signatures are checked with.
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey(self.0.verifying_key().to_bytes())
    }

    /// Signs `message` in `context` (a fixed string naming what is signed, so that a signature over one kind of
    /// thing can never be passed off as one over another).
    pub(crate) fn sign(&self, context: &str, message: &[u8]) -> Signature {
        Signature(self.0.sign(&signed_bytes(context, message)).to_bytes())
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey").field("public", &self.verifying_key()).finish_non_exhaustive()
    }
}

/// An Ed25519 public key: what a certificate names a device or an authority by.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VerifyingKey(pub [u8; SIGNING_KEY_LEN]);

impl VerifyingKey {
    /// The key from its 64 hex digits.
    ///
    /// # Errors
    /// [`SecurityError::InvalidKey`] if `s` is not 64 hex digits.
    pub fn from_hex(s: &str) -> Result<VerifyingKey, SecurityError> {
        crate::util::parse_hex::<SIGNING_KEY_LEN>(s.trim())
            .map(VerifyingKey)
            .ok_or_else(|| SecurityError::InvalidKey("a public key is 64 hex digits".into()))
    }

    /// The full key as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Whether `signature` is this key's signature of `message` in `context` (see [`SigningKey::sign`]). Strict
    /// verification: a malformed key or a malleated signature is simply not valid.
    pub(crate) fn verifies(&self, context: &str, message: &[u8], signature: &Signature) -> bool {
        let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&self.0) else { return false };
        let signature = ed25519_dalek::Signature::from_bytes(&signature.0);
        key.verify_strict(&signed_bytes(context, message), &signature).is_ok()
    }

    /// The key decompressed once, for checking many signatures (`None` if it is not a valid key).
    pub(crate) fn prepare(&self) -> Option<PreparedKey> {
        ed25519_dalek::VerifyingKey::from_bytes(&self.0).ok().map(PreparedKey)
    }

    /// The author id of this key's `n`th chain of changes: a device writes as its author `0` until its store has
    /// to start a new chain (restored from a backup, say), then as `1`, and so on. Anyone holding the key can check
    /// that an author id is one of its own.
    pub fn author(&self, n: u32) -> PeerId {
        let mut input = [0u8; SIGNING_KEY_LEN + 4];
        input[..SIGNING_KEY_LEN].copy_from_slice(&self.0);
        input[SIGNING_KEY_LEN..].copy_from_slice(&n.to_le_bytes());
        let hash = blake3::derive_key(AUTHOR_CONTEXT, &input);
        let mut id = [0u8; 8];
        id.copy_from_slice(&hash[..8]);
        // 0 means "no author" in places; such a key simply skips it.
        PeerId(u64::from_le_bytes(id).max(1))
    }

    /// The id of the device this key belongs to: its first author id ([`author`](Self::author)`(0)`), which query
    /// filters of permissions name `$device`.
    pub fn device_id(&self) -> PeerId {
        self.author(0)
    }
}

/// A [`VerifyingKey`] decompressed, ready to check signatures with (decompressing costs about a fifth of a check).
#[derive(Clone, Debug)]
pub(crate) struct PreparedKey(ed25519_dalek::VerifyingKey);

impl PreparedKey {
    /// Whether every `(key, message, signature)` of `items` is a valid signature in `context`, checked together
    /// (Ed25519 batch verification: about half the work of checking them one by one; the random weights derive
    /// from the inputs, so the answer is deterministic). Batch verification accepts exactly the signatures whose
    /// *cofactored* equation holds, which single strict checks would not all accept; so changes' signatures are
    /// only ever checked this way — one at a time as a batch of one — and every device decides alike. Empty: true.
    pub(crate) fn verify_batch(context: &str, items: &[(&PreparedKey, &[u8], &Signature)]) -> bool {
        let messages: Vec<Vec<u8>> = items.iter().map(|(_, m, _)| signed_bytes(context, m)).collect();
        let messages: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        let signatures: Vec<ed25519_dalek::Signature> =
            items.iter().map(|(_, _, s)| ed25519_dalek::Signature::from_bytes(&s.0)).collect();
        let keys: Vec<ed25519_dalek::VerifyingKey> = items.iter().map(|(k, _, _)| k.0).collect();
        ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok()
    }
}

/// Shows the first 8 bytes as 16 hex digits: enough to tell keys apart in logs.
impl fmt::Display for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0[..8]))
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyingKey({self})")
    }
}

/// An Ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; SIGNATURE_LEN]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}…)", hex(&self.0[..8]))
    }
}

impl Serialize for Signature {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Signature, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = Signature;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{SIGNATURE_LEN} bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Signature, E> {
                <[u8; SIGNATURE_LEN]>::try_from(v).map(Signature).map_err(|_| E::invalid_length(v.len(), &self))
            }
        }
        d.deserialize_bytes(Visit)
    }
}

/// A body signed by its issuer, as it travels: the body's bytes (postcard) and the signature over them — the form of
/// certificates and revocation lists. The bytes are kept as signed, so that what is checked is what was signed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Signed {
    #[serde(with = "serde_bytes_vec")]
    body: Vec<u8>,
    signature: Signature,
}

/// A body an authority signs and devices check: a certificate's or a revocation list's.
pub(crate) trait SignedBody: Serialize + serde::de::DeserializeOwned {
    /// The signature context (see [`SigningKey::sign`]).
    const CONTEXT: &'static str;
    /// What it is, in error messages ("certificate").
    const KIND: &'static str;
    /// The most bytes its signed form may have (checked before decoding).
    const MAX_BYTES: usize;
    /// The key it says signed it.
    fn issuer(&self) -> VerifyingKey;
    /// It, named in error messages ("certificate 7 of …").
    fn describe(&self) -> String;
}

impl Signed {
    /// `body` encoded and signed by `key`.
    pub(crate) fn sign<T: SignedBody>(body: &T, key: &SigningKey) -> Result<Signed, CertificateError> {
        let body = postcard::to_stdvec(body).map_err(|e| CertificateError::Malformed(e.to_string()))?;
        let signature = key.sign(T::CONTEXT, &body);
        Ok(Signed { body, signature })
    }

    /// The encoded form.
    pub(crate) fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decodes a signed body of at most [`SignedBody::MAX_BYTES`] in all, whose signature must be the one its
    /// issuer made. Returns the body and its signed form.
    ///
    /// # Errors
    /// [`CertificateError::Malformed`] or [`CertificateError::BadSignature`].
    pub(crate) fn open<T: SignedBody>(bytes: &[u8]) -> Result<(T, Signed), CertificateError> {
        let malformed = |why: String| CertificateError::Malformed(format!("{}: {why}", T::KIND));
        if bytes.len() > T::MAX_BYTES {
            return Err(malformed(format!("{} bytes (at most {})", bytes.len(), T::MAX_BYTES)));
        }
        let signed: Signed = postcard::from_bytes(bytes).map_err(|e| malformed(e.to_string()))?;
        let body: T = postcard::from_bytes(&signed.body).map_err(|e| malformed(format!("body: {e}")))?;
        if !body.issuer().verifies(T::CONTEXT, &signed.body, &signed.signature) {
            return Err(CertificateError::BadSignature(body.describe()));
        }
        Ok((body, signed))
    }
}

/// Byte vectors as serde bytes (postcard: a length and the bytes).
mod serde_bytes_vec {
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
        }
        d.deserialize_bytes(Visit)
    }
}

/// What is actually signed: the context's length and bytes, then the message.
fn signed_bytes(context: &str, message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + context.len() + message.len());
    out.extend_from_slice(&(context.len() as u16).to_le_bytes());
    out.extend_from_slice(context.as_bytes());
    out.extend_from_slice(message);
    out
}
