//! plugboard's core: every protocol layer as a deterministic, I/O-free state
//! machine.
//!
//! - [`keys`]: identities (ed25519), SSB ids, network keys, SSB secret files.
//! - [`shs`]: the SSB secret handshake (shs1), client and server.
//! - [`boxstream`]: SSB's box-stream, the encrypted transport after the handshake.
//! - [`crypto`]: the secretbox cipher both run on, a provider chosen per configuration.
//! - [`muxrpc`]: SSB's RPC protocol over packet-stream, for plugins that speak it.
//!
//! No clock is read ([`time::Instant`] is an argument), no socket touched, no
//! randomness drawn but from the RNG passed in. After every input, the owner
//! drains `poll_transmit` and `poll_event` until both are empty, then sleeps
//! until `poll_timeout`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod addr;
pub mod boxstream;
pub mod broker;
pub mod budget;
pub mod control;
pub mod crypto;
pub mod direct;
pub mod keys;
pub mod mux;
pub mod muxrpc;
pub mod session;
pub mod shs;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod time;
pub mod wire;

pub use keys::{Keypair, NetworkKey, PublicKey};
pub use time::Instant;
