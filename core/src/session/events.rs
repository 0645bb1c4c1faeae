use std::collections::VecDeque;

use bytes::Bytes;

use crate::control::{
    AnnouncedLimits, CauseCount, ChannelId, ChannelPath, DecodeError, ErrorCode, IncomingPath,
    KeyStats, Member, MonitorEvent, Name, NameStats, OpenedPath, Presence, RequestId, UidStats,
};
use crate::keys::PublicKey;
use crate::mux::{ChannelError, MuxError};
use crate::shs::HandshakeError;
use crate::wire::WireError;

/// What happened on a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// The broker said hello on the first connection: requests and
    /// channels can be used. (On a new one, [`SessionEvent::Reconnected`]
    /// says so.)
    Ready {
        /// The broker's key.
        broker: PublicKey,
        /// Its limits.
        limits: AnnouncedLimits,
    },
    /// A request failed.
    Failed {
        /// Which.
        request: RequestId,
        /// Why, for programs.
        code: ErrorCode,
        /// Why, for people.
        message: String,
    },
    /// A request succeeded with nothing more to say (`unwatch`).
    Done {
        /// Which.
        request: RequestId,
    },
    /// `register` succeeded.
    Registered {
        /// Which request.
        request: RequestId,
        /// `true`: in line for the name, not its owner yet.
        queued: bool,
    },
    /// The name this session waited for is its own now.
    NameAcquired {
        /// The name.
        name: Name,
    },
    /// The answer to `list`.
    Members {
        /// Which request.
        request: RequestId,
        /// Every named plugin, by name.
        members: Vec<Member>,
    },
    /// The watch started with this snapshot; [`SessionEvent::Presence`] follows from `seq + 1`.
    Watching {
        /// Which request.
        request: RequestId,
        /// The registry sequence number the snapshot shows.
        seq: u64,
        /// Every named plugin, by name.
        members: Vec<Member>,
    },
    /// The watch fell behind and the broker dropped the changes it did not
    /// read; this is the registry at `seq`, and replaces what the watch knew.
    /// [`SessionEvent::Presence`] follows from `seq + 1`.
    Resynced {
        /// The registry sequence number the snapshot shows.
        seq: u64,
        /// Every named plugin, by name.
        members: Vec<Member>,
    },
    /// A change, numbered without gaps (the session checks).
    Presence {
        /// Its number.
        seq: u64,
        /// The change.
        presence: Presence,
    },
    /// The answer to `stats`.
    Stats {
        /// Which request.
        request: RequestId,
        /// Per unix user (empty when the broker did not offer
        /// [`crate::control::FEATURE_STATS_UIDS`]).
        uids: Vec<UidStats>,
        /// Refusals and disconnects by cause since the broker started
        /// (empty when the broker did not offer
        /// [`crate::control::FEATURE_STATS_COUNTERS`]).
        counters: Vec<CauseCount>,
        /// Per key.
        keys: Vec<KeyStats>,
        /// Per name.
        names: Vec<NameStats>,
    },
    /// Something the broker did, for a monitor ([`crate::Session::monitor`]).
    Monitor(MonitorEvent),
    /// Someone opens a channel to us: `accept` or `reject` it.
    Incoming {
        /// Our id for it.
        channel: ChannelId,
        /// The opener's name, if any.
        from_name: Option<Name>,
        /// The opener's key.
        from_key: PublicKey,
        /// What it will speak.
        protocol: String,
        /// What it sent along.
        metadata: Bytes,
        /// Whether to wait for a direct path after accepting.
        path: IncomingPath,
    },
    /// Our open succeeded.
    Opened {
        /// Which request.
        request: RequestId,
        /// The channel.
        channel: ChannelId,
        /// The peer's key.
        peer: PublicKey,
        /// How to reach it.
        path: OpenedPath,
        /// The runtime's token for the socketpair end, for [`OpenedPath::SocketPair`].
        fd: Option<u64>,
    },
    /// The path of a channel we accepted. A socketpair can arrive for a
    /// channel that was reset meanwhile: then close its descriptor.
    ChannelPath {
        /// The channel.
        channel: ChannelId,
        /// The path.
        path: ChannelPath,
        /// The runtime's token for the socketpair end, for [`ChannelPath::SocketPair`].
        fd: Option<u64>,
    },
    /// The channel has bytes to [`Session::recv`](super::Session::recv), or
    /// its end (FIN, or both directions done). Said once until a read finds
    /// nothing.
    Readable {
        /// The channel.
        channel: ChannelId,
    },
    /// The channel ended in both directions: the peer or the broker reset
    /// it, or (with [`ErrorCode::OpenTimeout`]) an accepted channel's path
    /// did not come in time and the session reset it.
    Reset {
        /// The channel.
        channel: ChannelId,
        /// Why.
        code: ErrorCode,
        /// Why, for people.
        reason: String,
    },
    /// Both directions finished: the channel is gone.
    ChannelClosed {
        /// The channel.
        channel: ChannelId,
    },
    /// More can be sent on the channel.
    Writable {
        /// The channel.
        channel: ChannelId,
    },
    /// A request the connection's end left unanswered: it failed. With
    /// `reconnecting`, the session reconnects (worth retrying after
    /// [`SessionEvent::Reconnected`]).
    RequestLost {
        /// Which.
        request: RequestId,
        /// Whether the session reconnects.
        reconnecting: bool,
    },
    /// The connection this channel was on is lost (the session reconnects):
    /// here is what it received and nobody read, and how it had ended, if it
    /// had. The session forgets it; its id may be another channel's on the
    /// next connection.
    ChannelLost {
        /// The channel.
        channel: ChannelId,
        /// Received, not read, in order.
        unread: VecDeque<Bytes>,
        /// [`Recv::Finished`](super::Recv::Finished) or
        /// [`Recv::Reset`](super::Recv::Reset), if it had ended.
        end: Option<super::Recv>,
    },
    /// The connection was lost and the session reconnects: the first loss
    /// of an outage (once until [`SessionEvent::Reconnected`]). Requests in
    /// flight and channels were lost before it.
    Lost {
        /// Why.
        reason: String,
    },
    /// An attempt to reconnect failed (no socket, no handshake, no hello,
    /// or the broker refused the name or the watch); the next follows.
    AttemptFailed {
        /// Which attempt of this outage (from 1).
        attempt: u32,
        /// Why.
        reason: String,
    },
    /// Connected again: the name is the session's again (held, or in line
    /// for it when it waits for it) and the watch restarted (their
    /// [`SessionEvent::Registered`] and [`SessionEvent::Watching`] came
    /// before, with the session's own request ids). Requests work again.
    Reconnected {
        /// The attempts it took (at least 1).
        attempts: u32,
    },
    /// The connection is over for good.
    Closed {
        /// The broker's code, or the session's own (a request or ping
        /// unanswered: [`ErrorCode::IdleTimeout`]), if there is one.
        code: Option<ErrorCode>,
        /// Why.
        reason: String,
    },
}

/// Why a session call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The handshake failed.
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    /// The wire failed (box-stream or mux).
    #[error("{0}")]
    Wire(#[from] WireError),
    /// The broker sent a control message that does not parse.
    #[error("malformed control message: {0}")]
    Control(#[from] DecodeError),
    /// The broker broke the protocol.
    #[error("the broker broke the protocol: {0}")]
    Protocol(&'static str),
    /// Not yet: the broker has not said hello on the first connection.
    #[error("the session is not ready yet")]
    NotReady,
    /// The session is over.
    #[error("the session is closed")]
    Closed,
    /// The connection is lost and the session reconnects: not now.
    #[error("the connection to the broker is lost; reconnecting")]
    Reconnecting,
    /// The session did not ask for a socket.
    #[error("the session did not ask for a connection")]
    NotDialing,
    /// No such channel.
    #[error("no channel {0}")]
    UnknownChannel(ChannelId),
    /// The channel is not open for this (not yet answered, or awaiting its path).
    #[error("channel {0} is not open")]
    ChannelNotOpen(ChannelId),
    /// This connection has used all 2^31 channel ids it may allocate.
    #[error("no channel ids left on this connection")]
    ChannelIdsExhausted,
    /// A field over its limit.
    #[error("the {0} is too long")]
    TooLong(&'static str),
    /// The broker sent a reply (or resync) of more entries than
    /// [`SessionConfig::max_reply_entries`](super::SessionConfig).
    #[error("the broker sent a reply of more than {0} entries")]
    ReplyTooLarge(usize),
    /// The broker did not offer what this needs (an older broker).
    #[error("the broker does not support {0}")]
    Unsupported(&'static str),
}

impl From<MuxError> for SessionError {
    fn from(e: MuxError) -> Self {
        SessionError::Wire(WireError::Mux(e))
    }
}

impl From<ChannelError> for SessionError {
    fn from(e: ChannelError) -> Self {
        match e {
            ChannelError::Unknown(id) => SessionError::UnknownChannel(id),
            ChannelError::Finished(id) => SessionError::ChannelNotOpen(id),
        }
    }
}
