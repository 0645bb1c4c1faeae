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
