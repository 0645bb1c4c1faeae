//! Monitors: connections that asked to see what the broker does (the
//! policy's `monitor` right). Events are gathered during a call and sent
//! at its end, encoded once: no port is locked where they arise. A monitor
//! that does not read is closed as a slow reader, as any watcher is.

use bytes::BytesMut;

use crate::control::{self, ErrorCode, Message, MonitorEvent, MonitorKind, Name, RequestId};
use crate::keys::PublicKey;
use crate::time::Instant;

use super::{ConnId, Hub};

/// What one monitor asked to see.
#[derive(Debug, Clone, Default)]
pub(super) struct Filter {
    key: Option<PublicKey>,
    name: Option<Name>,
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
            detail,
        }
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
        self.monitors.insert(conn, Filter { key, name });
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

    /// Sends what was observed to each monitor that asked for it. True if
    /// there was anything.
    pub(super) fn send_observed(&mut self) -> bool {
        if self.observed.is_empty() {
            return false;
        }
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
                self.reply_encoded(conn, &encoded);
            }
        }
        true
    }
}
