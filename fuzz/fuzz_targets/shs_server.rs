//! The shs1 server under arbitrary client bytes in arbitrary splits, after
//! 0, 1 or 2 honest client messages (so the later states are reached too).
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use plugboard_core::shs::{
    ClientHandshake, Event, HandshakeConfig, HandshakeError, ServerHandshake,
};
use plugboard_core::{Instant, Keypair};

#[derive(Arbitrary, Debug)]
struct Input {
    honest_messages: u8,
    chunks: Vec<Vec<u8>>,
    accept: bool,
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
    let mut server =
        ServerHandshake::with_ephemeral(Arc::new(HandshakeConfig::new(server_keys)), [4; 32], t0);

    // Honest prefix: hello, then (after the server's hello) the client's auth.
    for _ in 0..input.honest_messages % 3 {
        let Some(message) = client.poll_transmit() else {
            break;
        };
        server.handle_input(t0, &message).unwrap();
        if let Some(reply) = server.poll_transmit() {
            client.handle_input(t0, &reply).unwrap();
        }
    }

    let mut failed = false;
    for chunk in &input.chunks {
        match server.handle_input(t0, chunk) {
            Err(HandshakeError::Finished) => assert!(failed || server.phase().is_none()),
            Err(_) => failed = true,
            Ok(()) => assert!(!failed, "input accepted after a failure"),
        }
        drain(&mut server, input.accept, &mut failed);
    }
    if let Some(ms) = input.timeout_after_ms {
        if server
            .handle_timeout(t0 + Duration::from_millis(u64::from(ms) * 200))
            .is_err()
        {
            failed = true;
        }
    }
    if input.eof && server.handle_eof().is_err() {
        failed = true;
    }
    if failed {
        assert!(
            server.poll_transmit().is_none(),
            "sent something after failing"
        );
        assert!(server.poll_event().is_none());
    }
});

fn drain(server: &mut ServerHandshake, accept: bool, failed: &mut bool) {
    while let Some(event) = server.poll_event() {
        match event {
            Event::Authorize(_) => {
                if server.authorize(accept).is_err() {
                    *failed = true;
                }
            }
            Event::Established(done) => assert!(done.early_data.len() <= 1 << 20),
        }
    }
    if *failed {
        assert!(
            server.poll_transmit().is_none(),
            "sent something after failing"
        );
    }
    while server.poll_transmit().is_some() {}
}
