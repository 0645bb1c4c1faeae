//! What an operator sees and does: counters by cause, log lines that say
//! what each refusal and disconnect was, and a reload.

use super::channels::read_to_end;
use super::*;
use crate::control::MonitorKind;

fn counted(net: &Net, outcome: Outcome, cause: Cause) -> u64 {
    net.broker.counters().get(outcome, cause)
}

#[test]
fn every_refusal_and_disconnect_is_counted_by_cause_and_logged_with_its_key() {
    let mut net = net();
    let a = unix(&mut net, 1);
    let b = unix(&mut net, 2);
    let c = unix(&mut net, 3);
    register(&mut net, b, "t", false);
    let now = net.now;
    net.node(c)
        .session
        .register(now, name("t"), false, None)
        .unwrap();
    assert_eq!(failed_code(&one_event(&mut net, c)), ErrorCode::NameTaken);
    net.node(a)
        .session
        .open(now, name("missing"), "p", Bytes::new(), false)
        .unwrap();
    assert_eq!(failed_code(&one_event(&mut net, a)), ErrorCode::NoSuchName);
    // A plugin's no is counted too.
    let channel = net
        .node(a)
        .session
        .open(now, name("t"), "p", Bytes::new(), false)
        .unwrap();
    net.run();
    let Some(SessionEvent::Incoming {
        channel: offered, ..
    }) = net.events(b).pop()
    else {
        panic!("no incoming");
    };
    net.node(b).session.reject(offered, "no").unwrap();
    net.run();
    assert!(
        net.events(a).iter().any(|e| matches!(
            e,
            SessionEvent::Failed {
                code: ErrorCode::Rejected,
                ..
            }
        )),
        "channel {channel:?} was not rejected"
    );
    net.kill(c);
    net.run();

    let code = |c| Cause::Code(c);
    assert_eq!(
        counted(&net, Outcome::Refusal, code(ErrorCode::NameTaken)),
        1
    );
    assert_eq!(
        counted(&net, Outcome::Refusal, code(ErrorCode::NoSuchName)),
        1
    );
    assert_eq!(
        counted(&net, Outcome::Refusal, code(ErrorCode::Rejected)),
        1
    );
    assert_eq!(counted(&net, Outcome::Disconnect, Cause::SocketClosed), 1);
    // Each with a log line that has the key and the cause.
    let c_key = keypair(3).public();
    let line = net
        .log
        .iter()
        .find(|l| l.counted == Some((Outcome::Refusal, code(ErrorCode::NameTaken))))
        .expect("a line for the refusal");
    assert_eq!(line.key, Some(c_key));
    let line = net
        .log
        .iter()
        .find(|l| l.counted == Some((Outcome::Disconnect, Cause::SocketClosed)))
        .expect("a line for the disconnect");
    assert_eq!(line.key, Some(c_key));

    // The broker's own key reads them in `stats`.
    let owner = unix(&mut net, 0xB0);
    let now = net.now;
    net.node(owner).session.stats(now).unwrap();
    let SessionEvent::Stats { counters, .. } = one_event(&mut net, owner) else {
        panic!()
    };
    let find = |outcome, cause: &str| {
        counters
            .iter()
            .find(|c| c.outcome == outcome && c.cause == cause)
            .map(|c| c.count)
    };
    assert_eq!(find(Outcome::Refusal, "name_taken"), Some(1));
    assert_eq!(find(Outcome::Refusal, "no_such_name"), Some(1));
    assert_eq!(find(Outcome::Disconnect, "socket_closed"), Some(1));
}

#[test]
fn a_key_refused_in_the_handshake_is_a_refusal_and_a_disconnect() {
    let mut net = Net::new(3, Chaos::default(), |c| {
        c.limits.max_connections_per_key = 1;
    });
    let _first = unix(&mut net, 1);
    let second = net.connect(keypair(1), TransportKind::Unix);
    net.run();
    if let Some(id) = second {
        assert!(net
            .events(id)
            .iter()
            .all(|e| !matches!(e, SessionEvent::Ready { .. })));
    }
    let cause = Cause::Code(ErrorCode::TooManyConnections);
    assert_eq!(counted(&net, Outcome::Refusal, cause), 1);
    assert_eq!(counted(&net, Outcome::Disconnect, cause), 1);
    let line = net
        .log
        .iter()
        .find(|l| l.counted == Some((Outcome::Refusal, cause)))
        .expect("a line");
    assert_eq!(line.key, Some(keypair(1).public()));
}

#[test]
fn a_reload_applies_new_limits_to_what_comes_next_and_keeps_what_peers_were_told() {
    let mut net = Net::new(5, Chaos::default(), |c| {
        c.limits.max_connections_per_key = 2;
    });
    let a = unix(&mut net, 1);
    let b = unix(&mut net, 1);
    let window = net.broker.limits().initial_window;
    let limits = Limits {
        max_connections_per_key: 1,
        initial_window: window / 2,
        ..net.broker.limits().clone()
    };
    let kept = net.broker.reconfigure(Policy::default(), limits);
    assert_eq!(kept, ["initial_window"]);
    assert_eq!(net.broker.limits().initial_window, window);
    assert_eq!(net.broker.limits().max_connections_per_key, 1);

    // Both connections stay, and work.
    for id in [a, b] {
        let now = net.now;
        net.node(id).session.list(now).unwrap();
        assert!(matches!(
            one_event(&mut net, id),
            SessionEvent::Members { .. }
        ));
    }
    // A third is judged by the new limit: refused.
    let cause = Cause::Code(ErrorCode::TooManyConnections);
    let third = net.connect(keypair(1), TransportKind::Unix);
    net.run();
    if let Some(id) = third {
        assert!(net
            .events(id)
            .iter()
            .all(|e| !matches!(e, SessionEvent::Ready { .. })));
    }
    assert_eq!(counted(&net, Outcome::Refusal, cause), 1);

    // Raised again, it admits.
    let limits = Limits {
        max_connections_per_key: 3,
        ..net.broker.limits().clone()
    };
    assert!(net.broker.reconfigure(Policy::default(), limits).is_empty());
    unix(&mut net, 1);
}

/// Every monitor event `id` got, in order.
fn monitored(net: &mut Net, id: NodeId) -> Vec<crate::control::MonitorEvent> {
    net.run();
    net.events(id)
        .into_iter()
        .filter_map(|e| match e {
            SessionEvent::Monitor(event) => Some(event),
            _ => None,
        })
        .collect()
}

fn start_monitor(net: &mut Net, seed: u8, key: Option<PublicKey>, of: Option<&str>) -> NodeId {
    let monitor = unix(net, seed);
    let now = net.now;
    net.node(monitor)
        .session
        .monitor(now, key, of.map(name))
        .unwrap();
    assert!(matches!(one_event(net, monitor), SessionEvent::Done { .. }));
    monitor
}

#[test]
fn a_monitor_sees_a_channel_open_accept_and_close_with_its_bytes_and_a_refusal_with_its_cause() {
    let mut net = net();
    let monitor = start_monitor(&mut net, 0xB0, None, None);
    let a = unix(&mut net, 1);
    let b = unix(&mut net, 2);
    register(&mut net, b, "t", false);
    let (ours, theirs) = open_and_accept(&mut net, a, b, "t");
    net.advance(Duration::from_millis(1500));
    let up = vec![7; 50_000];
    let down = vec![9; 20_000];
    assert_eq!(transfer(&mut net, a, ours, b, theirs, &up), up);
    assert_eq!(transfer(&mut net, b, theirs, a, ours, &down), down);
    for (node, channel) in [(a, ours), (b, theirs)] {
        net.node(node).session.finish(channel).unwrap();
    }
    net.run();
    for (node, channel) in [(a, ours), (b, theirs)] {
        let _ = read_all(&mut net, node, channel);
        net.node(node).session.close_channel(channel);
    }
    net.run();
    let now = net.now;
    net.node(a)
        .session
        .open(now, name("missing"), "p", Bytes::new(), false)
        .unwrap();
    net.run();

    let events = monitored(&mut net, monitor);
    let kinds: Vec<MonitorKind> = events.iter().map(|e| e.kind).collect();
    let (a_key, b_key) = (keypair(1).public(), keypair(2).public());
    let open = &events[kinds
        .iter()
        .position(|k| *k == MonitorKind::Open)
        .expect("an open")];
    assert_eq!(
        (open.key, open.peer, open.name.clone()),
        (Some(a_key), Some(b_key), Some(name("t")))
    );
    let accept = events
        .iter()
        .find(|e| e.kind == MonitorKind::Accept)
        .expect("an accept");
    assert_eq!(
        (accept.channel, accept.cause.as_str()),
        (open.channel, "relay")
    );
    let close = events
        .iter()
        .find(|e| e.kind == MonitorKind::Close)
        .expect("a close");
    assert_eq!(close.channel, open.channel);
    assert_eq!((close.to_target, close.to_opener), (50_000, 20_000));
    assert_eq!(close.cause, "", "a clean end");
    assert!(close.duration_ms >= 1500, "{} ms", close.duration_ms);
    let refusal = events
        .iter()
        .find(|e| e.kind == MonitorKind::Refusal)
        .expect("a refusal");
    assert_eq!(
        (refusal.cause.as_str(), refusal.key),
        ("no_such_name", Some(a_key))
    );
    // In the order they happened.
    let at = |kind| kinds.iter().position(|k| *k == kind).unwrap();
    assert!(at(MonitorKind::Open) < at(MonitorKind::Accept));
    assert!(at(MonitorKind::Accept) < at(MonitorKind::Close));
}

#[test]
fn a_monitor_sees_only_the_key_and_name_it_asked_for() {
    let mut net = net();
    let a = unix(&mut net, 1);
    let b = unix(&mut net, 2);
    let c = unix(&mut net, 3);
    register(&mut net, b, "t", false);
    register(&mut net, c, "u", false);
    let of_u = start_monitor(&mut net, 0xB0, None, Some("u"));
    let of_c = start_monitor(&mut net, 0xB0, Some(keypair(3).public()), None);
    open_and_accept(&mut net, a, b, "t");
    open_and_accept(&mut net, a, c, "u");
    let names = |events: Vec<crate::control::MonitorEvent>| {
        events
            .into_iter()
            .map(|e| e.name.map(|n| n.as_str().to_owned()))
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(
        names(monitored(&mut net, of_u)),
        [Some("u".to_owned())].into()
    );
    assert_eq!(
        names(monitored(&mut net, of_c)),
        [Some("u".to_owned())].into()
    );
}

#[test]
fn monitoring_needs_its_right_and_a_monitor_that_does_not_read_falls_behind_not_off() {
    let limit = 4096;
    let mut net = Net::new(6, Chaos::default(), |c| c.limits.max_control_queue = limit);
    // The [unix] defaults do not grant it.
    let plain = unix(&mut net, 1);
    let now = net.now;
    net.node(plain).session.monitor(now, None, None).unwrap();
    assert_eq!(
        failed_code(&one_event(&mut net, plain)),
        ErrorCode::NotPermitted
    );

    let monitor = start_monitor(&mut net, 0xB0, None, None);
    net.node(monitor).slow = true;
    // Refused opens: each an event, far more than the monitor's bound.
    for _ in 0..200 {
        let now = net.now;
        net.node(plain)
            .session
            .open(now, name("missing"), "p", Bytes::new(), false)
            .unwrap();
        net.run();
        net.events(plain);
    }
    assert!(!net.node(monitor).closed, "cut off for others' churn");
    // What it holds stays under half its bound.
    let conn = net.node(monitor).conn;
    let queued = net.broker.hub().queued_control(conn);
    assert!(queued <= limit / 2, "{queued} bytes queued");
    // It reads again: what it missed is said, then events flow.
    net.node(monitor).slow = false;
    let events = monitored(&mut net, monitor);
    let now = net.now;
    net.node(plain)
        .session
        .open(now, name("missing"), "p", Bytes::new(), false)
        .unwrap();
    let after = monitored(&mut net, monitor);
    let missed = after
        .iter()
        .find(|e| e.kind == MonitorKind::Missed)
        .expect("a Missed event");
    let delivered = events
        .iter()
        .filter(|e| e.kind == MonitorKind::Refusal)
        .count() as u64;
    assert_eq!(
        delivered + missed.to_target,
        200,
        "every refusal delivered or counted"
    );
    assert!(after.iter().any(|e| e.kind == MonitorKind::Refusal));
    // Nobody else noticed.
    net.events(plain);
    let now = net.now;
    net.node(plain).session.list(now).unwrap();
    assert!(matches!(
        one_event(&mut net, plain),
        SessionEvent::Members { .. }
    ));
}

#[test]
fn a_peer_s_long_text_reaches_a_monitor_escaped_and_within_the_limit() {
    let mut net = net();
    let monitor = start_monitor(&mut net, 0xB0, None, None);
    let a = unix(&mut net, 1);
    let b = unix(&mut net, 2);
    register(&mut net, b, "t", false);
    let (_, theirs) = offer(&mut net, a, b, "t");
    // Each control character grows sixfold when escaped.
    let reason = "\u{1b}".repeat(1000);
    net.node(b).session.reject(theirs, &reason).unwrap();
    net.run();
    let reject = monitored(&mut net, monitor)
        .into_iter()
        .find(|e| e.kind == MonitorKind::Reject)
        .expect("a reject");
    assert!(reject.detail.len() <= crate::control::MAX_TEXT);
    assert!(!reject.detail.chars().any(char::is_control));
    assert!(
        reject.detail.starts_with("\\u{1b}"),
        "{}",
        &reject.detail[..20]
    );
}

/// An orphan (its opener left with data still on its way to the target)
/// is closed for monitors once, when its end leaves, with what was relayed
/// until then; what it delivers after reports nothing more.
#[test]
fn an_orphan_closes_once_for_monitors_when_its_end_leaves() {
    let mut net = net();
    let monitor = start_monitor(&mut net, 0xB0, None, Some("svc"));
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
    assert_eq!(net.broker.hub().route_count(), 1, "an orphan");
    // b reads it all, then the orphan's reset: it ends.
    net.node(b).slow = false;
    let (received, _) = read_to_end(&mut net, b, cb);
    assert_eq!(received.len(), 100_000);
    net.run();
    assert_eq!(net.broker.hub().route_count(), 0);

    let closes: Vec<_> = monitored(&mut net, monitor)
        .into_iter()
        .filter(|e| e.kind == MonitorKind::Close)
        .collect();
    assert_eq!(closes.len(), 1, "{closes:?}");
    let close = &closes[0];
    assert_eq!(close.cause, "peer_gone", "b had not finished toward a");
    assert_eq!((close.to_target, close.to_opener), (100_000, 0));
}
