//! The sans-IO handshake state machine that starts every link.

use log::debug;

use super::channel::SecureChannel;
use super::keys::{is_low_order, AppSecret, DeviceKey, Identity};
use super::{noise_params, SecurityError, MAX_MESSAGE_LEN, PSK_LOCATION};
use crate::util::sources::Sources;
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};

/// snow's default primitives, with the random numbers (ephemeral keys) taken from injected [`Sources`].
struct InjectedRandomness(Sources);

/// The random numbers of a handshake built with [`InjectedRandomness`].
struct SourcesRandom(Sources);

impl Random for SourcesRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill(dest);
        Ok(())
    }
}

impl CryptoResolver for InjectedRandomness {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SourcesRandom(self.0.clone())))
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

/// The longest credentials (an encoded certificate chain) a handshake carries.
pub const MAX_CREDENTIALS: usize = crate::security::certificate::MAX_CHAIN_BYTES;

/// Room for one outgoing handshake message. With empty payloads the longest message of the pattern is the
/// responder's `e, ee, s, es` (32 + 32 + 16 + 16 = 96 bytes).
const OUTGOING_BUF_LEN: usize = 256;

/// One side of the Noise handshake that authenticates and keys a link.
///
/// The caller moves the messages: after creating either side, and after every [`incoming`](Self::incoming)
/// message, call [`take_outgoing`](Self::take_outgoing) and send what it returns; when
/// [`is_finished`](Self::is_finished), turn it into a channel with [`into_channel`](Self::into_channel). The
/// initiator speaks first. Both sides must use the same [`AppSecret`] and prologue, or the handshake fails.
///
/// Any error — a malformed, forged or out-of-turn message, a wrong secret or prologue — fails the handshake for
/// good: every later call returns [`SecurityError::WrongState`], no channel can be had from it, and the link must
/// be closed.
///
/// With the `XXpsk0` pattern the app secret is mixed in from the first message: if the secrets differ, the
/// responder fails on that first message, and neither side ever gets a channel or learns the other's static key.
pub struct Handshake {
    /// The Noise state, `None` once the handshake has failed.
    state: Option<snow::HandshakeState>,
    /// Whether this side started the handshake (for logs).
    initiator: bool,
    /// What this side presents (its certificate chain; empty in development mode), sent encrypted in the message
    /// that carries its static key: the responder's first, the initiator's second.
    credentials: Vec<u8>,
    /// Messages written so far.
    written: usize,
    /// Messages read so far.
    read: usize,
    /// What the peer presented (in the message that carried its static key).
    peer_credentials: Vec<u8>,
}

impl Handshake {
    /// The side that starts the handshake, with this device's identity, the app secret and the prologue (e.g. the
    /// protocol name and version; it must be byte-for-byte the same on both sides).
    ///
    /// # Errors
    /// [`SecurityError::Handshake`] if the Noise state cannot be built (which would be a bug or a missing crypto
    /// implementation, never the peer's doing).
    pub fn initiator(identity: &Identity, secret: &AppSecret, prologue: &[u8]) -> Result<Handshake, SecurityError> {
        Handshake::new(identity, secret, prologue, true, &Sources::system())
    }

    /// The same handshake, presenting `credentials` (this device's encoded certificate chain) to the peer inside
    /// the handshake, encrypted, in the message that carries this side's static key — never before the keys are
    /// mixed. At most [`MAX_CREDENTIALS`] bytes.
    ///
    /// # Errors
    /// [`SecurityError::TooLarge`] if `credentials` is longer than [`MAX_CREDENTIALS`].
    pub fn presenting(mut self, credentials: Vec<u8>) -> Result<Handshake, SecurityError> {
        if credentials.len() > MAX_CREDENTIALS {
            return Err(SecurityError::TooLarge { len: credentials.len(), max: MAX_CREDENTIALS });
        }
        self.credentials = credentials;
        Ok(self)
    }

    /// What the peer presented inside the handshake (empty until the message carrying its static key arrived, and
    /// when it presented nothing), with its static key once known. Check it before trusting the peer.
    pub fn peer_credentials(&self) -> Option<(&[u8], DeviceKey)> {
        let state = self.state.as_ref()?;
        let key = state.get_remote_static().and_then(|key| <[u8; 32]>::try_from(key).ok()).map(DeviceKey)?;
        Some((&self.peer_credentials, key))
    }

    /// The side that answers a handshake; arguments as for [`initiator`](Self::initiator).
    ///
    /// # Errors
    /// As for [`initiator`](Self::initiator).
    pub fn responder(identity: &Identity, secret: &AppSecret, prologue: &[u8]) -> Result<Handshake, SecurityError> {
        Handshake::new(identity, secret, prologue, false, &Sources::system())
    }

    /// Either side (`initiator` or not), with its ephemeral keys drawn from `sources` (the operating system's
    /// randomness unless `sources` is seeded: simulations, so that a seed replays the bytes on the wire too).
    ///
    /// # Errors
    /// As for [`initiator`](Self::initiator).
    pub fn new(
        identity: &Identity,
        secret: &AppSecret,
        prologue: &[u8],
        initiator: bool,
        sources: &Sources,
    ) -> Result<Handshake, SecurityError> {
        let params = noise_params()?;
        let builder = if sources.is_seeded() {
            snow::Builder::with_resolver(params, Box::new(InjectedRandomness(sources.clone())))
        } else {
            snow::Builder::new(params)
        };
        let builder = builder
            .local_private_key(identity.private_key())
            .and_then(|b| b.psk(PSK_LOCATION, &secret.0))
            .and_then(|b| b.prologue(prologue))
            .map_err(|err| SecurityError::Handshake(format!("cannot configure the handshake: {err}")))?;
        let state = if initiator { builder.build_initiator() } else { builder.build_responder() }
            .map_err(|err| SecurityError::Handshake(format!("cannot start the handshake: {err}")))?;
        Ok(Handshake {
            state: Some(state),
            initiator,
            credentials: Vec::new(),
            written: 0,
            read: 0,
            peer_credentials: Vec::new(),
        })
    }

    /// The next handshake message to send, if it is this side's turn; `Ok(None)` while waiting for the peer and
    /// once finished.
    ///
    /// # Errors
    /// [`SecurityError::WrongState`] if the handshake has already failed; [`SecurityError::Handshake`] if the
    /// message cannot be written (which fails the handshake).
    pub fn take_outgoing(&mut self) -> Result<Option<Vec<u8>>, SecurityError> {
        let state = self.state.as_mut().ok_or(SecurityError::WrongState("the handshake has failed"))?;
        if state.is_handshake_finished() || !state.is_my_turn() {
            return Ok(None);
        }
        // The responder's first message and the initiator's second carry the static key: the credentials go there.
        let carries_static = self.written == usize::from(self.initiator);
        let payload: &[u8] = if carries_static { &self.credentials } else { &[] };
        let mut message = vec![0u8; OUTGOING_BUF_LEN + payload.len()];
        match state.write_message(payload, &mut message) {
            Ok(len) => {
                message.truncate(len);
                self.written += 1;
                self.log_if_finished();
                Ok(Some(message))
            }
            Err(err) => Err(self.fail(format!("cannot write a handshake message: {err}"))),
        }
    }

    /// Processes a handshake message received from the peer.
    ///
    /// # Errors
    /// [`SecurityError::Handshake`] (failing the handshake) if the message is out of turn, malformed, too long,
    /// fails authentication (different app secret or prologue, tampering), carries a payload, or introduces an
    /// unacceptable static key; [`SecurityError::WrongState`] if the handshake has already failed.
    pub fn incoming(&mut self, msg: &[u8]) -> Result<(), SecurityError> {
        let state = self.state.as_mut().ok_or(SecurityError::WrongState("the handshake has failed"))?;
        if state.is_handshake_finished() {
            return Err(self.fail("a handshake message arrived after the handshake finished".into()));
        }
        if state.is_my_turn() {
            return Err(self.fail("a handshake message arrived out of turn".into()));
        }
        if msg.len() > MAX_MESSAGE_LEN {
            return Err(self.fail(format!("a handshake message of {} bytes is too long", msg.len())));
        }
        let mut payload = vec![0u8; msg.len()];
        let payload_len = match state.read_message(msg, &mut payload) {
            Ok(len) => len,
            Err(err) => return Err(self.fail(format!("a handshake message was rejected: {err}"))),
        };
        // Only the message that carries the peer's static key may carry its credentials: the initiator's second
        // (the responder's second read) or the responder's first (the initiator's first read).
        let carries_static = self.read == usize::from(!self.initiator);
        self.read += 1;
        if payload_len != 0 && !carries_static {
            return Err(self.fail(format!("a handshake message carried an unexpected {payload_len}-byte payload")));
        }
        if payload_len > MAX_CREDENTIALS {
            return Err(self.fail(format!("credentials of {payload_len} bytes are too long")));
        }
        if carries_static {
            payload.truncate(payload_len);
            self.peer_credentials = payload;
        }
        let remote = state.get_remote_static().map(<[u8; 32]>::try_from);
        match remote {
            None => {}
            Some(Err(_)) => return Err(self.fail("the peer's static key has the wrong length".into())),
            Some(Ok(key)) => match is_low_order(&key) {
                Ok(false) => {}
                Ok(true) => return Err(self.fail("the peer's static key is a low-order point".into())),
                Err(err) => return Err(self.fail(err.to_string())),
            },
        }
        self.log_if_finished();
        Ok(())
    }

    /// Whether the handshake has completed on this side, so that [`into_channel`](Self::into_channel) will succeed.
    pub fn is_finished(&self) -> bool {
        self.state.as_ref().is_some_and(snow::HandshakeState::is_handshake_finished)
    }

    /// Whether the handshake has failed (every later call errs).
    pub fn is_failed(&self) -> bool {
        self.state.is_none()
    }

    /// The encrypted channel and the peer's authenticated static key, once the handshake has finished.
    ///
    /// # Errors
    /// [`SecurityError::WrongState`] if the handshake has not finished or has failed.
    pub fn into_channel(self) -> Result<(SecureChannel, DeviceKey), SecurityError> {
        let state = self.state.ok_or(SecurityError::WrongState("the handshake has failed"))?;
        if !state.is_handshake_finished() {
            return Err(SecurityError::WrongState("the handshake has not finished"));
        }
        let remote = state
            .get_remote_static()
            .and_then(|key| <[u8; 32]>::try_from(key).ok())
            .map(DeviceKey)
            .ok_or_else(|| SecurityError::Handshake("the peer's static key is missing".into()))?;
        let transport = state
            .into_transport_mode()
            .map_err(|err| SecurityError::Handshake(format!("cannot switch to transport mode: {err}")))?;
        Ok((SecureChannel::new(transport, remote), remote))
    }

    /// Fails the handshake for good and returns the error describing why.
    fn fail(&mut self, reason: String) -> SecurityError {
        debug!("{} handshake failed: {reason}", self.role());
        self.state = None;
        SecurityError::Handshake(reason)
    }

    fn log_if_finished(&self) {
        if let Some(state) = &self.state {
            if state.is_handshake_finished() {
                let peer = state.get_remote_static().and_then(|key| <[u8; 32]>::try_from(key).ok()).map(DeviceKey);
                debug!(
                    "{} handshake finished with {}",
                    self.role(),
                    peer.map_or_else(|| "?".into(), |k| k.to_string())
                );
            }
        }
    }

    fn role(&self) -> &'static str {
        if self.initiator {
            "initiator"
        } else {
            "responder"
        }
    }
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("role", &self.role())
            .field("finished", &self.is_finished())
            .field("failed", &self.is_failed())
            .finish()
    }
}
