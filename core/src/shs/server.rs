//! The listening side of shs1: learns the client's key in message 3.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rand_core::CryptoRngCore;
use x25519_dalek::StaticSecret;

use super::crypto::{self, LongTermKey, Secret};
use super::exchange::Exchange;
use super::{
    hello, read_hello, Event, HandshakeConfig, HandshakeError, KeySchedule, Phase, MAX_EARLY_DATA,
};
use crate::keys::PublicKey;
use crate::time::Instant;

/// shs1 as the server.
pub struct ServerHandshake {
    config: Arc<HandshakeConfig>,
    ephemeral: StaticSecret,
    state: State,
    io: Exchange,
}

enum State {
    AwaitClientHello,
    AwaitClientAuth(Box<AwaitingAuth>),
    Authorizing(Box<Authorizing>),
    Done,
    Failed,
}

/// What message 3 is checked against.
struct AwaitingAuth {
    client_hello_mac: [u8; 32],
    server_hello_mac: [u8; 32],
    client_ephemeral: [u8; 32],
    eph_eph: Secret,
}

/// A client that proved its key, waiting for the owner's verdict.
struct Authorizing {
    client: PublicKey,
    client_signature: [u8; 64],
    client_hello_mac: [u8; 32],
    server_hello_mac: [u8; 32],
    schedule: KeySchedule,
}

impl ServerHandshake {
    /// Starts a handshake for a connection just accepted, with a fresh
    /// ephemeral key from `rng`. Sends nothing until the client's hello checks out.
    pub fn new(config: Arc<HandshakeConfig>, rng: &mut impl CryptoRngCore, now: Instant) -> Self {
        let mut ephemeral = [0u8; 32];
        rng.fill_bytes(&mut ephemeral);
        Self::with_ephemeral(config, ephemeral, now)
    }

    /// As [`ServerHandshake::new`], with a given ephemeral X25519 secret (to
    /// replay a recorded handshake).
    pub fn with_ephemeral(config: Arc<HandshakeConfig>, ephemeral: [u8; 32], now: Instant) -> Self {
        ServerHandshake {
            io: Exchange::new(now + config.timeout),
            config,
            ephemeral: StaticSecret::from(ephemeral),
            state: State::AwaitClientHello,
        }
    }

    /// Takes bytes from the client.
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

    /// The client closed the connection.
    pub fn handle_eof(&mut self) -> Result<(), HandshakeError> {
        let Some(phase) = self.phase() else {
            return Err(HandshakeError::Finished);
        };
        let error = self.io.truncated(phase);
        self.fail();
        Err(error)
    }

    /// The owner's verdict on the key announced by [`Event::Authorize`].
    /// Accepting sends message 4 and establishes the session; refusing ends
    /// the handshake with [`HandshakeError::Unauthorized`] and sends nothing.
    pub fn authorize(&mut self, accept: bool) -> Result<(), HandshakeError> {
        let state = std::mem::replace(&mut self.state, State::Failed);
        let State::Authorizing(pending) = state else {
            self.state = state;
            return Err(match self.state {
                State::Done | State::Failed => HandshakeError::Finished,
                _ => HandshakeError::NotAuthorizing,
            });
        };
        if !accept {
            self.fail();
            return Err(HandshakeError::Unauthorized(pending.client));
        }

        let network = &self.config.network_key;
        let keypair = &self.config.keypair;
        let mut signed = [0u8; 160];
        signed[..32].copy_from_slice(network.as_bytes());
        signed[32..96].copy_from_slice(&pending.client_signature);
        signed[96..128].copy_from_slice(pending.client.as_bytes());
        signed[128..].copy_from_slice(&pending.schedule.ab_hash[..]);
        let mut accept_message = [0u8; 80];
        crypto::seal(
            &self.config.crypto,
            &pending.schedule.accept_key,
            &keypair.sign(&signed),
            &mut accept_message,
        );
        self.io.send(&accept_message);

        let keys = pending.schedule.session_keys(
            &keypair.public(),
            &pending.client,
            &pending.server_hello_mac,
            &pending.client_hello_mac,
        );
        self.io
            .establish(pending.client, keys, self.config.crypto.clone());
        self.state = State::Done;
        Ok(())
    }

    /// Bytes to send to the client, if any.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.io.poll_transmit()
    }

    /// Whether [`ServerHandshake::poll_transmit`] has something.
    pub fn has_output(&self) -> bool {
        self.io.has_output()
    }

    /// The next thing to tell the owner: [`Event::Authorize`], then [`Event::Established`].
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

    /// What is being waited for, or `None` once the handshake is over.
    pub fn phase(&self) -> Option<Phase> {
        match self.state {
            State::AwaitClientHello => Some(Phase::ClientHello),
            State::AwaitClientAuth(_) => Some(Phase::ClientAuth),
            State::Authorizing(_) => Some(Phase::Authorization),
            State::Done | State::Failed => None,
        }
    }

    fn fail(&mut self) {
        self.state = State::Failed;
        self.io.withdraw();
    }

    fn advance(&mut self) -> Result<(), HandshakeError> {
        loop {
            match self.phase() {
                Some(Phase::Authorization) => {
                    return match self.io.inbox.len() > MAX_EARLY_DATA {
                        true => Err(HandshakeError::TooMuchEarlyData),
                        false => Ok(()),
                    };
                }
                Some(phase) => match self.io.next_message(phase) {
                    Some(message) if phase == Phase::ClientHello => {
                        self.on_client_hello(&message)?
                    }
                    Some(message) => self.on_client_auth(message)?,
                    None => return Ok(()),
                },
                None => return Ok(()),
            }
        }
    }

    /// Message 1 in, message 2 out.
    fn on_client_hello(&mut self, message: &[u8]) -> Result<(), HandshakeError> {
        let network = &self.config.network_key;
        let (client_hello_mac, client_ephemeral) = read_hello(network, message)?;
        let eph_eph = crypto::dh(&self.ephemeral, &client_ephemeral)?;
        let server_hello = hello(
            network,
            x25519_dalek::PublicKey::from(&self.ephemeral).as_bytes(),
        );
        self.io.send(&server_hello);
        self.state = State::AwaitClientAuth(Box::new(AwaitingAuth {
            client_hello_mac,
            server_hello_mac: server_hello[..32]
                .try_into()
                .expect("hello starts with its MAC"),
            client_ephemeral,
            eph_eph,
        }));
        Ok(())
    }

    /// Message 3 in: the client proves its key.
    fn on_client_auth(&mut self, mut message: BytesMut) -> Result<(), HandshakeError> {
        let State::AwaitClientAuth(waiting) = &self.state else {
            unreachable!("called only in AwaitClientAuth");
        };
        let network = &self.config.network_key;
        let keypair = &self.config.keypair;
        let eph_server = crypto::dh(keypair.curve_secret(), &waiting.client_ephemeral)?;
        let auth_key = KeySchedule::auth_key(network, &waiting.eph_eph, &eph_server);
        if !crypto::open(&self.config.crypto, &auth_key, &mut message) {
            return Err(HandshakeError::ClientAuthUnreadable);
        }
        let client_signature: [u8; 64] = message[16..80].try_into().expect("sized");
        let client = PublicKey(message[80..112].try_into().expect("sized"));
        let client_key =
            LongTermKey::validate(client.as_bytes()).map_err(HandshakeError::InvalidClientKey)?;
        let client_eph = crypto::dh(&self.ephemeral, &client_key.curve)?;
        let schedule = KeySchedule {
            ab_hash: crypto::sha256(&[&waiting.eph_eph[..]]),
            accept_key: KeySchedule::accept_key(
                network,
                &waiting.eph_eph,
                &eph_server,
                &client_eph,
            ),
        };

        let mut signed = [0u8; 96];
        signed[..32].copy_from_slice(network.as_bytes());
        signed[32..64].copy_from_slice(keypair.public().as_bytes());
        signed[64..].copy_from_slice(&schedule.ab_hash[..]);
        if !client_key.verify(&signed, &client_signature) {
            return Err(HandshakeError::BadClientSignature);
        }

        self.state = State::Authorizing(Box::new(Authorizing {
            client,
            client_signature,
            client_hello_mac: waiting.client_hello_mac,
            server_hello_mac: waiting.server_hello_mac,
            schedule,
        }));
        self.io.emit(Event::Authorize(client));
        Ok(())
    }
}
