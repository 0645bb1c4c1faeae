//! A channel relayed by the broker, read and written over the session:
//! reads give credit back, writes wait for credit.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use plugboard_core::control::{ChannelId, ErrorCode};
use plugboard_core::session::Recv;

use super::{wake, Inner, Shared};
use crate::rt::Runtime;

/// The allocation a channel's small writes are copied into, many to one.
const SEND_BUF: usize = 64 * 1024;
/// Writes of this much or more are copied into an allocation of their own.
const OWN_ALLOCATION: usize = 4 * 1024;

/// Who waits on one relayed channel; the session holds its bytes. A
/// channel of a lost connection (the plugin reconnects) keeps what it had
/// not read, to be read before the error.
#[derive(Default)]
pub(crate) struct ChannelState {
    /// Unread bytes of a lost connection's channel, and how it had ended
    /// (if it had): read after them instead of the loss.
    pub(crate) unread: VecDeque<Bytes>,
    pub(crate) end: Option<Recv>,
    /// Its connection was lost (the plugin reconnects), and why.
    pub(crate) lost: Option<String>,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
}

impl ChannelState {
    pub(crate) fn wake_reader(&mut self) {
        wake(&mut self.read_waker);
    }

    pub(crate) fn wake_writer(&mut self) {
        wake(&mut self.write_waker);
    }
}

/// One relayed channel of the session. Dropping it closes gracefully.
pub(crate) struct Relayed<R: Runtime> {
    shared: Arc<Shared<R>>,
    id: ChannelId,
    /// The connection it is on.
    epoch: u64,
    finished: bool,
    /// Where written bytes are copied for the session: its allocation is
    /// reused once the driver wrote what was taken from it, instead of a
    /// fresh one per write (fresh memory costs page faults).
    send_buf: BytesMut,
}

impl<R: Runtime> Relayed<R> {
    pub(crate) fn new(shared: Arc<Shared<R>>, id: ChannelId, epoch: u64) -> Self {
        Relayed {
            shared,
            id,
            epoch,
            finished: false,
            send_buf: BytesMut::new(),
        }
    }

    pub(crate) fn id(&self) -> ChannelId {
        self.id
    }

    /// Whether the channel is on the current connection.
    fn current(&self, inner: &Inner<R>) -> bool {
        inner.epoch == self.epoch
    }

    /// Ends the channel both ways at once.
    pub(crate) fn reset(&mut self, reason: &str) {
        let mut inner = self.shared.lock();
        self.finished = true;
        if !self.current(&inner) {
            inner.orphans.remove(&(self.epoch, self.id));
            return;
        }
        let _ = inner.session.reset(self.id, ErrorCode::Cancelled, reason);
        inner.channels.remove(&self.id);
        self.shared.send_now(&mut inner);
    }
}

fn broken(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, what.to_owned())
}

impl<R: Runtime> Relayed<R> {
    pub(crate) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut guard = self.shared.lock();
        let inner = &mut *guard;
        if !self.current(inner) {
            // A lost connection's channel: what it had, then the error.
            let Some(c) = inner.orphans.get_mut(&(self.epoch, self.id)) else {
                return Poll::Ready(Err(broken("the channel is gone")));
            };
            if let Some(n) = super::read_front(&mut c.unread, buf) {
                return Poll::Ready(Ok(n));
            }
            return Poll::Ready(match &c.end {
                Some(Recv::Finished) => Ok(0),
                Some(Recv::Reset { code, reason }) => Err(reset_error(*code, reason)),
                _ => Err(broken(
                    c.lost.as_deref().unwrap_or("the connection was lost"),
                )),
            });
        }
        match inner.session.recv(self.id, buf.len()) {
            Ok(Recv::Data(bytes)) => {
                buf[..bytes.len()].copy_from_slice(&bytes);
                // The credit goes back to the sender.
                self.shared.send_now(inner);
                Poll::Ready(Ok(bytes.len()))
            }
            Ok(Recv::Finished) => Poll::Ready(Ok(0)), // end of stream
            Ok(Recv::Reset { code, reason }) => Poll::Ready(Err(reset_error(code, &reason))),
            Ok(Recv::Blocked) => {
                if let Some(reason) = &inner.ended {
                    return Poll::Ready(Err(broken(reason)));
                }
                match inner.channels.get_mut(&self.id) {
                    Some(c) => c.read_waker = Some(cx.waker().clone()),
                    None => return Poll::Ready(Err(broken("the channel is gone"))),
                }
                Poll::Pending
            }
            Err(_) => Poll::Ready(Err(broken("the channel is gone"))),
        }
    }

    pub(crate) fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self;
        let mut guard = this.shared.lock();
        let inner = &mut *guard;
        if let Some(reason) = &inner.ended {
            return Poll::Ready(Err(broken(reason)));
        }
        if !this.current(inner) {
            let lost = inner.orphans.get(&(this.epoch, this.id));
            let reason = lost.and_then(|c| c.lost.as_deref());
            return Poll::Ready(Err(broken(reason.unwrap_or("the channel is gone"))));
        }
        if let Some((code, reason)) = inner.session.reset_reason(this.id) {
            return Poll::Ready(Err(reset_error(code, reason)));
        }
        let Some(c) = inner.channels.get_mut(&this.id) else {
            return Poll::Ready(Err(broken("the channel is gone")));
        };
        let room = inner.session.send_capacity(this.id).min(data.len());
        if room == 0 {
            // Finished, or over both ways: nothing will ever fit.
            if let Err(e) = inner.session.send(this.id, Bytes::new()) {
                return Poll::Ready(Err(broken(&e.to_string())));
            }
            c.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        // Straight from the application's buffer when nothing waits to go
        // out before it: no copy, and no allocation to hold one.
        if let (true, Some(socket)) = (inner.out.is_empty(), inner.socket.clone()) {
            let write = |parts: &[&[u8]]| socket.try_write_frame(parts).unwrap_or(0);
            let taken = inner
                .session
                .send_through(this.id, &data[..room], write)
                .map_err(|e| broken(&e.to_string()))?;
            if taken > 0 {
                this.shared.send_now(inner);
                return Poll::Ready(Ok(taken));
            }
        }
        let chunk = if room >= OWN_ALLOCATION {
            // A large write gets an allocation of its size, which goes
            // back to the allocator's warm memory once it is sent; cut
            // from one large shared buffer, every few writes would take
            // fresh memory from the system (page faults and all).
            Bytes::copy_from_slice(&data[..room])
        } else {
            // Fresh memory only once the last is used up, so small
            // writes share one allocation instead of each taking its own.
            if this.send_buf.capacity() < room {
                this.send_buf.reserve(SEND_BUF);
            }
            this.send_buf.extend_from_slice(&data[..room]);
            this.send_buf.split().freeze()
        };
        let sent = inner
            .session
            .send(this.id, chunk)
            .map_err(|e| broken(&e.to_string()))?;
        this.shared.send_now(inner);
        Poll::Ready(Ok(sent))
    }

    pub(crate) fn poll_flush(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written as far as the socket took it; the driver writes the rest
        // when it has room: nothing is held here.
        Poll::Ready(Ok(()))
    }

    pub(crate) fn poll_close(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self;
        if !this.finished {
            this.finished = true;
            let mut inner = this.shared.lock();
            if this.current(&inner) {
                let _ = inner.session.finish(this.id);
                this.shared.send_now(&mut inner);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<R: Runtime> Drop for Relayed<R> {
    /// Dropping closes gracefully: what was written is still delivered,
    /// then FIN. Data the peer sends afterwards finds nobody and resets the
    /// channel. [`Relayed::reset`] aborts at once instead.
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        if !self.current(&inner) {
            // Its connection is gone, and so is the channel.
            inner.orphans.remove(&(self.epoch, self.id));
            return;
        }
        inner.channels.remove(&self.id);
        inner.session.close_channel(self.id);
        self.shared.send_now(&mut inner);
    }
}

/// The error a reset channel reads and writes.
fn reset_error(code: ErrorCode, reason: &str) -> io::Error {
    let message = format!("reset by the peer ({code}): {reason}");
    io::Error::new(io::ErrorKind::ConnectionReset, message)
}
