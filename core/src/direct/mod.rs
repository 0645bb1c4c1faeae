//! A direct channel over TCP (PROTOCOL.md §5.11), as one sans-IO state
//! machine for either end.
//!
//! ```text
//! dialer (opener A)                                listener (target B)
//!   shs1 as client, server key B  ◀═══════════▶  shs1 as server (owner authorizes A)
//!   box: token (32 bytes)          ──▶            (owner checks A's token)
//!                                  ◀──  box: 0x01
//!   box-stream both ways: the channel's bytes; a goodbye is a FIN
//! ```
//!
//! Drive it like the others: `handle_input` / `handle_eof` with what the
//! socket gave, then drain `poll_transmit` and `poll_event`; sleep until
//! `poll_timeout` (the handshake's deadline also covers the token), then
//! `handle_timeout`.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rand_core::CryptoRngCore;

use crate::boxstream::{self, BoxStreamError, Opener, Sealer};
use crate::keys::PublicKey;
use crate::shs::{self, ClientHandshake, HandshakeConfig, HandshakeError, ServerHandshake};
use crate::time::Instant;

/// The one-time token's length.
pub const TOKEN_LEN: usize = 32;
/// The listener's answer to a token it expected.
pub const ACCEPTED: u8 = 0x01;
/// Most bytes a listener keeps from a dialer that talks before it was
/// accepted (a well-behaved dialer sends nothing after the token until it
/// read the acceptance).
const MAX_EARLY_DATA: usize = 64 * 1024;

/// Why a direct connection failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectError {
    /// The handshake failed (wrong key, wrong network, refused dialer...).
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    /// The box-stream failed.
    #[error("box-stream: {0}")]
    BoxStream(#[from] BoxStreamError),
    /// Dialer: the listener closed instead of accepting the token.
    #[error("the peer refused the token")]
    Refused,
    /// Listener: our owner refused the token.
    #[error("the token was not expected from this key")]
    UnexpectedToken,
    /// Dialer: the listener answered something other than [`ACCEPTED`].
    #[error("the peer answered {0:#04x} instead of accepting")]
    BadAnswer(u8),
    /// Listener: the dialer closed before the channel was accepted, or sent
    /// too much too early.
    #[error("the dialer {0}")]
    Dialer(&'static str),
    /// The handshake and the token took longer than the deadline.
    #[error("the direct connection was not accepted in time")]
    Timeout,
    /// The owner called something the current stage does not allow.
    #[error("{0}")]
    Misuse(&'static str),
}

/// What a direct connection reports to its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectEvent {
    /// Listener: the dialer proved it holds this key. Call
    /// [`DirectConn::authorize`].
    Authorize(PublicKey),
    /// Listener: the dialer presented this token. Call
    /// [`DirectConn::answer_token`].
    Token {
        /// The dialer's key.
        peer: PublicKey,
        /// What it presented.
        token: [u8; TOKEN_LEN],
    },
    /// The channel is up: bytes flow both ways.
    Established {
        /// The other end's key.
        peer: PublicKey,
    },
    /// The channel's bytes, in order.
    Data(Bytes),
    /// The peer will send nothing more.
    Fin,
    /// The connection failed; the last event. Write what `poll_transmit`
    /// still has, then close the socket.
    Failed(DirectError),
}

enum Handshake {
    Client(Box<ClientHandshake>),
    Server(Box<ServerHandshake>),
}

enum Stage {
    Handshake(Handshake),
    /// Listener: the token's bytes so far.
    AwaitToken(BytesMut),
    /// Listener: the owner decides; what the dialer sent early waits here.
    AwaitAnswer(BytesMut),
    /// Dialer: the token is sent; the acceptance byte is awaited.
    AwaitAcceptance,
    Open,
    Done,
}

/// One end of a direct connection.
pub struct DirectConn {
    stage: Stage,
    /// The dialer's token, until it is sealed.
    token: Option<[u8; TOKEN_LEN]>,
    peer: Option<PublicKey>,
    streams: Option<(Sealer, Opener)>,
    deadline: Instant,
    out: BytesMut,
    events: VecDeque<DirectEvent>,
    peer_finished: bool,
}

impl DirectConn {
    /// The opener's end: dial the target, whose key is `server`, and present
    /// `token` after the handshake.
    pub fn dial(
        config: Arc<HandshakeConfig>,
        server: PublicKey,
        token: [u8; TOKEN_LEN],
        rng: &mut impl CryptoRngCore,
        now: Instant,
    ) -> Result<Self, DirectError> {
        let deadline = now + config.timeout;
        let client = ClientHandshake::new(config, server, rng, now)?;
        let mut conn = Self::new(Handshake::Client(Box::new(client)), deadline);
        conn.token = Some(token);
        conn.drive_handshake();
        Ok(conn)
    }

    /// The target's end, for a connection its direct listener accepted.
    pub fn listen(
        config: Arc<HandshakeConfig>,
        rng: &mut impl CryptoRngCore,
        now: Instant,
    ) -> Self {
        let deadline = now + config.timeout;
        let server = ServerHandshake::new(config, rng, now);
        Self::new(Handshake::Server(Box::new(server)), deadline)
    }

    fn new(handshake: Handshake, deadline: Instant) -> Self {
        DirectConn {
            stage: Stage::Handshake(handshake),
            token: None,
            peer: None,
            streams: None,
            deadline,
            out: BytesMut::new(),
            events: VecDeque::new(),
            peer_finished: false,
        }
    }

    /// The other end's key, once the handshake proved it.
    pub fn peer(&self) -> Option<PublicKey> {
        self.peer
    }

    /// Whether the channel is up (bytes may be sent).
    pub fn is_open(&self) -> bool {
        matches!(self.stage, Stage::Open)
    }

    /// Whether the connection failed.
    pub fn is_failed(&self) -> bool {
        matches!(self.stage, Stage::Done)
    }

    // ── the face ──────────────────────────────────────────────────────

    /// Bytes from the socket.
    pub fn handle_input(&mut self, now: Instant, input: &[u8]) -> Result<(), DirectError> {
        let result = match &mut self.stage {
            Stage::Done => return Ok(()),
            Stage::Handshake(handshake) => {
                let result = match handshake {
                    Handshake::Client(c) => c.handle_input(now, input),
                    Handshake::Server(s) => s.handle_input(now, input),
                };
                result
                    .map_err(DirectError::from)
                    .map(|()| self.drive_handshake())
            }
            _ => self.open_input(input),
        };
        self.check(result)
    }

    /// The socket reached its end.
    pub fn handle_eof(&mut self) -> Result<(), DirectError> {
        let result = match &mut self.stage {
            Stage::Done => return Ok(()),
            Stage::Handshake(handshake) => match handshake {
                Handshake::Client(c) => c.handle_eof(),
                Handshake::Server(s) => s.handle_eof(),
            }
            .map_err(DirectError::from),
            Stage::AwaitAcceptance => Err(DirectError::Refused),
            Stage::AwaitToken(_) | Stage::AwaitAnswer(_) => {
                Err(DirectError::Dialer("closed before it was accepted"))
            }
            Stage::Open => match &mut self.streams {
                Some((_, opener)) => opener.handle_eof().map_err(DirectError::from),
                None => Ok(()),
            },
        };
        self.check(result)
    }

    /// Bytes to write to the socket.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        (!self.out.is_empty()).then(|| self.out.split().freeze())
    }

    /// Events the owner has not taken yet: a runtime reads no more while
    /// there are (the peer then waits on TCP).
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// The next thing to tell the owner.
    pub fn poll_event(&mut self) -> Option<DirectEvent> {
        self.events.pop_front()
    }

    /// Until the channel is up, the moment it gives up.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.stage {
            Stage::Open | Stage::Done => None,
            _ => Some(self.deadline),
        }
    }

    /// Fails the connection if it is not up by its deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.deadline && !matches!(self.stage, Stage::Open | Stage::Done) {
            self.fail(DirectError::Timeout);
        }
    }

    // ── the owner's answers ───────────────────────────────────────────

    /// Listener: whether the dialer's key (from [`DirectEvent::Authorize`])
    /// is one we were told to expect. A refused dialer gets nothing more.
    pub fn authorize(&mut self, accept: bool) -> Result<(), DirectError> {
        let result = match &mut self.stage {
            Stage::Handshake(handshake) => match handshake {
                Handshake::Server(s) => s
                    .authorize(accept)
                    .map_err(DirectError::from)
                    .map(|()| self.drive_handshake()),
                Handshake::Client(_) => Err(DirectError::Misuse("a dialer authorizes nobody")),
            },
            _ => Err(DirectError::Misuse("not authorizing")),
        };
        self.check(result)
    }

    /// Listener: whether the token (from [`DirectEvent::Token`]) is the one
    /// the broker announced for this dialer. A refused dialer is told
    /// goodbye; an accepted one gets [`ACCEPTED`] and the channel is up.
    pub fn answer_token(&mut self, accept: bool) -> Result<(), DirectError> {
        let Stage::AwaitAnswer(early) = &mut self.stage else {
            return Err(DirectError::Misuse("no token is waiting for an answer"));
        };
        let early = std::mem::take(early).freeze();
        let Some((sealer, _)) = &mut self.streams else {
            return Err(DirectError::Misuse("no box-stream"));
        };
        if !accept {
            let _ = sealer.goodbye(&mut self.out);
            self.fail(DirectError::UnexpectedToken);
            return Err(DirectError::UnexpectedToken);
        }
        sealer.seal(&[ACCEPTED], &mut self.out)?;
        self.stage = Stage::Open;
        self.established();
        if !early.is_empty() {
            self.events.push_back(DirectEvent::Data(early));
        }
        Ok(())
    }

    // ── the channel's bytes ───────────────────────────────────────────

    /// Seals `data` for the peer.
    pub fn send(&mut self, data: &[u8]) -> Result<(), DirectError> {
        match (&self.stage, &mut self.streams) {
            (Stage::Open, Some((sealer, _))) => Ok(sealer.seal(data, &mut self.out)?),
            _ => Err(DirectError::Misuse("the direct channel is not open")),
        }
    }

    /// Sends nothing more (box-stream's goodbye). The socket may close once
    /// the peer's goodbye arrived too.
    pub fn finish(&mut self) -> Result<(), DirectError> {
        match (&self.stage, &mut self.streams) {
            (Stage::Open, Some((sealer, _))) if !sealer.said_goodbye() => {
                Ok(sealer.goodbye(&mut self.out)?)
            }
            (Stage::Open, _) => Ok(()),
            _ => Err(DirectError::Misuse("the direct channel is not open")),
        }
    }

    /// Whether both sides said goodbye: the socket can close.
    pub fn is_finished(&self) -> bool {
        self.peer_finished
            && self
                .streams
                .as_ref()
                .is_some_and(|(sealer, _)| sealer.said_goodbye())
    }

    // ── inside ────────────────────────────────────────────────────────

    fn check(&mut self, result: Result<(), DirectError>) -> Result<(), DirectError> {
        if let Err(e) = &result {
            self.fail(e.clone());
        }
        result
    }

    fn fail(&mut self, error: DirectError) {
        if !matches!(self.stage, Stage::Done) {
            self.stage = Stage::Done;
            self.events.push_back(DirectEvent::Failed(error));
        }
    }

    fn established(&mut self) {
        let peer = self.peer.expect("the handshake named the peer");
        self.events.push_back(DirectEvent::Established { peer });
    }

    /// Takes the handshake's output and events; moves on once established.
    fn drive_handshake(&mut self) {
        let Stage::Handshake(handshake) = &mut self.stage else {
            return;
        };
        let mut established = None;
        match handshake {
            Handshake::Client(c) => {
                while let Some(bytes) = c.poll_transmit() {
                    self.out.extend_from_slice(&bytes);
                }
                while let Some(event) = c.poll_event() {
                    if let shs::Event::Established(e) = event {
                        established = Some(e);
                    }
                }
            }
            Handshake::Server(s) => {
                while let Some(bytes) = s.poll_transmit() {
                    self.out.extend_from_slice(&bytes);
                }
                while let Some(event) = s.poll_event() {
                    match event {
                        shs::Event::Authorize(key) => {
                            self.events.push_back(DirectEvent::Authorize(key))
                        }
                        shs::Event::Established(e) => established = Some(e),
                    }
                }
            }
        }
        let Some(established) = established else {
            return;
        };
        self.peer = Some(established.peer);
        let (mut sealer, opener) = established.boxstream();
        match self.token.take() {
            Some(token) => {
                sealer
                    .seal(&token, &mut self.out)
                    .expect("a fresh sealer seals");
                self.stage = Stage::AwaitAcceptance;
            }
            None => self.stage = Stage::AwaitToken(BytesMut::new()),
        }
        self.streams = Some((sealer, opener));
        if !established.early_data.is_empty() {
            let early = established.early_data;
            if let Err(e) = self.open_input(&early) {
                self.fail(e);
            }
        }
    }

    /// Box-stream input after the handshake.
    fn open_input(&mut self, input: &[u8]) -> Result<(), DirectError> {
        let Some((_, opener)) = &mut self.streams else {
            return Err(DirectError::Misuse("no box-stream"));
        };
        opener.handle_input(input)?;
        while let Some(event) = self.streams.as_mut().and_then(|(_, o)| o.poll_event()) {
            match event {
                boxstream::Event::Data(bytes) => self.plaintext(bytes)?,
                boxstream::Event::Goodbye => self.goodbye()?,
            }
        }
        Ok(())
    }

    fn plaintext(&mut self, mut bytes: Bytes) -> Result<(), DirectError> {
        match &mut self.stage {
            Stage::AwaitToken(got) => {
                let take = (TOKEN_LEN - got.len()).min(bytes.len());
                got.extend_from_slice(&bytes.split_to(take));
                if got.len() == TOKEN_LEN {
                    let token: [u8; TOKEN_LEN] = got[..].try_into().expect("32 bytes");
                    let peer = self.peer.expect("the handshake named the peer");
                    self.stage = Stage::AwaitAnswer(BytesMut::from(&bytes[..]));
                    self.events.push_back(DirectEvent::Token { peer, token });
                }
                Ok(())
            }
            Stage::AwaitAnswer(early) => {
                if early.len() + bytes.len() > MAX_EARLY_DATA {
                    return Err(DirectError::Dialer("sent too much before it was accepted"));
                }
                early.extend_from_slice(&bytes);
                Ok(())
            }
            Stage::AwaitAcceptance if bytes.is_empty() => Ok(()),
            Stage::AwaitAcceptance => {
                let answer = bytes.split_to(1)[0];
                if answer != ACCEPTED {
                    return Err(DirectError::BadAnswer(answer));
                }
                self.stage = Stage::Open;
                self.established();
                if !bytes.is_empty() {
                    self.events.push_back(DirectEvent::Data(bytes));
                }
                Ok(())
            }
            Stage::Open => {
                self.events.push_back(DirectEvent::Data(bytes));
                Ok(())
            }
            Stage::Handshake(_) | Stage::Done => Ok(()),
        }
    }

    fn goodbye(&mut self) -> Result<(), DirectError> {
        match self.stage {
            Stage::Open => {
                self.peer_finished = true;
                self.events.push_back(DirectEvent::Fin);
                Ok(())
            }
            Stage::AwaitAcceptance => Err(DirectError::Refused),
            _ => Err(DirectError::Dialer("said goodbye before it was accepted")),
        }
    }
}

#[cfg(test)]
mod tests;
