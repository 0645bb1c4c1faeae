//! Relayed channels: linking and unlinking their ends, data, FIN and RESET
//! from one end to the other. Credit passed end to end and the byte books
//! are in `credit.rs`; opens and their answers in `opens.rs`.
//!
//! A relayed channel has two ends, (opener connection, opener's id) and
//! (target connection, broker's id), each kept in its connection's
//! [`Port`] with the other's address. Data and FIN from one end go to the
//! other.

use crate::control::{ChannelId, ErrorCode};
use crate::keys::PublicKey;
use crate::mux::MuxEvent;
use crate::time::Instant;

use super::control::error;
use super::port::{Port, RelayEnd};
use super::{ConnId, Hub};

mod credit;

pub(super) use super::port::End;

/// A route just removed, with what it held.
struct Unlinked {
    /// The opener's key, then the target's (for the channel counts).
    keys: [PublicKey; 2],
    /// Each end's growth: (receiver, sender, bytes).
    growth: [(PublicKey, PublicKey, u64); 2],
}

impl Unlinked {
    fn new(a: &RelayEnd, b: &RelayEnd) -> Self {
        Unlinked {
            keys: match a.opener {
                true => [a.key, b.key],
                false => [b.key, a.key],
            },
            growth: [(a.key, a.peer_key, a.grown), (b.key, b.peer_key, b.grown)],
        }
    }
}

impl Port {
    /// Removes the end of `channel` here.
    fn remove_end(&mut self, channel: ChannelId) -> Option<RelayEnd> {
        self.credit_waiting.remove(&channel);
        self.ends.remove(&channel)
    }
}

impl Hub {
    pub(super) fn port(&self, conn: ConnId) -> Option<&Port> {
        self.conns.get(&conn)?.port.as_ref()
    }

    pub(super) fn port_mut(&mut self, conn: ConnId) -> Option<&mut Port> {
        self.conns.get_mut(&conn)?.port.as_mut()
    }

    fn end(&self, end: End) -> Option<&RelayEnd> {
        self.port(end.0)?.ends.get(&end.1)
    }

    fn end_mut(&mut self, end: End) -> Option<&mut RelayEnd> {
        self.port_mut(end.0)?.ends.get_mut(&end.1)
    }

    /// Links an opener's end and a target's end into a relayed channel.
    pub(super) fn link_route(
        &mut self,
        (opener, o_key): (End, PublicKey),
        (target, t_key): (End, PublicKey),
    ) {
        let initial = self.config.limits.initial_window;
        let ends = [
            (opener, RelayEnd::new(target, [o_key, t_key], true, initial)),
            (
                target,
                RelayEnd::new(opener, [t_key, o_key], false, initial),
            ),
        ];
        for (end, relay_end) in ends {
            if let Some(port) = self.port_mut(end.0) {
                port.ends.insert(end.1, relay_end);
            }
        }
    }

    /// The opener at `end` was told to dial: one DirectFailed is due.
    pub(super) fn offer_dial(&mut self, end: End) {
        if let Some(end) = self.end_mut(end) {
            end.dial_offered = true;
        }
    }

    /// The peer of `end`, if `end` was told to dial and has not said it
    /// failed yet; after this it has.
    pub(super) fn take_dial_offer(&mut self, end: End) -> Option<End> {
        let route = self.end_mut(end)?;
        std::mem::take(&mut route.dial_offered).then_some(route.peer)
    }

    fn peer(&self, end: End) -> Option<End> {
        self.end(end).map(|e| e.peer)
    }

    /// Removes both ends of the channel `end` is on; returns the other end
    /// and what the route held.
    fn unlink(&mut self, end: End) -> Option<(End, Unlinked)> {
        let this = self.port_mut(end.0)?.remove_end(end.1)?;
        let peer = self
            .port_mut(this.peer.0)
            .and_then(|port| port.remove_end(this.peer.1))
            .expect("ends come in pairs");
        Some((this.peer, Unlinked::new(&this, &peer)))
    }
}

impl Hub {
    /// `conn` is gone with its `port`: the other ends of its relayed
    /// channels are reset.
    pub(super) fn routes_gone(&mut self, conn: ConnId, port: &mut Port) {
        while let Some((_, this)) = port.ends.pop_first() {
            // A channel to itself has both ends here.
            let peer = match this.peer.0 == conn {
                true => port.ends.remove(&this.peer.1),
                false => self
                    .port_mut(this.peer.0)
                    .and_then(|p| p.remove_end(this.peer.1)),
            };
            let peer = peer.expect("ends come in pairs");
            self.release_route(Unlinked::new(&this, &peer));
            if this.peer.0 != conn {
                let reason = "the other end went away";
                self.reset_channel(this.peer.0, this.peer.1, ErrorCode::PeerGone, reason);
            }
        }
    }

    /// Forgets a removed route in both keys' counts and budgets.
    fn release_route(&mut self, unlinked: Unlinked) {
        self.release_channel(unlinked.keys[0], unlinked.keys[1]);
        for (receiver, sender, n) in unlinked.growth {
            self.bytes.shrink(receiver, sender, n);
        }
        for key in unlinked.keys {
            if let Some(usage) = self.usage.get_mut(&key) {
                usage.channels -= 1;
            }
            self.forget_key_if_idle(&key);
        }
    }

    pub(super) fn reset_channel(
        &mut self,
        conn: ConnId,
        channel: ChannelId,
        code: ErrorCode,
        reason: &str,
    ) {
        if let Some(port) = self.port_mut(conn) {
            port.mux.reset(channel, code, reason);
            self.wake(conn);
        }
    }

    pub(super) fn forget_channel(&mut self, conn: ConnId, channel: ChannelId) {
        if let Some(port) = self.port_mut(conn) {
            port.mux.forget(channel);
        }
    }

    // ── data, FIN, reset and credit between the ends ──────────────────

    /// Bytes on a relayed channel: copied from the input straight into the
    /// other end's queue (a slice would keep the read buffer alive for as
    /// long as the receiver does not read, beyond what the reservations
    /// cover).
    pub(super) fn on_channel_data(
        &mut self,
        now: Instant,
        conn: ConnId,
        channel: ChannelId,
        bytes: &[u8],
    ) {
        let Some(peer) = self.peer((conn, channel)) else {
            return self.on_unrouted(now, conn, channel, "data", None);
        };
        if let Some(port) = self.port_mut(peer.0) {
            port.deliver(peer.1, bytes);
        }
        self.wake(peer.0);
    }

    pub(super) fn on_channel_event(&mut self, now: Instant, conn: ConnId, event: MuxEvent) {
        let (channel, kind) = match &event {
            MuxEvent::Fin { channel } => (*channel, "FIN"),
            MuxEvent::Reset { channel, .. } => (*channel, "RESET"),
            MuxEvent::Credit { channel, .. } => (*channel, "WINDOW"),
            MuxEvent::Closed { channel } => (*channel, "close"),
            _ => return,
        };
        let end = (conn, channel);
        let Some(peer) = self.peer(end) else {
            return self.on_unrouted(now, conn, channel, kind, Some(event));
        };
        match event {
            MuxEvent::Fin { .. } => {
                if let Some(port) = self.port_mut(peer.0) {
                    port.finish(peer.1);
                }
                self.wake(peer.0);
                // Nothing more comes that way: the growth reserved for it
                // shrinks to what is still queued, and with the queue.
                self.pass_credit(peer);
            }
            MuxEvent::Reset { code, reason, .. } => {
                if let Some((_, unlinked)) = self.unlink(end) {
                    self.release_route(unlinked);
                }
                // The reason is traffic the peer did not ask for: passed on
                // only while it has room for that, so resets cannot fill
                // the queue its replies are judged by.
                let reason = match self.has_room(peer.0, reason.len()) {
                    true => reason,
                    false => String::new(),
                };
                self.reset_channel(peer.0, peer.1, code, &reason);
            }
            MuxEvent::Credit { increment, .. } => {
                if let Some(route) = self.end_mut(end) {
                    route.held = route.held.saturating_add(increment);
                }
                self.pass_credit(end);
            }
            MuxEvent::Closed { .. } => {
                if let Some(route) = self.end_mut(end) {
                    route.closed = true;
                }
                if self.end(peer).is_some_and(|p| p.closed) {
                    if let Some((_, unlinked)) = self.unlink(end) {
                        self.release_route(unlinked);
                    }
                }
            }
            _ => {}
        }
    }

    /// A channel event with no route: an open still waiting for its answer
    /// (or for its socketpair). Either side may give up on it with a reset;
    /// anything else is too early.
    fn on_unrouted(
        &mut self,
        now: Instant,
        conn: ConnId,
        channel: ChannelId,
        kind: &str,
        event: Option<MuxEvent>,
    ) {
        let reason = match event {
            Some(MuxEvent::Credit { .. } | MuxEvent::Closed { .. }) => return,
            Some(MuxEvent::Reset { reason, .. }) => reason,
            _ => {
                let reason = format!("{kind} on channel {channel} before it was opened");
                return self.close(now, conn, ErrorCode::ProtocolViolation, reason);
            }
        };
        let as_opener = self.conns[&conn]
            .opens_out
            .iter()
            .find(|end| {
                self.pending
                    .get(end)
                    .is_some_and(|o| o.opener_channel == channel)
            })
            .copied();
        let pair = self
            .pairs
            .iter()
            .find(|(_, (target, target_channel, open))| {
                (*target, *target_channel) == (conn, channel)
                    || (open.opener, open.opener_channel) == (conn, channel)
            })
            .map(|(pair, _)| *pair);
        if let Some(open) = self.take_pending((conn, channel)) {
            // The target gave up before answering: as good as a reject.
            self.forget_channel(open.opener, open.opener_channel);
            let message = format!("reset before answering: {reason}");
            self.reply(
                open.opener,
                &error(open.request, ErrorCode::Rejected, message),
            );
        } else if let Some(end) = as_opener {
            if let Some(open) = self.take_pending(end) {
                self.reset_channel(end.0, end.1, ErrorCode::Cancelled, "the opener gave up");
                let message = "cancelled by the opener".to_owned();
                self.reply(conn, &error(open.request, ErrorCode::Cancelled, message));
            }
        } else if let Some(pair) = pair {
            let (target, target_channel, open) = self.pairs.remove(&pair).expect("found");
            self.fds.release_pair(pair);
            self.release_channel(open.opener_key, open.target_key);
            if target == conn {
                self.forget_channel(open.opener, open.opener_channel);
                let message = format!("reset before its path was set: {reason}");
                self.reply(
                    open.opener,
                    &error(open.request, ErrorCode::Rejected, message),
                );
            } else {
                self.reset_channel(
                    target,
                    target_channel,
                    ErrorCode::Cancelled,
                    "the opener gave up",
                );
                let message = "cancelled by the opener".to_owned();
                self.reply(conn, &error(open.request, ErrorCode::Cancelled, message));
            }
        }
    }
}
