//! muxrpc over packet-stream, as SSB speaks it (muxrpc 8, packet-stream 2,
//! packet-stream-codec 1.2), as a sans-IO [`Session`].
//!
//! Either side may call the other: an `async` call gets one answer; a
//! `source` sends the caller a stream, a `sink` takes one, a `duplex` does
//! both. Each side numbers its own requests from 1 and the answers carry the
//! number negated, so both may send request 1 at once. A stream ends on each
//! side with a packet flagged *end* whose body is `true` or an error
//! (`{"name", "message", "stack"}`, the shape muxrpc gives a JS `Error`);
//! the session is over when both have sent the goodbye (nine zero bytes).
//!
//! muxrpc has no flow control (ssbc/muxrpc#61), so the session bounds what
//! a peer can make it hold instead: one stream's data waiting for the
//! application ([`Config::max_stream_buffer`]: over it, the stream is ended
//! with an error and the application told [`CallError::Flooded`]), all of
//! it ([`Config::max_buffered`]), the peer's requests open at once
//! ([`Config::max_open`]), and a packet's size ([`Config::max_body`]).
//!
//! The session answers the `manifest` call itself, and refuses a call that
//! its manifest does not list, as JS muxrpc does (`no async:name`).

mod packet;
mod request;
mod session;
#[cfg(test)]
mod tests;

pub use packet::{
    encode, Body, BodyError, BodyType, DecodeError, Decoded, EncodeError, Packet, PacketDecoder,
    DEFAULT_MAX_BODY, GOODBYE, HEADER_LEN,
};
pub use session::{CallError, Event, Session, SessionError, UseError};

/// A request number as this side writes it: positive for the calls and
/// streams it made, negative for its answers to the peer's (the peer's
/// number negated). It names a call in [`Session`]'s methods and events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReqId(pub i32);

impl ReqId {
    /// The call was made by this side.
    pub fn is_ours(self) -> bool {
        self.0 > 0
    }
}

/// What kind of call, as a manifest names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallKind {
    /// One request, one answer (`async`; a manifest's `sync` is called so too).
    Async,
    /// The callee sends a stream.
    Source,
    /// The callee takes a stream.
    Sink,
    /// Both send a stream.
    Duplex,
}

impl CallKind {
    /// The name a manifest and a request use.
    pub fn as_str(self) -> &'static str {
        match self {
            CallKind::Async => "async",
            CallKind::Source => "source",
            CallKind::Sink => "sink",
            CallKind::Duplex => "duplex",
        }
    }

    /// Streams have more than one packet each way.
    pub fn is_stream(self) -> bool {
        self != CallKind::Async
    }
}

/// An error as muxrpc carries it: a JS `Error` flattened.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RpcError {
    /// The error's class (`Error`, `TypeError`, ...).
    pub name: String,
    /// What went wrong.
    pub message: String,
    /// Where, if the sender said.
    pub stack: Option<String>,
}

impl RpcError {
    /// An `Error` with this message.
    pub fn new(message: impl Into<String>) -> Self {
        RpcError {
            name: "Error".to_owned(),
            message: message.into(),
            stack: None,
        }
    }

    /// The JSON muxrpc sends.
    pub fn to_json(&self) -> serde_json::Value {
        let mut object = serde_json::Map::new();
        object.insert("message".into(), self.message.clone().into());
        object.insert("name".into(), self.name.clone().into());
        if let Some(stack) = &self.stack {
            object.insert("stack".into(), stack.clone().into());
        }
        serde_json::Value::Object(object)
    }

    /// Reads an error body. Anything that is not an object with a string
    /// `message` is kept as the message, as JSON text.
    pub fn from_body(body: &Body) -> Self {
        let value = match body.to_json() {
            Ok(value) => value,
            Err(_) => return RpcError::new(String::from_utf8_lossy(&body.bytes)),
        };
        let text = |key: &str| value.get(key).and_then(|v| v.as_str()).map(str::to_owned);
        match text("message") {
            Some(message) => RpcError {
                name: text("name").unwrap_or_else(|| "Error".to_owned()),
                message,
                stack: text("stack"),
            },
            None => RpcError::new(value.to_string()),
        }
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.name, self.message)
    }
}

impl std::error::Error for RpcError {}

/// What a [`Session`] serves and what it holds at most.
#[derive(Debug, Clone)]
pub struct Config {
    /// The methods it serves: an object of `name: "async" | "sync" |
    /// "source" | "sink" | "duplex"`, nested for groups (`{"blobs": {"get":
    /// "source"}}`). The `manifest` call is answered with it.
    pub manifest: serde_json::Value,
    /// The largest packet body it reads.
    pub max_body: usize,
    /// The peer's calls open at once; more are answered with an error.
    pub max_open: usize,
    /// Bytes one stream may have waiting for the application.
    pub max_stream_buffer: usize,
    /// Bytes the session may hold in all: events waiting for the
    /// application and answers it made itself waiting to be written.
    pub max_buffered: usize,
    /// When the peer ends a stream this side has not, end it as the
    /// [`Event::End`] is taken (after whatever the application sent in
    /// answer to the data before it), as JS does. An owner that queues
    /// events for its application sets this to `false` and ends each
    /// stream when the application has read that far.
    pub end_on_take: bool,
}

impl Config {
    /// Serves `manifest`, with default bounds.
    pub fn new(manifest: serde_json::Value) -> Self {
        Config {
            manifest,
            max_body: DEFAULT_MAX_BODY,
            max_open: 256,
            max_stream_buffer: 4 << 20,
            max_buffered: 16 << 20,
            end_on_take: true,
        }
    }
}
