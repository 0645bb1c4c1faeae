//! The broker with real sessions over in-memory links: every request, every
//! refusal, every violation. The helpers are here; the tests are by topic:
//! `requests`, `channels`, `connections` and `budgets`.

use std::time::Duration;

use bytes::Bytes;

use crate::control::{
    ChannelPath, ErrorCode, IncomingPath, Member, Name, OpenedPath, Presence, TransportKind,
};
use crate::keys::Keypair;
use crate::session::{Recv, SessionEvent};
use crate::shs;
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
            if let SessionEvent::Readable { channel } = event {
                assert_eq!(channel, to_ch);
                received.extend_from_slice(&read_all(net, to, to_ch));
            }
        }
        net.events(from);
        if received.len() == data.len() {
            return received;
        }
    }
    panic!("stalled after {} of {} bytes", received.len(), data.len());
}

/// Everything `channel` of `node` has to read now (its credit goes back).
fn read_all(net: &mut Net, node: NodeId, channel: u32) -> Vec<u8> {
    let mut all = Vec::new();
    while let Ok(Recv::Data(bytes)) = net.node(node).session.recv(channel, usize::MAX) {
        all.extend_from_slice(&bytes);
    }
    all
}

fn from_user(uid: u32) -> Origin {
    Origin::unix(0, Some(Cred { uid, gid: uid }))
}

mod budgets;
mod channels;
mod connections;
mod legacy;
mod operations;
mod requests;
