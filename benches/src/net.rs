//! Plugins talking through a real broker over unix sockets (the tokio
//! runtime), or on a direct channel it arranged, next to a raw unix socket
//! between the same two endpoints.

use std::time::{Duration, Instant};

use plugboard_core::broker::BrokerConfig;
use plugboard_core::shs::HandshakeConfig;
use plugboard_core::Keypair;
use plugboard_tokio::plugin::Path;
use plugboard_tokio::{Addr, Channel, Plugin, Server};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

/// Which runtime adapter runs the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adapter {
    /// The tokio server, on the same runtime as the plugins.
    Tokio,
    /// The smol server, on smol's executor in a thread of its own.
    Smol,
    /// The mio server, on a thread of its own.
    Mio,
}

/// A broker on a fresh unix socket, with an echo plugin.
pub struct Bench {
    addr: String,
    _stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// A broker on its own thread (smol, mio); stops when dropped.
    _elsewhere: Option<plugboard_conformance::Running>,
    _plugins: Vec<Plugin>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn keys(seed: u8) -> Keypair {
    Keypair::from_seed([seed; 32])
}

impl Bench {
    /// The tokio broker, on this runtime.
    pub async fn start() -> Self {
        Self::start_on(Adapter::Tokio).await
    }

    /// The broker of `adapter`.
    pub async fn start_on(adapter: Adapter) -> Self {
        use plugboard_conformance::broker::{start, MioBroker, SmolBroker};
        let (addr, stop, elsewhere) = match adapter {
            Adapter::Tokio => {
                let path = std::env::temp_dir()
                    .join(format!("plugboard-bench-{}.sock", std::process::id()));
                let config = BrokerConfig::new(HandshakeConfig::new(keys(0xB0)));
                let server = Server::bind(config, &[Addr::Unix(path.clone())]).unwrap();
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                tokio::spawn(server.run(async {
                    let _ = stopped.await;
                }));
                (format!("unix:{}", path.display()), Some(stop), None)
            }
            Adapter::Smol => {
                let running = start::<SmolBroker>("bench", |_| {});
                (running.unix.clone(), None, Some(running))
            }
            Adapter::Mio => {
                let running = start::<MioBroker>("bench", |_| {});
                (running.unix.clone(), None, Some(running))
            }
        };
        let mut bench = Bench {
            addr,
            _stop: stop,
            _elsewhere: elsewhere,
            _plugins: Vec::new(),
            tasks: Vec::new(),
        };
        for (seed, name) in [(1, "echo")] {
            let plugin = bench.plugin(seed, Some(name)).await;
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Channel>();
            let serve = async move {
                while let Some(incoming) = plugin.incoming().await {
                    let _ = tx.send(incoming.accept().await.unwrap());
                }
            };
            bench.tasks.push(tokio::spawn(serve));
            bench.tasks.push(tokio::spawn(async move {
                while let Some(channel) = rx.recv().await {
                    tokio::spawn(async move {
                        let (rd, wr) = tokio::io::split(channel);
                        echo(rd, wr).await
                    });
                }
            }));
        }
        bench
    }

    async fn plugin(&self, seed: u8, name: Option<&str>) -> Plugin {
        let mut builder = Plugin::builder(keys(seed)).broker_key(keys(0xB0).public());
        if let Some(name) = name {
            builder = builder.name(name);
        }
        builder.connect(&self.addr).await.unwrap()
    }

    /// A client channel to `name`.
    pub async fn channel(&self, seed: u8, name: &str) -> (Plugin, Channel) {
        let plugin = self.plugin(seed, None).await;
        let channel = plugin.open(name, "bench").await.unwrap();
        (plugin, channel)
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn echo(mut rd: impl AsyncRead + Unpin, mut wr: impl AsyncWrite + Unpin) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if wr.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Mean time of `rounds` 64-byte round trips.
pub async fn ping_pong(mut io: impl AsyncRead + AsyncWrite + Unpin, rounds: usize) -> Duration {
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    let start = Instant::now();
    for _ in 0..rounds {
        io.write_all(&msg).await.unwrap();
        io.read_exact(&mut back).await.unwrap();
    }
    start.elapsed() / rounds as u32
}

/// A raw unix socket pair with an echo on one end.
pub fn raw_echo_pair() -> UnixStream {
    let (a, b) = UnixStream::pair().unwrap();
    tokio::spawn(async move {
        let (rd, wr) = tokio::io::split(b);
        echo(rd, wr).await
    });
    a
}

/// Relay throughput vs a raw socket: (ours, raw) for `total` bytes in one
/// direction, plugin to plugin, medians of `rounds`.
pub async fn relay_vs_raw(bench: &Bench, total: usize, rounds: usize) -> (Duration, Duration) {
    let mut ours = Vec::new();
    let mut raw = Vec::new();
    for i in 0..rounds {
        // A fresh receiving plugin that reads everything and says when.
        let name = format!("receiver-{i}");
        let receiver = bench.plugin(20 + i as u8, Some(&name)).await;
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let reading = tokio::spawn(async move {
            let channel = receiver.incoming().await.unwrap().accept().await.unwrap();
            let done = read_all(channel, total).await;
            let _ = done_tx.send(done);
            receiver
        });
        let (_plugin, mut channel) = bench.channel(60 + i as u8, &name).await;
        let start = Instant::now();
        write_all(&mut channel, total).await;
        ours.push(done_rx.await.unwrap() - start);
        drop(reading.await.unwrap());

        let (mut a, b) = UnixStream::pair().unwrap();
        let reading = tokio::spawn(read_all(b, total));
        let start = Instant::now();
        write_all(&mut a, total).await;
        raw.push(reading.await.unwrap() - start);
    }
    (median(ours), median(raw))
}

/// Direct channel throughput vs a raw socket: (ours, raw) for `total` bytes
/// in one direction, medians of `rounds`.
///
/// *Ours* is a direct channel between two plugins on the broker's unix
/// socket: the broker makes a socketpair and hands each plugin an end, and
/// each side holds a [`Channel`]. *Raw* is a `tokio::net::UnixStream::pair()`
/// made in this process. Like with like: both pairs come from `socketpair`
/// with the kernel's default buffer sizes, both are timed only once both ends
/// are in hand (opening the channel is not counted), on the same runtime,
/// with the same writer (64 KiB `write_all` in the calling task) and the same
/// reader (256 KiB reads in a spawned task), generic over the stream type so
/// that the only difference is `Channel`'s dispatch to the stream inside it.
/// Rounds alternate which of the two goes first.
pub async fn direct_vs_raw(bench: &Bench, total: usize, rounds: usize) -> (Duration, Duration) {
    let receiver = bench.plugin(80, Some("direct-sink")).await;
    let opener = bench.plugin(81, None).await;
    let mut ours = Vec::new();
    let mut raw = Vec::new();
    for i in 0..rounds {
        for turn in 0..2 {
            if (i + turn) % 2 == 0 {
                let accepting = async { receiver.incoming().await.unwrap().accept().await };
                let (opened, accepted) =
                    tokio::join!(opener.open_direct("direct-sink", "bench"), accepting);
                let (mut wr, rd) = (opened.unwrap(), accepted.unwrap());
                assert_eq!(wr.path(), Path::SocketPair, "not a direct channel");
                assert_eq!(rd.path(), Path::SocketPair, "not a direct channel");
                ours.push(one_way(&mut wr, rd, total).await);
            } else {
                let (mut wr, rd) = UnixStream::pair().unwrap();
                raw.push(one_way(&mut wr, rd, total).await);
            }
        }
    }
    (median(ours), median(raw))
}

/// Time to move `total` bytes from `wr` to `rd` (read in a spawned task).
async fn one_way<W, R>(wr: &mut W, rd: R, total: usize) -> Duration
where
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin + Send + 'static,
{
    let reading = tokio::spawn(read_all(rd, total));
    let start = Instant::now();
    write_all(wr, total).await;
    reading.await.unwrap() - start
}

async fn write_all(wr: &mut (impl AsyncWrite + Unpin), total: usize) {
    let chunk = vec![0x5au8; 64 * 1024];
    let mut sent = 0;
    while sent < total {
        wr.write_all(&chunk).await.unwrap();
        sent += chunk.len();
    }
}

/// Reads `total` bytes; returns when the last arrived.
async fn read_all(mut rd: impl AsyncRead + Unpin, total: usize) -> Instant {
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0;
    while got < total {
        let n = rd.read(&mut buf).await.unwrap();
        assert!(n > 0, "ended early");
        got += n;
    }
    Instant::now()
}

/// Round trips through the broker vs raw: (ours, raw) per round trip.
pub async fn roundtrip_vs_raw(bench: &Bench, rounds: usize) -> (Duration, Duration) {
    let (_plugin, channel) = bench.channel(40, "echo").await;
    let ours = ping_pong(channel, rounds).await;
    let raw = ping_pong(raw_echo_pair(), rounds).await;
    (ours, raw)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}
