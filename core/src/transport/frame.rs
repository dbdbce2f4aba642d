//! Length-prefixed framing of a byte stream.
//!
//! A stream link (TCP, or the byte stream a Bluetooth LE link carries in packets) delivers bytes in arbitrary
//! pieces; the layers above (the Noise handshake and the encrypted channel) exchange whole messages. Each message travels as one *frame*: a 4-byte big-endian
//! length followed by that many bytes of payload. Empty frames are not allowed, and no frame is longer than
//! [`MAX_FRAME_LEN`], which leaves room for the longest Noise message (65,535 bytes).
//!
//! [`encode_frame`] writes a frame; [`FrameDecoder`] reassembles frames from whatever pieces arrive. A
//! declared length that is zero or too large is rejected as soon as its 4 header bytes arrive, before any of the
//! payload, and the decoder then stays failed: the link must be closed, since the stream can no longer be
//! trusted to be in step.

use log::{debug, trace};

/// The longest payload a frame may carry: a Noise message is at most 65,535 bytes, plus a little headroom.
pub const MAX_FRAME_LEN: usize = 65_535 + 64;

/// The length of a frame's header: a big-endian `u32` giving the payload length.
pub const HEADER_LEN: usize = 4;

/// The buffer capacity a [`FrameDecoder`] keeps between frames: anything above it is given back to the allocator
/// once the buffer has been drained, so an unusually large push does not pin memory for the life of a link.
const RETAINED_CAPACITY: usize = HEADER_LEN + MAX_FRAME_LEN;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The payload (to send, or as declared by a received header) is longer than [`MAX_FRAME_LEN`].
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The length of the payload, or the length a received header declared.
        len: usize,
        /// The largest length allowed ([`MAX_FRAME_LEN`]).
        max: usize,
    },
    /// The payload (to send, or as declared by a received header) is empty.
    #[error("empty frame")]
    Empty,
}

/// Checks a payload length against the framing rules.
fn check_len(len: usize) -> Result<(), FrameError> {
    if len == 0 {
        Err(FrameError::Empty)
    } else if len > MAX_FRAME_LEN {
        Err(FrameError::TooLarge { len, max: MAX_FRAME_LEN })
    } else {
        Ok(())
    }
}

/// Appends `payload` to `out` as one frame: its length as a 4-byte big-endian integer, then the payload.
///
/// # Errors
/// [`FrameError::Empty`] if `payload` is empty, [`FrameError::TooLarge`] if it is longer than
/// [`MAX_FRAME_LEN`]; `out` is left unchanged in both cases.
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    check_len(payload.len())?;
    let len =
        u32::try_from(payload.len()).map_err(|_| FrameError::TooLarge { len: payload.len(), max: MAX_FRAME_LEN })?;
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Reassembles frames from a byte stream delivered in arbitrary pieces.
///
/// Feed it with [`push`](Self::push) as bytes arrive, then call [`next_frame`](Self::next_frame) until it returns
/// `Ok(None)`. Frames split across pushes and several frames in one push are both handled.
///
/// # Memory
/// The decoder holds only bytes that have been pushed and not yet returned as frames; it never allocates on the
/// strength of a declared length, so a hostile header cannot make it reserve memory, and a header declaring more
/// than [`MAX_FRAME_LEN`] fails the decoder at once. A caller that drains `next_frame` after every push therefore
/// keeps at most one incomplete frame buffered (under [`HEADER_LEN`] + [`MAX_FRAME_LEN`] bytes) plus the bytes of
/// its latest push; a caller that pushes without draining buffers everything it pushes. Consumed bytes are
/// reclaimed by moving the unread tail to the front only when the consumed part is at least as long as the tail,
/// so the copying is linear in the bytes received, and spare capacity beyond one frame's worth is released
/// whenever the buffer empties. A failed decoder drops its buffer and ignores further pushes.
pub struct FrameDecoder {
    /// Bytes received; those before `pos` have already been returned as frames.
    buf: Vec<u8>,
    /// Read offset into `buf`: the start of the first byte not yet consumed.
    pos: usize,
    /// Set once the stream has broken the framing rules; returned again by every later `next_frame`.
    failed: Option<FrameError>,
}

impl FrameDecoder {
    /// A decoder waiting for the first byte of a stream.
    pub fn new() -> FrameDecoder {
        FrameDecoder { buf: Vec::new(), pos: 0, failed: None }
    }

    /// Adds bytes received from the stream. Ignored once the decoder has failed.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            trace!("frame decoder: ignoring {} bytes pushed after a framing error", bytes.len());
            return;
        }
        if bytes.is_empty() {
            return;
        }
        self.compact();
        self.buf.extend_from_slice(bytes);
    }

    /// Returns the next complete frame's payload, or `Ok(None)` if more bytes are needed.
    ///
    /// # Errors
    /// [`FrameError::Empty`] or [`FrameError::TooLarge`] as soon as a header declares a length of zero or more than
    /// [`MAX_FRAME_LEN`], without waiting for the payload. The decoder then stays failed and returns the same error
    /// from every later call; the link should be closed.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let Some(header) = self.buf.get(self.pos..self.pos.saturating_add(HEADER_LEN)) else {
            return Ok(None);
        };
        let mut len_bytes = [0u8; HEADER_LEN];
        len_bytes.copy_from_slice(header);
        let len = usize::try_from(u32::from_be_bytes(len_bytes)).unwrap_or(usize::MAX);
        if let Err(err) = check_len(len) {
            return Err(self.fail(err));
        }
        let start = self.pos.saturating_add(HEADER_LEN);
        let end = start.saturating_add(len);
        let Some(payload) = self.buf.get(start..end) else {
            return Ok(None);
        };
        let frame = payload.to_vec();
        self.pos = end;
        if self.pos >= self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            if self.buf.capacity() > RETAINED_CAPACITY {
                self.buf.shrink_to(RETAINED_CAPACITY);
            }
        }
        trace!("frame decoder: decoded a frame of {len} bytes");
        Ok(Some(frame))
    }

    /// The number of bytes pushed but not yet returned as frames (0 once failed).
    pub fn buffered_len(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// Whether the stream has broken the framing rules (every later [`next_frame`](Self::next_frame) errs).
    pub fn is_failed(&self) -> bool {
        self.failed.is_some()
    }

    /// Moves the unread tail to the front of the buffer once the consumed prefix is at least as long as it, so
    /// each byte is moved at most a constant number of times on average.
    fn compact(&mut self) {
        if self.pos == 0 {
            return;
        }
        let unread = self.buf.len().saturating_sub(self.pos);
        if self.pos >= unread {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }

    /// Puts the decoder into the failed state, releasing its buffer, and returns the error.
    fn fail(&mut self, err: FrameError) -> FrameError {
        debug!("frame decoder: {err}; the stream is no longer usable");
        self.failed = Some(err.clone());
        self.buf = Vec::new();
        self.pos = 0;
        err
    }
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new()
    }
}

impl std::fmt::Debug for FrameDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameDecoder")
            .field("buffered_len", &self.buffered_len())
            .field("failed", &self.failed)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode_all(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for frame in frames {
            assert_eq!(encode_frame(frame, &mut out), Ok(()));
        }
        out
    }

    fn drain(decoder: &mut FrameDecoder, into: &mut Vec<Vec<u8>>) -> Result<(), FrameError> {
        while let Some(frame) = decoder.next_frame()? {
            into.push(frame);
        }
        Ok(())
    }

    #[test]
    fn encodes_big_endian_length_then_payload() {
        let mut out = vec![0xAA];
        assert_eq!(encode_frame(b"hello", &mut out), Ok(()));
        assert_eq!(out, [0xAA, 0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o']);
    }

    #[test]
    fn round_trip() {
        let mut stream = Vec::new();
        assert_eq!(encode_frame(b"ping", &mut stream), Ok(()));
        let mut decoder = FrameDecoder::new();
        decoder.push(&stream);
        assert_eq!(decoder.next_frame(), Ok(Some(b"ping".to_vec())));
        assert_eq!(decoder.next_frame(), Ok(None));
        assert_eq!(decoder.buffered_len(), 0);
    }

    #[test]
    fn round_trip_of_the_longest_frame() {
        let payload: Vec<u8> = (0..MAX_FRAME_LEN).map(|i| (i % 251) as u8).collect();
        let stream = encode_all(std::slice::from_ref(&payload));
        let mut decoder = FrameDecoder::new();
        decoder.push(&stream);
        assert_eq!(decoder.next_frame(), Ok(Some(payload)));
        assert_eq!(decoder.next_frame(), Ok(None));
    }

    #[test]
    fn byte_by_byte_delivery() {
        let frames = vec![b"a".to_vec(), vec![7u8; 300], b"third frame".to_vec()];
        let stream = encode_all(&frames);
        let mut decoder = FrameDecoder::new();
        let mut got = Vec::new();
        for byte in &stream {
            decoder.push(std::slice::from_ref(byte));
            assert_eq!(drain(&mut decoder, &mut got), Ok(()));
        }
        assert_eq!(got, frames);
        assert_eq!(decoder.buffered_len(), 0);
    }

    #[test]
    fn many_frames_in_one_push() {
        let frames: Vec<Vec<u8>> = (1..=100u8).map(|n| vec![n; usize::from(n)]).collect();
        let stream = encode_all(&frames);
        let mut decoder = FrameDecoder::new();
        decoder.push(&stream);
        let mut got = Vec::new();
        assert_eq!(drain(&mut decoder, &mut got), Ok(()));
        assert_eq!(got, frames);
    }

    #[test]
    fn partial_frame_waits_for_the_rest() {
        let stream = encode_all(&[b"first".to_vec(), b"second".to_vec()]);
        let mut decoder = FrameDecoder::new();
        decoder.push(&stream[..stream.len() - 1]);
        assert_eq!(decoder.next_frame(), Ok(Some(b"first".to_vec())));
        assert_eq!(decoder.next_frame(), Ok(None));
        assert_eq!(decoder.buffered_len(), HEADER_LEN + b"second".len() - 1);
        decoder.push(&stream[stream.len() - 1..]);
        assert_eq!(decoder.next_frame(), Ok(Some(b"second".to_vec())));
    }

    #[test]
    fn encode_rejects_empty_and_oversize_payloads() {
        let mut out = vec![1, 2, 3];
        assert_eq!(encode_frame(&[], &mut out), Err(FrameError::Empty));
        let too_big = vec![0u8; MAX_FRAME_LEN + 1];
        assert_eq!(
            encode_frame(&too_big, &mut out),
            Err(FrameError::TooLarge { len: MAX_FRAME_LEN + 1, max: MAX_FRAME_LEN })
        );
        assert_eq!(out, [1, 2, 3]);
    }

    #[test]
    fn oversize_length_is_rejected_before_the_payload_arrives() {
        let mut decoder = FrameDecoder::new();
        let declared = MAX_FRAME_LEN + 1;
        decoder.push(&(declared as u32).to_be_bytes());
        let expected = FrameError::TooLarge { len: declared, max: MAX_FRAME_LEN };
        assert_eq!(decoder.next_frame(), Err(expected.clone()));
        assert!(decoder.is_failed());
        // It stays failed, and buffers nothing more.
        decoder.push(&[0u8; 1000]);
        assert_eq!(decoder.buffered_len(), 0);
        assert_eq!(decoder.next_frame(), Err(expected));
    }

    #[test]
    fn largest_declared_length_is_rejected() {
        let mut decoder = FrameDecoder::new();
        decoder.push(&[0xFF; 4]);
        assert_eq!(decoder.next_frame(), Err(FrameError::TooLarge { len: u32::MAX as usize, max: MAX_FRAME_LEN }));
    }

    #[test]
    fn zero_length_is_rejected_and_stays_failed() {
        let mut decoder = FrameDecoder::new();
        let mut stream = encode_all(&[b"ok".to_vec()]);
        stream.extend_from_slice(&[0, 0, 0, 0]);
        stream.extend_from_slice(&encode_all(&[b"never".to_vec()]));
        decoder.push(&stream);
        assert_eq!(decoder.next_frame(), Ok(Some(b"ok".to_vec())));
        assert_eq!(decoder.next_frame(), Err(FrameError::Empty));
        assert_eq!(decoder.next_frame(), Err(FrameError::Empty));
        decoder.push(&encode_all(&[b"later".to_vec()]));
        assert_eq!(decoder.next_frame(), Err(FrameError::Empty));
    }

    #[test]
    fn header_split_across_pushes_is_checked_once_complete() {
        let mut decoder = FrameDecoder::new();
        decoder.push(&[0x7F, 0xFF]);
        assert_eq!(decoder.next_frame(), Ok(None));
        decoder.push(&[0xFF, 0xFF]);
        assert!(matches!(decoder.next_frame(), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn empty_push_is_harmless() {
        let mut decoder = FrameDecoder::default();
        decoder.push(&[]);
        assert_eq!(decoder.next_frame(), Ok(None));
        assert_eq!(decoder.buffered_len(), 0);
    }

    #[test]
    fn buffer_stays_bounded_over_a_long_stream() {
        // 2,000 frames of 100 bytes, delivered in 7-byte pieces and drained after every push: the buffer never
        // holds more than one partial frame plus one piece, and its capacity stays small.
        let frames: Vec<Vec<u8>> = (0..2000u32).map(|i| vec![(i % 256) as u8; 100]).collect();
        let stream = encode_all(&frames);
        let mut decoder = FrameDecoder::new();
        let mut got = Vec::new();
        let mut max_capacity = 0;
        for piece in stream.chunks(7) {
            decoder.push(piece);
            assert_eq!(drain(&mut decoder, &mut got), Ok(()));
            assert!(decoder.buffered_len() < HEADER_LEN + 100 + 7);
            max_capacity = max_capacity.max(decoder.buf.capacity());
        }
        assert_eq!(got, frames);
        assert!(max_capacity <= 512, "capacity grew to {max_capacity}");
    }

    #[test]
    fn spare_capacity_is_released_after_a_large_push() {
        let frames: Vec<Vec<u8>> = (0..40).map(|_| vec![1u8; 10_000]).collect();
        let mut decoder = FrameDecoder::new();
        decoder.push(&encode_all(&frames));
        let mut got = Vec::new();
        assert_eq!(drain(&mut decoder, &mut got), Ok(()));
        assert_eq!(got.len(), 40);
        assert!(decoder.buf.capacity() <= RETAINED_CAPACITY);
    }

    #[test]
    fn error_messages_are_readable() {
        assert_eq!(FrameError::Empty.to_string(), "empty frame");
        assert_eq!(
            FrameError::TooLarge { len: 70_000, max: MAX_FRAME_LEN }.to_string(),
            "frame of 70000 bytes exceeds the maximum of 65599 bytes"
        );
    }

    proptest! {
        #[test]
        fn random_splits_decode_to_the_same_frames(
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..400), 0..30),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..40),
        ) {
            let stream = encode_all(&frames);
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
            points.push(0);
            points.push(stream.len());
            points.sort_unstable();
            let mut decoder = FrameDecoder::new();
            let mut got = Vec::new();
            for pair in points.windows(2) {
                decoder.push(&stream[pair[0]..pair[1]]);
                prop_assert_eq!(drain(&mut decoder, &mut got), Ok(()));
            }
            prop_assert_eq!(got, frames);
            prop_assert_eq!(decoder.buffered_len(), 0);
        }

        #[test]
        fn arbitrary_bytes_never_panic(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..20)) {
            let mut decoder = FrameDecoder::new();
            for chunk in &chunks {
                decoder.push(chunk);
                loop {
                    match decoder.next_frame() {
                        Ok(Some(frame)) => prop_assert!(!frame.is_empty() && frame.len() <= MAX_FRAME_LEN),
                        Ok(None) => break,
                        Err(_) => { prop_assert!(decoder.is_failed()); break; }
                    }
                }
            }
        }
    }
}
