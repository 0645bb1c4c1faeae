//! `PluginConn` in a mio loop of its own (as a user would embed it), against
//! the mio server and the tokio server, with tokio plugins opening channels
//! to it: an answer-and-finish protocol, an echo that respects credit, and
//! a direct channel over a socketpair.

#[path = "mio/common.rs"]
mod common;

use std::collections::HashMap;
use std::io::Write as _;

use bytes::Bytes;
use common::{broker_keys, echo_through, keys, plugin, Broker, PATIENCE};
use mio::{Events, Interest, Poll, Token};
use plugboard_core::control::{ChannelId, ChannelPath, IncomingPath, Name};
use plugboard_core::session::{Recv, SessionConfig, SessionEvent};
use plugboard_mio::{Addr, PluginConn};
use plugboard_tokio::plugin::Path;
use tokio::io::AsyncReadExt as _;
use tokio::sync::oneshot;

const ANSWER: &[u8] = b"it is time\n";
const PLUGIN: Token = Token(7);

/// An echo channel: what came in and is not sent back yet.
#[derive(Default)]
struct Echo {
    /// FIN went back.
    finished: bool,
}

/// Runs a plugin named `name` over `addr` on this thread until its
/// connection ends; returns why it ended. Protocol "time" gets [`ANSWER`]
/// and the channel's end (over a socketpair when the opener asked for a
/// direct channel); protocol "echo" gets its bytes back.
fn serve(addr: Addr, seed: u8, name: &str, registered: oneshot::Sender<()>) -> String {
    let config = SessionConfig::new(
        plugboard_conformance::handshake(keys(seed)),
        broker_keys().public(),
    );
    let mut conn = PluginConn::connect(&addr, config).unwrap();
    let mut poll = Poll::new().unwrap();
    let interest = Interest::READABLE | Interest::WRITABLE;
    poll.registry()
        .register(&mut conn, PLUGIN, interest)
        .unwrap();
    let mut events = Events::with_capacity(64);
    let mut registered = Some(registered);
    let mut echoes: HashMap<ChannelId, Echo> = HashMap::new();
    loop {
        poll.poll(&mut events, conn.timeout()).unwrap();
        for event in &events {
            assert_eq!(event.token(), PLUGIN);
            conn.handle_ready(event);
        }
        conn.handle_timeout();
        while let Some(event) = conn.poll_event() {
            match event {
                SessionEvent::Ready { .. } => {
                    let mut session = conn.session_mut();
                    let now = session.now();
                    let name = Name::new(name).unwrap();
                    session.register(now, name, false, None).unwrap();
                }
                SessionEvent::Registered { queued, .. } => {
                    assert!(!queued);
                    registered.take().unwrap().send(()).unwrap();
                }
                SessionEvent::Incoming {
                    channel,
                    protocol,
                    path,
                    ..
                } => {
                    let mut session = conn.session_mut();
                    let now = session.now();
                    session.accept(now, channel).unwrap();
                    drop(session);
                    match protocol.as_str() {
                        "echo" => drop(echoes.insert(channel, Echo::default())),
                        _ if path == IncomingPath::Relay => answer(&mut conn, channel),
                        _ => {} // the path comes next
                    }
                }
                SessionEvent::ChannelPath { channel, path, fd } => match (path, fd) {
                    (ChannelPath::SocketPair, Some(token)) => {
                        // The direct channel is a plain socket of ours now.
                        let fd = conn.take_fd(token).unwrap();
                        let mut socket = std::os::unix::net::UnixStream::from(fd);
                        socket.write_all(ANSWER).unwrap();
                    }
                    _ => answer(&mut conn, channel),
                },
                SessionEvent::Readable { channel } => match echoes.get_mut(&channel) {
                    Some(echo) => pump(&mut conn, channel, echo),
                    // Anything else is read and let go.
                    None => {
                        let mut session = conn.session_mut();
                        while let Ok(Recv::Data(_)) = session.recv(channel, usize::MAX) {}
                    }
                },
                SessionEvent::Writable { channel } => {
                    if let Some(echo) = echoes.get_mut(&channel) {
                        pump(&mut conn, channel, echo);
                    }
                }
                SessionEvent::Reset { channel, .. } | SessionEvent::ChannelClosed { channel } => {
                    echoes.remove(&channel);
                    conn.session_mut().close_channel(channel);
                }
                SessionEvent::Closed { reason, .. } => return reason,
                _ => {}
            }
        }
    }
}

fn answer(conn: &mut PluginConn, channel: ChannelId) {
    let mut session = conn.session_mut();
    // A new channel's window is far larger than the answer.
    assert_eq!(
        session.send(channel, Bytes::from_static(ANSWER)),
        Ok(ANSWER.len())
    );
    session.finish(channel).unwrap();
}

/// Sends back what credit allows, reading only that much (so the credit of
/// the way in goes back as the way back drains, and a slow way back slows
/// the way in); finishes once the opener did and all went back.
fn pump(conn: &mut PluginConn, channel: ChannelId, echo: &mut Echo) {
    let mut session = conn.session_mut();
    while !echo.finished {
        let room = session.send_capacity(channel);
        match session.recv(channel, room) {
            Ok(Recv::Data(bytes)) if !bytes.is_empty() => {
                let sent = session.send(channel, bytes.clone()).unwrap();
                assert_eq!(sent, bytes.len(), "read no more than fits");
            }
            Ok(Recv::Finished) => {
                echo.finished = true;
                session.finish(channel).unwrap();
            }
            // No room (Writable says when), nothing yet (Readable), or reset.
            _ => return,
        }
    }
}

/// Starts [`serve`] on a thread; returns once the name is registered.
async fn spawn_plugin(addr: &str, seed: u8, name: &str) -> std::thread::JoinHandle<String> {
    let addr: Addr = addr.parse().unwrap();
    let name = name.to_owned();
    let (tx, rx) = oneshot::channel();
    let thread = std::thread::spawn(move || serve(addr, seed, &name, tx));
    tokio::time::timeout(PATIENCE, rx).await.unwrap().unwrap();
    thread
}

/// Opens `name` with protocol "time" (`direct` or not) and checks the answer.
async fn ask_time(client: &plugboard_tokio::Plugin, name: &str, direct: bool) -> Path {
    let mut channel = match direct {
        true => client.open_direct(name, "time").await.unwrap(),
        false => client.open(name, "time").await.unwrap(),
    };
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, channel.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer, ANSWER);
    channel.path()
}

#[tokio::test]
async fn a_plugin_conn_serves_channels_through_the_mio_server() {
    let broker = Broker::start("conn");
    let on_unix = spawn_plugin(&broker.unix, 1, "clock").await;
    let on_tcp = spawn_plugin(&broker.tcp, 2, "clock-tcp").await;
    let client = plugin(&broker.unix, 3, None).await;

    assert_eq!(ask_time(&client, "clock", false).await, Path::Relayed);
    assert_eq!(ask_time(&client, "clock", true).await, Path::SocketPair);
    assert_eq!(ask_time(&client, "clock-tcp", false).await, Path::Relayed);
    // Behind TCP: no descriptors, relayed.
    assert_eq!(ask_time(&client, "clock-tcp", true).await, Path::Relayed);
    let mut runs = Vec::new();
    for (i, name) in ["clock", "clock-tcp", "clock"].into_iter().enumerate() {
        let channel = client.open(name, "echo").await.unwrap();
        runs.push(tokio::spawn(echo_through(channel, (3 << 20) + i)));
    }
    for run in runs {
        run.await.unwrap();
    }

    broker.stop();
    for thread in [on_unix, on_tcp] {
        let reason = thread.join().unwrap();
        assert!(reason.contains("shutting down"), "{reason}");
    }
}

#[tokio::test]
async fn a_plugin_conn_serves_channels_through_the_tokio_server() {
    let path = common::sock_path("tokio-server");
    let config =
        plugboard_core::broker::BrokerConfig::new(plugboard_conformance::handshake(broker_keys()));
    let server =
        plugboard_tokio::Server::bind(config, &[plugboard_tokio::Addr::Unix(path)]).unwrap();
    let addr = server.local_addrs()[0].to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    let thread = spawn_plugin(&addr, 1, "clock").await;
    let client = plugin(&addr, 3, None).await;
    assert_eq!(ask_time(&client, "clock", false).await, Path::Relayed);
    assert_eq!(ask_time(&client, "clock", true).await, Path::SocketPair);
    let channel = client.open("clock", "echo").await.unwrap();
    echo_through(channel, 2 << 20).await;

    stop.send(()).unwrap();
    server.await.unwrap();
    let reason = tokio::task::spawn_blocking(move || thread.join().unwrap())
        .await
        .unwrap();
    assert!(reason.contains("shutting down"), "{reason}");
}
