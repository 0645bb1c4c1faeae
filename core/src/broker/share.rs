//! Fair share: how many channels two keys hold between them (relayed,
//! waiting for an answer, or waiting for a socketpair; whoever opened
//! them). Each counts against both keys' channel quotas, so without a bound
//! one key could take the whole of another's quota and every other opener
//! would be refused; with it, one key holds at most a fixed share of
//! another's.

use std::collections::HashMap;

use crate::keys::PublicKey;

#[derive(Debug, Default)]
pub(super) struct Shares {
    between: HashMap<(PublicKey, PublicKey), usize>,
}

/// The pair's key: the same whichever way round it is named.
fn pair(a: PublicKey, b: PublicKey) -> (PublicKey, PublicKey) {
    if a.0 <= b.0 {
        (a, b)
    } else {
        (b, a)
    }
}

impl Shares {
    /// Channels between `a` and `b` now.
    pub(super) fn between(&self, a: PublicKey, b: PublicKey) -> usize {
        self.between.get(&pair(a, b)).copied().unwrap_or(0)
    }

    /// One more channel between them.
    pub(super) fn add(&mut self, a: PublicKey, b: PublicKey) {
        *self.between.entry(pair(a, b)).or_insert(0) += 1;
    }

    /// One fewer.
    ///
    /// A channel counted out twice is a bug: debug builds (and the fuzz
    /// targets) stop on it; release builds keep serving everyone else.
    pub(super) fn remove(&mut self, a: PublicKey, b: PublicKey) {
        let key = pair(a, b);
        let Some(n) = self.between.get_mut(&key) else {
            debug_assert!(false, "a channel counted out that was never counted in");
            return;
        };
        *n -= 1;
        if *n == 0 {
            self.between.remove(&key);
        }
    }

    /// Pairs of keys with channels between them.
    pub(super) fn len(&self) -> usize {
        self.between.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Keypair;

    #[test]
    fn either_way_round_is_one_count_and_empty_pairs_are_forgotten() {
        let a = Keypair::from_seed([1; 32]).public();
        let b = Keypair::from_seed([2; 32]).public();
        let mut shares = Shares::default();
        shares.add(a, b);
        shares.add(b, a);
        shares.add(a, a);
        assert_eq!((shares.between(b, a), shares.between(a, a)), (2, 1));
        shares.remove(a, b);
        shares.remove(a, b);
        shares.remove(a, a);
        assert_eq!(shares.len(), 0);
    }
}
