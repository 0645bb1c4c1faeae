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

/// The allowances of events (handshakes, registrations) per source: the generic cell rate
/// algorithm, one instant per source (when its allowance is whole again).
#[derive(Debug)]
pub(super) struct Rates {
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
    pub(super) fn new(per_s: u32) -> Self {
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
    pub(super) fn take(&mut self, now: Instant, source: Source) -> bool {
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
        if from.saturating_duration_since(now) + self.interval > self.burst {
            return false;
        }
        *whole_at = from + self.interval;
        true
    }

    /// Events a second each source may have.
    pub(super) fn per_s(&self) -> u32 {
        self.per_s
    }

    /// Sources remembered now.
    #[cfg(test)]
    pub(super) fn remembered(&self) -> usize {
        self.whole_at.len()
    }
}
