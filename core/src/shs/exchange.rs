//! What both roles keep besides their protocol state: bytes received and
//! not yet used, bytes to send, the event for the owner, the deadline.

use bytes::{Bytes, BytesMut};

use super::{Established, Event, HandshakeError, Phase, SessionKeys};
use crate::crypto::Crypto;
use crate::keys::PublicKey;
use crate::time::Instant;

pub(super) struct Exchange {
    deadline: Instant,
    /// The message being waited for, then early data for the next layer.
    pub(super) inbox: BytesMut,
    outbox: BytesMut,
    event: Option<Event>,
}

impl Exchange {
    pub(super) fn new(deadline: Instant) -> Self {
        Exchange {
            deadline,
            inbox: BytesMut::with_capacity(Phase::ClientAuth.message_len()),
            outbox: BytesMut::with_capacity(Phase::ClientAuth.message_len()),
            event: None,
        }
    }

    pub(super) fn send(&mut self, message: &[u8]) {
        self.outbox.extend_from_slice(message);
    }

    pub(super) fn emit(&mut self, event: Event) {
        self.event = Some(event);
    }

    /// The last event: the session, with what arrived after the handshake.
    pub(super) fn establish(&mut self, peer: PublicKey, keys: SessionKeys, crypto: Crypto) {
        self.event = Some(Event::Established(Established {
            peer,
            keys,
            crypto,
            early_data: self.inbox.split().freeze(),
        }));
    }

    pub(super) fn poll_transmit(&mut self) -> Option<Bytes> {
        (!self.outbox.is_empty()).then(|| self.outbox.split().freeze())
    }

    pub(super) fn has_output(&self) -> bool {
        !self.outbox.is_empty()
    }

    pub(super) fn poll_event(&mut self) -> Option<Event> {
        self.event.take()
    }

    /// The deadline, while the handshake is in `phase`.
    pub(super) fn poll_timeout(&self, phase: Option<Phase>) -> Option<Instant> {
        phase.map(|_| self.deadline)
    }

    /// The error if the deadline passed while in `phase`.
    pub(super) fn expired(&self, phase: Option<Phase>, now: Instant) -> Option<HandshakeError> {
        phase
            .filter(|_| now >= self.deadline)
            .map(HandshakeError::TimedOut)
    }

    /// The error for a connection that ended while in `phase`.
    pub(super) fn truncated(&self, phase: Phase) -> HandshakeError {
        HandshakeError::Truncated {
            phase,
            received: self.inbox.len().min(phase.message_len()),
            expected: phase.message_len(),
        }
    }

    /// The whole message `phase` waits for, once it is in.
    pub(super) fn next_message(&mut self, phase: Phase) -> Option<BytesMut> {
        let len = phase.message_len();
        (self.inbox.len() >= len).then(|| self.inbox.split_to(len))
    }

    /// After a failure nothing more goes out and nothing more is reported.
    pub(super) fn withdraw(&mut self) {
        self.outbox.clear();
        self.event = None;
    }
}
