//! The plugin API, on any [`Runtime`]: connect (named or not), list, watch,
//! stats, open channels, take incoming ones. A [`Channel`] reads and writes:
//! reads give credit back as the application consumes, writes wait for
//! credit, closing half-closes, dropping closes gracefully.
//!
//! One driver task owns the socket and the core's [`Session`]; handles share
//! the session behind a mutex never held across an await.
//!
//! With [`PluginBuilder::reconnect`], a lost connection is replaced by a new
//! one (see [`Reconnect`]); [`Plugin::events`] says when.

mod builder;
mod channel;
mod deliver;
mod direct;
mod driver;
mod feed;
mod incoming;
mod queue;
mod relayed;

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;

use async_channel::{bounded, Receiver, Sender, TrySendError};
use bytes::Bytes;
use plugboard_core::addr::Addr;
use plugboard_core::budget::StrangerLimits;
use plugboard_core::control::{
    AnnouncedLimits, CauseCount, ChannelId, ChannelPath, ErrorCode, IncomingPath, KeyStats, Member,
    MonitorEvent, Name, NameStats, OpenedPath, Presence, RequestId, UidStats,
};
use plugboard_core::session::{Session, SessionConfig, SessionError, SessionEvent};
use plugboard_core::shs::HandshakeConfig;
use plugboard_core::{Keypair, NetworkKey, PublicKey};

pub use builder::PluginBuilder;
pub use channel::{Channel, Path};
pub(crate) use deliver::{deliver, end};
pub use feed::{Feed, Offers};
pub use incoming::Incoming;
pub use plugboard_core::session::{ConnectionEvent, Reconnect};

use crate::notify::Notify;
use crate::rt::Runtime;
use crate::stream::Stream;
use plugboard_os::WriteQueue;
use plugboard_os::{Clock, FdTokens};

/// Where one answer goes.
type Reply<T> = Sender<Result<T, PluginError>>;

/// Why a plugin call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    /// The broker could not be reached.
    #[error("cannot reach the broker at {addr}: {reason}")]
    Unreachable {
        /// Where.
        addr: String,
        /// The OS's words.
        reason: String,
    },
    /// The broker answered the request with an error.
    #[error("{message}")]
    Refused {
        /// Its code.
        code: ErrorCode,
        /// Its words.
        message: String,
    },
    /// The connection is over.
    #[error("the connection to the broker ended: {0}")]
    Disconnected(String),
    /// The connection to the broker was lost and the plugin reconnects (see
    /// [`PluginBuilder::reconnect`]): the request was in flight on the lost
    /// connection, or made before the new one was ready (or, for an
    /// [`Incoming`], the channel was offered on the lost connection). Worth
    /// retrying after [`ConnectionEvent::Reconnected`].
    #[error("the connection to the broker was lost, reconnecting: {0}")]
    Reconnecting(String),
    /// A direct channel was arranged but its socket could not be set up.
    #[error("the direct channel failed: {reason}")]
    Direct {
        /// The OS's words.
        reason: String,
    },
    /// The channel was reset before [`Incoming::accept`] could hand it
    /// over: the opener reset it, or (with [`ErrorCode::OpenTimeout`]) the
    /// direct path it asked for did not come within the broker's open timeout.
    #[error("the channel was reset before it was usable: {reason}")]
    Reset {
        /// Its code.
        code: ErrorCode,
        /// Its words.
        reason: String,
    },
    /// The session refused the call (not ready, unknown channel, too long...).
    #[error("{0}")]
    Session(#[from] SessionError),
}

impl PluginError {
    /// The broker's code, if it refused the request or reset the channel.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            PluginError::Refused { code, .. } | PluginError::Reset { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// What a monitor receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonitorItem {
    /// Something the broker did.
    Event(MonitorEvent),
    /// The application did not read in time: the events held for it were
    /// dropped here (the broker's own bound cuts off a slow connection).
    Missed,
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The state when the watch started.
    Snapshot(Vec<Member>),
    /// The watch fell behind: the broker dropped the changes it did not
    /// read in time, and this is the state at `seq`, replacing what the
    /// snapshot and changes so far said. Changes follow from `seq + 1`.
    Resync {
        /// The registry sequence number it shows.
        seq: u64,
        /// Every named plugin, by name.
        members: Vec<Member>,
    },
    /// A change, numbered.
    Change {
        /// Its number (gap-free).
        seq: u64,
        /// The change.
        presence: Presence,
    },
}

/// Stats: per key and per name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Per unix user (what its connections over unix sockets hold).
    pub uids: Vec<UidStats>,
    /// Refusals and disconnects by cause since the broker started.
    pub counters: Vec<CauseCount>,
    /// Per key.
    pub keys: Vec<KeyStats>,
    /// Per name.
    pub names: Vec<NameStats>,
}

/// What a request waits for.
enum Waiter {
    Registered(Reply<bool>),
    Members(Reply<Vec<Member>>),
    Watching(Reply<()>),
    Stats(Reply<Stats>),
    Opened(Reply<Opened>),
    Done(Reply<()>),
}

impl Waiter {
    /// Answers with an error.
    fn fail(self, error: PluginError) {
        match self {
            Waiter::Registered(tx) => reply(&tx, Err(error)),
            Waiter::Members(tx) => reply(&tx, Err(error)),
            Waiter::Watching(tx) => reply(&tx, Err(error)),
            Waiter::Stats(tx) => reply(&tx, Err(error)),
            Waiter::Opened(tx) => reply(&tx, Err(error)),
            Waiter::Done(tx) => reply(&tx, Err(error)),
        }
    }
}

/// Answers a waiter (one that gave up is not missed).
fn reply<T>(tx: &Reply<T>, answer: Result<T, PluginError>) {
    let _ = tx.try_send(answer);
}

/// The broker's answer to an open.
struct Opened {
    peer: PublicKey,
    path: OpenedPath,
    fd: Option<OwnedFd>,
}

/// How an accepted channel that waited for a direct path goes on.
enum Resolved<R: Runtime> {
    Relay,
    SocketPair(OwnedFd),
    Tcp(Box<direct::DirectStream<R>>),
    /// Reset while it waited: no path will come.
    Reset {
        code: ErrorCode,
        reason: String,
    },
}

/// Everything the handles and the driver share.
///
/// The session spans connections (it reconnects, if configured to);
/// `waiters`, `channels`, `fds` and `paths` belong to the current
/// connection, and the session says when they are lost.
pub(crate) struct Inner<R: Runtime> {
    pub(crate) session: Session,
    pub(crate) clock: Clock,
    waiters: HashMap<RequestId, Waiter>,
    pub(crate) channels: HashMap<ChannelId, relayed::ChannelState>,
    /// Where incoming channels go; dropped when the connection is over for
    /// good, which ends [`Plugin::incoming`].
    incoming: Option<Sender<Incoming<R>>>,
    watchers: Vec<queue::Queue<WatchEvent>>,
    /// Monitors' queues (each holds `watch_queue` items).
    monitors: Vec<queue::Queue<MonitorItem>>,
    /// Their capacity.
    watch_queue: usize,
    /// Why the connection ended for good, once it did.
    pub(crate) ended: Option<String>,
    /// Counts lost connections and failed attempts: channels and offers remember the one they
    /// were made on, and a lost one's ids mean nothing to the next.
    pub(crate) epoch: u64,
    /// Relayed channels of lost connections (by epoch and id), until their
    /// handles let go: what they received can still be read, then an error.
    pub(crate) orphans: HashMap<(u64, ChannelId), relayed::ChannelState>,
    events: Vec<queue::Queue<ConnectionEvent>>,
    /// Descriptors from the broker, by the token the session knows them by.
    pub(crate) fds: FdTokens,
    /// Accepted channels waiting to learn their path. A reset of one ends
    /// its wait (the session holds one back while a dialer that presented
    /// its token finishes its handshake).
    paths: HashMap<ChannelId, Sender<Resolved<R>>>,
    /// The current connection's socket, for whichever task has bytes to
    /// send (while the session has a connection).
    pub(crate) socket: Option<Arc<Stream<R>>>,
    /// Taken from the session, not yet taken by the socket: while it is not
    /// empty, the driver waits for room and nobody else writes around it.
    pub(crate) out: WriteQueue,
}

impl<R: Runtime> Inner<R> {
    /// Tells every [`Plugin::events`] receiver.
    fn report(&mut self, event: ConnectionEvent) {
        self.events
            .retain(|q| q.push(event.clone(), || event.clone()));
    }

    /// Forgets a relayed channel that will have no handle, wherever it is
    /// (its connection may be gone, and its id another's on the new one).
    pub(crate) fn forget(&mut self, epoch: u64, id: ChannelId) {
        match self.epoch == epoch {
            true => self.channels.remove(&id),
            false => self.orphans.remove(&(epoch, id)),
        };
    }

    /// The error for something made on a connection that was lost.
    pub(crate) fn stale(&self) -> PluginError {
        let reason = self.session.outage().unwrap_or("it was lost");
        PluginError::Reconnecting(format!("the connection it was on is gone ({reason})"))
    }

    /// Why the session refused a call.
    fn refused(&self, e: SessionError) -> PluginError {
        match (e, self.session.outage()) {
            (SessionError::Reconnecting, Some(reason)) => {
                PluginError::Reconnecting(reason.to_owned())
            }
            (e, _) => e.into(),
        }
    }
}

pub(crate) struct Shared<R: Runtime> {
    pub(crate) rt: R,
    pub(crate) inner: Mutex<Inner<R>>,
    /// The driver has something to do: output the socket did not take, or
    /// news from the session.
    pub(crate) flush: Notify,
}

impl<R: Runtime> Shared<R> {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner<R>> {
        self.inner
            .lock()
            .expect("a task panicked holding the session")
    }

    /// Sends what the session has from the calling task, as far as the
    /// socket takes it now, and hands over what the session reports; wakes
    /// the driver only for what is left (see [`Shared::transmit`]).
    pub(crate) fn send_now(self: &Arc<Self>, inner: &mut Inner<R>) {
        if self.transmit(inner) {
            self.flush.notify_one();
        }
    }

    /// Sends what the session has, as far as the socket takes it now, and
    /// hands over what the session reports. Returns whether the driver has
    /// something left to do: a full socket, a connection that ended, news
    /// a delivery made.
    pub(crate) fn transmit(self: &Arc<Self>, inner: &mut Inner<R>) -> bool {
        let mut woke = drain(self, inner);
        let Inner {
            session,
            out,
            socket,
            clock,
            ..
        } = inner;
        while let Some(bytes) = session.poll_transmit() {
            out.push(bytes);
        }
        if let (false, Some(socket)) = (out.is_empty(), socket.as_ref()) {
            match socket.try_flush(out) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => woke = true,
                Err(e) => {
                    out.clear();
                    let now = clock.now();
                    session.handle_socket_error(now, &format!("write failed: {e}"));
                    woke = true;
                }
            }
        }
        woke | drain(self, inner)
    }
    /// Sends a request on the current connection and waits for its answer
    /// (refused while the session reconnects).
    async fn call<T>(
        self: &Arc<Self>,
        send: impl FnOnce(&mut Inner<R>) -> Result<RequestId, SessionError>,
        waiter: impl FnOnce(Reply<T>) -> Waiter,
    ) -> Result<T, PluginError> {
        let (tx, rx) = bounded(1);
        {
            let mut inner = self.lock();
            if let Some(reason) = &inner.ended {
                return Err(PluginError::Disconnected(reason.clone()));
            }
            let request = send(&mut inner).map_err(|e| inner.refused(e))?;
            inner.waiters.insert(request, waiter(tx));
            self.send_now(&mut inner);
        }
        rx.recv()
            .await
            .unwrap_or_else(|_| Err(PluginError::Disconnected("the connection ended".into())))
    }
}

/// A connection to the broker.
pub struct Plugin<R: Runtime> {
    shared: Arc<Shared<R>>,
    incoming: Receiver<Incoming<R>>,
    name: Option<Name>,
    /// Our identity, for direct connections.
    handshake: Arc<HandshakeConfig>,
    /// Where direct channels reach us, if we listen for them.
    direct_addr: Option<String>,
    _driver: R::Task,
    _direct: Option<R::Task>,
}

impl<R: Runtime> Plugin<R> {
    /// The name this plugin registered, if any.
    pub fn name(&self) -> Option<&Name> {
        self.name.as_ref()
    }

    /// Sends a request and waits for its answer.
    async fn request<T>(
        &self,
        send: impl FnOnce(&mut Inner<R>) -> Result<RequestId, SessionError>,
        waiter: impl FnOnce(Reply<T>) -> Waiter,
    ) -> Result<T, PluginError> {
        self.shared.call(send, waiter).await
    }

    async fn register(&self, name: Name, wait: bool) -> Result<bool, PluginError> {
        let direct_addr = self.direct_addr.clone();
        self.request(
            |inner| {
                let now = inner.clock.now();
                inner.session.register(now, name, wait, direct_addr)
            },
            Waiter::Registered,
        )
        .await
    }

    /// Changes of the connection from now on, one event each: see
    /// [`ConnectionEvent`]. Each call makes a new receiver. One that holds
    /// 16 unread events gives them up for the latest.
    pub fn events(&self) -> Feed<ConnectionEvent> {
        let (queue, rx) = queue::Queue::new(queue::EVENT_QUEUE);
        self.shared.lock().events.push(queue);
        Feed::new(rx)
    }

    /// The broker's limits, as its hello announced them (`None` between
    /// connections).
    pub fn limits(&self) -> Option<AnnouncedLimits> {
        self.shared.lock().session.limits().copied()
    }

    /// Every named plugin.
    pub async fn list(&self) -> Result<Vec<Member>, PluginError> {
        self.request(
            |inner| {
                let now = inner.clock.now();
                inner.session.list(now)
            },
            Waiter::Members,
        )
        .await
    }

    /// Who holds what (if the policy allows).
    pub async fn stats(&self) -> Result<Stats, PluginError> {
        self.request(
            |inner| {
                let now = inner.clock.now();
                inner.session.stats(now)
            },
            Waiter::Stats,
        )
        .await
    }

    /// A snapshot, then every change, in order. One watch per connection.
    /// An application that falls behind (see [`PluginBuilder::watch_queue`])
    /// gets a [`WatchEvent::Resync`] instead of what it missed.
    /// A plugin that reconnects watches again on the new connection: the
    /// receiver gets a new snapshot, then the changes from there.
    pub async fn watch(&self) -> Result<Feed<WatchEvent>, PluginError> {
        let rx = {
            let mut inner = self.shared.lock();
            let (queue, rx) = queue::Queue::new(inner.watch_queue);
            inner.watchers.push(queue);
            rx
        };
        self.request(
            |inner| {
                let now = inner.clock.now();
                inner.session.watch(now)
            },
            Waiter::Watching,
        )
        .await?;
        Ok(Feed::new(rx))
    }

    /// Everything the broker does, of `key` and about `name` if given
    /// (opens, accepts, closes with their bytes, refusals and disconnects
    /// with their causes): needs the policy's `monitor` right. Not restored
    /// on a new connection.
    pub async fn monitor(
        &self,
        key: Option<PublicKey>,
        name: Option<Name>,
    ) -> Result<Feed<MonitorItem>, PluginError> {
        let rx = {
            let mut inner = self.shared.lock();
            let (queue, rx) = queue::Queue::new(inner.watch_queue);
            inner.monitors.push(queue);
            rx
        };
        self.request(
            |inner| {
                let now = inner.clock.now();
                inner.session.monitor(now, key, name)
            },
            Waiter::Done,
        )
        .await?;
        Ok(Feed::new(rx))
    }

    /// Ends the watch: its receiver gets nothing more.
    pub async fn unwatch(&self) -> Result<(), PluginError> {
        self.shared.lock().watchers.clear();
        self.request(
            |inner| {
                let now = inner.clock.now();
                inner.session.unwatch(now)
            },
            Waiter::Done,
        )
        .await
    }

    /// Opens a channel to the plugin registered as `name`, relayed.
    pub async fn open(&self, name: &str, protocol: &str) -> Result<R::Channel, PluginError> {
        self.open_with(name, protocol, Bytes::new(), false).await
    }

    /// Opens a channel to `name` directly if the broker can arrange it (a
    /// socketpair when both plugins are on its unix socket, a TCP connection
    /// when the target listens for them), relayed otherwise.
    pub async fn open_direct(&self, name: &str, protocol: &str) -> Result<R::Channel, PluginError> {
        self.open_with(name, protocol, Bytes::new(), true).await
    }

    /// Opens a channel with metadata for the target (up to 4 KiB), asking for
    /// a direct path if `direct`.
    pub async fn open_with(
        &self,
        name: &str,
        protocol: &str,
        metadata: Bytes,
        direct: bool,
    ) -> Result<R::Channel, PluginError> {
        self.open_raw(name, protocol, metadata, direct)
            .await
            .map(R::Channel::from)
    }

    async fn open_raw(
        &self,
        name: &str,
        protocol: &str,
        metadata: Bytes,
        direct: bool,
    ) -> Result<Channel<R>, PluginError> {
        let target = Name::new(name).map_err(|e| PluginError::Refused {
            code: ErrorCode::Malformed,
            message: e.to_string(),
        })?;
        // The channel's id, and the connection it belongs to, let go unless
        // a handle takes it.
        let mut opened = OpenGuard {
            shared: &self.shared,
            opened: None,
        };
        let answer = self
            .request(
                |inner| {
                    let now = inner.clock.now();
                    let (request, channel) = inner
                        .session
                        .open(now, target, protocol, metadata, direct)?;
                    inner
                        .channels
                        .insert(channel, relayed::ChannelState::default());
                    opened.opened = Some((channel, inner.epoch));
                    Ok(request)
                },
                Waiter::Opened,
            )
            .await?;
        let (id, epoch) = opened.opened.expect("answered, so sent");
        match (answer.path, answer.fd) {
            (OpenedPath::SocketPair, Some(fd)) => {
                self.shared.lock().forget(epoch, id);
                Channel::socketpair(&self.shared.rt, fd, id, answer.peer).map_err(|e| {
                    PluginError::Direct {
                        reason: e.to_string(),
                    }
                })
            }
            (OpenedPath::Dial { addr, token }, _) => {
                let clock = self.shared.lock().clock;
                let rt = &self.shared.rt;
                let dialed =
                    direct::dial(rt, &addr, self.handshake.clone(), answer.peer, token, clock)
                        .await;
                let mut inner = self.shared.lock();
                let current = inner.epoch == epoch;
                let channel = match dialed {
                    Ok(stream) => {
                        // The relayed channel is the fallback no more.
                        inner.forget(epoch, id);
                        if current {
                            // `false`: the relayed channel was reset while we
                            // dialed; the target's own success does that, and
                            // its reset can cross our acceptance. The direct
                            // connection is up either way.
                            inner.session.direct_established(id);
                        }
                        Channel::tcp(Box::new(stream), id, answer.peer)
                    }
                    Err(_) if !current => {
                        inner.forget(epoch, id);
                        return Err(inner.stale());
                    }
                    Err(reason) => {
                        tracing::info!("direct channel to {name} at {addr}: {reason}; relaying");
                        inner
                            .session
                            .direct_failed(id)
                            .map_err(|e| inner.refused(e))?;
                        opened.opened = None; // the handle has it
                        self.relayed(id, epoch, answer.peer)
                    }
                };
                drop(inner);
                self.shared.flush.notify_one();
                Ok(channel)
            }
            _ => {
                opened.opened = None; // the handle has it
                Ok(self.relayed(id, epoch, answer.peer))
            }
        }
    }

    fn relayed(&self, id: ChannelId, epoch: u64, peer: PublicKey) -> Channel<R> {
        Channel::relayed(relayed::Relayed::new(self.shared.clone(), id, epoch), peer)
    }

    /// Channels others open to this plugin (at most 64 wait; openers past
    /// that are rejected, "too many offers waiting"): `.await` it for the next one,
    /// or use it as a [`Stream`](futures_core::Stream); it ends once the
    /// connection is over for good. A plugin that reconnects keeps taking
    /// them across connections.
    pub fn incoming(&self) -> Offers<R> {
        Offers::new(self.incoming.clone())
    }
}

/// An open on its way: if it fails, or the caller stops waiting for it
/// (drops the future), the channel is let go, so that nothing piles up for
/// a handle that never comes.
struct OpenGuard<'a, R: Runtime> {
    shared: &'a Shared<R>,
    opened: Option<(ChannelId, u64)>,
}

impl<R: Runtime> Drop for OpenGuard<'_, R> {
    fn drop(&mut self) {
        let Some((id, epoch)) = self.opened.take() else {
            return;
        };
        let mut inner = self.shared.lock();
        if inner.epoch == epoch {
            inner.session.close_channel(id);
        }
        inner.forget(epoch, id);
        drop(inner);
        self.shared.flush.notify_one();
    }
}

impl<R: Runtime> Drop for Plugin<R> {
    /// The connection ends for good (no reconnecting): requests in flight
    /// fail, relayed channels fail their next read or write (after what
    /// they received), event feeds and offers end, and offers still queued
    /// are let go. Direct channels are sockets of their own and go on.
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        if inner.ended.is_none() {
            // Over for good, connected or not: no reconnecting after this.
            // The broker is told why if the socket takes it now; the
            // socket closes with the driver.
            let last = inner.session.close("the plugin was dropped");
            // Handles that outlive the plugin must not keep the socket open.
            if let Some(socket) = inner.socket.take() {
                inner.out.push(last);
                let _ = socket.try_flush(&mut inner.out);
                inner.out.clear();
            }
            end(&mut inner, "the plugin was dropped".into());
        }
        inner.events.clear(); // the event feeds end
        inner.incoming = None;
        drop(inner);
        // Queued offers hold the shared state, which holds the queue.
        while self.incoming.try_recv().is_ok() {}
    }
}

/// Hands every session event to whoever waits for it; says whether there
/// was any.
pub(crate) fn drain<R: Runtime>(shared: &Arc<Shared<R>>, inner: &mut Inner<R>) -> bool {
    let mut any = false;
    while let Some(event) = inner.session.poll_event() {
        any = true;
        deliver(shared, inner, event);
    }
    any
}

/// Copies what fits of the first chunk of `queue` into `buf`, dropping it
/// once read; `None` if the queue is empty.
pub(crate) fn read_front(queue: &mut VecDeque<Bytes>, buf: &mut [u8]) -> Option<usize> {
    let front = queue.front_mut()?;
    let n = buf.len().min(front.len());
    buf[..n].copy_from_slice(&front[..n]);
    bytes::Buf::advance(front, n);
    if front.is_empty() {
        queue.pop_front();
    }
    Some(n)
}

/// A waker slot.
pub(crate) fn wake(slot: &mut Option<Waker>) {
    if let Some(waker) = slot.take() {
        waker.wake();
    }
}
