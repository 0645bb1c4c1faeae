//! Why the broker turned something away, or why a connection ended: the
//! cause of a log line, the label of its counter in `stats` (and of
//! `plugboard stats --format openmetrics`).

use std::collections::BTreeMap;

pub use crate::control::Outcome;
use crate::control::{CauseCount, ErrorCode};
use crate::shs::HandshakeError;

/// Why: the code the peer was told, where it was told one, or what only the
/// broker's log knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// The peer was told this code (in an error, a reset or a GOAWAY).
    Code(ErrorCode),
    /// The handshake's first message was not for the broker's network key:
    /// another network, or not shs1.
    NetworkKey,
    /// The handshake failed otherwise: a proof that does not verify, a
    /// low-order key, a cut message.
    Handshake,
    /// The handshake did not complete in time.
    HandshakeTimeout,
    /// A socket turned away at the door: too many handshakes at once, or
    /// begun too fast, from its source or in all.
    HandshakeLimit,
    /// The peer said goodbye (box-stream's, or a GOAWAY).
    Goodbye,
    /// The peer broke its box-stream (a forged or cut box).
    BoxStream,
    /// The socket ended or failed with no goodbye.
    SocketClosed,
    /// A legacy client's channel ended: the plugin finished.
    ChannelEnded,
    /// A legacy client's channel was reset, or its plugin left.
    ChannelReset,
}

impl Cause {
    /// The cause of a failed handshake.
    pub fn of_handshake(error: &HandshakeError) -> Self {
        match error {
            HandshakeError::NetworkKeyMismatch => Cause::NetworkKey,
            HandshakeError::TimedOut(_) => Cause::HandshakeTimeout,
            HandshakeError::Unauthorized(_) => Cause::Code(ErrorCode::NotPermitted),
            _ => Cause::Handshake,
        }
    }

    /// Its name in logs and metrics: lower case, words joined by `_`.
    pub fn label(self) -> &'static str {
        match self {
            Cause::Code(code) => code_label(code),
            Cause::NetworkKey => "network_key",
            Cause::Handshake => "handshake",
            Cause::HandshakeTimeout => "handshake_timeout",
            Cause::HandshakeLimit => "handshake_limit",
            Cause::Goodbye => "goodbye",
            Cause::BoxStream => "box_stream",
            Cause::SocketClosed => "socket_closed",
            Cause::ChannelEnded => "channel_ended",
            Cause::ChannelReset => "channel_reset",
        }
    }
}

impl core::fmt::Display for Cause {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.label())
    }
}

fn code_label(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::Malformed => "malformed",
        ErrorCode::UnsupportedVersion => "unsupported_version",
        ErrorCode::NotPermitted => "not_permitted",
        ErrorCode::NameTaken => "name_taken",
        ErrorCode::AlreadyRegistered => "already_registered",
        ErrorCode::NoSuchName => "no_such_name",
        ErrorCode::OpenTimeout => "open_timeout",
        ErrorCode::Rejected => "rejected",
        ErrorCode::TooManyChannels => "too_many_channels",
        ErrorCode::TooManyPendingOpens => "too_many_pending_opens",
        ErrorCode::PeerBusy => "peer_busy",
        ErrorCode::PeerGone => "peer_gone",
        ErrorCode::WatchState => "watch_state",
        ErrorCode::UnknownChannel => "unknown_channel",
        ErrorCode::TooManyConnections => "too_many_connections",
        ErrorCode::Shutdown => "shutdown",
        ErrorCode::ProtocolViolation => "protocol_violation",
        ErrorCode::IdleTimeout => "idle_timeout",
        ErrorCode::SlowReader => "slow_reader",
        ErrorCode::Cancelled => "cancelled",
        ErrorCode::HelloTimeout => "hello_timeout",
        ErrorCode::TooManyBytes => "too_many_bytes",
        ErrorCode::TooFast => "too_fast",
        ErrorCode::Other(_) => "other",
    }
}

/// How often each outcome happened, by cause, since the broker started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    counts: BTreeMap<(Outcome, &'static str), u64>,
}

impl Counters {
    /// One more.
    pub fn add(&mut self, outcome: Outcome, cause: Cause) {
        *self.counts.entry((outcome, cause.label())).or_insert(0) += 1;
    }

    /// How many of `outcome` for `cause`.
    pub fn get(&self, outcome: Outcome, cause: Cause) -> u64 {
        self.counts
            .get(&(outcome, cause.label()))
            .copied()
            .unwrap_or(0)
    }

    /// Every count, refusals first, each by label.
    pub fn iter(&self) -> impl Iterator<Item = (Outcome, &'static str, u64)> + '_ {
        self.counts.iter().map(|(&(o, label), &n)| (o, label, n))
    }

    /// As `stats` sends them.
    pub fn to_wire(&self) -> Vec<CauseCount> {
        self.iter()
            .map(|(outcome, cause, count)| CauseCount {
                outcome,
                cause: cause.to_owned(),
                count,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct_and_metric_safe() {
        let mut codes: Vec<Cause> = (1..=23)
            .map(|n| Cause::Code(ErrorCode::from_u16(n)))
            .collect();
        codes.extend([
            Cause::NetworkKey,
            Cause::Handshake,
            Cause::HandshakeTimeout,
            Cause::HandshakeLimit,
            Cause::Goodbye,
            Cause::BoxStream,
            Cause::SocketClosed,
            Cause::ChannelEnded,
            Cause::ChannelReset,
        ]);
        let labels: std::collections::BTreeSet<_> = codes.iter().map(|c| c.label()).collect();
        assert_eq!(labels.len(), codes.len());
        assert!(labels
            .iter()
            .all(|l| l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
    }

    #[test]
    fn counts_by_outcome_and_cause() {
        let mut counters = Counters::default();
        counters.add(Outcome::Refusal, Cause::NetworkKey);
        counters.add(Outcome::Refusal, Cause::NetworkKey);
        counters.add(Outcome::Disconnect, Cause::Goodbye);
        assert_eq!(counters.get(Outcome::Refusal, Cause::NetworkKey), 2);
        assert_eq!(counters.get(Outcome::Disconnect, Cause::NetworkKey), 0);
        let all: Vec<_> = counters.iter().collect();
        assert_eq!(
            all,
            [
                (Outcome::Refusal, "network_key", 2),
                (Outcome::Disconnect, "goodbye", 1)
            ]
        );
    }
}
