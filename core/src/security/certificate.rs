//! Device certificates: what the app authority (or an intermediate authority it delegated to) says about one
//! device — its keys, its name, when the certificate is valid and what the device may read and write.
//!
//! A certificate is compact ([postcard](https://docs.rs/postcard)), versioned ([`CERTIFICATE_FORMAT`]), signed with
//! Ed25519, and checked with no network: a device holds its own [`CertificateChain`] (its certificate, then those of
//! any intermediate authorities) and every device pins the app authority's public key.
//!
//! # Permissions
//! A certificate carries [`Grant`]s, written as text (the CLI's `--grant`, [`Grant::parse`]):
//!
//! ```text
//! read tasks                                   every document of `tasks`
//! read tasks where team == "north"             the documents the filter matches (the query language of `find`)
//! write tasks                                  any field of any document of `tasks`
//! write tasks fields status, notes where owner == $device
//!                                              only `status` and `notes` (and what is inside them), and only in
//!                                              documents whose `owner` is this device's id
//! read *                                       every collection
//! ```
//!
//! `$device` is the device's id ([`VerifyingKey::device_id`], 16 hex digits), the only parameter a filter may use.
//! Grants add up: a device may do what any one of its grants allows. Along a chain they narrow: an intermediate
//! authority's grants bound everything it issues, so a device may do only what *every* certificate of its chain
//! allows ([`Permissions`]).
//!
//! # Intermediate authorities
//! A certificate with [`CertificateBody::issues`] set belongs to an authority rather than a device (it has no Noise
//! key): an organisation's key delegating to a site's key, say. Its holder may issue certificates; whatever it
//! issues is bounded by its own grants and validity. Chains are at most [`MAX_CHAIN_LEN`] certificates long.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::authorship::RefusalReason;
use super::keys::DeviceKey;
use super::revocation::Revocations;
use super::signing::{Signed, SignedBody, SigningKey, VerifyingKey};
use crate::crdt::clock::PeerId;
use crate::crdt::path::{Path, PathSegment};
use crate::query::{Filter, Params};
use crate::util::hex;

/// The format version of certificates this code writes and reads.
pub const CERTIFICATE_FORMAT: u8 = 1;

/// The longest encoded certificate accepted, in bytes (checked before decoding).
pub const MAX_CERTIFICATE_BYTES: usize = 8 * 1024;

/// The most certificates in a chain: a device's, and up to three intermediate authorities'.
pub const MAX_CHAIN_LEN: usize = 4;

/// The most grants one certificate carries.
pub const MAX_GRANTS: usize = 64;

/// The most field paths one write grant names.
pub const MAX_GRANT_FIELDS: usize = 64;

/// The longest device name in a certificate, in bytes.
pub const MAX_CERTIFICATE_NAME_BYTES: usize = 128;

/// How far two devices' clocks may disagree when checking a certificate's validity period: a certificate is
/// accepted from this long before its start to this long after its end.
pub const CLOCK_SKEW_MS: u64 = 10 * 60 * 1000;

/// The signature context of certificates.
const CERTIFICATE_CONTEXT: &str = "shoal certificate v1";

/// The parameter of permission filters that stands for the device's own id.
pub const DEVICE_PARAMETER: &str = "device";

/// Why a certificate, a chain or a revocation list was refused. Every failure of a peer's credentials closes the
/// link with one of these as the logged reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    /// The bytes are not a certificate (or chain, or revocation list) of a known format, or break one of its
    /// bounds (size, count, names, paths, filters); the text says which.
    #[error("malformed credentials: {0}")]
    Malformed(String),
    /// The peer presented no certificate (it runs in the shared-secret development mode, or sent nothing).
    #[error("no certificate presented")]
    Missing,
    /// A signature does not verify: the certificate (or list) was altered, or was not signed by its issuer.
    #[error("bad signature on {0}")]
    BadSignature(String),
    /// The chain does not lead to an authority this app pins.
    #[error("certificate chain does not lead to a pinned authority (its root issuer is {0})")]
    UnknownAuthority(VerifyingKey),
    /// The chain is broken: a certificate's issuer is not the next certificate's subject, a device certificate
    /// issued another, or an authority certificate stands where a device's should.
    #[error("broken certificate chain: {0}")]
    BrokenChain(String),
    /// The Noise key certified is not the one the peer used in the handshake: the certificate is someone else's.
    #[error("certificate is for Noise key {certified}, the peer's key is {presented}")]
    WrongNoiseKey {
        /// The key in the certificate.
        certified: DeviceKey,
        /// The key the peer proved in the handshake.
        presented: DeviceKey,
    },
    /// A certificate of the chain is not valid yet (beyond the allowed clock skew).
    #[error("certificate {serial} of {issuer} is not valid before {not_before_ms} (now {now_ms})")]
    NotYetValid {
        /// The issuer of the certificate.
        issuer: VerifyingKey,
        /// Its serial.
        serial: u64,
        /// The start of its validity, ms since the Unix epoch.
        not_before_ms: u64,
        /// The checking device's clock.
        now_ms: u64,
    },
    /// A certificate of the chain has expired (beyond the allowed clock skew).
    #[error("certificate {serial} of {issuer} expired at {not_after_ms} (now {now_ms})")]
    Expired {
        /// The issuer of the certificate.
        issuer: VerifyingKey,
        /// Its serial.
        serial: u64,
        /// The end of its validity, ms since the Unix epoch.
        not_after_ms: u64,
        /// The checking device's clock.
        now_ms: u64,
    },
    /// A certificate of the chain, or the device's key, is revoked.
    #[error("revoked: {0}")]
    Revoked(String),
    /// The certificate does not fit this device's own keys (installing a certificate issued for another device).
    #[error("the certificate is not this device's: {0}")]
    NotThisDevice(String),
}

/// What one grant allows: reading, writing, or vouching for documents' states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Right {
    /// Receiving documents.
    Read,
    /// Changing documents.
    Write,
    /// Signing documents' states (issue 17, [`crate::security::attestation`]): what it signs, every device takes
    /// in place of the signed changes the state holds, so that devices can drop those changes from their logs. A
    /// right for a device the fleet trusts with the collection's content (a server, a supervisor's device), as
    /// it checked each change before it signed the state; no fields or filter.
    Attest,
}

/// One permission: a right on one collection (or every collection, `*`), optionally narrowed to the documents a
/// filter matches and, for writes, to some field paths. See the [module documentation](self) for the text form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Read or write.
    pub right: Right,
    /// The collection, or `*` for every collection.
    pub collection: String,
    /// For writes: the field paths that may change (each allows everything under it); `None`: every field.
    pub fields: Option<Vec<String>>,
    /// The documents the grant covers, as filter text (`$device` is the device's id); `None`: every document.
    pub filter: Option<String>,
}

impl Grant {
    /// Reading every document of `collection` (`*`: of every collection).
    pub fn read(collection: &str) -> Grant {
        Grant { right: Right::Read, collection: collection.to_string(), fields: None, filter: None }
    }

    /// Writing every field of every document of `collection` (`*`: of every collection).
    pub fn write(collection: &str) -> Grant {
        Grant { right: Right::Write, collection: collection.to_string(), fields: None, filter: None }
    }

    /// Signing the states of `collection`'s documents (`*`: of every collection; see [`Right::Attest`]).
    pub fn attest(collection: &str) -> Grant {
        Grant { right: Right::Attest, collection: collection.to_string(), fields: None, filter: None }
    }

    /// The same grant, for the documents `filter` matches only.
    pub fn only_where(mut self, filter: &str) -> Grant {
        self.filter = Some(filter.to_string());
        self
    }

    /// The same (write) grant, for these field paths only.
    pub fn only_fields(mut self, fields: &[&str]) -> Grant {
        self.fields = Some(fields.iter().map(|f| f.to_string()).collect());
        self
    }

    /// Parses the text form: `read|write <collection> [fields <path>, <path>…] [where <filter>]`.
    ///
    /// # Errors
    /// [`CertificateError::Malformed`] naming what is wrong (see [`Grant::validate`]).
    pub fn parse(text: &str) -> Result<Grant, CertificateError> {
        let bad = |why: &str| CertificateError::Malformed(format!("grant `{text}`: {why}"));
        let text = text.trim();
        let (head, filter) = match split_word(text, "where") {
            Some((head, filter)) => (head, Some(filter.trim().to_string())),
            None => (text, None),
        };
        let (head, fields) = match split_word(head, "fields") {
            Some((head, fields)) => (head, Some(fields.split(',').map(|f| f.trim().to_string()).collect::<Vec<_>>())),
            None => (head, None),
        };
        let mut words = head.split_whitespace();
        let right = match words.next() {
            Some("read") => Right::Read,
            Some("write") => Right::Write,
            Some("attest") => Right::Attest,
            _ => return Err(bad("starts with `read`, `write` or `attest`")),
        };
        let collection = words.next().ok_or_else(|| bad("names a collection"))?.to_string();
        if words.next().is_some() {
            return Err(bad("expected `fields` or `where` after the collection"));
        }
        let grant = Grant { right, collection, fields, filter };
        grant.validate()?;
        Ok(grant)
    }

    /// Checks the grant's bounds: a valid collection name or `*`; fields only on writes, at most
    /// [`MAX_GRANT_FIELDS`], each a valid path; a filter that parses and uses no parameter but `$device`.
    ///
    /// # Errors
    /// [`CertificateError::Malformed`] naming what is wrong.
    pub fn validate(&self) -> Result<(), CertificateError> {
        let bad = |why: String| CertificateError::Malformed(format!("grant on `{}`: {why}", self.collection));
        if self.collection != "*" {
            crate::store::check_collection(&self.collection).map_err(|e| bad(e.to_string()))?;
        }
        if self.right == Right::Attest && self.filter.is_some() {
            return Err(bad("a filter narrows reads and writes only".into()));
        }
        if let Some(fields) = &self.fields {
            if self.right != Right::Write {
                return Err(bad("field paths narrow writes only".into()));
            }
            if fields.is_empty() || fields.len() > MAX_GRANT_FIELDS {
                return Err(bad(format!("names 1 to {MAX_GRANT_FIELDS} fields, not {}", fields.len())));
            }
            for field in fields {
                let path = Path::parse(field).map_err(|e| bad(format!("field `{field}`: {e}")))?;
                if path.is_root() {
                    return Err(bad("an empty field path".into()));
                }
            }
        }
        if let Some(filter) = &self.filter {
            let parsed = Filter::parse(filter).map_err(|e| bad(format!("filter: {e}")))?;
            if let Some(other) = parsed.parameters().into_iter().find(|p| p != DEVICE_PARAMETER) {
                return Err(bad(format!("filter uses `${other}`; only `${DEVICE_PARAMETER}` is known")));
            }
        }
        Ok(())
    }

    fn covers(&self, right: Right, collection: &str) -> bool {
        self.right == right && (self.collection == "*" || self.collection == collection)
    }

    /// Whether the grant's filter (if any) matches `doc` for the device `device`.
    fn matches(&self, doc: &serde_json::Value, device: PeerId) -> bool {
        let Some(filter) = &self.filter else { return true };
        // Validated when the certificate was decoded; a filter that does not parse covers nothing.
        let Ok(filter) = Filter::parse(filter) else { return false };
        let mut params = Params::new();
        params.insert(DEVICE_PARAMETER.into(), serde_json::Value::String(device.to_string()));
        filter.matches(doc, &params).unwrap_or(false)
    }

    /// Whether every path in `paths` (keys from the document root; empty: the document itself) lies within the
    /// grant's fields.
    fn covers_field_paths(&self, paths: &[Vec<PathSegment>]) -> bool {
        let Some(fields) = &self.fields else { return true };
        let fields: Vec<Path> = fields.iter().filter_map(|f| Path::parse(f).ok()).collect();
        paths.iter().all(|p| !p.is_empty() && fields.iter().any(|f| p.starts_with(f.segments())))
    }
}

/// The text form ([`Grant::parse`] reads it back).
impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let right = match self.right {
            Right::Read => "read",
            Right::Write => "write",
            Right::Attest => "attest",
        };
        write!(f, "{right} {}", self.collection)?;
        if let Some(fields) = &self.fields {
            write!(f, " fields {}", fields.join(", "))?;
        }
        if let Some(filter) = &self.filter {
            write!(f, " where {filter}")?;
        }
        Ok(())
    }
}

/// `text` split around the first whole word `word`: `(before, after)`.
fn split_word<'a>(text: &'a str, word: &str) -> Option<(&'a str, &'a str)> {
    let mut start = 0;
    while let Some(at) = text[start..].find(word).map(|i| i + start) {
        let before_ok = at > 0 && text[..at].ends_with(char::is_whitespace);
        let end = at + word.len();
        let after_ok = text[end..].starts_with(char::is_whitespace);
        if before_ok && after_ok {
            return Some((text[..at].trim_end(), &text[end..]));
        }
        start = end;
    }
    None
}

/// What a certificate says, signed by its issuer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateBody {
    /// [`CERTIFICATE_FORMAT`].
    pub format: u8,
    /// A number the issuer never gives twice (revocation lists name certificates by issuer and serial).
    pub serial: u64,
    /// The key that signed the certificate: the app authority's, or an intermediate authority's.
    pub issuer: VerifyingKey,
    /// The device's (or intermediate authority's) name, for people: at most [`MAX_CERTIFICATE_NAME_BYTES`].
    pub name: String,
    /// The subject's Ed25519 key: the device signs its changes with it (its author ids derive from it), an
    /// intermediate authority its certificates.
    pub signing_key: VerifyingKey,
    /// The device's Noise static key (what its handshakes prove); `None` for an intermediate authority.
    pub noise_key: Option<[u8; 32]>,
    /// Start of validity, ms since the Unix epoch.
    pub not_before_ms: u64,
    /// End of validity, ms since the Unix epoch.
    pub not_after_ms: u64,
    /// What the subject may read and write (and, for an authority, the most it may grant).
    pub grants: Vec<Grant>,
    /// Whether the subject is an intermediate authority, which may issue certificates.
    pub issues: bool,
}

impl SignedBody for CertificateBody {
    const CONTEXT: &'static str = CERTIFICATE_CONTEXT;
    const KIND: &'static str = "certificate";
    const MAX_BYTES: usize = MAX_CERTIFICATE_BYTES;

    fn issuer(&self) -> VerifyingKey {
        self.issuer
    }

    fn describe(&self) -> String {
        format!("certificate {} of {}", self.serial, self.issuer)
    }
}

impl CertificateBody {
    /// Checks the body's own bounds (not its signature or chain).
    fn validate(&self) -> Result<(), CertificateError> {
        let bad = |why: String| CertificateError::Malformed(format!("certificate {}: {why}", self.serial));
        if self.format != CERTIFICATE_FORMAT {
            return Err(bad(format!("format {} (this device reads {CERTIFICATE_FORMAT})", self.format)));
        }
        if self.name.len() > MAX_CERTIFICATE_NAME_BYTES || self.name.chars().any(char::is_control) {
            return Err(bad("name too long or with control characters".into()));
        }
        if self.not_before_ms > self.not_after_ms {
            return Err(bad("validity ends before it starts".into()));
        }
        if self.grants.len() > MAX_GRANTS {
            return Err(bad(format!("{} grants (at most {MAX_GRANTS})", self.grants.len())));
        }
        if self.issues == self.noise_key.is_some() {
            return Err(bad("a device certificate has a Noise key; an authority certificate has none".into()));
        }
        self.grants.iter().try_for_each(Grant::validate)
    }
}

/// A signed certificate, as issued.
#[derive(Clone, PartialEq, Eq)]
pub struct Certificate {
    body: CertificateBody,
    /// The body as signed.
    signed: Signed,
}

impl Certificate {
    /// Signs `body` with `issuer` (whose public key must be `body.issuer`).
    ///
    /// # Errors
    /// [`CertificateError::Malformed`] if the body breaks a bound or names another issuer.
    pub fn issue(body: CertificateBody, issuer: &SigningKey) -> Result<Certificate, CertificateError> {
        body.validate()?;
        if body.issuer != issuer.verifying_key() {
            return Err(CertificateError::Malformed("the body names another issuer than the signing key".into()));
        }
        let signed = Signed::sign(&body, issuer)?;
        let cert = Certificate { body, signed };
        if cert.encode().len() > MAX_CERTIFICATE_BYTES {
            return Err(CertificateError::Malformed(format!("longer than {MAX_CERTIFICATE_BYTES} bytes")));
        }
        Ok(cert)
    }

    /// The compact encoded form (what [`decode`](Self::decode) reads).
    pub fn encode(&self) -> Vec<u8> {
        self.signed.encode()
    }

    /// Reads an encoded certificate, checking its format and bounds and that its signature is its issuer's (not
    /// whether the issuer is trusted: that is the chain's business).
    ///
    /// # Errors
    /// [`CertificateError::Malformed`] or [`CertificateError::BadSignature`].
    pub fn decode(bytes: &[u8]) -> Result<Certificate, CertificateError> {
        let (body, signed) = Signed::open::<CertificateBody>(bytes)?;
        body.validate()?;
        Ok(Certificate { body, signed })
    }

    /// What the certificate says.
    pub fn body(&self) -> &CertificateBody {
        &self.body
    }

    /// Checks that the certificate is valid at `now_ms`, give or take [`CLOCK_SKEW_MS`].
    fn check_time(&self, now_ms: u64) -> Result<(), CertificateError> {
        let b = &self.body;
        if now_ms.saturating_add(CLOCK_SKEW_MS) < b.not_before_ms {
            return Err(CertificateError::NotYetValid {
                issuer: b.issuer,
                serial: b.serial,
                not_before_ms: b.not_before_ms,
                now_ms,
            });
        }
        if now_ms.saturating_sub(CLOCK_SKEW_MS) > b.not_after_ms {
            return Err(CertificateError::Expired {
                issuer: b.issuer,
                serial: b.serial,
                not_after_ms: b.not_after_ms,
                now_ms,
            });
        }
        Ok(())
    }
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate").field("body", &self.body).finish_non_exhaustive()
    }
}

/// A device's certificate, then the certificates of the intermediate authorities between it and the app authority
/// (none when the app authority issued it directly). The app authority's own key is pinned by every device, not
/// carried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateChain(Vec<Certificate>);

impl CertificateChain {
    /// A chain of one certificate issued by the app authority.
    pub fn single(certificate: Certificate) -> CertificateChain {
        CertificateChain(vec![certificate])
    }

    /// A chain from the device's certificate up to the one the app authority issued.
    ///
    /// # Errors
    /// [`CertificateError::Malformed`] if it is empty or longer than [`MAX_CHAIN_LEN`].
    pub fn new(certificates: Vec<Certificate>) -> Result<CertificateChain, CertificateError> {
        if certificates.is_empty() || certificates.len() > MAX_CHAIN_LEN {
            return Err(CertificateError::Malformed(format!(
                "a chain has 1 to {MAX_CHAIN_LEN} certificates, not {}",
                certificates.len()
            )));
        }
        Ok(CertificateChain(certificates))
    }

    /// The device's own certificate.
    pub fn leaf(&self) -> &Certificate {
        // Never empty (checked by every constructor).
        &self.0[0]
    }

    /// The certificates, the device's first.
    pub fn certificates(&self) -> &[Certificate] {
        &self.0
    }

    /// The encoded form: the certificates' encodings, in order.
    pub fn encode(&self) -> Vec<u8> {
        let parts: Vec<Vec<u8>> = self.0.iter().map(Certificate::encode).collect();
        postcard::to_stdvec(&parts).unwrap_or_default()
    }

    /// Reads an encoded chain (each certificate as by [`Certificate::decode`]), bounded before decoding.
    ///
    /// # Errors
    /// [`CertificateError::Malformed`] or [`CertificateError::BadSignature`].
    pub fn decode(bytes: &[u8]) -> Result<CertificateChain, CertificateError> {
        if bytes.is_empty() {
            return Err(CertificateError::Missing);
        }
        if bytes.len() > MAX_CHAIN_BYTES {
            return Err(CertificateError::Malformed(format!("a certificate chain of {} bytes", bytes.len())));
        }
        let parts: Vec<&[u8]> =
            postcard::from_bytes(bytes).map_err(|e| CertificateError::Malformed(format!("certificate chain: {e}")))?;
        if parts.is_empty() || parts.len() > MAX_CHAIN_LEN {
            return Err(CertificateError::Malformed(format!("a chain of {} certificates", parts.len())));
        }
        CertificateChain::new(parts.into_iter().map(Certificate::decode).collect::<Result<_, _>>()?)
    }

    /// Checks the whole chain at `now_ms`: every link's issuer is the next certificate's subject and an authority,
    /// the last was issued by one of `authorities`, the first is a device's, every certificate is valid in time and
    /// none (nor the device's key) is revoked. Returns what the chain establishes.
    ///
    /// # Errors
    /// The [`CertificateError`] of the first check that fails.
    pub fn verify(
        &self,
        authorities: &[VerifyingKey],
        revocations: &Revocations,
        now_ms: u64,
    ) -> Result<VerifiedDevice, CertificateError> {
        let certs = &self.0;
        let leaf = self.leaf();
        if leaf.body.issues {
            return Err(CertificateError::BrokenChain(
                "the first certificate is an authority's, not a device's".into(),
            ));
        }
        for (i, cert) in certs.iter().enumerate() {
            match certs.get(i + 1) {
                Some(parent) => {
                    if !parent.body.issues {
                        return Err(CertificateError::BrokenChain(format!(
                            "certificate {} was issued by a device ({})",
                            cert.body.serial, parent.body.name
                        )));
                    }
                    if parent.body.signing_key != cert.body.issuer {
                        return Err(CertificateError::BrokenChain(format!(
                            "certificate {} names issuer {}, the next certificate is {}'s",
                            cert.body.serial, cert.body.issuer, parent.body.signing_key
                        )));
                    }
                }
                None => {
                    if !authorities.contains(&cert.body.issuer) {
                        return Err(CertificateError::UnknownAuthority(cert.body.issuer));
                    }
                }
            }
            cert.check_time(now_ms)?;
            if let Some(why) = revocations.revokes(cert) {
                return Err(CertificateError::Revoked(why));
            }
        }
        let noise_key = leaf
            .body
            .noise_key
            .map(DeviceKey)
            .ok_or_else(|| CertificateError::BrokenChain("the device certificate has no Noise key".into()))?;
        Ok(VerifiedDevice {
            name: leaf.body.name.clone(),
            signing_key: leaf.body.signing_key,
            noise_key,
            serial: leaf.body.serial,
            issuer: leaf.body.issuer,
            permissions: self.permissions(),
        })
    }
}

impl CertificateChain {
    /// What the chain lets its device read, write and attest (not checking the chain: see
    /// [`CertificateChain::verify`]).
    pub fn permissions(&self) -> Permissions {
        Permissions(self.0.iter().map(|c| c.body.grants.clone()).collect())
    }
}

/// The longest encoded chain accepted, in bytes.
pub const MAX_CHAIN_BYTES: usize = MAX_CHAIN_LEN * (MAX_CERTIFICATE_BYTES + 4);

/// What a verified [`CertificateChain`] establishes about a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedDevice {
    /// The name in its certificate.
    pub name: String,
    /// Its signing key (its author ids derive from it).
    pub signing_key: VerifyingKey,
    /// Its Noise static key.
    pub noise_key: DeviceKey,
    /// Its certificate's serial.
    pub serial: u64,
    /// Its certificate's issuer.
    pub issuer: VerifyingKey,
    /// What it may read and write.
    pub permissions: Permissions,
}

impl VerifiedDevice {
    /// The device's id ([`VerifyingKey::device_id`]).
    pub fn device_id(&self) -> PeerId {
        self.signing_key.device_id()
    }
}

/// What a device may read and write: the grants of each certificate of its chain. An action is allowed when, at
/// every level of the chain, some grant allows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permissions(Vec<Vec<Grant>>);

impl Permissions {
    /// Permissions of one level (a certificate the app authority issued directly).
    pub fn new(grants: Vec<Grant>) -> Permissions {
        Permissions(vec![grants])
    }

    /// Whether the device `device` may read `doc` (its JSON view) of `collection`.
    /// (One document; a sync session checks many with [`Permissions::read_rules`], which parses the filters once.)
    pub fn may_read(&self, collection: &str, doc: &serde_json::Value, device: PeerId) -> bool {
        self.read_rules(device).may_read(collection, Some(doc))
    }

    /// Whether some write grant on `collection` has a filter (checking a write then needs the document).
    pub(crate) fn filters_writes(&self, collection: &str) -> bool {
        self.0.iter().flatten().any(|g| g.covers(Right::Write, collection) && g.filter.is_some())
    }

    /// Whether the device may sign states of `collection`'s documents (some attest grant covers it at every level;
    /// see [`Right::Attest`]).
    pub fn may_attest(&self, collection: &str) -> bool {
        !self.0.is_empty() && self.0.iter().all(|level| level.iter().any(|g| g.covers(Right::Attest, collection)))
    }

    /// Whether some collection may be attested (an attest grant at every level).
    pub fn attests_anything(&self) -> bool {
        !self.0.is_empty() && self.0.iter().all(|level| level.iter().any(|g| g.right == Right::Attest))
    }

    /// Whether the device may receive anything at all of `collection` (some read grant covers it at every level).
    pub fn may_read_some(&self, collection: &str) -> bool {
        self.0.iter().all(|level| level.iter().any(|g| g.covers(Right::Read, collection)))
    }

    /// Whether the device `device` may change the fields `paths` of `doc` (its JSON view) of `collection`.
    pub fn may_write<'a>(
        &self,
        collection: &str,
        doc: &serde_json::Value,
        paths: impl Iterator<Item = &'a Path> + Clone,
        device: PeerId,
    ) -> bool {
        let paths: Vec<Vec<PathSegment>> = paths.map(|p| p.segments().to_vec()).collect();
        self.check_write(collection, &paths, device, &mut || Ok(Some(doc.clone()))).is_ok()
    }

    /// Whether the device `device` may write the field paths `paths` (keys from the document root; an empty path is
    /// the document itself, which only a grant without `fields` covers) of a document of `collection`. `doc` gives
    /// the document the grants' filters are evaluated on (see [`crate::security::authorship`]); it is called only
    /// when a filter needs it, at most once.
    ///
    /// # Errors
    /// [`RefusalReason::NotPermitted`], saying what is not permitted.
    pub(crate) fn check_write(
        &self,
        collection: &str,
        paths: &[Vec<PathSegment>],
        device: PeerId,
        doc: &mut dyn FnMut() -> Result<Option<serde_json::Value>, RefusalReason>,
    ) -> Result<(), RefusalReason> {
        let mut view: Option<Option<serde_json::Value>> = None;
        for level in &self.0 {
            let grants: Vec<&Grant> = level.iter().filter(|g| g.covers(Right::Write, collection)).collect();
            if grants.is_empty() {
                return Err(RefusalReason::NotPermitted(format!("writing collection {collection:?}")));
            }
            let by_fields: Vec<&Grant> = grants.iter().copied().filter(|g| g.covers_field_paths(paths)).collect();
            if by_fields.is_empty() {
                let outside = paths
                    .iter()
                    .find(|p| !grants.iter().any(|g| g.covers_field_paths(std::slice::from_ref(p))))
                    .map_or_else(|| "these fields together".to_string(), |p| super::authorship::describe_path(p));
                return Err(RefusalReason::NotPermitted(format!("writing {outside} of collection {collection:?}")));
            }
            let mut allowed = false;
            for g in by_fields {
                if g.filter.is_none() {
                    allowed = true;
                    break;
                }
                if view.is_none() {
                    view = Some(doc()?);
                }
                if view.as_ref().and_then(|v| v.as_ref()).is_some_and(|v| g.matches(v, device)) {
                    allowed = true;
                    break;
                }
            }
            if !allowed {
                return Err(RefusalReason::NotPermitted(format!(
                    "writing this document of collection {collection:?} (no write grant's filter matches it)"
                )));
            }
        }
        Ok(())
    }
}

impl Permissions {
    /// The read rules of device `device`, with every filter parsed once (what a sync session checks each document
    /// against before sending it).
    pub fn read_rules(&self, device: PeerId) -> ReadRules {
        let levels = self
            .0
            .iter()
            .map(|level| {
                level
                    .iter()
                    .filter(|g| g.right == Right::Read)
                    // A filter that does not parse (impossible after decoding) covers nothing: the grant is dropped.
                    .filter_map(|g| match &g.filter {
                        None => Some((g.collection.clone(), None)),
                        Some(f) => Filter::parse(f).ok().map(|f| (g.collection.clone(), Some(f))),
                    })
                    .collect()
            })
            .collect();
        let mut params = Params::new();
        params.insert(DEVICE_PARAMETER.into(), serde_json::Value::String(device.to_string()));
        ReadRules { levels, params }
    }
}

/// What one device may read, ready to check documents against (see [`Permissions::read_rules`]): at every level of
/// its chain, some read grant must cover the collection and match the document.
#[derive(Debug)]
pub struct ReadRules {
    levels: Vec<Vec<(String, Option<Filter>)>>,
    params: Params,
}

impl ReadRules {
    fn grants<'a>(
        &'a self,
        level: &'a [(String, Option<Filter>)],
        collection: &'a str,
    ) -> impl Iterator<Item = &'a Option<Filter>> {
        level.iter().filter(move |(c, _)| c == "*" || c == collection).map(|(_, f)| f)
    }

    /// Whether the document of `collection` whose view is `view` (`None`: removed) may be sent to the device. A
    /// removed document matches no filter: only an unfiltered grant lets its removal through.
    pub fn may_read(&self, collection: &str, view: Option<&serde_json::Value>) -> bool {
        self.levels.iter().all(|level| {
            self.grants(level, collection).any(|f| match (f, view) {
                (None, _) => true,
                (Some(f), Some(v)) => f.matches(v, &self.params).unwrap_or(false),
                (Some(_), None) => false,
            })
        })
    }

    /// Whether every document of `collection` may be read (an unfiltered grant at every level).
    pub fn reads_all_of(&self, collection: &str) -> bool {
        self.levels.iter().all(|level| self.grants(level, collection).any(Option::is_none))
    }

    /// Whether every document of every collection may be read (`read *` without a filter at every level).
    pub fn reads_everything(&self) -> bool {
        self.levels.iter().all(|level| level.iter().any(|(c, f)| c == "*" && f.is_none()))
    }
}

/// A short fingerprint of a certificate, for logs and the CLI: the issuer's and the serial.
impl fmt::Display for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} #{} ({}) from {}",
            self.body.name,
            self.body.serial,
            hex(&self.body.signing_key.0[..8]),
            self.body.issuer
        )
    }
}
