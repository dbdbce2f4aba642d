//! The authenticated, encrypted handshake that starts every link between two devices, and the encrypted channel
//! it produces.
//!
//! Links use the Noise Protocol pattern [`NOISE_PARAMS`] (`Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s`): `XX` makes
//! both devices prove possession of their persistent static key ([`Identity`]) and learn the other's
//! ([`DeviceKey`]); the pre-shared key at position 3 mixes in the [`AppSecret`], so a handshake between devices
//! that do not hold the same secret cannot complete. Everything here is sans-IO: [`Handshake`] and
//! [`SecureChannel`] turn messages into messages, and the caller moves them over a link (framed with
//! [`crate::transport::frame`]).
//!
//! Every byte from a link is untrusted: no input makes these types panic, and any failure — of the handshake or
//! of [`SecureChannel::open`] — means the link must be closed.

mod channel;
mod handshake;
mod keys;
#[cfg(test)]
mod tests;

pub use channel::{SecureChannel, MAX_PLAINTEXT};
pub use handshake::Handshake;
pub use keys::{AppSecret, DeviceKey, Identity};

/// The Noise protocol name of every link.
pub const NOISE_PARAMS: &str = "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s";

/// The position of the pre-shared key (the [`AppSecret`]) in the [`NOISE_PARAMS`] pattern (`psk3`).
const PSK_LOCATION: u8 = 3;

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
