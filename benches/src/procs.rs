//! The relay as a deployment runs it: the broker, each plugin and a bare
//! forwarder in processes of their own ([`roles`]), over unix sockets.
//!
//! What a relayed byte costs is the CPU time (user and system, read from
//! `/proc/PID/stat`) of every process it passes through: source, broker,
//! sink; next to the same source and sink (the same program on raw sockets)
//! with a bare forwarder in the middle (blocking reads and writes of 256 KiB,
//! a thread per direction). On a shared 2-core machine wall time swings
//! with whatever else runs; CPU per byte does not, so it is the gate.
//! Relay and forwarder rounds alternate, so both see the same machine.

pub mod roles;

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

/// The argument that makes the program one of [`roles`].
pub const ROLE_ARG: &str = "--procs-role";

/// A process of one of the [`roles`].
pub struct Process {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    /// What it said once it served (a broker: `unix:PATH tcp:HOST:PORT`).
    pub hello: String,
}

impl Process {
    /// Starts this program again in the role `args` names, and waits until
    /// it serves.
    pub fn start(args: &[&str]) -> Self {
        let exe = std::env::current_exe().expect("the program's path");
        let mut child = Command::new(exe)
            .arg(ROLE_ARG)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the child starts");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut hello = String::new();
        let n = stdout
            .read_line(&mut hello)
            .expect("the child says it serves");
        assert!(n > 0, "the child {args:?} ended before it served");
        Process {
            child,
            stdin,
            stdout,
            hello: hello.trim().to_owned(),
        }
    }

    /// Sends a line, returns the answer.
    fn ask(&mut self, line: &str) -> String {
        let stdin = self.stdin.as_mut().expect("running");
        writeln!(stdin, "{line}").expect("the child listens");
        stdin.flush().expect("the child listens");
        let mut answer = String::new();
        let n = self
            .stdout
            .read_line(&mut answer)
            .expect("the child answers");
        assert!(n > 0, "the child ended instead of answering {line:?}");
        answer.trim().to_owned()
    }

    /// Its CPU time so far, every thread, user and system.
    pub fn cpu(&self) -> Duration {
        cpu_of(self.child.id())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        drop(self.stdin.take()); // every role exits when its stdin closes
        let _ = self.child.wait();
    }
}

/// `utime + stime` of a process (all its threads), from `/proc/PID/stat`.
pub fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the child's stat");
    // The command name, field 2, is in parentheses and may hold spaces:
    // count from the last `)`. Field 3 (state) comes first after it.
    let rest = &stat[stat.rfind(')').expect("(comm)") + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    let hz = rustix::param::clock_ticks_per_second();
    Duration::from_secs_f64(ticks as f64 / hz as f64)
}

/// A source, what its bytes pass through (a broker or a forwarder), and
/// the sink. Fields drop in this order: the source leaves first, the
/// sink before the broker (which would otherwise wait for it to go).
pub struct Route {
    source: Process,
    sink: Process,
    middle: Process,
}

/// One transfer: its wall time, and the CPU time of every process involved.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// From the first byte written to the sink's answer.
    pub wall: Duration,
    /// Source, sink, and broker or forwarder, from the command to the
    /// answer: opening the channel or connection is in it (a few
    /// milliseconds against a second or more per GiB).
    pub cpu: Duration,
    /// The same by process: source, broker or forwarder, sink.
    pub parts: [Duration; 3],
}

impl Route {
    /// Through the broker at `addr` (`unix:` or `tcp:`): a sink plugin that
    /// registers there, a source plugin that opens channels to it.
    pub fn relay(broker: Process, addr: &str) -> Self {
        let sink = Process::start(&["sink", addr]);
        let source = Process::start(&["source", addr]);
        Route {
            source,
            sink,
            middle: broker,
        }
    }

    /// Through a bare forwarder, between the same source and sink on raw
    /// unix sockets.
    pub fn forwarder() -> Self {
        let dir = std::env::temp_dir();
        let pid = std::process::id();
        let socket =
            |what: &str| -> PathBuf { dir.join(format!("plugboard-procs-{pid}-{what}.sock")) };
        let (sink_path, forwarder_path) = (socket("sink"), socket("forwarder"));
        let raw = |p: &PathBuf| format!("raw:{}", p.display());
        let sink = Process::start(&["sink", &raw(&sink_path)]);
        let forwarder = Process::start(&[
            "forwarder",
            &forwarder_path.display().to_string(),
            &sink_path.display().to_string(),
        ]);
        let source = Process::start(&["source", &raw(&forwarder_path)]);
        Route {
            source,
            sink,
            middle: forwarder,
        }
    }

    /// CPU so far of the source, the broker or forwarder, and the sink.
    fn cpu(&self) -> [Duration; 3] {
        [self.source.cpu(), self.middle.cpu(), self.sink.cpu()]
    }

    /// `bytes` from the source to the sink.
    pub fn bulk(&mut self, bytes: usize) -> Sample {
        self.run(&format!("bulk {bytes}"))
    }

    /// `rounds` round trips of 64 bytes; the wall time is per round trip.
    pub fn round_trip(&mut self, rounds: usize) -> Duration {
        self.run(&format!("rtt {rounds}")).wall / rounds as u32
    }

    fn run(&mut self, command: &str) -> Sample {
        let before = self.cpu();
        let nanos: u64 = self.source.ask(command).parse().expect("nanoseconds");
        let after = self.cpu();
        let parts = [0, 1, 2].map(|i| after[i] - before[i]);
        Sample {
            wall: Duration::from_nanos(nanos),
            cpu: parts.iter().sum(),
            parts,
        }
    }
}

/// Medians (and the wall's spread) of alternating rounds.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    /// CPU per byte, relay and forwarder (per GiB, to read as seconds).
    pub cpu_per_gib: (Duration, Duration),
    /// The relay's CPU per GiB by process (source, broker, sink), and the
    /// forwarder's (source, forwarder, sink): medians of each.
    pub parts_per_gib: ([Duration; 3], [Duration; 3]),
    /// Wall time per transfer, relay and forwarder.
    pub wall: (Duration, Duration),
    /// The relay's wall time over the forwarder's: min and max of the rounds.
    pub wall_ratio_range: (f64, f64),
    /// A 64-byte round trip, relay and forwarder.
    pub round_trip: (Duration, Duration),
}

/// `rounds` transfers of `bytes` on each route, alternating which goes
/// first, then `rtts` round trips on each, in alternating slices.
pub fn compare(
    relay: &mut Route,
    forwarder: &mut Route,
    bytes: usize,
    rounds: usize,
    rtts: usize,
) -> Figures {
    let mut ours = Vec::new();
    let mut base = Vec::new();
    for i in 0..rounds {
        if i % 2 == 0 {
            ours.push(relay.bulk(bytes));
            base.push(forwarder.bulk(bytes));
        } else {
            base.push(forwarder.bulk(bytes));
            ours.push(relay.bulk(bytes));
        }
    }
    let per_gib = |s: &Sample| s.cpu.mul_f64((1u64 << 30) as f64 / bytes as f64);
    let ratios: Vec<f64> = ours
        .iter()
        .zip(&base)
        .map(|(o, b)| o.wall.as_secs_f64() / b.wall.as_secs_f64())
        .collect();
    let slices = 5.min(rtts.max(1));
    let (mut rtt_ours, mut rtt_base) = (Vec::new(), Vec::new());
    for _ in 0..slices {
        rtt_ours.push(relay.round_trip(rtts / slices));
        rtt_base.push(forwarder.round_trip(rtts / slices));
    }
    let parts = |samples: &[Sample]| {
        [0, 1, 2].map(|i| {
            median(
                samples
                    .iter()
                    .map(|s| s.parts[i].mul_f64((1u64 << 30) as f64 / bytes as f64))
                    .collect(),
            )
        })
    };
    Figures {
        parts_per_gib: (parts(&ours), parts(&base)),
        cpu_per_gib: (
            median(ours.iter().map(per_gib).collect()),
            median(base.iter().map(per_gib).collect()),
        ),
        wall: (
            median(ours.iter().map(|s| s.wall).collect()),
            median(base.iter().map(|s| s.wall).collect()),
        ),
        wall_ratio_range: (
            ratios.iter().copied().fold(f64::INFINITY, f64::min),
            ratios.iter().copied().fold(0.0, f64::max),
        ),
        round_trip: (median(rtt_ours), median(rtt_base)),
    }
}

/// A broker of `adapter` (`tokio`, `smol`, `mio`) in a process of its own;
/// its unix and TCP addresses.
pub fn broker(adapter: &str) -> (Process, String, String) {
    let broker = Process::start(&["broker", adapter]);
    let mut addrs = broker.hello.split_whitespace().map(str::to_owned);
    let unix = addrs.next().expect("the unix address");
    let tcp = addrs.next().expect("the tcp address");
    (broker, unix, tcp)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}
