//! What every task of the server shares: the hub, the connections'
//! signals, the socketpair ends in flight; and carrying out what the
//! hub asks for after each call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::Bytes;
use futures_lite::future;
use plugboard_core::broker::{ConnId, Hub, PortDriver, PortHandle};
use plugboard_os::{ConnEvent, SocketPairs};

use super::conn::{ConnIo, WRITE_THROUGH};
use crate::notify::Notify;
use crate::rt::Runtime;
use plugboard_os::Clock;

pub(super) struct Shared<R: Runtime> {
    pub(super) rt: R,
    pub(super) clock: Clock,
    pub(super) state: Mutex<State<R>>,
    /// Wakes the timer task when a call may have moved the next deadline.
    pub(super) timer: Notify,
    /// Times the hub's lock was taken (see [`Server::hub_locks`](super::Server::hub_locks)).
    pub(super) hub_locks: Arc<AtomicU64>,
}

pub(super) struct State<R: Runtime> {
    pub(super) hub: Hub,
    pub(super) conns: HashMap<ConnId, Arc<Conn<R>>>,
    /// Socketpair ends on their way to their connections.
    pub(super) pairs: SocketPairs,
}

impl<R: Runtime> State<R> {
    /// A connection is gone: the ends meant for it are closed (their
    /// peers see the end of the stream).
    pub(super) fn forget_conn(&mut self, conn: ConnId) -> Option<Arc<Conn<R>>> {
        self.pairs.forget_conn(conn);
        self.conns.remove(&conn)
    }
}

/// One connection, as every task of the server reaches it.
pub(super) struct Conn<R: Runtime> {
    pub(super) id: ConnId,
    pub(super) signals: ConnSignals,
    /// Its socket, link and write queue, once its tasks start: a task that
    /// made output for it writes it at once if nobody else is writing.
    pub(super) io: OnceLock<ConnIo<R>>,
    /// Its mux and relay ends, once its handshake is over.
    pub(super) port: OnceLock<PortHandle>,
}

impl<R: Runtime> Conn<R> {
    pub(super) fn new(id: ConnId) -> Self {
        Conn {
            id,
            signals: ConnSignals::default(),
            io: OnceLock::new(),
            port: OnceLock::new(),
        }
    }
}

/// What the broker tells one connection's tasks.
#[derive(Default)]
pub(super) struct ConnSignals {
    /// Output is waiting in the link or the hub (for the writer).
    pub(super) wake: Notify,
    /// The connection is over (for the reader).
    pub(super) stop: Notify,
    /// The connection is over (for a writer stuck on a full socket).
    pub(super) ended: Notify,
    /// The connection is over (asked by the reader before each read).
    pub(super) is_ended: AtomicBool,
    /// For the reader: a legacy client was accepted (its link makes
    /// message 4), or its port takes input again.
    pub(super) resume: Notify,
    /// A legacy client was accepted, and its link not told yet.
    pub(super) authorized: AtomicBool,
    /// The connection ends with nothing more written (its writer breaks
    /// the link before its last words): a legacy client's reset channel.
    pub(super) abort: AtomicBool,
    /// A `noauth` legacy client's plugin finished: the writer shuts the
    /// socket's writing half once its queue is out.
    pub(super) half_close: AtomicBool,
    /// The connection is over: these last words (plaintext, for the
    /// link to seal), then close.
    end: Mutex<Option<Bytes>>,
}

impl ConnSignals {
    pub(super) fn end(&self, last_words: Bytes) {
        self.end
            .lock()
            .expect("not poisoned")
            .get_or_insert(last_words);
        self.is_ended.store(true, Ordering::Release);
        self.wake.notify_one();
        self.stop.notify_one();
        self.ended.notify_one();
    }

    pub(super) fn take_end(&self) -> Option<Bytes> {
        self.end.lock().expect("not poisoned").take()
    }
}

impl<R: Runtime> Shared<R> {
    pub(super) fn lock(&self) -> MutexGuard<'_, State<R>> {
        self.hub_locks.fetch_add(1, Ordering::Relaxed);
        self.state.lock().expect("a task panicked holding the hub")
    }

    /// Tells the broker to shut down and every connection why; returns the
    /// connections, held by their tasks until they are done.
    pub(super) fn shutdown(&self) -> Vec<Arc<Conn<R>>> {
        let mut state = self.lock();
        let now = self.clock.now();
        state.hub.shutdown(now);
        let writers = state.conns.values().cloned().collect();
        self.dispatch(&mut state);
        writers
    }

    /// Runs the broker's timers.
    pub(super) async fn timers(self: Arc<Self>) {
        loop {
            let deadline = self.lock().hub.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(at) => self.rt.sleep_until(self.clock.to_std(at)).await,
                    None => future::pending().await,
                }
                true
            };
            let expired = future::or(sleep, async {
                self.timer.notified().await;
                false
            })
            .await;
            if expired {
                let mut state = self.lock();
                let now = self.clock.now();
                state.hub.handle_timeout(now);
                self.dispatch(&mut state);
            }
        }
    }

    /// Carries out what the hub asked for. Called after every hub call.
    pub(super) fn dispatch(&self, state: &mut State<R>) {
        self.dispatch_and_keep(state, None);
    }

    /// As [`Shared::dispatch`], but the first [`WRITE_THROUGH`] connections
    /// with output are put in `to_write` (once each) instead of waking their
    /// writers: the caller writes to them once it let go of every lock
    /// ([`Shared::write_through`]), saving each a wake-up. The rest (a
    /// broadcast to every watcher) are spread over their writers.
    pub(super) fn dispatch_and_keep(
        &self,
        state: &mut State<R>,
        mut to_write: Option<&mut Vec<Arc<Conn<R>>>>,
    ) {
        let State { hub, pairs, .. } = state;
        while let Some(event) = plugboard_os::poll_event(hub, pairs, &self.clock) {
            match event {
                ConnEvent::Transmit(conn) => {
                    let Some(conn) = state.conns.get(&conn) else {
                        continue;
                    };
                    keep_or_wake(to_write.as_deref_mut(), conn);
                }
                ConnEvent::Close(conn, last_words) => {
                    if let Some(conn) = state.conns.remove(&conn) {
                        conn.signals.end(last_words);
                    }
                }
                ConnEvent::Abort(conn) => {
                    if let Some(conn) = state.conns.remove(&conn) {
                        conn.signals.abort.store(true, Ordering::Release);
                        conn.signals.end(Bytes::new());
                    }
                }
                ConnEvent::Resume(conn) => {
                    if let Some(conn) = state.conns.get(&conn) {
                        conn.signals.resume.notify_one();
                    }
                }
                // Its reader tells the link, with the hub let go.
                ConnEvent::Authorized(conn) => {
                    if let Some(conn) = state.conns.get(&conn) {
                        conn.signals.authorized.store(true, Ordering::Release);
                        conn.signals.resume.notify_one();
                    }
                }
            }
        }
        self.timer.notify_one();
    }
}

/// Puts `conn` in `to_write` (once) if there is one with room, else wakes
/// its writer.
fn keep_or_wake<R: Runtime>(to_write: Option<&mut Vec<Arc<Conn<R>>>>, conn: &Arc<Conn<R>>) {
    match to_write {
        Some(list) if list.iter().any(|c| Arc::ptr_eq(c, conn)) => {}
        Some(list) if list.len() < WRITE_THROUGH => list.push(conn.clone()),
        _ => conn.signals.wake.notify_one(),
    }
}

/// Drives ports from one connection's task: the hub under the server's
/// lock, taken only for what needs it; other connections' output written
/// by this task once it let go of every lock (a reader, with `to_write`)
/// or left to their writers.
pub(super) struct TaskDriver<'a, R: Runtime> {
    shared: &'a Shared<R>,
    to_write: Option<&'a mut Vec<Arc<Conn<R>>>>,
}

impl<'a, R: Runtime> TaskDriver<'a, R> {
    pub(super) fn new(shared: &'a Shared<R>, to_write: Option<&'a mut Vec<Arc<Conn<R>>>>) -> Self {
        TaskDriver { shared, to_write }
    }
}

impl<R: Runtime> PortDriver for TaskDriver<'_, R> {
    fn with_hub<T>(&mut self, f: impl FnOnce(&mut Hub) -> T) -> T {
        let mut state = self.shared.lock();
        let out = f(&mut state.hub);
        self.shared
            .dispatch_and_keep(&mut state, self.to_write.as_deref_mut());
        out
    }

    fn wake(&mut self, port: &PortHandle) {
        if let Some(conn) = owner::<R>(port) {
            keep_or_wake(self.to_write.as_deref_mut(), &conn);
        }
    }

    fn resume(&mut self, port: &PortHandle) {
        if let Some(conn) = owner::<R>(port) {
            conn.signals.resume.notify_one();
        }
    }

    fn can_write_through(&mut self, port: &PortHandle) -> bool {
        let io = owner::<R>(port).and_then(|conn| conn.io.get().map(|io| io.is_plain()));
        io == Some(true)
    }

    fn write_through(&mut self, port: &PortHandle, parts: &[&[u8]]) -> usize {
        owner::<R>(port)
            .and_then(|conn| Some(conn.io.get()?.write_through(parts)))
            .unwrap_or(0)
    }
}

/// The connection whose port this is. The owner is set under the hub's
/// lock when the handshake ends, before any other connection can reach
/// the port; it is gone only once the connection is.
fn owner<R: Runtime>(port: &PortHandle) -> Option<Arc<Conn<R>>> {
    port.owner().and_then(|o| o.downcast::<Conn<R>>().ok())
}
