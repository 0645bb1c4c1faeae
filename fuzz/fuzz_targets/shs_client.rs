//! The shs1 client under arbitrary server bytes in arbitrary splits, after
//! 0 or 1 honest server messages.
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use plugboard_core::shs::{ClientHandshake, HandshakeConfig, HandshakeError, ServerHandshake};
use plugboard_core::{Instant, Keypair};

#[derive(Arbitrary, Debug)]
struct Input {
    honest_hello: bool,
    chunks: Vec<Vec<u8>>,
    timeout_after_ms: Option<u16>,
    eof: bool,
}

fuzz_target!(|input: Input| {
    let t0 = Instant::ZERO;
    let server_keys = Keypair::from_seed([2; 32]);
    let mut client = ClientHandshake::with_ephemeral(
        Arc::new(HandshakeConfig::new(Keypair::from_seed([1; 32]))),
        server_keys.public(),
        [3; 32],
        t0,
    )
    .unwrap();
    let hello = client.poll_transmit().unwrap();

    if input.honest_hello {
        let mut server = ServerHandshake::with_ephemeral(
            Arc::new(HandshakeConfig::new(server_keys)),
            [4; 32],
            t0,
        );
        server.handle_input(t0, &hello).unwrap();
        client
            .handle_input(t0, &server.poll_transmit().unwrap())
            .unwrap();
        assert_eq!(client.poll_transmit().map(|m| m.len()), Some(112));
    }

    let mut failed = false;
    for chunk in &input.chunks {
        match client.handle_input(t0, chunk) {
            Err(HandshakeError::Finished) => assert!(failed || client.phase().is_none()),
            Err(_) => failed = true,
            Ok(()) => assert!(!failed, "input accepted after a failure"),
        }
        if failed {
            assert!(
                client.poll_transmit().is_none(),
                "sent something after failing"
            );
        }
        while client.poll_transmit().is_some() {}
        // Only a server holding key 02.. could establish; the fuzzer is not one.
        if let Some(event) = client.poll_event() {
            panic!("a forged server got {event:?}");
        }
    }
    if let Some(ms) = input.timeout_after_ms {
        if client
            .handle_timeout(t0 + Duration::from_millis(u64::from(ms) * 200))
            .is_err()
        {
            failed = true;
        }
    }
    if input.eof && client.handle_eof().is_err() {
        failed = true;
    }
    if failed {
        assert!(client.poll_transmit().is_none());
    }
});
