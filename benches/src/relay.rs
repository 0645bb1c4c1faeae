//! The broker state machine relaying between two plugin sessions in memory
//! (unix framing: plain), and presence fan-out to many watchers.

use std::hint::black_box;
use std::time::{Duration, Instant as Clock};

use bytes::Bytes;
use plugboard_core::broker::{Broker, BrokerConfig, ConnId, Event, Origin};
use plugboard_core::control::{Name, TransportKind};
use plugboard_core::session::{Recv, Session, SessionConfig, SessionEvent};
use plugboard_core::shs::HandshakeConfig;
use plugboard_core::sim::{Chaos, Net};
use plugboard_core::{Instant, Keypair};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// Size of each write in the throughput comparison.
pub const WRITE: usize = 16 * 1024;

/// A broker and two ready sessions with a relayed channel between them.
pub struct Relay {
    now: Instant,
    broker: Broker,
    a: (Session, ConnId, u32),
    b: (Session, ConnId, u32),
    data: Bytes,
}

impl Default for Relay {
    fn default() -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let now = Instant::ZERO;
        let config = BrokerConfig::new(HandshakeConfig::new(Keypair::from_seed([0xB0; 32])));
        let mut broker = Broker::new(config, Box::new(ChaCha20Rng::seed_from_u64(2)));
        let mut session = |seed: u8, broker: &mut Broker| {
            let conn = broker.accept(now, Origin::unix(0, None)).unwrap();
            let config = SessionConfig::new(
                HandshakeConfig::new(Keypair::from_seed([seed; 32])),
                broker.public_key(),
            );
            (Session::new(config, &mut rng, now).unwrap(), conn, 0)
        };
        let a = session(1, &mut broker);
        let b = session(2, &mut broker);
        let mut relay = Relay {
            now,
            broker,
            a,
            b,
            data: Bytes::from(vec![0x5a; WRITE]),
        };
        relay.pump();
        relay
            .b
            .0
            .register(now, Name::new("sink").unwrap(), false, None)
            .unwrap();
        relay.pump();
        let (_, channel) = relay
            .a
            .0
            .open(
                now,
                Name::new("sink").unwrap(),
                "bench",
                Bytes::new(),
                false,
            )
            .unwrap();
        relay.a.2 = channel;
        relay.pump();
        relay.pump();
        assert!(relay.a.0.send_capacity(channel) > 0, "the channel opened");
        relay
    }
}

impl Relay {
    /// Moves bytes between the three until nothing moves; the sink reads
    /// (and accepts) everything. Returns the bytes the sink received.
    fn pump(&mut self) -> usize {
        let mut delivered = 0;
        loop {
            let mut moved = false;
            for (session, conn, _) in [&mut self.a, &mut self.b] {
                while let Some(bytes) = session.poll_transmit() {
                    self.broker.handle_input(self.now, *conn, &bytes);
                    moved = true;
                }
            }
            while let Some(event) = self.broker.poll_event() {
                if let Event::Close { reason, .. } = event {
                    panic!("closed: {reason}");
                }
            }
            for (session, conn, _) in [&mut self.a, &mut self.b] {
                while let Some(t) = self.broker.poll_transmit(*conn) {
                    session.handle_input(self.now, &t.data).unwrap();
                    moved = true;
                }
            }
            while let Some(event) = self.b.0.poll_event() {
                match event {
                    SessionEvent::Incoming { channel, .. } => {
                        self.b.0.accept(self.now, channel).unwrap();
                        self.b.2 = channel;
                    }
                    SessionEvent::Readable { channel } => {
                        delivered += read_all(&mut self.b.0, channel);
                    }
                    _ => {}
                }
            }
            while self.a.0.poll_event().is_some() {}
            if !moved {
                return delivered;
            }
        }
    }

    /// One 16 KiB write from A, through the broker, read by B.
    pub fn write(&mut self) -> usize {
        let sent = self.a.0.send(self.a.2, self.data.clone()).unwrap();
        assert_eq!(sent, WRITE, "credit came back");
        self.pump()
    }
}

/// The baseline: the same bytes copied once.
pub fn memcpy(src: &[u8], dst: &mut Vec<u8>) -> usize {
    dst.clear();
    dst.extend_from_slice(src);
    black_box(dst.len())
}

/// The broker's part of relaying small messages: pre-encoded frames from A
/// (64-byte DATA) go in, B's frames come out, and B's WINDOW frames go in
/// to keep the credit flowing. Only broker calls are timed.
pub fn small_message_ns(messages: usize) -> f64 {
    let mut relay = Relay::default();
    let a_channel = relay.a.2;
    // What A sends for one 64-byte message, and what B answers after
    // consuming a batch, taken from the sessions themselves.
    let batch = 1024usize;
    let mut a_bytes = Vec::new();
    for _ in 0..batch {
        relay
            .a
            .0
            .send(a_channel, Bytes::from(vec![7u8; 64]))
            .unwrap();
        while let Some(bytes) = relay.a.0.poll_transmit() {
            a_bytes.push(bytes);
        }
    }
    let (a_conn, b_conn) = (relay.a.1, relay.b.1);
    let now = relay.now;
    let mut elapsed = Duration::ZERO;
    let mut relayed = 0;
    while relayed < messages {
        // Feed a batch to the broker and collect B's output: timed.
        let start = Clock::now();
        for bytes in &a_bytes {
            relay.broker.handle_input(now, a_conn, bytes);
        }
        let mut out = Vec::with_capacity(2 * batch);
        while let Some(t) = relay.broker.poll_transmit(b_conn) {
            out.push(t.data);
        }
        while relay.broker.poll_event().is_some() {}
        elapsed += start.elapsed();
        relayed += batch;
        // B reads and grants the credit back; the broker passes it to A (untimed).
        for bytes in out {
            relay.b.0.handle_input(now, &bytes).unwrap();
        }
        while let Some(event) = relay.b.0.poll_event() {
            if let SessionEvent::Readable { channel } = event {
                read_all(&mut relay.b.0, channel);
            }
        }
        while let Some(bytes) = relay.b.0.poll_transmit() {
            relay.broker.handle_input(now, b_conn, &bytes);
        }
        while let Some(t) = relay.broker.poll_transmit(a_conn) {
            relay.a.0.handle_input(now, &t.data).unwrap();
        }
        while relay.a.0.poll_event().is_some() {}
        while relay.broker.poll_event().is_some() {}
    }
    elapsed.as_nanos() as f64 / relayed as f64
}

/// Time for the broker to take one `register` and queue the presence event
/// for `watchers` watchers: the median over `samples` registers.
pub fn fanout(watchers: usize, samples: usize) -> Duration {
    let mut net = Net::new(9, Chaos::default(), |c| {
        c.limits.max_connections = watchers + samples + 16;
        c.limits.max_connections_per_key = watchers + samples + 16;
        c.limits.max_connections_per_uid = watchers + samples + 16;
        c.limits.max_handshaking = watchers + samples + 16;
        // Measured: the fan-out of registrations, not their rate limit.
        c.limits.registrations_per_source_per_s = 1_000_000;
        c.limits.registrations_per_network_per_s = 1_000_000;
        c.limits.registrations_per_s = 1_000_000;
    });
    let key = Keypair::from_seed([3; 32]);
    let mut ids = Vec::with_capacity(watchers);
    for _ in 0..watchers {
        ids.push(net.connect(key.clone(), TransportKind::Unix).unwrap());
    }
    let plugins: Vec<usize> = (0..samples)
        .map(|_| net.connect(key.clone(), TransportKind::Unix).unwrap())
        .collect();
    net.run();
    let now = net.now;
    for &id in &ids {
        net.node(id).session.watch(now).unwrap();
    }
    net.run();
    for id in ids.iter().chain(&plugins) {
        net.node(*id).events.clear();
    }
    let mut times = Vec::with_capacity(samples);
    for (i, &plugin) in plugins.iter().enumerate() {
        let name = Name::new(&format!("plugin-{i}")).unwrap();
        net.node(plugin)
            .session
            .register(now, name, false, None)
            .unwrap();
        let request: Vec<Bytes> =
            std::iter::from_fn(|| net.node(plugin).session.poll_transmit()).collect();
        let conn = net.node(plugin).conn;
        let start = Clock::now();
        for bytes in &request {
            net.broker.handle_input(now, conn, bytes);
        }
        times.push(start.elapsed());
        assert_eq!(net.broker.hub().registry().len(), i + 1);
        net.run();
        for id in &ids {
            net.node(*id).events.clear();
        }
    }
    times.sort_unstable();
    times[times.len() / 2]
}

/// Reads all `channel` has (its credit goes back); how many bytes.
fn read_all(session: &mut Session, channel: u32) -> usize {
    let mut n = 0;
    while let Ok(Recv::Data(bytes)) = session.recv(channel, usize::MAX) {
        n += bytes.len();
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_moves_whole_writes() {
        let mut relay = Relay::default();
        for _ in 0..40 {
            assert_eq!(relay.write(), WRITE);
        }
        assert!(small_message_ns(4096) > 0.0);
        assert!(fanout(50, 3) > Duration::ZERO);
    }
}
