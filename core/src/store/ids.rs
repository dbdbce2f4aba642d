//! Generated document ids: time-sortable, 26 characters of Crockford base32 (48 bits of milliseconds, then 80
//! random bits), like ULIDs. Ids generated later sort after earlier ones (to the millisecond).

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A new id for a document created at `wall_ms`.
pub fn generate(wall_ms: u64) -> String {
    let mut random = [0u8; 10];
    if getrandom::fill(&mut random).is_err() {
        // No OS randomness: fall back to a hash of time and address-space noise; still unique enough per device.
        let noise = blake3::hash(&[wall_ms.to_le_bytes(), (&random as *const _ as u64).to_le_bytes()].concat());
        random.copy_from_slice(&noise.as_bytes()[..10]);
    }
    let mut value: u128 = (wall_ms as u128 & ((1 << 48) - 1)) << 80;
    for (i, b) in random.iter().enumerate() {
        value |= (*b as u128) << (8 * (9 - i));
    }
    let mut out = [0u8; 26];
    for (i, slot) in out.iter_mut().enumerate() {
        let shift = 5 * (25 - i);
        *slot = ALPHABET[((value >> shift) & 31) as usize];
    }
    out.iter().map(|&b| b as char).collect()
}

/// A random, non-zero 64-bit number (peer ids).
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    let v = u64::from_le_bytes(b);
    if v == 0 {
        crate::crdt::clock::wall_clock_ms() | 1
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_sort_by_time_and_are_unique() {
        let a = super::generate(1_000);
        let b = super::generate(2_000);
        let c = super::generate(2_000);
        assert_eq!(a.len(), 26);
        assert!(a < b);
        assert_ne!(b, c);
    }
}
