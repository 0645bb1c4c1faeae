use bytes::BytesMut;

use super::nonce::Nonce;
use super::{BoxStreamError, HEADER_LEN, MAX_BODY, TAG_LEN};
use crate::crypto::{Crypto, SecretBox};

/// The sending half of a box-stream.
pub struct Sealer {
    cipher: Box<dyn SecretBox>,
    nonce: Nonce,
    said_goodbye: bool,
}

impl Sealer {
    /// A sealer under `key` starting at `nonce`, on `crypto`'s cipher.
    pub fn new(crypto: &Crypto, key: &[u8; 32], nonce: &[u8; 24]) -> Self {
        Sealer {
            cipher: crypto.secretbox(key),
            nonce: Nonce(*nonce),
            said_goodbye: false,
        }
    }

    /// Bytes on the wire for `plaintext_len` bytes of plaintext.
    pub const fn sealed_len(plaintext_len: usize) -> usize {
        plaintext_len + plaintext_len.div_ceil(MAX_BODY) * HEADER_LEN
    }

    /// Appends the frames carrying `plaintext` to `out`, at most
    /// [`MAX_BODY`] bytes per frame. Nothing is written for empty plaintext.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut BytesMut) -> Result<(), BoxStreamError> {
        if self.said_goodbye {
            return Err(BoxStreamError::Closed);
        }
        out.reserve(Self::sealed_len(plaintext.len()));
        for chunk in plaintext.chunks(MAX_BODY) {
            self.seal_frame(chunk, out);
        }
        Ok(())
    }

    /// Appends the goodbye frame. Nothing may be sealed after it.
    pub fn goodbye(&mut self, out: &mut BytesMut) -> Result<(), BoxStreamError> {
        if self.said_goodbye {
            return Err(BoxStreamError::Closed);
        }
        self.said_goodbye = true;
        let nonce = self.nonce.next();
        let start = out.len();
        out.resize(start + HEADER_LEN, 0);
        self.seal_header(&mut out[start..], nonce);
        Ok(())
    }

    /// Whether [`Sealer::goodbye`] was called.
    pub fn said_goodbye(&self) -> bool {
        self.said_goodbye
    }

    fn seal_frame(&mut self, chunk: &[u8], out: &mut BytesMut) {
        // The header takes nonce n, the body n + 1.
        let header_nonce = self.nonce.next();
        let body_nonce = self.nonce.next();
        let start = out.len();
        out.resize(start + HEADER_LEN, 0);
        let body_tag = self.cipher.seal_detached_append(&body_nonce, chunk, out);
        let header = &mut out[start..start + HEADER_LEN];
        header[TAG_LEN..TAG_LEN + 2].copy_from_slice(&(chunk.len() as u16).to_be_bytes());
        header[TAG_LEN + 2..].copy_from_slice(&body_tag);
        self.seal_header(header, header_nonce);
    }

    /// Boxes `header[16..34]` in place; the tag goes first.
    fn seal_header(&self, header: &mut [u8], nonce: [u8; 24]) {
        let (tag, plaintext) = header.split_at_mut(TAG_LEN);
        let header_tag = self.cipher.seal_detached(&nonce, plaintext);
        tag.copy_from_slice(&header_tag);
    }
}
