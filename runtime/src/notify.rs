//! A wake-up that is kept until someone waits for it (tokio's
//! `Notify::notify_one`), for one waiter at a time: a permit and a waker
//! under a lock, inline (no allocation: each connection has several).

use std::sync::Mutex;
use std::task::{Poll, Waker};

/// Wakes its waiter; a wake-up with nobody waiting is kept for the next
/// wait. One task waits on a `Notify` at a time (a second one's wait would
/// replace the first's waker).
#[derive(Default)]
pub(crate) struct Notify {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// A wake-up nobody has taken yet (one at most).
    permit: bool,
    waker: Option<Waker>,
}

impl Notify {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the waiter, or the next one to wait (a permit already kept
    /// stays the only one).
    pub(crate) fn notify_one(&self) {
        let waker = {
            let mut state = self.lock();
            state.permit = true;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Waits for a wake-up. Cancel-safe: a dropped wait takes no permit.
    pub(crate) async fn notified(&self) {
        std::future::poll_fn(|cx| {
            let mut state = self.lock();
            if std::mem::take(&mut state.permit) {
                return Poll::Ready(());
            }
            match &mut state.waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future;

    #[test]
    fn a_wake_up_is_kept_until_taken_and_only_one() {
        let notify = Notify::default();
        notify.notify_one();
        notify.notify_one();
        future::block_on(notify.notified()); // the kept one
        let second = future::block_on(future::poll_once(notify.notified()));
        assert_eq!(second, None, "two notifies keep one permit");
    }

    #[test]
    fn a_waiter_is_woken_and_a_dropped_wait_takes_nothing() {
        let notify = std::sync::Arc::new(Notify::default());
        // A wait that is dropped before any wake-up.
        assert_eq!(future::block_on(future::poll_once(notify.notified())), None);
        let waker = notify.clone();
        let thread = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            waker.notify_one();
        });
        future::block_on(notify.notified());
        thread.join().unwrap();
    }
}
