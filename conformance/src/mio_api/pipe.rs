//! The queues between a plugin's thread and the scenario's tasks: a
//! channel's bytes each way ([`Pipe`]) and a watch's changes ([`Feed`]),
//! each bounded.

use std::collections::VecDeque;
use std::io;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Buf as _, Bytes};
use plugboard_core::control::Member;

use super::Shared;
use crate::api::Watch;

/// Most bytes queued each way on a channel: a writer waits beyond it, and
/// the thread takes no more from the session (whose window then closes).
pub(super) const PIPE_BYTES: usize = 256 * 1024;

/// How a channel's incoming side ended.
#[derive(Debug, Clone)]
pub(super) enum End {
    Fin,
    Broken(Broken),
}

/// Why a channel is over both ways, as its reads and writes say it: the
/// peer reset it (`ConnectionReset`), or our side's connection is over
/// (`BrokenPipe`), as the async runtimes' channels say it.
#[derive(Debug, Clone)]
pub(super) struct Broken {
    kind: io::ErrorKind,
    why: String,
}

impl Broken {
    /// A reset, saying `why`.
    pub(super) fn reset(why: String) -> Self {
        let kind = io::ErrorKind::ConnectionReset;
        Broken { kind, why }
    }

    fn error(&self) -> io::Error {
        io::Error::new(self.kind, self.why.clone())
    }
}

/// One channel's bytes, both ways.
#[derive(Default)]
pub(super) struct Pipe(Mutex<PipeState>);

#[derive(Default)]
pub(super) struct PipeState {
    /// Received, not read yet.
    pub inbound: VecDeque<Bytes>,
    pub inbound_len: usize,
    pub end: Option<End>,
    /// The thread stopped taking bytes because `inbound` was full.
    pub starved: bool,
    pub reader: Option<Waker>,
    /// Written, not handed to the session (or the direct connection) yet.
    pub outbound: VecDeque<Bytes>,
    pub outbound_len: usize,
    /// The scenario closed its side; `finish_sent` once the peer was told.
    pub finish: bool,
    pub finish_sent: bool,
    /// Writes fail from now on, with this.
    pub broken: Option<Broken>,
    pub writer: Option<Waker>,
    /// The scenario let the channel go.
    pub dropped: bool,
    /// The scenario reset the channel, saying this.
    pub reset: Option<String>,
}

impl Pipe {
    pub(super) fn lock(&self) -> MutexGuard<'_, PipeState> {
        self.0.lock().unwrap()
    }

    pub(super) fn drop_handle(&self) {
        self.lock().dropped = true;
    }

    pub(super) fn poll_read(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
        shared: &Shared,
    ) -> Poll<io::Result<usize>> {
        let mut st = self.lock();
        if let Some(front) = st.inbound.front_mut() {
            let n = buf.len().min(front.len());
            buf[..n].copy_from_slice(&front[..n]);
            front.advance(n);
            if front.is_empty() {
                st.inbound.pop_front();
            }
            st.inbound_len -= n;
            if std::mem::take(&mut st.starved) {
                shared.wake();
            }
            return Poll::Ready(Ok(n));
        }
        match &st.end {
            Some(End::Fin) => Poll::Ready(Ok(0)),
            Some(End::Broken(broken)) => Poll::Ready(Err(broken.error())),
            None => {
                st.reader = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    pub(super) fn poll_write(
        &self,
        cx: &mut Context<'_>,
        data: &[u8],
        shared: &Shared,
    ) -> Poll<io::Result<usize>> {
        let mut st = self.lock();
        if let Some(broken) = &st.broken {
            return Poll::Ready(Err(broken.error()));
        }
        if st.finish {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if st.outbound_len >= PIPE_BYTES {
            st.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = data.len().min(PIPE_BYTES - st.outbound_len);
        st.outbound.push_back(Bytes::copy_from_slice(&data[..n]));
        st.outbound_len += n;
        drop(st);
        shared.wake();
        Poll::Ready(Ok(n))
    }

    /// Ready once the thread took everything written.
    pub(super) fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut st = self.lock();
        if let Some(broken) = &st.broken {
            return Poll::Ready(Err(broken.error()));
        }
        if st.outbound.is_empty() {
            return Poll::Ready(Ok(()));
        }
        st.writer = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Ready once the peer was told that nothing more comes.
    pub(super) fn poll_close(&self, cx: &mut Context<'_>, shared: &Shared) -> Poll<io::Result<()>> {
        let mut st = self.lock();
        if let Some(broken) = &st.broken {
            return Poll::Ready(Err(broken.error()));
        }
        if st.finish_sent {
            return Poll::Ready(Ok(()));
        }
        st.finish = true;
        st.writer = Some(cx.waker().clone());
        drop(st);
        shared.wake();
        Poll::Pending
    }
}

impl PipeState {
    /// Bytes for the scenario.
    pub(super) fn deliver(&mut self, bytes: Bytes) {
        self.inbound_len += bytes.len();
        self.inbound.push_back(bytes);
        wake(&mut self.reader);
    }

    /// The incoming side ended (the first end counts).
    pub(super) fn end(&mut self, end: End) {
        if self.end.is_none() {
            self.end = Some(end);
        }
        wake(&mut self.reader);
    }

    /// The channel is over both ways: the peer reset it, or its path broke.
    pub(super) fn break_off(&mut self, why: String) {
        self.over(io::ErrorKind::ConnectionReset, why);
    }

    /// The channel is over both ways because our connection is.
    pub(super) fn cut_off(&mut self, why: String) {
        self.over(io::ErrorKind::BrokenPipe, why);
    }

    fn over(&mut self, kind: io::ErrorKind, why: String) {
        let broken = Broken { kind, why };
        self.end(End::Broken(broken.clone()));
        self.broken.get_or_insert(broken);
        self.outbound.clear();
        self.outbound_len = 0;
        wake(&mut self.writer);
    }

    /// The next bytes to send, if any (taken off the queue).
    pub(super) fn take_outbound(&mut self) -> Option<Bytes> {
        let bytes = self.outbound.pop_front()?;
        self.outbound_len -= bytes.len();
        Some(bytes)
    }

    /// Puts back what could not be sent yet.
    pub(super) fn put_back(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.outbound_len += bytes.len();
            self.outbound.push_front(bytes);
        }
    }

    /// Wakes a writer waiting for room, a flush or a close.
    pub(super) fn wake_writer(&mut self) {
        wake(&mut self.writer);
    }
}

fn wake(waker: &mut Option<Waker>) {
    if let Some(w) = waker.take() {
        w.wake();
    }
}

/// A watch's changes, as many as the scenario said it holds. One that
/// falls behind drops what it holds and, when next read, gets one resync:
/// the registry as the session's watch sees it then.
pub(super) struct Feed(Mutex<FeedState>);

struct FeedState {
    queue: VecDeque<Watch>,
    cap: usize,
    behind: bool,
    /// The watch (the connection) is over.
    ended: bool,
    reader: Option<Waker>,
}

impl Feed {
    pub(super) fn new(cap: usize, snapshot: Vec<Member>) -> Self {
        Feed(Mutex::new(FeedState {
            queue: VecDeque::from([Watch::Snapshot(snapshot)]),
            cap: cap.max(1),
            behind: false,
            ended: false,
            reader: None,
        }))
    }

    /// A change (or a resync from the broker) for the scenario.
    pub(super) fn offer(&self, item: Watch) {
        let mut st = self.0.lock().unwrap();
        if st.behind {
            return;
        }
        if st.queue.len() >= st.cap {
            st.queue.clear();
            st.behind = true;
        } else {
            st.queue.push_back(item);
        }
        wake(&mut st.reader);
    }

    /// The resync a reader that fell behind waits for, from `view` (the
    /// session's watch; without one, the watch is over).
    pub(super) fn resync(&self, view: impl FnOnce() -> Option<(u64, Vec<Member>)>) {
        let mut st = self.0.lock().unwrap();
        if !st.behind || st.reader.is_none() {
            return;
        }
        st.behind = false;
        match view() {
            Some((seq, members)) => st.queue.push_back(Watch::Resync { seq, members }),
            None => st.ended = true,
        }
        wake(&mut st.reader);
    }

    pub(super) fn end(&self) {
        let mut st = self.0.lock().unwrap();
        st.ended = true;
        wake(&mut st.reader);
    }

    pub(super) fn poll_next(&self, cx: &mut Context<'_>, shared: &Shared) -> Poll<Option<Watch>> {
        let mut st = self.0.lock().unwrap();
        if let Some(item) = st.queue.pop_front() {
            return Poll::Ready(Some(item));
        }
        if st.ended {
            return Poll::Ready(None);
        }
        st.reader = Some(cx.waker().clone());
        if st.behind {
            drop(st);
            shared.wake(); // the thread has the view to resync from
        }
        Poll::Pending
    }
}
