//! A channel relayed by the broker, read and written over the session:
//! reads give credit back, writes wait for credit.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Buf as _, Bytes, BytesMut};
use plugboard_core::control::{ChannelId, ErrorCode};

use super::{wake, Inner, Shared};
use crate::rt::Runtime;

/// The allocation a channel's writes are copied into.
const SEND_BUF: usize = 256 * 1024;

/// What the driver delivered for one channel, and who waits on it.
#[derive(Default)]
pub(crate) struct ChannelState {
    pub(crate) received: VecDeque<Bytes>,
    pub(crate) fin: bool,
    pub(crate) closed: bool,
    pub(crate) reset: Option<(ErrorCode, String)>,
    /// Its connection was lost (the plugin reconnects), and why.
    pub(crate) lost: Option<String>,
    /// The application dropped its `Channel` after (or by) finishing: the
    /// peer's FIN is awaited; data arriving for nobody resets the channel.
    pub(crate) abandoned: bool,
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

/// A channel's state, where it is: with the current connection's channels,
/// or an orphan of a lost one (the session knows nothing of it then).
fn state<'a>(
    channels: &'a mut HashMap<ChannelId, ChannelState>,
    orphans: &'a mut HashMap<(u64, ChannelId), ChannelState>,
    current: bool,
    epoch: u64,
    id: ChannelId,
) -> Option<&'a mut ChannelState> {
    match current {
        true => channels.get_mut(&id),
        false => orphans.get_mut(&(epoch, id)),
    }
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
        drop(inner);
        self.shared.flush.notify_one();
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
        let this = self;
        let mut guard = this.shared.lock();
        let current = this.current(&guard);
        let inner = &mut *guard;
        let c = state(
            &mut inner.channels,
            &mut inner.orphans,
            current,
            this.epoch,
            this.id,
        );
        let Some(c) = c else {
            return Poll::Ready(Err(broken("the channel is gone")));
        };
        if let Some(front) = c.received.front_mut() {
            let n = buf.len().min(front.len());
            buf[..n].copy_from_slice(&front[..n]);
            front.advance(n);
            if front.is_empty() {
                c.received.pop_front();
            }
            if !current {
                return Poll::Ready(Ok(n));
            }
            // Consumed: the credit goes back to the sender.
            inner.session.consume(this.id, n);
            drop(guard);
            this.shared.flush.notify_one();
            return Poll::Ready(Ok(n));
        }
        if c.fin || c.closed {
            return Poll::Ready(Ok(0)); // end of stream
        }
        if let Some((code, reason)) = &c.reset {
            let message = format!("reset by the peer ({code}): {reason}");
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, message)));
        }
        if let Some(reason) = c.lost.as_ref().or(inner.ended.as_ref()) {
            return Poll::Ready(Err(broken(reason)));
        }
        c.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    pub(crate) fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self;
        let mut guard = this.shared.lock();
        let current = this.current(&guard);
        let inner = &mut *guard;
        if let Some(reason) = &inner.ended {
            return Poll::Ready(Err(broken(reason)));
        }
        let c = state(
            &mut inner.channels,
            &mut inner.orphans,
            current,
            this.epoch,
            this.id,
        );
        let Some(c) = c else {
            return Poll::Ready(Err(broken("the channel is gone")));
        };
        if let Some(reason) = &c.lost {
            return Poll::Ready(Err(broken(reason)));
        }
        if let Some((code, reason)) = &c.reset {
            let message = format!("reset by the peer ({code}): {reason}");
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, message)));
        }
        let room = inner.session.send_capacity(this.id).min(data.len());
        if room == 0 {
            c.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        this.send_buf.reserve(SEND_BUF.max(room));
        this.send_buf.extend_from_slice(&data[..room]);
        let chunk = this.send_buf.split().freeze();
        let sent = inner
            .session
            .send(this.id, chunk)
            .map_err(|e| broken(&e.to_string()))?;
        drop(guard);
        this.shared.flush.notify_one();
        Poll::Ready(Ok(sent))
    }

    pub(crate) fn poll_flush(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The driver writes as soon as it is told: nothing is held here.
        Poll::Ready(Ok(()))
    }

    pub(crate) fn poll_close(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self;
        if !this.finished {
            this.finished = true;
            let mut inner = this.shared.lock();
            if this.current(&inner) {
                let _ = inner.session.finish(this.id);
                drop(inner);
                this.shared.flush.notify_one();
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
        let mut guard = self.shared.lock();
        if !self.current(&guard) {
            // Its connection is gone, and so is the channel.
            guard.orphans.remove(&(self.epoch, self.id));
            return;
        }
        let inner = &mut *guard;
        let Some(c) = inner.channels.get_mut(&self.id) else {
            return;
        };
        if c.closed || c.reset.is_some() {
            inner.channels.remove(&self.id);
            return;
        }
        c.abandoned = true;
        let unread: usize = c.received.drain(..).map(|b| b.len()).sum();
        inner.session.consume(self.id, unread);
        if !self.finished {
            let _ = inner.session.finish(self.id);
        }
        drop(guard);
        self.shared.flush.notify_one();
    }
}
