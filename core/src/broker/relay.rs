//! Relayed channels: the relay table, data, FIN and RESET from one end to
//! the other. Credit passed end to end and the byte books are in
//! `credit.rs`; opens and their answers in `opens.rs`.
//!
//! A relayed channel has two ends, (opener connection, opener's id) and
//! (target connection, broker's id). Data and FIN from one end go to the
//! other.

use std::collections::HashMap;

use crate::control::{ChannelId, ErrorCode};
use crate::keys::PublicKey;
use crate::mux::MuxEvent;
use crate::time::Instant;

use super::control::error;
use super::{ConnId, Hub};

mod credit;

/// One end of a relayed channel: a connection and its id for the channel.
pub(super) type End = (ConnId, ChannelId);

struct RouteEnd {
    peer: End,
    /// The key of this end's connection: charged for the channel, and for
    /// its reservations (the opener's both windows, this end's `grown`).
    key: PublicKey,
    /// Credit this end granted that is not passed to the peer yet.
    held: u32,
    /// This end's mux retired the channel (both FINs).
    closed: bool,
    /// This end (an opener) was told to dial; a DirectFailed is still due.
    dial_offered: bool,
    /// This end opened the channel (its key reserved both initial windows).
    opener: bool,
    /// Credit this end granted beyond the initial window that the relay
    /// passed on: reserved from `key`'s growth (see `memory`).
    grown: u64,
}

/// A route just removed.
struct Unlinked {
    /// The opener's key, then the target's (for the channel counts).
    keys: [PublicKey; 2],
    peer: End,
    /// Each end's growth: (receiver, sender, bytes).
    growth: [(PublicKey, PublicKey, u64); 2],
}

/// Both ends of every relayed channel.
#[derive(Default)]
pub(super) struct Routes {
    ends: HashMap<End, RouteEnd>,
}

impl Routes {
    pub(super) fn link(
        &mut self,
        (opener, o_key): (End, PublicKey),
        (target, t_key): (End, PublicKey),
    ) {
        let end = |peer, key, opener| RouteEnd {
            peer,
            key,
            held: 0,
            closed: false,
            dial_offered: false,
            opener,
            grown: 0,
        };
        self.ends.insert(opener, end(target, o_key, true));
        self.ends.insert(target, end(opener, t_key, false));
    }

    /// The opener at `end` was told to dial: one DirectFailed is due.
    pub(super) fn offer_dial(&mut self, end: End) {
        if let Some(end) = self.ends.get_mut(&end) {
            end.dial_offered = true;
        }
    }

    /// The peer of `end`, if `end` was told to dial and has not said it
    /// failed yet; after this it has.
    pub(super) fn take_dial_offer(&mut self, end: End) -> Option<End> {
        let route = self.ends.get_mut(&end)?;
        std::mem::take(&mut route.dial_offered).then_some(route.peer)
    }

    fn peer(&self, end: End) -> Option<End> {
        self.ends.get(&end).map(|e| e.peer)
    }

    /// The key at the other end of `end`'s channel (`end` is linked): the
    /// sender, for `end`'s growth.
    fn peer_key(&self, end: &RouteEnd) -> PublicKey {
        self.ends[&end.peer].key
    }

    /// Removes both ends; returns both keys and the other end.
    fn unlink(&mut self, end: End) -> Option<Unlinked> {
        let this = self.ends.remove(&end)?;
        let peer = self.ends.remove(&this.peer).expect("ends come in pairs");
        let keys = match this.opener {
            true => [this.key, peer.key],
            false => [peer.key, this.key],
        };
        Some(Unlinked {
            keys,
            peer: this.peer,
            growth: [
                (this.key, peer.key, this.grown),
                (peer.key, this.key, peer.grown),
            ],
        })
    }

    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }
}

impl Hub {
    /// `conn` is gone: the other end of its relayed `channel` is reset.
    pub(super) fn routes_peer_gone(&mut self, conn: ConnId, channel: ChannelId) {
        if let Some(unlinked) = self.routes.unlink((conn, channel)) {
            let peer = unlinked.peer;
            self.release_route(conn, channel, unlinked);
            self.reset_channel(
                peer.0,
                peer.1,
                ErrorCode::PeerGone,
                "the other end went away",
            );
        }
    }

    /// Forgets a removed route in both connections and in both keys' counts.
    fn release_route(&mut self, conn: ConnId, channel: ChannelId, unlinked: Unlinked) {
        for (conn, channel) in [(conn, channel), unlinked.peer] {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.routes.remove(&channel);
                c.credit_waiting.remove(&channel);
            }
        }
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
        if let Some(mux) = self.conns.get_mut(&conn).and_then(|c| c.mux.as_mut()) {
            mux.reset(channel, code, reason);
            self.wake(conn);
        }
    }

    pub(super) fn forget_channel(&mut self, conn: ConnId, channel: ChannelId) {
        if let Some(mux) = self.conns.get_mut(&conn).and_then(|c| c.mux.as_mut()) {
            mux.forget(channel);
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
        let Some(peer) = self.routes.peer((conn, channel)) else {
            return self.on_unrouted(now, conn, channel, "data", None);
        };
        if let Some(mux) = self.conns.get_mut(&peer.0).and_then(|c| c.mux.as_mut()) {
            // Only fails if the peer's end is already gone.
            let _ = mux.send_copy(peer.1, bytes);
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
        let Some(peer) = self.routes.peer(end) else {
            return self.on_unrouted(now, conn, channel, kind, Some(event));
        };
        match event {
            MuxEvent::Fin { .. } => {
                if let Some(mux) = self.conns.get_mut(&peer.0).and_then(|c| c.mux.as_mut()) {
                    let _ = mux.finish(peer.1);
                }
                self.wake(peer.0);
                // Nothing more comes that way: the growth reserved for it
                // shrinks to what is still queued, and with the queue.
                self.pass_credit(peer);
            }
            MuxEvent::Reset { code, reason, .. } => {
                if let Some(unlinked) = self.routes.unlink(end) {
                    self.release_route(conn, channel, unlinked);
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
                if let Some(route) = self.routes.ends.get_mut(&end) {
                    route.held = route.held.saturating_add(increment);
                }
                self.pass_credit(end);
            }
            MuxEvent::Closed { .. } => {
                let both = match self.routes.ends.get_mut(&end) {
                    Some(route) => {
                        route.closed = true;
                        self.routes.ends.get(&peer).is_some_and(|p| p.closed)
                    }
                    None => false,
                };
                if both {
                    if let Some(unlinked) = self.routes.unlink(end) {
                        self.release_route(conn, channel, unlinked);
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
