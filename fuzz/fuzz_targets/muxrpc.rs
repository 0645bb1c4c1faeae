//! muxrpc under arbitrary peer bytes in arbitrary splits, with an
//! application that calls, answers, streams, ends and closes as the input
//! says, and sometimes does not read its events. Oracles: no panic; every
//! packet the decoder yields encodes back to the bytes it came from; what
//! the session holds stays within its bounds; nothing follows `Closed`; what
//! it writes is packet-stream with no empty body and nothing after its
//! goodbye.
#![no_main]

use arbitrary::Arbitrary;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use plugboard_core::muxrpc::{
    encode, Body, CallKind, Config, Decoded, Event, PacketDecoder, ReqId, RpcError, Session,
};
use serde_json::json;

#[derive(Arbitrary, Debug)]
enum Action {
    Feed(u16),
    Call(u8),
    Send(u8),
    End(u8, bool),
    Respond(u8, bool),
    TakeEvents(u8),
    Close,
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    actions: Vec<Action>,
    stream: &'a [u8],
}

const MAX_BODY: usize = 256;
const MAX_BUFFERED: usize = 2048;

fn kind(n: u8) -> CallKind {
    [
        CallKind::Async,
        CallKind::Source,
        CallKind::Sink,
        CallKind::Duplex,
    ][usize::from(n % 4)]
}

fuzz_target!(|input: Input| {
    // The decoder alone: what it accepts re-encodes to the same bytes.
    let mut decoder = PacketDecoder::new(MAX_BODY);
    let mut rest = input.stream;
    loop {
        let before = rest;
        match decoder.decode(&mut rest) {
            Ok(Some(Decoded::Packet(packet))) => {
                let mut out = BytesMut::new();
                encode(&packet, &mut out).expect("a decoded body is not empty");
                assert_eq!(&out[..], &before[..before.len() - rest.len()]);
            }
            Ok(Some(Decoded::Goodbye)) | Ok(None) | Err(_) => break,
        }
    }

    let mut config = Config::new(json!({"a": "async", "s": "source", "k": "sink", "d": "duplex"}));
    config.max_body = MAX_BODY;
    config.max_buffered = MAX_BUFFERED;
    config.max_stream_buffer = 512;
    config.max_open = 8;
    let mut session = Session::new(config);
    let mut ids: Vec<ReqId> = Vec::new();
    let mut closed = false;
    let mut wrote = Vec::new();
    let mut rest = input.stream;
    for action in input
        .actions
        .iter()
        .chain([Action::Feed(u16::MAX), Action::TakeEvents(255)].iter())
    {
        let pick = |n: u8| (!ids.is_empty()).then(|| ids[usize::from(n) % ids.len()]);
        match *action {
            Action::Feed(n) => {
                let (now, later) = rest.split_at(usize::from(n).min(rest.len()));
                rest = later;
                session.handle_input(now);
                assert!(session.held() <= MAX_BUFFERED + MAX_BODY + 9 + MAX_BODY);
            }
            Action::Call(n) => {
                if let Ok(id) = session.call(kind(n), &["a"], json!([n])) {
                    ids.push(id);
                }
            }
            Action::Send(n) => {
                if let Some(id) = pick(n) {
                    let _ = session.send(id, Body::binary(vec![n; usize::from(n) + 1]));
                }
            }
            Action::End(n, error) => {
                if let Some(id) = pick(n) {
                    let result = match error {
                        true => Err(RpcError::new("no")),
                        false => Ok(()),
                    };
                    let _ = session.end(id, result);
                }
            }
            Action::Respond(n, error) => {
                if let Some(id) = pick(n) {
                    let result = match error {
                        true => Err(RpcError::new("no")),
                        false => Ok(Body::text("yes")),
                    };
                    let _ = session.respond(id, result);
                }
            }
            Action::TakeEvents(n) => {
                for _ in 0..n {
                    let Some(event) = session.poll_event() else {
                        break;
                    };
                    assert!(!closed, "an event after Closed: {event:?}");
                    match event {
                        Event::Request { id, .. } => {
                            assert!(!id.is_ours());
                            ids.push(id);
                        }
                        Event::Closed(_) => closed = true,
                        _ => {}
                    }
                }
            }
            Action::Close => session.close(),
        }
        while let Some(bytes) = session.poll_transmit() {
            wrote.extend_from_slice(&bytes);
        }
    }

    // What it wrote is packet-stream, each body non-empty, the goodbye last.
    let mut check = PacketDecoder::new(usize::MAX);
    let mut out = &wrote[..];
    loop {
        match check
            .decode(&mut out)
            .expect("the session writes packet-stream")
        {
            Some(Decoded::Packet(packet)) => assert!(!packet.body.bytes.is_empty()),
            Some(Decoded::Goodbye) => {
                assert!(out.is_empty(), "bytes after the goodbye");
                break;
            }
            None => {
                assert!(out.is_empty(), "a packet cut short");
                break;
            }
        }
    }
});
