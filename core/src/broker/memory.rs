//! Buffer bytes, budgeted by reservation, never counted on the data path.
//!
//! What the relay may hold for one direction of a channel is bounded by the
//! credit it has granted the sender plus what it has queued for the
//! receiver. That exposure is reserved before it can exist: opening a
//! channel reserves both initial windows from the opener's key; credit the
//! relay passes on beyond the initial window is reserved, as it passes,
//! from the key that granted it. A channel's initial window is always its
//! own, so no one else's reservations can stall it.
//!
//! The two are separate budgets per key. Growth is exposure a key's peers
//! can keep alive (a sender that makes a fast reader grow its windows and
//! then stops holds that credit unused), so it is kept apart from what a
//! key's own opens need, and one peer key may hold at most half of another
//! key's growth: a sender can slow the growth of a reader's other windows,
//! never stop it opening or others' channels growing.
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

/// Growth by (receiver, sender).
pub(super) type Shares = HashMap<(PublicKey, PublicKey), u64>;

#[derive(Debug)]
pub(super) struct ByteBudget {
    /// Both initial windows of each channel a key opened.
    opens: HashMap<PublicKey, u64>,
    /// Credit beyond the initial window a key granted and the relay passed on.
    growth: HashMap<PublicKey, u64>,
    /// Of that, by (receiver, sender): what one sender's channels hold.
    shares: Shares,
    total: u64,
    limits: ByteLimits,
}

/// The byte budgets' limits.
#[derive(Debug, Clone, Copy)]
pub(super) struct ByteLimits {
    /// Opens' reservations per key.
    pub(super) per_key: u64,
    /// Growth per key (half of it per sender key).
    pub(super) growth_per_key: u64,
    /// Everything, all keys together.
    pub(super) total: u64,
}

impl ByteBudget {
    pub(super) fn new(limits: ByteLimits) -> Self {
        ByteBudget {
            opens: HashMap::new(),
            growth: HashMap::new(),
            shares: HashMap::new(),
            total: 0,
            limits,
        }
    }

    /// Whether an open's `n` more for `key` fits both budgets.
    pub(super) fn check(&self, key: &PublicKey, n: u64) -> Result<(), ByteRefusal> {
        let held = self.opens_held_by(key);
        if n > self.limits.per_key.saturating_sub(held) {
            let limit = self.limits.per_key;
            return Err(ByteRefusal::Key {
                held,
                wanted: n,
                limit,
            });
        }
        if n > self.limits.total.saturating_sub(self.total) {
            let (held, limit) = (self.total, self.limits.total);
            return Err(ByteRefusal::Total {
                held,
                wanted: n,
                limit,
            });
        }
        Ok(())
    }

    /// Reserves an open's `n` for `key`, after [`ByteBudget::check`].
    pub(super) fn force(&mut self, key: PublicKey, n: u64) {
        add(&mut self.opens, key, n);
        self.total += n;
    }

    /// Gives back `n` of `key`'s opens' reservation.
    pub(super) fn release(&mut self, key: PublicKey, n: u64) {
        self.total -= sub(&mut self.opens, key, n);
    }

    /// How much more credit `receiver` may have passed on to `sender`'s
    /// channels beyond their initial windows: within its growth budget, its
    /// share for that sender, and the total.
    pub(super) fn growth_free(&self, receiver: &PublicKey, sender: &PublicKey) -> u64 {
        let share = self.shares.get(&(*receiver, *sender)).copied().unwrap_or(0);
        let grown = self.growth.get(receiver).copied().unwrap_or(0);
        let growth = self.limits.growth_per_key;
        (growth.saturating_sub(grown))
            .min((growth / 2).saturating_sub(share))
            .min(self.limits.total.saturating_sub(self.total))
    }

    /// Reserves `n` of growth for `receiver`, on `sender`'s channels, after
    /// [`ByteBudget::growth_free`].
    pub(super) fn grow(&mut self, receiver: PublicKey, sender: PublicKey, n: u64) {
        add(&mut self.growth, receiver, n);
        add(&mut self.shares, (receiver, sender), n);
        self.total += n;
    }

    /// Gives back `n` of `receiver`'s growth on `sender`'s channels.
    pub(super) fn shrink(&mut self, receiver: PublicKey, sender: PublicKey, n: u64) {
        sub(&mut self.shares, (receiver, sender), n);
        self.total -= sub(&mut self.growth, receiver, n);
    }

    /// Everything `key` has reserved, opens and growth.
    pub(super) fn held_by(&self, key: &PublicKey) -> u64 {
        self.opens_held_by(key) + self.growth.get(key).copied().unwrap_or(0)
    }

    pub(super) fn opens_held_by(&self, key: &PublicKey) -> u64 {
        self.opens.get(key).copied().unwrap_or(0)
    }

    /// Growth by key, and by (receiver, sender).
    pub(super) fn growth(&self) -> (&HashMap<PublicKey, u64>, &Shares) {
        (&self.growth, &self.shares)
    }

    pub(super) fn held(&self) -> u64 {
        self.total
    }

    /// Entries in the books (keys with opens, keys with growth, shares).
    pub(super) fn keys(&self) -> usize {
        self.opens.len() + self.growth.len() + self.shares.len()
    }
}

fn add<K: std::hash::Hash + Eq>(books: &mut HashMap<K, u64>, key: K, n: u64) {
    if n > 0 {
        *books.entry(key).or_insert(0) += n;
    }
}

/// Takes `n` off `key`'s entry (forgotten at zero); returns what was taken.
fn sub<K: std::hash::Hash + Eq>(books: &mut HashMap<K, u64>, key: K, n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    let Some(held) = books.get_mut(&key) else {
        debug_assert!(false, "bytes released that were never reserved");
        return 0;
    };
    debug_assert!(*held >= n, "more bytes released than reserved");
    let n = n.min(*held);
    *held -= n;
    if *held == 0 {
        books.remove(&key);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Keypair;

    #[test]
    fn both_budgets_bind_and_releases_forget_the_key() {
        let a = Keypair::from_seed([1; 32]).public();
        let b = Keypair::from_seed([2; 32]).public();
        let mut budget = ByteBudget::new(ByteLimits {
            per_key: 10,
            growth_per_key: 8,
            total: 15,
        });
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

    /// Growth is its own budget, and one sender's channels hold at most
    /// half of a receiver's.
    #[test]
    fn growth_is_apart_and_shared_by_halves() {
        let [a, b, c] = [1, 2, 3].map(|n| Keypair::from_seed([n; 32]).public());
        let mut budget = ByteBudget::new(ByteLimits {
            per_key: 10,
            growth_per_key: 8,
            total: 100,
        });
        assert_eq!(budget.growth_free(&a, &b), 4);
        budget.grow(a, b, 4);
        assert_eq!(budget.growth_free(&a, &b), 0, "b's half is used");
        assert_eq!(budget.growth_free(&a, &c), 4, "c still has its half");
        budget.check(&a, 10).unwrap();
        budget.grow(a, c, 4);
        assert_eq!(budget.growth_free(&a, &c), 0);
        budget.shrink(a, b, 4);
        budget.shrink(a, c, 4);
        assert_eq!((budget.held(), budget.keys()), (0, 0));
    }
}
