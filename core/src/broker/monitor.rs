//! Monitors: connections that asked to see what the broker does (the
//! policy's `monitor` right). Events are gathered during a call and sent
//! at its end, encoded once: no port is locked where they arise.
//!
//! Events are others' churn, as a watcher's changes are: one peer's
//! teardown can make thousands in one call. So a monitor with half its
//! control-queue bound unread falls behind instead of being cut off: its
//! events are dropped, counted, and a Missed event says how many before
//! the next event it gets. What it holds stays under half the bound.

use bytes::BytesMut;

use crate::control::{
    self, ErrorCode, Message, MonitorEvent, MonitorKind, Name, RequestId, MAX_TEXT,
};
use crate::keys::PublicKey;
use crate::time::Instant;

use super::{ConnId, Hub};

/// What one monitor asked to see, and what it missed.
#[derive(Debug, Clone, Default)]
pub(super) struct Filter {
    key: Option<PublicKey>,
    name: Option<Name>,
    /// Events dropped while it was behind, not told yet.
    missed: u64,
}

impl Filter {
    fn admits(&self, event: &MonitorEvent) -> bool {
        let key = self
            .key
            .is_none_or(|k| event.key == Some(k) || event.peer == Some(k));
        let name = self.name.is_none() || self.name == event.name;
        key && name
    }
}

/// A channel's facts, for its events: the broker's number for it, when it
/// was asked for, and the name opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Seen {
    pub(super) serial: u64,
    pub(super) since: Instant,
    pub(super) name: Option<Name>,
}

impl Seen {
    /// An event about this channel between `key` (the opener) and `peer`.
    pub(super) fn event(
        &self,
        kind: MonitorKind,
        key: PublicKey,
        peer: PublicKey,
        cause: &str,
        detail: String,
    ) -> MonitorEvent {
        MonitorEvent {
            kind,
            channel: self.serial,
            key: Some(key),
            peer: Some(peer),
            name: self.name.clone(),
            cause: cause.to_owned(),
            to_target: 0,
            to_opener: 0,
            duration_ms: 0,
            detail: fit(detail),
        }
    }
}

/// A detail as a MonitorEvent carries it: printable (it quotes what peers
/// sent), and within the message's text limit.
pub(super) fn fit(detail: String) -> String {
    let mut detail = super::printable(detail);
    if detail.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        detail.truncate(end);
    }
    detail
}

/// The event that stands for `n` dropped ones.
fn missed(n: u64) -> MonitorEvent {
    MonitorEvent {
        kind: MonitorKind::Missed,
        channel: 0,
        key: None,
        peer: None,
        name: None,
        cause: String::new(),
        to_target: n,
        to_opener: 0,
        duration_ms: 0,
        detail: format!("{n} events dropped: this monitor did not read in time"),
    }
}

impl Hub {
    pub(super) fn on_monitor(
        &mut self,
        conn: ConnId,
        request: RequestId,
        key: Option<PublicKey>,
        name: Option<Name>,
    ) {
        if !self.conns[&conn].rights.monitor {
            let message = "may not monitor".to_owned();
            return self.refuse(conn, request, ErrorCode::NotPermitted, message);
        }
        if self.monitors.contains_key(&conn) {
            let message = "already monitoring".to_owned();
            return self.refuse(conn, request, ErrorCode::WatchState, message);
        }
        let filter = Filter {
            key,
            name,
            missed: 0,
        };
        self.monitors.insert(conn, filter);
        self.reply(conn, &Message::Ok { request });
    }

    /// The number the next channel is known by to monitors.
    pub(super) fn next_channel_serial(&mut self) -> u64 {
        self.channel_serial += 1;
        self.channel_serial
    }

    /// Queues `event` for the monitors, sent at the end of the call.
    pub(super) fn observe(&mut self, event: MonitorEvent) {
        if !self.monitors.is_empty() {
            self.observed.push(event);
        }
    }

    /// Sends what was observed to each monitor that asked for it, but to
    /// one behind: that one's are counted. True if there was anything.
    pub(super) fn send_observed(&mut self) -> bool {
        if self.observed.is_empty() {
            return false;
        }
        let behind = self.config.limits.max_control_queue / 2;
        let mut encoded = BytesMut::new();
        for event in std::mem::take(&mut self.observed) {
            let to: Vec<ConnId> = self
                .monitors
                .iter()
                .filter(|(_, filter)| filter.admits(&event))
                .map(|(conn, _)| *conn)
                .collect();
            if to.is_empty() {
                continue;
            }
            encoded.clear();
            control::encode(&Message::MonitorEvent(event), &mut encoded);
            for conn in to {
                let queued = self.queued_control(conn);
                let filter = self.monitors.get_mut(&conn).expect("listed");
                let owed = match filter.missed {
                    0 => 0,
                    n => control::encoded_len(&Message::MonitorEvent(missed(n))),
                };
                if queued + owed + encoded.len() > behind {
                    filter.missed += 1;
                    continue;
                }
                if filter.missed > 0 {
                    let n = std::mem::take(&mut filter.missed);
                    self.reply(conn, &Message::MonitorEvent(missed(n)));
                }
                self.reply_encoded(conn, &encoded);
            }
        }
        true
    }
}
