//! Small helpers every layer uses: one of each.
//!
//! * [`lock`] / [`read`] / [`write`]: a mutex or read-write lock, taken whatever a panic elsewhere left behind;
//! * [`hex`] / [`parse_hex`]: lowercase hex digits of bytes, and back;
//! * [`write_varint`]: an unsigned LEB128 varint (as postcard writes integers);
//! * [`rng::SeededRng`]: a small seeded generator, for jitter that must be reproducible from a seed;
//! * [`sources::Sources`]: where a store gets the time and random numbers (the system, or injected).

pub mod rng;
pub mod sources;

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `m`, ignoring poisoning: a panic on another thread while it held the lock must not take every later
/// caller down. Use only where the guarded state stays valid after such a panic (a store that can roll back keeps
/// its own rule).
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reads `l`, ignoring poisoning (see [`lock`]).
pub fn read<T: ?Sized>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

/// Writes `l`, ignoring poisoning (see [`lock`]).
pub fn write<T: ?Sized>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

/// Lowercase hex digits of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0F)]));
    }
    out
}

/// `N` bytes from exactly `2 × N` hex digits (either case); `None` for anything else.
pub fn parse_hex<const N: usize>(digits: &str) -> Option<[u8; N]> {
    let digits = digits.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let value = |d: u8| char::from(d).to_digit(16).and_then(|v| u8::try_from(v).ok());
    let mut out = [0u8; N];
    for (b, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *b = value(pair[0])? << 4 | value(pair[1])?;
    }
    Some(out)
}

/// Append `v` to `out` as an unsigned LEB128 varint: 7 bits a byte, low bits first, the high bit set on every
/// byte but the last (as postcard writes integers).
pub fn write_varint(mut v: u128, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Read one varint [`write_varint`] wrote from the front of `bytes`, advancing it; `None` when `bytes` ends first or
/// the varint does not fit 128 bits.
pub fn read_varint(bytes: &mut &[u8]) -> Option<u128> {
    let mut v = 0u128;
    for shift in (0..128).step_by(7) {
        let (&b, rest) = bytes.split_first()?;
        *bytes = rest;
        v |= u128::from(b & 0x7f).checked_shl(shift).filter(|_| shift < 126 || b <= 3)?;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let bytes: [u8; 4] = [0x00, 0x0f, 0xa0, 0xff];
        assert_eq!(hex(&bytes), "000fa0ff");
        assert_eq!(parse_hex::<4>("000fa0ff"), Some(bytes));
        assert_eq!(parse_hex::<4>("000FA0FF"), Some(bytes));
        assert_eq!(parse_hex::<4>("000fa0f"), None);
        assert_eq!(parse_hex::<4>("000fa0fff"), None);
        assert_eq!(parse_hex::<2>("0g00"), None);
        assert_eq!(parse_hex::<2>("+f00"), None, "a sign is not a digit");
        assert_eq!(parse_hex::<2>("é00"), None, "not ASCII");
    }

    #[test]
    fn varints_round_trip() {
        for v in [0u128, 1, 127, 128, 300, u64::MAX.into(), u128::MAX] {
            let mut out = Vec::new();
            write_varint(v, &mut out);
            let mut read = &out[..];
            assert_eq!(read_varint(&mut read), Some(v));
            assert!(read.is_empty());
            assert_eq!(read_varint(&mut &out[..out.len() - 1]), None, "{v} cut short");
        }
        assert_eq!(read_varint(&mut &[0xff; 19][..]), None, "more than 128 bits");
        assert_eq!(
            read_varint(
                &mut &[
                    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                    0xff, 0xff, 0x04
                ][..]
            ),
            None
        );
    }

    #[test]
    fn poisoned_locks_are_still_taken() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }
}
