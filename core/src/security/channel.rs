//! The encrypted, authenticated channel a finished handshake produces.

use log::debug;

use super::keys::DeviceKey;
use super::{SecurityError, MAX_MESSAGE_LEN, TAG_LEN};

/// The longest plaintext one sealed message can carry: a Noise message less the authentication tag.
pub const MAX_PLAINTEXT: usize = MAX_MESSAGE_LEN - TAG_LEN;

/// Encrypts messages to, and decrypts messages from, the peer of a finished [`Handshake`](super::Handshake).
///
/// Each direction uses its own key and a message counter as the nonce, so messages must be opened exactly in the
/// order they were sealed, each exactly once: a replayed, reordered, dropped, truncated or tampered message fails
/// [`open`](Self::open) with [`SecurityError::Decrypt`]. The link must then be closed (a new handshake starts a
/// new one): the channel enforces this by refusing every later `seal` and `open` with
/// [`SecurityError::WrongState`].
pub struct SecureChannel {
    /// The Noise transport state; `None` once the channel has failed.
    transport: Option<snow::TransportState>,
    /// The peer's authenticated static key.
    remote: DeviceKey,
}

impl SecureChannel {
    pub(super) fn new(transport: snow::TransportState, remote: DeviceKey) -> SecureChannel {
        SecureChannel { transport: Some(transport), remote }
    }

    /// The peer's authenticated static key.
    pub fn remote_key(&self) -> DeviceKey {
        self.remote
    }

    /// Whether the channel has failed (every later call errs; the link must be closed).
    pub fn is_failed(&self) -> bool {
        self.transport.is_none()
    }

    /// Encrypts `plaintext` (at most [`MAX_PLAINTEXT`] bytes) into the next message for the peer, which is
    /// [`TAG_LEN`](super::TAG_LEN) bytes longer.
    ///
    /// # Errors
    /// [`SecurityError::TooLarge`] if `plaintext` is too long (the channel stays usable);
    /// [`SecurityError::WrongState`] if the channel has failed, or if it cannot encrypt any more (nonces exhausted
    /// after 2^64 messages), which fails it.
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, SecurityError> {
        let transport = self.transport.as_mut().ok_or(SecurityError::WrongState("the channel has failed"))?;
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(SecurityError::TooLarge { len: plaintext.len(), max: MAX_PLAINTEXT });
        }
        let mut message = vec![0u8; plaintext.len() + TAG_LEN];
        match transport.write_message(plaintext, &mut message) {
            Ok(len) => {
                message.truncate(len);
                Ok(message)
            }
            Err(err) => {
                self.fail(&format!("cannot encrypt: {err}"));
                Err(SecurityError::WrongState("the channel cannot encrypt any more"))
            }
        }
    }

    /// Decrypts and authenticates the next message from the peer.
    ///
    /// # Errors
    /// [`SecurityError::Decrypt`] if the message is not the next one the peer sealed (tampered, forged, replayed,
    /// reordered, or one was dropped before it), [`SecurityError::TooLarge`] if it is longer than a Noise message;
    /// both fail the channel. [`SecurityError::WrongState`] if the channel has already failed.
    pub fn open(&mut self, ciphertext: &[u8]) -> Result<Vec<u8>, SecurityError> {
        let transport = self.transport.as_mut().ok_or(SecurityError::WrongState("the channel has failed"))?;
        if ciphertext.len() > MAX_MESSAGE_LEN {
            self.fail("an incoming message is too long");
            return Err(SecurityError::TooLarge { len: ciphertext.len(), max: MAX_MESSAGE_LEN });
        }
        let Some(plain_len) = ciphertext.len().checked_sub(TAG_LEN) else {
            self.fail("an incoming message is shorter than a tag");
            return Err(SecurityError::Decrypt);
        };
        let mut plaintext = vec![0u8; plain_len];
        match transport.read_message(ciphertext, &mut plaintext) {
            Ok(len) => {
                plaintext.truncate(len);
                Ok(plaintext)
            }
            Err(err) => {
                self.fail(&format!("an incoming message failed to decrypt: {err}"));
                Err(SecurityError::Decrypt)
            }
        }
    }

    /// Fails the channel for good, dropping its keys.
    fn fail(&mut self, reason: &str) {
        debug!("secure channel with {} failed: {reason}", self.remote);
        self.transport = None;
    }
}

impl std::fmt::Debug for SecureChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureChannel").field("remote", &self.remote).field("failed", &self.is_failed()).finish()
    }
}
