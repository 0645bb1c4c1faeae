//! The plugin session: the client side of a plugin's connection to the
//! broker, and of the connections that replace it when it reconnects
//! (`link.rs`).
//!
//! shs1 as the client, then the wire (plain or box-stream), the hello, and
//! from then on requests, answers and channels. The same face as every state
//! machine here: bytes and time in, bytes and events out.

mod channels;
mod direct;
mod events;
mod link;
mod messages;
mod reconnect;
mod requests;
mod watch;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rand_core::CryptoRngCore;

use channels::ChannelStage;
pub use channels::Recv;
pub use events::{SessionError, SessionEvent};
use link::Link;
pub use reconnect::{Backoff, ConnectionEvent, Reconnect, MIN_WAIT};

use crate::control::{
    self, AnnouncedLimits, CauseCount, ChannelId, ChannelPath, ControlDecoder, ErrorCode, Features,
    IncomingPath, KeyStats, Member, Message, Name, NameStats, OpenedPath, RequestId, UidStats,
    FEATURES, FEATURE_MONITOR, FEATURE_STATS_COUNTERS, FEATURE_STATS_UIDS, FEATURE_WATCH_RESYNC,
    VERSION,
};
use crate::keys::PublicKey;
use crate::mux::{Mux, MuxConfig, MuxEvent, MuxInput, Side};
use crate::shs::{self, ClientHandshake, HandshakeConfig};
use crate::time::Instant;
use crate::wire::{Wire, WireError};

/// How a session talks to its broker.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Our identity and the network key.
    pub handshake: Arc<HandshakeConfig>,
    /// The broker's key.
    pub broker: PublicKey,
    /// Box-stream on the wire (TCP, or a unix socket where the broker forces it).
    pub boxstream: bool,
    /// The broker's hello must come this long after the handshake.
    pub hello_timeout: Duration,
    /// The broker answers every request or ends the connection; a request
    /// unanswered this long means it is gone, and the connection is over
    /// (with [`ErrorCode::IdleTimeout`]: [`SessionEvent::Closed`], or a
    /// loss when the session reconnects).
    pub request_timeout: Duration,
    /// Largest a channel's receive window may grow to.
    pub max_window: u32,
    /// Largest all receive windows together may grow to.
    pub max_connection_window: u64,
    /// Feature bits to offer in the hello (all this implementation has, by
    /// default).
    pub features: Features,
    /// Most entries (members, keys, names, uids) one reply or resync may
    /// gather over its pages: a broker that sends more breaks the protocol
    /// ([`SessionError::ReplyTooLarge`]). The default is more than three
    /// times the most a broker with default limits sends in one reply (a
    /// Stats reply has up to 3 × its `max_connections` entries).
    pub max_reply_entries: usize,
    /// Reconnect when a connection that got as far as the broker's hello is
    /// lost (see [`Reconnect`]); `None` ends the session instead. A first
    /// connection that never got there ends it either way.
    pub reconnect: Option<Reconnect>,
    /// How long the runtime may take to connect a socket when the session
    /// asks for one ([`Session::wants_dial`]); the first socket, made
    /// before [`Session::new`], is the runtime's own business.
    pub connect_timeout: Duration,
    /// A broker silent this long is pinged; one that does not answer within
    /// `request_timeout` is gone (a cut that no RST reported). `None`: never.
    pub keepalive: Option<Duration>,
}

/// Most bytes of urgent frames (pongs, credit, requests) the session holds
/// for a broker that sends and does not read: past it, the connection ends.
const MAX_UNSENT_URGENT: usize = 4 << 20;

/// How long an accepted channel waits for its path when the broker did not
/// announce its open timeout.
const DEFAULT_PATH_TIMEOUT: Duration = Duration::from_secs(10);

impl SessionConfig {
    /// Defaults, for the broker with key `broker`.
    pub fn new(handshake: HandshakeConfig, broker: PublicKey) -> Self {
        let defaults = MuxConfig::default();
        SessionConfig {
            handshake: Arc::new(handshake),
            broker,
            boxstream: false,
            hello_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_window: defaults.max_window,
            max_connection_window: defaults.max_connection_window,
            features: FEATURES,
            max_reply_entries: 100_000,
            reconnect: None,
            connect_timeout: Duration::from_secs(10),
            keepalive: Some(Duration::from_secs(20)),
        }
    }
}

/// What a request is, so that its answer can be checked and assembled.
enum Pending {
    Register(link::Registration),
    List(Vec<Member>),
    Watch(Vec<Member>),
    Unwatch,
    Stats(
        Vec<UidStats>,
        Vec<CauseCount>,
        Vec<KeyStats>,
        Vec<NameStats>,
    ),
    Monitor,
    Open(ChannelId),
}

impl Pending {
    /// Entries gathered so far.
    fn entries(&self) -> usize {
        match self {
            Pending::List(members) | Pending::Watch(members) => members.len(),
            Pending::Stats(uids, counters, keys, names) => {
                uids.len() + counters.len() + keys.len() + names.len()
            }
            Pending::Register(_) | Pending::Unwatch | Pending::Open(_) | Pending::Monitor => 0,
        }
    }
}

struct Request {
    pending: Pending,
    deadline: Instant,
    /// Sent by the session to restore the name or the watch on a new
    /// connection, not by the application.
    restore: bool,
}

/// The plugin side of a connection to the broker (of each, in turn, when
/// it reconnects).
pub struct Session {
    config: SessionConfig,
    /// The connection to the broker, and what it owns.
    link: Link,
    /// The latest time a call brought.
    now: Instant,
    /// While reconnecting: why, and how it goes.
    outage: Option<link::Outage>,
    /// What a new connection restores.
    restore: link::Restore,
    /// Randomness drawn ahead for the next wait between attempts.
    jitter: u64,
    next_request: RequestId,
    requests: BTreeMap<RequestId, Request>,
    channels: BTreeMap<ChannelId, channels::Channel>,
    /// What the watch knows, once it started.
    watch: Option<watch::WatchView>,
    /// The request the message being handled answers (and whether it is
    /// the session's own): if the message turns out wrong, the request
    /// still gets its one outcome.
    answering: Option<(RequestId, bool)>,
    events: VecDeque<SessionEvent>,
    scratch: BytesMut,
    /// What box-stream input opens into, kept between reads.
    opened: BytesMut,
}

impl Session {
    /// Starts the handshake with the broker; its hello is ready to send.
    pub fn new(
        config: SessionConfig,
        rng: &mut impl CryptoRngCore,
        now: Instant,
    ) -> Result<Self, SessionError> {
        let handshake = ClientHandshake::new(config.handshake.clone(), config.broker, rng, now)?;
        Ok(Session {
            config,
            link: Link::Handshake(Box::new(handshake)),
            now,
            outage: None,
            restore: link::Restore::default(),
            jitter: rng.next_u64(),
            next_request: 1,
            requests: BTreeMap::new(),
            channels: BTreeMap::new(),
            watch: None,
            answering: None,
            events: VecDeque::new(),
            scratch: BytesMut::new(),
            opened: BytesMut::new(),
        })
    }

    /// The limits the broker said hello with, while that connection is up
    /// (`None` before the hello and between connections).
    pub fn limits(&self) -> Option<&AnnouncedLimits> {
        self.link.limits()
    }

    /// Whether requests and channels can be used (on a new connection,
    /// once the name and the watch are restored).
    pub fn is_ready(&self) -> bool {
        matches!(self.link, Link::Ready { .. }) && self.outage.is_none()
    }

    /// Whether the session is over for good.
    pub fn is_closed(&self) -> bool {
        matches!(self.link, Link::Closed { .. })
    }

    // ── the face ──────────────────────────────────────────────────────

    /// Bytes from the broker. An error ends the connection (the events say
    /// so too): write what [`Session::poll_transmit`] still gives, then
    /// close the socket. Bytes after that (the session let the connection
    /// go) are refused: `Closed`, or `Reconnecting`.
    pub fn handle_input(&mut self, now: Instant, input: &[u8]) -> Result<(), SessionError> {
        self.now = now;
        if !self.link.is_connected() {
            // Bytes of a socket the session let go: a runtime's mistake.
            return Err(match self.link {
                Link::Closed { .. } => SessionError::Closed,
                _ => SessionError::Reconnecting,
            });
        }
        let result = self.input(now, input);
        if let Err(e) = &result {
            self.fail(e.to_string(), None);
        }
        result
    }

    /// As [`Session::handle_input`], where a file descriptor (identified by
    /// `fd`, the runtime's token for it) arrived with the first byte of `input`.
    pub fn handle_input_with_fd(
        &mut self,
        now: Instant,
        input: &[u8],
        fd: u64,
    ) -> Result<(), SessionError> {
        // (Before the handshake is done, no message can claim it.)
        if let Some(conn) = self.link.conn_mut() {
            conn.fds.push_back(fd);
        }
        self.handle_input(now, input)
    }

    /// The broker closed the connection.
    pub fn handle_eof(&mut self, now: Instant) {
        self.now = now;
        if self.link.is_connected() {
            // In the handshake, where it ended says why (another network
            // key, a key not admitted...).
            let reason = match &mut self.link {
                Link::Handshake(shs) => match shs.handle_eof() {
                    Err(e) => format!("the broker closed the connection in the handshake: {e}"),
                    Ok(()) => "the broker closed the connection".into(),
                },
                _ => "the broker closed the connection".into(),
            };
            self.ended_by_broker(reason, None);
        }
    }

    /// The socket failed (a read or write error, or what the runtime found
    /// wrong below the session): the connection is over.
    pub fn handle_socket_error(&mut self, now: Instant, reason: &str) {
        self.now = now;
        if self.link.is_connected() {
            self.end(reason.to_owned(), None, false);
        }
    }

    /// Bytes to write to the broker. Once the session let the connection
    /// go ([`Session::is_connected`] false), its last words, then nothing:
    /// close the socket.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        match &mut self.link {
            Link::Handshake(handshake) => handshake.poll_transmit(),
            Link::Hello { conn, .. } | Link::Ready { conn, .. } => {
                let out = conn.wire.poll_transmit().map(|(bytes, _)| bytes);
                if conn.wire.mux.has_events() {
                    // Our FIN going out can close a channel: say so now.
                    let _ = self.drain_mux();
                }
                out
            }
            Link::Waiting { last_words, .. } | Link::Closed { last_words } => {
                Some(std::mem::take(last_words)).filter(|b| !b.is_empty())
            }
            Link::Dialing { .. } => None,
        }
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// The earliest deadline: handshake, hello, a request's, an accepted
    /// channel's that still waits for its path, the keepalive's; between
    /// connections, the next attempt's or the connect's.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let stage = match &self.link {
            Link::Handshake(handshake) => handshake.poll_timeout(),
            Link::Hello { deadline, .. } => Some(*deadline),
            Link::Waiting { at, .. } => Some(*at),
            Link::Dialing { deadline } => Some(*deadline),
            Link::Ready { heard, ping, .. } => {
                ping.or(self.config.keepalive.map(|quiet| *heard + quiet))
            }
            Link::Closed { .. } => None,
        };
        let request = self.requests.values().map(|r| r.deadline).min();
        let path = self.path_deadlines().min();
        stage.into_iter().chain(request).chain(path).min()
    }

    /// Runs what is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        match &mut self.link {
            Link::Handshake(handshake) => {
                if let Err(e) = handshake.handle_timeout(now) {
                    self.fail(e.to_string(), None);
                }
            }
            Link::Hello { deadline, .. } if now >= *deadline => {
                self.fail("the broker did not say hello in time".into(), None);
            }
            Link::Waiting { at, .. } if now >= *at => self.dial(now),
            Link::Dialing { deadline } if now >= *deadline => {
                self.attempt_failed(now, "timed out connecting".into());
            }
            Link::Ready {
                ping: Some(deadline),
                ..
            } if now >= *deadline => {
                let reason = "the broker did not answer a ping in time".into();
                self.fail(reason, Some(ErrorCode::IdleTimeout));
            }
            Link::Ready {
                conn,
                heard,
                ping: ping @ None,
                ..
            } if (self.config.keepalive).is_some_and(|quiet| now >= *heard + quiet) => {
                conn.wire.mux.ping(0);
                *ping = Some(now + self.config.request_timeout);
            }
            _ => {}
        }
        // The broker answers every request (or ends the connection): one
        // that stays unanswered means the broker is gone.
        if let Some((request, _)) = self.requests.iter().find(|(_, r)| r.deadline <= now) {
            let reason = format!("the broker did not answer request {request} in time");
            self.fail(reason, Some(ErrorCode::IdleTimeout));
        }
        self.expire_paths(now);
    }

    /// Ends the session from this side: a GOAWAY, then (box-stream) the
    /// goodbye. Returns the last bytes to write before closing the socket.
    pub fn close(&mut self, reason: &str) -> Bytes {
        let last = match self.link.wire_mut() {
            Some(wire) => {
                wire.mux.go_away(ErrorCode::Cancelled, reason);
                wire.last_words()
            }
            None => Bytes::new(),
        };
        self.link = Link::Closed {
            last_words: Bytes::new(),
        };
        self.outage = None;
        self.requests.clear();
        self.channels.clear();
        last
    }

    // ── internals ─────────────────────────────────────────────────────

    /// The connection can carry requests and channels (it may still be
    /// restoring the name and the watch).
    fn ensure_ready(&self) -> Result<(), SessionError> {
        match (&self.link, &self.outage) {
            (Link::Ready { .. }, _) => Ok(()),
            (Link::Closed { .. }, _) => Err(SessionError::Closed),
            (_, Some(_)) => Err(SessionError::Reconnecting),
            (_, None) => Err(SessionError::NotReady),
        }
    }

    fn wire_mut(&mut self) -> Result<&mut Wire, SessionError> {
        self.link.wire_mut().ok_or(SessionError::NotReady)
    }

    /// The next control message the connection has whole, if any.
    fn next_message(&mut self) -> Result<Option<Message>, SessionError> {
        match self.link.conn_mut() {
            Some(conn) => Ok(conn.control.next()?),
            None => Ok(None),
        }
    }

    /// The token of the next descriptor that came with this connection.
    fn take_fd(&mut self) -> Option<u64> {
        self.link.conn_mut()?.fds.pop_front()
    }

    /// The broker ended the connection: nothing more is sent to it.
    fn ended_by_broker(&mut self, reason: String, code: Option<ErrorCode>) {
        self.end(reason, code, false);
    }

    fn fail(&mut self, reason: String, code: Option<ErrorCode>) {
        self.end(reason, code, true);
    }

    /// The connection is over: the session reconnects if configured to,
    /// or ends.
    fn end(&mut self, reason: String, code: Option<ErrorCode>, tell_broker: bool) {
        if !self.link.is_connected() {
            return;
        }
        // Tell the broker why, unless it is the one that ended the connection.
        let last_words = match self.link.wire_mut() {
            Some(wire) => {
                if tell_broker && !wire.mux.is_going_away() {
                    wire.mux
                        .go_away(code.unwrap_or(ErrorCode::ProtocolViolation), &reason);
                }
                wire.last_words()
            }
            None => Bytes::new(),
        };
        // A first connection that never got ready was refused, or was not
        // to a broker: that is the end, not an outage.
        let reconnecting = self.config.reconnect.is_some() && self.restore.was_ready;
        for (request, r) in std::mem::take(&mut self.requests) {
            self.forget_request(request, r.restore, reconnecting);
        }
        self.watch = None;
        if reconnecting {
            self.lose(reason, last_words);
            return;
        }
        // Channels stay: what they received can still be read.
        self.link = Link::Closed { last_words };
        self.events.push_back(SessionEvent::Closed { code, reason });
    }

    fn input(&mut self, now: Instant, input: &[u8]) -> Result<(), SessionError> {
        match &mut self.link {
            Link::Handshake(handshake) => {
                handshake.handle_input(now, input)?;
                match handshake.poll_event() {
                    Some(shs::Event::Established(established)) => {
                        self.established(now, established)
                    }
                    _ => Ok(()),
                }
            }
            Link::Hello { .. } | Link::Ready { .. } => {
                if let Link::Ready { heard, ping, .. } = &mut self.link {
                    // Anything from the broker shows it is there.
                    (*heard, *ping) = (now, None);
                }
                self.feed_wire(input)
            }
            Link::Waiting { .. } | Link::Dialing { .. } => Err(SessionError::Reconnecting),
            Link::Closed { .. } => Err(SessionError::Closed),
        }
    }

    fn established(
        &mut self,
        now: Instant,
        established: shs::Established,
    ) -> Result<(), SessionError> {
        let mux = Mux::new(
            Side::Dialer,
            MuxConfig {
                max_window: self.config.max_window,
                max_connection_window: self.config.max_connection_window,
                ..MuxConfig::default()
            },
        );
        let wire = match self.config.boxstream {
            true => Wire::boxed(mux, &established),
            false => Wire::plain(mux),
        };
        self.link = Link::Hello {
            conn: link::Conn::new(wire),
            deadline: now + self.config.hello_timeout,
        };
        self.send_message(&Message::ClientHello {
            min_version: VERSION,
            max_version: VERSION,
            features: self.config.features,
        })?;
        if !established.early_data.is_empty() {
            self.feed_wire(&established.early_data)?;
        }
        Ok(())
    }

    /// Takes bytes from the socket through the wire's framing into the mux,
    /// and handles what the mux says, in order.
    fn feed_wire(&mut self, input: &[u8]) -> Result<(), SessionError> {
        let Some(wire) = self.link.wire_mut() else {
            return Ok(());
        };
        let mut opened = std::mem::take(&mut self.opened);
        let (mut plain, end) = wire.open(input, &mut opened);
        let fed = self.run_mux(&mut plain);
        opened.clear();
        self.opened = opened;
        fed?;
        if self
            .link
            .wire_mut()
            .is_some_and(|wire| wire.mux.queued_urgent() > MAX_UNSENT_URGENT)
        {
            // Pongs and credit it asked for and does not read.
            return Err(SessionError::Protocol("the broker does not read"));
        }
        match end {
            Ok(()) => Ok(()),
            Err(WireError::Goodbye) => {
                self.ended_by_broker("the broker said goodbye".into(), None);
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Handles the events the mux has waiting.
    fn drain_mux(&mut self) -> Result<(), SessionError> {
        self.run_mux(&mut &[][..])
    }

    /// Feeds `input` (mux bytes) to the mux and handles what it says, in
    /// order: the events it had waiting first.
    fn run_mux(&mut self, input: &mut &[u8]) -> Result<(), SessionError> {
        loop {
            let Some(wire) = self.link.wire_mut() else {
                return Ok(());
            };
            let event = match wire.mux.poll_input(input)? {
                None => return Ok(()),
                Some(MuxInput::Data { channel: 0, bytes }) => {
                    if let Some(conn) = self.link.conn_mut() {
                        conn.control.push(bytes);
                    }
                    // Until the connection has no more, or is over.
                    while let Some(message) = self.next_message()? {
                        self.answering = None;
                        let handled = self.on_message(message);
                        if let (Err(_), Some((request, restore))) = (&handled, self.answering) {
                            let reconnecting =
                                self.config.reconnect.is_some() && self.restore.was_ready;
                            self.forget_request(request, restore, reconnecting);
                        }
                        handled?;
                    }
                    continue;
                }
                Some(MuxInput::Data { channel, bytes }) => {
                    self.on_data(channel, bytes)?;
                    continue;
                }
                Some(MuxInput::Event(event)) => event,
            };
            match event {
                MuxEvent::Fin { channel } => self.on_end(channel, false),
                MuxEvent::Reset {
                    channel,
                    code,
                    reason,
                } => self.on_reset(channel, code, reason),
                MuxEvent::Credit { channel, .. } => {
                    if self.send_capacity(channel) > 0 {
                        self.events.push_back(SessionEvent::Writable { channel });
                    }
                }
                MuxEvent::Closed { channel } => self.on_end(channel, true),
                MuxEvent::Pong { .. } => {}
                MuxEvent::GoAway { code, reason } => {
                    self.fail(format!("the broker went away: {reason}"), Some(code));
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
