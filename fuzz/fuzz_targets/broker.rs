//! The broker under an arbitrary sequence of accepts, honest plugins acting,
//! raw byte chunks on any connection (a legacy `noauth` client's go
//! straight into its bridge to the plugin holding "a"), ends of stream,
//! kills and time jumps; peer texts as
//! long as the wire allows, and credit in one-byte grants. Oracles: no
//! panic; after every step every budget holds, measured from what the broker
//! holds (`Broker::check_budgets`);
//! when everyone has left, it holds nothing.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use plugboard_core::broker::{Cred, LegacyRoute, Origin};
use plugboard_core::control::{ErrorCode, Name, TransportKind, MAX_TEXT};
use plugboard_core::keys::Keypair;
use plugboard_core::sim::{Chaos, Net};

#[derive(Arbitrary, Debug)]
enum Op {
    /// A socket that never speaks shs1 (raw bytes go to it).
    AcceptRaw {
        tcp: bool,
    },
    /// A legacy client with no handshake, offered to the holder of "a":
    /// its chunks are its bridged channel's bytes.
    AcceptLegacy,
    /// A raw socket's peer ends its stream (cleanly, if on a boundary).
    Eof {
        conn: u8,
    },
    /// What the broker has for a raw socket is read.
    Drain {
        conn: u8,
    },
    /// An honest plugin with one of a few keys.
    Connect {
        key: u8,
        tcp: bool,
    },
    /// Bytes on some connection, as if its peer sent them.
    Chunk {
        conn: u8,
        bytes: Vec<u8>,
    },
    /// An honest plugin does something.
    Act {
        node: u8,
        what: u8,
        arg: u16,
    },
    Kill {
        node: u8,
    },
    Slow {
        node: u8,
    },
    Advance {
        ms: u16,
    },
    Run,
}

const NAMES: [&str; 3] = ["a", "b", "c"];
/// The legacy listener's id.
const LEGACY: u32 = 2;

fuzz_target!(|ops: Vec<Op>| {
    let mut net = Net::new(7, Chaos::default(), |c| {
        c.limits.max_control_queue = 16 * 1024;
        c.limits.initial_window = 4096;
        c.limits.max_window = 16 * 1024;
        c.fd_passing = true;
        // Budgets small enough that a short run meets each of them (over
        // IPv4 and unix: the IPv6 /48 tiers are the unit tests' to reach).
        c.limits.max_handshaking_per_source = 2;
        c.limits.handshakes_per_source_per_s = 4;
        c.limits.max_descriptors_per_key = 2;
        c.limits.max_descriptors = 5;
        c.limits.max_channels_between_keys = 3;
        c.limits.max_connections_per_uid = 6;
        c.limits.max_bytes_per_key = 3 * 2 * 4096;
        c.limits.max_grown_bytes_per_key = 12_000;
        c.limits.max_grown_bytes = 20_000;
        c.limits.max_bytes = 8 * 2 * 4096;
        c.limits.registrations_per_source_per_s = 3;
        c.limits.registrations_per_s = 5;
        c.limits.max_legacy_connections_per_source = 3;
        let mut route = LegacyRoute::new(c.handshake.clone(), Name::new("a").unwrap());
        route.noauth = true;
        c.legacy.insert(LEGACY, route);
    });
    let mut raw = Vec::new();
    for op in ops.into_iter().take(200) {
        let now = net.now;
        match op {
            Op::AcceptRaw { tcp } => {
                // Raw sockets all from one address: the door's budgets
                // are in play.
                let origin = if tcp {
                    Origin::tcp(1, std::net::Ipv4Addr::new(192, 0, 2, 1).into())
                } else {
                    Origin::unix(0, None)
                };
                if let Ok(conn) = net.broker.accept(now, origin) {
                    raw.push(conn);
                }
            }
            Op::AcceptLegacy => {
                let origin = Origin::unix(LEGACY, Some(Cred { uid: 9, gid: 9 }));
                if let Ok(conn) = net.broker.accept(now, origin) {
                    raw.push(conn);
                }
            }
            Op::Eof { conn } => {
                if let Some(&c) = raw.get(usize::from(conn) % raw.len().max(1)) {
                    net.broker.handle_eof(now, c);
                }
            }
            Op::Drain { conn } => {
                if let Some(&c) = raw.get(usize::from(conn) % raw.len().max(1)) {
                    while net.broker.poll_transmit(c).is_some() {}
                }
            }
            Op::Connect { key, tcp } => {
                let t = if tcp {
                    TransportKind::Tcp
                } else {
                    TransportKind::Unix
                };
                net.connect(Keypair::from_seed([key % 4 + 1; 32]), t);
            }
            Op::Chunk { conn, bytes } => {
                let all: Vec<u64> = raw
                    .iter()
                    .copied()
                    .chain(net.nodes.values().map(|n| n.conn))
                    .collect();
                if let Some(&c) = all.get(usize::from(conn) % all.len().max(1)) {
                    net.broker.handle_input(now, c, &bytes);
                }
            }
            Op::Act { node, what, arg } => {
                let ids: Vec<usize> = net.nodes.keys().copied().collect();
                let Some(&id) = ids.get(usize::from(node) % ids.len().max(1)) else {
                    continue;
                };
                let name = Name::new(NAMES[usize::from(arg) % NAMES.len()]).unwrap();
                let s = &mut net.node(id).session;
                // Peer text as long as the wire allows (or one byte more),
                // in one- or two-byte characters: answers that quote it
                // must still fit.
                let long = |arg: u16| {
                    let len = usize::from(arg) % (MAX_TEXT + 2);
                    if arg % 2 == 1 {
                        "é".repeat(len / 2)
                    } else {
                        "x".repeat(len)
                    }
                };
                let _ = match what % 12 {
                    0 => s.register(now, name, arg % 2 == 0, None).map(drop),
                    1 => s.list(now).map(drop),
                    2 => s.watch(now).map(drop),
                    3 => s.open(now, name, "p", Bytes::new(), arg % 3 == 0).map(drop),
                    4 => s.accept(now, u32::from(arg)),
                    5 => s.reject(u32::from(arg), "no"),
                    6 => s
                        .send(u32::from(arg % 8), Bytes::from(vec![0; usize::from(arg)]))
                        .map(drop),
                    7 => s.finish(u32::from(arg % 8)),
                    8 => s.register(now, name, false, Some(long(arg))).map(drop),
                    9 => s.reset(u32::from(arg % 8), ErrorCode::Cancelled, &long(arg)),
                    10 => s.reject(u32::from(arg % 8), &long(arg)),
                    // Credit in the smallest grants: a byte read at a time.
                    _ => (0..arg % 512).try_for_each(|_| s.recv(u32::from(arg % 8), 1).map(drop)),
                };
            }
            Op::Kill { node } => {
                let ids: Vec<usize> = net.nodes.keys().copied().collect();
                if let Some(&id) = ids.get(usize::from(node) % ids.len().max(1)) {
                    net.kill(id);
                }
            }
            Op::Slow { node } => {
                let ids: Vec<usize> = net.nodes.keys().copied().collect();
                if let Some(&id) = ids.get(usize::from(node) % ids.len().max(1)) {
                    let n = net.node(id);
                    n.slow = !n.slow;
                }
            }
            Op::Advance { ms } => net.advance(Duration::from_millis(u64::from(ms) * 50)),
            Op::Run => {
                for _ in 0..20 {
                    if !net.round() {
                        break;
                    }
                }
            }
        }
        if let Err(e) = net.broker.hub().check_budgets() {
            panic!("budgets: {e}");
        }
    }
    // Everyone leaves: nothing is left.
    let ids: Vec<usize> = net.nodes.keys().copied().collect();
    for id in ids {
        net.kill(id);
    }
    for conn in raw {
        net.broker.handle_disconnect(net.now, conn, "gone");
    }
    net.run();
    net.advance(Duration::from_secs(60));
    net.run();
    if let Err(e) = net.broker.hub().check_empty() {
        panic!("{e}");
    }
});
