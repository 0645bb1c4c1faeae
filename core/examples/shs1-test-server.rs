//! The server role for SSB's shs1 conformance suite (npm `shs1-test`):
//!
//! ```text
//! shs1-test-server NETWORK_KEY_HEX SERVER_SECRET_HEX(64 bytes) SERVER_PUBLIC_HEX
//! ```
//! Speaks shs1 on stdin/stdout; on success writes the 112-byte outcome
//! (encrypt key, nonce, decrypt key, nonce) and exits 0; on any failure
//! writes nothing more and exits 1. See interop/SHS1-TEST.md.

mod common;

use std::io::Write;
use std::sync::Arc;

use common::{hex_decode, run_handshake, shs1_test_outcome, Clock, Stdio};
use plugboard_core::shs::{HandshakeConfig, ServerHandshake};
use plugboard_core::{Keypair, NetworkKey};
use rand_core::OsRng;

fn main() {
    if let Err(e) = run() {
        eprintln!("shs1-test-server: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [network, secret, public] = args.as_slice() else {
        return Err("usage: shs1-test-server NETWORK_KEY SECRET_KEY PUBLIC_KEY (hex)".into());
    };
    let network: NetworkKey = network.parse()?;
    let secret = hex_decode(secret)
        .filter(|s| s.len() == 64)
        .ok_or("bad secret key")?;
    let keypair = Keypair::from_seed(secret[..32].try_into()?);
    if keypair.public().as_bytes()[..] != secret[32..]
        || hex_decode(public) != Some(secret[32..].to_vec())
    {
        return Err("the public key does not match the secret key".into());
    }
    let mut config = HandshakeConfig::new(keypair);
    config.network_key = network;
    config.crypto = common::crypto_from_env();

    let clock = Clock::start();
    let mut io = Stdio {
        stdin: std::io::stdin(),
        stdout: std::io::stdout(),
    };
    let mut handshake = ServerHandshake::new(Arc::new(config), &mut OsRng, clock.now());
    let session = run_handshake(&mut handshake, &mut io, &clock, |h, _| h.authorize(true))?;
    io.write_all(&shs1_test_outcome(&session.keys))?;
    io.flush()?;
    Ok(())
}
