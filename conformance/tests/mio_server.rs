//! The mio server against the tokio plugin API: names, watches, relayed
//! channels, TCP with box-stream, binding rules, a graceful stop.

#[path = "mio/common.rs"]
mod common;

use common::{echo_through, keys, plugin, serve_echo, sock_path, Broker, PATIENCE};
use plugboard_core::broker::BrokerConfig;
use plugboard_core::control::{Presence, TransportKind};
use plugboard_mio::{Addr, ServeError, Server};
use plugboard_tokio::plugin::Path;
use plugboard_tokio::{PluginError, WatchEvent};

#[tokio::test]
async fn names_lists_and_watches() {
    let broker = Broker::start("names");
    let watcher = plugin(&broker.unix, 1, None).await;
    let mut changes = watcher.watch().await.unwrap();
    assert_eq!(
        changes.recv().await.unwrap(),
        WatchEvent::Snapshot(Vec::new())
    );

    let alpha = plugin(&broker.unix, 2, Some("alpha")).await;
    let beta = plugin(&broker.tcp, 3, Some("beta")).await;
    let members = watcher.list().await.unwrap();
    let names: Vec<(&str, TransportKind)> = members
        .iter()
        .map(|m| (m.name.as_str(), m.transport))
        .collect();
    assert_eq!(
        names,
        [("alpha", TransportKind::Unix), ("beta", TransportKind::Tcp)]
    );
    // The same name again is refused.
    let taken = plugboard_tokio::Plugin::builder(keys(4))
        .broker_key(common::broker_keys().public())
        .name("alpha")
        .connect(&broker.unix)
        .await;
    assert!(taken.is_err());

    let mut seen = Vec::new();
    drop(alpha);
    while seen.len() < 3 {
        let event = tokio::time::timeout(PATIENCE, changes.recv())
            .await
            .unwrap();
        match event.unwrap() {
            WatchEvent::Change { seq, presence } => seen.push((seq, presence)),
            other => panic!("{other:?}"),
        }
    }
    let seqs: Vec<u64> = seen.iter().map(|(s, _)| *s).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert!(matches!(&seen[0].1, Presence::Up(m) if m.name.as_str() == "alpha"));
    assert!(matches!(&seen[1].1, Presence::Up(m) if m.name.as_str() == "beta"));
    assert!(matches!(&seen[2].1, Presence::Down { name, .. } if name.as_str() == "alpha"));
    drop(beta);
    broker.stop();
}

#[tokio::test]
async fn relayed_echo_over_unix_and_tcp() {
    let broker = Broker::start("relay");
    let server = serve_echo(plugin(&broker.unix, 1, Some("echo")).await);
    let local = plugin(&broker.unix, 2, None).await;
    let remote = plugin(&broker.tcp, 3, None).await;
    // Several at once, both transports: the loop interleaves them.
    let mut runs = Vec::new();
    for (i, client) in [&local, &remote, &local].into_iter().enumerate() {
        let channel = client.open("echo", "echo").await.unwrap();
        assert_eq!(channel.path(), Path::Relayed);
        runs.push(tokio::spawn(echo_through(channel, (4 << 20) + i)));
    }
    for run in runs {
        run.await.unwrap();
    }
    server.abort();
    broker.stop();
}

#[tokio::test]
async fn tcp_admits_only_the_keys_the_policy_names() {
    let broker = Broker::start("policy");
    // The policy names keys 1 to 60.
    let stranger = plugboard_tokio::Plugin::builder(keys(99))
        .broker_key(common::broker_keys().public())
        .connect(&broker.tcp)
        .await;
    assert!(stranger.is_err());
    // On the unix socket the same key is welcome.
    let welcome = plugin(&broker.unix, 99, None).await;
    assert!(welcome.list().await.unwrap().is_empty());
    broker.stop();
}

#[tokio::test]
async fn a_stop_says_why_and_removes_the_socket() {
    let broker = Broker::start("stop");
    let path = broker.path.clone();
    let client = plugin(&broker.unix, 1, Some("leaving")).await;
    // The watch ends with the connection (its sender is dropped).
    let mut changes = client.watch().await.unwrap();
    // A live socket is not taken over.
    let config = BrokerConfig::new(plugboard_conformance::handshake(keys(9)));
    match Server::bind(config, &[Addr::Unix(path.clone())]) {
        Err(ServeError::InUse(p)) => assert_eq!(p, path),
        other => panic!("bound over a live broker: {:?}", other.err()),
    }
    broker.stop();
    while tokio::time::timeout(PATIENCE, changes.recv())
        .await
        .expect("the connection outlived the server")
        .is_some()
    {}
    // The server's last words said why.
    match client.list().await {
        Err(PluginError::Disconnected(reason)) => {
            assert!(reason.contains("shutting down"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert!(!path.exists(), "the socket file stayed");
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let path = sock_path("stale");
    let dead = std::os::unix::net::UnixListener::bind(&path).unwrap();
    drop(dead); // the file stays, nobody answers
    assert!(path.exists());
    let config = BrokerConfig::new(plugboard_conformance::handshake(keys(9)));
    let server = Server::bind(config, &[Addr::Unix(path.clone())]).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let stop = server.stop_handle();
    let thread = std::thread::spawn(move || server.run().unwrap());
    stop.stop();
    thread.join().unwrap();
    assert!(!path.exists());
}
