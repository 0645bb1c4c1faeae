//! Identities: ed25519 keypairs, public keys in SSB's text form, network keys.
//!
//! A [`PublicKey`] here is 32 bytes as they appear on the wire. Whether they
//! are a usable ed25519 point is checked where it matters, in the handshake
//! (libsodium's rules, see [`crate::shs`]), not when an id is parsed.

pub mod secret_file;

pub use secret_file::SecretFileError;

use core::fmt;
use core::str::FromStr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};
use rand_core::CryptoRngCore;
use x25519_dalek::StaticSecret;

/// Why a key in text form could not be parsed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KeyError {
    /// An SSB feed id must start with `@`.
    #[error("an SSB id starts with '@'")]
    MissingSigil,
    /// Only ed25519 keys exist in SSB's classic feed format.
    #[error("expected the suffix '.ed25519' after the base64 key")]
    UnsupportedSuffix,
    /// The key part is not canonical standard base64.
    #[error("the key is not valid base64: {0}")]
    Base64(#[from] base64::DecodeError),
    /// Hex text that is not hex.
    #[error("the key is not valid hex: {0}")]
    Hex(#[from] hex::FromHexError),
    /// The decoded key has the wrong size.
    #[error("expected a {expected}-byte key, found {found} bytes")]
    Length {
        /// Bytes required.
        expected: usize,
        /// Bytes decoded.
        found: usize,
    },
}

/// An ed25519 public key: an SSB identity.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses SSB's id form, `@<base64>.ed25519`.
    pub fn from_ssb_id(text: &str) -> Result<Self, KeyError> {
        let rest = text.strip_prefix('@').ok_or(KeyError::MissingSigil)?;
        Self::from_ssb_public(rest)
    }

    /// Parses the sigil-less form `<base64>.ed25519` used in SSB secret files.
    pub fn from_ssb_public(text: &str) -> Result<Self, KeyError> {
        let b64 = text
            .strip_suffix(".ed25519")
            .ok_or(KeyError::UnsupportedSuffix)?;
        decode_base64_array(b64).map(PublicKey)
    }

    /// The sigil-less form `<base64>.ed25519`.
    pub fn to_ssb_public(&self) -> String {
        format!("{}.ed25519", BASE64.encode(self.0))
    }
}

/// Prints the SSB id, `@<base64>.ed25519`.
impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "@{}.ed25519", BASE64.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Self::from_ssb_id(s)
    }
}

/// The 32-byte key that separates networks: peers with different network
/// keys cannot complete a handshake (SSB calls it `caps.shs` or the app key).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct NetworkKey(pub [u8; 32]);

impl NetworkKey {
    /// SSB's main network key, `1KHLiKZvAvjbY1ziZEHMXawbCEIM6qwjCDm3VYRan/s=`.
    pub const SSB_MAIN: NetworkKey = NetworkKey([
        0xd4, 0xa1, 0xcb, 0x88, 0xa6, 0x6f, 0x02, 0xf8, 0xdb, 0x63, 0x5c, 0xe2, 0x64, 0x41, 0xcc,
        0x5d, 0xac, 0x1b, 0x08, 0x42, 0x0c, 0xea, 0xac, 0x23, 0x08, 0x39, 0xb7, 0x55, 0x84, 0x5a,
        0x9f, 0xfb,
    ]);

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl Default for NetworkKey {
    fn default() -> Self {
        Self::SSB_MAIN
    }
}

/// Prints standard base64, the form SSB's config uses.
impl fmt::Display for NetworkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&BASE64.encode(self.0))
    }
}

impl fmt::Debug for NetworkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NetworkKey({self})")
    }
}

/// Accepts 64 hex digits or standard base64.
impl FromStr for NetworkKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        if s.len() == 64 {
            let mut key = [0u8; 32];
            hex::decode_to_slice(s, &mut key)?;
            Ok(NetworkKey(key))
        } else {
            decode_base64_array(s).map(NetworkKey)
        }
    }
}

/// An ed25519 keypair: this side's identity.
///
/// Keeps the curve25519 form of the secret (libsodium's
/// `crypto_sign_ed25519_sk_to_curve25519`) next to it, since every handshake
/// needs it.
#[derive(Clone)]
pub struct Keypair {
    signing: SigningKey,
    curve_secret: StaticSecret,
}

impl Keypair {
    /// The keypair for a 32-byte ed25519 seed (libsodium's `crypto_sign_seed_keypair`).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(&seed);
        // The lower half of SHA-512(seed); X25519 clamps it on use, as libsodium does.
        let curve_secret = StaticSecret::from(signing.to_scalar_bytes());
        Keypair {
            signing,
            curve_secret,
        }
    }

    /// A fresh keypair from the given randomness.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        let keypair = Self::from_seed(seed);
        zeroize::Zeroize::zeroize(&mut seed);
        keypair
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key().to_bytes())
    }

    /// The 32-byte seed. Secret.
    pub fn seed(&self) -> &[u8; 32] {
        self.signing.as_bytes()
    }

    /// libsodium's 64-byte secret key, `seed || public`: what SSB's secret file stores.
    pub fn to_libsodium_secret(&self) -> [u8; 64] {
        self.signing.to_keypair_bytes()
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    pub(crate) fn curve_secret(&self) -> &StaticSecret {
        &self.curve_secret
    }
}

/// Never prints the secret.
impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keypair({})", self.public())
    }
}

fn decode_base64_array<const N: usize>(text: &str) -> Result<[u8; N], KeyError> {
    let bytes = BASE64.decode(text)?;
    bytes.as_slice().try_into().map_err(|_| KeyError::Length {
        expected: N,
        found: bytes.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssb_id_round_trip() {
        let key = Keypair::from_seed([7; 32]).public();
        let id = key.to_string();
        assert!(id.starts_with('@') && id.ends_with(".ed25519"), "{id}");
        assert_eq!(id.parse::<PublicKey>(), Ok(key));
        assert_eq!(PublicKey::from_ssb_public(&id[1..]), Ok(key));
    }

    #[test]
    fn malformed_ids_say_what_is_wrong() {
        let good = Keypair::from_seed([7; 32]).public().to_string();
        assert_eq!(good[1..].parse::<PublicKey>(), Err(KeyError::MissingSigil));
        assert_eq!(
            good.replace(".ed25519", ".sha256").parse::<PublicKey>(),
            Err(KeyError::UnsupportedSuffix)
        );
        assert!(matches!(
            "@!!!!.ed25519".parse::<PublicKey>(),
            Err(KeyError::Base64(_))
        ));
        assert_eq!(
            "@AAAA.ed25519".parse::<PublicKey>(),
            Err(KeyError::Length {
                expected: 32,
                found: 3
            })
        );
    }

    #[test]
    fn network_key_hex_and_base64() {
        let hex_form = "d4a1cb88a66f02f8db635ce26441cc5dac1b08420ceaac230839b755845a9ffb";
        let b64_form = "1KHLiKZvAvjbY1ziZEHMXawbCEIM6qwjCDm3VYRan/s=";
        assert_eq!(hex_form.parse::<NetworkKey>(), Ok(NetworkKey::SSB_MAIN));
        assert_eq!(b64_form.parse::<NetworkKey>(), Ok(NetworkKey::SSB_MAIN));
        assert_eq!(NetworkKey::SSB_MAIN.to_string(), b64_form);
        assert_eq!(NetworkKey::SSB_MAIN.to_hex(), hex_form);
        assert_eq!(NetworkKey::default(), NetworkKey::SSB_MAIN);
        assert!(matches!(
            hex_form.replace('d', "g").parse::<NetworkKey>(),
            Err(KeyError::Hex(_))
        ));
        assert!(matches!(
            "AAAA".parse::<NetworkKey>(),
            Err(KeyError::Length { found: 3, .. })
        ));
    }

    #[test]
    fn libsodium_secret_is_seed_then_public() {
        let keypair = Keypair::from_seed([9; 32]);
        let secret = keypair.to_libsodium_secret();
        assert_eq!(&secret[..32], &[9; 32]);
        assert_eq!(&secret[32..], keypair.public().as_bytes());
        assert!(
            !format!("{keypair:?}").contains("CQkJ"),
            "Debug leaks the seed"
        );
    }
}
