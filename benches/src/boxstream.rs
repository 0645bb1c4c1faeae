//! box-stream seal + open next to raw XSalsa20-Poly1305 on the same 4 KiB
//! chunks, on either crypto provider, and each provider's raw library.

use bytes::BytesMut;
use crypto_secretbox::aead::{AeadInPlace, KeyInit};
use crypto_secretbox::XSalsa20Poly1305;
use plugboard_core::boxstream::{Event, Opener, Sealer, MAX_BODY};
use plugboard_core::crypto::Crypto;

/// The chunk both sides of the comparison move: one full box-stream body.
pub const CHUNK: usize = MAX_BODY;

const KEY: [u8; 32] = [5; 32];
const NONCE: [u8; 24] = [6; 24];

/// A sealer and an opener of one direction, with their buffers.
pub struct Stream {
    sealer: Sealer,
    opener: Opener,
    wire: BytesMut,
    chunk: Vec<u8>,
}

impl Stream {
    /// Box-stream on `crypto`'s cipher.
    pub fn new(crypto: &Crypto) -> Self {
        Stream {
            sealer: Sealer::new(crypto, &KEY, &NONCE),
            opener: Opener::new(crypto, &KEY, &NONCE),
            wire: BytesMut::with_capacity(2 * CHUNK),
            chunk: (0..CHUNK).map(|i| i as u8).collect(),
        }
    }
}

impl Default for Stream {
    fn default() -> Self {
        Stream::new(&Crypto::rust_crypto())
    }
}

/// Seals one chunk as a frame and opens it again. Returns the bytes delivered.
pub fn plugboard(stream: &mut Stream) -> usize {
    stream.wire.clear();
    stream.sealer.seal(&stream.chunk, &mut stream.wire).unwrap();
    stream.opener.handle_input(&stream.wire).unwrap();
    match stream.opener.poll_event() {
        Some(Event::Data(bytes)) => bytes.len(),
        other => panic!("expected data, got {other:?}"),
    }
}

/// The same chunk through a bare secretbox library (detached, in place),
/// once each way, with a counter nonce.
pub struct Raw {
    cipher: RawCipher,
    nonce: u64,
    buffer: Vec<u8>,
}

/// The library under a provider, called directly.
enum RawCipher {
    RustCrypto(XSalsa20Poly1305),
    Libsodium,
}

impl Raw {
    /// RustCrypto's `crypto_secretbox` on boxes of `len` bytes: [`CHUNK`]
    /// for the comparison, 18 for the cost of a box-stream header alone.
    pub fn new(len: usize) -> Self {
        Raw::with(
            RawCipher::RustCrypto(XSalsa20Poly1305::new(&KEY.into())),
            len,
        )
    }

    /// libsodium's `crypto_secretbox_detached` on boxes of `len` bytes.
    pub fn libsodium(len: usize) -> Self {
        // Initializes libsodium before the first call.
        let _ = plugboard_sodium::Sodium::new();
        Raw::with(RawCipher::Libsodium, len)
    }

    fn with(cipher: RawCipher, len: usize) -> Self {
        Raw {
            cipher,
            nonce: 0,
            buffer: (0..len).map(|i| i as u8).collect(),
        }
    }
}

impl Default for Raw {
    fn default() -> Self {
        Raw::new(CHUNK)
    }
}

/// Seals the chunk in place and opens it again. Returns its length.
pub fn raw(raw: &mut Raw) -> usize {
    raw.nonce += 1;
    let mut nonce = [0u8; 24];
    nonce[16..].copy_from_slice(&raw.nonce.to_be_bytes());
    match &raw.cipher {
        RawCipher::RustCrypto(cipher) => {
            let tag = cipher
                .encrypt_in_place_detached(&nonce.into(), b"", &mut raw.buffer)
                .unwrap();
            cipher
                .decrypt_in_place_detached(&nonce.into(), b"", &mut raw.buffer, &tag)
                .unwrap();
        }
        RawCipher::Libsodium => sodium_seal_open(&nonce, &mut raw.buffer),
    }
    raw.buffer.len()
}

/// libsodium's secretbox seal and open, in place, as an application calls it.
fn sodium_seal_open(nonce: &[u8; 24], buffer: &mut [u8]) {
    let mut tag = [0u8; 16];
    let data = buffer.as_mut_ptr();
    let len = buffer.len() as u64;
    // SAFETY: every pointer covers what libsodium reads or writes through it
    // (tag 16 bytes, nonce 24, key 32, data `len`); libsodium allows the
    // message and the ciphertext to be one buffer. `Raw::libsodium` ran
    // sodium_init first.
    let (sealed, opened) = unsafe {
        let sealed = libsodium_sys::crypto_secretbox_detached(
            data,
            tag.as_mut_ptr(),
            data,
            len,
            nonce.as_ptr(),
            KEY.as_ptr(),
        );
        let opened = libsodium_sys::crypto_secretbox_open_detached(
            data,
            data,
            tag.as_ptr(),
            len,
            nonce.as_ptr(),
            KEY.as_ptr(),
        );
        (sealed, opened)
    };
    assert_eq!((sealed, opened), (0, 0));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_move_a_whole_chunk() {
        let mut stream = Stream::default();
        for _ in 0..3 {
            assert_eq!(plugboard(&mut stream), CHUNK);
        }
        assert_eq!(raw(&mut Raw::default()), CHUNK);
    }

    #[test]
    fn libsodium_moves_a_whole_chunk_and_gives_it_back() {
        let mut stream = Stream::new(&plugboard_sodium::crypto());
        for _ in 0..3 {
            assert_eq!(plugboard(&mut stream), CHUNK);
        }
        let mut sodium = Raw::libsodium(CHUNK);
        let before = sodium.buffer.clone();
        assert_eq!(raw(&mut sodium), CHUNK);
        assert_eq!(sodium.buffer, before, "seal then open is the identity");
    }
}
