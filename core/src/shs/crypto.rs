//! The primitives of shs1, each exactly as strict as libsodium's.

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::{Signature, VerifyingKey};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use super::error::{HandshakeError, InvalidKey};
use crate::crypto::Crypto;
use crate::keys::NetworkKey;

/// A secret derived in the handshake; wiped when dropped.
pub(crate) type Secret = Zeroizing<[u8; 32]>;

/// libsodium's `crypto_auth`: HMAC-SHA-512 cut to its first 32 bytes.
/// (Not HMAC-SHA-512/256, which has other initial values.)
pub(crate) fn auth(key: &NetworkKey, message: &[u8]) -> [u8; 32] {
    let mac = network_mac(key, message);
    let mut tag = [0u8; 32];
    tag.copy_from_slice(&mac.finalize().into_bytes()[..32]);
    tag
}

/// `crypto_auth_verify`, in constant time.
pub(crate) fn auth_verify(key: &NetworkKey, message: &[u8], tag: &[u8]) -> bool {
    network_mac(key, message).verify_truncated_left(tag).is_ok()
}

fn network_mac(key: &NetworkKey, message: &[u8]) -> Hmac<Sha512> {
    let mut mac = <Hmac<Sha512> as Mac>::new_from_slice(key.as_bytes()).expect("any key size");
    mac.update(message);
    mac
}

/// SHA-256 over the concatenation of `parts`.
pub(crate) fn sha256(parts: &[&[u8]]) -> Secret {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part);
    }
    Zeroizing::new(hash.finalize().into())
}

/// `crypto_scalarmult`: X25519, refusing a result that is all zeros (the
/// peer's point was of low order, so the secret is not contributory).
pub(crate) fn dh(secret: &StaticSecret, public: &[u8; 32]) -> Result<Secret, HandshakeError> {
    let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(*public));
    if !shared.was_contributory() {
        return Err(HandshakeError::LowOrderEphemeral);
    }
    Ok(Zeroizing::new(shared.to_bytes()))
}

/// A peer's long-term key that passed libsodium's checks, in both forms.
pub(crate) struct LongTermKey {
    pub(crate) verifying: VerifyingKey,
    /// `crypto_sign_ed25519_pk_to_curve25519` of it.
    pub(crate) curve: [u8; 32],
}

impl LongTermKey {
    /// Accepts exactly the keys libsodium accepts for both verification and
    /// conversion to curve25519: canonical encodings of points that are
    /// neither of small order nor carry a torsion component.
    pub(crate) fn validate(bytes: &[u8; 32]) -> Result<Self, InvalidKey> {
        let point = CompressedEdwardsY(*bytes)
            .decompress()
            .ok_or(InvalidKey::NotAPoint)?;
        if point.is_small_order() {
            return Err(InvalidKey::SmallOrder);
        }
        if !is_canonical(bytes) {
            return Err(InvalidKey::NonCanonical);
        }
        if !is_torsion_free(&point) {
            return Err(InvalidKey::NotTorsionFree);
        }
        Ok(LongTermKey {
            curve: point.to_montgomery().to_bytes(),
            verifying: VerifyingKey::from(point),
        })
    }

    /// `crypto_sign_verify_detached`: rejects non-canonical `s` and small-order `R`.
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        self.verifying
            .verify_strict(message, &Signature::from_bytes(signature))
            .is_ok()
    }
}

/// `ℓ·A` is the identity: since a torsion component has an order dividing
/// 8 and ℓ is odd, `(ℓ−1)·A = −A` holds exactly when `A` has none. Decided
/// with the variable-time double-base multiplication, whose branches
/// depend on the scalar only (here the constant ℓ−1), never on the point,
/// and compared in constant time: the client's key stays as hidden as
/// message 3 keeps it, at half the cost of the constant-time check (which
/// cost a handshake as much as a signature).
fn is_torsion_free(point: &EdwardsPoint) -> bool {
    let minus_one = -Scalar::ONE;
    EdwardsPoint::vartime_double_scalar_mul_basepoint(&minus_one, point, &Scalar::ZERO) == -point
}

/// libsodium's `ge25519_is_canonical`: y (the encoding without its sign bit)
/// is below p = 2^255 - 19. Decompression would silently reduce it instead.
fn is_canonical(encoding: &[u8; 32]) -> bool {
    let at_least_p = encoding[31] & 0x7f == 0x7f
        && encoding[1..31].iter().all(|&b| b == 0xff)
        && encoding[0] >= 0xed;
    !at_least_p
}

/// The handshake's boxes always use the zero nonce: each key boxes one message.
const ZERO_NONCE: [u8; 24] = [0; 24];

/// `crypto_secretbox_easy` with the zero nonce: writes `tag || ciphertext` to `out`.
pub(crate) fn seal(crypto: &Crypto, key: &[u8; 32], plaintext: &[u8], out: &mut [u8]) {
    let (tag, body) = out.split_at_mut(16);
    body.copy_from_slice(plaintext);
    tag.copy_from_slice(&crypto.secretbox(key).seal_detached(&ZERO_NONCE, body));
}

/// `crypto_secretbox_open_easy` with the zero nonce, in place: on success the
/// plaintext is `boxed[16..]`.
pub(crate) fn open(crypto: &Crypto, key: &[u8; 32], boxed: &mut [u8]) -> bool {
    let (tag, body) = boxed.split_at_mut(16);
    let tag: &[u8; 16] = (&*tag).try_into().expect("split at 16");
    crypto.secretbox(key).open_detached(&ZERO_NONCE, body, tag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::constants::EIGHT_TORSION;

    #[test]
    fn the_variable_time_torsion_check_agrees_with_the_constant_time_one() {
        for k in 1u64..40 {
            let prime_order = EdwardsPoint::mul_base(&Scalar::from(k * 7919 + 3));
            assert!(is_torsion_free(&prime_order));
            for (i, torsion) in EIGHT_TORSION.iter().enumerate() {
                let point = prime_order + torsion;
                assert_eq!(is_torsion_free(&point), point.is_torsion_free());
                assert_eq!(is_torsion_free(&point), i == 0, "torsion point {i}");
                assert_eq!(is_torsion_free(torsion), i == 0);
            }
        }
    }

    #[test]
    fn auth_is_hmac_sha512_truncated() {
        // RFC 4231 test case 2, HMAC-SHA-512, first 32 bytes; key "Jefe" padded to 32.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        let tag = auth(&NetworkKey(key), b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(tag),
            "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554"
        );
        assert!(auth_verify(
            &NetworkKey(key),
            b"what do ya want for nothing?",
            &tag
        ));
        assert!(!auth_verify(
            &NetworkKey(key),
            b"what do ya want for nothing!",
            &tag
        ));
    }

    #[test]
    fn low_order_points_give_no_secret() {
        let secret = StaticSecret::from([0x42; 32]);
        for torsion in EIGHT_TORSION {
            let point = torsion.to_montgomery().to_bytes();
            assert_eq!(
                dh(&secret, &point).map(|_| ()),
                Err(HandshakeError::LowOrderEphemeral)
            );
        }
        assert_eq!(
            dh(&secret, &[0; 32]).map(|_| ()),
            Err(HandshakeError::LowOrderEphemeral)
        );
    }

    #[test]
    fn long_term_key_checks() {
        let good = crate::keys::Keypair::from_seed([5; 32]).public();
        let valid = LongTermKey::validate(good.as_bytes()).unwrap();
        assert_eq!(valid.verifying.as_bytes(), good.as_bytes());

        for torsion in EIGHT_TORSION {
            assert_eq!(
                LongTermKey::validate(torsion.compress().as_bytes()).err(),
                Some(InvalidKey::SmallOrder)
            );
        }
        // A good point plus a torsion component.
        let mixed = valid.verifying.to_edwards() + EIGHT_TORSION[1];
        assert_eq!(
            LongTermKey::validate(mixed.compress().as_bytes()).err(),
            Some(InvalidKey::NotTorsionFree)
        );
        // y = 2 is not on the curve (x^2 = 3/(4d+1) has no root): any y with no x will do.
        let not_a_point = (2u8..=255)
            .map(|y| {
                let mut bytes = [0u8; 32];
                bytes[0] = y;
                bytes
            })
            .find(|b| CompressedEdwardsY(*b).decompress().is_none())
            .unwrap();
        assert_eq!(
            LongTermKey::validate(&not_a_point).err(),
            Some(InvalidKey::NotAPoint)
        );
        // y = p + k for the smallest k that decodes to a point that is not of small order.
        let non_canonical = (2u8..19)
            .map(|k| {
                let mut bytes = [0xff; 32];
                bytes[0] = 0xed + k;
                bytes[31] = 0x7f;
                bytes
            })
            .find(|b| {
                CompressedEdwardsY(*b)
                    .decompress()
                    .is_some_and(|p| !p.is_small_order())
            })
            .unwrap();
        assert_eq!(
            LongTermKey::validate(&non_canonical).err(),
            Some(InvalidKey::NonCanonical)
        );
        // Every y >= p, with either sign bit, is refused; p - 1 is canonical.
        for k in 0u8..19 {
            for sign in [0, 0x80] {
                let mut bytes = [0xff; 32];
                bytes[0] = 0xed + k;
                bytes[31] = 0x7f | sign;
                assert!(!is_canonical(&bytes));
                assert!(LongTermKey::validate(&bytes).is_err());
            }
        }
        let mut p_minus_1 = [0xff; 32];
        p_minus_1[0] = 0xec;
        p_minus_1[31] = 0x7f;
        assert!(is_canonical(&p_minus_1));
    }

    #[test]
    fn secretbox_round_trip_and_forgery() {
        let crypto = Crypto::default();
        let key = [3u8; 32];
        let mut boxed = [0u8; 16 + 5];
        seal(&crypto, &key, b"hello", &mut boxed);
        let mut copy = boxed;
        assert!(open(&crypto, &key, &mut copy));
        assert_eq!(&copy[16..], b"hello");
        boxed[20] ^= 1;
        assert!(!open(&crypto, &key, &mut boxed));
    }
}
