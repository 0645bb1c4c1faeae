//! Property tests of the handshake: the split of the input does not matter;
//! any flipped bit in any message fails the other side with a typed error.

use std::sync::Arc;

use bytes::Bytes;
use plugboard_core::shs::{
    ClientHandshake, Event, HandshakeConfig, HandshakeError, ServerHandshake, SessionKeys,
};
use plugboard_core::{Instant, Keypair, PublicKey};
use proptest::prelude::*;

const T0: Instant = Instant::ZERO;

struct Pair {
    client: ClientHandshake,
    server: ServerHandshake,
    server_key: PublicKey,
}

fn pair(seed: u8) -> Pair {
    let client_keys = Keypair::from_seed([seed; 32]);
    let server_keys = Keypair::from_seed([seed.wrapping_add(1); 32]);
    let server_key = server_keys.public();
    Pair {
        client: ClientHandshake::with_ephemeral(
            Arc::new(HandshakeConfig::new(client_keys)),
            server_key,
            [seed ^ 0x55; 32],
            T0,
        )
        .unwrap(),
        server: ServerHandshake::with_ephemeral(
            Arc::new(HandshakeConfig::new(server_keys)),
            [seed ^ 0xaa; 32],
            T0,
        ),
        server_key,
    }
}

/// Cuts `message` at the given fractions.
fn pieces(message: &[u8], cuts: &[f64]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| (c * message.len() as f64) as usize)
        .collect();
    points.push(0);
    points.push(message.len());
    points.sort_unstable();
    points
        .windows(2)
        .map(|w| message[w[0]..w[1]].to_vec())
        .collect()
}

/// The handshake's messages and both sides' keys; `deliver` feeds each
/// message to its receiver however it likes.
fn run(
    mut p: Pair,
    mut deliver: impl FnMut(usize, &[u8]) -> Vec<Vec<u8>>,
) -> (Vec<Bytes>, SessionKeys, SessionKeys) {
    let mut sent = Vec::new();
    let hello = p.client.poll_transmit().unwrap();
    for piece in deliver(0, &hello) {
        p.server.handle_input(T0, &piece).unwrap();
    }
    let server_hello = p.server.poll_transmit().unwrap();
    for piece in deliver(1, &server_hello) {
        p.client.handle_input(T0, &piece).unwrap();
    }
    let auth = p.client.poll_transmit().unwrap();
    for piece in deliver(2, &auth) {
        p.server.handle_input(T0, &piece).unwrap();
    }
    assert!(matches!(p.server.poll_event(), Some(Event::Authorize(_))));
    p.server.authorize(true).unwrap();
    let accept = p.server.poll_transmit().unwrap();
    for piece in deliver(3, &accept) {
        p.client.handle_input(T0, &piece).unwrap();
    }
    let Some(Event::Established(at_client)) = p.client.poll_event() else {
        panic!("client did not finish");
    };
    let Some(Event::Established(at_server)) = p.server.poll_event() else {
        panic!("server did not finish");
    };
    assert_eq!(at_client.peer, p.server_key);
    sent.extend([hello, server_hello, auth, accept]);
    (sent, at_client.keys.clone(), at_server.keys.clone())
}

proptest! {
    #[test]
    fn split_points_do_not_matter(
        seed in any::<u8>(),
        cuts in proptest::collection::vec(proptest::collection::vec(0.0..1.0f64, 0..6), 4),
    ) {
        let whole = run(pair(seed), |_, m| vec![m.to_vec()]);
        let split = run(pair(seed), |i, m| pieces(m, &cuts[i]));
        prop_assert_eq!(whole, split);
    }

    #[test]
    fn any_flipped_bit_fails_the_receiver(seed in any::<u8>(), message in 0..4usize, bit in 0..896usize) {
        let mut p = pair(seed);
        let len = [64, 64, 112, 80][message];
        let bit = bit % (len * 8);
        let flip = |m: Bytes, i: usize| {
            let mut m = m.to_vec();
            if i == message {
                m[bit / 8] ^= 1 << (bit % 8);
            }
            m
        };
        let expected = [
            HandshakeError::NetworkKeyMismatch,
            HandshakeError::NetworkKeyMismatch,
            HandshakeError::ClientAuthUnreadable,
            HandshakeError::ServerAcceptUnreadable,
        ][message].clone();

        let hello = flip(p.client.poll_transmit().unwrap(), 0);
        let result = p.server.handle_input(T0, &hello);
        if message == 0 {
            prop_assert_eq!(result, Err(expected));
            prop_assert!(p.server.poll_transmit().is_none());
            return Ok(());
        }
        let server_hello = flip(p.server.poll_transmit().unwrap(), 1);
        let result = p.client.handle_input(T0, &server_hello);
        if message == 1 {
            prop_assert_eq!(result, Err(expected));
            prop_assert!(p.client.poll_transmit().is_none());
            return Ok(());
        }
        let auth = flip(p.client.poll_transmit().unwrap(), 2);
        let result = p.server.handle_input(T0, &auth);
        if message == 2 {
            prop_assert_eq!(result, Err(expected));
            prop_assert!(p.server.poll_transmit().is_none() && p.server.poll_event().is_none());
            return Ok(());
        }
        p.server.poll_event();
        p.server.authorize(true).unwrap();
        let accept = flip(p.server.poll_transmit().unwrap(), 3);
        prop_assert_eq!(p.client.handle_input(T0, &accept), Err(expected));
        prop_assert!(p.client.poll_event().is_none());
    }

    #[test]
    fn garbage_never_panics_and_never_establishes(
        seed in any::<u8>(),
        input in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let mut p = pair(seed);
        let _ = p.server.handle_input(T0, &input);
        prop_assert!(p.server.poll_event().is_none());
        p.client.poll_transmit();
        let _ = p.client.handle_input(T0, &input);
        prop_assert!(p.client.poll_event().is_none());
    }
}
