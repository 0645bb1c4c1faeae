//! Hostile input at the broker's socket, while an honest transfer runs beside
//! it: every attacker is refused or cut, the transfer completes.

use std::time::Duration;

use bytes::BytesMut;
use plugboard_core::broker::BrokerConfig;
use plugboard_core::mux::{frame, Frame};
use plugboard_core::shs::{ClientHandshake, Event, HandshakeConfig};
use plugboard_core::{Keypair, NetworkKey};
use plugboard_tokio::{Addr, Plugin, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

fn broker_keys() -> Keypair {
    Keypair::from_seed([0xB0; 32])
}

async fn start(
    name: &str,
    configure: impl FnOnce(&mut BrokerConfig),
) -> (std::path::PathBuf, tokio::sync::oneshot::Sender<()>) {
    let path = std::env::temp_dir().join(format!(
        "plugboard-hostile-{}-{name}.sock",
        std::process::id()
    ));
    let mut config = BrokerConfig::new(HandshakeConfig::new(broker_keys()));
    configure(&mut config);
    let server = Server::bind(config, &[Addr::Unix(path.clone())])
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    (path, stop)
}

/// Reads until the broker closes the connection; returns what it sent.
async fn until_closed(stream: &mut UnixStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return all,
            Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the broker did not close the connection"),
        }
    }
}

/// An honest plugin's handshake on a raw stream; returns the stream ready
/// for mux frames (unix: plain).
async fn handshaken(path: &std::path::Path, seed: u8) -> UnixStream {
    let mut stream = UnixStream::connect(path).await.unwrap();
    let config = std::sync::Arc::new(HandshakeConfig::new(Keypair::from_seed([seed; 32])));
    let mut hs = ClientHandshake::new(
        config,
        broker_keys().public(),
        &mut rand_core::OsRng,
        plugboard_core::Instant::ZERO,
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
        let n = stream.read(&mut buf).await.unwrap();
        hs.handle_input(plugboard_core::Instant::ZERO, &buf[..n])
            .unwrap();
    }
}

fn hello_frame() -> BytesMut {
    let mut body = BytesMut::new();
    plugboard_core::control::encode(
        &plugboard_core::control::Message::ClientHello {
            min_version: 1,
            max_version: 1,
            features: 0,
        },
        &mut body,
    );
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

#[tokio::test]
async fn attackers_are_cut_and_an_honest_transfer_completes() {
    let (path, stop) = start("mix", |c| {
        c.limits.handshake_timeout = Duration::from_millis(300);
        c.limits.max_connections_per_key = 8;
        c.limits.max_control_queue = 64 * 1024;
    })
    .await;
    let addr = format!("unix:{}", path.display());
    let connect = |seed: u8, name: Option<&'static str>| {
        let addr = addr.clone();
        async move {
            let mut b =
                Plugin::builder(Keypair::from_seed([seed; 32])).broker_key(broker_keys().public());
            if let Some(name) = name {
                b = b.name(name);
            }
            b.connect(&addr).await
        }
    };

    // The honest transfer: 8 MiB through an echo, beside everything else.
    let echo = connect(1, Some("echo")).await.unwrap();
    let echo_task = tokio::spawn(async move {
        while let Some(incoming) = echo.incoming().await {
            let mut channel = incoming.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = channel.read(&mut buf).await.unwrap();
                    if n == 0 {
                        let _ = channel.shutdown().await;
                        return;
                    }
                    channel.write_all(&buf[..n]).await.unwrap();
                }
            });
        }
    });
    let client = connect(2, None).await.unwrap();
    let transfer = tokio::spawn(async move {
        let channel = client.open("echo", "echo").await.unwrap();
        let (mut rd, mut wr) = tokio::io::split(channel);
        let data: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 241) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            wr.write_all(&sent).await.unwrap();
            wr.shutdown().await.unwrap();
            wr
        });
        let mut back = Vec::new();
        rd.read_to_end(&mut back).await.unwrap();
        let _wr = writer.await.unwrap();
        assert!(back == data, "the honest transfer was damaged");
        client
    });

    // Wrong network key: closed after message 1, nothing sent back.
    let mut wrong = UnixStream::connect(&path).await.unwrap();
    let mut config = HandshakeConfig::new(Keypair::from_seed([3; 32]));
    config.network_key = NetworkKey([7; 32]);
    let mut hs = ClientHandshake::new(
        std::sync::Arc::new(config),
        broker_keys().public(),
        &mut rand_core::OsRng,
        plugboard_core::Instant::ZERO,
    )
    .unwrap();
    wrong.write_all(&hs.poll_transmit().unwrap()).await.unwrap();
    assert!(until_closed(&mut wrong).await.is_empty());

    // Garbage.
    let mut garbage = UnixStream::connect(&path).await.unwrap();
    garbage.write_all(&[0x42; 300]).await.unwrap();
    assert!(until_closed(&mut garbage).await.is_empty());

    // A truncated handshake, then silence: the deadline closes it.
    let mut stall = UnixStream::connect(&path).await.unwrap();
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

    // Data past credit on an opened channel: cut with a reason.
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

    // Many connections from one key: beyond the per-key limit they are cut in the handshake.
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

    let client = tokio::time::timeout(Duration::from_secs(60), transfer)
        .await
        .unwrap()
        .unwrap();
    drop(client);
    echo_task.abort();
    stop.send(()).unwrap();
}

#[tokio::test]
async fn a_watcher_that_never_reads_is_cut() {
    let (path, stop) = start("deaf", |c| c.limits.max_control_queue = 8 * 1024).await;
    // A watcher that sends its watch and never reads again.
    let mut deaf = handshaken(&path, 1).await;
    deaf.write_all(&hello_frame()).await.unwrap();
    let mut body = BytesMut::new();
    plugboard_core::control::encode(
        &plugboard_core::control::Message::Watch { request: 1 },
        &mut body,
    );
    let mut out = BytesMut::new();
    frame::encode(
        &Frame::Data {
            channel: 0,
            fin: false,
            payload: body.freeze(),
        },
        &mut out,
    );
    deaf.write_all(&out).await.unwrap();
    // Names come and go; the watcher asked for every change and reads none.
    // Once the kernel's buffer is full, the broker's queue grows past 8 KiB
    // and the watcher is cut. The broker's own key may ask for stats.
    let addr = format!("unix:{}", path.display());
    let owner = Plugin::builder(broker_keys()).connect(&addr).await.unwrap();
    let deaf_key = Keypair::from_seed([1; 32]).public();
    let present = owner
        .stats()
        .await
        .unwrap()
        .keys
        .iter()
        .any(|k| k.key == deaf_key);
    assert!(present, "the watcher is connected before the churn");
    let start = tokio::time::Instant::now();
    let mut churn = 0u32;
    let cut = loop {
        let name = format!("name-{churn:0>200}");
        let plugin = Plugin::builder(Keypair::from_seed([2; 32]))
            .broker_key(broker_keys().public())
            .name(&name)
            .connect(&addr)
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
        if start.elapsed() > Duration::from_secs(60) {
            break false;
        }
    };
    assert!(cut, "the deaf watcher was never cut ({churn} changes)");
    drop(deaf);
    stop.send(()).unwrap();
}
