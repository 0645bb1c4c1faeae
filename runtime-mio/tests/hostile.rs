//! Hostile input at the mio server while an honest transfer runs beside it:
//! every attacker is refused or cut, the transfer completes.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::{broker_keys, keys, plugin, serve_echo, Broker, PATIENCE};
use plugboard_core::control::{self, Message};
use plugboard_core::mux::{frame, Frame};
use plugboard_core::shs::{ClientHandshake, Event, HandshakeConfig};
use plugboard_core::{Instant, Keypair, NetworkKey};
use plugboard_tokio::Plugin;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Reads until the broker closes the connection; returns what it sent.
async fn until_closed(stream: &mut UnixStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return all,
            Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the broker did not close the connection"),
        }
    }
}

/// An honest handshake on a raw stream, as `keys(seed)`; returns the stream
/// ready for plain mux frames.
async fn handshaken(path: &std::path::Path, seed: u8) -> UnixStream {
    let mut stream = UnixStream::connect(path).await.unwrap();
    let config = std::sync::Arc::new(HandshakeConfig::new(keys(seed)));
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
        let n = stream.read(&mut buf).await.unwrap();
        hs.handle_input(Instant::ZERO, &buf[..n]).unwrap();
    }
}

/// A control message as a frame on channel 0.
fn control_frame(message: &Message) -> BytesMut {
    let mut body = BytesMut::new();
    control::encode(message, &mut body);
    let mut out = BytesMut::new();
    let payload = body.freeze();
    frame::encode(
        &Frame::Data {
            channel: 0,
            fin: false,
            payload,
        },
        &mut out,
    );
    out
}

fn hello() -> BytesMut {
    control_frame(&Message::ClientHello {
        min_version: 1,
        max_version: 1,
        features: 0,
    })
}

#[tokio::test]
async fn attackers_are_cut_and_an_honest_transfer_completes() {
    let broker = Broker::start_with("mix", |c| {
        c.limits.handshake_timeout = Duration::from_millis(300);
    });
    let path = broker.path.clone();
    let echo = serve_echo(plugin(&broker.unix, 1, Some("echo")).await);
    let client = plugin(&broker.unix, 2, None).await;
    let transfer = tokio::spawn(async move {
        let channel = client.open("echo", "echo").await.unwrap();
        common::echo_through(channel, 8 << 20).await;
        client
    });

    // Wrong network key: closed after message 1, nothing sent back.
    let mut wrong = UnixStream::connect(&path).await.unwrap();
    let mut config = HandshakeConfig::new(keys(3));
    config.network_key = NetworkKey([7; 32]);
    let mut hs = ClientHandshake::new(
        std::sync::Arc::new(config),
        broker_keys().public(),
        &mut rand_core::OsRng,
        Instant::ZERO,
    )
    .unwrap();
    wrong.write_all(&hs.poll_transmit().unwrap()).await.unwrap();
    assert!(until_closed(&mut wrong).await.is_empty());
    // The same through the plugin API: refused.
    let refused = Plugin::builder(keys(3))
        .broker_key(broker_keys().public())
        .network_key(NetworkKey([7; 32]))
        .connect(&broker.unix)
        .await;
    assert!(refused.is_err());

    // Garbage.
    let mut garbage = UnixStream::connect(&path).await.unwrap();
    garbage.write_all(&[0x42; 300]).await.unwrap();
    assert!(until_closed(&mut garbage).await.is_empty());

    // A truncated handshake, then silence: the deadline closes it.
    let mut stall = UnixStream::connect(&path).await.unwrap();
    stall.write_all(&[0x42; 30]).await.unwrap();
    assert!(until_closed(&mut stall).await.is_empty());

    // An oversized frame after the hello: the last words (a GOAWAY that
    // says why) are written before the close.
    let mut big = handshaken(&path, 4).await;
    big.write_all(&hello()).await.unwrap();
    let mut header = BytesMut::new();
    frame::encode_data_header(1, false, 1 << 20, &mut header);
    big.write_all(&header).await.unwrap();
    let said = until_closed(&mut big).await;
    assert!(
        String::from_utf8_lossy(&said).contains("frame payload"),
        "no GOAWAY reason"
    );

    let client = tokio::time::timeout(PATIENCE, transfer)
        .await
        .unwrap()
        .unwrap();
    // Everyone honest still works.
    assert_eq!(client.list().await.unwrap().len(), 1);
    echo.abort();
    broker.stop();
}

#[tokio::test]
async fn a_watcher_that_never_reads_is_cut() {
    let broker = Broker::start_with("deaf", |c| c.limits.max_control_queue = 8 * 1024);
    // A watcher that sends its watch and never reads again.
    let mut deaf = handshaken(&broker.path, 1).await;
    deaf.write_all(&hello()).await.unwrap();
    deaf.write_all(&control_frame(&Message::Watch { request: 1 }))
        .await
        .unwrap();
    // Names come and go; once the kernel's buffer is full, the broker's
    // queue for the watcher grows past 8 KiB and it is cut. The socket
    // the loop could not write to must not stall anyone else.
    let owner = Plugin::builder(broker_keys())
        .connect(&broker.unix)
        .await
        .unwrap();
    let deaf_key = Keypair::from_seed([1; 32]).public();
    let mut churn = 0u32;
    loop {
        let name = format!("name-{churn:0>200}");
        drop(plugin(&broker.unix, 2, Some(&name)).await);
        churn += 1;
        if churn % 25 == 0 {
            let stats = owner.stats().await.unwrap();
            if !stats.keys.iter().any(|k| k.key == deaf_key) {
                break;
            }
        }
        assert!(churn < 20_000, "the deaf watcher was never cut");
    }
    // The loop goes on for everyone else.
    let client = plugin(&broker.unix, 3, None).await;
    assert!(client.list().await.is_ok());
    drop(deaf);
    broker.stop();
}
