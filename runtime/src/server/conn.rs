//! One accepted connection: a reader task that runs what the socket says
//! through the connection's link and its plaintext through the
//! connection's port (the hub only for what needs it), and a writer task
//! that writes what the link and the port have for it.
//!
//! A reader that made output for other connections (the relayed data it
//! read, a reply) writes it to their sockets itself when nobody is writing
//! there, as far as they take it without blocking; only what is left wakes
//! their writers. So a relayed chunk goes from one socket to the other in
//! one task, as a bare forwarder moves it.
//!
//! Locks are taken in one order: a connection's write queue, then its link,
//! then the hub, then a port (see `plugboard_core::broker::PortHandle`); a
//! reader lets go of its own link before it writes to others. The crypto runs under a link's lock (with that connection's
//! write queue when its output is sealed), never under the hub's.

use std::any::Any;
use std::future::Future;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_lite::future;
use plugboard_core::broker::{Link, LinkEvent, LinkPlan, Origin, PortHandle};
use plugboard_core::Instant;
use plugboard_os::{WriteQueue, LAST_WORDS_GRACE};

use super::shared::{Conn, Shared, TaskDriver};
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
/// Most connections one read writes to itself; the rest are woken. A relay
/// writes to one; a broadcast (a presence change to every watcher) is
/// spread over their writers.
pub(super) const WRITE_THROUGH: usize = 4;

/// What woke an idle reader.
enum Woken {
    Ready(io::Result<()>),
    Stopped,
    Resumed,
}

/// A connection's link, shared by its reader and its writer.
struct SharedLink(Mutex<Link>);

impl SharedLink {
    fn lock(&self) -> MutexGuard<'_, Link> {
        self.0.lock().expect("a task panicked holding a link")
    }
}

/// What writing to a connection takes, for its writer and for any task
/// that has output for it.
pub(super) struct ConnIo<R: Runtime> {
    stream: Stream<R>,
    link: SharedLink,
    outbox: Mutex<Outbox>,
    /// Box-stream on the link: its plaintext is sealed by its writer.
    boxed: bool,
}

/// Bytes taken from the link and the hub, not yet written.
#[derive(Default)]
struct Outbox {
    queue: WriteQueue,
    /// Plaintext gathered for one seal (box-stream only), kept.
    plain: BytesMut,
}

impl<R: Runtime> ConnIo<R> {
    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        self.outbox
            .lock()
            .expect("a task panicked holding a write queue")
    }

    /// Whether relayed bytes can be written to this connection as they are.
    pub(super) fn is_plain(&self) -> bool {
        !self.boxed
    }

    /// Writes a frame's `parts` (header, payload) to the socket now if
    /// nobody is writing there and nothing waits to be written first: what
    /// it took (0 otherwise; a failure is the writer's to find). The link's
    /// own output (message 4) cannot be waiting: a channel with credit
    /// means the port had output after the handshake, which only
    /// `take_output` drains, taking the link's first.
    pub(super) fn write_through(&self, parts: &[&[u8]]) -> usize {
        let Ok(outbox) = self.outbox.try_lock() else {
            return 0;
        };
        if self.boxed || !outbox.queue.is_empty() {
            return 0;
        }
        self.stream.try_write_frame(parts).unwrap_or(0)
    }
}

impl<R: Runtime> Shared<R> {
    /// Takes an accepted socket: the hub decides, tasks start.
    pub(super) fn adopt(self: Arc<Self>, stream: Stream<R>, origin: Origin) {
        let (accepted, now) = {
            let mut state = self.lock();
            let now = self.clock.now();
            let accepted = state.hub.accept(now, origin).map(|conn| {
                let c = Arc::new(Conn::new(conn));
                state.conns.insert(conn, c.clone());
                (c, state.hub.link_plan(&origin))
            });
            self.dispatch(&mut state);
            (accepted, now)
        };
        let Ok((c, plan)) = accepted else {
            return; // refused: the socket is dropped, the hub logged why
        };
        let boxed = matches!(plan, LinkPlan::Handshake { boxed: true, .. });
        let link = plan.start(&mut rand_core::OsRng, now);
        let io = ConnIo {
            stream,
            link: SharedLink(Mutex::new(link)),
            outbox: Mutex::default(),
            boxed,
        };
        c.io.get_or_init(|| io);
        let rt = self.rt.clone();
        rt.spawn(self.clone().read(c.clone())).detach();
        rt.spawn(self.write(c)).detach();
    }

    async fn read(self: Arc<Self>, c: Arc<Conn<R>>) {
        let Some(io) = c.io.get() else {
            return;
        };
        let signals = &c.signals;
        // An idle connection holds no read buffer: one is taken when the
        // socket is readable, and given back once the socket stayed quiet
        // for a moment (10,000 idle connections would otherwise pin a
        // buffer each; giving it back at every drained read would cost a
        // fresh allocation per message). It is zeroed once, as it grows,
        // not per read: what the broker keeps of a read, it copies.
        let mut buf = Vec::new();
        let mut size = ReadSize::new(READ_SIZE);
        // A link with no handshake has its key to carry before any input.
        self.tell_link(&c, io, false);
        loop {
            // Asked first: a peer that keeps the socket readable must not
            // keep a connection the broker ended open.
            if signals.is_ended.load(Ordering::Acquire) {
                return;
            }
            if signals.authorized.swap(false, Ordering::AcqRel) {
                self.tell_link(&c, io, true);
            }
            // A legacy client is read only as far as its plugin's credit
            // goes (TCP pushes back on it); none, and it waits for some.
            let room = c.port.get().and_then(|port| port.input_room());
            if room == Some(0) {
                let resumed = async {
                    signals.resume.notified().await;
                    true
                };
                let stopped = async {
                    signals.stop.notified().await;
                    false
                };
                if !future::or(resumed, stopped).await {
                    return;
                }
                continue;
            }
            if buf.is_empty() {
                // Idle, with no buffer: wait for bytes before taking one.
                let ready = async { Woken::Ready(io.stream.readable().await) };
                let stopped = async {
                    signals.stop.notified().await;
                    Woken::Stopped
                };
                // A legacy client's verdict (message 4 is due, and the
                // client waits for it without a word) or room again.
                let resumed = async {
                    signals.resume.notified().await;
                    Woken::Resumed
                };
                match future::or(ready, future::or(stopped, resumed)).await {
                    Woken::Ready(Ok(())) => {}
                    Woken::Ready(Err(e)) => {
                        self.handle_read(&c, io, Err(e));
                        return;
                    }
                    Woken::Stopped => return,
                    Woken::Resumed => continue,
                }
            }
            if buf.len() < size.next() {
                buf.resize(size.next(), 0);
            }
            let want = room.unwrap_or(usize::MAX);
            let into = &mut buf[..size.next().min(want)];
            let read = async { Some(io.stream.recv_into(into, None).await) };
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
            // As quiet, for a legacy client's verdict or room: look again.
            let resumed = async {
                signals.resume.notified().await;
                Some(Err(io::ErrorKind::WouldBlock.into()))
            };
            let waits = future::or(stop, future::or(resumed, quiet));
            let Some(result) = future::or(read, waits).await else {
                return;
            };
            size.record(&result);
            if matches!(&result, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
                buf = Vec::new(); // quiet for a while: give the buffer back
                continue;
            }
            let result = result.map(|n| &buf[..n]);
            if self.handle_read(&c, io, result) {
                return;
            }
        }
    }

    /// Runs what a read said through the link, its plaintext through the
    /// connection's port (the hub only for what needs it), and writes the
    /// output it made; whether the connection is gone.
    fn handle_read(&self, c: &Arc<Conn<R>>, io: &ConnIo<R>, result: io::Result<&[u8]>) -> bool {
        let now = self.clock.now();
        let mut link = io.link.lock();
        let reason = match result {
            Ok([]) => {
                // A legacy client's clean end leaves its link up for what
                // the plugin still sends; decided with the link held, so
                // no writer speaks to a peer that is gone meanwhile.
                let half_close = c.port.get().is_some_and(|port| port.is_bridge());
                let (clean, reason) = link.handle_eof(half_close);
                let mut state = self.lock(); // the link, then the hub
                let stays = state
                    .hub
                    .handle_eof(now, c.id, clean && half_close, &reason);
                if !stays {
                    link.handle_disconnect(); // a half-close the hub did not keep
                    if state.forget_conn(c.id).is_some() {
                        c.signals.end(Bytes::new());
                    }
                }
                self.dispatch(&mut state);
                return true; // a legacy client's plugin may still speak
            }
            Ok(input) => {
                let mut to_write = Vec::new();
                let plain = link.handle_input(now, input);
                self.carry(now, c, &mut link, &mut to_write);
                if link.has_output() {
                    c.signals.wake.notify_one(); // a handshake message, or message 4
                }
                drop(link);
                if let Some((port, plain)) = c.port.get().zip(plain) {
                    port.handle_input(now, plain, &mut TaskDriver::new(self, Some(&mut to_write)));
                }
                self.write_through(to_write);
                return false;
            }
            Err(e) => {
                link.handle_disconnect();
                e.to_string()
            }
        };
        drop(link);
        let mut state = self.lock();
        state.hub.handle_disconnect(now, c.id, &reason);
        if state.forget_conn(c.id).is_some() {
            c.signals.end(Bytes::new());
        }
        self.dispatch(&mut state);
        true
    }

    /// Carries what the link has for the hub: a `noauth` link's key at the
    /// start, or, `authorized`, message 4 and what follows once a legacy
    /// client's plugin accepted it. Called by the connection's reader.
    fn tell_link(&self, c: &Arc<Conn<R>>, io: &ConnIo<R>, authorized: bool) {
        let now = self.clock.now();
        let mut to_write = Vec::new();
        let mut link = io.link.lock();
        if authorized {
            link.authorize(true);
        }
        self.carry(now, c, &mut link, &mut to_write);
        if link.has_output() {
            c.signals.wake.notify_one(); // message 4
        }
        drop(link);
        self.write_through(to_write);
    }

    /// Carries the link's events, in order, to the hub, taking the hub's
    /// lock once for a run of them and letting go for the crypto an
    /// admitted key starts, and the plaintext it opened to the connection's
    /// port, with the hub let go (an end of stream read with the last of it
    /// comes after it).
    fn carry(
        &self,
        now: Instant,
        c: &Arc<Conn<R>>,
        link: &mut Link,
        to_write: &mut Vec<Arc<Conn<R>>>,
    ) {
        loop {
            let mut state = None;
            let mut verdict = None;
            while let Some(event) = link.poll_event() {
                if let LinkEvent::Input(bytes) = event {
                    state = None; // ports come after the hub's lock, never under it here
                    if let Some(port) = c.port.get() {
                        let mut driver = TaskDriver::new(self, Some(&mut *to_write));
                        port.handle_input(now, &bytes, &mut driver);
                    }
                    continue;
                }
                let state = state.get_or_insert_with(|| self.lock());
                let established = event == LinkEvent::Established;
                verdict = state.hub.handle_link(now, c.id, event);
                if established && !state.hub.is_open(c.id) {
                    // Dropped (a timeout, a shutdown) while message 4 was
                    // made with the hub let go: it is not sent.
                    link.handle_disconnect();
                    break;
                }
                if let Some(port) = state.hub.port(c.id).filter(|_| established) {
                    let owner: Arc<dyn Any + Send + Sync> = c.clone();
                    port.set_owner(&owner);
                    let _ = c.port.set(port);
                }
                if verdict.is_some() {
                    break;
                }
            }
            if let Some(mut state) = state {
                self.dispatch_and_keep(&mut state, Some(to_write));
            }
            match verdict {
                // Message 4 is made with the hub let go.
                Some(accept) => link.authorize(accept),
                None => return,
            }
        }
    }

    /// Writes the output a read made for these connections, as far as
    /// their sockets take it now, where nobody else is writing; wakes the
    /// writers of the rest. Called holding no lock.
    fn write_through(&self, to_write: Vec<Arc<Conn<R>>>) {
        for c in &to_write {
            let written = c.io.get().and_then(|io| {
                // Someone is writing there: it takes this output too.
                let mut outbox = io.outbox.try_lock().ok()?;
                // Output is taken from the port only into an empty queue: a
                // full socket's bytes stay in the port, under its bounds.
                io.stream.try_flush(&mut outbox.queue).ok()?;
                // One batch: the rest is the writer's, not this reader's.
                if let Err(e) = self.take_output(c, io, &mut outbox) {
                    drop(outbox);
                    self.write_failed(c, io, e);
                    return Some(());
                }
                let full = outbox.queue.len() >= WRITE_BATCH;
                // Anything left (a full socket, a failure) is the writer's.
                io.stream.try_flush(&mut outbox.queue).ok()?;
                (!full).then_some(())
            });
            if written.is_none() {
                c.signals.wake.notify_one();
            }
        }
    }

    /// Writing to `c` failed: the connection is over, with no last words
    /// (the socket may hold half a frame).
    fn write_failed(&self, c: &Conn<R>, io: &ConnIo<R>, e: io::Error) {
        io.outbox().queue.clear();
        io.link.lock().handle_disconnect();
        let mut state = self.lock();
        let now = self.clock.now();
        let reason = format!("write failed: {e}");
        state.hub.handle_disconnect(now, c.id, &reason);
        if state.forget_conn(c.id).is_some() {
            c.signals.end(Bytes::new());
        }
        self.dispatch(&mut state);
    }

    async fn write(self: Arc<Self>, c: Arc<Conn<R>>) {
        let Some(io) = c.io.get() else {
            return;
        };
        let signals = &c.signals;
        loop {
            signals.wake.notified().await;
            loop {
                // Take what the link and the hub have, up to a batch (a
                // frame that carries a descriptor takes it along), then
                // write it in as few system calls as it takes.
                let taken = {
                    let mut outbox = io.outbox();
                    self.take_output(&c, io, &mut outbox)
                        .map(|()| outbox.queue.is_empty())
                };
                let written = match taken {
                    Ok(true) => {
                        if signals.half_close.swap(false, Ordering::AcqRel) {
                            io.stream.shutdown_write();
                        }
                        break;
                    }
                    Ok(false) => {
                        let flush = io.stream.flush_with(|fd| io.outbox().queue.write_to(fd));
                        self.unless_ended(signals, flush).await
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = written {
                    return self.write_failed(&c, io, e);
                }
            }
            if let Some(last_words) = signals.take_end() {
                // The last words, if the peer takes them within the grace;
                // then the socket closes whatever it does.
                {
                    let mut outbox = io.outbox();
                    let mut link = io.link.lock();
                    if signals.abort.load(Ordering::Acquire) {
                        // No goodbye, and no end of stream either: a reset.
                        outbox.queue.clear();
                        link.handle_disconnect();
                        io.stream.reset_on_close();
                        return;
                    }
                    outbox.queue.push(link.last_words(&last_words));
                }
                let grace = std::time::Instant::now() + LAST_WORDS_GRACE;
                let flushed = async {
                    let _ = io
                        .stream
                        .flush_with(|fd| io.outbox().queue.write_to(fd))
                        .await;
                };
                future::or(flushed, self.rt.sleep_until(grace)).await;
                io.stream.shutdown_write();
                return;
            }
        }
    }

    /// The link's own bytes (the handshake's) first; then the port's, as
    /// they are on a plain link, or gathered and sealed a batch at a time.
    /// The hub's lock is taken only for what needs the hub (a socketpair
    /// end riding out, a resync, growth), never for relayed data.
    fn take_output(&self, c: &Conn<R>, io: &ConnIo<R>, outbox: &mut Outbox) -> io::Result<()> {
        let Outbox { queue, plain } = outbox;
        let is_plain = {
            let mut link = io.link.lock();
            while let Some(data) = link.poll_transmit() {
                queue.push(data);
            }
            link.is_plain()
        };
        let Some(port) = c.port.get() else {
            return Ok(()); // the handshake is not over
        };
        let mut driver = TaskDriver::new(self, None);
        if is_plain {
            let carries_fds = io.stream.carries_fds();
            while queue.len() < WRITE_BATCH {
                let Some(t) = port.poll_transmit(&mut driver) else {
                    break;
                };
                match t.fd {
                    None => queue.push(t.data),
                    Some(_) => self.lock().pairs.push(t, queue, carries_fds)?,
                }
            }
            // A `noauth` legacy client's plugin finished: the socket's
            // writing half closes once the queue is out.
            if port.take_goodbye() {
                c.signals.half_close.store(true, Ordering::Release);
                c.signals.wake.notify_one();
            }
            return Ok(());
        }
        // Box-stream: a seal's worth of plaintext at a time, until a batch
        // is ready.
        self.seal_output(port, &mut driver, io, queue, plain);
        // A legacy client's plugin finished, and all it sent is sealed.
        if port.take_goodbye() {
            queue.push(io.link.lock().goodbye());
        }
        Ok(())
    }

    fn seal_output(
        &self,
        port: &PortHandle,
        driver: &mut TaskDriver<'_, R>,
        io: &ConnIo<R>,
        queue: &mut WriteQueue,
        plain: &mut BytesMut,
    ) {
        while queue.len() < WRITE_BATCH {
            while plain.len() < SEAL_BATCH {
                let Some(t) = port.poll_transmit(driver) else {
                    break;
                };
                plain.extend_from_slice(&t.data);
            }
            if plain.is_empty() {
                break;
            }
            let mut link = io.link.lock();
            // The handshake may have ended since the link was asked above:
            // message 4, made before the port had any of this, goes first.
            while let Some(data) = link.poll_transmit() {
                queue.push(data);
            }
            queue.push(link.seal(plain));
            plain.clear(); // kept: one buffer for every seal
        }
    }

    /// Runs a write, unless the broker ends the connection meanwhile and the
    /// write is still stuck a grace later (the peer stopped reading).
    async fn unless_ended(
        &self,
        signals: &super::shared::ConnSignals,
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
