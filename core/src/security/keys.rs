//! Key material: the app secret shared by all devices of an app, each device's persistent identity key pair, and
//! the public key that identifies a peer.

use std::fmt;

use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::Dh;

use super::{noise_params, SecurityError};
use crate::util::hex;

/// The length of an X25519 private or public key.
const KEY_LEN: usize = 32;

/// The blake3 key-derivation context for [`AppSecret::from_bytes`].
const APP_SECRET_CONTEXT: &str = "shoal app secret v1";

/// The secret shared by every device of one app, mixed into each handshake as the Noise pre-shared key: a device
/// without it cannot complete a handshake.
///
/// Its `Debug` output never shows the key.
#[derive(Clone)]
pub struct AppSecret(pub(super) [u8; KEY_LEN]);

impl AppSecret {
    /// Derives the 32-byte pre-shared key from the app's secret, of any length, with
    /// `blake3::derive_key("shoal app secret v1", bytes)`.
    ///
    /// # Errors
    /// [`SecurityError::InvalidKey`] if `bytes` is empty.
    pub fn from_bytes(bytes: &[u8]) -> Result<AppSecret, SecurityError> {
        if bytes.is_empty() {
            return Err(SecurityError::InvalidKey("the app secret is empty".into()));
        }
        Ok(AppSecret(blake3::derive_key(APP_SECRET_CONTEXT, bytes)))
    }

    /// A short public tag of the app: the first 16 hex digits of the BLAKE3 hash of the derived key. Devices
    /// advertise it (mDNS TXT `app=`) so that they only dial devices of the same app; it does not let anyone
    /// complete a handshake. Like any value derived from a secret it allows offline guessing of a *weak* secret,
    /// so app secrets should be random, not passwords.
    pub fn tag(&self) -> String {
        hex(&blake3::hash(&self.0).as_bytes()[..8])
    }
}

impl fmt::Debug for AppSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AppSecret(..)")
    }
}

/// A device's persistent X25519 key pair: its private key, which never leaves the device, and the public key
/// other devices know it by (its [`DeviceKey`]).
///
/// Persist it with [`to_bytes`](Self::to_bytes) (private key then public key, 64 bytes) and restore it with
/// [`from_bytes`](Self::from_bytes), which recomputes the public half and checks that it matches. Its `Debug`
/// output never shows the private key.
#[derive(Clone)]
pub struct Identity {
    private: [u8; KEY_LEN],
    public: [u8; KEY_LEN],
}

impl Identity {
    /// Generates a fresh key pair from the operating system's random number generator.
    ///
    /// # Errors
    /// [`SecurityError::InvalidKey`] if no randomness or X25519 implementation is available.
    pub fn generate() -> Result<Identity, SecurityError> {
        let keypair = snow::Builder::new(noise_params()?)
            .generate_keypair()
            .map_err(|err| SecurityError::InvalidKey(format!("cannot generate a key pair: {err}")))?;
        let private = key_array(&keypair.private, "generated private key")?;
        let public = key_array(&keypair.public, "generated public key")?;
        Ok(Identity { private, public })
    }

    /// Restores a key pair from its 32-byte private key, computing the public key.
    ///
    /// # Errors
    /// [`SecurityError::InvalidKey`] if `private` is not 32 bytes or is all zeros (a sign of uninitialised
    /// storage rather than a key).
    pub fn from_private(private: &[u8]) -> Result<Identity, SecurityError> {
        let private = key_array(private, "private key")?;
        if private == [0u8; KEY_LEN] {
            return Err(SecurityError::InvalidKey("the private key is all zeros".into()));
        }
        let public = public_from_private(&private)?;
        Ok(Identity { private, public })
    }

    /// Restores a key pair from its [`to_bytes`](Self::to_bytes) form: the private key then the public key.
    ///
    /// # Errors
    /// [`SecurityError::InvalidKey`] if `bytes` is not 64 bytes, if the private key is invalid (see
    /// [`from_private`](Self::from_private)), or if the public half is not the one the private key gives.
    pub fn from_bytes(bytes: &[u8]) -> Result<Identity, SecurityError> {
        if bytes.len() != 2 * KEY_LEN {
            return Err(SecurityError::InvalidKey(format!(
                "an identity is {} bytes, not {}",
                2 * KEY_LEN,
                bytes.len()
            )));
        }
        let (private, public) = bytes.split_at(KEY_LEN);
        let identity = Identity::from_private(private)?;
        if identity.public[..] != *public {
            return Err(SecurityError::InvalidKey("the public key does not match the private key".into()));
        }
        Ok(identity)
    }

    /// The 64-byte persistent form: the private key then the public key. Keep it secret.
    pub fn to_bytes(&self) -> [u8; 2 * KEY_LEN] {
        let mut out = [0u8; 2 * KEY_LEN];
        out[..KEY_LEN].copy_from_slice(&self.private);
        out[KEY_LEN..].copy_from_slice(&self.public);
        out
    }

    /// The public key: what other devices know this one by.
    pub fn public_key(&self) -> [u8; KEY_LEN] {
        self.public
    }

    /// The public key as a [`DeviceKey`].
    pub fn device_key(&self) -> DeviceKey {
        DeviceKey(self.public)
    }

    /// The private key, for building a handshake.
    pub(super) fn private_key(&self) -> &[u8; KEY_LEN] {
        &self.private
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity").field("public", &self.device_key()).finish_non_exhaustive()
    }
}

/// A peer's static public key, authenticated by a completed handshake: the stable identity of a device.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceKey(pub [u8; KEY_LEN]);

impl DeviceKey {
    /// The full key as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

/// Shows the first 8 bytes as 16 hex digits: enough to tell devices apart in logs.
impl fmt::Display for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0[..8]))
    }
}

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceKey({self})")
    }
}

/// `bytes` as a 32-byte key, or [`SecurityError::InvalidKey`] naming `what`.
fn key_array(bytes: &[u8], what: &str) -> Result<[u8; KEY_LEN], SecurityError> {
    <[u8; KEY_LEN]>::try_from(bytes)
        .map_err(|_| SecurityError::InvalidKey(format!("a {what} is {KEY_LEN} bytes, not {}", bytes.len())))
}

/// A fresh instance of the handshake's Diffie-Hellman function.
fn x25519() -> Result<Box<dyn Dh>, SecurityError> {
    DefaultResolver
        .resolve_dh(&noise_params()?.dh)
        .ok_or_else(|| SecurityError::InvalidKey("no X25519 implementation".into()))
}

/// The X25519 public key of `private` (computed by the same implementation the handshake uses).
fn public_from_private(private: &[u8; KEY_LEN]) -> Result<[u8; KEY_LEN], SecurityError> {
    let mut dh = x25519()?;
    dh.set(private);
    key_array(dh.pubkey(), "derived public key")
}

/// Whether `public` is a low-order X25519 point (or the twist's equivalent), whose Diffie-Hellman output with any
/// private key is all zeros: such a "key" proves nothing in a handshake, since anyone can compute the shared
/// secret, so it must never be accepted as a device's identity.
pub(super) fn is_low_order(public: &[u8; KEY_LEN]) -> Result<bool, SecurityError> {
    // Any clamped scalar is a multiple of the cofactor and not a multiple of either prime subgroup order, so the
    // product is zero exactly for the low-order points.
    let mut dh = x25519()?;
    dh.set(&[0x5A; KEY_LEN]);
    let mut shared = [0u8; KEY_LEN];
    dh.dh(public, &mut shared)
        .map_err(|err| SecurityError::InvalidKey(format!("cannot check the peer's key: {err}")))?;
    Ok(shared == [0u8; KEY_LEN])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_secret_rejects_empty_input() {
        assert!(matches!(AppSecret::from_bytes(b""), Err(SecurityError::InvalidKey(_))));
    }

    #[test]
    fn app_secret_is_derived_with_blake3() {
        let secret = AppSecret::from_bytes(b"hunter2").unwrap();
        assert_eq!(secret.0, blake3::derive_key("shoal app secret v1", b"hunter2"));
        assert_ne!(secret.0, [0u8; 32]);
    }

    #[test]
    fn app_secret_tag_is_short_stable_and_app_specific() {
        let a = AppSecret::from_bytes(b"hunter2").unwrap();
        assert_eq!(a.tag().len(), 16);
        assert_eq!(a.tag(), hex(&blake3::hash(&a.0).as_bytes()[..8]));
        assert_eq!(a.tag(), AppSecret::from_bytes(b"hunter2").unwrap().tag());
        assert_ne!(a.tag(), AppSecret::from_bytes(b"hunter3").unwrap().tag());
        assert!(!a.tag().contains(&hex(&a.0[..8])));
    }

    #[test]
    fn app_secret_debug_hides_the_key() {
        let secret = AppSecret::from_bytes(b"hunter2").unwrap();
        let shown = format!("{secret:?}");
        assert_eq!(shown, "AppSecret(..)");
        assert!(!shown.contains(&hex(&secret.0[..4])));
    }

    #[test]
    fn identity_round_trips_through_bytes() {
        let identity = Identity::generate().unwrap();
        let bytes = identity.to_bytes();
        let restored = Identity::from_bytes(&bytes).unwrap();
        assert_eq!(restored.to_bytes(), bytes);
        assert_eq!(restored.public_key(), identity.public_key());
    }

    #[test]
    fn derived_public_key_matches_the_generated_one() {
        for _ in 0..8 {
            let identity = Identity::generate().unwrap();
            let from_private = Identity::from_private(&identity.to_bytes()[..32]).unwrap();
            assert_eq!(from_private.public_key(), identity.public_key());
        }
    }

    #[test]
    fn generated_identities_differ() {
        let a = Identity::generate().unwrap();
        let b = Identity::generate().unwrap();
        assert_ne!(a.public_key(), b.public_key());
        assert_ne!(a.to_bytes(), b.to_bytes());
    }

    #[test]
    fn public_key_matches_rfc7748_test_vector() {
        // RFC 7748 section 6.1: Alice's private and public keys.
        let private = from_hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let public = from_hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
        let identity = Identity::from_private(&private).unwrap();
        assert_eq!(identity.public_key().to_vec(), public);
    }

    #[test]
    fn from_private_rejects_wrong_lengths_and_zero_keys() {
        for len in [0usize, 1, 31, 33, 64, 1000] {
            assert!(matches!(Identity::from_private(&vec![7u8; len]), Err(SecurityError::InvalidKey(_))), "{len}");
        }
        assert!(matches!(Identity::from_private(&[0u8; 32]), Err(SecurityError::InvalidKey(_))));
    }

    #[test]
    fn from_bytes_rejects_wrong_lengths_and_mismatched_halves() {
        let identity = Identity::generate().unwrap();
        let bytes = identity.to_bytes();
        assert!(matches!(Identity::from_bytes(&bytes[..63]), Err(SecurityError::InvalidKey(_))));
        assert!(matches!(Identity::from_bytes(&[bytes.as_slice(), &[0]].concat()), Err(SecurityError::InvalidKey(_))));
        assert!(matches!(Identity::from_bytes(&[]), Err(SecurityError::InvalidKey(_))));
        let mut corrupt = bytes;
        corrupt[40] ^= 1;
        assert!(matches!(Identity::from_bytes(&corrupt), Err(SecurityError::InvalidKey(_))));
    }

    #[test]
    fn identity_debug_hides_the_private_key() {
        let identity = Identity::generate().unwrap();
        let shown = format!("{identity:?}");
        let private_hex = hex(&identity.to_bytes()[..32]);
        assert!(!shown.contains(&private_hex[..8]), "{shown}");
        assert!(shown.contains(&identity.device_key().to_string()), "{shown}");
    }

    #[test]
    fn device_key_formats_as_hex() {
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = i as u8 * 8;
        }
        let key = DeviceKey(bytes);
        assert_eq!(key.to_string(), "0008101820283038");
        assert_eq!(key.to_hex().len(), 64);
        assert!(key.to_hex().starts_with("0008101820283038404850"));
        assert!(key.to_hex().ends_with("f0f8"));
        assert_eq!(format!("{key:?}"), "DeviceKey(0008101820283038)");
    }

    #[test]
    fn device_keys_order_by_bytes() {
        let low = DeviceKey([1; 32]);
        let high = DeviceKey([2; 32]);
        assert!(low < high);
        let set: std::collections::BTreeSet<DeviceKey> = [high, low, high].into_iter().collect();
        assert_eq!(set.into_iter().collect::<Vec<_>>(), vec![low, high]);
    }

    #[test]
    fn low_order_points_are_detected() {
        let low_order = [
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0100000000000000000000000000000000000000000000000000000000000000",
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
            "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        ];
        for point in low_order {
            let key = <[u8; 32]>::try_from(from_hex(point)).unwrap_or_else(|_| panic!("bad test vector"));
            assert_eq!(is_low_order(&key), Ok(true), "{point}");
        }
        let identity = Identity::generate().unwrap();
        assert_eq!(is_low_order(&identity.public_key()), Ok(false));
    }

    fn from_hex(s: &str) -> Vec<u8> {
        (0..s.len() / 2).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap()).collect()
    }
}
