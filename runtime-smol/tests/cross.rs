//! Across runtimes: smol plugins against the tokio server (run on a tokio
//! runtime in a thread of its own), and a tokio plugin against the smol
//! server. The wire is the same whatever runs either end.

mod common;

use std::thread;

use common::{broker_keys, config, echo_through, keys, plugin, run, serve_echo, within, PATIENCE};
use futures_lite::StreamExt;
use plugboard_core::control::{ErrorCode, Presence};
use plugboard_smol::{Path, Plugin, WatchEvent};

/// The tokio server on a unix socket and a TCP port, in its own thread.
struct TokioBroker {
    unix: String,
    tcp: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl TokioBroker {
    fn start(name: &str) -> Self {
        let path = common::sock_path(&format!("cross-{name}"));
        let (addrs_tx, addrs_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let addrs = [
                    plugboard_tokio::Addr::Unix(path),
                    plugboard_tokio::Addr::Tcp("127.0.0.1:0".into()),
                ];
                let server = plugboard_tokio::Server::bind(config(), &addrs)
                    .await
                    .unwrap();
                let bound: Vec<String> =
                    server.local_addrs().iter().map(|a| a.to_string()).collect();
                addrs_tx.send(bound).unwrap();
                server
                    .run(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        let addrs = addrs_rx.recv().unwrap();
        TokioBroker {
            unix: addrs[0].clone(),
            tcp: addrs[1].clone(),
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap();
    }
}

#[test]
fn smol_plugins_against_the_tokio_server() {
    let broker = TokioBroker::start("smol-plugins");
    run(async {
        let watcher = plugin(&broker.unix, 9, None).await;
        let mut events = watcher.watch().await.unwrap();
        assert_eq!(events.next().await, Some(WatchEvent::Snapshot(vec![])));

        let echo = plugin(&broker.unix, 1, Some("echo")).await;
        let echo_server = serve_echo(echo);
        let Some(WatchEvent::Change {
            seq: 1,
            presence: Presence::Up(member),
        }) = within(PATIENCE, events.next()).await
        else {
            panic!("no up event");
        };
        assert_eq!(member.name.as_str(), "echo");

        // Relayed over unix and TCP.
        let local = plugin(&broker.unix, 2, None).await;
        let remote = plugin(&broker.tcp, 3, None).await;
        echo_through(local.open("echo", "echo").await.unwrap(), 2 << 20).await;
        echo_through(remote.open("echo", "echo").await.unwrap(), 2 << 20).await;

        // A socketpair from the tokio broker.
        let channel = local.open_direct("echo", "echo").await.unwrap();
        assert_eq!(channel.path(), Path::SocketPair);
        echo_through(channel, 2 << 20).await;

        // Direct TCP to a smol listener, the opener on the broker's TCP.
        let far = Plugin::builder(keys(4))
            .broker_key(broker_keys().public())
            .name("far")
            .direct_listen("tcp:127.0.0.1:0")
            .connect(&broker.unix)
            .await
            .unwrap();
        let far_server = serve_echo(far);
        let channel = remote.open_direct("far", "echo").await.unwrap();
        assert_eq!(channel.path(), Path::Tcp);
        assert_eq!(channel.peer(), keys(4).public());
        echo_through(channel, 2 << 20).await;

        let missing = local.open("nobody", "x").await.unwrap_err();
        assert_eq!(missing.code(), Some(ErrorCode::NoSuchName));
        drop(far_server);
        drop(echo_server);
    });
    broker.stop();
}

#[test]
fn a_tokio_plugin_against_the_smol_server() {
    run(async {
        let broker = common::Broker::start("tokio-plugin");
        // A tokio echo plugin, on a tokio runtime in its own thread.
        let (ready_tx, ready_rx) = smol::channel::bounded::<()>(1);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let unix = broker.unix.clone();
        let thread = thread::spawn(move || {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let echo = plugboard_tokio::Plugin::builder(keys(1))
                    .broker_key(broker_keys().public())
                    .name("echo")
                    .connect(&unix)
                    .await
                    .unwrap();
                ready_tx.send(()).await.unwrap();
                let serve = async {
                    while let Some(offer) = echo.incoming().await {
                        tokio::spawn(async move {
                            let mut channel = offer.accept().await.unwrap();
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
                };
                tokio::select! {
                    _ = serve => {}
                    _ = stopped => {}
                }
            });
        });
        within(PATIENCE, ready_rx.recv()).await.unwrap();

        let local = plugin(&broker.unix, 2, None).await;
        let remote = plugin(&broker.tcp, 3, None).await;
        echo_through(local.open("echo", "echo").await.unwrap(), 2 << 20).await;
        echo_through(remote.open("echo", "echo").await.unwrap(), 2 << 20).await;
        let channel = local.open_direct("echo", "echo").await.unwrap();
        assert_eq!(channel.path(), Path::SocketPair);
        echo_through(channel, 2 << 20).await;

        stop.send(()).unwrap();
        thread.join().unwrap();
        broker.stop().await;
    });
}
