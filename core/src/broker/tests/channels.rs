//! Channels: open, accept, relay, socketpairs and dial offers, and what is
//! released when either end goes.

use super::*;

#[test]
fn open_accept_and_a_megabyte_each_way_over_unix_and_tcp() {
    for transport in [TransportKind::Unix, TransportKind::Tcp] {
        let mut net = Net::new(2, Chaos::default(), |c| {
            c.policy.keys = (1..=2)
                .map(|s| policy::KeyGrant {
                    id: keypair(s).public(),
                    register: vec![policy::Pattern::any()],
                    open: vec![policy::Pattern::any()],
                    direct: vec![],
                    list: true,
                    watch: true,
                    stats: false,
                    monitor: false,
                })
                .collect();
        });
        let a = ready(&mut net, 1, transport);
        let b = ready(&mut net, 2, transport);
        register(&mut net, b, "echo", false);
        let (ca, cb) = open_and_accept(&mut net, a, b, "echo");
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 + i / 256) as u8).collect();
        assert_eq!(transfer(&mut net, a, ca, b, cb, &data), data);
        assert_eq!(transfer(&mut net, b, cb, a, ca, &data), data);
        // The broker held at most a window per direction at any time.
        assert!(net.broker.hub().buffered_bytes() <= 2 * 256 * 1024);

        // Half-close both ways: the channel and the route are gone.
        net.node(a).session.finish(ca).unwrap();
        net.node(b).session.finish(cb).unwrap();
        net.run();
        assert!(net
            .events(a)
            .contains(&SessionEvent::ChannelClosed { channel: ca }));
        assert!(net
            .events(b)
            .contains(&SessionEvent::ChannelClosed { channel: cb }));
        assert_eq!(net.broker.hub().route_count(), 0);
        assert_eq!(net.broker.hub().key_usage(&keypair(1).public()).channels, 0);
    }
}

#[test]
fn a_killed_plugin_resets_its_peers_and_frees_its_name_at_once() {
    let mut net = net();
    let a = unix(&mut net, 1);
    let b = unix(&mut net, 2);
    let watcher = unix(&mut net, 3);
    register(&mut net, b, "svc", false);
    let now = net.now;
    net.node(watcher).session.watch(now).unwrap();
    net.run();
    net.events(watcher);
    let (ca, cb) = open_and_accept(&mut net, a, b, "svc");
    net.node(b)
        .session
        .send(cb, Bytes::from(vec![1; 5000]))
        .unwrap();
    net.run();
    net.events(a);
    net.kill(b);
    net.run();
    assert!(matches!(
        net.events(a)[..],
        [SessionEvent::Reset { channel, code: ErrorCode::PeerGone, .. }] if channel == ca
    ));
    assert!(matches!(
        net.events(watcher)[..],
        [SessionEvent::Presence {
            presence: Presence::Down { .. },
            ..
        }]
    ));
    let c = unix(&mut net, 4);
    assert!(matches!(
        register(&mut net, c, "svc", false),
        SessionEvent::Registered { queued: false, .. }
    ));
}

#[test]
fn everything_is_released_when_everyone_leaves() {
    let mut net = net();
    let ids: Vec<NodeId> = (1..=4).map(|s| unix(&mut net, s)).collect();
    register(&mut net, ids[0], "a", false);
    register(&mut net, ids[1], "a", true);
    let now = net.now;
    net.node(ids[2]).session.watch(now).unwrap();
    open_and_accept(&mut net, ids[3], ids[0], "a");
    net.node(ids[3])
        .session
        .open(now, name("a"), "p", Bytes::new(), false)
        .unwrap();
    net.run();
    for id in ids {
        net.kill(id);
    }
    net.run();
    net.broker.hub().check_empty().unwrap();
}

#[test]
fn socketpairs_for_two_unix_plugins_and_relay_when_they_fail() {
    for works in [true, false] {
        let mut net = Net::new(6, Chaos::default(), |c| c.fd_passing = true);
        net.socketpairs_work = works;
        let a = unix(&mut net, 1);
        let b = unix(&mut net, 2);
        register(&mut net, b, "direct", false);
        let now = net.now;
        let (_, channel) = net
            .node(a)
            .session
            .open(now, name("direct"), "p", Bytes::new(), true)
            .unwrap();
        let SessionEvent::Incoming {
            channel: theirs,
            path,
            ..
        } = one_event(&mut net, b)
        else {
            panic!()
        };
        assert_eq!(path, IncomingPath::AwaitPath);
        let now = net.now;
        net.node(b).session.accept(now, theirs).unwrap();
        net.run();
        let opened = net.events(a);
        let path_event = net.events(b);
        if works {
            assert!(matches!(
                opened[..],
                [SessionEvent::Opened {
                    path: OpenedPath::SocketPair,
                    fd: Some(_),
                    ..
                }]
            ));
            assert!(matches!(
                path_event[..],
                [SessionEvent::ChannelPath {
                    path: ChannelPath::SocketPair,
                    fd: Some(_),
                    ..
                }]
            ));
            assert_eq!(
                net.broker.hub().route_count(),
                0,
                "the broker is out of the data path"
            );
        } else {
            assert!(matches!(
                opened[..],
                [SessionEvent::Opened {
                    path: OpenedPath::Relay,
                    fd: None,
                    ..
                }]
            ));
            assert!(matches!(
                path_event[..],
                [SessionEvent::ChannelPath {
                    path: ChannelPath::Relay,
                    ..
                }]
            ));
            let data = vec![3u8; 1000];
            assert_eq!(transfer(&mut net, a, channel, b, theirs, &data), data);
        }
    }
}

#[test]
fn dial_offers_carry_a_token_and_fall_back_to_relay() {
    let mut net = net();
    let a = unix(&mut net, 1);
    let b = unix(&mut net, 2);
    let now = net.now;
    net.node(b)
        .session
        .register(now, name("far"), false, Some("tcp:10.0.0.2:8008".into()))
        .unwrap();
    net.run();
    net.events(b);
    let (_, channel) = net
        .node(a)
        .session
        .open(now, name("far"), "p", Bytes::new(), true)
        .unwrap();
    let SessionEvent::Incoming {
        channel: theirs,
        path: IncomingPath::ExpectDial { token },
        ..
    } = one_event(&mut net, b)
    else {
        panic!("no dial offer")
    };
    let now = net.now;
    net.node(b).session.accept(now, theirs).unwrap();
    let SessionEvent::Opened {
        path: OpenedPath::Dial { addr, token: given },
        ..
    } = one_event(&mut net, a)
    else {
        panic!("no dial path")
    };
    assert_eq!((addr.as_str(), given), ("tcp:10.0.0.2:8008", token));
    net.node(a).session.direct_failed(channel).unwrap();
    assert!(matches!(
        one_event(&mut net, b),
        SessionEvent::ChannelPath {
            path: ChannelPath::Relay,
            ..
        }
    ));
    let data = vec![9u8; 70_000];
    assert_eq!(transfer(&mut net, b, theirs, a, channel, &data), data);

    // A malformed direct address is refused.
    let c = unix(&mut net, 3);
    net.node(c)
        .session
        .register(now, name("bad"), false, Some("10.0.0.2".into()))
        .unwrap();
    assert_eq!(failed_code(&one_event(&mut net, c)), ErrorCode::Malformed);
}

#[test]
fn a_channel_to_ones_own_name_is_released_with_its_connection() {
    // Regression (simulation seeds 16, 43): both ends of the route on one
    // connection counted twice and were released once.
    let mut net = net();
    let a = unix(&mut net, 1);
    register(&mut net, a, "self", false);
    let now = net.now;
    let (_, opener_channel) = net
        .node(a)
        .session
        .open(now, name("self"), "p", Bytes::new(), false)
        .unwrap();
    net.run();
    let incoming = net
        .events(a)
        .into_iter()
        .find_map(|e| match e {
            SessionEvent::Incoming { channel, .. } => Some(channel),
            _ => None,
        })
        .unwrap();
    let now = net.now;
    net.node(a).session.accept(now, incoming).unwrap();
    net.run();
    assert!(net
        .events(a)
        .iter()
        .any(|e| matches!(e, SessionEvent::Opened { channel, .. } if *channel == opener_channel)));
    assert_eq!(net.broker.hub().key_usage(&keypair(1).public()).channels, 2);
    net.kill(a);
    net.run();
    assert_eq!(net.broker.hub().key_count(), 0);
}

#[test]
fn a_target_that_does_not_read_is_not_disturbed_the_opener_is_refused() {
    let mut net = Net::new(10, Chaos::default(), |c| c.limits.max_control_queue = 2048);
    let a = unix(&mut net, 1);
    let b = unix(&mut net, 2);
    register(&mut net, b, "deaf", false);
    net.node(b).slow = true;
    let now = net.now;
    // An Incoming of about 440 bytes: two fit in half the queue, unasked
    // traffic's part; the next ones are refused to the opener.
    let metadata = Bytes::from(vec![0; 400]);
    let mut codes = Vec::new();
    for _ in 0..4 {
        net.node(a)
            .session
            .open(now, name("deaf"), "p", metadata.clone(), false)
            .unwrap();
        net.run();
        codes.extend(net.events(a).iter().map(failed_code));
    }
    assert_eq!(codes, [ErrorCode::PeerBusy; 2]);
    assert!(
        !net.node(b).closed,
        "the target is not blamed for traffic it did not ask for"
    );
    net.node(b).slow = false;
    net.run();
    let offers = net.events(b);
    let offers = offers
        .iter()
        .filter(|e| matches!(e, SessionEvent::Incoming { .. }))
        .count();
    assert_eq!(offers, 2, "the first two opens reached the target");
}

#[test]
fn an_opener_that_gives_up_gets_its_answer() {
    // Regression: resetting a pending open left the request unanswered, and
    // the session ended itself when its deadline passed.
    let mut net = net();
    let a = unix(&mut net, 1);
    let b = unix(&mut net, 2);
    register(&mut net, b, "slow", false);
    let (channel, theirs) = offer(&mut net, a, b, "slow");
    net.node(a)
        .session
        .reset(channel, ErrorCode::Cancelled, "changed my mind")
        .unwrap();
    net.run();
    assert_eq!(failed_code(&one_event(&mut net, a)), ErrorCode::Cancelled);
    assert!(
        matches!(net.events(b)[..], [SessionEvent::Reset { channel, .. }] if channel == theirs)
    );
    net.advance(Duration::from_secs(60));
    net.run();
    assert!(!net.node(a).closed);
    assert_eq!(
        net.broker.hub().key_usage(&keypair(1).public()),
        KeyUsage {
            connections: 1,
            ..KeyUsage::default()
        }
    );
}

#[test]
fn direct_failed_counts_once() {
    // Regression: any end could repeat DirectFailed and grow its peer's queue.
    let mut net = net();
    let a = unix(&mut net, 1);
    let b = unix(&mut net, 2);
    let now = net.now;
    net.node(b)
        .session
        .register(now, name("far"), false, Some("tcp:10.0.0.2:8008".into()))
        .unwrap();
    net.run();
    net.events(b);
    let (_, channel) = net
        .node(a)
        .session
        .open(now, name("far"), "p", Bytes::new(), true)
        .unwrap();
    let SessionEvent::Incoming {
        channel: theirs, ..
    } = one_event(&mut net, b)
    else {
        panic!()
    };
    let now = net.now;
    net.node(b).session.accept(now, theirs).unwrap();
    one_event(&mut net, a);
    for _ in 0..5 {
        net.node(a).session.direct_failed(channel).unwrap();
        net.node(b).session.direct_failed(theirs).unwrap();
    }
    net.run();
    let paths = net
        .events(b)
        .into_iter()
        .filter(|e| matches!(e, SessionEvent::ChannelPath { .. }))
        .count();
    assert_eq!(paths, 1);
    assert!(net.events(a).is_empty());
}

#[test]
fn an_open_may_wait_as_long_as_the_broker_allows() {
    // Regression: the session gave up on opens after 30 s whatever the
    // broker's open deadline, and ended the connection.
    let mut net = Net::new(13, Chaos::default(), |c| {
        c.limits.open_timeout = Duration::from_secs(40)
    });
    let a = unix(&mut net, 1);
    let b = unix(&mut net, 2);
    register(&mut net, b, "ponder", false);
    let now = net.now;
    net.node(a)
        .session
        .open(now, name("ponder"), "p", Bytes::new(), false)
        .unwrap();
    net.run();
    net.events(b);
    net.advance(Duration::from_secs(35));
    net.run();
    assert!(!net.node(a).closed);
    net.advance(Duration::from_secs(6));
    net.run();
    assert_eq!(failed_code(&one_event(&mut net, a)), ErrorCode::OpenTimeout);
    assert!(!net.node(a).closed);
}

#[test]
fn a_reset_racing_the_answer_leaves_no_channel_behind() {
    // Regression: an Opened arriving after the plugin reset the channel
    // brought the channel back as open, forever.
    let mut net = net();
    let a = unix(&mut net, 1);
    let b = unix(&mut net, 2);
    register(&mut net, b, "t", false);
    let (channel, theirs) = offer(&mut net, a, b, "t");
    let now = net.now;
    net.node(b).session.accept(now, theirs).unwrap();
    // The accept reaches the broker (and the Opened is on its way to a) ...
    for _ in 0..2 {
        let up: Vec<Bytes> = std::iter::from_fn(|| net.node(b).session.poll_transmit()).collect();
        let conn = net.node(b).conn;
        for bytes in up {
            net.broker.handle_input(net.now, conn, &bytes);
        }
    }
    // ... when a gives up.
    net.node(a)
        .session
        .reset(channel, ErrorCode::Cancelled, "never mind")
        .unwrap();
    net.run();
    assert!(net.events(a).iter().any(|e| matches!(
        e,
        SessionEvent::Failed {
            code: ErrorCode::Cancelled,
            ..
        }
    )));
    assert_eq!(net.node(a).session.channel_count(), 0);
    assert_eq!(net.broker.hub().route_count(), 0);
}

/// What a channel receives waits in the session until the application
/// reads it; its credit goes back only as it is read, so an unread channel
/// holds at most its window. Readable is said once until a read finds the
/// channel empty.
#[test]
fn a_channel_holds_what_is_unread_and_its_credit_waits_for_the_reader() {
    let mut net = net();
    let a = unix(&mut net, 1);
    let b = unix(&mut net, 2);
    register(&mut net, b, "slow", false);
    let (ca, cb) = open_and_accept(&mut net, a, b, "slow");
    let window = net.node(a).session.send_capacity(ca);
    assert!(window > 0);
    let data = Bytes::from(vec![7u8; window + 1000]);
    assert_eq!(net.node(a).session.send(ca, data).unwrap(), window);
    net.run();
    let readable: Vec<SessionEvent> = net
        .events(b)
        .into_iter()
        .filter(|e| matches!(e, SessionEvent::Readable { .. }))
        .collect();
    assert_eq!(readable, vec![SessionEvent::Readable { channel: cb }]);
    // Nothing read: no credit came back.
    assert_eq!(net.node(a).session.send_capacity(ca), 0);
    let Ok(Recv::Data(first)) = net.node(b).session.recv(cb, 100) else {
        panic!("bytes wait");
    };
    assert_eq!(first.len(), 100);
    assert_eq!(read_all(&mut net, b, cb).len(), window - 100);
    assert_eq!(net.node(b).session.recv(cb, 100), Ok(Recv::Blocked));
    net.run();
    // Read: the credit went back (the window may have grown too).
    assert!(net.node(a).session.send_capacity(ca) >= window);
}

/// A reset channel keeps what came before the reset for the application,
/// then says why; the session forgets it once the application lets go.
#[test]
fn a_reset_channel_reads_what_came_before_then_the_reset() {
    let mut net = net();
    let a = unix(&mut net, 1);
    let b = unix(&mut net, 2);
    register(&mut net, b, "svc", false);
    let (ca, cb) = open_and_accept(&mut net, a, b, "svc");
    net.node(a)
        .session
        .send(ca, Bytes::from_static(b"last words"))
        .unwrap();
    net.run();
    net.node(a)
        .session
        .reset(ca, ErrorCode::Cancelled, "bye")
        .unwrap();
    net.run();
    assert_eq!(read_all(&mut net, b, cb), b"last words");
    let Ok(Recv::Reset { code, reason }) = net.node(b).session.recv(cb, 100) else {
        panic!("the reset is read after the data");
    };
    assert_eq!(code, ErrorCode::Cancelled);
    assert!(reason.contains("bye"), "{reason}");
    // Still reset, until let go; then unknown.
    assert!(net.node(b).session.reset_reason(cb).is_some());
    net.node(b).session.close_channel(cb);
    assert_eq!(
        net.node(b).session.recv(cb, 1),
        Err(crate::session::SessionError::UnknownChannel(cb))
    );
    assert_eq!(net.node(b).session.channel_count(), 0);
}

/// A channel the application let go finishes (what it wrote still goes);
/// what it had unread gives its credit back; data that comes afterwards
/// finds nobody and resets the channel, so nothing is held for nobody.
#[test]
fn a_channel_let_go_finishes_and_data_for_nobody_resets_it() {
    let mut net = net();
    let a = unix(&mut net, 1);
    let b = unix(&mut net, 2);
    register(&mut net, b, "svc", false);
    let (ca, cb) = open_and_accept(&mut net, a, b, "svc");
    let window = net.node(a).session.send_capacity(ca);
    net.node(a)
        .session
        .send(ca, Bytes::from(vec![1u8; window]))
        .unwrap();
    net.node(b)
        .session
        .send(cb, Bytes::from_static(b"goodbye"))
        .unwrap();
    net.run();
    net.events(a);
    net.node(b).session.close_channel(cb);
    net.run();
    // The unread window went back, and b's FIN came after its bytes.
    assert!(net.node(a).session.send_capacity(ca) >= window);
    assert_eq!(read_all(&mut net, a, ca), b"goodbye");
    assert_eq!(net.node(a).session.recv(ca, 1), Ok(Recv::Finished));
    // More data for b: nobody reads it, so the channel is reset.
    net.node(a)
        .session
        .send(ca, Bytes::from_static(b"anyone?"))
        .unwrap();
    net.run();
    assert!(net
        .events(a)
        .iter()
        .any(|e| matches!(e, SessionEvent::Reset { channel, .. } if *channel == ca)));
    assert_eq!(net.node(b).session.channel_count(), 0);
    assert_eq!(net.broker.hub().route_count(), 0);
}

/// A dial offer accepted by `b` ("far", with a direct address) from `a`:
/// the opener's channel, the target's, and the token.
fn dial_offer(net: &mut Net, a: NodeId, b: NodeId) -> (u32, u32, [u8; 32]) {
    let now = net.now;
    net.node(b)
        .session
        .register(now, name("far"), false, Some("tcp:10.0.0.2:8008".into()))
        .unwrap();
    net.run();
    net.events(b);
    let (_, ours) = net
        .node(a)
        .session
        .open(now, name("far"), "p", Bytes::new(), true)
        .unwrap();
    let SessionEvent::Incoming {
        channel: theirs,
        path: IncomingPath::ExpectDial { token },
        ..
    } = one_event(net, b)
    else {
        panic!("no dial offer")
    };
    let now = net.now;
    net.node(b).session.accept(now, theirs).unwrap();
    assert!(matches!(
        one_event(net, a),
        SessionEvent::Opened {
            path: OpenedPath::Dial { .. },
            ..
        }
    ));
    (ours, theirs, token)
}

/// The target admits only the dialer the broker announced: its key, then
/// its token (once); when the direct connection is up both ends let the
/// relayed channel go, and the broker releases it.
#[test]
fn only_the_announced_dialer_gets_a_direct_channel_and_the_relay_goes() {
    let mut net = net();
    let a = unix(&mut net, 1);
    let b = unix(&mut net, 2);
    let (ours, theirs, token) = dial_offer(&mut net, a, b);
    let a_key = keypair(1).public();
    let stranger = keypair(9).public();
    let session = &mut net.node(b).session;
    assert!(session.direct_expects(&a_key));
    assert!(!session.direct_expects(&stranger));
    let mut wrong = token;
    wrong[31] ^= 1;
    assert_eq!(session.direct_claim(&a_key, &wrong), None);
    assert_eq!(session.direct_claim(&stranger, &token), None);
    assert_eq!(session.direct_claim(&a_key, &token), Some(theirs));
    // Claimed: the token works once.
    assert!(!session.direct_expects(&a_key));
    assert_eq!(session.direct_claim(&a_key, &token), None);
    assert!(session.direct_established(theirs));
    assert!(net.node(a).session.direct_established(ours));
    net.run();
    assert_eq!(net.broker.hub().route_count(), 0);
    assert_eq!(net.node(a).session.channel_count(), 0);
    assert_eq!(net.node(b).session.channel_count(), 0);
}

/// A reset of the relayed channel while a dialer that presented its token
/// finishes its handshake waits for the outcome: if the dial fails, the
/// reset ends the channel then; the path deadline does not cut the
/// handshake short.
#[test]
fn a_reset_during_a_claimed_dial_waits_for_its_outcome() {
    let mut net = net();
    let a = unix(&mut net, 1);
    let b = unix(&mut net, 2);
    let (ours, theirs, token) = dial_offer(&mut net, a, b);
    let a_key = keypair(1).public();
    assert_eq!(
        net.node(b).session.direct_claim(&a_key, &token),
        Some(theirs)
    );
    net.node(a)
        .session
        .reset(ours, ErrorCode::Cancelled, "gave up")
        .unwrap();
    net.run();
    assert!(!net
        .events(b)
        .iter()
        .any(|e| matches!(e, SessionEvent::Reset { .. })));
    // Past the path deadline: still held for the dialer.
    let later = net.now + Duration::from_secs(3600);
    net.node(b).session.handle_timeout(later);
    net.run();
    assert!(!net
        .events(b)
        .iter()
        .any(|e| matches!(e, SessionEvent::Reset { .. })));
    net.node(b).session.direct_abandoned(theirs);
    net.run();
    let events = net.events(b);
    assert!(
        events.iter().any(|e| matches!(e,
            SessionEvent::Reset { channel, code: ErrorCode::Cancelled, .. } if *channel == theirs)),
        "{events:?}"
    );
    assert_eq!(net.node(b).session.channel_count(), 0);
}

/// Once the channel's path came another way (the opener could not dial
/// and said so), a dialer that still gets through is for nobody.
#[test]
fn a_dial_that_lands_after_the_relay_path_is_for_nobody() {
    let mut net = net();
    let a = unix(&mut net, 1);
    let b = unix(&mut net, 2);
    let (ours, theirs, token) = dial_offer(&mut net, a, b);
    let a_key = keypair(1).public();
    assert_eq!(
        net.node(b).session.direct_claim(&a_key, &token),
        Some(theirs)
    );
    net.node(a).session.direct_failed(ours).unwrap();
    assert!(matches!(
        one_event(&mut net, b),
        SessionEvent::ChannelPath {
            path: ChannelPath::Relay,
            ..
        }
    ));
    assert!(!net.node(b).session.direct_established(theirs));
    // The relayed channel is the channel: it carries data.
    let data = vec![3u8; 1000];
    assert_eq!(transfer(&mut net, a, ours, b, theirs, &data), data);
}

/// A broker that sends data on a channel before the target accepted it
/// breaks the protocol (no route carries data then): the session ends
/// instead of holding a window of it for an offer nobody took.
#[test]
fn data_on_a_channel_not_yet_accepted_breaks_the_protocol() {
    let mut net = net();
    let a = unix(&mut net, 1);
    let b = unix(&mut net, 2);
    register(&mut net, b, "svc", false);
    let (_, theirs) = offer(&mut net, a, b, "svc");
    let mut frame = bytes::BytesMut::new();
    crate::mux::frame::encode(
        &crate::mux::Frame::Data {
            channel: theirs,
            fin: false,
            payload: Bytes::from_static(b"early"),
        },
        &mut frame,
    );
    let now = net.now;
    let result = net.node(b).session.handle_input(now, &frame);
    assert_eq!(
        result,
        Err(crate::session::SessionError::Protocol(
            "data on a channel not open yet"
        ))
    );
    assert!(net.node(b).session.is_closed());
}

/// Letting a channel go before it is open answers for it in the protocol's
/// terms (an offer is rejected, an open or an accepted channel waiting for
/// its path is reset), never a FIN before the route exists, which the
/// broker would take as a violation of the whole connection.
#[test]
fn a_channel_let_go_before_it_is_open_is_rejected_or_reset() {
    let mut net = net();
    let a = unix(&mut net, 1);
    let b = unix(&mut net, 2);
    register(&mut net, b, "svc", false);
    // An offer let go: the opener is told it was rejected.
    let (_, theirs) = offer(&mut net, a, b, "svc");
    net.node(b).session.close_channel(theirs);
    net.run();
    assert!(net.events(a).iter().any(|e| matches!(
        e,
        SessionEvent::Failed {
            code: ErrorCode::Rejected,
            ..
        }
    )));
    // An open let go before its answer: reset, and the target hears of it.
    let now = net.now;
    let (_, ours) = net
        .node(a)
        .session
        .open(now, name("svc"), "p", Bytes::new(), false)
        .unwrap();
    net.node(a).session.close_channel(ours);
    net.run();
    assert!(!net.node(a).closed && !net.node(b).closed);
    assert_eq!(net.node(a).session.channel_count(), 0);
    assert_eq!(net.broker.hub().route_count(), 0);
}

/// A hello whose initial window is beyond the largest this session lets a
/// channel hold ends the session: every channel would hold more than that.
#[test]
fn an_initial_window_beyond_ours_is_refused() {
    let mut net = Net::new(7, Chaos::default(), |c| {
        c.limits.max_window = 64 * 1024 * 1024;
        c.limits.initial_window = 32 * 1024 * 1024;
    });
    let id = net.connect(keypair(1), TransportKind::Unix).unwrap();
    net.run();
    let events = net.events(id);
    assert!(
        events.iter().any(|e| matches!(e,
            SessionEvent::Closed { reason, .. } if reason.contains("initial window"))),
        "{events:?}"
    );
}

fn assert_peer_gone(end: &Recv) {
    let gone = matches!(
        end,
        Recv::Reset {
            code: ErrorCode::PeerGone,
            ..
        }
    );
    assert!(gone, "{end:?}");
}

/// Reads `channel` of `node` to its end: the bytes, then how it ended.
pub(super) fn read_to_end(net: &mut Net, node: NodeId, channel: u32) -> (Vec<u8>, Recv) {
    let mut all = Vec::new();
    for _ in 0..1000 {
        net.run();
        match net.node(node).session.recv(channel, usize::MAX) {
            Ok(Recv::Data(bytes)) => all.extend_from_slice(&bytes),
            Ok(Recv::Blocked) => {}
            Ok(end) => return (all, end),
            Err(e) => panic!("after {} bytes: {e}", all.len()),
        }
    }
    panic!("no end after {} bytes", all.len());
}

/// A sender that finished and left before the broker wrote all it sent:
/// its peer still reads every byte and the FIN, then (still sending) a
/// reset; or, finished too, a clean close. The route's books are held
/// until then and released after.
#[test]
fn a_finished_sender_that_leaves_is_heard_to_the_end() {
    for peer_finished in [false, true] {
        let mut net = net();
        let a = unix(&mut net, 1);
        let b = unix(&mut net, 2);
        register(&mut net, b, "svc", false);
        let (ca, cb) = open_and_accept(&mut net, a, b, "svc");
        if peer_finished {
            net.node(b).session.finish(cb).unwrap();
        }
        net.node(b).slow = true;
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let sent = net
            .node(a)
            .session
            .send(ca, Bytes::from(data.clone()))
            .unwrap();
        assert_eq!(sent, data.len(), "within the initial window");
        net.node(a).session.finish(ca).unwrap();
        net.run();
        net.kill(a);
        net.run();
        // The route lives on as an orphan at b's end, its books moved to
        // b's key (which holds it by not reading): a's are free at once.
        let hub = net.broker.hub();
        assert_eq!(hub.route_count(), 1);
        hub.check_byte_books().unwrap();
        assert_eq!(hub.key_usage(&keypair(1).public()).channels, 0);
        assert_eq!(hub.key_usage(&keypair(2).public()).channels, 1);

        net.node(b).slow = false;
        let (received, end) = read_to_end(&mut net, b, cb);
        assert!(
            received == data,
            "{} of {} bytes",
            received.len(),
            data.len()
        );
        assert!(matches!(end, Recv::Finished), "{end:?}");
        net.run();
        let events = net.events(b);
        let closed = match peer_finished {
            true => events.contains(&SessionEvent::ChannelClosed { channel: cb }),
            false => events.iter().any(|e| {
                matches!(e, SessionEvent::Reset { channel, code: ErrorCode::PeerGone, .. }
                    if *channel == cb)
            }),
        };
        assert!(closed, "peer finished: {peer_finished}; {events:?}");
        let hub = net.broker.hub();
        assert_eq!(hub.route_count(), 0);
        hub.check_byte_books().unwrap();
        assert_eq!(hub.key_usage(&keypair(1).public()).channels, 0);
        assert_eq!(hub.key_usage(&keypair(2).public()).channels, 0);
    }
}

/// While the orphan drains, what its receiver sends toward the gone end
/// is dropped without fault, and the receiver learns it was not heard: a
/// reset, not a clean close, even though it finished. Its leaving releases
/// everything.
#[test]
fn an_orphans_receiver_is_told_its_words_went_unheard() {
    let mut net = net();
    let a = unix(&mut net, 1);
    let b = unix(&mut net, 2);
    register(&mut net, b, "svc", false);
    let (ca, cb) = open_and_accept(&mut net, a, b, "svc");
    net.node(b).slow = true;
    net.node(a)
        .session
        .send(ca, Bytes::from(vec![7; 100_000]))
        .unwrap();
    net.node(a).session.finish(ca).unwrap();
    net.run();
    net.kill(a);
    net.run();
    assert_eq!(net.broker.hub().route_count(), 1);
    // b writes on and finishes, its reads still paused.
    net.node(b)
        .session
        .send(cb, Bytes::from(vec![9; 50_000]))
        .unwrap();
    net.node(b).session.finish(cb).unwrap();
    net.run();
    net.broker.hub().check_byte_books().unwrap();
    net.node(b).slow = false;
    let (received, end) = read_to_end(&mut net, b, cb);
    assert_eq!(received, vec![7; 100_000]);
    assert_peer_gone(&end);
    assert!(!net.node(b).closed, "b is still connected");
    let events = net.events(b);
    assert!(
        !events.contains(&SessionEvent::ChannelClosed { channel: cb }),
        "{events:?}"
    );
    assert_eq!(net.broker.hub().route_count(), 0);
    net.kill(b);
    net.run();
    net.broker.hub().check_empty().unwrap();
}

/// The orphan's books are the key's that keeps it: when it cannot take
/// them on, the channel is reset at once, as before orphans.
#[test]
fn an_orphan_over_its_keepers_budget_is_reset_at_once() {
    let mut net = Net::new(1, Chaos::default(), |c| {
        // Room for one channel's reservation per key.
        c.limits.max_bytes_per_key = 2 * u64::from(c.limits.initial_window);
    });
    let a = unix(&mut net, 1);
    let b = unix(&mut net, 2);
    register(&mut net, b, "svc", false);
    let (ca, cb) = open_and_accept(&mut net, a, b, "svc");
    // b holds a channel of its own, its whole budget.
    let c = unix(&mut net, 3);
    register(&mut net, c, "other", false);
    open_and_accept(&mut net, b, c, "other");
    net.node(b).slow = true;
    net.node(a)
        .session
        .send(ca, Bytes::from(vec![7; 1000]))
        .unwrap();
    net.node(a).session.finish(ca).unwrap();
    net.run();
    net.kill(a);
    net.run();
    net.node(b).slow = false;
    let (_, end) = read_to_end(&mut net, b, cb);
    assert_peer_gone(&end);
    assert_eq!(net.broker.hub().route_count(), 1, "b's channel to c");
    net.broker.hub().check_byte_books().unwrap();
    assert_eq!(net.broker.hub().key_usage(&keypair(1).public()).channels, 0);
}

/// A plugin writing frames straight from its buffer, its socket taking
/// any part of each: the peer reads every byte, in order, and what the
/// socket did not take goes out first.
#[test]
fn frames_written_straight_from_the_senders_buffer_arrive_whole() {
    for take in [0, 3, 9, 100, 5000, usize::MAX] {
        let mut net = net();
        let a = unix(&mut net, 1);
        let b = unix(&mut net, 2);
        register(&mut net, b, "svc", false);
        let (ca, cb) = open_and_accept(&mut net, a, b, "svc");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 253) as u8).collect();
        let mut sent = 0;
        let mut received = Vec::new();
        for _ in 0..1000 {
            if sent < data.len() {
                let mut wire = Vec::new();
                let session = &mut net.node(a).session;
                let taken = session
                    .send_through(ca, &data[sent..], |parts| {
                        let all = parts.concat();
                        let n = take.min(all.len());
                        wire.extend_from_slice(&all[..n]);
                        n
                    })
                    .unwrap();
                net.written_through(a, Bytes::from(wire));
                sent += match taken {
                    0 => {
                        let rest = Bytes::copy_from_slice(&data[sent..]);
                        net.node(a).session.send(ca, rest).unwrap()
                    }
                    n => n,
                };
            }
            net.run();
            received.extend_from_slice(&read_all(&mut net, b, cb));
            net.events(a);
            net.events(b);
            if received.len() == data.len() {
                break;
            }
        }
        assert!(
            received == data,
            "take {take}: {} of {}",
            received.len(),
            data.len()
        );
        net.broker.hub().check_byte_books().unwrap();
    }
}

/// An orphan at the end that opened the channel, with its window grown:
/// the growth stays reserved (the receiver's) while it drains, the opens
/// reservation was the opener's all along, and both go once it is sent.
#[test]
fn an_orphan_that_opened_keeps_its_growth_until_drained() {
    let mut net = net();
    let a = unix(&mut net, 1);
    let b = unix(&mut net, 2);
    register(&mut net, a, "svc", false);
    let (cb, ca) = open_and_accept(&mut net, b, a, "svc");
    // b reads as it arrives: its window, and the growth for it, grow.
    let warm: Vec<u8> = (0..4_000_000u32).map(|i| i as u8).collect();
    assert_eq!(transfer(&mut net, a, ca, b, cb, &warm).len(), warm.len());
    let (b_key, a_key) = (keypair(2).public(), keypair(1).public());
    net.node(b).slow = true;
    let mut sent = Vec::new();
    for _ in 0..100 {
        let chunk = Bytes::from(vec![sent.len() as u8; 64 * 1024]);
        match net.node(a).session.send(ca, chunk.clone()).unwrap() {
            0 => break,
            n => sent.extend_from_slice(&chunk[..n]),
        }
        net.run();
    }
    net.node(a).session.finish(ca).unwrap();
    net.run();
    let grown = net.broker.hub().bytes_grown(&b_key, Some(&a_key));
    assert!(grown > 0, "b's window grew beyond the initial one");
    net.kill(a);
    net.run();
    let hub = net.broker.hub();
    assert_eq!(hub.route_count(), 1);
    assert_eq!(
        hub.bytes_grown(&b_key, Some(&a_key)),
        grown,
        "kept while it drains"
    );
    assert_eq!(hub.bytes_reserved(Some(&a_key)), 0);
    assert_eq!(hub.key_usage(&a_key).channels, 0);
    hub.check_byte_books().unwrap();

    net.node(b).slow = false;
    let (received, end) = read_to_end(&mut net, b, cb);
    assert!(
        received == sent,
        "{} of {} bytes",
        received.len(),
        sent.len()
    );
    assert!(matches!(end, Recv::Finished), "{end:?}");
    net.run();
    let hub = net.broker.hub();
    assert_eq!(hub.route_count(), 0);
    assert_eq!(hub.bytes_grown(&b_key, None), 0);
    assert_eq!(hub.bytes_reserved(Some(&b_key)), 0);
    assert_eq!(hub.key_usage(&b_key).channels, 0);
    hub.check_byte_books().unwrap();
}
