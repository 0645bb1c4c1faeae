//! Every way a handshake can fail, each with its typed error, and nothing
//! sent that the protocol does not send.

use std::sync::Arc;
use std::time::Duration;

use curve25519_dalek::constants::EIGHT_TORSION;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::crypto::{self, LongTermKey};
use super::*;
use crate::time::Instant;

const T0: Instant = Instant::ZERO;
const CLIENT_EPH: [u8; 32] = [0x11; 32];
const SERVER_EPH: [u8; 32] = [0x22; 32];

fn keypair(seed: u8) -> Keypair {
    Keypair::from_seed([seed; 32])
}

fn config(keypair: Keypair) -> Arc<HandshakeConfig> {
    Arc::new(HandshakeConfig::new(keypair))
}

fn client_for(server: &Keypair) -> ClientHandshake {
    ClientHandshake::with_ephemeral(config(keypair(1)), server.public(), CLIENT_EPH, T0).unwrap()
}

fn server() -> ServerHandshake {
    ServerHandshake::with_ephemeral(config(keypair(2)), SERVER_EPH, T0)
}

/// Runs a client and server to the point where the server asks to authorize.
/// Returns the three messages sent so far.
fn until_authorize(client: &mut ClientHandshake, server: &mut ServerHandshake) -> [Bytes; 3] {
    let hello = client.poll_transmit().unwrap();
    server.handle_input(T0, &hello).unwrap();
    let server_hello = server.poll_transmit().unwrap();
    client.handle_input(T0, &server_hello).unwrap();
    let auth = client.poll_transmit().unwrap();
    server.handle_input(T0, &auth).unwrap();
    assert!(matches!(server.poll_event(), Some(Event::Authorize(_))));
    [hello, server_hello, auth]
}

fn established(event: Option<Event>) -> Established {
    match event {
        Some(Event::Established(done)) => done,
        other => panic!("expected Established, got {other:?}"),
    }
}

/// A hello with a valid MAC around any ephemeral key.
fn hello_with(ephemeral: [u8; 32]) -> [u8; 64] {
    super::hello(&NetworkKey::SSB_MAIN, &ephemeral)
}

/// The secrets the real parties derive, computed independently, to forge
/// messages that pass every check but one.
struct Forge {
    network: NetworkKey,
    client: Keypair,
    server: Keypair,
}

impl Forge {
    fn new() -> Self {
        Forge {
            network: NetworkKey::SSB_MAIN,
            client: keypair(1),
            server: keypair(2),
        }
    }

    fn eph_public(secret: [u8; 32]) -> [u8; 32] {
        x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(secret)).to_bytes()
    }

    fn eph_eph(&self) -> crypto::Secret {
        let a = x25519_dalek::StaticSecret::from(CLIENT_EPH);
        crypto::dh(&a, &Self::eph_public(SERVER_EPH)).unwrap()
    }

    /// Message 3 boxed correctly around `plaintext` (signature || key).
    fn client_auth(&self, plaintext: &[u8; 96]) -> [u8; 112] {
        let a = x25519_dalek::StaticSecret::from(CLIENT_EPH);
        let server_curve = LongTermKey::validate(self.server.public().as_bytes())
            .unwrap()
            .curve;
        let eph_server = crypto::dh(&a, &server_curve).unwrap();
        let key = KeySchedule::auth_key(&self.network, &self.eph_eph(), &eph_server);
        let mut message = [0u8; 112];
        crypto::seal(&Crypto::default(), &key, plaintext, &mut message);
        message
    }

    fn client_signature(&self) -> [u8; 64] {
        let mut signed = Vec::new();
        signed.extend_from_slice(self.network.as_bytes());
        signed.extend_from_slice(self.server.public().as_bytes());
        signed.extend_from_slice(&crypto::sha256(&[&self.eph_eph()[..]])[..]);
        self.client.sign(&signed)
    }

    /// Message 4 boxed correctly around `signature`.
    fn server_accept(&self, signature: &[u8; 64]) -> [u8; 80] {
        let a = x25519_dalek::StaticSecret::from(CLIENT_EPH);
        let server_curve = LongTermKey::validate(self.server.public().as_bytes())
            .unwrap()
            .curve;
        let eph_server = crypto::dh(&a, &server_curve).unwrap();
        let client_eph =
            crypto::dh(self.client.curve_secret(), &Self::eph_public(SERVER_EPH)).unwrap();
        let key = KeySchedule::accept_key(&self.network, &self.eph_eph(), &eph_server, &client_eph);
        let mut message = [0u8; 80];
        crypto::seal(&Crypto::default(), &key, signature, &mut message);
        message
    }
}

#[test]
fn random_keys_complete_and_agree() {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let server_keys = Keypair::generate(&mut rng);
    let client_keys = Keypair::generate(&mut rng);
    let mut client = ClientHandshake::new(
        config(client_keys.clone()),
        server_keys.public(),
        &mut rng,
        T0,
    )
    .unwrap();
    let mut server = ServerHandshake::new(config(server_keys.clone()), &mut rng, T0);
    until_authorize(&mut client, &mut server);
    server.authorize(true).unwrap();
    client
        .handle_input(T0, &server.poll_transmit().unwrap())
        .unwrap();
    let at_server = established(server.poll_event());
    let at_client = established(client.poll_event());
    assert_eq!(at_server.peer, client_keys.public());
    assert_eq!(at_client.peer, server_keys.public());
    assert_eq!(at_client.keys.encrypt_key, at_server.keys.decrypt_key);
    assert_eq!(at_client.keys.encrypt_nonce, at_server.keys.decrypt_nonce);
    assert_eq!(at_client.keys.decrypt_key, at_server.keys.encrypt_key);
    assert_eq!(at_client.keys.decrypt_nonce, at_server.keys.encrypt_nonce);
    assert_ne!(at_client.keys.encrypt_key, at_client.keys.decrypt_key);
}

#[test]
fn wrong_network_key_fails_both_ways_silently() {
    let mut other = HandshakeConfig::new(keypair(1));
    other.network_key = NetworkKey([9; 32]);
    let mut client =
        ClientHandshake::with_ephemeral(Arc::new(other), keypair(2).public(), CLIENT_EPH, T0)
            .unwrap();
    let mut server = server();
    let hello = client.poll_transmit().unwrap();
    assert_eq!(
        server.handle_input(T0, &hello),
        Err(HandshakeError::NetworkKeyMismatch)
    );
    assert!(server.poll_transmit().is_none());

    // And a server hello from another network fails at the client.
    let mut client = client_for(&keypair(2));
    client.poll_transmit();
    let mut foreign = hello_with(Forge::eph_public(SERVER_EPH));
    foreign[0] ^= 0x80;
    assert_eq!(
        client.handle_input(T0, &foreign),
        Err(HandshakeError::NetworkKeyMismatch)
    );
    assert!(client.poll_transmit().is_none());
}

#[test]
fn dialing_the_wrong_server_key_fails_at_the_server() {
    let mut client = client_for(&keypair(3));
    let mut server = server();
    server
        .handle_input(T0, &client.poll_transmit().unwrap())
        .unwrap();
    client
        .handle_input(T0, &server.poll_transmit().unwrap())
        .unwrap();
    assert_eq!(
        server.handle_input(T0, &client.poll_transmit().unwrap()),
        Err(HandshakeError::ClientAuthUnreadable)
    );
    assert!(server.poll_transmit().is_none() && server.poll_event().is_none());
}

#[test]
fn low_order_ephemeral_keys_are_refused_by_both() {
    for torsion in EIGHT_TORSION {
        let low = torsion.to_montgomery().to_bytes();
        let mut server = server();
        assert_eq!(
            server.handle_input(T0, &hello_with(low)),
            Err(HandshakeError::LowOrderEphemeral)
        );
        assert!(server.poll_transmit().is_none());

        let mut client = client_for(&keypair(2));
        client.poll_transmit();
        assert_eq!(
            client.handle_input(T0, &hello_with(low)),
            Err(HandshakeError::LowOrderEphemeral)
        );
        assert!(client.poll_transmit().is_none());
    }
}

#[test]
fn bad_client_signature_and_keys_are_refused() {
    let forge = Forge::new();
    let cases: Vec<([u8; 96], HandshakeError)> = {
        let mut bad_signature = [0u8; 96];
        bad_signature[..64].copy_from_slice(&forge.client.sign(b"something else"));
        bad_signature[64..].copy_from_slice(forge.client.public().as_bytes());

        let mut small_order = [0u8; 96];
        small_order[..64].copy_from_slice(&forge.client_signature());
        small_order[64..].copy_from_slice(EIGHT_TORSION[3].compress().as_bytes());

        let torsioned = LongTermKey::validate(forge.client.public().as_bytes())
            .unwrap()
            .verifying
            .to_edwards()
            + EIGHT_TORSION[1];
        let mut not_torsion_free = small_order;
        not_torsion_free[64..].copy_from_slice(torsioned.compress().as_bytes());

        vec![
            (bad_signature, HandshakeError::BadClientSignature),
            (
                small_order,
                HandshakeError::InvalidClientKey(InvalidKey::SmallOrder),
            ),
            (
                not_torsion_free,
                HandshakeError::InvalidClientKey(InvalidKey::NotTorsionFree),
            ),
        ]
    };
    for (plaintext, expected) in cases {
        let mut server = server();
        server
            .handle_input(T0, &hello_with(Forge::eph_public(CLIENT_EPH)))
            .unwrap();
        server.poll_transmit().unwrap();
        assert_eq!(
            server.handle_input(T0, &forge.client_auth(&plaintext)),
            Err(expected)
        );
        assert!(server.poll_transmit().is_none() && server.poll_event().is_none());
    }

    // The forge itself is right: the honest plaintext is accepted.
    let mut honest = [0u8; 96];
    honest[..64].copy_from_slice(&forge.client_signature());
    honest[64..].copy_from_slice(forge.client.public().as_bytes());
    let mut server = server();
    server
        .handle_input(T0, &hello_with(Forge::eph_public(CLIENT_EPH)))
        .unwrap();
    server
        .handle_input(T0, &forge.client_auth(&honest))
        .unwrap();
    assert!(matches!(server.poll_event(), Some(Event::Authorize(k)) if k == forge.client.public()));
}

#[test]
fn bad_server_signature_and_tampered_accept_are_refused() {
    let forge = Forge::new();
    let run = |accept: &[u8]| {
        let mut client = client_for(&forge.server);
        let mut server = server();
        until_authorize(&mut client, &mut server);
        client.handle_input(T0, accept)
    };

    let honest = {
        let mut client = client_for(&forge.server);
        let mut server = server();
        until_authorize(&mut client, &mut server);
        server.authorize(true).unwrap();
        server.poll_transmit().unwrap()
    };
    assert_eq!(run(&honest), Ok(()));
    // The forge is right: it rebuilds the honest message exactly.
    let mut signed = Vec::new();
    signed.extend_from_slice(forge.network.as_bytes());
    signed.extend_from_slice(&forge.client_signature());
    signed.extend_from_slice(forge.client.public().as_bytes());
    signed.extend_from_slice(&crypto::sha256(&[&forge.eph_eph()[..]])[..]);
    assert_eq!(
        forge.server_accept(&forge.server.sign(&signed))[..],
        honest[..]
    );

    let wrong_signature = forge.server_accept(&forge.server.sign(b"not the handshake"));
    assert_eq!(
        run(&wrong_signature),
        Err(HandshakeError::BadServerSignature)
    );

    let mut tampered = honest.to_vec();
    tampered[40] ^= 1;
    assert_eq!(run(&tampered), Err(HandshakeError::ServerAcceptUnreadable));
}

#[test]
fn invalid_server_key_is_a_configuration_error() {
    let small = EIGHT_TORSION[2].compress().to_bytes();
    let result =
        ClientHandshake::with_ephemeral(config(keypair(1)), PublicKey(small), CLIENT_EPH, T0);
    assert_eq!(
        result.err(),
        Some(HandshakeError::InvalidServerKey(InvalidKey::SmallOrder))
    );
}

#[test]
fn refused_client_gets_nothing() {
    let mut client = client_for(&keypair(2));
    let mut server = server();
    until_authorize(&mut client, &mut server);
    assert_eq!(
        server.authorize(false),
        Err(HandshakeError::Unauthorized(keypair(1).public()))
    );
    assert!(server.poll_transmit().is_none() && server.poll_event().is_none());
    assert_eq!(server.authorize(true), Err(HandshakeError::Finished));
}

#[test]
fn authorize_only_when_asked() {
    let mut server = server();
    assert_eq!(server.authorize(true), Err(HandshakeError::NotAuthorizing));
    assert_eq!(
        server.phase(),
        Some(Phase::ClientHello),
        "misuse is not fatal"
    );
}

#[test]
fn truncation_reports_how_far_it_got() {
    let mut client = client_for(&keypair(2));
    let mut server = server();
    let hello = client.poll_transmit().unwrap();
    server.handle_input(T0, &hello[..10]).unwrap();
    assert_eq!(
        server.handle_eof(),
        Err(HandshakeError::Truncated {
            phase: Phase::ClientHello,
            received: 10,
            expected: 64
        })
    );

    let mut server = ServerHandshake::with_ephemeral(config(keypair(2)), SERVER_EPH, T0);
    server.handle_input(T0, &hello).unwrap();
    client
        .handle_input(T0, &server.poll_transmit().unwrap())
        .unwrap();
    client.poll_transmit();
    client.handle_input(T0, &[0; 79]).unwrap();
    assert_eq!(
        client.handle_eof(),
        Err(HandshakeError::Truncated {
            phase: Phase::ServerAccept,
            received: 79,
            expected: 80
        })
    );
    assert!(client.poll_transmit().is_none());
}

#[test]
fn a_client_whose_handshake_ends_early_is_told_what_to_check() {
    // No hello back: another network key.
    let mut client = client_for(&keypair(2));
    client.poll_transmit();
    let error = client.handle_eof().unwrap_err();
    assert!(error.to_string().contains("another network key"), "{error}");

    // Our authentication sent, then nothing: not admitted.
    let mut client = client_for(&keypair(2));
    let mut server = ServerHandshake::with_ephemeral(config(keypair(2)), SERVER_EPH, T0);
    server
        .handle_input(T0, &client.poll_transmit().unwrap())
        .unwrap();
    client
        .handle_input(T0, &server.poll_transmit().unwrap())
        .unwrap();
    client.poll_transmit();
    let error = client.handle_eof().unwrap_err().to_string();
    assert!(error.contains("did not admit this key"), "{error}");
    assert!(error.contains("policy"), "{error}");

    // Cut in the middle of a message: only how far it got.
    let mut cut = self::server();
    cut.handle_input(T0, &[0; 10]).unwrap();
    let error = cut.handle_eof().unwrap_err().to_string();
    assert_eq!(
        error,
        "the connection ended after 10 of 64 bytes of the client hello"
    );
}

#[test]
fn deadline_is_part_of_the_state_machine() {
    let mut client = client_for(&keypair(2));
    let deadline = T0 + DEFAULT_TIMEOUT;
    assert_eq!(client.poll_timeout(), Some(deadline));
    assert_eq!(
        client.handle_timeout(deadline - Duration::from_nanos(1)),
        Ok(())
    );
    assert_eq!(
        client.handle_timeout(deadline),
        Err(HandshakeError::TimedOut(Phase::ServerHello))
    );
    assert!(
        client.poll_transmit().is_none(),
        "the unsent hello is withdrawn"
    );
    assert_eq!(client.poll_timeout(), None);

    // The server's deadline covers the owner's authorization decision too.
    let mut client = client_for(&keypair(2));
    let mut server = server();
    until_authorize(&mut client, &mut server);
    assert_eq!(server.poll_timeout(), Some(deadline));
    assert_eq!(
        server.handle_timeout(deadline + Duration::from_secs(1)),
        Err(HandshakeError::TimedOut(Phase::Authorization))
    );
    assert_eq!(server.authorize(true), Err(HandshakeError::Finished));
}

#[test]
fn early_data_is_handed_on_not_lost() {
    let mut client = client_for(&keypair(2));
    let mut server = server();
    let hello = client.poll_transmit().unwrap();
    server.handle_input(T0, &hello).unwrap();
    client
        .handle_input(T0, &server.poll_transmit().unwrap())
        .unwrap();
    let mut auth_and_more = client.poll_transmit().unwrap().to_vec();
    auth_and_more.extend_from_slice(b"first bytes");
    server.handle_input(T0, &auth_and_more).unwrap();
    assert!(matches!(server.poll_event(), Some(Event::Authorize(_))));
    server.handle_input(T0, b", more").unwrap();
    server.authorize(true).unwrap();
    let at_server = established(server.poll_event());
    assert_eq!(&at_server.early_data[..], b"first bytes, more");

    let mut accept_and_more = server.poll_transmit().unwrap().to_vec();
    accept_and_more.extend_from_slice(b"reply");
    client.handle_input(T0, &accept_and_more).unwrap();
    assert_eq!(&established(client.poll_event()).early_data[..], b"reply");
    assert_eq!(client.handle_input(T0, b"x"), Err(HandshakeError::Finished));
}

#[test]
fn early_data_is_bounded() {
    let mut client = client_for(&keypair(2));
    let mut server = server();
    until_authorize(&mut client, &mut server);
    server.handle_input(T0, &vec![0; MAX_EARLY_DATA]).unwrap();
    assert_eq!(
        server.handle_input(T0, &[0]),
        Err(HandshakeError::TooMuchEarlyData)
    );
}
