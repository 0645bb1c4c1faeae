//! The clock the core never reads: time since the runtime started, on the
//! monotonic clock, for every runtime.

use std::time::Duration;

use plugboard_core::Instant;

/// Converts between the monotonic clock and the core's [`Instant`].
#[derive(Clone, Copy, Debug)]
pub struct Clock(std::time::Instant);

impl Clock {
    /// Starts counting now.
    pub fn start() -> Self {
        Clock(std::time::Instant::now())
    }

    /// The core's now.
    pub fn now(&self) -> Instant {
        Instant::from_duration(self.0.elapsed())
    }

    /// A core instant as a monotonic one, to sleep until.
    pub fn to_std(&self, at: Instant) -> std::time::Instant {
        self.0 + at.since_epoch()
    }

    /// How long from now until `at` (zero if it has passed): a poll timeout.
    pub fn until(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.now())
    }
}
