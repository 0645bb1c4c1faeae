//! Known-answer tests: transcripts recorded from the JavaScript implementation
//! SSB runs (secret-handshake 1.1.21, pull-box-stream 1.0.13, on libsodium).
//! Both roles must reproduce every byte, on either crypto provider.

use std::sync::Arc;

use bytes::BytesMut;
use plugboard_core::boxstream::{self, Event as BoxEvent, Opener, Sealer};
use plugboard_core::crypto::Crypto;
use plugboard_core::shs::{ClientHandshake, Event, HandshakeConfig, ServerHandshake, SessionKeys};
use plugboard_core::{Instant, Keypair, NetworkKey, PublicKey};
use serde_json::Value;

fn load(name: &str) -> Value {
    let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn bytes(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).unwrap()
}

fn array<const N: usize>(v: &Value) -> [u8; N] {
    bytes(v).try_into().unwrap()
}

/// Every provider: each vector must come out the same on all of them.
fn providers() -> [Crypto; 2] {
    [Crypto::rust_crypto(), plugboard_sodium::crypto()]
}

fn config(side: &Value, app_key: &Value, crypto: &Crypto) -> Arc<HandshakeConfig> {
    let keypair = Keypair::from_seed(array(&side["seed"]));
    assert_eq!(keypair.public().0, array(&side["public_key"]));
    let mut config = HandshakeConfig::new(keypair);
    config.network_key = NetworkKey(array(app_key));
    config.crypto = crypto.clone();
    Arc::new(config)
}

fn session_keys(v: &Value) -> SessionKeys {
    SessionKeys {
        encrypt_key: array(&v["encrypt_key"]),
        encrypt_nonce: array(&v["encrypt_nonce"]),
        decrypt_key: array(&v["decrypt_key"]),
        decrypt_nonce: array(&v["decrypt_nonce"]),
    }
}

/// Runs both roles with the recorded keys; checks every message; returns
/// (client keys, server keys).
fn replay_handshake(case: &Value, crypto: &Crypto) -> (SessionKeys, SessionKeys) {
    let now = Instant::ZERO;
    let messages = &case["messages"];
    let server_key = PublicKey(array(&case["server"]["public_key"]));
    let mut client = ClientHandshake::with_ephemeral(
        config(&case["client"], &case["app_key"], crypto),
        server_key,
        array(&case["client"]["eph_x25519_secret"]),
        now,
    )
    .unwrap();
    let mut server = ServerHandshake::with_ephemeral(
        config(&case["server"], &case["app_key"], crypto),
        array(&case["server"]["eph_x25519_secret"]),
        now,
    );

    let hello = client.poll_transmit().unwrap();
    assert_eq!(
        hex::encode(&hello),
        messages["client_hello"].as_str().unwrap()
    );
    assert_eq!(hello[32..], bytes(&case["client"]["eph_x25519_public"]));
    assert!(server.poll_transmit().is_none(), "server speaks second");

    server.handle_input(now, &hello).unwrap();
    let server_hello = server.poll_transmit().unwrap();
    assert_eq!(
        hex::encode(&server_hello),
        messages["server_hello"].as_str().unwrap()
    );

    client.handle_input(now, &server_hello).unwrap();
    let auth = client.poll_transmit().unwrap();
    assert_eq!(
        hex::encode(&auth),
        messages["client_auth"].as_str().unwrap()
    );

    server.handle_input(now, &auth).unwrap();
    let client_key = PublicKey(array(&case["client"]["public_key"]));
    match server.poll_event() {
        Some(Event::Authorize(key)) => assert_eq!(key, client_key),
        other => panic!("expected Authorize, got {other:?}"),
    }
    assert!(
        server.poll_transmit().is_none(),
        "nothing sent before authorization"
    );
    server.authorize(true).unwrap();
    let accept = server.poll_transmit().unwrap();
    assert_eq!(
        hex::encode(&accept),
        messages["server_accept"].as_str().unwrap()
    );
    let Some(Event::Established(server_done)) = server.poll_event() else {
        panic!("server not established");
    };
    assert_eq!(server_done.peer, client_key);
    assert!(server_done.early_data.is_empty());

    client.handle_input(now, &accept).unwrap();
    let Some(Event::Established(client_done)) = client.poll_event() else {
        panic!("client not established");
    };
    assert_eq!(client_done.peer, server_key);
    assert_eq!(client_done.crypto.name(), crypto.name());
    assert!(client.poll_timeout().is_none() && server.poll_timeout().is_none());
    (client_done.keys.clone(), server_done.keys.clone())
}

/// Seals `writes` one after another, then the goodbye.
fn seal_all<'a>(sealer: &mut Sealer, writes: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = BytesMut::new();
    for write in writes {
        sealer.seal(write, &mut out).unwrap();
    }
    sealer.goodbye(&mut out).unwrap();
    out.to_vec()
}

/// Opens a whole stream; returns each frame's body.
fn open_all(opener: &mut Opener, stream: &[u8]) -> Vec<Vec<u8>> {
    opener.handle_input(stream).unwrap();
    opener.handle_eof().unwrap();
    let mut bodies = Vec::new();
    loop {
        match opener.poll_event() {
            Some(BoxEvent::Data(body)) => bodies.push(body.to_vec()),
            Some(BoxEvent::Goodbye) => break,
            None => panic!("stream ended without goodbye event"),
        }
    }
    assert!(opener.poll_event().is_none());
    bodies
}

/// Each recorded case, once per provider.
fn cases_on_providers(vectors: &Value) -> impl Iterator<Item = (&Value, Crypto)> {
    let cases = vectors["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    providers()
        .into_iter()
        .flat_map(move |crypto| cases.iter().map(move |case| (case, crypto.clone())))
}

#[test]
fn shs1_boxstream_sessions_both_roles() {
    let vectors = load("shs1-boxstream.json");
    for (case, crypto) in cases_on_providers(&vectors) {
        let (client_keys, server_keys) = replay_handshake(case, &crypto);
        assert_eq!(client_keys, session_keys(&case["client_session"]));
        assert_eq!(server_keys, session_keys(&case["server_session"]));

        let (mut client_sealer, mut client_opener) = boxstream::session(&crypto, &client_keys);
        let (mut server_sealer, mut server_opener) = boxstream::session(&crypto, &server_keys);
        let writes: Vec<Vec<u8>> = case["plaintext_client_writes"]
            .as_array()
            .unwrap()
            .iter()
            .map(bytes)
            .collect();
        let plaintext = writes.concat();

        // Client role: the same writes give the same bytes.
        let to_server = seal_all(&mut client_sealer, writes.iter().map(Vec::as_slice));
        assert_eq!(to_server, bytes(&case["boxstream_client_to_server"]));

        // Server role: opens it, and its echo (frame for frame) gives the same bytes.
        assert_eq!(open_all(&mut server_opener, &to_server).concat(), plaintext);
        let recorded_echo = bytes(&case["boxstream_server_to_client"]);
        let echoed = open_all(&mut client_opener, &recorded_echo);
        assert_eq!(echoed.concat(), plaintext);
        let echo = seal_all(&mut server_sealer, echoed.iter().map(Vec::as_slice));
        assert_eq!(echo, recorded_echo);
    }
}

#[test]
fn shs1_js_transcripts_both_roles() {
    let vectors = load("shs1-js-transcripts.json");
    for (case, crypto) in cases_on_providers(&vectors) {
        let (client_keys, server_keys) = replay_handshake(case, &crypto);
        let to_server = &case["client_to_server"];
        let to_client = &case["server_to_client"];
        assert_eq!(client_keys.encrypt_key, array(&to_server["key"]));
        assert_eq!(client_keys.encrypt_nonce, array(&to_server["nonce"]));
        assert_eq!(client_keys.decrypt_key, array(&to_client["key"]));
        assert_eq!(client_keys.decrypt_nonce, array(&to_client["nonce"]));
        assert_eq!(server_keys.encrypt_key, client_keys.decrypt_key);
        assert_eq!(server_keys.encrypt_nonce, client_keys.decrypt_nonce);
        assert_eq!(server_keys.decrypt_key, client_keys.encrypt_key);
        assert_eq!(server_keys.decrypt_nonce, client_keys.encrypt_nonce);
    }
}

#[test]
fn boxstream_js_vectors() {
    let vectors = load("boxstream-js-vectors.json");
    for (case, crypto) in cases_on_providers(&vectors) {
        let name = format!("{} on {}", case["name"].as_str().unwrap(), crypto.name());
        let key = array(&case["key"]);
        let nonce = array(&case["nonce"]);
        let writes: Vec<Vec<u8>> = case["plaintext_writes"]
            .as_array()
            .unwrap()
            .iter()
            .map(bytes)
            .collect();
        let stream = bytes(&case["stream"]);
        let sealed = seal_all(
            &mut Sealer::new(&crypto, &key, &nonce),
            writes.iter().map(Vec::as_slice),
        );
        assert_eq!(sealed, stream, "{name}: sealed bytes differ");
        let opened = open_all(&mut Opener::new(&crypto, &key, &nonce), &stream).concat();
        assert_eq!(
            opened,
            bytes(&case["decoded"]),
            "{name}: opened bytes differ"
        );
    }
}
