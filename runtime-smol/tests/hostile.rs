//! Hostile input at the smol broker's socket, while an honest transfer runs
//! beside it: every attacker is refused or cut, the transfer completes.

mod common;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_io::Async;
use bytes::BytesMut;
use common::{broker_keys, run, within, PATIENCE};
use futures_lite::{AsyncReadExt, AsyncWriteExt, StreamExt};
use plugboard_core::broker::BrokerConfig;
use plugboard_core::mux::{frame, Frame};
use plugboard_core::shs::{ClientHandshake, Event, HandshakeConfig};
use plugboard_core::{Instant, Keypair, NetworkKey};
use plugboard_smol::{Addr, Plugin, PluginError, Server};

/// A broker on a unix socket only; dropping the sender stops it.
fn start(
    name: &str,
    configure: impl FnOnce(&mut BrokerConfig),
) -> (PathBuf, smol::channel::Sender<()>, smol::Task<()>) {
    let path = common::sock_path(&format!("hostile-{name}"));
    let mut config = BrokerConfig::new(HandshakeConfig::new(broker_keys()));
    configure(&mut config);
    let server = Server::bind(config, &[Addr::Unix(path.clone())]).unwrap();
    let (stop, stopped) = smol::channel::bounded::<()>(1);
    let task = smol::spawn(server.run(async move {
        let _ = stopped.recv().await;
    }));
    (path, stop, task)
}

async fn connect_raw(path: &Path) -> Async<UnixStream> {
    Async::<UnixStream>::connect(path).await.unwrap()
}

/// Reads until the broker closes the connection; returns what it sent.
async fn until_closed(stream: &mut Async<UnixStream>) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match within(PATIENCE, stream.read(&mut buf)).await {
            Ok(0) | Err(_) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
}

/// An honest plugin's handshake on a raw stream; returns the stream ready
/// for mux frames (unix: plain).
async fn handshaken(path: &Path, seed: u8) -> Async<UnixStream> {
    let mut stream = connect_raw(path).await;
    let config = Arc::new(HandshakeConfig::new(Keypair::from_seed([seed; 32])));
    let mut hs = ClientHandshake::new(
        config,
        broker_keys().public(),
        &mut rand_core::OsRng,
        Instant::ZERO,
    )
    .unwrap();
    let mut buf = [0u8; 256];
    loop {
        while let Some(bytes) = hs.poll_transmit() {
            stream.write_all(&bytes).await.unwrap();
        }
        if let Some(Event::Established(_)) = hs.poll_event() {
            return stream;
        }
        let n = within(PATIENCE, stream.read(&mut buf)).await.unwrap();
        hs.handle_input(Instant::ZERO, &buf[..n]).unwrap();
    }
}

fn control_frame(message: &plugboard_core::control::Message) -> BytesMut {
    let mut body = BytesMut::new();
    plugboard_core::control::encode(message, &mut body);
    let mut out = BytesMut::new();
    frame::encode(
        &Frame::Data {
            channel: 0,
            fin: false,
            payload: body.freeze(),
        },
        &mut out,
    );
    out
}

fn hello_frame() -> BytesMut {
    control_frame(&plugboard_core::control::Message::ClientHello {
        min_version: 1,
        max_version: 1,
        features: 0,
    })
}

#[test]
fn attackers_are_cut_and_an_honest_transfer_completes() {
    run(async {
        let (path, stop, server) = start("mix", |c| {
            c.limits.handshake_timeout = std::time::Duration::from_millis(300);
            c.limits.max_connections_per_key = 8;
            c.limits.max_control_queue = 64 * 1024;
        });
        let addr = format!("unix:{}", path.display());
        let connect = |seed: u8, name: Option<&'static str>| {
            let addr = addr.clone();
            async move {
                let mut b = Plugin::builder(Keypair::from_seed([seed; 32]))
                    .broker_key(broker_keys().public());
                if let Some(name) = name {
                    b = b.name(name);
                }
                within(PATIENCE, b.connect(&addr)).await
            }
        };

        // The honest transfer: 8 MiB through an echo, beside everything else.
        let echo = connect(1, Some("echo")).await.unwrap();
        let echo_task = common::serve_echo(echo);
        let client = connect(2, None).await.unwrap();
        let transfer = smol::spawn(async move {
            let channel = client.open("echo", "echo").await.unwrap();
            let (mut rd, mut wr) = futures_lite::io::split(channel);
            let data: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 241) as u8).collect();
            let sent = data.clone();
            let writer = smol::spawn(async move {
                wr.write_all(&sent).await.unwrap();
                wr.close().await.unwrap();
                wr
            });
            let mut back = Vec::new();
            rd.read_to_end(&mut back).await.unwrap();
            let _wr = writer.await;
            assert!(back == data, "the honest transfer was damaged");
            client
        });

        // Wrong network key: closed after message 1, nothing sent back.
        let mut wrong = connect_raw(&path).await;
        let mut config = HandshakeConfig::new(Keypair::from_seed([3; 32]));
        config.network_key = NetworkKey([7; 32]);
        let mut hs = ClientHandshake::new(
            Arc::new(config),
            broker_keys().public(),
            &mut rand_core::OsRng,
            Instant::ZERO,
        )
        .unwrap();
        wrong.write_all(&hs.poll_transmit().unwrap()).await.unwrap();
        assert!(until_closed(&mut wrong).await.is_empty());

        // Garbage.
        let mut garbage = connect_raw(&path).await;
        garbage.write_all(&[0x42; 300]).await.unwrap();
        assert!(until_closed(&mut garbage).await.is_empty());

        // A truncated handshake, then silence: the deadline closes it.
        let mut stall = connect_raw(&path).await;
        stall.write_all(&[0x42; 30]).await.unwrap();
        assert!(until_closed(&mut stall).await.is_empty());

        // An oversized frame after the hello: GOAWAY, then closed.
        let mut big = handshaken(&path, 4).await;
        big.write_all(&hello_frame()).await.unwrap();
        let mut header = BytesMut::new();
        frame::encode_data_header(1, false, 1 << 20, &mut header);
        big.write_all(&header).await.unwrap();
        let said = until_closed(&mut big).await;
        assert!(
            String::from_utf8_lossy(&said).contains("frame payload"),
            "no GOAWAY reason"
        );

        // Data on a channel never opened: cut with a reason.
        let mut greedy = handshaken(&path, 5).await;
        greedy.write_all(&hello_frame()).await.unwrap();
        let mut out = BytesMut::new();
        frame::encode(
            &Frame::Data {
                channel: 9,
                fin: false,
                payload: vec![1u8; 100].into(),
            },
            &mut out,
        );
        greedy.write_all(&out).await.unwrap();
        let said = until_closed(&mut greedy).await;
        assert!(String::from_utf8_lossy(&said).contains("never opened"));

        // Many connections from one key: beyond the per-key limit they are
        // cut in the handshake.
        let mut crowd = Vec::new();
        let mut refused = 0;
        for _ in 0..40 {
            match connect(6, None).await {
                Ok(plugin) => crowd.push(plugin),
                Err(_) => refused += 1,
            }
        }
        assert_eq!(crowd.len(), 8);
        assert_eq!(refused, 32);

        let client = within(PATIENCE, transfer).await;
        drop(client);
        drop(echo_task);
        drop(stop);
        within(PATIENCE, server).await;
        assert!(!path.exists(), "the socket file stayed");
    });
}

#[test]
fn a_watcher_that_never_reads_is_cut() {
    run(async {
        let (path, stop, server) = start("deaf", |c| c.limits.max_control_queue = 8 * 1024);
        // A watcher that sends its watch and never reads again.
        let mut deaf = handshaken(&path, 1).await;
        deaf.write_all(&hello_frame()).await.unwrap();
        let watch = control_frame(&plugboard_core::control::Message::Watch { request: 1 });
        deaf.write_all(&watch).await.unwrap();
        // Names come and go; the watcher asked for every change and reads
        // none. Once the kernel's buffer is full, the broker's queue grows
        // past 8 KiB and the watcher is cut. The broker's own key may ask
        // for stats.
        let addr = format!("unix:{}", path.display());
        let owner = within(PATIENCE, Plugin::builder(broker_keys()).connect(&addr))
            .await
            .unwrap();
        let deaf_key = Keypair::from_seed([1; 32]).public();
        let present = owner
            .stats()
            .await
            .unwrap()
            .keys
            .iter()
            .any(|k| k.key == deaf_key);
        assert!(present, "the watcher is connected before the churn");
        let mut churn = 0u32;
        let cut = loop {
            let name = format!("name-{churn:0>200}");
            let plugin = within(
                PATIENCE,
                Plugin::builder(Keypair::from_seed([2; 32]))
                    .broker_key(broker_keys().public())
                    .name(&name)
                    .connect(&addr),
            )
            .await
            .unwrap();
            drop(plugin);
            churn += 1;
            if churn % 25 == 0 {
                let stats = owner.stats().await.unwrap();
                if !stats.keys.iter().any(|k| k.key == deaf_key) {
                    break true;
                }
            }
            if churn > 20_000 {
                break false;
            }
        };
        assert!(cut, "the deaf watcher was never cut ({churn} changes)");
        // Its socket is closed too, although it never read: the broker
        // gives up on its last words (the end of the stream comes once
        // the kernel's buffer is read).
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match within(PATIENCE, deaf.read(&mut buf)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        // The owner's watch ends with the server; its requests then say so.
        let mut watch = owner.watch().await.unwrap();
        drop(stop);
        within(PATIENCE, server).await;
        while within(PATIENCE, watch.next()).await.is_some() {}
        assert!(matches!(
            owner.list().await,
            Err(PluginError::Disconnected(_))
        ));
    });
}
