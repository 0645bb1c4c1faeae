//! Requests on the control channel: register and waiting in line, list,
//! watch (and its resync), stats, refusals and per-request limits.

use super::*;

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
    assert!(net.broker.hub().registry().is_empty());
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
    assert_eq!(net.broker.hub().pending_open_count(), 0);

    // The target goes away before answering.
    open(&mut net);
    one_event(&mut net, b);
    net.kill(b);
    net.run();
    assert_eq!(failed_code(&one_event(&mut net, a)), ErrorCode::PeerGone);
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
            monitor: false,
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

/// A broker with a 4 KiB control queue, where anyone registers at once.
fn churny(seed: u64) -> Net {
    Net::new(seed, Chaos::default(), |c| {
        c.limits.max_control_queue = 4096;
        c.limits.registrations_per_source_per_s = 1000;
        c.limits.registrations_per_network_per_s = 1000;
        c.limits.registrations_per_s = 1000;
    })
}

/// A resync is bounded like a reply: a watcher whose session gathers at
/// most two entries ends its session when the resync brings three (the
/// session's side of `max_reply_entries`, for its resync pages).
#[test]
fn a_resync_past_the_entry_bound_ends_the_session() {
    let mut net = churny(6);
    let bounded = |c: &mut crate::session::SessionConfig| c.max_reply_entries = 2;
    let watcher = net
        .connect_with(keypair(1), TransportKind::Unix, bounded)
        .unwrap();
    net.run();
    net.events(watcher);
    let now = net.now;
    net.node(watcher).session.watch(now).unwrap();
    assert!(matches!(
        one_event(&mut net, watcher),
        SessionEvent::Watching { .. }
    ));
    net.node(watcher).slow = true;
    for seed in 3..6 {
        let stays = unix(&mut net, seed);
        register(&mut net, stays, &format!("stays-{seed}"), false);
    }
    for i in 0..200 {
        let churn = unix(&mut net, 2);
        register(&mut net, churn, &format!("name-{i}"), false);
        net.kill(churn);
        net.run();
    }
    net.node(watcher).slow = false;
    net.run();
    let closed = net.events(watcher).into_iter().find_map(|e| match e {
        SessionEvent::Closed { reason, .. } => Some(reason),
        _ => None,
    });
    assert_eq!(
        closed.as_deref(),
        Some("the broker sent a reply of more than 2 entries")
    );
}

#[test]
fn a_watcher_that_falls_behind_others_churn_is_resynchronised_not_cut() {
    let mut net = churny(5);
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
    assert!(net.broker.hub().queued_for(conn) <= 4096);
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
    assert_eq!(*seq, net.broker.hub().registry().seq());
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
    assert_eq!(net.broker.hub().watchers().count(), 0);
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

/// Regression: a resync bigger than the control-queue bound was queued from
/// `poll_transmit` and its connection closed only at some later call (and
/// meanwhile its requests were not worked on). Now it is closed at once.
#[test]
fn a_resync_over_the_bound_ends_the_watcher_at_once() {
    let mut net = Net::new(6, Chaos::default(), |c| {
        c.limits.max_control_queue = 4096;
        c.limits.registrations_per_source_per_s = 1000;
        c.limits.registrations_per_network_per_s = 1000;
        c.limits.registrations_per_s = 1000;
        c.limits.max_connections_per_key = 200;
    });
    let watcher = unix(&mut net, 1);
    let now = net.now;
    net.node(watcher).session.watch(now).unwrap();
    one_event(&mut net, watcher);
    net.node(watcher).slow = true;
    // Names that stay: the registry's snapshot outgrows the bound.
    let mut stay = Vec::new();
    for i in 0..120 {
        let id = unix(&mut net, 2);
        register(
            &mut net,
            id,
            &format!("a-long-name-that-stays-{i:0>40}"),
            false,
        );
        stay.push(id);
    }
    let conn = net.node(watcher).conn;
    assert!(net.broker.hub().is_open(conn));
    // The watcher reads: the broker drains its queue and, at a quarter,
    // queues the resync, which does not fit.
    while net.broker.poll_transmit(conn).is_some() {}
    assert!(
        !net.broker.hub().is_open(conn),
        "still open with its resync over the bound"
    );
    let cut = std::iter::from_fn(|| net.broker.poll_event())
        .any(|e| matches!(e, Event::Log(l) if l.code == Some(ErrorCode::SlowReader)));
    assert!(cut, "no SlowReader line");
}
