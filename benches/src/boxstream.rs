//! box-stream seal + open next to raw XSalsa20-Poly1305 on the same 4 KiB
//! chunks.

use bytes::BytesMut;
use crypto_secretbox::aead::{AeadInPlace, KeyInit};
use crypto_secretbox::XSalsa20Poly1305;
use plugboard_core::boxstream::{Event, Opener, Sealer, MAX_BODY};

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

impl Default for Stream {
    fn default() -> Self {
        Stream {
            sealer: Sealer::new(&KEY, &NONCE),
            opener: Opener::new(&KEY, &NONCE),
            wire: BytesMut::with_capacity(2 * CHUNK),
            chunk: (0..CHUNK).map(|i| i as u8).collect(),
        }
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

/// The same chunk through bare `crypto_secretbox` (detached, in place), once
/// each way, with a counter nonce.
pub struct Raw {
    cipher: XSalsa20Poly1305,
    nonce: u64,
    buffer: Vec<u8>,
}

impl Raw {
    /// Boxes of `len` bytes: [`CHUNK`] for the comparison, 18 for the cost of
    /// a box-stream header alone.
    pub fn new(len: usize) -> Self {
        Raw {
            cipher: XSalsa20Poly1305::new(&KEY.into()),
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
    let tag = raw
        .cipher
        .encrypt_in_place_detached(&nonce.into(), b"", &mut raw.buffer)
        .unwrap();
    raw.cipher
        .decrypt_in_place_detached(&nonce.into(), b"", &mut raw.buffer, &tag)
        .unwrap();
    raw.buffer.len()
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
}
