//! The broker's limits: every one has a default, a config key, a typed error
//! and a log line.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::control::AnnouncedLimits;
use crate::mux::{MuxConfig, DEFAULT_MAX_FRAME};

/// Limits, deserializable from TOML (`[limits]`, durations in milliseconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// A connection has this long to complete shs1.
    #[serde(with = "millis", rename = "handshake_timeout_ms")]
    pub handshake_timeout: Duration,
    /// ... and this long, of that, to send its first message.
    #[serde(with = "millis", rename = "first_message_timeout_ms")]
    pub first_message_timeout: Duration,
    /// ... and then this long to send its hello.
    #[serde(with = "millis", rename = "hello_timeout_ms")]
    pub hello_timeout: Duration,
    /// A connection silent this long is pinged.
    #[serde(with = "millis", rename = "idle_timeout_ms")]
    pub idle_timeout: Duration,
    /// ... and closed if it stays silent this much longer.
    #[serde(with = "millis", rename = "dead_peer_timeout_ms")]
    pub dead_peer_timeout: Duration,
    /// The target of an open has this long to accept or reject.
    #[serde(with = "millis", rename = "open_timeout_ms")]
    pub open_timeout: Duration,
    /// Connections in all.
    pub max_connections: usize,
    /// Connections of one key.
    pub max_connections_per_key: usize,
    /// Connections from one source (a TCP peer's address or IPv6 /64, a
    /// unix peer's uid) on legacy listeners, past the handshake: they admit
    /// any key that completes it, and keys cost nothing to make.
    pub max_legacy_connections_per_source: usize,
    /// Connections on legacy listeners in all, past the handshake: well
    /// under `max_connections` (and, at two initial windows each, under
    /// `max_bytes`), so strangers who complete the handshake cannot take
    /// what the plugins need.
    pub max_legacy_connections: usize,
    /// Connections from one user's processes on unix sockets (keys cost
    /// nothing to make; a uid does), handshakes included.
    pub max_connections_per_uid: usize,
    /// Connections still in the handshake, per listener.
    pub max_handshaking: usize,
    /// ... of those, from one source address (an IPv4 address or an IPv6
    /// /64) on TCP.
    pub max_handshaking_per_source: usize,
    /// ... of those, from the sources of one IPv6 /48 (65,536 /64s, what
    /// one site is commonly handed) on TCP.
    pub max_handshaking_per_network: usize,
    /// New handshakes one source address may start per second on TCP (two
    /// seconds' worth may come at once).
    pub handshakes_per_source_per_s: u32,
    /// New handshakes the sources of one IPv6 /48 may start per second on
    /// TCP, all together (two seconds' worth at once).
    pub handshakes_per_network_per_s: u32,
    /// Registrations a second from one source (a unix peer's uid, a TCP
    /// peer's address or IPv6 /64), two seconds' worth at once: every one can
    /// make an event for every watcher.
    pub registrations_per_source_per_s: u32,
    /// Registrations a second from the sources of one IPv6 /48, all
    /// together (two seconds' worth at once).
    pub registrations_per_network_per_s: u32,
    /// Registrations a second from everyone, two seconds' worth at once. A
    /// source registering more than one a second may take only half of it:
    /// the rest is kept for sources that do not.
    pub registrations_per_s: u32,
    /// Channels one key may hold (relayed, or waiting to be answered), over all its connections.
    pub max_channels_per_key: usize,
    /// Channels (relayed, or waiting to be answered or for a socketpair)
    /// between any two keys, whoever opened them: the share of another
    /// key's channels one key may hold.
    pub max_channels_between_keys: usize,
    /// Buffer bytes one key may have reserved for the channels it opened:
    /// both initial windows of each.
    pub max_bytes_per_key: u64,
    /// Credit beyond the initial window one key may have granted on relayed
    /// channels and the relay passed on (its windows' growth), apart from
    /// `max_bytes_per_key`; the channels of any one other key may hold at
    /// most half of it, and, once growth in all is past half of
    /// `max_grown_bytes`, one key's channels at most this much over all
    /// their receivers.
    pub max_grown_bytes_per_key: u64,
    /// Growth reserved by all keys together, apart from `max_bytes`.
    pub max_grown_bytes: u64,
    /// Buffer bytes reserved by all keys together for their opens.
    pub max_bytes: u64,
    /// Opens one key may have unanswered.
    pub max_pending_opens_per_key: usize,
    /// Socketpair ends one key may have on their way to its connections
    /// (not yet sent: its connection is not reading); beyond it, channels
    /// are relayed instead.
    pub max_descriptors_per_key: usize,
    /// ... and the broker in all.
    pub max_descriptors: usize,
    /// Largest frame payload accepted.
    pub max_frame: u32,
    /// Credit each direction of a channel starts with.
    pub initial_window: u32,
    /// Most bytes the broker holds or lets be in flight for one channel
    /// direction, whatever the receiver grants.
    pub max_window: u32,
    /// Control bytes queued for a connection before it is a slow reader.
    pub max_control_queue: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            first_message_timeout: Duration::from_secs(3),
            hello_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            dead_peer_timeout: Duration::from_secs(30),
            open_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_connections_per_key: 64,
            max_legacy_connections_per_source: 64,
            max_legacy_connections: 1024,
            max_connections_per_uid: 1024,
            max_handshaking: 256,
            max_handshaking_per_source: 16,
            max_handshaking_per_network: 32,
            handshakes_per_source_per_s: 20,
            handshakes_per_network_per_s: 40,
            registrations_per_source_per_s: 20,
            registrations_per_network_per_s: 40,
            registrations_per_s: 200,
            max_channels_per_key: 4096,
            max_channels_between_keys: 1024,
            max_bytes_per_key: 96 << 20,
            max_grown_bytes_per_key: 64 << 20,
            max_grown_bytes: 512 << 20,
            max_bytes: 1 << 30,
            max_pending_opens_per_key: 64,
            max_descriptors_per_key: 64,
            max_descriptors: 1024,
            max_frame: DEFAULT_MAX_FRAME,
            initial_window: 256 * 1024,
            max_window: 16 * 1024 * 1024,
            max_control_queue: 1024 * 1024,
        }
    }
}

impl Limits {
    /// What the broker's hello tells each plugin.
    pub fn announced(&self) -> AnnouncedLimits {
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        AnnouncedLimits {
            max_frame: self.max_frame,
            initial_window: self.initial_window,
            max_window: self.max_window,
            max_channels: n(self.max_channels_per_key),
            max_pending_opens: n(self.max_pending_opens_per_key),
            open_timeout_ms: ms(self.open_timeout),
            idle_timeout_ms: ms(self.idle_timeout),
            max_control_queue: n(self.max_control_queue),
        }
    }

    /// `new`, but with the limits a running broker keeps: those every
    /// connection was told in its hello and by which its channels' buffers
    /// are counted or its peers time their requests (frames, windows, the
    /// control queue, the idle and open timeouts). Also the names of those
    /// that `new` would have changed.
    pub fn keep_fixed(&self, mut new: Limits) -> (Limits, Vec<&'static str>) {
        new.reconcile();
        let mut kept = Vec::new();
        macro_rules! keep {
            ($($field:ident as $name:literal),*) => {$(
                if new.$field != self.$field {
                    new.$field = self.$field;
                    kept.push($name);
                }
            )*};
        }
        keep!(
            max_frame as "max_frame",
            initial_window as "initial_window",
            max_window as "max_window",
            max_control_queue as "max_control_queue",
            idle_timeout as "idle_timeout_ms",
            // A session waits for an Open's answer this long after what
            // the hello said: raised here, older sessions would give up.
            open_timeout as "open_timeout_ms"
        );
        (new, kept)
    }

    /// Makes limits that cannot work together work: `max_window` at least
    /// `initial_window`, `max_frame` at least 1 KiB.
    pub(crate) fn reconcile(&mut self) {
        self.max_window = self.max_window.max(self.initial_window);
        self.max_frame = self.max_frame.max(1024);
    }

    /// The mux configuration of each connection. The broker only passes
    /// credit through, so windows never grow on its side.
    pub(crate) fn mux_config(&self) -> MuxConfig {
        MuxConfig {
            max_frame: self.max_frame,
            initial_window: self.initial_window,
            max_window: self.initial_window,
            max_connection_window: u64::MAX,
        }
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_broker_keeps_the_limits_its_peers_were_told() {
        let old = Limits::default();
        let new = Limits {
            max_connections: 7,
            initial_window: 1024,
            idle_timeout: Duration::from_secs(1),
            ..Limits::default()
        };
        let (merged, kept) = old.keep_fixed(new);
        assert_eq!(merged.max_connections, 7);
        assert_eq!(merged.initial_window, old.initial_window);
        assert_eq!(merged.idle_timeout, old.idle_timeout);
        assert_eq!(kept, ["initial_window", "idle_timeout_ms"]);
    }

    #[test]
    fn limits_from_toml_keep_defaults_for_the_rest() {
        let limits: Limits = toml::from_str("max_connections = 5\nopen_timeout_ms = 250").unwrap();
        assert_eq!(limits.max_connections, 5);
        assert_eq!(limits.open_timeout, Duration::from_millis(250));
        assert_eq!(limits.max_frame, Limits::default().max_frame);
        assert!(toml::from_str::<Limits>("max_conections = 5").is_err());
    }
}
