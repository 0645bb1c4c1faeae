//! End to end, over real sockets: big hashed transfers on several channels
//! at once (relayed over unix and TCP, direct over a socketpair and over
//! TCP), a plugin killed mid-transfer, hostile input beside honest
//! transfers, policy refusals over TCP, and an open nobody answers.
//!
//! No assertion here is about timing: timeouts only stop a hung test.

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use plugboard_core::broker::{policy, BrokerConfig, Limits, Policy};
use plugboard_core::control::{self, ErrorCode, Message, Name, Presence};
use plugboard_core::mux::{frame, Frame};
use plugboard_core::shs::{ClientHandshake, Event, HandshakeConfig};
use plugboard_core::Keypair;
use plugboard_tokio::plugin::Path;
use plugboard_tokio::{Addr, Plugin, PluginError, Server, WatchEvent};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

/// The safety net around a whole scenario.
const SCENARIO: Duration = Duration::from_secs(300);

// ── a broker on unix and TCP ───────────────────────────────────────────

struct Broker {
    unix: String,
    tcp: String,
    path: std::path::PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Broker {
    /// A broker whose policy admits the test keys (seeds 1 to 9) over TCP
    /// with every right; `configure` changes anything else.
    async fn start(name: &str, configure: impl FnOnce(&mut BrokerConfig)) -> Self {
        let path =
            std::env::temp_dir().join(format!("plugboard-e2e-{}-{name}.sock", std::process::id()));
        let mut config = BrokerConfig::new(HandshakeConfig::new(broker_keys()));
        config.policy.keys = (1..=9)
            .map(|s| policy::KeyGrant {
                id: keys(s).public(),
                register: vec![policy::Pattern::any()],
                open: vec![policy::Pattern::any()],
                list: true,
                watch: true,
                stats: false,
            })
            .collect();
        configure(&mut config);
        let server = Server::bind(
            config,
            &[Addr::Unix(path.clone()), Addr::Tcp("127.0.0.1:0".into())],
        )
        .await
        .unwrap();
        let addrs = server.local_addrs();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Broker {
            unix: addrs[0].to_string(),
            tcp: addrs[1].to_string(),
            path,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.take().unwrap().await.unwrap();
    }
}

fn broker_keys() -> Keypair {
    Keypair::from_seed([0xB0; 32])
}

fn keys(seed: u8) -> Keypair {
    Keypair::from_seed([seed; 32])
}

fn builder(seed: u8) -> plugboard_tokio::PluginBuilder {
    Plugin::builder(keys(seed)).broker_key(broker_keys().public())
}

async fn plugin(addr: &str, seed: u8, name: Option<&str>) -> Plugin {
    let mut builder = builder(seed);
    if let Some(name) = name {
        builder = builder.name(name);
    }
    tokio::time::timeout(Duration::from_secs(30), builder.connect(addr))
        .await
        .expect("connect hung")
        .unwrap()
}

async fn scenario<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(SCENARIO, future)
        .await
        .expect("the scenario hung")
}

// ── hashed streams ─────────────────────────────────────────────────────

/// How many bytes went by, and their SHA-256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Digest {
    len: u64,
    hash: [u8; 32],
}

const CHUNK: usize = 64 * 1024;

/// Writes `len` pseudo-random bytes from `seed`, then half-closes; returns
/// the digest of what it wrote.
async fn send_stream<W: AsyncWrite + Unpin>(w: &mut W, seed: u64, len: u64) -> io::Result<Digest> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        w.write_all(&buf[..n]).await?;
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    w.shutdown().await?;
    Ok(Digest {
        len,
        hash: hasher.finalize().into(),
    })
}

/// Reads to the end; returns the digest of what it read.
async fn recv_stream<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Digest> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut len = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(Digest {
                len,
                hash: hasher.finalize().into(),
            });
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
}

/// The digest `send_stream(seed, len)` produces, computed alone.
fn expected_digest(seed: u64, len: u64) -> Digest {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    Digest {
        len,
        hash: hasher.finalize().into(),
    }
}

/// The seed of the stream the target sends back for an opener's `seed`.
fn reply_seed(seed: u64) -> u64 {
    seed ^ 0x5eed_5eed_5eed_5eed
}

/// What a hasher saw on one channel.
#[derive(Debug)]
struct Report {
    seed: u64,
    /// The path of the hasher's end.
    path: Path,
    received: Digest,
    sent: Digest,
}

/// A "hasher" on `plugin`: each incoming channel carries `seed, len` (u64 LE
/// each) as metadata; the hasher hashes everything it reads while it sends
/// `len` bytes of its own (from `reply_seed(seed)`), then reports both digests.
fn serve_hasher(
    plugin: Plugin,
    reports: mpsc::UnboundedSender<Report>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(incoming) = plugin.incoming().await {
            let meta: [u8; 16] = incoming.metadata[..].try_into().expect("seed and length");
            let seed = u64::from_le_bytes(meta[..8].try_into().unwrap());
            let len = u64::from_le_bytes(meta[8..].try_into().unwrap());
            let channel = incoming.accept().await.unwrap();
            let path = channel.path();
            let reports = reports.clone();
            tokio::spawn(async move {
                let (mut rd, mut wr) = tokio::io::split(channel);
                let writer = tokio::spawn(async move {
                    let sent = send_stream(&mut wr, reply_seed(seed), len).await;
                    (sent, wr)
                });
                let received = recv_stream(&mut rd).await.expect("the hasher's read");
                let (sent, _wr) = writer.await.unwrap();
                let sent = sent.expect("the hasher's write");
                let _ = reports.send(Report {
                    seed,
                    path,
                    received,
                    sent,
                });
            });
        }
    })
}

/// Opens a relayed channel to `target` and runs one hashed exchange on it:
/// `len` bytes each way, at once. Returns (sent, received).
async fn exchange(client: &Plugin, target: &str, seed: u64, len: u64) -> (Digest, Digest) {
    exchange_on(client, target, seed, len, Path::Relayed, None).await
}

/// [`exchange`] on a channel that must take `path` (asking for a direct
/// channel unless `path` is the relay). With `opened`, the transfer starts
/// once that many channels are open.
async fn exchange_on(
    client: &Plugin,
    target: &str,
    seed: u64,
    len: u64,
    path: Path,
    opened: Option<&tokio::sync::Barrier>,
) -> (Digest, Digest) {
    let mut meta = Vec::with_capacity(16);
    meta.extend_from_slice(&seed.to_le_bytes());
    meta.extend_from_slice(&len.to_le_bytes());
    let direct = path != Path::Relayed;
    let channel = client
        .open_with(target, "hash", Bytes::from(meta), direct)
        .await
        .unwrap();
    assert_eq!(channel.path(), path, "channel {seed}: the opener's path");
    if let Some(opened) = opened {
        opened.wait().await;
    }
    let (mut rd, mut wr) = tokio::io::split(channel);
    let writer = tokio::spawn(async move {
        let sent = send_stream(&mut wr, seed, len).await;
        (sent, wr)
    });
    let received = recv_stream(&mut rd).await.expect("the opener's read");
    let (sent, _wr) = writer.await.unwrap();
    (sent.expect("the opener's write"), received)
}

/// One plugin connection opens a channel per entry of `sizes`, all at once,
/// to a hasher registered on `target_addr`; every digest is checked on both
/// ends.
async fn hashed_exchanges(target_addr: &str, opener_addr: &str, sizes: &[u64]) {
    let hasher = plugin(target_addr, 1, Some("hasher")).await;
    let client = plugin(opener_addr, 2, None).await;
    hashed_exchanges_on(hasher, client, sizes, Path::Relayed).await;
}

/// `client` opens a channel per entry of `sizes`, all at once, on its one
/// connection, to `hasher` (registered as "hasher"); each must take `path`,
/// at both ends, and every digest is checked on both ends.
///
/// On a direct TCP path the transfers start once every channel is open. An
/// opener's dial must be accepted within the handshake's deadline (10 s),
/// or the channel is relayed; in a debug build the channels already busy
/// with box-stream can starve a later dial's handshake for that long on a
/// loaded 2-core machine (seen: 3 runs in 8 with the rest of this suite and
/// others' builds beside it), and this test is about the bytes, not that
/// race.
async fn hashed_exchanges_on(hasher: Plugin, client: Plugin, sizes: &[u64], path: Path) {
    let (tx, mut reports) = mpsc::unbounded_channel();
    let hasher = serve_hasher(hasher, tx);
    let client = std::sync::Arc::new(client);
    let opened =
        (path == Path::Tcp).then(|| std::sync::Arc::new(tokio::sync::Barrier::new(sizes.len())));
    let mut runs = tokio::task::JoinSet::new();
    for (i, &len) in sizes.iter().enumerate() {
        let client = client.clone();
        let opened = opened.clone();
        let seed = 1000 + i as u64;
        runs.spawn(async move {
            let opened = opened.as_deref();
            let (sent, received) = exchange_on(&client, "hasher", seed, len, path, opened).await;
            (seed, len, sent, received)
        });
    }
    let mut opened = Vec::new();
    while let Some(run) = runs.join_next().await {
        opened.push(run.unwrap());
    }
    let mut by_seed = std::collections::HashMap::new();
    for _ in sizes {
        let r = reports.recv().await.expect("the hasher reports");
        by_seed.insert(r.seed, r);
    }
    for (seed, len, sent, received) in opened {
        let report = &by_seed[&seed];
        assert_eq!(report.path, path, "channel {seed}: the hasher's path");
        assert_eq!(sent.len, len, "channel {seed}: the opener sent short");
        assert_eq!(
            report.received.len, len,
            "channel {seed}: bytes lost on the way in"
        );
        assert_eq!(
            report.received, sent,
            "channel {seed}: the data differs on the way in"
        );
        assert_eq!(
            received.len, len,
            "channel {seed}: bytes lost on the way back"
        );
        assert_eq!(
            received, report.sent,
            "channel {seed}: the data differs on the way back"
        );
        assert_eq!(received, expected_digest(reply_seed(seed), len));
    }
    hasher.abort();
}

const MIB: u64 = 1 << 20;

/// Over unix (plain frames) three channels at once carry 64 MiB each way.
const UNIX_SIZES: [u64; 3] = [64 * MIB, 64 * MIB, 64 * MIB];

/// Over TCP every byte is sealed and opened twice each way (plugin and
/// broker), and in a debug build box-stream's cipher is generic code
/// compiled at opt-level 0 inside plugboard-core. Measured on 2 cores in a
/// debug build: 64 MiB each way on each of three channels took about two
/// minutes; 64 + 8 + 8 MiB takes under 40 s. So the first channel carries
/// 64 MiB each way and the two beside it 8 MiB each way.
const TCP_SIZES: [u64; 3] = [64 * MIB, 8 * MIB, 8 * MIB];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mebibytes_each_way_on_three_channels_over_unix() {
    let broker = Broker::start("big-unix", |_| {}).await;
    let unix = broker.unix.clone();
    scenario(hashed_exchanges(&unix, &unix, &UNIX_SIZES)).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mebibytes_each_way_on_three_channels_over_tcp() {
    let broker = Broker::start("big-tcp", |_| {}).await;
    let tcp = broker.tcp.clone();
    scenario(hashed_exchanges(&tcp, &tcp, &TCP_SIZES)).await;
    broker.stop().await;
}

/// Direct over a socketpair there is no crypto and no broker in the way:
/// three channels at once carry 64 MiB each way, as over the relay.
const SOCKETPAIR_SIZES: [u64; 3] = [64 * MIB, 64 * MIB, 64 * MIB];

/// Direct over TCP every byte is sealed once and opened once each way,
/// plugin to plugin (no broker in the way): half the box-stream work per
/// byte of the relayed TCP test, so this one affords what that one does not
/// (see `TCP_SIZES`). Measured on 2 cores in a debug build with the other
/// core busy: three channels of 64 MiB each way took 33-38 s alone (56 s of
/// CPU), as long as the relayed TCP test's 64 + 8 + 8 MiB (37 s), while
/// 64 + 8 + 8 MiB direct took 17 s. So all three carry 64 MiB each way.
const DIRECT_TCP_SIZES: [u64; 3] = [64 * MIB, 64 * MIB, 64 * MIB];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mebibytes_each_way_on_three_direct_channels_over_socketpairs() {
    let broker = Broker::start("big-socketpair", |_| {}).await;
    let unix = broker.unix.clone();
    scenario(async {
        // Both on the broker's unix socket: it hands each a socketpair end
        // per channel, all on the opener's one connection.
        let hasher = plugin(&unix, 1, Some("hasher")).await;
        let client = plugin(&unix, 2, None).await;
        hashed_exchanges_on(hasher, client, &SOCKETPAIR_SIZES, Path::SocketPair).await;
    })
    .await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mebibytes_each_way_on_three_direct_channels_over_tcp() {
    // A failed dial is logged (and the channel relayed): show why.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("plugboard_tokio::plugin=info")
        .with_test_writer()
        .try_init();
    let broker = Broker::start("big-direct-tcp", |_| {}).await;
    let tcp = broker.tcp.clone();
    scenario(async {
        // The hasher listens for direct channels; the opener, on the
        // broker's TCP listener (no descriptors can reach it), dials it once
        // per channel, all opened on its one connection to the broker.
        let hasher = builder(1)
            .name("hasher")
            .direct_listen("tcp:127.0.0.1:0")
            .connect(&tcp);
        let hasher = tokio::time::timeout(Duration::from_secs(30), hasher)
            .await
            .expect("connect hung")
            .unwrap();
        let client = plugin(&tcp, 2, None).await;
        hashed_exchanges_on(hasher, client, &DIRECT_TCP_SIZES, Path::Tcp).await;
    })
    .await;
    broker.stop().await;
}

// ── a plugin killed mid-transfer ───────────────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_killed_mid_transfer_resets_its_peer_and_frees_its_name() {
    let broker = Broker::start("killed", |_| {}).await;
    let addr = broker.unix.clone();
    scenario(async {
        let watcher = plugin(&addr, 1, None).await;
        let mut events = watcher.watch().await.unwrap();
        assert_eq!(events.recv().await, Some(WatchEvent::Snapshot(vec![])));
        let victim = plugin(&addr, 2, Some("victim")).await;
        match events.recv().await {
            Some(WatchEvent::Change {
                presence: Presence::Up(member),
                ..
            }) => assert_eq!(
                (member.name.as_str(), member.key),
                ("victim", keys(2).public())
            ),
            other => panic!("expected the victim to come up, got {other:?}"),
        }

        let client = plugin(&addr, 3, None).await;
        let accept = async { victim.incoming().await.unwrap().accept().await.unwrap() };
        let (opened, victim_channel) = tokio::join!(client.open("victim", "flood"), accept);
        let channel = opened.unwrap();
        assert!(channel.is_relayed());

        // Both ends read and write as fast as they can, forever.
        let (mut vr, mut vw) = tokio::io::split(victim_channel);
        let victim_io = tokio::spawn(async move {
            let drain = async {
                let mut buf = vec![0u8; CHUNK];
                while vr.read(&mut buf).await.is_ok_and(|n| n > 0) {}
            };
            let flood = async {
                let buf = vec![0x76u8; CHUNK];
                while vw.write_all(&buf).await.is_ok() {}
            };
            tokio::join!(drain, flood);
        });
        let (mut cr, mut cw) = tokio::io::split(channel);
        let (midway_tx, midway) = tokio::sync::oneshot::channel();
        let reader = tokio::spawn(async move {
            let mut midway_tx = Some(midway_tx);
            let mut buf = vec![0u8; CHUNK];
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
        let writer = tokio::spawn(async move {
            let buf = vec![0x63u8; CHUNK];
            loop {
                if let Err(e) = cw.write(&buf).await {
                    return e;
                }
            }
        });

        midway.await.expect("the transfer got going");
        // Killed: the plugin's connection dies while its channel is open
        // and busy; it never finishes nor resets it.
        drop(victim);

        let (got, error) = reader.await.unwrap();
        let error = error.unwrap_or_else(|| {
            panic!("a clean end of stream after {got} bytes from a killed peer")
        });
        assert!(
            matches!(
                error.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ),
            "the reader saw {error:?}"
        );
        // Its name is free at once: taken without waiting in line.
        let heir = builder(4).name("victim").connect(&addr).await;
        let heir = heir.expect("the killed plugin's name is free");
        let error = writer.await.unwrap();
        assert!(
            matches!(
                error.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ),
            "the writer saw {error:?}"
        );

        // The watcher saw it leave, then the heir arrive.
        match events.recv().await {
            Some(WatchEvent::Change {
                presence: Presence::Down { name, key },
                ..
            }) => assert_eq!((name.as_str(), key), ("victim", keys(2).public())),
            other => panic!("expected the victim to go down, got {other:?}"),
        }
        match events.recv().await {
            Some(WatchEvent::Change {
                presence: Presence::Up(member),
                ..
            }) => assert_eq!(
                (member.name.as_str(), member.key),
                ("victim", keys(4).public())
            ),
            other => panic!("expected the heir to come up, got {other:?}"),
        }
        victim_io.abort();
        drop((heir, client, watcher));
    })
    .await;
    broker.stop().await;
}

// ── hostile input beside honest transfers ──────────────────────────────

/// Runs a hashed exchange of `len` bytes each way in the background, on its
/// own two plugins (`seed` registers `name`, `seed + 1` opens).
async fn honest_transfer(
    addr: &str,
    seed: u8,
    name: &'static str,
    len: u64,
) -> tokio::task::JoinHandle<()> {
    let (tx, mut reports) = mpsc::unbounded_channel();
    let hasher = serve_hasher(plugin(addr, seed, Some(name)).await, tx);
    let client = plugin(addr, seed + 1, None).await;
    tokio::spawn(async move {
        let (sent, received) = exchange(&client, name, 77, len).await;
        let report = reports.recv().await.expect("the hasher reports");
        assert_eq!(
            report.received, sent,
            "the honest transfer was damaged on the way in"
        );
        assert_eq!(
            received, report.sent,
            "the honest transfer was damaged on the way back"
        );
        assert_eq!(received, expected_digest(reply_seed(77), len));
        hasher.abort();
    })
}

/// The first `n` bytes of a real message 1 of shs1.
fn partial_message_1(n: usize) -> Vec<u8> {
    let config = std::sync::Arc::new(HandshakeConfig::new(keys(9)));
    let mut hs = ClientHandshake::new(
        config,
        broker_keys().public(),
        &mut rand_core::OsRng,
        plugboard_core::Instant::ZERO,
    )
    .unwrap();
    let message = hs.poll_transmit().unwrap();
    assert!(message.len() > n);
    message[..n].to_vec()
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

/// A connection driven by hand: shs1 done, plain mux frames from here on.
struct Raw {
    stream: UnixStream,
    frames: frame::FrameDecoder,
    control: control::ControlDecoder,
}

impl Raw {
    async fn connect(path: &std::path::Path, seed: u8) -> Self {
        let mut stream = UnixStream::connect(path).await.unwrap();
        let config = std::sync::Arc::new(HandshakeConfig::new(keys(seed)));
        let mut hs = ClientHandshake::new(
            config,
            broker_keys().public(),
            &mut rand_core::OsRng,
            plugboard_core::Instant::ZERO,
        )
        .unwrap();
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
            hs.handle_input(plugboard_core::Instant::ZERO, &buf[..n])
                .unwrap();
        }
        let mut raw = Raw {
            stream,
            frames: frame::FrameDecoder::new(1 << 20),
            control: control::ControlDecoder::new(),
        };
        raw.send(&Message::ClientHello {
            min_version: 1,
            max_version: 1,
            features: 0,
        })
        .await;
        raw
    }

    /// Sends one control message.
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

    /// The next frame; `None` once the broker closed the connection.
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

    /// The next control message (other frames are skipped).
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_handshakes_and_writes_past_credit_are_cut_beside_an_honest_transfer() {
    const WINDOW: u32 = 64 * 1024;
    let broker = Broker::start("hostile", |c| {
        // Few handshakes at once, and only closing frees a slot: a leak shows.
        c.limits.max_handshaking = 4;
        c.limits.handshake_timeout = Duration::from_secs(3600);
        c.limits.initial_window = WINDOW;
    })
    .await;
    let addr = broker.unix.clone();
    let path = broker.path.clone();
    scenario(async {
        let honest = honest_transfer(&addr, 1, "hasher", 16 * MIB).await;

        // Truncated handshakes: part of a real message 1, then the end.
        // Three times the handshake slots; each half-closed one must be
        // closed by the broker without a word, each closed one forgotten.
        for i in 0..12 {
            let mut stream = UnixStream::connect(&path).await.unwrap();
            stream.write_all(&partial_message_1(30)).await.unwrap();
            if i % 2 == 0 {
                stream.shutdown().await.unwrap();
                assert!(until_closed(&mut stream).await.is_empty());
            } else {
                drop(stream);
            }
        }
        // Their slots are free: an honest plugin completes its handshake.
        // (The broker learns of the last closes in its own time: retry.)
        let mut attempts = 0;
        let late = loop {
            match builder(3).connect(&addr).await {
                Ok(plugin) => break plugin,
                Err(_) if attempts < 300 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("truncated handshakes kept their slots: {e}"),
            }
        };
        drop(late);

        // Writing past its credit on a relayed channel. The sink accepts and
        // never reads, so no credit beyond the first window passes back.
        let sink = plugin(&addr, 4, Some("sink")).await;
        let accepted = tokio::spawn(async move {
            let channel = sink.incoming().await.unwrap().accept().await.unwrap();
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
        let (_sink, mut sink_channel) = accepted.await.unwrap();
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
        // The broker may cut us before it all went out.
        let _ = greedy.stream.write_all(&out).await;
        let mut goaway = None;
        while let Some(frame) = greedy.frame().await {
            if let Frame::GoAway { code, reason } = frame {
                goaway = Some((code, reason));
            }
        }
        let (code, reason) = goaway.expect("a GOAWAY before the close");
        assert_eq!(code, ErrorCode::ProtocolViolation, "{reason}");
        assert!(reason.contains("credit"), "{reason}");

        // The sink got at most the window, then a reset (not an end of stream).
        let mut got = 0usize;
        let mut buf = vec![0u8; CHUNK];
        let error = loop {
            match sink_channel.read(&mut buf).await {
                Ok(0) => panic!("a clean end of stream after {got} bytes"),
                Ok(n) => got += n,
                Err(e) => break e,
            }
        };
        assert!(
            got <= WINDOW as usize,
            "{got} bytes passed a {WINDOW}-byte window"
        );
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");

        honest.await.unwrap();
    })
    .await;
    broker.stop().await;
}

/// Raises the soft open-file limit to `wanted`; `Err` says why it cannot.
fn raise_open_files(wanted: u64) -> Result<(), String> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_of_one_key_at_once_beside_an_honest_transfer() {
    const CROWD: usize = 1000;
    // Both ends of every connection live in this process, and other tests
    // run beside this one.
    if let Err(why) = raise_open_files(4 * CROWD as u64) {
        eprintln!("skipped: {why}");
        return;
    }
    let limit = Limits::default().max_connections_per_key;
    assert!(limit < CROWD);
    let broker = Broker::start("crowd", |_| {}).await;
    let addr = broker.unix.clone();
    scenario(async {
        let honest = honest_transfer(&addr, 1, "hasher", 64 * MIB).await;

        let mut crowd = tokio::task::JoinSet::new();
        for _ in 0..CROWD {
            let addr = addr.clone();
            crowd.spawn(async move { builder(7).connect(&addr).await });
        }
        let mut admitted = Vec::new();
        let mut refused = 0;
        while let Some(attempt) = crowd.join_next().await {
            match attempt.unwrap() {
                Ok(plugin) => admitted.push(plugin),
                // Cut in the handshake (the per-key limit), or not taken at
                // all (too many handshakes at once).
                Err(PluginError::Disconnected(_) | PluginError::Unreachable { .. }) => refused += 1,
                Err(e) => panic!("an unexpected failure: {e}"),
            }
        }
        assert_eq!(admitted.len(), limit, "admitted beyond the per-key limit");
        assert_eq!(refused, CROWD - limit);

        // The broker's own key may ask what the crowd holds.
        let owner = Plugin::builder(broker_keys()).connect(&addr).await.unwrap();
        let crowd_key = keys(7).public();
        let held = |stats: plugboard_tokio::plugin::Stats| {
            stats
                .keys
                .iter()
                .find(|k| k.key == crowd_key)
                .map_or(0, |k| k.usage.connections)
        };
        assert_eq!(held(owner.stats().await.unwrap()), limit as u32);
        // Still at the limit: one more is cut.
        assert!(matches!(
            builder(7).connect(&addr).await,
            Err(PluginError::Disconnected(_))
        ));

        // Gone, they free their places (the broker learns in its own time).
        drop(admitted);
        let mut polls = 0;
        while held(owner.stats().await.unwrap()) > 0 {
            polls += 1;
            assert!(polls < 600, "the crowd's connections were never released");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let again = builder(7).connect(&addr).await;
        again.expect("a connection once the crowd left");

        honest.await.unwrap();
    })
    .await;
    broker.stop().await;
}

// ── policy over TCP ────────────────────────────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_refusals_over_tcp_are_typed() {
    // Seeds: 1 has every right over TCP but only for svc-* names, 2 may
    // only register svc-* names, 3 has a few rights, 4 is not named at all.
    let (full, server, limited) = (keys(1), keys(2), keys(3));
    let text = format!(
        r#"
        # Unix peers: anything but stats.
        [unix]
        register = ["*"]
        open = ["*"]
        list = true
        watch = true

        [[key]]
        id = "{full}"
        register = ["svc-*"]
        open = ["svc-*"]
        list = true
        watch = true
        stats = true

        [[key]]
        id = "{server}"
        register = ["svc-*"]

        [[key]]
        id = "{limited}"
        register = ["b-*"]
        open = ["public-*"]
        "#,
        full = full.public(),
        server = server.public(),
        limited = limited.public(),
    );
    let policy = Policy::from_toml(&text).unwrap();
    let broker = Broker::start("policy", |c| c.policy = policy).await;
    let (tcp, unix) = (broker.tcp.clone(), broker.unix.clone());
    scenario(async {
        // A key the policy does not name: not admitted over TCP at all (cut
        // in the handshake), admitted over the unix socket.
        let refused = builder(4).connect(&tcp).await;
        assert!(
            matches!(refused, Err(PluginError::Disconnected(_))),
            "{:?}",
            refused.err()
        );
        let local = plugin(&unix, 4, None).await;
        local.list().await.unwrap();
        drop(local);

        // Allowed: register in its patterns, open, list, watch, stats.
        let (tx, mut reports) = mpsc::unbounded_channel();
        let hasher = serve_hasher(plugin(&tcp, 2, Some("svc-b")).await, tx);
        let allowed = plugin(&tcp, 1, Some("svc-a")).await;
        let (sent, received) = exchange(&allowed, "svc-b", 5, 256 * 1024).await;
        let report = reports.recv().await.unwrap();
        assert_eq!((report.received, report.sent), (sent, received));
        let names = |members: &[plugboard_core::control::Member]| {
            let mut names: Vec<String> = members.iter().map(|m| m.name.to_string()).collect();
            names.sort();
            names
        };
        assert_eq!(names(&allowed.list().await.unwrap()), ["svc-a", "svc-b"]);
        let mut events = allowed.watch().await.unwrap();
        match events.recv().await {
            Some(WatchEvent::Snapshot(members)) => assert_eq!(names(&members), ["svc-a", "svc-b"]),
            other => panic!("expected a snapshot, got {other:?}"),
        }
        assert!(allowed.stats().await.unwrap().names.len() >= 2);

        // Refused: each right the policy withholds, with its code.
        let not_permitted = |result: Result<(), PluginError>, what: &str| match result {
            Err(PluginError::Refused {
                code: ErrorCode::NotPermitted,
                ..
            }) => {}
            other => panic!("{what}: expected NotPermitted, got {other:?}"),
        };
        // A name outside its patterns.
        not_permitted(
            builder(1).name("other").connect(&tcp).await.map(drop),
            "the full key registers outside svc-*",
        );
        not_permitted(
            builder(3).name("svc-x").connect(&tcp).await.map(drop),
            "the limited key registers svc-x",
        );
        let limited = plugin(&tcp, 3, Some("b-1")).await;
        // An open to a name outside its patterns, whether or not it exists.
        not_permitted(
            limited.open("svc-a", "x").await.map(drop),
            "the limited key opens svc-a",
        );
        not_permitted(
            allowed.open("b-1", "x").await.map(drop),
            "the full key opens b-1",
        );
        // Inside its patterns the open is allowed and finds nobody.
        let missing = limited
            .open("public-x", "x")
            .await
            .err()
            .and_then(|e| e.code());
        assert_eq!(missing, Some(ErrorCode::NoSuchName));
        not_permitted(limited.list().await.map(drop), "the limited key lists");
        not_permitted(limited.watch().await.map(drop), "the limited key watches");
        not_permitted(
            limited.stats().await.map(drop),
            "the limited key asks for stats",
        );
        // The server key was granted nothing but its names.
        let server_client = plugin(&tcp, 2, None).await;
        not_permitted(server_client.list().await.map(drop), "the server key lists");
        not_permitted(
            server_client.open("svc-a", "x").await.map(drop),
            "the server key opens",
        );

        // The refused requests left the connections working.
        assert_eq!(
            names(&allowed.list().await.unwrap()),
            ["b-1", "svc-a", "svc-b"]
        );
        hasher.abort();
        drop((allowed, limited, server_client));
    })
    .await;
    broker.stop().await;
}

// ── an open nobody answers ─────────────────────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_the_target_never_answers_times_out() {
    let broker = Broker::start("open-timeout", |c| {
        c.limits.open_timeout = Duration::from_millis(300);
    })
    .await;
    let addr = broker.unix.clone();
    scenario(async {
        let sleepy = plugin(&addr, 1, Some("sleepy")).await;
        let client = plugin(&addr, 2, None).await;
        // The target takes the incoming channel and keeps it, unanswered.
        let (opened, pending) = tokio::join!(client.open("sleepy", "x"), sleepy.incoming());
        let pending = pending.expect("the open reached the target");
        match opened {
            Err(PluginError::Refused {
                code: ErrorCode::OpenTimeout,
                ..
            }) => {}
            Err(e) => panic!("expected OpenTimeout, got {e:?}"),
            Ok(_) => panic!("an unanswered open succeeded"),
        }

        // Answering now is too late: no channel comes of it.
        match pending.accept().await {
            Err(_) => {}
            Ok(mut late) => {
                let mut buf = [0u8; 16];
                let read = late.read(&mut buf).await;
                assert!(read.is_err(), "a timed-out channel read {read:?}");
            }
        }

        // Nothing was left behind: the next open is answered and carries data.
        let server = tokio::spawn(async move {
            let mut channel = sleepy.incoming().await.unwrap().accept().await.unwrap();
            let mut got = Vec::new();
            channel.read_to_end(&mut got).await.unwrap();
            channel.write_all(&got).await.unwrap();
            channel.shutdown().await.unwrap();
            sleepy
        });
        let mut channel = client.open("sleepy", "x").await.unwrap();
        channel.write_all(b"awake now").await.unwrap();
        channel.shutdown().await.unwrap();
        let mut back = Vec::new();
        channel.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"awake now");
        let _sleepy = server.await.unwrap();
    })
    .await;
    broker.stop().await;
}
