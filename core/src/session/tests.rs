//! The session's own bookkeeping, against a real broker in memory.

use std::time::Duration;

use bytes::Bytes;

use bytes::BytesMut;

use crate::control::{
    ChannelId, ErrorCode, IncomingPath, Message, Name, OpenedPath, Presence, TransportKind,
};
use crate::keys::Keypair;
use crate::session::{SessionError, SessionEvent};
use crate::sim::{Chaos, Net};

/// A broker with room for 1,000 connections of one key registering at once.
fn roomy(seed: u64, chaos: Chaos) -> Net {
    Net::new(seed, chaos, |c| {
        c.limits.max_connections_per_key = 1000;
        c.limits.max_handshaking = 1000;
        c.limits.registrations_per_source_per_s = 1000;
        c.limits.registrations_per_network_per_s = 1000;
        c.limits.registrations_per_s = 1000;
    })
}

#[test]
fn answers_in_many_pages_arrive_whole() {
    let mut net = roomy(
        20,
        Chaos {
            split_and_delay: true,
        },
    );
    let key = Keypair::from_seed([4; 32]);
    let plugins: Vec<usize> = (0..300)
        .map(|_| net.connect(key.clone(), TransportKind::Unix).unwrap())
        .collect();
    net.run();
    let now = net.now;
    for (i, id) in plugins.iter().enumerate() {
        let name = Name::new(&format!("{i:0>250}")).unwrap();
        net.node(*id)
            .session
            .register(now, name, false, None)
            .unwrap();
    }
    net.run();
    let asker = plugins[0];
    net.events(asker);
    net.node(asker).session.list(now).unwrap();
    net.node(asker).session.watch(now).unwrap();
    net.run();
    let events = net.events(asker);
    let sizes: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            SessionEvent::Members { members, .. } | SessionEvent::Watching { members, .. } => {
                Some(members.len())
            }
            _ => None,
        })
        .collect();
    // 300 members of ~300 bytes do not fit one 64 KiB message.
    assert_eq!(sizes, vec![300, 300], "{events:?}");
}

/// A reply gathered over pages is bounded: a broker that sends more
/// entries than `max_reply_entries` (here a real one, with 300 members
/// against a bound of 250) ends the session with a typed error, instead of
/// making the plugin hold whatever it sends (before, pages were gathered
/// without a bound).
#[test]
fn a_reply_past_the_entry_bound_ends_the_session() {
    let mut net = roomy(21, Chaos::default());
    let key = Keypair::from_seed([4; 32]);
    let now = net.now;
    for i in 0..300 {
        let id = net.connect(key.clone(), TransportKind::Unix).unwrap();
        net.run();
        let name = Name::new(&format!("{i:0>250}")).unwrap();
        net.node(id)
            .session
            .register(now, name, false, None)
            .unwrap();
    }
    let bounded = |c: &mut crate::session::SessionConfig| c.max_reply_entries = 250;
    let asker = net
        .connect_with(Keypair::from_seed([5; 32]), TransportKind::Unix, bounded)
        .unwrap();
    let at_bound = |c: &mut crate::session::SessionConfig| c.max_reply_entries = 300;
    let other = net
        .connect_with(Keypair::from_seed([6; 32]), TransportKind::Unix, at_bound)
        .unwrap();
    net.run();
    net.events(asker);
    net.events(other);
    net.node(asker).session.list(now).unwrap();
    net.node(other).session.list(now).unwrap();
    net.run();
    let closed = net.events(asker).into_iter().find_map(|e| match e {
        SessionEvent::Closed { reason, .. } => Some(reason),
        _ => None,
    });
    assert_eq!(
        closed.as_deref(),
        Some("the broker sent a reply of more than 250 entries")
    );
    let listed = net.events(other).into_iter().find_map(|e| match e {
        SessionEvent::Members { members, .. } => Some(members.len()),
        _ => None,
    });
    assert_eq!(listed, Some(300), "at the bound, the reply arrives whole");
}

/// `a` opens `far` (which listens for direct dials) and `b` accepts; returns
/// the opener's channel and the target's, with `a` told to dial.
fn accepted_dial_offer(net: &mut Net) -> (usize, ChannelId, usize, ChannelId) {
    // No keepalive: the only deadlines are the channels'.
    let quiet = |c: &mut crate::session::SessionConfig| c.keepalive = None;
    let a = net.connect_with(Keypair::from_seed([1; 32]), TransportKind::Unix, quiet);
    let b = net.connect_with(Keypair::from_seed([2; 32]), TransportKind::Unix, quiet);
    let (a, b) = (a.unwrap(), b.unwrap());
    net.run();
    let now = net.now;
    let far = Name::new("far").unwrap();
    let addr = Some("tcp:10.0.0.2:8008".to_owned());
    net.node(b).session.register(now, far, false, addr).unwrap();
    net.run();
    net.events(a);
    net.events(b);
    let far = Name::new("far").unwrap();
    let (_, ours) = net
        .node(a)
        .session
        .open(now, far, "p", Bytes::new(), true)
        .unwrap();
    net.run();
    let events = net.events(b);
    let [SessionEvent::Incoming {
        channel: theirs,
        path: IncomingPath::ExpectDial { .. },
        ..
    }] = events[..]
    else {
        panic!("no dial offer: {events:?}")
    };
    net.node(b).session.accept(now, theirs).unwrap();
    net.run();
    let events = net.events(a);
    assert!(
        matches!(
            events[..],
            [SessionEvent::Opened {
                path: OpenedPath::Dial { .. },
                ..
            }]
        ),
        "{events:?}"
    );
    (a, ours, b, theirs)
}

fn open_timeout(timeout: Duration) -> Net {
    Net::new(7, Chaos::default(), |c| c.limits.open_timeout = timeout)
}

#[test]
fn an_accepted_channel_whose_path_never_comes_is_reset_at_the_open_timeout() {
    let mut net = open_timeout(Duration::from_secs(2));
    let (a, ours, b, theirs) = accepted_dial_offer(&mut net);
    let accepted_at = net.now;
    assert_eq!(
        net.node(b).session.poll_timeout(),
        Some(accepted_at + Duration::from_secs(2))
    );

    net.advance(Duration::from_millis(1900));
    net.run();
    assert!(net.events(b).is_empty(), "reset before its deadline");

    net.advance(Duration::from_millis(100));
    net.run();
    let events = net.events(b);
    assert!(
        matches!(
            &events[..],
            [SessionEvent::Reset { channel, code: ErrorCode::OpenTimeout, reason }]
                if *channel == theirs && reason.contains("never came")
        ),
        "{events:?}"
    );
    assert_eq!(net.node(b).session.channel_count(), 0);
    assert_eq!(net.node(b).session.poll_timeout(), None);
    // The broker passes the reset on: the opener's quota is freed too.
    let events = net.events(a);
    assert!(
        matches!(
            &events[..],
            [SessionEvent::Reset { channel, code: ErrorCode::OpenTimeout, .. }] if *channel == ours
        ),
        "{events:?}"
    );
}

#[test]
fn a_path_that_crosses_the_deadline_reset_is_ignored() {
    let mut net = open_timeout(Duration::from_secs(2));
    let (a, ours, b, theirs) = accepted_dial_offer(&mut net);
    // The opener gives up dialing just as the target's deadline passes:
    // the broker sends the relay path after the target forgot the channel
    // (`a`'s bytes reach the broker first in a round).
    net.node(a).session.direct_failed(ours).unwrap();
    net.advance(Duration::from_secs(2));
    net.run();
    let events = net.events(b);
    assert!(
        matches!(&events[..], [SessionEvent::Reset { channel, .. }] if *channel == theirs),
        "{events:?}"
    );
    assert!(!net.node(b).session.is_closed());
    assert_eq!(net.node(b).session.channel_count(), 0);
}

#[test]
fn an_openers_reset_reaches_a_channel_awaiting_its_path() {
    let mut net = open_timeout(Duration::from_secs(2));
    let (a, ours, b, theirs) = accepted_dial_offer(&mut net);
    net.node(a)
        .session
        .reset(ours, ErrorCode::Cancelled, "changed my mind")
        .unwrap();
    net.run();
    let events = net.events(b);
    assert!(
        matches!(
            &events[..],
            [SessionEvent::Reset { channel, code: ErrorCode::Cancelled, .. }] if *channel == theirs
        ),
        "{events:?}"
    );
    // Nothing is left to time out.
    assert_eq!(net.node(b).session.channel_count(), 0);
    assert_eq!(net.node(b).session.poll_timeout(), None);
}

// ── a broker that breaks the protocol ──────────────────────────────────

/// `message` as the broker's control channel carries it (unix: no box-stream).
fn from_broker(message: &Message) -> Bytes {
    let mut body = BytesMut::new();
    crate::control::encode(message, &mut body);
    let mut out = BytesMut::new();
    crate::mux::frame::encode_data_header(0, false, body.len() as u32, &mut out);
    out.extend_from_slice(&body);
    out.freeze()
}

/// A ready plugin whose broker will be played by hand.
fn hand_played() -> (Net, usize) {
    let mut net = roomy(30, Chaos::default());
    let id = net
        .connect(Keypair::from_seed([4; 32]), TransportKind::Unix)
        .unwrap();
    net.run();
    net.events(id);
    (net, id)
}

fn drain(net: &mut Net, id: usize) -> Vec<SessionEvent> {
    std::iter::from_fn(|| net.node(id).session.poll_event()).collect()
}

/// An answer of the wrong kind ends the connection, and the request it
/// named still gets its one outcome (it used to be taken and forgotten, and
/// whoever waited for it waited for ever).
#[test]
fn a_wrong_answer_still_fails_its_request_once() {
    let (mut net, id) = hand_played();
    let now = net.now;
    let request = net.node(id).session.list(now).unwrap();
    let peer = Keypair::from_seed([9; 32]).public();
    let wrong = from_broker(&Message::Opened {
        request,
        channel: 1,
        peer,
        path: OpenedPath::Relay,
    });
    assert!(net.node(id).session.handle_input(now, &wrong).is_err());
    let events = drain(&mut net, id);
    let outcomes = events
        .iter()
        .filter(|e| matches!(e, SessionEvent::RequestLost { request: r, .. } if *r == request))
        .count();
    assert_eq!(outcomes, 1, "{events:?}");
    assert!(
        matches!(events.last(), Some(SessionEvent::Closed { .. })),
        "{events:?}"
    );
}

/// A snapshot at the last sequence number, then a change: a protocol error,
/// not an overflow.
#[test]
fn a_change_after_the_last_sequence_number_is_refused() {
    let (mut net, id) = hand_played();
    let now = net.now;
    let request = net.node(id).session.watch(now).unwrap();
    let snapshot = from_broker(&Message::Snapshot {
        request,
        seq: u64::MAX,
        last: true,
        members: Vec::new(),
    });
    net.node(id).session.handle_input(now, &snapshot).unwrap();
    let change = from_broker(&Message::PresenceEvent {
        seq: 0,
        presence: Presence::Down {
            name: Name::new("x").unwrap(),
            key: Keypair::from_seed([9; 32]).public(),
        },
    });
    let refused = net.node(id).session.handle_input(now, &change);
    assert!(
        matches!(refused, Err(SessionError::Protocol(_))),
        "{refused:?}"
    );
}

/// A broker that pings and never reads makes the plugin queue pongs: past
/// a bound, the connection ends instead of growing.
#[test]
fn a_broker_that_pings_and_never_reads_is_cut() {
    let (mut net, id) = hand_played();
    let now = net.now;
    let mut pings = BytesMut::new();
    for opaque in 0..10_000 {
        let ping = crate::mux::frame::Frame::Ping {
            opaque,
            pong: false,
        };
        crate::mux::frame::encode(&ping, &mut pings);
    }
    let mut ended = None;
    for round in 0..1_000 {
        if let Err(e) = net.node(id).session.handle_input(now, &pings) {
            ended = Some((round, e));
            break;
        }
    }
    let (round, error) = ended.expect("the session kept every pong");
    assert_eq!(error, SessionError::Protocol("the broker does not read"));
    // It held no more than the bound, and a frame's worth.
    let pong_bytes = pings.len();
    assert!(
        round * pong_bytes <= (4 << 20) + pong_bytes,
        "{round} rounds"
    );
}
