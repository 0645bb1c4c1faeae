//! The dialing side of shs1: knows the server's key in advance.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rand_core::CryptoRngCore;
use x25519_dalek::StaticSecret;

use super::crypto::{self, LongTermKey, Secret};
use super::exchange::Exchange;
use super::{hello, read_hello, Event, HandshakeConfig, HandshakeError, KeySchedule, Phase};
use crate::keys::PublicKey;
use crate::time::Instant;

/// shs1 as the client.
pub struct ClientHandshake {
    config: Arc<HandshakeConfig>,
    server: PublicKey,
    server_key: LongTermKey,
    ephemeral: StaticSecret,
    hello_mac: [u8; 32],
    state: State,
    io: Exchange,
}

enum State {
    AwaitServerHello,
    AwaitServerAccept(Box<AwaitingAccept>),
    Done,
    Failed,
}

/// What message 4 is checked against.
struct AwaitingAccept {
    server_hello_mac: [u8; 32],
    server_ephemeral: [u8; 32],
    eph_eph: Secret,
    eph_server: Secret,
    ab_hash: Secret,
    client_signature: [u8; 64],
}

impl ClientHandshake {
    /// Starts a handshake with the server that holds `server`, with a fresh
    /// ephemeral key from `rng`. Message 1 is ready to send at once.
    pub fn new(
        config: Arc<HandshakeConfig>,
        server: PublicKey,
        rng: &mut impl CryptoRngCore,
        now: Instant,
    ) -> Result<Self, HandshakeError> {
        let mut ephemeral = [0u8; 32];
        rng.fill_bytes(&mut ephemeral);
        Self::with_ephemeral(config, server, ephemeral, now)
    }

    /// As [`ClientHandshake::new`], with a given ephemeral X25519 secret (to
    /// replay a recorded handshake).
    pub fn with_ephemeral(
        config: Arc<HandshakeConfig>,
        server: PublicKey,
        ephemeral: [u8; 32],
        now: Instant,
    ) -> Result<Self, HandshakeError> {
        let server_key =
            LongTermKey::validate(server.as_bytes()).map_err(HandshakeError::InvalidServerKey)?;
        let ephemeral = StaticSecret::from(ephemeral);
        let hello = hello(
            &config.network_key,
            x25519_dalek::PublicKey::from(&ephemeral).as_bytes(),
        );
        let mut io = Exchange::new(now + config.timeout);
        io.send(&hello);
        Ok(ClientHandshake {
            io,
            config,
            server,
            server_key,
            ephemeral,
            hello_mac: hello[..32].try_into().expect("hello starts with its MAC"),
            state: State::AwaitServerHello,
        })
    }

    /// Takes bytes from the server.
    pub fn handle_input(&mut self, _now: Instant, input: &[u8]) -> Result<(), HandshakeError> {
        if matches!(self.state, State::Done | State::Failed) {
            return Err(HandshakeError::Finished);
        }
        self.io.inbox.extend_from_slice(input);
        let result = self.advance();
        if result.is_err() {
            self.fail();
        }
        result
    }

    /// The server closed the connection.
    pub fn handle_eof(&mut self) -> Result<(), HandshakeError> {
        let Some(phase) = self.phase() else {
            return Err(HandshakeError::Finished);
        };
        let error = self.io.truncated(phase);
        self.fail();
        Err(error)
    }

    /// Bytes to send to the server, if any.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.io.poll_transmit()
    }

    /// The next thing to tell the owner: only ever [`Event::Established`].
    pub fn poll_event(&mut self) -> Option<Event> {
        self.io.poll_event()
    }

    /// When the handshake gives up, while it is in progress.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.io.poll_timeout(self.phase())
    }

    /// Fails the handshake if its deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), HandshakeError> {
        match self.io.expired(self.phase(), now) {
            Some(error) => {
                self.fail();
                Err(error)
            }
            None => Ok(()),
        }
    }

    /// The message being waited for, or `None` once the handshake is over.
    pub fn phase(&self) -> Option<Phase> {
        match self.state {
            State::AwaitServerHello => Some(Phase::ServerHello),
            State::AwaitServerAccept(_) => Some(Phase::ServerAccept),
            State::Done | State::Failed => None,
        }
    }

    fn fail(&mut self) {
        self.state = State::Failed;
        self.io.withdraw();
    }

    fn advance(&mut self) -> Result<(), HandshakeError> {
        loop {
            let Some(phase) = self.phase() else {
                return Ok(());
            };
            let Some(message) = self.io.next_message(phase) else {
                return Ok(());
            };
            match phase {
                Phase::ServerHello => self.on_server_hello(&message)?,
                _ => self.on_server_accept(message)?,
            }
        }
    }

    /// Message 2 in, message 3 out.
    fn on_server_hello(&mut self, message: &[u8]) -> Result<(), HandshakeError> {
        let network = &self.config.network_key;
        let (server_hello_mac, server_ephemeral) = read_hello(network, message)?;
        let eph_eph = crypto::dh(&self.ephemeral, &server_ephemeral)?;
        let eph_server = crypto::dh(&self.ephemeral, &self.server_key.curve)?;
        let ab_hash = crypto::sha256(&[&eph_eph[..]]);

        let mut signed = [0u8; 96];
        signed[..32].copy_from_slice(network.as_bytes());
        signed[32..64].copy_from_slice(self.server.as_bytes());
        signed[64..].copy_from_slice(&ab_hash[..]);
        let client_signature = self.config.keypair.sign(&signed);

        let mut plaintext = [0u8; 96];
        plaintext[..64].copy_from_slice(&client_signature);
        plaintext[64..].copy_from_slice(self.config.keypair.public().as_bytes());
        let mut auth = [0u8; 112];
        crypto::seal(
            &self.config.crypto,
            &KeySchedule::auth_key(network, &eph_eph, &eph_server),
            &plaintext,
            &mut auth,
        );
        self.io.send(&auth);

        self.state = State::AwaitServerAccept(Box::new(AwaitingAccept {
            server_hello_mac,
            server_ephemeral,
            eph_eph,
            eph_server,
            ab_hash,
            client_signature,
        }));
        Ok(())
    }

    /// Message 4 in: the server proves it holds the key we dialed.
    fn on_server_accept(&mut self, mut message: BytesMut) -> Result<(), HandshakeError> {
        let State::AwaitServerAccept(waiting) = &self.state else {
            unreachable!("called only in AwaitServerAccept");
        };
        let network = &self.config.network_key;
        let keypair = &self.config.keypair;
        let client_eph = crypto::dh(keypair.curve_secret(), &waiting.server_ephemeral)?;
        let schedule = KeySchedule {
            ab_hash: waiting.ab_hash.clone(),
            accept_key: KeySchedule::accept_key(
                network,
                &waiting.eph_eph,
                &waiting.eph_server,
                &client_eph,
            ),
        };
        if !crypto::open(&self.config.crypto, &schedule.accept_key, &mut message) {
            return Err(HandshakeError::ServerAcceptUnreadable);
        }
        let server_signature: &[u8; 64] = message[16..].try_into().expect("80 - 16 = 64");

        let local = keypair.public();
        let mut signed = [0u8; 160];
        signed[..32].copy_from_slice(network.as_bytes());
        signed[32..96].copy_from_slice(&waiting.client_signature);
        signed[96..128].copy_from_slice(local.as_bytes());
        signed[128..].copy_from_slice(&schedule.ab_hash[..]);
        if !self.server_key.verify(&signed, server_signature) {
            return Err(HandshakeError::BadServerSignature);
        }

        let keys = schedule.session_keys(
            &local,
            &self.server,
            &self.hello_mac,
            &waiting.server_hello_mac,
        );
        self.io
            .establish(self.server, keys, self.config.crypto.clone());
        self.state = State::Done;
        Ok(())
    }
}
