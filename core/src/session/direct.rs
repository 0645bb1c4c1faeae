//! Direct channels, as the session sees them (PROTOCOL.md §5.11): the
//! target admits only the dialers the broker announced (their key and
//! one-time token, for a channel it accepted), and either end, once the
//! direct connection is up, lets the relayed channel go.

use subtle::ConstantTimeEq;

use super::*;
use crate::direct::TOKEN_LEN;

/// A channel's part in a direct connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Direct {
    /// None: relayed, or over a socketpair.
    None,
    /// We opened it and the broker told us where to dial.
    Dialing,
    /// We accepted it and the broker announced a dialer: its key and token.
    /// `claimed`: it presented the token and its handshake is finishing; a
    /// reset that comes meanwhile waits for the outcome.
    Expecting {
        from: PublicKey,
        token: [u8; TOKEN_LEN],
        claimed: bool,
    },
}

impl Session {
    /// Whether a dialer with `key` is announced for a channel we accepted
    /// and still waits for (asked when a stranger at the direct listener
    /// proved its key).
    pub fn direct_expects(&self, key: &PublicKey) -> bool {
        self.channels.values().any(|c| {
            matches!(c.stage, ChannelStage::AwaitingPath { .. })
                && matches!(&c.direct, Direct::Expecting { from, claimed: false, .. } if from == key)
        })
    }

    /// A dialer with `key` presented `token`: the channel it was announced
    /// for, if any (compared in constant time). The channel then waits for
    /// [`Session::direct_established`] or [`Session::direct_abandoned`].
    pub fn direct_claim(&mut self, key: &PublicKey, token: &[u8; TOKEN_LEN]) -> Option<ChannelId> {
        let (channel, c) = self.channels.iter_mut().find(|(_, c)| {
            matches!(c.stage, ChannelStage::AwaitingPath { .. })
                && matches!(&c.direct, Direct::Expecting { from, token: expected, claimed: false }
                    if from == key && bool::from(expected.ct_eq(token)))
        })?;
        if let Direct::Expecting { claimed, .. } = &mut c.direct {
            *claimed = true;
        }
        Some(*channel)
    }

    /// The direct connection for `channel` is up (the dialer's token was
    /// accepted, or, for the opener, the target accepted us): the relayed
    /// channel is let go (RESET `Cancelled`, reason `direct`) and the
    /// session forgets it. `false` if the channel no longer waits for it
    /// (its path came another way, or it is gone): close the connection.
    pub fn direct_established(&mut self, channel: ChannelId) -> bool {
        // A reset that crossed the connection's success is the peer letting
        // the relay go for the same reason: success wins.
        let waits = matches!(
            self.channels.get(&channel).map(|c| &c.direct),
            Some(Direct::Dialing | Direct::Expecting { claimed: true, .. })
        );
        if waits {
            self.channels.remove(&channel);
            if let Some(wire) = self.link.wire_mut() {
                wire.mux.reset(channel, ErrorCode::Cancelled, "direct");
            }
        }
        waits
    }

    /// The dialer that claimed `channel` did not get through (its handshake
    /// failed or timed out). A reset that came meanwhile ends the channel
    /// now ([`SessionEvent::Reset`]); otherwise it waits for its path again.
    pub fn direct_abandoned(&mut self, channel: ChannelId) {
        let Some(c) = self.channels.get_mut(&channel) else {
            return;
        };
        if let Direct::Expecting { claimed, .. } = &mut c.direct {
            *claimed = false;
        }
        if let Some((code, reason)) = c.reset.take() {
            self.channels.remove(&channel);
            self.events.push_back(SessionEvent::Reset {
                channel,
                code,
                reason,
            });
        }
    }
}

impl Direct {
    /// A reset waits for the outcome of a claimed dial.
    pub(super) fn holds_reset(&self) -> bool {
        matches!(self, Direct::Expecting { claimed: true, .. })
    }
}
