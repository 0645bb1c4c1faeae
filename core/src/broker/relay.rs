//! Relayed channels: linking and unlinking their ends, and the FIN, RESET
//! and close events the hub decides on (data and credit go port to port,
//! in `drive.rs`). Credit passed end to end and the byte books
//! are in `credit.rs`; opens and their answers in `opens.rs`.
//!
//! A relayed channel has two ends, (opener connection, opener's id) and
//! (target connection, broker's id), each kept in its connection's
//! [`Port`] with the other's address. Data and FIN from one end go to the
//! other. An end whose other end left after its FIN, before all it sent
//! was written, is an *orphan* (`RelayEnd::peer_port` is `None`): it sends
//! what it holds, then its RESET, and its books are its own key's
//! (`routes_gone`).

use crate::control::{ChannelId, ErrorCode, MonitorKind};
use crate::keys::PublicKey;
use crate::mux::MuxEvent;
use crate::time::Instant;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::MutexGuard;

use super::monitor::Seen;
use super::port::{Port, RelayEnd};
use super::{Cause, ConnId, Hub};

mod credit;
pub(super) mod rule;

pub(super) use super::port::End;

/// A route just removed, with what it held.
struct Unlinked {
    /// The opener's key, then the target's (for the channel counts).
    keys: [PublicKey; 2],
    /// Each end's growth: (receiver, sender, bytes).
    growth: [(PublicKey, PublicKey, u64); 2],
    /// What monitors know the channel by.
    seen: Seen,
    /// Bytes relayed from the opener to the target, and back.
    relayed: [u64; 2],
}

impl Unlinked {
    fn new(a: &RelayEnd, b: &RelayEnd) -> Self {
        let (opener, target) = match a.opener {
            true => (a, b),
            false => (b, a),
        };
        Unlinked {
            keys: [opener.key, target.key],
            growth: [(a.key, a.peer_key, a.grown), (b.key, b.peer_key, b.grown)],
            seen: a.seen.clone(),
            relayed: [opener.relayed, target.relayed],
        }
    }
}

impl Hub {
    /// For monitors: a relayed channel ended (`cause`: empty for a clean
    /// end), with the bytes it carried each way and how long it lasted.
    fn observe_close(&mut self, now: Instant, unlinked: &Unlinked, cause: &str) {
        let seen = &unlinked.seen;
        let [to_target, to_opener] = unlinked.relayed;
        let duration = now.saturating_duration_since(seen.since);
        let detail = match cause {
            "" => "closed".to_owned(),
            _ => format!("reset ({cause})"),
        };
        let [key, peer] = unlinked.keys;
        let mut event = seen.event(MonitorKind::Close, key, peer, cause, detail);
        event.to_target = to_target;
        event.to_opener = to_opener;
        event.duration_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        self.observe(event);
    }

    /// The port of `conn`, locked (the hub's lock is held: ports come after it).
    pub(super) fn lock_port(&self, conn: ConnId) -> Option<MutexGuard<'_, Port>> {
        Some(self.conns.get(&conn)?.port.as_ref()?.lock())
    }

    pub(super) fn with_end<R>(&self, end: End, f: impl FnOnce(&mut RelayEnd) -> R) -> Option<R> {
        self.lock_port(end.0)?.ends.get_mut(&end.1).map(f)
    }

    /// Links an opener's end and a target's end into a relayed channel.
    pub(super) fn link_route(
        &mut self,
        (opener, o_key): (End, PublicKey),
        (target, t_key): (End, PublicKey),
        seen: Seen,
    ) {
        let initial = u64::from(self.config.limits.initial_window);
        let (Some(o_port), Some(t_port)) = (self.port(opener.0), self.port(target.0)) else {
            return;
        };
        let o_end = RelayEnd::new(
            target,
            t_port.clone(),
            [o_key, t_key],
            true,
            initial,
            seen.clone(),
        );
        let t_end = RelayEnd::new(opener, o_port.clone(), [t_key, o_key], false, initial, seen);
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
            self.release_orphan(&this);
            self.bridge_gone(end.0);
            return None;
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
        self.bridge_gone(end.0);
        self.bridge_gone(this.peer.0);
        Some(Unlinked::new(&this, &peer))
    }

    /// `conn` is gone with these ends of relayed channels; `unsent` are
    /// those its mux had not sent all of (data or FIN) toward it. The other
    /// end of each is reset, unless `conn` had finished sending on it and
    /// that end has not sent all of it yet: then it becomes an orphan that
    /// sends what it has, the FIN included, and then a RESET (or closes as
    /// usual if its own direction had reached `conn` whole). Nothing `conn`
    /// sent is lost. The orphan's books move to the key at its end, which
    /// keeps it by not reading: `conn`'s key is free of them at once.
    pub(super) fn routes_gone(
        &mut self,
        now: Instant,
        conn: ConnId,
        mut ends: BTreeMap<ChannelId, RelayEnd>,
        unsent: &BTreeSet<ChannelId>,
    ) {
        let reason = "the other end went away";
        while let Some((channel, this)) = ends.pop_first() {
            let Some(peer_port) = this.peer_port.clone() else {
                self.release_orphan(&this);
                continue;
            };
            // A channel to itself has both ends here.
            if this.peer.0 == conn {
                let peer = ends.remove(&this.peer.1).expect("ends come in pairs");
                self.release_route(now, Unlinked::new(&this, &peer), "peer_gone");
                continue;
            }
            let room = self.has_room(this.peer.0, reason.len());
            let reason = if room { reason } else { "" };
            // Its own direction reached `conn` whole: it may close cleanly.
            let heard = this.finished && !unsent.contains(&channel);
            let mut port = peer_port.lock();
            let peer = port.remove_end(this.peer.1).expect("ends come in pairs");
            let unheard = peer.finished && port.mux.has_unsent(this.peer.1);
            if unheard && self.adopt_orphan(&this, &peer) {
                // Over for monitors: the rest is the orphan's to deliver,
                // ending cleanly if `conn` had heard all it was sent.
                let cause = if heard { "" } else { "peer_gone" };
                self.observe_close(now, &Unlinked::new(&this, &peer), cause);
                let mut orphan = peer;
                orphan.peer_port = None;
                // Its opener was told to dial, and may still say it failed:
                // there is nothing to fall back to now.
                orphan.dial_offered = false;
                orphan.opener = true; // it holds the opens reservation now
                if !heard {
                    port.mux
                        .reset_when_sent(this.peer.1, ErrorCode::PeerGone, reason);
                }
                port.ends.insert(this.peer.1, orphan);
                drop(port);
            } else {
                port.mux.reset(this.peer.1, ErrorCode::PeerGone, reason);
                drop(port);
                self.release_route(now, Unlinked::new(&this, &peer), "peer_gone");
                self.bridge_gone(this.peer.0);
            }
            self.wake(this.peer.0);
        }
    }

    /// Moves the books of a route whose end `gone` left onto the key at
    /// its other end, `orphan`, which keeps it: `gone`'s key releases the
    /// opens reservation (if it opened), its share and its channel and its
    /// growth. False, changing nothing, if `orphan`'s key cannot take the
    /// reservation on.
    fn adopt_orphan(&mut self, gone: &RelayEnd, orphan: &RelayEnd) -> bool {
        let cost = self.open_cost();
        if gone.opener {
            if self.bytes.check_open(&orphan.key, cost).is_err() {
                return false;
            }
            self.bytes.release_open(gone.key, cost);
            self.bytes.reserve_open(orphan.key, cost);
        }
        match gone.opener {
            true => self.shares.remove(gone.key, orphan.key),
            false => self.shares.remove(orphan.key, gone.key),
        }
        self.shrink_growth(gone.key, gone.peer_key, gone.grown);
        if let Some(usage) = self.usage.get_mut(&gone.key) {
            usage.channels -= 1;
        }
        self.forget_key_if_idle(&gone.key);
        true
    }

    /// Forgets an orphan: its key's reservation, channel and growth.
    fn release_orphan(&mut self, orphan: &RelayEnd) {
        self.bytes.release_open(orphan.key, self.open_cost());
        self.shrink_growth(orphan.key, orphan.peer_key, orphan.grown);
        if let Some(usage) = self.usage.get_mut(&orphan.key) {
            usage.channels -= 1;
        }
        self.forget_key_if_idle(&orphan.key);
    }

    /// Forgets a removed route in both keys' counts and budgets, and tells
    /// monitors how it ended (`cause`: empty for a clean end).
    fn release_route(&mut self, now: Instant, unlinked: Unlinked, cause: &str) {
        self.observe_close(now, &unlinked, cause);
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
                    self.release_route(now, unlinked, Cause::Code(code).label());
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
                        self.release_route(now, unlinked, "");
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
            self.refuse_opener(&open, ErrorCode::Rejected, message);
        } else if let Some(end) = as_opener {
            if let Some(open) = self.take_pending(end) {
                self.reset_channel(end.0, end.1, ErrorCode::Cancelled, "the opener gave up");
                let message = "cancelled by the opener".to_owned();
                self.refuse_opener(&open, ErrorCode::Cancelled, message);
            }
        } else if let Some(pair) = pair {
            let (target, target_channel, open) = self.pairs.remove(&pair).expect("found");
            self.fds.release_pair(pair);
            self.release_channel(open.opener_key, open.target_key);
            if target == conn {
                self.forget_channel(open.opener, open.opener_channel);
                let message = format!("reset before its path was set: {reason}");
                self.refuse_opener(&open, ErrorCode::Rejected, message);
            } else {
                self.reset_channel(
                    target,
                    target_channel,
                    ErrorCode::Cancelled,
                    "the opener gave up",
                );
                let message = "cancelled by the opener".to_owned();
                self.refuse_opener(&open, ErrorCode::Cancelled, message);
            }
        }
    }
}
