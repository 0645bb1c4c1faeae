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

    /// Whether `source` has one event's worth of its allowance, leaving at
    /// least `keep` unused. Spends nothing (it may forget sources whose
    /// allowance is whole again, which is the same as remembering them).
    fn fits(&mut self, now: Instant, source: Source, keep: Duration) -> bool {
        if !self.whole_at.contains_key(&source) && self.whole_at.len() >= MAX_RATED_SOURCES {
            self.whole_at.retain(|_, whole_at| *whole_at > now);
        }
        let from = self.slot(now, source).max(now);
        from.saturating_duration_since(now) + self.interval + keep <= self.burst
    }

    /// Spends one event's worth of `source`'s allowance, after
    /// [`Rates::fits`].
    fn spend(&mut self, now: Instant, source: Source) {
        let interval = self.interval;
        let whole_at = match self.whole_at.len() < MAX_RATED_SOURCES {
            true => self.whole_at.entry(source).or_insert(now),
            false => match self.whole_at.get_mut(&source) {
                Some(whole_at) => whole_at,
                None => &mut self.crowd,
            },
        };
        *whole_at = (*whole_at).max(now) + interval;
    }

    /// When `source`'s allowance is whole again: its own, or the crowd's
    /// when too many are remembered.
    fn slot(&self, now: Instant, source: Source) -> Instant {
        match self.whole_at.get(&source) {
            Some(whole_at) => *whole_at,
            None if self.whole_at.len() >= MAX_RATED_SOURCES => self.crowd,
            None => now,
        }
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

/// A source with at most this many events a second (two seconds' worth at
/// once) is quiet; beyond it, busy.
const QUIET_PER_S: u32 = 1;

/// The allowances of one kind of event at every tier: the IPv6 /48 the
/// source is in, the source, and, if there is one, everyone's together.
/// Busy sources (more than [`QUIET_PER_S`]) may together take only the
/// first half of everyone's: the rest is kept for quiet sources, so a few
/// sources at their own rate cannot take it all.
#[derive(Debug)]
pub(super) struct TieredRates {
    network: Rates,
    source: Rates,
    everyone: Option<Everyone>,
}

/// Everyone's allowance, and who is quiet.
#[derive(Debug)]
struct Everyone {
    rates: Rates,
    quiet: Rates,
}

impl TieredRates {
    pub(super) fn new(per_source: u32, per_network: u32, everyone: Option<u32>) -> Self {
        TieredRates {
            network: Rates::new(per_network),
            source: Rates::new(per_source),
            everyone: everyone.map(|per_s| Everyone {
                rates: Rates::new(per_s),
                quiet: Rates::new(QUIET_PER_S),
            }),
        }
    }

    /// Events a second one source may have.
    pub(super) fn per_source(&self) -> u32 {
        self.source.per_s
    }

    /// Events a second the sources of one /48 may have together.
    pub(super) fn per_network(&self) -> u32 {
        self.network.per_s
    }

    /// Takes one event's worth of every tier's allowance `source` draws on,
    /// if every tier has it. A refused event spends nothing anywhere: a /64
    /// over its own rate does not use up its network's allowance, nor a
    /// source the broker refuses its own.
    pub(super) fn take(&mut self, now: Instant, source: Source) -> Result<(), RateRefusal> {
        let network = source.network();
        if let Some(network) = network {
            if !self.network.fits(now, network, Duration::ZERO) {
                return Err(RateRefusal::Network(self.network.per_s));
            }
        }
        if !self.source.fits(now, source, Duration::ZERO) {
            return Err(RateRefusal::Source(self.source.per_s));
        }
        // The /64s of a /48 are one source for being quiet: a site with
        // many /64s is not many quiet sources.
        let quiet_source = network.unwrap_or(source);
        let mut quiet = false;
        if let Some(everyone) = self.everyone.as_mut() {
            quiet = everyone.quiet.fits(now, quiet_source, Duration::ZERO);
            let keep = match quiet {
                true => Duration::ZERO,
                false => everyone.rates.burst / 2,
            };
            if !everyone.rates.fits(now, Source::LOCAL, keep) {
                return Err(RateRefusal::Everyone(everyone.rates.per_s));
            }
        }
        if let Some(network) = network {
            self.network.spend(now, network);
        }
        self.source.spend(now, source);
        if let Some(everyone) = self.everyone.as_mut() {
            everyone.rates.spend(now, Source::LOCAL);
            if quiet {
                everyone.quiet.spend(now, quiet_source);
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

    /// A refused event spends nothing: a /64 far over its own rate leaves
    /// its network's allowance to its neighbours (before, the network was
    /// charged first, and one /64's refused tries used it all up).
    #[test]
    fn a_refused_event_spends_no_tier() {
        let mut rates = TieredRates::new(10, 20, None);
        let now = Instant::ZERO;
        let taken = (0..100)
            .filter(|_| rates.take(now, v6(1, 1)).is_ok())
            .count();
        assert_eq!(taken, 20);
        let neighbour = (0..100)
            .filter(|_| rates.take(now, v6(1, 2)).is_ok())
            .count();
        assert_eq!(neighbour, 20, "the rest of the /48's 40");
    }

    /// The /64s of one /48 are one source for being quiet: 200 of them, one
    /// registration each, take only the busy half, and a quiet source still
    /// gets in (before, each /64 was quiet and they took it all).
    #[test]
    fn the_64s_of_a_48_are_quiet_together() {
        let mut rates = TieredRates::new(20, 1000, Some(100));
        let now = Instant::ZERO;
        let taken = (0..200)
            .filter(|n| rates.take(now, v6(1, *n)).is_ok())
            .count();
        assert_eq!(taken, 100);
        assert!(rates.take(now, v4(1)).is_ok());
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
        let by_ten: usize = (1..=10)
            .map(|source| {
                (0..40)
                    .filter(|_| rates.take(now, v4(source)).is_ok())
                    .count()
            })
            .sum();
        assert_eq!(by_ten, 40 + 40 + 20 + 7 * 2, "{by_ten}");
        assert!(rates.take(now, v4(1)).is_err());
        // New sources, one registration each, get the kept half.
        let quiet = (100..=250)
            .filter(|n| rates.take(now, v4(*n)).is_ok())
            .count();
        assert_eq!(quiet, 200 - by_ten);
        assert_eq!(rates.take(now, v4(251)), Err(RateRefusal::Everyone(100)));
    }
}
