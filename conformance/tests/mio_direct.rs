//! Direct channels through the mio server: socketpairs between plugins on
//! its unix socket, the relay for an opener on TCP, and no descriptor left
//! behind. One test in this binary, because it counts the process's
//! descriptors (the server runs in it too).

#[path = "mio/common.rs"]
mod common;

use common::{echo_through, keys, plugin, serve_echo, Broker, PATIENCE};
use plugboard_tokio::plugin::Path;

/// This process's open descriptors.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[tokio::test]
async fn direct_channels_over_socketpairs() {
    let broker = Broker::start("direct");
    let server = serve_echo(plugin(&broker.unix, 1, Some("echo")).await);
    let client = plugin(&broker.unix, 2, None).await;
    let remote = plugin(&broker.tcp, 3, None).await;
    let fds_before = open_fds();
    // Both on the unix socket: each gets a socketpair end.
    let mut runs = Vec::new();
    for i in 0..3 {
        let channel = client.open_direct("echo", "echo").await.unwrap();
        assert_eq!(channel.path(), Path::SocketPair);
        assert_eq!(channel.peer(), keys(1).public());
        runs.push(tokio::spawn(echo_through(channel, (2 << 20) + i)));
    }
    for run in runs {
        run.await.unwrap();
    }
    // An opener on TCP: no descriptors cross, so the channel is relayed.
    let channel = remote.open_direct("echo", "echo").await.unwrap();
    assert_eq!(channel.path(), Path::Relayed);
    echo_through(channel, 1 << 20).await;

    // Every end is closed once both sides dropped their channels: nobody
    // (the server least) keeps a copy. The echo tasks drop theirs just
    // after their last write: wait for that, with a safety net.
    let deadline = std::time::Instant::now() + PATIENCE;
    while open_fds() != fds_before && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(open_fds(), fds_before, "descriptors leaked");
    server.abort();
    broker.stop();
}
