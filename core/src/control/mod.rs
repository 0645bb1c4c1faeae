//! The control protocol: the messages on channel 0.
//!
//! Channel 0 carries a stream of messages, each `length: u32 BE` (of what
//! follows, at most [`MAX_MESSAGE`]) then `kind: u8` then the body. The
//! layout of every message is in `docs/PROTOCOL.md` §4.

mod codec;
mod message;
mod name;

pub use codec::{decode, encode, encoded_len, ControlDecoder, DecodeError};
pub(crate) use codec::{KEY_STATS_LEN, UID_STATS_LEN};
pub use message::*;
pub use name::{InvalidName, Name};

/// Largest control message, length prefix excluded.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Largest `metadata` in an open.
pub const MAX_METADATA: usize = 4096;
/// Largest free-text field (`protocol`).
pub const MAX_SHORT_TEXT: usize = 255;
/// Largest human message or reason.
pub const MAX_TEXT: usize = 1024;

/// Why something failed or was reset: one code space for control errors,
/// channel resets and connection goodbyes. Unknown codes are kept, not refused,
/// so that newer peers can add codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A message could not be parsed.
    Malformed,
    /// No protocol version in common.
    UnsupportedVersion,
    /// The policy does not allow it.
    NotPermitted,
    /// The name has an owner.
    NameTaken,
    /// This connection already has a name.
    AlreadyRegistered,
    /// Nobody has that name.
    NoSuchName,
    /// The owner of the name did not answer in time.
    OpenTimeout,
    /// The owner of the name refused the channel.
    Rejected,
    /// The key holds as many channels as it may.
    TooManyChannels,
    /// The key has as many unanswered opens as it may.
    TooManyPendingOpens,
    /// The target's control queue is half full (it is not reading); it was
    /// not disturbed.
    PeerBusy,
    /// The other end of the channel went away.
    PeerGone,
    /// A request that needs a watch, without one (or a second watch).
    WatchState,
    /// The channel id is not one this connection may use.
    UnknownChannel,
    /// The broker holds as many connections as it may (in total or for this key).
    TooManyConnections,
    /// The broker is shutting down.
    Shutdown,
    /// The peer broke the protocol; the connection ends.
    ProtocolViolation,
    /// Nothing was heard for too long.
    IdleTimeout,
    /// The connection did not read what it asked for in time.
    SlowReader,
    /// The application ended the channel.
    Cancelled,
    /// The first message did not come in time.
    HelloTimeout,
    /// The key (or the broker in all) has as many bytes of buffer reserved as it may.
    TooManyBytes,
    /// Asked too often: the same request later may succeed.
    TooFast,
    /// A code this version does not know.
    Other(u16),
}

impl ErrorCode {
    /// The code on the wire.
    pub fn to_u16(self) -> u16 {
        match self {
            ErrorCode::Malformed => 1,
            ErrorCode::UnsupportedVersion => 2,
            ErrorCode::NotPermitted => 3,
            ErrorCode::NameTaken => 4,
            ErrorCode::AlreadyRegistered => 5,
            ErrorCode::NoSuchName => 6,
            ErrorCode::OpenTimeout => 7,
            ErrorCode::Rejected => 8,
            ErrorCode::TooManyChannels => 9,
            ErrorCode::TooManyPendingOpens => 10,
            ErrorCode::PeerBusy => 11,
            ErrorCode::PeerGone => 12,
            ErrorCode::WatchState => 13,
            ErrorCode::UnknownChannel => 14,
            ErrorCode::TooManyConnections => 15,
            ErrorCode::Shutdown => 16,
            ErrorCode::ProtocolViolation => 17,
            ErrorCode::IdleTimeout => 18,
            ErrorCode::SlowReader => 19,
            ErrorCode::Cancelled => 20,
            ErrorCode::HelloTimeout => 21,
            ErrorCode::TooManyBytes => 22,
            ErrorCode::TooFast => 23,
            ErrorCode::Other(code) => code,
        }
    }

    /// The code for a number from the wire.
    pub fn from_u16(code: u16) -> Self {
        match code {
            1 => ErrorCode::Malformed,
            2 => ErrorCode::UnsupportedVersion,
            3 => ErrorCode::NotPermitted,
            4 => ErrorCode::NameTaken,
            5 => ErrorCode::AlreadyRegistered,
            6 => ErrorCode::NoSuchName,
            7 => ErrorCode::OpenTimeout,
            8 => ErrorCode::Rejected,
            9 => ErrorCode::TooManyChannels,
            10 => ErrorCode::TooManyPendingOpens,
            11 => ErrorCode::PeerBusy,
            12 => ErrorCode::PeerGone,
            13 => ErrorCode::WatchState,
            14 => ErrorCode::UnknownChannel,
            15 => ErrorCode::TooManyConnections,
            16 => ErrorCode::Shutdown,
            17 => ErrorCode::ProtocolViolation,
            18 => ErrorCode::IdleTimeout,
            19 => ErrorCode::SlowReader,
            20 => ErrorCode::Cancelled,
            21 => ErrorCode::HelloTimeout,
            22 => ErrorCode::TooManyBytes,
            23 => ErrorCode::TooFast,
            other => ErrorCode::Other(other),
        }
    }
}

impl core::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let text = match self {
            ErrorCode::Malformed => "malformed message",
            ErrorCode::UnsupportedVersion => "no protocol version in common",
            ErrorCode::NotPermitted => "not permitted by the broker's policy",
            ErrorCode::NameTaken => "the name is taken",
            ErrorCode::AlreadyRegistered => "this connection already has a name",
            ErrorCode::NoSuchName => "nobody has that name",
            ErrorCode::OpenTimeout => "the owner did not answer in time",
            ErrorCode::Rejected => "the owner refused the channel",
            ErrorCode::TooManyChannels => "too many channels for this key",
            ErrorCode::TooManyPendingOpens => "too many unanswered opens for this key",
            ErrorCode::PeerBusy => "the target's control queue is half full",
            ErrorCode::PeerGone => "the other end went away",
            ErrorCode::WatchState => "not watching, or already watching",
            ErrorCode::UnknownChannel => "unknown channel",
            ErrorCode::TooManyConnections => "too many connections",
            ErrorCode::Shutdown => "the broker is shutting down",
            ErrorCode::ProtocolViolation => "protocol violation",
            ErrorCode::IdleTimeout => "nothing heard for too long",
            ErrorCode::SlowReader => "did not read what it asked for in time",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::HelloTimeout => "no hello in time",
            ErrorCode::TooManyBytes => "too many bytes of buffer reserved",
            ErrorCode::TooFast => "asked too often",
            ErrorCode::Other(code) => return write!(f, "error {code}"),
        };
        f.write_str(text)
    }
}
