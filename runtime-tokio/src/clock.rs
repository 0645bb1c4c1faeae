//! The clock the core never reads: time since the runtime started.

use plugboard_core::Instant;

/// Converts between the wall clock and the core's [`Instant`].
#[derive(Clone, Copy)]
pub struct Clock(tokio::time::Instant);

impl Clock {
    /// Starts counting now.
    pub fn start() -> Self {
        Clock(tokio::time::Instant::now())
    }

    /// The core's now.
    pub fn now(&self) -> Instant {
        Instant::from_duration(self.0.elapsed())
    }

    /// A core instant as a tokio instant, to sleep until.
    pub fn to_tokio(&self, at: Instant) -> tokio::time::Instant {
        self.0 + at.since_epoch()
    }
}
