//! Enrolling a device with the app authority, with no server: the device makes its keys and an
//! [`EnrolmentRequest`] (its public keys and name); the authority's holder issues a certificate for them
//! ([`issue`]); the device installs it ([`install`]) and from then on proves itself with it ([`load`] gives the
//! [`Enrolment`] a [`NodeConfig`](crate::node::NodeConfig) takes). The device's private keys never leave it.
//!
//! ```
//! use shoaldb::enrolment::{self, Validity};
//! use shoaldb::security::{Grant, SigningKey};
//! # let dir = tempfile::tempdir()?;
//! // The authority (once, kept offline; its public key ships in the app).
//! let authority = SigningKey::generate()?;
//! // On the device: keys are made locally; only the request leaves it.
//! let store = shoaldb::Store::open(dir.path().join("phone.db"))?;
//! let request = enrolment::request(&store, "Alice's phone")?;
//! // At the authority: a certificate for the request's keys, with permissions.
//! let grants = vec![Grant::read("*"), Grant::parse("write tasks fields status, notes where owner == $device")?];
//! let cert = enrolment::issue(&authority, &request, 1, grants, Validity::days_from(0, 365))?;
//! // Back on the device.
//! enrolment::install(&store, &[cert], &[authority.verifying_key()])?;
//! let enrolled = enrolment::load(&store)?.expect("installed");
//! assert_eq!(enrolled.chain().leaf().body().name, "Alice's phone");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;

use crate::node::{device_identity, NodeError};
use crate::security::vault;
use crate::security::{
    Certificate, CertificateBody, CertificateChain, CertificateError, DeviceKey, Enrolment, Grant, Revocation,
    RevocationBody, RevocationList, SecurityError, SigningKey, VerifyingKey,
};
use crate::Store;

/// The device-local setting that holds the installed certificate chain.
const CHAIN_SETTING: &str = "certificate_chain";

/// The device-local setting that holds the pinned authorities (32 bytes each).
const AUTHORITIES_SETTING: &str = "authorities";

/// The first word of an enrolment request's text form.
const REQUEST_PREFIX: &str = "shoal-enrol-1";

/// What a device sends the authority to be enrolled: its public keys and a name. Its text form (one line:
/// `shoal-enrol-1 <signing key hex> <noise key hex> <name>`) can be pasted, mailed or shown as a QR code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnrolmentRequest {
    /// The name the device asks to be known by.
    pub name: String,
    /// Its Ed25519 signing key.
    pub signing_key: VerifyingKey,
    /// Its Noise static key.
    pub noise_key: DeviceKey,
}

impl EnrolmentRequest {
    /// Reads the text form.
    ///
    /// # Errors
    /// [`CertificateError::Malformed`] if it is not a request.
    pub fn parse(text: &str) -> Result<EnrolmentRequest, CertificateError> {
        let bad = || {
            CertificateError::Malformed(format!(
                "not an enrolment request (`{REQUEST_PREFIX} <signing key> <noise key> <name>`)"
            ))
        };
        let mut parts = text.trim().splitn(4, ' ');
        if parts.next() != Some(REQUEST_PREFIX) {
            return Err(bad());
        }
        let signing_key = VerifyingKey::from_hex(parts.next().ok_or_else(bad)?).map_err(|_| bad())?;
        let noise_key = DeviceKey(crate::util::parse_hex::<32>(parts.next().ok_or_else(bad)?).ok_or_else(bad)?);
        let name = parts.next().unwrap_or("").trim().to_string();
        Ok(EnrolmentRequest { name, signing_key, noise_key })
    }
}

impl fmt::Display for EnrolmentRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{REQUEST_PREFIX} {} {} {}", self.signing_key.to_hex(), self.noise_key.to_hex(), self.name)
    }
}

/// When a certificate is valid: from `not_before_ms` to `not_after_ms` (ms since the Unix epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// Start.
    pub not_before_ms: u64,
    /// End.
    pub not_after_ms: u64,
}

impl Validity {
    /// `days` days from `start_ms` (0: from the Unix epoch, i.e. already valid).
    pub fn days_from(start_ms: u64, days: u64) -> Validity {
        let end = start_ms.saturating_add(days.saturating_mul(86_400_000));
        Validity { not_before_ms: start_ms, not_after_ms: end }
    }
}

/// This device's signing key, made (from the operating system's randomness) on first use and kept in the store's
/// key vault ([`Options::keys`](crate::Options::keys)), never in the database.
///
/// # Errors
/// [`NodeError::Store`] if the store or its vault fails; [`NodeError::Identity`] if the stored key is invalid.
pub fn device_signing_key(store: &Store) -> Result<SigningKey, NodeError> {
    let mut made = false;
    let bytes = store.device_secret(vault::SIGNING_KEY, || {
        made = true;
        Ok::<_, NodeError>(SigningKey::generate()?.to_bytes().to_vec())
    })?;
    let key = SigningKey::from_bytes(&bytes)?;
    if made {
        // The store signs its changes with it from now on, under author ids derived from it.
        store.load_signing_key()?;
    }
    Ok(key)
}

/// The enrolment request of this device, named `name` (its keys are made on first use).
///
/// # Errors
/// As for [`device_signing_key`].
pub fn request(store: &Store, name: &str) -> Result<EnrolmentRequest, NodeError> {
    let identity = device_identity(store)?;
    let signing_key = device_signing_key(store)?;
    Ok(EnrolmentRequest {
        name: name.to_string(),
        signing_key: signing_key.verifying_key(),
        noise_key: identity.device_key(),
    })
}

/// Issues a certificate for the device of `request`, signed by `authority` (the app authority, or an intermediate
/// authority holding an [`issuing`] certificate), with serial `serial` (never reused by this authority), `grants`
/// and `validity`.
///
/// # Errors
/// [`CertificateError::Malformed`] if a grant or the name breaks a bound.
pub fn issue(
    authority: &SigningKey,
    request: &EnrolmentRequest,
    serial: u64,
    grants: Vec<Grant>,
    validity: Validity,
) -> Result<Certificate, CertificateError> {
    certificate(authority, request.name.clone(), request.signing_key, Some(request.noise_key), serial, grants, validity)
}

/// Issues the certificate of an intermediate authority whose key is `subject` (an organisation delegating to a
/// site): it may issue device certificates, and whatever it issues is bounded by `grants` and `validity`.
///
/// # Errors
/// As for [`issue`].
pub fn issuing(
    authority: &SigningKey,
    name: &str,
    subject: VerifyingKey,
    serial: u64,
    grants: Vec<Grant>,
    validity: Validity,
) -> Result<Certificate, CertificateError> {
    certificate(authority, name.to_string(), subject, None, serial, grants, validity)
}

/// The revocation list number `number` of `authority`, issued at `issued_ms` (ms since the Unix epoch): it replaces
/// every lower-numbered list of that authority, so `entries` must hold every revocation still in force.
///
/// # Errors
/// [`CertificateError::Malformed`] if it holds more than [`MAX_REVOCATIONS`](crate::security::revocation::MAX_REVOCATIONS)
/// entries.
pub fn revoke(
    authority: &SigningKey,
    number: u64,
    issued_ms: u64,
    entries: Vec<Revocation>,
) -> Result<RevocationList, CertificateError> {
    let body = RevocationBody {
        format: crate::security::revocation::REVOCATION_FORMAT,
        issuer: authority.verifying_key(),
        number,
        issued_ms,
        entries,
    };
    RevocationList::issue(body, authority)
}

/// The roster entry of a revocation list ([`Revocation::Roster`]): `members` (in any order, repeats dropped) are the
/// devices that may hold the app's documents as of `until_ms`; every other device certified from then or earlier
/// is revoked. Put it in the next list with every other revocation still in force (a list holds one roster).
pub fn roster(members: impl IntoIterator<Item = VerifyingKey>, until_ms: u64) -> Revocation {
    let mut members: Vec<VerifyingKey> = members.into_iter().collect();
    members.sort_unstable();
    members.dedup();
    Revocation::Roster { members, until_ms }
}

fn certificate(
    authority: &SigningKey,
    name: String,
    signing_key: VerifyingKey,
    noise_key: Option<DeviceKey>,
    serial: u64,
    grants: Vec<Grant>,
    validity: Validity,
) -> Result<Certificate, CertificateError> {
    let body = CertificateBody {
        format: crate::security::certificate::CERTIFICATE_FORMAT,
        serial,
        issuer: authority.verifying_key(),
        name,
        signing_key,
        issues: noise_key.is_none(),
        noise_key: noise_key.map(|k| k.0),
        not_before_ms: validity.not_before_ms,
        not_after_ms: validity.not_after_ms,
        grants,
    };
    Certificate::issue(body, authority)
}

/// Installs `chain` (this device's certificate, then any intermediate authorities') issued under one of
/// `authorities` (the app authority's public keys), after checking that it certifies this device's own keys and
/// leads to a pinned authority. Replaces a certificate installed before (renewal); a store in development mode
/// moves to certificates this way.
///
/// # Errors
/// [`NodeError::Identity`] wrapping the [`CertificateError`] if the chain is not this device's or does not lead
/// to `authorities`; [`NodeError::Store`] if the store fails.
pub fn install(store: &Store, chain: &[Certificate], authorities: &[VerifyingKey]) -> Result<Enrolment, NodeError> {
    let chain = CertificateChain::new(chain.to_vec()).map_err(SecurityError::from)?;
    let enrolment = Enrolment::new(&device_identity(store)?, device_signing_key(store)?, chain, authorities.to_vec())
        .map_err(SecurityError::from)?;
    keep(store, &enrolment)?;
    log::info!("installed certificate {}", enrolment.chain().leaf());
    Ok(enrolment)
}

/// Keeps `enrolment` in `store` (its chain and pinned authorities as device-local settings; its signing key, which
/// must be the device's own when the device has one, in the key vault), and has
/// the store take it up: it signs its changes with the key and refuses writes beyond the certificate from now on.
pub(crate) fn keep(store: &Store, enrolment: &Enrolment) -> Result<(), NodeError> {
    let keys: Vec<u8> = enrolment.authorities().iter().flat_map(|k| k.0).collect();
    let key = enrolment.signing_key().to_bytes();
    if store.device_secret(vault::SIGNING_KEY, || Ok::<_, NodeError>(key.to_vec()))? != key {
        let reason = "its signing key is not the one this device keeps".to_string();
        return Err(SecurityError::from(CertificateError::NotThisDevice(reason)).into());
    }
    store.set_local_value(CHAIN_SETTING, &enrolment.chain().encode())?;
    store.set_local_value(AUTHORITIES_SETTING, &keys)?;
    store.load_signing_key()?;
    Ok(())
}

/// This device's enrolment, if a certificate is installed ([`install`]); `None` in development mode.
///
/// # Errors
/// [`NodeError::Identity`] if what is stored no longer fits this device; [`NodeError::Store`] if the store fails.
pub fn load(store: &Store) -> Result<Option<Enrolment>, NodeError> {
    let (Some(chain), Some(keys)) = (store.local_value(CHAIN_SETTING)?, store.local_value(AUTHORITIES_SETTING)?) else {
        return Ok(None);
    };
    let chain = CertificateChain::decode(&chain).map_err(SecurityError::from)?;
    let authorities = keys
        .chunks(32)
        .map(|k| <[u8; 32]>::try_from(k).map(VerifyingKey))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| SecurityError::InvalidKey("stored authorities are corrupt".into()))?;
    let mut enrolment = Enrolment::new(&device_identity(store)?, device_signing_key(store)?, chain, authorities)
        .map_err(SecurityError::from)?;
    take_kept_revocations(&mut enrolment, store)?;
    Ok(Some(enrolment))
}

/// Takes the revocation lists `store` keeps (from earlier runs) into `enrolment`.
///
/// # Errors
/// [`NodeError::Store`] if the store fails.
pub(crate) fn take_kept_revocations(enrolment: &mut Enrolment, store: &Store) -> Result<(), NodeError> {
    accept_kept_revocations(enrolment, &store.revocation_lists()?);
    Ok(())
}

/// Takes revocation lists kept by a replica (encoded, as [`crate::Replica::keep_revocation_lists`] got them) into
/// `enrolment`. Lists were checked when taken in; one that no longer decodes or that the pinned authorities no
/// longer cover is dropped.
pub fn accept_kept_revocations(enrolment: &mut Enrolment, lists: &[Vec<u8>]) {
    for list in lists {
        if let Ok(list) = RevocationList::decode(list) {
            let _ = enrolment.accept_revocations(list);
        }
    }
}

/// Takes in a revocation list (from the authority, or received from a peer) on an enrolled device, persisted so
/// that it holds across restarts. Returns whether it was news (newer than the list held from its issuer).
///
/// # Errors
/// [`NodeError::Identity`] if the device is not enrolled, the list does not decode or verify, or its issuer is
/// not a pinned authority; [`NodeError::Store`] if the store fails.
pub fn install_revocations(store: &Store, list: &RevocationList) -> Result<bool, NodeError> {
    let mut enrolment = load(store)?.ok_or_else(|| {
        SecurityError::from(CertificateError::Malformed("no certificate is installed on this device".into()))
    })?;
    if !enrolment.accept_revocations(list.clone()).map_err(SecurityError::from)? {
        return Ok(false);
    }
    let lists: Vec<Vec<u8>> = enrolment.revocations().lists().map(RevocationList::encode).collect();
    store.set_revocation_lists(&lists)?;
    Ok(true)
}
