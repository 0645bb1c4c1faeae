//! Channels through the broker: opens and their answers, the relay table,
//! credit passed end to end, and direct-channel mediation.
//!
//! A relayed channel has two ends, (opener connection, opener's id) and
//! (target connection, broker's id). Data and FIN from one end go to the
//! other. Credit the receiver grants is passed to the sender only as far
//! as the broker's bound allows: what the sender may still send plus what
//! the broker holds for the receiver never exceeds `max_window`.

use std::collections::HashMap;

use bytes::Bytes;

use crate::control::{
    self, ChannelId, ChannelPath, ErrorCode, IncomingPath, Message, Name, OpenedPath, RequestId,
    TransportKind,
};
use crate::keys::PublicKey;
use crate::mux::MuxEvent;
use crate::time::Instant;

use super::control::error;
use super::policy::any_matches;
use super::{Broker, ConnId, DirectPlan, PairEnd, PairId, PendingOpen, Timer};

type End = (ConnId, ChannelId);

struct RouteEnd {
    peer: End,
    /// The key of this end's connection: charged for the channel, and for
    /// its reservations (the opener's both windows, this end's `extra`).
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
    /// passed on: reserved from `key` (see `memory`).
    extra: u64,
}

/// A route just removed.
struct Unlinked {
    /// The opener's key, then the target's (for the channel counts).
    keys: [PublicKey; 2],
    peer: End,
    /// The removed end's key with the credit beyond the initial window it
    /// held, then its peer's (unlike `keys`, not by role).
    extra: [(PublicKey, u64); 2],
}

/// Both ends of every relayed channel.
#[derive(Default)]
pub(super) struct Routes {
    ends: HashMap<End, RouteEnd>,
}

impl Routes {
    fn link(&mut self, (opener, o_key): (End, PublicKey), (target, t_key): (End, PublicKey)) {
        let end = |peer, key, opener| RouteEnd {
            peer,
            key,
            held: 0,
            closed: false,
            dial_offered: false,
            opener,
            extra: 0,
        };
        self.ends.insert(opener, end(target, o_key, true));
        self.ends.insert(target, end(opener, t_key, false));
    }

    fn peer(&self, end: End) -> Option<End> {
        self.ends.get(&end).map(|e| e.peer)
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
            extra: [(this.key, this.extra), (peer.key, peer.extra)],
        })
    }

    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }
}

/// The mux tag of a frame that carries a socketpair end.
fn pair_tag(pair: PairId, end: PairEnd) -> u64 {
    pair << 1 | u64::from(end == PairEnd::Target)
}

pub(super) fn decode_pair_tag(tag: u64) -> (PairId, PairEnd) {
    let end = if tag & 1 == 1 {
        PairEnd::Target
    } else {
        PairEnd::Opener
    };
    (tag >> 1, end)
}

impl Broker {
    // ── opens ─────────────────────────────────────────────────────────

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_open(
        &mut self,
        now: Instant,
        conn: ConnId,
        request: RequestId,
        channel: ChannelId,
        direct: bool,
        name: Name,
        protocol: String,
        metadata: Bytes,
    ) {
        let c = self.conns.get_mut(&conn).expect("handling its message");
        let key = c.key.expect("ready connections are authenticated");
        // The id is the opener's to use up, whatever the answer.
        if let Err(e) = c.wire.as_mut().expect("ready").mux.open_remote(channel) {
            return self.close(now, conn, ErrorCode::ProtocolViolation, e.to_string());
        }
        let may_open = any_matches(&c.rights.open, &name);
        let limits = &self.config.limits;
        let usage = self.key_usage(&key);
        let refusal = if !may_open {
            Some((
                ErrorCode::NotPermitted,
                format!("{key} may not open channels to {name}"),
            ))
        } else if usage.channels + usage.pending_opens >= limits.max_channels_per_key {
            Some((
                ErrorCode::TooManyChannels,
                format!("{key} holds {} channels", usage.channels),
            ))
        } else if usage.pending_opens >= limits.max_pending_opens_per_key {
            let n = usage.pending_opens;
            Some((
                ErrorCode::TooManyPendingOpens,
                format!("{key} has {n} unanswered opens"),
            ))
        } else {
            None
        };
        if let Some((code, message)) = refusal {
            return self.refuse_open(conn, channel, request, code, message);
        }
        let Some(target) = self.registry.owner(&name).copied() else {
            let message = format!("nobody has the name {name}");
            return self.refuse_open(conn, channel, request, ErrorCode::NoSuchName, message);
        };
        let target_usage = self.key_usage(&target.key);
        let ids_left = self.conns[&target.conn]
            .wire
            .as_ref()
            .is_some_and(|w| w.mux.can_open_local());
        if target_usage.channels + target_usage.pending_incoming >= limits.max_channels_per_key
            || !ids_left
        {
            let message = format!("{name} holds as many channels as it may");
            return self.refuse_open(conn, channel, request, ErrorCode::TooManyChannels, message);
        }
        let between = self.shares.between(key, target.key);
        if between >= limits.max_channels_between_keys {
            let message = format!(
                "{key} holds {between} channels with {name}, the most one key may hold with another"
            );
            return self.refuse_open(conn, channel, request, ErrorCode::TooManyChannels, message);
        }
        if let Err(refusal) = self.bytes.check(&key, self.open_cost()) {
            let message = format!("{key} may not open another channel: {refusal}");
            return self.refuse_open(conn, channel, request, ErrorCode::TooManyBytes, message);
        }

        let plan = self.plan(conn, target.conn, direct);
        let incoming = Message::Incoming {
            channel: 0, // the length does not depend on it; set below
            from_name: self.registry.name_of(conn).cloned(),
            from_key: key,
            protocol,
            metadata,
            path: match &plan {
                DirectPlan::Relay => IncomingPath::Relay,
                DirectPlan::SocketPair => IncomingPath::AwaitPath,
                DirectPlan::Dial { token, .. } => IncomingPath::ExpectDial { token: *token },
            },
        };
        // Traffic the target did not ask for: refused to the sender if the
        // target is not keeping up with its control messages.
        if !self.has_room(target.conn, control::encoded_len(&incoming)) {
            let message = format!("{name} is not reading its messages");
            return self.refuse_open(conn, channel, request, ErrorCode::PeerBusy, message);
        }
        let t = self
            .conns
            .get_mut(&target.conn)
            .expect("registry holds live connections");
        let target_channel = t
            .wire
            .as_mut()
            .expect("registered means ready")
            .mux
            .open_local();
        t.opens_in.insert(target_channel);
        let Message::Incoming {
            from_name,
            from_key,
            protocol,
            metadata,
            path,
            ..
        } = incoming
        else {
            unreachable!("built above")
        };
        let incoming = Message::Incoming {
            channel: target_channel,
            from_name,
            from_key,
            protocol,
            metadata,
            path,
        };
        self.send(target.conn, &incoming);

        let deadline = now + self.config.limits.open_timeout;
        let end = (target.conn, target_channel);
        self.pending.insert(
            end,
            PendingOpen {
                opener: conn,
                opener_channel: channel,
                request,
                opener_key: key,
                target_key: target.key,
                deadline,
                plan,
            },
        );
        self.timers.insert((deadline, Timer::Open(end.0, end.1)));
        self.conns
            .get_mut(&conn)
            .expect("still here")
            .opens_out
            .insert(end);
        self.usage.entry(key).or_default().pending_opens += 1;
        self.usage.entry(target.key).or_default().pending_incoming += 1;
        self.hold_channel(key, target.key);
    }

    /// Both initial windows: what opening a channel reserves.
    fn open_cost(&self) -> u64 {
        2 * u64::from(self.config.limits.initial_window)
    }

    /// A channel between two keys begins a stage (waiting for its answer,
    /// for its socketpair, or relayed): its share and its bytes are counted.
    /// Every stage that begins ends in [`Broker::release_channel`].
    fn hold_channel(&mut self, opener: PublicKey, target: PublicKey) {
        self.shares.add(opener, target);
        self.bytes.force(opener, self.open_cost());
    }

    fn release_channel(&mut self, opener: PublicKey, target: PublicKey) {
        self.shares.remove(opener, target);
        self.bytes.release(opener, self.open_cost());
    }

    /// How a channel between these two can go.
    fn plan(&mut self, opener: ConnId, target: ConnId, direct: bool) -> DirectPlan {
        if !direct {
            return DirectPlan::Relay;
        }
        let plain_unix = |c: &super::Connection| {
            c.transport == TransportKind::Unix && c.wire.as_ref().is_some_and(|w| !w.is_boxed())
        };
        let (o, t) = (&self.conns[&opener], &self.conns[&target]);
        if self.config.fd_passing && plain_unix(o) && plain_unix(t) {
            return DirectPlan::SocketPair;
        }
        match t.direct_addr.clone() {
            Some(addr) => {
                let mut token = [0u8; 32];
                self.rng.fill_bytes(&mut token);
                DirectPlan::Dial { addr, token }
            }
            None => DirectPlan::Relay,
        }
    }

    fn refuse_open(
        &mut self,
        conn: ConnId,
        channel: ChannelId,
        request: RequestId,
        code: ErrorCode,
        message: String,
    ) {
        if let Some(wire) = self.conns.get_mut(&conn).and_then(|c| c.wire.as_mut()) {
            wire.mux.forget(channel);
        }
        self.refuse(conn, request, code, message);
    }

    /// Takes the pending open at a target end out of every index.
    fn take_pending(&mut self, end: End) -> Option<PendingOpen> {
        let open = self.pending.remove(&end)?;
        self.timers
            .remove(&(open.deadline, Timer::Open(end.0, end.1)));
        if let Some(opener) = self.conns.get_mut(&open.opener) {
            opener.opens_out.remove(&end);
        }
        if let Some(target) = self.conns.get_mut(&end.0) {
            target.opens_in.remove(&end.1);
        }
        self.release_channel(open.opener_key, open.target_key);
        for (key, incoming) in [(open.opener_key, false), (open.target_key, true)] {
            let usage = self.usage.entry(key).or_default();
            match incoming {
                false => usage.pending_opens -= 1,
                true => usage.pending_incoming -= 1,
            }
            self.forget_key_if_idle(&key);
        }
        Some(open)
    }

    /// An answer for a channel the broker has no open for: late (fine) or
    /// never offered (a violation).
    fn unknown_answer(&mut self, now: Instant, conn: ConnId, channel: ChannelId) {
        let offered = self
            .conns
            .get(&conn)
            .and_then(|c| c.wire.as_ref())
            .is_some_and(|w| channel % 2 == 0 && w.mux.was_allocated(channel));
        if !offered {
            let reason = format!("an answer for channel {channel}, which was never offered");
            self.close(now, conn, ErrorCode::ProtocolViolation, reason);
        }
    }

    pub(super) fn on_accept(&mut self, now: Instant, conn: ConnId, channel: ChannelId) {
        let Some(open) = self.take_pending((conn, channel)) else {
            return self.unknown_answer(now, conn, channel);
        };
        if open.plan == DirectPlan::SocketPair {
            let pair = self.next_pair;
            self.next_pair += 1;
            let opener = open.opener;
            let ends = ((opener, open.opener_key), (conn, open.target_key));
            if let Err(refusal) = self.fds.reserve(pair, ends.0, ends.1) {
                // Relayed instead: the channel works all the same.
                let key = Some(open.opener_key);
                self.log(
                    opener,
                    key,
                    None,
                    format!("relaying, not a socketpair: {refusal}"),
                );
                return self.establish((conn, channel), open, true);
            }
            self.hold_channel(open.opener_key, open.target_key);
            self.pairs.insert(pair, (conn, channel, open));
            self.events.push_back(super::Event::CreateSocketPair {
                pair,
                opener,
                target: conn,
            });
        } else {
            self.establish((conn, channel), open, false);
        }
    }

    /// Links both ends and tells the opener (and, after a failed
    /// socketpair, the target) to use the relay.
    fn establish(&mut self, target_end: End, open: PendingOpen, tell_target: bool) {
        let opener_end = (open.opener, open.opener_channel);
        self.routes
            .link((opener_end, open.opener_key), (target_end, open.target_key));
        self.hold_channel(open.opener_key, open.target_key);
        for (end, key) in [(opener_end, open.opener_key), (target_end, open.target_key)] {
            if let Some(c) = self.conns.get_mut(&end.0) {
                c.routes.insert(end.1);
            }
            self.usage.entry(key).or_default().channels += 1;
        }
        let path = match open.plan {
            DirectPlan::Dial { addr, token } => {
                if let Some(end) = self.routes.ends.get_mut(&opener_end) {
                    end.dial_offered = true;
                }
                OpenedPath::Dial { addr, token }
            }
            DirectPlan::Relay | DirectPlan::SocketPair => OpenedPath::Relay,
        };
        let opened = Message::Opened {
            request: open.request,
            channel: open.opener_channel,
            peer: open.target_key,
            path,
        };
        self.reply(open.opener, &opened);
        if tell_target {
            let path = Message::ChannelPath {
                channel: target_end.1,
                path: ChannelPath::Relay,
            };
            self.reply(target_end.0, &path);
        }
    }

    pub(super) fn on_reject(
        &mut self,
        now: Instant,
        conn: ConnId,
        channel: ChannelId,
        reason: String,
    ) {
        let Some(open) = self.take_pending((conn, channel)) else {
            return self.unknown_answer(now, conn, channel);
        };
        self.forget_channel(conn, channel);
        self.forget_channel(open.opener, open.opener_channel);
        let message = format!("rejected: {reason}");
        self.log(
            open.opener,
            Some(open.opener_key),
            Some(ErrorCode::Rejected),
            message.clone(),
        );
        self.reply(
            open.opener,
            &error(open.request, ErrorCode::Rejected, reason),
        );
    }

    pub(super) fn on_open_timeout(&mut self, _now: Instant, target: ConnId, channel: ChannelId) {
        let Some(open) = self.take_pending((target, channel)) else {
            return;
        };
        let message = format!(
            "{} did not answer within {:?}",
            open.target_key, self.config.limits.open_timeout
        );
        self.reset_channel(
            target,
            channel,
            ErrorCode::OpenTimeout,
            "not answered in time",
        );
        self.forget_channel(open.opener, open.opener_channel);
        self.log(
            open.opener,
            Some(open.opener_key),
            Some(ErrorCode::OpenTimeout),
            message.clone(),
        );
        self.reply(
            open.opener,
            &error(open.request, ErrorCode::OpenTimeout, message),
        );
    }

    /// The opener could not dial: the target is told to use the relay.
    /// Counts once, and only for a channel that was offered for dialing.
    pub(super) fn on_direct_failed(&mut self, conn: ConnId, channel: ChannelId) {
        let Some(route) = self.routes.ends.get_mut(&(conn, channel)) else {
            return;
        };
        if !std::mem::take(&mut route.dial_offered) {
            return;
        }
        let (target, target_channel) = route.peer;
        let path = Message::ChannelPath {
            channel: target_channel,
            path: ChannelPath::Relay,
        };
        self.reply(target, &path);
    }

    pub(super) fn on_socketpair(&mut self, _now: Instant, pair: PairId, ok: bool) -> bool {
        let Some((target, channel, open)) = self.pairs.remove(&pair) else {
            return false; // one side left meanwhile; the runtime closes both ends
        };
        self.release_channel(open.opener_key, open.target_key);
        if !ok {
            self.fds.release_pair(pair);
            self.establish((target, channel), open, true);
            return false;
        }
        self.forget_channel(open.opener, open.opener_channel);
        self.forget_channel(target, channel);
        let opened = Message::Opened {
            request: open.request,
            channel: open.opener_channel,
            peer: open.target_key,
            path: OpenedPath::SocketPair,
        };
        self.send_tagged(open.opener, &opened, Some(pair_tag(pair, PairEnd::Opener)));
        self.check_blame(open.opener);
        let path = Message::ChannelPath {
            channel,
            path: ChannelPath::SocketPair,
        };
        self.send_tagged(target, &path, Some(pair_tag(pair, PairEnd::Target)));
        self.check_blame(target);
        true
    }

    // ── when one side goes away ───────────────────────────────────────

    /// The opener left before the target answered: the offer is void.
    pub(super) fn cancel_open_by_opener(&mut self, target: ConnId, channel: ChannelId) {
        if self.take_pending((target, channel)).is_some() {
            self.reset_channel(target, channel, ErrorCode::PeerGone, "the opener went away");
        }
    }

    /// The target left before answering: the opener is told.
    pub(super) fn cancel_open_by_target(&mut self, target: ConnId, channel: ChannelId) {
        if let Some(open) = self.take_pending((target, channel)) {
            self.forget_channel(open.opener, open.opener_channel);
            let message = format!("{} went away before answering", open.target_key);
            self.reply(
                open.opener,
                &error(open.request, ErrorCode::PeerGone, message),
            );
        }
    }

    /// Socketpairs still being made for `conn`: the other side is told.
    pub(super) fn cancel_pairs_of(&mut self, conn: ConnId) {
        let gone: Vec<PairId> = self
            .pairs
            .iter()
            .filter(|(_, (target, _, open))| *target == conn || open.opener == conn)
            .map(|(pair, _)| *pair)
            .collect();
        for pair in gone {
            let (target, channel, open) = self.pairs.remove(&pair).expect("listed");
            self.fds.release_pair(pair);
            self.release_channel(open.opener_key, open.target_key);
            if target == conn {
                self.forget_channel(open.opener, open.opener_channel);
                let message = format!("{} went away", open.target_key);
                self.reply(
                    open.opener,
                    &error(open.request, ErrorCode::PeerGone, message),
                );
            } else {
                self.reset_channel(target, channel, ErrorCode::PeerGone, "the opener went away");
            }
        }
    }

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
        for (key, extra) in unlinked.extra {
            self.bytes.release(key, extra);
        }
        for key in unlinked.keys {
            if let Some(usage) = self.usage.get_mut(&key) {
                usage.channels -= 1;
            }
            self.forget_key_if_idle(&key);
        }
    }

    fn reset_channel(&mut self, conn: ConnId, channel: ChannelId, code: ErrorCode, reason: &str) {
        if let Some(wire) = self.conns.get_mut(&conn).and_then(|c| c.wire.as_mut()) {
            wire.mux.reset(channel, code, reason);
            self.wake(conn);
        }
    }

    fn forget_channel(&mut self, conn: ConnId, channel: ChannelId) {
        if let Some(wire) = self.conns.get_mut(&conn).and_then(|c| c.wire.as_mut()) {
            wire.mux.forget(channel);
        }
    }

    // ── data, FIN, reset and credit between the ends ──────────────────

    pub(super) fn on_channel_event(&mut self, now: Instant, conn: ConnId, event: MuxEvent) {
        let (channel, kind) = match &event {
            MuxEvent::Data { channel, .. } => (*channel, "data"),
            MuxEvent::Fin { channel } => (*channel, "FIN"),
            MuxEvent::Reset { channel, .. } => (*channel, "RESET"),
            MuxEvent::Credit { channel, .. } => (*channel, "WINDOW"),
            MuxEvent::Closed { channel } => (*channel, "close"),
            _ => return,
        };
        let end = (conn, channel);
        let Some(peer) = self.routes.peer(end) else {
            return self.on_unrouted(now, conn, channel, kind, event);
        };
        match event {
            MuxEvent::Data { payload, .. } => {
                // Copied: a slice would keep its whole read buffer alive for
                // as long as the receiver does not read, beyond what the
                // reservations cover.
                if let Some(wire) = self.conns.get_mut(&peer.0).and_then(|c| c.wire.as_mut()) {
                    // Only fails if the peer's end is already gone.
                    let _ = wire.mux.send_copy(peer.1, &payload);
                }
                self.wake(peer.0);
            }
            MuxEvent::Fin { .. } => {
                if let Some(wire) = self.conns.get_mut(&peer.0).and_then(|c| c.wire.as_mut()) {
                    let _ = wire.mux.finish(peer.1);
                }
                self.wake(peer.0);
            }
            MuxEvent::Reset { code, reason, .. } => {
                if let Some(unlinked) = self.routes.unlink(end) {
                    self.release_route(conn, channel, unlinked);
                }
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
        event: MuxEvent,
    ) {
        let reason = match event {
            MuxEvent::Credit { .. } | MuxEvent::Closed { .. } => return,
            MuxEvent::Reset { reason, .. } => reason,
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

    /// Passes held credit from `end` (the receiver) to its peer (the sender)
    /// as far as the bounds allow: what the sender may still send plus what
    /// the broker holds for the receiver stays within `max_window`, and
    /// beyond the initial window within what the receiver's key may
    /// reserve. What cannot pass waits for output to drain.
    fn pass_credit(&mut self, end: End) {
        let Some(route) = self.routes.ends.get(&end) else {
            return;
        };
        let (peer, held, key, extra) = (route.peer, route.held, route.key, route.extra);
        let queued = self
            .conns
            .get(&end.0)
            .and_then(|c| c.wire.as_ref())
            .map_or(0, |w| w.mux.queued(end.1)) as u64;
        let Some(sender) = self.conns.get_mut(&peer.0).and_then(|c| c.wire.as_mut()) else {
            return;
        };
        let finished = sender.mux.recv_finished(peer.1);
        let in_flight = match finished {
            // Nothing is owed to a sender that finished.
            true => queued,
            false => u64::from(sender.mux.recv_credit(peer.1)) + queued,
        };
        let initial = u64::from(self.config.limits.initial_window);
        let max_window = u64::from(self.config.limits.max_window);
        let (key_free, total_free) = self.bytes.free(&key);
        let ceiling = max_window.min(initial + extra + key_free.min(total_free));
        let pass = match finished {
            true => 0,
            false => u64::from(held).min(ceiling.saturating_sub(in_flight)),
        };
        if pass > 0 {
            let sender = self.conns.get_mut(&peer.0).and_then(|c| c.wire.as_mut());
            sender.expect("found above").mux.grant(peer.1, pass as u32);
            self.wake(peer.0);
            self.check_blame(peer.0);
        }
        // The reservation follows the exposure: up as credit passes, down
        // as the queue has drained since.
        let now_extra = (in_flight + pass).saturating_sub(initial);
        match now_extra > extra {
            true => self.bytes.force(key, now_extra - extra),
            false => self.bytes.release(key, extra - now_extra),
        }
        let left = if finished { 0 } else { held - pass as u32 };
        if let Some(route) = self.routes.ends.get_mut(&end) {
            route.held = left;
            route.extra = now_extra;
        }
        if let Some(c) = self.conns.get_mut(&end.0) {
            match left {
                0 => c.credit_waiting.remove(&end.1),
                _ => c.credit_waiting.insert(end.1),
            };
        }
    }

    /// Output drained on `conn`: credit held for its channels may pass now.
    pub(super) fn retry_credit(&mut self, conn: ConnId) {
        let waiting: Vec<ChannelId> = self.conns[&conn].credit_waiting.iter().copied().collect();
        for channel in waiting {
            self.pass_credit((conn, channel));
        }
    }
}

impl Broker {
    /// Checks the byte books against the queues themselves: for every
    /// direction of every relayed channel, what the sender may still send
    /// plus what is queued for the receiver (read from the muxes) is within
    /// the initial window and the credit its receiver's key reserved; and
    /// every key's reservation is exactly its channels' initial windows and
    /// the credit it granted. For tests, the simulation and the fuzz targets.
    pub fn check_byte_books(&self) -> Result<(), String> {
        let initial = u64::from(self.config.limits.initial_window);
        let mut expected: HashMap<PublicKey, u64> = HashMap::new();
        let stages = self
            .pending
            .values()
            .chain(self.pairs.values().map(|p| &p.2));
        for open in stages {
            *expected.entry(open.opener_key).or_default() += self.open_cost();
        }
        for (end, route) in &self.routes.ends {
            if route.opener {
                *expected.entry(route.key).or_default() += self.open_cost();
            }
            *expected.entry(route.key).or_default() += route.extra;
            let mux = |conn: ConnId| self.conns.get(&conn).and_then(|c| c.wire.as_ref());
            let queued = mux(end.0).map_or(0, |w| w.mux.queued(end.1)) as u64;
            let owed = mux(route.peer.0)
                .filter(|w| !w.mux.recv_finished(route.peer.1))
                .map_or(0, |w| u64::from(w.mux.recv_credit(route.peer.1)));
            if queued + owed > initial + route.extra {
                return Err(format!(
                    "channel {end:?}: {queued} queued + {owed} owed > {initial} + {} reserved",
                    route.extra
                ));
            }
        }
        expected.retain(|_, n| *n > 0);
        for (key, n) in &expected {
            if self.bytes.held_by(key) != *n {
                return Err(format!(
                    "{key}: {} reserved, {n} held",
                    self.bytes.held_by(key)
                ));
            }
        }
        if self.bytes.keys() != expected.len() {
            return Err("a key with a reservation and nothing held".into());
        }
        Ok(())
    }
}
