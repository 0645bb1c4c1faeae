//! libsodium as plugboard's crypto provider.
//!
//! The core runs box-stream and shs1's boxes on a [`CryptoProvider`]; its
//! default is the pure-Rust RustCrypto cipher, whose Salsa20 has no SIMD code
//! on stable Rust. This crate runs the same two operations on libsodium's
//! `crypto_secretbox_detached` and `crypto_secretbox_open_detached`, which
//! pick SIMD Salsa20 at run time: about 3.5× the speed on x86-64 (docs/PERFORMANCE.md).
//!
//! ```
//! use plugboard_core::shs::HandshakeConfig;
//! use plugboard_core::Keypair;
//!
//! let mut config = HandshakeConfig::new(Keypair::from_seed([1; 32]));
//! config.crypto = plugboard_sodium::crypto();
//! assert_eq!(config.crypto.name(), "libsodium");
//! ```
//!
//! Building it needs a C compiler and make: libsodium is compiled from the
//! source bundled in `libsodium-sys-stable`.

#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::sync::OnceLock;

use bytes::BytesMut;
use plugboard_core::crypto::{Crypto, CryptoProvider, SecretBox, KEY_LEN, NONCE_LEN, TAG_LEN};
use zeroize::Zeroizing;

/// The libsodium provider. Construct it with [`Sodium::new`] (or take
/// [`crypto`]), which initializes the library first.
#[derive(Clone, Copy, Debug)]
pub struct Sodium(());

impl Sodium {
    /// Initializes libsodium (once per process) and returns the provider.
    ///
    /// # Panics
    /// If libsodium cannot initialize, which happens only when the system
    /// has no usable source of randomness. Neither operation this provider
    /// performs uses randomness, but libsodium requires initialization
    /// before any call.
    pub fn new() -> Self {
        static INIT: OnceLock<i32> = OnceLock::new();
        // SAFETY: sodium_init takes no arguments and is safe to call from
        // any thread; OnceLock makes it run once anyway.
        let status = *INIT.get_or_init(|| unsafe { libsodium_sys::sodium_init() });
        // 0: initialized now; 1: already initialized; -1: failure.
        assert!(status >= 0, "libsodium failed to initialize ({status})");
        Sodium(())
    }
}

impl Default for Sodium {
    fn default() -> Self {
        Sodium::new()
    }
}

/// libsodium, as a provider handle for a
/// [`HandshakeConfig`](plugboard_core::shs::HandshakeConfig).
pub fn crypto() -> Crypto {
    Crypto::new(Sodium::new())
}

impl CryptoProvider for Sodium {
    fn name(&self) -> &'static str {
        "libsodium"
    }

    fn secretbox(&self, key: &[u8; KEY_LEN]) -> Box<dyn SecretBox> {
        Box::new(SodiumBox {
            key: Zeroizing::new(*key),
        })
    }
}

/// A secretbox key for libsodium; wiped when dropped.
struct SodiumBox {
    key: Zeroizing<[u8; KEY_LEN]>,
}

// libsodium's constants, checked against ours at compile time.
const _: () = {
    assert!(libsodium_sys::crypto_secretbox_KEYBYTES as usize == KEY_LEN);
    assert!(libsodium_sys::crypto_secretbox_NONCEBYTES as usize == NONCE_LEN);
    assert!(libsodium_sys::crypto_secretbox_MACBYTES as usize == TAG_LEN);
};

impl SecretBox for SodiumBox {
    fn seal_detached(&self, nonce: &[u8; NONCE_LEN], in_out: &mut [u8]) -> [u8; TAG_LEN] {
        let mut tag = [0u8; TAG_LEN];
        let data = in_out.as_mut_ptr();
        // SAFETY: every pointer comes from a live Rust reference with the
        // length libsodium reads or writes through it: `tag` 16 bytes,
        // `nonce` 24, `key` 32 (the sizes asserted above), `in_out` its
        // length, passed as `mlen`. libsodium documents that the message
        // and ciphertext may be the same buffer (in-place), which is why
        // both come from the one `in_out` pointer. It returns 0 for every
        // length: it seals anything up to `crypto_secretbox_MESSAGEBYTES_MAX`,
        // more than a slice can hold on 64-bit targets.
        let status = unsafe {
            libsodium_sys::crypto_secretbox_detached(
                data,
                tag.as_mut_ptr(),
                data,
                in_out.len() as u64,
                nonce.as_ptr(),
                self.key.as_ptr(),
            )
        };
        assert_eq!(status, 0, "crypto_secretbox_detached failed");
        tag
    }

    fn open_detached(
        &self,
        nonce: &[u8; NONCE_LEN],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> bool {
        let data = in_out.as_mut_ptr();
        // SAFETY: as in `seal_detached`: each pointer covers the length
        // libsodium uses through it, and in-place opening (message and
        // ciphertext the same buffer) is documented. libsodium verifies the
        // tag before it decrypts and returns -1, writing nothing, if it
        // does not match.
        let status = unsafe {
            libsodium_sys::crypto_secretbox_open_detached(
                data,
                data,
                tag.as_ptr(),
                in_out.len() as u64,
                nonce.as_ptr(),
                self.key.as_ptr(),
            )
        };
        status == 0
    }

    fn seal_detached_append(
        &self,
        nonce: &[u8; NONCE_LEN],
        plaintext: &[u8],
        out: &mut BytesMut,
    ) -> [u8; TAG_LEN] {
        let mut tag = [0u8; TAG_LEN];
        out.reserve(plaintext.len());
        let spare = out.spare_capacity_mut();
        assert!(spare.len() >= plaintext.len(), "reserved above");
        // SAFETY: libsodium writes `plaintext.len()` bytes of ciphertext to
        // `spare`, which has room for them (reserved and asserted), reads
        // that many from `plaintext`, which cannot overlap `spare` (spare
        // capacity is memory no initialized slice covers, even one of the
        // same allocation), and reads the fixed-size tag, nonce and key. After it returns 0 those bytes are
        // initialized, so the length may cover them.
        unsafe {
            let status = libsodium_sys::crypto_secretbox_detached(
                spare.as_mut_ptr().cast(),
                tag.as_mut_ptr(),
                plaintext.as_ptr(),
                plaintext.len() as u64,
                nonce.as_ptr(),
                self.key.as_ptr(),
            );
            assert_eq!(status, 0, "crypto_secretbox_detached failed");
            out.set_len(out.len() + plaintext.len());
        }
        tag
    }

    fn open_detached_append(
        &self,
        nonce: &[u8; NONCE_LEN],
        ciphertext: &[u8],
        tag: &[u8; TAG_LEN],
        out: &mut BytesMut,
    ) -> bool {
        out.reserve(ciphertext.len());
        let spare = out.spare_capacity_mut();
        assert!(spare.len() >= ciphertext.len(), "reserved above");
        // SAFETY: as in `seal_detached_append`, with the roles swapped. On
        // a forgery libsodium returns -1 and the length stays as it was, so
        // nothing it may have written becomes readable.
        unsafe {
            let status = libsodium_sys::crypto_secretbox_open_detached(
                spare.as_mut_ptr().cast(),
                ciphertext.as_ptr(),
                tag.as_ptr(),
                ciphertext.len() as u64,
                nonce.as_ptr(),
                self.key.as_ptr(),
            );
            if status != 0 {
                return false;
            }
            out.set_len(out.len() + ciphertext.len());
        }
        true
    }
}

#[cfg(test)]
mod tests;
