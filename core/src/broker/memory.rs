//! Buffer bytes, budgeted by reservation, never counted on the data path.
//!
//! What the relay may hold for one direction of a channel is bounded by the
//! credit it has granted the sender plus what it has queued for the
//! receiver. That exposure is reserved before it can exist: opening a
//! channel reserves both initial windows from the opener's key; credit the
//! relay passes on beyond the initial window is reserved, as it passes,
//! from the key that granted it (and moved to the sender's key when the
//! sender leaves it unused: see `relay`). A channel's initial window is always its
//! own, so no one else's reservations can stall it.

use std::collections::HashMap;

use crate::keys::PublicKey;

/// Why a reservation did not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ByteRefusal {
    /// The key holds as much as one key may.
    #[error("{held} bytes reserved, {wanted} more would pass the {limit} one key may hold")]
    Key {
        /// Reserved now.
        held: u64,
        /// Asked for.
        wanted: u64,
        /// The limit.
        limit: u64,
    },
    /// The broker holds as much as it may in all.
    #[error("the broker has {held} bytes reserved, {wanted} more would pass its {limit}")]
    Total {
        /// Reserved now.
        held: u64,
        /// Asked for.
        wanted: u64,
        /// The limit.
        limit: u64,
    },
}

#[derive(Debug)]
pub(super) struct ByteBudget {
    per_key: HashMap<PublicKey, u64>,
    total: u64,
    max_per_key: u64,
    max_total: u64,
}

impl ByteBudget {
    pub(super) fn new(max_per_key: u64, max_total: u64) -> Self {
        ByteBudget {
            per_key: HashMap::new(),
            total: 0,
            max_per_key,
            max_total,
        }
    }

    /// Whether `n` more for `key` fits both budgets.
    pub(super) fn check(&self, key: &PublicKey, n: u64) -> Result<(), ByteRefusal> {
        let free = self.free(key);
        if n > free.0 {
            let (held, limit) = (self.held_by(key), self.max_per_key);
            return Err(ByteRefusal::Key {
                held,
                wanted: n,
                limit,
            });
        }
        if n > free.1 {
            let (held, limit) = (self.total, self.max_total);
            return Err(ByteRefusal::Total {
                held,
                wanted: n,
                limit,
            });
        }
        Ok(())
    }

    /// Reserves `n` for `key`, after [`ByteBudget::check`] (or for what is
    /// already held and only moves).
    pub(super) fn force(&mut self, key: PublicKey, n: u64) {
        if n > 0 {
            *self.per_key.entry(key).or_insert(0) += n;
            self.total += n;
        }
    }

    /// Gives back `n` of `key`'s reservation.
    pub(super) fn release(&mut self, key: PublicKey, n: u64) {
        if n == 0 {
            return;
        }
        let Some(held) = self.per_key.get_mut(&key) else {
            debug_assert!(false, "bytes released that were never reserved");
            return;
        };
        debug_assert!(*held >= n, "more bytes released than reserved");
        let n = n.min(*held);
        *held -= n;
        self.total -= n;
        if *held == 0 {
            self.per_key.remove(&key);
        }
    }

    /// How much more `key` may reserve: (under its own limit, under the total).
    pub(super) fn free(&self, key: &PublicKey) -> (u64, u64) {
        (
            self.max_per_key.saturating_sub(self.held_by(key)),
            self.max_total.saturating_sub(self.total),
        )
    }

    pub(super) fn held_by(&self, key: &PublicKey) -> u64 {
        self.per_key.get(key).copied().unwrap_or(0)
    }

    pub(super) fn held(&self) -> u64 {
        self.total
    }

    /// Keys with a reservation.
    pub(super) fn keys(&self) -> usize {
        self.per_key.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Keypair;

    #[test]
    fn both_budgets_bind_and_releases_forget_the_key() {
        let a = Keypair::from_seed([1; 32]).public();
        let b = Keypair::from_seed([2; 32]).public();
        let mut budget = ByteBudget::new(10, 15);
        budget.check(&a, 10).unwrap();
        budget.force(a, 10);
        assert!(matches!(
            budget.check(&a, 1),
            Err(ByteRefusal::Key { held: 10, .. })
        ));
        budget.force(b, 5);
        assert!(matches!(
            budget.check(&b, 1),
            Err(ByteRefusal::Total { held: 15, .. })
        ));
        budget.release(a, 10);
        budget.release(b, 5);
        assert_eq!((budget.held(), budget.keys()), (0, 0));
    }
}
