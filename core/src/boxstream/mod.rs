//! SSB's box-stream: the encrypted, authenticated transport after shs1.
//!
//! Every frame is a 34-byte boxed header, then the body:
//!
//! ```text
//! header = secretbox[key, n](len: u16 BE || body_tag: 16)      34 bytes
//! body   = secretbox[key, n+1](plaintext) without its tag     len bytes, len <= 4096
//! ```
//!
//! The nonce `n` starts at the value the handshake derived and counts up by
//! two per frame as a 24-byte big-endian integer that wraps. A header that
//! opens to 18 zero bytes is the goodbye: the stream ended cleanly.
//!
//! [`Sealer`] writes frames; [`Opener`] reads them from bytes split anywhere.
//! Neither allocates per frame once its buffers have grown to the traffic.

mod nonce;
mod open;
mod seal;

pub use open::{Event, Opener};
pub use seal::Sealer;

use crate::crypto::{Crypto, TAG_LEN};
use crate::shs::SessionKeys;

/// Largest body one frame carries.
pub const MAX_BODY: usize = 4096;
/// Size of a boxed header.
pub const HEADER_LEN: usize = 34;

/// Why a box-stream failed. Once failed, an [`Opener`] stays failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoxStreamError {
    /// A header or body did not authenticate: forged, corrupted, reordered,
    /// replayed or cut frames all end here.
    #[error("a frame failed authentication (forged, corrupted, reordered or replayed)")]
    Forged,
    /// An authentic header announced a body over [`MAX_BODY`] bytes.
    #[error("a frame announced a {0}-byte body; the limit is 4096")]
    BodyTooLong(usize),
    /// Bytes followed the goodbye.
    #[error("data after the goodbye")]
    DataAfterGoodbye,
    /// The stream ended without a goodbye.
    #[error("the stream ended without a goodbye ({0} bytes of an unfinished frame)")]
    Truncated(usize),
    /// Data was written after this side's goodbye (API misuse).
    #[error("this side already said goodbye")]
    Closed,
}

/// Both directions of a session, from the handshake's keys, on `crypto`.
pub fn session(crypto: &Crypto, keys: &SessionKeys) -> (Sealer, Opener) {
    (
        Sealer::new(crypto, &keys.encrypt_key, &keys.encrypt_nonce),
        Opener::new(crypto, &keys.decrypt_key, &keys.decrypt_nonce),
    )
}

#[cfg(test)]
mod tests;
