//! A broker and its plugins in memory: the links are byte queues, time is a
//! number, and one seeded RNG decides everything that could vary.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::broker::{Broker, BrokerConfig, ConnId, Cred, Event, LogEntry, Origin};
use crate::control::TransportKind;
use crate::keys::{Keypair, PublicKey};
use crate::session::{Session, SessionConfig, SessionEvent};
use crate::shs::HandshakeConfig;
use crate::time::Instant;

/// A plugin in the simulation.
pub type NodeId = usize;

/// How unkind the links are.
#[derive(Debug, Clone, Copy, Default)]
pub struct Chaos {
    /// Deliver writes in random pieces, some of them later.
    pub split_and_delay: bool,
}

/// What becomes of the sockets sessions ask for when they reconnect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Dials {
    /// They connect at once (the broker may still turn them away).
    #[default]
    Connect,
    /// They fail at once (nothing listens).
    Refuse,
    /// They never connect (a black hole): the session's deadline ends them.
    Hang,
}

/// One plugin: its session and both directions of its link.
pub struct Node {
    /// The plugin's state machine.
    pub session: Session,
    /// The broker's id for this plugin's connection.
    pub conn: ConnId,
    /// The plugin's key.
    pub key: PublicKey,
    /// How it connected.
    pub transport: TransportKind,
    /// Events not yet taken.
    pub events: VecDeque<SessionEvent>,
    /// While set, the plugin does not read: the broker's output for it stays queued.
    pub slow: bool,
    /// The link is down (closed by either side, or cut); a session that
    /// reconnects gets a new one when it asks.
    pub closed: bool,
    /// Where it connects from.
    origin: Origin,
    /// Links it had (the first one too).
    pub links: u32,
    up: VecDeque<Bytes>,
    down: VecDeque<(Bytes, Option<u64>)>,
}

/// The whole deployment.
pub struct Net {
    /// The current time.
    pub now: Instant,
    /// The broker.
    pub broker: Broker,
    /// Every plugin ever connected (closed ones stay, marked).
    pub nodes: BTreeMap<NodeId, Node>,
    /// The broker's log.
    pub log: Vec<LogEntry>,
    /// Whether the runtime manages to make socketpairs.
    pub socketpairs_work: bool,
    /// What becomes of the sockets reconnecting sessions ask for.
    pub dials: Dials,
    by_conn: BTreeMap<ConnId, NodeId>,
    /// Connections with output the broker announced and the runtime did not drain.
    writable: BTreeSet<ConnId>,
    next_node: NodeId,
    rng: ChaCha20Rng,
    chaos: Chaos,
    /// For a broker started again.
    config: BrokerConfig,
    /// The last words of connections that are no node's (a test's own,
    /// driven by hand), as the broker closed them.
    pub closed_others: BTreeMap<ConnId, Bytes>,
    /// Legacy connections the broker said take input again
    /// ([`Event::Resume`]) since a test last looked.
    pub resumed: BTreeSet<ConnId>,
}

impl Net {
    /// A broker with key seed `[0xB0; 32]`, configured by `configure`.
    pub fn new(seed: u64, chaos: Chaos, configure: impl FnOnce(&mut BrokerConfig)) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut config = BrokerConfig::new(HandshakeConfig::new(Keypair::from_seed([0xB0; 32])));
        configure(&mut config);
        let broker_rng = ChaCha20Rng::seed_from_u64(rng.next_u64());
        Net {
            now: Instant::ZERO,
            broker: Broker::new(config.clone(), Box::new(broker_rng)),
            config,
            nodes: BTreeMap::new(),
            log: Vec::new(),
            socketpairs_work: true,
            dials: Dials::Connect,
            by_conn: BTreeMap::new(),
            writable: BTreeSet::new(),
            next_node: 0,
            rng,
            chaos,
            closed_others: BTreeMap::new(),
            resumed: BTreeSet::new(),
        }
    }

    /// The simulation's RNG, for workloads.
    pub fn rng(&mut self) -> &mut ChaCha20Rng {
        &mut self.rng
    }

    /// Connects a plugin with `keypair`. Returns `None` if the broker
    /// turned the socket away at once.
    pub fn connect(&mut self, keypair: Keypair, transport: TransportKind) -> Option<NodeId> {
        self.connect_with(keypair, transport, |_| {})
    }

    /// As [`Net::connect`], adjusting the session's configuration.
    pub fn connect_with(
        &mut self,
        keypair: Keypair,
        transport: TransportKind,
        configure: impl FnOnce(&mut SessionConfig),
    ) -> Option<NodeId> {
        // Each node a host of its own on TCP; on unix, the broker's user.
        let origin = match transport {
            TransportKind::Unix => Origin::unix(
                0,
                Some(Cred {
                    uid: 1000,
                    gid: 1000,
                }),
            ),
            TransportKind::Tcp => {
                let host = 0x0a00_0000 | (self.next_node as u32 & 0x00ff_ffff);
                Origin::tcp(1, std::net::Ipv4Addr::from(host).into())
            }
        };
        self.connect_from(keypair, origin, configure)
    }

    /// As [`Net::connect_with`], from where `origin` says.
    pub fn connect_from(
        &mut self,
        keypair: Keypair,
        origin: Origin,
        configure: impl FnOnce(&mut SessionConfig),
    ) -> Option<NodeId> {
        let transport = origin.transport();
        let conn = self.broker.accept(self.now, origin).ok()?;
        let key = keypair.public();
        let mut config =
            SessionConfig::new(HandshakeConfig::new(keypair), self.broker.public_key());
        config.boxstream = transport == TransportKind::Tcp;
        configure(&mut config);
        let session =
            Session::new(config, &mut self.rng, self.now).expect("the broker key is valid");
        let id = self.next_node;
        self.next_node += 1;
        self.nodes.insert(
            id,
            Node {
                session,
                conn,
                key,
                transport,
                events: VecDeque::new(),
                slow: false,
                closed: false,
                origin,
                links: 1,
                up: VecDeque::new(),
                down: VecDeque::new(),
            },
        );
        self.by_conn.insert(conn, id);
        Some(id)
    }

    /// A plugin.
    pub fn node(&mut self, id: NodeId) -> &mut Node {
        self.nodes.get_mut(&id).expect("a node of this simulation")
    }

    /// Takes a plugin's events.
    pub fn events(&mut self, id: NodeId) -> Vec<SessionEvent> {
        self.node(id).events.drain(..).collect()
    }

    /// Writes `bytes` on a plain (unix) plugin's link as if it had sent
    /// them, after everything its session has queued: frames a hostile
    /// plugin makes by hand, which its session would never send.
    pub fn send_raw(&mut self, id: NodeId, bytes: Bytes) {
        let node = self.node(id);
        assert_eq!(node.transport, TransportKind::Unix, "frames in the clear");
        if node.closed {
            return;
        }
        while let Some(queued) = node.session.poll_transmit() {
            node.up.push_back(queued);
        }
        node.up.push_back(bytes);
    }

    /// Bytes a plain plugin wrote to its socket itself, as
    /// [`Session::send_through`](crate::session::Session::send_through)
    /// does: after what its session handed out, before what it has not.
    pub fn written_through(&mut self, id: NodeId, bytes: Bytes) {
        let node = self.node(id);
        if !node.closed && !bytes.is_empty() {
            node.up.push_back(bytes);
        }
    }

    /// The plugin process dies: its socket closes, and it never comes back.
    pub fn kill(&mut self, id: NodeId) {
        let node = self.node(id);
        let _ = node.session.close("killed");
        while node.session.poll_event().is_some() {}
        if node.closed {
            return;
        }
        node.closed = true;
        node.up.clear();
        node.down.clear();
        let conn = node.conn;
        self.broker.handle_disconnect(self.now, conn, "killed");
    }

    /// The plugin's link breaks under both ends (a network fault): what was
    /// in flight is lost; each end learns it from its socket.
    pub fn cut(&mut self, id: NodeId) {
        let now = self.now;
        let node = self.node(id);
        if node.closed {
            return;
        }
        node.closed = true;
        node.up.clear();
        node.down.clear();
        node.session.handle_socket_error(now, "the link was cut");
        while let Some(e) = node.session.poll_event() {
            node.events.push_back(e);
        }
        let conn = node.conn;
        self.broker.handle_disconnect(now, conn, "the link was cut");
        self.collect();
    }

    /// The broker process dies and starts again, with the same identity
    /// and configuration and nothing else: every link breaks.
    pub fn restart_broker(&mut self) {
        let now = self.now;
        for node in self.nodes.values_mut().filter(|n| !n.closed) {
            node.closed = true;
            node.up.clear();
            node.down.clear();
            node.session
                .handle_socket_error(now, "the broker's socket reset");
            while let Some(e) = node.session.poll_event() {
                node.events.push_back(e);
            }
        }
        let broker_rng = ChaCha20Rng::seed_from_u64(self.rng.next_u64());
        self.broker = Broker::new(self.config.clone(), Box::new(broker_rng));
        self.by_conn.clear();
        self.writable.clear();
        self.collect();
    }

    /// Moves time on and runs every timer due.
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
        self.broker.handle_timeout(self.now);
        for node in self.nodes.values_mut().filter(|n| !n.session.is_closed()) {
            node.session.handle_timeout(self.now);
        }
        self.collect();
    }

    /// Gives a session that asks for a link a new one, as a runtime that
    /// connects a socket does (the broker may turn it away at once).
    fn redial(&mut self, id: NodeId) {
        let now = self.now;
        match self.dials {
            Dials::Connect => {}
            Dials::Hang => return,
            Dials::Refuse => {
                let node = self.nodes.get_mut(&id).expect("exists");
                let refused = "connection refused";
                let _ = node.session.handle_dial_failed(now, refused, &mut self.rng);
                while let Some(e) = node.session.poll_event() {
                    node.events.push_back(e);
                }
                return;
            }
        }
        let origin = self.nodes[&id].origin;
        let accepted = self.broker.accept(now, origin);
        let node = self.nodes.get_mut(&id).expect("exists");
        match accepted {
            Ok(conn) => {
                node.conn = conn;
                node.closed = false;
                node.links += 1;
                node.up.clear();
                node.down.clear();
                self.by_conn.insert(conn, id);
                let _ = node.session.handle_connected(now, &mut self.rng);
            }
            Err(_) => {
                let _ = node.session.handle_dial_failed(
                    now,
                    "the broker turned the socket away",
                    &mut self.rng,
                );
            }
        }
        while let Some(e) = node.session.poll_event() {
            node.events.push_back(e);
        }
    }

    /// Takes every session's events; a session that let its link go sends
    /// its last words and closes its socket; one that asks for a new link
    /// gets one.
    fn collect(&mut self) {
        for node in self.nodes.values_mut() {
            while let Some(e) = node.session.poll_event() {
                node.events.push_back(e);
            }
            if node.closed {
                continue;
            }
            if !node.session.is_connected() {
                while let Some(bytes) = node.session.poll_transmit() {
                    node.up.push_back(bytes);
                }
                for bytes in node.up.drain(..) {
                    self.broker.handle_input(self.now, node.conn, &bytes);
                }
                node.closed = true;
                node.down.clear();
                self.broker.handle_eof(self.now, node.conn);
            }
        }
        let dialing: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.closed && n.session.wants_dial())
            .map(|(id, _)| *id)
            .collect();
        for id in dialing {
            self.redial(id);
        }
    }

    /// Runs until nothing moves and the links are empty.
    pub fn run(&mut self) {
        for _ in 0..100_000 {
            // With chaos a round may hold everything back: done only when
            // nothing moved and nothing is on its way.
            if !self.round() && !self.deliverable() {
                return;
            }
        }
        panic!("the simulation does not settle");
    }

    /// One round: every party writes, every link delivers. Returns whether
    /// anything moved.
    pub fn round(&mut self) -> bool {
        let mut moved = false;
        // Plugins write.
        for node in self.nodes.values_mut().filter(|n| !n.closed) {
            while let Some(bytes) = node.session.poll_transmit() {
                node.up.push_back(bytes);
                moved = true;
            }
        }
        // The broker's events, and its output for readers that read.
        moved |= self.broker_events();
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            moved |= self.deliver_up(id);
            moved |= self.deliver_down(id);
        }
        moved |= self.broker_events();
        self.collect();
        moved
    }

    fn broker_events(&mut self) -> bool {
        let mut moved = false;
        while let Some(event) = self.broker.poll_event() {
            moved = true;
            match event {
                Event::Transmit(conn) => {
                    self.writable.insert(conn);
                }
                Event::Resume(conn) => {
                    self.resumed.insert(conn);
                }
                // A `Broker` handles these itself.
                Event::Authorized(_) | Event::Abort { .. } => {}
                Event::Close {
                    conn, last_words, ..
                } => {
                    if !self.by_conn.contains_key(&conn) {
                        self.closed_others.insert(conn, last_words.clone());
                    }
                    // A link the node replaced since is nothing to it.
                    if let Some(node) = self
                        .by_conn
                        .get(&conn)
                        .and_then(|id| self.nodes.get_mut(id))
                        .filter(|node| node.conn == conn)
                    {
                        if !last_words.is_empty() && !node.closed {
                            node.down.push_back((last_words, None));
                        }
                        node.closed = true;
                        // What is still in flight arrives, then the end.
                        let down: Vec<_> = node.down.drain(..).collect();
                        for (bytes, fd) in down {
                            let _ = match fd {
                                Some(fd) => node.session.handle_input_with_fd(self.now, &bytes, fd),
                                None => node.session.handle_input(self.now, &bytes),
                            };
                        }
                        node.session.handle_eof(self.now);
                        while let Some(e) = node.session.poll_event() {
                            node.events.push_back(e);
                        }
                    }
                }
                Event::CreateSocketPair { pair, .. } => {
                    let ok = self.socketpairs_work;
                    self.broker.socketpair_ready(self.now, pair, ok);
                }
                Event::Log(entry) => self.log.push(entry),
            }
        }
        // Pull output where the broker said there is some, as a runtime
        // does (a missing Transmit event would stall the simulation), for
        // readers that read.
        let writable: Vec<ConnId> = self.writable.iter().copied().collect();
        for conn in writable {
            let Some(node) = self
                .by_conn
                .get(&conn)
                .and_then(|id| self.nodes.get_mut(id))
            else {
                self.writable.remove(&conn);
                continue;
            };
            if node.closed || node.conn != conn {
                self.writable.remove(&conn);
                continue;
            }
            if node.slow {
                continue;
            }
            self.writable.remove(&conn);
            while let Some(t) = self.broker.poll_transmit(node.conn) {
                let fd = t.fd.map(|(pair, end)| {
                    pair << 1 | u64::from(end == crate::broker::PairEnd::Target)
                });
                node.down.push_back((t.data, fd));
                moved = true;
            }
        }
        moved
    }

    /// How many bytes of `len` to deliver now.
    fn portion(&mut self, len: usize) -> usize {
        if !self.chaos.split_and_delay || len <= 1 {
            return len;
        }
        match self.rng.next_u32() % 4 {
            0 => 0, // later
            1 => 1 + (self.rng.next_u32() as usize) % len,
            _ => len,
        }
    }

    fn deliver_up(&mut self, id: NodeId) -> bool {
        let mut moved = false;
        loop {
            let node = &self.nodes[&id];
            if node.closed {
                return moved;
            }
            let Some(len) = node.up.front().map(Bytes::len) else {
                return moved;
            };
            if len == 0 {
                // Nothing to deliver, and it must not block what follows.
                self.nodes.get_mut(&id).expect("exists").up.pop_front();
                continue;
            }
            let n = self.portion(len);
            if n == 0 {
                return moved;
            }
            let node = self.nodes.get_mut(&id).expect("exists");
            let front = node.up.front_mut().expect("checked");
            let piece = front.split_to(n);
            if front.is_empty() {
                node.up.pop_front();
            }
            let conn = node.conn;
            self.broker.handle_input(self.now, conn, &piece);
            moved = true;
        }
    }

    fn deliver_down(&mut self, id: NodeId) -> bool {
        let mut moved = false;
        loop {
            let node = &self.nodes[&id];
            if node.closed || node.slow {
                return moved;
            }
            let Some(len) = node.down.front().map(|(b, _)| b.len()) else {
                return moved;
            };
            let n = self.portion(len);
            if n == 0 {
                return moved;
            }
            let now = self.now;
            let node = self.nodes.get_mut(&id).expect("exists");
            let (front, fd) = node.down.front_mut().expect("checked");
            let piece = front.split_to(n);
            let fd = fd.take();
            if front.is_empty() {
                node.down.pop_front();
            }
            let result = match fd {
                Some(fd) => node.session.handle_input_with_fd(now, &piece, fd),
                None => node.session.handle_input(now, &piece),
            };
            while let Some(e) = node.session.poll_event() {
                node.events.push_back(e);
            }
            if result.is_err() || !node.session.is_connected() {
                node.closed = true;
                let conn = node.conn;
                self.broker
                    .handle_disconnect(now, conn, "the plugin closed the connection");
            }
            moved = true;
        }
    }

    /// Whether some link holds bytes that a later round would deliver (a
    /// slow reader's are not: it does not read).
    fn deliverable(&self) -> bool {
        self.nodes
            .values()
            .filter(|n| !n.closed)
            .any(|n| !n.up.is_empty() || (!n.slow && !n.down.is_empty()))
    }

    /// Bytes in flight on all links.
    pub fn in_flight(&self) -> usize {
        self.nodes
            .values()
            .map(|n| {
                n.up.iter().map(Bytes::len).sum::<usize>()
                    + n.down.iter().map(|(b, _)| b.len()).sum::<usize>()
            })
            .sum()
    }

    /// The time, as a duration since the start.
    pub fn elapsed(&self) -> Duration {
        self.now.since_epoch()
    }
}
