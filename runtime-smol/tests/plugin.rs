//! The smol plugin API against the smol server, over real unix and TCP
//! sockets: names, lists, watches, relayed echoes, typed refusals.

mod common;

use common::{broker_keys, echo_through, keys, plugin, run, serve_echo, within, Broker, PATIENCE};
use futures_lite::{AsyncReadExt, StreamExt};
use plugboard_core::control::{ErrorCode, Presence, TransportKind};
use plugboard_smol::{Channel, IncomingStream, Path, Plugin, PluginError, WatchEvent, WatchStream};

/// The next watch event, or the test fails.
async fn next(events: &mut WatchStream) -> Option<WatchEvent> {
    within(PATIENCE, events.next()).await
}

#[test]
fn relayed_echo_of_a_few_mebibytes_over_unix_and_tcp() {
    run(async {
        let broker = Broker::start("echo");
        let echo = plugin(&broker.unix, 1, Some("echo")).await;
        let server = serve_echo(echo);
        for (addr, seed) in [(&broker.unix, 2), (&broker.tcp, 3)] {
            let client = plugin(addr, seed, None).await;
            let channel = client.open("echo", "echo").await.unwrap();
            assert_eq!(channel.path(), Path::Relayed);
            assert_eq!(channel.peer(), keys(1).public());
            echo_through(channel, (4 << 20) + 17).await;
        }
        // Several at once on one connection, each checked.
        let client = plugin(&broker.tcp, 4, None).await;
        let mut runs = Vec::new();
        for i in 0..3 {
            let channel = client.open("echo", "echo").await.unwrap();
            runs.push(smol::spawn(echo_through(channel, (1 << 20) + i)));
        }
        for run in runs {
            run.await;
        }
        drop(server);
        broker.stop().await;
    });
}

#[test]
fn names_list_and_watch() {
    run(async {
        let broker = Broker::start("names");
        let watcher = plugin(&broker.unix, 1, None).await;
        let mut events = watcher.watch().await.unwrap();
        assert_eq!(events.next().await, Some(WatchEvent::Snapshot(vec![])));

        let alpha = plugin(&broker.unix, 2, Some("alpha")).await;
        let beta = plugin(&broker.tcp, 5, Some("beta")).await;
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
        assert_eq!(standby.name().map(|n| n.as_str()), Some("alpha"));

        let members = watcher.list().await.unwrap();
        let names: Vec<(&str, TransportKind)> = members
            .iter()
            .map(|m| (m.name.as_str(), m.transport))
            .collect();
        assert_eq!(
            names,
            [("alpha", TransportKind::Unix), ("beta", TransportKind::Tcp)]
        );
        assert_eq!(members[0].key, keys(2).public());

        let Some(WatchEvent::Change {
            seq: 1,
            presence: Presence::Up(member),
        }) = next(&mut events).await
        else {
            panic!("no up event for alpha");
        };
        assert_eq!(member.name.as_str(), "alpha");
        let Some(WatchEvent::Change {
            seq: 2,
            presence: Presence::Up(member),
        }) = next(&mut events).await
        else {
            panic!("no up event for beta");
        };
        assert_eq!(member.name.as_str(), "beta");
        drop(alpha);
        let Some(WatchEvent::Change {
            seq: 3,
            presence: Presence::OwnerChanged { new, .. },
        }) = next(&mut events).await
        else {
            panic!("no owner change");
        };
        assert_eq!(new.key, keys(4).public());
        drop(standby);
        assert!(matches!(
            next(&mut events).await,
            Some(WatchEvent::Change {
                seq: 4,
                presence: Presence::Down { .. }
            })
        ));
        watcher.unwatch().await.unwrap();
        assert_eq!(
            next(&mut events).await,
            None,
            "the stream ends with the watch"
        );
        drop(beta);
        broker.stop().await;
    });
}

#[test]
fn refusals_are_typed() {
    run(async {
        let broker = Broker::start("refusals");
        let client = plugin(&broker.unix, 1, None).await;
        let missing = client.open("nobody", "x").await.unwrap_err();
        assert_eq!(missing.code(), Some(ErrorCode::NoSuchName));
        assert!(matches!(missing, PluginError::Refused { .. }));
        let missing = client.open_direct("nobody", "x").await.unwrap_err();
        assert_eq!(missing.code(), Some(ErrorCode::NoSuchName));

        let picky = plugin(&broker.unix, 2, Some("picky")).await;
        let rejecter = smol::spawn(async move {
            let incoming = picky.incoming().next().await.unwrap();
            assert_eq!(incoming.protocol, "rude");
            assert_eq!(&incoming.metadata[..], b"hello");
            assert_eq!(incoming.from_key, keys(1).public());
            incoming.reject("no thanks").unwrap();
            picky
        });
        let err = client
            .open_with("picky", "rude", "hello".into(), false)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Rejected));
        assert!(err.to_string().contains("no thanks"), "{err}");
        let _picky = rejecter.await;

        let unreachable = Plugin::builder(keys(3))
            .connect("unix:/nonexistent/plugboard.sock")
            .await;
        assert!(matches!(unreachable, Err(PluginError::Unreachable { .. })));
        let bad = Plugin::builder(keys(3)).connect("http://x").await;
        assert!(matches!(bad, Err(PluginError::Unreachable { .. })));
        let nameless_direct = Plugin::builder(keys(3))
            .direct_listen("tcp:127.0.0.1:0")
            .connect(&broker.unix)
            .await;
        assert!(matches!(nameless_direct, Err(PluginError::Direct { .. })));
        broker.stop().await;
    });
}

#[test]
fn a_dropped_peer_resets_the_channel() {
    run(async {
        let broker = Broker::start("killed");
        let target = plugin(&broker.unix, 1, Some("fragile")).await;
        let client = plugin(&broker.unix, 2, None).await;
        let accept = smol::spawn(async move {
            let offer = target.incoming().next().await.unwrap();
            let channel = offer.accept().await.unwrap();
            (target, channel)
        });
        let mut channel = client.open("fragile", "x").await.unwrap();
        let (target, their_channel) = accept.await;
        drop(target); // its connection goes away, its channel still open
        let mut buf = [0u8; 16];
        let err = within(PATIENCE, channel.read(&mut buf)).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
        // The dropped plugin's own channel fails instead of hanging.
        let mut their_channel = their_channel;
        let err = within(PATIENCE, their_channel.read(&mut buf))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe);
        broker.stop().await;
    });
}

/// Opens a channel to "sink" and accepts it there, both at once.
async fn open_and_accept(
    client: &Plugin,
    offers: &mut IncomingStream,
    direct: bool,
) -> (Channel, Channel) {
    let open = async {
        client
            .open_with("sink", "x", Default::default(), direct)
            .await
            .unwrap()
    };
    let accept = async { offers.next().await.unwrap().accept().await.unwrap() };
    within(PATIENCE, futures_lite::future::zip(open, accept)).await
}

#[test]
fn dropping_closes_gracefully_and_reset_aborts() {
    run(async {
        let broker = Broker::start("ends");
        let target = plugin(&broker.unix, 1, Some("sink")).await;
        let client = plugin(&broker.unix, 2, None).await;
        let mut offers = target.incoming();
        for direct in [false, true] {
            // Written, then dropped: the peer reads it all, then the end.
            let (mut channel, mut theirs) = open_and_accept(&client, &mut offers, direct).await;
            let path = channel.path();
            assert_eq!(theirs.path(), path);
            futures_lite::AsyncWriteExt::write_all(&mut channel, &[7u8; 100_000])
                .await
                .unwrap();
            drop(channel);
            let mut got = Vec::new();
            within(PATIENCE, theirs.read_to_end(&mut got))
                .await
                .unwrap();
            assert_eq!(got, vec![7u8; 100_000], "{path:?}");

            // Reset: the peer's read fails (relayed) or ends (a
            // socketpair cannot say more than its end).
            let (channel, mut theirs) = open_and_accept(&client, &mut offers, direct).await;
            channel.reset("enough");
            let mut buf = [0u8; 16];
            let read = within(PATIENCE, theirs.read(&mut buf)).await;
            match path {
                Path::Relayed => {
                    let err = read.unwrap_err();
                    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
                    assert!(err.to_string().contains("enough"), "{err}");
                }
                _ => assert_eq!(read.unwrap(), 0),
            }
        }
        broker.stop().await;
    });
}
