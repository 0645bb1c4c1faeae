//! `plugboard serve` as a process of its own, for attacks on what a process
//! owns (descriptors, memory, places at the door): its log is collected,
//! its addresses read from what it says when it listens.

#![allow(dead_code)] // each test file uses its own part

use std::io::{BufRead as _, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_plugboard");

/// How a broker is started.
#[derive(Default)]
pub struct Options<'a> {
    /// Its open-file limit, soft and hard.
    pub fd_limit: Option<u64>,
    /// `--listen tcp:127.0.0.1:0` besides its unix socket.
    pub tcp: bool,
    /// More arguments to `serve`.
    pub args: &'a [&'a str],
}

pub struct Broker {
    child: Child,
    pub home: PathBuf,
    pub log: Arc<Mutex<Vec<String>>>,
    /// `tcp:127.0.0.1:PORT`, if asked for.
    pub tcp: Option<String>,
    /// Its key, `@….ed25519`.
    pub key: String,
}

impl Broker {
    pub fn start(runtime: &str, test: &str, options: Options<'_>) -> Broker {
        let home = scratch(&format!("{test}-{runtime}"));
        let socket = home.join("b.sock");
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--runtime", runtime])
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .args(options.args)
            .env("PLUGBOARD_HOME", &home)
            .env_remove("RUST_LOG")
            .stderr(Stdio::piped());
        if options.tcp {
            command.args(["--listen", "tcp:127.0.0.1:0"]);
        }
        if let Some(limit) = options.fd_limit {
            // SAFETY: only setrlimit runs between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    let limit = rustix::process::Rlimit {
                        current: Some(limit),
                        maximum: Some(limit),
                    };
                    rustix::process::setrlimit(rustix::process::Resource::Nofile, limit)?;
                    Ok(())
                });
            }
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
        let mut broker = Broker {
            child,
            home,
            log,
            tcp: None,
            key: String::new(),
        };
        let listening = if options.tcp { 2 } else { 1 };
        wait_for("the broker to listen", || {
            broker.lines_with("listening on") >= listening
        });
        let key = {
            let log = broker.log.lock().unwrap();
            let line = log.iter().find(|l| l.contains("listening on")).unwrap();
            let key = line.split(" as ").nth(1).unwrap();
            key.split(' ').next().unwrap().to_owned()
        };
        broker.key = key;
        if options.tcp {
            let log = broker.log.lock().unwrap();
            let line = log
                .iter()
                .find(|l| l.contains("listening on tcp:"))
                .expect("a TCP listener");
            let addr = line.split("listening on ").nth(1).unwrap();
            let tcp = addr.split(' ').next().unwrap().to_owned();
            drop(log);
            broker.tcp = Some(tcp);
        }
        broker
    }

    pub fn socket(&self) -> PathBuf {
        self.home.join("b.sock")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lines of its log that contain `what`.
    pub fn lines_with(&self, what: &str) -> usize {
        let log = self.log.lock().unwrap();
        log.iter().filter(|l| l.contains(what)).count()
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// `plugboard ARGS` as its owner, over its unix socket.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("PLUGBOARD_HOME", &self.home)
            .env(
                "PLUGBOARD_BROKER",
                format!("unix:{}", self.socket().display()),
            )
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    }

    pub fn list_works(&self) -> bool {
        self.run(&["list"]).status.success()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// A fresh private directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("plugboard-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Another identity's home: `plugboard` there acts with its own key (and,
/// if `uid` is set, as that user).
pub struct Client {
    pub home: PathBuf,
    /// Its key, `@….ed25519`.
    pub id: String,
    uid: Option<u32>,
}

impl Client {
    pub fn new(name: &str) -> Client {
        Client::new_as(name, None)
    }

    /// A client whose commands run as user (and group) `uid`: the test must
    /// run as root.
    pub fn new_as(name: &str, uid: Option<u32>) -> Client {
        let home = scratch(name);
        if let Some(uid) = uid {
            let owner = Some(rustix::fs::Uid::from_raw(uid));
            let group = Some(rustix::fs::Gid::from_raw(uid));
            rustix::fs::chown(&home, owner, group).unwrap();
        }
        let mut client = Client {
            home,
            id: String::new(),
            uid,
        };
        let out = client.command().arg("keygen").output().unwrap();
        assert!(out.status.success(), "{out:?}");
        client.id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        client
    }

    fn command(&self) -> Command {
        use std::os::unix::process::CommandExt as _;
        let mut command = Command::new(BIN);
        command
            .env("PLUGBOARD_HOME", &self.home)
            .env_remove("RUST_LOG");
        if let Some(uid) = self.uid {
            command.uid(uid).gid(uid);
        }
        command
    }

    /// `plugboard ARGS` against `broker` (an address, `tcp:…` or `unix:…`).
    pub fn run(&self, broker: &str, args: &[&str]) -> Output {
        self.command()
            .args(args)
            .env("PLUGBOARD_BROKER", broker)
            .output()
            .unwrap()
    }
}

impl Client {
    /// As [`Client::run`], left running (its output discarded).
    pub fn spawn(&self, broker: &str, args: &[&str]) -> std::process::Child {
        self.command()
            .args(args)
            .env("PLUGBOARD_BROKER", broker)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(30), "{what}: never");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A scratch directory, mode 0700, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir = scratch(name);
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A process killed on drop, so a failing test leaves none behind.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
