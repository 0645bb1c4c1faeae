//! `plugboard serve` on listeners passed as systemd passes them: open
//! descriptors from 3 on, `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES`.

use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_plugboard");

mod common;
use common::{Running, Scratch as Dir};

/// Runs `plugboard serve` with `listeners` as descriptors 3, 4, …, the way
/// a service manager does. `LISTEN_PID` must be the pid of the process that
/// takes them, which is only known in the child: a shell sets it to its own
/// pid (`$$`), then execs the broker (on `runtime`), which keeps that pid.
fn serve_activated_on(
    home: &Dir,
    listeners: Vec<OwnedFd>,
    names: Option<&str>,
    runtime: &str,
) -> Running {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(r#"LISTEN_PID=$$ exec "$0" "$@""#)
        .arg(BIN)
        .args(["serve", "--runtime", runtime])
        .env("PLUGBOARD_HOME", &home.0)
        // The default socket would be here; with listeners passed it is not made.
        .env(
            "PLUGBOARD_BROKER",
            format!("unix:{}", home.0.join("default.sock").display()),
        )
        .env("LISTEN_FDS", listeners.len().to_string())
        .env_remove("LISTEN_PID")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    match names {
        Some(names) => command.env("LISTEN_FDNAMES", names),
        None => command.env_remove("LISTEN_FDNAMES"),
    };
    let sources: Vec<RawFd> = listeners.iter().map(|l| l.as_raw_fd()).collect();
    // The sources may themselves sit at 3, 4, …: first copy every source
    // above all of them and the targets, then into place.
    let n = sources.len() as RawFd;
    let above = sources.iter().copied().max().unwrap_or(0).max(3 + n) + 1;
    // SAFETY: between fork and exec only dup2 and close run (async-signal
    // safe, no allocation); the descriptors named are open or are targets.
    unsafe {
        command.pre_exec(move || {
            for (i, &fd) in sources.iter().enumerate() {
                let mut high = OwnedFd::from_raw_fd(above + i as RawFd);
                let moved = rustix::io::dup2(BorrowedFd::borrow_raw(fd), &mut high);
                std::mem::forget(high); // open, without close-on-exec
                moved?;
            }
            for i in 0..n {
                // dup2 clears close-on-exec on the copy: it survives the exec.
                let mut target = OwnedFd::from_raw_fd(3 + i);
                let moved = rustix::io::dup2(BorrowedFd::borrow_raw(above + i), &mut target);
                std::mem::forget(target);
                drop(OwnedFd::from_raw_fd(above + i)); // the spare copy closes
                moved?;
            }
            Ok(())
        });
    }
    let child = Running(command.spawn().unwrap());
    // Our copies close here; the broker holds its own.
    drop(listeners);
    child
}

fn list(home: &Dir, broker: &str) -> std::process::Output {
    Command::new(BIN)
        .args(["list", "--json", "--broker", broker])
        .env("PLUGBOARD_HOME", &home.0)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn expose(home: &Dir, broker: &str, name: &str) -> Running {
    Running(
        Command::new(BIN)
            .args(["expose", name, "--broker", broker, "--", "cat"])
            .env("PLUGBOARD_HOME", &home.0)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Lists until `name` is there (the exposing plugin registers in its own time).
fn wait_listed(home: &Dir, broker: &str, name: &str) -> String {
    let mut attempts = 0;
    loop {
        let out = list(home, broker);
        assert!(
            out.status.success(),
            "list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        if text.contains(&format!("\"name\":\"{name}\"")) {
            return text;
        }
        attempts += 1;
        assert!(attempts < 1000, "{name} was never listed: {text}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn serves_on_passed_unix_and_tcp_listeners_and_leaves_their_files() {
    passed_listeners("tokio");
}

#[test]
fn the_smol_broker_serves_passed_listeners_too() {
    passed_listeners("smol");
}

#[test]
fn the_mio_broker_serves_passed_listeners_too() {
    passed_listeners("mio");
}

fn passed_listeners(runtime: &str) {
    let home = Dir::new(&format!("activation-both-{runtime}"));
    // The broker's identity exists first, so that `list` (same home, so same
    // key, which the broker admits over TCP as its own) can use it.
    let keygen = Command::new(BIN)
        .arg("keygen")
        .env("PLUGBOARD_HOME", &home.0)
        .output()
        .unwrap();
    assert!(keygen.status.success());

    let path = home.0.join("activated.sock");
    let unix = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_addr = format!("tcp:{}", tcp.local_addr().unwrap());
    let unix_addr = format!("unix:{}", path.display());
    let listeners = vec![unix.into(), tcp.into()];
    let mut broker = serve_activated_on(&home, listeners, Some("local:network"), runtime);

    // Connections wait in the listeners' backlogs until the broker takes them.
    let _echo = expose(&home, &unix_addr, "echo");
    let listed = wait_listed(&home, &unix_addr, "echo");
    assert!(listed.contains("\"transport\":\"unix\""), "{listed}");
    wait_listed(&home, &tcp_addr, "echo");
    // It listened on nothing else: the default socket was not made.
    assert!(!home.0.join("default.sock").exists());

    // A graceful stop leaves the passed socket's file to its owner.
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&broker.0),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let status = broker.0.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(path.exists(), "the broker removed a socket it did not make");
}

#[test]
fn without_listen_pid_for_it_the_broker_binds_its_default_socket() {
    let home = Dir::new("activation-other-pid");
    // LISTEN_PID names another process (here, the test's): whatever is at
    // descriptor 3 is not the broker's to take.
    let mut command = Command::new(BIN);
    command
        .arg("serve")
        .env("PLUGBOARD_HOME", &home.0)
        .env(
            "PLUGBOARD_BROKER",
            format!("unix:{}", home.0.join("default.sock").display()),
        )
        .env("LISTEN_FDS", "1")
        .env("LISTEN_PID", std::process::id().to_string())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    let _broker = Running(command.spawn().unwrap());
    let socket = home.0.join("default.sock");
    let mut attempts = 0;
    while !socket.exists() {
        attempts += 1;
        assert!(attempts < 1000, "the broker never made its default socket");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let default = format!("unix:{}", socket.display());
    let _echo = expose(&home, &default, "echo");
    wait_listed(&home, &default, "echo");
}
