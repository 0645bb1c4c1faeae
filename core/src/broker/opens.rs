//! Opens and their answers: the checks an Open passes (PROTOCOL §5.6), the
//! pending table, accept, reject and the open timeout, and the mediation of
//! direct channels (socketpairs, dial offers). Once accepted, a channel is
//! the relay's (`relay.rs`).

use bytes::Bytes;

use crate::control::{
    self, ChannelId, ChannelPath, ErrorCode, IncomingPath, Message, MonitorKind, Name, OpenedPath,
    RequestId, TransportKind,
};
use crate::keys::PublicKey;
use crate::time::Instant;

use super::control::error;
use super::monitor::Seen;
use super::policy::any_matches;
use super::relay::End;
use super::{
    printable, Cause, ConnId, DirectPlan, Hub, Outcome, PairEnd, PairId, PendingOpen, Timer,
};

/// Who opens a channel: a connection, its id for the channel, its key, and
/// the request to answer (none for a legacy connection).
pub(super) struct Opener {
    pub(super) conn: ConnId,
    pub(super) channel: ChannelId,
    pub(super) key: PublicKey,
    pub(super) request: Option<RequestId>,
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

impl Hub {
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
        let opened = c
            .port
            .as_ref()
            .expect("ready")
            .lock()
            .mux
            .open_remote(channel);
        if let Err(e) = opened {
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
        let opener = Opener {
            conn,
            channel,
            key,
            request: Some(request),
        };
        let timeout = self.config.limits.open_timeout;
        let offered = self.offer(now, opener, &name, protocol, metadata, direct, timeout);
        if let Err((code, message)) = offered {
            self.refuse_open(conn, channel, request, code, message);
        }
    }

    /// Offers a channel from `opener` to the owner of `name` as an
    /// Incoming, if the target and the budgets have room: the open then
    /// waits for the target's answer until `timeout`. Refused, why (the
    /// opener's channel is the caller's to forget).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn offer(
        &mut self,
        now: Instant,
        opener: Opener,
        name: &Name,
        protocol: String,
        metadata: Bytes,
        direct: bool,
        timeout: std::time::Duration,
    ) -> Result<(), (ErrorCode, String)> {
        let Opener { conn, key, .. } = opener;
        let limits = &self.config.limits;
        let Some(target) = self.registry.owner(name).copied() else {
            let message = format!("nobody has the name {name}");
            return Err((ErrorCode::NoSuchName, message));
        };
        let target_usage = self.key_usage(&target.key);
        let ids_left = self
            .lock_port(target.conn)
            .is_some_and(|port| port.mux.can_open_local());
        if target_usage.channels + target_usage.pending_incoming >= limits.max_channels_per_key
            || !ids_left
        {
            let message = format!("{name} holds as many channels as it may");
            return Err((ErrorCode::TooManyChannels, message));
        }
        let between = self.shares.between(key, target.key);
        if between >= limits.max_channels_between_keys {
            let message = format!(
                "{key} holds {between} channels with {name}, the most one key may hold with another"
            );
            return Err((ErrorCode::TooManyChannels, message));
        }
        if let Err(refusal) = self.bytes.check_open(&key, self.open_cost()) {
            let message = format!("{key} may not open another channel: {refusal}");
            return Err((ErrorCode::TooManyBytes, message));
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
            let message =
                format!("{name} is not reading its messages: its control queue is half full");
            return Err((ErrorCode::PeerBusy, message));
        }
        let t = self
            .conns
            .get_mut(&target.conn)
            .expect("registry holds live connections");
        let target_channel = t
            .port
            .as_ref()
            .expect("registered means ready")
            .lock()
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

        let deadline = now + timeout;
        let end = (target.conn, target_channel);
        let seen = Seen {
            serial: self.next_channel_serial(),
            since: now,
            name: Some(name.clone()),
        };
        let detail = format!("{key} opens {name}, held by {}", target.key);
        self.observe(seen.event(MonitorKind::Open, key, target.key, "", detail));
        self.pending.insert(
            end,
            PendingOpen {
                seen,
                since: now,
                opener: conn,
                opener_channel: opener.channel,
                request: opener.request,
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
        Ok(())
    }

    /// Tells the opener of `open` it was refused: an error for its
    /// request, or, on a legacy connection, the socket closed with nothing
    /// more sent.
    /// Counted and logged as a refusal of the opener's key.
    pub(super) fn refuse_opener(&mut self, open: &PendingOpen, code: ErrorCode, message: String) {
        let target = open.target_key;
        let label = Cause::Code(code).label();
        let detail = printable(message.clone());
        let event = open
            .seen
            .event(MonitorKind::Reject, open.opener_key, target, label, detail);
        self.observe(event);
        match open.request {
            Some(request) => {
                let line = format!("open to {target} refused: {message}");
                let key = Some(open.opener_key);
                self.record(open.opener, key, Outcome::Refusal, Cause::Code(code), line);
                self.reply(open.opener, &error(request, code, message));
            }
            None => {
                let now = self.last_now;
                let line = format!("offer to {target} refused: {message}");
                self.drop_connection(now, open.opener, None, Cause::Code(code), line);
            }
        }
    }

    /// A socketpair that was not made: the channel is relayed.
    fn observe_fallback(&mut self, open: &PendingOpen, detail: String) {
        let (key, peer) = (open.opener_key, open.target_key);
        let event = open.seen.event(
            MonitorKind::Fallback,
            key,
            peer,
            "socketpair_failed",
            detail,
        );
        self.observe(event);
    }

    /// Both initial windows: what opening a channel reserves.
    pub(super) fn open_cost(&self) -> u64 {
        2 * u64::from(self.config.limits.initial_window)
    }

    /// A channel between two keys begins a stage (waiting for its answer,
    /// for its socketpair, or relayed): its share and its bytes are counted.
    /// Every stage that begins ends in [`Hub::release_channel`].
    fn hold_channel(&mut self, opener: PublicKey, target: PublicKey) {
        self.shares.add(opener, target);
        self.bytes.reserve_open(opener, self.open_cost());
    }

    pub(super) fn release_channel(&mut self, opener: PublicKey, target: PublicKey) {
        self.shares.remove(opener, target);
        self.bytes.release_open(opener, self.open_cost());
    }

    /// How a channel between these two can go.
    pub(super) fn plan(&mut self, opener: ConnId, target: ConnId, direct: bool) -> DirectPlan {
        if !direct {
            return DirectPlan::Relay;
        }
        let plain_unix = |c: &super::Connection| c.transport == TransportKind::Unix && !c.boxed;
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
        if let Some(mut port) = self.lock_port(conn) {
            port.mux.forget(channel);
        }
        self.refuse(conn, request, code, message);
    }

    /// Takes the pending open at a target end out of every index.
    pub(super) fn take_pending(&mut self, end: End) -> Option<PendingOpen> {
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
            .and_then(|c| c.port.as_ref())
            .is_some_and(|port| channel % 2 == 0 && port.lock().mux.was_allocated(channel));
        if !offered {
            let reason = format!("an answer for channel {channel}, which was never offered");
            self.close(now, conn, ErrorCode::ProtocolViolation, reason);
        }
    }

    pub(super) fn on_accept(&mut self, now: Instant, conn: ConnId, channel: ChannelId) {
        let Some(open) = self.take_pending((conn, channel)) else {
            return self.unknown_answer(now, conn, channel);
        };
        let path = match open.plan {
            DirectPlan::Relay => "relay",
            DirectPlan::SocketPair => "socketpair",
            DirectPlan::Dial { .. } => "dial",
        };
        let detail = format!("{} accepted (path: {path})", open.target_key);
        let event = open.seen.event(
            MonitorKind::Accept,
            open.opener_key,
            open.target_key,
            path,
            detail,
        );
        self.observe(event);
        if open.plan == DirectPlan::SocketPair {
            let pair = self.next_pair;
            self.next_pair += 1;
            let opener = open.opener;
            let ends = ((opener, open.opener_key), (conn, open.target_key));
            if let Err(refusal) = self.fds.reserve(pair, ends.0, ends.1) {
                // Relayed instead: the channel works all the same.
                let key = Some(open.opener_key);
                let reason = format!("relaying, not a socketpair: {refusal}");
                self.observe_fallback(&open, reason.clone());
                self.log(opener, key, None, reason);
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
        let seen = open.seen.clone();
        self.link_route(
            (opener_end, open.opener_key),
            (target_end, open.target_key),
            seen,
        );
        self.hold_channel(open.opener_key, open.target_key);
        for key in [open.opener_key, open.target_key] {
            self.usage.entry(key).or_default().channels += 1;
        }
        let path = match open.plan {
            DirectPlan::Dial { addr, token } => {
                self.offer_dial(opener_end);
                let detail = format!(
                    "the opener dials {addr}: the broker sees nothing of the channel from here on, \
                     unless it falls back"
                );
                let (key, peer) = (open.opener_key, open.target_key);
                let event = open
                    .seen
                    .event(MonitorKind::Direct, key, peer, "dial", detail);
                self.observe(event);
                OpenedPath::Dial { addr, token }
            }
            DirectPlan::Relay | DirectPlan::SocketPair => OpenedPath::Relay,
        };
        match open.request {
            Some(request) => {
                let opened = Message::Opened {
                    request,
                    channel: open.opener_channel,
                    peer: open.target_key,
                    path,
                };
                self.reply(open.opener, &opened);
            }
            // A legacy client: message 4 goes now.
            None => self.legacy_accepted(open.opener),
        }
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
        self.refuse_opener(&open, ErrorCode::Rejected, reason);
    }

    pub(super) fn on_open_timeout(&mut self, _now: Instant, target: ConnId, channel: ChannelId) {
        let Some(open) = self.take_pending((target, channel)) else {
            return;
        };
        let waited = open.deadline.saturating_duration_since(open.since);
        let message = format!("{} did not answer within {waited:?}", open.target_key);
        self.reset_channel(
            target,
            channel,
            ErrorCode::OpenTimeout,
            "not answered in time",
        );
        self.forget_channel(open.opener, open.opener_channel);
        self.refuse_opener(&open, ErrorCode::OpenTimeout, message);
    }

    /// The opener could not dial: the target is told to use the relay.
    /// Counts once, and only for a channel that was offered for dialing.
    pub(super) fn on_direct_failed(&mut self, conn: ConnId, channel: ChannelId) {
        let Some((target, target_channel)) = self.take_dial_offer((conn, channel)) else {
            return;
        };
        if let Some(seen) = self.with_end((conn, channel), |end| {
            (end.seen.clone(), end.key, end.peer_key)
        }) {
            let (seen, key, peer) = seen;
            let detail = "the opener could not dial the target: relaying".to_owned();
            self.observe(seen.event(MonitorKind::Fallback, key, peer, "dial_failed", detail));
        }
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
            self.observe_fallback(&open, "the socketpair could not be made: relaying".into());
            self.establish((target, channel), open, true);
            return false;
        }
        let detail = "a socketpair: the broker sees nothing of the channel from here on".into();
        let (key, peer) = (open.opener_key, open.target_key);
        let event = open
            .seen
            .event(MonitorKind::Direct, key, peer, "socketpair", detail);
        self.observe(event);
        self.forget_channel(open.opener, open.opener_channel);
        self.forget_channel(target, channel);
        let opened = Message::Opened {
            request: open
                .request
                .expect("a socketpair's opener speaks the control protocol"),
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
        if let Some(open) = self.take_pending((target, channel)) {
            self.observe_opener_gone(&open);
            self.reset_channel(target, channel, ErrorCode::PeerGone, "the opener went away");
        }
    }

    /// For monitors: an open that ends because its opener left.
    fn observe_opener_gone(&mut self, open: &PendingOpen) {
        let (key, peer) = (open.opener_key, open.target_key);
        let detail = "the opener went away before the channel was made".to_owned();
        let label = Cause::Code(ErrorCode::PeerGone).label();
        self.observe(
            open.seen
                .event(MonitorKind::Reject, key, peer, label, detail),
        );
    }

    /// The target left before answering: the opener is told.
    pub(super) fn cancel_open_by_target(&mut self, target: ConnId, channel: ChannelId) {
        if let Some(open) = self.take_pending((target, channel)) {
            self.forget_channel(open.opener, open.opener_channel);
            let message = format!("{} went away before answering", open.target_key);
            self.refuse_opener(&open, ErrorCode::PeerGone, message);
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
                self.refuse_opener(&open, ErrorCode::PeerGone, message);
            } else {
                self.observe_opener_gone(&open);
                self.reset_channel(target, channel, ErrorCode::PeerGone, "the opener went away");
            }
        }
    }
}
