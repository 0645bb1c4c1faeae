//! Known answers from JS muxrpc 8.0.0 (`vectors/muxrpc_js.json`, recorded
//! by `interop/muxrpc-vectors.js`): the Rust session in the server's role
//! writes what the JS server wrote, byte for byte, and in the client's role
//! writes each call's packets as the JS client did and reads the JS
//! server's answers.

use std::collections::BTreeMap;

use plugboard_core::muxrpc::{
    Body, CallError, CallKind, Config, Decoded, Event, PacketDecoder, ReqId, RpcError, Session,
    GOODBYE,
};
use serde_json::{json, Value};

struct Transcript {
    manifest: Value,
    /// (from the client, bytes), in order.
    chunks: Vec<(bool, Vec<u8>)>,
}

fn load() -> Transcript {
    let path = format!(
        "{}/tests/vectors/muxrpc_js.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let file: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let chunks = file["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .map(|chunk| {
            let hex = chunk["hex"].as_str().unwrap();
            (chunk["from"] == "client", hex::decode(hex).unwrap())
        })
        .collect();
    Transcript {
        manifest: file["manifest"].clone(),
        chunks,
    }
}

fn the_error() -> RpcError {
    RpcError {
        name: "Error".into(),
        message: "nope".into(),
        stack: Some("Error: nope\n    at server".into()),
    }
}

/// The JS server's methods, as the Rust application answers them; whether
/// the session closed.
fn serve(
    server: &mut Session,
    streams: &mut BTreeMap<ReqId, String>,
    collected: &mut Vec<Body>,
) -> bool {
    while let Some(event) = server.poll_event() {
        match event {
            Event::Request { id, name, args, .. } => match name[0].as_str() {
                "whoami" => server
                    .respond(id, Ok(Body::json(&json!({"id": "@server"}))))
                    .unwrap(),
                "add" => {
                    let sum = args[0].as_i64().unwrap() + args[1].as_i64().unwrap();
                    server.respond(id, Ok(Body::json(&json!(sum)))).unwrap();
                }
                "fail" => server.respond(id, Err(the_error())).unwrap(),
                "count" => {
                    for n in 0..args[0].as_i64().unwrap() {
                        server.send(id, Body::json(&json!(n))).unwrap();
                    }
                    server.end(id, Ok(())).unwrap();
                }
                other => {
                    streams.insert(id, other.to_owned());
                }
            },
            Event::Data { id, body } => match streams[&id].as_str() {
                "echo" => server.send(id, body).unwrap(),
                _ => collected.push(body),
            },
            Event::End { result, .. } => assert_eq!(result, Ok(())),
            Event::Closed(result) => {
                assert_eq!(result, Ok(()));
                return true;
            }
            other => panic!("the server did not expect {other:?}"),
        }
    }
    false
}

fn drain(session: &mut Session) -> Vec<u8> {
    std::iter::from_fn(|| session.poll_transmit())
        .flatten()
        .collect()
}

#[test]
fn as_the_server_it_writes_what_the_js_server_wrote() {
    let transcript = load();
    let mut server = Session::new(Config::new(transcript.manifest.clone()));
    let (mut streams, mut collected) = (BTreeMap::new(), Vec::new());
    let (mut wrote, mut js_wrote) = (Vec::new(), Vec::new());
    let mut closed = false;
    for (from_client, bytes) in &transcript.chunks {
        match from_client {
            true => {
                assert!(!closed);
                server.handle_input(bytes);
                closed = serve(&mut server, &mut streams, &mut collected);
                wrote.extend(drain(&mut server));
            }
            false => js_wrote.extend_from_slice(bytes),
        }
    }
    // The JS server's goodbye never left it (see the vectors' README).
    js_wrote.extend_from_slice(&GOODBYE);
    assert_eq!(hex::encode(&wrote), hex::encode(&js_wrote));
    assert_eq!(collected, ["a", "b", "c"].map(Body::text));
    assert!(closed && server.is_closed());
}

/// Each request number's packets, in order, as bytes.
fn by_request(wire: &[u8]) -> (BTreeMap<i32, Vec<Vec<u8>>>, bool) {
    let mut decoder = PacketDecoder::new(1 << 20);
    let mut input = wire;
    let mut packets: BTreeMap<i32, Vec<Vec<u8>>> = BTreeMap::new();
    loop {
        let before = input;
        match decoder.decode(&mut input).unwrap() {
            Some(Decoded::Packet(packet)) => {
                let len = before.len() - input.len();
                packets
                    .entry(packet.req)
                    .or_default()
                    .push(before[..len].to_vec());
            }
            Some(Decoded::Goodbye) => return (packets, input.is_empty()),
            None => return (packets, false),
        }
    }
}

#[test]
fn as_the_client_it_writes_each_call_as_the_js_client_did() {
    let transcript = load();
    let mut client = Session::new(Config::new(json!({})));
    let manifest = client
        .call(CallKind::Async, &["manifest"], json!([]))
        .unwrap();
    let whoami = client
        .call(CallKind::Async, &["whoami"], json!([]))
        .unwrap();
    let add = client
        .call(CallKind::Async, &["add"], json!([1, 2]))
        .unwrap();
    let fail = client.call(CallKind::Async, &["fail"], json!([])).unwrap();
    let count = client
        .call(CallKind::Source, &["count"], json!([3]))
        .unwrap();
    let collect = client
        .call(CallKind::Sink, &["collect"], json!([]))
        .unwrap();
    for text in ["a", "b", "c"] {
        client.send(collect, Body::text(text)).unwrap();
    }
    client.end(collect, Ok(())).unwrap();
    let echo = client.call(CallKind::Duplex, &["echo"], json!([])).unwrap();
    for text in ["x", "y"] {
        client.send(echo, Body::text(text)).unwrap();
    }
    client.end(echo, Ok(())).unwrap();

    let mut events = Vec::new();
    let mut js_wrote = Vec::new();
    for (from_client, bytes) in &transcript.chunks {
        match from_client {
            true => js_wrote.extend_from_slice(bytes),
            false => {
                client.handle_input(bytes);
                events.extend(std::iter::from_fn(|| client.poll_event()));
            }
        }
    }
    client.close();
    let wrote = drain(&mut client);

    let data = |id, value: Value| Event::Data {
        id,
        body: Body::json(&value),
    };
    let end = |id| Event::End { id, result: Ok(()) };
    let response = |id, value: &Value| Event::Response {
        id,
        result: Ok(Body::json(value)),
    };
    let expected = vec![
        response(manifest, &transcript.manifest),
        response(whoami, &json!({"id": "@server"})),
        response(add, &json!(3)),
        Event::Response {
            id: fail,
            result: Err(CallError::Remote(the_error())),
        },
        data(count, json!(0)),
        data(count, json!(1)),
        data(count, json!(2)),
        end(count),
        end(collect),
        Event::Data {
            id: echo,
            body: Body::text("x"),
        },
        Event::Data {
            id: echo,
            body: Body::text("y"),
        },
        end(echo),
    ];
    assert_eq!(events, expected);

    let (mine, my_goodbye_last) = by_request(&wrote);
    let (theirs, their_goodbye_last) = by_request(&js_wrote);
    assert!(my_goodbye_last && their_goodbye_last);
    assert_eq!(
        mine.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>()
    );
    for (req, packets) in &theirs {
        if *req == manifest.0 {
            // muxrpc's bootstrap names `manifest` as a string, a call as a
            // path: both are requests for the same method.
            assert_eq!(packets.len(), 1);
            continue;
        }
        assert_eq!(
            mine[req].iter().map(hex::encode).collect::<Vec<_>>(),
            packets.iter().map(hex::encode).collect::<Vec<_>>(),
            "request {req}"
        );
    }
}
