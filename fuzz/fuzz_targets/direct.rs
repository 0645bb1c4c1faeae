//! A direct connection (either end) under arbitrary bytes in arbitrary
//! splits, after an honest prefix of the exchange (so the token and
//! acceptance stages are reached too), with arbitrary answers.
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use plugboard_core::direct::{DirectConn, DirectEvent};
use plugboard_core::shs::HandshakeConfig;
use plugboard_core::{Instant, Keypair};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

#[derive(Arbitrary, Debug)]
struct Input {
    /// Honest messages moved before the hostile bytes.
    honest_steps: u8,
    /// Feed the dialer (true) or the listener.
    hit_dialer: bool,
    chunks: Vec<Vec<u8>>,
    authorize: bool,
    token_ok: bool,
    sends: Vec<Vec<u8>>,
    finish: bool,
    timeout_after_ms: Option<u16>,
    eof: bool,
}

const TOKEN: [u8; 32] = [5; 32];

fuzz_target!(|input: Input| {
    let t0 = Instant::ZERO;
    let mut rng = ChaCha20Rng::seed_from_u64(0);
    let dialer_keys = Keypair::from_seed([1; 32]);
    let listener_keys = Keypair::from_seed([2; 32]);
    let listener_key = listener_keys.public();
    let mut dialer = DirectConn::dial(
        Arc::new(HandshakeConfig::new(dialer_keys)),
        listener_key,
        TOKEN,
        &mut rng,
        t0,
    )
    .unwrap();
    let mut listener =
        DirectConn::listen(Arc::new(HandshakeConfig::new(listener_keys)), &mut rng, t0);

    let mut seen_d = Seen::default();
    let mut seen_l = Seen::default();
    for _ in 0..input.honest_steps % 8 {
        while let Some(b) = dialer.poll_transmit() {
            let _ = listener.handle_input(t0, &b);
        }
        seen_l.drain(&mut listener, input.authorize, input.token_ok);
        while let Some(b) = listener.poll_transmit() {
            let _ = dialer.handle_input(t0, &b);
        }
        seen_d.drain(&mut dialer, true, true);
    }

    let (target, seen) = match input.hit_dialer {
        true => (&mut dialer, &mut seen_d),
        false => (&mut listener, &mut seen_l),
    };
    for chunk in &input.chunks {
        let before = seen.failed;
        let result = target.handle_input(t0, chunk);
        if before {
            assert!(result.is_ok(), "a failed connection ignores input");
        }
        seen.drain(target, input.authorize, input.token_ok);
        for data in &input.sends {
            let sent = target.send(data);
            assert_eq!(sent.is_ok(), target.is_open(), "send only while open");
        }
    }
    if input.finish && target.is_open() {
        target.finish().unwrap();
    }
    if let Some(ms) = input.timeout_after_ms {
        target.handle_timeout(t0 + Duration::from_millis(u64::from(ms) * 200));
    }
    if input.eof {
        let _ = target.handle_eof();
    }
    seen.drain(target, input.authorize, input.token_ok);
    if seen.failed {
        assert!(!target.is_open());
        assert!(target.poll_timeout().is_none());
    }
});

#[derive(Default)]
struct Seen {
    established: bool,
    fin: bool,
    failed: bool,
}

impl Seen {
    fn drain(&mut self, conn: &mut DirectConn, authorize: bool, token_ok: bool) {
        while let Some(event) = conn.poll_event() {
            assert!(!self.failed, "an event after Failed: {event:?}");
            match event {
                DirectEvent::Authorize(_) => {
                    let _ = conn.authorize(authorize);
                }
                DirectEvent::Token { token, .. } => {
                    let _ = conn.answer_token(token_ok && token == TOKEN);
                }
                DirectEvent::Established { .. } => {
                    assert!(!self.established, "established twice");
                    self.established = true;
                }
                DirectEvent::Data(bytes) => {
                    assert!(self.established, "data before the channel is up");
                    assert!(!self.fin, "data after the peer's goodbye");
                    assert!(!bytes.is_empty());
                }
                DirectEvent::Fin => {
                    assert!(self.established && !self.fin);
                    self.fin = true;
                }
                DirectEvent::Failed(_) => self.failed = true,
            }
        }
    }
}
