//! muxrpc over a channel (or any futures-io byte stream): the core's
//! [`Session`](plugboard_core::muxrpc::Session) driven by a task, with
//! handles to call the peer ([`Rpc`]) and to serve its calls ([`Calls`]).
//!
//! ```no_run
//! # async fn serve(channel: plugboard_runtime::Channel<impl plugboard_runtime::Runtime>) {
//! use plugboard_runtime::muxrpc::{Body, Config};
//! use serde_json::json;
//!
//! let (rpc, mut calls) = channel.muxrpc(Config::new(json!({"whoami": "async"})));
//! let peer = rpc.call(&["whoami"], json!([])).await;
//! while let Some(call) = calls.next().await {
//!     if call.name == ["whoami"] {
//!         let _ = call.respond(Ok(Body::json(&json!({"id": "@me"}))));
//!     }
//! }
//! # }
//! ```
//!
//! What the peer sends waits in the handles until the application reads
//! it: one stream's waiting data is bounded by
//! [`Config::max_stream_buffer`] (past it the stream ends with
//! [`CallError::Flooded`] and the peer is told), all of it by
//! [`Config::max_buffered`] (past it nothing more is read until the
//! application reads). Writers wait while 256 KiB are unsent.

mod driver;
mod state;

use std::future::poll_fn;

use futures_io::{AsyncRead, AsyncWrite};
use serde_json::Value;

pub use driver::Driver;
use plugboard_core::muxrpc::ReqId;
pub use plugboard_core::muxrpc::{
    Body, BodyType, CallError, CallKind, Config, RpcError, SessionError, UseError,
};
use state::{lock, Shared, State};

/// Starts a session over `io`: the handles, and the task to spawn.
pub fn connect<T: AsyncRead + AsyncWrite + Unpin>(
    io: T,
    config: Config,
) -> (Rpc, Calls, Driver<T>) {
    let shared: Shared = std::sync::Arc::new(std::sync::Mutex::new(State::new(config)));
    let driver = Driver::new(shared.clone(), io);
    (
        Rpc {
            shared: shared.clone(),
        },
        Calls { shared },
        driver,
    )
}

/// Why a call, a stream or the session failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The call ended without its answer: the peer's error, the session's
    /// end, or a stream flooded.
    #[error(transparent)]
    Call(#[from] CallError),
    /// Not possible now (the session is closing or closed, or the stream
    /// already ended on this side).
    #[error(transparent)]
    Use(#[from] UseError),
    /// The session ended on a fault.
    #[error(transparent)]
    Session(SessionError),
    /// The byte stream failed.
    #[error("the stream failed: {0}")]
    Io(std::io::ErrorKind),
}

/// Calls the peer. Clones share the session.
#[derive(Clone)]
pub struct Rpc {
    shared: Shared,
}

impl Rpc {
    /// An async call: its answer.
    pub async fn call(&self, name: &[&str], args: Value) -> Result<Body, Error> {
        let id = lock(&self.shared).call(CallKind::Async, name, args)?;
        // If this future is dropped, the answer is dropped when it comes.
        let guard = ForgetAnswer {
            shared: &self.shared,
            id,
        };
        let answer = poll_fn(|cx| lock(&self.shared).poll_answer(id, cx)).await;
        std::mem::forget(guard);
        answer
    }

    /// Calls a source: the peer streams to this side.
    pub fn source(&self, name: &[&str], args: Value) -> Result<Stream, Error> {
        self.stream(CallKind::Source, name, args)
    }

    /// Calls a sink: this side streams to the peer.
    pub fn sink(&self, name: &[&str], args: Value) -> Result<Stream, Error> {
        self.stream(CallKind::Sink, name, args)
    }

    /// Calls a duplex: both stream.
    pub fn duplex(&self, name: &[&str], args: Value) -> Result<Stream, Error> {
        self.stream(CallKind::Duplex, name, args)
    }

    fn stream(&self, kind: CallKind, name: &[&str], args: Value) -> Result<Stream, Error> {
        let id = lock(&self.shared).call(kind, name, args)?;
        Ok(Stream::new(self.shared.clone(), id))
    }

    /// Says goodbye once every call is over, and waits for the peer's.
    pub async fn close(&self) -> Result<(), Error> {
        {
            let mut state = lock(&self.shared);
            state.session.close();
            state.wake_driver();
        }
        poll_fn(|cx| lock(&self.shared).poll_closed(cx)).await
    }
}

struct ForgetAnswer<'a> {
    shared: &'a Shared,
    id: ReqId,
}

impl Drop for ForgetAnswer<'_> {
    fn drop(&mut self) {
        lock(self.shared).forget_answer(self.id);
    }
}

/// The peer's calls, as they come.
pub struct Calls {
    shared: Shared,
}

impl Calls {
    /// The next call; `None` once the session is over.
    pub async fn next(&mut self) -> Option<Call> {
        let incoming = poll_fn(|cx| lock(&self.shared).poll_call(cx)).await?;
        Some(Call {
            shared: Some(self.shared.clone()),
            id: incoming.id,
            kind: incoming.kind,
            name: incoming.name,
            args: incoming.args,
        })
    }
}

impl Drop for Calls {
    /// Nobody takes the peer's calls any more: those waiting and those to
    /// come are refused with an error.
    fn drop(&mut self) {
        lock(&self.shared).drop_calls();
    }
}

/// A call of the peer's. Answer an async one with [`Call::respond`]; take
/// a stream's with [`Call::into_stream`]. Dropped unanswered, the call is
/// answered with an error.
pub struct Call {
    shared: Option<Shared>,
    id: ReqId,
    /// Its kind.
    pub kind: CallKind,
    /// The method's path.
    pub name: Vec<String>,
    /// Its arguments (an array).
    pub args: Value,
}

impl Call {
    /// Answers an async call.
    pub fn respond(mut self, result: Result<Body, RpcError>) -> Result<(), Error> {
        if self.kind.is_stream() {
            // Dropped, it ends the stream with an error.
            return Err(Error::Use(UseError::NotOpen(self.id)));
        }
        let shared = self.shared.take().expect("answered once");
        let mut state = lock(&shared);
        let sent = state.session.respond(self.id, result);
        if sent.is_err() {
            // An answer that cannot be sent (an empty body) must not leave
            // the peer waiting.
            let refusal = RpcError::new("the answer could not be sent");
            let _ = state.session.respond(self.id, Err(refusal));
        }
        state.wake_driver();
        Ok(sent?)
    }

    /// The stream of a source, sink or duplex call.
    pub fn into_stream(mut self) -> Result<Stream, Error> {
        if !self.kind.is_stream() {
            return Err(Error::Use(UseError::NotOpen(self.id)));
        }
        let shared = self.shared.take().expect("taken once");
        Ok(Stream::new(shared, self.id))
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        let Some(shared) = self.shared.take() else {
            return;
        };
        let mut state = lock(&shared);
        let refusal = RpcError::new("the call was dropped unanswered");
        let _ = match self.kind {
            CallKind::Async => state.session.respond(self.id, Err(refusal)),
            _ => state.session.end(self.id, Err(refusal)),
        };
        state.forget_inbox(self.id);
        state.wake_driver();
    }
}

/// One stream: what the peer sends, and what this side sends. Dropped, it
/// ends this side (if it had not) and drops what still comes.
pub struct Stream {
    shared: Shared,
    id: ReqId,
}

impl Stream {
    fn new(shared: Shared, id: ReqId) -> Self {
        Stream { shared, id }
    }

    /// The next thing the peer sent; `None` after its end.
    pub async fn recv(&mut self) -> Option<Result<Body, Error>> {
        poll_fn(|cx| lock(&self.shared).poll_recv(self.id, cx)).await
    }

    /// Sends `body`, once less than 256 KiB are waiting to be written.
    pub async fn send(&mut self, body: Body) -> Result<(), Error> {
        poll_fn(|cx| lock(&self.shared).poll_send_room(cx)).await;
        let mut state = lock(&self.shared);
        state.session.send(self.id, body)?;
        state.wake_driver();
        Ok(())
    }

    /// Ends this side, with an error or without.
    pub fn end(&mut self, result: Result<(), RpcError>) -> Result<(), Error> {
        let mut state = lock(&self.shared);
        state.session.end(self.id, result)?;
        state.wake_driver();
        Ok(())
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut state = lock(&self.shared);
        // Already ended is fine: the end is sent once.
        let _ = state.session.end(self.id, Ok(()));
        state.forget_inbox(self.id);
        state.wake_driver();
    }
}
