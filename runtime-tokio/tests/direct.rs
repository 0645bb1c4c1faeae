//! Direct channels over real sockets: a socketpair between two plugins on
//! the broker's unix socket, a TCP connection to a plugin that listens for
//! them, the relay when neither can be arranged. One test per binary,
//! because it counts this process's descriptors.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{broker_keys, echo_through, keys, open_fds, plugin, serve_echo, Broker};
use plugboard_core::direct::{DirectConn, DirectError, DirectEvent};
use plugboard_core::shs::HandshakeConfig;
use plugboard_core::Instant;
use plugboard_tokio::plugin::Path;
use plugboard_tokio::Plugin;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A plugin named `name` that takes direct channels on `listen`.
async fn direct_plugin(
    broker: &str,
    seed: u8,
    name: &str,
    listen: &str,
    advertise: Option<&str>,
) -> Plugin {
    let mut builder = Plugin::builder(keys(seed))
        .broker_key(broker_keys().public())
        .name(name)
        .direct_listen(listen);
    if let Some(addr) = advertise {
        builder = builder.direct_advertise(addr);
    }
    builder.connect(broker).await.unwrap()
}

/// A free TCP port on loopback (free when asked; tests bind it at once).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Dials `port` as `seed` with a made-up token; returns how it failed.
async fn dial_uninvited(port: u16, seed: u8) -> DirectError {
    let config = Arc::new(HandshakeConfig::new(keys(seed)));
    let mut conn = DirectConn::dial(
        config,
        keys(4).public(),
        [9; 32],
        &mut rand_core::OsRng,
        Instant::ZERO,
    )
    .unwrap();
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    loop {
        while let Some(bytes) = conn.poll_transmit() {
            let _ = tcp.write_all(&bytes).await;
        }
        match conn.poll_event() {
            Some(DirectEvent::Failed(e)) => return e,
            Some(other) => panic!("an uninvited dialer got {other:?}"),
            None => {}
        }
        let n = tcp.read(&mut buf).await.unwrap_or(0);
        let _ = match n {
            0 => conn.handle_eof(),
            n => conn.handle_input(Instant::ZERO, &buf[..n]),
        };
    }
}

#[tokio::test]
async fn direct_channels_over_socketpair_tcp_and_relay() {
    let broker = Broker::start("direct").await;
    let echo = plugin(&broker.unix, 1, Some("echo")).await;
    let server = serve_echo(echo);
    // Both on the unix socket: the broker hands each a socketpair end.
    let client = plugin(&broker.unix, 2, None).await;
    let remote = plugin(&broker.tcp, 3, None).await;
    let fds_before = open_fds();
    let channel = client.open_direct("echo", "echo").await.unwrap();
    assert_eq!(channel.path(), Path::SocketPair);
    assert_eq!(channel.peer(), keys(1).public());
    echo_through(channel, 4 << 20).await;
    // Several at once, and the relay still works beside them.
    let mut runs = Vec::new();
    for i in 0..3 {
        let channel = client.open_direct("echo", "echo").await.unwrap();
        assert_eq!(channel.path(), Path::SocketPair);
        runs.push(tokio::spawn(echo_through(channel, (1 << 20) + i)));
    }
    let relayed = client.open("echo", "echo").await.unwrap();
    assert_eq!(relayed.path(), Path::Relayed);
    runs.push(tokio::spawn(echo_through(relayed, 1 << 20)));
    for run in runs {
        run.await.unwrap();
    }
    // The opener on TCP: no descriptors cross, so the channel is relayed.
    let channel = remote.open_direct("echo", "echo").await.unwrap();
    assert_eq!(channel.path(), Path::Relayed);
    echo_through(channel, 1 << 20).await;

    // A target that listens for direct TCP channels: an opener on TCP dials
    // it, proves its key and presents the broker's token.
    let port = free_port();
    let far = direct_plugin(
        &broker.unix,
        4,
        "far",
        &format!("tcp:127.0.0.1:{port}"),
        None,
    )
    .await;
    let uninvited = dial_uninvited(port, 6).await;
    assert!(
        matches!(uninvited, DirectError::Handshake(_)),
        "an unannounced key gets no handshake: {uninvited:?}"
    );
    let far_server = serve_echo(far);
    let channel = remote.open_direct("far", "echo").await.unwrap();
    assert_eq!(channel.path(), Path::Tcp);
    assert_eq!(channel.peer(), keys(4).public());
    echo_through(channel, 4 << 20).await;
    let mut runs = Vec::new();
    for i in 0..3 {
        let channel = client.open_direct("far", "echo").await.unwrap();
        // On one host the socketpair wins; the TCP opener dials.
        assert_eq!(channel.path(), Path::SocketPair);
        runs.push(tokio::spawn(echo_through(channel, (1 << 20) + i)));
        let channel = remote.open_direct("far", "echo").await.unwrap();
        assert_eq!(channel.path(), Path::Tcp);
        runs.push(tokio::spawn(echo_through(channel, (1 << 20) + i)));
    }
    for run in runs {
        run.await.unwrap();
    }

    // A direct address nobody answers at: the opener falls back to the relay.
    let dead = direct_plugin(
        &broker.unix,
        5,
        "dead",
        "tcp:127.0.0.1:0",
        Some("tcp:127.0.0.1:1"),
    )
    .await;
    let dead_server = serve_echo(dead);
    let channel = remote.open_direct("dead", "echo").await.unwrap();
    assert_eq!(channel.path(), Path::Relayed);
    echo_through(channel, 1 << 20).await;
    far_server.abort();
    dead_server.abort();

    // Every end is closed once both sides dropped their channels: nobody
    // (the broker least) keeps a copy. The echo tasks drop theirs just
    // after their last write, so give them a moment.
    let mut fds_after = open_fds();
    for _ in 0..100 {
        if fds_after == fds_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        fds_after = open_fds();
    }
    assert_eq!(fds_after, fds_before, "descriptors leaked");
    server.abort();
    broker.stop().await;
}
