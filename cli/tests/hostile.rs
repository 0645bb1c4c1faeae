//! Strangers at the door of `plugboard serve` (each runtime, a process of
//! its own): while one address holds 400 idle TCP sockets, a local
//! `plugboard list` and one over TCP from another address with a key the
//! policy names each get in at once, and the crowd's refusals are one line
//! of the broker's log. (Before the door had budgets per listener and per
//! source, the crowd took all 256 places of the one budget every listener
//! shared: both were turned away, "Broken pipe", and nothing was logged.)

mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use common::{wait_for, write, Broker, Client, Options};

/// `n` TCP connections to `to` from `from` (any loopback address will do
/// as a second host), that never say a word.
fn idle_crowd(to: SocketAddr, from: Ipv4Addr, n: usize) -> Vec<TcpStream> {
    use rustix::net::{AddressFamily, SocketType};
    (0..n)
        .map(|_| {
            let socket =
                rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
            rustix::net::bind(&socket, &SocketAddrV4::new(from, 0)).unwrap();
            rustix::net::connect(&socket, &to).unwrap();
            TcpStream::from(socket)
        })
        .collect()
}

/// How long `run` took, and what it printed, failing the test if it failed.
fn timed(what: &str, run: impl FnOnce() -> std::process::Output) -> Duration {
    let start = Instant::now();
    let out = run();
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "{what} failed after {took:?}: {}",
        String::from_utf8_lossy(&out.stderr),
    );
    took
}

fn a_crowd_at_the_door(runtime: &str) {
    let client = Client::new(&format!("door-client-{runtime}"));
    let policy = write(
        &client.home,
        "policy.toml",
        &format!("[[key]]\nid = \"{}\"\nlist = true\n", client.id),
    );
    let args = ["--policy", policy.to_str().unwrap()];
    let options = Options {
        tcp: true,
        args: &args,
        ..Options::default()
    };
    let broker = Broker::start(runtime, "door", options);
    let tcp = broker.tcp.clone().unwrap();
    let addr: SocketAddr = tcp.strip_prefix("tcp:").unwrap().parse().unwrap();
    let crowd = idle_crowd(addr, Ipv4Addr::new(127, 0, 0, 2), 400);
    wait_for("the crowd to be refused", || {
        broker.lines_with("refusing connections") > 0
    });

    let local = timed("a local list", || broker.run(&["list"]));
    let remote = timed(&format!("a list over TCP ({})", client.id), || {
        let out = client.run(&tcp, &["list", "--broker-key", &broker.key]);
        if !out.status.success() {
            eprintln!("{}", broker.log_text());
        }
        out
    });
    eprintln!("{runtime}: beside the crowd, a local list took {local:?}, one over TCP {remote:?}");
    for took in [local, remote] {
        assert!(took < Duration::from_secs(3), "{took:?}");
    }
    let log = broker.log_text();
    assert_eq!(broker.lines_with("refusing connections"), 1, "{log}");
    assert!(log.contains("127.0.0.2"), "{log}");
    drop(crowd);
}

#[test]
fn a_crowd_at_the_door_of_tokio() {
    a_crowd_at_the_door("tokio");
}

#[test]
fn a_crowd_at_the_door_of_smol() {
    a_crowd_at_the_door("smol");
}

#[test]
fn a_crowd_at_the_door_of_mio() {
    a_crowd_at_the_door("mio");
}

/// Another user on a socket made wider than 0600: the broker's own user
/// keeps the `[unix]` rights, a user the policy names gets what its
/// `[[user]]` entry grants, and any other user is refused in the handshake
/// (before, every process that could reach the socket had the `[unix]`
/// rights, whoever it ran as). Needs root, to run clients as other users.
fn other_users_on_a_wider_socket(runtime: &str) {
    if !rustix::process::getuid().is_root() {
        eprintln!("skipped: running clients as other users needs root");
        return;
    }
    let (named, unnamed) = (65_534, 65_533);
    let policy_dir = common::scratch(&format!("users-policy-{runtime}"));
    let policy = write(
        &policy_dir,
        "policy.toml",
        &format!("[[user]]\nuid = {named}\nlist = true\nwatch = true\n"),
    );
    let args = ["--policy", policy.to_str().unwrap()];
    let options = Options {
        args: &args,
        ..Options::default()
    };
    let broker = Broker::start(runtime, "users", options);
    // The socket made reachable by everyone, as a configured or inherited
    // wider socket would be.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |m| std::fs::Permissions::from_mode(m);
    std::fs::set_permissions(&broker.home, mode(0o711)).unwrap();
    std::fs::set_permissions(broker.socket(), mode(0o666)).unwrap();
    let at = format!("unix:{}", broker.socket().display());

    let owner = broker.run(&["list"]);
    assert!(owner.status.success(), "{owner:?}");
    let granted = Client::new_as(&format!("users-named-{runtime}"), Some(named));
    let out = granted.run(&at, &["list", "--broker-key", &broker.key]);
    assert!(
        out.status.success(),
        "uid {named}: {out:?}\n{}",
        broker.log_text()
    );
    // `stats` shows what each user holds: here the named user's watch.
    let mut watch = granted.spawn(&at, &["watch", "--broker-key", &broker.key]);
    wait_for("the named user's watch in stats", || {
        let out = broker.run(&["stats"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.starts_with(&format!("uid  {named}  conns 1 ")))
    });
    let _ = watch.kill();
    let _ = watch.wait();
    let other = Client::new_as(&format!("users-unnamed-{runtime}"), Some(unnamed));
    let out = other.run(&at, &["list", "--broker-key", &broker.key]);
    assert!(!out.status.success(), "uid {unnamed} was let in");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("closed the connection"),
        "uid {unnamed}: {said}"
    );
    let _ = std::fs::remove_dir_all(&policy_dir);
}

#[test]
fn other_users_on_a_wider_socket_tokio() {
    other_users_on_a_wider_socket("tokio");
}

#[test]
fn other_users_on_a_wider_socket_smol() {
    other_users_on_a_wider_socket("smol");
}

#[test]
fn other_users_on_a_wider_socket_mio() {
    other_users_on_a_wider_socket("mio");
}
