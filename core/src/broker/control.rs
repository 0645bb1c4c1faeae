//! The broker's side of the control protocol: hello, register, list,
//! watch, stats. Opens are in `opens.rs`, relayed channels in `relay.rs`.

use bytes::BytesMut;

use std::collections::BTreeMap;

use crate::control::{
    self, ErrorCode, Features, KeyStats, Member, Message, NameStats, Presence, RequestId, UidStats,
    Usage, FEATURES, FEATURE_STATS_COUNTERS, FEATURE_STATS_UIDS, FEATURE_WATCH_RESYNC,
    KEY_STATS_LEN, MAX_MESSAGE, UID_STATS_LEN, VERSION,
};
use crate::time::Instant;

use super::connection::{Connection, Stage, Watch};
use super::policy::any_matches;
use super::rates::RateRefusal;
use super::registry::{Holder, RegisterError, Registered};
use super::{Cause, ConnId, Hub, Outcome};

/// Room for the fixed part of a page message around its entries.
const PAGE_BUDGET: usize = MAX_MESSAGE - 64;

impl Hub {
    pub(super) fn on_control_bytes(&mut self, now: Instant, conn: ConnId, bytes: &[u8]) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.control.push(bytes);
        loop {
            // A connection over its bound is closed at the end of this call:
            // nothing more it asks for is worked on or queued.
            if self.slow.contains(&conn) {
                return;
            }
            let Some(c) = self.conns.get_mut(&conn) else {
                return;
            };
            match c.control.next() {
                Ok(Some(message)) => self.on_message(now, conn, message),
                Ok(None) => return,
                Err(e) => {
                    let reason = format!("malformed control message: {e}");
                    return self.close(now, conn, ErrorCode::ProtocolViolation, reason);
                }
            }
        }
    }

    fn on_message(&mut self, now: Instant, conn: ConnId, message: Message) {
        let stage_ready = matches!(self.conns[&conn].stage, Stage::Ready);
        match (stage_ready, message) {
            (
                false,
                Message::ClientHello {
                    min_version,
                    max_version,
                    features,
                },
            ) => self.on_hello(now, conn, min_version, max_version, features),
            (false, other) => self.close(
                now,
                conn,
                ErrorCode::ProtocolViolation,
                format!("{} before hello", kind(&other)),
            ),
            (
                true,
                Message::Register {
                    request,
                    name,
                    wait,
                    direct_addr,
                },
            ) => self.on_register(now, conn, request, name, wait, direct_addr),
            (true, Message::List { request }) => self.on_list(now, conn, request),
            (true, Message::Watch { request }) => self.on_watch(now, conn, request),
            (true, Message::Unwatch { request }) => {
                let c = self.conns.get_mut(&conn).expect("handling its message");
                let reply = match std::mem::replace(&mut c.watch, Watch::Off) {
                    Watch::Off => error(request, ErrorCode::WatchState, "not watching".into()),
                    Watch::Live | Watch::Behind { .. } => Message::Ok { request },
                };
                if let Some(port) = &c.port {
                    port.lock().resync_due = false;
                }
                self.watchers.remove(&conn);
                self.reply(conn, &reply);
            }
            (true, Message::Stats { request }) => self.on_stats(now, conn, request),
            (true, Message::Monitor { request, key, name }) => {
                self.on_monitor(conn, request, key, name)
            }
            (
                true,
                Message::Open {
                    request,
                    channel,
                    direct,
                    name,
                    protocol,
                    metadata,
                },
            ) => self.on_open(
                now, conn, request, channel, direct, name, protocol, metadata,
            ),
            (true, Message::Accept { channel }) => self.on_accept(now, conn, channel),
            (true, Message::Reject { channel, reason }) => {
                self.on_reject(now, conn, channel, reason)
            }
            (true, Message::DirectFailed { channel }) => self.on_direct_failed(conn, channel),
            (true, other) => self.close(
                now,
                conn,
                ErrorCode::ProtocolViolation,
                format!("{} is not a plugin's message here", kind(&other)),
            ),
        }
    }

    fn on_hello(
        &mut self,
        now: Instant,
        conn: ConnId,
        min_version: u16,
        max_version: u16,
        offered: Features,
    ) {
        if !(min_version..=max_version).contains(&VERSION) {
            let reason = format!(
                "the plugin speaks versions {min_version}..={max_version}, the broker {VERSION}"
            );
            return self.close(now, conn, ErrorCode::UnsupportedVersion, reason);
        }
        let idle = self.config.limits.idle_timeout;
        let features = offered & FEATURES;
        let hello = Message::BrokerHello {
            version: VERSION,
            features,
            transport: self.conns[&conn].transport,
            limits: self.config.limits.announced(),
        };
        let c = self.conns.get_mut(&conn).expect("handling its message");
        c.stage = Stage::Ready;
        c.features = features;
        c.since = now;
        self.set_deadline(conn, Some(now + idle));
        self.reply(conn, &hello);
    }

    fn on_register(
        &mut self,
        now: Instant,
        conn: ConnId,
        request: RequestId,
        name: control::Name,
        wait: bool,
        direct_addr: String,
    ) {
        let c = &self.conns[&conn];
        let key = c.key.expect("ready connections are authenticated");
        if !any_matches(&c.rights.register, &name) {
            let message = format!("{key} may not register {name}");
            return self.refuse(conn, request, ErrorCode::NotPermitted, message);
        }
        if !direct_addr.is_empty() && !is_tcp_address(&direct_addr) {
            let message = format!("direct address {direct_addr:?} is not tcp:HOST:PORT");
            return self.refuse(conn, request, ErrorCode::Malformed, message);
        }
        if !direct_addr.is_empty() && !c.rights.direct.iter().any(|p| p.matches_text(&direct_addr))
        {
            let message = format!("{key} may not tell openers to dial {direct_addr:?}");
            return self.refuse(conn, request, ErrorCode::NotPermitted, message);
        }
        let holder = Holder {
            conn,
            key,
            transport: c.transport,
            since: c.since,
        };
        let origin = c.origin;
        // Only a registration that will be made spends the allowance: a
        // refused one changes nothing anyone sees.
        let checked = self.registry.check(conn, &name, wait);
        let refusal = match checked {
            Ok(()) => self.registrations.take(now, origin.rate_source()).err(),
            Err(_) => None,
        };
        let refusal = refusal.map(|refused| match refused {
            RateRefusal::Source(per_s) => format!(
                "{} registered more than {per_s} names a second",
                origin.describe()
            ),
            RateRefusal::Network(per_s) => format!(
                "the IPv6 /48 of {} registered more than {per_s} names a second",
                origin.describe()
            ),
            RateRefusal::Everyone(per_s) => format!(
                "the broker takes at most {per_s} registrations a second, \
                 half of them from sources registering more than one a second"
            ),
        });
        if let Some(message) = refusal {
            return self.refuse(conn, request, ErrorCode::TooFast, message);
        }
        match checked.and_then(|()| self.registry.register(holder, &name, wait)) {
            Ok(registered) => {
                let c = self.conns.get_mut(&conn).expect("handling its message");
                c.direct_addr = (!direct_addr.is_empty()).then_some(direct_addr);
                let queued = registered == Registered::Queued;
                self.reply(conn, &Message::Registered { request, queued });
                if let Registered::Owner(presence) = registered {
                    self.announce(now, presence);
                }
            }
            Err(RegisterError::Taken) => {
                let owner = self.registry.owner(&name).map(|h| h.key);
                let message = match owner {
                    Some(owner) => format!("{name} is taken by {owner}"),
                    None => format!("{name} is taken"),
                };
                self.refuse(conn, request, ErrorCode::NameTaken, message);
            }
            Err(RegisterError::AlreadyRegistered) => {
                let message = "this connection already registered a name".into();
                self.refuse(conn, request, ErrorCode::AlreadyRegistered, message);
            }
        }
    }

    /// The current members, ready for a page.
    fn members(&self, now: Instant) -> Vec<Member> {
        self.registry
            .members()
            .map(|(name, holder)| Member {
                name: name.clone(),
                key: holder.key,
                transport: holder.transport,
                connected_ms: millis(now - holder.since),
            })
            .collect()
    }

    fn on_list(&mut self, now: Instant, conn: ConnId, request: RequestId) {
        if !self.conns[&conn].rights.list {
            return self.refuse(
                conn,
                request,
                ErrorCode::NotPermitted,
                "may not list".into(),
            );
        }
        let members = self.members(now);
        for (members, last) in pages(members, Member::encoded_len) {
            self.reply(
                conn,
                &Message::ListPage {
                    request,
                    last,
                    members,
                },
            );
        }
    }

    fn on_watch(&mut self, now: Instant, conn: ConnId, request: RequestId) {
        let c = &self.conns[&conn];
        if !c.rights.watch {
            return self.refuse(
                conn,
                request,
                ErrorCode::NotPermitted,
                "may not watch".into(),
            );
        }
        if c.watch != Watch::Off {
            return self.refuse(
                conn,
                request,
                ErrorCode::WatchState,
                "already watching".into(),
            );
        }
        let seq = self.registry.seq();
        let members = self.members(now);
        for (members, last) in pages(members, Member::encoded_len) {
            self.reply(
                conn,
                &Message::Snapshot {
                    request,
                    seq,
                    last,
                    members,
                },
            );
        }
        self.conns
            .get_mut(&conn)
            .expect("handling its message")
            .watch = Watch::Live;
        self.watchers.insert(conn);
    }

    /// Queues a change for one watcher. One that offered
    /// `FEATURE_WATCH_RESYNC` and has half its control-queue bound unread
    /// falls behind instead of being cut off for others' churn: its changes
    /// are dropped until it reads, then [`Hub::resync`] replaces them.
    fn queue_change(&mut self, conn: ConnId, seq: u64, encoded: &[u8]) {
        let backlog = self.config.limits.max_control_queue / 2;
        let queued = self.queued_control(conn);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        match c.watch {
            Watch::Off | Watch::Behind { .. } => {}
            Watch::Live if c.features & FEATURE_WATCH_RESYNC != 0 && queued > backlog => {
                c.watch = Watch::Behind { from_seq: seq };
                if let Some(port) = &c.port {
                    port.lock().resync_due = true;
                }
                let key = c.key;
                let message = format!(
                    "fell behind its watch ({queued} control bytes unread): changes from {seq} \
                     are dropped until it reads, then it gets a fresh snapshot"
                );
                self.log(conn, key, None, message);
            }
            Watch::Live => self.reply_encoded(conn, encoded),
        }
    }

    /// Sends a watcher that fell behind, now that it has read most of its
    /// queue, the registry as it is: it replaces the changes it missed.
    pub(super) fn resync(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Watch::Behind { from_seq } = c.watch else {
            return;
        };
        c.watch = Watch::Live;
        if let Some(port) = &c.port {
            port.lock().resync_due = false;
        }
        let key = c.key;
        let seq = self.registry.seq();
        let message = format!("watch resynchronised at {seq}: changes {from_seq}..={seq} dropped");
        self.log(conn, key, None, message);
        let members = self.members(self.last_now);
        for (members, last) in pages(members, Member::encoded_len) {
            self.reply(conn, &Message::Resync { seq, last, members });
        }
    }

    fn on_stats(&mut self, _now: Instant, conn: ConnId, request: RequestId) {
        if !self.conns[&conn].rights.stats {
            return self.refuse(
                conn,
                request,
                ErrorCode::NotPermitted,
                "may not ask for stats".into(),
            );
        }
        // Per connection, then summed per key and per unix user, and looked
        // up per name.
        let mut per_key: BTreeMap<[u8; 32], Usage> = BTreeMap::new();
        let mut per_uid: BTreeMap<u32, Usage> = BTreeMap::new();
        for c in self.conns.values() {
            let usage = usage_of(c);
            if let Some(key) = c.key {
                add_usage(per_key.entry(key.0).or_insert_with(empty_usage), &usage);
            }
            if let Some(uid) = c.origin.uid() {
                add_usage(per_uid.entry(uid).or_insert_with(empty_usage), &usage);
            }
        }
        let keys: Vec<KeyStats> = per_key
            .into_iter()
            .map(|(key, usage)| KeyStats {
                key: crate::keys::PublicKey(key),
                usage,
            })
            .collect();
        let names: Vec<NameStats> = self
            .registry
            .members()
            .map(|(name, holder)| NameStats {
                name: name.clone(),
                key: holder.key,
                usage: usage_of(&self.conns[&holder.conn]),
            })
            .collect();
        let features = self.conns[&conn].features;
        if features & FEATURE_STATS_UIDS != 0 {
            let uids: Vec<UidStats> = per_uid
                .into_iter()
                .map(|(uid, usage)| UidStats { uid, usage })
                .collect();
            for (uids, _) in pages(uids, |_| UID_STATS_LEN) {
                self.reply(conn, &Message::UidStatsPage { request, uids });
            }
        }
        if features & FEATURE_STATS_COUNTERS != 0 {
            // A few dozen causes at most: one page.
            let counters = self.counters.to_wire();
            self.reply(conn, &Message::CounterPage { request, counters });
        }
        for page in stats_pages(request, keys, names) {
            self.reply(conn, &page);
        }
    }

    /// Tells every watcher about a change: encoded once, queued for each.
    pub(super) fn announce(&mut self, now: Instant, mut presence: Presence) {
        let since =
            |hub: &Hub, conn: ConnId| hub.conns.get(&conn).map_or(0, |c| millis(now - c.since));
        match &mut presence {
            Presence::Up(member) | Presence::OwnerChanged { new: member, .. } => {
                if let Some(holder) = self.registry.owner(&member.name) {
                    member.connected_ms = since(self, holder.conn);
                }
            }
            Presence::Down { .. } => {}
        }
        let seq = self.registry.seq();
        let event = Message::PresenceEvent { seq, presence };
        let mut encoded = BytesMut::new();
        control::encode(&event, &mut encoded);
        let watchers: Vec<ConnId> = self.watchers.iter().copied().collect();
        for watcher in watchers {
            self.queue_change(watcher, seq, &encoded);
        }
    }

    /// Answers a request with an error (and logs the refusal).
    pub(super) fn refuse(
        &mut self,
        conn: ConnId,
        request: RequestId,
        code: ErrorCode,
        message: String,
    ) {
        let key = self.conns.get(&conn).and_then(|c| c.key);
        let line = format!("refused: {message}");
        self.record(conn, key, Outcome::Refusal, Cause::Code(code), line);
        self.reply(conn, &error(request, code, message));
    }
}

/// An answer that refuses `request`. The message often quotes what a peer
/// sent (a name, an address, a reason), so it is cut to what the wire
/// carries here, once, for every answer.
pub(super) fn error(request: RequestId, code: ErrorCode, mut message: String) -> Message {
    let fits = crate::mux::frame::truncate_utf8(&message, control::MAX_TEXT).len();
    message.truncate(fits);
    Message::Error {
        request,
        code,
        message,
    }
}

/// What one connection holds, as `stats` reports it.
fn usage_of(c: &Connection) -> Usage {
    let port = c.port.as_ref().map(|p| p.lock());
    Usage {
        connections: 1,
        channels: (port.as_ref().map_or(0, |p| p.route_ends()) + c.opens_out.len()) as u32,
        bytes_in: port.as_ref().map_or(0, |p| p.bytes_in),
        bytes_out: port.as_ref().map_or(0, |p| p.bytes_out),
        queued: port
            .as_ref()
            .map_or(0, |p| p.mux.queued_urgent() + p.mux.queued_data()) as u64,
    }
}

fn add_usage(sum: &mut Usage, one: &Usage) {
    sum.connections += one.connections;
    sum.channels += one.channels;
    sum.bytes_in += one.bytes_in;
    sum.bytes_out += one.bytes_out;
    sum.queued += one.queued;
}

fn empty_usage() -> Usage {
    Usage {
        connections: 0,
        channels: 0,
        bytes_in: 0,
        bytes_out: 0,
        queued: 0,
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Cuts `items` into pages that fit a control message; always at least one
/// (possibly empty) page, and only the last is marked last.
fn pages<T>(items: Vec<T>, size: impl Fn(&T) -> usize) -> Vec<(Vec<T>, bool)> {
    let mut pages = Vec::new();
    let mut page = Vec::new();
    let mut used = 0;
    for item in items {
        let len = size(&item);
        if used + len > PAGE_BUDGET && !page.is_empty() {
            pages.push((std::mem::take(&mut page), false));
            used = 0;
        }
        used += len;
        page.push(item);
    }
    pages.push((page, true));
    pages
}

/// The answer to `stats`: keys first, then names, each page under the
/// message limit, the last one marked.
fn stats_pages(request: RequestId, keys: Vec<KeyStats>, names: Vec<NameStats>) -> Vec<Message> {
    let key_pages = pages(keys, |_| KEY_STATS_LEN);
    let name_pages = pages(names, |n: &NameStats| {
        1 + n.name.as_str().len() + KEY_STATS_LEN
    });
    let mut messages: Vec<Message> = key_pages
        .into_iter()
        .map(|(keys, _)| Message::StatsPage {
            request,
            last: false,
            keys,
            names: Vec::new(),
        })
        .chain(name_pages.into_iter().map(|(names, _)| Message::StatsPage {
            request,
            last: false,
            keys: Vec::new(),
            names,
        }))
        .collect();
    if let Some(Message::StatsPage { last, .. }) = messages.last_mut() {
        *last = true;
    }
    messages
}

/// `tcp:HOST:PORT` with a port number.
fn is_tcp_address(addr: &str) -> bool {
    addr.strip_prefix("tcp:")
        .and_then(|rest| rest.rsplit_once(':'))
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

/// A message's name, for errors.
fn kind(message: &Message) -> &'static str {
    match message {
        Message::ClientHello { .. } => "hello",
        Message::BrokerHello { .. } => "broker hello",
        Message::Register { .. } => "register",
        Message::List { .. } => "list",
        Message::Watch { .. } => "watch",
        Message::Unwatch { .. } => "unwatch",
        Message::Stats { .. } => "stats",
        Message::Open { .. } => "open",
        Message::Accept { .. } => "accept",
        Message::Reject { .. } => "reject",
        Message::DirectFailed { .. } => "direct-failed",
        Message::Error { .. } => "error",
        Message::Ok { .. } => "ok",
        Message::Registered { .. } => "registered",
        Message::NameAcquired { .. } => "name-acquired",
        Message::ListPage { .. } => "list page",
        Message::Snapshot { .. } => "snapshot",
        Message::Resync { .. } => "resync",
        Message::PresenceEvent { .. } => "presence event",
        Message::UidStatsPage { .. } => "uid stats page",
        Message::CounterPage { .. } => "counter page",
        Message::Monitor { .. } => "monitor",
        Message::MonitorEvent(_) => "monitor event",
        Message::StatsPage { .. } => "stats page",
        Message::Incoming { .. } => "incoming",
        Message::Opened { .. } => "opened",
        Message::ChannelPath { .. } => "channel path",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_addresses() {
        assert!(is_tcp_address("tcp:example.org:8008"));
        assert!(is_tcp_address("tcp:[::1]:8008"));
        assert!(!is_tcp_address("tcp:example.org"));
        assert!(!is_tcp_address("unix:/tmp/x"));
        assert!(!is_tcp_address("tcp::80"));
        assert!(!is_tcp_address("tcp:h:99999"));
    }

    #[test]
    fn stats_pages_fit_a_message_however_many_keys() {
        // Regression: pages were cut with a usage record of 28 bytes; it has 32.
        let usage = Usage {
            connections: 1,
            channels: 2,
            bytes_in: 3,
            bytes_out: 4,
            queued: 5,
        };
        let keys: Vec<KeyStats> = (0..5000u32)
            .map(|i| {
                let mut key = [0u8; 32];
                key[..4].copy_from_slice(&i.to_be_bytes());
                KeyStats {
                    key: crate::keys::PublicKey(key),
                    usage: usage.clone(),
                }
            })
            .collect();
        let names: Vec<NameStats> = (0..3000u32)
            .map(|i| NameStats {
                name: control::Name::new(&format!("{i:0>200}")).unwrap(),
                key: crate::keys::PublicKey([1; 32]),
                usage: usage.clone(),
            })
            .collect();
        let pages = stats_pages(7, keys, names);
        assert!(pages.len() > 10);
        for page in &pages {
            assert!(
                control::encoded_len(page) <= MAX_MESSAGE + 4,
                "{}",
                control::encoded_len(page)
            );
        }
        let lasts = pages
            .iter()
            .filter(|p| matches!(p, Message::StatsPage { last: true, .. }))
            .count();
        assert_eq!(lasts, 1);
    }

    #[test]
    fn pages_respect_the_budget() {
        let pages = pages(vec![1000usize; 200], |n| *n);
        assert!(pages.len() > 1);
        assert!(pages
            .iter()
            .all(|(p, _)| p.iter().sum::<usize>() <= PAGE_BUDGET));
        assert_eq!(pages.iter().filter(|(_, last)| *last).count(), 1);
        assert!(pages.last().unwrap().1);
        assert_eq!(pages.iter().map(|(p, _)| p.len()).sum::<usize>(), 200);
        assert_eq!(
            super::pages(Vec::<usize>::new(), |n| *n),
            vec![(vec![], true)]
        );
    }
}
