//! Every control message (channel 0), as values. The byte layout of each is
//! in `docs/PROTOCOL.md` §4 and in [`super::codec`].

use bytes::Bytes;

use super::{ErrorCode, Name};
use crate::keys::PublicKey;

/// A request's correlation id, chosen by the requester, echoed in the answer.
pub type RequestId = u32;

/// A channel id on one connection. 0 is the control channel; the dialing side
/// allocates odd ids, the listening side even ones.
pub type ChannelId = u32;

/// Protocol versions this implementation speaks.
pub const VERSION: u16 = 1;

/// Feature bits (hello): the plugin offers, the broker answers the bits both
/// support; unknown bits are ignored.
pub type Features = u64;

/// A watcher that falls behind is sent [`Message::Resync`] instead of being
/// disconnected as a slow reader.
pub const FEATURE_WATCH_RESYNC: Features = 1 << 0;

/// A `stats` answer starts with [`Message::UidStatsPage`]s: what each unix
/// user holds.
pub const FEATURE_STATS_UIDS: Features = 1 << 1;

/// A `stats` answer carries a [`Message::CounterPage`]: refusals and
/// disconnects by cause since the broker started.
pub const FEATURE_STATS_COUNTERS: Features = 1 << 2;

/// The broker takes [`Message::Monitor`] and sends [`Message::MonitorEvent`]s.
pub const FEATURE_MONITOR: Features = 1 << 3;

/// Every feature this implementation supports.
pub const FEATURES: Features =
    FEATURE_WATCH_RESYNC | FEATURE_STATS_UIDS | FEATURE_STATS_COUNTERS | FEATURE_MONITOR;

/// How a connection reached the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// A unix socket: plain frames after the handshake.
    Unix = 1,
    /// TCP: frames inside box-stream.
    Tcp = 2,
}

/// The broker's limits, announced in its hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnouncedLimits {
    /// Largest frame payload the broker accepts.
    pub max_frame: u32,
    /// Credit each new channel starts with, in each direction.
    pub initial_window: u32,
    /// Largest window the broker passes on for one channel direction.
    pub max_window: u32,
    /// Channels one key may hold open at once, over all its connections.
    pub max_channels: u32,
    /// Opens one key may have unanswered at once.
    pub max_pending_opens: u32,
    /// How long the target of an open has to answer, in milliseconds.
    pub open_timeout_ms: u32,
    /// A connection silent for this long is pinged, in milliseconds.
    pub idle_timeout_ms: u32,
    /// Control bytes the broker queues for a connection before it calls the
    /// reader too slow.
    pub max_control_queue: u32,
}

/// One named plugin, as `list` and `watch` report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its name.
    pub name: Name,
    /// The key of the connection that owns the name.
    pub key: PublicKey,
    /// How that connection reached the broker.
    pub transport: TransportKind,
    /// Milliseconds since that connection completed its hello.
    pub connected_ms: u64,
}

/// A change in who owns which name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    /// A name got its first owner.
    Up(Member),
    /// A name's owner left and nobody waited in line: the name is free.
    Down {
        /// The name.
        name: Name,
        /// The key that held it.
        key: PublicKey,
    },
    /// A name's owner left and the next in line took over.
    OwnerChanged {
        /// The name.
        name: Name,
        /// The key that held it.
        old_key: PublicKey,
        /// The new owner.
        new: Member,
    },
}

/// What the broker holds for one key or one name (`stats`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// Connections.
    pub connections: u32,
    /// Open or pending channels.
    pub channels: u32,
    /// Bytes received from it.
    pub bytes_in: u64,
    /// Bytes sent to it.
    pub bytes_out: u64,
    /// Bytes queued for it and not yet written.
    pub queued: u64,
}

/// `stats` about one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStats {
    /// The key.
    pub key: PublicKey,
    /// What it holds.
    pub usage: Usage,
}

/// `stats` about one unix user: its connections over unix sockets, by the
/// peer credentials the kernel gave the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UidStats {
    /// The user id.
    pub uid: u32,
    /// What its connections hold, summed.
    pub usage: Usage,
}

/// What a counter in `stats` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// The broker said no: to a socket, a key, a name, an open, a request.
    Refusal,
    /// A connection ended, by either side, for any reason.
    Disconnect,
}

impl Outcome {
    /// Its name in logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Refusal => "refusal",
            Outcome::Disconnect => "disconnect",
        }
    }
}

/// `stats`: how often the broker refused something, or a connection
/// ended, for one cause, since the broker started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CauseCount {
    /// What it counts.
    pub outcome: Outcome,
    /// Why: a label such as `not_permitted` or `network_key` (PROTOCOL §6.1).
    pub cause: String,
    /// How many.
    pub count: u64,
}

/// What a monitor saw happen (PROTOCOL §4.29).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MonitorKind {
    /// A channel was asked for: `key` opens `name`, held by `peer`.
    Open,
    /// The target accepted; `cause` is the path: `relay`, `socketpair` or
    /// `dial`.
    Accept,
    /// The opener was refused (the target's no, its timeout, its
    /// departure); `cause` is the code's label.
    Reject,
    /// A relayed channel ended: the bytes each way and how long it lasted;
    /// `cause` is empty for a clean end, else the reset's code.
    Close,
    /// A direct channel was made (`cause`: `socketpair` or `dial`): the
    /// broker sees nothing of it from here on.
    Direct,
    /// A direct channel fell back to the relay; `cause` says why.
    Fallback,
    /// The broker refused something ([`Outcome::Refusal`]); `cause` is its
    /// label.
    Refusal,
    /// A connection ended ([`Outcome::Disconnect`]); `cause` is its label.
    Disconnect,
    /// This monitor fell behind: `to_target` events were dropped before
    /// the next one.
    Missed,
}

impl MonitorKind {
    /// Its wire value.
    pub fn to_u8(self) -> u8 {
        self as u8 + 1
    }

    /// From its wire value.
    pub fn from_u8(value: u8) -> Option<Self> {
        use MonitorKind::*;
        [
            Open, Accept, Reject, Close, Direct, Fallback, Refusal, Disconnect, Missed,
        ]
        .get(usize::from(value).checked_sub(1)?)
        .copied()
    }

    /// Its name in `plugboard monitor`'s output.
    pub fn label(self) -> &'static str {
        match self {
            MonitorKind::Open => "open",
            MonitorKind::Accept => "accept",
            MonitorKind::Reject => "reject",
            MonitorKind::Close => "close",
            MonitorKind::Direct => "direct",
            MonitorKind::Fallback => "fallback",
            MonitorKind::Refusal => "refusal",
            MonitorKind::Disconnect => "disconnect",
            MonitorKind::Missed => "missed",
        }
    }
}

/// One thing the broker did, for a monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorEvent {
    /// What.
    pub kind: MonitorKind,
    /// The broker's number for the channel concerned (0: none).
    pub channel: u64,
    /// The opener's key, or the connection's.
    pub key: Option<PublicKey>,
    /// The target's key.
    pub peer: Option<PublicKey>,
    /// The name opened, or the one concerned.
    pub name: Option<Name>,
    /// Why, or which path (see [`MonitorKind`]).
    pub cause: String,
    /// A relayed channel's bytes from the opener to the target.
    pub to_target: u64,
    /// ... and from the target to the opener.
    pub to_opener: u64,
    /// How long the channel lasted, in milliseconds.
    pub duration_ms: u64,
    /// What happened, in words.
    pub detail: String,
}

/// `stats` about one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameStats {
    /// The name.
    pub name: Name,
    /// Its owner.
    pub key: PublicKey,
    /// What the owning connection holds.
    pub usage: Usage,
}

/// How the opener of a channel reaches its peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenedPath {
    /// Through the broker, on the channel id of the open.
    Relay,
    /// One end of a socketpair rides on the frame that carries this message
    /// (unix sockets only, SCM_RIGHTS).
    SocketPair,
    /// Dial `addr` (`tcp:HOST:PORT`), run shs1 with the peer's key, then send
    /// `token`. The relayed channel stays open as the fallback.
    Dial {
        /// Where the peer listens.
        addr: String,
        /// What to present after the handshake.
        token: [u8; 32],
    },
}

/// What the target of an open should expect once it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncomingPath {
    /// The relayed channel, at once.
    Relay,
    /// A direct channel may be set up: wait for [`Message::ChannelPath`]
    /// before using the channel.
    AwaitPath,
    /// The opener may dial this plugin's direct address and present `token`
    /// after an shs1 handshake with its key; if it cannot, a
    /// [`Message::ChannelPath`] says to use the relayed channel.
    ExpectDial {
        /// The one-time token.
        token: [u8; 32],
    },
}

/// What the broker tells a target about an accepted channel's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelPath {
    /// Use the relayed channel (a direct attempt failed or was not made).
    Relay,
    /// One end of a socketpair rides on the frame that carries this message.
    SocketPair,
}

/// A control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    // ── both ways, first ───────────────────────────────────────────────
    /// A plugin's first message.
    ClientHello {
        /// Lowest version it speaks.
        min_version: u16,
        /// Highest version it speaks.
        max_version: u16,
        /// Feature bits it supports.
        features: Features,
    },
    /// The broker's first message.
    BrokerHello {
        /// The version chosen for this connection.
        version: u16,
        /// Feature bits both support.
        features: Features,
        /// How the plugin reached the broker.
        transport: TransportKind,
        /// The broker's limits.
        limits: AnnouncedLimits,
    },

    // ── plugin → broker ───────────────────────────────────────────────
    /// Take a name. With `wait`, queue for it if taken.
    Register {
        /// Correlation id.
        request: RequestId,
        /// The name.
        name: Name,
        /// Queue behind the current owner instead of failing.
        wait: bool,
        /// `tcp:HOST:PORT` where this plugin accepts direct channels, or empty.
        direct_addr: String,
    },
    /// Who is registered.
    List {
        /// Correlation id.
        request: RequestId,
    },
    /// A snapshot, then every change.
    Watch {
        /// Correlation id.
        request: RequestId,
    },
    /// Stop watching.
    Unwatch {
        /// Correlation id.
        request: RequestId,
    },
    /// Who holds what.
    Stats {
        /// Correlation id.
        request: RequestId,
    },
    /// Open a channel to a name, on channel id `channel` (odd, allocated by the opener).
    Open {
        /// Correlation id.
        request: RequestId,
        /// The opener's id for the channel.
        channel: ChannelId,
        /// Ask for a direct channel.
        direct: bool,
        /// Whose.
        name: Name,
        /// What the opener will speak (free text, up to 255 bytes).
        protocol: String,
        /// Anything else for the target, up to 4096 bytes.
        metadata: Bytes,
    },
    /// The target takes an incoming channel.
    Accept {
        /// The channel id from [`Message::Incoming`].
        channel: ChannelId,
    },
    /// The target refuses an incoming channel.
    Reject {
        /// The channel id from [`Message::Incoming`].
        channel: ChannelId,
        /// Why, for the opener.
        reason: String,
    },
    /// The opener could not dial the peer directly: relay instead.
    DirectFailed {
        /// The opener's channel id.
        channel: ChannelId,
    },

    // ── broker → plugin ───────────────────────────────────────────────
    /// A request failed.
    Error {
        /// The request's correlation id.
        request: RequestId,
        /// What went wrong, for programs.
        code: ErrorCode,
        /// What went wrong, for people.
        message: String,
    },
    /// A request succeeded and has nothing else to say (`unwatch`).
    Ok {
        /// The request's correlation id.
        request: RequestId,
    },
    /// `register` succeeded: the name is this connection's, or it is in line.
    Registered {
        /// The request's correlation id.
        request: RequestId,
        /// `false`: the name is ours now. `true`: we wait in line.
        queued: bool,
    },
    /// A name this connection waited for is now its own.
    NameAcquired {
        /// The name.
        name: Name,
    },
    /// Part of the answer to `list`; the last part has `last`.
    ListPage {
        /// The request's correlation id.
        request: RequestId,
        /// Whether this is the last part.
        last: bool,
        /// Members, ordered by name across all parts.
        members: Vec<Member>,
    },
    /// Part of the snapshot that starts a watch; the last part has `last`.
    /// Events follow with sequence numbers from `seq + 1`.
    Snapshot {
        /// The request's correlation id.
        request: RequestId,
        /// The registry's sequence number the snapshot shows.
        seq: u64,
        /// Whether this is the last part.
        last: bool,
        /// Members, ordered by name across all parts.
        members: Vec<Member>,
    },
    /// A change, numbered: each watcher sees every number once, in order.
    PresenceEvent {
        /// The registry's sequence number after this change.
        seq: u64,
        /// The change.
        presence: Presence,
    },
    /// Part of a fresh snapshot for a watcher that fell behind (only with
    /// [`FEATURE_WATCH_RESYNC`]): the changes it did not read were dropped,
    /// and this replaces what it knew. The last part has `last`; events follow
    /// from `seq + 1`.
    Resync {
        /// The registry's sequence number the snapshot shows.
        seq: u64,
        /// Whether this is the last part.
        last: bool,
        /// Members, ordered by name across all parts.
        members: Vec<Member>,
    },
    /// The first parts of the answer to `stats`, only with
    /// [`FEATURE_STATS_UIDS`]: per unix user. [`Message::StatsPage`]s follow.
    UidStatsPage {
        /// The request's correlation id.
        request: RequestId,
        /// Per user id, ordered by uid across all parts.
        uids: Vec<UidStats>,
    },
    /// Asks for every [`Message::MonitorEvent`] from now on (the policy's
    /// `monitor` right), of one key and one name if given. Answered with Ok.
    /// Only to a broker that offered [`FEATURE_MONITOR`].
    Monitor {
        /// The request's correlation id.
        request: RequestId,
        /// Only events of this key (opener, target or connection).
        key: Option<PublicKey>,
        /// Only events about this name.
        name: Option<Name>,
    },
    /// Something the broker did, for a monitor.
    MonitorEvent(MonitorEvent),
    /// Part of the answer to `stats`, only with [`FEATURE_STATS_COUNTERS`]:
    /// refusals and disconnects by cause, after the [`Message::UidStatsPage`]s
    /// and before the [`Message::StatsPage`]s.
    CounterPage {
        /// The request's correlation id.
        request: RequestId,
        /// Refusals first, then disconnects, each by cause.
        counters: Vec<CauseCount>,
    },
    /// Part of the answer to `stats`; the last part has `last`.
    StatsPage {
        /// The request's correlation id.
        request: RequestId,
        /// Whether this is the last part.
        last: bool,
        /// Per key.
        keys: Vec<KeyStats>,
        /// Per name.
        names: Vec<NameStats>,
    },
    /// Somebody opens a channel to this plugin, on channel id `channel` (even,
    /// allocated by the broker). Answer with `accept` or `reject`.
    Incoming {
        /// The broker's id for the channel on this connection.
        channel: ChannelId,
        /// The opener's name, if it has one.
        from_name: Option<Name>,
        /// The opener's key.
        from_key: PublicKey,
        /// What the opener will speak.
        protocol: String,
        /// What the opener sent along.
        metadata: Bytes,
        /// Whether the opener may come directly.
        path: IncomingPath,
    },
    /// The open succeeded.
    Opened {
        /// The request's correlation id.
        request: RequestId,
        /// The opener's channel id.
        channel: ChannelId,
        /// The target's key.
        peer: PublicKey,
        /// How to reach it.
        path: OpenedPath,
    },
    /// The path of an accepted incoming channel was decided.
    ChannelPath {
        /// The broker's id for the channel on this connection.
        channel: ChannelId,
        /// The path.
        path: ChannelPath,
    },
}
