//! The broker, in three kinds of state (as quinn splits `Endpoint` from
//! `Connection`):
//!
//! - a [`Link`] per connection: its handshake and its transport
//!   (box-stream or plain), the crypto and the per-byte work;
//! - a [`PortHandle`] per connection: its mux and its ends of relayed
//!   channels, driven by `drive.rs` (relayed data and credit go from one
//!   port to the other, locking each in turn, without the hub);
//! - the [`Hub`]: every connection's control stage, the registry of names,
//!   the watchers, the opens, the policy, the budgets and the timers, given
//!   what a port cannot decide alone.
//!
//! [`Broker`] holds both for a runtime that drives everything on one thread
//! (mio, the simulation), with the usual face: [`Broker::accept`] a socket,
//! feed its bytes to [`Broker::handle_input`], write what
//! [`Broker::poll_transmit`] gives for a connection when
//! [`Event::Transmit`] says it has something, close sockets on
//! [`Event::Close`], and call [`Broker::handle_timeout`] at
//! [`Broker::poll_timeout`]. A runtime with threads keeps the hub behind a
//! lock and drives each link and port outside it (`plugboard-runtime`'s
//! server).

mod audit;
mod bridge;
mod cause;
mod config;
mod connection;
mod control;
mod door;
mod drive;
mod fds;
mod legacy;
mod link;
mod memory;
mod monitor;
mod opens;
pub mod policy;
mod port;
mod rates;
pub mod registry;
mod relay;
mod report;
mod serial;
mod share;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rand_core::CryptoRngCore;

pub use cause::{Cause, Counters, Outcome};
pub use config::Limits;
pub use door::{Cred, DoorRefusal, ListenerId, Origin, Peer};
pub use drive::PortDriver;
pub use fds::FdRefusal;
pub use legacy::{LegacyRoute, LinkPlan};
pub use link::{Link, LinkEnd, LinkEvent};
pub use policy::{Permissions, Policy};
pub use report::{printable, LogEntry};
pub use serial::Broker;

use crate::control::{ChannelId, ErrorCode, Message, RequestId, TransportKind};
use crate::keys::PublicKey;
use crate::mux::Mux;
use crate::shs::HandshakeConfig;
use crate::time::Instant;
use connection::{Connection, Stage};
use door::Door;
use fds::FdBudget;
pub use memory::ByteRefusal;
use memory::{ByteBudget, ByteLimits};
pub use port::PortHandle;
use port::{HubInput, Port, PortLimits};
use registry::Registry;
use share::Shares;

/// A connection, as the broker names it. Never reused.
pub type ConnId = u64;
/// A socketpair the runtime is asked to create for a direct channel.
pub type PairId = u64;

/// What the broker runs with.
#[derive(Clone)]
pub struct BrokerConfig {
    /// The broker's identity and network key.
    pub handshake: Arc<HandshakeConfig>,
    /// Limits.
    pub limits: Limits,
    /// Who may do what.
    pub policy: Policy,
    /// The runtime can pass file descriptors (socketpairs for direct channels
    /// between unix-socket plugins).
    pub fd_passing: bool,
    /// Use box-stream on unix sockets too.
    pub boxstream_on_unix: bool,
    /// The broker's own user: unix peers of that uid get the policy's
    /// `[unix]` rights, others only what a `[[user]]` entry grants. `None`
    /// (a simulation, an embedding that cannot tell users apart): every
    /// unix peer is the broker's user.
    pub owner_uid: Option<u32>,
    /// Listeners whose clients are SSB clients as they are, and the route
    /// each takes (PROTOCOL §11).
    pub legacy: HashMap<ListenerId, LegacyRoute>,
}

impl BrokerConfig {
    /// Defaults for everything but the identity.
    pub fn new(handshake: HandshakeConfig) -> Self {
        let limits = Limits {
            handshake_timeout: handshake.timeout,
            ..Limits::default()
        };
        BrokerConfig {
            handshake: Arc::new(handshake),
            limits,
            policy: Policy::default(),
            fd_passing: false,
            boxstream_on_unix: false,
            owner_uid: None,
            legacy: HashMap::new(),
        }
    }
}

/// Which end of a socketpair goes where.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PairEnd {
    /// The end for the plugin that opened the channel.
    Opener,
    /// The end for the plugin that accepted it.
    Target,
}

/// Bytes for one connection's socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// What to write.
    pub data: Bytes,
    /// A socketpair end to pass with these bytes, in the same `sendmsg`
    /// (the bytes start the frame that announces it).
    pub fd: Option<(PairId, PairEnd)>,
}

/// What the broker tells its runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The connection has bytes to write: call [`Broker::poll_transmit`]
    /// (a [`Hub`] says so for its own plaintext only: a runtime that drives
    /// links itself asks [`Link::has_output`] after their input)
    /// for it until it returns `None` (or the socket is full; resume when
    /// it is writable).
    Transmit(ConnId),
    /// The broker ended this connection and already forgot it: write
    /// `last_words` if you can, then close the socket.
    Close {
        /// The connection.
        conn: ConnId,
        /// The final frames: a GOAWAY that says why (none to a legacy
        /// client, which hears no mux), and from a [`Broker`] box-stream's
        /// goodbye; from a [`Hub`], plaintext for the connection's
        /// [`Link::last_words`].
        last_words: Bytes,
        /// Why, for the log.
        reason: String,
    },
    /// Create a socketpair, keep both ends under this id, and answer with
    /// [`Broker::socketpair_ready`]. Each end leaves with a [`Transmit`] to
    /// its connection; an end whose connection closes first is dropped.
    CreateSocketPair {
        /// The pair's id.
        pair: PairId,
        /// Where [`PairEnd::Opener`] goes.
        opener: ConnId,
        /// Where [`PairEnd::Target`] goes.
        target: ConnId,
    },
    /// Something worth a log line: every refusal and every disconnect.
    Log(LogEntry),
    /// The plugin accepted this legacy connection's client: hand its
    /// [`Link::authorize`] `true` (message 4) and carry its events, and
    /// read its socket as far as [`PortHandle::input_room`] says. (A
    /// [`Broker`] does this itself and never returns it.)
    Authorized(ConnId),
    /// The broker ended this legacy connection and already forgot it:
    /// close the socket with nothing more written, not even box-stream's
    /// goodbye (its channel was reset, or its plugin left: the client must
    /// not read a clean end; where no box-stream could say so, the socket
    /// should end with a reset).
    Abort {
        /// The connection.
        conn: ConnId,
        /// Why, for the log.
        reason: String,
    },
    /// This legacy connection takes input again
    /// ([`PortHandle::input_room`] is no longer 0): read its socket.
    Resume(ConnId),
}

/// Why [`Broker::accept`] (or [`Hub::accept`]) turned a socket away (close it at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AcceptError {
    /// `max_connections` reached.
    #[error("the broker holds as many connections as it may")]
    TooManyConnections,
    /// `max_connections_per_uid` reached by the peer's user.
    #[error("uid {uid} already has {limit} connections, the most one user may")]
    TooManyForUser {
        /// The user.
        uid: u32,
        /// The limit.
        limit: usize,
    },
    /// A handshake budget: the listener's, its source's share, or its
    /// source's rate.
    #[error(transparent)]
    Door(#[from] DoorRefusal),
}

/// What one key holds, over all its connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyUsage {
    /// Authenticated connections.
    pub connections: usize,
    /// Relayed channels (both ends count, for each end's key).
    pub channels: usize,
    /// Opens it made that are not answered.
    pub pending_opens: usize,
    /// Incoming opens to it that it has not answered.
    pub pending_incoming: usize,
}

impl KeyUsage {
    fn is_empty(&self) -> bool {
        *self == KeyUsage::default()
    }
}

/// A timer in the broker's one ordered set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// The connection's deadline (handshake, hello, or idle).
    Conn(ConnId),
    /// An open's deadline, by its target end.
    Open(ConnId, ChannelId),
}

/// An open waiting for its target's answer (or for a socketpair).
struct PendingOpen {
    opener: ConnId,
    opener_channel: ChannelId,
    /// The opener's request, answered with Opened or an error; `None` for
    /// a legacy connection, whose answer is message 4 or the socket closed.
    request: Option<RequestId>,
    /// What monitors know it by.
    seen: monitor::Seen,
    opener_key: PublicKey,
    target_key: PublicKey,
    /// When it was offered; the target has until `deadline`.
    since: Instant,
    deadline: Instant,
    plan: DirectPlan,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum DirectPlan {
    Relay,
    SocketPair,
    Dial { addr: String, token: [u8; 32] },
}

/// What the broker's connections share: their muxes and control stages,
/// the names, watchers, routes, opens, policy, budgets and timers. It takes
/// plaintext: each connection's [`Link`] runs its handshake and transport.
pub struct Hub {
    config: BrokerConfig,
    owner: PublicKey,
    rng: Box<dyn CryptoRngCore + Send>,
    conns: BTreeMap<ConnId, Connection>,
    next_conn: ConnId,
    door: Door,
    /// Connections by unix user.
    by_uid: HashMap<u32, usize>,
    usage: HashMap<PublicKey, KeyUsage>,
    registry: Registry,
    watchers: BTreeSet<ConnId>,
    /// By target end.
    pending: BTreeMap<(ConnId, ChannelId), PendingOpen>,
    /// Accepted opens waiting for the runtime's socketpair, by pair.
    pairs: BTreeMap<PairId, (ConnId, ChannelId, PendingOpen)>,
    next_pair: PairId,
    /// Socketpair ends from the request until each is sent.
    fds: FdBudget,
    /// Channels between each two keys.
    shares: Shares,
    /// Buffer bytes reserved, per key.
    bytes: ByteBudget,
    /// Moves whenever growth is given back (ports read it without the hub).
    growth_epoch: Arc<AtomicU64>,
    /// Registrations, per source and in all: each can be an event for every
    /// watcher.
    registrations: rates::TieredRates,
    timers: BTreeSet<(Instant, Timer)>,
    events: VecDeque<Event>,
    /// Connections that did not read what they asked for: closed at the
    /// end of the current call.
    slow: Vec<ConnId>,
    scratch: BytesMut,
    /// The latest time any call brought, for work done in `poll_transmit`.
    pub(super) last_now: Instant,
    /// Legacy connections past the handshake, per source.
    legacy_sources: legacy::LegacySources,
    /// Legacy connections whose channel is gone: closed at the end of the
    /// current call.
    legacy_done: Vec<ConnId>,
    /// Refusals and disconnects by cause, since the start.
    counters: Counters,
    /// Connections that asked to see what the broker does.
    monitors: BTreeMap<ConnId, monitor::Filter>,
    /// What they will be told at the end of the current call.
    observed: Vec<crate::control::MonitorEvent>,
    /// The last number a channel was given for monitors.
    channel_serial: u64,
}

impl Hub {
    /// A hub with no connections. `rng` makes direct channel tokens (and,
    /// through [`Hub::rng`], the [`Broker`]'s ephemeral keys).
    ///
    /// Limits that cannot work together are made to: `max_window` is at
    /// least `initial_window`, and `max_frame` at least 1 KiB.
    pub fn new(mut config: BrokerConfig, rng: Box<dyn CryptoRngCore + Send>) -> Self {
        config.limits.reconcile();
        let limits = &config.limits;
        let door = Door::new(limits);
        let fds = FdBudget::new(limits.max_descriptors_per_key, limits.max_descriptors);
        let bytes = ByteBudget::new(ByteLimits::of(limits));
        let registrations = registration_rates(limits);
        Hub {
            owner: config.handshake.keypair.public(),
            config,
            rng,
            conns: BTreeMap::new(),
            next_conn: 1,
            door,
            by_uid: HashMap::new(),
            usage: HashMap::new(),
            registry: Registry::default(),
            watchers: BTreeSet::new(),
            pending: BTreeMap::new(),
            pairs: BTreeMap::new(),
            next_pair: 1,
            fds,
            shares: Shares::default(),
            bytes,
            growth_epoch: Arc::default(),
            registrations,
            timers: BTreeSet::new(),
            events: VecDeque::new(),
            slow: Vec::new(),
            scratch: BytesMut::new(),
            last_now: Instant::ZERO,
            legacy_sources: Default::default(),
            legacy_done: Vec::new(),
            counters: Counters::default(),
            monitors: BTreeMap::new(),
            observed: Vec::new(),
            channel_serial: 0,
        }
    }

    /// The broker's key.
    pub fn public_key(&self) -> PublicKey {
        self.owner
    }

    /// The identity and network key every link handshakes with.
    pub fn handshake_config(&self) -> Arc<HandshakeConfig> {
        self.config.handshake.clone()
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.config.limits
    }

    /// Takes a new policy and new limits (a reload): what comes next is
    /// decided by them, what is held stays. Connections keep the rights they
    /// were admitted with; the limits peers were told in their hello stay
    /// until a restart ([`Limits::keep_fixed`]): their names are returned.
    pub fn reconfigure(&mut self, policy: Policy, limits: Limits) -> Vec<&'static str> {
        let (limits, kept) = self.config.limits.keep_fixed(limits);
        let old = std::mem::replace(&mut self.config.limits, limits);
        let limits = &self.config.limits;
        self.config.policy = policy;
        self.door.set_limits(limits);
        self.fds
            .set_limits(limits.max_descriptors_per_key, limits.max_descriptors);
        self.bytes.set_limits(ByteLimits::of(limits));
        let rates = |l: &Limits| {
            (
                l.registrations_per_source_per_s,
                l.registrations_per_network_per_s,
                l.registrations_per_s,
            )
        };
        if rates(&old) != rates(limits) {
            self.registrations = registration_rates(limits);
        }
        kept
    }

    /// Refusals and disconnects by cause, since the hub was made.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    // ── the face ──────────────────────────────────────────────────────

    /// The randomness the hub was made with, for a [`Link`] made on the same thread.
    pub fn rng(&mut self) -> &mut (dyn CryptoRngCore + Send) {
        &mut *self.rng
    }

    /// Whether a connection from `origin` runs box-stream after its handshake.
    pub fn is_boxed(&self, origin: &Origin) -> bool {
        origin.transport() != TransportKind::Unix || self.config.boxstream_on_unix
    }

    /// A socket was accepted from `origin`. The caller makes its [`Link`]
    /// (`hub.link_plan(&origin).start(rng, now)`), which runs the
    /// handshake (none on a legacy `noauth` listener).
    /// The timer runs (the first message has the shorter
    /// `first_message_timeout`).
    pub fn accept(&mut self, now: Instant, origin: Origin) -> Result<ConnId, AcceptError> {
        let conn = self.next_conn;
        self.next_conn += 1;
        let limits = &self.config.limits;
        let of_user = origin
            .uid()
            .map(|uid| (uid, self.by_uid.get(&uid).copied().unwrap_or(0)));
        let admitted = if self.conns.len() >= limits.max_connections {
            Err((AcceptError::TooManyConnections, self.door.refused(now)))
        } else if let Some((uid, _)) = of_user.filter(|(_, n)| *n >= limits.max_connections_per_uid)
        {
            let limit = limits.max_connections_per_uid;
            let error = AcceptError::TooManyForUser { uid, limit };
            Err((error, self.door.refused(now)))
        } else {
            self.door
                .admit(now, &origin)
                .map_err(|(refusal, line)| (refusal.into(), line))
        };
        if let Err((error, line)) = admitted {
            let cause = match error {
                AcceptError::Door(_) => Cause::HandshakeLimit,
                _ => Cause::Code(ErrorCode::TooManyConnections),
            };
            self.counters.add(Outcome::Refusal, cause);
            if let Some(refused) = line {
                let reason = format!(
                    "refusing connections: {error} ({refused} refused since the last such line, the last from {})",
                    origin.describe()
                );
                self.warn(conn, Some((Outcome::Refusal, cause)), reason);
            }
            return Err(error);
        }
        if let Some(refused) = self.door.admitted(now) {
            let reason = format!("admitting connections again, {refused} refused");
            self.warn(conn, None, reason);
        }
        if let Some(uid) = origin.uid() {
            *self.by_uid.entry(uid).or_insert(0) += 1;
        }
        let limits = &self.config.limits;
        let handshake_deadline = now + limits.handshake_timeout;
        let first_deadline = handshake_deadline.min(now + limits.first_message_timeout);
        let boxed = self.is_boxed(&origin);
        self.conns.insert(
            conn,
            Connection::new(origin, boxed, now, handshake_deadline),
        );
        self.set_deadline(conn, Some(first_deadline));
        Ok(conn)
    }

    /// What a connection's [`Link`] said. For [`LinkEvent::Authorize`], the
    /// verdict to hand to [`Link::authorize`]; `None` for everything else.
    pub fn handle_link(&mut self, now: Instant, conn: ConnId, event: LinkEvent) -> Option<bool> {
        let verdict = match event {
            LinkEvent::FirstMessage => {
                // Past message 1, the whole handshake's deadline holds.
                let c = self.conns.get(&conn)?;
                let deadline = c.handshake_deadline;
                self.set_deadline(conn, Some(deadline));
                None
            }
            LinkEvent::Authorize(key) => self.authorize(now, conn, key),
            LinkEvent::Established => {
                self.established(now, conn);
                None
            }
            LinkEvent::Input(bytes) => {
                self.input(now, conn, &bytes);
                None
            }
            LinkEvent::Ended(end) => {
                match end {
                    LinkEnd::Handshake(e) => {
                        let cause = Cause::of_handshake(&e);
                        self.drop_connection(
                            now,
                            conn,
                            None,
                            cause,
                            format!("handshake failed: {e}"),
                        )
                    }
                    LinkEnd::Goodbye if self.is_legacy(conn) => self.legacy_eof(now, conn),
                    LinkEnd::Goodbye => {
                        self.peer_ended(now, conn, Cause::Goodbye, "said goodbye".into())
                    }
                    LinkEnd::BoxStream(e) => {
                        let reason = format!("box-stream: {e}");
                        self.peer_ended(now, conn, Cause::BoxStream, reason)
                    }
                    LinkEnd::TooEarly(n) => {
                        let reason = format!("sent more than {n} bytes before it was admitted");
                        let cause = Cause::Code(ErrorCode::ProtocolViolation);
                        self.drop_connection(now, conn, None, cause, reason)
                    }
                }
                None
            }
        };
        self.finish_call(now);
        verdict
    }

    /// The socket ended (EOF); `clean`: on a box boundary (what
    /// [`Link::handle_eof`] says). A legacy client's clean end is its
    /// channel's FIN, and the connection stays for what the plugin still
    /// sends (`true`); any other end is a disconnect (`false`: the
    /// connection is gone).
    pub fn handle_eof(&mut self, now: Instant, conn: ConnId, clean: bool, reason: &str) -> bool {
        let stays = clean
            && self
                .conns
                .get(&conn)
                .is_some_and(|c| matches!(c.stage, Stage::Legacy));
        match stays {
            true => self.legacy_eof(now, conn),
            false => self.disconnect(now, conn, reason.to_owned()),
        }
        self.finish_call(now);
        stays
    }

    /// The socket failed or the runtime gave up on it.
    pub fn handle_disconnect(&mut self, now: Instant, conn: ConnId, reason: &str) {
        self.disconnect(now, conn, reason.to_owned());
        self.finish_call(now);
    }

    /// The next plaintext mux bytes for `conn`: for its link to seal,
    /// unless [`Link::is_plain`] (then they go out as they are). For a
    /// runtime that drives the hub and every port on one thread; a
    /// threaded one calls [`PortHandle::poll_transmit`] with the hub let go.
    pub fn poll_transmit(&mut self, conn: ConnId) -> Option<Transmit> {
        let port = self.port(conn)?;
        port.poll_transmit(self)
    }

    /// The port of `conn`, once its handshake is over (a legacy client's
    /// from its offer on, though it carries nothing before message 4):
    /// what its runtime drives relayed data through without the hub.
    pub fn port(&self, conn: ConnId) -> Option<PortHandle> {
        self.conns.get(&conn)?.port.clone()
    }

    /// What a port handed the hub (see [`PortDriver`]).
    pub(in crate::broker) fn handle_port(
        &mut self,
        now: Option<Instant>,
        conn: ConnId,
        input: HubInput<'_>,
    ) {
        let now = now.unwrap_or(self.last_now);
        // A port's step can come after its connection ended (another
        // thread ended it): nothing is left to do.
        if self.conns.contains_key(&conn) {
            match input {
                HubInput::Control(bytes) => self.on_control_bytes(now, conn, bytes),
                HubInput::Unrouted(channel) => self.on_unrouted(now, conn, channel, "data", None),
                HubInput::Event(crate::mux::MuxEvent::GoAway { code, reason }) => {
                    let reason = format!("went away ({code}): {reason}");
                    self.peer_ended(now, conn, Cause::Goodbye, reason);
                }
                HubInput::Event(event) => self.on_channel_event(now, conn, event),
                HubInput::Credit(channel) => self.pass_credit((conn, channel)),
                HubInput::Violation(e) => {
                    self.close(now, conn, ErrorCode::ProtocolViolation, e.to_string())
                }
                HubInput::Slow => self.check_blame(conn),
            }
        }
        self.finish_call(now);
    }

    /// A socketpair end's frame is leaving: the end is the runtime's to
    /// send now (at most a batch of them wait in its queue).
    pub(in crate::broker) fn release_fd(&mut self, pair: PairId, end: PairEnd) {
        self.fds.release(pair, end);
    }

    /// A watcher that fell behind read most of its queue: its resync.
    pub(in crate::broker) fn resync_port(&mut self, conn: ConnId) {
        self.resync(conn);
        // A resync over the bound ends the connection now, as a Watch
        // over it would, not at some later call.
        self.finish_call(self.last_now);
    }

    /// The next event for the runtime.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The earliest deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            match timer {
                Timer::Conn(conn) => self.on_conn_timer(now, conn),
                Timer::Open(target, channel) => self.on_open_timeout(now, target, channel),
            }
        }
        self.finish_call(now);
    }

    /// The runtime made (or failed to make) the socketpair for a direct
    /// channel. Returns whether its ends are still wanted: `false` when one
    /// side left meanwhile, and the runtime drops both.
    pub fn socketpair_ready(&mut self, now: Instant, pair: PairId, ok: bool) -> bool {
        let wanted = self.on_socketpair(now, pair, ok);
        self.finish_call(now);
        wanted
    }

    /// Ends every connection, telling each why.
    pub fn shutdown(&mut self, now: Instant) {
        let all: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in all {
            self.close(
                now,
                conn,
                ErrorCode::Shutdown,
                "the broker is shutting down".into(),
            );
        }
        self.finish_call(now);
    }

    // ── input ─────────────────────────────────────────────────────────

    /// Plaintext mux bytes a plain link passed through
    /// ([`Link::handle_input`]): as [`LinkEvent::Input`], uncopied. For a
    /// runtime that drives the hub and every port on one thread; a
    /// threaded one calls [`PortHandle::handle_input`] with the hub let go.
    pub fn handle_plaintext(&mut self, now: Instant, conn: ConnId, plain: &[u8]) {
        self.input(now, conn, plain);
        self.finish_call(now);
    }

    fn input(&mut self, now: Instant, conn: ConnId, input: &[u8]) {
        // No plaintext before the handshake is over.
        if let Some(port) = self.port(conn) {
            port.handle_input(now, input, self);
        }
    }

    /// The link of `conn` asks whether `key` may in: the policy and the
    /// per-key limit decide. Refused, the connection is dropped with
    /// nothing more sent: the key never gets a session.
    /// On a legacy listener the route's plugin decides instead, later
    /// (`None` meanwhile: [`Event::Authorized`] brings its yes).
    fn authorize(&mut self, now: Instant, conn: ConnId, key: PublicKey) -> Option<bool> {
        let asking = self
            .conns
            .get(&conn)
            .is_some_and(|c| matches!(c.stage, Stage::Handshake) && c.key.is_none());
        if !asking {
            return Some(false);
        }
        if self.is_legacy(conn) {
            return self.offer_legacy(now, conn, key);
        }
        match self.admit(conn, key) {
            Ok(()) => Some(true),
            Err((code, reason)) => {
                self.drop_connection(now, conn, Some(key), Cause::Code(code), reason);
                Some(false)
            }
        }
    }

    /// The policy and the per-key limit decide on a key that completed the handshake.
    fn admit(&mut self, conn: ConnId, key: PublicKey) -> Result<(), (ErrorCode, String)> {
        let c = &self.conns[&conn];
        let rights =
            self.config
                .policy
                .rights(&key, &c.origin.peer, &self.owner, self.config.owner_uid);
        let Some(rights) = rights else {
            let reason = format!("{key} is not admitted from {}", c.origin.describe());
            return Err((ErrorCode::NotPermitted, reason));
        };
        let usage = self.usage.entry(key).or_default();
        if usage.connections >= self.config.limits.max_connections_per_key {
            let n = usage.connections;
            self.forget_key_if_idle(&key);
            let reason = format!("{key} already has {n} connections");
            return Err((ErrorCode::TooManyConnections, reason));
        }
        usage.connections += 1;
        let c = self.conns.get_mut(&conn).expect("checked above");
        c.key = Some(key);
        c.rights = rights;
        Ok(())
    }

    /// The handshake of `conn` is over (its key was admitted): the mux
    /// starts, and the hello is due.
    fn established(&mut self, now: Instant, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !matches!(c.stage, Stage::Handshake) || c.key.is_none() {
            return;
        }
        if c.port.is_some() {
            return self.legacy_established(now, conn);
        }
        let origin = c.origin;
        let mux = Mux::new(crate::mux::Side::Listener, self.config.limits.mux_config());
        let port = self.new_port(mux, now);
        let c = self.conns.get_mut(&conn).expect("checked above");
        c.port = Some(PortHandle::new(conn, port));
        c.stage = Stage::Hello;
        self.door.release(&origin);
        let hello_timeout = self.config.limits.hello_timeout;
        self.set_deadline(conn, Some(now + hello_timeout));
    }

    /// A connection's port around `mux`, with the limits in force.
    fn new_port(&self, mux: Mux, now: Instant) -> Port {
        let limits = &self.config.limits;
        let limits = PortLimits {
            initial_window: u64::from(limits.initial_window),
            max_window: u64::from(limits.max_window),
            max_control_queue: limits.max_control_queue,
        };
        Port::new(mux, limits, self.growth_epoch.clone(), now)
    }

    // ── connection timers ─────────────────────────────────────────────

    fn set_deadline(&mut self, conn: ConnId, deadline: Option<Instant>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if let Some(old) = c.deadline.take() {
            self.timers.remove(&(old, Timer::Conn(conn)));
        }
        if let Some(at) = deadline {
            c.deadline = Some(at);
            self.timers.insert((at, Timer::Conn(conn)));
        }
    }

    fn on_conn_timer(&mut self, now: Instant, conn: ConnId) {
        let limits = self.config.limits.clone();
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.deadline = None;
        match c.stage {
            Stage::Handshake => {
                let reason = "handshake timed out".into();
                self.drop_connection(now, conn, None, Cause::HandshakeTimeout, reason);
            }
            Stage::Hello => self.close(
                now,
                conn,
                ErrorCode::HelloTimeout,
                "no hello in time".into(),
            ),
            Stage::Legacy => self.on_legacy_timer(now, conn),
            Stage::Ready => {
                let port = c.port.clone().expect("ready means established");
                let mut port = port.lock();
                match port.ping_sent {
                    Some(sent) if now >= sent + limits.dead_peer_timeout => {
                        drop(port);
                        self.close(
                            now,
                            conn,
                            ErrorCode::IdleTimeout,
                            "no answer to a ping".into(),
                        )
                    }
                    Some(sent) => {
                        drop(port);
                        self.set_deadline(conn, Some(sent + limits.dead_peer_timeout))
                    }
                    None if now >= port.last_input + limits.idle_timeout => {
                        port.ping_sent = Some(now);
                        port.mux.ping(now.as_nanos());
                        drop(port);
                        self.wake(conn);
                        self.set_deadline(conn, Some(now + limits.dead_peer_timeout));
                    }
                    None => {
                        let at = port.last_input + limits.idle_timeout;
                        drop(port);
                        self.set_deadline(conn, Some(at));
                    }
                }
            }
        }
    }

    // ── output helpers ────────────────────────────────────────────────

    /// Emits [`Event::Transmit`] if the connection has output and no event is out.
    fn wake(&mut self, conn: ConnId) {
        let port = self.conns.get(&conn).and_then(|c| c.port.as_ref());
        if port.is_some_and(|port| port.lock().take_wake()) {
            self.events.push_back(Event::Transmit(conn));
        }
    }

    /// Queues a control message the connection did not ask for (an
    /// incoming open): the caller checked [`Hub::has_room`] first.
    fn send(&mut self, conn: ConnId, message: &Message) {
        self.send_tagged(conn, message, None);
    }

    fn send_tagged(&mut self, conn: ConnId, message: &Message, tag: Option<u64>) {
        let Some(port) = self.conns.get(&conn).and_then(|c| c.port.as_ref()) else {
            return;
        };
        crate::control::encode(message, &mut self.scratch);
        port.lock().mux.send_control_tagged(&self.scratch, tag);
        self.scratch.clear();
        self.wake(conn);
    }

    /// Queues what the connection asked for (a reply, a watch event). Under
    /// the blame rule, one that does not read it in time is disconnected.
    fn reply(&mut self, conn: ConnId, message: &Message) {
        self.send(conn, message);
        self.check_blame(conn);
    }

    /// A connection over its control-queue bound with traffic it asked for
    /// is closed at the end of this call.
    fn check_blame(&mut self, conn: ConnId) {
        if self.queued_control(conn) > self.config.limits.max_control_queue {
            self.slow.push(conn);
        }
    }

    /// Queues pre-encoded control bytes (a watch event shared by all watchers).
    fn reply_encoded(&mut self, conn: ConnId, encoded: &[u8]) {
        let Some(port) = self.conns.get(&conn).and_then(|c| c.port.as_ref()) else {
            return;
        };
        port.lock().mux.send_control(encoded);
        self.wake(conn);
        self.check_blame(conn);
    }

    fn queued_control(&self, conn: ConnId) -> usize {
        self.conns
            .get(&conn)
            .and_then(|c| c.port.as_ref())
            .map_or(0, |port| port.lock().mux.queued_urgent())
    }

    /// Whether `conn` can take `len` more control bytes it did not ask for
    /// (an incoming open, a peer's reason for a reset). Such traffic fills at
    /// most half the bound, so what it asked for, by which the blame rule
    /// judges it, always has the other half.
    fn has_room(&self, conn: ConnId, len: usize) -> bool {
        self.queued_control(conn) + len <= self.config.limits.max_control_queue / 2
    }

    /// Work deferred to the end of every public call: closing slow readers
    /// and finished legacy connections, telling monitors what happened.
    fn finish_call(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
        // Closing makes events for monitors, and sending them can find a
        // monitor slow: until neither has more to do.
        loop {
            self.close_slow_and_legacy_done(now);
            if !self.send_observed() && self.slow.is_empty() && self.legacy_done.is_empty() {
                break;
            }
        }
    }

    fn close_slow_and_legacy_done(&mut self, now: Instant) {
        while let Some(conn) = self.slow.pop() {
            // Checked again: the runtime may have drained it since.
            if self.queued_control(conn) > self.config.limits.max_control_queue {
                let reason = format!(
                    "did not read its replies: {} control bytes queued, the limit is {}",
                    self.queued_control(conn),
                    self.config.limits.max_control_queue
                );
                self.close(now, conn, ErrorCode::SlowReader, reason);
            }
        }
        while let Some(conn) = self.legacy_done.pop() {
            let Some(c) = self.conns.get(&conn) else {
                continue;
            };
            let key = c.key;
            // Ended cleanly only if the plugin finished: then the client
            // has box-stream's goodbye; else it must not read a clean end.
            let finished = c.port.as_ref().is_some_and(|p| p.plugin_finished());
            let (cause, reason) = match finished {
                true => (Cause::ChannelEnded, "its channel ended"),
                false => (Cause::ChannelReset, "its channel was reset"),
            };
            let message = format!("closed: {reason}");
            self.record(conn, key, Outcome::Disconnect, cause, message);
            self.teardown(now, conn);
            let reason = reason.to_owned();
            self.events.push_back(match finished {
                true => Event::Close {
                    conn,
                    last_words: Bytes::new(),
                    reason,
                },
                false => Event::Abort { conn, reason },
            });
        }
    }

    // ── the end of a connection ───────────────────────────────────────

    /// Ends a connection the broker decided to end: what it still had to
    /// send and a GOAWAY as last words (the link adds box-stream's
    /// goodbye), then everything it held is released.
    fn close(&mut self, now: Instant, conn: ConnId, code: ErrorCode, reason: String) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let mut last_words = BytesMut::new();
        // A legacy client hears no mux: its link's goodbye is the end.
        if let Some(port) = c.port.as_ref().filter(|p| !p.is_bridge()) {
            let mut port = port.lock();
            port.mux.go_away(code, &reason);
            while let Some(chunk) = port.mux.poll_transmit() {
                last_words.extend_from_slice(&chunk);
            }
        }
        let last_words = last_words.freeze();
        // A legacy client whose plugin had not finished must not read a
        // clean end (a shutdown, its idle timeout, a violation).
        let abort = c
            .port
            .as_ref()
            .is_some_and(|p| p.is_bridge() && !p.plugin_finished());
        let key = c.key;
        let message = format!("closed: {reason}");
        self.record(conn, key, Outcome::Disconnect, Cause::Code(code), message);
        self.teardown(now, conn);
        let reason = printable(reason);
        self.events.push_back(match abort {
            true => Event::Abort { conn, reason },
            false => Event::Close {
                conn,
                last_words,
                reason,
            },
        });
    }

    /// Refuses a connection: ends it without last words (handshake
    /// failures, refusals there: nothing goes out that the handshake does
    /// not send). It counts as a refusal and as a disconnect.
    /// `key`: the one it proved, if the connection has none yet (a key
    /// refused in the handshake).
    fn drop_connection(
        &mut self,
        now: Instant,
        conn: ConnId,
        key: Option<PublicKey>,
        cause: Cause,
        reason: String,
    ) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let key = c.key.or(key);
        self.counters.add(Outcome::Disconnect, cause);
        let message = format!("refused: {reason}");
        self.record(conn, key, Outcome::Refusal, cause, message);
        self.teardown(now, conn);
        self.events.push_back(Event::Close {
            conn,
            last_words: Bytes::new(),
            reason: printable(reason),
        });
    }

    /// The peer ended the connection (GOAWAY, box-stream goodbye) or broke
    /// its box-stream: everything is released and the runtime is told to
    /// close the socket (after box-stream's goodbye, which the link adds
    /// if its stream is whole).
    pub(super) fn peer_ended(&mut self, now: Instant, conn: ConnId, cause: Cause, reason: String) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let last_words = Bytes::new();
        let key = c.key;
        let message = format!("ended by the peer: {reason}");
        self.record(conn, key, Outcome::Disconnect, cause, message);
        self.teardown(now, conn);
        self.events.push_back(Event::Close {
            conn,
            last_words,
            reason: printable(reason),
        });
    }

    /// The socket is gone already: release everything, tell nobody but the log.
    fn disconnect(&mut self, now: Instant, conn: ConnId, reason: String) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let key = c.key;
        let message = format!("disconnected: {reason}");
        self.record(conn, key, Outcome::Disconnect, Cause::SocketClosed, message);
        self.teardown(now, conn);
    }

    /// Releases everything `conn` held: its name (handed to the next in line
    /// or freed, and watchers told), its watch, its channels (peers reset),
    /// its opens (the other side told), its timers and its counts.
    fn teardown(&mut self, now: Instant, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if let Some(deadline) = c.deadline {
            self.timers.remove(&(deadline, Timer::Conn(conn)));
        }
        if matches!(c.stage, Stage::Handshake) {
            self.door.release(&c.origin);
        }
        if let Some(source) = c.legacy_source {
            self.legacy_sources.remove(source);
        }
        if let Some(uid) = c.origin.uid() {
            let n = self.by_uid.get_mut(&uid).expect("counted at accept");
            *n -= 1;
            if *n == 0 {
                self.by_uid.remove(&uid);
            }
        }
        self.watchers.remove(&conn);
        self.monitors.remove(&conn);

        let departure = self.registry.remove(conn);
        if let Some(presence) = departure.presence {
            self.announce(now, presence);
        }
        if let Some(new_owner) = departure.new_owner {
            if let Some(name) = self.registry.name_of(new_owner).cloned() {
                self.reply(new_owner, &Message::NameAcquired { name });
            }
        }

        if let Some(port) = &c.port {
            let (ends, unsent) = {
                let mut port = port.lock();
                let ends = std::mem::take(&mut port.ends);
                let unsent: std::collections::BTreeSet<_> = ends
                    .keys()
                    .copied()
                    .filter(|&c| port.mux.has_unsent(c))
                    .collect();
                (ends, unsent)
            };
            self.routes_gone(now, conn, ends, &unsent);
        }
        for &(target, target_channel) in &c.opens_out {
            self.cancel_open_by_opener(target, target_channel);
        }
        for &channel in &c.opens_in {
            self.cancel_open_by_target(conn, channel);
        }
        self.cancel_pairs_of(conn);
        self.fds.release_conn(conn);

        if let Some(key) = c.key {
            if let Some(usage) = self.usage.get_mut(&key) {
                usage.connections -= 1;
            }
            self.forget_key_if_idle(&key);
        }
    }

    fn forget_key_if_idle(&mut self, key: &PublicKey) {
        if self.usage.get(key).is_some_and(KeyUsage::is_empty) {
            self.usage.remove(key);
        }
    }
}

#[cfg(test)]
mod tests;

/// The hub drives ports itself for a runtime on one thread.
impl PortDriver for Hub {
    fn with_hub<R>(&mut self, f: impl FnOnce(&mut Hub) -> R) -> R {
        f(self)
    }

    fn wake(&mut self, port: &PortHandle) {
        // The port said it was not notified yet (`Port::take_wake`).
        self.events.push_back(Event::Transmit(port.conn()));
    }

    fn resume(&mut self, port: &PortHandle) {
        self.events.push_back(Event::Resume(port.conn()));
    }
}

/// Registrations per source, per /48 and in all (each can be an event for
/// every watcher).
fn registration_rates(limits: &Limits) -> rates::TieredRates {
    rates::TieredRates::new(
        limits.registrations_per_source_per_s,
        limits.registrations_per_network_per_s,
        Some(limits.registrations_per_s),
    )
}
