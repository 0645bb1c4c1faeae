//! The tokio broker server alone in a child process, so that what it costs
//! can be told apart from what its clients cost: CPU time per TCP handshake,
//! and memory per idle connection.
//!
//! The child is the benchmark program itself, started again with
//! [`CHILD_ARG`]; it runs `plugboard_tokio::Server` on a multi-threaded tokio
//! runtime, as `plugboard serve` does, on a TCP and a unix listener. It
//! answers `cpu` on its stdin with its CPU time (all threads, user and
//! system) and exits when its stdin closes.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use plugboard_core::broker::{BrokerConfig, Policy};
use plugboard_core::shs::HandshakeConfig;
use plugboard_core::{Keypair, PublicKey};
use plugboard_tokio::{Addr, Plugin, Server};

/// The argument that makes the program the broker child.
pub const CHILD_ARG: &str = "--broker-child";

const BROKER_SEED: [u8; 32] = [0xB1; 32];
const CLIENT_SEED: [u8; 32] = [0xC1; 32];

fn client_keys() -> Keypair {
    Keypair::from_seed(CLIENT_SEED)
}

/// CPU time of this whole process so far.
fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// CPU time of this thread so far.
pub fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// As many descriptors as the hard limit allows (10,000 connections need
/// 10,000 sockets on each side).
pub fn raise_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum.or(Some(1 << 20)),
            maximum: limit.maximum,
        },
    );
}

/// The child's life: serve until stdin closes.
pub fn child_main() -> ! {
    raise_file_limit();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let path = std::env::temp_dir().join(format!(
        "plugboard-bench-broker-{}.sock",
        std::process::id()
    ));
    let mut config = BrokerConfig::new(HandshakeConfig::new(Keypair::from_seed(BROKER_SEED)));
    // One key makes every client; over TCP it must be named to be admitted.
    config.policy = Policy::from_toml(&format!("[[key]]\nid = \"{}\"\n", client_keys().public()))
        .expect("a valid policy");
    config.limits.max_connections = 50_000;
    config.limits.max_connections_per_key = 50_000;
    // All clients are this user: the per-uid limit would cap the idle crowd.
    config.limits.max_connections_per_uid = 50_000;
    // Every client is on 127.0.0.1: the door's per-source share and rate
    // would measure themselves, not the handshake.
    config.limits.max_handshaking_per_source = config.limits.max_handshaking;
    config.limits.handshakes_per_source_per_s = 1_000_000;
    let addrs = [Addr::Tcp("127.0.0.1:0".into()), Addr::Unix(path.clone())];
    let server = runtime
        .block_on(async { Server::bind(config, &addrs) })
        .expect("the broker binds");
    let bound = server.local_addrs();
    println!("{} {} {}", bound[0], bound[1], server.public_key());
    runtime.spawn(server.run(std::future::pending()));
    for line in std::io::stdin().lines() {
        match line.as_deref() {
            Ok("cpu") => println!("{}", process_cpu().as_nanos()),
            _ => break,
        }
    }
    let _ = std::fs::remove_file(&path);
    std::process::exit(0)
}

/// The broker child, seen from the benchmark.
pub struct BrokerProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    /// Its TCP address, `tcp:127.0.0.1:PORT`.
    pub tcp: String,
    /// Its unix socket, `unix:PATH`.
    pub unix: String,
    /// Its key.
    pub key: PublicKey,
}

impl BrokerProcess {
    /// Starts this program again as the broker child. For a profile, set
    /// `PLUGBOARD_BENCH_CHILD_WRAPPER` to a command that runs it (`heaptrack`,
    /// `perf record -g --`); the wrapper's own process is then the one
    /// measured, so its figures are not the child's.
    pub fn start() -> Self {
        let exe = std::env::current_exe().expect("the program's path");
        let wrapper = std::env::var("PLUGBOARD_BENCH_CHILD_WRAPPER").unwrap_or_default();
        let mut words = wrapper.split_whitespace();
        let mut command = match words.next() {
            Some(program) => {
                let mut command = Command::new(program);
                command.args(words).arg(exe);
                command
            }
            None => Command::new(exe),
        };
        let mut child = command
            .arg(CHILD_ARG)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the broker child starts");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        // A wrapper may say things first.
        let mut line = String::new();
        while !line.starts_with("tcp:") {
            line.clear();
            let n = stdout.read_line(&mut line).expect("the child's addresses");
            assert!(n > 0, "the broker child ended before it listened");
        }
        let mut words = line.split_whitespace();
        let mut next = || words.next().expect("addresses and key").to_owned();
        let (tcp, unix, key) = (next(), next(), next());
        BrokerProcess {
            child,
            stdin,
            stdout,
            tcp,
            unix,
            key: key.parse().expect("the broker's key"),
        }
    }

    /// The child's CPU time so far, all its threads, user and system.
    pub fn cpu(&mut self) -> Duration {
        let stdin = self.stdin.as_mut().expect("running");
        writeln!(stdin, "cpu").expect("the child listens");
        stdin.flush().expect("the child listens");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("the child answers");
        Duration::from_nanos(line.trim().parse().expect("nanoseconds"))
    }

    /// The child's resident set size (`VmRSS`), in bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the child's /proc status");
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS in kB");
        kib * 1024
    }

    /// The child's process id (the wrapper's, if there is one).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        drop(self.stdin.take()); // the child exits when its stdin closes
        let _ = self.child.wait();
    }
}

/// `count` TCP connections, `concurrency` at a time, each closed as soon
/// as the handshake and the hello are done.
pub async fn handshakes(broker: &BrokerProcess, count: usize, concurrency: usize) {
    let broker = std::sync::Arc::new((broker.tcp.clone(), broker.key));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..concurrency {
        let share = count / concurrency + usize::from(i < count % concurrency);
        let broker = broker.clone();
        tasks.spawn(async move {
            for _ in 0..share {
                let plugin = Plugin::builder(client_keys())
                    .broker_key(broker.1)
                    .connect(&broker.0)
                    .await
                    .expect("the broker admits the client");
                drop(plugin);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a client task");
    }
}

/// The broker's CPU time per TCP handshake, and the server side's
/// primitives' CPU time per handshake: medians of `rounds` alternating
/// rounds of `per_round` handshakes each.
pub fn handshake_cpu_vs_primitives(
    runtime: &tokio::runtime::Runtime,
    broker: &mut BrokerProcess,
    rounds: usize,
    per_round: usize,
) -> (Duration, Duration) {
    let fixture = crate::handshake::ServerPrimitiveFixture::default();
    // Warm up both: the broker's first connections allocate for good.
    runtime.block_on(handshakes(broker, per_round, 8));
    for _ in 0..per_round {
        std::hint::black_box(crate::handshake::server_primitives(&fixture));
    }
    let mut ours = Vec::with_capacity(rounds);
    let mut base = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let before = broker.cpu();
        runtime.block_on(async {
            handshakes(broker, per_round, 8).await;
            // The last connections' ends reach the broker.
            tokio::time::sleep(Duration::from_millis(20)).await;
        });
        ours.push((broker.cpu() - before) / per_round as u32);

        let before = thread_cpu();
        for _ in 0..per_round {
            std::hint::black_box(crate::handshake::server_primitives(&fixture));
        }
        base.push((thread_cpu() - before) / per_round as u32);
    }
    (median(ours), median(base))
}

/// The broker's resident memory before and after `count` idle unix
/// connections (handshake and hello done, nothing else), made `concurrency`
/// at a time. The connections close when this returns.
pub fn idle_connections(
    runtime: &tokio::runtime::Runtime,
    broker: &BrokerProcess,
    count: usize,
    concurrency: usize,
) -> (u64, u64) {
    let before = broker.rss();
    let plugins = open_idle(runtime, broker, count, concurrency);
    let after = broker.rss();
    runtime.block_on(async move { drop(plugins) });
    (before, after)
}

/// `count` plugins connected to the broker's unix socket, `concurrency` at
/// a time, each with its handshake and hello done; returns once the broker
/// has had a moment to finish with the last of them.
pub fn open_idle(
    runtime: &tokio::runtime::Runtime,
    broker: &BrokerProcess,
    count: usize,
    concurrency: usize,
) -> Vec<Plugin> {
    runtime.block_on(async {
        let unix = std::sync::Arc::new((broker.unix.clone(), broker.key));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..concurrency {
            let share = count / concurrency + usize::from(i < count % concurrency);
            let unix = unix.clone();
            tasks.spawn(async move {
                let mut plugins = Vec::with_capacity(share);
                for _ in 0..share {
                    let plugin = Plugin::builder(client_keys())
                        .broker_key(unix.1)
                        .connect(&unix.0)
                        .await
                        .expect("the broker admits the client");
                    plugins.push(plugin);
                }
                plugins
            });
        }
        let mut plugins = Vec::with_capacity(count);
        while let Some(done) = tasks.join_next().await {
            plugins.extend(done.expect("a client task"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        plugins
    })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}
