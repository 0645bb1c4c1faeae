//! What a watch knows: the registry as of the last change it saw, kept
//! from the snapshot, the resyncs and the changes, so that an application
//! that fell behind can be handed the registry as it is now instead of
//! every change it missed.

use std::collections::BTreeMap;

use super::*;
use crate::control::Presence;

/// The registry as a watch saw it.
#[derive(Debug, Default)]
pub(super) struct WatchView {
    /// The last change seen.
    pub(super) seq: u64,
    members: BTreeMap<Name, Member>,
}

impl WatchView {
    /// A snapshot (the first, or a resync) replaces what was known.
    pub(super) fn new(seq: u64, members: &[Member]) -> Self {
        WatchView {
            seq,
            members: members
                .iter()
                .map(|m| (m.name.clone(), m.clone()))
                .collect(),
        }
    }

    /// Applies the next change; the broker breaks the protocol if the
    /// change does not fit what it said before, or the view would grow
    /// past `max` entries.
    pub(super) fn apply(
        &mut self,
        seq: u64,
        presence: &Presence,
        max: usize,
    ) -> Result<(), SessionError> {
        if self.seq.checked_add(1) != Some(seq) {
            return Err(SessionError::Protocol("a presence event out of sequence"));
        }
        match presence {
            Presence::Up(member) => {
                if self.members.contains_key(&member.name) {
                    return Err(SessionError::Protocol("a name up twice"));
                }
                if self.members.len() >= max {
                    return Err(SessionError::ReplyTooLarge(max));
                }
                self.members.insert(member.name.clone(), member.clone());
            }
            Presence::Down { name, key } => {
                if self.members.get(name).map(|m| m.key) != Some(*key) {
                    return Err(SessionError::Protocol("a name down that was not up"));
                }
                self.members.remove(name);
            }
            Presence::OwnerChanged { name, old_key, new } => {
                let Some(member) = self.members.get_mut(name) else {
                    return Err(SessionError::Protocol("an owner change of a free name"));
                };
                if member.key != *old_key || new.name != *name {
                    return Err(SessionError::Protocol("an owner change that does not fit"));
                }
                *member = new.clone();
            }
        }
        self.seq = seq;
        Ok(())
    }

    /// Every member, by name.
    pub(super) fn members(&self) -> Vec<Member> {
        self.members.values().cloned().collect()
    }
}

impl Session {
    /// The registry as the watch saw it last, and the number of that
    /// change: what to hand an application that fell behind (as a resync)
    /// instead of the changes it did not read. `None` without a watch.
    pub fn watch_view(&self) -> Option<(u64, Vec<Member>)> {
        self.watch.as_ref().map(|w| (w.seq, w.members()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::TransportKind;
    use crate::keys::Keypair;

    fn member(name: &str, seed: u8) -> Member {
        Member {
            name: Name::new(name).unwrap(),
            key: Keypair::from_seed([seed; 32]).public(),
            transport: TransportKind::Unix,
            connected_ms: 0,
        }
    }

    #[test]
    fn a_view_follows_the_changes_and_refuses_what_does_not_fit() {
        let mut view = WatchView::new(7, &[member("a", 1)]);
        let up = Presence::Up(member("b", 2));
        assert_eq!(
            view.apply(9, &up, 10),
            Err(SessionError::Protocol("a presence event out of sequence"))
        );
        view.apply(8, &up, 10).unwrap();
        assert!(view.apply(9, &up, 10).is_err(), "b is up already");
        let changed = Presence::OwnerChanged {
            name: Name::new("a").unwrap(),
            old_key: member("a", 1).key,
            new: member("a", 3),
        };
        view.apply(9, &changed, 10).unwrap();
        let wrong_down = Presence::Down {
            name: Name::new("a").unwrap(),
            key: member("a", 1).key,
        };
        assert!(
            view.apply(10, &wrong_down, 10).is_err(),
            "a's owner is 3 now"
        );
        assert_eq!(view.seq, 9);
        assert_eq!(view.members(), vec![member("a", 3), member("b", 2)]);
        // Bounded: a view may not grow past its bound.
        let more = Presence::Up(member("c", 4));
        assert_eq!(
            view.apply(10, &more, 2),
            Err(SessionError::ReplyTooLarge(2))
        );
    }
}
