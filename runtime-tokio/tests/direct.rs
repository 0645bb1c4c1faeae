//! Direct channels over real sockets: a socketpair between two plugins on
//! the broker's unix socket, a TCP connection to a plugin that listens for
//! them, the relay when neither can be arranged. One test per binary,
//! because it counts this process's descriptors.

mod common;

use std::time::Duration;

use common::{echo_through, keys, open_fds, plugin, serve_echo, Broker};
use plugboard_tokio::plugin::Path;

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
    assert_eq!(fds_after, fds_before, "socketpair ends leaked");
    server.abort();
    broker.stop().await;
}
