//! Binding unix sockets by the broker's rules, against real files.

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use plugboard_os::{Addr, Listener, ServeError};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("plugboard-os-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_socket_file_is_private_from_the_moment_it_exists() {
    let dir = scratch("private");
    let path = dir.join("b.sock");
    // Watch the path as closely as we can while it is made again and again:
    // every mode ever seen there must be 0600.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, path) = (stop.clone(), path.clone());
        std::thread::spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(meta) = std::fs::symlink_metadata(&path) {
                    seen.insert(meta.permissions().mode() & 0o777);
                }
            }
            seen
        })
    };
    for _ in 0..300 {
        let listener = Listener::bind(&Addr::Unix(path.clone())).unwrap();
        assert_eq!(mode(&path), 0o600);
        drop(listener);
        std::fs::remove_file(&path).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let seen = watcher.join().unwrap();
    assert!(!seen.is_empty(), "the watcher never saw the socket");
    assert!(
        seen.iter().all(|m| *m == 0o600),
        "modes seen: {:?}",
        seen.iter().map(|m| format!("{m:o}")).collect::<Vec<_>>()
    );
    // No staging directory is left behind.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_stale_socket_is_replaced() {
    let dir = scratch("stale");
    let path = dir.join("b.sock");
    drop(UnixListener::bind(&path).unwrap()); // its file stays, nobody listens
    let listener = Listener::bind(&Addr::Unix(path.clone())).unwrap();
    assert_eq!(
        listener.owned_file().map(|f| f.path()),
        Some(path.as_path())
    );
    UnixStream::connect(&path).expect("the new listener answers");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_live_broker_is_refused_even_with_its_backlog_full() {
    let dir = scratch("live");
    let path = dir.join("b.sock");
    let live = UnixListener::bind(&path).unwrap();
    // The smallest backlog, then fill it: further connects say EAGAIN.
    rustix::net::listen(&live, 0).unwrap();
    let mut waiting = Vec::new();
    loop {
        let socket = rustix::net::socket_with(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::NONBLOCK,
            None,
        )
        .unwrap();
        let addr = rustix::net::SocketAddrUnix::new(&path).unwrap();
        match rustix::net::connect(&socket, &addr) {
            Ok(()) => waiting.push(socket),
            Err(rustix::io::Errno::AGAIN) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(waiting.len() < 1000, "the backlog never filled");
    }
    match Listener::bind(&Addr::Unix(path.clone())) {
        Err(ServeError::InUse(p)) => assert_eq!(p, path),
        other => panic!("a live broker's socket was taken: {other:?}"),
    }
    // Its socket is still there, and still its own.
    assert!(path.exists());
    live.set_nonblocking(true).unwrap();
    live.accept()
        .expect("the live broker still has its connections");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn brokers_starting_at_once_take_a_stale_path_once() {
    let dir = scratch("race");
    let path = dir.join("b.sock");
    for round in 0..50 {
        drop(UnixListener::bind(&path).unwrap()); // stale
        let start = Arc::new(std::sync::Barrier::new(4));
        let brokers: Vec<_> = (0..4)
            .map(|_| {
                let (start, path) = (start.clone(), path.clone());
                std::thread::spawn(move || {
                    start.wait();
                    Listener::bind(&Addr::Unix(path))
                })
            })
            .collect();
        let results: Vec<_> = brokers.into_iter().map(|b| b.join().unwrap()).collect();
        let mut winners: Vec<_> = results
            .into_iter()
            .filter_map(|r| match r {
                Ok(listener) => Some(listener),
                Err(ServeError::InUse(_)) => None,
                Err(e) => panic!("round {round}: {e}"),
            })
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: two brokers took the path");
        // And the path leads to the winner.
        let Listener::Unix { listener, .. } = winners.pop().unwrap() else {
            panic!("a unix listener")
        };
        let _client = UnixStream::connect(&path).unwrap();
        listener.accept().expect("the winner has the connection");
        drop(listener);
        std::fs::remove_file(&path).unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_file_that_is_not_a_socket_is_never_replaced() {
    let dir = scratch("file");
    let path = dir.join("b.sock");
    std::fs::write(&path, b"precious").unwrap();
    assert!(matches!(
        Listener::bind(&Addr::Unix(path.clone())),
        Err(ServeError::NotASocket(_))
    ));
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tcp_listeners_are_non_blocking_and_report_their_port() {
    let listener = Listener::bind(&Addr::Tcp("127.0.0.1:0".into())).unwrap();
    let Addr::Tcp(bound) = listener.local_addr() else {
        panic!("a TCP address")
    };
    assert!(!bound.ends_with(":0"), "{bound}");
    let Listener::Tcp(l) = listener else {
        panic!("a TCP listener")
    };
    assert_eq!(
        l.accept().unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );
}

#[test]
fn a_stopping_broker_leaves_its_successors_socket_alone() {
    let dir = scratch("successor");
    let path = dir.join("b.sock");
    let first = Listener::bind(&Addr::Unix(path.clone())).unwrap();
    let file = first.owned_file().unwrap().clone();
    // The first broker stops listening; a second takes the stale path over
    // before the first gets round to removing its file.
    drop(first);
    let second = Listener::bind(&Addr::Unix(path.clone())).unwrap();
    assert!(
        !file.remove().unwrap(),
        "the successor's socket was removed"
    );
    UnixStream::connect(&path).expect("the successor still answers");
    // Its own file it removes.
    assert!(second.owned_file().unwrap().remove().unwrap());
    assert!(!path.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_lock_held_by_someone_else_fails_the_bind_instead_of_hanging() {
    let dir = scratch("locked");
    let path = dir.join("b.sock");
    // Any user who can open the directory can lock it.
    let squatter = std::fs::File::open(&dir).unwrap();
    rustix::fs::flock(&squatter, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let binding = path.clone();
    std::thread::spawn(move || tx.send(Listener::bind(&Addr::Unix(binding))));
    let result = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the bind hung on the lock");
    match result {
        Err(ServeError::Bind { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::WouldBlock, "{source}");
            assert!(source.to_string().contains("lock"), "{source}");
        }
        other => panic!("expected a bind error, got {other:?}"),
    }
    assert!(!path.exists());
    // Once it is let go, binding works.
    drop(squatter);
    Listener::bind(&Addr::Unix(path)).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_path_that_fits_binds_even_when_its_staging_path_would_not() {
    let dir = scratch("long");
    // 107 bytes in all (the most `bind` takes); the staging path beside it
    // is longer than that.
    let name_len = 107 - dir.as_os_str().len() - 1;
    let path = dir.join("s".repeat(name_len));
    assert_eq!(path.as_os_str().len(), 107);
    let listener = Listener::bind(&Addr::Unix(path.clone())).unwrap();
    assert_eq!(mode(&path), 0o600);
    UnixStream::connect(&path).expect("the listener answers");
    drop(listener);
    let _ = std::fs::remove_dir_all(&dir);
}
