//! The core's [`HandshakeBudget`] shared between an accept loop and the
//! tasks it starts: an accepted stranger holds a [`Place`] until its
//! handshake is over, whichever way it ends. Refusals are logged by the
//! spell ([`RefusalReport`]), not once per connection: a crowd at the door,
//! or one that comes and goes, writes a line per ten seconds at most.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use plugboard_core::budget::{HandshakeBudget, RefusalReport, Refused, Source, StrangerLimits};
use plugboard_core::Instant;

/// Places for strangers' handshakes at one listener.
#[derive(Clone, Debug)]
pub struct Strangers {
    budget: Arc<Mutex<Budget>>,
}

/// One stranger's place; given back when dropped.
#[derive(Debug)]
pub struct Place {
    budget: Arc<Mutex<Budget>>,
    source: Source,
}

#[derive(Debug)]
struct Budget {
    places: HandshakeBudget,
    report: RefusalReport,
    /// The epoch of the report's clock.
    start: std::time::Instant,
}

impl Budget {
    fn now(&self) -> Instant {
        Instant::from_duration(self.start.elapsed())
    }
}

impl Strangers {
    /// Nobody admitted yet.
    pub fn new(limits: StrangerLimits) -> Self {
        Strangers {
            budget: Arc::new(Mutex::new(Budget {
                places: HandshakeBudget::new(limits),
                report: RefusalReport::new(),
                start: std::time::Instant::now(),
            })),
        }
    }

    /// A place for a stranger from `ip`, if one is free.
    pub fn admit(&self, ip: IpAddr) -> Result<Place, Refused> {
        let source = Source::from(ip);
        let mut budget = lock(&self.budget);
        let now = budget.now();
        if let Err(refused) = budget.places.take(source) {
            if let Some(n) = budget.report.refused(now) {
                tracing::warn!("direct listener: refusing strangers ({refused}; {n} refused, the last from {ip})");
            }
            return Err(refused);
        }
        if let Some(refused) = budget.report.admitted(now) {
            tracing::warn!("direct listener: admitting strangers again, {refused} refused");
        }
        drop(budget);
        Ok(Place {
            budget: self.budget.clone(),
            source,
        })
    }

    /// Places held now.
    pub fn held(&self) -> usize {
        lock(&self.budget).places.held()
    }

    /// The limits.
    pub fn limits(&self) -> StrangerLimits {
        lock(&self.budget).places.limits()
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        lock(&self.budget).places.give_back(self.source);
    }
}

fn lock(budget: &Mutex<Budget>) -> MutexGuard<'_, Budget> {
    // Nothing panics while holding it: the counts stay whole.
    budget
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_place_comes_back_when_dropped() {
        let strangers = Strangers::new(StrangerLimits {
            total: 2,
            per_source: 1,
            ..StrangerLimits::default()
        });
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let place = strangers.admit(a).unwrap();
        assert_eq!(strangers.admit(a).unwrap_err(), Refused::PerSource(1));
        assert_eq!(strangers.admit(a).unwrap_err(), Refused::PerSource(1));
        drop(place);
        assert_eq!(strangers.held(), 0);
        let _again = strangers.admit(a).unwrap();
    }
}
