//! Two sessions talking, and peers that break the rules.

use bytes::BytesMut;
use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;

fn manifest() -> Value {
    json!({"whoami": "sync", "add": "async", "count": "source", "collect": "sink", "echo": "duplex"})
}

fn pair() -> (Session, Session) {
    (
        Session::new(Config::new(manifest())),
        Session::new(Config::new(manifest())),
    )
}

/// Moves bytes both ways until neither side has any.
fn pump(a: &mut Session, b: &mut Session) {
    loop {
        let mut moved = false;
        while let Some(bytes) = a.poll_transmit() {
            b.handle_input(&bytes);
            moved = true;
        }
        while let Some(bytes) = b.poll_transmit() {
            a.handle_input(&bytes);
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

/// `a` closes; with nothing open, both are done.
fn close(a: &mut Session, b: &mut Session) {
    a.close();
    pump(a, b);
    assert!(a.is_closed() && b.is_closed());
}

fn events(session: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| session.poll_event()).collect()
}

fn request(session: &mut Session) -> (ReqId, CallKind, Vec<String>, Value) {
    match session.poll_event() {
        Some(Event::Request {
            id,
            kind,
            name,
            args,
        }) => (id, kind, name, args),
        other => panic!("expected a request, got {other:?}"),
    }
}

fn wire(packets: &[Packet]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for packet in packets {
        encode(packet, &mut out).unwrap();
    }
    out.to_vec()
}

/// The peer's async calls of `method`, numbered `reqs`.
fn peer_calls(method: &str, reqs: std::ops::RangeInclusive<i32>) -> Vec<u8> {
    let call = json!({"name": [method], "args": []});
    let packets: Vec<Packet> = reqs
        .map(|req| json_packet(req, false, false, call.clone()))
        .collect();
    wire(&packets)
}

/// Every packet in what a session wrote.
fn packets(sent: &[u8]) -> Vec<Packet> {
    let mut decoder = PacketDecoder::new(DEFAULT_MAX_BODY);
    let mut input = sent;
    let mut out = Vec::new();
    while let Some(Decoded::Packet(packet)) = decoder.decode(&mut input).unwrap() {
        out.push(packet);
    }
    out
}

fn ok_end(id: ReqId) -> Event {
    Event::End { id, result: Ok(()) }
}

fn json_packet(req: i32, stream: bool, end: bool, value: Value) -> Packet {
    Packet {
        req,
        stream,
        end,
        body: Body::json(&value),
    }
}

#[test]
fn an_async_call_gets_its_answer() {
    let (mut a, mut b) = pair();
    let call = a.call(CallKind::Async, &["add"], json!([1, 2])).unwrap();
    pump(&mut a, &mut b);
    let (id, kind, name, args) = request(&mut b);
    assert_eq!(
        (kind, name, args),
        (CallKind::Async, vec!["add".into()], json!([1, 2]))
    );
    b.respond(id, Ok(Body::json(&json!(3)))).unwrap();
    pump(&mut a, &mut b);
    assert_eq!(
        events(&mut a),
        vec![Event::Response {
            id: call,
            result: Ok(Body::json(&json!(3)))
        }]
    );
    assert_eq!(
        b.respond(id, Ok(Body::text("again"))),
        Err(UseError::NotOpen(id))
    );
}

#[test]
fn an_error_answer_keeps_muxrpc_s_shape() {
    let (mut a, mut b) = pair();
    let call = a.call(CallKind::Async, &["add"], json!(["x"])).unwrap();
    pump(&mut a, &mut b);
    let (id, ..) = request(&mut b);
    let error = RpcError {
        name: "TypeError".into(),
        message: "not a number".into(),
        stack: Some("at add".into()),
    };
    b.respond(id, Err(error.clone())).unwrap();
    let sent = b.poll_transmit().unwrap();
    // Flags: end | JSON; the body is the flattened JS error.
    assert_eq!(sent[0], 0x06);
    let body: Value = serde_json::from_slice(&sent[HEADER_LEN..]).unwrap();
    assert_eq!(
        body,
        json!({"message": "not a number", "name": "TypeError", "stack": "at add"})
    );
    a.handle_input(&sent);
    assert_eq!(
        events(&mut a),
        vec![Event::Response {
            id: call,
            result: Err(CallError::Remote(error))
        }]
    );
}

#[test]
fn the_manifest_call_is_answered_by_the_session_and_unlisted_methods_refused() {
    let (mut a, mut b) = pair();
    let manifest_call = a.call(CallKind::Async, &["manifest"], json!([])).unwrap();
    let missing = a.call(CallKind::Async, &["nope"], json!([])).unwrap();
    let wrong_kind = a.call(CallKind::Source, &["add"], json!([])).unwrap();
    pump(&mut a, &mut b);
    assert_eq!(events(&mut b), vec![], "nothing reaches the application");
    let got = events(&mut a);
    assert_eq!(
        got[0],
        Event::Response {
            id: manifest_call,
            result: Ok(Body::json(&manifest()))
        }
    );
    let refused = |id, kind: &str, name: &str| {
        let error = RpcError::new(format!("no {kind}:{name}"));
        match kind {
            "async" => Event::Response {
                id,
                result: Err(CallError::Remote(error)),
            },
            _ => Event::End {
                id,
                result: Err(CallError::Remote(error)),
            },
        }
    };
    assert_eq!(got[1], refused(missing, "async", "nope"));
    assert_eq!(got[2], refused(wrong_kind, "source", "add"));
    assert_eq!(got.len(), 3);
    // The refused stream is over on both sides.
    b.close();
    close(&mut a, &mut b);
}

#[test]
fn a_source_streams_to_its_caller_and_both_sides_end() {
    let (mut a, mut b) = pair();
    let stream = a.call(CallKind::Source, &["count"], json!([3])).unwrap();
    pump(&mut a, &mut b);
    let (id, kind, ..) = request(&mut b);
    assert_eq!(kind, CallKind::Source);
    for n in 0..3 {
        b.send(id, Body::json(&json!(n))).unwrap();
    }
    b.end(id, Ok(())).unwrap();
    assert_eq!(b.send(id, Body::text("late")), Err(UseError::Ended(id)));
    pump(&mut a, &mut b);
    let mut expected: Vec<Event> = (0..3)
        .map(|n| Event::Data {
            id: stream,
            body: Body::json(&json!(n)),
        })
        .collect();
    expected.push(ok_end(stream));
    assert_eq!(events(&mut a), expected);
    // Taking the end, the caller ended its side; the callee hears it.
    pump(&mut a, &mut b);
    assert_eq!(events(&mut b), vec![ok_end(id)]);
    // Nothing is open: a close says goodbye at once, and both are done.
    close(&mut a, &mut b);
    assert_eq!(events(&mut a), vec![Event::Closed(Ok(()))]);
    assert_eq!(events(&mut b), vec![Event::Closed(Ok(()))]);
}

#[test]
fn a_duplex_stream_carries_data_both_ways() {
    let (mut a, mut b) = pair();
    let stream = a.call(CallKind::Duplex, &["echo"], json!([])).unwrap();
    a.send(stream, Body::binary(&b"ping"[..])).unwrap();
    pump(&mut a, &mut b);
    let (id, ..) = request(&mut b);
    assert_eq!(
        b.poll_event(),
        Some(Event::Data {
            id,
            body: Body::binary(&b"ping"[..])
        })
    );
    b.send(id, Body::binary(&b"pong"[..])).unwrap();
    a.end(stream, Ok(())).unwrap();
    pump(&mut a, &mut b);
    let pong = Event::Data {
        id: stream,
        body: Body::binary(&b"pong"[..]),
    };
    assert_eq!(events(&mut a), vec![pong]);
    // `b` may still answer what came before `a`'s end; its side ends when
    // it takes that end.
    assert_eq!(b.poll_event(), Some(ok_end(id)));
    assert_eq!(b.send(id, Body::text("late")), Err(UseError::NotOpen(id)));
    pump(&mut a, &mut b);
    assert_eq!(events(&mut a), vec![ok_end(stream)]);
    close(&mut a, &mut b);
}

#[test]
fn an_owner_that_queues_events_ends_streams_itself() {
    let mut config = Config::new(manifest());
    config.end_on_take = false;
    let mut a = Session::new(config);
    let mut b = Session::new(Config::new(manifest()));
    let stream = a.call(CallKind::Duplex, &["echo"], json!([])).unwrap();
    pump(&mut a, &mut b);
    let (id, ..) = request(&mut b);
    b.send(id, Body::text("x")).unwrap();
    b.end(id, Ok(())).unwrap();
    pump(&mut a, &mut b);
    assert_eq!(events(&mut a).len(), 2, "the data and the end");
    pump(&mut a, &mut b);
    assert_eq!(events(&mut b), vec![], "`a` has not ended its side");
    a.send(stream, Body::text("late answer")).unwrap();
    a.end(stream, Ok(())).unwrap();
    pump(&mut a, &mut b);
    assert_eq!(
        events(&mut b),
        vec![
            Event::Data {
                id,
                body: Body::text("late answer")
            },
            ok_end(id)
        ]
    );
    close(&mut a, &mut b);
}

#[test]
fn both_sides_may_send_request_one_at_once() {
    let (mut a, mut b) = pair();
    let from_a = a.call(CallKind::Async, &["whoami"], json!([])).unwrap();
    let from_b = b.call(CallKind::Async, &["whoami"], json!([])).unwrap();
    assert_eq!((from_a, from_b), (ReqId(1), ReqId(1)));
    pump(&mut a, &mut b);
    let (to_a, ..) = request(&mut a);
    let (to_b, ..) = request(&mut b);
    assert_eq!((to_a, to_b), (ReqId(-1), ReqId(-1)));
    a.respond(to_a, Ok(Body::text("a"))).unwrap();
    b.respond(to_b, Ok(Body::text("b"))).unwrap();
    pump(&mut a, &mut b);
    let answer = |text: &str| Event::Response {
        id: ReqId(1),
        result: Ok(Body::text(text)),
    };
    assert_eq!(events(&mut a), vec![answer("b")]);
    assert_eq!(events(&mut b), vec![answer("a")]);
}

#[test]
fn close_waits_for_open_calls_then_both_say_goodbye() {
    let (mut a, mut b) = pair();
    let call = a.call(CallKind::Async, &["add"], json!([])).unwrap();
    pump(&mut a, &mut b);
    let (id, ..) = request(&mut b);
    a.close();
    assert_eq!(
        a.call(CallKind::Async, &["add"], json!([])),
        Err(UseError::Closing)
    );
    assert_eq!(a.poll_transmit(), None, "no goodbye while a call is open");
    b.respond(id, Ok(Body::text("done"))).unwrap();
    pump(&mut a, &mut b);
    assert_eq!(
        events(&mut a),
        vec![
            Event::Response {
                id: call,
                result: Ok(Body::text("done"))
            },
            Event::Closed(Ok(())),
        ]
    );
    assert_eq!(events(&mut b), vec![Event::Closed(Ok(()))]);
    assert!(a.is_closed() && b.is_closed());
}

#[test]
fn a_goodbye_ends_every_open_call() {
    let mut a = Session::new(Config::new(manifest()));
    let call = a.call(CallKind::Async, &["add"], json!([])).unwrap();
    let stream = a.call(CallKind::Source, &["count"], json!([])).unwrap();
    a.handle_input(&GOODBYE);
    assert_eq!(
        events(&mut a),
        vec![
            Event::Response {
                id: call,
                result: Err(CallError::Ended)
            },
            Event::End {
                id: stream,
                result: Err(CallError::Ended)
            },
            Event::Closed(Ok(())),
        ]
    );
    // It answered the goodbye with its own, after the calls it had sent.
    let sent = a.poll_transmit().unwrap();
    assert!(sent.ends_with(&GOODBYE));
    assert_eq!(a.send(stream, Body::text("x")), Err(UseError::Closed));
}

#[test]
fn a_stream_the_application_does_not_read_is_ended_when_it_holds_too_much() {
    let mut config = Config::new(manifest());
    config.max_stream_buffer = 100;
    let mut a = Session::new(config);
    let mut b = Session::new(Config::new(manifest()));
    let stream = a.call(CallKind::Source, &["count"], json!([])).unwrap();
    pump(&mut a, &mut b);
    let (id, ..) = request(&mut b);
    for _ in 0..5 {
        b.send(id, Body::binary(vec![1u8; 30])).unwrap();
    }
    pump(&mut a, &mut b);
    let got = events(&mut a);
    assert_eq!(got.len(), 4, "three chunks, then the end: {got:?}");
    assert_eq!(
        got[3],
        Event::End {
            id: stream,
            result: Err(CallError::Flooded)
        }
    );
    // The sender was told why, and may go on with other calls.
    match b.poll_event() {
        Some(Event::End {
            result: Err(CallError::Remote(error)),
            ..
        }) => assert!(error.message.contains("stream buffer full"), "{error}"),
        other => panic!("expected the flood's end, got {other:?}"),
    }
    b.end(id, Ok(())).unwrap_err();
    let honest = a.call(CallKind::Async, &["add"], json!([])).unwrap();
    pump(&mut a, &mut b);
    let (id, ..) = request(&mut b);
    b.respond(id, Ok(Body::text("fine"))).unwrap();
    pump(&mut a, &mut b);
    assert_eq!(
        events(&mut a),
        vec![Event::Response {
            id: honest,
            result: Ok(Body::text("fine"))
        }]
    );
}

#[test]
fn a_peer_that_floods_many_streams_ends_the_session() {
    let mut config = Config::new(manifest());
    config.max_stream_buffer = 1000;
    config.max_buffered = 2500;
    let mut a = Session::new(config);
    // The peer opens sinks on `a` and fills each under the stream bound.
    let mut packets = Vec::new();
    for req in 1..=4 {
        packets.push(json_packet(
            req,
            true,
            false,
            json!({"name": ["collect"], "args": [], "type": "sink"}),
        ));
        packets.push(Packet {
            req,
            stream: true,
            end: false,
            body: Body::binary(vec![0u8; 900]),
        });
    }
    a.handle_input(&wire(&packets));
    assert!(a.is_closed());
    let got = events(&mut a);
    assert!(
        matches!(
            got.last(),
            Some(Event::Closed(Err(SessionError::Flooded(_))))
        ),
        "{got:?}"
    );
}

#[test]
fn a_peer_that_calls_and_never_reads_ends_the_session() {
    let mut config = Config::new(manifest());
    config.max_buffered = 10_000;
    let mut a = Session::new(config);
    a.handle_input(&peer_calls("manifest", 1..=200));
    assert!(a.is_closed());
    assert_eq!(
        events(&mut a),
        vec![Event::Closed(Err(SessionError::NotReading))]
    );
}

#[test]
fn calls_beyond_the_open_bound_are_refused_and_the_rest_served() {
    let mut config = Config::new(manifest());
    config.max_open = 2;
    let mut a = Session::new(config);
    a.handle_input(&peer_calls("add", 1..=3));
    assert_eq!(events(&mut a).len(), 2);
    let answer = &packets(&a.poll_transmit().unwrap())[0];
    assert_eq!((answer.req, answer.end), (-3, true));
    assert_eq!(
        RpcError::from_body(&answer.body).message,
        "too many calls open"
    );
}

#[test]
fn a_request_number_reused_while_open_ends_the_session() {
    let mut a = Session::new(Config::new(manifest()));
    let mut twice = peer_calls("add", 5..=5);
    twice.extend(peer_calls("add", 5..=5));
    a.handle_input(&twice);
    let got = events(&mut a);
    assert_eq!(
        got.last(),
        Some(&Event::Closed(Err(SessionError::Reused(5))))
    );
}

#[test]
fn bad_packets_end_the_session_and_every_call_with_it() {
    let mut a = Session::new(Config::new(manifest()));
    let call = a.call(CallKind::Async, &["add"], json!([])).unwrap();
    a.handle_input(&[0x03, 0, 0, 0, 1, 0, 0, 0, 1, 0]);
    assert_eq!(
        events(&mut a),
        vec![
            Event::Response {
                id: call,
                result: Err(CallError::Ended)
            },
            Event::Closed(Err(SessionError::Decode(DecodeError::UndefinedBodyType))),
        ]
    );
}

#[test]
fn an_owner_that_queues_data_itself_may_overflow_a_stream() {
    let (mut a, mut b) = pair();
    let stream = a.call(CallKind::Source, &["count"], json!([])).unwrap();
    pump(&mut a, &mut b);
    let (id, ..) = request(&mut b);
    b.send(id, Body::text("one")).unwrap();
    pump(&mut a, &mut b);
    assert!(matches!(a.poll_event(), Some(Event::Data { .. })));
    a.overflow(stream);
    b.send(id, Body::text("dropped")).unwrap();
    pump(&mut a, &mut b);
    assert_eq!(
        events(&mut a),
        vec![Event::End {
            id: stream,
            result: Err(CallError::Flooded)
        }]
    );
    assert!(matches!(
        b.poll_event(),
        Some(Event::End {
            result: Err(CallError::Remote(_)),
            ..
        })
    ));
    pump(&mut a, &mut b);
    a.close();
    pump(&mut a, &mut b);
    assert!(a.is_closed() && b.is_closed(), "nothing left open");
}

#[test]
fn a_stream_that_ends_without_a_goodbye_ends_every_call() {
    let mut a = Session::new(Config::new(manifest()));
    let call = a.call(CallKind::Async, &["add"], json!([])).unwrap();
    a.handle_end();
    assert_eq!(
        events(&mut a),
        vec![
            Event::Response {
                id: call,
                result: Err(CallError::Ended)
            },
            Event::Closed(Err(SessionError::NoGoodbye)),
        ]
    );
    // After a goodbye, the end of the stream changes nothing.
    let mut b = Session::new(Config::new(manifest()));
    b.handle_input(&GOODBYE);
    b.handle_end();
    assert_eq!(events(&mut b), vec![Event::Closed(Ok(()))]);
}

#[test]
fn a_number_reused_while_the_old_call_s_data_waits_is_charged_apart() {
    // Found in review: the old stream's data was charged to the new call.
    let mut config = Config::new(manifest());
    config.end_on_take = false;
    let mut a = Session::new(config);
    let sink = json!({"name": ["collect"], "args": [], "type": "sink"});
    a.handle_input(&wire(&[json_packet(5, true, false, sink.clone())]));
    let (id, ..) = request(&mut a);
    a.end(id, Ok(())).unwrap();
    a.handle_input(&wire(&[
        Packet {
            req: 5,
            stream: true,
            end: false,
            body: Body::text("xx"),
        },
        json_packet(5, true, true, json!(true)),
        json_packet(5, true, false, sink),
        json_packet(5, true, true, json!(true)),
        json_packet(5, true, true, json!(true)),
    ]));
    let got = events(&mut a);
    assert_eq!(got.len(), 4, "data, end, the new call, one end: {got:?}");
    assert_eq!(a.held(), 0);
}

#[test]
fn the_peer_s_end_of_a_stream_only_this_side_sends_on_ends_it_at_once() {
    let mut config = Config::new(manifest());
    config.end_on_take = false;
    let mut a = Session::new(config);
    let mut b = Session::new(Config::new(manifest()));
    let stream = b.call(CallKind::Source, &["count"], json!([])).unwrap();
    pump(&mut a, &mut b);
    let (id, ..) = request(&mut a);
    // The caller gives up before any data; the callee's next send fails.
    b.end(stream, Ok(())).unwrap();
    pump(&mut a, &mut b);
    assert_eq!(a.send(id, Body::text("0")), Err(UseError::NotOpen(id)));
    assert_eq!(events(&mut a), vec![ok_end(id)]);
    pump(&mut a, &mut b);
    assert_eq!(events(&mut b), vec![ok_end(stream)]);
}

#[test]
fn an_answer_numbered_i32_min_is_dropped() {
    // Found by the fuzzer: negating i32::MIN overflowed.
    let mut a = Session::new(Config::new(manifest()));
    a.handle_input(&wire(&[json_packet(i32::MIN, true, false, json!(1))]));
    assert_eq!(events(&mut a), vec![]);
    assert!(!a.is_closed());
}

#[test]
fn malformed_requests_get_an_error_answer_and_the_session_goes_on() {
    let mut a = Session::new(Config::new(manifest()));
    a.handle_input(&wire(&[
        Packet {
            req: 1,
            stream: false,
            end: false,
            body: Body::text("not json"),
        },
        json_packet(2, true, false, json!({"name": ["count"], "args": []})),
    ]));
    assert_eq!(events(&mut a), vec![]);
    assert!(!a.is_closed());
    let answers: Vec<_> = packets(&a.poll_transmit().unwrap())
        .into_iter()
        .map(|p| (p.req, p.stream, p.end, RpcError::from_body(&p.body).message))
        .collect();
    assert_eq!(
        answers,
        vec![
            (-1, false, true, "invalid request: not an object".to_owned()),
            (-2, true, true, "unsupported stream type: none".to_owned()),
        ]
    );
}

proptest! {
    #[test]
    fn any_split_of_the_input_says_the_same(cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10)) {
        let mut packets = vec![
            json_packet(1, false, false, json!({"name": ["add"], "args": [1]})),
            json_packet(2, true, false, json!({"name": ["collect"], "args": [], "type": "sink"})),
        ];
        for n in 0..4 {
            packets.push(Packet { req: 2, stream: true, end: false, body: Body::binary(vec![n; 20]) });
        }
        packets.push(json_packet(2, true, true, json!(true)));
        packets.push(json_packet(3, false, false, json!({"name": ["manifest"], "args": []})));
        let mut input = wire(&packets);
        input.extend_from_slice(&GOODBYE);
        let run = |cuts: &[usize]| {
            let mut session = Session::new(Config::new(manifest()));
            let mut from = 0;
            for &to in cuts.iter().chain([input.len()].iter()) {
                session.handle_input(&input[from..to]);
                from = to;
            }
            let sent: Vec<u8> = std::iter::from_fn(|| session.poll_transmit()).flatten().collect();
            (events(&mut session), sent)
        };
        let whole = run(&[]);
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
        cuts.sort_unstable();
        prop_assert_eq!(run(&cuts), whole);
    }
}
