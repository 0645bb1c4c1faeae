//! The core's [`HandshakeBudget`] shared between an accept loop and the
//! tasks it starts: an accepted stranger holds a [`Place`] until its
//! handshake is over, whichever way it ends.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use plugboard_core::budget::{HandshakeBudget, Refused, Source, StrangerLimits};

/// Places for strangers' handshakes at one listener.
#[derive(Clone, Debug)]
pub struct Strangers {
    budget: Arc<Mutex<HandshakeBudget>>,
}

/// One stranger's place; given back when dropped.
#[derive(Debug)]
pub struct Place {
    budget: Arc<Mutex<HandshakeBudget>>,
    source: Source,
}

impl Strangers {
    /// Nobody admitted yet.
    pub fn new(limits: StrangerLimits) -> Self {
        Strangers {
            budget: Arc::new(Mutex::new(HandshakeBudget::new(limits))),
        }
    }

    /// A place for a stranger from `ip`, if one is free.
    pub fn admit(&self, ip: IpAddr) -> Result<Place, Refused> {
        let source = Source::from(ip);
        lock(&self.budget).take(source)?;
        Ok(Place {
            budget: self.budget.clone(),
            source,
        })
    }

    /// Places held now.
    pub fn held(&self) -> usize {
        lock(&self.budget).held()
    }

    /// The limits.
    pub fn limits(&self) -> StrangerLimits {
        lock(&self.budget).limits()
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        lock(&self.budget).give_back(self.source);
    }
}

fn lock(budget: &Mutex<HandshakeBudget>) -> MutexGuard<'_, HandshakeBudget> {
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
        drop(place);
        assert_eq!(strangers.held(), 0);
        let _again = strangers.admit(a).unwrap();
    }
}
