//! Reconnection's policy and the waits between attempts (from injected
//! randomness), used by the session (`link.rs`), and the events the async
//! plugin API reports about its connection.

use std::time::Duration;

use rand_core::RngCore;

/// The least a wait grows from (a policy starting at zero still grows).
const MIN_STEP: Duration = Duration::from_millis(1);
/// The shortest wait, whatever the policy: attempts never spin.
pub const MIN_WAIT: Duration = Duration::from_millis(10);

/// How a plugin reconnects.
///
/// Before each attempt it waits a random time ("decorrelated jitter"):
/// between `initial` and three times the previous wait, at most `max`, and
/// never under [`MIN_WAIT`]. The first wait is between `initial` and three
/// times `initial`. Plugins that lost the same broker so spread out instead
/// of knocking all at once. A connection lost within `max` of the last
/// outage's end goes on from that outage's waits instead of starting over
/// (a broker that keeps dropping plugins is not hammered).
///
/// Attempts go on until the plugin is dropped, whatever refuses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconnect {
    /// The shortest wait before an attempt.
    pub initial: Duration,
    /// The longest wait before an attempt.
    pub max: Duration,
}

impl Default for Reconnect {
    /// 100 ms to 10 s.
    fn default() -> Self {
        Reconnect {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }
}

/// A change of a plugin's connection to the broker.
///
/// A plugin that reconnects reports [`ConnectionEvent::Lost`] once when its
/// connection is lost, [`ConnectionEvent::AttemptFailed`] for each attempt
/// that fails, and [`ConnectionEvent::Reconnected`] once when it is back,
/// and so on for every outage. [`ConnectionEvent::Ended`] is the end: of
/// the connection, for one that does not reconnect; of the plugin, dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// The connection was lost; the plugin reconnects. Requests in flight
    /// failed, relayed channels broke.
    Lost {
        /// Why.
        reason: String,
    },
    /// An attempt to reconnect failed: no socket, no handshake, no hello,
    /// or the broker refused the name or the watch (then why says so). The
    /// next attempt follows after a wait.
    AttemptFailed {
        /// Which attempt of this outage (from 1).
        attempt: u32,
        /// Why.
        reason: String,
    },
    /// Connected again: the name is the plugin's again (held, or, for one
    /// that waits for its name, in line for it) and the watch restarted
    /// (with a new snapshot). Requests work again.
    Reconnected {
        /// The connection attempts it took (at least 1).
        attempts: u32,
    },
    /// The connection is over for good (the plugin does not reconnect).
    Ended {
        /// Why.
        reason: String,
    },
}

/// The waits before the attempts of one outage: decorrelated jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: Reconnect,
    last: Duration,
}

impl Backoff {
    /// The first wait comes next. A policy whose `initial` is over its
    /// `max` waits `max`.
    pub fn new(policy: Reconnect) -> Self {
        let initial = policy.initial.min(policy.max);
        Backoff {
            policy: Reconnect { initial, ..policy },
            last: initial,
        }
    }

    /// How long to wait before the next attempt.
    pub fn next(&mut self, rng: &mut impl RngCore) -> Duration {
        self.next_from(rng.next_u64())
    }

    /// As [`Backoff::next`], with the randomness drawn already.
    pub fn next_from(&mut self, random: u64) -> Duration {
        let low = self.policy.initial;
        let high = self.last.max(MIN_STEP).saturating_mul(3);
        let high = high.min(self.policy.max).max(low);
        let span = u64::try_from((high - low).as_nanos()).unwrap_or(u64::MAX);
        let jitter = match span {
            0 => 0,
            span => random % span,
        };
        self.last = (low + Duration::from_nanos(jitter)).max(MIN_WAIT);
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    fn rng() -> rand_chacha::ChaCha20Rng {
        rand_chacha::ChaCha20Rng::seed_from_u64(7)
    }

    #[test]
    fn backoff_stays_within_the_policy_and_grows() {
        let policy = Reconnect {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(500),
        };
        let mut backoff = Backoff::new(policy);
        let mut rng = rng();
        let waits: Vec<Duration> = (0..200).map(|_| backoff.next(&mut rng)).collect();
        assert!(waits
            .iter()
            .all(|w| *w >= policy.initial && *w <= policy.max));
        // Each wait is at most three times the previous one.
        assert!(waits.windows(2).all(|w| w[1] <= w[0] * 3));
        // Random: not all the same, and it reaches well past the start.
        assert!(waits.iter().any(|w| *w != waits[0]));
        assert!(waits.iter().any(|w| *w > Duration::from_millis(100)));
    }

    #[test]
    fn backoff_copes_with_odd_policies() {
        let mut rng = rng();
        let zero = Reconnect {
            initial: Duration::ZERO,
            max: Duration::ZERO,
        };
        let mut backoff = Backoff::new(zero);
        assert_eq!(backoff.next(&mut rng), MIN_WAIT);
        let inverted = Reconnect {
            initial: Duration::from_secs(5),
            max: Duration::from_secs(1),
        };
        let mut backoff = Backoff::new(inverted);
        assert!((0..10).all(|_| backoff.next(&mut rng) == Duration::from_secs(1)));
        let tiny = Reconnect {
            initial: Duration::from_micros(1),
            max: Duration::from_millis(2),
        };
        let mut backoff = Backoff::new(tiny);
        assert!((0..10).all(|_| backoff.next(&mut rng) == MIN_WAIT));
    }
}
