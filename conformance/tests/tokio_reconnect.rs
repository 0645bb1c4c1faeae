//! Reconnection: a plugin that lost its broker connects to the next one on
//! the same socket, takes its name again, restarts its watch, and says so
//! once; what was in flight fails with a typed error. Without reconnection
//! the end is the end.
//!
//! Reconnection is `plugboard-runtime`'s, the same for every runtime: it is
//! tested here, on tokio (plugboard-smol has a smoke test of its own). The
//! brokers are the conformance suite's tokio server, on a thread of its
//! own, restarted on the same socket by name.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use plugboard_conformance::api::{Compat, Connect, TokioApi};
use plugboard_conformance::broker::{start, Running, TokioBroker};
use plugboard_conformance::scenarios::connect;
use plugboard_conformance::{broker_keys, keys, stream};
use plugboard_core::control::{Member, Presence};
use plugboard_tokio::plugin::Path;
use plugboard_tokio::{Channel, ConnectionEvent, Plugin, PluginError, Reconnect, WatchEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The tokio broker on the unix socket named `name` (the same each time).
fn broker(name: &str) -> Running {
    start::<TokioBroker>(name, |_| {})
}

/// Stops `broker` gracefully, off this runtime's thread (that waits).
async fn stop(broker: Running) {
    tokio::task::spawn_blocking(move || broker.stop())
        .await
        .unwrap()
}

/// A plugin that does not reconnect.
async fn plugin(how: Connect) -> Plugin {
    within("connect", connect::<TokioApi>(how)).await
}

/// A safety net, not a measurement.
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within 20 s"))
}

/// Small waits, so that the tests do not sleep much.
fn quick() -> Reconnect {
    Reconnect {
        initial: Duration::from_millis(5),
        max: Duration::from_millis(50),
    }
}

async fn reconnecting(addr: &str, seed: u8, name: Option<&str>) -> Plugin {
    let mut builder = Plugin::builder(keys(seed))
        .broker_key(broker_keys().public())
        .reconnect(quick());
    if let Some(name) = name {
        builder = builder.name(name);
    }
    within("connect", builder.connect(addr)).await.unwrap()
}

/// Echoes every incoming channel, across reconnections; a channel that
/// breaks just ends.
fn serve_echo(plugin: Arc<Plugin>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(incoming) = plugin.incoming().await {
            tokio::spawn(async move {
                let Ok(mut channel) = incoming.accept().await else {
                    return;
                };
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match channel.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if channel.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = channel.shutdown().await;
            });
        }
    })
}

/// Writes a few bytes and reads them back.
async fn ping(channel: &mut Channel, what: &[u8]) {
    channel.write_all(what).await.unwrap();
    let mut back = vec![0u8; what.len()];
    within("echo", channel.read_exact(&mut back)).await.unwrap();
    assert_eq!(back, what);
}

async fn next_event(events: &mut plugboard_tokio::Feed<ConnectionEvent>) -> ConnectionEvent {
    within("a connection event", events.recv()).await.unwrap()
}

/// Waits for `Reconnected`: its attempts, and why the failed ones failed.
async fn reconnected(events: &mut plugboard_tokio::Feed<ConnectionEvent>) -> (u32, Vec<String>) {
    let mut failures = Vec::new();
    loop {
        match next_event(events).await {
            ConnectionEvent::Reconnected { attempts } => return (attempts, failures),
            // (A feed 16 behind keeps the latest: numbers may skip.)
            ConnectionEvent::AttemptFailed { attempt, reason } => {
                assert!(attempt as usize > failures.len(), "attempts in order");
                failures.push(reason);
            }
            other => panic!("{other:?} before reconnecting"),
        }
    }
}

fn names(members: &[Member]) -> Vec<&str> {
    members.iter().map(|m| m.name.as_str()).collect()
}

/// `len` bytes through an echo and back, written while read, checked.
async fn echo_through(channel: Channel, len: u64) {
    let echoed = stream::echo_through::<TokioApi>(Compat(channel), 7, len);
    within("the echo", echoed).await
}

#[tokio::test]
async fn a_lost_broker_is_replaced_name_and_watch_restored() {
    let broker = broker("reconnect");
    let unix = broker.unix.clone();

    let echo = Arc::new(reconnecting(&unix, 1, Some("echo")).await);
    let mut echo_events = echo.events();
    let echo_server = serve_echo(echo.clone());
    // Does not reconnect, and never answers what is opened to it.
    let sleepy = plugin(Connect::new(&unix, 2).name("sleepy")).await;
    let mut sleepy_events = sleepy.events();
    let watcher = reconnecting(&unix, 3, None).await;
    let mut watcher_events = watcher.events();
    let mut watch = watcher.watch().await.unwrap();
    let Some(WatchEvent::Snapshot(members)) = watch.recv().await else {
        panic!("no snapshot");
    };
    assert_eq!(names(&members), ["echo", "sleepy"]);

    // Channels made before the loss: one relayed, one over a socketpair.
    let mut relayed = watcher.open("echo", "echo").await.unwrap();
    assert_eq!(relayed.path(), Path::Relayed);
    ping(&mut relayed, b"relayed").await;
    let mut pair = watcher.open_direct("echo", "echo").await.unwrap();
    assert_eq!(pair.path(), Path::SocketPair);
    ping(&mut pair, b"direct").await;

    // An open in flight: sleepy got the offer and sits on it.
    let opening = {
        let echo = echo.clone();
        tokio::spawn(async move { echo.open("sleepy", "nap").await })
    };
    let offer = within("the offer", async { sleepy.incoming().recv().await })
        .await
        .unwrap();

    stop(broker).await;

    // What was in flight fails, typed; the loss is reported once.
    let opened = within("the open", opening).await.unwrap();
    assert!(
        matches!(opened, Err(PluginError::Reconnecting(_))),
        "{opened:?}"
    );
    assert!(matches!(
        next_event(&mut echo_events).await,
        ConnectionEvent::Lost { .. }
    ));
    assert!(matches!(
        next_event(&mut watcher_events).await,
        ConnectionEvent::Lost { .. }
    ));
    // Until it is back, requests fail the same way.
    let listed = watcher.list().await;
    assert!(
        matches!(listed, Err(PluginError::Reconnecting(_))),
        "{listed:?}"
    );
    // The relayed channel went with the connection; the socketpair did not.
    let written = relayed.write_all(b"lost").await.unwrap_err();
    assert!(
        matches!(
            written.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        ),
        "{written}"
    );
    let mut buf = [0u8; 16];
    assert!(relayed.read(&mut buf).await.is_err());
    ping(&mut pair, b"still direct").await;
    // The plugin that does not reconnect is over, and so is its offer.
    assert!(matches!(
        next_event(&mut sleepy_events).await,
        ConnectionEvent::Ended { .. }
    ));
    assert!(matches!(
        sleepy.list().await,
        Err(PluginError::Disconnected(_))
    ));
    assert!(offer.accept().await.is_err());

    // A new broker on the same socket.
    let broker = self::broker("reconnect");
    assert_eq!(broker.unix, unix);
    let (attempts, failures) = reconnected(&mut echo_events).await;
    assert!(attempts as usize > failures.len());
    let (attempts, failures) = reconnected(&mut watcher_events).await;
    assert!(attempts as usize > failures.len());

    // The watch started again: a snapshot, with echo in it or right after.
    let snapshot = loop {
        match within("the new snapshot", watch.recv()).await.unwrap() {
            WatchEvent::Snapshot(members) => break members,
            WatchEvent::Change { .. } | WatchEvent::Resync { .. } => {}
        }
    };
    assert!(!names(&snapshot).contains(&"sleepy"));
    if !names(&snapshot).contains(&"echo") {
        let Some(WatchEvent::Change {
            presence: Presence::Up(member),
            ..
        }) = within("echo's return", watch.recv()).await
        else {
            panic!("echo did not come back");
        };
        assert_eq!(member.name.as_str(), "echo");
    }

    // The name is echo's again: another plugin finds it and talks to it
    // (through echo's incoming stream, which went on).
    let client = plugin(Connect::new(&broker.unix, 4)).await;
    let members = client.list().await.unwrap();
    assert_eq!(names(&members), ["echo"]);
    assert_eq!(members[0].key, keys(1).public());
    let channel = client.open("echo", "echo").await.unwrap();
    echo_through(channel, 256 * 1024).await;
    // And the reconnected plugins work as before.
    let mut relayed = watcher.open("echo", "echo").await.unwrap();
    ping(&mut relayed, b"relayed again").await;
    assert_eq!(names(&echo.list().await.unwrap()), ["echo"]);

    // One event each way, no more.
    assert!(echo_events.try_next().is_none());
    assert!(watcher_events.try_next().is_none());

    drop(relayed);
    echo_server.abort();
    stop(broker).await;
}

#[tokio::test]
async fn without_reconnection_the_end_is_the_end() {
    let broker = broker("no-reconnect");
    let alone = Arc::new(plugin(Connect::new(&broker.unix, 1).name("alone")).await);
    let mut events = alone.events();
    let sleepy = plugin(Connect::new(&broker.unix, 2).name("sleepy")).await;
    let opening = {
        let alone = alone.clone();
        tokio::spawn(async move { alone.open("sleepy", "nap").await })
    };
    let _offer = within("the offer", async { sleepy.incoming().recv().await })
        .await
        .unwrap();

    stop(broker).await;

    let opened = within("the open", opening).await.unwrap();
    assert!(
        matches!(opened, Err(PluginError::Disconnected(_))),
        "{opened:?}"
    );
    assert!(matches!(
        next_event(&mut events).await,
        ConnectionEvent::Ended { .. }
    ));
    assert!(matches!(
        alone.list().await,
        Err(PluginError::Disconnected(_))
    ));
    assert!(matches!(
        alone.open("sleepy", "nap").await,
        Err(PluginError::Disconnected(_))
    ));

    // A broker back on the socket changes nothing for it.
    let broker = self::broker("no-reconnect");
    let other = plugin(Connect::new(&broker.unix, 3)).await;
    assert!(other.list().await.unwrap().is_empty());
    assert!(matches!(
        alone.list().await,
        Err(PluginError::Disconnected(_))
    ));
    assert!(events.try_next().is_none());
    stop(broker).await;
}

/// A broker on the socket named `name` that lets key 5 connect but not
/// register a name.
fn strict_broker(name: &str) -> Running {
    use plugboard_core::broker::policy;
    start::<TokioBroker>(name, |config| {
        config.policy.keys = vec![policy::KeyGrant {
            id: keys(5).public(),
            register: vec![],
            open: vec![policy::Pattern::any()],
            direct: vec![policy::Pattern::any()],
            list: true,
            watch: true,
            stats: false,
            monitor: false,
        }]
    })
}

#[tokio::test]
async fn a_broker_that_refuses_the_name_is_a_failed_attempt() {
    let broker = broker("refused");
    let unix = broker.unix.clone();
    let proud = reconnecting(&unix, 5, Some("proud")).await;
    let mut events = proud.events();
    stop(broker).await;
    assert!(matches!(
        next_event(&mut events).await,
        ConnectionEvent::Lost { .. }
    ));

    // The next broker lets it in but refuses its name: not reconnected, it
    // tries again (its requests say why meanwhile).
    let strict = strict_broker("refused");
    assert_eq!(strict.unix, unix);
    within("the refusal", async {
        loop {
            match proud.list().await {
                Err(PluginError::Reconnecting(reason)) if reason.contains("may not register") => {
                    break
                }
                Err(PluginError::Reconnecting(_)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                other => panic!("{other:?}"),
            }
        }
    })
    .await;
    stop(strict).await;

    // One that takes it: reconnected, once, after more than one attempt.
    let broker = self::broker("refused");
    let (attempts, failures) = reconnected(&mut events).await;
    assert!(attempts >= 2, "{attempts}");
    assert!(
        failures.iter().any(|f| f.contains("may not register")),
        "the refusals were reported: {failures:?}"
    );
    let other = plugin(Connect::new(&broker.unix, 6)).await;
    let members = other.list().await.unwrap();
    assert_eq!(names(&members), ["proud"]);
    assert_eq!(members[0].key, keys(5).public());
    assert!(events.try_next().is_none());
    stop(broker).await;
}

/// What a relayed channel had received and not read when the connection
/// was lost is still read, then how it ended (the peer's FIN, if it came
/// before the loss, or the loss); a write fails. Nothing received is dropped.
#[tokio::test]
async fn a_lost_channel_is_read_to_its_end() {
    let broker = broker("unread");
    let reader = reconnecting(&broker.unix, 1, None).await;
    let talker = Arc::new(reconnecting(&broker.unix, 2, Some("talker")).await);
    let speaking = {
        let talker = talker.clone();
        tokio::spawn(async move {
            let offer = talker.incoming().await.unwrap();
            let mut channel = offer.accept().await.unwrap();
            // One write, one frame: once a byte of it is read, all of it
            // is in the reader's session.
            channel.write_all(b"said before the end").await.unwrap();
            channel.shutdown().await.unwrap();
            channel
        })
    };
    let mut channel = reader.open("talker", "words").await.unwrap();
    let _kept = within("the talker", speaking).await.unwrap();
    let mut first = [0u8; 1];
    within("the first byte", channel.read_exact(&mut first))
        .await
        .unwrap();
    let mut events = reader.events();
    stop(broker).await;
    assert!(matches!(
        next_event(&mut events).await,
        ConnectionEvent::Lost { .. }
    ));
    let mut rest = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        match within("the unread bytes", channel.read(&mut buf)).await {
            Ok(0) | Err(_) => break,
            Ok(n) => rest.extend_from_slice(&buf[..n]),
        }
    }
    assert_eq!(&first[..], b"s");
    assert_eq!(rest, b"aid before the end");
    assert!(channel.write_all(b"more").await.is_err());
}
