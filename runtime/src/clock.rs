//! The clock the core never reads: time since the runtime started.

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
}
