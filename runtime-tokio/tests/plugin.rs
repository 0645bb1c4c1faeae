//! The plugin API against the tokio server, over real unix and TCP sockets.

use std::time::Duration;

use plugboard_core::broker::{policy, BrokerConfig};
use plugboard_core::control::{ErrorCode, Presence};
use plugboard_core::shs::HandshakeConfig;
use plugboard_core::Keypair;
use plugboard_tokio::{Addr, Plugin, Server, WatchEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Broker {
    unix: String,
    tcp: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Broker {
    async fn start(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "plugboard-plugin-{}-{name}.sock",
            std::process::id()
        ));
        let mut config = BrokerConfig::new(HandshakeConfig::new(broker_keys()));
        // Over TCP only named keys are admitted: name the test keys.
        config.policy.keys = (1..=9)
            .map(|s| policy::KeyGrant {
                id: keys(s).public(),
                register: vec![policy::Pattern::any()],
                open: vec![policy::Pattern::any()],
                list: true,
                watch: true,
                stats: false,
            })
            .collect();
        let server = Server::bind(config, &[Addr::Unix(path), Addr::Tcp("127.0.0.1:0".into())])
            .await
            .unwrap();
        let addrs = server.local_addrs();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Broker {
            unix: addrs[0].to_string(),
            tcp: addrs[1].to_string(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.take().unwrap().await.unwrap();
    }
}

fn broker_keys() -> Keypair {
    Keypair::from_seed([0xB0; 32])
}

fn keys(seed: u8) -> Keypair {
    Keypair::from_seed([seed; 32])
}

async fn plugin(addr: &str, seed: u8, name: Option<&str>) -> Plugin {
    let mut builder = Plugin::builder(keys(seed)).broker_key(broker_keys().public());
    if let Some(name) = name {
        builder = builder.name(name);
    }
    tokio::time::timeout(Duration::from_secs(10), builder.connect(addr))
        .await
        .unwrap()
        .unwrap()
}

/// An echo server on `plugin`: every incoming channel gets its bytes back.
fn serve_echo(plugin: Plugin) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(incoming) = plugin.incoming().await {
            let mut channel = incoming.accept().unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    let n = channel.read(&mut buf).await.unwrap();
                    if n == 0 {
                        channel.shutdown().await.unwrap();
                        return;
                    }
                    channel.write_all(&buf[..n]).await.unwrap();
                }
            });
        }
    })
}

async fn echo_round_trip(broker_addr: &str, target: &str, seed: u8, size: usize) {
    let client = plugin(broker_addr, seed, None).await;
    let channel = client.open(target, "echo").await.unwrap();
    let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
    let (mut rd, mut wr) = tokio::io::split(channel);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(&sent).await.unwrap();
        wr.shutdown().await.unwrap();
        wr
    });
    let mut back = Vec::with_capacity(size);
    rd.read_to_end(&mut back).await.unwrap();
    let _wr = writer.await.unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "the echo differs");
}

#[tokio::test]
async fn echo_four_mebibytes_over_unix_and_tcp() {
    let broker = Broker::start("echo").await;
    let echo = plugin(&broker.unix, 1, Some("echo")).await;
    let server = serve_echo(echo);
    echo_round_trip(&broker.unix, "echo", 2, 4 << 20).await;
    echo_round_trip(&broker.tcp, "echo", 3, 4 << 20).await;
    server.abort();
    broker.stop().await;
}

#[tokio::test]
async fn names_list_and_watch() {
    let broker = Broker::start("names").await;
    let watcher = plugin(&broker.unix, 1, None).await;
    let mut events = watcher.watch().await.unwrap();
    assert_eq!(events.recv().await, Some(WatchEvent::Snapshot(vec![])));

    let alpha = plugin(&broker.unix, 2, Some("alpha")).await;
    let taken = Plugin::builder(keys(3))
        .broker_key(broker_keys().public())
        .name("alpha")
        .connect(&broker.unix)
        .await;
    assert_eq!(
        taken.err().and_then(|e| e.code()),
        Some(ErrorCode::NameTaken)
    );
    let standby = Plugin::builder(keys(4))
        .broker_key(broker_keys().public())
        .name("alpha")
        .wait_for_name()
        .connect(&broker.unix)
        .await
        .unwrap();

    let members = watcher.list().await.unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].key, keys(2).public());

    let Some(WatchEvent::Change {
        seq: 1,
        presence: Presence::Up(member),
    }) = events.recv().await
    else {
        panic!("no up event");
    };
    assert_eq!(member.name.as_str(), "alpha");
    drop(alpha);
    let Some(WatchEvent::Change {
        seq: 2,
        presence: Presence::OwnerChanged { new, .. },
    }) = events.recv().await
    else {
        panic!("no owner change");
    };
    assert_eq!(new.key, keys(4).public());
    drop(standby);
    assert!(matches!(
        events.recv().await,
        Some(WatchEvent::Change {
            seq: 3,
            presence: Presence::Down { .. }
        })
    ));
    broker.stop().await;
}

#[tokio::test]
async fn refusals_are_typed() {
    let broker = Broker::start("refusals").await;
    let client = plugin(&broker.unix, 1, None).await;
    let missing = client
        .open("nobody", "x")
        .await
        .err()
        .and_then(|e| e.code());
    assert_eq!(missing, Some(ErrorCode::NoSuchName));

    let picky = plugin(&broker.unix, 2, Some("picky")).await;
    let rejecter = tokio::spawn(async move {
        let incoming = picky.incoming().await.unwrap();
        assert_eq!(incoming.protocol, "rude");
        incoming.reject("no thanks").unwrap();
        picky
    });
    let err = client.open("picky", "rude").await.err().unwrap();
    assert_eq!(err.code(), Some(ErrorCode::Rejected));
    assert!(err.to_string().contains("no thanks"), "{err}");
    let _picky = rejecter.await.unwrap();

    let unreachable = Plugin::builder(keys(3))
        .connect("unix:/nonexistent/plugboard.sock")
        .await;
    assert!(matches!(
        unreachable,
        Err(plugboard_tokio::PluginError::Unreachable { .. })
    ));
    broker.stop().await;
}

#[tokio::test]
async fn a_killed_peer_resets_the_channel() {
    let broker = Broker::start("killed").await;
    let target = plugin(&broker.unix, 1, Some("fragile")).await;
    let client = plugin(&broker.unix, 2, None).await;
    let accept = tokio::spawn(async move {
        let channel = target.incoming().await.unwrap().accept().unwrap();
        (target, channel)
    });
    let mut channel = client.open("fragile", "x").await.unwrap();
    let (target, their_channel) = accept.await.unwrap();
    drop(target); // the plugin's connection goes away, its channel still open
    let mut buf = [0u8; 16];
    let err = channel.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    drop(their_channel);
    broker.stop().await;
}
