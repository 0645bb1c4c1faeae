//! The broker under test: each adapter's server on a thread of its own, so
//! that the scenario's plugins (on whatever runtime) share nothing with it.

use std::path::PathBuf;

use plugboard_core::broker::{policy, BrokerConfig};

use crate::{broker_keys, keys};

/// A broker adapter: serve `config` on the unix socket `path` and on a TCP
/// port of loopback, until stopped.
pub trait Broker {
    /// For socket names and messages.
    const NAME: &'static str;
    /// Binds and starts serving; returns once both listeners are bound.
    fn serve(config: BrokerConfig, path: PathBuf) -> Running;
}

/// A broker serving on its own thread. Dropping it stops it (gracefully:
/// connections are told, the socket file is removed) and waits for it.
pub struct Running {
    /// `unix:PATH`.
    pub unix: String,
    /// `tcp:127.0.0.1:PORT`.
    pub tcp: String,
    /// The unix socket's path, for raw connections.
    pub path: PathBuf,
    stop: Option<Box<dyn FnOnce() + Send>>,
}

impl Running {
    /// A running broker at these addresses; `stop` stops it and waits.
    pub fn new(addrs: Vec<String>, path: PathBuf, stop: impl FnOnce() + Send + 'static) -> Self {
        let unix = addrs.iter().find(|a| a.starts_with("unix:"));
        let tcp = addrs.iter().find(|a| a.starts_with("tcp:"));
        Running {
            unix: unix.expect("a unix listener").clone(),
            tcp: tcp.expect("a tcp listener").clone(),
            path,
            stop: Some(Box::new(stop)),
        }
    }
}

impl Running {
    /// Stops the broker (gracefully) and waits for it; as dropping it does.
    pub fn stop(self) {
        drop(self)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
    }
}

/// Starts broker `B` for the scenario `name`, with the suite's defaults
/// ([`config`]), changed by `tweak`, on the unix socket
/// [`socket_path`]`::<B>(name)`: the same again for the same name.
pub fn start<B: Broker>(name: &str, tweak: impl FnOnce(&mut BrokerConfig)) -> Running {
    let mut config = config();
    tweak(&mut config);
    B::serve(config, socket_path::<B>(name))
}

/// [`start`] for scenario `name` run with plugin API `A`: one test binary
/// runs a scenario on one broker with every API at once, each on a socket
/// of its own.
pub fn start_for<B: Broker, A: crate::Api>(
    name: &str,
    tweak: impl FnOnce(&mut BrokerConfig),
) -> Running {
    start::<B>(&format!("{name}-{}", A::NAME), tweak)
}

/// Where [`start`] puts broker `B`'s unix socket for `name`: in the
/// temporary directory, named after this process.
pub fn socket_path<B: Broker>(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "plugboard-conformance-{}-{}-{name}.sock",
        B::NAME,
        std::process::id()
    ))
}

/// The suite's broker: the identity [`broker_keys`], and every test key
/// 1–60 ([`keys`]) may do anything, over TCP too.
pub fn config() -> BrokerConfig {
    let mut config = BrokerConfig::new(crate::handshake(broker_keys()));
    config.policy.keys = (1..=60)
        .map(|seed| policy::KeyGrant {
            id: keys(seed).public(),
            register: vec![policy::Pattern::any()],
            open: vec![policy::Pattern::any()],
            direct: vec![policy::Pattern::any()],
            list: true,
            watch: true,
            stats: true,
            monitor: false,
        })
        .collect();
    config
}

/// The tokio server, on a two-worker runtime.
pub struct TokioBroker;

impl Broker for TokioBroker {
    const NAME: &'static str = "tokio";

    fn serve(config: BrokerConfig, path: PathBuf) -> Running {
        use plugboard_tokio::{Addr, Server};
        let (addrs_tx, addrs_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let listen = [Addr::Unix(path.clone()), Addr::Tcp("127.0.0.1:0".into())];
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let server = Server::bind(config, &listen).expect("bind");
                let addrs = server.local_addrs().iter().map(|a| a.to_string()).collect();
                addrs_tx.send(addrs).expect("the test waits");
                server
                    .run(async {
                        let _ = stop_rx.await;
                    })
                    .await;
            });
        });
        let addrs = addrs_rx.recv().expect("the broker started");
        Running::new(addrs, path, move || {
            let _ = stop_tx.send(());
            thread.join().expect("the broker thread");
        })
    }
}

/// The mio server: one thread, one `mio::Poll`.
pub struct MioBroker;

impl Broker for MioBroker {
    const NAME: &'static str = "mio";

    fn serve(config: BrokerConfig, path: PathBuf) -> Running {
        use plugboard_mio::{Addr, Server};
        let listen = [Addr::Unix(path.clone()), Addr::Tcp("127.0.0.1:0".into())];
        let server = Server::bind(config, &listen).expect("bind");
        let addrs = server.local_addrs().iter().map(|a| a.to_string()).collect();
        let stop = server.stop_handle();
        let thread = std::thread::spawn(move || server.run().expect("the mio loop"));
        Running::new(addrs, path, move || {
            stop.stop();
            thread.join().expect("the broker thread");
        })
    }
}

/// The smol server, on smol's executor, driven from a thread of its own.
pub struct SmolBroker;

impl Broker for SmolBroker {
    const NAME: &'static str = "smol";

    fn serve(config: BrokerConfig, path: PathBuf) -> Running {
        use plugboard_smol::{Addr, Server};
        let listen = [Addr::Unix(path.clone()), Addr::Tcp("127.0.0.1:0".into())];
        let server = Server::bind(config, &listen).expect("bind");
        let addrs = server.local_addrs().iter().map(|a| a.to_string()).collect();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            smol::block_on(server.run(async {
                let _ = stop_rx.await;
            }))
        });
        Running::new(addrs, path, move || {
            let _ = stop_tx.send(());
            thread.join().expect("the broker thread");
        })
    }
}
