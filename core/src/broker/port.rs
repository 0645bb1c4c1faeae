//! One connection's mux and its ends of relayed channels: what the relayed
//! data path touches of a connection, and nothing another connection owns.
//!
//! Each direction of a relayed channel is accounted at its receiving end:
//! the credit its sender still holds (`owed`) is counted there, from the
//! credit passed to the sender and the bytes that arrived, so passing
//! credit on reads no other connection's state.

use std::collections::{BTreeMap, BTreeSet};

use crate::control::ChannelId;
use crate::keys::PublicKey;
use crate::mux::Mux;

use super::ConnId;

/// One end of a relayed channel: a connection and its id for the channel.
pub(super) type End = (ConnId, ChannelId);

/// A connection's mux and its ends of relayed channels.
pub(super) struct Port {
    pub(super) mux: Mux,
    /// Its ends of relayed channels, by its id for the channel.
    pub(super) ends: BTreeMap<ChannelId, RelayEnd>,
    /// Ends holding credit they could not pass on yet, or growth to give
    /// back as their queue drains.
    pub(super) credit_waiting: BTreeSet<ChannelId>,
}

/// One end of a relayed channel, and the direction that ends here.
pub(super) struct RelayEnd {
    /// The other end.
    pub(super) peer: End,
    /// This end's key: charged for the channel, and for the growth of the
    /// direction that ends here.
    pub(super) key: PublicKey,
    /// The other end's key: the sender of the direction that ends here.
    pub(super) peer_key: PublicKey,
    /// This end opened the channel (its key reserved both initial windows).
    pub(super) opener: bool,
    /// Credit this end granted that is not passed to the sender yet.
    pub(super) held: u32,
    /// Credit the sender holds: the initial window and what was passed to
    /// it, less what arrived here.
    pub(super) owed: u64,
    /// The sender finished its direction: its FIN arrived here.
    pub(super) finished: bool,
    /// Credit beyond the initial window passed to the sender: reserved
    /// from `key`'s growth (see `memory`).
    pub(super) grown: u64,
    /// This end's mux retired the channel (both FINs).
    pub(super) closed: bool,
    /// This end (an opener) was told to dial; a DirectFailed is still due.
    pub(super) dial_offered: bool,
}

impl RelayEnd {
    /// An end just linked: its sender holds the initial window.
    pub(super) fn new(peer: End, keys: [PublicKey; 2], opener: bool, initial: u32) -> Self {
        RelayEnd {
            peer,
            key: keys[0],
            peer_key: keys[1],
            opener,
            held: 0,
            owed: u64::from(initial),
            finished: false,
            grown: 0,
            closed: false,
            dial_offered: false,
        }
    }
}

impl Port {
    pub(super) fn new(mux: Mux) -> Self {
        Port {
            mux,
            ends: BTreeMap::new(),
            credit_waiting: BTreeSet::new(),
        }
    }

    /// Bytes the sender sent on `channel`, to queue here: charged to its
    /// credit. Nothing is queued on a channel this mux no longer has.
    pub(super) fn deliver(&mut self, channel: ChannelId, bytes: &[u8]) {
        if let Some(end) = self.ends.get_mut(&channel) {
            debug_assert!(
                end.owed >= bytes.len() as u64,
                "the sender's mux checked it"
            );
            end.owed = end.owed.saturating_sub(bytes.len() as u64);
        }
        // Fails only if this end's channel is gone already.
        let _ = self.mux.send_copy(channel, bytes);
    }

    /// The sender finished: nothing more is owed to it.
    pub(super) fn finish(&mut self, channel: ChannelId) {
        if let Some(end) = self.ends.get_mut(&channel) {
            end.finished = true;
            end.owed = 0;
        }
        let _ = self.mux.finish(channel);
    }

    /// What the sender to `channel` may still send plus what is queued
    /// here: the broker's exposure for that direction.
    pub(super) fn exposure(&self, channel: ChannelId) -> Option<u64> {
        let end = self.ends.get(&channel)?;
        Some(end.owed + self.mux.queued(channel) as u64)
    }

    /// Ends of relayed channels here.
    pub(super) fn route_ends(&self) -> usize {
        self.ends.len()
    }
}
