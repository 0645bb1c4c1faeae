//! Hostile tenants: every budget (per uid, per key, between keys, bytes,
//! descriptors, rates) stops the attacker and leaves the others alone.

use super::*;

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
    assert_eq!(net.broker.hub().uid_connections(1001), 3);
    net.kill(mine[0]);
    net.run();
    assert_eq!(net.broker.hub().uid_connections(1001), 2);
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
    assert_eq!(net.broker.hub().descriptors_in_flight(Some(&a_key)), 4);
    assert_eq!(net.broker.hub().descriptors_in_flight(None), 4);
    assert!(net
        .log
        .iter()
        .any(|l| l.message.contains("relaying, not a socketpair")));
    // It reads: its ends ride out, and the budget is whole again.
    net.node(a).slow = false;
    net.run();
    assert_eq!(net.broker.hub().descriptors_in_flight(None), 0);
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
    assert_eq!(net.broker.hub().channels_between(t, g), 3);
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
        net.broker.hub().check_byte_books().unwrap();
    }
    let key = keypair(1).public();
    assert_eq!(
        net.broker.hub().bytes_reserved(Some(&key)),
        5 * 2 * u64::from(WINDOW)
    );
    // Measured from the queues: both windows of each channel, no more.
    let held = net.broker.hub().buffered_bytes() as u64;
    assert!(held <= 5 * 2 * u64::from(WINDOW) + 64 * 1024, "{held}");
    // Another key is not disturbed.
    net.events(target);
    open_and_accept(&mut net, other, target, "svc");
}

const GROWN_WINDOW: u32 = 4096;
const GROWTH: u64 = 40_000;

/// A sender and a reader with three channels, sender to reader; a key may
/// open three channels and grow its windows by `GROWTH` (half of it for one
/// sender's channels).
fn three_channels(seed: u64) -> (Net, NodeId, NodeId, Vec<(u32, u32)>) {
    let mut net = Net::new(seed, Chaos::default(), |c| {
        c.limits.initial_window = GROWN_WINDOW;
        c.limits.max_window = 64 * 1024;
        c.limits.max_bytes_per_key = 3 * 2 * u64::from(GROWN_WINDOW);
        c.limits.max_grown_bytes_per_key = GROWTH;
    });
    let sender = unix(&mut net, 1);
    let reader = unix(&mut net, 3);
    register(&mut net, reader, "svc", false);
    let pairs: Vec<(u32, u32)> = (0..3)
        .map(|_| open_and_accept(&mut net, sender, reader, "svc"))
        .collect();
    (net, sender, reader, pairs)
}

/// Sends 300,000 bytes on each channel, the reader reading everything, so
/// its windows grow towards 64 KiB; returns the most the reader's key had
/// reserved for their growth meanwhile. Every transfer completes.
fn send_all(net: &mut Net, sender: NodeId, reader: NodeId, pairs: &[(u32, u32)]) -> u64 {
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut sent = vec![0usize; pairs.len()];
    let mut received = vec![0usize; pairs.len()];
    let reader_key = net.node(reader).key;
    let sender_key = net.node(sender).key;
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
            if let SessionEvent::Readable { channel } = event {
                let i = pairs.iter().position(|p| p.1 == channel).unwrap();
                received[i] += read_all(net, reader, channel).len();
            }
        }
        net.events(sender);
        net.broker.hub().check_budgets().unwrap();
        most = most.max(net.broker.hub().bytes_grown(&reader_key, Some(&sender_key)));
        if received.iter().all(|&n| n == data.len()) {
            break;
        }
    }
    assert_eq!(received, vec![data.len(); pairs.len()]);
    most
}

#[test]
fn credit_beyond_the_initial_window_is_reserved_from_the_key_that_grants_it() {
    let (mut net, sender, reader, pairs) = three_channels(27);
    // The relay passes the reader's credit on only as far as the reader's
    // key may reserve for the sender's, and every transfer completes.
    let most = send_all(&mut net, sender, reader, &pairs);
    assert!(most > 0 && most <= GROWTH / 2, "{most}");
}

/// A sender that makes a fast reader grow its windows and then stops holds
/// that credit unused for as long as it likes. It pins only the reader's
/// growth, and only its share of it: the reader still opens channels (the
/// growth is apart from its opens' budget), and another sender's channels
/// to it still grow (before, one budget held both, so the pinned credit
/// got the reader's Opens refused with TooManyBytes, and the first sender
/// could take all of it).
#[test]
fn a_sender_that_stops_pins_only_its_share_of_the_readers_growth() {
    let (mut net, sender, reader, pairs) = three_channels(32);
    let other = unix(&mut net, 4);
    register(&mut net, other, "other", false);
    let [sender_key, reader_key, other_key] = [sender, reader, other].map(|n| net.node(n).key);
    send_all(&mut net, sender, reader, &pairs);
    let pinned = net.broker.hub().bytes_grown(&reader_key, Some(&sender_key));
    assert_eq!(pinned, GROWTH / 2, "the share is full");
    open_and_accept(&mut net, reader, other, "other");
    let theirs: Vec<(u32, u32)> = (0..2)
        .map(|_| open_and_accept(&mut net, other, reader, "svc"))
        .collect();
    let most = send_all(&mut net, other, reader, &theirs);
    assert!(most > GROWTH / 4, "the other sender's windows grew: {most}");
    assert_eq!(
        net.broker.hub().bytes_grown(&reader_key, None),
        pinned + net.broker.hub().bytes_grown(&reader_key, Some(&other_key))
    );
}

/// A sender's FIN gives back the growth reserved for its direction as the
/// receiver reads what is queued (before, it stayed reserved until both
/// directions closed: a channel that uploads, then streams back for hours,
/// pinned the receiver's share all along).
#[test]
fn growth_is_given_back_after_the_senders_fin() {
    // Budgets that do not bind, and a reader that grants no more than the
    // relay passes: no credit is held back, so nothing retries on its own.
    let mut net = Net::new(34, Chaos::default(), |c| {
        c.limits.initial_window = GROWN_WINDOW;
        c.limits.max_window = 64 * 1024;
    });
    let sender = unix(&mut net, 1);
    let capped = |c: &mut crate::session::SessionConfig| c.max_window = 64 * 1024;
    let reader = net
        .connect_with(keypair(3), TransportKind::Unix, capped)
        .unwrap();
    net.run();
    net.events(reader);
    register(&mut net, reader, "svc", false);
    let pairs = [open_and_accept(&mut net, sender, reader, "svc")];
    let reader_key = net.node(reader).key;
    send_all(&mut net, sender, reader, &pairs);
    assert!(net.broker.hub().bytes_grown(&reader_key, None) > 0);
    net.node(sender).session.finish(pairs[0].0).unwrap();
    net.run();
    net.events(reader);
    net.broker.hub().check_budgets().unwrap();
    assert_eq!(net.broker.hub().bytes_grown(&reader_key, None), 0);
}

/// A receiver's grants beyond the initial window are bounded by its share
/// for the sender's key, whoever asked for them: 30,000 bytes of WINDOW
/// nobody asked for pass on only up to the 20,000 of the share, all of it
/// charged to the receiver.
#[test]
fn a_receivers_grants_are_bounded_by_its_share_for_the_sender() {
    let (mut net, sender, reader, pairs) = three_channels(33);
    let [sender_key, reader_key] = [sender, reader].map(|n| net.node(n).key);
    let mut grants = bytes::BytesMut::new();
    for &(_, theirs) in &pairs {
        let window = crate::mux::Frame::Window {
            channel: theirs,
            increment: 10_000,
        };
        crate::mux::frame::encode(&window, &mut grants);
    }
    let conn = net.node(reader).conn;
    net.broker.handle_input(net.now, conn, &grants);
    net.run();
    net.broker.hub().check_budgets().unwrap();
    assert_eq!(
        net.broker.hub().bytes_grown(&reader_key, Some(&sender_key)),
        GROWTH / 2
    );
    assert_eq!(
        net.broker.hub().bytes_reserved(Some(&sender_key)),
        3 * 2 * u64::from(GROWN_WINDOW)
    );
    let capacity: usize = pairs
        .iter()
        .map(|&(s, _)| net.node(sender).session.send_capacity(s))
        .sum();
    assert_eq!(capacity as u64, 3 * u64::from(GROWN_WINDOW) + GROWTH / 2);
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

/// Traffic a plugin did not ask for (incoming opens, its peers' reasons for
/// resets) fills at most half its control queue, so what it asked for has
/// the other half: a peer that resets 40 channels with 1,000-byte reasons
/// while the victim is busy cannot get it cut off for a List it asked for
/// (before, the reasons filled the bound and the List's reply put it over:
/// GOAWAY 19), and further opens to the victim are refused PeerBusy.
#[test]
fn unasked_traffic_fills_at_most_half_the_control_queue() {
    let mut net = Net::new(31, Chaos::default(), |c| {
        c.limits.max_control_queue = 16 * 1024;
    });
    let victim = unix(&mut net, 1);
    let attacker = unix(&mut net, 2);
    register(&mut net, victim, "svc", false);
    let pairs: Vec<(u32, u32)> = (0..40)
        .map(|_| open_and_accept(&mut net, attacker, victim, "svc"))
        .collect();
    net.node(victim).slow = true;
    let long = "x".repeat(1000);
    for &(ours, _) in &pairs {
        let session = &mut net.node(attacker).session;
        session.reset(ours, ErrorCode::Rejected, &long).unwrap();
    }
    net.run();
    let now = net.now;
    net.node(attacker)
        .session
        .open(now, name("svc"), "p", Bytes::new(), false)
        .unwrap();
    net.run();
    assert_eq!(
        failed_code(&one_event(&mut net, attacker)),
        ErrorCode::PeerBusy
    );
    net.node(victim).session.list(now).unwrap();
    net.run();
    assert!(!net.node(victim).closed, "the victim was cut off");
    net.node(victim).slow = false;
    net.run();
    let events = net.events(victim);
    let reasons: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            SessionEvent::Reset { reason, .. } => Some(reason.len()),
            _ => None,
        })
        .collect();
    assert_eq!(reasons.len(), 40, "every reset arrives");
    let passed = reasons.iter().filter(|n| **n == 1000).count();
    assert!((6..=8).contains(&passed), "{reasons:?}");
    assert!(reasons.iter().all(|n| *n == 1000 || *n == 0));
    assert!(events
        .iter()
        .any(|e| matches!(e, SessionEvent::Members { .. })));
}

/// Registrations are rate-limited per source (here, one uid) and in all:
/// a register storm is refused with TooFast (before, every one was an event
/// for every watcher), and another user still registers. A busy source
/// (more than one a second) takes at most half of everyone's allowance:
/// before, a few sources at their own rate took all of it.
#[test]
fn a_register_storm_is_slowed_per_user_and_in_all() {
    let mut net = Net::new(28, Chaos::default(), |c| {
        c.limits.registrations_per_source_per_s = 5;
        c.limits.registrations_per_s = 8;
        c.limits.max_connections_per_key = 100;
        c.owner_uid = Some(1000);
        c.policy.users = [1001, 1002]
            .map(|uid| policy::UserGrant {
                who: policy::User::Uid(uid),
                rights: policy::Permissions::all(),
            })
            .into();
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
    // The total allows 16 at once, of which busy registrations get 8: the
    // storm's first two are quiet, then 6 busy ones fill the busy half, so
    // 8 of the 10 its own rate allows go in.
    assert_eq!(refused, 4);
    assert!(matches!(
        register(&mut net, other, "theirs", false),
        SessionEvent::Registered { .. }
    ));
    // The other user, busy too after two, is refused from the full busy
    // half, while a third's registration is quiet and goes in; a second
    // later the other user is quiet again and gets in.
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
    assert_eq!(outcomes, [true, false, false, false, false, false]);
    let third = Origin::unix(
        0,
        Some(Cred {
            uid: 1002,
            gid: 1002,
        }),
    );
    let third = net.connect_from(keypair(3), third, |_| {}).unwrap();
    net.run();
    net.events(third);
    assert!(matches!(
        register(&mut net, third, "third", false),
        SessionEvent::Registered { .. }
    ));
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

/// Only a registration that is made spends the rate: before, registers of a
/// taken name, each refused, used up the source's allowance (and the
/// broker's, for everyone) and its next real registration got TooFast.
#[test]
fn refused_registrations_spend_no_allowance() {
    let mut net = Net::new(30, Chaos::default(), |c| {
        c.limits.registrations_per_source_per_s = 5;
        c.limits.registrations_per_s = 8;
        c.limits.max_connections_per_key = 100;
    });
    let owner = unix(&mut net, 1);
    register(&mut net, owner, "taken", false);
    let tries: Vec<NodeId> = (0..30).map(|_| unix(&mut net, 2)).collect();
    for id in &tries {
        let refused = register(&mut net, *id, "taken", false);
        assert_eq!(failed_code(&refused), ErrorCode::NameTaken);
    }
    assert!(
        matches!(
            register(&mut net, tries[0], "free", false),
            SessionEvent::Registered { .. }
        ),
        "a real registration after refused ones was slowed"
    );
}
