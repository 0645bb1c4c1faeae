//! One accepted connection: a reader task that runs what the socket says
//! through the connection's link and hands the hub what that gives, and a
//! writer task that writes what the link and the hub have for it.
//!
//! The link's lock is only ever taken before the hub's, never while
//! holding it: the crypto runs under the link's alone.

use std::future::Future;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_lite::future;
use plugboard_core::broker::{ConnId, Link, LinkEvent, Origin};
use plugboard_core::Instant;
use plugboard_os::{WriteQueue, LAST_WORDS_GRACE};

use super::shared::{ConnSignals, Shared, State};
use crate::rt::{Runtime, Task as _};
use crate::stream::{ReadSize, Stream};

/// How much a reader asks the socket for at once.
const READ_SIZE: usize = 256 * 1024;
/// How long a connection stays quiet before its read buffer is given back.
const IDLE_RELEASE: Duration = Duration::from_millis(100);
/// Most bytes a writer takes from the link and the hub before writing them.
const WRITE_BATCH: usize = 256 * 1024;
/// Most plaintext a writer gathers for one seal: its gathering buffer,
/// kept between batches, stays this small on every box-stream connection.
const SEAL_BATCH: usize = 64 * 1024;

/// A connection's link, shared by its reader and its writer.
struct SharedLink(Mutex<Link>);

impl SharedLink {
    fn lock(&self) -> MutexGuard<'_, Link> {
        self.0.lock().expect("a task panicked holding a link")
    }
}

impl<R: Runtime> Shared<R> {
    /// Takes an accepted socket: the hub decides, tasks start.
    pub(super) fn adopt(self: Arc<Self>, stream: Stream<R>, origin: Origin) {
        let signals = Arc::new(ConnSignals::default());
        let (accepted, now) = {
            let mut state = self.lock();
            let now = self.clock.now();
            let accepted = state.hub.accept(now, origin).map(|conn| {
                state.conns.insert(conn, signals.clone());
                let config = state.hub.handshake_config();
                (conn, config, state.hub.is_boxed(&origin))
            });
            self.dispatch(&mut state);
            (accepted, now)
        };
        let Ok((conn, config, boxed)) = accepted else {
            return; // refused: the socket is dropped, the hub logged why
        };
        let link = Link::new(config, &mut rand_core::OsRng, now, boxed);
        let link = Arc::new(SharedLink(Mutex::new(link)));
        let stream = Arc::new(stream);
        let rt = self.rt.clone();
        let reader = self
            .clone()
            .read(conn, stream.clone(), link.clone(), signals.clone());
        rt.spawn(reader).detach();
        rt.spawn(self.write(conn, stream, link, signals)).detach();
    }

    async fn read(
        self: Arc<Self>,
        conn: ConnId,
        stream: Arc<Stream<R>>,
        link: Arc<SharedLink>,
        signals: Arc<ConnSignals>,
    ) {
        // An idle connection holds no read buffer: one is taken when the
        // socket is readable, and given back once the socket stayed quiet
        // for a moment (10,000 idle connections would otherwise pin a
        // buffer each; giving it back at every drained read would cost a
        // fresh allocation per message). It is zeroed once, as it grows,
        // not per read: what the broker keeps of a read, it copies.
        let mut buf = Vec::new();
        let mut size = ReadSize::new(READ_SIZE);
        loop {
            // Asked first: a peer that keeps the socket readable must not
            // keep a connection the broker ended open.
            if signals.is_ended.load(Ordering::Acquire) {
                return;
            }
            if buf.is_empty() {
                // Idle, with no buffer: wait for bytes before taking one.
                let ready = async { Some(stream.readable().await) };
                let stopped = async {
                    signals.stop.notified().await;
                    None
                };
                match future::or(ready, stopped).await {
                    Some(Ok(())) => {}
                    Some(Err(e)) => {
                        self.handle_read(conn, &link, &signals, Err(e));
                        return;
                    }
                    None => return,
                }
            }
            if buf.len() < size.next() {
                buf.resize(size.next(), 0);
            }
            let into = &mut buf[..size.next()];
            let read = async { Some(stream.recv_into(into, None).await) };
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
                buf = Vec::new(); // quiet for a while: give the buffer back
                continue;
            }
            let result = result.map(|n| &buf[..n]);
            if self.handle_read(conn, &link, &signals, result) {
                return;
            }
        }
    }

    /// Runs what a read said through the link, and hands the hub what
    /// that gives; whether the connection is gone.
    fn handle_read(
        &self,
        conn: ConnId,
        link: &SharedLink,
        signals: &ConnSignals,
        result: io::Result<&[u8]>,
    ) -> bool {
        let now = self.clock.now();
        let mut link = link.lock();
        let reason = match result {
            Ok([]) => link.handle_eof(),
            Ok(input) => {
                let plain = link.handle_input(now, input);
                self.carry(now, conn, &mut link);
                if let Some(plain) = plain {
                    let mut state = self.lock();
                    state.hub.handle_plaintext(now, conn, plain);
                    self.dispatch(&mut state);
                }
                if link.has_output() {
                    signals.wake.notify_one(); // a handshake message, or message 4
                }
                return false;
            }
            Err(e) => {
                link.handle_disconnect();
                e.to_string()
            }
        };
        drop(link);
        let mut state = self.lock();
        state.hub.handle_disconnect(now, conn, &reason);
        if state.forget_conn(conn).is_some() {
            signals.end(Bytes::new());
        }
        self.dispatch(&mut state);
        true
    }

    /// Carries the link's events to the hub, taking the hub's lock once for
    /// a run of them and letting go for the crypto an admitted key starts.
    fn carry(&self, now: Instant, conn: ConnId, link: &mut Link) {
        loop {
            let mut state = None;
            let mut verdict = None;
            while let Some(event) = link.poll_event() {
                let state = state.get_or_insert_with(|| self.lock());
                let established = event == LinkEvent::Established;
                verdict = state.hub.handle_link(now, conn, event);
                if established && !state.hub.is_open(conn) {
                    // Dropped (a timeout, a shutdown) while message 4 was
                    // made with the hub let go: it is not sent.
                    link.handle_disconnect();
                    break;
                }
                if verdict.is_some() {
                    break;
                }
            }
            if let Some(mut state) = state {
                self.dispatch(&mut state);
            }
            match verdict {
                // Message 4 is made with the hub let go.
                Some(accept) => link.authorize(accept),
                None => return,
            }
        }
    }

    async fn write(
        self: Arc<Self>,
        conn: ConnId,
        stream: Arc<Stream<R>>,
        link: Arc<SharedLink>,
        signals: Arc<ConnSignals>,
    ) {
        let mut queue = WriteQueue::new();
        let mut plain = BytesMut::new();
        loop {
            signals.wake.notified().await;
            loop {
                // Take what the link and the hub have, up to a batch (a
                // frame that carries a descriptor takes it along), then
                // write it in as few system calls as it takes.
                let taken = self.take_output(conn, &stream, &link, &mut queue, &mut plain);
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
                    state.hub.handle_disconnect(now, conn, &reason);
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
                queue.push(link.lock().last_words(&last_words));
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

    /// The link's own bytes (the handshake's) first; then the hub's, as
    /// they are on a plain link, or gathered and sealed with the hub let go.
    fn take_output(
        &self,
        conn: ConnId,
        stream: &Stream<R>,
        link: &SharedLink,
        queue: &mut WriteQueue,
        plain: &mut BytesMut,
    ) -> io::Result<()> {
        let is_plain = {
            let mut link = link.lock();
            while let Some(data) = link.poll_transmit() {
                queue.push(data);
            }
            link.is_plain()
        };
        if is_plain {
            let mut state = self.lock();
            let State { hub, pairs, .. } = &mut *state;
            let taken = pairs.take_output(hub, conn, queue, WRITE_BATCH, stream.carries_fds());
            self.dispatch(&mut state);
            return taken;
        }
        // Box-stream: a seal's worth of plaintext at a time, sealed with
        // the hub let go, until a batch is ready.
        while queue.len() < WRITE_BATCH {
            {
                let mut state = self.lock();
                while plain.len() < SEAL_BATCH {
                    let Some(t) = state.hub.poll_transmit(conn) else {
                        break;
                    };
                    plain.extend_from_slice(&t.data);
                }
                self.dispatch(&mut state);
            }
            if plain.is_empty() {
                break;
            }
            let mut link = link.lock();
            // The handshake may have ended since the link was asked above:
            // message 4, made before the hub had any of this, goes first.
            while let Some(data) = link.poll_transmit() {
                queue.push(data);
            }
            queue.push(link.seal(plain));
            plain.clear(); // kept: one buffer for every seal
        }
        Ok(())
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
