//! What the integration tests share: the mio broker on its own thread (unix
//! and TCP), test identities, tokio plugins, an echo plugin, a checked echo.
#![allow(dead_code)] // each test binary uses its own part

use std::path::PathBuf;
use std::time::Duration;

use plugboard_core::broker::{policy, BrokerConfig};
use plugboard_core::shs::HandshakeConfig;
use plugboard_core::Keypair;
use plugboard_mio::{Addr, Server, StopHandle};
use plugboard_tokio::Plugin;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A safety net, not a measurement.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The mio server, running on a thread of its own.
pub struct Broker {
    pub path: PathBuf,
    pub unix: String,
    pub tcp: String,
    stop: StopHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Broker {
    pub fn start(name: &str) -> Self {
        Self::start_with(name, |_| {})
    }

    pub fn start_with(name: &str, configure: impl FnOnce(&mut BrokerConfig)) -> Self {
        let path = sock_path(name);
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
        configure(&mut config);
        let server = Server::bind(
            config,
            &[Addr::Unix(path.clone()), Addr::Tcp("127.0.0.1:0".into())],
        )
        .unwrap();
        let addrs = server.local_addrs();
        let stop = server.stop_handle();
        let thread = std::thread::spawn(move || server.run().unwrap());
        Broker {
            path,
            unix: addrs[0].to_string(),
            tcp: addrs[1].to_string(),
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the server and waits for its thread.
    pub fn stop(mut self) {
        self.stop.stop();
        self.thread.take().unwrap().join().unwrap();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop.stop();
    }
}

pub fn sock_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("plugboard-mio-{}-{name}.sock", std::process::id()))
}

pub fn broker_keys() -> Keypair {
    Keypair::from_seed([0xB0; 32])
}

pub fn keys(seed: u8) -> Keypair {
    Keypair::from_seed([seed; 32])
}

/// A tokio plugin as `keys(seed)`, named or not.
pub async fn plugin(addr: &str, seed: u8, name: Option<&str>) -> Plugin {
    let mut builder = Plugin::builder(keys(seed)).broker_key(broker_keys().public());
    if let Some(name) = name {
        builder = builder.name(name);
    }
    tokio::time::timeout(PATIENCE, builder.connect(addr))
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

/// Writes `size` patterned bytes into `channel` and checks that the same
/// bytes come back.
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
    tokio::time::timeout(PATIENCE, rd.read_to_end(&mut back))
        .await
        .expect("the echo stalled")
        .unwrap();
    let _wr = writer.await.unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "the echo differs");
}
