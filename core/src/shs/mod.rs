//! The SSB secret handshake (shs1), as two sans-IO state machines.
//!
//! ```text
//! client                                              server
//!   1. hmac_N(a) || a                       64  ──▶
//!                                           ◀──  64   2. hmac_N(b) || b
//!   3. box[N|ab|aB](sign_A(N|B|#ab) || A)  112  ──▶
//!                                                     (owner authorizes A)
//!                                           ◀──  80   4. box[N|ab|aB|Ab](sign_B(N|sig_A|A|#ab))
//! ```
//! `N` is the network key, `a`/`b` ephemeral X25519 keys, `A`/`B` long-term
//! ed25519 keys. Every step is checked as strictly as libsodium checks it.
//!
//! Drive either side the same way: feed bytes to `handle_input`, then drain
//! `poll_transmit` and `poll_event`; sleep until `poll_timeout`, then call
//! `handle_timeout`. The last event is [`Event::Established`], which moves the
//! session keys and any bytes that arrived after the handshake out: the
//! transport layer starts from those, and the handshake object is spent.

mod client;
mod crypto;
mod error;
mod exchange;
mod server;

use std::time::Duration;

use bytes::Bytes;
use zeroize::ZeroizeOnDrop;

pub use client::ClientHandshake;
pub use error::{HandshakeError, InvalidKey, Phase};
pub use server::ServerHandshake;

use crate::boxstream::{self, Opener, Sealer};
use crate::crypto::Crypto;
use crate::keys::{Keypair, NetworkKey, PublicKey};
use crate::time::Instant;
use crypto::{sha256, Secret};

/// How long a handshake may take, unless configured otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How many bytes a server keeps from a client that talks before its owner
/// decided to accept it. A well-behaved client sends nothing until it has
/// read message 4.
pub const MAX_EARLY_DATA: usize = 64 * 1024;

/// What both roles need: who we are, which network, how long to wait, and
/// which secretbox implementation to run on.
#[derive(Clone, Debug)]
pub struct HandshakeConfig {
    /// This side's long-term identity.
    pub keypair: Keypair,
    /// The network key both sides must share.
    pub network_key: NetworkKey,
    /// Deadline for the whole handshake, counted from construction.
    pub timeout: Duration,
    /// The secretbox implementation the handshake's boxes and the
    /// box-stream after it run on.
    pub crypto: Crypto,
}

impl HandshakeConfig {
    /// SSB's main network, the default timeout and the default (pure Rust)
    /// crypto provider.
    pub fn new(keypair: Keypair) -> Self {
        HandshakeConfig {
            keypair,
            network_key: NetworkKey::SSB_MAIN,
            timeout: DEFAULT_TIMEOUT,
            crypto: Crypto::default(),
        }
    }
}

/// What a handshake reports to its owner.
#[derive(Debug)]
pub enum Event {
    /// Server only: the client proved it holds this key. Call
    /// [`ServerHandshake::authorize`] before anything is sent back; a refused
    /// key never gets a session.
    Authorize(PublicKey),
    /// Both sides are authenticated. The last event of a handshake.
    Established(Established),
}

/// The face both roles share, for code that drives either one.
pub trait Handshake {
    /// Takes bytes from the peer.
    fn handle_input(&mut self, now: Instant, input: &[u8]) -> Result<(), HandshakeError>;
    /// The peer closed the connection.
    fn handle_eof(&mut self) -> Result<(), HandshakeError>;
    /// Bytes to send to the peer, if any.
    fn poll_transmit(&mut self) -> Option<Bytes>;
    /// The next thing to tell the owner.
    fn poll_event(&mut self) -> Option<Event>;
    /// When the handshake gives up, while it is in progress.
    fn poll_timeout(&self) -> Option<Instant>;
    /// Fails the handshake if its deadline has passed.
    fn handle_timeout(&mut self, now: Instant) -> Result<(), HandshakeError>;
}

macro_rules! impl_handshake {
    ($role:ty) => {
        impl Handshake for $role {
            fn handle_input(&mut self, now: Instant, input: &[u8]) -> Result<(), HandshakeError> {
                <$role>::handle_input(self, now, input)
            }
            fn handle_eof(&mut self) -> Result<(), HandshakeError> {
                <$role>::handle_eof(self)
            }
            fn poll_transmit(&mut self) -> Option<Bytes> {
                <$role>::poll_transmit(self)
            }
            fn poll_event(&mut self) -> Option<Event> {
                <$role>::poll_event(self)
            }
            fn poll_timeout(&self) -> Option<Instant> {
                <$role>::poll_timeout(self)
            }
            fn handle_timeout(&mut self, now: Instant) -> Result<(), HandshakeError> {
                <$role>::handle_timeout(self, now)
            }
        }
    };
}
impl_handshake!(ClientHandshake);
impl_handshake!(ServerHandshake);

/// The outcome of a successful handshake.
#[derive(Debug)]
pub struct Established {
    /// The peer's long-term key.
    pub peer: PublicKey,
    /// Keys and nonces for the box-stream in each direction.
    pub keys: SessionKeys,
    /// Bytes that arrived after the last handshake message: they belong to
    /// the next layer.
    pub early_data: Bytes,
    /// The provider the handshake ran on, for the box-stream after it.
    pub crypto: Crypto,
}

impl Established {
    /// Both directions of the box-stream this session continues with.
    pub fn boxstream(&self) -> (Sealer, Opener) {
        boxstream::session(&self.crypto, &self.keys)
    }
}

/// The box-stream parameters of one side of a session. The other side's
/// `encrypt` is this side's `decrypt`.
#[derive(Clone, PartialEq, Eq, ZeroizeOnDrop)]
pub struct SessionKeys {
    /// Key for what this side sends.
    pub encrypt_key: [u8; 32],
    /// First nonce for what this side sends.
    pub encrypt_nonce: [u8; 24],
    /// Key for what this side receives.
    pub decrypt_key: [u8; 32],
    /// First nonce for what this side receives.
    pub decrypt_nonce: [u8; 24],
}

impl core::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SessionKeys(..)")
    }
}

/// The secrets both sides derive from the three Diffie-Hellman results.
struct KeySchedule {
    /// sha256(ab): what both signatures cover.
    ab_hash: Secret,
    /// sha256(N | ab | aB | Ab): boxes message 4, and seeds the session keys.
    accept_key: Secret,
}

impl KeySchedule {
    /// The key that boxes message 3, sha256(N | ab | aB).
    fn auth_key(network: &NetworkKey, eph_eph: &[u8; 32], eph_server: &[u8; 32]) -> Secret {
        sha256(&[network.as_bytes(), eph_eph, eph_server])
    }

    /// The key that boxes message 4, sha256(N | ab | aB | Ab), from the three
    /// shared secrets: `ab` (`eph_eph`), `aB` (client ephemeral with server
    /// long-term, `eph_server`), `Ab` (client long-term with server ephemeral,
    /// `client_eph`).
    fn accept_key(
        network: &NetworkKey,
        eph_eph: &[u8; 32],
        eph_server: &[u8; 32],
        client_eph: &[u8; 32],
    ) -> Secret {
        sha256(&[network.as_bytes(), eph_eph, eph_server, client_eph])
    }

    /// Keys to each side are sha256(sha256(accept_key) | that side's long-term
    /// key); the nonces are the first 24 bytes of the receiver's hello MAC.
    fn session_keys(
        &self,
        local: &PublicKey,
        peer: &PublicKey,
        local_hello_mac: &[u8; 32],
        peer_hello_mac: &[u8; 32],
    ) -> SessionKeys {
        let shared = sha256(&[&self.accept_key[..]]);
        let mut keys = SessionKeys {
            encrypt_key: *sha256(&[&shared[..], peer.as_bytes()]),
            encrypt_nonce: [0; 24],
            decrypt_key: *sha256(&[&shared[..], local.as_bytes()]),
            decrypt_nonce: [0; 24],
        };
        keys.encrypt_nonce.copy_from_slice(&peer_hello_mac[..24]);
        keys.decrypt_nonce.copy_from_slice(&local_hello_mac[..24]);
        keys
    }
}

/// A hello: hmac_N(ephemeral) || ephemeral.
fn hello(network: &NetworkKey, ephemeral: &[u8; 32]) -> [u8; 64] {
    let mut message = [0u8; 64];
    message[..32].copy_from_slice(&crypto::auth(network, ephemeral));
    message[32..].copy_from_slice(ephemeral);
    message
}

/// Checks a peer's hello; returns its MAC and ephemeral key.
fn read_hello(
    network: &NetworkKey,
    message: &[u8],
) -> Result<([u8; 32], [u8; 32]), HandshakeError> {
    let (mac, ephemeral) = message.split_at(32);
    if !crypto::auth_verify(network, ephemeral, mac) {
        return Err(HandshakeError::NetworkKeyMismatch);
    }
    Ok((
        mac.try_into().expect("split at 32"),
        ephemeral.try_into().expect("hello is 64 bytes"),
    ))
}

#[cfg(test)]
mod tests;
