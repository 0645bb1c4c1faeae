//! How channels and connections end: a channel dropped or reset, a plugin
//! dropped with a channel open, a broker that stops.
//!
//! Each broker is named per API: one test binary runs a broker with every
//! API at once, and a socket path is the broker's and the scenario's name.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};

use crate::api::{Api, Connect, Error, Path, Watch};
use crate::broker::{start_for, Broker};
use crate::scenarios::{connect, run};

/// Opens a channel from `client` to `target` (registered as "sink") and
/// accepts it there, both at once.
async fn open_and_accept<A: Api>(
    client: &A::Plugin,
    target: &A::Plugin,
    direct: bool,
) -> (A::Channel, A::Channel) {
    let (opened, accepted) =
        futures_lite::future::zip(A::open(client, "sink", "x", Bytes::new(), direct), async {
            A::accept(A::incoming(target).await.expect("an offer")).await
        })
        .await;
    (opened.expect("the open"), accepted.expect("the accept"))
}

/// Written, then dropped: the peer reads all of it, then the end. Reset:
/// the peer's read fails with the reason (relayed) or ends (a socketpair
/// cannot say more than its end). On a relayed channel and on a socketpair.
pub fn dropping_closes_gracefully_and_reset_aborts<B: Broker, A: Api>() {
    let broker = start_for::<B, A>("ends", |_| {});
    let addr = broker.unix.clone();
    run::<A, _>(async {
        let sink = connect::<A>(Connect::new(&addr, 1).name("sink")).await;
        let client = connect::<A>(Connect::new(&addr, 2)).await;
        for (direct, path) in [(false, Path::Relayed), (true, Path::SocketPair)] {
            let (mut channel, mut theirs) = open_and_accept::<A>(&client, &sink, direct).await;
            assert_eq!((A::path(&channel), A::path(&theirs)), (path, path));
            channel.write_all(&[7u8; 100_000]).await.unwrap();
            drop(channel);
            let mut got = Vec::new();
            theirs.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, vec![7u8; 100_000], "{path:?}");

            let (channel, mut theirs) = open_and_accept::<A>(&client, &sink, direct).await;
            A::reset(channel, "enough");
            let mut buf = [0u8; 16];
            let read = theirs.read(&mut buf).await;
            match path {
                Path::Relayed => {
                    let err = read.unwrap_err();
                    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
                    assert!(err.to_string().contains("enough"), "{err}");
                }
                _ => assert_eq!(read.unwrap(), 0, "{path:?}"),
            }
        }
    });
}

/// A plugin dropped while a relayed channel of its is open and idle: its
/// peer's read fails with a reset (not an end), and the dropped plugin's own
/// end fails (its connection is over) instead of waiting for ever.
pub fn a_dropped_plugin_resets_its_channels<B: Broker, A: Api>() {
    let broker = start_for::<B, A>("dropped", |_| {});
    let addr = broker.unix.clone();
    run::<A, _>(async {
        let fragile = connect::<A>(Connect::new(&addr, 1).name("sink")).await;
        let client = connect::<A>(Connect::new(&addr, 2)).await;
        let (mut channel, mut theirs) = open_and_accept::<A>(&client, &fragile, false).await;
        drop(fragile); // its connection goes; its channel is still held
        let mut buf = [0u8; 16];
        let err = channel.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
        let err = theirs.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe, "{err}");
    });
}

/// A broker that stops says why: a watch ends; an `incoming()` already
/// waiting ends (it used to wait for ever), and so does one called after;
/// requests fail with the broker's reason; its socket file is removed.
pub fn a_stopped_broker_says_why<B: Broker, A: Api>() {
    let broker = start_for::<B, A>("stop", |_| {});
    let (addr, path) = (broker.unix.clone(), broker.path.clone());
    run::<A, _>(async move {
        let leaving = Arc::new(connect::<A>(Connect::new(&addr, 1).name("leaving")).await);
        let mut events = A::watch(&leaving).await.unwrap();
        match futures_lite::StreamExt::next(&mut events).await {
            Some(Watch::Snapshot(members)) => assert_eq!(members.len(), 1),
            other => panic!("expected a snapshot, got {other:?}"),
        }
        let target = leaving.clone();
        let waiting = A::spawn(async move { A::incoming(&target).await.is_none() });
        // Time for the task to be waiting already (if it is not, this checks
        // a call made after the stop, as below).
        A::sleep(Duration::from_millis(50)).await;
        broker.stop();
        while futures_lite::StreamExt::next(&mut events).await.is_some() {}
        match A::list(&leaving).await {
            Err(Error::Disconnected(reason)) => {
                assert!(reason.contains("shutting down"), "{reason}")
            }
            other => panic!("expected the broker's last words, got {other:?}"),
        }
        assert!(
            waiting.await,
            "an incoming channel from a broker that stopped"
        );
        assert!(A::incoming(&leaving).await.is_none());
        assert!(!path.exists(), "the socket file stayed");
    });
}
