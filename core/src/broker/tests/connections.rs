//! A connection's life: hello, deadlines, pings, goodbyes, violations, and
//! what a peer's text may do to replies and logs.

use super::*;

#[test]
fn protocol_violations_end_the_connection_with_a_reason() {
    let mut net = net();
    let a = unix(&mut net, 1);
    let conn = net.node(a).conn;
    // A data frame on a channel nobody opened.
    let mut frame = bytes::BytesMut::new();
    crate::mux::frame::encode(
        &crate::mux::Frame::Data {
            channel: 9,
            fin: false,
            payload: Bytes::from_static(b"x"),
        },
        &mut frame,
    );
    net.broker.handle_input(net.now, conn, &frame);
    net.run();
    assert!(net.node(a).closed);
    let events = net.events(a);
    assert!(
        matches!(events.last(), Some(SessionEvent::Closed { code: Some(ErrorCode::ProtocolViolation), reason }) if reason.contains("channel 9")),
        "{events:?}"
    );
}

#[test]
fn silent_connections_are_pinged_then_dropped() {
    let mut net = net();
    // A plugin that does not ping on its own: the broker's pings are tested.
    let a = net
        .connect_with(keypair(1), TransportKind::Unix, |c| c.keepalive = None)
        .unwrap();
    net.run();
    net.advance(Duration::from_secs(31));
    net.run();
    assert!(!net.node(a).closed, "a ping that is answered keeps it");
    net.node(a).slow = true; // stops reading, so no pong
    net.advance(Duration::from_secs(31));
    net.run();
    net.advance(Duration::from_secs(31));
    net.run();
    assert!(net.node(a).closed);
    assert!(net
        .log
        .iter()
        .any(|l| l.code == Some(ErrorCode::IdleTimeout)));
}

#[test]
fn hello_and_handshake_deadlines() {
    let mut net = net();
    let conn = net.broker.accept(net.now, Origin::unix(0, None)).unwrap();
    net.advance(Duration::from_secs(11));
    net.run();
    assert_eq!(net.broker.hub().connection_count(), 0);
    assert!(net
        .log
        .iter()
        .any(|l| l.conn == conn && l.message.contains("handshake timed out")));
}

/// Raw control messages, as a misbehaving plugin would send them (unix: plain frames).
fn inject(net: &mut Net, id: NodeId, message: &crate::control::Message) {
    let mut body = bytes::BytesMut::new();
    crate::control::encode(message, &mut body);
    let mut frame = bytes::BytesMut::new();
    crate::mux::frame::encode(
        &crate::mux::Frame::Data {
            channel: 0,
            fin: false,
            payload: body.freeze(),
        },
        &mut frame,
    );
    let conn = net.node(id).conn;
    net.broker.handle_input(net.now, conn, &frame);
    net.run();
}

fn closed_with(net: &mut Net, id: NodeId) -> (Option<ErrorCode>, String) {
    assert!(net.node(id).closed, "still connected");
    match net.events(id).pop() {
        Some(SessionEvent::Closed { code, reason }) => (code, reason),
        other => panic!("no Closed event: {other:?}"),
    }
}

#[test]
fn connection_limits_turn_sockets_away() {
    let mut net = Net::new(8, Chaos::default(), |c| {
        c.limits.max_connections = 2;
        c.limits.max_handshaking = 1;
    });
    assert!(net.connect(keypair(1), TransportKind::Unix).is_some());
    assert_eq!(
        net.broker.accept(net.now, Origin::unix(0, None)),
        Err(AcceptError::Door(DoorRefusal::ListenerFull(1)))
    );
    net.run();
    assert!(net.connect(keypair(2), TransportKind::Unix).is_some());
    net.run();
    assert_eq!(
        net.broker.accept(net.now, Origin::unix(0, None)),
        Err(AcceptError::TooManyConnections)
    );
    net.run();
    // One spell of refusals, one line (the next is due 10 s after it).
    let lines: Vec<_> = net
        .log
        .iter()
        .filter(|l| l.warning && matches!(l.counted, Some((Outcome::Refusal, _))))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].message.contains("refusing connections"),
        "{lines:?}"
    );
}

#[test]
fn control_violations_end_the_connection() {
    use crate::control::Message;
    let cases: Vec<(Message, &str)> = vec![
        (Message::Accept { channel: 40 }, "never offered"),
        (Message::Accept { channel: 0 }, "never offered"),
        (
            Message::Open {
                request: 1,
                channel: 2, // the broker's parity
                direct: false,
                name: name("x"),
                protocol: String::new(),
                metadata: Bytes::new(),
            },
            "not the peer's to allocate",
        ),
        (Message::Ok { request: 1 }, "not a plugin's message"),
        (
            Message::ClientHello {
                min_version: 1,
                max_version: 1,
                features: 0,
            },
            "not a plugin's message",
        ),
    ];
    for (message, why) in cases {
        let mut net = net();
        let a = unix(&mut net, 1);
        inject(&mut net, a, &message);
        let (code, reason) = closed_with(&mut net, a);
        assert_eq!(code, Some(ErrorCode::ProtocolViolation), "{message:?}");
        assert!(reason.contains(why), "{reason}");
    }

    // Garbage in place of a control message.
    let mut net = net();
    let a = unix(&mut net, 1);
    let mut frame = bytes::BytesMut::new();
    crate::mux::frame::encode(
        &crate::mux::Frame::Data {
            channel: 0,
            fin: false,
            payload: Bytes::from_static(&[0, 0, 0, 1, 0x7f]),
        },
        &mut frame,
    );
    let conn = net.node(a).conn;
    net.broker.handle_input(net.now, conn, &frame);
    net.run();
    let (code, reason) = closed_with(&mut net, a);
    assert_eq!(code, Some(ErrorCode::ProtocolViolation));
    assert!(reason.contains("malformed control message"), "{reason}");
}

#[test]
fn data_before_the_channel_is_opened_is_a_violation() {
    let mut net = net();
    let a = unix(&mut net, 1);
    let b = unix(&mut net, 2);
    register(&mut net, b, "t", false);
    let now = net.now;
    let (_, channel) = net
        .node(a)
        .session
        .open(now, name("t"), "p", Bytes::new(), false)
        .unwrap();
    net.run();
    let mut frame = bytes::BytesMut::new();
    crate::mux::frame::encode(
        &crate::mux::Frame::Data {
            channel,
            fin: false,
            payload: Bytes::from_static(b"early"),
        },
        &mut frame,
    );
    let conn = net.node(a).conn;
    net.broker.handle_input(net.now, conn, &frame);
    net.run();
    let (code, reason) = closed_with(&mut net, a);
    assert_eq!(code, Some(ErrorCode::ProtocolViolation));
    assert!(reason.contains("before it was opened"), "{reason}");
}

#[test]
fn versions_and_hello_deadline() {
    use crate::control::Message;
    // A plugin that speaks only version 2.
    let mut net = net();
    let conn = net.broker.accept(net.now, Origin::unix(0, None)).unwrap();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
    let config = crate::session::SessionConfig::new(
        HandshakeConfig::new(keypair(1)),
        net.broker.public_key(),
    );
    let mut hs =
        shs::ClientHandshake::new(config.handshake.clone(), config.broker, &mut rng, net.now)
            .unwrap();
    let mut established = None;
    for _ in 0..4 {
        while let Some(b) = hs.poll_transmit() {
            net.broker.handle_input(net.now, conn, &b);
        }
        while let Some(t) = net.broker.poll_transmit(conn) {
            hs.handle_input(net.now, &t.data).unwrap();
        }
        if let Some(shs::Event::Established(e)) = hs.poll_event() {
            established = Some(e);
        }
    }
    assert!(established.is_some());
    // Silence after the handshake: the hello deadline ends it.
    net.advance(Duration::from_secs(11));
    net.run();
    assert!(net
        .log
        .iter()
        .any(|l| l.conn == conn && l.code == Some(ErrorCode::HelloTimeout)));

    let mut net = self::net();
    let a = unix(&mut net, 1);
    let _ = a;
    let conn = net.broker.accept(net.now, Origin::unix(0, None)).unwrap();
    let mut hs =
        shs::ClientHandshake::new(config.handshake.clone(), config.broker, &mut rng, net.now)
            .unwrap();
    for _ in 0..4 {
        while let Some(b) = hs.poll_transmit() {
            net.broker.handle_input(net.now, conn, &b);
        }
        while let Some(t) = net.broker.poll_transmit(conn) {
            let _ = hs.handle_input(net.now, &t.data);
        }
        let _ = hs.poll_event();
    }
    let hello = Message::ClientHello {
        min_version: 2,
        max_version: 3,
        features: 0,
    };
    let mut body = bytes::BytesMut::new();
    crate::control::encode(&hello, &mut body);
    let mut frame = bytes::BytesMut::new();
    crate::mux::frame::encode(
        &crate::mux::Frame::Data {
            channel: 0,
            fin: false,
            payload: body.freeze(),
        },
        &mut frame,
    );
    net.broker.handle_input(net.now, conn, &frame);
    net.run();
    assert!(net
        .log
        .iter()
        .any(|l| l.conn == conn && l.code == Some(ErrorCode::UnsupportedVersion)));
    assert!(net.broker.hub().key_of(conn).is_none(), "closed");
}

#[test]
fn a_plugin_that_says_goodbye_has_its_socket_closed() {
    // Regression: a peer's GOAWAY or box-stream goodbye made the broker forget
    // the connection without telling the runtime to close the socket.
    for transport in [TransportKind::Unix, TransportKind::Tcp] {
        let mut net = Net::new(12, Chaos::default(), |c| {
            c.policy.keys.push(policy::KeyGrant {
                id: keypair(1).public(),
                register: vec![],
                open: vec![],
                direct: vec![],
                list: false,
                watch: false,
                stats: false,
                monitor: false,
            })
        });
        let a = ready(&mut net, 1, transport);
        let conn = net.node(a).conn;
        let last = net.node(a).session.close("done");
        net.broker.handle_input(net.now, conn, &last);
        let mut closed = None;
        while let Some(event) = net.broker.poll_event() {
            if let Event::Close {
                conn: c,
                last_words,
                ..
            } = event
            {
                closed = Some((c, last_words));
            }
        }
        let (c, last_words) = closed.expect("the runtime is told to close");
        assert_eq!(c, conn);
        // Over TCP the broker answers the goodbye with its own.
        assert_eq!(
            last_words.len(),
            if transport == TransportKind::Tcp {
                34
            } else {
                0
            }
        );
        assert_eq!(net.broker.hub().connection_count(), 0);
    }
}

#[test]
fn a_reader_over_its_bound_gets_nothing_more_worked_on() {
    // Regression: one read of many requests was answered in full before the
    // slow reader was closed, so a single frame could queue gigabytes.
    use crate::control::Message;
    let mut net = Net::new(14, Chaos::default(), |c| c.limits.max_control_queue = 2048);
    let owners: Vec<NodeId> = (1..=20).map(|s| unix(&mut net, s)).collect();
    for (i, id) in owners.iter().enumerate() {
        register(&mut net, *id, &format!("{}-{i}", "n".repeat(200)), false);
    }
    let a = unix(&mut net, 30);
    net.node(a).slow = true;
    let mut body = bytes::BytesMut::new();
    for request in 1..=200 {
        crate::control::encode(&Message::List { request }, &mut body);
    }
    crate::control::encode(
        &Message::Register {
            request: 999,
            name: name("last"),
            wait: false,
            direct_addr: String::new(),
        },
        &mut body,
    );
    let mut frame = bytes::BytesMut::new();
    crate::mux::frame::encode(
        &crate::mux::Frame::Data {
            channel: 0,
            fin: false,
            payload: body.freeze(),
        },
        &mut frame,
    );
    let conn = net.node(a).conn;
    net.broker.handle_input(net.now, conn, &frame);
    assert_eq!(
        net.broker.hub().key_of(conn),
        None,
        "closed as a slow reader"
    );
    assert!(
        net.broker.hub().registry().owner(&name("last")).is_none(),
        "requests after the bound were not worked on"
    );
}

#[test]
fn a_ping_is_answered_and_announced() {
    // Regression: the PONG was queued without an Event::Transmit.
    let mut net = net();
    let a = unix(&mut net, 1);
    let conn = net.node(a).conn;
    while net.broker.poll_event().is_some() {}
    let mut frame = bytes::BytesMut::new();
    crate::mux::frame::encode(
        &crate::mux::Frame::Ping {
            opaque: 5,
            pong: false,
        },
        &mut frame,
    );
    net.broker.handle_input(net.now, conn, &frame);
    assert!(std::iter::from_fn(|| net.broker.poll_event()).any(|e| e == Event::Transmit(conn)));
    let t = net.broker.poll_transmit(conn).unwrap();
    let mut decoder = crate::mux::FrameDecoder::new(1024);
    decoder.push(&t.data);
    assert_eq!(
        decoder.next_frame(),
        Ok(Some(crate::mux::Frame::Ping {
            opaque: 5,
            pong: true
        }))
    );
}

#[test]
fn the_longest_texts_a_peer_may_send_come_back_within_bounds() {
    // Regression: the broker quoted peer text in its answers and the answer
    // outgrew MAX_TEXT, which tripped an assertion in the encoder (debug)
    // or was cut silently (release).
    use crate::control::MAX_TEXT;
    let mut net = net();
    let a = unix(&mut net, 1);
    let b = unix(&mut net, 2);
    // A direct address of the longest kind, and not tcp:HOST:PORT.
    let now = net.now;
    // (One byte more is the plugin's own mistake, told at once.)
    assert_eq!(
        net.node(a)
            .session
            .register(now, name("far"), false, Some("x".repeat(MAX_TEXT + 1))),
        Err(crate::session::SessionError::TooLong("direct address"))
    );
    net.node(a)
        .session
        .register(now, name("far"), false, Some("x".repeat(MAX_TEXT)))
        .unwrap();
    match one_event(&mut net, a) {
        SessionEvent::Failed { code, message, .. } => {
            assert_eq!(code, ErrorCode::Malformed);
            assert!(message.len() <= MAX_TEXT, "{} bytes", message.len());
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(!net.node(a).closed);
    // A target that resets an open before answering, with the longest
    // reason: the opener hears of it, within bounds.
    register(&mut net, b, "slow", false);
    let (_, theirs) = offer(&mut net, a, b, "slow");
    let reason = "é".repeat(MAX_TEXT / 2);
    net.node(b)
        .session
        .reset(theirs, ErrorCode::Cancelled, &reason)
        .unwrap();
    net.run();
    match one_event(&mut net, a) {
        SessionEvent::Failed { code, message, .. } => {
            assert_eq!(code, ErrorCode::Rejected);
            assert!(message.len() <= MAX_TEXT, "{} bytes", message.len());
            assert!(message.starts_with("reset before answering: é"));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn peer_text_cannot_forge_a_log_line() {
    let mut net = net();
    let a = unix(&mut net, 1);
    let b = unix(&mut net, 2);
    register(&mut net, b, "b", false);
    let (_, theirs) = offer(&mut net, a, b, "b");
    let forged = "no\r\n2026-12-03 INFO key=@admin registered root\u{1b}[2J";
    net.node(b).session.reject(theirs, forged).unwrap();
    net.run();
    net.events(a);
    let line = net
        .log
        .iter()
        .find(|e| e.code == Some(ErrorCode::Rejected))
        .expect("the rejection is logged");
    let b_key = keypair(2).public();
    assert_eq!(
        line.message,
        format!(
            "open to {b_key} refused: no\\r\\n2026-12-03 INFO key=@admin registered root\\u{{1b}}[2J"
        )
    );
    assert!(net
        .log
        .iter()
        .all(|e| !e.message.chars().any(char::is_control)));
    assert_eq!(
        printable("naïve 名前\ttab".to_owned()),
        "naïve 名前\\ttab",
        "only control characters change"
    );
}

#[test]
fn message_4_comes_before_the_goodbye() {
    // Regression: early data that got the connection closed lost message 4.
    let mut net = net();
    let conn = net.broker.accept(net.now, Origin::unix(0, None)).unwrap();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2);
    let config = HandshakeConfig::new(keypair(1));
    let mut hs = shs::ClientHandshake::new(
        std::sync::Arc::new(config),
        net.broker.public_key(),
        &mut rng,
        net.now,
    )
    .unwrap();
    net.broker
        .handle_input(net.now, conn, &hs.poll_transmit().unwrap());
    let hello = net.broker.poll_transmit(conn).unwrap().data;
    hs.handle_input(net.now, &hello).unwrap();
    let mut auth = hs.poll_transmit().unwrap().to_vec();
    auth.extend_from_slice(&[9; 10]); // a frame of an unknown type, right behind message 3
    net.broker.handle_input(net.now, conn, &auth);
    let last = std::iter::from_fn(|| net.broker.poll_event())
        .find_map(|e| match e {
            Event::Close { last_words, .. } => Some(last_words),
            _ => None,
        })
        .expect("closed");
    hs.handle_input(net.now, &last).unwrap();
    let Some(shs::Event::Established(done)) = hs.poll_event() else {
        panic!("no message 4")
    };
    let mut decoder = crate::mux::FrameDecoder::new(4096);
    decoder.push(&done.early_data);
    assert!(matches!(
        decoder.next_frame(),
        Ok(Some(crate::mux::Frame::GoAway {
            code: ErrorCode::ProtocolViolation,
            ..
        }))
    ));
}
