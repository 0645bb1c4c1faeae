//! The queues toward the application are bounded, and none loses anything
//! silently: a full one gives up what it held for one item that says so
//! (a fresh snapshot for a watch, the connection's latest state for its
//! events); a full queue of offers refuses the next opener, who is told.

use async_channel::{bounded, Receiver, Sender, TrySendError};

/// Changes a watch holds for an application that does not read, at most.
pub(crate) const WATCH_QUEUE: usize = 1024;
/// Connection events held for an application that does not read, at most.
pub(crate) const EVENT_QUEUE: usize = 16;
/// Offers of incoming channels waiting for the application, at most.
pub(crate) const OFFER_QUEUE: usize = 64;

/// A bounded queue whose backlog is replaced by one item when it is full.
pub(crate) struct Queue<T> {
    tx: Sender<T>,
    /// Ours, to drop the backlog with.
    rx: Receiver<T>,
}

impl<T> Queue<T> {
    /// A queue of `capacity`, and the application's end of it.
    pub(crate) fn new(capacity: usize) -> (Self, Receiver<T>) {
        let (tx, rx) = bounded(capacity);
        (Queue { tx, rx: rx.clone() }, rx)
    }

    /// Queues `item`; if the queue is full, what it held is dropped and
    /// `instead()` (which stands for all of it) is queued alone. `false`
    /// once the application let go of its end.
    pub(crate) fn push(&self, item: T, instead: impl FnOnce() -> T) -> bool {
        if self.tx.receiver_count() <= 1 {
            return false; // only ours is left
        }
        match self.tx.try_send(item) {
            Ok(()) => true,
            Err(TrySendError::Closed(_)) => false,
            Err(TrySendError::Full(_)) => {
                while self.rx.try_recv().is_ok() {}
                self.tx.try_send(instead()).is_ok()
            }
        }
    }
}
