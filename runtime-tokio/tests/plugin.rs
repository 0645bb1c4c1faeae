//! The plugin API against the tokio server, over real unix and TCP sockets.

mod common;

use common::{broker_keys, echo_round_trip, keys, plugin, serve_echo, Broker};
use plugboard_core::control::{ErrorCode, Presence};
use plugboard_tokio::{Plugin, WatchEvent};
use tokio::io::AsyncReadExt;

#[tokio::test]
async fn echo_four_mebibytes_over_unix_and_tcp() {
    let broker = Broker::start("echo").await;
    let echo = plugin(&broker.unix, 1, Some("echo")).await;
    let server = serve_echo(echo);
    echo_round_trip(&broker.unix, "echo", 2, 4 << 20).await;
    echo_round_trip(&broker.tcp, "echo", 3, 4 << 20).await;
    server.abort();
    broker.stop().await;
}

#[tokio::test]
async fn names_list_and_watch() {
    let broker = Broker::start("names").await;
    let watcher = plugin(&broker.unix, 1, None).await;
    let mut events = watcher.watch().await.unwrap();
    assert_eq!(events.recv().await, Some(WatchEvent::Snapshot(vec![])));

    let alpha = plugin(&broker.unix, 2, Some("alpha")).await;
    let taken = Plugin::builder(keys(3))
        .broker_key(broker_keys().public())
        .name("alpha")
        .connect(&broker.unix)
        .await;
    assert_eq!(
        taken.err().and_then(|e| e.code()),
        Some(ErrorCode::NameTaken)
    );
    let standby = Plugin::builder(keys(4))
        .broker_key(broker_keys().public())
        .name("alpha")
        .wait_for_name()
        .connect(&broker.unix)
        .await
        .unwrap();

    let members = watcher.list().await.unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].key, keys(2).public());

    let Some(WatchEvent::Change {
        seq: 1,
        presence: Presence::Up(member),
    }) = events.recv().await
    else {
        panic!("no up event");
    };
    assert_eq!(member.name.as_str(), "alpha");
    drop(alpha);
    let Some(WatchEvent::Change {
        seq: 2,
        presence: Presence::OwnerChanged { new, .. },
    }) = events.recv().await
    else {
        panic!("no owner change");
    };
    assert_eq!(new.key, keys(4).public());
    drop(standby);
    assert!(matches!(
        events.recv().await,
        Some(WatchEvent::Change {
            seq: 3,
            presence: Presence::Down { .. }
        })
    ));
    broker.stop().await;
}

#[tokio::test]
async fn refusals_are_typed() {
    let broker = Broker::start("refusals").await;
    let client = plugin(&broker.unix, 1, None).await;
    let missing = client
        .open("nobody", "x")
        .await
        .err()
        .and_then(|e| e.code());
    assert_eq!(missing, Some(ErrorCode::NoSuchName));

    let picky = plugin(&broker.unix, 2, Some("picky")).await;
    let rejecter = tokio::spawn(async move {
        let incoming = picky.incoming().await.unwrap();
        assert_eq!(incoming.protocol, "rude");
        incoming.reject("no thanks").unwrap();
        picky
    });
    let err = client.open("picky", "rude").await.err().unwrap();
    assert_eq!(err.code(), Some(ErrorCode::Rejected));
    assert!(err.to_string().contains("no thanks"), "{err}");
    let _picky = rejecter.await.unwrap();

    let unreachable = Plugin::builder(keys(3))
        .connect("unix:/nonexistent/plugboard.sock")
        .await;
    assert!(matches!(
        unreachable,
        Err(plugboard_tokio::PluginError::Unreachable { .. })
    ));
    broker.stop().await;
}

#[tokio::test]
async fn a_killed_peer_resets_the_channel() {
    let broker = Broker::start("killed").await;
    let target = plugin(&broker.unix, 1, Some("fragile")).await;
    let client = plugin(&broker.unix, 2, None).await;
    let accept = tokio::spawn(async move {
        let channel = target.incoming().await.unwrap().accept().await.unwrap();
        (target, channel)
    });
    let mut channel = client.open("fragile", "x").await.unwrap();
    let (target, their_channel) = accept.await.unwrap();
    drop(target); // the plugin's connection goes away, its channel still open
    let mut buf = [0u8; 16];
    let err = channel.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    drop(their_channel);
    broker.stop().await;
}

/// Regression: `incoming()` returned `Pending` for ever once the connection
/// was over, though it says it returns `None`.
#[tokio::test]
async fn incoming_ends_with_the_connection() {
    let broker = Broker::start("incoming-ends").await;
    let target = plugin(&broker.unix, 1, Some("target")).await;
    let waiting = tokio::spawn(async move { target.incoming().await.is_none() });
    broker.stop().await;
    let ended = tokio::time::timeout(std::time::Duration::from_secs(30), waiting)
        .await
        .expect("incoming() never ended")
        .unwrap();
    assert!(ended, "an incoming channel from a broker that stopped");
}
