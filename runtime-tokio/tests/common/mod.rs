//! What the integration tests share: a broker on unix and TCP, test
//! identities, an echo plugin, a checked echo round trip.
#![allow(dead_code)] // each test binary uses its own part

use std::time::Duration;

use plugboard_core::broker::{policy, BrokerConfig};
use plugboard_core::shs::HandshakeConfig;
use plugboard_core::Keypair;
use plugboard_tokio::plugin::Path;
use plugboard_tokio::{Addr, Plugin, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct Broker {
    pub unix: String,
    pub tcp: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Broker {
    pub async fn start(name: &str) -> Self {
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
                direct: vec![policy::Pattern::any()],
                list: true,
                watch: true,
                stats: false,
            })
            .collect();
        let server =
            Server::bind(config, &[Addr::Unix(path), Addr::Tcp("127.0.0.1:0".into())]).unwrap();
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

    pub async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.take().unwrap().await.unwrap();
    }
}

pub fn broker_keys() -> Keypair {
    Keypair::from_seed([0xB0; 32])
}

pub fn keys(seed: u8) -> Keypair {
    Keypair::from_seed([seed; 32])
}

pub async fn plugin(addr: &str, seed: u8, name: Option<&str>) -> Plugin {
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
pub fn serve_echo(plugin: Plugin) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(incoming) = plugin.incoming().await {
            tokio::spawn(async move {
                let mut channel = incoming.accept().await.unwrap();
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

pub async fn echo_round_trip(broker_addr: &str, target: &str, seed: u8, size: usize) {
    let client = plugin(broker_addr, seed, None).await;
    let channel = client.open(target, "echo").await.unwrap();
    assert_eq!(channel.path(), Path::Relayed);
    echo_through(channel, size).await;
}

/// This process's open descriptors (the broker runs in it too).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

pub async fn echo_through(channel: plugboard_tokio::Channel, size: usize) {
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
