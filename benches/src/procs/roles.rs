//! The processes of [`super`]'s measures, each this program started again
//! with [`super::ROLE_ARG`]: a broker, a bare forwarder, a sink and a
//! source. Each says `ready` (a broker: its addresses) on its stdout once it
//! serves, and exits when its stdin closes.
//!
//! The sink and the source speak one small protocol on every stream, relayed
//! channel and raw socket alike: a first byte `B` and a `u64` length ask the
//! sink to read that many bytes and answer one byte; a first byte `E` asks it
//! to echo until the end of the stream.

use std::io::{BufRead as _, Read as _, Write as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Instant;

use plugboard_conformance::broker::{start, MioBroker, Running, SmolBroker, TokioBroker};
use plugboard_conformance::{broker_keys, keys};
use plugboard_tokio::Plugin;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// The name the sink registers on a broker.
const SINK: &str = "sink";
const SINK_SEED: u8 = 2;
const SOURCE_SEED: u8 = 3;
/// The bare forwarder's buffer, and the sink's reads.
const BUFFER: usize = 256 * 1024;
/// The source's writes.
const WRITE: usize = 64 * 1024;
/// The round trip's message.
const PING: usize = 64;

/// Runs the role `args` names; never returns.
pub fn main(args: &[String]) -> ! {
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    match arg(0) {
        "broker" => broker(arg(1)),
        "forwarder" => forwarder(arg(1), arg(2)),
        "sink" => sink(arg(1)),
        "source" => source(arg(1)),
        other => panic!("no role {other:?}"),
    }
    std::process::exit(0)
}

fn until_stdin_closes() {
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            return;
        }
    }
}

fn ready(what: &str) {
    println!("{what}");
    std::io::stdout().flush().expect("the parent reads");
}

/// The conformance suite's broker on `adapter`, as `plugboard serve` runs it.
fn broker(adapter: &str) {
    let running: Running = match adapter {
        "tokio" => start::<TokioBroker>("procs", |_| {}),
        "smol" => start::<SmolBroker>("procs", |_| {}),
        "mio" => start::<MioBroker>("procs", |_| {}),
        other => panic!("no broker {other:?}"),
    };
    ready(&format!("{} {}", running.unix, running.tcp));
    until_stdin_closes();
}

/// Accepts on `listen`, connects each to `target`, and copies both ways, a
/// blocking thread per direction with a 256 KiB buffer: nothing else.
fn forwarder(listen: &str, target: &str) {
    let _ = std::fs::remove_file(listen);
    let listener = UnixListener::bind(listen).expect("the forwarder binds");
    let target = target.to_owned();
    std::thread::spawn(move || {
        for accepted in listener.incoming() {
            let near = accepted.expect("accept");
            let far = UnixStream::connect(&target).expect("the sink listens");
            let (near2, far2) = (near.try_clone().unwrap(), far.try_clone().unwrap());
            std::thread::spawn(move || copy(near, far));
            std::thread::spawn(move || copy(far2, near2));
        }
    });
    ready("ready");
    until_stdin_closes();
    let _ = std::fs::remove_file(listen);
}

fn copy(mut from: UnixStream, mut to: UnixStream) {
    let mut buf = vec![0u8; BUFFER];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// Where a sink or a source goes: `unix:PATH` or `tcp:HOST:PORT` is a
/// broker, `raw:PATH` a plain unix socket.
enum Place {
    Broker(String),
    Raw(String),
}

impl Place {
    fn parse(s: &str) -> Place {
        match s.strip_prefix("raw:") {
            Some(path) => Place::Raw(path.to_owned()),
            None => Place::Broker(s.to_owned()),
        }
    }
}

async fn plugin(seed: u8, addr: &str, name: Option<&str>) -> Plugin {
    let mut builder = Plugin::builder(keys(seed)).broker_key(broker_keys().public());
    if let Some(name) = name {
        builder = builder.name(name);
    }
    builder.connect(addr).await.expect("the broker admits us")
}

/// A plugin registered as `sink` (or a raw listener), serving every stream.
fn sink(place: &str) {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    match Place::parse(place) {
        Place::Broker(addr) => {
            let plugin = runtime.block_on(plugin(SINK_SEED, &addr, Some(SINK)));
            runtime.spawn(async move {
                while let Some(incoming) = plugin.incoming().await {
                    tokio::spawn(async move {
                        if let Ok(channel) = incoming.accept().await {
                            serve(channel).await;
                        }
                    });
                }
            });
        }
        Place::Raw(path) => {
            let _ = std::fs::remove_file(&path);
            let _guard = runtime.enter();
            let listener = tokio::net::UnixListener::bind(&path).expect("the sink binds");
            runtime.spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve(stream));
                }
            });
        }
    }
    ready("ready");
    until_stdin_closes();
    if let Place::Raw(path) = Place::parse(place) {
        let _ = std::fs::remove_file(path);
    }
}

async fn serve(mut io: impl AsyncRead + AsyncWrite + Unpin) {
    let Ok(kind) = io.read_u8().await else { return };
    let mut buf = vec![0u8; BUFFER];
    match kind {
        b'B' => {
            let Ok(total) = io.read_u64().await else {
                return;
            };
            let mut got = 0u64;
            while got < total {
                match io.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got += n as u64,
                }
            }
            let _ = io.write_all(&[1]).await;
            let _ = io.flush().await;
        }
        b'E' => loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if io.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        },
        _ => {}
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A client plugin (or nothing, for raw sockets) that runs what its stdin
/// says, each on a fresh channel or connection, and answers with the
/// nanoseconds it took: `bulk N` (write N bytes in 64 KiB writes, wait for
/// the sink's answer) and `rtt N` (N round trips of 64 bytes).
fn source(place: &str) {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let place = Place::parse(place);
    let plugin = match &place {
        Place::Broker(addr) => Some(runtime.block_on(plugin(SOURCE_SEED, addr, None))),
        Place::Raw(_) => None,
    };
    ready("ready");
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { return };
        let mut words = line.split_whitespace();
        let (Some(command), Some(count)) = (words.next(), words.next()) else {
            return;
        };
        let count: u64 = count.parse().expect("a count");
        let nanos = runtime.block_on(async {
            let mut io: Box<dyn Io> = match (&place, &plugin) {
                (Place::Raw(path), _) => Box::new(
                    tokio::net::UnixStream::connect(path)
                        .await
                        .expect("the forwarder listens"),
                ),
                (_, Some(plugin)) => Box::new(plugin.open(SINK, "bench").await.expect("open")),
                _ => unreachable!("a broker place has a plugin"),
            };
            let start = Instant::now();
            match command {
                "bulk" => bulk(&mut io, count).await,
                "rtt" => round_trips(&mut io, count).await,
                other => panic!("no command {other:?}"),
            }
            start.elapsed().as_nanos()
        });
        println!("{nanos}");
        std::io::stdout().flush().expect("the parent reads");
    }
}

async fn bulk(io: &mut Box<dyn Io>, total: u64) {
    io.write_u8(b'B').await.unwrap();
    io.write_u64(total).await.unwrap();
    let chunk = vec![0x5au8; WRITE];
    let mut sent = 0u64;
    while sent < total {
        let n = (total - sent).min(WRITE as u64) as usize;
        io.write_all(&chunk[..n]).await.unwrap();
        sent += n as u64;
    }
    io.flush().await.unwrap();
    assert_eq!(io.read_u8().await.unwrap(), 1, "the sink's answer");
}

async fn round_trips(io: &mut Box<dyn Io>, rounds: u64) {
    io.write_u8(b'E').await.unwrap();
    let ping = [7u8; PING];
    let mut pong = [0u8; PING];
    for _ in 0..rounds {
        io.write_all(&ping).await.unwrap();
        io.read_exact(&mut pong).await.unwrap();
    }
}
