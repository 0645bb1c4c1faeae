//! The legacy route: an SSB client (shs1 and box-stream, no mux) offered
//! to the plugin that holds the route's name, and bridged to it.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use crate::boxstream::{Event as BoxEvent, Opener, Sealer};
use crate::keys::NetworkKey;
use crate::shs::{ClientHandshake, HandshakeConfig};

use super::*;

/// The legacy listener's id in these tests.
const LEGACY: ListenerId = 9;
const OTHER_NETWORK: [u8; 32] = [0x77; 32];

fn route_keys() -> Keypair {
    keypair(0x55)
}

/// A net whose broker has a legacy listener routing to `ssb`.
fn legacy_net(adjust: impl FnOnce(&mut LegacyRoute)) -> Net {
    Net::new(1, Chaos::default(), |config| {
        let mut handshake = HandshakeConfig::new(route_keys());
        handshake.network_key = NetworkKey(OTHER_NETWORK);
        let mut route = LegacyRoute::new(Arc::new(handshake), name("ssb"));
        adjust(&mut route);
        config.legacy.insert(LEGACY, route);
    })
}

/// An SSB client, driven by hand against the net's broker.
struct Client {
    conn: ConnId,
    hs: ClientHandshake,
    boxes: Option<(Sealer, Opener)>,
    /// Plaintext the broker sent it.
    got: Vec<u8>,
    goodbye: bool,
    /// Ciphertext not fed to the broker yet (kept to its input room).
    up: Vec<u8>,
}

impl Client {
    fn dial(net: &mut Net, seed: u8, network: [u8; 32], ip: [u8; 4]) -> Client {
        let ip = IpAddr::V4(Ipv4Addr::from(ip));
        let conn = net.broker.accept(net.now, Origin::tcp(LEGACY, ip)).unwrap();
        let mut config = HandshakeConfig::new(keypair(seed));
        config.network_key = NetworkKey(network);
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(u64::from(seed));
        let hs = ClientHandshake::new(Arc::new(config), route_keys().public(), &mut rng, net.now)
            .unwrap();
        Client {
            conn,
            hs,
            boxes: None,
            got: Vec::new(),
            goodbye: false,
            up: Vec::new(),
        }
    }

    /// Moves bytes both ways until nothing moves.
    fn pump(&mut self, net: &mut Net) {
        // Output taken can make events (a FIN taken retires the channel):
        // settled only after a round in which nothing moved at all.
        let mut idle = 0;
        for _ in 0..1000 {
            net.run();
            let mut moved = false;
            while let Some(hello) = self.hs.poll_transmit() {
                net.broker.handle_input(net.now, self.conn, &hello);
                moved = true;
            }
            // Fed as a runtime does: no further than the room it is given.
            let room = net.broker.input_room(self.conn).unwrap_or(usize::MAX);
            let n = self.up.len().min(room);
            if n > 0 {
                let piece: Vec<u8> = self.up.drain(..n).collect();
                net.broker.handle_input(net.now, self.conn, &piece);
                moved = true;
            }
            while let Some(t) = net.broker.poll_transmit(self.conn) {
                moved = true;
                match &mut self.boxes {
                    None => {
                        self.hs.handle_input(net.now, &t.data).unwrap();
                        if let Some(shs::Event::Established(done)) = self.hs.poll_event() {
                            self.boxes = Some(done.boxstream());
                        }
                    }
                    Some(_) => self.take_boxes(&t.data),
                }
            }
            // Its last words, if the broker closed it.
            if let Some(last) = net.closed_others.remove(&self.conn) {
                self.take_boxes(&last);
            }
            idle = if moved || net.in_flight() > 0 {
                0
            } else {
                idle + 1
            };
            if idle == 2 {
                return;
            }
        }
    }

    fn take_boxes(&mut self, bytes: &[u8]) {
        let Some((_, opener)) = &mut self.boxes else {
            assert!(
                bytes.is_empty(),
                "nothing but the handshake before box-stream"
            );
            return;
        };
        opener.handle_input(bytes).unwrap();
        while let Some(event) = opener.poll_event() {
            match event {
                BoxEvent::Data(data) => self.got.extend_from_slice(&data),
                BoxEvent::Goodbye => self.goodbye = true,
            }
        }
    }

    fn send(&mut self, data: &[u8]) {
        let (sealer, _) = self.boxes.as_mut().expect("established");
        let mut out = BytesMut::new();
        for chunk in data.chunks(4096) {
            sealer.seal(chunk, &mut out).unwrap();
        }
        self.up.extend_from_slice(&out);
    }

    fn say_goodbye(&mut self) {
        let (sealer, _) = self.boxes.as_mut().expect("established");
        let mut out = BytesMut::new();
        sealer.goodbye(&mut out).unwrap();
        self.up.extend_from_slice(&out);
    }
}

/// A plugin holding `ssb`, and a client it was offered (not answered).
fn offered(net: &mut Net, seed: u8) -> (NodeId, Client, u32) {
    let plugin = unix(net, 1);
    register(net, plugin, "ssb", false);
    let mut client = Client::dial(net, seed, OTHER_NETWORK, [192, 0, 2, 1]);
    client.pump(net);
    let SessionEvent::Incoming {
        channel,
        from_name,
        from_key,
        protocol,
        metadata,
        ..
    } = one_event(net, plugin)
    else {
        panic!("no incoming")
    };
    assert_eq!(from_name, None);
    assert_eq!(from_key, keypair(seed).public());
    assert_eq!(protocol, "muxrpc");
    assert_eq!(
        &metadata[..],
        br#"{"legacy":true,"transport":"tcp","addr":"192.0.2.1"}"#
    );
    assert!(
        client.boxes.is_none(),
        "no message 4 before the plugin answers"
    );
    (plugin, client, channel)
}

/// A client the plugin accepted, its box-stream up.
fn bridged(net: &mut Net) -> (NodeId, Client, u32) {
    let (plugin, mut client, channel) = offered(net, 2);
    let now = net.now;
    net.node(plugin).session.accept(now, channel).unwrap();
    client.pump(net);
    assert!(client.boxes.is_some(), "message 4 once accepted");
    (plugin, client, channel)
}

fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ salt).collect()
}

#[test]
fn an_ssb_client_reaches_the_plugin_both_ways_and_ends_cleanly() {
    let mut net = legacy_net(|_| {});
    let (plugin, mut client, channel) = bridged(&mut net);

    // Far more than any window, each way.
    let up = pattern(600_000, 1);
    client.send(&up);
    let mut received = Vec::new();
    for _ in 0..1000 {
        client.pump(&mut net);
        received.extend_from_slice(&read_all(&mut net, plugin, channel));
        if received.len() == up.len() {
            break;
        }
    }
    assert!(
        received == up,
        "{} of {} bytes up",
        received.len(),
        up.len()
    );

    let down = pattern(600_000, 2);
    let mut sent = 0;
    for _ in 0..1000 {
        if sent < down.len() {
            let chunk = Bytes::copy_from_slice(&down[sent..(sent + 16384).min(down.len())]);
            sent += net.node(plugin).session.send(channel, chunk).unwrap();
        }
        client.pump(&mut net);
        if client.got.len() == down.len() {
            break;
        }
    }
    assert!(
        client.got == down,
        "{} of {} bytes down",
        client.got.len(),
        down.len()
    );

    // The client's goodbye is the channel's FIN; the plugin's, box-stream's.
    client.say_goodbye();
    client.pump(&mut net);
    net.events(plugin);
    assert_eq!(
        net.node(plugin).session.recv(channel, usize::MAX).unwrap(),
        Recv::Finished
    );
    assert!(
        net.broker.hub().is_open(client.conn),
        "the plugin may still speak"
    );
    net.node(plugin).session.finish(channel).unwrap();
    client.pump(&mut net);
    assert!(
        client.goodbye,
        "box-stream's goodbye after the plugin's FIN"
    );
    assert!(
        !net.broker.hub().is_open(client.conn),
        "closed once both ended"
    );
    net.broker.hub().check_budgets().unwrap();
}

#[test]
fn an_end_on_a_box_boundary_is_a_fin_and_a_cut_box_a_reset() {
    let mut net = legacy_net(|_| {});
    let (plugin, mut client, channel) = bridged(&mut net);
    client.send(b"hello");
    client.pump(&mut net);
    net.broker.handle_eof(net.now, client.conn); // no goodbye: ssb-client's way
    client.pump(&mut net);
    net.events(plugin);
    assert_eq!(
        net.node(plugin).session.recv(channel, usize::MAX).unwrap(),
        Recv::Data(Bytes::from_static(b"hello"))
    );
    assert_eq!(
        net.node(plugin).session.recv(channel, usize::MAX).unwrap(),
        Recv::Finished
    );

    let (plugin2, mut cut, channel2) = {
        let mut client = Client::dial(&mut net, 3, OTHER_NETWORK, [192, 0, 2, 2]);
        client.pump(&mut net);
        let SessionEvent::Incoming { channel, .. } = one_event(&mut net, plugin) else {
            panic!("no incoming")
        };
        let now = net.now;
        net.node(plugin).session.accept(now, channel).unwrap();
        client.pump(&mut net);
        (plugin, client, channel)
    };
    cut.send(&[7; 100]);
    let half = cut.up.len() / 2;
    let piece: Vec<u8> = cut.up.drain(..half).collect();
    net.broker.handle_input(net.now, cut.conn, &piece);
    net.broker.handle_eof(net.now, cut.conn);
    net.run();
    net.events(plugin2);
    assert!(
        matches!(
            net.node(plugin2).session.recv(channel2, usize::MAX),
            Ok(Recv::Reset { .. })
        ),
        "a cut box resets the channel"
    );
    assert!(!net.broker.hub().is_open(cut.conn));
    net.broker.hub().check_budgets().unwrap();
}

#[test]
fn the_client_is_read_no_further_than_the_plugin_reads() {
    let mut net = legacy_net(|_| {});
    let (plugin, mut client, channel) = bridged(&mut net);
    client.send(&pattern(2_000_000, 3));
    client.pump(&mut net);
    // The plugin reads nothing: the socket is left unread, past a window.
    assert_eq!(net.broker.input_room(client.conn), Some(0));
    let unread = client.up.len();
    assert!(unread > 1_000_000, "only {unread} bytes left unread");
    assert!(net.broker.hub().is_open(client.conn));
    let mut received = Vec::new();
    for _ in 0..1000 {
        net.events(plugin);
        received.extend_from_slice(&read_all(&mut net, plugin, channel));
        client.pump(&mut net);
        if received.len() == 2_000_000 {
            break;
        }
    }
    assert!(
        received == pattern(2_000_000, 3),
        "{} bytes",
        received.len()
    );
}

#[test]
fn nobody_holding_the_name_a_reject_or_no_answer_close_with_nothing_sent() {
    // Nobody holds the name.
    let mut net = legacy_net(|_| {});
    let mut client = Client::dial(&mut net, 2, OTHER_NETWORK, [192, 0, 2, 1]);
    client.pump(&mut net);
    assert!(client.boxes.is_none());
    assert!(!net.broker.hub().is_open(client.conn));

    // A reject.
    let mut net = legacy_net(|_| {});
    let (plugin, mut client, channel) = offered(&mut net, 2);
    net.node(plugin).session.reject(channel, "not you").unwrap();
    client.pump(&mut net);
    assert!(client.boxes.is_none());
    assert!(!net.broker.hub().is_open(client.conn));

    // No answer within the route's offer timeout.
    let mut net = legacy_net(|route| route.offer_timeout = Duration::from_millis(500));
    let (_plugin, mut client, _) = offered(&mut net, 2);
    net.advance(Duration::from_millis(600));
    client.pump(&mut net);
    assert!(client.boxes.is_none());
    assert!(!net.broker.hub().is_open(client.conn));
    net.broker.hub().check_budgets().unwrap();

    // Another network key: the handshake fails at message 1.
    let mut net = legacy_net(|_| {});
    let plugin = unix(&mut net, 1);
    register(&mut net, plugin, "ssb", false);
    let mut client = Client::dial(&mut net, 2, [0x11; 32], [192, 0, 2, 1]);
    let mut hello = Vec::new();
    while let Some(m) = client.hs.poll_transmit() {
        hello.extend_from_slice(&m);
    }
    net.broker.handle_input(net.now, client.conn, &hello);
    net.run();
    assert!(net.broker.poll_transmit(client.conn).is_none());
    assert!(!net.broker.hub().is_open(client.conn));
    assert!(
        net.events(plugin).is_empty(),
        "the plugin never hears of it"
    );
}

#[test]
fn the_plugin_resetting_or_leaving_closes_the_client() {
    let mut net = legacy_net(|_| {});
    let (plugin, mut client, channel) = bridged(&mut net);
    net.node(plugin)
        .session
        .reset(channel, ErrorCode::Rejected, "bye")
        .unwrap();
    client.pump(&mut net);
    assert!(!net.broker.hub().is_open(client.conn));
    assert!(!client.goodbye, "a reset is no clean end: no goodbye");

    let mut net = legacy_net(|_| {});
    let (plugin, mut client, _) = bridged(&mut net);
    client.send(b"a call");
    client.pump(&mut net);
    net.kill(plugin);
    client.pump(&mut net);
    assert!(!net.broker.hub().is_open(client.conn));
    assert!(!client.goodbye, "the plugin left: no goodbye");
    net.broker.hub().check_budgets().unwrap();
}

#[test]
fn a_plugin_that_accepts_then_resets_before_message_4_gets_the_client_nothing() {
    let mut net = legacy_net(|_| {});
    let (plugin, mut client, channel) = offered(&mut net, 2);
    let now = net.now;
    net.node(plugin).session.accept(now, channel).unwrap();
    net.node(plugin)
        .session
        .reset(channel, ErrorCode::Rejected, "changed my mind")
        .unwrap();
    client.pump(&mut net);
    assert!(client.boxes.is_none(), "no message 4");
    assert!(!net.broker.hub().is_open(client.conn));
    net.kill(plugin);
    net.run();
    net.broker.hub().check_empty().unwrap();
}

#[test]
fn the_plugin_still_answers_a_client_whose_stream_ended() {
    let mut net = legacy_net(|_| {});
    let (plugin, mut client, channel) = bridged(&mut net);
    client.send(b"a last request");
    client.pump(&mut net);
    net.broker.handle_eof(net.now, client.conn);
    client.pump(&mut net);
    net.events(plugin);
    assert_eq!(read_all(&mut net, plugin, channel), b"a last request");
    assert!(
        net.broker.hub().is_open(client.conn),
        "half closed, not gone"
    );
    net.node(plugin)
        .session
        .send(channel, Bytes::from_static(b"the answer"))
        .unwrap();
    net.node(plugin).session.finish(channel).unwrap();
    client.pump(&mut net);
    assert_eq!(client.got, b"the answer");
    assert!(client.goodbye);
    assert!(!net.broker.hub().is_open(client.conn));
}

#[test]
fn a_quiet_client_is_closed_after_the_idle_timeout() {
    let mut net = legacy_net(|route| route.idle_timeout = Duration::from_secs(60));
    let (_plugin, mut client, _) = bridged(&mut net);
    net.advance(Duration::from_secs(59));
    client.pump(&mut net);
    assert!(net.broker.hub().is_open(client.conn));
    client.send(b"still here");
    client.pump(&mut net);
    net.advance(Duration::from_secs(59));
    client.pump(&mut net);
    assert!(net.broker.hub().is_open(client.conn), "traffic restarts it");
    net.advance(Duration::from_secs(2));
    client.pump(&mut net);
    assert!(!net.broker.hub().is_open(client.conn));
}

#[test]
fn one_address_holds_no_more_legacy_connections_than_its_share() {
    let mut net = Net::new(1, Chaos::default(), |config| {
        let mut handshake = HandshakeConfig::new(route_keys());
        handshake.network_key = NetworkKey(OTHER_NETWORK);
        let route = LegacyRoute::new(Arc::new(handshake), name("ssb"));
        config.legacy.insert(LEGACY, route);
        config.limits.max_legacy_connections_per_source = 2;
    });
    let plugin = unix(&mut net, 1);
    register(&mut net, plugin, "ssb", false);
    let mut clients: Vec<Client> = (0..3)
        .map(|i| Client::dial(&mut net, 10 + i, OTHER_NETWORK, [198, 51, 100, 7]))
        .collect();
    for client in &mut clients {
        client.pump(&mut net);
    }
    let offers = net.events(plugin).len();
    assert_eq!(
        offers, 2,
        "a third key from the same address is not offered"
    );
    assert!(!net.broker.hub().is_open(clients[2].conn));
    // Another address still gets in.
    let mut other = Client::dial(&mut net, 20, OTHER_NETWORK, [198, 51, 100, 8]);
    other.pump(&mut net);
    assert_eq!(net.events(plugin).len(), 1);
    // One that leaves frees its place.
    net.broker
        .handle_disconnect(net.now, clients[0].conn, "gone");
    let mut again = Client::dial(&mut net, 21, OTHER_NETWORK, [198, 51, 100, 7]);
    again.pump(&mut net);
    let offers = net.events(plugin);
    let offers = offers
        .iter()
        .filter(|e| matches!(e, SessionEvent::Incoming { .. }));
    assert_eq!(offers.count(), 1, "offered again");
}

/// A `noauth` client (no handshake, no box-stream) on a unix listener,
/// offered and accepted: its conn.
fn noauth_bridged(net: &mut Net, plugin: NodeId) -> (ConnId, u32) {
    let conn = net
        .broker
        .accept(net.now, Origin::unix(LEGACY, Some(Cred { uid: 7, gid: 7 })))
        .unwrap();
    net.run();
    let SessionEvent::Incoming {
        channel,
        from_key,
        metadata,
        ..
    } = one_event(net, plugin)
    else {
        panic!("no incoming")
    };
    assert_eq!(from_key, route_keys().public(), "the route's own identity");
    assert_eq!(
        &metadata[..],
        br#"{"legacy":true,"transport":"unix","uid":7}"#
    );
    let now = net.now;
    net.node(plugin).session.accept(now, channel).unwrap();
    net.run();
    (conn, channel)
}

/// With windows small enough that a transfer grows them (credit then
/// passes through the hub, not only from port to port).
fn noauth_net() -> Net {
    Net::new(1, Chaos::default(), |config| {
        let mut handshake = HandshakeConfig::new(route_keys());
        handshake.network_key = NetworkKey(OTHER_NETWORK);
        let mut route = LegacyRoute::new(Arc::new(handshake), name("ssb"));
        route.noauth = true;
        config.legacy.insert(LEGACY, route);
        config.limits.initial_window = 16 * 1024;
        config.limits.max_window = 256 * 1024;
    })
}

#[test]
fn a_noauth_client_speaks_first_and_is_heard_once_accepted() {
    let mut net = noauth_net();
    let plugin = unix(&mut net, 1);
    register(&mut net, plugin, "ssb", false);
    let conn = net
        .broker
        .accept(net.now, Origin::unix(LEGACY, None))
        .unwrap();
    // Before any verdict: kept by the link, not lost.
    net.broker.handle_input(net.now, conn, b"early words");
    net.run();
    let SessionEvent::Incoming { channel, .. } = one_event(&mut net, plugin) else {
        panic!("no incoming")
    };
    let now = net.now;
    net.node(plugin).session.accept(now, channel).unwrap();
    net.run();
    net.events(plugin);
    assert_eq!(read_all(&mut net, plugin, channel), b"early words");
    // Too much before the verdict ends it.
    let conn = net
        .broker
        .accept(net.now, Origin::unix(LEGACY, None))
        .unwrap();
    net.broker.handle_input(net.now, conn, &vec![0; 70_000]);
    net.run();
    assert!(!net.broker.hub().is_open(conn));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// Whatever pieces the client's bytes come in and however the plugin
    /// reads, both directions arrive whole and in order, and the broker
    /// never holds more of the client's than the bound.
    #[test]
    fn bytes_cross_the_bridge_whole_and_in_order(
        up_len in 0usize..300_000,
        down_len in 0usize..300_000,
        pieces in proptest::collection::vec(1usize..300_000, 1..8),
        reads in proptest::collection::vec(proptest::prop_oneof![proptest::strategy::Just(0), 1usize..100_000], 1..8),
        slack in 0usize..20_000,
    ) {
        let mut net = noauth_net();
        let plugin = unix(&mut net, 1);
        register(&mut net, plugin, "ssb", false);
        let (conn, channel) = noauth_bridged(&mut net, plugin);
        let up = pattern(up_len, 5);
        let down = pattern(down_len, 6);
        let (mut fed, mut sent, mut got_up, mut got_down) = (0, 0, Vec::new(), Vec::new());
        // The reader waits, once it found no room, for the broker to say
        // there is some (a wake-up kept if it came first, as a runtime's).
        let mut waiting = false;
        for round in 0..4000 {
            if waiting && net.resumed.remove(&conn) {
                waiting = false;
            }
            // The client, as a runtime reads it: within the room it is
            // given, and past it by what a read can open beyond it (the
            // rest of a box begun, and more: held, not lost).
            let room = net.broker.input_room(conn).filter(|_| !waiting);
            waiting |= room == Some(0);
            if let Some(room) = room {
                if room > 0 && fed < up.len() {
                    let n = pieces[round % pieces.len()].min(room + slack).min(up.len() - fed);
                    net.broker.handle_input(net.now, conn, &up[fed..fed + n]);
                    fed += n;
                }
            }
            if sent < down.len() {
                let chunk = Bytes::copy_from_slice(&down[sent..(sent + 16384).min(down.len())]);
                sent += net.node(plugin).session.send(channel, chunk).unwrap();
            }
            net.run();
            while let Some(t) = net.broker.poll_transmit(conn) {
                got_down.extend_from_slice(&t.data);
            }
            net.events(plugin);
            // Some rounds the plugin reads nothing: the room runs out.
            let mut budget = reads[round % reads.len()];
            if round > 200 {
                budget = budget.max(65_536); // in the end it reads
            }
            let mut read = 0;
            while read < budget && got_up.len() < up.len() {
                match net.node(plugin).session.recv(channel, budget - read) {
                    Ok(Recv::Data(bytes)) => {
                        read += bytes.len();
                        got_up.extend_from_slice(&bytes);
                    }
                    _ => break,
                }
            }
            net.broker.hub().check_budgets().unwrap();
            if got_up.len() == up.len() && got_down.len() == down.len() {
                break;
            }
        }
        proptest::prop_assert!(got_up == up, "{} of {} up", got_up.len(), up.len());
        proptest::prop_assert!(got_down == down, "{} of {} down", got_down.len(), down.len());
    }
}
