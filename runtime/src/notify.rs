//! A wake-up that is kept until someone waits for it (tokio's
//! `Notify::notify_one`), made of a channel that holds one permit.

use async_channel::{bounded, Receiver, Sender};

/// Wakes one waiter; a wake-up with nobody waiting is kept for the next.
pub(crate) struct Notify {
    tx: Sender<()>,
    rx: Receiver<()>,
}

impl Default for Notify {
    fn default() -> Self {
        let (tx, rx) = bounded(1);
        Notify { tx, rx }
    }
}

impl Notify {
    /// Wakes the waiter, or the next one to wait (a permit already kept
    /// stays the only one).
    pub(crate) fn notify_one(&self) {
        let _ = self.tx.try_send(());
    }

    /// Waits for a wake-up. Cancel-safe: a dropped wait takes no permit.
    pub(crate) async fn notified(&self) {
        // Both ends live in `self`: the channel never closes.
        let _ = self.rx.recv().await;
    }
}
