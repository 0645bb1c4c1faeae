//! The broker's log lines, rate-limited per cause: every refusal and
//! disconnect is logged, but a flood of one kind (a scanner, a
//! reconnecting client, a bad network key) cannot fill the disk. What is
//! held back is counted and said once its window has passed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Lines one cause may write per window.
pub const LINES_PER_WINDOW: u32 = 20;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Windows and suppressed counts, per cause label.
#[derive(Debug, Default)]
pub struct LogLimiter {
    causes: BTreeMap<&'static str, Window>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    written: u32,
    suppressed: u64,
}

/// Lines held back for a cause whose window has passed: say so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppressed {
    /// The cause's label.
    pub cause: &'static str,
    /// How many lines were not written.
    pub lines: u64,
}

impl LogLimiter {
    /// Whether a line of `cause` may be written at `now`; and, for every
    /// cause whose window has passed with lines held back, how many.
    pub fn admit(&mut self, now: Instant, cause: &'static str) -> (bool, Vec<Suppressed>) {
        let mut report = Vec::new();
        self.causes.retain(|&label, window| {
            let over = now.saturating_duration_since(window.start) >= WINDOW;
            if over && window.suppressed > 0 {
                report.push(Suppressed {
                    cause: label,
                    lines: window.suppressed,
                });
            }
            !over
        });
        let window = self.causes.entry(cause).or_insert(Window {
            start: now,
            written: 0,
            suppressed: 0,
        });
        let admitted = window.written < LINES_PER_WINDOW;
        match admitted {
            true => window.written += 1,
            false => window.suppressed += 1,
        }
        (admitted, report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_one_cause_is_cut_and_counted_and_others_still_pass() {
        let mut limiter = LogLimiter::default();
        let start = Instant::now();
        let mut written = 0;
        for i in 0..1000 {
            let now = start + Duration::from_millis(i);
            let (ok, report) = limiter.admit(now, "network_key");
            assert!(report.is_empty());
            written += u32::from(ok);
        }
        assert_eq!(written, LINES_PER_WINDOW);
        // Another cause is not held back by the flood.
        assert!(limiter.admit(start, "goodbye").0);

        // The window passes: the held-back lines are reported once, and the
        // cause writes again.
        let later = start + WINDOW + Duration::from_secs(1);
        let (ok, report) = limiter.admit(later, "network_key");
        assert!(ok);
        let held = 1000 - u64::from(LINES_PER_WINDOW);
        assert_eq!(
            report,
            [Suppressed {
                cause: "network_key",
                lines: held
            }]
        );
        assert!(limiter.admit(later, "network_key").1.is_empty());
    }
}
