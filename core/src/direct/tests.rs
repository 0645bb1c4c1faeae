//! Both ends of a direct connection, in memory.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::*;
use crate::keys::Keypair;

const TOKEN: [u8; TOKEN_LEN] = [7; TOKEN_LEN];

fn config(seed: u8) -> Arc<HandshakeConfig> {
    Arc::new(HandshakeConfig::new(Keypair::from_seed([seed; 32])))
}

fn start() -> (DirectConn, DirectConn) {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let now = Instant::ZERO;
    let target = config(2).keypair.public();
    let dialer = DirectConn::dial(config(1), target, TOKEN, &mut rng, now).unwrap();
    let listener = DirectConn::listen(config(2), &mut rng, now);
    (dialer, listener)
}

/// Moves bytes both ways, `chunk` bytes at a time, until nothing moves;
/// the listener's owner answers with `authorize` and `token_ok` (or not
/// at all). Returns
/// every event of (dialer, listener).
fn pump(
    dialer: &mut DirectConn,
    listener: &mut DirectConn,
    authorize: bool,
    token_ok: Option<bool>,
    chunk: usize,
) -> (Vec<DirectEvent>, Vec<DirectEvent>) {
    let now = Instant::ZERO;
    let (mut seen_d, mut seen_l) = (Vec::new(), Vec::new());
    loop {
        let mut moved = false;
        while let Some(bytes) = dialer.poll_transmit() {
            moved = true;
            for piece in bytes.chunks(chunk.max(1)) {
                let _ = listener.handle_input(now, piece);
            }
        }
        while let Some(event) = listener.poll_event() {
            moved = true;
            match &event {
                DirectEvent::Authorize(key) => {
                    assert_eq!(*key, config(1).keypair.public());
                    let _ = listener.authorize(authorize);
                }
                DirectEvent::Token { token, .. } => {
                    assert_eq!(*token, TOKEN);
                    if let Some(ok) = token_ok {
                        let _ = listener.answer_token(ok);
                    }
                }
                _ => {}
            }
            seen_l.push(event);
        }
        while let Some(bytes) = listener.poll_transmit() {
            moved = true;
            for piece in bytes.chunks(chunk.max(1)) {
                let _ = dialer.handle_input(now, piece);
            }
        }
        if listener.is_failed() && !dialer.is_failed() {
            // The listener's socket closes after its last words.
            let _ = dialer.handle_eof();
        }
        while let Some(event) = dialer.poll_event() {
            moved = true;
            seen_d.push(event);
        }
        if !moved {
            return (seen_d, seen_l);
        }
    }
}

fn data(events: &[DirectEvent]) -> Vec<u8> {
    events
        .iter()
        .filter_map(|e| match e {
            DirectEvent::Data(b) => Some(&b[..]),
            _ => None,
        })
        .flatten()
        .copied()
        .collect()
}

#[test]
fn an_expected_dialer_gets_a_channel_both_ways() {
    let (mut d, mut l) = start();
    let (ed, el) = pump(&mut d, &mut l, true, Some(true), usize::MAX);
    let listener_key = config(2).keypair.public();
    let dialer_key = config(1).keypair.public();
    assert_eq!(ed, vec![DirectEvent::Established { peer: listener_key }]);
    assert_eq!(
        el,
        vec![
            DirectEvent::Authorize(dialer_key),
            DirectEvent::Token {
                peer: dialer_key,
                token: TOKEN
            },
            DirectEvent::Established { peer: dialer_key },
        ]
    );
    assert!(d.is_open() && l.is_open());
    d.send(b"hello").unwrap();
    l.send(b"world").unwrap();
    d.finish().unwrap();
    l.finish().unwrap();
    let (ed, el) = pump(&mut d, &mut l, true, Some(true), usize::MAX);
    assert_eq!(data(&ed), b"world");
    assert_eq!(data(&el), b"hello");
    assert_eq!(ed.last(), Some(&DirectEvent::Fin));
    assert_eq!(el.last(), Some(&DirectEvent::Fin));
    assert!(d.is_finished() && l.is_finished());
    assert!(d.handle_eof().is_ok(), "the end after a goodbye is clean");
}

#[test]
fn an_unexpected_key_gets_nothing() {
    let (mut d, mut l) = start();
    let (ed, el) = pump(&mut d, &mut l, false, Some(true), usize::MAX);
    assert!(matches!(
        el.last(),
        Some(DirectEvent::Failed(DirectError::Handshake(
            HandshakeError::Unauthorized(_)
        )))
    ));
    assert!(matches!(
        ed.last(),
        Some(DirectEvent::Failed(DirectError::Handshake(_)))
    ));
    assert!(!d.is_open());
}

#[test]
fn a_wrong_token_is_told_goodbye() {
    let (mut d, mut l) = start();
    let (ed, el) = pump(&mut d, &mut l, true, Some(false), usize::MAX);
    assert_eq!(
        el.last(),
        Some(&DirectEvent::Failed(DirectError::UnexpectedToken))
    );
    assert_eq!(ed.last(), Some(&DirectEvent::Failed(DirectError::Refused)));
    assert!(
        d.send(b"x").is_err(),
        "nothing is sent on a refused channel"
    );
}

#[test]
fn the_deadline_covers_the_token() {
    let (mut d, mut l) = start();
    // The handshake completes, but nobody answers the token.
    let now = Instant::ZERO;
    let (_, el) = pump(&mut d, &mut l, true, None, usize::MAX);
    assert!(matches!(el.last(), Some(DirectEvent::Token { .. })));
    let deadline = l.poll_timeout().expect("not open yet");
    assert_eq!(deadline, now + shs::DEFAULT_TIMEOUT);
    l.handle_timeout(deadline - Duration::from_millis(1));
    assert!(!l.is_failed());
    l.handle_timeout(deadline);
    assert!(l.is_failed());
    let events: Vec<_> = std::iter::from_fn(|| l.poll_event()).collect();
    assert!(l.answer_token(true).is_err(), "too late");
    assert_eq!(
        events.last(),
        Some(&DirectEvent::Failed(DirectError::Timeout))
    );
}

#[test]
fn a_dialer_closing_early_is_reported() {
    let (mut d, mut l) = start();
    let now = Instant::ZERO;
    while let Some(b) = d.poll_transmit() {
        l.handle_input(now, &b).unwrap();
    }
    assert!(matches!(
        l.handle_eof(),
        Err(DirectError::Handshake(HandshakeError::Truncated { .. }))
    ));
    assert!(
        d.send(b"early").is_err(),
        "the dialer cannot send before acceptance"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Split anywhere, the same bytes arrive, in order, on both sides.
    #[test]
    fn bytes_arrive_whole_however_split(
        chunk in 1usize..300,
        a in proptest::collection::vec(any::<u8>(), 0..10_000),
        b in proptest::collection::vec(any::<u8>(), 0..10_000),
    ) {
        let (mut d, mut l) = start();
        pump(&mut d, &mut l, true, Some(true), chunk);
        prop_assert!(d.is_open() && l.is_open());
        d.send(&a).unwrap();
        l.send(&b).unwrap();
        d.finish().unwrap();
        l.finish().unwrap();
        let (ed, el) = pump(&mut d, &mut l, true, Some(true), chunk);
        prop_assert_eq!(data(&el), a);
        prop_assert_eq!(data(&ed), b);
        prop_assert!(d.is_finished() && l.is_finished());
    }
}
