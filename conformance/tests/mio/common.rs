//! What the mio tests share: the suite's mio broker (on a thread of its
//! own, unix and TCP) and test identities, tokio plugins, an echo plugin, a
//! checked echo.
#![allow(dead_code)] // each test binary uses its own part

use std::path::PathBuf;
use std::time::Duration;

use plugboard_conformance::api::{Compat, TokioApi};
use plugboard_conformance::broker::{socket_path, start, MioBroker, Running};
pub use plugboard_conformance::{broker_keys, keys};
use plugboard_tokio::Plugin;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A safety net, not a measurement.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The mio server: the conformance suite's, every test key 1–60 admitted
/// over TCP too. Stopping it (or dropping it) waits for its thread.
pub struct Broker;

impl Broker {
    pub fn start(name: &str) -> Running {
        start::<MioBroker>(name, |_| {})
    }
}

pub fn sock_path(name: &str) -> PathBuf {
    socket_path::<MioBroker>(name)
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

/// Writes `size` bytes into `channel` while reading, and checks that the
/// same bytes come back.
pub async fn echo_through(channel: plugboard_tokio::Channel, size: usize) {
    let size = size as u64;
    let echoed =
        plugboard_conformance::stream::echo_through::<TokioApi>(Compat(channel), size, size);
    tokio::time::timeout(PATIENCE, echoed)
        .await
        .expect("the echo stalled")
}
