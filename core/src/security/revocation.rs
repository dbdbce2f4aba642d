//! Revocation lists: signed by the app authority, versioned (a higher number replaces a lower one), naming the
//! certificates, devices and authors that are no longer trusted — and, with a roster, closing the fleet's
//! membership up to a time.
//!
//! # Rosters
//! A [`Revocation::Roster`] lists the devices (by signing key) that may hold the app's documents as of `until_ms`:
//! every device certificate valid from that time or earlier for a device not on it is revoked, so a device
//! certified before then either is on the roster or links to no one. Devices certified later are not affected —
//! they can only take documents from members after `until_ms`. This is what makes *causal stability* knowable
//! (issue 17): once every member has acknowledged a change, no device can still send a change made without seeing
//! it, so what every member's acknowledgements cover may be collected (counters folded, and later sequence
//! tombstones dropped). The authority issues a new roster when it certifies devices (`shoal authority roster`);
//! certificates an intermediate authority issued must be listed by the root authority too.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::certificate::{Certificate, CertificateError};
use super::signing::{Signed, SignedBody, SigningKey, VerifyingKey};
use crate::crdt::clock::PeerId;

/// The format version of revocation lists this code writes and reads.
pub const REVOCATION_FORMAT: u8 = 1;

/// The most entries one revocation list carries.
pub const MAX_REVOCATIONS: usize = 10_000;

/// The longest encoded revocation list accepted, in bytes (checked before decoding).
pub const MAX_REVOCATION_LIST_BYTES: usize = 1 << 20;

/// The most devices one roster lists ([`Revocation::Roster`]).
pub const MAX_ROSTER_MEMBERS: usize = 16_384;

/// The signature context of revocation lists.
const REVOCATION_CONTEXT: &str = "shoal revocation list v1";

/// One thing a revocation list revokes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Revocation {
    /// The certificate `serial` issued by `issuer` (a lost phone's; an intermediate authority's, which revokes
    /// everything it issued).
    Certificate {
        /// The key that issued it.
        issuer: VerifyingKey,
        /// Its serial.
        serial: u64,
    },
    /// Every certificate for this signing key, whoever issued it.
    Device {
        /// The device's signing key.
        signing_key: VerifyingKey,
    },
    /// Changes by `author` past counter `accept_until` (all of them when `None`): a device whose key was lost
    /// keeps the work it did before, and nothing written since counts.
    Author {
        /// The author id.
        author: PeerId,
        /// The last counter still accepted.
        accept_until: Option<u64>,
    },
    /// Every device certificate valid from `until_ms` or earlier (its `not_before_ms`) for a device whose signing
    /// key is not among `members`: the fleet's membership, closed up to that time (see the module docs). At most
    /// one per list; authority (intermediate) certificates are not affected.
    Roster {
        /// The members' signing keys, in ascending order, at most [`MAX_ROSTER_MEMBERS`].
        members: Vec<VerifyingKey>,
        /// The time (ms since the Unix epoch) up to which the membership is closed.
        until_ms: u64,
    },
}

/// What a revocation list says, signed by its issuer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationBody {
    /// [`REVOCATION_FORMAT`].
    pub format: u8,
    /// The authority that signed the list.
    pub issuer: VerifyingKey,
    /// The list's version: a list with a higher number replaces one with a lower number from the same issuer, so
    /// each list carries every revocation still in force.
    pub number: u64,
    /// When it was issued, ms since the Unix epoch (for people).
    pub issued_ms: u64,
    /// What it revokes: at most [`MAX_REVOCATIONS`].
    pub entries: Vec<Revocation>,
}

impl SignedBody for RevocationBody {
    const CONTEXT: &'static str = REVOCATION_CONTEXT;
    const KIND: &'static str = "revocation list";
    const MAX_BYTES: usize = MAX_REVOCATION_LIST_BYTES;

    fn issuer(&self) -> VerifyingKey {
        self.issuer
    }

    fn describe(&self) -> String {
        format!("revocation list {} of {}", self.number, self.issuer)
    }
}

/// A signed revocation list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevocationList {
    body: RevocationBody,
    signed: Signed,
}

impl RevocationList {
    /// Signs `body` with `issuer` (whose public key must be `body.issuer`).
    ///
    /// # Errors
    /// [`CertificateError::Malformed`] if the body breaks a bound or names another issuer.
    pub fn issue(body: RevocationBody, issuer: &SigningKey) -> Result<RevocationList, CertificateError> {
        validate(&body)?;
        if body.issuer != issuer.verifying_key() {
            return Err(CertificateError::Malformed("the list names another issuer than the signing key".into()));
        }
        let signed = Signed::sign(&body, issuer)?;
        Ok(RevocationList { body, signed })
    }

    /// The encoded form (what [`decode`](Self::decode) reads).
    pub fn encode(&self) -> Vec<u8> {
        self.signed.encode()
    }

    /// Reads an encoded list, checking its bounds and its issuer's signature (not whether the issuer is trusted).
    ///
    /// # Errors
    /// [`CertificateError::Malformed`] or [`CertificateError::BadSignature`].
    pub fn decode(bytes: &[u8]) -> Result<RevocationList, CertificateError> {
        let (body, signed) = Signed::open::<RevocationBody>(bytes)?;
        validate(&body)?;
        Ok(RevocationList { body, signed })
    }

    /// What the list says.
    pub fn body(&self) -> &RevocationBody {
        &self.body
    }
}

fn validate(body: &RevocationBody) -> Result<(), CertificateError> {
    if body.format != REVOCATION_FORMAT {
        return Err(CertificateError::Malformed(format!(
            "revocation list format {} (this device reads {REVOCATION_FORMAT})",
            body.format
        )));
    }
    if body.entries.len() > MAX_REVOCATIONS {
        return Err(CertificateError::Malformed(format!(
            "{} revocations (at most {MAX_REVOCATIONS})",
            body.entries.len()
        )));
    }
    let rosters: Vec<&Vec<VerifyingKey>> = body
        .entries
        .iter()
        .filter_map(|e| match e {
            Revocation::Roster { members, .. } => Some(members),
            _ => None,
        })
        .collect();
    if rosters.len() > 1 {
        return Err(CertificateError::Malformed(format!("{} rosters in one list (at most one)", rosters.len())));
    }
    if let Some(members) = rosters.first() {
        if members.len() > MAX_ROSTER_MEMBERS {
            return Err(CertificateError::Malformed(format!(
                "a roster of {} devices (at most {MAX_ROSTER_MEMBERS})",
                members.len()
            )));
        }
        if !members.windows(2).all(|w| w[0] < w[1]) {
            return Err(CertificateError::Malformed("a roster's members are not in ascending order, or repeat".into()));
        }
    }
    Ok(())
}

/// The revocation lists a device holds: the newest from each trusted authority.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Revocations {
    lists: BTreeMap<VerifyingKey, RevocationList>,
}

impl Revocations {
    /// No revocations.
    pub fn new() -> Revocations {
        Revocations::default()
    }

    /// Takes in `list` if its issuer is one of `authorities` and it is newer than the list held from that issuer.
    /// Returns whether it was taken (a device passes a taken list on to its peers).
    ///
    /// # Errors
    /// [`CertificateError::UnknownAuthority`] if the issuer is not trusted.
    pub fn accept(&mut self, list: RevocationList, authorities: &[VerifyingKey]) -> Result<bool, CertificateError> {
        let issuer = list.body.issuer;
        if !authorities.contains(&issuer) {
            return Err(CertificateError::UnknownAuthority(issuer));
        }
        if self.lists.get(&issuer).is_some_and(|held| held.body.number >= list.body.number) {
            return Ok(false);
        }
        log::info!("revocation list {} of {issuer}: {} entries", list.body.number, list.body.entries.len());
        self.lists.insert(issuer, list);
        Ok(true)
    }

    /// The lists held, one per issuer.
    pub fn lists(&self) -> impl Iterator<Item = &RevocationList> {
        self.lists.values()
    }

    fn entries(&self) -> impl Iterator<Item = &Revocation> {
        self.lists.values().flat_map(|l| l.body.entries.iter())
    }

    /// Why `cert` is revoked, if it is.
    pub fn revokes(&self, cert: &Certificate) -> Option<String> {
        let b = cert.body();
        self.entries().find_map(|r| match r {
            Revocation::Certificate { issuer, serial } if *issuer == b.issuer && *serial == b.serial => {
                Some(format!("certificate {serial} of {issuer}"))
            }
            Revocation::Device { signing_key } if *signing_key == b.signing_key => {
                Some(format!("device key {signing_key} ({})", b.name))
            }
            Revocation::Roster { members, until_ms }
                if !b.issues && b.not_before_ms <= *until_ms && members.binary_search(&b.signing_key).is_err() =>
            {
                Some(format!(
                    "device key {} ({}), certified before the roster of {until_ms}, is not on it",
                    b.signing_key, b.name
                ))
            }
            _ => None,
        })
    }

    /// The roster in force — the one closing membership up to the latest time, when lists of several authorities
    /// hold one — as its members (ascending) and that time.
    pub fn roster(&self) -> Option<(&[VerifyingKey], u64)> {
        self.entries()
            .filter_map(|r| match r {
                Revocation::Roster { members, until_ms } => Some((members.as_slice(), *until_ms)),
                _ => None,
            })
            .max_by_key(|(_, until)| *until)
    }

    /// The last counter of `author` still accepted: `None` when the author is not revoked, `Some(None)` when
    /// none of its changes is, `Some(Some(n))` when its changes up to `n` are.
    pub fn author_limit(&self, author: PeerId) -> Option<Option<u64>> {
        self.entries()
            .filter_map(|r| match r {
                Revocation::Author { author: a, accept_until } if *a == author => Some(*accept_until),
                _ => None,
            })
            .min_by_key(|until| until.map_or(0, |n| n.saturating_add(1)))
    }
}
