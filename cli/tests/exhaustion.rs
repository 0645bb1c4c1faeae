//! Out of descriptors: `plugboard serve` (each runtime, as a process of its
//! own, its open-file limit at 64) stops accepting for a moment and says so
//! once, rather than spin and log a line per failed accept; once
//! descriptors are free again it serves as before.

use std::io::{BufRead as _, BufReader};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_plugboard");
/// The broker's open-file limit, soft and hard.
const FD_LIMIT: u64 = 64;

struct Broker {
    child: Child,
    home: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

impl Broker {
    fn start(runtime: &str) -> Broker {
        let home = std::env::temp_dir().join(format!(
            "plugboard-exhaustion-{}-{runtime}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir_all(&home).unwrap();
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--runtime", runtime])
            .env("PLUGBOARD_HOME", &home)
            .env(
                "PLUGBOARD_BROKER",
                format!("unix:{}", home.join("b.sock").display()),
            )
            .env_remove("RUST_LOG")
            .stderr(Stdio::piped());
        // SAFETY: only setrlimit runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                let limit = rustix::process::Rlimit {
                    current: Some(FD_LIMIT),
                    maximum: Some(FD_LIMIT),
                };
                rustix::process::setrlimit(rustix::process::Resource::Nofile, limit)?;
                Ok(())
            });
        }
        let mut child = command.spawn().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = BufReader::new(child.stderr.take().unwrap());
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in lines.lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let broker = Broker { child, home, log };
        wait_for("the broker to listen", || broker.socket().exists());
        broker
    }

    fn socket(&self) -> PathBuf {
        self.home.join("b.sock")
    }

    fn accept_lines(&self) -> usize {
        let log = self.log.lock().unwrap();
        log.iter().filter(|l| l.contains("accept on")).count()
    }

    /// The CPU time the broker has used so far, in clock ticks (user and
    /// system: fields 14 and 15 of /proc/PID/stat).
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // The command name may hold spaces; the fields after it do not.
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after_name.split(' ').collect();
        // after_name starts at field 3 (state).
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }

    fn list_works(&self) -> bool {
        Command::new(BIN)
            .args(["list"])
            .env("PLUGBOARD_HOME", &self.home)
            .env(
                "PLUGBOARD_BROKER",
                format!("unix:{}", self.socket().display()),
            )
            .stderr(Stdio::null())
            .output()
            .is_ok_and(|out| out.status.success())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(30), "{what}: never");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn out_of_descriptors(runtime: &str) {
    let broker = Broker::start(runtime);
    assert!(broker.list_works(), "the broker serves before the flood");
    // Twice as many silent connections as the broker has descriptors.
    let flood: Vec<UnixStream> = (0..2 * FD_LIMIT)
        .map(|_| UnixStream::connect(broker.socket()).unwrap())
        .collect();
    wait_for("a failed accept to be logged", || broker.accept_lines() > 0);
    // A spinning loop logs thousands of lines a second here, and one that
    // spins without a word burns the second on the CPU.
    let ticks = broker.cpu_ticks();
    let ticks_per_second = rustix::param::clock_ticks_per_second();
    std::thread::sleep(Duration::from_secs(1));
    let busy = broker.cpu_ticks() - ticks;
    assert!(
        busy < ticks_per_second / 4,
        "out of descriptors, the broker used {busy} of {ticks_per_second} ticks in a second"
    );
    let lines = broker.accept_lines();
    assert!(
        lines <= 3,
        "{lines} lines about failed accepts in a second:\n{}",
        broker.log.lock().unwrap().join("\n")
    );
    drop(flood);
    wait_for("the broker to serve again", || broker.list_works());
}

#[test]
fn out_of_descriptors_tokio_pauses_and_recovers() {
    out_of_descriptors("tokio");
}

#[test]
fn out_of_descriptors_smol_pauses_and_recovers() {
    out_of_descriptors("smol");
}

#[test]
fn out_of_descriptors_mio_pauses_and_recovers() {
    out_of_descriptors("mio");
}
