//! What an accept loop does when `accept` fails.
//!
//! Out of descriptors (`EMFILE`, `ENFILE`) or memory, `accept` fails at
//! once for as long as the condition lasts, while the waiting connection
//! keeps the listener readable: a loop that only logs and retries spins a
//! core and writes a line per failure. [`AcceptPause`] says to stop
//! accepting for [`ACCEPT_PAUSE`] instead, logs the first failure of such
//! a spell and, once accepting works again, how many there were.

use std::io;
use std::time::{Duration, Instant};

use crate::Addr;

/// How long a listener rests after a failed accept.
pub(crate) const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// A spell of failures that lasts is reported again this often.
const REMIND_EVERY: Duration = Duration::from_secs(10);

/// One listener's record of failed accepts.
#[derive(Debug, Default)]
pub struct AcceptPause {
    /// Failures in the current spell, and when one was last logged.
    spell: Option<(u64, Instant)>,
}

impl AcceptPause {
    /// A listener whose accepts have not failed.
    pub fn new() -> Self {
        Self::default()
    }

    /// `accept` on `listener` failed with `error`: how long to stop
    /// accepting, or `None` to go on at once (the error was that one
    /// connection's, or a signal: nothing to wait for). `WouldBlock` is not
    /// a failure; callers wait for readiness as usual.
    pub fn failed(&mut self, listener: &Addr, error: &io::Error) -> Option<Duration> {
        use io::ErrorKind::*;
        if matches!(
            error.kind(),
            ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
        ) || is_network_error(error)
        {
            tracing::debug!("accept on {listener}: {error}");
            return None;
        }
        let now = Instant::now();
        match &mut self.spell {
            None => {
                tracing::warn!(
                    "accept on {listener}: {error}; pausing accepts {} ms at a time until it works again",
                    ACCEPT_PAUSE.as_millis()
                );
                self.spell = Some((1, now));
            }
            Some((failures, logged)) => {
                *failures += 1;
                if now.duration_since(*logged) >= REMIND_EVERY {
                    tracing::warn!("accept on {listener}: {error} ({failures} failures so far)");
                    *logged = now;
                }
            }
        }
        Some(ACCEPT_PAUSE)
    }

    /// `accept` on `listener` worked: a spell of failures is over.
    pub fn accepted(&mut self, listener: &Addr) {
        if let Some((failures, _)) = self.spell.take() {
            tracing::warn!("accept on {listener} works again after {failures} failures");
        }
    }

    /// Whether the last accept failed (a spell is on).
    pub fn is_failing(&self) -> bool {
        self.spell.is_some()
    }
}

/// Errors accept(2) passes on from the network for the one connection
/// being accepted: Linux says to retry them like `EAGAIN`.
fn is_network_error(error: &io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        Errno::from_io_error(error),
        Some(
            Errno::NETDOWN
                | Errno::PROTO
                | Errno::NOPROTOOPT
                | Errno::HOSTDOWN
                | Errno::NONET
                | Errno::HOSTUNREACH
                | Errno::OPNOTSUPP
                | Errno::NETUNREACH
        )
    )
}

/// An accept loop, for any async runtime: every connection `accept` yields
/// goes to `adopt`; after a failed accept the loop rests as [`AcceptPause`]
/// says, with `sleep` (the runtime's timer). Runs until dropped.
pub async fn accept_forever<C, A, S>(
    listener: &Addr,
    mut accept: impl FnMut() -> A,
    mut adopt: impl FnMut(C),
    sleep: impl Fn(Duration) -> S,
) where
    A: std::future::Future<Output = io::Result<C>>,
    S: std::future::Future<Output = ()>,
{
    let mut pause = AcceptPause::new();
    loop {
        match accept().await {
            Ok(conn) => {
                pause.accepted(listener);
                adopt(conn);
            }
            Err(e) => {
                if let Some(rest) = pause.failed(listener, &e) {
                    sleep(rest).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_out_of_descriptors_pauses_and_a_dropped_connection_does_not() {
        let mut pause = AcceptPause::new();
        let here = Addr::Tcp("127.0.0.1:1".into());
        let emfile = io::Error::from_raw_os_error(24); // EMFILE
        let enfile = io::Error::from_raw_os_error(23); // ENFILE
        assert_eq!(pause.failed(&here, &emfile), Some(ACCEPT_PAUSE));
        assert_eq!(pause.failed(&here, &enfile), Some(ACCEPT_PAUSE));
        assert!(pause.is_failing());
        assert_eq!(pause.spell.unwrap().0, 2);
        pause.accepted(&here);
        assert!(!pause.is_failing());
        let aborted = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert_eq!(pause.failed(&here, &aborted), None);
        let unreachable = io::Error::from_raw_os_error(113); // EHOSTUNREACH
        assert_eq!(pause.failed(&here, &unreachable), None);
        assert!(!pause.is_failing());
    }

    /// The loop itself, with a scripted accept and a recording sleep: it
    /// rests after each failure that means "out of something", not after a
    /// connection's own failure, and adopts what comes in between.
    #[test]
    fn the_loop_rests_after_each_failure_that_lasts() {
        use std::cell::RefCell;
        use std::future::Future;
        use std::pin::Pin;
        use std::task::{Context, Waker};

        type Accepted = Pin<Box<dyn Future<Output = io::Result<u32>>>>;
        let emfile = || io::Error::from_raw_os_error(24);
        let aborted = || io::Error::from(io::ErrorKind::ConnectionAborted);
        let script = RefCell::new(std::collections::VecDeque::from([
            Err(emfile()),
            Err(emfile()),
            Ok(1),
            Err(aborted()),
            Ok(2),
            Err(emfile()),
        ]));
        let (adopted, slept) = (RefCell::new(Vec::new()), RefCell::new(Vec::new()));
        let here = Addr::Tcp("127.0.0.1:1".into());
        let run = accept_forever(
            &here,
            || -> Accepted {
                match script.borrow_mut().pop_front() {
                    Some(result) => Box::pin(std::future::ready(result)),
                    // The script is over: wait for ever.
                    None => Box::pin(std::future::pending()),
                }
            },
            |conn| adopted.borrow_mut().push(conn),
            |rest| {
                slept.borrow_mut().push(rest);
                std::future::ready(())
            },
        );
        let mut run = std::pin::pin!(run);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(run.as_mut().poll(&mut cx).is_pending());
        assert!(script.borrow().is_empty());
        assert_eq!(*adopted.borrow(), [1, 2]);
        assert_eq!(*slept.borrow(), [ACCEPT_PAUSE; 3]);
    }
}
