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
//! The two are separate budgets, per key and in total. Growth is exposure a
//! key's peers can keep alive (a sender that makes a fast reader grow its
//! windows and then stops holds that credit unused), so it is kept apart
//! from what opens need: no one's growth can refuse anyone's Open. One
//! sender key's channels may hold at most half of a receiver's growth, and,
//! once growth in all is past half its total, at most one key's worth over
//! all receivers (only then: receivers can grant credit a sender never
//! uses, and that must not stall the sender's other channels while there
//! is room).

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
pub(super) type GrowthByPair = HashMap<(PublicKey, PublicKey), u64>;

#[derive(Debug)]
pub(super) struct ByteBudget {
    /// Both initial windows of each channel a key opened.
    opens: HashMap<PublicKey, u64>,
    /// Credit beyond the initial window a key granted and the relay passed on.
    growth: HashMap<PublicKey, u64>,
    /// Of that, by (receiver, sender): what one sender's channels hold.
    shares: GrowthByPair,
    /// Of that, by sender: what one sender's channels hold in all.
    by_sender: HashMap<PublicKey, u64>,
    opens_total: u64,
    growth_total: u64,
    limits: ByteLimits,
}

/// The growth books, for audits.
pub(super) struct GrowthBooks<'a> {
    pub(super) by_receiver: &'a HashMap<PublicKey, u64>,
    pub(super) shares: &'a GrowthByPair,
    pub(super) by_sender: &'a HashMap<PublicKey, u64>,
}

/// The byte budgets' limits.
#[derive(Debug, Clone, Copy)]
pub(super) struct ByteLimits {
    /// Opens' reservations per key.
    pub(super) per_key: u64,
    /// Opens' reservations, all keys together.
    pub(super) total: u64,
    /// Growth per receiving key (half of it per sender key), and per
    /// sending key over all its receivers.
    pub(super) growth_per_key: u64,
    /// Growth, all keys together.
    pub(super) growth_total: u64,
}

impl ByteLimits {
    pub(super) fn of(limits: &super::Limits) -> Self {
        ByteLimits {
            per_key: limits.max_bytes_per_key,
            total: limits.max_bytes,
            growth_per_key: limits.max_grown_bytes_per_key,
            growth_total: limits.max_grown_bytes,
        }
    }
}

impl ByteBudget {
    /// New limits (a reload): what is reserved stays, and counts against them.
    pub(super) fn set_limits(&mut self, limits: ByteLimits) {
        self.limits = limits;
    }

    pub(super) fn new(limits: ByteLimits) -> Self {
        ByteBudget {
            opens: HashMap::new(),
            growth: HashMap::new(),
            shares: HashMap::new(),
            by_sender: HashMap::new(),
            opens_total: 0,
            growth_total: 0,
            limits,
        }
    }

    /// Whether an open's `n` more for `key` fits its own and the total.
    pub(super) fn check_open(&self, key: &PublicKey, n: u64) -> Result<(), ByteRefusal> {
        let held = self.opens_held_by(key);
        if n > self.limits.per_key.saturating_sub(held) {
            let limit = self.limits.per_key;
            return Err(ByteRefusal::Key {
                held,
                wanted: n,
                limit,
            });
        }
        if n > self.limits.total.saturating_sub(self.opens_total) {
            let (held, limit) = (self.opens_total, self.limits.total);
            return Err(ByteRefusal::Total {
                held,
                wanted: n,
                limit,
            });
        }
        Ok(())
    }

    /// Reserves an open's `n` for `key`, after [`ByteBudget::check_open`].
    pub(super) fn reserve_open(&mut self, key: PublicKey, n: u64) {
        add(&mut self.opens, key, n);
        self.opens_total += n;
    }

    /// Gives back `n` of `key`'s opens' reservation.
    pub(super) fn release_open(&mut self, key: PublicKey, n: u64) {
        self.opens_total -= sub(&mut self.opens, key, n);
    }

    /// How much more credit `receiver` may have passed on to `sender`'s
    /// channels beyond their initial windows: within its growth budget, its
    /// share for that sender, the total, and, once the total is past half,
    /// what that sender's channels hold in all.
    pub(super) fn growth_free(&self, receiver: &PublicKey, sender: &PublicKey) -> u64 {
        let held = |books: &HashMap<PublicKey, u64>, key| books.get(key).copied().unwrap_or(0);
        let share = self.shares.get(&(*receiver, *sender)).copied().unwrap_or(0);
        let per_key = self.limits.growth_per_key;
        let by_sender = match self.growth_total > self.limits.growth_total / 2 {
            true => per_key.saturating_sub(held(&self.by_sender, sender)),
            false => u64::MAX,
        };
        (per_key.saturating_sub(held(&self.growth, receiver)))
            .min((per_key / 2).saturating_sub(share))
            .min(by_sender)
            .min(self.limits.growth_total.saturating_sub(self.growth_total))
    }

    /// Reserves `n` of growth for `receiver`, on `sender`'s channels, after
    /// [`ByteBudget::growth_free`].
    pub(super) fn grow(&mut self, receiver: PublicKey, sender: PublicKey, n: u64) {
        add(&mut self.growth, receiver, n);
        add(&mut self.shares, (receiver, sender), n);
        add(&mut self.by_sender, sender, n);
        self.growth_total += n;
    }

    /// Gives back `n` of `receiver`'s growth on `sender`'s channels.
    pub(super) fn shrink(&mut self, receiver: PublicKey, sender: PublicKey, n: u64) {
        sub(&mut self.shares, (receiver, sender), n);
        sub(&mut self.by_sender, sender, n);
        self.growth_total -= sub(&mut self.growth, receiver, n);
    }

    /// Everything `key` has reserved, opens and growth.
    pub(super) fn held_by(&self, key: &PublicKey) -> u64 {
        self.opens_held_by(key) + self.growth.get(key).copied().unwrap_or(0)
    }

    pub(super) fn opens_held_by(&self, key: &PublicKey) -> u64 {
        self.opens.get(key).copied().unwrap_or(0)
    }

    /// Opens' reservations by key.
    pub(super) fn opens(&self) -> &HashMap<PublicKey, u64> {
        &self.opens
    }

    /// Growth by receiver, by (receiver, sender) and by sender.
    pub(super) fn growth(&self) -> GrowthBooks<'_> {
        GrowthBooks {
            by_receiver: &self.growth,
            shares: &self.shares,
            by_sender: &self.by_sender,
        }
    }

    /// Everything reserved: (opens, growth).
    pub(super) fn totals(&self) -> (u64, u64) {
        (self.opens_total, self.growth_total)
    }

    pub(super) fn held(&self) -> u64 {
        self.opens_total + self.growth_total
    }

    /// Entries in the books (keys with opens, keys with growth, shares,
    /// senders).
    pub(super) fn entries(&self) -> usize {
        self.opens.len() + self.growth.len() + self.shares.len() + self.by_sender.len()
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
            total: 15,
            growth_per_key: 8,
            growth_total: 100,
        });
        budget.check_open(&a, 10).unwrap();
        budget.reserve_open(a, 10);
        assert!(matches!(
            budget.check_open(&a, 1),
            Err(ByteRefusal::Key { held: 10, .. })
        ));
        budget.reserve_open(b, 5);
        assert!(matches!(
            budget.check_open(&b, 1),
            Err(ByteRefusal::Total { held: 15, .. })
        ));
        budget.release_open(a, 10);
        budget.release_open(b, 5);
        assert_eq!((budget.held(), budget.entries()), (0, 0));
    }

    /// Growth is its own budget, and one sender's channels hold at most
    /// half of a receiver's.
    #[test]
    fn growth_is_apart_and_shared_by_halves() {
        let [a, b, c] = [1, 2, 3].map(|n| Keypair::from_seed([n; 32]).public());
        let mut budget = ByteBudget::new(ByteLimits {
            per_key: 10,
            total: 100,
            growth_per_key: 8,
            growth_total: 100,
        });
        assert_eq!(budget.growth_free(&a, &b), 4);
        budget.grow(a, b, 4);
        assert_eq!(budget.growth_free(&a, &b), 0, "b's half is used");
        assert_eq!(budget.growth_free(&a, &c), 4, "c still has its half");
        budget.check_open(&a, 10).unwrap();
        budget.grow(a, c, 4);
        assert_eq!(budget.growth_free(&a, &c), 0);
        budget.shrink(a, b, 4);
        budget.shrink(a, c, 4);
        assert_eq!((budget.held(), budget.entries()), (0, 0));
    }

    /// Growth never uses what opens may; and once growth in all is past
    /// half its total, one sender key's channels hold at most one key's
    /// growth over all receivers (before that, receivers granting credit a
    /// sender never uses could stall the sender's other channels).
    #[test]
    fn one_sender_holds_one_keys_growth_under_pressure_and_never_opens() {
        let [a, b, c, s] = [1, 2, 3, 4].map(|n| Keypair::from_seed([n; 32]).public());
        let limits = |growth_total| ByteLimits {
            per_key: 10,
            total: 10,
            growth_per_key: 8,
            growth_total,
        };
        for (growth_total, free) in [(100, 4), (14, 0)] {
            let mut budget = ByteBudget::new(limits(growth_total));
            budget.grow(a, s, 4);
            budget.grow(b, s, 4);
            assert_eq!(budget.growth_free(&c, &s), free, "total {growth_total}");
            assert_eq!(budget.growth_free(&c, &a), 4.min(growth_total - 8));
            budget.check_open(&c, 10).unwrap();
            assert_eq!(budget.totals(), (0, 8));
        }
    }
}
