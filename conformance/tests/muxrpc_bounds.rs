//! `plugboard_runtime::muxrpc` against a raw peer that floods a stream the
//! application does not read: the stream ends with `Flooded`, the peer is
//! told, and a call beside it still gets its answer. (The helper is the
//! same on every runtime: tested once, on smol.)

use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use plugboard_core::muxrpc::{encode, Body, Decoded, Packet, PacketDecoder, RpcError};
use plugboard_smol::muxrpc::{self, CallError, Config, Error};
use serde_json::json;
use smol::net::unix::UnixStream;

/// Reads packets until `want` says stop; returns them all.
async fn read_until(
    peer: &mut UnixStream,
    decoder: &mut PacketDecoder,
    want: impl Fn(&Packet) -> bool,
) -> Vec<Packet> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let n = peer.read(&mut buf).await.unwrap();
        assert!(n > 0, "the session hung up");
        let mut input = &buf[..n];
        while let Some(Decoded::Packet(packet)) = decoder.decode(&mut input).unwrap() {
            let done = want(&packet);
            got.push(packet);
            if done {
                return got;
            }
        }
    }
}

fn wire(packets: &[Packet]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for packet in packets {
        encode(packet, &mut out).unwrap();
    }
    out.to_vec()
}

#[test]
fn a_flooded_stream_ends_and_a_call_beside_it_is_answered() {
    smol::block_on(async {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let mut config = Config::new(json!({}));
        config.max_stream_buffer = 10_000;
        let (rpc, _calls, driver) = muxrpc::connect(ours, config);
        let driver = smol::spawn(driver);
        let mut flood = rpc.source(&["flood"], json!([])).unwrap();
        let rpc2 = rpc.clone();
        let ping = smol::spawn(async move { rpc2.call(&["ping"], json!([])).await });

        let mut decoder = PacketDecoder::new(1 << 20);
        let requests = read_until(&mut peer, &mut decoder, |p| p.req == 2).await;
        assert_eq!(requests.len(), 2);
        // 100 KB on the stream the application does not read, then the
        // answer to the ping.
        let mut packets: Vec<Packet> = (0..100)
            .map(|_| Packet {
                req: -1,
                stream: true,
                end: false,
                body: Body::binary(vec![7u8; 1000]),
            })
            .collect();
        packets.push(Packet {
            req: -2,
            stream: false,
            end: false,
            body: Body::text("pong"),
        });
        peer.write_all(&wire(&packets)).await.unwrap();

        assert_eq!(ping.await.unwrap(), Body::text("pong"));
        // The peer was told, with an error end on the stream.
        let told = read_until(&mut peer, &mut decoder, |p| p.req == 1 && p.end).await;
        let end = told.last().unwrap();
        assert!(end.stream);
        assert!(RpcError::from_body(&end.body)
            .message
            .contains("stream buffer full"));
        // What the stream held is read, then the flood, then nothing.
        let mut read = 0;
        loop {
            match flood.recv().await {
                Some(Ok(body)) => read += body.bytes.len(),
                Some(Err(Error::Call(CallError::Flooded))) => break,
                other => panic!("expected data or the flood, got {other:?}"),
            }
        }
        assert!((10_000..=11_000).contains(&read), "{read} bytes held");
        assert_eq!(flood.recv().await, None);

        // The peer ends its side and says goodbye; the session is over.
        let mut bye = wire(&[Packet {
            req: -1,
            stream: true,
            end: true,
            body: Body::json(&json!(true)),
        }]);
        bye.extend_from_slice(&[0; 9]);
        peer.write_all(&bye).await.unwrap();
        drop(flood);
        assert_eq!(rpc.close().await, Ok(()));
        assert_eq!(driver.await, Ok(()));
    });
}

#[test]
fn a_dropped_driver_ends_every_call_waiting_on_it() {
    smol::block_on(async {
        let (ours, _peer) = UnixStream::pair().unwrap();
        let (rpc, mut calls, driver) = muxrpc::connect(ours, Config::new(json!({})));
        let rpc2 = rpc.clone();
        let waiting = smol::spawn(async move { rpc2.call(&["never"], json!([])).await });
        let driver = smol::spawn(driver);
        // Let the call go out, then cancel the driver's task.
        smol::Timer::after(std::time::Duration::from_millis(50)).await;
        driver.cancel().await;
        assert_eq!(waiting.await, Err(Error::Call(CallError::Ended)));
        assert!(calls.next().await.is_none());
        assert!(rpc.close().await.is_err());
    });
}

#[test]
fn calls_nobody_takes_are_refused() {
    smol::block_on(async {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let (_rpc, calls, driver) = muxrpc::connect(ours, Config::new(json!({"add": "async"})));
        let _driver = smol::spawn(driver);
        drop(calls);
        let call = json!({"name": ["add"], "args": [1, 2]});
        peer.write_all(&wire(&[Packet {
            req: 1,
            stream: false,
            end: false,
            body: Body::json(&call),
        }]))
        .await
        .unwrap();
        let mut decoder = PacketDecoder::new(1 << 20);
        let answer = read_until(&mut peer, &mut decoder, |p| p.req == -1).await;
        let answer = answer.last().unwrap();
        assert!(answer.end);
        assert_eq!(
            RpcError::from_body(&answer.body).message,
            "nobody takes calls here"
        );
    });
}
