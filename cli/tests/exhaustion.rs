//! Out of descriptors: `plugboard serve` (each runtime, as a process of its
//! own, its open-file limit at 64) stops accepting for a moment and says so
//! once, rather than spin and log a line per failed accept; once
//! descriptors are free again it serves as before.

mod common;

use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::{wait_for, Broker, Options};

/// The broker's open-file limit, soft and hard.
const FD_LIMIT: u64 = 64;

/// The CPU time `broker` has used so far, in clock ticks (user and system:
/// fields 14 and 15 of /proc/PID/stat).
fn cpu_ticks(broker: &Broker) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", broker.pid())).unwrap();
    // The command name may hold spaces; the fields after it do not.
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    // after_name starts at field 3 (state).
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn out_of_descriptors(runtime: &str) {
    let options = Options {
        fd_limit: Some(FD_LIMIT),
        ..Options::default()
    };
    let broker = Broker::start(runtime, "exhaustion", options);
    assert!(broker.list_works(), "the broker serves before the flood");
    // Twice as many silent connections as the broker has descriptors.
    let flood: Vec<UnixStream> = (0..2 * FD_LIMIT)
        .map(|_| UnixStream::connect(broker.socket()).unwrap())
        .collect();
    wait_for("a failed accept to be logged", || {
        broker.lines_with("accept on") > 0
    });
    // A spinning loop logs thousands of lines a second here, and one that
    // spins without a word burns the second on the CPU.
    let ticks = cpu_ticks(&broker);
    let ticks_per_second = rustix::param::clock_ticks_per_second();
    std::thread::sleep(Duration::from_secs(1));
    let busy = cpu_ticks(&broker) - ticks;
    assert!(
        busy < ticks_per_second / 4,
        "out of descriptors, the broker used {busy} of {ticks_per_second} ticks in a second"
    );
    let lines = broker.lines_with("accept on");
    assert!(
        lines <= 3,
        "{lines} lines about failed accepts in a second:\n{}",
        broker.log_text()
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
