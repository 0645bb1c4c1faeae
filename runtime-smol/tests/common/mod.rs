//! What the integration tests share: a smol broker on unix and TCP, test
//! identities, an echo plugin, a checked echo round trip, a safety net for
//! every wait.
#![allow(dead_code)] // each test binary uses its own part

use std::future::Future;
use std::time::Duration;

use async_io::Timer;
use futures_lite::{future, AsyncReadExt, AsyncWriteExt, StreamExt};
use plugboard_core::broker::{policy, BrokerConfig};
use plugboard_core::shs::HandshakeConfig;
use plugboard_core::Keypair;
use plugboard_smol::{Addr, Channel, Plugin, Server};

/// How long any one wait may take before the test fails: a safety net,
/// not a measurement.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Runs `fut`, failing the test if it takes longer than `limit`.
pub async fn within<T>(limit: Duration, fut: impl Future<Output = T>) -> T {
    future::or(fut, async {
        Timer::after(limit).await;
        panic!("still waiting after {limit:?}");
    })
    .await
}

/// Runs a test body on this thread, with [`PATIENCE`] as a safety net.
pub fn run<T>(fut: impl Future<Output = T>) -> T {
    smol::block_on(within(PATIENCE * 3, fut))
}

pub fn broker_keys() -> Keypair {
    Keypair::from_seed([0xB0; 32])
}

pub fn keys(seed: u8) -> Keypair {
    Keypair::from_seed([seed; 32])
}

/// A unix socket path of this test process.
pub fn sock_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("plugboard-smol-{}-{name}.sock", std::process::id()))
}

/// The broker's config for tests: over TCP only named keys are admitted,
/// so the test keys (seeds 1 to 9) are named.
pub fn config() -> BrokerConfig {
    let mut config = BrokerConfig::new(HandshakeConfig::new(broker_keys()));
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
    config
}

/// The smol server, on a unix socket and a TCP port, run on smol's
/// global executor.
pub struct Broker {
    pub unix: String,
    pub tcp: String,
    stop: Option<smol::channel::Sender<()>>,
    task: Option<smol::Task<()>>,
}

impl Broker {
    pub fn start(name: &str) -> Self {
        Self::start_with(name, config())
    }

    pub fn start_with(name: &str, config: BrokerConfig) -> Self {
        let addrs = [Addr::Unix(sock_path(name)), Addr::Tcp("127.0.0.1:0".into())];
        let server = Server::bind(config, &addrs).unwrap();
        let addrs = server.local_addrs();
        let (stop, stopped) = smol::channel::bounded::<()>(1);
        let task = smol::spawn(server.run(async move {
            let _ = stopped.recv().await;
        }));
        Broker {
            unix: addrs[0].to_string(),
            tcp: addrs[1].to_string(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        self.stop.take().unwrap().send(()).await.unwrap();
        within(PATIENCE, self.task.take().unwrap()).await;
    }
}

pub async fn plugin(addr: &str, seed: u8, name: Option<&str>) -> Plugin {
    let mut builder = Plugin::builder(keys(seed)).broker_key(broker_keys().public());
    if let Some(name) = name {
        builder = builder.name(name);
    }
    within(PATIENCE, builder.connect(addr)).await.unwrap()
}

/// An echo server on `plugin`: every incoming channel gets its bytes back.
/// Dropping the task drops the plugin.
pub fn serve_echo(plugin: Plugin) -> smol::Task<()> {
    smol::spawn(async move {
        let mut incoming = plugin.incoming();
        while let Some(offer) = incoming.next().await {
            smol::spawn(async move {
                let mut channel = offer.accept().await.unwrap();
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    let n = channel.read(&mut buf).await.unwrap();
                    if n == 0 {
                        channel.close().await.unwrap();
                        return;
                    }
                    channel.write_all(&buf[..n]).await.unwrap();
                }
            })
            .detach();
        }
    })
}

/// `size` bytes of a pattern through `channel` and back, checked byte for
/// byte; writing and reading at once.
pub async fn echo_through(channel: Channel, size: usize) {
    let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
    let (mut rd, mut wr) = futures_lite::io::split(channel);
    let sent = data.clone();
    let writer = smol::spawn(async move {
        wr.write_all(&sent).await.unwrap();
        wr.close().await.unwrap();
        wr
    });
    let mut back = Vec::with_capacity(size);
    within(PATIENCE, rd.read_to_end(&mut back)).await.unwrap();
    let _wr = within(PATIENCE, writer).await;
    assert_eq!(back.len(), data.len());
    assert!(back == data, "the echo differs");
}
