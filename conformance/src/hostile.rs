//! Hostile input at the broker's socket, beside honest transfers: every
//! attacker is refused or cut (with a reason where the protocol gives one),
//! the honest transfer completes. Broker-side scenarios: the plugins are
//! tokio's, the attackers raw sockets driven by hand.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use plugboard_core::broker::Limits;
use plugboard_core::control::{self, ErrorCode, Message, Name, OpenedPath, Presence};
use plugboard_core::direct::{DirectConn, DirectError, DirectEvent};
use plugboard_core::mux::{frame, Frame, FrameDecoder};
use plugboard_core::shs::{ClientHandshake, Event};
use plugboard_core::wire::BoxedIo;
use plugboard_core::{Instant, NetworkKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use crate::api::{Api, Connect, Error, Path, Spawned, TokioApi, Watch};
use crate::broker::{start, Broker};
use crate::stream::{hashed_exchanges, serve_hasher, MIB};
use crate::{broker_keys, keys};

type A = TokioApi;

fn run<F: std::future::Future>(scenario: F) -> F::Output {
    A::block_on(async {
        tokio::time::timeout(Duration::from_secs(300), scenario)
            .await
            .expect("the scenario hung")
    })
}

async fn plugin(addr: &str, seed: u8, name: Option<&str>) -> <A as Api>::Plugin {
    let mut how = Connect::new(addr, seed);
    if let Some(name) = name {
        how = how.name(name);
    }
    A::connect(how).await.expect("an honest plugin connects")
}

/// A hashed exchange of `len` bytes each way in the background, between two
/// plugins of its own (`seed` registers `name`, `seed + 1` opens).
async fn honest_transfer(addr: &str, seed: u8, name: &'static str, len: u64) -> Spawned<()> {
    let (tx, mut reports) = mpsc::unbounded_channel();
    let hasher = serve_hasher::<A>(plugin(addr, seed, Some(name)).await, tx);
    let client = Arc::new(plugin(addr, seed + 1, None).await);
    A::spawn(async move {
        hashed_exchanges::<A>(client, name, &mut reports, &[len], Path::Relayed).await;
        drop(hasher);
    })
}

/// Reads until the broker closes the connection; returns what it sent.
async fn until_closed(stream: &mut UnixStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return all,
            Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the broker did not close the connection"),
        }
    }
}

fn client_handshake(seed: u8, network_key: NetworkKey) -> ClientHandshake {
    let mut config = crate::handshake(keys(seed));
    config.network_key = network_key;
    ClientHandshake::new(
        Arc::new(config),
        broker_keys().public(),
        &mut rand_core::OsRng,
        Instant::ZERO,
    )
    .expect("a client handshake")
}

/// A connection driven by hand: shs1 done and the hello sent; plain mux
/// frames from here on.
pub(crate) struct Raw {
    stream: UnixStream,
    frames: FrameDecoder,
    control: control::ControlDecoder,
}

impl Raw {
    async fn connect(path: &std::path::Path, seed: u8) -> Self {
        Raw::connect_offering(path, seed, 0).await
    }

    /// As [`Raw::connect`], offering `features` in the hello.
    async fn connect_offering(path: &std::path::Path, seed: u8, features: u64) -> Self {
        let mut stream = UnixStream::connect(path).await.unwrap();
        let mut hs = client_handshake(seed, NetworkKey::SSB_MAIN);
        let mut buf = [0u8; 256];
        loop {
            while let Some(bytes) = hs.poll_transmit() {
                stream.write_all(&bytes).await.unwrap();
            }
            if let Some(Event::Established(_)) = hs.poll_event() {
                break;
            }
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the broker closed the handshake");
            hs.handle_input(Instant::ZERO, &buf[..n]).unwrap();
        }
        let mut raw = Raw {
            stream,
            frames: FrameDecoder::new(1 << 20),
            control: control::ControlDecoder::new(),
        };
        raw.send(&Message::ClientHello {
            min_version: 1,
            max_version: 1,
            features,
        })
        .await;
        raw
    }

    async fn send(&mut self, message: &Message) {
        let mut body = BytesMut::new();
        control::encode(message, &mut body);
        let mut out = BytesMut::new();
        frame::encode(
            &Frame::Data {
                channel: 0,
                fin: false,
                payload: body.freeze(),
            },
            &mut out,
        );
        self.stream.write_all(&out).await.unwrap();
    }

    async fn frame(&mut self) -> Option<Frame> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(frame) = self.frames.next_frame().expect("the broker's frames parse") {
                return Some(frame);
            }
            match self.stream.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.frames.push(&buf[..n]),
            }
        }
    }

    async fn message(&mut self) -> Option<Message> {
        loop {
            if let Some(message) = self.control.next().expect("control messages parse") {
                return Some(message);
            }
            match self.frame().await? {
                Frame::Data {
                    channel: 0,
                    payload,
                    ..
                } => self.control.push(&payload),
                Frame::GoAway { code, reason } => panic!("cut early: {code}: {reason}"),
                _ => {}
            }
        }
    }

    /// Reads to the close; returns the GOAWAY's code and reason.
    async fn goaway(&mut self) -> (ErrorCode, String) {
        let mut goaway = None;
        while let Some(frame) = self.frame().await {
            if let Frame::GoAway { code, reason } = frame {
                goaway = Some((code, reason));
            }
        }
        goaway.expect("a GOAWAY before the close")
    }

    /// Data for a channel never opened: a protocol violation.
    async fn send_stray_data(&mut self) {
        let mut out = BytesMut::new();
        frame::encode(
            &Frame::Data {
                channel: 9,
                fin: false,
                payload: vec![1u8; 100].into(),
            },
            &mut out,
        );
        self.stream.write_all(&out).await.unwrap();
    }

    async fn reset(&mut self, channel: control::ChannelId, code: ErrorCode, reason: &str) {
        let mut out = BytesMut::new();
        let reason = reason.to_owned();
        frame::encode(
            &Frame::Reset {
                channel,
                code,
                reason,
            },
            &mut out,
        );
        self.stream.write_all(&out).await.unwrap();
    }
}

/// The next watch event, within 10 s.
async fn next_watched(watching: &mut crate::api::Watching) -> Watch {
    let next = futures_lite::StreamExt::next(watching);
    tokio::time::timeout(Duration::from_secs(10), next)
        .await
        .expect("a watch event in time")
        .expect("the watch goes on")
}

/// A control message as a mux frame, appended to `out`.
fn control_frame(message: &Message, out: &mut BytesMut) {
    let mut body = BytesMut::new();
    control::encode(message, &mut body);
    let payload = body.freeze();
    frame::encode(
        &Frame::Data {
            channel: 0,
            fin: false,
            payload,
        },
        out,
    );
}

/// A box-stream connection's last read carries its hello, a Register and
/// box-stream's goodbye at once: the broker hears all of it, in order, so
/// watchers see the name come and then go (the threaded server once handed
/// the goodbye to the hub before the port had the plaintext read with it,
/// and the Register was lost).
pub fn last_words_read_with_the_goodbye_are_heard<B: Broker>() {
    let broker = start::<B>("last-words", |_| {});
    let tcp = broker.tcp.clone();
    run(async {
        let watcher = plugin(&tcp, 1, None).await;
        let mut watching = A::watch(&watcher).await.expect("a watch");
        assert!(matches!(
            next_watched(&mut watching).await,
            Watch::Snapshot(_)
        ));

        // A plugin driven by hand over TCP: shs1, then box-stream.
        let at = tcp.strip_prefix("tcp:").expect("a tcp: address");
        let mut stream = tokio::net::TcpStream::connect(at).await.unwrap();
        let mut hs = client_handshake(2, NetworkKey::SSB_MAIN);
        let mut buf = vec![0u8; 4096];
        let established = loop {
            while let Some(bytes) = hs.poll_transmit() {
                stream.write_all(&bytes).await.unwrap();
            }
            if let Some(Event::Established(established)) = hs.poll_event() {
                break established;
            }
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the broker closed the handshake");
            hs.handle_input(Instant::ZERO, &buf[..n]).unwrap();
        };
        let mut io = BoxedIo::new(&established);
        let mut plain = BytesMut::new();
        let hello = Message::ClientHello {
            min_version: 1,
            max_version: 1,
            features: 0,
        };
        control_frame(&hello, &mut plain);
        let name = Name::new("last-words").unwrap();
        let register = Message::Register {
            request: 1,
            name: name.clone(),
            wait: false,
            direct_addr: String::new(),
        };
        control_frame(&register, &mut plain);
        let mut last = BytesMut::from(&io.seal(&plain)[..]);
        io.goodbye(&mut last);
        stream.write_all(&last).await.unwrap();

        match next_watched(&mut watching).await {
            Watch::Change {
                presence: Presence::Up(member),
                ..
            } => assert_eq!(member.name, name),
            other => panic!("expected last-words up, got {other:?}"),
        }
        match next_watched(&mut watching).await {
            Watch::Change {
                presence: Presence::Down { name: gone, .. },
                ..
            } => assert_eq!(gone, name),
            other => panic!("expected last-words down, got {other:?}"),
        }
    });
}

/// An opener that asks `target` for `rounds` direct channels, one after
/// another, as key `seed`, and after each `Opened{Dial}` resets the channel
/// at once (even rounds) or does nothing at all (odd rounds: it never dials
/// and never says DirectFailed). Runs on a thread of its own (the raw socket
/// is tokio's, whatever runtime the plugins use) and keeps its connection
/// until `done`.
pub(crate) fn direct_opener_that_never_dials(
    path: std::path::PathBuf,
    seed: u8,
    target: &'static str,
    rounds: u32,
    done: oneshot::Receiver<()>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async move {
            let mut raw = Raw::connect(&path, seed).await;
            for round in 0..rounds {
                let channel = 2 * round + 1;
                raw.send(&Message::Open {
                    request: round + 1,
                    channel,
                    direct: true,
                    name: Name::new(target).unwrap(),
                    protocol: "hostile".into(),
                    metadata: Bytes::from_static(b"hostile"),
                })
                .await;
                loop {
                    match raw.message().await.expect("an answer to the open") {
                        Message::Opened {
                            channel: c, path, ..
                        } if c == channel => {
                            assert!(matches!(path, OpenedPath::Dial { .. }), "{path:?}");
                            break;
                        }
                        Message::Error { code, message, .. } => {
                            panic!("round {round}: open refused: {code}: {message}")
                        }
                        _ => {}
                    }
                }
                if round % 2 == 0 {
                    raw.reset(channel, ErrorCode::Cancelled, "never mind").await;
                }
            }
            let _ = done.await;
        })
    })
}

/// The wrong network key, garbage, a stalled handshake, an oversized frame,
/// a frame for a channel never opened, and a crowd of one key beyond its
/// limit, beside an honest transfer.
pub fn attackers_are_cut_beside_a_transfer<B: Broker>() {
    let broker = start::<B>("attackers", |c| {
        c.limits.handshake_timeout = Duration::from_millis(300);
        c.limits.max_connections_per_key = 8;
    });
    let (addr, path) = (broker.unix.clone(), broker.path.clone());
    run(async {
        let honest = honest_transfer(&addr, 1, "hasher", 8 * MIB).await;

        // Wrong network key: closed after message 1, nothing sent back.
        let mut wrong = UnixStream::connect(&path).await.unwrap();
        let mut hs = client_handshake(3, NetworkKey([7; 32]));
        wrong.write_all(&hs.poll_transmit().unwrap()).await.unwrap();
        assert!(until_closed(&mut wrong).await.is_empty());

        // Garbage.
        let mut garbage = UnixStream::connect(&path).await.unwrap();
        garbage.write_all(&[0x42; 300]).await.unwrap();
        assert!(until_closed(&mut garbage).await.is_empty());

        // Part of a handshake, then silence: the deadline closes it.
        let mut stall = UnixStream::connect(&path).await.unwrap();
        let message_1 = client_handshake(9, NetworkKey::SSB_MAIN)
            .poll_transmit()
            .unwrap();
        stall.write_all(&message_1[..30]).await.unwrap();
        assert!(until_closed(&mut stall).await.is_empty());

        // An oversized frame after the hello: GOAWAY, then closed.
        let mut big = Raw::connect(&path, 4).await;
        let mut header = BytesMut::new();
        frame::encode_data_header(1, false, 1 << 20, &mut header);
        big.stream.write_all(&header).await.unwrap();
        let (code, reason) = big.goaway().await;
        assert!(reason.contains("frame payload"), "{code}: {reason}");

        // Data for a channel never opened: cut with a reason.
        let mut stray = Raw::connect(&path, 5).await;
        stray.send_stray_data().await;
        let (code, reason) = stray.goaway().await;
        assert_eq!(code, ErrorCode::ProtocolViolation, "{reason}");
        assert!(reason.contains("never opened"), "{reason}");

        // One key's crowd: beyond its limit, cut in the handshake.
        let mut crowd = Vec::new();
        let mut refused = 0;
        for _ in 0..40 {
            match A::connect(Connect::new(&addr, 6)).await {
                Ok(plugin) => crowd.push(plugin),
                Err(Error::Disconnected(_)) => refused += 1,
                Err(e) => panic!("an unexpected failure: {e:?}"),
            }
        }
        assert_eq!((crowd.len(), refused), (8, 32));
        honest.await;
    });
}

/// Truncated handshakes free their slots; a plugin writing past its credit
/// on a relayed channel is cut, and its peer sees a reset, not an end.
pub fn truncated_handshakes_and_writes_past_credit<B: Broker>() {
    const WINDOW: u32 = 64 * 1024;
    let broker = start::<B>("credit", |c| {
        // Few handshakes at once, and only closing frees a slot: a leak shows.
        c.limits.max_handshaking = 4;
        c.limits.handshake_timeout = Duration::from_secs(3600);
        c.limits.initial_window = WINDOW;
    });
    let (addr, path) = (broker.unix.clone(), broker.path.clone());
    run(async {
        let honest = honest_transfer(&addr, 1, "hasher", 16 * MIB).await;
        let message_1 = client_handshake(9, NetworkKey::SSB_MAIN)
            .poll_transmit()
            .unwrap();
        for i in 0..12 {
            let mut stream = UnixStream::connect(&path).await.unwrap();
            stream.write_all(&message_1[..30]).await.unwrap();
            if i % 2 == 0 {
                stream.shutdown().await.unwrap();
                assert!(until_closed(&mut stream).await.is_empty());
            } else {
                drop(stream);
            }
        }
        // Their slots are free (the broker learns of the closes in its own
        // time: retry).
        let mut attempts = 0;
        loop {
            match A::connect(Connect::new(&addr, 3)).await {
                Ok(_) => break,
                Err(_) if attempts < 300 => {
                    attempts += 1;
                    A::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("truncated handshakes kept their slots: {e:?}"),
            }
        }

        // The sink accepts and never reads: no credit beyond the first window.
        let sink = plugin(&addr, 4, Some("sink")).await;
        let accepted = A::spawn(async move {
            let channel = A::accept(A::incoming(&sink).await.unwrap()).await.unwrap();
            (sink, channel)
        });
        let mut greedy = Raw::connect(&path, 5).await;
        greedy
            .send(&Message::Open {
                request: 1,
                channel: 1,
                direct: false,
                name: Name::new("sink").unwrap(),
                protocol: "greedy".into(),
                metadata: Bytes::new(),
            })
            .await;
        loop {
            match greedy.message().await.expect("an answer to the open") {
                Message::Opened { channel: 1, .. } => break,
                Message::Error { code, message, .. } => panic!("open refused: {code}: {message}"),
                _ => {}
            }
        }
        let (_sink, mut sink_channel) = accepted.await;
        let chunk = Bytes::from(vec![0x67u8; 16 * 1024]);
        let mut out = BytesMut::new();
        let mut sent = 0;
        while sent <= WINDOW as usize {
            frame::encode(
                &Frame::Data {
                    channel: 1,
                    fin: false,
                    payload: chunk.clone(),
                },
                &mut out,
            );
            sent += chunk.len();
        }
        let _ = greedy.stream.write_all(&out).await; // may be cut before it all went
        let (code, reason) = greedy.goaway().await;
        assert_eq!(code, ErrorCode::ProtocolViolation, "{reason}");
        assert!(reason.contains("credit"), "{reason}");

        let mut got = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        let error = loop {
            match futures_lite::io::AsyncReadExt::read(&mut sink_channel, &mut buf).await {
                Ok(0) => panic!("a clean end of stream after {got} bytes"),
                Ok(n) => got += n,
                Err(e) => break e,
            }
        };
        assert!(
            got <= WINDOW as usize,
            "{got} bytes passed a {WINDOW}-byte window"
        );
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}");
        honest.await;
    });
}

/// A watcher that asks for every change and never reads is cut once its
/// queue passes the bound; nobody else is disturbed.
pub fn a_watcher_that_never_reads_is_cut<B: Broker>() {
    let broker = start::<B>("deaf", |c| {
        c.limits.max_control_queue = 8 * 1024;
        // The churn here is what the registration rates bound; this test
        // is about the watcher.
        c.limits.registrations_per_source_per_s = 1_000_000;
        c.limits.registrations_per_network_per_s = 1_000_000;
        c.limits.registrations_per_s = 1_000_000;
    });
    let (addr, path) = (broker.unix.clone(), broker.path.clone());
    run(async {
        let mut deaf = Raw::connect(&path, 1).await;
        deaf.send(&Message::Watch { request: 1 }).await;
        let owner = plugin(&addr, 0xB0, None).await; // the broker's key may ask for stats
        let deaf_key = keys(1).public();
        let present = |stats: Vec<control::KeyStats>| stats.iter().any(|k| k.key == deaf_key);
        assert!(
            present(A::stats(&owner).await.unwrap()),
            "connected before the churn"
        );
        let mut churn = 0u32;
        loop {
            let name = format!("name-{churn:0>200}");
            drop(plugin(&addr, 2, Some(&name)).await);
            churn += 1;
            if churn % 25 == 0 && !present(A::stats(&owner).await.unwrap()) {
                break;
            }
            assert!(churn < 20_000, "the deaf watcher was never cut");
        }
        // Cut, it still never reads: the broker's writer, stuck on its full
        // socket, gives up within a grace and closes it.
        hung_up_within(&deaf.stream, Duration::from_secs(20)).await;
        drop(deaf);
    });
}

/// A watcher that offered `FEATURE_WATCH_RESYNC` and stops reading under
/// others' churn stays connected; when it reads again it gets the changes
/// that were queued, gap-free, then a resync showing the registry as it is.
pub fn a_watcher_that_falls_behind_is_resynchronised<B: Broker>() {
    const CHURN: u32 = 1_500;
    let broker = start::<B>("resync", |c| {
        c.limits.max_control_queue = 8 * 1024;
        c.limits.registrations_per_source_per_s = 1_000_000;
        c.limits.registrations_per_network_per_s = 1_000_000;
        c.limits.registrations_per_s = 1_000_000;
    });
    let (addr, path) = (broker.unix.clone(), broker.path.clone());
    run(async {
        let mut deaf = Raw::connect_offering(&path, 1, control::FEATURE_WATCH_RESYNC).await;
        let Some(Message::BrokerHello { features, .. }) = deaf.message().await else {
            panic!("no hello");
        };
        assert_eq!(features, control::FEATURE_WATCH_RESYNC);
        deaf.send(&Message::Watch { request: 1 }).await;
        let start = loop {
            match deaf.message().await {
                Some(Message::Snapshot {
                    seq, last: true, ..
                }) => break seq,
                Some(Message::Snapshot { .. }) => {}
                other => panic!("not a snapshot: {other:?}"),
            }
        };
        let stays = plugin(&addr, 3, Some("stays")).await;
        // Two changes each, ~250 bytes apiece: far past the socket's buffer
        // and the 8 KiB queue.
        for churn in 0..CHURN {
            let name = format!("name-{churn:0>200}");
            drop(plugin(&addr, 2, Some(&name)).await);
        }
        // Every registration and its end happened: the registry's last number.
        let end = start + 1 + 2 * u64::from(CHURN);
        let mut seen = start;
        let (seq, members) = loop {
            let message = tokio::time::timeout(Duration::from_secs(20), deaf.message())
                .await
                .expect("no resync")
                .expect("cut instead of resynchronised");
            match message {
                Message::PresenceEvent { seq, .. } => {
                    assert_eq!(seq, seen + 1, "an event out of order");
                    seen = seq;
                }
                Message::Resync {
                    seq,
                    last: true,
                    members,
                } => break (seq, members),
                other => panic!("unexpected {other:?}"),
            }
        };
        assert!(seq > seen + 1, "nothing was dropped: {seen} then {seq}");
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        // The last changes may come after the resync, as events.
        assert!(seq <= end, "{seq} after the last change {end}");
        assert!(names.contains(&"stays"), "{names:?}");
        let mut seen = seq;
        while seen < end {
            let message = tokio::time::timeout(Duration::from_secs(20), deaf.message())
                .await
                .expect("the last changes")
                .expect("cut after the resync");
            let Message::PresenceEvent { seq, .. } = message else {
                panic!("unexpected {message:?}");
            };
            assert_eq!(seq, seen + 1);
            seen = seq;
        }
        drop(stays);
    });
}

/// A peer cut for a protocol violation that goes on writing as fast as it
/// can: the broker stops reading and closes the socket all the same. (A
/// reader that preferred the next bytes to the word that the connection is
/// over could be kept open by a flood that outran it; one writer on
/// loopback does not, so this passes either way: it keeps the path tried.)
pub fn a_peer_that_floods_after_it_is_cut_is_hung_up<B: Broker>() {
    let broker = start::<B>("flood-after-cut", |_| {});
    let (addr, path) = (broker.unix.clone(), broker.path.clone());
    run(async {
        let honest = honest_transfer(&addr, 1, "hasher", 4 * MIB).await;
        let mut raw = Raw::connect(&path, 5).await;
        raw.send_stray_data().await;
        let (mut reader, mut writer) = raw.stream.into_split();
        let flood = tokio::spawn(async move {
            let chunk = vec![0u8; 64 * 1024];
            let mut sent = 0u64;
            loop {
                match writer.write_all(&chunk).await {
                    Ok(()) => sent += chunk.len() as u64,
                    Err(e) => return (sent, e),
                }
            }
        });
        // The GOAWAY, then the end of what the broker writes.
        let mut buf = vec![0u8; 4096];
        while reader.read(&mut buf).await.map(|n| n > 0).unwrap_or(false) {}
        let (sent, error) = tokio::time::timeout(Duration::from_secs(20), flood)
            .await
            .expect("the broker kept reading a connection it had cut")
            .unwrap();
        assert!(
            matches!(
                error.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
            "after {sent} bytes: {error}"
        );
        honest.await;
    });
}

/// Waits until the broker has closed its end of `stream` (the kernel says
/// hang-up), whether or not anything unread is left in it.
async fn hung_up_within(stream: &UnixStream, patience: Duration) {
    use rustix::event::{poll, PollFd, PollFlags};
    use std::os::fd::AsFd as _;
    let start = std::time::Instant::now();
    let fd = stream.as_fd();
    loop {
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        poll(&mut fds, Some(&rustix::event::Timespec::default())).expect("poll");
        if fds[0].revents().contains(PollFlags::HUP) {
            return;
        }
        assert!(
            start.elapsed() < patience,
            "the broker kept the socket of a connection it cut open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 1,000 connections of one key at once: the per-key limit admits its
/// number, refuses the rest, and frees their places once they leave; an
/// honest 64 MiB transfer completes beside them.
pub fn a_thousand_connections_of_one_key<B: Broker>() {
    const CROWD: usize = 1000;
    if let Err(why) = raise_open_files(4 * CROWD as u64) {
        eprintln!("skipped: {why}");
        return;
    }
    let limit = Limits::default().max_connections_per_key;
    assert!(limit < CROWD);
    let broker = start::<B>("crowd", |_| {});
    let addr = broker.unix.clone();
    run(async {
        let honest = honest_transfer(&addr, 1, "hasher", 64 * MIB).await;
        let mut attempts = Vec::new();
        for _ in 0..CROWD {
            attempts.push(A::spawn(A::connect(Connect::new(&addr, 7))));
        }
        let mut admitted = Vec::new();
        let mut refused = 0;
        for attempt in attempts {
            match attempt.await {
                Ok(plugin) => admitted.push(plugin),
                // Cut in the handshake (the per-key limit), or not taken at
                // all (too many handshakes at once).
                Err(Error::Disconnected(_) | Error::Unreachable(_)) => refused += 1,
                Err(e) => panic!("an unexpected failure: {e:?}"),
            }
        }
        assert_eq!(admitted.len(), limit, "admitted beyond the per-key limit");
        assert_eq!(refused, CROWD - limit);

        let owner = plugin(&addr, 0xB0, None).await;
        let crowd_key = keys(7).public();
        let held = |stats: Vec<control::KeyStats>| {
            stats
                .iter()
                .find(|k| k.key == crowd_key)
                .map_or(0, |k| k.usage.connections)
        };
        assert_eq!(held(A::stats(&owner).await.unwrap()), limit as u32);
        assert!(matches!(
            A::connect(Connect::new(&addr, 7)).await,
            Err(Error::Disconnected(_))
        ));
        drop(admitted);
        let mut polls = 0;
        while held(A::stats(&owner).await.unwrap()) > 0 {
            polls += 1;
            assert!(polls < 600, "the crowd's connections were never released");
            A::sleep(Duration::from_millis(50)).await;
        }
        A::connect(Connect::new(&addr, 7))
            .await
            .expect("a connection once the crowd left");
        honest.await;
    });
}

/// Raises the soft open-file limit to `wanted`; `Err` says why it cannot.
pub(crate) fn raise_open_files(wanted: u64) -> Result<(), String> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_none_or(|current| current >= wanted) {
        return Ok(());
    }
    if let Some(max) = limit.maximum.filter(|&max| max < wanted) {
        return Err(format!(
            "the hard open-file limit is {max}, {wanted} are needed"
        ));
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(wanted),
            maximum: limit.maximum,
        },
    )
    .map_err(|e| format!("cannot raise the open-file limit to {wanted}: {e}"))
}

/// Dials a direct listener on `port` as key `seed`, expecting the key of
/// `target`, with a made-up token; returns how it failed. Blocking.
pub fn dial_uninvited(port: u16, seed: u8, target: u8) -> DirectError {
    use std::io::{Read, Write};
    let config = Arc::new(crate::handshake(keys(seed)));
    let mut conn = DirectConn::dial(
        config,
        keys(target).public(),
        [9; 32],
        &mut rand_core::OsRng,
        Instant::ZERO,
    )
    .expect("a dialer");
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).expect("the listener");
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = vec![0u8; 4096];
    loop {
        while let Some(bytes) = conn.poll_transmit() {
            let _ = tcp.write_all(&bytes);
        }
        match conn.poll_event() {
            Some(DirectEvent::Failed(e)) => return e,
            Some(other) => panic!("an uninvited dialer got {other:?}"),
            None => {}
        }
        let _ = match tcp.read(&mut buf) {
            Ok(0) | Err(_) => conn.handle_eof(),
            Ok(n) => conn.handle_input(Instant::ZERO, &buf[..n]),
        };
    }
}
