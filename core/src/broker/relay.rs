//! Relayed channels: linking and unlinking their ends, and the FIN, RESET
//! and close events the hub decides on (data and credit go port to port,
//! in `drive.rs`). Credit passed end to end and the byte books
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
use std::collections::BTreeMap;
use std::sync::MutexGuard;

use super::port::{Port, RelayEnd};
use super::{ConnId, Hub};

mod credit;
pub(super) mod rule;

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

    /// An orphan's route (its other end was released when it left).
    fn orphan(end: &RelayEnd) -> Self {
        Unlinked {
            keys: match end.opener {
                true => [end.key, end.peer_key],
                false => [end.peer_key, end.key],
            },
            growth: [
                (end.key, end.peer_key, end.grown),
                (end.peer_key, end.key, 0),
            ],
        }
    }
}

impl Hub {
    /// The port of `conn`, locked (the hub's lock is held: ports come after it).
    pub(super) fn lock_port(&self, conn: ConnId) -> Option<MutexGuard<'_, Port>> {
        Some(self.conns.get(&conn)?.port.as_ref()?.lock())
    }

    fn with_end<R>(&self, end: End, f: impl FnOnce(&mut RelayEnd) -> R) -> Option<R> {
        self.lock_port(end.0)?.ends.get_mut(&end.1).map(f)
    }

    /// Links an opener's end and a target's end into a relayed channel.
    pub(super) fn link_route(
        &mut self,
        (opener, o_key): (End, PublicKey),
        (target, t_key): (End, PublicKey),
    ) {
        let initial = u64::from(self.config.limits.initial_window);
        let (Some(o_port), Some(t_port)) = (self.port(opener.0), self.port(target.0)) else {
            return;
        };
        let o_end = RelayEnd::new(target, t_port.clone(), [o_key, t_key], true, initial);
        let t_end = RelayEnd::new(opener, o_port.clone(), [t_key, o_key], false, initial);
        o_port.lock().ends.insert(opener.1, o_end);
        t_port.lock().ends.insert(target.1, t_end);
    }

    /// The opener at `end` was told to dial: one DirectFailed is due.
    pub(super) fn offer_dial(&mut self, end: End) {
        self.with_end(end, |end| end.dial_offered = true);
    }

    /// The peer of `end`, if `end` was told to dial and has not said it
    /// failed yet; after this it has.
    pub(super) fn take_dial_offer(&mut self, end: End) -> Option<End> {
        self.with_end(end, |route| {
            std::mem::take(&mut route.dial_offered).then_some(route.peer)
        })?
    }

    fn peer(&self, end: End) -> Option<End> {
        self.with_end(end, |e| e.peer)
    }

    /// Removes both ends of the channel `end` is on, the other one reset
    /// with `code` and `reason` in the same breath (its reader must not see
    /// the channel live and unrouted); returns what the route held.
    fn unlink(&mut self, end: End, reset: Option<(ErrorCode, &str)>) -> Option<Unlinked> {
        let this = self.lock_port(end.0)?.remove_end(end.1)?;
        let Some(peer_port) = &this.peer_port else {
            return Some(Unlinked::orphan(&this));
        };
        let peer = {
            let mut port = peer_port.lock();
            let peer = port.remove_end(this.peer.1).expect("ends come in pairs");
            if let Some((code, reason)) = reset {
                port.mux.reset(this.peer.1, code, reason);
            }
            peer
        };
        if reset.is_some() {
            self.wake(this.peer.0);
        }
        Some(Unlinked::new(&this, &peer))
    }

    /// `conn` is gone with these ends of relayed channels. The other end
    /// of each is reset, unless `conn` had finished sending on it and the
    /// other end has not sent all of that yet: then it is an orphan that
    /// sends what it has (the FIN included), then a RESET (nothing `conn`
    /// sent is lost). An orphan keeps its route's books (its growth, the
    /// opens reservation, both keys' channel counts) until it is gone.
    pub(super) fn routes_gone(&mut self, conn: ConnId, mut ends: BTreeMap<ChannelId, RelayEnd>) {
        let reason = "the other end went away";
        while let Some((_, this)) = ends.pop_first() {
            let Some(peer_port) = &this.peer_port else {
                self.release_route(Unlinked::orphan(&this));
                continue;
            };
            // A channel to itself has both ends here.
            let peer = match this.peer.0 == conn {
                true => ends.remove(&this.peer.1),
                false => {
                    let mut port = peer_port.lock();
                    let channel = this.peer.1;
                    let finished = port.ends.get(&channel).is_some_and(|p| p.finished);
                    if finished && port.mux.has_unsent(channel) {
                        let orphan = port.ends.get_mut(&channel).expect("checked");
                        orphan.peer_port = None;
                        orphan.dial_offered = false;
                        port.mux
                            .reset_when_sent(channel, ErrorCode::PeerGone, reason);
                        drop(port);
                        self.shrink_growth(this.key, this.peer_key, this.grown);
                        continue;
                    }
                    let peer = port.remove_end(channel);
                    port.mux.reset(channel, ErrorCode::PeerGone, reason);
                    peer
                }
            };
            let peer = peer.expect("ends come in pairs");
            self.wake(this.peer.0);
            self.release_route(Unlinked::new(&this, &peer));
        }
    }

    /// Forgets a removed route in both keys' counts and budgets.
    fn release_route(&mut self, unlinked: Unlinked) {
        self.release_channel(unlinked.keys[0], unlinked.keys[1]);
        for (receiver, sender, n) in unlinked.growth {
            self.shrink_growth(receiver, sender, n);
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
        let reset = self
            .lock_port(conn)
            .map(|mut port| port.mux.reset(channel, code, reason));
        if reset.is_some() {
            self.wake(conn);
        }
    }

    pub(super) fn forget_channel(&mut self, conn: ConnId, channel: ChannelId) {
        if let Some(mut port) = self.lock_port(conn) {
            port.mux.forget(channel);
        }
    }

    // ── FIN, reset and credit between the ends ────────────────────────

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
                // Ports pass a routed FIN on themselves: this one was
                // unrouted when its port looked (a route linked meanwhile).
                let give_back = self.lock_port(peer.0).is_some_and(|mut p| p.finish(peer.1));
                self.wake(peer.0);
                if give_back {
                    self.pass_credit(peer);
                }
            }
            MuxEvent::Reset { code, reason, .. } => {
                // The reason is traffic the peer did not ask for: passed on
                // only while it has room for that, so resets cannot fill
                // the queue its replies are judged by.
                let reason = match self.has_room(peer.0, reason.len()) {
                    true => reason,
                    false => String::new(),
                };
                if let Some(unlinked) = self.unlink(end, Some((code, &reason))) {
                    self.release_route(unlinked);
                }
            }
            MuxEvent::Credit { increment, .. } => {
                self.with_end(end, |route| {
                    route.held = route.held.saturating_add(increment)
                });
                self.pass_credit(end);
            }
            MuxEvent::Closed { .. } => {
                let orphan = self.with_end(end, |route| {
                    route.closed = true;
                    route.peer_port.is_none()
                });
                if orphan == Some(true) || self.with_end(peer, |p| p.closed) == Some(true) {
                    if let Some(unlinked) = self.unlink(end, None) {
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
    pub(in crate::broker) fn on_unrouted(
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
