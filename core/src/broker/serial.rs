//! The hub and every connection's link, driven together on one thread: the
//! face a single-threaded runtime (mio), the simulation and the fuzz
//! targets drive, bytes in and bytes out.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use rand_core::CryptoRngCore;

use crate::time::Instant;

use super::{AcceptError, BrokerConfig, ConnId, Event, Hub, Link, Origin, PairId, Transmit};

/// The whole broker on one thread.
pub struct Broker {
    hub: Hub,
    links: HashMap<ConnId, Link>,
    /// Events the links caused, ahead of the hub's.
    events: VecDeque<Event>,
}

impl Broker {
    /// A broker with no connections. `rng` makes ephemeral keys and direct
    /// channel tokens.
    ///
    /// Limits that cannot work together are made to: `max_window` is at
    /// least `initial_window`, and `max_frame` at least 1 KiB.
    pub fn new(config: BrokerConfig, rng: Box<dyn CryptoRngCore + Send>) -> Self {
        Broker {
            hub: Hub::new(config, rng),
            links: HashMap::new(),
            events: VecDeque::new(),
        }
    }

    /// A socket was accepted from `origin`. Its handshake starts; the timer
    /// runs (the first message has the shorter `first_message_timeout`).
    pub fn accept(&mut self, now: Instant, origin: Origin) -> Result<ConnId, AcceptError> {
        let conn = self.hub.accept(now, origin)?;
        let plan = self.hub.link_plan(&origin);
        let link = plan.start(&mut self.hub.rng(), now);
        self.links.insert(conn, link);
        // A link with no handshake has its key to carry at once.
        self.carry(now, conn);
        Ok(conn)
    }

    /// Bytes arrived on a connection. What the broker keeps of them it
    /// copies: the caller may reuse its buffer.
    pub fn handle_input(&mut self, now: Instant, conn: ConnId, input: &[u8]) {
        let Some(link) = self.links.get_mut(&conn) else {
            return;
        };
        let plain = link.handle_input(now, input);
        self.carry(now, conn);
        if let Some(plain) = plain {
            self.hub.handle_plaintext(now, conn, plain);
        }
    }

    /// Carries a link's events to the hub, and its verdicts back.
    fn carry(&mut self, now: Instant, conn: ConnId) {
        let Some(link) = self.links.get_mut(&conn) else {
            return;
        };
        while let Some(event) = link.poll_event() {
            if let Some(verdict) = self.hub.handle_link(now, conn, event) {
                link.authorize(verdict);
            }
        }
        if link.has_output() && self.hub.is_open(conn) {
            self.events.push_back(Event::Transmit(conn));
        }
    }

    /// How much a legacy connection takes now (see
    /// [`PortHandle::input_room`](super::PortHandle::input_room)); `None`
    /// for every other connection. What is read past it is held, up to a
    /// bound: a runtime that does not keep to it ends the connection.
    pub fn input_room(&self, conn: ConnId) -> Option<usize> {
        self.hub.port(conn)?.input_room()
    }

    /// The peer closed its end (EOF). Whether the connection stays: a
    /// legacy client's clean end is its channel's FIN, and the plugin may
    /// still answer it (stop reading it; keep writing).
    pub fn handle_eof(&mut self, now: Instant, conn: ConnId) -> bool {
        let Some(link) = self.links.get_mut(&conn) else {
            return false;
        };
        let half_close = self.hub.port(conn).is_some_and(|port| port.is_bridge());
        let (clean, reason) = link.handle_eof(half_close);
        let stays = self.hub.handle_eof(now, conn, clean && half_close, &reason);
        if !stays {
            self.links.remove(&conn);
        }
        stays
    }

    /// The socket failed or the runtime gave up on it.
    pub fn handle_disconnect(&mut self, now: Instant, conn: ConnId, reason: &str) {
        self.links.remove(&conn);
        self.hub.handle_disconnect(now, conn, reason);
    }

    /// The next bytes to write to `conn`: the handshake's, then the mux's
    /// (sealed in batches on box-stream).
    pub fn poll_transmit(&mut self, conn: ConnId) -> Option<Transmit> {
        let link = self.links.get_mut(&conn)?;
        if let Some(data) = link.poll_transmit() {
            return Some(Transmit { data, fd: None });
        }
        if link.is_plain() {
            return self.hub.poll_transmit(conn);
        }
        let hub = &mut self.hub;
        if let Some(data) = link.seal_from(|| hub.poll_transmit(conn).map(|t| t.data)) {
            return Some(Transmit { data, fd: None });
        }
        // A legacy client's plugin finished, and all it sent is out.
        let goodbye = self.hub.port(conn).is_some_and(|port| port.take_goodbye());
        let data = goodbye.then(|| link.goodbye()).filter(|b| !b.is_empty())?;
        Some(Transmit { data, fd: None })
    }

    /// The next event for the runtime.
    pub fn poll_event(&mut self) -> Option<Event> {
        let mut event = match self.events.pop_front() {
            Some(event) => event,
            None => self.hub.poll_event()?,
        };
        // A legacy client admitted: its link makes message 4 here.
        while let Event::Authorized(conn) = event {
            if let Some(link) = self.links.get_mut(&conn) {
                link.authorize(true);
                let now = self.hub.last_now;
                self.carry(now, conn);
            }
            event = match self.events.pop_front() {
                Some(event) => event,
                None => self.hub.poll_event()?,
            };
        }
        Some(match event {
            // No last words at all: not even box-stream's goodbye.
            Event::Abort { conn, reason } => {
                self.links.remove(&conn);
                Event::Abort { conn, reason }
            }
            Event::Close {
                conn,
                last_words,
                reason,
            } => {
                let last_words = match self.links.remove(&conn) {
                    Some(mut link) => link.last_words(&last_words),
                    None => Bytes::new(),
                };
                Event::Close {
                    conn,
                    last_words,
                    reason,
                }
            }
            event => event,
        })
    }

    /// The earliest deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.hub.poll_timeout()
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.hub.handle_timeout(now);
    }

    /// The runtime made (or failed to make) the socketpair for a direct
    /// channel. Returns whether its ends are still wanted: `false` when one
    /// side left meanwhile, and the runtime drops both.
    pub fn socketpair_ready(&mut self, now: Instant, pair: PairId, ok: bool) -> bool {
        self.hub.socketpair_ready(now, pair, ok)
    }

    /// Ends every connection, telling each why.
    pub fn shutdown(&mut self, now: Instant) {
        self.hub.shutdown(now);
    }

    /// The hub: its books, for tests, the simulation and the fuzz targets.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The broker's key.
    pub fn public_key(&self) -> crate::keys::PublicKey {
        self.hub.public_key()
    }

    /// The limits in force.
    pub fn limits(&self) -> &super::Limits {
        self.hub.limits()
    }

    /// Refusals and disconnects by cause ([`Hub::counters`]).
    pub fn counters(&self) -> &super::Counters {
        self.hub.counters()
    }

    /// A reload ([`Hub::reconfigure`]).
    pub fn reconfigure(
        &mut self,
        policy: super::Policy,
        limits: super::Limits,
    ) -> Vec<&'static str> {
        self.hub.reconfigure(policy, limits)
    }
}
