//! The authenticated, encrypted handshake that starts every link between two devices, and the encrypted channel
//! it produces.
//!
//! Links use the Noise Protocol pattern [`NOISE_PARAMS`] (`Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s`): `XX` makes
//! both devices prove possession of their persistent static key ([`Identity`]) and learn the other's
//! ([`DeviceKey`]); the pre-shared key at position 0 mixes the [`AppSecret`] into the very first message, so a
//! device without the secret is rejected on that message — before either side has sent its static key (a stranger
//! cannot even learn a device's identity) and before any Diffie-Hellman work on the responder. Everything here is sans-IO: [`Handshake`] and
//! [`SecureChannel`] turn messages into messages, and the caller moves them over a link (framed with
//! [`crate::transport::frame`]).
//!
//! Every byte from a link is untrusted: no input makes these types panic, and any failure — of the handshake or
//! of [`SecureChannel::open`] — means the link must be closed.
//!
//! ```
//! use shoaldb::security::{AppSecret, Handshake, Identity};
//!
//! let secret = AppSecret::from_bytes(b"the app's shared secret")?;
//! let (alice, bob) = (Identity::generate()?, Identity::generate()?);
//! let mut dialler = Handshake::initiator(&alice, &secret, b"shoal-sync/1")?;
//! let mut listener = Handshake::responder(&bob, &secret, b"shoal-sync/1")?;
//! // Move messages until neither side has anything to send (a real link frames them over a socket).
//! while !(dialler.is_finished() && listener.is_finished()) {
//!     if let Some(msg) = dialler.take_outgoing()? { listener.incoming(&msg)?; }
//!     if let Some(msg) = listener.take_outgoing()? { dialler.incoming(&msg)?; }
//! }
//! let (mut to_bob, bob_key) = dialler.into_channel()?;
//! let (mut to_alice, alice_key) = listener.into_channel()?;
//! assert_eq!((bob_key, alice_key), (bob.device_key(), alice.device_key()));
//! let sealed = to_bob.seal(b"hello")?;
//! assert_eq!(to_alice.open(&sealed)?, b"hello");
//! # Ok::<(), shoaldb::security::SecurityError>(())
//! ```

mod access;
pub mod attestation;
pub mod authorship;
pub mod certificate;
mod channel;
mod handshake;
mod keys;
pub mod revocation;
mod signing;
#[cfg(test)]
mod tests;
pub mod vault;

pub use access::{Access, Enrolment};
pub use attestation::{Attestation, StableFrontier};
pub use authorship::{
    apply_received, apply_received_batches, ChangeCheck, ChangeSignature, Checks, PresenceSignature, RefusalReason,
    Refused, Signers,
};
pub use certificate::{Certificate, CertificateBody, CertificateChain, CertificateError, Grant, Right, VerifiedDevice};
pub use channel::{SecureChannel, MAX_PLAINTEXT};
pub use handshake::{Handshake, MAX_CREDENTIALS};
pub use keys::{AppSecret, DeviceKey, Identity};
pub use revocation::{Revocation, RevocationBody, RevocationList, Revocations};
pub use signing::{Signature, SigningKey, VerifyingKey};
pub use vault::{FileVault, KeyVault, MemoryVault};

/// The Noise protocol name of every link.
pub const NOISE_PARAMS: &str = "Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s";

/// The position of the pre-shared key (the [`AppSecret`]) in the [`NOISE_PARAMS`] pattern (`psk0`).
const PSK_LOCATION: u8 = 0;

/// The longest Noise message, handshake or transport (fixed by the Noise specification).
pub const MAX_MESSAGE_LEN: usize = 65_535;

/// The length of the authentication tag added to every encrypted message.
pub const TAG_LEN: usize = 16;

/// Why a handshake or a secure channel failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecurityError {
    /// The handshake could not go on: a message was malformed, out of turn or failed authentication (wrong app
    /// secret, wrong prologue, tampering), or the peer's key was unacceptable. The link must be closed.
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// A message on an established channel failed to decrypt: tampered, replayed, reordered, dropped or forged.
    /// The link must be closed.
    #[error("message failed to decrypt or authenticate")]
    Decrypt,
    /// A message is longer than allowed.
    #[error("message of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The length of the message.
        len: usize,
        /// The largest length allowed.
        max: usize,
    },
    /// Key material was malformed (wrong length, empty, inconsistent halves).
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// The peer's credentials (its certificate chain) were refused: the reason says why. The link must be closed.
    #[error("credentials refused: {0}")]
    Certificate(#[from] certificate::CertificateError),
    /// The call does not fit the current state (e.g. a channel asked for before the handshake finished, or any use
    /// after a failure).
    #[error("wrong state: {0}")]
    WrongState(&'static str),
}

/// The parsed [`NOISE_PARAMS`].
fn noise_params() -> Result<snow::params::NoiseParams, SecurityError> {
    NOISE_PARAMS
        .parse()
        .map_err(|err: snow::Error| SecurityError::Handshake(format!("unsupported Noise parameters: {err}")))
}
