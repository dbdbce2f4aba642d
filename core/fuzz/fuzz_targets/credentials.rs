//! Credentials from a hostile device: the bytes a peer presents inside the handshake (a certificate chain), a
//! revocation list passed on by a peer, and grant text. Invariants: no panic; whatever decodes re-encodes to a form
//! that decodes to the same thing; a chain that decodes never verifies against an
//! authority nobody holds the key of; a grant that parses prints as text that parses to the same grant.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoaldb::security::{CertificateChain, Grant, RevocationList, Revocations, VerifyingKey};

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    match which % 3 {
        0 => {
            if let Ok(chain) = CertificateChain::decode(rest) {
                assert_eq!(CertificateChain::decode(&chain.encode()).as_ref(), Ok(&chain));
                let pinned = [VerifyingKey([0x42; 32])];
                assert!(chain.verify(&pinned, &Revocations::new(), 1_780_000_000_000).is_err());
            }
        }
        1 => {
            if let Ok(list) = RevocationList::decode(rest) {
                assert_eq!(RevocationList::decode(&list.encode()).as_ref(), Ok(&list));
                assert!(Revocations::new().accept(list, &[VerifyingKey([0x42; 32])]).is_err());
            }
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(rest) {
                if let Ok(grant) = Grant::parse(text) {
                    assert_eq!(Grant::parse(&grant.to_string()).as_ref(), Ok(&grant));
                }
            }
        }
    }
});
