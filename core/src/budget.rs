//! Budgets for what strangers can make us hold before they proved a key:
//! half-done handshakes, counted per source and in total, so that one
//! source cannot take every place and nobody can take more than the total.
//!
//! A source is an IPv4 address, or an IPv6 /64 (the least a single host is
//! handed, and trivially many addresses to an attacker who has one). An
//! IPv6 source's /48 (what one site is commonly handed: 65,536 /64s) is
//! counted as well, with a bound of its own.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use crate::time::Instant;

/// Where a connection comes from, as budgets count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(u128);

impl Source {
    /// This host, for budgets that count local peers as one source (a tag
    /// no address maps to).
    pub const LOCAL: Source = Source(1 << 126);

    /// A local user, for budgets that count unix peers by uid.
    pub fn uid(uid: u32) -> Source {
        Source((1 << 125) | u128::from(uid))
    }

    /// For an IPv6 /64, the /48 it is in, tagged apart from every source:
    /// the place one site's addresses share. `None` for anything else.
    pub fn network(self) -> Option<Source> {
        let slash_64 = self.0 & u128::from(u64::MAX);
        (self.0 >> 127 == 1).then_some(Source((slash_64 >> 16) | (1 << 124)))
    }
}

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Self {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        match ip {
            IpAddr::V4(v4) => Source(u128::from(u32::from(v4))),
            // The /64 prefix, tagged apart from every IPv4 address.
            IpAddr::V6(v6) => Source((u128::from(v6) >> 64) | (1 << 127)),
        }
    }
}

/// How many half-done handshakes strangers may hold, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrangerLimits {
    /// At once, from everywhere.
    pub total: usize,
    /// At once, from one [`Source`].
    pub per_source: usize,
    /// At once, from the sources of one IPv6 /48 ([`Source::network`]).
    pub per_network: usize,
    /// How long one may take to prove its key and present what it must.
    pub deadline: Duration,
}

impl Default for StrangerLimits {
    fn default() -> Self {
        StrangerLimits {
            total: 64,
            per_source: 8,
            per_network: 16,
            deadline: Duration::from_secs(5),
        }
    }
}

/// Which bound a stranger met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Every place is taken.
    #[error("too many handshakes in progress ({0} at once)")]
    Total(usize),
    /// Its source holds all the places one source may.
    #[error("too many handshakes in progress from one source ({0} at once)")]
    PerSource(usize),
    /// Its IPv6 /48 holds all the places one network may.
    #[error("too many handshakes in progress from one IPv6 /48 ({0} at once)")]
    PerNetwork(usize),
}

/// Places for half-done handshakes, taken when a connection is accepted
/// and given back when its handshake ends, whichever way.
#[derive(Debug)]
pub struct HandshakeBudget {
    limits: StrangerLimits,
    held: usize,
    by_source: HashMap<Source, usize>,
}

impl HandshakeBudget {
    /// Nothing held yet.
    pub fn new(limits: StrangerLimits) -> Self {
        HandshakeBudget {
            limits,
            held: 0,
            by_source: HashMap::new(),
        }
    }

    /// The limits.
    pub fn limits(&self) -> StrangerLimits {
        self.limits
    }

    /// New limits: what is held stays held, and counts against them.
    pub fn set_limits(&mut self, limits: StrangerLimits) {
        self.limits = limits;
    }

    /// Takes a place for a handshake from `source`, if one is free.
    pub fn take(&mut self, source: Source) -> Result<(), Refused> {
        if self.held >= self.limits.total {
            return Err(Refused::Total(self.limits.total));
        }
        // Looked at before any entry is made: a refused source leaves no trace.
        if self.held_by(source) >= self.limits.per_source {
            return Err(Refused::PerSource(self.limits.per_source));
        }
        let network = source.network();
        if network.is_some_and(|n| self.held_by(n) >= self.limits.per_network) {
            return Err(Refused::PerNetwork(self.limits.per_network));
        }
        for counted in std::iter::once(source).chain(network) {
            *self.by_source.entry(counted).or_insert(0) += 1;
        }
        self.held += 1;
        Ok(())
    }

    /// Gives back a place [`HandshakeBudget::take`] gave `source`.
    ///
    /// # Panics
    /// If `source` holds none: a place given back twice is a bug.
    pub fn give_back(&mut self, source: Source) {
        for counted in std::iter::once(source).chain(source.network()) {
            let held = self
                .by_source
                .get_mut(&counted)
                .expect("a place given back was taken");
            *held -= 1;
            if *held == 0 {
                self.by_source.remove(&counted);
            }
        }
        self.held -= 1;
    }

    /// Places held now, in total.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Places `source` (or a network, [`Source::network`]) holds now.
    pub fn held_by(&self, source: Source) -> usize {
        self.by_source.get(&source).copied().unwrap_or(0)
    }
}

/// Refusals reported by the spell, not one line each: whatever the pattern
/// of refusals and admissions, at most one line per [`REPORT_EVERY`], and
/// every refusal counted in one.
#[derive(Debug, Default)]
pub struct RefusalReport {
    /// Refused since the last line that counted them.
    refused: u64,
    /// When the last line went out.
    last_line: Option<Instant>,
}

/// How often a [`RefusalReport`] writes a line at most.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

impl RefusalReport {
    /// Nothing refused yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// One was refused. If a line is due ("refusing"), how many it counts:
    /// those since the last line, this one included.
    pub fn refused(&mut self, now: Instant) -> Option<u64> {
        self.refused += 1;
        self.line_due(now)
            .then(|| std::mem::take(&mut self.refused))
    }

    /// One was admitted. If refusals went unreported and a line is due
    /// ("admitting again"), how many it counts; otherwise they are counted
    /// in a later line.
    pub fn admitted(&mut self, now: Instant) -> Option<u64> {
        if self.refused == 0 || !self.line_due(now) {
            return None;
        }
        Some(std::mem::take(&mut self.refused))
    }

    fn line_due(&mut self, now: Instant) -> bool {
        let due = self
            .last_line
            .is_none_or(|at| now.saturating_duration_since(at) >= REPORT_EVERY);
        if due {
            self.last_line = Some(now);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> Source {
        s.parse::<IpAddr>().unwrap().into()
    }

    fn limits(total: usize, per_source: usize) -> StrangerLimits {
        StrangerLimits {
            total,
            per_source,
            per_network: total,
            ..StrangerLimits::default()
        }
    }

    /// Before, a peer with an IPv6 /48 had 65,536 sources' worth of places:
    /// here it takes 5, then every /64 of it is refused, and others get in.
    #[test]
    fn one_ipv6_slash_48_is_one_network() {
        let mut budget = HandshakeBudget::new(StrangerLimits {
            total: 100,
            per_source: 2,
            per_network: 5,
            ..StrangerLimits::default()
        });
        let mut taken = 0;
        for i in 0..1000u16 {
            if budget.take(ip(&format!("2001:db8:1:{i:x}::1"))).is_ok() {
                taken += 1;
            }
        }
        assert_eq!(taken, 5);
        assert_eq!(
            budget.take(ip("2001:db8:1:ffff::1")),
            Err(Refused::PerNetwork(5))
        );
        budget.take(ip("2001:db8:2::1")).unwrap();
        budget.take(ip("10.0.0.1")).unwrap();
        // Given back, the network's place is free again.
        budget.give_back(ip("2001:db8:1:0::1"));
        budget.take(ip("2001:db8:1:abcd::1")).unwrap();
        assert_eq!(ip("10.0.0.1").network(), None);
        assert_eq!(Source::LOCAL.network(), None);
        assert_eq!(
            ip("2001:db8:1:ff::1").network(),
            ip("2001:db8:1:ee::2").network()
        );
        assert_ne!(ip("2001:db8:1::1").network(), ip("2001:db8:2::1").network());
    }

    #[test]
    fn one_source_cannot_take_every_place() {
        let mut budget = HandshakeBudget::new(limits(10, 3));
        for _ in 0..3 {
            budget.take(ip("10.0.0.1")).unwrap();
        }
        assert_eq!(budget.take(ip("10.0.0.1")), Err(Refused::PerSource(3)));
        // Another source still gets in.
        budget.take(ip("10.0.0.2")).unwrap();
        budget.give_back(ip("10.0.0.1"));
        budget.take(ip("10.0.0.1")).unwrap();
        assert_eq!(budget.held(), 4);
    }

    #[test]
    fn a_refused_source_leaves_no_trace() {
        let mut budget = HandshakeBudget::new(limits(4, 0));
        for i in 0..1000u32 {
            let source = ip(&std::net::Ipv4Addr::from(i).to_string());
            assert_eq!(budget.take(source), Err(Refused::PerSource(0)));
        }
        assert!(budget.by_source.is_empty());
    }

    #[test]
    fn nobody_gets_past_the_total() {
        let mut budget = HandshakeBudget::new(limits(4, 3));
        for i in 0..4 {
            budget.take(ip(&format!("10.0.0.{i}"))).unwrap();
        }
        assert_eq!(budget.take(ip("10.0.0.9")), Err(Refused::Total(4)));
        budget.give_back(ip("10.0.0.0"));
        budget.take(ip("10.0.0.9")).unwrap();
    }

    #[test]
    fn an_ipv6_host_counts_as_its_slash_64() {
        assert_eq!(ip("2001:db8::1"), ip("2001:db8::ffff:1234"));
        assert_ne!(ip("2001:db8::1"), ip("2001:db8:0:1::1"));
        // A v4-mapped address is that v4 address.
        assert_eq!(ip("::ffff:10.0.0.1"), ip("10.0.0.1"));
        assert_ne!(ip("::"), ip("0.0.0.0"));
    }

    #[test]
    fn refusals_make_one_line_per_spell_whatever_the_pattern() {
        let mut report = RefusalReport::new();
        let at = |ms: u64| Instant::from_nanos(ms * 1_000_000);
        assert_eq!(report.refused(at(0)), Some(1));
        // Refusals and admissions alternating: silence until the next
        // line is due, then one line counting everything since.
        let mut lines = Vec::new();
        for ms in 1..20_000 {
            let line = match ms % 2 {
                0 => report.admitted(at(ms)).map(|n| ("admitting", n)),
                _ => report.refused(at(ms)).map(|n| ("refusing", n)),
            };
            lines.extend(line.map(|l| (ms, l)));
        }
        assert_eq!(lines, vec![(10_000, ("admitting", 5_000))]);
        // Only admissions: no line once everything is reported.
        assert_eq!(report.admitted(at(30_000)), Some(5_000));
        assert_eq!(report.admitted(at(50_000)), None);
    }

    proptest! {
        /// Against a plain model: what is held never passes a limit, and
        /// every place comes back. Sources 0..4 are IPv4 addresses; 4..8
        /// IPv6 /64s, two in each of two /48s.
        #[test]
        fn held_places_match_a_model(ops in proptest::collection::vec((0u8..8, any::<bool>()), 0..200)) {
            let mut budget = HandshakeBudget::new(StrangerLimits {
                total: 8,
                per_source: 3,
                per_network: 4,
                ..StrangerLimits::default()
            });
            let source_of = |who: u8| match who {
                0..4 => ip(&format!("10.0.0.{who}")),
                _ => ip(&format!("2001:db8:{}:{}::1", who / 6, who % 2)),
            };
            let mut model: HashMap<u8, usize> = HashMap::new();
            for (who, take) in ops {
                let source = source_of(who);
                let network = |model: &HashMap<u8, usize>| -> usize {
                    model
                        .iter()
                        .filter(|(w, _)| **w >= 4 && source_of(**w).network() == source.network())
                        .map(|(_, n)| n)
                        .sum()
                };
                let held: usize = model.values().sum();
                let mine = model.get(&who).copied().unwrap_or(0);
                if take {
                    let expected = if held >= 8 {
                        Err(Refused::Total(8))
                    } else if mine >= 3 {
                        Err(Refused::PerSource(3))
                    } else if who >= 4 && network(&model) >= 4 {
                        Err(Refused::PerNetwork(4))
                    } else {
                        Ok(())
                    };
                    prop_assert_eq!(budget.take(source), expected);
                    if expected.is_ok() {
                        *model.entry(who).or_insert(0) += 1;
                    }
                } else if mine > 0 {
                    budget.give_back(source);
                    *model.get_mut(&who).unwrap() -= 1;
                }
                prop_assert_eq!(budget.held(), model.values().sum::<usize>());
                // Only sources and networks that hold a place take room.
                let sources = model.values().filter(|n| **n > 0).count();
                let networks = [4u8, 6]
                    .iter()
                    .filter(|w| (**w..**w + 2).any(|v| model.get(&v).is_some_and(|n| *n > 0)))
                    .count();
                prop_assert_eq!(budget.by_source.len(), sources + networks);
                prop_assert_eq!(budget.held_by(source), model.get(&who).copied().unwrap_or(0));
                if let Some(net) = source.network() {
                    prop_assert_eq!(budget.held_by(net), network(&model));
                }
            }
        }
    }
}
