//! One accepted connection: a reader task that hands the broker what the
//! socket says, and a writer task that writes what the broker has for it.

use std::future::Future;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_lite::future;
use plugboard_core::broker::{ConnId, Origin};
use plugboard_os::{WriteQueue, LAST_WORDS_GRACE};

use super::shared::{ConnSignals, Shared, State};
use crate::rt::{Runtime, Task as _};
use crate::stream::{ReadSize, Stream};

/// How much a reader asks the socket for at once.
const READ_SIZE: usize = 256 * 1024;
/// How long a connection stays quiet before its read buffer is given back.
const IDLE_RELEASE: Duration = Duration::from_millis(100);
/// Most bytes a writer takes from the broker before writing them.
const WRITE_BATCH: usize = 256 * 1024;

impl<R: Runtime> Shared<R> {
    /// Takes an accepted socket: the broker decides, tasks start.
    pub(super) fn adopt(self: Arc<Self>, stream: Stream<R>, origin: Origin) {
        let signals = Arc::new(ConnSignals::default());
        let conn = {
            let mut state = self.lock();
            let now = self.clock.now();
            let conn = state.broker.accept(now, origin);
            if let Ok(conn) = conn {
                state.conns.insert(conn, signals.clone());
            }
            self.dispatch(&mut state);
            conn
        };
        let Ok(conn) = conn else {
            return; // refused: the socket is dropped, the broker logged why
        };
        let stream = Arc::new(stream);
        let rt = self.rt.clone();
        rt.spawn(self.clone().read(conn, stream.clone(), signals.clone()))
            .detach();
        rt.spawn(self.write(conn, stream, signals)).detach();
    }

    async fn read(
        self: Arc<Self>,
        conn: ConnId,
        stream: Arc<Stream<R>>,
        signals: Arc<ConnSignals>,
    ) {
        // An idle connection holds no read buffer: one is taken when the
        // socket is readable, and given back once the socket stayed quiet
        // for a moment (10,000 idle connections would otherwise pin a
        // buffer each; giving it back at every drained read would cost a
        // fresh allocation per message).
        let mut buf = BytesMut::new();
        let mut size = ReadSize::new(READ_SIZE);
        loop {
            // Asked first: a peer that keeps the socket readable must not
            // keep a connection the broker ended open.
            if signals.is_ended.load(Ordering::Acquire) {
                return;
            }
            if buf.capacity() == 0 {
                // Idle, with no buffer: wait for bytes before taking one.
                let ready = async { Some(stream.readable().await) };
                let stopped = async {
                    signals.stop.notified().await;
                    None
                };
                match future::or(ready, stopped).await {
                    Some(Ok(())) => {}
                    Some(Err(e)) => {
                        self.handle_read(conn, &signals, Err(e), &mut buf);
                        return;
                    }
                    None => return,
                }
            }
            if buf.capacity() - buf.len() < size.next() {
                buf.reserve(size.next());
            }
            let read = async { Some(stream.read(&mut buf, size.next(), None).await) };
            // Made only if polled: a busy socket is read first (`or` polls
            // it first), so no timer is armed per read.
            let quiet = async {
                let at = std::time::Instant::now() + IDLE_RELEASE;
                self.rt.sleep_until(at).await;
                Some(Err(io::ErrorKind::WouldBlock.into()))
            };
            // The broker ended the connection: stop reading.
            let stop = async {
                signals.stop.notified().await;
                None
            };
            let Some(result) = future::or(read, future::or(stop, quiet)).await else {
                return;
            };
            size.record(&result);
            if matches!(&result, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
                buf = BytesMut::new(); // quiet for a while: give the buffer back
                continue;
            }
            if self.handle_read(conn, &signals, result, &mut buf) {
                return;
            }
        }
    }

    /// Hands the broker what a read said; whether the connection is gone.
    fn handle_read(
        &self,
        conn: ConnId,
        signals: &ConnSignals,
        result: io::Result<usize>,
        buf: &mut BytesMut,
    ) -> bool {
        let mut state = self.lock();
        let now = self.clock.now();
        let gone = !matches!(result, Ok(n) if n > 0);
        match result {
            Ok(0) => state.broker.handle_eof(now, conn),
            Ok(_) => state.broker.handle_input_owned(now, conn, buf.split()),
            Err(e) => state.broker.handle_disconnect(now, conn, &e.to_string()),
        }
        if gone && state.forget_conn(conn).is_some() {
            signals.end(Bytes::new());
        }
        self.dispatch(&mut state);
        gone
    }

    async fn write(
        self: Arc<Self>,
        conn: ConnId,
        stream: Arc<Stream<R>>,
        signals: Arc<ConnSignals>,
    ) {
        let mut queue = WriteQueue::new();
        loop {
            signals.wake.notified().await;
            loop {
                // Take what the broker has, up to a batch (a frame that
                // carries a descriptor takes it along), then write it in as
                // few system calls as it takes.
                let taken = {
                    let mut state = self.lock();
                    let State { broker, pairs, .. } = &mut *state;
                    let taken = pairs.take_output(
                        broker,
                        conn,
                        &mut queue,
                        WRITE_BATCH,
                        stream.carries_fds(),
                    );
                    self.dispatch(&mut state);
                    taken
                };
                if queue.is_empty() && taken.is_ok() {
                    break;
                }
                let written = match taken {
                    Ok(()) => self.unless_ended(&signals, stream.flush(&mut queue)).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = written {
                    queue.clear();
                    let mut state = self.lock();
                    let now = self.clock.now();
                    let reason = format!("write failed: {e}");
                    state.broker.handle_disconnect(now, conn, &reason);
                    if state.forget_conn(conn).is_some() {
                        signals.end(Bytes::new());
                    }
                    self.dispatch(&mut state);
                    // The socket may hold half a frame now: no last words.
                    return;
                }
            }
            if let Some(last_words) = signals.take_end() {
                // The last words, if the peer takes them within the grace;
                // then the socket closes whatever it does.
                queue.push(last_words);
                let grace = std::time::Instant::now() + LAST_WORDS_GRACE;
                let flushed = async {
                    let _ = stream.flush(&mut queue).await;
                };
                future::or(flushed, self.rt.sleep_until(grace)).await;
                stream.shutdown_write();
                return;
            }
        }
    }

    /// Runs a write, unless the broker ends the connection meanwhile and the
    /// write is still stuck a grace later (the peer stopped reading).
    async fn unless_ended(
        &self,
        signals: &ConnSignals,
        write: impl Future<Output = io::Result<()>>,
    ) -> io::Result<()> {
        future::or(write, async {
            signals.ended.notified().await;
            let grace = std::time::Instant::now() + LAST_WORDS_GRACE;
            self.rt.sleep_until(grace).await;
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the connection ended and the peer does not read",
            ))
        })
        .await
    }
}
