//! The byte layout of control messages.
//!
//! Every message is `length: u32` (of kind and body), `kind: u8`, then the
//! body; integers are big-endian. Variable fields carry their own length:
//! `name8` and `str8` a `u8`, `str16` and `bytes16` a `u16`, lists a `u32`
//! count. Decoding is strict: every byte has one meaning, so a message that
//! decodes re-encodes to the same bytes, and a body must be consumed exactly.
//!
//! Encoding and [`encoded_len`] share one writer (over a byte buffer or a
//! counter), so the size the broker pages by is the size it sends.

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};

use super::{
    AnnouncedLimits, CauseCount, ChannelPath, ErrorCode, IncomingPath, InvalidName, KeyStats,
    Member, Message, MonitorEvent, MonitorKind, Name, NameStats, OpenedPath, Outcome, Presence,
    TransportKind, UidStats, Usage, MAX_MESSAGE, MAX_METADATA, MAX_SHORT_TEXT, MAX_TEXT,
};
use crate::keys::PublicKey;

/// Size of the length prefix.
const PREFIX_LEN: usize = 4;
/// Size of a public key on the wire.
const KEY_LEN: usize = 32;

/// Smallest encoded [`Member`] (a one-byte name); bounds what a count may claim.
const MEMBER_MIN_LEN: usize = 1 + 1 + KEY_LEN + 1 + 8;
/// Encoded [`Usage`].
const USAGE_LEN: usize = 4 + 4 + 8 + 8 + 8;
/// Encoded [`KeyStats`].
pub(crate) const KEY_STATS_LEN: usize = KEY_LEN + USAGE_LEN;
/// Encoded [`UidStats`].
pub(crate) const UID_STATS_LEN: usize = 4 + USAGE_LEN;
/// Smallest encoded [`CauseCount`]: outcome, count, an empty cause.
const CAUSE_COUNT_MIN_LEN: usize = 1 + 8 + 1;
/// Smallest encoded [`NameStats`].
const NAME_STATS_MIN_LEN: usize = 1 + 1 + KEY_LEN + USAGE_LEN;

/// Message kinds, the byte after the length prefix.
mod kind {
    pub const CLIENT_HELLO: u8 = 0x01;
    pub const BROKER_HELLO: u8 = 0x02;
    pub const REGISTER: u8 = 0x10;
    pub const LIST: u8 = 0x11;
    pub const WATCH: u8 = 0x12;
    pub const UNWATCH: u8 = 0x13;
    pub const STATS: u8 = 0x14;
    pub const OPEN: u8 = 0x15;
    pub const ACCEPT: u8 = 0x16;
    pub const REJECT: u8 = 0x17;
    pub const DIRECT_FAILED: u8 = 0x18;
    pub const ERROR: u8 = 0x20;
    pub const OK: u8 = 0x21;
    pub const REGISTERED: u8 = 0x22;
    pub const NAME_ACQUIRED: u8 = 0x23;
    pub const LIST_PAGE: u8 = 0x24;
    pub const SNAPSHOT: u8 = 0x25;
    pub const PRESENCE_EVENT: u8 = 0x26;
    pub const STATS_PAGE: u8 = 0x27;
    pub const INCOMING: u8 = 0x28;
    pub const OPENED: u8 = 0x29;
    pub const CHANNEL_PATH: u8 = 0x2A;
    pub const RESYNC: u8 = 0x2B;
    pub const UID_STATS_PAGE: u8 = 0x2C;
    pub const COUNTER_PAGE: u8 = 0x2D;
    pub const MONITOR: u8 = 0x19;
    pub const MONITOR_EVENT: u8 = 0x2E;
}

// Flag bits of `register` and `open`; the others must be zero, so that they
// can mean something later.
const FLAG_WAIT: u8 = 0x01;
const FLAG_DIRECT: u8 = 0x01;
/// Monitor: a key follows. MonitorEvent: a key follows, then (0x02) a peer.
const FLAG_KEY: u8 = 0x01;
const FLAG_PEER: u8 = 0x02;

const TRANSPORT_UNIX: u8 = 1;
const TRANSPORT_TCP: u8 = 2;

const PRESENCE_UP: u8 = 1;
const PRESENCE_DOWN: u8 = 2;
const PRESENCE_OWNER_CHANGED: u8 = 3;

// Path codes, per message: `channel path` and `opened` share 0 and 1,
// `incoming` and `opened` number the rest on their own.
const PATH_RELAY: u8 = 0;
const PATH_SOCKET_PAIR: u8 = 1;
const PATH_EXPECT_DIAL: u8 = 1;
const PATH_AWAIT_PATH: u8 = 2;
const PATH_DIAL: u8 = 2;

/// Why bytes are not a control message. Any of them ends the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The length prefix (or the body given to [`decode`]) is over [`MAX_MESSAGE`].
    #[error("a {len}-byte control message; the limit is {}", MAX_MESSAGE)]
    TooLong {
        /// The announced length.
        len: usize,
    },
    /// A message without even a kind byte.
    #[error("an empty control message")]
    Empty,
    /// The body ended inside a field.
    #[error("a control message ended early")]
    Truncated,
    /// A kind this version does not know.
    #[error("unknown control message kind {0:#04x}")]
    UnknownKind(u8),
    /// Bytes left after the last field.
    #[error("{0} bytes after the end of a control message")]
    TrailingBytes(usize),
    /// A name field is not a [`Name`].
    #[error("invalid name: {0}")]
    BadName(InvalidName),
    /// A text field is not UTF-8.
    #[error("the {field} is not UTF-8")]
    BadUtf8 {
        /// Which field.
        field: &'static str,
    },
    /// A field is longer than its limit.
    #[error("the {field} has {len} bytes; the limit is {max}")]
    FieldTooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// Its limit.
        max: usize,
    },
    /// Flag bits that are not defined are set.
    #[error("undefined flags {flags:#04x} in a message of kind {kind:#04x}")]
    BadFlags {
        /// The message kind.
        kind: u8,
        /// The whole flags byte.
        flags: u8,
    },
    /// A monitor event of a kind this version does not know.
    #[error("unknown monitor event kind {0}")]
    BadMonitorKind(u8),
    /// A counter's outcome other than refusal (0) or disconnect (1).
    #[error("unknown counter outcome {0}")]
    BadOutcome(u8),
    /// A transport other than unix (1) or TCP (2).
    #[error("unknown transport {0}")]
    BadTransport(u8),
    /// A path other than those defined for the message.
    #[error("unknown channel path {0}")]
    BadPath(u8),
    /// A presence change other than up (1), down (2) or owner changed (3).
    #[error("unknown presence change {0}")]
    BadPresence(u8),
    /// A boolean other than 0 or 1.
    #[error("a boolean field holds {0}, not 0 or 1")]
    BadBool(u8),
}

/// Appends `message` with its length prefix: `len: u32` (of kind and body),
/// `kind: u8`, body.
///
/// Messages are built by this side, so limits are the caller's to keep: a
/// text or metadata over its limit, a `name` that differs from `new.name` in
/// [`Presence::OwnerChanged`], or a whole message over [`MAX_MESSAGE`] (page
/// lists by [`Member::encoded_len`]) panics in debug builds. Release builds
/// cut over-long fields to their limit, so the stream stays parseable.
pub fn encode(message: &Message, out: &mut BytesMut) {
    let start = out.len();
    out.put_u32(0);
    write_message(message, out);
    let len = out.len() - start - PREFIX_LEN;
    debug_assert!(
        len <= MAX_MESSAGE,
        "a {len}-byte control message; page it under MAX_MESSAGE"
    );
    let prefix = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    out[start..start + PREFIX_LEN].copy_from_slice(&prefix);
}

/// The number of bytes [`encode`] appends for `message`, prefix included.
pub fn encoded_len(message: &Message) -> usize {
    let mut counter = Counter(0);
    write_message(message, &mut counter);
    PREFIX_LEN + counter.0
}

/// Decodes one message from its kind and body (no length prefix). Every byte
/// must belong to a field.
pub fn decode(body: &[u8]) -> Result<Message, DecodeError> {
    if body.len() > MAX_MESSAGE {
        return Err(DecodeError::TooLong { len: body.len() });
    }
    let mut r = Reader { rest: body };
    let kind = r.u8().map_err(|_| DecodeError::Empty)?;
    let message = read_body(kind, &mut r)?;
    match r.rest.len() {
        0 => Ok(message),
        n => Err(DecodeError::TrailingBytes(n)),
    }
}

impl Member {
    /// Largest [`Member::encoded_len`]: a 255-byte name.
    pub const MAX_ENCODED_LEN: usize = 1 + Name::MAX_LEN + KEY_LEN + 1 + 8;

    /// Its size inside a list, for cutting pages under [`MAX_MESSAGE`]
    /// without encoding them first.
    pub fn encoded_len(&self) -> usize {
        1 + self.name.as_str().len() + KEY_LEN + 1 + 8
    }
}

/// Splits channel 0's byte stream, arriving in pieces of any size, into
/// messages.
///
/// It holds what was pushed and not yet taken. Called after every push,
/// [`ControlDecoder::next`] refuses a length over [`MAX_MESSAGE`] from its
/// four bytes, before the body is waited for, so a peer cannot make it hold
/// more than one message and the owner's last read. After an error the
/// stream cannot be resynchronised: the owner ends the connection.
#[derive(Debug, Default)]
pub struct ControlDecoder {
    buffer: BytesMut,
}

impl ControlDecoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole message, or `Ok(None)` until more bytes arrive.
    #[allow(clippy::should_implement_trait)] // Fallible, so not an `Iterator`.
    pub fn next(&mut self) -> Result<Option<Message>, DecodeError> {
        let Some(prefix) = self.buffer.first_chunk::<PREFIX_LEN>() else {
            return Ok(None);
        };
        let len = usize::try_from(u32::from_be_bytes(*prefix)).unwrap_or(usize::MAX);
        if len == 0 {
            return Err(DecodeError::Empty);
        }
        if len > MAX_MESSAGE {
            return Err(DecodeError::TooLong { len });
        }
        let Some(body) = self.buffer.get(PREFIX_LEN..PREFIX_LEN + len) else {
            return Ok(None);
        };
        let message = decode(body)?;
        self.buffer.advance(PREFIX_LEN + len);
        Ok(Some(message))
    }

    /// Bytes held: an unfinished message, or messages not yet taken.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }
}

// ── decoding ───────────────────────────────────────────────────────────────

/// A cursor over a body. Running out of bytes is [`DecodeError::Truncated`].
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let (head, tail) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or(DecodeError::Truncated)?;
        self.rest = tail;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_be_bytes)
    }

    fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(DecodeError::BadBool(other)),
        }
    }

    /// A flags byte of which only `allowed` bits may be set.
    fn flags(&mut self, kind: u8, allowed: u8) -> Result<u8, DecodeError> {
        let flags = self.u8()?;
        if flags & !allowed != 0 {
            return Err(DecodeError::BadFlags { kind, flags });
        }
        Ok(flags)
    }

    fn key(&mut self) -> Result<PublicKey, DecodeError> {
        self.array().map(PublicKey)
    }

    fn name_bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u8()?;
        self.take(usize::from(len))
    }

    fn name(&mut self) -> Result<Name, DecodeError> {
        let bytes = self.name_bytes()?;
        Name::from_bytes(bytes).map_err(DecodeError::BadName)
    }

    /// A `name8` where length 0 means no name.
    fn optional_name(&mut self) -> Result<Option<Name>, DecodeError> {
        match self.name_bytes()? {
            [] => Ok(None),
            bytes => Name::from_bytes(bytes)
                .map(Some)
                .map_err(DecodeError::BadName),
        }
    }

    fn str8(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let len = self.u8()?;
        let bytes = self.take(usize::from(len))?;
        utf8(bytes, field)
    }

    fn str16(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let bytes = self.bytes16(field, MAX_TEXT)?;
        utf8(bytes, field)
    }

    fn bytes16(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = usize::from(self.u16()?);
        if len > max {
            return Err(DecodeError::FieldTooLong { field, len, max });
        }
        self.take(len)
    }

    fn token(&mut self) -> Result<[u8; 32], DecodeError> {
        self.array()
    }

    fn transport(&mut self) -> Result<TransportKind, DecodeError> {
        match self.u8()? {
            TRANSPORT_UNIX => Ok(TransportKind::Unix),
            TRANSPORT_TCP => Ok(TransportKind::Tcp),
            other => Err(DecodeError::BadTransport(other)),
        }
    }

    /// A member's fields after its name.
    fn member_after_name(&mut self, name: Name) -> Result<Member, DecodeError> {
        Ok(Member {
            name,
            key: self.key()?,
            transport: self.transport()?,
            connected_ms: self.u64()?,
        })
    }

    fn member(&mut self) -> Result<Member, DecodeError> {
        let name = self.name()?;
        self.member_after_name(name)
    }

    fn usage(&mut self) -> Result<Usage, DecodeError> {
        Ok(Usage {
            connections: self.u32()?,
            channels: self.u32()?,
            bytes_in: self.u64()?,
            bytes_out: self.u64()?,
            queued: self.u64()?,
        })
    }

    /// A `u32` count followed by that many entries of at least `min_len`
    /// bytes each. A count the rest of the body cannot hold is refused before
    /// anything is allocated for it.
    fn list<T>(
        &mut self,
        min_len: usize,
        mut entry: impl FnMut(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, DecodeError> {
        let count = usize::try_from(self.u32()?).unwrap_or(usize::MAX);
        if count > self.rest.len() / min_len {
            return Err(DecodeError::Truncated);
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            entries.push(entry(self)?);
        }
        Ok(entries)
    }

    fn members(&mut self) -> Result<Vec<Member>, DecodeError> {
        self.list(MEMBER_MIN_LEN, Self::member)
    }
}

fn utf8(bytes: &[u8], field: &'static str) -> Result<String, DecodeError> {
    core::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| DecodeError::BadUtf8 { field })
}

fn read_body(kind: u8, r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    Ok(match kind {
        kind::CLIENT_HELLO => Message::ClientHello {
            min_version: r.u16()?,
            max_version: r.u16()?,
            features: r.u64()?,
        },
        kind::BROKER_HELLO => Message::BrokerHello {
            version: r.u16()?,
            features: r.u64()?,
            transport: r.transport()?,
            limits: AnnouncedLimits {
                max_frame: r.u32()?,
                initial_window: r.u32()?,
                max_window: r.u32()?,
                max_channels: r.u32()?,
                max_pending_opens: r.u32()?,
                open_timeout_ms: r.u32()?,
                idle_timeout_ms: r.u32()?,
                max_control_queue: r.u32()?,
            },
        },
        kind::REGISTER => {
            let request = r.u32()?;
            let flags = r.flags(kind, FLAG_WAIT)?;
            Message::Register {
                request,
                wait: flags & FLAG_WAIT != 0,
                name: r.name()?,
                direct_addr: r.str16("direct address")?,
            }
        }
        kind::LIST => Message::List { request: r.u32()? },
        kind::WATCH => Message::Watch { request: r.u32()? },
        kind::UNWATCH => Message::Unwatch { request: r.u32()? },
        kind::STATS => Message::Stats { request: r.u32()? },
        kind::MONITOR => {
            let request = r.u32()?;
            let flags = r.flags(kind, FLAG_KEY)?;
            Message::Monitor {
                request,
                key: (flags & FLAG_KEY != 0).then(|| r.key()).transpose()?,
                name: r.optional_name()?,
            }
        }
        kind::MONITOR_EVENT => {
            let code = r.u8()?;
            let kind_of = MonitorKind::from_u8(code).ok_or(DecodeError::BadMonitorKind(code))?;
            let channel = r.u64()?;
            let flags = r.flags(kind, FLAG_KEY | FLAG_PEER)?;
            Message::MonitorEvent(MonitorEvent {
                kind: kind_of,
                channel,
                key: (flags & FLAG_KEY != 0).then(|| r.key()).transpose()?,
                peer: (flags & FLAG_PEER != 0).then(|| r.key()).transpose()?,
                name: r.optional_name()?,
                cause: r.str8("cause")?,
                to_target: r.u64()?,
                to_opener: r.u64()?,
                duration_ms: r.u64()?,
                detail: r.str16("detail")?,
            })
        }
        kind::OPEN => {
            let request = r.u32()?;
            let channel = r.u32()?;
            let flags = r.flags(kind, FLAG_DIRECT)?;
            Message::Open {
                request,
                channel,
                direct: flags & FLAG_DIRECT != 0,
                name: r.name()?,
                protocol: r.str8("protocol")?,
                metadata: Bytes::copy_from_slice(r.bytes16("metadata", MAX_METADATA)?),
            }
        }
        kind::ACCEPT => Message::Accept { channel: r.u32()? },
        kind::REJECT => Message::Reject {
            channel: r.u32()?,
            reason: r.str16("reason")?,
        },
        kind::DIRECT_FAILED => Message::DirectFailed { channel: r.u32()? },
        kind::ERROR => Message::Error {
            request: r.u32()?,
            code: ErrorCode::from_u16(r.u16()?),
            message: r.str16("error message")?,
        },
        kind::OK => Message::Ok { request: r.u32()? },
        kind::REGISTERED => Message::Registered {
            request: r.u32()?,
            queued: r.bool()?,
        },
        kind::NAME_ACQUIRED => Message::NameAcquired { name: r.name()? },
        kind::LIST_PAGE => Message::ListPage {
            request: r.u32()?,
            last: r.bool()?,
            members: r.members()?,
        },
        kind::SNAPSHOT => Message::Snapshot {
            request: r.u32()?,
            seq: r.u64()?,
            last: r.bool()?,
            members: r.members()?,
        },
        kind::RESYNC => Message::Resync {
            seq: r.u64()?,
            last: r.bool()?,
            members: r.members()?,
        },
        kind::PRESENCE_EVENT => Message::PresenceEvent {
            seq: r.u64()?,
            presence: read_presence(r)?,
        },
        kind::UID_STATS_PAGE => Message::UidStatsPage {
            request: r.u32()?,
            uids: r.list(UID_STATS_LEN, |r| {
                Ok(UidStats {
                    uid: r.u32()?,
                    usage: r.usage()?,
                })
            })?,
        },
        kind::COUNTER_PAGE => Message::CounterPage {
            request: r.u32()?,
            counters: r.list(CAUSE_COUNT_MIN_LEN, |r| {
                Ok(CauseCount {
                    outcome: match r.u8()? {
                        0 => Outcome::Refusal,
                        1 => Outcome::Disconnect,
                        other => return Err(DecodeError::BadOutcome(other)),
                    },
                    count: r.u64()?,
                    cause: r.str8("cause")?,
                })
            })?,
        },
        kind::STATS_PAGE => Message::StatsPage {
            request: r.u32()?,
            last: r.bool()?,
            keys: r.list(KEY_STATS_LEN, |r| {
                Ok(KeyStats {
                    key: r.key()?,
                    usage: r.usage()?,
                })
            })?,
            names: r.list(NAME_STATS_MIN_LEN, |r| {
                Ok(NameStats {
                    name: r.name()?,
                    key: r.key()?,
                    usage: r.usage()?,
                })
            })?,
        },
        kind::INCOMING => Message::Incoming {
            channel: r.u32()?,
            from_name: r.optional_name()?,
            from_key: r.key()?,
            protocol: r.str8("protocol")?,
            metadata: Bytes::copy_from_slice(r.bytes16("metadata", MAX_METADATA)?),
            path: match r.u8()? {
                PATH_RELAY => IncomingPath::Relay,
                PATH_EXPECT_DIAL => IncomingPath::ExpectDial { token: r.token()? },
                PATH_AWAIT_PATH => IncomingPath::AwaitPath,
                other => return Err(DecodeError::BadPath(other)),
            },
        },
        kind::OPENED => Message::Opened {
            request: r.u32()?,
            channel: r.u32()?,
            peer: r.key()?,
            path: match r.u8()? {
                PATH_RELAY => OpenedPath::Relay,
                PATH_SOCKET_PAIR => OpenedPath::SocketPair,
                PATH_DIAL => OpenedPath::Dial {
                    addr: r.str16("dial address")?,
                    token: r.token()?,
                },
                other => return Err(DecodeError::BadPath(other)),
            },
        },
        kind::CHANNEL_PATH => Message::ChannelPath {
            channel: r.u32()?,
            path: match r.u8()? {
                PATH_RELAY => ChannelPath::Relay,
                PATH_SOCKET_PAIR => ChannelPath::SocketPair,
                other => return Err(DecodeError::BadPath(other)),
            },
        },
        other => return Err(DecodeError::UnknownKind(other)),
    })
}

fn read_presence(r: &mut Reader<'_>) -> Result<Presence, DecodeError> {
    Ok(match r.u8()? {
        PRESENCE_UP => Presence::Up(r.member()?),
        PRESENCE_DOWN => Presence::Down {
            name: r.name()?,
            key: r.key()?,
        },
        PRESENCE_OWNER_CHANGED => {
            // The name is on the wire once: it is also the new owner's.
            let name = r.name()?;
            let old_key = r.key()?;
            let new = r.member_after_name(name.clone())?;
            Presence::OwnerChanged { name, old_key, new }
        }
        other => return Err(DecodeError::BadPresence(other)),
    })
}

// ── encoding ───────────────────────────────────────────────────────────────

/// Where encoded bytes go: a buffer, or a counter for [`encoded_len`].
trait Sink {
    fn put(&mut self, bytes: &[u8]);

    fn u8(&mut self, v: u8) {
        self.put(&[v]);
    }

    fn u16(&mut self, v: u16) {
        self.put(&v.to_be_bytes());
    }

    fn u32(&mut self, v: u32) {
        self.put(&v.to_be_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.put(&v.to_be_bytes());
    }

    fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }

    fn key(&mut self, key: &PublicKey) {
        self.put(key.as_bytes());
    }

    fn name(&mut self, name: &Name) {
        // A `Name` holds 1..=255 bytes by construction.
        let bytes = name.as_str().as_bytes();
        self.u8(bytes.len() as u8);
        self.put(bytes);
    }

    /// A `name8`, length 0 for none.
    fn optional_name(&mut self, name: Option<&Name>) {
        match name {
            Some(name) => self.name(name),
            None => self.u8(0),
        }
    }

    fn str8(&mut self, field: &str, text: &str) {
        let text = cut(field, text, MAX_SHORT_TEXT);
        self.u8(text.len() as u8);
        self.put(text.as_bytes());
    }

    fn str16(&mut self, field: &str, text: &str) {
        let text = cut(field, text, MAX_TEXT);
        self.u16(text.len() as u16);
        self.put(text.as_bytes());
    }

    fn metadata(&mut self, bytes: &[u8]) {
        debug_assert!(
            bytes.len() <= MAX_METADATA,
            "{}-byte metadata; the limit is {MAX_METADATA}",
            bytes.len()
        );
        let bytes = &bytes[..bytes.len().min(MAX_METADATA)];
        self.u16(bytes.len() as u16);
        self.put(bytes);
    }

    fn count(&mut self, len: usize) {
        // Lists are paged far below 2^32 entries by MAX_MESSAGE.
        self.u32(u32::try_from(len).unwrap_or(u32::MAX));
    }

    fn transport(&mut self, transport: TransportKind) {
        self.u8(match transport {
            TransportKind::Unix => TRANSPORT_UNIX,
            TransportKind::Tcp => TRANSPORT_TCP,
        });
    }

    fn member_after_name(&mut self, member: &Member) {
        self.key(&member.key);
        self.transport(member.transport);
        self.u64(member.connected_ms);
    }

    fn member(&mut self, member: &Member) {
        self.name(&member.name);
        self.member_after_name(member);
    }

    fn members(&mut self, members: &[Member]) {
        self.count(members.len());
        for member in members {
            self.member(member);
        }
    }

    fn usage(&mut self, usage: &Usage) {
        self.u32(usage.connections);
        self.u32(usage.channels);
        self.u64(usage.bytes_in);
        self.u64(usage.bytes_out);
        self.u64(usage.queued);
    }
}

impl Sink for BytesMut {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Counts instead of writing.
struct Counter(usize);

impl Sink for Counter {
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
}

/// `text` cut to at most `max` bytes at a character boundary; over-long text
/// is a bug in the caller (see [`encode`]).
fn cut<'t>(field: &str, text: &'t str, max: usize) -> &'t str {
    debug_assert!(
        text.len() <= max,
        "a {}-byte {field}; the limit is {max}",
        text.len()
    );
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn write_message(message: &Message, s: &mut impl Sink) {
    match message {
        Message::ClientHello {
            min_version,
            max_version,
            features,
        } => {
            s.u8(kind::CLIENT_HELLO);
            s.u16(*min_version);
            s.u16(*max_version);
            s.u64(*features);
        }
        Message::BrokerHello {
            version,
            features,
            transport,
            limits,
        } => {
            s.u8(kind::BROKER_HELLO);
            s.u16(*version);
            s.u64(*features);
            s.transport(*transport);
            s.u32(limits.max_frame);
            s.u32(limits.initial_window);
            s.u32(limits.max_window);
            s.u32(limits.max_channels);
            s.u32(limits.max_pending_opens);
            s.u32(limits.open_timeout_ms);
            s.u32(limits.idle_timeout_ms);
            s.u32(limits.max_control_queue);
        }
        Message::Register {
            request,
            name,
            wait,
            direct_addr,
        } => {
            s.u8(kind::REGISTER);
            s.u32(*request);
            s.u8(if *wait { FLAG_WAIT } else { 0 });
            s.name(name);
            s.str16("direct address", direct_addr);
        }
        Message::List { request } => {
            s.u8(kind::LIST);
            s.u32(*request);
        }
        Message::Watch { request } => {
            s.u8(kind::WATCH);
            s.u32(*request);
        }
        Message::Unwatch { request } => {
            s.u8(kind::UNWATCH);
            s.u32(*request);
        }
        Message::Stats { request } => {
            s.u8(kind::STATS);
            s.u32(*request);
        }
        Message::Monitor { request, key, name } => {
            s.u8(kind::MONITOR);
            s.u32(*request);
            s.u8(if key.is_some() { FLAG_KEY } else { 0 });
            if let Some(key) = key {
                s.key(key);
            }
            s.optional_name(name.as_ref());
        }
        Message::MonitorEvent(event) => {
            s.u8(kind::MONITOR_EVENT);
            s.u8(event.kind.to_u8());
            s.u64(event.channel);
            let flags = match (event.key.is_some(), event.peer.is_some()) {
                (true, true) => FLAG_KEY | FLAG_PEER,
                (true, false) => FLAG_KEY,
                (false, true) => FLAG_PEER,
                (false, false) => 0,
            };
            s.u8(flags);
            for key in [&event.key, &event.peer].into_iter().flatten() {
                s.key(key);
            }
            s.optional_name(event.name.as_ref());
            s.str8("cause", &event.cause);
            s.u64(event.to_target);
            s.u64(event.to_opener);
            s.u64(event.duration_ms);
            s.str16("detail", &event.detail);
        }
        Message::Open {
            request,
            channel,
            direct,
            name,
            protocol,
            metadata,
        } => {
            s.u8(kind::OPEN);
            s.u32(*request);
            s.u32(*channel);
            s.u8(if *direct { FLAG_DIRECT } else { 0 });
            s.name(name);
            s.str8("protocol", protocol);
            s.metadata(metadata);
        }
        Message::Accept { channel } => {
            s.u8(kind::ACCEPT);
            s.u32(*channel);
        }
        Message::Reject { channel, reason } => {
            s.u8(kind::REJECT);
            s.u32(*channel);
            s.str16("reason", reason);
        }
        Message::DirectFailed { channel } => {
            s.u8(kind::DIRECT_FAILED);
            s.u32(*channel);
        }
        Message::Error {
            request,
            code,
            message,
        } => {
            s.u8(kind::ERROR);
            s.u32(*request);
            s.u16(code.to_u16());
            s.str16("error message", message);
        }
        Message::Ok { request } => {
            s.u8(kind::OK);
            s.u32(*request);
        }
        Message::Registered { request, queued } => {
            s.u8(kind::REGISTERED);
            s.u32(*request);
            s.bool(*queued);
        }
        Message::NameAcquired { name } => {
            s.u8(kind::NAME_ACQUIRED);
            s.name(name);
        }
        Message::ListPage {
            request,
            last,
            members,
        } => {
            s.u8(kind::LIST_PAGE);
            s.u32(*request);
            s.bool(*last);
            s.members(members);
        }
        Message::Snapshot {
            request,
            seq,
            last,
            members,
        } => {
            s.u8(kind::SNAPSHOT);
            s.u32(*request);
            s.u64(*seq);
            s.bool(*last);
            s.members(members);
        }
        Message::Resync { seq, last, members } => {
            s.u8(kind::RESYNC);
            s.u64(*seq);
            s.bool(*last);
            s.members(members);
        }
        Message::PresenceEvent { seq, presence } => {
            s.u8(kind::PRESENCE_EVENT);
            s.u64(*seq);
            match presence {
                Presence::Up(member) => {
                    s.u8(PRESENCE_UP);
                    s.member(member);
                }
                Presence::Down { name, key } => {
                    s.u8(PRESENCE_DOWN);
                    s.name(name);
                    s.key(key);
                }
                Presence::OwnerChanged { name, old_key, new } => {
                    debug_assert_eq!(name, &new.name, "the new owner holds the same name");
                    s.u8(PRESENCE_OWNER_CHANGED);
                    s.name(name);
                    s.key(old_key);
                    s.member_after_name(new);
                }
            }
        }
        Message::UidStatsPage { request, uids } => {
            s.u8(kind::UID_STATS_PAGE);
            s.u32(*request);
            s.count(uids.len());
            for entry in uids {
                s.u32(entry.uid);
                s.usage(&entry.usage);
            }
        }
        Message::CounterPage { request, counters } => {
            s.u8(kind::COUNTER_PAGE);
            s.u32(*request);
            s.count(counters.len());
            for entry in counters {
                s.u8(match entry.outcome {
                    Outcome::Refusal => 0,
                    Outcome::Disconnect => 1,
                });
                s.u64(entry.count);
                s.str8("cause", &entry.cause);
            }
        }
        Message::StatsPage {
            request,
            last,
            keys,
            names,
        } => {
            s.u8(kind::STATS_PAGE);
            s.u32(*request);
            s.bool(*last);
            s.count(keys.len());
            for entry in keys {
                s.key(&entry.key);
                s.usage(&entry.usage);
            }
            s.count(names.len());
            for entry in names {
                s.name(&entry.name);
                s.key(&entry.key);
                s.usage(&entry.usage);
            }
        }
        Message::Incoming {
            channel,
            from_name,
            from_key,
            protocol,
            metadata,
            path,
        } => {
            s.u8(kind::INCOMING);
            s.u32(*channel);
            s.optional_name(from_name.as_ref());
            s.key(from_key);
            s.str8("protocol", protocol);
            s.metadata(metadata);
            match path {
                IncomingPath::Relay => s.u8(PATH_RELAY),
                IncomingPath::ExpectDial { token } => {
                    s.u8(PATH_EXPECT_DIAL);
                    s.put(token);
                }
                IncomingPath::AwaitPath => s.u8(PATH_AWAIT_PATH),
            }
        }
        Message::Opened {
            request,
            channel,
            peer,
            path,
        } => {
            s.u8(kind::OPENED);
            s.u32(*request);
            s.u32(*channel);
            s.key(peer);
            match path {
                OpenedPath::Relay => s.u8(PATH_RELAY),
                OpenedPath::SocketPair => s.u8(PATH_SOCKET_PAIR),
                OpenedPath::Dial { addr, token } => {
                    s.u8(PATH_DIAL);
                    s.str16("dial address", addr);
                    s.put(token);
                }
            }
        }
        Message::ChannelPath { channel, path } => {
            s.u8(kind::CHANNEL_PATH);
            s.u32(*channel);
            s.u8(match path {
                ChannelPath::Relay => PATH_RELAY,
                ChannelPath::SocketPair => PATH_SOCKET_PAIR,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    //! The layout pinned byte for byte, and every way a body can be wrong.

    use super::*;

    const KEY_A: PublicKey = PublicKey([0xa1; 32]);
    const KEY_B: PublicKey = PublicKey([0xb2; 32]);

    fn name(text: &str) -> Name {
        Name::new(text).unwrap()
    }

    fn encoded(message: &Message) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode(message, &mut out);
        out.to_vec()
    }

    /// `message` encodes to exactly `body` behind its prefix, and back.
    fn assert_layout(message: Message, body: &[u8]) {
        let mut expected = (body.len() as u32).to_be_bytes().to_vec();
        expected.extend_from_slice(body);
        assert_eq!(encoded(&message), expected, "{message:?}");
        assert_eq!(encoded_len(&message), expected.len());
        assert_eq!(decode(body), Ok(message));
    }

    fn member_bytes(name: &str, key: PublicKey, transport: u8, ms: u64) -> Vec<u8> {
        [
            &[name.len() as u8][..],
            name.as_bytes(),
            &key.0,
            &[transport],
            &ms.to_be_bytes(),
        ]
        .concat()
    }

    #[test]
    fn client_hello_layout() {
        assert_layout(
            Message::ClientHello {
                min_version: 1,
                max_version: 0x0203,
                features: 0x0102_0304_0506_0708,
            },
            &[0x01, 0, 1, 2, 3, 1, 2, 3, 4, 5, 6, 7, 8],
        );
    }

    #[test]
    fn broker_hello_layout() {
        let mut body = vec![0x02, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9, 2];
        for limit in 1..=8u32 {
            body.extend_from_slice(&(limit * 0x0101).to_be_bytes());
        }
        assert_layout(
            Message::BrokerHello {
                version: 1,
                features: 9,
                transport: TransportKind::Tcp,
                limits: AnnouncedLimits {
                    max_frame: 0x0101,
                    initial_window: 0x0202,
                    max_window: 0x0303,
                    max_channels: 0x0404,
                    max_pending_opens: 0x0505,
                    open_timeout_ms: 0x0606,
                    idle_timeout_ms: 0x0707,
                    max_control_queue: 0x0808,
                },
            },
            &body,
        );
    }

    #[test]
    fn register_layout() {
        assert_layout(
            Message::Register {
                request: 7,
                name: name("echo"),
                wait: true,
                direct_addr: "tcp:h:1".into(),
            },
            b"\x10\0\0\0\x07\x01\x04echo\0\x07tcp:h:1",
        );
        assert_layout(
            Message::Register {
                request: 0x0102_0304,
                name: name("e"),
                wait: false,
                direct_addr: String::new(),
            },
            b"\x10\x01\x02\x03\x04\x00\x01e\0\0",
        );
    }

    #[test]
    fn requests_layout() {
        for (kind, message) in [
            (
                0x11,
                Message::List {
                    request: 0x0a0b0c0d,
                },
            ),
            (
                0x12,
                Message::Watch {
                    request: 0x0a0b0c0d,
                },
            ),
            (
                0x13,
                Message::Unwatch {
                    request: 0x0a0b0c0d,
                },
            ),
            (
                0x14,
                Message::Stats {
                    request: 0x0a0b0c0d,
                },
            ),
            (
                0x16,
                Message::Accept {
                    channel: 0x0a0b0c0d,
                },
            ),
            (
                0x18,
                Message::DirectFailed {
                    channel: 0x0a0b0c0d,
                },
            ),
            (
                0x21,
                Message::Ok {
                    request: 0x0a0b0c0d,
                },
            ),
        ] {
            assert_layout(message, &[kind, 0x0a, 0x0b, 0x0c, 0x0d]);
        }
    }

    #[test]
    fn open_layout() {
        assert_layout(
            Message::Open {
                request: 1,
                channel: 3,
                direct: true,
                name: name("db"),
                protocol: "sql".into(),
                metadata: Bytes::from_static(&[0xaa, 0xbb]),
            },
            b"\x15\0\0\0\x01\0\0\0\x03\x01\x02db\x03sql\0\x02\xaa\xbb",
        );
    }

    #[test]
    fn reject_error_registered_acquired_layout() {
        assert_layout(
            Message::Reject {
                channel: 2,
                reason: "no".into(),
            },
            b"\x17\0\0\0\x02\0\x02no",
        );
        assert_layout(
            Message::Error {
                request: 9,
                code: ErrorCode::NameTaken,
                message: "taken".into(),
            },
            b"\x20\0\0\0\x09\0\x04\0\x05taken",
        );
        assert_layout(
            Message::Error {
                request: 9,
                code: ErrorCode::Other(0xbeef),
                message: String::new(),
            },
            b"\x20\0\0\0\x09\xbe\xef\0\0",
        );
        assert_layout(
            Message::Registered {
                request: 5,
                queued: true,
            },
            b"\x22\0\0\0\x05\x01",
        );
        assert_layout(Message::NameAcquired { name: name("a.b") }, b"\x23\x03a.b");
    }

    #[test]
    fn lists_layout() {
        let one = Member {
            name: name("x"),
            key: KEY_A,
            transport: TransportKind::Unix,
            connected_ms: 0x0102,
        };
        let two = Member {
            name: name("yz"),
            key: KEY_B,
            transport: TransportKind::Tcp,
            connected_ms: u64::MAX,
        };
        let members = [
            member_bytes("x", KEY_A, 1, 0x0102),
            member_bytes("yz", KEY_B, 2, u64::MAX),
        ]
        .concat();
        assert_eq!(one.encoded_len(), 43);
        assert_eq!(two.encoded_len(), 44);
        assert_layout(
            Message::ListPage {
                request: 4,
                last: true,
                members: vec![one.clone(), two.clone()],
            },
            &[&b"\x24\0\0\0\x04\x01\0\0\0\x02"[..], &members].concat(),
        );
        assert_layout(
            Message::Snapshot {
                request: 4,
                seq: 0x0102_0304_0506_0708,
                last: false,
                members: vec![one.clone(), two.clone()],
            },
            &[
                &b"\x25\0\0\0\x04\x01\x02\x03\x04\x05\x06\x07\x08\x00\0\0\0\x02"[..],
                &members,
            ]
            .concat(),
        );
        assert_layout(
            Message::Resync {
                seq: 0x0102_0304_0506_0708,
                last: true,
                members: vec![one, two],
            },
            &[
                &b"\x2b\x01\x02\x03\x04\x05\x06\x07\x08\x01\0\0\0\x02"[..],
                &members,
            ]
            .concat(),
        );
        assert_layout(
            Message::ListPage {
                request: 4,
                last: false,
                members: vec![],
            },
            b"\x24\0\0\0\x04\x00\0\0\0\0",
        );
    }

    #[test]
    fn presence_layout() {
        let seq = b"\0\0\0\0\0\0\x01\x00";
        assert_layout(
            Message::PresenceEvent {
                seq: 256,
                presence: Presence::Up(Member {
                    name: name("n"),
                    key: KEY_A,
                    transport: TransportKind::Tcp,
                    connected_ms: 5,
                }),
            },
            &[&[0x26][..], seq, &[1], &member_bytes("n", KEY_A, 2, 5)].concat(),
        );
        assert_layout(
            Message::PresenceEvent {
                seq: 256,
                presence: Presence::Down {
                    name: name("n"),
                    key: KEY_A,
                },
            },
            &[&[0x26][..], seq, &[2, 1, b'n'], &KEY_A.0].concat(),
        );
        // The name once, then the old key, then the new owner without its name.
        assert_layout(
            Message::PresenceEvent {
                seq: 256,
                presence: Presence::OwnerChanged {
                    name: name("n"),
                    old_key: KEY_A,
                    new: Member {
                        name: name("n"),
                        key: KEY_B,
                        transport: TransportKind::Unix,
                        connected_ms: 7,
                    },
                },
            },
            &[
                &[0x26][..],
                seq,
                &[3, 1, b'n'],
                &KEY_A.0,
                &KEY_B.0,
                &[1],
                &7u64.to_be_bytes(),
            ]
            .concat(),
        );
    }

    #[test]
    fn stats_page_layout() {
        let usage = Usage {
            connections: 1,
            channels: 2,
            bytes_in: 3,
            bytes_out: 4,
            queued: 5,
        };
        let usage_bytes = [
            &1u32.to_be_bytes()[..],
            &2u32.to_be_bytes(),
            &3u64.to_be_bytes(),
            &4u64.to_be_bytes(),
            &5u64.to_be_bytes(),
        ]
        .concat();
        assert_layout(
            Message::StatsPage {
                request: 1,
                last: true,
                keys: vec![KeyStats {
                    key: KEY_A,
                    usage: usage.clone(),
                }],
                names: vec![NameStats {
                    name: name("n"),
                    key: KEY_B,
                    usage: usage.clone(),
                }],
            },
            &[
                &b"\x27\0\0\0\x01\x01\0\0\0\x01"[..],
                &KEY_A.0,
                &usage_bytes,
                b"\0\0\0\x01\x01n",
                &KEY_B.0,
                &usage_bytes,
            ]
            .concat(),
        );
        assert_layout(
            Message::UidStatsPage {
                request: 1,
                uids: vec![UidStats { uid: 1000, usage }],
            },
            &[&b"\x2c\0\0\0\x01\0\0\0\x01\0\0\x03\xe8"[..], &usage_bytes].concat(),
        );
        assert_layout(
            Message::CounterPage {
                request: 1,
                counters: vec![CauseCount {
                    outcome: Outcome::Disconnect,
                    cause: "goodbye".into(),
                    count: 2,
                }],
            },
            &b"\x2d\0\0\0\x01\0\0\0\x01\x01\0\0\0\0\0\0\0\x02\x07goodbye"[..],
        );
    }

    #[test]
    fn incoming_layout() {
        assert_layout(
            Message::Incoming {
                channel: 2,
                from_name: None,
                from_key: KEY_A,
                protocol: String::new(),
                metadata: Bytes::new(),
                path: IncomingPath::Relay,
            },
            &[&b"\x28\0\0\0\x02\x00"[..], &KEY_A.0, b"\x00\0\0\x00"].concat(),
        );
        assert_layout(
            Message::Incoming {
                channel: 2,
                from_name: None,
                from_key: KEY_A,
                protocol: String::new(),
                metadata: Bytes::new(),
                path: IncomingPath::AwaitPath,
            },
            &[&b"\x28\0\0\0\x02\x00"[..], &KEY_A.0, b"\x00\0\0\x02"].concat(),
        );
        assert_layout(
            Message::Incoming {
                channel: 2,
                from_name: Some(name("ab")),
                from_key: KEY_A,
                protocol: "p".into(),
                metadata: Bytes::from_static(b"m"),
                path: IncomingPath::ExpectDial { token: [0xcc; 32] },
            },
            &[
                &b"\x28\0\0\0\x02\x02ab"[..],
                &KEY_A.0,
                b"\x01p\0\x01m\x01",
                &[0xcc; 32],
            ]
            .concat(),
        );
    }

    #[test]
    fn opened_and_channel_path_layout() {
        let head = [&b"\x29\0\0\0\x01\0\0\0\x03"[..], &KEY_B.0].concat();
        for (path, tail) in [
            (OpenedPath::Relay, vec![0]),
            (OpenedPath::SocketPair, vec![1]),
            (
                OpenedPath::Dial {
                    addr: "tcp:a:1".into(),
                    token: [0xdd; 32],
                },
                [&b"\x02\0\x07tcp:a:1"[..], &[0xdd; 32]].concat(),
            ),
        ] {
            assert_layout(
                Message::Opened {
                    request: 1,
                    channel: 3,
                    peer: KEY_B,
                    path,
                },
                &[&head[..], &tail].concat(),
            );
        }
        assert_layout(
            Message::ChannelPath {
                channel: 4,
                path: ChannelPath::Relay,
            },
            b"\x2a\0\0\0\x04\x00",
        );
        assert_layout(
            Message::ChannelPath {
                channel: 4,
                path: ChannelPath::SocketPair,
            },
            b"\x2a\0\0\0\x04\x01",
        );
    }

    #[test]
    fn limits_are_reachable() {
        let big = Member {
            name: name(&"m".repeat(255)),
            key: KEY_A,
            transport: TransportKind::Unix,
            connected_ms: 0,
        };
        assert_eq!(big.encoded_len(), Member::MAX_ENCODED_LEN);
        let open = Message::Open {
            request: 0,
            channel: 1,
            direct: false,
            name: big.name,
            protocol: "p".repeat(MAX_SHORT_TEXT),
            metadata: Bytes::from(vec![7; MAX_METADATA]),
        };
        let bytes = encoded(&open);
        assert_eq!(decode(&bytes[4..]), Ok(open));
        let error = Message::Error {
            request: 0,
            code: ErrorCode::Malformed,
            message: "é".repeat(MAX_TEXT / 2),
        };
        let bytes = encoded(&error);
        assert_eq!(bytes.len(), 4 + 1 + 4 + 2 + 2 + MAX_TEXT);
        assert_eq!(decode(&bytes[4..]), Ok(error));
    }

    // ── errors ─────────────────────────────────────────────────────────────

    #[test]
    fn too_long_is_refused_from_the_prefix_alone() {
        let mut decoder = ControlDecoder::new();
        decoder.push(&[0, 1, 0]);
        assert_eq!(decoder.next(), Ok(None));
        decoder.push(&[1]);
        assert_eq!(
            decoder.next(),
            Err(DecodeError::TooLong {
                len: MAX_MESSAGE + 1
            })
        );
        let mut decoder = ControlDecoder::new();
        decoder.push(&u32::MAX.to_be_bytes());
        assert_eq!(
            decoder.next(),
            Err(DecodeError::TooLong {
                len: u32::MAX as usize
            })
        );
        assert_eq!(
            decode(&vec![0x11; MAX_MESSAGE + 1]),
            Err(DecodeError::TooLong {
                len: MAX_MESSAGE + 1
            })
        );
    }

    #[test]
    fn exactly_max_message_is_buffered_then_judged() {
        // A 64 KiB list page of a kind we know: accepted as a length, then
        // decoded (here: too few members for the padding, so trailing bytes).
        let mut frame = (MAX_MESSAGE as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(b"\x24\0\0\0\x01\x01\0\0\0\0");
        frame.resize(4 + MAX_MESSAGE, 0);
        let mut decoder = ControlDecoder::new();
        decoder.push(&frame[..frame.len() - 1]);
        assert_eq!(decoder.next(), Ok(None));
        assert_eq!(decoder.buffered(), frame.len() - 1);
        decoder.push(&frame[frame.len() - 1..]);
        assert_eq!(
            decoder.next(),
            Err(DecodeError::TrailingBytes(MAX_MESSAGE - 10))
        );
    }

    #[test]
    fn empty() {
        let mut decoder = ControlDecoder::new();
        decoder.push(&[0, 0, 0, 0, 0x11]);
        assert_eq!(decoder.next(), Err(DecodeError::Empty));
        assert_eq!(decode(&[]), Err(DecodeError::Empty));
    }

    #[test]
    fn truncated() {
        assert_eq!(decode(&[0x11, 0, 0, 0]), Err(DecodeError::Truncated));
        assert_eq!(decode(&[0x23]), Err(DecodeError::Truncated));
        assert_eq!(decode(&[0x23, 3, b'a', b'b']), Err(DecodeError::Truncated));
        // A count the body cannot hold is refused before anything is allocated.
        assert_eq!(
            decode(b"\x24\0\0\0\x01\x01\xff\xff\xff\xff"),
            Err(DecodeError::Truncated)
        );
        let one_member = member_bytes("x", KEY_A, 1, 0);
        assert_eq!(
            decode(&[&b"\x24\0\0\0\x01\x01\0\0\0\x02"[..], &one_member].concat()),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            decode(&[&b"\x27\0\0\0\x01\x01\0\0\0\x01"[..], &KEY_A.0].concat()),
            Err(DecodeError::Truncated)
        );
        // The count is judged before any entry: two members cannot fit in 43
        // bytes, whatever those bytes are.
        let bad_member = member_bytes("X", KEY_A, 1, 0);
        assert_eq!(bad_member.len(), 43);
        assert_eq!(
            decode(&[&b"\x24\0\0\0\x01\x01\0\0\0\x02"[..], &bad_member].concat()),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            decode(&[&b"\x24\0\0\0\x01\x01\0\0\0\x01"[..], &bad_member].concat()),
            Err(DecodeError::BadName(InvalidName::BadCharacter('X', 0)))
        );
    }

    #[test]
    fn monitor_layouts() {
        assert_layout(
            Message::Monitor {
                request: 1,
                key: None,
                name: None,
            },
            b"\x19\0\0\0\x01\0\0",
        );
        assert_layout(
            Message::Monitor {
                request: 1,
                key: Some(KEY_A),
                name: Some(name("x")),
            },
            &[&b"\x19\0\0\0\x01\x01"[..], &KEY_A.0, b"\x01x"].concat(),
        );
        let event = MonitorEvent {
            kind: MonitorKind::Close,
            channel: 7,
            key: Some(KEY_A),
            peer: Some(KEY_B),
            name: Some(name("x")),
            cause: "c".into(),
            to_target: 1,
            to_opener: 2,
            duration_ms: 3,
            detail: "d".into(),
        };
        let fixed = |n: u64| n.to_be_bytes();
        let body = [
            &b"\x2e\x04"[..],
            &fixed(7),
            b"\x03",
            &KEY_A.0,
            &KEY_B.0,
            b"\x01x\x01c",
            &fixed(1),
            &fixed(2),
            &fixed(3),
            b"\0\x01d",
        ]
        .concat();
        assert_layout(Message::MonitorEvent(event.clone()), &body);
        // Only the peer: flag 0x02, one key.
        let peer_only = MonitorEvent {
            key: None,
            name: None,
            ..event
        };
        let body = [
            &b"\x2e\x04"[..],
            &fixed(7),
            b"\x02",
            &KEY_B.0,
            b"\0\x01c",
            &fixed(1),
            &fixed(2),
            &fixed(3),
            b"\0\x01d",
        ]
        .concat();
        assert_layout(Message::MonitorEvent(peer_only), &body);
        // A kind this version does not know; flags it does not define.
        let mut unknown = body.clone();
        unknown[1] = 10;
        assert_eq!(decode(&unknown), Err(DecodeError::BadMonitorKind(10)));
        let mut flags = body;
        flags[10] = 0x06;
        assert!(matches!(decode(&flags), Err(DecodeError::BadFlags { .. })));
    }

    #[test]
    fn unknown_kind() {
        for kind in [0x00, 0x03, 0x0f, 0x1a, 0x1f, 0x2f, 0xff] {
            assert_eq!(
                decode(&[kind, 0, 0, 0, 0]),
                Err(DecodeError::UnknownKind(kind))
            );
        }
    }

    #[test]
    fn trailing_bytes() {
        assert_eq!(
            decode(&[0x11, 0, 0, 0, 1, 9, 9]),
            Err(DecodeError::TrailingBytes(2))
        );
        // A list page with one more byte than its members.
        let page = [
            &b"\x24\0\0\0\x01\x01\0\0\0\x01"[..],
            &member_bytes("x", KEY_A, 1, 0),
            &[0],
        ]
        .concat();
        assert_eq!(decode(&page), Err(DecodeError::TrailingBytes(1)));
    }

    #[test]
    fn bad_name() {
        assert_eq!(
            decode(b"\x23\x00"),
            Err(DecodeError::BadName(InvalidName::Empty))
        );
        assert_eq!(
            decode(b"\x23\x02aB"),
            Err(DecodeError::BadName(InvalidName::BadCharacter('B', 1)))
        );
        assert_eq!(
            decode(b"\x10\0\0\0\x01\x00\x01\xff\0\0"),
            Err(DecodeError::BadName(InvalidName::BadCharacter('\u{ff}', 0)))
        );
        // Only `from_name` may be empty (42 more bytes: room for one member).
        assert_eq!(
            decode(&[&b"\x24\0\0\0\x01\x01\0\0\0\x01\x00"[..], &[0; 42]].concat()),
            Err(DecodeError::BadName(InvalidName::Empty))
        );
        assert_eq!(
            decode(&[&b"\x28\0\0\0\x02\x01Z"[..], &KEY_A.0, b"\0\0\0\0"].concat()),
            Err(DecodeError::BadName(InvalidName::BadCharacter('Z', 0)))
        );
    }

    #[test]
    fn bad_utf8() {
        assert_eq!(
            decode(b"\x17\0\0\0\x01\0\x01\xff"),
            Err(DecodeError::BadUtf8 { field: "reason" })
        );
        assert_eq!(
            decode(b"\x15\0\0\0\x01\0\0\0\x03\x00\x01a\x02\xc3\x28\0\0"),
            Err(DecodeError::BadUtf8 { field: "protocol" })
        );
        assert_eq!(
            decode(b"\x20\0\0\0\x01\0\x01\0\x01\x80"),
            Err(DecodeError::BadUtf8 {
                field: "error message"
            })
        );
        assert_eq!(
            decode(b"\x10\0\0\0\x01\x00\x01a\0\x01\xfe"),
            Err(DecodeError::BadUtf8 {
                field: "direct address"
            })
        );
        // Half of a two-byte character, cut by the length.
        assert_eq!(
            decode(
                &[
                    &b"\x29\0\0\0\x01\0\0\0\x03"[..],
                    &KEY_A.0,
                    b"\x02\0\x01\xc3",
                    &[0; 32]
                ]
                .concat()
            ),
            Err(DecodeError::BadUtf8 {
                field: "dial address"
            })
        );
    }

    #[test]
    fn field_too_long() {
        let mut reject = b"\x17\0\0\0\x01\x04\x01".to_vec();
        reject.resize(reject.len() + 1025, b'a');
        assert_eq!(
            decode(&reject),
            Err(DecodeError::FieldTooLong {
                field: "reason",
                len: 1025,
                max: MAX_TEXT
            })
        );
        // Refused from the length, before the bytes are there.
        assert_eq!(
            decode(b"\x15\0\0\0\x01\0\0\0\x03\x00\x01a\x00\x10\x01"),
            Err(DecodeError::FieldTooLong {
                field: "metadata",
                len: 4097,
                max: MAX_METADATA
            })
        );
        assert_eq!(
            decode(b"\x10\0\0\0\x01\x00\x01a\xff\xff"),
            Err(DecodeError::FieldTooLong {
                field: "direct address",
                len: 0xffff,
                max: MAX_TEXT
            })
        );
    }

    #[test]
    fn bad_flags() {
        for flags in [0x02, 0x03, 0x80, 0xff] {
            assert_eq!(
                decode(&[0x10, 0, 0, 0, 1, flags, 1, b'a', 0, 0]),
                Err(DecodeError::BadFlags { kind: 0x10, flags })
            );
            assert_eq!(
                decode(&[0x15, 0, 0, 0, 1, 0, 0, 0, 3, flags, 1, b'a', 0, 0, 0]),
                Err(DecodeError::BadFlags { kind: 0x15, flags })
            );
        }
    }

    #[test]
    fn bad_transport() {
        for transport in [0, 3, 0xff] {
            let mut hello = vec![0x02, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, transport];
            hello.resize(hello.len() + 32, 0);
            assert_eq!(decode(&hello), Err(DecodeError::BadTransport(transport)));
            let up = [
                &b"\x26\0\0\0\0\0\0\0\x01\x01"[..],
                &member_bytes("a", KEY_A, transport, 0),
            ]
            .concat();
            assert_eq!(decode(&up), Err(DecodeError::BadTransport(transport)));
        }
    }

    #[test]
    fn bad_path() {
        let incoming = |path: u8| [&b"\x28\0\0\0\x02\x00"[..], &KEY_A.0, &[0, 0, 0, path]].concat();
        assert_eq!(decode(&incoming(3)), Err(DecodeError::BadPath(3)));
        let opened = |path: u8| [&b"\x29\0\0\0\x01\0\0\0\x03"[..], &KEY_A.0, &[path]].concat();
        assert_eq!(decode(&opened(3)), Err(DecodeError::BadPath(3)));
        assert_eq!(decode(b"\x2a\0\0\0\x04\x02"), Err(DecodeError::BadPath(2)));
        assert_eq!(
            decode(b"\x2a\0\0\0\x04\xff"),
            Err(DecodeError::BadPath(0xff))
        );
    }

    #[test]
    fn bad_presence() {
        for change in [0, 4, 0xff] {
            assert_eq!(
                decode(&[0x26, 0, 0, 0, 0, 0, 0, 0, 1, change]),
                Err(DecodeError::BadPresence(change))
            );
        }
    }

    #[test]
    fn bad_bool() {
        assert_eq!(decode(b"\x22\0\0\0\x01\x02"), Err(DecodeError::BadBool(2)));
        assert_eq!(
            decode(b"\x24\0\0\0\x01\xff\0\0\0\0"),
            Err(DecodeError::BadBool(0xff))
        );
        assert_eq!(
            decode(b"\x27\0\0\0\x01\x80\0\0\0\0\0\0\0\0"),
            Err(DecodeError::BadBool(0x80))
        );
    }

    #[test]
    fn errors_read_as_sentences() {
        assert_eq!(
            DecodeError::TooLong { len: 70000 }.to_string(),
            "a 70000-byte control message; the limit is 65536"
        );
        assert_eq!(
            DecodeError::UnknownKind(0x2d).to_string(),
            "unknown control message kind 0x2d"
        );
        assert_eq!(
            DecodeError::FieldTooLong {
                field: "metadata",
                len: 4097,
                max: 4096
            }
            .to_string(),
            "the metadata has 4097 bytes; the limit is 4096"
        );
    }

    #[test]
    fn decoder_takes_messages_split_anywhere() {
        let messages = [
            Message::List { request: 1 },
            Message::NameAcquired { name: name("abc") },
            Message::Accept { channel: 2 },
        ];
        let stream: Vec<u8> = messages.iter().flat_map(encoded).collect();
        let mut decoder = ControlDecoder::new();
        let mut out = Vec::new();
        for byte in &stream {
            decoder.push(std::slice::from_ref(byte));
            while let Some(message) = decoder.next().unwrap() {
                out.push(message);
            }
        }
        assert_eq!(out, messages);
        assert_eq!(decoder.buffered(), 0);

        // Two at once, then half of a third.
        let mut decoder = ControlDecoder::new();
        decoder.push(&stream[..stream.len() - 2]);
        assert_eq!(decoder.next(), Ok(Some(messages[0].clone())));
        assert_eq!(decoder.next(), Ok(Some(messages[1].clone())));
        assert_eq!(decoder.next(), Ok(None));
        assert_eq!(decoder.buffered(), 7);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "the limit is 1024")]
    fn over_long_text_is_a_caller_bug() {
        encoded(&Message::Reject {
            channel: 1,
            reason: "r".repeat(MAX_TEXT + 1),
        });
    }
}
