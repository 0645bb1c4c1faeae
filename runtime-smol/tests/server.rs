//! The smol server's own rules: binding (0600, a stale file replaced, a
//! live one refused), TCP admits only named keys, a graceful stop says why
//! and removes the socket file.

mod common;

use plugboard_os::activation::adopt;
use std::os::unix::fs::PermissionsExt as _;

use common::{broker_keys, config, keys, plugin, run, sock_path, within, Broker, PATIENCE};
use futures_lite::StreamExt;
use plugboard_core::broker::BrokerConfig;
use plugboard_core::shs::HandshakeConfig;
use plugboard_smol::{Addr, Plugin, PluginError, ServeError, Server};

#[test]
fn binding_rules() {
    run(async {
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
        let other = BrokerConfig::new(HandshakeConfig::new(keys(9)));
        match Server::bind(other, &[Addr::Unix(path.clone())]) {
            Err(ServeError::InUse(p)) => assert_eq!(p, path),
            other => panic!("bound over a live socket: {:?}", other.err()),
        }
        // A TCP port in use is a bind error.
        let taken = addrs[1].clone();
        let other = BrokerConfig::new(HandshakeConfig::new(keys(9)));
        assert!(matches!(
            Server::bind(other, &[taken]),
            Err(ServeError::Bind { .. })
        ));

        let (stop, stopped) = smol::channel::bounded::<()>(1);
        let task = smol::spawn(server.run(async move {
            let _ = stopped.recv().await;
        }));
        let client = plugin(&addrs[0].to_string(), 1, None).await;
        assert!(client.list().await.unwrap().is_empty());
        drop(stop);
        within(PATIENCE, task).await;
        assert!(!path.exists(), "the socket file stayed");
    });
}

#[test]
fn tcp_admits_only_the_keys_the_policy_names() {
    run(async {
        let broker = Broker::start("policy");
        let stranger = Plugin::builder(keys(42))
            .broker_key(broker_keys().public())
            .connect(&broker.tcp)
            .await;
        assert!(stranger.is_err());
        // On the unix socket the same key is welcome.
        let welcome = plugin(&broker.unix, 42, None).await;
        assert!(welcome.list().await.unwrap().is_empty());
        broker.stop().await;
    });
}

#[test]
fn a_stop_says_why_and_removes_the_socket() {
    run(async {
        let broker = Broker::start("stop");
        let path = sock_path("stop");
        let client = plugin(&broker.unix, 1, Some("leaving")).await;
        let mut changes = client.watch().await.unwrap();
        assert!(changes.next().await.is_some(), "no snapshot");
        broker.stop().await;
        // The watch ends with the connection.
        while within(PATIENCE, changes.next()).await.is_some() {}
        // The server's last words said why.
        match client.list().await {
            Err(PluginError::Disconnected(reason)) => {
                assert!(reason.contains("shutting down"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        // Offers end too.
        assert!(within(PATIENCE, client.incoming().next()).await.is_none());
        assert!(!path.exists(), "the socket file stayed");
    });
}

/// Listeners bound by someone else (as a service manager passes them) are
/// served next to the bound addresses, and their socket files stay when
/// the server stops: they are not the server's.
#[test]
fn serves_listeners_bound_elsewhere() {
    run(async {
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
        let named = plugin(&unix_addr, 1, Some("passed")).await;
        let client = plugin(&unix_addr, 2, None).await;
        let members = client.list().await.unwrap();
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].name.as_str(), "passed");
        // Through the inherited TCP socket, the same broker.
        let remote = plugin(&Addr::Tcp(tcp_addr).to_string(), 3, None).await;
        assert_eq!(remote.list().await.unwrap().len(), 1);
        drop((named, client, remote));
        drop(stop);
        within(PATIENCE, task).await;
        assert!(path.exists(), "an inherited socket file was removed");
        assert!(!own.exists(), "the server's own socket file stayed");
        let _ = std::fs::remove_file(&path);
    });
}
