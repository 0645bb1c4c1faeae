//! Resident memory against `plugboard serve` as a child, on every runtime:
//! one key opens every channel it may to a name it holds itself, writes
//! all the credit it has on both ends and then reads nothing. The broker
//! must stay within its byte budget (DESIGN §2.5: under 256 MiB for one
//! such key), and an honest transfer between two other keys completes.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Broker, Options};
use mio::{Events, Interest, Poll, Token};
use plugboard_core::control::{ChannelId, ErrorCode, Name};
use plugboard_core::keys::{Keypair, PublicKey};
use plugboard_core::session::{Recv, SessionConfig, SessionEvent};
use plugboard_core::shs::HandshakeConfig;
use plugboard_mio::{Addr, PluginConn};

/// What one key may make the broker grow by (DESIGN §2.5).
const MOST_GROWTH: u64 = 256 << 20;
const HONEST_BYTES: usize = 1 << 20;

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

struct Conns {
    poll: Poll,
    events: Events,
    conns: Vec<PluginConn>,
}

impl Conns {
    fn new() -> Conns {
        Conns {
            poll: Poll::new().unwrap(),
            events: Events::with_capacity(256),
            conns: Vec::new(),
        }
    }

    fn connect(&mut self, broker: &Broker, seed: u8) -> usize {
        let broker_key: PublicKey = broker.key.parse().unwrap();
        let config = SessionConfig::new(
            HandshakeConfig::new(Keypair::from_seed([seed; 32])),
            broker_key,
        );
        let mut conn = PluginConn::connect(&Addr::Unix(broker.socket()), config).unwrap();
        let id = self.conns.len();
        let interest = Interest::READABLE | Interest::WRITABLE;
        self.poll
            .registry()
            .register(&mut conn, Token(id), interest)
            .unwrap();
        self.conns.push(conn);
        id
    }

    /// From now on `id` only writes: the broker's output to it stays queued.
    fn stop_reading(&mut self, id: usize) {
        self.poll
            .registry()
            .reregister(&mut self.conns[id], Token(id), Interest::WRITABLE)
            .unwrap();
    }

    /// One turn of the loop; every event of every connection, with its id.
    fn turn(&mut self) -> Vec<(usize, SessionEvent)> {
        self.poll
            .poll(&mut self.events, Some(Duration::from_millis(20)))
            .unwrap();
        for event in &self.events {
            self.conns[event.token().0].handle_ready(event);
        }
        let mut out = Vec::new();
        for (id, conn) in self.conns.iter_mut().enumerate() {
            conn.handle_timeout();
            while let Some(event) = conn.poll_event() {
                out.push((id, event));
            }
        }
        out
    }

    /// Turns until `done` says so (it sees every event), or panics.
    fn until(&mut self, what: &str, mut done: impl FnMut(&mut Self, usize, SessionEvent) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            for (id, event) in self.turn() {
                if done(self, id, event) {
                    return;
                }
            }
        }
        panic!("no {what} within 60 s");
    }

    fn ready(&mut self, ids: &[usize]) {
        let mut left = ids.len();
        self.until("hello", |_, _, e| {
            left -= usize::from(matches!(e, SessionEvent::Ready { .. }));
            left == 0
        });
    }

    fn register(&mut self, id: usize, name: &str) {
        let mut session = self.conns[id].session_mut();
        let now = session.now();
        session
            .register(now, Name::new(name).unwrap(), false, None)
            .unwrap();
        drop(session);
        self.until("registration", |_, i, e| {
            i == id && matches!(e, SessionEvent::Registered { .. })
        });
    }

    fn open(&mut self, id: usize, name: &str) {
        let mut session = self.conns[id].session_mut();
        let now = session.now();
        let name = Name::new(name).unwrap();
        session.open(now, name, "p", Bytes::new(), false).unwrap();
    }

    fn accept(&mut self, id: usize, channel: ChannelId) {
        let mut session = self.conns[id].session_mut();
        let now = session.now();
        session.accept(now, channel).unwrap();
    }

    /// Sends what credit allows of `len` bytes; returns how much was taken.
    fn send(&mut self, id: usize, channel: ChannelId, len: usize) -> usize {
        let mut session = self.conns[id].session_mut();
        session
            .send(channel, Bytes::from(vec![0x5a; len]))
            .unwrap_or(0)
    }
}

/// The hostile key opens channels to its own name until the broker refuses
/// (at most `tries`), then writes all its credit on both ends and stops
/// reading. Returns the channels made and the last refusal's code.
fn greedy(
    conns: &mut Conns,
    opener: usize,
    sink: usize,
    tries: usize,
) -> (usize, Option<ErrorCode>) {
    let (mut made, mut answered, mut refusal) = (0, 0, None);
    let mut ends: Vec<(usize, ChannelId)> = Vec::new();
    // 32 unanswered opens at a time: under max_pending_opens_per_key.
    let mut asked = 0;
    while asked < tries.min(32) {
        conns.open(opener, "sink");
        asked += 1;
    }
    conns.until("the last answer", |conns, id, event| {
        match event {
            SessionEvent::Incoming { channel, .. } if id == sink => {
                conns.accept(sink, channel);
                ends.push((sink, channel));
            }
            SessionEvent::Opened { channel, .. } if id == opener => {
                made += 1;
                answered += 1;
                ends.push((opener, channel));
            }
            SessionEvent::Failed { code, .. } if id == opener => {
                answered += 1;
                refusal = Some(code);
            }
            _ => return false,
        }
        if refusal.is_none() && asked < tries && answered + 32 > asked {
            conns.open(opener, "sink");
            asked += 1;
        }
        answered == asked
    });
    conns.stop_reading(opener);
    conns.stop_reading(sink);
    for &(id, channel) in &ends {
        while conns.send(id, channel, 64 * 1024) > 0 {}
    }
    // Let the writes reach the broker.
    let settle = Instant::now() + Duration::from_secs(3);
    while Instant::now() < settle {
        conns.turn();
    }
    (made, refusal)
}

/// 1 MiB from one honest key to another, through the relay.
fn honest_transfer(conns: &mut Conns, from: usize, to: usize) {
    conns.open(from, "honest");
    let mut channel = None;
    let mut got = 0;
    let mut sent = 0;
    conns.until("the honest transfer", |conns, id, event| {
        match event {
            SessionEvent::Incoming { channel, .. } if id == to => conns.accept(to, channel),
            SessionEvent::Opened { channel: c, .. } if id == from => channel = Some(c),
            SessionEvent::Readable { channel } if id == to => {
                let mut session = conns.conns[to].session_mut();
                while let Ok(Recv::Data(bytes)) = session.recv(channel, usize::MAX) {
                    got += bytes.len();
                }
            }
            SessionEvent::Closed { reason, .. } if id == from || id == to => {
                panic!("an honest connection was closed: {reason}")
            }
            _ => {}
        }
        if let Some(c) = channel {
            while sent < HONEST_BYTES {
                let n = conns.send(from, c, (HONEST_BYTES - sent).min(64 * 1024));
                if n == 0 {
                    break;
                }
                sent += n;
            }
        }
        got == HONEST_BYTES
    });
}

fn one_key_cannot_take_the_memory(runtime: &str) {
    let broker = Broker::start(runtime, "memory", Options::default());
    let mut conns = Conns::new();
    let (opener, sink) = (conns.connect(&broker, 1), conns.connect(&broker, 1));
    let (honest_from, honest_to) = (conns.connect(&broker, 2), conns.connect(&broker, 3));
    conns.ready(&[opener, sink, honest_from, honest_to]);
    conns.register(sink, "sink");
    conns.register(honest_to, "honest");
    let before = rss_bytes(broker.pid());

    // 2048 channels would be the channel limit (both ends count for the
    // key); each could make the broker hold both initial windows (512 KiB).
    let (made, refusal) = greedy(&mut conns, opener, sink, 2048);
    let grown = rss_bytes(broker.pid()).saturating_sub(before);
    println!(
        "{runtime}: {made} channels, refusal {refusal:?}, the broker grew by {} MiB",
        grown >> 20
    );
    assert!(
        grown < MOST_GROWTH,
        "the broker grew by {} MiB",
        grown >> 20
    );
    assert_eq!(refusal, Some(ErrorCode::TooManyBytes));

    honest_transfer(&mut conns, honest_from, honest_to);
    assert!(broker.list_works());
}

#[test]
fn one_key_cannot_take_the_memory_of_tokio() {
    one_key_cannot_take_the_memory("tokio");
}

#[test]
fn one_key_cannot_take_the_memory_of_smol() {
    one_key_cannot_take_the_memory("smol");
}

#[test]
fn one_key_cannot_take_the_memory_of_mio() {
    one_key_cannot_take_the_memory("mio");
}
