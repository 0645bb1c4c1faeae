//! One connection's own half of the broker: its handshake and its
//! transport (box-stream or plain). Everything here is per byte or crypto,
//! and touches nothing another connection owns, so a runtime can drive
//! each link on its own thread and take the [`Hub`](super::Hub) only for
//! what its events carry: the plaintext mux bytes, the admission of a key,
//! the end.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rand_core::CryptoRngCore;

use crate::boxstream::BoxStreamError;
use crate::keys::PublicKey;
use crate::shs::{self, HandshakeConfig, HandshakeError, ServerHandshake};
use crate::time::Instant;
use crate::wire::BoxedIo;

/// A connection's handshake and transport, as the broker's server side.
pub struct Link {
    stage: Stage,
    events: VecDeque<LinkEvent>,
}

enum Stage {
    /// shs1 in progress; `boxed` says what the transport will be.
    Handshake {
        shs: Box<ServerHandshake>,
        boxed: bool,
        first_message_seen: bool,
    },
    /// Past the handshake. `tail` is message 4, until it is written.
    Plain { tail: Option<Bytes> },
    Boxed {
        io: Box<BoxedIo>,
        tail: Option<Bytes>,
    },
    /// The handshake failed or the box-stream broke: nothing more goes out.
    Broken,
}

/// What a link tells its owner, who carries it to the hub.
#[derive(Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// The client's first message checked out: the whole handshake's
    /// deadline holds from now on, not the first message's.
    FirstMessage,
    /// The client proved `key`: ask the hub, then [`Link::authorize`].
    Authorize(PublicKey),
    /// The handshake is over; the mux starts.
    Established,
    /// Plaintext mux bytes, in order.
    Input(BytesMut),
    /// The peer ended the connection or broke it. The last event.
    Ended(LinkEnd),
}

/// How a link's peer ended it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEnd {
    /// The handshake failed.
    Handshake(HandshakeError),
    /// The peer said box-stream's goodbye.
    Goodbye,
    /// The box-stream was forged, cut, or went on after goodbye.
    BoxStream(BoxStreamError),
}

impl Link {
    /// A link for a connection just accepted: its handshake starts, with an
    /// ephemeral key from `rng`. `boxed`: box-stream follows the handshake
    /// (TCP, or unix with box-stream asked for).
    pub fn new(
        config: Arc<HandshakeConfig>,
        rng: &mut impl CryptoRngCore,
        now: Instant,
        boxed: bool,
    ) -> Self {
        Link {
            stage: Stage::Handshake {
                shs: Box::new(ServerHandshake::new(config, rng, now)),
                boxed,
                first_message_seen: false,
            },
            events: VecDeque::new(),
        }
    }

    /// Bytes from the socket. Runs the handshake's crypto or opens boxes;
    /// what comes of it is in [`Link::poll_event`].
    pub fn handle_input(&mut self, now: Instant, input: BytesMut) {
        match &mut self.stage {
            Stage::Handshake {
                shs,
                first_message_seen,
                ..
            } => {
                if let Err(e) = shs.handle_input(now, &input) {
                    return self.break_with(LinkEnd::Handshake(e));
                }
                if !*first_message_seen && shs.phase() != Some(shs::Phase::ClientHello) {
                    *first_message_seen = true;
                    self.events.push_back(LinkEvent::FirstMessage);
                }
            }
            Stage::Plain { .. } => {
                if !input.is_empty() {
                    self.events.push_back(LinkEvent::Input(input));
                }
            }
            Stage::Boxed { .. } => self.open(&input),
            Stage::Broken => {}
        }
    }

    /// The hub's verdict on the key [`LinkEvent::Authorize`] named: accepted,
    /// message 4 is made (and [`LinkEvent::Established`] follows); refused,
    /// the handshake ends with nothing more sent.
    pub fn authorize(&mut self, accept: bool) {
        if let Stage::Handshake { shs, .. } = &mut self.stage {
            if shs.authorize(accept).is_err() || !accept {
                self.stage = Stage::Broken;
            }
        }
    }

    /// The socket ended: why, for the log (a box-stream that ends without
    /// its goodbye was cut).
    pub fn handle_eof(&mut self) -> String {
        match &mut self.stage {
            Stage::Handshake { shs, .. } => match shs.handle_eof() {
                Err(e) => e.to_string(),
                Ok(()) => "closed during the handshake".into(),
            },
            Stage::Boxed { io, .. } => match io.handle_eof() {
                Ok(()) => "closed by the peer".into(),
                Err(e) => format!("closed by the peer: {e}"),
            },
            Stage::Plain { .. } | Stage::Broken => "closed by the peer".into(),
        }
    }

    /// What happened, in order.
    pub fn poll_event(&mut self) -> Option<LinkEvent> {
        if let Some(event) = self.events.pop_front() {
            return Some(event);
        }
        let Stage::Handshake { shs, boxed, .. } = &mut self.stage else {
            return None;
        };
        match shs.poll_event()? {
            shs::Event::Authorize(key) => Some(LinkEvent::Authorize(key)),
            shs::Event::Established(established) => {
                let tail = shs.poll_transmit();
                self.stage = match boxed {
                    true => Stage::Boxed {
                        io: Box::new(BoxedIo::new(&established)),
                        tail,
                    },
                    false => Stage::Plain { tail },
                };
                // What the client sent after message 3 is the transport's.
                if !established.early_data.is_empty() {
                    let early = BytesMut::from(&established.early_data[..]);
                    match self.stage {
                        Stage::Boxed { .. } => self.open(&early),
                        _ => self.events.push_back(LinkEvent::Input(early)),
                    }
                }
                Some(LinkEvent::Established)
            }
        }
    }

    /// The handshake's next message, or message 4 once it is over: write
    /// these before anything of the mux's.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        match &mut self.stage {
            Stage::Handshake { shs, .. } => shs.poll_transmit(),
            Stage::Plain { tail } | Stage::Boxed { tail, .. } => tail.take(),
            Stage::Broken => None,
        }
    }

    /// Whether [`Link::poll_transmit`] has something.
    pub fn has_output(&self) -> bool {
        match &self.stage {
            Stage::Handshake { .. } => true, // cheap to ask again
            Stage::Plain { tail } | Stage::Boxed { tail, .. } => tail.is_some(),
            Stage::Broken => false,
        }
    }

    /// Whether mux bytes go out as they are (no box-stream): they may then
    /// carry descriptors, and need no [`Link::seal`].
    pub fn is_plain(&self) -> bool {
        matches!(self.stage, Stage::Plain { .. })
    }

    /// Mux plaintext made ready for the socket: sealed on a box-stream, as
    /// it is on a plain link.
    pub fn seal(&mut self, plain: Bytes) -> Bytes {
        match &mut self.stage {
            Stage::Boxed { io, .. } => io.seal(&plain),
            Stage::Plain { .. } => plain,
            Stage::Handshake { .. } | Stage::Broken => Bytes::new(),
        }
    }

    /// As [`Link::seal`], for what `next` gives, up to a batch in one write.
    pub fn seal_from(&mut self, mut next: impl FnMut() -> Option<Bytes>) -> Option<Bytes> {
        match &mut self.stage {
            Stage::Boxed { io, .. } => io.seal_from(next),
            Stage::Plain { .. } => next(),
            Stage::Handshake { .. } | Stage::Broken => None,
        }
    }

    /// The bytes that end the connection: message 4 if it is still due,
    /// the hub's last plaintext (a GOAWAY), then box-stream's goodbye,
    /// which also answers the peer's. Nothing after a failed handshake or
    /// a broken box-stream.
    pub fn last_words(&mut self, plain: &[u8]) -> Bytes {
        let mut out = BytesMut::new();
        match &mut self.stage {
            Stage::Plain { tail } => {
                out.extend_from_slice(&tail.take().unwrap_or_default());
                out.extend_from_slice(plain);
            }
            Stage::Boxed { io, tail, .. } => {
                out.extend_from_slice(&tail.take().unwrap_or_default());
                out.extend_from_slice(&io.seal(plain));
                io.goodbye(&mut out);
            }
            Stage::Handshake { .. } | Stage::Broken => {}
        }
        out.freeze()
    }

    fn open(&mut self, input: &[u8]) {
        let Stage::Boxed { io, .. } = &mut self.stage else {
            return;
        };
        // One read's boxes become one input for the hub: one call there,
        // however many boxes the read held.
        let mut plain = BytesMut::new();
        let opened = io.open(input, |bytes| {
            plain.extend_from_slice(&bytes);
            Ok::<_, BoxStreamError>(())
        });
        if !plain.is_empty() {
            self.events.push_back(LinkEvent::Input(plain));
        }
        match opened {
            Ok(false) => {}
            Ok(true) => self.events.push_back(LinkEvent::Ended(LinkEnd::Goodbye)),
            Err(e) => self.break_with(LinkEnd::BoxStream(e)),
        }
    }

    fn break_with(&mut self, end: LinkEnd) {
        self.stage = Stage::Broken;
        self.events.push_back(LinkEvent::Ended(end));
    }
}
