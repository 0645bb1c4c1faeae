//! The scenarios: each starts broker `B`, drives plugins through API `A`,
//! and fails when the behaviour is wrong. Timeouts are safety nets only.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use plugboard_core::broker::Policy;
use plugboard_core::control::{ErrorCode, Member, Presence, TransportKind};
use tokio::sync::mpsc;

use crate::api::{Api, Connect, Error, Path, Watch, Watching};
use crate::broker::{start_for, Broker};
use crate::keys;
use crate::stream::{self, hashed_exchanges, serve_hasher, MIB};

/// How long a whole scenario may take before it counts as hung.
const SCENARIO: Duration = Duration::from_secs(300);

/// Runs `scenario` on `A`'s runtime, failing if it hangs.
pub fn run<A: Api, F: Future>(scenario: F) -> F::Output {
    A::block_on(futures_lite::future::or(scenario, async {
        A::sleep(SCENARIO).await;
        panic!("the scenario hung");
    }))
}

/// Connects as `how` says, or fails the scenario.
pub async fn connect<A: Api>(how: Connect) -> A::Plugin {
    let what = format!("{how:?}");
    A::connect(how)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:?}"))
}

async fn next(events: &mut Watching) -> Watch {
    futures_lite::StreamExt::next(events)
        .await
        .expect("the watch ended")
}

fn names(members: &[Member]) -> Vec<String> {
    let mut names: Vec<String> = members.iter().map(|m| m.name.to_string()).collect();
    names.sort();
    names
}

// ── names, list, watch ─────────────────────────────────────────────────

/// Register (on the unix socket and over TCP), a taken name, waiting in
/// line and taking over; list, with each member's key and transport; a
/// watch's snapshot then numbered changes, until it is ended.
pub fn names_list_and_watch<B: Broker, A: Api>() {
    let broker = start_for::<B, A>("names", |_| {});
    let (addr, tcp) = (broker.unix.clone(), broker.tcp.clone());
    run::<A, _>(async {
        let watcher = connect::<A>(Connect::new(&addr, 1)).await;
        let mut events = A::watch(&watcher).await.unwrap();
        assert_eq!(next(&mut events).await, Watch::Snapshot(vec![]));

        let alpha = connect::<A>(Connect::new(&addr, 2).name("alpha")).await;
        let beta = connect::<A>(Connect::new(&tcp, 5).name("beta")).await;
        let taken = A::connect(Connect::new(&addr, 3).name("alpha")).await;
        assert_eq!(
            taken.err().and_then(|e| e.code()),
            Some(ErrorCode::NameTaken)
        );
        let standby = connect::<A>(Connect::new(&addr, 4).name("alpha").wait()).await;

        let members = A::list(&watcher).await.unwrap();
        let listed: Vec<_> = members
            .iter()
            .map(|m| (m.name.as_str(), m.key, m.transport))
            .collect();
        assert_eq!(
            listed,
            [
                ("alpha", keys(2).public(), TransportKind::Unix),
                ("beta", keys(5).public(), TransportKind::Tcp)
            ]
        );
        for (seq, name, seed) in [(1, "alpha", 2), (2, "beta", 5)] {
            match next(&mut events).await {
                Watch::Change {
                    seq: s,
                    presence: Presence::Up(m),
                } if s == seq => assert_eq!((m.name.as_str(), m.key), (name, keys(seed).public())),
                other => panic!("expected {name} to come up as change {seq}, got {other:?}"),
            }
        }
        drop(alpha);
        match next(&mut events).await {
            Watch::Change {
                seq: 3,
                presence: Presence::OwnerChanged { new, .. },
            } => assert_eq!(new.key, keys(4).public()),
            other => panic!("expected the standby to take over, got {other:?}"),
        }
        drop(standby);
        match next(&mut events).await {
            Watch::Change {
                seq: 4,
                presence: Presence::Down { name, .. },
            } => assert_eq!(name.as_str(), "alpha"),
            other => panic!("expected alpha to go down, got {other:?}"),
        }
        assert_eq!(names(&A::list(&watcher).await.unwrap()), ["beta"]);
        // Ended, the watch says nothing more.
        A::unwatch(&watcher).await.unwrap();
        let after = futures_lite::StreamExt::next(&mut events).await;
        assert_eq!(after, None, "the stream ends with the watch");
        drop(beta);
    });
}

/// A watcher that does not read falls behind: what it missed is replaced by
/// one resync (the registry as it is now, at the number of the last
/// change), and changes go on from there, gap-free.
pub fn a_watcher_that_falls_behind_is_resynced<B: Broker, A: Api>() {
    let broker = start_for::<B, A>("behind", |_| {});
    let addr = broker.unix.clone();
    run::<A, _>(async {
        let watcher = connect::<A>(Connect::new(&addr, 1).watch_queue(2)).await;
        let mut events = A::watch(&watcher).await.unwrap();
        // Four changes while the watcher reads nothing: three up, one down.
        let mut up = Vec::new();
        for (seed, name) in [(2, "one"), (3, "two"), (4, "three")] {
            up.push(connect::<A>(Connect::new(&addr, seed).name(name)).await);
        }
        drop(up.remove(1)); // "two" goes, once the broker sees it leave
        let mut members = A::list(&watcher).await.unwrap();
        for _ in 0..1000 {
            if names(&members) == ["one", "three"] {
                break;
            }
            A::sleep(Duration::from_millis(10)).await;
            members = A::list(&watcher).await.unwrap();
        }
        assert_eq!(names(&members), ["one", "three"]);
        // The watch saw all four changes before `list` was answered (the
        // broker answers in order), and could hold two of them.
        match next(&mut events).await {
            Watch::Resync { seq, members } => {
                assert_eq!(seq, 4);
                assert_eq!(names(&members), ["one", "three"]);
            }
            other => panic!("expected a resync, got {other:?}"),
        }
        let four = connect::<A>(Connect::new(&addr, 5).name("four")).await;
        match next(&mut events).await {
            Watch::Change {
                seq: 5,
                presence: Presence::Up(m),
            } => assert_eq!(m.name.as_str(), "four"),
            other => panic!("expected four to come up after the resync, got {other:?}"),
        }
        drop(four);
    });
}

// ── open, accept, reject, refusals ─────────────────────────────────────

/// Opens to a missing name (relayed or direct), a rejecting target and an
/// unreachable broker fail with their own errors; the target sees who opens,
/// with what protocol and metadata; an accepted channel knows its peer at
/// each end and carries data both ways.
pub fn opens_and_refusals_are_typed<B: Broker, A: Api>() {
    let broker = start_for::<B, A>("refusals", |_| {});
    let addr = broker.unix.clone();
    run::<A, _>(async {
        let client = connect::<A>(Connect::new(&addr, 1)).await;
        for direct in [false, true] {
            let missing = A::open(&client, "nobody", "x", Bytes::new(), direct).await;
            assert_eq!(
                missing.err().and_then(|e| e.code()),
                Some(ErrorCode::NoSuchName),
                "direct: {direct}"
            );
        }

        let picky = Arc::new(connect::<A>(Connect::new(&addr, 2).name("picky")).await);
        let target = picky.clone();
        let answers = A::spawn(async move {
            let incoming = A::incoming(&target).await.expect("the first open");
            assert_eq!(A::protocol(&incoming), "rude");
            assert_eq!(&A::metadata(&incoming)[..], b"hello");
            assert_eq!(A::from_key(&incoming), keys(1).public());
            A::reject(incoming, "no thanks").unwrap();
            let incoming = A::incoming(&target).await.expect("the second open");
            assert_eq!(A::protocol(&incoming), "polite");
            let mut channel = A::accept(incoming).await.unwrap();
            assert_eq!(A::peer(&channel), keys(1).public());
            let mut got = Vec::new();
            channel.read_to_end(&mut got).await.unwrap();
            channel.write_all(&got).await.unwrap();
            channel.close().await.unwrap();
        });
        let hello = Bytes::from_static(b"hello");
        match A::open(&client, "picky", "rude", hello, false).await {
            Err(Error::Refused(ErrorCode::Rejected, message)) => {
                assert!(message.contains("no thanks"), "{message}")
            }
            Err(e) => panic!("expected Rejected, got {e:?}"),
            Ok(_) => panic!("a rejected open succeeded"),
        }
        let mut channel = A::open(&client, "picky", "polite", Bytes::new(), false)
            .await
            .unwrap();
        assert_eq!(A::path(&channel), Path::Relayed);
        assert_eq!(A::peer(&channel), keys(2).public());
        channel.write_all(b"hello there").await.unwrap();
        channel.close().await.unwrap();
        let mut back = Vec::new();
        channel.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"hello there");
        answers.await;

        let unreachable = A::connect(Connect::new("unix:/nonexistent/plugboard.sock", 3)).await;
        assert!(
            matches!(unreachable, Err(Error::Unreachable(_))),
            "{:?}",
            unreachable.err()
        );
    });
}

/// An open the target never answers times out with its own code, and leaves
/// nothing behind.
pub fn an_unanswered_open_times_out<B: Broker, A: Api>() {
    // Short, but long enough for a busy machine to answer the second open
    // in time.
    let broker = start_for::<B, A>("open-timeout", |c| {
        c.limits.open_timeout = Duration::from_secs(3);
    });
    let addr = broker.unix.clone();
    run::<A, _>(async {
        let sleepy = connect::<A>(Connect::new(&addr, 1).name("sleepy")).await;
        let client = connect::<A>(Connect::new(&addr, 2)).await;
        let (opened, pending) = futures_lite::future::zip(
            A::open(&client, "sleepy", "x", Bytes::new(), false),
            A::incoming(&sleepy),
        )
        .await;
        let pending = pending.expect("the open reached the target");
        match opened {
            Err(Error::Refused(ErrorCode::OpenTimeout, _)) => {}
            Err(e) => panic!("expected OpenTimeout, got {e:?}"),
            Ok(_) => panic!("an unanswered open succeeded"),
        }
        // Answering now is too late: no working channel comes of it.
        if let Ok(mut late) = A::accept(pending).await {
            let mut buf = [0u8; 16];
            let read = late.read(&mut buf).await;
            assert!(read.is_err(), "a timed-out channel read {read:?}");
        }
        // The next open is answered and carries data.
        let sleepy = Arc::new(sleepy);
        let target = sleepy.clone();
        let echo = A::spawn(async move {
            let incoming = A::incoming(&target).await.unwrap();
            let mut channel = A::accept(incoming).await.unwrap();
            let mut got = Vec::new();
            channel.read_to_end(&mut got).await.unwrap();
            channel.write_all(&got).await.unwrap();
            channel.close().await.unwrap();
        });
        let mut channel = A::open(&client, "sleepy", "x", Bytes::new(), false)
            .await
            .unwrap();
        channel.write_all(b"awake now").await.unwrap();
        channel.close().await.unwrap();
        let mut back = Vec::new();
        channel.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"awake now");
        echo.await;
    });
}

// ── bulk, hashed ───────────────────────────────────────────────────────

/// Three channels at once on one connection, 64 MiB each way on each,
/// relayed over unix sockets (plain framing).
pub fn relayed_over_unix_64_mib_each_way<B: Broker, A: Api>() {
    bulk::<B, A>(
        "bulk-unix",
        false,
        false,
        &[64 * MIB, 64 * MIB, 64 * MIB],
        Path::Relayed,
    );
}

/// Three channels at once over TCP (box-stream, sealed and opened twice
/// each way), 64 MiB each way on each.
pub fn relayed_over_tcp_64_mib_each_way<B: Broker, A: Api>() {
    bulk::<B, A>(
        "bulk-tcp",
        true,
        false,
        &[64 * MIB, 64 * MIB, 64 * MIB],
        Path::Relayed,
    );
}

/// Direct over socketpairs the broker handed out: three at once, 64 MiB each
/// way on each.
pub fn socketpairs_64_mib_each_way<B: Broker, A: Api>() {
    bulk::<B, A>(
        "bulk-pair",
        false,
        false,
        &[64 * MIB, 64 * MIB, 64 * MIB],
        Path::SocketPair,
    );
}

/// Direct over TCP (the opener dials the target; shs1 + box-stream): three
/// at once, 64 MiB each way on each.
pub fn direct_tcp_64_mib_each_way<B: Broker, A: Api>() {
    bulk::<B, A>(
        "bulk-dial",
        true,
        true,
        &[64 * MIB, 64 * MIB, 64 * MIB],
        Path::Tcp,
    );
}

fn bulk<B: Broker, A: Api>(name: &str, tcp: bool, listen: bool, sizes: &[u64], path: Path) {
    let broker = start_for::<B, A>(name, |_| {});
    let target = broker.unix.clone();
    let opener = if tcp {
        broker.tcp.clone()
    } else {
        target.clone()
    };
    run::<A, _>(async {
        let mut hasher = Connect::new(&target, 1).name("hasher");
        if listen {
            hasher = hasher.direct("tcp:127.0.0.1:0");
        }
        let (tx, mut reports) = mpsc::unbounded_channel();
        let _hasher = serve_hasher::<A>(connect::<A>(hasher).await, tx);
        let client = Arc::new(connect::<A>(Connect::new(&opener, 2)).await);
        hashed_exchanges::<A>(client, "hasher", &mut reports, sizes, path).await;
    });
}

/// Direct TCP: a key the broker announced nothing for gets no handshake at
/// the target's direct address; a dead direct address falls back to the relay.
pub fn direct_tcp_refuses_strangers_and_falls_back<B: Broker, A: Api>() {
    let broker = start_for::<B, A>("dial", |_| {});
    let (unix, tcp) = (broker.unix.clone(), broker.tcp.clone());
    run::<A, _>(async {
        let port = free_port();
        let far = Connect::new(&unix, 4)
            .name("far")
            .direct(&format!("tcp:127.0.0.1:{port}"));
        let far = connect::<A>(far).await;
        let stranger = std::thread::spawn(move || crate::hostile::dial_uninvited(port, 6, 4));
        let stranger = stranger.join().expect("the stranger's thread");
        assert!(
            matches!(stranger, plugboard_core::direct::DirectError::Handshake(_)),
            "an unannounced key gets no handshake: {stranger:?}"
        );
        let (tx, mut reports) = mpsc::unbounded_channel();
        let _far = serve_hasher::<A>(far, tx);
        let client = Arc::new(connect::<A>(Connect::new(&tcp, 2)).await);
        hashed_exchanges::<A>(client.clone(), "far", &mut reports, &[MIB], Path::Tcp).await;

        let mut dead = Connect::new(&unix, 5)
            .name("dead")
            .direct("tcp:127.0.0.1:0");
        dead.direct_advertise = Some("tcp:127.0.0.1:1".into());
        let (tx, mut reports) = mpsc::unbounded_channel();
        let _dead = serve_hasher::<A>(connect::<A>(dead).await, tx);
        // Asked for direct, the channel ends up relayed.
        let channel =
            stream::open_hashed::<A>(&client, "dead", (9, MIB), true, Path::Relayed).await;
        let (sent, received) = stream::both_ways::<A>(channel, 9, MIB).await;
        let exchanged = stream::Exchanged {
            seed: 9,
            len: MIB,
            path: Path::Relayed,
            sent,
            received,
        };
        stream::check_reports(&mut reports, &[exchanged]).await;
    });
}

/// Openers that ask for a direct channel and, once told to dial, reset it
/// at once or never dial at all: the target's `accept()` ends with a reset
/// within the open timeout every time, and an honest direct transfer to the
/// same target completes beside them.
pub fn openers_that_never_dial_cannot_hold_an_accept<B: Broker, A: Api>() {
    const OPEN_TIMEOUT: Duration = Duration::from_secs(2);
    const ROUNDS: u32 = 20;
    // The bound on one accept: the open timeout, and room for a busy machine.
    const BOUND: Duration = Duration::from_secs(8);
    // The raw opener finds the broker by its socket's path.
    let broker = start_for::<B, A>("never-dials", |c| c.limits.open_timeout = OPEN_TIMEOUT);
    let (tcp, path) = (broker.tcp.clone(), broker.path.clone());
    run::<A, _>(async {
        // Over TCP, so that the raw opener on the unix socket is told to
        // dial rather than handed a socketpair.
        let far = Connect::new(&tcp, 4).name("far").direct("tcp:127.0.0.1:0");
        let far = connect::<A>(far).await;
        let (tx, mut reports) = mpsc::unbounded_channel();
        let (hostile_tx, mut accepts) = mpsc::unbounded_channel();
        // The target: honest opens (16 bytes of metadata) are hashed; the
        // others report how their accept ended, and how long it took.
        let _far = A::spawn(async move {
            while let Some(incoming) = A::incoming(&far).await {
                if A::metadata(&incoming).len() == 16 {
                    stream::answer_hashed::<A>(incoming, tx.clone());
                    continue;
                }
                let hostile_tx = hostile_tx.clone();
                drop(A::spawn(async move {
                    let started = std::time::Instant::now();
                    let accepted = A::accept(incoming).await.map(|c| A::path(&c));
                    let _ = hostile_tx.send((accepted, started.elapsed()));
                }));
            }
        });
        let (done, held) = tokio::sync::oneshot::channel();
        let opener = crate::hostile::direct_opener_that_never_dials(path, 5, "far", ROUNDS, held);
        let client = Arc::new(connect::<A>(Connect::new(&tcp, 2)).await);
        let honest = hashed_exchanges::<A>(client, "far", &mut reports, &[8 * MIB], Path::Tcp);
        let hostile = async {
            let mut ended = Vec::new();
            while ended.len() < ROUNDS as usize {
                let deadline = async {
                    A::sleep(OPEN_TIMEOUT + BOUND).await;
                    None
                };
                match futures_lite::future::or(async { accepts.recv().await }, deadline).await {
                    Some(accept) => ended.push(accept),
                    None => panic!(
                        "{} of {ROUNDS} accepts still waiting {:?} after the last ended",
                        ROUNDS as usize - ended.len(),
                        OPEN_TIMEOUT + BOUND
                    ),
                }
            }
            ended
        };
        let ((), ended) = futures_lite::future::zip(honest, hostile).await;
        let (mut cancelled, mut timed_out) = (0, 0);
        for (accepted, took) in ended {
            match accepted {
                Err(Error::Reset(ErrorCode::Cancelled, _)) => cancelled += 1,
                Err(Error::Reset(ErrorCode::OpenTimeout, _)) => timed_out += 1,
                other => panic!("an accept with no path ended with {other:?}"),
            }
            assert!(took < BOUND, "an accept took {took:?}");
        }
        assert_eq!((cancelled, timed_out), (ROUNDS / 2, ROUNDS / 2));
        let _ = done.send(());
        opener.join().expect("the hostile opener");
    });
}

/// A free loopback port (free when asked; bound again at once).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

// ── a plugin killed mid-transfer ───────────────────────────────────────

/// A plugin whose connection dies mid-transfer: its peer's reads and writes
/// fail (a reset, not an end), watchers see it leave, its name is free at once.
pub fn a_plugin_killed_mid_transfer<B: Broker, A: Api>() {
    let broker = start_for::<B, A>("killed", |_| {});
    let addr = broker.unix.clone();
    run::<A, _>(async {
        let watcher = connect::<A>(Connect::new(&addr, 1)).await;
        let mut events = A::watch(&watcher).await.unwrap();
        assert_eq!(next(&mut events).await, Watch::Snapshot(vec![]));
        let victim = connect::<A>(Connect::new(&addr, 2).name("victim")).await;
        assert!(matches!(
            next(&mut events).await,
            Watch::Change {
                presence: Presence::Up(_),
                ..
            }
        ));
        let client = connect::<A>(Connect::new(&addr, 3)).await;
        let accept = async {
            A::accept(A::incoming(&victim).await.unwrap())
                .await
                .unwrap()
        };
        let (opened, victim_channel) = futures_lite::future::zip(
            A::open(&client, "victim", "flood", Bytes::new(), false),
            accept,
        )
        .await;
        let channel = opened.unwrap();

        // Both ends read and write as fast as they can, forever.
        let (mut vr, mut vw) = futures_lite::io::split(victim_channel);
        let _victim_io = A::spawn(async move {
            let drain = async {
                let mut buf = vec![0u8; 64 * 1024];
                while vr.read(&mut buf).await.is_ok_and(|n| n > 0) {}
            };
            let flood = async {
                let buf = vec![0x76u8; 64 * 1024];
                while vw.write_all(&buf).await.is_ok() {}
            };
            futures_lite::future::zip(drain, flood).await;
        });
        let (mut cr, mut cw) = futures_lite::io::split(channel);
        let (midway_tx, midway) = tokio::sync::oneshot::channel();
        let reader = A::spawn(async move {
            let mut midway_tx = Some(midway_tx);
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0u64;
            loop {
                match cr.read(&mut buf).await {
                    Ok(0) => return (got, None),
                    Ok(n) => {
                        got += n as u64;
                        if got >= 4 * MIB {
                            if let Some(tx) = midway_tx.take() {
                                let _ = tx.send(());
                            }
                        }
                    }
                    Err(e) => return (got, Some(e)),
                }
            }
        });
        let writer = A::spawn(async move {
            let buf = vec![0x63u8; 64 * 1024];
            loop {
                if let Err(e) = cw.write(&buf).await {
                    return e;
                }
            }
        });
        midway.await.expect("the transfer got going");
        drop(victim); // killed: it never finishes nor resets its channel

        let (got, error) = reader.await;
        let error =
            error.unwrap_or_else(|| panic!("a clean end after {got} bytes from a killed peer"));
        let broken = |e: &io::Error| {
            matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            )
        };
        assert!(broken(&error), "the reader saw {error:?}");
        let heir = A::connect(Connect::new(&addr, 4).name("victim")).await;
        let heir = heir.expect("the killed plugin's name is free at once");
        let error = writer.await;
        assert!(broken(&error), "the writer saw {error:?}");

        match next(&mut events).await {
            Watch::Change {
                presence: Presence::Down { name, key },
                ..
            } => assert_eq!((name.as_str(), key), ("victim", keys(2).public())),
            other => panic!("expected the victim to go down, got {other:?}"),
        }
        match next(&mut events).await {
            Watch::Change {
                presence: Presence::Up(m),
                ..
            } => assert_eq!((m.name.as_str(), m.key), ("victim", keys(4).public())),
            other => panic!("expected the heir to come up, got {other:?}"),
        }
        drop((heir, client, watcher));
    });
}

// ── policy ─────────────────────────────────────────────────────────────

/// Every kind of refusal the policy can make, over TCP with foreign keys,
/// each with its code; what it allows works beside.
pub fn policy_refusals_over_tcp<B: Broker, A: Api>() {
    let (full, server, limited) = (keys(1), keys(2), keys(3));
    let text = format!(
        r#"
        [unix]
        register = ["*"]
        open = ["*"]
        list = true
        watch = true

        [[key]]
        id = "{}"
        register = ["svc-*"]
        open = ["svc-*"]
        list = true
        watch = true
        stats = true

        [[key]]
        id = "{}"
        register = ["svc-*"]

        [[key]]
        id = "{}"
        register = ["b-*"]
        open = ["public-*"]
        "#,
        full.public(),
        server.public(),
        limited.public(),
    );
    let policy = Policy::from_toml(&text).unwrap();
    let broker = start_for::<B, A>("policy", |c| c.policy = policy);
    let (tcp, unix) = (broker.tcp.clone(), broker.unix.clone());
    run::<A, _>(async {
        // A key the policy does not name: cut in the handshake over TCP,
        // admitted on the unix socket.
        let refused = A::connect(Connect::new(&tcp, 4)).await;
        assert!(
            matches!(refused, Err(Error::Disconnected(_))),
            "{:?}",
            refused.err()
        );
        let local = connect::<A>(Connect::new(&unix, 4)).await;
        A::list(&local).await.unwrap();

        let (tx, mut reports) = mpsc::unbounded_channel();
        let _svc_b = serve_hasher::<A>(connect::<A>(Connect::new(&tcp, 2).name("svc-b")).await, tx);
        let allowed = Arc::new(connect::<A>(Connect::new(&tcp, 1).name("svc-a")).await);
        hashed_exchanges::<A>(
            allowed.clone(),
            "svc-b",
            &mut reports,
            &[256 * 1024],
            Path::Relayed,
        )
        .await;
        assert_eq!(names(&A::list(&allowed).await.unwrap()), ["svc-a", "svc-b"]);
        let mut events = A::watch(&allowed).await.unwrap();
        match next(&mut events).await {
            Watch::Snapshot(members) => assert_eq!(names(&members), ["svc-a", "svc-b"]),
            other => panic!("expected a snapshot, got {other:?}"),
        }
        assert!(!A::stats(&allowed).await.unwrap().is_empty());

        let not_permitted = |result: Result<(), Error>, what: &str| match result {
            Err(Error::Refused(ErrorCode::NotPermitted, _)) => {}
            other => panic!("{what}: expected NotPermitted, got {other:?}"),
        };
        not_permitted(
            A::connect(Connect::new(&tcp, 1).name("other"))
                .await
                .map(drop),
            "the full key registers outside svc-*",
        );
        not_permitted(
            A::connect(Connect::new(&tcp, 3).name("svc-x"))
                .await
                .map(drop),
            "the limited key registers svc-x",
        );
        let limited = connect::<A>(Connect::new(&tcp, 3).name("b-1")).await;
        not_permitted(
            A::open(&limited, "svc-a", "x", Bytes::new(), false)
                .await
                .map(drop),
            "the limited key opens svc-a",
        );
        not_permitted(
            A::open(&allowed, "b-1", "x", Bytes::new(), false)
                .await
                .map(drop),
            "the full key opens b-1",
        );
        let missing = A::open(&limited, "public-x", "x", Bytes::new(), false).await;
        assert_eq!(
            missing.err().and_then(|e| e.code()),
            Some(ErrorCode::NoSuchName)
        );
        not_permitted(A::list(&limited).await.map(drop), "the limited key lists");
        not_permitted(
            A::watch(&limited).await.map(drop),
            "the limited key watches",
        );
        not_permitted(
            A::stats(&limited).await.map(drop),
            "the limited key asks for stats",
        );
        let server_client = connect::<A>(Connect::new(&tcp, 2)).await;
        not_permitted(
            A::list(&server_client).await.map(drop),
            "the server key lists",
        );
        not_permitted(
            A::open(&server_client, "svc-a", "x", Bytes::new(), false)
                .await
                .map(drop),
            "the server key opens",
        );
        // The refusals left the connections working.
        assert_eq!(
            names(&A::list(&allowed).await.unwrap()),
            ["b-1", "svc-a", "svc-b"]
        );
    });
}
