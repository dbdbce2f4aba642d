//! Device identity: enrolling this device with the app authority (on [`Store`]), and the authority's side
//! ([`Authority`]: issuing certificates and revocation lists). Everything is [`shoaldb::enrolment`]'s; this converts.

use crate::error::{guard, ShoalError};
use crate::store::Store;
use crate::values::invalid;
use shoaldb::enrolment::{self, EnrolmentRequest, Validity};
use shoaldb::security::{Certificate, CertificateError, Grant, RevocationList, SigningKey, VerifyingKey};
use shoaldb::util::sources::Sources;
use shoaldb::PeerId;
use std::sync::Arc;

fn refused(e: CertificateError) -> ShoalError {
    ShoalError::Certificate(e.to_string())
}

fn authority_key(hex: &str) -> Result<VerifyingKey, ShoalError> {
    VerifyingKey::from_hex(hex.trim())
        .map_err(|_| invalid(format!("{hex:?} is not an authority public key (64 hex digits)")))
}

/// What a device certificate says (`Store.certificate()`).
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct CertificateInfo {
    /// The device's name in the certificate (the authority may have changed the one requested).
    pub name: String,
    /// The certificate's serial: revoke it with `Revocation.Certificate(serial)` from the same authority.
    pub serial: u64,
    /// The certified device's id (64 hex digits), as in `Store.deviceId` and `Peer.deviceId`.
    pub device_id: String,
    /// The device's Ed25519 signing key (64 hex digits): revoke every certificate of the device with
    /// `Revocation.Device(signingKey)`.
    pub signing_key: String,
    /// What `$device` stands for in the grants' filters (16 hex digits), e.g. the value to write into the `owner`
    /// field that `write tasks where owner == $device` compares.
    pub grant_device_id: String,
    /// The public key (64 hex digits) of the authority that signed it.
    pub issuer: String,
    /// Valid from, ms since the Unix epoch.
    pub not_before_ms: u64,
    /// Valid until, ms since the Unix epoch (peers refuse it afterwards: renew it before).
    pub not_after_ms: u64,
    /// Its grants, in the text form `Authority.issue` takes (e.g. `"read *"`, `"write tasks fields status"`).
    pub grants: Vec<String>,
}

impl CertificateInfo {
    fn of(cert: &Certificate) -> CertificateInfo {
        let b = cert.body();
        CertificateInfo {
            name: b.name.clone(),
            serial: b.serial,
            device_id: b.noise_key.map(|k| shoaldb::util::hex(&k)).unwrap_or_default(),
            signing_key: b.signing_key.to_hex(),
            grant_device_id: b.signing_key.device_id().to_string(),
            issuer: b.issuer.to_hex(),
            not_before_ms: b.not_before_ms,
            not_after_ms: b.not_after_ms,
            grants: b.grants.iter().map(Grant::to_string).collect(),
        }
    }
}

/// Device side of enrolment. The device's keys are made on the device and never leave it: only the request
/// (its public keys and a name) goes to the authority, and the certificate comes back.
#[uniffi::export]
impl Store {
    /// This device's enrolment request, naming it `name`: one line of text (`shoal-enrol-1 <keys> <name>`) to
    /// send to the app authority (paste, mail, QR code). The authority answers with a certificate
    /// (`Authority.issue`, or `shoal authority issue`), which `installCertificate` installs.
    pub fn enrolment_request(&self, name: String) -> Result<String, ShoalError> {
        guard(|| Ok(enrolment::request(&self.get()?.store, &name)?.to_string()))
    }

    /// Install this device's certificate issued by the authority whose public key is `authority_public_key`
    /// (64 hex digits, shipped in the app): `certificates` is the device's certificate, then those of any
    /// intermediate authorities. Checked before anything is stored: it must certify this device's own keys and
    /// lead to that authority (`ShoalError.Certificate` otherwise). Replaces a certificate installed before
    /// (renewal). Sync uses it instead of the app secret from then on: if sync is running it restarts (links drop
    /// and come back). Returns what it says.
    pub async fn install_certificate(
        &self,
        authority_public_key: String,
        certificates: Vec<Vec<u8>>,
    ) -> Result<CertificateInfo, ShoalError> {
        let open = self.get()?;
        let store = open.store.clone();
        let info = open
            .run_blocking(move || {
                let authority = authority_key(&authority_public_key)?;
                let chain = certificates
                    .iter()
                    .map(|bytes| Certificate::decode(bytes).map_err(refused))
                    .collect::<Result<Vec<_>, _>>()?;
                if chain.is_empty() {
                    return Err(ShoalError::Certificate("no certificate given".into()));
                }
                let enrolled = enrolment::install(&store, &chain, &[authority])?;
                Ok(CertificateInfo::of(enrolled.chain().leaf()))
            })
            .await?;
        open.clone().run(open.restart()).await?;
        Ok(info)
    }

    /// Take in a revocation list from the authority (`Authority.revoke`, or `shoal authority revoke`): devices and
    /// certificates it names are refused at the handshake. Kept across restarts. When it is news and sync is
    /// running, sync restarts so that links to a revoked device close now. Returns whether it was news (`false`:
    /// a list as new was already held). `ShoalError.Certificate` if this device is not enrolled, or the list is
    /// malformed, forged or not from its authority.
    pub async fn install_revocations(&self, list: Vec<u8>) -> Result<bool, ShoalError> {
        let open = self.get()?;
        let store = open.store.clone();
        let news = open
            .run_blocking(move || {
                let list = RevocationList::decode(&list).map_err(refused)?;
                Ok(enrolment::install_revocations(&store, &list)?)
            })
            .await?;
        if news {
            open.clone().run(open.restart()).await?;
        }
        Ok(news)
    }

    /// The certificate installed on this device, or `null`/`nil` when there is none (sync then runs in
    /// development mode, with `StoreConfig.appSecret`).
    pub fn certificate(&self) -> Result<Option<CertificateInfo>, ShoalError> {
        guard(|| Ok(enrolment::load(&self.get()?.store)?.map(|e| CertificateInfo::of(e.chain().leaf()))))
    }
}

/// What a revocation list revokes (`Authority.revoke`).
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum Revocation {
    /// The certificate with this serial, issued by this authority (a lost phone's).
    Certificate { serial: u64 },
    /// Every certificate of the device with this signing key (`CertificateInfo.signingKey`), whoever issued it.
    Device { signing_key: String },
    /// Changes by the author `author` (16 hex digits) past counter `accept_until` (all when `null`/`nil`).
    Author { author: String, accept_until: Option<u64> },
    /// The roster: the devices (signing keys, `CertificateInfo.signingKey`) that may hold the app's documents as of
    /// `until_ms` (ms since the Unix epoch). Every other device whose certificate is valid from then or earlier is
    /// revoked; devices certified later are not affected. Closing the membership lets the fleet know what every
    /// member holds, so it can be collected. At most one per list; list every device certified so far.
    Roster { members: Vec<String>, until_ms: u64 },
}

/// The app authority: the key pair that certifies the app's devices. Its public key ships in the app (devices pin
/// it); its private key stays with whoever enrols devices — an admin tool or a back office, normally not the
/// phones themselves. Keep `privateKey()` in a keystore or a secret manager, never in the app's bundle.
#[derive(uniffi::Object)]
pub struct Authority {
    key: SigningKey,
}

#[uniffi::export]
impl Authority {
    /// A new authority, from the operating system's secure randomness.
    #[uniffi::constructor]
    pub fn generate() -> Result<Arc<Authority>, ShoalError> {
        guard(|| {
            let key = SigningKey::generate().map_err(|e| ShoalError::Internal(format!("no randomness: {e}")))?;
            Ok(Arc::new(Authority { key }))
        })
    }

    /// The authority whose private key is `private_key` (the 32 bytes `privateKey()` gave, or the file
    /// `shoal authority init` wrote).
    #[uniffi::constructor]
    pub fn from_private_key(private_key: Vec<u8>) -> Result<Arc<Authority>, ShoalError> {
        guard(|| {
            let key = SigningKey::from_bytes(&private_key).map_err(|e| invalid(format!("authority key: {e}")))?;
            Ok(Arc::new(Authority { key }))
        })
    }

    /// The public key (64 hex digits) devices pin: `Store.installCertificate` takes it.
    pub fn public_key(&self) -> String {
        self.key.verifying_key().to_hex()
    }

    /// The private key (32 bytes). Whoever holds it can enrol devices: keep it secret.
    pub fn private_key(&self) -> Vec<u8> {
        self.key.to_bytes().to_vec()
    }

    /// A certificate for the device whose enrolment request (`Store.enrolmentRequest`) is `request`, with serial
    /// `serial` (never reuse one: revocation names certificates by it), `grants` (each
    /// `read|write <collection or *> [fields <path>, …] [where <filter>]`, e.g. `"read *"`,
    /// `"write tasks fields status where owner == $device"`) and validity from `valid_from_ms` to
    /// `valid_until_ms` (ms since the Unix epoch). Returns its bytes, for `Store.installCertificate`.
    /// `ShoalError.Certificate` for a malformed request or grant.
    pub fn issue(
        &self,
        request: String,
        serial: u64,
        grants: Vec<String>,
        valid_from_ms: u64,
        valid_until_ms: u64,
    ) -> Result<Vec<u8>, ShoalError> {
        guard(|| {
            let request = EnrolmentRequest::parse(&request).map_err(refused)?;
            let grants = grants.iter().map(|g| Grant::parse(g)).collect::<Result<Vec<_>, _>>().map_err(refused)?;
            let validity = Validity { not_before_ms: valid_from_ms, not_after_ms: valid_until_ms };
            Ok(enrolment::issue(&self.key, &request, serial, grants, validity).map_err(refused)?.encode())
        })
    }

    /// The revocation list numbered `number`, revoking `entries`; for `Store.installRevocations`. A list replaces
    /// every list of a lower number from this authority, so each carries every revocation still in force: number
    /// them 1, 2, 3… and repeat the earlier entries.
    pub fn revoke(&self, number: u64, entries: Vec<Revocation>) -> Result<Vec<u8>, ShoalError> {
        use shoaldb::security::Revocation as R;
        guard(|| {
            let entries = entries
                .into_iter()
                .map(|entry| {
                    Ok(match entry {
                        Revocation::Certificate { serial } => {
                            R::Certificate { issuer: self.key.verifying_key(), serial }
                        }
                        Revocation::Device { signing_key: key } => R::Device { signing_key: signing_key(&key)? },
                        Revocation::Roster { members, until_ms } => enrolment::roster(
                            members.iter().map(|k| signing_key(k)).collect::<Result<Vec<_>, _>>()?,
                            until_ms,
                        ),
                        Revocation::Author { author, accept_until } => R::Author {
                            author: PeerId(
                                u64::from_str_radix(author.trim(), 16)
                                    .map_err(|_| invalid(format!("{author:?} is not an author id (16 hex digits)")))?,
                            ),
                            accept_until,
                        },
                    })
                })
                .collect::<Result<Vec<_>, ShoalError>>()?;
            let list = enrolment::revoke(&self.key, number, Sources::system().now_ms(), entries).map_err(refused)?;
            Ok(list.encode())
        })
    }
}

/// A signing key given as 64 hex digits.
fn signing_key(hex: &str) -> Result<VerifyingKey, ShoalError> {
    VerifyingKey::from_hex(hex.trim()).map_err(|_| invalid(format!("{hex:?} is not a signing key (64 hex digits)")))
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").field("public_key", &self.key.verifying_key()).finish_non_exhaustive()
    }
}
