//! The door: what sockets that have not proved a key yet may make the
//! broker hold. Each listener has its own places for half-done handshakes,
//! and on TCP each source address its own share of them and its own rate of
//! new ones, so strangers on the network cannot keep out local plugins, or
//! one address everyone else. Refusals are reported by the spell.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::budget::{HandshakeBudget, RefusalReport, Source, StrangerLimits};
use crate::control::TransportKind;
use crate::time::Instant;

use super::config::Limits;
use super::rates::{RateRefusal, TieredRates};

/// Which of its listeners accepted a socket: a number the runtime gives
/// each listener, the same for all its sockets.
pub type ListenerId = u32;

/// Where an accepted socket comes from, as the budgets count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Origin {
    /// The listener that accepted it.
    pub listener: ListenerId,
    /// Who is on the other end.
    pub peer: Peer,
}

/// The other end of an accepted socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Peer {
    /// A unix socket, and the peer's user where the OS tells it.
    Unix(Option<Cred>),
    /// A TCP connection from this address.
    Tcp(IpAddr),
}

/// The user of a unix socket's peer process, as `SO_PEERCRED` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cred {
    /// Its user id.
    pub uid: u32,
    /// Its (primary) group id.
    pub gid: u32,
}

impl Origin {
    /// A unix socket accepted on `listener`, from `cred`'s user if known.
    pub fn unix(listener: ListenerId, cred: Option<Cred>) -> Self {
        Origin {
            listener,
            peer: Peer::Unix(cred),
        }
    }

    /// A TCP connection from `ip` accepted on `listener`.
    pub fn tcp(listener: ListenerId, ip: IpAddr) -> Self {
        Origin {
            listener,
            peer: Peer::Tcp(ip),
        }
    }

    /// The peer's uid, on a unix socket where the OS tells it.
    pub fn uid(&self) -> Option<u32> {
        match self.peer {
            Peer::Unix(cred) => cred.map(|c| c.uid),
            Peer::Tcp(_) => None,
        }
    }

    /// Who this peer counts as for per-source rates after the handshake:
    /// its uid on a unix socket (this host, if unknown), its address (or
    /// IPv6 /64) over TCP.
    pub fn rate_source(&self) -> Source {
        match self.peer {
            Peer::Unix(Some(cred)) => Source::uid(cred.uid),
            Peer::Unix(None) => Source::LOCAL,
            Peer::Tcp(ip) => Source::from(ip),
        }
    }

    /// Which transport it is.
    pub fn transport(&self) -> TransportKind {
        match self.peer {
            Peer::Unix(_) => TransportKind::Unix,
            Peer::Tcp(_) => TransportKind::Tcp,
        }
    }

    /// Who it is, for a log line.
    pub fn describe(&self) -> String {
        match self.peer {
            Peer::Unix(Some(cred)) => format!("uid {} on listener {}", cred.uid, self.listener),
            Peer::Unix(None) => format!("a unix peer on listener {}", self.listener),
            Peer::Tcp(ip) => format!("{ip} on listener {}", self.listener),
        }
    }

    /// What per-source budgets count it as: its address on TCP; on a unix
    /// socket, none (every local peer shares the listener's places).
    fn source(&self) -> Option<Source> {
        match self.peer {
            Peer::Tcp(ip) => Some(Source::from(ip)),
            Peer::Unix(_) => None,
        }
    }
}

/// Why the door turned a socket away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DoorRefusal {
    /// The listener's places for handshakes are all taken.
    #[error("{0} handshakes in progress at this listener, the most it takes")]
    ListenerFull(usize),
    /// The source holds all the places one source may.
    #[error("{0} handshakes in progress from one source, the most one may have")]
    SourceFull(usize),
    /// The source's IPv6 /48 holds all the places one network may.
    #[error("{0} handshakes in progress from one IPv6 /48, the most one may have")]
    NetworkFull(usize),
    /// The source started handshakes faster than it may.
    #[error("more than {0} new handshakes a second from one source")]
    TooFast(u32),
    /// The source's IPv6 /48 started handshakes faster than it may.
    #[error("more than {0} new handshakes a second from one IPv6 /48")]
    NetworkTooFast(u32),
}

/// The door's state.
#[derive(Debug)]
pub(super) struct Door {
    limits: StrangerLimits,
    /// Places by listener.
    places: HashMap<ListenerId, HandshakeBudget>,
    /// New handshakes per source, and per IPv6 /48.
    rates: TieredRates,
    report: RefusalReport,
}

fn stranger_limits(limits: &Limits) -> StrangerLimits {
    StrangerLimits {
        total: limits.max_handshaking,
        per_source: limits.max_handshaking_per_source,
        per_network: limits.max_handshaking_per_network,
        deadline: limits.handshake_timeout,
    }
}

/// New handshakes per source and per /48 (none for everyone: the places bound that).
fn handshake_rates(limits: &Limits) -> TieredRates {
    TieredRates::new(
        limits.handshakes_per_source_per_s,
        limits.handshakes_per_network_per_s,
        None,
    )
}

impl Door {
    pub(super) fn new(limits: &Limits) -> Self {
        Door {
            limits: stranger_limits(limits),
            places: HashMap::new(),
            rates: handshake_rates(limits),
            report: RefusalReport::new(),
        }
    }

    /// New limits (a reload): places held stay held; the next admission
    /// is judged by these. Rates start afresh if they changed.
    pub(super) fn set_limits(&mut self, limits: &Limits) {
        let rates = handshake_rates(limits);
        if (rates.per_source(), rates.per_network())
            != (self.rates.per_source(), self.rates.per_network())
        {
            self.rates = rates;
        }
        self.limits = stranger_limits(limits);
    }

    /// A place for a handshake from `origin`, if one is free and its source
    /// is within its rate. Refused, nothing is held; the error says why, and
    /// `Some(n)` beside it when a log line is due (`n` refused since the last).
    pub(super) fn admit(
        &mut self,
        now: Instant,
        origin: &Origin,
    ) -> Result<(), (DoorRefusal, Option<u64>)> {
        self.try_admit(now, origin)
            .map_err(|refusal| (refusal, self.refused(now)))
    }

    /// A socket was refused (here or for another reason): refusals since
    /// the last line, this one included, if a line is due.
    pub(super) fn refused(&mut self, now: Instant) -> Option<u64> {
        self.report.refused(now)
    }

    fn try_admit(&mut self, now: Instant, origin: &Origin) -> Result<(), DoorRefusal> {
        let from_network = origin.source();
        // Local peers share their listener's places: no share per source.
        let limits = match from_network {
            Some(_) => self.limits,
            None => StrangerLimits {
                per_source: self.limits.total,
                per_network: self.limits.total,
                ..self.limits
            },
        };
        let places = self
            .places
            .entry(origin.listener)
            .or_insert_with(|| HandshakeBudget::new(limits));
        // (Limits may have been reloaded since the place was made.)
        places.set_limits(limits);
        let source = from_network.unwrap_or(Source::LOCAL);
        // Looked at before the rate is charged: a refusal costs no allowance.
        if places.held() >= places.limits().total {
            return Err(DoorRefusal::ListenerFull(places.limits().total));
        }
        if places.held_by(source) >= places.limits().per_source {
            return Err(DoorRefusal::SourceFull(places.limits().per_source));
        }
        let network = source.network();
        if network.is_some_and(|n| places.held_by(n) >= places.limits().per_network) {
            return Err(DoorRefusal::NetworkFull(places.limits().per_network));
        }
        // Local peers have no rate: their listener's places bound them.
        if from_network.is_some() {
            self.rates
                .take(now, source)
                .map_err(|refused| match refused {
                    RateRefusal::Network(per_s) => DoorRefusal::NetworkTooFast(per_s),
                    // (The door has no rate for everyone.)
                    RateRefusal::Source(per_s) | RateRefusal::Everyone(per_s) => {
                        DoorRefusal::TooFast(per_s)
                    }
                })?;
        }
        places.take(source).expect("checked above");
        Ok(())
    }

    /// One was admitted: refusals since the last line, if a line is due.
    pub(super) fn admitted(&mut self, now: Instant) -> Option<u64> {
        self.report.admitted(now)
    }

    /// Gives back the place [`Door::admit`] gave `origin`.
    pub(super) fn release(&mut self, origin: &Origin) {
        let source = origin.source().unwrap_or(Source::LOCAL);
        let places = self
            .places
            .get_mut(&origin.listener)
            .expect("a place given back was taken");
        places.give_back(source);
    }

    /// Handshakes in progress, over every listener.
    pub(super) fn held(&self) -> usize {
        self.places.values().map(HandshakeBudget::held).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::keys::Keypair;
    use crate::session::SessionEvent;
    use crate::sim::{Chaos, Net};
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn door(configure: impl FnOnce(&mut Limits)) -> Door {
        let mut limits = Limits::default();
        configure(&mut limits);
        Door::new(&limits)
    }

    fn at_ms(ms: u64) -> Instant {
        Instant::from_nanos(ms * 1_000_000)
    }

    #[test]
    fn one_address_takes_its_share_and_others_still_get_in() {
        let mut door = door(|_| {});
        let attacker = Origin::tcp(1, ip("192.0.2.1"));
        for _ in 0..16 {
            door.admit(Instant::ZERO, &attacker).unwrap();
        }
        let (refusal, line) = door.admit(Instant::ZERO, &attacker).unwrap_err();
        assert_eq!(refusal, DoorRefusal::SourceFull(16));
        assert_eq!(line, Some(1), "the first refusal of a spell is a line");
        assert_eq!(door.admit(Instant::ZERO, &attacker).unwrap_err().1, None);
        door.admit(Instant::ZERO, &Origin::tcp(1, ip("192.0.2.2")))
            .unwrap();
        door.admit(Instant::ZERO, &Origin::unix(0, None)).unwrap();
        door.release(&attacker);
        assert_eq!(door.held(), 17);
    }

    #[test]
    fn strangers_filling_a_tcp_listener_leave_the_unix_listener_free() {
        let mut door = door(|l| l.max_handshaking = 32);
        for i in 0..32u32 {
            let origin = Origin::tcp(1, std::net::Ipv4Addr::from(0xc000_0200 + i).into());
            door.admit(Instant::ZERO, &origin).unwrap();
        }
        let late = Origin::tcp(1, ip("198.51.100.7"));
        assert_eq!(
            door.admit(Instant::ZERO, &late).unwrap_err().0,
            DoorRefusal::ListenerFull(32)
        );
        // Local peers share their own listener's places, however many.
        for _ in 0..32 {
            door.admit(
                Instant::ZERO,
                &Origin::unix(
                    0,
                    Some(Cred {
                        uid: 1000,
                        gid: 1000,
                    }),
                ),
            )
            .unwrap();
        }
        assert_eq!(
            door.admit(
                Instant::ZERO,
                &Origin::unix(
                    0,
                    Some(Cred {
                        uid: 1000,
                        gid: 1000
                    })
                )
            )
            .unwrap_err()
            .0,
            DoorRefusal::ListenerFull(32)
        );
    }

    #[test]
    fn a_source_starts_handshakes_at_its_rate() {
        // Places enough that only the rate can refuse.
        let mut door = door(|l| {
            l.max_handshaking_per_source = 1000;
            l.max_handshaking_per_network = 1000;
            l.handshakes_per_source_per_s = 20;
        });
        let origin = Origin::tcp(1, ip("2001:db8::1"));
        // Two seconds' worth at once...
        for _ in 0..40 {
            door.admit(at_ms(0), &origin).unwrap();
        }
        assert_eq!(
            door.admit(at_ms(0), &origin).unwrap_err().0,
            DoorRefusal::TooFast(20)
        );
        // ... then one each 50 ms. Another address of the /64 is the same
        // source; another /64 is not.
        assert!(door.admit(at_ms(49), &origin).is_err());
        door.admit(at_ms(50), &Origin::tcp(1, ip("2001:db8::2")))
            .unwrap();
        assert!(door.admit(at_ms(60), &origin).is_err());
        door.admit(at_ms(60), &Origin::tcp(1, ip("2001:db8:0:1::1")))
            .unwrap();
        // Local peers have no rate.
        for _ in 0..100 {
            door.admit(at_ms(60), &Origin::unix(0, None)).unwrap();
        }
    }

    /// Before, every /64 of a peer's /48 was a source of its own: 65,536
    /// sources' places and rates. Now the /48 has one share of each, and
    /// another /48 and IPv4 still get in.
    #[test]
    fn one_ipv6_slash_48_takes_one_networks_share() {
        let mut first = door(|_| {});
        let slash_64 = |i: u32| Origin::tcp(1, ip(&format!("2001:db8:7:{i:x}::1")));
        let admitted = (0..1000)
            .filter(|i| first.admit(Instant::ZERO, &slash_64(*i)).is_ok())
            .count();
        assert_eq!(admitted, 32, "max_handshaking_per_network");
        assert_eq!(
            first.admit(Instant::ZERO, &slash_64(5000)).unwrap_err().0,
            DoorRefusal::NetworkFull(32)
        );
        first
            .admit(Instant::ZERO, &Origin::tcp(1, ip("2001:db8:8::1")))
            .unwrap();
        first
            .admit(Instant::ZERO, &Origin::tcp(1, ip("192.0.2.1")))
            .unwrap();

        // The rate: 40 a second for the whole /48, two seconds' worth at once.
        let mut door = door(|l| {
            l.max_handshaking = 10_000;
            l.max_handshaking_per_network = 10_000;
        });
        let admitted = (0..1000)
            .filter(|i| door.admit(Instant::ZERO, &slash_64(*i)).is_ok())
            .count();
        assert_eq!(admitted, 80);
        assert_eq!(
            door.admit(Instant::ZERO, &slash_64(5000)).unwrap_err().0,
            DoorRefusal::NetworkTooFast(40)
        );
        door.admit(Instant::ZERO, &Origin::tcp(1, ip("2001:db8:8::1")))
            .unwrap();
    }

    #[test]
    fn the_rates_remembered_are_bounded() {
        // Places enough that only the rate can refuse.
        let mut door = door(|l| l.max_handshaking = usize::MAX);
        let from = |i: u32| Origin::tcp(1, std::net::Ipv4Addr::from(0x0a00_0000 + i).into());
        // More sources at once than are remembered: those beyond share one
        // allowance (a burst's worth), not none and not unlimited.
        let admitted = (0..5000)
            .filter(|i| door.admit(at_ms(0), &from(*i)).is_ok())
            .count();
        assert_eq!(admitted, crate::broker::rates::MAX_RATED_SOURCES + 40);
        assert_eq!(
            door.rates.remembered(),
            crate::broker::rates::MAX_RATED_SOURCES
        );
        // Once their allowances are whole again they are forgotten, and new
        // sources are remembered in their stead.
        door.admit(at_ms(50), &from(6000)).unwrap();
        assert_eq!(door.rates.remembered(), 1);
    }

    proptest! {
        /// However a source's handshakes are spaced, it never gets more
        /// than its burst plus its rate over any stretch of time.
        #[test]
        fn a_source_never_beats_its_rate(gaps in proptest::collection::vec(0u64..120, 1..400)) {
            let mut door = door(|l| {
                l.max_handshaking_per_source = usize::MAX;
                l.max_handshaking = usize::MAX;
                l.handshakes_per_source_per_s = 20;
            });
            let origin = Origin::tcp(1, ip("203.0.113.9"));
            let mut now = 0;
            let mut admitted = Vec::new();
            for gap in gaps {
                now += gap;
                if door.admit(at_ms(now), &origin).is_ok() {
                    admitted.push(now);
                }
            }
            for (i, start) in admitted.iter().enumerate() {
                for (j, end) in admitted.iter().enumerate().skip(i) {
                    let count = (j - i + 1) as u64;
                    let allowed = 40 + (end - start) / 50;
                    prop_assert!(count <= allowed, "{count} in {} ms", end - start);
                }
            }
        }
    }

    /// A crowd of idle sockets from one address holds its share of places
    /// until the first message's deadline; meanwhile a unix plugin and a
    /// key from another address complete their handshakes, and the crowd's
    /// refusals make one log line.
    #[test]
    fn a_crowd_from_one_address_does_not_block_the_door() {
        let mut net = Net::new(3, Chaos::default(), |c| {
            c.policy.keys.push(crate::broker::policy::KeyGrant {
                id: Keypair::from_seed([2; 32]).public(),
                register: vec![],
                open: vec![],
                direct: vec![],
                list: false,
                watch: false,
                stats: false,
                monitor: false,
            });
        });
        let attacker = Origin::tcp(1, ip("192.0.2.66"));
        let mut held = 0;
        let mut refused = Vec::new();
        for _ in 0..400 {
            match net.broker.accept(net.now, attacker) {
                Ok(_) => held += 1,
                Err(e) => refused.push(e),
            }
        }
        assert_eq!(held, 16);
        assert!(refused
            .iter()
            .all(|e| *e == DoorRefusal::SourceFull(16).into()));
        let local = net.connect(Keypair::from_seed([1; 32]), TransportKind::Unix);
        let remote = net.connect_from(
            Keypair::from_seed([2; 32]),
            Origin::tcp(1, ip("198.51.100.1")),
            |_| {},
        );
        net.run();
        for id in [local.unwrap(), remote.unwrap()] {
            let events = net.events(id);
            assert!(
                matches!(events.first(), Some(SessionEvent::Ready { .. })),
                "{events:?}"
            );
        }
        let lines: Vec<_> = net
            .log
            .iter()
            .filter(|l| l.message.contains("refusing connections"))
            .collect();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].message.contains("192.0.2.66"), "{lines:?}");
        // The crowd never sent a byte: gone at the first message's
        // deadline, and the door is open to it again.
        net.advance(Duration::from_secs(3));
        net.run();
        assert!(net.broker.accept(net.now, attacker).is_ok());
    }

    /// One that sent its first message in time has the whole handshake's
    /// deadline for the rest.
    #[test]
    fn the_first_message_has_a_shorter_deadline_than_the_handshake() {
        use crate::shs::{ClientHandshake, HandshakeConfig};
        let mut net = Net::new(4, Chaos::default(), |_| {});
        let origin = Origin::tcp(1, ip("192.0.2.5"));
        let silent = net.broker.accept(net.now, origin).unwrap();
        let slow = net.broker.accept(net.now, origin).unwrap();
        let (now, broker_key) = (net.now, net.broker.public_key());
        let mut client = ClientHandshake::new(
            std::sync::Arc::new(HandshakeConfig::new(Keypair::from_seed([7; 32]))),
            broker_key,
            net.rng(),
            now,
        )
        .unwrap();
        let hello = client.poll_transmit().unwrap();
        net.broker.handle_input(now, slow, &hello);
        net.advance(Duration::from_millis(3_001));
        net.run();
        assert!(
            !net.broker.hub().is_open(silent),
            "the silent one outlived its deadline"
        );
        assert!(
            net.broker.hub().is_open(slow),
            "the one that spoke was cut early"
        );
        net.advance(Duration::from_secs(7));
        net.run();
        assert!(
            !net.broker.hub().is_open(slow),
            "the handshake deadline holds"
        );
    }
}
