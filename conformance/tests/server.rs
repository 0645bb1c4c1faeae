//! The server's own rules: binding (0600, a stale file replaced, a live
//! one refused, a TCP port in use), and listeners bound by someone else.
//! The server is plugboard-runtime's, the same on every runtime: tested
//! here, on smol. (What it serves is the conformance suite's.)

use std::os::unix::fs::PermissionsExt as _;

use plugboard_conformance::api::{Connect, SmolApi};
use plugboard_conformance::broker::{config, socket_path, SmolBroker};
use plugboard_conformance::scenarios::{connect, run};
use plugboard_conformance::{broker_keys, keys};
use plugboard_core::broker::BrokerConfig;
use plugboard_os::activation::adopt;
use plugboard_smol::{Addr, ServeError, Server};

/// A unix socket path of this test process.
fn sock_path(name: &str) -> std::path::PathBuf {
    socket_path::<SmolBroker>(name)
}

#[test]
fn binding_rules() {
    run::<SmolApi, _>(async {
        // A stale file (nobody answers) is replaced; the socket is private.
        let path = sock_path("stale");
        let dead = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(dead);
        assert!(path.exists());
        let tcp = Addr::Tcp("127.0.0.1:0".into());
        let server = Server::bind(config(), &[Addr::Unix(path.clone()), tcp]).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(server.public_key(), broker_keys().public());
        let addrs = server.local_addrs();
        assert_eq!(addrs[0], Addr::Unix(path.clone()));
        assert!(
            matches!(&addrs[1], Addr::Tcp(a) if !a.ends_with(":0")),
            "{addrs:?}"
        );

        // A live one is not taken over.
        let other = BrokerConfig::new(plugboard_conformance::handshake(keys(9)));
        match Server::bind(other, &[Addr::Unix(path.clone())]) {
            Err(ServeError::InUse(p)) => assert_eq!(p, path),
            other => panic!("bound over a live socket: {:?}", other.err()),
        }
        // A TCP port in use is a bind error.
        let taken = addrs[1].clone();
        let other = BrokerConfig::new(plugboard_conformance::handshake(keys(9)));
        assert!(matches!(
            Server::bind(other, &[taken]),
            Err(ServeError::Bind { .. })
        ));

        let (stop, stopped) = smol::channel::bounded::<()>(1);
        let task = smol::spawn(server.run(async move {
            let _ = stopped.recv().await;
        }));
        let client = connect::<SmolApi>(Connect::new(&addrs[0].to_string(), 1)).await;
        assert!(client.list().await.unwrap().is_empty());
        drop(stop);
        task.await;
        assert!(!path.exists(), "the socket file stayed");
    });
}

/// Listeners bound by someone else (as a service manager passes them) are
/// served next to the bound addresses, and their socket files stay when
/// the server stops: they are not the server's.
#[test]
fn serves_listeners_bound_elsewhere() {
    run::<SmolApi, _>(async {
        let path = sock_path("inherited");
        let _ = std::fs::remove_file(&path);
        let unix = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp_addr = tcp.local_addr().unwrap().to_string();
        let own = sock_path("inherited-own");
        let passed = [unix.into(), tcp.into()].map(|fd| adopt(fd, None).unwrap());
        let server =
            Server::bind_with(config(), &[Addr::Unix(own.clone())], passed.into()).unwrap();
        assert_eq!(
            server.local_addrs(),
            vec![
                Addr::Unix(own.clone()),
                Addr::Unix(path.clone()),
                Addr::Tcp(tcp_addr.clone())
            ]
        );
        let (stop, stopped) = smol::channel::bounded::<()>(1);
        let task = smol::spawn(server.run(async move {
            let _ = stopped.recv().await;
        }));
        // Through the inherited unix socket, a named plugin and a client.
        let unix_addr = Addr::Unix(path.clone()).to_string();
        let named = connect::<SmolApi>(Connect::new(&unix_addr, 1).name("passed")).await;
        let client = connect::<SmolApi>(Connect::new(&unix_addr, 2)).await;
        let members = client.list().await.unwrap();
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].name.as_str(), "passed");
        // Through the inherited TCP socket, the same broker.
        let tcp_addr = Addr::Tcp(tcp_addr).to_string();
        let remote = connect::<SmolApi>(Connect::new(&tcp_addr, 3)).await;
        assert_eq!(remote.list().await.unwrap().len(), 1);
        drop((named, client, remote));
        drop(stop);
        task.await;
        assert!(path.exists(), "an inherited socket file was removed");
        assert!(!own.exists(), "the server's own socket file stayed");
        let _ = std::fs::remove_file(&path);
    });
}
