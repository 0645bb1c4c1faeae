//! Reconnection, against a real broker in memory: cut links, a broker
//! started again, a name taken meanwhile.

use std::time::Duration;

use bytes::Bytes;

use crate::control::{Name, Presence, TransportKind};
use crate::keys::Keypair;
use crate::session::{Reconnect, Recv, SessionError, SessionEvent};
use crate::sim::{Chaos, Dials, Net, NodeId};

const POLICY: Reconnect = Reconnect {
    initial: Duration::from_millis(100),
    max: Duration::from_secs(1),
};

fn net(seed: u64) -> Net {
    Net::new(seed, Chaos::default(), |c| {
        c.limits.registrations_per_source_per_s = 1000;
        c.limits.registrations_per_network_per_s = 1000;
        c.limits.registrations_per_s = 1000;
    })
}

/// A plugin that reconnects, registered as `name` (if any) and watching.
fn plugin(net: &mut Net, seed: u8, name: Option<&str>) -> NodeId {
    let id = net
        .connect_with(Keypair::from_seed([seed; 32]), TransportKind::Unix, |c| {
            c.reconnect = Some(POLICY)
        })
        .unwrap();
    net.run();
    let now = net.now;
    let session = &mut net.node(id).session;
    if let Some(name) = name {
        session
            .register(now, Name::new(name).unwrap(), false, None)
            .unwrap();
    }
    session.watch(now).unwrap();
    net.run();
    net.events(id);
    id
}

/// `a` opens a channel to `name` (held by `b`), offered to `b` and not
/// answered yet: the open's request, and the channel's id at each end.
fn offered(net: &mut Net, a: NodeId, b: NodeId, name: &str) -> (u32, u32, u32) {
    let now = net.now;
    let (asked, ours) = net
        .node(a)
        .session
        .open(now, Name::new(name).unwrap(), "p", Bytes::new(), false)
        .unwrap();
    net.run();
    let theirs = net
        .events(b)
        .into_iter()
        .find_map(|e| match e {
            SessionEvent::Incoming { channel, .. } => Some(channel),
            _ => None,
        })
        .unwrap();
    (asked, ours, theirs)
}

/// Moves time in small steps until `id` reports `Reconnected` (or 30 s
/// pass); returns everything it reported.
fn until_reconnected(net: &mut Net, id: NodeId) -> Vec<SessionEvent> {
    let mut events = net.events(id);
    for _ in 0..300 {
        if events
            .iter()
            .any(|e| matches!(e, SessionEvent::Reconnected { .. }))
        {
            return events;
        }
        net.advance(Duration::from_millis(100));
        net.run();
        events.extend(net.events(id));
    }
    panic!("never reconnected: {events:?}");
}

#[test]
fn a_cut_link_is_one_outage_and_the_name_and_watch_come_back() {
    let mut net = net(1);
    let a = plugin(&mut net, 1, Some("alpha"));
    let b = plugin(&mut net, 2, None);
    net.cut(a);
    net.run();
    let events = until_reconnected(&mut net, a);
    let lost = events
        .iter()
        .filter(|e| matches!(e, SessionEvent::Lost { .. }))
        .count();
    assert_eq!(lost, 1, "{events:?}");
    assert!(
        matches!(
            events.last(),
            Some(SessionEvent::Reconnected { attempts: 1 })
        ),
        "{events:?}"
    );
    // The watch restarted with a snapshot that has the name again.
    let restored = events.iter().any(|e| match e {
        SessionEvent::Watching { members, .. } => {
            members.iter().any(|m| m.name.as_str() == "alpha")
        }
        _ => false,
    });
    assert!(restored, "{events:?}");
    assert!(net.node(a).session.is_ready());
    // The other plugin saw it go and come back.
    let seen: Vec<bool> = net
        .events(b)
        .into_iter()
        .filter_map(|e| match e {
            SessionEvent::Presence {
                presence: Presence::Up(m),
                ..
            } if m.name.as_str() == "alpha" => Some(true),
            SessionEvent::Presence {
                presence: Presence::Down { name, .. },
                ..
            } if name.as_str() == "alpha" => Some(false),
            _ => None,
        })
        .collect();
    assert_eq!(seen, vec![false, true]);
    // And it works: requests again.
    let now = net.now;
    net.node(a).session.list(now).unwrap();
    net.run();
    assert!(net
        .events(a)
        .iter()
        .any(|e| matches!(e, SessionEvent::Members { .. })));
}

#[test]
fn what_was_in_flight_fails_once_and_channels_keep_what_they_received() {
    let mut net = net(2);
    let a = plugin(&mut net, 1, None);
    let b = plugin(&mut net, 2, Some("beta"));
    let (_, ours, theirs) = offered(&mut net, a, b, "beta");
    let now = net.now;
    net.node(b).session.accept(now, theirs).unwrap();
    net.run();
    net.node(b)
        .session
        .send(theirs, Bytes::from_static(b"hello"))
        .unwrap();
    net.node(b).session.finish(theirs).unwrap();
    net.run();
    net.events(a);
    // A request on its way when the link breaks.
    let asked = net.node(a).session.list(now).unwrap();
    net.cut(a);
    let events = net.events(a);
    let lost = events
        .iter()
        .position(|e| matches!(e, SessionEvent::Lost { .. }))
        .unwrap();
    assert_eq!(
        events[..lost]
            .iter()
            .filter(|e| matches!(e, SessionEvent::RequestLost { request, reconnecting: true } if *request == asked))
            .count(),
        1,
        "{events:?}"
    );
    let handed = events[..lost].iter().find_map(|e| match e {
        SessionEvent::ChannelLost {
            channel,
            unread,
            end,
        } if *channel == ours => Some((unread.clone(), end.clone())),
        _ => None,
    });
    let (unread, end) = handed.expect("the channel was handed over");
    let unread: Vec<u8> = unread.iter().flat_map(|b| b.iter().copied()).collect();
    assert_eq!(unread, b"hello");
    assert_eq!(end, Some(Recv::Finished));
    // The session forgot it, and refuses requests until it is back.
    assert_eq!(net.node(a).session.channel_count(), 0);
    assert_eq!(
        net.node(a).session.list(now),
        Err(SessionError::Reconnecting)
    );
    let events = until_reconnected(&mut net, a);
    // Nothing more about the lost request.
    assert!(
        !events.iter().any(|e| matches!(e,
            SessionEvent::Members { request, .. } | SessionEvent::RequestLost { request, .. } if *request == asked)),
        "{events:?}"
    );
}

#[test]
fn a_refused_name_is_a_failed_attempt_until_it_is_free() {
    let mut net = net(3);
    let a = plugin(&mut net, 1, Some("gamma"));
    net.cut(a);
    // Someone else takes the name while `a` is away.
    let thief = plugin(&mut net, 9, Some("gamma"));
    net.advance(Duration::from_secs(2));
    net.run();
    let events = net.events(a);
    assert!(
        events.iter().any(|e| matches!(e,
            SessionEvent::AttemptFailed { reason, .. } if reason.contains("restore the name"))),
        "{events:?}"
    );
    assert!(!net.node(a).session.is_ready());
    net.kill(thief);
    net.run();
    let more = until_reconnected(&mut net, a);
    let all: Vec<&SessionEvent> = events.iter().chain(more.iter()).collect();
    assert_eq!(
        all.iter()
            .filter(|e| matches!(e, SessionEvent::Lost { .. }))
            .count(),
        1,
        "one outage: {all:?}"
    );
    let Some(SessionEvent::Reconnected { attempts }) = all.last() else {
        panic!("{all:?}");
    };
    assert!(*attempts >= 2, "{all:?}");
    let now = net.now;
    net.node(a).session.list(now).unwrap();
    net.run();
    let members = net.events(a).into_iter().find_map(|e| match e {
        SessionEvent::Members { members, .. } => Some(members),
        _ => None,
    });
    assert!(members.unwrap().iter().any(|m| m.name.as_str() == "gamma"));
}

#[test]
fn a_broker_started_again_gets_everyone_back() {
    let mut net = net(4);
    let ids: Vec<NodeId> = (0..5)
        .map(|i| plugin(&mut net, 10 + i, Some(&format!("p{i}"))))
        .collect();
    net.restart_broker();
    for &id in &ids {
        until_reconnected(&mut net, id);
    }
    let now = net.now;
    net.node(ids[0]).session.list(now).unwrap();
    net.run();
    let members = net.events(ids[0]).into_iter().find_map(|e| match e {
        SessionEvent::Members { members, .. } => Some(members),
        _ => None,
    });
    assert_eq!(members.unwrap().len(), 5);
}

#[test]
fn without_reconnection_a_loss_is_the_end() {
    let mut net = net(5);
    let a = net
        .connect(Keypair::from_seed([1; 32]), TransportKind::Unix)
        .unwrap();
    net.run();
    net.events(a);
    let now = net.now;
    let asked = net.node(a).session.list(now).unwrap();
    net.cut(a);
    let events = net.events(a);
    assert!(
        matches!(
            &events[..],
            [
                SessionEvent::RequestLost { request, reconnecting: false },
                SessionEvent::Closed { code: None, .. },
            ] if *request == asked
        ),
        "{events:?}"
    );
    net.advance(Duration::from_secs(60));
    net.run();
    assert!(net.node(a).session.is_closed());
    assert_eq!(net.node(a).links, 1);
    assert_eq!(net.node(a).session.list(now), Err(SessionError::Closed));
}

#[test]
fn a_first_connection_that_never_got_ready_is_the_end() {
    let mut net = net(6);
    // Over TCP the broker's default policy admits nobody.
    let a = net
        .connect_with(Keypair::from_seed([1; 32]), TransportKind::Tcp, |c| {
            c.reconnect = Some(POLICY)
        })
        .unwrap();
    net.run();
    let events = net.events(a);
    assert!(
        matches!(&events[..], [SessionEvent::Closed { .. }]),
        "{events:?}"
    );
    net.advance(Duration::from_secs(10));
    net.run();
    assert_eq!(net.node(a).links, 1);
}

#[test]
fn refused_dials_are_failed_attempts_then_it_gets_back() {
    let mut net = net(7);
    let a = plugin(&mut net, 1, Some("delta"));
    net.dials = Dials::Refuse;
    net.cut(a);
    for _ in 0..30 {
        net.advance(Duration::from_millis(100));
        net.run();
    }
    let events = net.events(a);
    let attempts: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            SessionEvent::AttemptFailed { attempt, reason } if reason == "connection refused" => {
                Some(*attempt)
            }
            _ => None,
        })
        .collect();
    assert!(attempts.len() >= 2, "{events:?}");
    assert!(
        attempts.windows(2).all(|w| w[1] == w[0] + 1),
        "{attempts:?}"
    );
    assert_eq!(attempts[0], 1);
    net.dials = Dials::Connect;
    let more = until_reconnected(&mut net, a);
    let Some(SessionEvent::Reconnected { attempts: n }) = more.last() else {
        panic!("{more:?}");
    };
    assert_eq!(*n as usize, attempts.len() + 1);
    // `Ready` was said once, for the first connection: `Reconnected` is
    // the news of the new one.
    assert!(!more.iter().any(|e| matches!(e, SessionEvent::Ready { .. })));
}

#[test]
fn a_dial_that_never_connects_times_out() {
    let mut net = net(8);
    let a = plugin(&mut net, 1, None);
    net.dials = Dials::Hang;
    net.cut(a);
    // Until the first attempt starts.
    while !net.node(a).session.wants_dial() {
        net.advance(Duration::from_millis(10));
        net.run();
    }
    net.advance(Duration::from_secs(10)); // the default connect timeout
    net.run();
    assert!(!net.node(a).session.wants_dial());
    let events = net.events(a);
    assert!(
        events.iter().any(|e| matches!(e,
            SessionEvent::AttemptFailed { attempt: 1, reason } if reason == "timed out connecting")),
        "{events:?}"
    );
    // A connect that completes after the session gave up on it is refused.
    let now = net.now;
    let late = net
        .node(a)
        .session
        .handle_connected(now, &mut rand_core::OsRng);
    assert_eq!(late, Err(SessionError::NotDialing));
}

#[test]
fn an_unwatch_during_an_outage_is_not_undone() {
    let mut net = net(9);
    let a = plugin(&mut net, 1, None);
    net.dials = Dials::Refuse;
    net.cut(a);
    let now = net.now;
    assert_eq!(
        net.node(a).session.unwatch(now),
        Err(SessionError::Reconnecting)
    );
    net.dials = Dials::Connect;
    let events = until_reconnected(&mut net, a);
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, SessionEvent::Watching { .. })),
        "{events:?}"
    );
    // And a watch asked for now starts.
    let now = net.now;
    net.node(a).session.watch(now).unwrap();
    net.run();
    assert!(net
        .events(a)
        .iter()
        .any(|e| matches!(e, SessionEvent::Watching { .. })));
}

/// An unwatch made after the new connection's hello, while the session
/// restores the watch: the restored watch is let go unseen, and the broker
/// sends it nothing more. (It used to come back, and stay on every later
/// connection.)
#[test]
fn an_unwatch_while_the_watch_is_restored_is_not_undone() {
    let mut net = net(12);
    let a = plugin(&mut net, 1, None);
    net.cut(a);
    // Until the broker's hello on the new connection: the restore is sent.
    for _ in 0..300 {
        if net.node(a).session.limits().is_some() {
            break;
        }
        net.advance(Duration::from_millis(10));
        net.round();
    }
    assert!(net.node(a).session.limits().is_some(), "no new hello");
    let now = net.now;
    assert_eq!(
        net.node(a).session.unwatch(now),
        Err(SessionError::Reconnecting)
    );
    let events = until_reconnected(&mut net, a);
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, SessionEvent::Watching { .. })),
        "{events:?}"
    );
    // The broker has no watch for it: a name coming up says nothing.
    let _b = plugin(&mut net, 2, Some("newcomer"));
    net.run();
    let events = net.events(a);
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, SessionEvent::Presence { .. })),
        "{events:?}"
    );
    // And a watch asked for now starts.
    let now = net.now;
    net.node(a).session.watch(now).unwrap();
    net.run();
    assert!(net
        .events(a)
        .iter()
        .any(|e| matches!(e, SessionEvent::Watching { .. })));
}

#[test]
fn an_offer_and_an_open_in_flight_are_lost_with_the_connection() {
    let mut net = net(10);
    let a = plugin(&mut net, 1, None);
    let b = plugin(&mut net, 2, Some("echo"));
    let (asked, _, offered) = offered(&mut net, a, b, "echo");
    // Neither answered: the target's link breaks, then the opener's.
    net.cut(b);
    let events = net.events(b);
    assert!(
        events.iter().any(|e| matches!(e,
            SessionEvent::ChannelLost { channel, unread, end: None } if *channel == offered && unread.is_empty())),
        "{events:?}"
    );
    net.run();
    // The broker answered the open (the target is gone), or it is lost.
    let now = net.now;
    net.node(a).session.list(now).unwrap();
    net.cut(a);
    let events = net.events(a);
    let outcomes = events
        .iter()
        .filter(|e| match e {
            SessionEvent::Failed { request, .. } | SessionEvent::RequestLost { request, .. } => {
                *request == asked
            }
            _ => false,
        })
        .count();
    assert_eq!(outcomes, 1, "{events:?}");
    let lost = events
        .iter()
        .position(|e| matches!(e, SessionEvent::Lost { .. }));
    let requests_lost = events
        .iter()
        .rposition(|e| matches!(e, SessionEvent::RequestLost { .. }));
    assert!(
        requests_lost < lost,
        "requests, channels, then Lost: {events:?}"
    );
}

#[test]
fn a_broker_that_stops_answering_is_found_out_by_the_keepalive() {
    let mut net = net(11);
    let a = plugin(&mut net, 1, None);
    // The plugin's reads stop (its link is a black hole from the broker's side).
    net.node(a).slow = true;
    net.advance(Duration::from_secs(20)); // quiet: a ping goes out
    net.run();
    net.advance(Duration::from_secs(30)); // no answer read
    net.run();
    let events = net.events(a);
    assert!(
        events.iter().any(|e| matches!(e,
            SessionEvent::Lost { reason } if reason.contains("ping"))),
        "{events:?}"
    );
    net.node(a).slow = false;
    until_reconnected(&mut net, a);
}
