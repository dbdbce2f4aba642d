//! A link's secure channel, without I/O: the Noise handshake, then messages sealed and cut into frames.
//!
//! A message larger than one Noise message is sent as several frames; the first byte of each frame's plaintext says
//! whether more follow. Reassembled messages are bounded by [`MAX_MESSAGE_BYTES`], and by the engine's node-wide
//! budget (`REASSEMBLY_FREE_BYTES` per link, `REASSEMBLY_SHARED_BYTES` beyond that for all links together). Any frame that fails to
//! decrypt (tampered, replayed, reordered, or from a device without the app secret) is an error: the link must be
//! closed.

use super::wire::{WireError, MAX_MESSAGE_BYTES};
use super::SyncError;
use crate::security::{Access, DeviceKey, Handshake, Identity, SecureChannel, VerifiedDevice, MAX_PLAINTEXT};
use crate::util::sources::Sources;
use std::collections::VecDeque;

/// Bound into the handshake: both sides must speak the same protocol.
const PROLOGUE: &[u8] = b"shoal sync 1";

const MORE: u8 = 1;
const LAST: u8 = 0;

enum State {
    Handshaking(Box<Handshake>),
    Open { channel: Box<SecureChannel>, peer: DeviceKey },
    Failed,
}

pub(crate) struct LinkCodec {
    state: State,
    /// The wall clock (certificates' validity).
    sources: Sources,
    /// What the peer's certificate chain established (`None` in development mode).
    verified: Option<VerifiedDevice>,
    /// What the peer presented, and the key it proved, once checked (as soon as the message carrying them arrived):
    /// checked again when revocations arrive and as time passes.
    presented: Option<(Vec<u8>, DeviceKey)>,
    reassembly: Vec<u8>,
    out: VecDeque<Vec<u8>>,
}

impl LinkCodec {
    pub fn new(
        initiator: bool,
        identity: &Identity,
        access: &Access,
        sources: &Sources,
    ) -> Result<LinkCodec, SyncError> {
        let hs =
            Handshake::new(identity, &access.psk(), PROLOGUE, initiator, sources)?.presenting(access.credentials())?;
        let mut codec = LinkCodec {
            state: State::Handshaking(Box::new(hs)),
            sources: sources.clone(),
            verified: None,
            presented: None,
            reassembly: Vec::new(),
            out: VecDeque::new(),
        };
        codec.flush_handshake(access)?;
        Ok(codec)
    }

    /// What the peer's certificate chain established, once checked (`None` in development mode).
    pub fn verified(&self) -> Option<&VerifiedDevice> {
        self.verified.as_ref()
    }

    /// The certificate chain the peer presented (encoded), once checked (`None` in development mode).
    pub fn presented_chain(&self) -> Option<&[u8]> {
        self.verified.as_ref().and(self.presented.as_ref()).map(|(chain, _)| chain.as_slice())
    }

    /// Checks the peer's credentials again, with `access` as it is now (new revocation lists) at `now_ms`.
    pub fn recheck(&self, access: &Access, now_ms: u64) -> Result<(), crate::security::CertificateError> {
        match &self.presented {
            Some((credentials, key)) if self.verified.is_some() => {
                access.check_peer(credentials, *key, now_ms).map(|_| ())
            }
            _ => Ok(()),
        }
    }

    fn flush_handshake(&mut self, access: &Access) -> Result<(), SyncError> {
        let State::Handshaking(hs) = &mut self.state else { return Ok(()) };
        // The peer's credentials are checked as soon as they arrive: before this side presents its own (the
        // initiator answers the responder's) and before any channel exists.
        if self.presented.is_none() {
            if let Some((credentials, key)) = hs.peer_credentials() {
                let verified = access
                    .check_peer(credentials, key, self.sources.now_ms())
                    .map_err(crate::security::SecurityError::from)?;
                if let Some(device) = &verified {
                    log::debug!("peer {key} presented a valid certificate: {} #{}", device.name, device.serial);
                }
                self.verified = verified;
                self.presented = Some((credentials.to_vec(), key));
            }
        }
        while let Some(msg) = hs.take_outgoing()? {
            self.out.push_back(msg);
        }
        if hs.is_finished() {
            let State::Handshaking(hs) = std::mem::replace(&mut self.state, State::Failed) else { return Ok(()) };
            let (channel, peer) = hs.into_channel()?;
            self.state = State::Open { channel: Box::new(channel), peer };
        }
        Ok(())
    }

    /// The authenticated device at the other end, once the handshake is done.
    pub fn peer(&self) -> Option<DeviceKey> {
        match &self.state {
            State::Open { peer, .. } => Some(*peer),
            _ => None,
        }
    }

    /// Bytes of a message being reassembled (received, not complete yet).
    pub fn reassembling(&self) -> usize {
        self.reassembly.len()
    }

    /// Handle one frame; returns the messages it completed. A message may grow to `limit` bytes at most (the
    /// engine's share for this link, at most [`MAX_MESSAGE_BYTES`]). A peer's credentials are checked with
    /// `access` (the engine's, with the revocation lists it holds now).
    pub fn on_frame(&mut self, frame: &[u8], limit: usize, access: &Access) -> Result<Vec<Vec<u8>>, SyncError> {
        let result = self.on_frame_inner(frame, limit.min(MAX_MESSAGE_BYTES), access);
        if result.is_err() {
            self.state = State::Failed;
            self.release();
        }
        result
    }

    /// The link is closed: drop the message being reassembled (it counts against the engine's node-wide budget).
    pub fn release(&mut self) {
        self.reassembly = Vec::new();
    }

    fn on_frame_inner(&mut self, frame: &[u8], limit: usize, access: &Access) -> Result<Vec<Vec<u8>>, SyncError> {
        match &mut self.state {
            State::Failed => Err(SyncError::Protocol("link already failed".into())),
            State::Handshaking(hs) => {
                hs.incoming(frame)?;
                self.flush_handshake(access)?;
                Ok(Vec::new())
            }
            State::Open { channel, .. } => {
                let plain = channel.open(frame)?;
                let (&flag, piece) = plain.split_first().ok_or_else(|| SyncError::Protocol("empty frame".into()))?;
                // The message's kind (in its first bytes) bounds its size too, before the rest arrives.
                let head: Vec<u8> = self.reassembly.iter().chain(piece).take(2).copied().collect();
                let limit = limit.min(super::wire::size_limit(&head));
                let len = self.reassembly.len() + piece.len();
                if len > limit {
                    return Err(WireError::TooLarge(len).into());
                }
                self.reassembly.extend_from_slice(piece);
                match flag {
                    LAST => Ok(vec![std::mem::take(&mut self.reassembly)]),
                    MORE => Ok(Vec::new()),
                    other => Err(SyncError::Protocol(format!("bad frame flag {other}"))),
                }
            }
        }
    }

    /// Seal a message into frames (after the handshake).
    pub fn send(&mut self, message: &[u8]) -> Result<(), SyncError> {
        let State::Open { channel, .. } = &mut self.state else {
            return Err(SyncError::Protocol("link not open".into()));
        };
        let piece_max = MAX_PLAINTEXT - 1;
        let mut pieces = message.chunks(piece_max).peekable();
        if message.is_empty() {
            return Err(SyncError::Protocol("empty message".into()));
        }
        while let Some(piece) = pieces.next() {
            let mut plain = Vec::with_capacity(piece.len() + 1);
            plain.push(if pieces.peek().is_some() { MORE } else { LAST });
            plain.extend_from_slice(piece);
            self.out.push_back(channel.seal(&plain)?);
        }
        Ok(())
    }

    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open { .. })
    }

    /// The next frame to send.
    pub fn poll_frame(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    pub fn has_frames(&self) -> bool {
        !self.out.is_empty()
    }
}
