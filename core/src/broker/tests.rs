//! The broker with real sessions over in-memory links: every request, every
//! refusal, every violation.

use std::time::Duration;

use bytes::Bytes;

use crate::control::{
    ChannelPath, ErrorCode, IncomingPath, Member, Name, OpenedPath, Presence, TransportKind,
};
use crate::keys::Keypair;
use crate::session::SessionEvent;
use crate::sim::{Chaos, Net, NodeId};

use super::*;
use rand_chacha::rand_core::SeedableRng;

fn net() -> Net {
    Net::new(1, Chaos::default(), |_| {})
}

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn keypair(seed: u8) -> Keypair {
    Keypair::from_seed([seed; 32])
}

/// A plugin that completed its hello.
fn ready(net: &mut Net, seed: u8, transport: TransportKind) -> NodeId {
    let id = net.connect(keypair(seed), transport).expect("accepted");
    net.run();
    let events = net.events(id);
    assert!(
        matches!(events.first(), Some(SessionEvent::Ready { .. })),
        "not ready: {events:?}"
    );
    id
}

fn unix(net: &mut Net, seed: u8) -> NodeId {
    ready(net, seed, TransportKind::Unix)
}

/// Runs, then returns the one event the plugin got.
fn one_event(net: &mut Net, id: NodeId) -> SessionEvent {
    net.run();
    let mut events = net.events(id);
    assert_eq!(events.len(), 1, "expected one event: {events:?}");
    events.remove(0)
}

fn register(net: &mut Net, id: NodeId, n: &str, wait: bool) -> SessionEvent {
    let now = net.now;
    net.node(id)
        .session
        .register(now, name(n), wait, None)
        .unwrap();
    one_event(net, id)
}

fn failed_code(event: &SessionEvent) -> ErrorCode {
    match event {
        SessionEvent::Failed { code, .. } => *code,
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// `opener` opens to `target_name`; the target accepts. Returns both channel ids.
fn open_and_accept(net: &mut Net, opener: NodeId, target: NodeId, target_name: &str) -> (u32, u32) {
    let now = net.now;
    let (_, channel) = net
        .node(opener)
        .session
        .open(
            now,
            name(target_name),
            "echo",
            Bytes::from_static(b"meta"),
            false,
        )
        .unwrap();
    let SessionEvent::Incoming {
        channel: theirs,
        metadata,
        protocol,
        ..
    } = one_event(net, target)
    else {
        panic!("no incoming");
    };
    assert_eq!((&metadata[..], protocol.as_str()), (&b"meta"[..], "echo"));
    let now = net.now;
    net.node(target).session.accept(now, theirs).unwrap();
    let SessionEvent::Opened {
        channel: ours,
        path,
        ..
    } = one_event(net, opener)
    else {
        panic!("not opened");
    };
    assert_eq!((ours, path), (channel, OpenedPath::Relay));
    (channel, theirs)
}

/// `a` opens a channel to `target_name` (owned by `b`); returns both ends' ids,
/// the offer not yet answered.
fn offer(net: &mut Net, a: NodeId, b: NodeId, target_name: &str) -> (u32, u32) {
    let now = net.now;
    let (_, channel) = net
        .node(a)
        .session
        .open(now, name(target_name), "p", Bytes::new(), false)
        .unwrap();
    net.run();
    let SessionEvent::Incoming {
        channel: theirs, ..
    } = one_event(net, b)
    else {
        panic!("no incoming")
    };
    (channel, theirs)
}

/// Sends `data` from one end to the other through the broker, consuming as
/// it arrives; returns what arrived.
fn transfer(
    net: &mut Net,
    from: NodeId,
    from_ch: u32,
    to: NodeId,
    to_ch: u32,
    data: &[u8],
) -> Vec<u8> {
    let mut sent = 0;
    let mut received = Vec::new();
    for _ in 0..10_000 {
        if sent < data.len() {
            let chunk = Bytes::copy_from_slice(&data[sent..(sent + 16 * 1024).min(data.len())]);
            sent += net.node(from).session.send(from_ch, chunk).unwrap();
        }
        net.run();
        for event in net.events(to) {
            if let SessionEvent::Data { channel, payload } = event {
                assert_eq!(channel, to_ch);
                net.node(to).session.consume(to_ch, payload.len());
                received.extend_from_slice(&payload);
            }
        }
        net.events(from);
        if received.len() == data.len() {
            return received;
        }
    }
    panic!("stalled after {} of {} bytes", received.len(), data.len());
}

#[test]
fn register_list_and_names_are_unique() {
    let mut net = net();
    let a = unix(&mut net, 1);
    let b = unix(&mut net, 2);
    assert_eq!(
        register(&mut net, a, "alpha", false),
        SessionEvent::Registered {
            request: 1,
            queued: false
        }
    );
    assert_eq!(
        failed_code(&register(&mut net, b, "alpha", false)),
        ErrorCode::NameTaken
    );
    assert_eq!(
        failed_code(&register(&mut net, a, "beta", false)),
        ErrorCode::AlreadyRegistered
    );

    let now = net.now;
    net.node(b).session.list(now).unwrap();
    let SessionEvent::Members { members, .. } = one_event(&mut net, b) else {
        panic!("no members");
    };
    assert_eq!(members.len(), 1);
    assert_eq!(
        (members[0].name.as_str(), members[0].key),
        ("alpha", keypair(1).public())
    );
    assert_eq!(members[0].transport, TransportKind::Unix);
}

#[test]
fn waiting_in_line_takes_over_and_watchers_see_it() {
    let mut net = net();
    let owner = unix(&mut net, 1);
    let standby = unix(&mut net, 2);
    let watcher = unix(&mut net, 3);
    register(&mut net, owner, "db", false);
    let now = net.now;
    net.node(watcher).session.watch(now).unwrap();
    let SessionEvent::Watching { seq, members, .. } = one_event(&mut net, watcher) else {
        panic!("no snapshot");
    };
    assert_eq!(seq, 1);
    assert_eq!(
        members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        ["db"]
    );

    assert_eq!(
        register(&mut net, standby, "db", true),
        SessionEvent::Registered {
            request: 1,
            queued: true
        }
    );
    net.kill(owner);
    net.run();
    assert_eq!(
        net.events(standby),
        vec![SessionEvent::NameAcquired { name: name("db") }]
    );
    let events = net.events(watcher);
    assert!(
        matches!(&events[..], [SessionEvent::Presence { seq: 2, presence: Presence::OwnerChanged { old_key, new, .. } }]
            if *old_key == keypair(1).public() && new.key == keypair(2).public()),
        "{events:?}"
    );
    net.kill(standby);
    net.run();
    assert!(matches!(
        &net.events(watcher)[..],
        [SessionEvent::Presence {
            seq: 3,
            presence: Presence::Down { .. }
        }]
    ));
    assert!(net.broker.registry().is_empty());
}

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
        assert!(net.broker.buffered_bytes() <= 2 * 256 * 1024);

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
        assert_eq!(net.broker.route_count(), 0);
        assert_eq!(net.broker.key_usage(&keypair(1).public()).channels, 0);
    }
}

#[test]
fn refusals_say_which_refusal() {
    let mut net = net();
    let a = unix(&mut net, 1);
    let b = unix(&mut net, 2);
    register(&mut net, b, "target", false);
    let now = net.now;
    let open = |net: &mut Net| {
        let now = net.now;
        net.node(a)
            .session
            .open(now, name("target"), "p", Bytes::new(), false)
            .unwrap();
    };

    // Nobody has the name.
    net.node(a)
        .session
        .open(now, name("nobody"), "p", Bytes::new(), false)
        .unwrap();
    assert_eq!(failed_code(&one_event(&mut net, a)), ErrorCode::NoSuchName);

    // The owner rejects, with a reason the opener sees.
    open(&mut net);
    let SessionEvent::Incoming { channel, .. } = one_event(&mut net, b) else {
        panic!()
    };
    net.node(b).session.reject(channel, "busy").unwrap();
    let event = one_event(&mut net, a);
    assert!(
        matches!(&event, SessionEvent::Failed { code: ErrorCode::Rejected, message, .. } if message == "busy")
    );

    // The owner does not answer in time: the opener is told, the target's offer is withdrawn.
    open(&mut net);
    let SessionEvent::Incoming { channel, .. } = one_event(&mut net, b) else {
        panic!()
    };
    net.advance(Duration::from_secs(11));
    net.run();
    assert_eq!(failed_code(&one_event(&mut net, a)), ErrorCode::OpenTimeout);
    assert!(
        matches!(net.events(b)[..], [SessionEvent::Reset { channel: c, code: ErrorCode::OpenTimeout, .. }] if c == channel)
    );
    assert_eq!(net.broker.pending_open_count(), 0);

    // The target goes away before answering.
    open(&mut net);
    one_event(&mut net, b);
    net.kill(b);
    net.run();
    assert_eq!(failed_code(&one_event(&mut net, a)), ErrorCode::PeerGone);
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
    let b = &net.broker;
    assert_eq!(
        (
            b.connection_count(),
            b.route_count(),
            b.pending_open_count(),
            b.timer_count(),
            b.key_count(),
            b.other_accounts()
        ),
        (0, 0, 0, 0, 0, 0)
    );
    assert!(b.registry().is_empty());
    assert_eq!(b.watchers().count(), 0);
    assert_eq!(b.buffered_bytes(), 0);
}

#[test]
fn tcp_admits_only_named_keys_and_policy_refuses_with_a_code() {
    let granted = keypair(7).public();
    let mut net = Net::new(3, Chaos::default(), |c| {
        c.policy.keys.push(policy::KeyGrant {
            id: granted,
            register: vec![policy::Pattern::new("ok-*")],
            open: vec![],
            direct: vec![policy::Pattern::new("tcp:10.0.0.*:*")],
            list: false,
            watch: false,
            stats: false,
        });
    });
    // A foreign key over TCP: refused in the handshake, nothing sent after message 2.
    let stranger = net.connect(keypair(8), TransportKind::Tcp).unwrap();
    net.run();
    assert!(net.node(stranger).closed);
    assert!(net.log.iter().any(|l| l.message.contains("not admitted")));

    let g = ready(&mut net, 7, TransportKind::Tcp);
    assert_eq!(
        failed_code(&register(&mut net, g, "nope", false)),
        ErrorCode::NotPermitted
    );
    // Openers dial only where the policy lets the name holder send them.
    let now = net.now;
    let far = Some("tcp:192.0.2.1:22".to_owned());
    net.node(g)
        .session
        .register(now, name("ok-2"), false, far)
        .unwrap();
    match one_event(&mut net, g) {
        SessionEvent::Failed { code, message, .. } => {
            assert_eq!(code, ErrorCode::NotPermitted);
            assert!(
                message.contains("may not tell openers to dial"),
                "{message}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let near = Some("tcp:10.0.0.5:4000".to_owned());
    net.node(g)
        .session
        .register(now, name("ok-1"), false, near)
        .unwrap();
    assert!(matches!(
        one_event(&mut net, g),
        SessionEvent::Registered { .. }
    ));
    let now = net.now;
    net.node(g).session.list(now).unwrap();
    assert_eq!(
        failed_code(&one_event(&mut net, g)),
        ErrorCode::NotPermitted
    );
    net.node(g)
        .session
        .open(now, name("ok-1"), "p", Bytes::new(), false)
        .unwrap();
    assert_eq!(
        failed_code(&one_event(&mut net, g)),
        ErrorCode::NotPermitted
    );

    // Unix peers may not ask for stats by default; the broker's own key may.
    let u = unix(&mut net, 9);
    net.node(u).session.stats(now).unwrap();
    assert_eq!(
        failed_code(&one_event(&mut net, u)),
        ErrorCode::NotPermitted
    );
    let owner = unix(&mut net, 0xB0);
    net.node(owner).session.stats(now).unwrap();
    let SessionEvent::Stats { keys, names, .. } = one_event(&mut net, owner) else {
        panic!()
    };
    assert_eq!(keys.len(), 3);
    assert_eq!(names.len(), 1);
}

#[test]
fn limits_fail_the_one_request_not_the_connection() {
    let mut net = Net::new(4, Chaos::default(), |c| {
        c.limits.max_pending_opens_per_key = 2;
        c.limits.max_channels_per_key = 3;
        c.limits.max_connections_per_key = 2;
    });
    let a = unix(&mut net, 1);
    let b = unix(&mut net, 2);
    register(&mut net, b, "t", false);
    let now = net.now;
    for _ in 0..3 {
        net.node(a)
            .session
            .open(now, name("t"), "p", Bytes::new(), false)
            .unwrap();
    }
    net.run();
    let events = net.events(a);
    assert_eq!(events.len(), 1);
    assert_eq!(failed_code(&events[0]), ErrorCode::TooManyPendingOpens);
    for event in net.events(b) {
        let SessionEvent::Incoming { channel, .. } = event else {
            panic!()
        };
        let now = net.now;
        net.node(b).session.accept(now, channel).unwrap();
    }
    net.run();
    assert_eq!(net.events(a).len(), 2);
    // Two channels held: one more open fits, the next does not.
    net.node(a)
        .session
        .open(now, name("t"), "p", Bytes::new(), false)
        .unwrap();
    net.node(a)
        .session
        .open(now, name("t"), "p", Bytes::new(), false)
        .unwrap();
    net.run();
    let events = net.events(a);
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(
                e,
                SessionEvent::Failed {
                    code: ErrorCode::TooManyChannels,
                    ..
                }
            ))
            .count(),
        1
    );
    // The connection still works.
    assert!(!net.node(a).closed);

    // A second connection of the same key is fine; a third is refused in the handshake.
    unix(&mut net, 1);
    let third = net.connect(keypair(1), TransportKind::Unix).unwrap();
    net.run();
    assert!(net.node(third).closed);
    assert!(net
        .log
        .iter()
        .any(|l| l.message.contains("already has 2 connections")));
}

#[test]
fn a_watcher_that_does_not_read_is_cut_and_nobody_else_notices() {
    let mut net = Net::new(5, Chaos::default(), |c| c.limits.max_control_queue = 4096);
    // A plugin that does not offer FEATURE_WATCH_RESYNC: the blame rule.
    let watcher = net
        .connect_with(keypair(1), TransportKind::Unix, |c| c.features = 0)
        .unwrap();
    net.run();
    net.events(watcher);
    let now = net.now;
    net.node(watcher).session.watch(now).unwrap();
    net.run();
    net.events(watcher);
    net.node(watcher).slow = true;
    // Churn of names produces events the watcher asked for but does not read.
    for i in 0..200 {
        let churn = unix(&mut net, 2);
        register(&mut net, churn, &format!("name-{i}"), false);
        net.kill(churn);
        net.run();
        if net.node(watcher).closed {
            break;
        }
    }
    assert!(
        net.node(watcher).closed,
        "the slow watcher was not disconnected"
    );
    assert!(net
        .log
        .iter()
        .any(|l| l.code == Some(ErrorCode::SlowReader)));
}

#[test]
fn a_watcher_that_falls_behind_others_churn_is_resynchronised_not_cut() {
    let mut net = Net::new(5, Chaos::default(), |c| {
        c.limits.max_control_queue = 4096;
        c.limits.registrations_per_source_per_s = 1000;
        c.limits.registrations_per_s = 1000;
    });
    let watcher = unix(&mut net, 1);
    let now = net.now;
    net.node(watcher).session.watch(now).unwrap();
    let SessionEvent::Watching { seq: start, .. } = one_event(&mut net, watcher) else {
        panic!("no snapshot");
    };
    net.node(watcher).slow = true;
    // Churn it asked to hear about, far more than its control queue holds;
    // one name stays, so the resync has something to show.
    let stays = unix(&mut net, 3);
    register(&mut net, stays, "stays", false);
    for i in 0..200 {
        let churn = unix(&mut net, 2);
        register(&mut net, churn, &format!("name-{i}"), false);
        net.kill(churn);
        net.run();
    }
    assert!(
        !net.node(watcher).closed,
        "the watcher was cut for others' churn"
    );
    let conn = net.node(watcher).conn;
    assert!(net.broker.queued_for(conn) <= 4096);
    assert!(net
        .log
        .iter()
        .any(|l| l.message.contains("fell behind its watch")));

    // It reads again: what was queued, then the registry as it is now.
    net.node(watcher).slow = false;
    net.run();
    let events = net.events(watcher);
    let Some((SessionEvent::Resynced { seq, members }, before)) = events.split_last() else {
        panic!("no resync at the end: {events:?}");
    };
    assert_eq!(*seq, net.broker.registry().seq());
    assert_eq!(
        members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        ["stays"]
    );
    // What came before is the gap-free start of the changes.
    for (i, event) in before.iter().enumerate() {
        assert!(
            matches!(event, SessionEvent::Presence { seq, .. } if *seq == start + 1 + i as u64),
            "{event:?}"
        );
    }
    assert!(start + (before.len() as u64) < *seq, "nothing was dropped");

    // Changes follow the resync without a gap.
    net.kill(stays);
    net.run();
    let events = net.events(watcher);
    assert!(
        matches!(&events[..], [SessionEvent::Presence { seq: next, presence: Presence::Down { .. } }] if *next == seq + 1),
        "{events:?}"
    );
}

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
    let a = unix(&mut net, 1);
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
    assert_eq!(net.broker.connection_count(), 0);
    assert!(net
        .log
        .iter()
        .any(|l| l.conn == conn && l.message.contains("handshake timed out")));
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
                net.broker.route_count(),
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
fn members_report_connection_age() {
    let mut net = net();
    let a = unix(&mut net, 1);
    register(&mut net, a, "old", false);
    net.advance(Duration::from_millis(2500));
    let now = net.now;
    net.node(a).session.list(now).unwrap();
    let SessionEvent::Members { members, .. } = one_event(&mut net, a) else {
        panic!()
    };
    let [Member { connected_ms, .. }] = &members[..] else {
        panic!()
    };
    assert_eq!(*connected_ms, 2500);
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
    assert_eq!(net.broker.key_usage(&keypair(1).public()).channels, 2);
    net.kill(a);
    net.run();
    assert_eq!(net.broker.key_count(), 0);
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
fn watch_state_is_checked() {
    let mut net = net();
    let a = unix(&mut net, 1);
    let now = net.now;
    net.node(a).session.unwatch(now).unwrap();
    assert_eq!(failed_code(&one_event(&mut net, a)), ErrorCode::WatchState);
    net.node(a).session.watch(now).unwrap();
    one_event(&mut net, a);
    net.node(a).session.watch(now).unwrap();
    assert_eq!(failed_code(&one_event(&mut net, a)), ErrorCode::WatchState);
    net.node(a).session.unwatch(now).unwrap();
    assert!(matches!(one_event(&mut net, a), SessionEvent::Done { .. }));
    assert_eq!(net.broker.watchers().count(), 0);
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
        .filter(|l| l.code == Some(ErrorCode::TooManyConnections))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].message.contains("refusing connections"),
        "{lines:?}"
    );
}

#[test]
fn a_target_that_does_not_read_is_not_disturbed_the_opener_is_refused() {
    let mut net = Net::new(10, Chaos::default(), |c| c.limits.max_control_queue = 2048);
    let a = unix(&mut net, 1);
    let b = unix(&mut net, 2);
    register(&mut net, b, "deaf", false);
    net.node(b).slow = true;
    let now = net.now;
    let metadata = Bytes::from(vec![0; 1000]);
    let mut codes = Vec::new();
    for _ in 0..4 {
        net.node(a)
            .session
            .open(now, name("deaf"), "p", metadata.clone(), false)
            .unwrap();
        net.run();
        codes.extend(net.events(a).iter().map(failed_code));
    }
    assert!(codes.contains(&ErrorCode::PeerBusy), "{codes:?}");
    assert!(
        !net.node(b).closed,
        "the target is not blamed for traffic it did not ask for"
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
    assert!(net.broker.key_of(conn).is_none(), "closed");
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
        net.broker.key_usage(&keypair(1).public()),
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
        assert_eq!(net.broker.connection_count(), 0);
    }
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
    assert_eq!(net.broker.key_of(conn), None, "closed as a slow reader");
    assert!(
        net.broker.registry().owner(&name("last")).is_none(),
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
    assert_eq!(net.broker.route_count(), 0);
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
        .find(|e| e.message.starts_with("rejected: "))
        .expect("the rejection is logged");
    assert_eq!(
        line.message,
        "rejected: no\\r\\n2026-12-03 INFO key=@admin registered root\\u{1b}[2J"
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

fn from_user(uid: u32) -> Origin {
    Origin::unix(0, Some(Cred { uid, gid: uid }))
}

/// Keys cost nothing to make; a uid does: one user's processes, with a
/// fresh key each, stop at the per-uid limit, and another user still gets in.
#[test]
fn one_user_with_many_keys_stops_at_its_limit() {
    let mut net = Net::new(21, Chaos::default(), |c| {
        c.limits.max_connections_per_uid = 3;
        c.owner_uid = Some(1000);
        c.policy = Policy::from_toml("[[user]]\nuid = 1001\nlist = true\n").unwrap();
    });
    let mut mine = Vec::new();
    for seed in 1..=3 {
        mine.push(
            net.connect_from(keypair(seed), from_user(1001), |_| {})
                .unwrap(),
        );
    }
    assert_eq!(
        net.broker.accept(net.now, from_user(1001)),
        Err(AcceptError::TooManyForUser {
            uid: 1001,
            limit: 3
        })
    );
    let owner = net
        .connect_from(keypair(9), from_user(1000), |_| {})
        .unwrap();
    net.run();
    for id in mine.iter().copied().chain([owner]) {
        assert!(
            matches!(net.events(id).first(), Some(SessionEvent::Ready { .. })),
            "node {id} is not ready"
        );
    }
    assert_eq!(net.broker.uid_connections(1001), 3);
    net.kill(mine[0]);
    net.run();
    assert_eq!(net.broker.uid_connections(1001), 2);
    assert!(net
        .connect_from(keypair(4), from_user(1001), |_| {})
        .is_some());
    let refusals: Vec<_> = net.log.iter().filter(|l| l.warning).collect();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert!(refusals[0].message.contains("uid 1001"), "{refusals:?}");
}

/// On a socket other users can reach, only the broker's own user has the
/// `[unix]` rights; another gets what its `[[user]]` entry grants, and one
/// with no entry is refused in the handshake.
#[test]
fn other_users_get_only_what_the_policy_names() {
    let mut net = Net::new(22, Chaos::default(), |c| {
        c.owner_uid = Some(1000);
        c.policy = Policy::from_toml("[[user]]\nuid = 1001\nopen = [\"svc\"]\n").unwrap();
    });
    let owner = net
        .connect_from(keypair(1), from_user(1000), |_| {})
        .unwrap();
    let granted = net
        .connect_from(keypair(2), from_user(1001), |_| {})
        .unwrap();
    let stranger = net
        .connect_from(keypair(3), from_user(1002), |_| {})
        .unwrap();
    net.run();
    assert!(matches!(
        net.events(owner).first(),
        Some(SessionEvent::Ready { .. })
    ));
    assert!(matches!(
        net.events(granted).first(),
        Some(SessionEvent::Ready { .. })
    ));
    assert!(net.node(stranger).session.is_closed());
    assert!(
        net.log
            .iter()
            .any(|l| l.code == Some(ErrorCode::NotPermitted) && l.message.contains("uid 1002")),
        "{:?}",
        net.log
    );
    assert!(matches!(
        register(&mut net, owner, "svc", false),
        SessionEvent::Registered { .. }
    ));
    assert_eq!(
        failed_code(&register(&mut net, granted, "mine", false)),
        ErrorCode::NotPermitted
    );
    open_and_accept(&mut net, granted, owner, "svc");
}

/// A connection that does not read keeps every socketpair end meant for it
/// open in the broker: its key may have only so many in flight; channels
/// beyond are relayed (and work), and the ends are free once it reads.
#[test]
fn socketpair_ends_for_a_connection_that_does_not_read_are_bounded() {
    let mut net = Net::new(23, Chaos::default(), |c| {
        c.fd_passing = true;
        c.limits.max_descriptors_per_key = 4;
    });
    let a = unix(&mut net, 1);
    let b = unix(&mut net, 2);
    register(&mut net, b, "direct", false);
    net.node(a).slow = true;
    let mut paths = Vec::new();
    for _ in 0..10 {
        let now = net.now;
        net.node(a)
            .session
            .open(now, name("direct"), "p", Bytes::new(), true)
            .unwrap();
        let SessionEvent::Incoming { channel, .. } = one_event(&mut net, b) else {
            panic!("an incoming open")
        };
        let now = net.now;
        net.node(b).session.accept(now, channel).unwrap();
        match one_event(&mut net, b) {
            SessionEvent::ChannelPath { path, .. } => paths.push(path),
            other => panic!("expected the channel's path, got {other:?}"),
        }
    }
    let pairs = paths
        .iter()
        .filter(|p| **p == ChannelPath::SocketPair)
        .count();
    assert_eq!((pairs, paths.len() - pairs), (4, 6), "{paths:?}");
    let a_key = keypair(1).public();
    assert_eq!(net.broker.descriptors_in_flight(Some(&a_key)), 4);
    assert_eq!(net.broker.descriptors_in_flight(None), 4);
    assert!(net
        .log
        .iter()
        .any(|l| l.message.contains("relaying, not a socketpair")));
    // It reads: its ends ride out, and the budget is whole again.
    net.node(a).slow = false;
    net.run();
    assert_eq!(net.broker.descriptors_in_flight(None), 0);
}

/// A refusal's code and message.
type Refusal = (ErrorCode, String);

/// Opens from `opener` to `target_name` up to `tries` times, `target`
/// accepting whatever arrives, until the first refusal. Returns the
/// channels made (opener's id, target's id) and the refusal.
fn open_until_refused(
    net: &mut Net,
    opener: NodeId,
    target: NodeId,
    target_name: &str,
    tries: usize,
) -> (Vec<(u32, u32)>, Option<Refusal>) {
    let mut made = Vec::new();
    for _ in 0..tries {
        let now = net.now;
        net.node(opener)
            .session
            .open(now, name(target_name), "p", Bytes::new(), false)
            .unwrap();
        net.run();
        let mut theirs = None;
        if let [SessionEvent::Incoming { channel, .. }] = &net.events(target)[..] {
            let now = net.now;
            net.node(target).session.accept(now, *channel).unwrap();
            net.run();
            theirs = Some(*channel);
        }
        match &net.events(opener)[..] {
            [SessionEvent::Opened { channel, .. }] => made.push((*channel, theirs.unwrap())),
            [SessionEvent::Failed { code, message, .. }] => {
                return (made, Some((*code, message.clone())))
            }
            other => panic!("expected an answer, got {other:?}"),
        }
    }
    (made, None)
}

/// One opener key cannot take a target's whole channel quota: at its share
/// it is refused, and another key's open still succeeds.
#[test]
fn one_key_holds_only_its_share_of_anothers_channels() {
    let mut net = Net::new(24, Chaos::default(), |c| {
        c.limits.max_channels_per_key = 8;
        c.limits.max_channels_between_keys = 3;
    });
    let greedy = unix(&mut net, 1);
    let other = unix(&mut net, 2);
    let target = unix(&mut net, 3);
    register(&mut net, target, "svc", false);
    // The greedy key asks for the target's whole quota and accepts what
    // arrives; before the share bound it got all eight and everyone else
    // error 9.
    let (made, refusal) = open_until_refused(&mut net, greedy, target, "svc", 8);
    assert_eq!(made.len(), 3);
    let (code, message) = refusal.expect("refused at its share");
    assert_eq!(code, ErrorCode::TooManyChannels);
    assert!(
        message.contains("the most one key may hold with another"),
        "{message}"
    );
    let (g, t) = (keypair(1).public(), keypair(3).public());
    assert_eq!(net.broker.channels_between(t, g), 3);
    open_and_accept(&mut net, other, target, "svc");
}

#[test]
fn a_key_that_writes_everywhere_and_reads_nothing_stops_at_its_byte_budget() {
    const WINDOW: u32 = 4096;
    let mut net = Net::new(26, Chaos::default(), |c| {
        c.limits.initial_window = WINDOW;
        c.limits.max_window = 64 * 1024;
        c.limits.max_bytes_per_key = 5 * 2 * u64::from(WINDOW) + 3000;
    });
    let greedy = unix(&mut net, 1);
    let other = unix(&mut net, 2);
    let target = unix(&mut net, 3);
    register(&mut net, target, "svc", false);
    register(&mut net, greedy, "sink", false);
    // Before the byte budget, opens stopped only at max_channels_per_key
    // (4096), each able to make the broker hold two windows.
    let (made, refusal) = open_until_refused(&mut net, greedy, target, "svc", 6);
    let refusal = refusal.expect("refused past the budget");
    let (channels, target_channels): (Vec<u32>, Vec<u32>) = made.into_iter().unzip();
    assert_eq!(channels.len(), 5);
    assert_eq!(refusal.0, ErrorCode::TooManyBytes);
    assert!(
        refusal.1.contains("may not open another channel"),
        "{}",
        refusal.1
    );

    // It writes everywhere and reads nothing; so does the target.
    net.node(greedy).slow = true;
    for _ in 0..50 {
        for &ch in &channels {
            let _ = net
                .node(greedy)
                .session
                .send(ch, Bytes::from(vec![7; 16 * 1024]));
        }
        for &ch in &target_channels {
            let _ = net
                .node(target)
                .session
                .send(ch, Bytes::from(vec![9; 16 * 1024]));
        }
        net.run();
        net.broker.check_byte_books().unwrap();
    }
    let key = keypair(1).public();
    assert_eq!(
        net.broker.bytes_reserved(Some(&key)),
        5 * 2 * u64::from(WINDOW)
    );
    // Measured from the queues: both windows of each channel, no more.
    let held = net.broker.buffered_bytes() as u64;
    assert!(held <= 5 * 2 * u64::from(WINDOW) + 64 * 1024, "{held}");
    // Another key is not disturbed.
    net.events(target);
    open_and_accept(&mut net, other, target, "svc");
}

#[test]
fn credit_beyond_the_initial_window_is_reserved_from_the_key_that_grants_it() {
    const WINDOW: u32 = 4096;
    let budget = 3 * 2 * u64::from(WINDOW) + 20_000;
    let mut net = Net::new(27, Chaos::default(), |c| {
        c.limits.initial_window = WINDOW;
        c.limits.max_window = 64 * 1024;
        c.limits.max_bytes_per_key = budget;
    });
    let sender = unix(&mut net, 1);
    let reader = unix(&mut net, 3);
    register(&mut net, reader, "svc", false);
    let pairs: Vec<(u32, u32)> = (0..3)
        .map(|_| open_and_accept(&mut net, sender, reader, "svc"))
        .collect();
    // The reader reads everything, so its windows grow towards 64 KiB on
    // each channel; the relay passes that credit on only as far as the
    // reader's key may reserve, and every transfer completes.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut sent = [0usize; 3];
    let mut received = [0usize; 3];
    let reader_key = keypair(3).public();
    let mut most = 0;
    for _ in 0..20_000 {
        for (i, &(s, _)) in pairs.iter().enumerate() {
            if sent[i] < data.len() {
                let chunk =
                    Bytes::copy_from_slice(&data[sent[i]..(sent[i] + 16 * 1024).min(data.len())]);
                sent[i] += net.node(sender).session.send(s, chunk).unwrap();
            }
        }
        net.run();
        for event in net.events(reader) {
            if let SessionEvent::Data { channel, payload } = event {
                let i = pairs.iter().position(|p| p.1 == channel).unwrap();
                net.node(reader).session.consume(channel, payload.len());
                received[i] += payload.len();
            }
        }
        net.events(sender);
        net.broker.check_byte_books().unwrap();
        most = most.max(net.broker.bytes_reserved(Some(&reader_key)));
        if received.iter().all(|&n| n == data.len()) {
            break;
        }
    }
    assert_eq!(received, [data.len(); 3]);
    // The reader's key paid for credit beyond the initial windows, up to its budget.
    assert!(most > 0 && most <= budget, "{most}");
}

/// Credit passed through the relay is one WINDOW per channel per write,
/// however many grants made it: a receiver that sends 150,000 one-byte
/// WINDOW frames while its victim does not read cannot get the victim cut
/// off as a slow reader (before, each grant was its own 14-byte frame on
/// the victim's control queue: GOAWAY 19).
#[test]
fn a_window_flood_does_not_cut_off_the_victim() {
    let mut net = net();
    let victim = unix(&mut net, 1);
    let attacker = unix(&mut net, 2);
    register(&mut net, attacker, "svc", false);
    let (victims, attackers) = open_and_accept(&mut net, victim, attacker, "svc");
    net.node(victim).slow = true;
    let mut flood = bytes::BytesMut::new();
    for _ in 0..150_000 {
        let window = crate::mux::Frame::Window {
            channel: attackers,
            increment: 1,
        };
        crate::mux::frame::encode(&window, &mut flood);
    }
    let conn = net.node(attacker).conn;
    net.broker.handle_input(net.now, conn, &flood);
    net.run();
    assert!(!net.node(victim).closed, "the victim was cut off");
    // It all arrives as credit once the victim reads again.
    net.node(victim).slow = false;
    net.run();
    let granted = net.node(victim).session.send_capacity(victims);
    assert_eq!(granted, 256 * 1024 + 150_000);
}

/// Registrations are rate-limited per source (here, one uid) and in all:
/// a register storm is refused with TooFast (before, every one was an event
/// for every watcher), and another user still registers.
#[test]
fn a_register_storm_is_slowed_per_user_and_in_all() {
    let mut net = Net::new(28, Chaos::default(), |c| {
        c.limits.registrations_per_source_per_s = 5;
        c.limits.registrations_per_s = 8;
        c.limits.max_connections_per_key = 100;
        c.owner_uid = Some(1000);
        c.policy.users = vec![policy::UserGrant {
            who: policy::User::Uid(1001),
            rights: policy::Permissions::all(),
        }];
    });
    let storm: Vec<NodeId> = (0..12)
        .map(|_| {
            let origin = Origin::unix(
                0,
                Some(Cred {
                    uid: 1000,
                    gid: 1000,
                }),
            );
            net.connect_from(keypair(1), origin, |_| {}).unwrap()
        })
        .collect();
    let other = net
        .connect_from(
            keypair(2),
            Origin::unix(
                0,
                Some(Cred {
                    uid: 1001,
                    gid: 1001,
                }),
            ),
            |_| {},
        )
        .unwrap();
    net.run();
    for id in storm.iter().chain([&other]) {
        net.events(*id);
    }
    let mut refused = 0;
    for (i, id) in storm.iter().enumerate() {
        match register(&mut net, *id, &format!("n{i}"), false) {
            SessionEvent::Registered { .. } => {}
            event => {
                assert_eq!(failed_code(&event), ErrorCode::TooFast);
                refused += 1;
            }
        }
    }
    // Two seconds' worth at once: 10 of 12.
    assert_eq!(refused, 2);
    assert!(matches!(
        register(&mut net, other, "theirs", false),
        SessionEvent::Registered { .. }
    ));
    // Past the total (16 at once), the other user is refused too, and a
    // second later it may again.
    let more: Vec<NodeId> = (0..6)
        .map(|_| {
            let origin = Origin::unix(
                0,
                Some(Cred {
                    uid: 1001,
                    gid: 1001,
                }),
            );
            net.connect_from(keypair(2), origin, |_| {}).unwrap()
        })
        .collect();
    net.run();
    for id in &more {
        net.events(*id);
    }
    let outcomes: Vec<bool> = more
        .iter()
        .enumerate()
        .map(|(i, id)| {
            matches!(
                register(&mut net, *id, &format!("m{i}"), false),
                SessionEvent::Registered { .. }
            )
        })
        .collect();
    assert_eq!(outcomes, [true, true, true, true, true, false]);
    net.advance(std::time::Duration::from_secs(1));
    let now = net.now;
    net.node(more[5])
        .session
        .register(now, name("m5"), false, None)
        .unwrap();
    assert!(matches!(
        one_event(&mut net, more[5]),
        SessionEvent::Registered { .. }
    ));
}

/// `stats` says what each unix user holds (with FEATURE_STATS_UIDS); a
/// plugin that did not offer the bit gets the answer it always had.
#[test]
fn stats_show_each_unix_user() {
    let mut net = Net::new(29, Chaos::default(), |c| {
        c.owner_uid = Some(1000);
        c.policy = Policy::from_toml("[[user]]\nuid = 1001\nlist = true\n").unwrap();
    });
    let mine = net
        .connect_from(keypair(1), from_user(1000), |_| {})
        .unwrap();
    let theirs: Vec<NodeId> = (2..4)
        .map(|seed| {
            net.connect_from(keypair(seed), from_user(1001), |_| {})
                .unwrap()
        })
        .collect();
    net.run();
    for id in theirs.iter().chain([&mine]) {
        net.events(*id);
    }
    let owner = net
        .connect_from(keypair(0xB0), from_user(1000), |_| {})
        .unwrap();
    net.run();
    net.events(owner);
    let now = net.now;
    net.node(owner).session.stats(now).unwrap();
    let SessionEvent::Stats { uids, keys, .. } = one_event(&mut net, owner) else {
        panic!("no stats")
    };
    let per_uid: Vec<(u32, u32)> = uids.iter().map(|u| (u.uid, u.usage.connections)).collect();
    // 1000: `mine` and the owner; 1001: two.
    assert_eq!(per_uid, [(1000, 2), (1001, 2)]);
    assert_eq!(keys.len(), 4);

    let old = net
        .connect_from(keypair(0xB0), from_user(1000), |c| c.features = 0)
        .unwrap();
    net.run();
    net.events(old);
    net.node(old).session.stats(now).unwrap();
    let SessionEvent::Stats { uids, keys, .. } = one_event(&mut net, old) else {
        panic!("no stats")
    };
    assert!(uids.is_empty());
    assert_eq!(keys.len(), 4);
}
