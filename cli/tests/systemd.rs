//! The service units in `contrib/systemd/`: systemd accepts them, and the
//! real binary serves a `plugboard list` through the socket the user unit
//! describes, passed by `systemd-socket-activate` as systemd passes it.
//! Both tools are in Debian's systemd package; `.ci/run` installs it.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_plugboard");
const UNITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../contrib/systemd");

mod common;
use common::{wait_for, Running, Scratch as Dir};

/// The value of `key=` in a unit's text (the first one).
fn setting<'a>(unit: &'a str, key: &str) -> &'a str {
    unit.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in the unit"))
        .trim()
}

/// A copy of `contrib/systemd/<scope>` whose services run the binary
/// under test (verify checks that the command exists).
fn units(scope: &str, into: &Path) -> Vec<PathBuf> {
    let mut copies = Vec::new();
    for entry in std::fs::read_dir(Path::new(UNITS).join(scope)).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_owned();
        if !matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("service" | "socket")
        ) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("/usr/local/bin/plugboard")
                || name.to_str().unwrap().ends_with(".socket")
        );
        let copy = into.join(name);
        std::fs::write(&copy, text.replace("/usr/local/bin/plugboard", BIN)).unwrap();
        copies.push(copy);
    }
    copies.sort();
    assert_eq!(copies.len(), 2, "a .socket and a .service in {scope}");
    copies
}

fn verify(scope: &str, user: bool) {
    let dir = Dir::new(&format!("systemd-verify-{scope}"));
    let units = units(scope, &dir.0);
    let runtime = Dir::new(&format!("systemd-runtime-{scope}"));
    let mut command = Command::new("systemd-analyze");
    if user {
        command.arg("--user");
    }
    let out = command
        .arg("verify")
        .args(&units)
        .current_dir(&dir.0)
        .env("XDG_RUNTIME_DIR", &runtime.0)
        .output()
        .expect("systemd-analyze (Debian's systemd package)");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify {scope}:\n{said}"
    );
    // Any line about our units is a warning systemd would print on load.
    let ours: Vec<_> = said.lines().filter(|l| l.contains("plugboard")).collect();
    assert!(ours.is_empty(), "systemd-analyze verify {scope}:\n{said}");
}

#[test]
fn the_units_verify() {
    verify("user", true);
    verify("system", false);
}

#[test]
fn the_user_socket_unit_activates_the_broker_and_serves_a_list() {
    let unit = std::fs::read_to_string(Path::new(UNITS).join("user/plugboard.socket")).unwrap();
    let runtime = Dir::new("systemd-activate-runtime");
    let home = Dir::new("systemd-activate-home");
    let path = setting(&unit, "ListenStream").replace("%t", runtime.0.to_str().unwrap());
    let mode = u32::from_str_radix(setting(&unit, "SocketMode"), 8).unwrap();
    let name = setting(&unit, "FileDescriptorName");
    let log = home.0.join("broker.log");
    let broker = Running(
        Command::new("systemd-socket-activate")
            .arg(format!("--listen={path}"))
            .arg(format!("--fdname={name}"))
            .arg(format!("--setenv=PLUGBOARD_HOME={}", home.0.display()))
            .args([BIN, "serve"])
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("systemd-socket-activate (Debian's systemd package)"),
    );
    wait_for("the socket", || Path::new(&path).exists());
    // systemd applies SocketMode= to the file once it is bound, as here
    // (systemd-socket-activate has no such option).
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();

    // The first connection starts the broker, which creates its identity;
    // a client reads its own first, so it is made here, for both.
    let client = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env("PLUGBOARD_HOME", &home.0)
            .env("PLUGBOARD_BROKER", format!("unix:{path}"))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    assert!(client(&["keygen"]).status.success());
    let out = client(&["list"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&log).unwrap()
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("NAME"));
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.contains(&format!("(passed by the service manager as {name:?})")),
        "{said}"
    );
    // The broker serves the file as it was passed: it is the service
    // manager's, mode and all.
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, mode, "the socket's mode");
    drop(broker);
}
