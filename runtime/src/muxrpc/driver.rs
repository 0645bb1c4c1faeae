//! The task that moves a session's bytes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf as _, Bytes};
use futures_io::{AsyncRead, AsyncWrite};

use super::state::{lock, Shared};
use super::Error;

/// Bytes one read takes.
const READ_LEN: usize = 64 * 1024;

/// Reads the byte stream into the session and writes what it says, until
/// both sides said goodbye (or the stream failed); then closes the stream.
/// Spawn it ([`crate::Channel::muxrpc`] does).
#[must_use = "the session moves no bytes unless its driver runs"]
pub struct Driver<T> {
    shared: Shared,
    io: T,
    /// What is being written.
    out: Bytes,
    buf: Box<[u8]>,
    read_done: bool,
    /// The session is over and its last bytes written: closing the stream.
    closing: Option<Result<(), Error>>,
}

impl<T> Driver<T> {
    pub(super) fn new(shared: Shared, io: T) -> Self {
        Driver {
            shared,
            io,
            out: Bytes::new(),
            buf: vec![0; READ_LEN].into_boxed_slice(),
            read_done: false,
            closing: None,
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Driver<T> {
    /// Writes what the session has until the stream is full. Whether it
    /// wrote anything.
    fn poll_write(&mut self, cx: &mut Context) -> io::Result<bool> {
        let mut wrote = false;
        loop {
            if self.out.is_empty() {
                let mut state = lock(&self.shared);
                match state.session.poll_transmit() {
                    Some(bytes) => {
                        self.out = bytes;
                        state.wake_senders();
                    }
                    None => {
                        state.wake_senders();
                        return Ok(wrote);
                    }
                }
            }
            match Pin::new(&mut self.io).poll_write(cx, &self.out) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    self.out.advance(n);
                    wrote = true;
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(wrote),
            }
        }
    }

    /// Reads once, unless the handles hold too much. Whether it read.
    fn poll_read(&mut self, cx: &mut Context) -> io::Result<bool> {
        {
            // Nothing more is read while the handles hold too much, or
            // while what was written is not read by the peer (answers
            // the application makes to calls it keeps sending).
            let state = lock(&self.shared);
            let unsent = state.session.queued() + self.out.len();
            if self.read_done || state.is_full() || unsent > state.max_unsent() {
                return Ok(false);
            }
        }
        let n = match Pin::new(&mut self.io).poll_read(cx, &mut self.buf) {
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => return Ok(false),
        };
        let mut state = lock(&self.shared);
        match n {
            0 => {
                self.read_done = true;
                state.session.handle_end();
            }
            n => state.session.handle_input(&self.buf[..n]),
        }
        state.dispatch();
        Ok(true)
    }

    /// The stream failed: the session ends, and every handle hears it.
    fn fail(&mut self, error: io::Error) -> Poll<Result<(), Error>> {
        let mut state = lock(&self.shared);
        state.session.handle_end();
        state.dispatch();
        Poll::Ready(Err(Error::Io(error.kind())))
    }
}

impl<T> Drop for Driver<T> {
    /// A driver dropped before the session ended (its task cancelled)
    /// ends it, so no handle waits for bytes that will never move.
    fn drop(&mut self) {
        let mut state = lock(&self.shared);
        if state.closed().is_none() {
            state.session.handle_end();
            state.dispatch();
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Future for Driver<T> {
    type Output = Result<(), Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        // Before looking at the session: a handle that queues output after
        // the look wakes this poll's waker.
        lock(&this.shared).set_driver(cx.waker());
        loop {
            if let Some(result) = &this.closing {
                // Both goodbyes are through: half-close, as JS does.
                let closed = ready!(Pin::new(&mut this.io).poll_close(cx));
                return Poll::Ready(closed.map_err(|e| Error::Io(e.kind())).and(result.clone()));
            }
            let wrote = match this.poll_write(cx) {
                Ok(wrote) => wrote,
                Err(e) => return this.fail(e),
            };
            let read = match this.poll_read(cx) {
                Ok(read) => read,
                Err(e) => return this.fail(e),
            };
            let mut state = lock(&this.shared);
            let flushed = this.out.is_empty() && state.session.queued() == 0;
            if let (Some(result), true) = (state.closed(), flushed) {
                this.closing = Some(result.clone().map_err(Error::Session));
                continue;
            }
            state.set_driver(cx.waker());
            if !wrote && !read {
                return Poll::Pending;
            }
        }
    }
}
