//! A direct TCP channel from a `PluginConn` in a mio loop: the opener, on the
//! broker's TCP listener, asks for a direct channel to a tokio plugin that
//! listens for them; the broker answers `Dial`, the loop dials with
//! `DirectTcp`, and a megabyte goes there and back on it.

#[path = "mio/common.rs"]
mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::{broker_keys, keys, serve_echo, Broker, PATIENCE};
use mio::{Events, Interest, Poll, Token};
use plugboard_core::control::{ErrorCode, Name, OpenedPath};
use plugboard_core::direct::DirectEvent;
use plugboard_core::session::{SessionConfig, SessionEvent};
use plugboard_mio::{Addr, Clock, DirectTcp, PluginConn};

const PLUGIN: Token = Token(1);
const DIRECT: Token = Token(2);

#[test]
fn a_plugin_conn_dials_a_direct_tcp_channel() {
    let broker = Broker::start("direct-tcp");
    // The target: a tokio plugin on the unix socket, taking direct channels.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let unix = broker.unix.clone();
    let far = runtime.block_on(async {
        plugboard_tokio::Plugin::builder(keys(4))
            .broker_key(broker_keys().public())
            .name("far")
            .direct_listen("tcp:127.0.0.1:0")
            .connect(&unix)
            .await
            .unwrap()
    });
    let _target = {
        let _in = runtime.enter();
        serve_echo(far)
    };

    // The opener: a PluginConn over TCP in a loop of our own.
    let handshake = plugboard_conformance::handshake(keys(2));
    let mut config = SessionConfig::new(handshake.clone(), broker_keys().public());
    config.boxstream = true;
    let addr: Addr = broker.tcp.parse().unwrap();
    let mut conn = PluginConn::connect(&addr, config).unwrap();
    let mut poll = Poll::new().unwrap();
    let both = Interest::READABLE | Interest::WRITABLE;
    poll.registry().register(&mut conn, PLUGIN, both).unwrap();
    let mut events = Events::with_capacity(64);
    let clock = Clock::start();
    let handshake = Arc::new(handshake);

    let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let mut back = Vec::new();
    let mut direct: Option<DirectTcp> = None;
    // The relayed channel, until the direct one is accepted.
    let mut relayed = None;
    let mut fin = false;
    let started = std::time::Instant::now();
    while !fin {
        assert!(started.elapsed() < PATIENCE, "the direct channel stalled");
        let timeout = [conn.timeout(), direct.as_ref().and_then(|d| d.timeout())]
            .into_iter()
            .flatten()
            .min();
        poll.poll(&mut events, timeout).unwrap();
        for event in &events {
            match event.token() {
                PLUGIN => conn.handle_ready(event),
                _ => direct.as_mut().unwrap().handle_ready(event),
            }
        }
        conn.handle_timeout();
        while let Some(event) = conn.poll_event() {
            match event {
                SessionEvent::Ready { .. } => {
                    let mut session = conn.session_mut();
                    let now = session.now();
                    let far = Name::new("far").unwrap();
                    session.open(now, far, "echo", Bytes::new(), true).unwrap();
                }
                SessionEvent::Opened {
                    channel,
                    peer,
                    path: OpenedPath::Dial { addr, token },
                    ..
                } => {
                    assert_eq!(peer, keys(4).public());
                    let mut dialed =
                        DirectTcp::dial(&addr, handshake.clone(), peer, token, clock).unwrap();
                    poll.registry().register(&mut dialed, DIRECT, both).unwrap();
                    direct = Some(dialed);
                    relayed = Some(channel);
                }
                SessionEvent::Opened { path, .. } => panic!("expected a dial, got {path:?}"),
                SessionEvent::Closed { reason, .. } => panic!("the broker went: {reason}"),
                _ => {}
            }
        }
        let Some(d) = direct.as_mut() else { continue };
        d.handle_timeout();
        while let Some(event) = d.poll_event() {
            match event {
                DirectEvent::Established { peer } => {
                    assert_eq!(peer, keys(4).public());
                    // The relayed channel is the fallback no more (a reset
                    // before the dial is accepted would end the channel:
                    // the target stops waiting for the dial). The target
                    // resets it too, and its reset may be here first.
                    let channel = relayed.take().expect("opened");
                    let _ = conn
                        .session_mut()
                        .reset(channel, ErrorCode::Cancelled, "direct");
                    d.with_conn(|c| {
                        c.send(&data).unwrap();
                        c.finish().unwrap();
                    });
                }
                DirectEvent::Data(bytes) => back.extend_from_slice(&bytes),
                DirectEvent::Fin => fin = true,
                DirectEvent::Failed(e) => panic!("the direct channel failed: {e}"),
                other => panic!("a dialer got {other:?}"),
            }
        }
    }
    assert_eq!(back.len(), data.len());
    assert!(back == data, "the echo differs");
    drop(direct);
    drop(conn);
    broker.stop();
}

const LISTENER: Token = Token(3);

/// The other end: a `PluginConn` that registered a direct address, a mio
/// `TcpListener` there, and `DirectTcp::accept` admitting only the key and
/// token the broker announced; a tokio plugin on TCP opens to it.
#[test]
fn a_plugin_conn_takes_a_direct_tcp_channel() {
    let broker = Broker::start("direct-tcp-target");
    let mut listener = mio::net::TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let direct_addr = format!("tcp:{}", listener.local_addr().unwrap());
    let handshake = plugboard_conformance::handshake(keys(5));
    let config = SessionConfig::new(handshake.clone(), broker_keys().public());
    let addr: Addr = broker.unix.parse().unwrap();
    let mut conn = PluginConn::connect(&addr, config).unwrap();
    let mut poll = Poll::new().unwrap();
    let both = Interest::READABLE | Interest::WRITABLE;
    poll.registry().register(&mut conn, PLUGIN, both).unwrap();
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .unwrap();
    let mut events = Events::with_capacity(64);
    let clock = Clock::start();
    let handshake = Arc::new(handshake);
    let (registered_tx, registered) = std::sync::mpsc::channel();

    // The opener runs on tokio beside this loop, once the name is there.
    let tcp = broker.tcp.clone();
    let opener = std::thread::spawn(move || {
        registered.recv().unwrap();
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let client = plugboard_tokio::Plugin::builder(keys(2))
                .broker_key(broker_keys().public())
                .connect(&tcp)
                .await
                .unwrap();
            let channel = client.open_direct("near", "echo").await.unwrap();
            assert_eq!(channel.path(), plugboard_tokio::plugin::Path::Tcp);
            common::echo_through(channel, 1 << 20).await;
        });
    });

    // (channel, opener's key, token) the broker announced.
    let mut expected = None;
    let mut direct: Option<DirectTcp> = None;
    let mut done = false;
    let started = std::time::Instant::now();
    while !done {
        assert!(started.elapsed() < PATIENCE, "the direct channel stalled");
        let timeout = [conn.timeout(), direct.as_ref().and_then(|d| d.timeout())]
            .into_iter()
            .flatten()
            .min();
        poll.poll(&mut events, timeout).unwrap();
        for event in &events {
            match event.token() {
                PLUGIN => conn.handle_ready(event),
                LISTENER => {
                    let (stream, _) = listener.accept().unwrap();
                    let mut accepted = DirectTcp::accept(stream, handshake.clone(), clock);
                    poll.registry()
                        .register(&mut accepted, DIRECT, both)
                        .unwrap();
                    direct = Some(accepted);
                }
                _ => direct.as_mut().unwrap().handle_ready(event),
            }
        }
        conn.handle_timeout();
        while let Some(event) = conn.poll_event() {
            match event {
                SessionEvent::Ready { .. } => {
                    let mut session = conn.session_mut();
                    let now = session.now();
                    let near = Name::new("near").unwrap();
                    session
                        .register(now, near, false, Some(direct_addr.clone()))
                        .unwrap();
                }
                SessionEvent::Registered { .. } => registered_tx.send(()).unwrap(),
                SessionEvent::Incoming {
                    channel,
                    from_key,
                    path: plugboard_core::control::IncomingPath::ExpectDial { token },
                    ..
                } => {
                    let mut session = conn.session_mut();
                    let now = session.now();
                    session.accept(now, channel).unwrap();
                    drop(session);
                    expected = Some((channel, from_key, token));
                }
                SessionEvent::Incoming { path, .. } => panic!("expected a dial, got {path:?}"),
                SessionEvent::Closed { reason, .. } => panic!("the broker went: {reason}"),
                _ => {}
            }
        }
        let Some(d) = direct.as_mut() else { continue };
        d.handle_timeout();
        while let Some(event) = d.poll_event() {
            match event {
                DirectEvent::Authorize(key) => {
                    let known = expected.is_some_and(|(_, from, _)| from == key);
                    d.with_conn(|c| c.authorize(known)).unwrap();
                }
                DirectEvent::Token { peer, token } => {
                    let ok = expected.is_some_and(|(_, from, t)| from == peer && t == token);
                    d.with_conn(|c| c.answer_token(ok)).unwrap();
                }
                DirectEvent::Established { .. } => {
                    let (channel, _, _) = expected.take().unwrap();
                    conn.session_mut()
                        .reset(channel, ErrorCode::Cancelled, "direct")
                        .unwrap();
                }
                // An echo: what comes in goes back.
                DirectEvent::Data(bytes) => d.with_conn(|c| c.send(&bytes)).unwrap(),
                DirectEvent::Fin => d.with_conn(|c| c.finish()).unwrap(),
                DirectEvent::Failed(e) => panic!("the direct channel failed: {e}"),
            }
        }
        done = direct.as_ref().is_some_and(|d| d.is_done());
    }
    opener.join().expect("the opener's echo checked out");
    drop(direct);
    drop(conn);
    broker.stop();
}

/// Regression (found stressing `direct_tcp_64_mib_each_way` on mio): a
/// `DirectTcp` whose peer said goodbye was done as soon as it had said its
/// own, with sealed bytes still queued for a full socket; dropped then, its
/// peer saw the stream end in the middle of a frame.
#[test]
fn a_direct_tcp_is_done_only_once_its_queue_is_written() {
    // More than loopback's socket buffers hold, so some stays queued.
    const SENT: usize = 32 << 20;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("tcp:{}", listener.local_addr().unwrap());
    let clock = Clock::start();
    let config = |seed| Arc::new(plugboard_conformance::handshake(keys(seed)));
    let token = [9u8; 32];
    let dialer = DirectTcp::dial(&addr, config(2), keys(4).public(), token, clock).unwrap();
    let (socket, _) = listener.accept().unwrap();
    socket.set_nonblocking(true).unwrap();
    let socket = mio::net::TcpStream::from_std(socket);
    let target = DirectTcp::accept(socket, config(4), clock);
    let mut pair = Pair::new(dialer, target);

    while pair.up != (true, true) {
        pair.step(true);
    }
    // The dialer sends more than the sockets hold while the target reads
    // nothing; then both say goodbye, and the dialer reads the target's.
    pair.dialer.with_conn(|c| c.send(&vec![7; SENT])).unwrap();
    pair.dialer.with_conn(|c| c.finish()).unwrap();
    pair.target.with_conn(|c| c.finish()).unwrap();
    while !pair.dialer_fin {
        pair.step(false);
    }
    assert!(
        pair.dialer.with_conn(|c| c.is_finished()),
        "both said goodbye"
    );
    assert!(pair.dialer.unsent() > 0, "the target read nothing yet");
    assert!(!pair.dialer.is_done(), "done with bytes still queued");

    // The target reads: the dialer writes the rest, then it is done.
    while !(pair.dialer.is_done() && pair.target_fin) {
        pair.step(true);
    }
    assert_eq!(pair.received, SENT, "everything arrived");
}

/// Two `DirectTcp` ends, each in a poll of its own: readiness is
/// edge-triggered, so the target's waits in its poll while it is not asked.
struct Pair {
    dialer: DirectTcp,
    target: DirectTcp,
    polls: [Poll; 2],
    events: Events,
    started: std::time::Instant,
    up: (bool, bool),
    dialer_fin: bool,
    target_fin: bool,
    received: usize,
}

impl Pair {
    fn new(mut dialer: DirectTcp, mut target: DirectTcp) -> Self {
        let polls = [Poll::new().unwrap(), Poll::new().unwrap()];
        let both = Interest::READABLE | Interest::WRITABLE;
        polls[0]
            .registry()
            .register(&mut dialer, PLUGIN, both)
            .unwrap();
        polls[1]
            .registry()
            .register(&mut target, DIRECT, both)
            .unwrap();
        Pair {
            dialer,
            target,
            polls,
            events: Events::with_capacity(64),
            started: std::time::Instant::now(),
            up: (false, false),
            dialer_fin: false,
            target_fin: false,
            received: 0,
        }
    }

    /// One turn of the loop; the target reads only if `target_reads`.
    fn step(&mut self, target_reads: bool) {
        assert!(self.started.elapsed() < PATIENCE, "the connection stalled");
        let wait = std::time::Duration::from_millis(5);
        self.polls[0].poll(&mut self.events, Some(wait)).unwrap();
        for event in &self.events {
            self.dialer.handle_ready(event);
        }
        if target_reads {
            self.polls[1].poll(&mut self.events, Some(wait)).unwrap();
            for event in &self.events {
                self.target.handle_ready(event);
            }
        }
        self.dialer.handle_timeout();
        while let Some(event) = self.dialer.poll_event() {
            match event {
                DirectEvent::Established { .. } => self.up.0 = true,
                DirectEvent::Fin => self.dialer_fin = true,
                other => panic!("the dialer: {other:?}"),
            }
        }
        if !target_reads {
            return;
        }
        self.target.handle_timeout();
        while let Some(event) = self.target.poll_event() {
            let target = &mut self.target;
            match event {
                DirectEvent::Authorize(_) => target.with_conn(|c| c.authorize(true)).unwrap(),
                DirectEvent::Token { .. } => target.with_conn(|c| c.answer_token(true)).unwrap(),
                DirectEvent::Established { .. } => self.up.1 = true,
                DirectEvent::Data(bytes) => self.received += bytes.len(),
                DirectEvent::Fin => self.target_fin = true,
                other => panic!("the target: {other:?}"),
            }
        }
    }
}
