//! The `plugboard` command as a user runs it.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_plugboard");

/// A private home and broker socket for one test.
struct Home(PathBuf);

impl Home {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("plugboard-cli-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Home(dir)
    }

    fn command(&self) -> Command {
        let mut command = Command::new(BIN);
        command
            .env("PLUGBOARD_HOME", &self.0)
            .env(
                "PLUGBOARD_BROKER",
                format!("unix:{}", self.socket().display()),
            )
            .env_remove("RUST_LOG");
        command
    }

    fn socket(&self) -> PathBuf {
        self.0.join("plugboard.sock")
    }

    fn spawn(&self, args: &[&str]) -> Child {
        self.command()
            .args(args)
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        self.command().args(args).output().unwrap()
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills on drop, so a failing test leaves no process behind.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what} did not happen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn listed(home: &Home, name: &str) -> bool {
    let out = home.run(&["list", "--json"]);
    String::from_utf8_lossy(&out.stdout).contains(&format!("\"name\":\"{name}\""))
}

fn start_broker(home: &Home) -> Running {
    start_broker_on(home, "tokio")
}

fn start_broker_on(home: &Home, runtime: &str) -> Running {
    let broker = Running(home.spawn(&["serve", "--runtime", runtime]));
    let socket = home.socket();
    wait_for("the broker's socket", || Path::new(&socket).exists());
    broker
}

#[test]
fn keygen_writes_a_private_identity_once() {
    let home = Home::new("keygen");
    let out = home.run(&["keygen"]);
    assert!(out.status.success());
    let id = String::from_utf8(out.stdout).unwrap();
    assert!(
        id.starts_with('@') && id.trim_end().ends_with(".ed25519"),
        "{id}"
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(home.0.join("secret"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let again = home.run(&["keygen"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));
    assert_eq!(String::from_utf8(home.run(&["id"]).stdout).unwrap(), id);
}

/// The README's tour, on the broker of each runtime: `expose echo -- cat`,
/// `connect echo` (relayed, then direct) round-trips a file byte for byte;
/// `list --json` and `watch --json` parse.
#[test]
fn the_tour_on_tokio() {
    tour("tokio");
}

#[test]
fn the_tour_on_smol() {
    tour("smol");
}

#[test]
fn the_tour_on_mio() {
    tour("mio");
}

fn tour(runtime: &str) {
    let home = Home::new(&format!("tour-{runtime}"));
    let _broker = start_broker_on(&home, runtime);
    let _echo = Running(home.spawn(&["expose", "echo", "--", "cat"]));
    wait_for("echo to be listed", || listed(&home, "echo"));

    let data: Vec<u8> = (0..2_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    // Relayed, then direct (both on the broker's unix socket: a socketpair).
    for (args, path) in [
        (&["connect", "echo", "-v"][..], "Relayed"),
        (&["connect", "echo", "--direct", "-v"][..], "SocketPair"),
    ] {
        let mut connect = home
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = connect.stdin.take().unwrap();
        let sent = data.clone();
        let writer = std::thread::spawn(move || stdin.write_all(&sent).unwrap());
        let out = connect.wait_with_output().unwrap();
        writer.join().unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{log}");
        assert!(log.contains(&format!("channel to echo: {path}")), "{log}");
        assert_eq!(out.stdout.len(), data.len());
        assert!(out.stdout == data, "the echo differs");
    }

    // list --json and watch --json are one JSON object per line.
    let list = home.run(&["list", "--json"]);
    for line in String::from_utf8(list.stdout).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["name"], "echo");
        assert_eq!(v["transport"], "unix");
    }
    let mut watch = home
        .command()
        .args(["watch", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(watch.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    let _ = watch.kill();
    let _ = watch.wait();
    let v: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(v["event"], "present");
    assert_eq!(v["member"]["name"], "echo");
}

/// `expose` tells the command who opened the channel, with what protocol
/// and metadata (README, "Who calls").
#[test]
fn expose_tells_the_command_who_calls() {
    let home = Home::new("who-calls");
    let _broker = start_broker_on(&home, "tokio");
    let script = r#"printf '%s|%s|%s|%s|%s' "$PLUGBOARD_FROM_KEY" "$PLUGBOARD_FROM_NAME" "$PLUGBOARD_PROTOCOL" "$PLUGBOARD_METADATA" "$PLUGBOARD_METADATA_HEX""#;
    let _who = Running(home.spawn(&["expose", "who", "--", "sh", "-c", script]));
    wait_for("who to be listed", || listed(&home, "who"));
    let out = home
        .command()
        .args([
            "connect",
            "who",
            "--protocol",
            "greeting",
            "--metadata",
            "hi",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(home.run(&["id"]).stdout).unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{}||greeting|hi|6869", id.trim_end())
    );
}

#[test]
fn failures_have_their_own_exit_codes() {
    let home = Home::new("codes");
    assert!(home.run(&["keygen"]).status.success());
    let unreachable = home.run(&["list"]);
    assert_eq!(
        unreachable.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&unreachable.stderr)
    );

    let _broker = start_broker(&home);
    let missing = home
        .command()
        .args(["connect", "nobody"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nobody has the name nobody"));
}

#[test]
fn a_policy_entry_for_the_brokers_own_key_is_refused_at_load() {
    let home = Home::new("own-key");
    assert!(home.run(&["keygen"]).status.success());
    let id = home.run(&["id"]);
    let id = String::from_utf8(id.stdout).unwrap();
    let policy = home.0.join("policy.toml");
    std::fs::write(
        &policy,
        format!("[[key]]\nid = \"{}\"\nlist = true\n", id.trim()),
    )
    .unwrap();
    let broker = home
        .command()
        .args(["serve", "--policy", policy.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut broker = Running(broker);
    wait_for("serve to give up", || {
        broker.0.try_wait().unwrap().is_some() || home.socket().exists()
    });
    assert!(!home.socket().exists(), "it serves with that policy");
    let status = broker.0.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut broker.0.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("the broker's own key"), "{stderr}");
    assert!(!home.socket().exists());
}

#[test]
fn serve_creates_an_identity_and_removes_its_socket_on_sigterm() {
    let home = Home::new("serve");
    let mut broker = home
        .command()
        .arg("serve")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let socket = home.socket();
    wait_for("the broker's socket", || socket.exists());
    assert!(home.0.join("secret").exists());
    let pid = rustix::process::Pid::from_raw(broker.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = broker.wait().unwrap();
    assert!(status.success());
    assert!(!socket.exists());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut broker.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("created a new identity"), "{stderr}");
    assert!(stderr.contains("SIGTERM: shutting down"), "{stderr}");
}

#[test]
fn serve_check_prints_the_merged_configuration_or_where_it_is_wrong() {
    let home = Home::new("check");
    assert!(home.run(&["keygen"]).status.success());
    let limits = home.0.join("limits.toml");
    std::fs::write(&limits, "open_timeout_ms = 2500\n").unwrap();
    let out = home.run(&[
        "serve",
        "--check",
        "--limits",
        limits.to_str().unwrap(),
        "--max-connections",
        "77",
        "--legacy-listen",
        "tcp:127.0.0.1:8008",
        "--legacy-route",
        "ssb",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for line in [
        "open_timeout_ms = 2500",       // the file
        "max_connections = 77",         // a flag over the file
        "max_connections_per_key = 64", // a default
        "[[legacy]]",
        "listen = \"tcp:127.0.0.1:8008\"",
        "route = \"ssb\"",
        "offer_timeout_ms = 1500",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
    assert!(!home.socket().exists(), "a check binds nothing");

    std::fs::write(&limits, "open_timeout_ms = 2500\nno_such_limit = 1\n").unwrap();
    let out = home.run(&["serve", "--check", "--limits", limits.to_str().unwrap()]);
    let error = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{error}");
    assert!(error.contains("limits.toml"), "the file: {error}");
    assert!(error.contains("line 2"), "the line: {error}");
    assert!(error.contains("no_such_limit"), "the reason: {error}");
}

#[test]
fn a_refused_handshake_says_what_to_check() {
    let home = Home::new("refused");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tcp = format!("tcp:127.0.0.1:{port}");
    let unix = format!("unix:{}", home.socket().display());
    let log = home.0.join("broker.log");
    let _broker = Running(
        home.command()
            .args(["serve", "--listen", &unix, "--listen", &tcp])
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let socket = home.socket();
    wait_for("the broker's socket", || Path::new(&socket).exists());
    let broker_id = String::from_utf8(home.run(&["id"]).stdout).unwrap();
    let broker_id = broker_id.trim();
    // Another identity, over TCP, which the (default) policy does not name.
    let stranger = Home::new("refused-stranger");
    assert!(stranger.run(&["keygen"]).status.success());
    let list = |extra: &[&str]| {
        let mut args = vec!["list", "--broker", &tcp, "--broker-key", broker_id];
        args.extend_from_slice(extra);
        let out = stranger.run(&args);
        assert!(!out.status.success());
        String::from_utf8(out.stderr).unwrap()
    };
    let not_admitted = list(&[]);
    assert!(
        not_admitted.contains("did not admit this key"),
        "{not_admitted}"
    );
    let other = "11".repeat(32);
    let other_network = list(&["--network-key", &other]);
    assert!(
        other_network.contains("another network key"),
        "{other_network}"
    );

    // The broker counted both by cause, and logged each with the key.
    let out = home.run(&["stats", "--format", "openmetrics"]);
    let metrics = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{metrics}");
    for sample in [
        "plugboard_refusals_total{cause=\"not_permitted\"} 1\n",
        "plugboard_refusals_total{cause=\"network_key\"} 1\n",
        "plugboard_disconnects_total{cause=\"not_permitted\"} 1\n",
    ] {
        assert!(metrics.contains(sample), "no {sample:?} in:\n{metrics}");
    }
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");
    let stranger_id = String::from_utf8(stranger.run(&["id"]).stdout).unwrap();
    let log = std::fs::read_to_string(&log).unwrap();
    let refused = log
        .lines()
        .find(|l| l.contains("not_permitted") && l.contains(" INFO "))
        .unwrap_or_else(|| panic!("no line for the refused key in:\n{log}"));
    assert!(refused.contains(stranger_id.trim()), "{refused}");
    assert!(log.lines().any(|l| l.contains("network_key")), "{log}");
}

/// SIGHUP reloads the limits: the next connection is judged by them, the
/// ones held stay; a file that does not load changes nothing.
#[test]
fn sighup_reloads_limits_for_what_comes_next_and_keeps_the_old_on_a_bad_file() {
    for runtime in ["tokio", "smol", "mio"] {
        reload_on(runtime);
    }
}

fn reload_on(runtime: &str) {
    let home = Home::new(&format!("reload-{runtime}"));
    assert!(home.run(&["keygen"]).status.success());
    let limits = home.0.join("limits.toml");
    std::fs::write(&limits, "max_connections_per_key = 64\n").unwrap();
    let log = home.0.join("broker.log");
    let broker = Running(
        home.command()
            .args(["serve", "--runtime", runtime])
            .args(["--limits", limits.to_str().unwrap()])
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for("the broker's socket", || home.socket().exists());
    let hangup = || {
        let pid = rustix::process::Pid::from_raw(broker.0.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    };
    let logged = |what: &str| std::fs::read_to_string(&log).unwrap().contains(what);

    std::fs::write(&limits, "max_connections_per_key = 1\nno_such_limit = 2\n").unwrap();
    hangup();
    wait_for("the refusal to reload", || logged("not reloaded"));
    assert!(logged("no_such_limit"));
    assert!(listed_ok(&home), "the old limits stay in force");

    // One connection held (a watch), then the limit lowered to one.
    let mut watch = Running(home.spawn(&["watch"]));
    // (`stats` is a connection of the key too: two while the watch is there.)
    wait_for("the watch", || {
        let out = home.run(&["stats", "--json"]);
        String::from_utf8_lossy(&out.stdout).contains("\"connections\":2")
    });
    std::fs::write(&limits, "max_connections_per_key = 1\n").unwrap();
    hangup();
    wait_for("the reload", || logged("max_connections_per_key: 64 -> 1"));
    let out = home.run(&["list"]);
    assert!(
        !out.status.success(),
        "a second connection of the key is refused"
    );
    assert!(
        watch.0.try_wait().unwrap().is_none(),
        "the connection held before the reload stays"
    );
    assert!(logged("too_many_connections"));
}

fn listed_ok(home: &Home) -> bool {
    home.run(&["list"]).status.success()
}

/// `plugboard monitor --json` sees a relayed channel open, be accepted and
/// close with its bytes each way, and a refusal with its cause and key.
#[test]
fn monitor_sees_a_channel_with_its_bytes_and_a_refusal_with_its_cause() {
    let home = Home::new("monitor");
    assert!(home.run(&["keygen"]).status.success());
    let mut broker = start_broker(&home);
    let seen = home.0.join("monitor.jsonl");
    let mut monitor = Running(
        home.command()
            .args(["monitor", "--json"])
            .stdout(std::fs::File::create(&seen).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The monitor is there once its connection shows in stats (as stats'
    // own does: two).
    wait_for("the monitor", || {
        let out = home.run(&["stats", "--json"]);
        String::from_utf8_lossy(&out.stdout).contains("\"connections\":2")
    });
    let _echo = Running(home.spawn(&["expose", "echo", "--", "cat"]));
    wait_for("echo to be listed", || listed(&home, "echo"));
    let mut connect = home
        .command()
        .args(["connect", "echo"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let sent = vec![b'x'; 100_000];
    connect.stdin.take().unwrap().write_all(&sent).unwrap();
    let out = connect.wait_with_output().unwrap();
    assert_eq!(out.stdout.len(), sent.len(), "echoed whole");
    assert!(!home.run(&["connect", "nobody"]).status.success());

    let events = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&seen)
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok()) // the last may be half written
            .collect()
    };
    let of = |events: &[serde_json::Value], kind: &str| {
        events.iter().find(|e| e["event"] == kind).cloned()
    };
    wait_for("the refusal to be monitored", || {
        of(&events(), "refusal").is_some() && of(&events(), "close").is_some()
    });
    let events = events();
    let id = String::from_utf8(home.run(&["id"]).stdout).unwrap();
    let open = of(&events, "open").expect("an open");
    assert_eq!(open["name"], "echo");
    assert_eq!(open["key"], id.trim());
    let accept = of(&events, "accept").expect("an accept");
    assert_eq!(
        (&accept["channel"], &accept["cause"]),
        (&open["channel"], &"relay".into())
    );
    let close = of(&events, "close").expect("a close");
    assert_eq!(close["channel"], open["channel"]);
    assert_eq!(close["to_target"], 100_000);
    assert_eq!(close["to_opener"], 100_000);
    let refusal = of(&events, "refusal").expect("a refusal");
    assert_eq!(refusal["cause"], "no_such_name");
    assert_eq!(refusal["key"], id.trim());

    // The broker goes: the monitor says so and ends (it is not restored).
    let pid = rustix::process::Pid::from_raw(broker.0.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let _ = broker.0.wait();
    wait_for("the monitor to end", || {
        monitor.0.try_wait().unwrap().is_some()
    });
}
