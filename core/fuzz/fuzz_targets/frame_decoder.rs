//! Arbitrary bytes, pushed in arbitrary pieces, into the frame decoder: never a panic, never a frame over the
//! limit, and once failed it stays failed.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoaldb::transport::frame::{FrameDecoder, MAX_FRAME_LEN};

fuzz_target!(|data: &[u8]| {
    let mut dec = FrameDecoder::new();
    let mut rest = data;
    while !rest.is_empty() {
        let n = (rest[0] as usize % 97) + 1;
        let (piece, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        dec.push(piece);
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => assert!(!f.is_empty() && f.len() <= MAX_FRAME_LEN),
                Ok(None) => break,
                Err(_) => {
                    assert!(dec.is_failed());
                    return;
                }
            }
        }
    }
});
