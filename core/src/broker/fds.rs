//! Descriptors in flight: a socketpair's ends are open in the broker's
//! process from the moment it asks for the pair until each end rides out on
//! the frame that announces it. A connection that does not read keeps its
//! ends (and their peers' ends) open for as long as it likes, so each end is
//! charged to the key of the connection it goes to, and the ends held in all
//! are bounded: beyond either bound, a channel that could have been a
//! socketpair is relayed instead.

use std::collections::HashMap;

use crate::keys::PublicKey;

use super::{ConnId, PairEnd, PairId};

/// Why a socketpair was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FdRefusal {
    /// One of the two keys has as many ends in flight as it may.
    #[error("{0} holds {1} socketpair ends not yet delivered, the most one key may")]
    Key(PublicKey, usize),
    /// The broker holds as many ends as it may.
    #[error("the broker holds {0} socketpair ends not yet delivered, the most it may")]
    Total(usize),
}

/// The ends in flight, and whom each is charged to.
#[derive(Debug)]
pub(super) struct FdBudget {
    per_key_limit: usize,
    total_limit: usize,
    per_key: HashMap<PublicKey, usize>,
    /// By end: the connection it goes to, and that connection's key.
    ends: HashMap<(PairId, PairEnd), (ConnId, PublicKey)>,
}

impl FdBudget {
    pub(super) fn new(per_key_limit: usize, total_limit: usize) -> Self {
        FdBudget {
            per_key_limit,
            total_limit,
            per_key: HashMap::new(),
            ends: HashMap::new(),
        }
    }

    /// New limits (a reload): ends in flight stay, and count against them.
    pub(super) fn set_limits(&mut self, per_key_limit: usize, total_limit: usize) {
        self.per_key_limit = per_key_limit;
        self.total_limit = total_limit;
    }

    /// Reserves both ends of `pair`, or neither.
    pub(super) fn reserve(
        &mut self,
        pair: PairId,
        opener: (ConnId, PublicKey),
        target: (ConnId, PublicKey),
    ) -> Result<(), FdRefusal> {
        if self.ends.len() + 2 > self.total_limit {
            return Err(FdRefusal::Total(self.ends.len()));
        }
        // A key at both ends (a channel to its own name) needs room for two.
        let same = usize::from(opener.1 == target.1);
        for key in [opener.1, target.1] {
            let held = self.held_by(&key);
            if held + 1 + same > self.per_key_limit {
                return Err(FdRefusal::Key(key, held));
            }
        }
        for (end, (conn, key)) in [(PairEnd::Opener, opener), (PairEnd::Target, target)] {
            self.ends.insert((pair, end), (conn, key));
            *self.per_key.entry(key).or_insert(0) += 1;
        }
        Ok(())
    }

    /// One end left the broker (or will never be sent); nothing if it was
    /// released already.
    pub(super) fn release(&mut self, pair: PairId, end: PairEnd) {
        let Some((_, key)) = self.ends.remove(&(pair, end)) else {
            return;
        };
        let held = self.per_key.get_mut(&key).expect("charged when reserved");
        *held -= 1;
        if *held == 0 {
            self.per_key.remove(&key);
        }
    }

    /// Both ends of `pair`.
    pub(super) fn release_pair(&mut self, pair: PairId) {
        self.release(pair, PairEnd::Opener);
        self.release(pair, PairEnd::Target);
    }

    /// `conn` is gone: the ends meant for it close with it.
    pub(super) fn release_conn(&mut self, conn: ConnId) {
        let gone: Vec<(PairId, PairEnd)> = self
            .ends
            .iter()
            .filter(|(_, (to, _))| *to == conn)
            .map(|(end, _)| *end)
            .collect();
        for (pair, end) in gone {
            self.release(pair, end);
        }
    }

    /// Ends in flight charged to `key`.
    pub(super) fn held_by(&self, key: &PublicKey) -> usize {
        self.per_key.get(key).copied().unwrap_or(0)
    }

    /// Ends in flight in all.
    pub(super) fn held(&self) -> usize {
        self.ends.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Keypair;
    use proptest::prelude::*;

    fn key(seed: u8) -> PublicKey {
        Keypair::from_seed([seed; 32]).public()
    }

    #[test]
    fn a_key_at_its_limit_gets_no_more_pairs_and_others_still_do() {
        let mut fds = FdBudget::new(2, 100);
        let (a, b, c) = (key(1), key(2), key(3));
        fds.reserve(1, (10, a), (20, b)).unwrap();
        fds.reserve(2, (10, a), (30, c)).unwrap();
        assert_eq!(fds.reserve(3, (10, a), (30, c)), Err(FdRefusal::Key(a, 2)));
        fds.reserve(3, (40, b), (30, c)).unwrap();
        // An end delivered frees its key's room.
        fds.release(1, PairEnd::Opener);
        fds.reserve(4, (10, a), (50, key(5))).unwrap();
        // A channel to one's own name takes two ends of one key.
        assert!(fds.reserve(5, (60, key(6)), (61, key(6))).is_ok());
        assert!(FdBudget::new(1, 100)
            .reserve(1, (60, key(6)), (61, key(6)))
            .is_err());
    }

    #[test]
    fn the_total_bounds_everyone() {
        let mut fds = FdBudget::new(100, 4);
        fds.reserve(1, (1, key(1)), (2, key(2))).unwrap();
        fds.reserve(2, (3, key(3)), (4, key(4))).unwrap();
        assert_eq!(
            fds.reserve(3, (5, key(5)), (6, key(6))),
            Err(FdRefusal::Total(4))
        );
        fds.release_conn(1);
        assert_eq!(fds.held(), 3);
        assert!(
            fds.reserve(3, (5, key(5)), (6, key(6))).is_err(),
            "one end free is not two"
        );
        fds.release_pair(2);
        fds.reserve(3, (5, key(5)), (6, key(6))).unwrap();
    }

    proptest! {
        /// Whatever is reserved and released, in whatever order (twice
        /// included), the counts match the ends held and stay in bounds.
        #[test]
        fn counts_match_the_ends(ops in proptest::collection::vec((0u8..4, 0u64..6, 0u8..4, 0u8..4), 0..200)) {
            let mut fds = FdBudget::new(3, 8);
            // Pair ids are never reused; releases name any, old or unknown.
            let mut next = 0;
            for (op, pair, a, b) in ops {
                match op {
                    0 => {
                        next += 1;
                        let _ = fds.reserve(next, (u64::from(a), key(a)), (u64::from(b), key(b)));
                    }
                    1 => fds.release(next.saturating_sub(pair), if a % 2 == 0 { PairEnd::Opener } else { PairEnd::Target }),
                    2 => fds.release_pair(next.saturating_sub(pair)),
                    _ => fds.release_conn(u64::from(a)),
                }
                prop_assert!(fds.held() <= 8);
                let counted: usize = fds.per_key.values().sum();
                prop_assert_eq!(counted, fds.held());
                for held in fds.per_key.values() {
                    prop_assert!(*held > 0 && *held <= 3);
                }
            }
        }
    }
}
