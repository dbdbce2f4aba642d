//! How a device proves it belongs to the app, and how it checks the devices it meets: with certificates from the
//! app authority ([`Enrolment`]), or — for development only — with a secret every device shares.

use std::fmt;

use super::certificate::{CertificateChain, CertificateError, VerifiedDevice};
use super::keys::{AppSecret, DeviceKey, Identity};
use super::revocation::{RevocationList, Revocations};
use super::signing::{SigningKey, VerifyingKey};

/// The blake3 key-derivation context of the handshake's pre-shared key in certificate mode.
const CERTIFICATES_PSK_CONTEXT: &str = "shoal certificates psk v1";

/// How this device takes part in the app's network.
#[derive(Clone, Debug)]
pub enum Access {
    /// **Development mode**: every device holding the secret is trusted with everything, can write under any
    /// author id and can never be revoked. For trying Shoal out and for tests; an app that ships uses
    /// [`Access::Certificates`].
    SharedSecret(AppSecret),
    /// Enrolled: this device holds a certificate from the app authority, and checks every peer's.
    Certificates(Box<Enrolment>),
}

impl From<AppSecret> for Access {
    fn from(secret: AppSecret) -> Access {
        Access::SharedSecret(secret)
    }
}

impl From<Enrolment> for Access {
    fn from(enrolment: Enrolment) -> Access {
        Access::Certificates(Box::new(enrolment))
    }
}

impl Access {
    /// The pre-shared key mixed into every handshake (and the app tag devices advertise is derived from it): the
    /// app secret in development mode; in certificate mode, a key derived from the pinned authorities, so that
    /// only devices of the same app (pinning the same authorities) get past the first handshake message.
    pub fn psk(&self) -> AppSecret {
        match self {
            Access::SharedSecret(secret) => secret.clone(),
            Access::Certificates(enrolment) => enrolment.psk(),
        }
    }

    /// What this device presents inside the handshake: its certificate chain, or nothing in development mode.
    pub fn credentials(&self) -> Vec<u8> {
        match self {
            Access::SharedSecret(_) => Vec::new(),
            Access::Certificates(enrolment) => enrolment.chain.encode(),
        }
    }

    /// Checks what a peer presented in its handshake (`credentials`), having proved it holds the Noise key
    /// `presented`, at `now_ms` (the wall clock). In development mode nothing is presented and nothing checked
    /// (`Ok(None)`); with certificates, the chain must lead to a pinned authority, certify `presented`, be valid in
    /// time and not be revoked.
    ///
    /// # Errors
    /// The [`CertificateError`] of the first check that fails.
    pub fn check_peer(
        &self,
        credentials: &[u8],
        presented: DeviceKey,
        now_ms: u64,
    ) -> Result<Option<VerifiedDevice>, CertificateError> {
        match self {
            Access::SharedSecret(_) if credentials.is_empty() => Ok(None),
            Access::SharedSecret(_) => {
                Err(CertificateError::Malformed("credentials presented to a device in development mode".into()))
            }
            Access::Certificates(enrolment) => enrolment.check_peer(credentials, presented, now_ms).map(Some),
        }
    }
}

/// An enrolled device's credentials: its signing key (which never leaves it), its certificate chain, the app
/// authorities it pins, and the revocation lists it holds.
#[derive(Clone)]
pub struct Enrolment {
    signing_key: SigningKey,
    chain: CertificateChain,
    authorities: Vec<VerifyingKey>,
    revocations: Revocations,
}

impl Enrolment {
    /// The credentials of the device whose Noise identity is `identity` and whose signing key is `signing_key`,
    /// certified by `chain` under one of `authorities` (the app authority's public keys, shipped in the app; every
    /// device of the app must pin the same ones).
    ///
    /// # Errors
    /// [`CertificateError::NotThisDevice`] if the certificate names other keys than this device's;
    /// [`CertificateError::UnknownAuthority`] or [`CertificateError::BrokenChain`] if the chain does not lead to
    /// a pinned authority; [`CertificateError::Malformed`] if no authority is pinned. An expired certificate is
    /// accepted here (peers refuse it; the app renews it).
    pub fn new(
        identity: &Identity,
        signing_key: SigningKey,
        chain: CertificateChain,
        authorities: Vec<VerifyingKey>,
    ) -> Result<Enrolment, CertificateError> {
        if authorities.is_empty() {
            return Err(CertificateError::Malformed("no app authority is pinned".into()));
        }
        let leaf = chain.leaf().body();
        if leaf.signing_key != signing_key.verifying_key() {
            return Err(CertificateError::NotThisDevice(format!(
                "it certifies signing key {}, this device's is {}",
                leaf.signing_key,
                signing_key.verifying_key()
            )));
        }
        if leaf.noise_key != Some(identity.public_key()) {
            return Err(CertificateError::NotThisDevice(format!(
                "it certifies another Noise key than this device's {}",
                identity.device_key()
            )));
        }
        // The chain's structure, at a time every certificate of it covers (its validity is the peers' business).
        let at = chain.certificates().iter().map(|c| c.body().not_before_ms).max().unwrap_or(0);
        chain.verify(&authorities, &Revocations::new(), at)?;
        Ok(Enrolment { signing_key, chain, authorities, revocations: Revocations::new() })
    }

    /// Takes in a revocation list from a pinned authority (newer than the one held from it). Returns whether it
    /// was new.
    ///
    /// # Errors
    /// [`CertificateError::UnknownAuthority`] if its issuer is not pinned.
    pub fn accept_revocations(&mut self, list: RevocationList) -> Result<bool, CertificateError> {
        self.revocations.accept(list, &self.authorities)
    }

    /// The revocation lists held.
    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    /// The device's certificate chain.
    pub fn chain(&self) -> &CertificateChain {
        &self.chain
    }

    /// The pinned app authorities.
    pub fn authorities(&self) -> &[VerifyingKey] {
        &self.authorities
    }

    /// The device's signing key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing_key
    }

    /// See [`Access::psk`].
    fn psk(&self) -> AppSecret {
        let mut keys = self.authorities.clone();
        keys.sort();
        keys.dedup();
        let bytes: Vec<u8> = keys.iter().flat_map(|k| k.0).collect();
        AppSecret(blake3::derive_key(CERTIFICATES_PSK_CONTEXT, &bytes))
    }

    /// See [`Access::check_peer`].
    fn check_peer(
        &self,
        credentials: &[u8],
        presented: DeviceKey,
        now_ms: u64,
    ) -> Result<VerifiedDevice, CertificateError> {
        let chain = CertificateChain::decode(credentials)?;
        let device = chain.verify(&self.authorities, &self.revocations, now_ms)?;
        if device.noise_key != presented {
            return Err(CertificateError::WrongNoiseKey { certified: device.noise_key, presented });
        }
        Ok(device)
    }
}

impl fmt::Debug for Enrolment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Enrolment")
            .field("certificate", self.chain.leaf())
            .field("authorities", &self.authorities)
            .finish_non_exhaustive()
    }
}
