//! What an operator sees and does: counters by cause, log lines that say
//! what each refusal and disconnect was, and a reload.

use super::*;

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
