//! Arbitrary bytes as a sync message: decoding never panics, and what decodes re-encodes to a message that
//! decodes to the same value.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoaldb::sync::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::decode(data) {
        assert_eq!(Message::decode(&m.encode()).ok(), Some(m));
    }
});
