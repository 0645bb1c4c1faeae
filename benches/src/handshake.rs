//! One full shs1 handshake, both sides in memory, next to the sum of the
//! primitive operations it consists of.

use std::hint::black_box;
use std::sync::Arc;

use crypto_secretbox::aead::{AeadInPlace, KeyInit};
use crypto_secretbox::XSalsa20Poly1305;
use curve25519_dalek::edwards::CompressedEdwardsY;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use plugboard_core::shs::{ClientHandshake, Event, HandshakeConfig, ServerHandshake, SessionKeys};
use plugboard_core::{Instant, Keypair, PublicKey};
use sha2::{Digest, Sha256, Sha512};
use x25519_dalek::StaticSecret;

const CLIENT_SEED: [u8; 32] = [1; 32];
const SERVER_SEED: [u8; 32] = [2; 32];
const CLIENT_EPH: [u8; 32] = [3; 32];
const SERVER_EPH: [u8; 32] = [4; 32];

/// Long-term configuration, set up once like a real server's.
pub struct Fixture {
    client: Arc<HandshakeConfig>,
    server: Arc<HandshakeConfig>,
    server_key: PublicKey,
}

impl Default for Fixture {
    fn default() -> Self {
        let server = Keypair::from_seed(SERVER_SEED);
        Fixture {
            server_key: server.public(),
            client: Arc::new(HandshakeConfig::new(Keypair::from_seed(CLIENT_SEED))),
            server: Arc::new(HandshakeConfig::new(server)),
        }
    }
}

/// Both state machines, from construction to both sides established.
/// Returns (client keys, server keys).
pub fn plugboard(fixture: &Fixture) -> (SessionKeys, SessionKeys) {
    let now = Instant::ZERO;
    let mut client = ClientHandshake::with_ephemeral(
        fixture.client.clone(),
        fixture.server_key,
        CLIENT_EPH,
        now,
    )
    .expect("valid server key");
    let mut server = ServerHandshake::with_ephemeral(fixture.server.clone(), SERVER_EPH, now);
    let mut client_done = None;
    let mut server_done = None;
    while client_done.is_none() || server_done.is_none() {
        if let Some(bytes) = client.poll_transmit() {
            server.handle_input(now, &bytes).expect("honest client");
        }
        while let Some(event) = server.poll_event() {
            match event {
                Event::Authorize(_) => server.authorize(true).expect("pending"),
                Event::Established(done) => server_done = Some(done.keys),
            }
        }
        if let Some(bytes) = server.poll_transmit() {
            client.handle_input(now, &bytes).expect("honest server");
        }
        if let Some(Event::Established(done)) = client.poll_event() {
            client_done = Some(done.keys);
        }
    }
    (client_done.unwrap(), server_done.unwrap())
}

/// The long-term keys as the primitives take them, set up once.
pub struct PrimitiveFixture {
    network: [u8; 32],
    client: SigningKey,
    client_curve: StaticSecret,
    server: SigningKey,
    server_curve: StaticSecret,
}

impl Default for PrimitiveFixture {
    fn default() -> Self {
        let client = SigningKey::from_bytes(&CLIENT_SEED);
        let server = SigningKey::from_bytes(&SERVER_SEED);
        PrimitiveFixture {
            network: *plugboard_core::NetworkKey::SSB_MAIN.as_bytes(),
            client_curve: StaticSecret::from(client.to_scalar_bytes()),
            server_curve: StaticSecret::from(server.to_scalar_bytes()),
            client,
            server,
        }
    }
}

fn auth(key: &[u8; 32], message: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha512> as Mac>::new_from_slice(key).unwrap();
    mac.update(message);
    mac.finalize().into_bytes()[..32].try_into().unwrap()
}

fn auth_verify(key: &[u8; 32], message: &[u8], tag: &[u8]) -> bool {
    let mut mac = <Hmac<Sha512> as Mac>::new_from_slice(key).unwrap();
    mac.update(message);
    mac.verify_truncated_left(tag).is_ok()
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part);
    }
    hash.finalize().into()
}

fn dh(secret: &StaticSecret, public: [u8; 32]) -> [u8; 32] {
    let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(public));
    assert!(shared.was_contributory());
    shared.to_bytes()
}

/// libsodium's `crypto_sign_ed25519_pk_to_curve25519`, with its checks, and
/// the verifying key `crypto_sign_verify_detached` decodes.
fn convert(public: &[u8; 32]) -> (VerifyingKey, [u8; 32]) {
    let point = CompressedEdwardsY(*public).decompress().unwrap();
    assert!(!point.is_small_order() && point.is_torsion_free());
    (VerifyingKey::from(point), point.to_montgomery().to_bytes())
}

fn seal(key: &[u8; 32], buffer: &mut [u8]) -> [u8; 16] {
    XSalsa20Poly1305::new(key.into())
        .encrypt_in_place_detached(&[0; 24].into(), b"", buffer)
        .unwrap()
        .into()
}

fn open(key: &[u8; 32], buffer: &mut [u8], tag: [u8; 16]) {
    XSalsa20Poly1305::new(key.into())
        .decrypt_in_place_detached(&[0; 24].into(), b"", buffer, &tag.into())
        .unwrap()
}

/// Every primitive operation of one handshake, both sides, in protocol
/// order, straight-line: 2 ephemeral keypairs, 6 X25519, 2 key conversions,
/// 2 signs, 2 verifies, 4 HMACs, 12 SHA-256, 4 small secretboxes. Returns the
/// client's sending key, which must equal the state machines'.
pub fn primitives(f: &PrimitiveFixture) -> [u8; 32] {
    let n = &f.network;
    let client_public = f.client.verifying_key().to_bytes();
    let server_public = f.server.verifying_key().to_bytes();

    // 1: client hello.
    let a = StaticSecret::from(black_box(CLIENT_EPH));
    let a_pub = x25519_dalek::PublicKey::from(&a).to_bytes();
    let (server_verifying, server_curve) = convert(&server_public);
    let client_mac = auth(n, &a_pub);
    // 2: server hello.
    let b = StaticSecret::from(black_box(SERVER_EPH));
    assert!(auth_verify(n, &a_pub, &client_mac));
    let b_pub = x25519_dalek::PublicKey::from(&b).to_bytes();
    let server_mac = auth(n, &b_pub);
    let ab_at_server = dh(&b, a_pub);
    // 3: client auth.
    assert!(auth_verify(n, &b_pub, &server_mac));
    let ab = dh(&a, b_pub);
    let a_big_b = dh(&a, server_curve);
    let ab_hash = sha256(&[&ab]);
    let client_sig = f
        .client
        .sign(&[&n[..], &server_public, &ab_hash].concat())
        .to_bytes();
    let mut auth_box = [&client_sig[..], &client_public].concat();
    let auth_tag = seal(&sha256(&[n, &ab, &a_big_b]), &mut auth_box);
    // 3 at the server.
    let a_big_b_at_server = dh(&f.server_curve, a_pub);
    open(
        &sha256(&[n, &ab_at_server, &a_big_b_at_server]),
        &mut auth_box,
        auth_tag,
    );
    let (client_verifying, client_curve) = convert(auth_box[64..].try_into().unwrap());
    let big_a_b_at_server = dh(&b, client_curve);
    let ab_hash_at_server = sha256(&[&ab_at_server]);
    let accept_key_at_server = sha256(&[n, &ab_at_server, &a_big_b_at_server, &big_a_b_at_server]);
    let signed = [&n[..], &server_public, &ab_hash_at_server].concat();
    let signature = Signature::from_bytes(auth_box[..64].try_into().unwrap());
    client_verifying.verify_strict(&signed, &signature).unwrap();
    // 4: server accept, and its session keys.
    let accepted = [&n[..], &auth_box[..64], &client_public, &ab_hash_at_server].concat();
    let mut accept_box = f.server.sign(&accepted).to_bytes();
    let accept_tag = seal(&accept_key_at_server, &mut accept_box);
    let shared_at_server = sha256(&[&accept_key_at_server]);
    black_box(sha256(&[&shared_at_server, &client_public]));
    black_box(sha256(&[&shared_at_server, &server_public]));
    // 4 at the client, and its session keys.
    let big_a_b = dh(&f.client_curve, b_pub);
    let accept_key = sha256(&[n, &ab, &a_big_b, &big_a_b]);
    open(&accept_key, &mut accept_box, accept_tag);
    let signed = [&n[..], &client_sig, &client_public, &ab_hash].concat();
    server_verifying
        .verify_strict(&signed, &Signature::from_bytes(&accept_box))
        .unwrap();
    let shared = sha256(&[&accept_key]);
    black_box(sha256(&[&shared, &client_public]));
    sha256(&[&shared, &server_public])
}

/// What one handshake costs the side that accepts it: the client's two
/// messages, made once, and the server's keys.
pub struct ServerPrimitiveFixture {
    keys: PrimitiveFixture,
    client_eph: [u8; 32],
    client_mac: [u8; 32],
    auth_box: [u8; 96],
    auth_tag: [u8; 16],
}

impl Default for ServerPrimitiveFixture {
    fn default() -> Self {
        let keys = PrimitiveFixture::default();
        let n = &keys.network;
        let server_public = keys.server.verifying_key().to_bytes();
        let a = StaticSecret::from(CLIENT_EPH);
        let a_pub = x25519_dalek::PublicKey::from(&a).to_bytes();
        let client_mac = auth(n, &a_pub);
        let b_pub = x25519_dalek::PublicKey::from(&StaticSecret::from(SERVER_EPH)).to_bytes();
        let ab = dh(&a, b_pub);
        let a_big_b = dh(&a, convert(&server_public).1);
        let signed = [&n[..], &server_public, &sha256(&[&ab])].concat();
        let client_sig = keys.client.sign(&signed).to_bytes();
        let client_public = keys.client.verifying_key().to_bytes();
        let mut auth_box = [0u8; 96];
        auth_box[..64].copy_from_slice(&client_sig);
        auth_box[64..].copy_from_slice(&client_public);
        let auth_tag = seal(&sha256(&[n, &ab, &a_big_b]), &mut auth_box);
        ServerPrimitiveFixture {
            keys,
            client_eph: a_pub,
            client_mac,
            auth_box,
            auth_tag,
        }
    }
}

/// The server's half of [`primitives`], in protocol order: 1 ephemeral
/// keypair, 3 X25519, 1 key conversion, 1 sign, 1 verify, 2 HMACs, 6
/// SHA-256, 2 small secretboxes (an open and a seal). Returns the server's
/// receiving key, which must equal its state machine's.
pub fn server_primitives(f: &ServerPrimitiveFixture) -> [u8; 32] {
    let k = &f.keys;
    let n = &k.network;
    let server_public = k.server.verifying_key().to_bytes();
    // 1 arrives: the client's hello.
    let a_pub = black_box(f.client_eph);
    assert!(auth_verify(n, &a_pub, &f.client_mac));
    // 2: the server's hello.
    let b = StaticSecret::from(black_box(SERVER_EPH));
    let b_pub = x25519_dalek::PublicKey::from(&b).to_bytes();
    black_box(auth(n, &b_pub));
    let ab = dh(&b, a_pub);
    // 3 arrives: the client's authentication.
    let a_big_b = dh(&k.server_curve, a_pub);
    let mut auth_box = f.auth_box;
    open(&sha256(&[n, &ab, &a_big_b]), &mut auth_box, f.auth_tag);
    let client_public: [u8; 32] = auth_box[64..].try_into().unwrap();
    let (client_verifying, client_curve) = convert(&client_public);
    let big_a_b = dh(&b, client_curve);
    let ab_hash = sha256(&[&ab]);
    let accept_key = sha256(&[n, &ab, &a_big_b, &big_a_b]);
    let signed = [&n[..], &server_public, &ab_hash].concat();
    let signature = Signature::from_bytes(auth_box[..64].try_into().unwrap());
    client_verifying.verify_strict(&signed, &signature).unwrap();
    // 4: the server's accept, and its session keys.
    let accepted = [&n[..], &auth_box[..64], &client_public, &ab_hash].concat();
    let mut accept_box = k.server.sign(&accepted).to_bytes();
    black_box(seal(&accept_key, &mut accept_box));
    let shared = sha256(&[&accept_key]);
    black_box(sha256(&[&shared, &client_public]));
    sha256(&[&shared, &server_public])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_of_the_comparison_compute_the_same_handshake() {
        let (client, server) = plugboard(&Fixture::default());
        assert_eq!(client.encrypt_key, server.decrypt_key);
        assert_eq!(primitives(&PrimitiveFixture::default()), client.encrypt_key);
    }

    #[test]
    fn the_server_half_computes_the_servers_keys() {
        let (_, server) = plugboard(&Fixture::default());
        let fixture = ServerPrimitiveFixture::default();
        assert_eq!(server_primitives(&fixture), server.decrypt_key);
    }
}
