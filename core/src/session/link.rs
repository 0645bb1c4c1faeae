//! The connection under the session, and reconnection: a session spans
//! connections when [`SessionConfig::reconnect`] says so.
//!
//! A lost connection fails what was in flight on it (one
//! [`SessionEvent::RequestLost`] per request, one [`SessionEvent::ChannelLost`]
//! per channel, with what it received and nobody read), says
//! [`SessionEvent::Lost`] once per outage, and waits (jittered backoff) before
//! asking the runtime for a socket ([`Session::wants_dial`]). On the new
//! connection the session takes its name again and restarts its watch; once
//! the broker granted both, [`SessionEvent::Reconnected`]. A refusal, or a
//! loss before then, is a failed attempt ([`SessionEvent::AttemptFailed`]).

use super::*;

/// Where the connection stands; each stage owns what it needs.
pub(super) enum Link {
    /// shs1 with the broker.
    Handshake(Box<ClientHandshake>),
    /// The handshake is done; the broker's hello must come by `deadline`.
    Hello { conn: Conn, deadline: Instant },
    /// Requests and channels work (the application's once the name and
    /// watch are restored). `heard` is when the broker last sent anything;
    /// `ping` the deadline of a ping sent after a quiet spell. `limits` and
    /// `features` are what the broker's hello said.
    Ready {
        conn: Conn,
        heard: Instant,
        ping: Option<Instant>,
        limits: AnnouncedLimits,
        features: Features,
    },
    /// Lost; the next attempt at `at`. `last_words` go out before the
    /// runtime closes the lost socket.
    Waiting { at: Instant, last_words: Bytes },
    /// The runtime connects a socket, by `deadline`.
    Dialing { deadline: Instant },
    /// Over for good.
    Closed { last_words: Bytes },
}

/// A connection past its handshake, and what belongs to it alone (a new
/// connection starts them afresh).
pub(super) struct Conn {
    pub(super) wire: Wire,
    /// Control messages, reassembled from the control channel.
    pub(super) control: ControlDecoder,
    /// The runtime's tokens for descriptors that came with this
    /// connection's frames, in order, until a message claims each.
    pub(super) fds: VecDeque<u64>,
    /// Pages of a resync still coming, and the number they all carry.
    pub(super) resync: Option<(u64, Vec<Member>)>,
    /// The broker agreed to send this connection monitor events (a new
    /// connection does not monitor until asked again).
    pub(super) monitoring: bool,
}

impl Conn {
    pub(super) fn new(wire: Wire) -> Self {
        Conn {
            wire,
            control: ControlDecoder::default(),
            fds: VecDeque::new(),
            resync: None,
            monitoring: false,
        }
    }
}

impl Link {
    /// The runtime has a socket for this stage.
    pub(super) fn is_connected(&self) -> bool {
        matches!(
            self,
            Link::Handshake(_) | Link::Hello { .. } | Link::Ready { .. }
        )
    }

    pub(super) fn conn_mut(&mut self) -> Option<&mut Conn> {
        match self {
            Link::Hello { conn, .. } | Link::Ready { conn, .. } => Some(conn),
            _ => None,
        }
    }

    pub(super) fn wire_mut(&mut self) -> Option<&mut Wire> {
        self.conn_mut().map(|c| &mut c.wire)
    }

    pub(super) fn wire(&self) -> Option<&Wire> {
        match self {
            Link::Hello { conn, .. } | Link::Ready { conn, .. } => Some(&conn.wire),
            _ => None,
        }
    }

    /// The broker's hello came at `now`, with its limits and the features
    /// both sides have: requests and channels work.
    pub(super) fn hello_done(&mut self, now: Instant, limits: AnnouncedLimits, features: Features) {
        if !matches!(self, Link::Hello { .. }) {
            return;
        }
        let closed = Link::Closed {
            last_words: Bytes::new(),
        };
        if let Link::Hello { conn, .. } = std::mem::replace(self, closed) {
            *self = Link::Ready {
                conn,
                heard: now,
                ping: None,
                limits,
                features,
            };
        }
    }

    /// The limits of the broker this connection said hello to.
    pub(super) fn limits(&self) -> Option<&AnnouncedLimits> {
        match self {
            Link::Ready { limits, .. } => Some(limits),
            _ => None,
        }
    }

    /// Whether this connection agreed on `feature`.
    pub(super) fn has_feature(&self, feature: Features) -> bool {
        matches!(self, Link::Ready { features, .. } if features & feature != 0)
    }
}

/// An outage: from the loss of a connection until a new one restored the
/// name and the watch.
pub(super) struct Outage {
    /// Why the last attempt (or the connection) failed.
    reason: String,
    /// Attempts so far.
    attempts: u32,
    backoff: Backoff,
}

/// What a new connection restores: what the broker granted.
#[derive(Default)]
pub(super) struct Restore {
    pub(super) registration: Option<Registration>,
    pub(super) watching: bool,
    /// A connection got as far as the broker's hello: only then is a loss
    /// an outage.
    pub(super) was_ready: bool,
    /// When the last outage ended, and its waits: a loss soon after goes
    /// on from them.
    pub(super) calm: Option<(Instant, Backoff)>,
}

/// A name taken, as it was asked for.
#[derive(Clone)]
pub(super) struct Registration {
    pub(super) name: Name,
    pub(super) wait: bool,
    pub(super) direct_addr: Option<String>,
}

impl Registration {
    pub(super) fn message(self, request: RequestId) -> Message {
        Message::Register {
            request,
            name: self.name,
            wait: self.wait,
            direct_addr: self.direct_addr.unwrap_or_default(),
        }
    }
}

impl Session {
    /// The session wants a new socket to the broker: connect one, then call
    /// [`Session::handle_connected`] (or [`Session::handle_dial_failed`]).
    pub fn wants_dial(&self) -> bool {
        matches!(self.link, Link::Dialing { .. })
    }

    /// The session has a connection (close the socket once this turns false,
    /// after writing what [`Session::poll_transmit`] still gives).
    pub fn is_connected(&self) -> bool {
        self.link.is_connected()
    }

    /// While reconnecting: why the connection (or the last attempt) failed.
    pub fn outage(&self) -> Option<&str> {
        self.outage.as_ref().map(|o| o.reason.as_str())
    }

    /// The socket the session asked for is connected: the handshake starts.
    pub fn handle_connected(
        &mut self,
        now: Instant,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), SessionError> {
        if !self.wants_dial() {
            return Err(SessionError::NotDialing);
        }
        self.now = now;
        self.jitter = rng.next_u64();
        let handshake =
            ClientHandshake::new(self.config.handshake.clone(), self.config.broker, rng, now)?;
        self.link = Link::Handshake(Box::new(handshake));
        Ok(())
    }

    /// The socket the session asked for could not be connected.
    pub fn handle_dial_failed(
        &mut self,
        now: Instant,
        reason: &str,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), SessionError> {
        if !self.wants_dial() {
            return Err(SessionError::NotDialing);
        }
        self.jitter = rng.next_u64();
        self.attempt_failed(now, reason.to_owned());
        Ok(())
    }

    // ── internals ─────────────────────────────────────────────────────

    /// The wait is over: ask for a socket.
    pub(super) fn dial(&mut self, now: Instant) {
        if let Some(outage) = self.outage.as_mut() {
            outage.attempts = outage.attempts.saturating_add(1);
        }
        self.link = Link::Dialing {
            deadline: now + self.config.connect_timeout,
        };
    }

    /// An attempt that had no connection failed: wait for the next.
    pub(super) fn attempt_failed(&mut self, now: Instant, reason: String) {
        self.now = now;
        self.lose(reason, Bytes::new());
    }

    /// The connection (or an attempt) is lost: say so, and wait for the
    /// next attempt. Requests were failed already; channels are handed over.
    pub(super) fn lose(&mut self, reason: String, last_words: Bytes) {
        for (channel, mut c) in std::mem::take(&mut self.channels) {
            let end = Self::end_of(&c);
            self.events.push_back(SessionEvent::ChannelLost {
                channel,
                unread: std::mem::take(&mut c.received).into_chunks(),
                end,
            });
        }
        let policy = self.config.reconnect.unwrap_or_default();
        let outage = match self.outage.as_mut() {
            Some(outage) => {
                self.events.push_back(SessionEvent::AttemptFailed {
                    attempt: outage.attempts,
                    reason: reason.clone(),
                });
                outage.reason = reason;
                outage
            }
            None => {
                self.events.push_back(SessionEvent::Lost {
                    reason: reason.clone(),
                });
                let backoff = match self.restore.calm.take() {
                    Some((since, backoff)) if self.now < since + policy.max => backoff,
                    _ => Backoff::new(policy),
                };
                self.outage.insert(Outage {
                    reason,
                    attempts: 0,
                    backoff,
                })
            }
        };
        let wait = outage.backoff.next_from(self.jitter);
        self.link = Link::Waiting {
            at: self.now + wait,
            last_words,
        };
    }

    /// A request the connection's end leaves unanswered. One the session
    /// sent to restore is its own business; an application's fails.
    pub(super) fn forget_request(&mut self, request: RequestId, restore: bool, reconnecting: bool) {
        if restore {
            return;
        }
        self.events.push_back(SessionEvent::RequestLost {
            request,
            reconnecting,
        });
    }

    /// The broker said hello on a new connection: take the name again and
    /// restart the watch.
    pub(super) fn restore(&mut self) -> Result<(), SessionError> {
        let now = self.now;
        if let Some(registration) = self.restore.registration.clone() {
            let pending = Pending::Register(registration.clone());
            let message = |request| registration.message(request);
            self.request_as(now, Duration::ZERO, true, pending, message)?;
        }
        if self.restore.watching {
            let pending = Pending::Watch(Vec::new());
            self.request_as(now, Duration::ZERO, true, pending, |request| {
                Message::Watch { request }
            })?;
        }
        self.check_restored();
        Ok(())
    }

    /// A request sent to restore was refused: this connection is no use.
    pub(super) fn restore_refused(&mut self, what: &str, message: &str) {
        let reason = format!("the broker refused to restore the {what}: {message}");
        self.end(reason, Some(ErrorCode::Cancelled), true);
    }

    /// Once nothing the session sent to restore is unanswered, the outage
    /// is over.
    pub(super) fn check_restored(&mut self) {
        if !matches!(self.link, Link::Ready { .. }) || self.requests.values().any(|r| r.restore) {
            return;
        }
        if let Some(outage) = self.outage.take() {
            self.restore.calm = Some((self.now, outage.backoff));
            self.events.push_back(SessionEvent::Reconnected {
                attempts: outage.attempts,
            });
        }
    }
}

#[cfg(test)]
mod tests;
