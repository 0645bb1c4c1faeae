//! The client role for SSB's shs1 conformance suite (npm `shs1-test`):
//!
//! ```text
//! shs1-test-client NETWORK_KEY_HEX SERVER_PUBLIC_HEX
//! ```
//! Speaks shs1 on stdin/stdout with a fresh identity; on success writes the
//! 112-byte outcome (encrypt key, nonce, decrypt key, nonce) and exits 0; on
//! any failure writes nothing more and exits 1. See interop/SHS1-TEST.md.

mod common;

use std::io::Write;
use std::sync::Arc;

use common::{hex_decode, run_handshake, shs1_test_outcome, Clock, Stdio};
use plugboard_core::shs::{ClientHandshake, HandshakeConfig};
use plugboard_core::{Keypair, NetworkKey, PublicKey};
use rand_core::OsRng;

fn main() {
    if let Err(e) = run() {
        eprintln!("shs1-test-client: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [network, server] = args.as_slice() else {
        return Err("usage: shs1-test-client NETWORK_KEY SERVER_PUBLIC_KEY (hex)".into());
    };
    let network: NetworkKey = network.parse()?;
    let server = PublicKey(
        hex_decode(server)
            .and_then(|k| k.try_into().ok())
            .ok_or("bad server key")?,
    );
    let mut config = HandshakeConfig::new(Keypair::generate(&mut OsRng));
    config.network_key = network;
    config.crypto = common::crypto_from_env();

    let clock = Clock::start();
    let mut io = Stdio {
        stdin: std::io::stdin(),
        stdout: std::io::stdout(),
    };
    let mut handshake = ClientHandshake::new(Arc::new(config), server, &mut OsRng, clock.now())?;
    let session = run_handshake(&mut handshake, &mut io, &clock, |_, _| {
        unreachable!("clients are not asked to authorize")
    })?;
    io.write_all(&shs1_test_outcome(&session.keys))?;
    io.flush()?;
    Ok(())
}
