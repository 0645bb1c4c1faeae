//! Rates of events per source (new handshakes, registrations): the generic
//! cell rate algorithm, one instant per source, in bounded memory.

use std::collections::HashMap;
use std::time::Duration;

use crate::budget::Source;
use crate::time::Instant;

/// How many sources' rates are remembered at once. A source is forgotten
/// once its allowance is whole again (at most the burst after its last
/// event); sources beyond this many share one allowance.
pub(super) const MAX_RATED_SOURCES: usize = 4096;

/// The allowances of events per source: the generic cell rate
/// algorithm, one instant per source (when its allowance is whole again).
#[derive(Debug)]
struct Rates {
    /// Events a second, as configured.
    per_s: u32,
    /// Time one event costs of a source's allowance.
    interval: Duration,
    /// How much allowance a source may use at once (the burst).
    burst: Duration,
    /// By source: when its allowance is whole again.
    whole_at: HashMap<Source, Instant>,
    /// The allowance sources share when too many are remembered.
    crowd: Instant,
}

impl Rates {
    fn new(per_s: u32) -> Self {
        let interval = Duration::from_secs(1) / per_s.max(1);
        Rates {
            per_s,
            interval,
            // Two seconds' worth at once.
            burst: interval * per_s.max(1) * 2,
            whole_at: HashMap::new(),
            crowd: Instant::ZERO,
        }
    }

    /// Takes one event's worth of `source`'s allowance, if it has it.
    fn take(&mut self, now: Instant, source: Source) -> bool {
        self.take_keeping(now, source, Duration::ZERO)
    }

    /// As [`Rates::take`], leaving at least `keep` of the allowance unused.
    fn take_keeping(&mut self, now: Instant, source: Source, keep: Duration) -> bool {
        if !self.whole_at.contains_key(&source) && self.whole_at.len() >= MAX_RATED_SOURCES {
            self.whole_at.retain(|_, whole_at| *whole_at > now);
        }
        let room = self.whole_at.len() < MAX_RATED_SOURCES;
        let whole_at = if room || self.whole_at.contains_key(&source) {
            self.whole_at.entry(source).or_insert(now)
        } else {
            &mut self.crowd
        };
        let from = (*whole_at).max(now);
        if from.saturating_duration_since(now) + self.interval + keep > self.burst {
            return false;
        }
        *whole_at = from + self.interval;
        true
    }

    /// Sources remembered now.
    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.whole_at.len()
    }
}

/// Which allowance an event was refused by, with its rate a second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RateRefusal {
    /// The source's IPv6 /48, all its /64s together.
    Network(u32),
    /// The source itself.
    Source(u32),
    /// Everyone's together (the part kept for sources that are not busy).
    Everyone(u32),
}

/// The allowances of one kind of event at every tier: the source, the IPv6
/// /48 it is in, and, if there is one, everyone's together. A busy source
/// (more than one event a second) may take only the first half of
/// everyone's: the rest is kept for sources that are not, so a few sources
/// at their own rate cannot take it all.
#[derive(Debug)]
pub(super) struct TieredRates {
    source: Rates,
    network: Rates,
    everyone: Option<Rates>,
    /// One event a second per source (two at once) is not busy.
    quiet: Rates,
}

impl TieredRates {
    pub(super) fn new(per_source: u32, per_network: u32, everyone: Option<u32>) -> Self {
        TieredRates {
            source: Rates::new(per_source),
            network: Rates::new(per_network),
            everyone: everyone.map(Rates::new),
            quiet: Rates::new(1),
        }
    }

    /// Takes one event's worth of every tier's allowance `source` draws on,
    /// the widest first after its network: a /64 over its own rate spends
    /// its network's allowance, nobody else's.
    pub(super) fn take(&mut self, now: Instant, source: Source) -> Result<(), RateRefusal> {
        if let Some(network) = source.network() {
            if !self.network.take(now, network) {
                return Err(RateRefusal::Network(self.network.per_s));
            }
        }
        if !self.source.take(now, source) {
            return Err(RateRefusal::Source(self.source.per_s));
        }
        if let Some(everyone) = self.everyone.as_mut() {
            let keep = match self.quiet.take(now, source) {
                true => Duration::ZERO,
                false => everyone.burst / 2,
            };
            if !everyone.take_keeping(now, Source::LOCAL, keep) {
                return Err(RateRefusal::Everyone(everyone.per_s));
            }
        }
        Ok(())
    }

    /// Sources remembered now, at the source tier.
    #[cfg(test)]
    pub(super) fn remembered(&self) -> usize {
        self.source.remembered()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(n: u8) -> Source {
        Source::from(std::net::IpAddr::from([192, 0, 2, n]))
    }

    fn v6(block: u16, n: u16) -> Source {
        Source::from(std::net::IpAddr::from([
            0x2001, 0xdb8, block, n, 0, 0, 0, 1,
        ]))
    }

    /// A source's own allowance is two seconds' worth, then one an interval.
    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let mut rates = TieredRates::new(10, 20, None);
        let now = Instant::ZERO;
        assert!((0..20).all(|_| rates.take(now, v4(1)).is_ok()));
        assert_eq!(rates.take(now, v4(1)), Err(RateRefusal::Source(10)));
        assert!(
            rates.take(now, v4(2)).is_ok(),
            "another source is not slowed"
        );
        let later = now + Duration::from_millis(100);
        assert!(rates.take(later, v4(1)).is_ok());
        assert!(rates.take(later, v4(1)).is_err());
    }

    /// The /64s of one /48 share one allowance; another /48 is not slowed.
    #[test]
    fn the_64s_of_a_48_share_an_allowance() {
        let mut rates = TieredRates::new(10, 20, None);
        let now = Instant::ZERO;
        let taken = (0..100)
            .filter(|n| rates.take(now, v6(1, *n)).is_ok())
            .count();
        assert_eq!(taken, 40, "two seconds of the /48's rate, from 100 /64s");
        assert_eq!(rates.take(now, v6(1, 200)), Err(RateRefusal::Network(20)));
        assert!(rates.take(now, v6(2, 0)).is_ok());
    }

    /// Busy sources at their own rate take at most half of everyone's
    /// allowance; sources that are not busy still get the other half.
    #[test]
    fn busy_sources_leave_half_of_everyones_allowance() {
        let mut rates = TieredRates::new(20, 40, Some(100));
        let now = Instant::ZERO;
        // Everyone's burst is 200. Ten sources try 40 each: the first two of
        // each source are quiet; the busy rest stop where 100 are used.
        let busy: usize = (1..=10)
            .map(|source| {
                (0..40)
                    .filter(|_| rates.take(now, v4(source)).is_ok())
                    .count()
            })
            .sum();
        assert_eq!(busy, 40 + 40 + 20 + 7 * 2, "{busy}");
        assert!(rates.take(now, v4(1)).is_err());
        // New sources, one registration each, get the kept half.
        let quiet = (100..=250)
            .filter(|n| rates.take(now, v4(*n)).is_ok())
            .count();
        assert_eq!(quiet, 200 - busy);
        assert_eq!(rates.take(now, v4(251)), Err(RateRefusal::Everyone(100)));
    }
}
