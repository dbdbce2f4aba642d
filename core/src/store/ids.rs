//! Generated document ids: time-sortable, 26 characters of Crockford base32 (48 bits of milliseconds, then 80
//! random bits), like ULIDs. Ids generated later sort after earlier ones (to the millisecond).

use crate::util::sources::Sources;

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A new id for a document created at `wall_ms`, its random part from `sources`.
pub fn generate(wall_ms: u64, sources: &Sources) -> String {
    let mut random = [0u8; 10];
    sources.fill(&mut random);
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

#[cfg(test)]
mod tests {
    #[test]
    fn ids_sort_by_time_and_are_unique() {
        let sources = super::Sources::system();
        let a = super::generate(1_000, &sources);
        let b = super::generate(2_000, &sources);
        let c = super::generate(2_000, &sources);
        assert_eq!(a.len(), 26);
        assert!(a < b);
        assert_ne!(b, c);
    }
}
