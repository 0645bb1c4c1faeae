//! The plugin API on smol: connect (named or not), list, watch, stats,
//! open channels, take incoming ones. A [`Channel`] is futures-io's
//! `AsyncRead + AsyncWrite`: reads give credit back as the application
//! consumes, writes wait for credit, `close` half-closes, dropping closes
//! gracefully, [`Channel::reset`] aborts. Watches and incoming channels
//! are [`Stream`](futures_core::Stream)s.
//!
//! One driver task (on smol's global executor) owns the socket and the
//! core's [`Session`]; handles share the session behind a mutex never held
//! across an await.
//!
//! With [`PluginBuilder::reconnect`], a lost connection is replaced by a new
//! one (see [`Reconnect`]); [`Plugin::events`] says when, as a
//! [`Stream`](futures_core::Stream) of [`ConnectionEvent`]s ([`EventStream`]).

mod builder;
mod channel;
mod deliver;
mod direct;
mod driver;
mod reconnect;
mod relayed;
mod streams;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;

use bytes::Bytes;
use plugboard_core::control::{
    ChannelId, ErrorCode, IncomingPath, KeyStats, Member, Name, NameStats, OpenedPath, Presence,
    RequestId, UidStats,
};
use plugboard_core::session::{Session, SessionError};
use plugboard_core::shs::HandshakeConfig;
use plugboard_core::PublicKey;
use smol::channel::{bounded, Receiver, Sender};
use smol::Task;

pub use builder::PluginBuilder;
pub use channel::{Channel, Path};
pub use reconnect::{ConnectionEvent, EventStream, Reconnect};
pub use streams::{IncomingStream, WatchStream};

use crate::clock::Clock;
use crate::notify::Notify;
use deliver::end;

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
    /// Per key.
    pub keys: Vec<KeyStats>,
    /// Per name.
    pub names: Vec<NameStats>,
}

/// Where the answer to one request goes (a channel of one).
type Reply<T> = Sender<Result<T, PluginError>>;

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

/// Answers a request (whoever asked may have stopped waiting).
fn reply<T>(tx: &Reply<T>, answer: Result<T, PluginError>) {
    let _ = tx.try_send(answer);
}

/// The name this plugin holds, to take again on a new connection.
#[derive(Clone)]
struct Registration {
    name: Name,
    wait: bool,
    direct_addr: Option<String>,
}

/// The broker's answer to an open.
struct Opened {
    peer: PublicKey,
    path: OpenedPath,
    fd: Option<OwnedFd>,
}

/// How an accepted channel that waited for a direct path goes on.
enum Resolved {
    Relay,
    SocketPair(OwnedFd),
    Tcp(Box<direct::DirectStream>),
    /// Reset while it waited: no path will come.
    Reset {
        code: ErrorCode,
        reason: String,
    },
}

/// Descriptors that came from the broker beyond this many, unclaimed, end
/// the connection: a broker does not send more than it announces.
const MAX_UNCLAIMED_FDS: usize = 64;

/// Everything the handles and the driver share.
pub(crate) struct Inner {
    pub(crate) session: Session,
    pub(crate) clock: Clock,
    waiters: HashMap<RequestId, Waiter>,
    pub(crate) channels: HashMap<ChannelId, relayed::ChannelState>,
    incoming: Sender<Incoming>,
    watchers: Vec<Sender<WatchEvent>>,
    /// Why the connection ended for good, once it did.
    pub(crate) ended: Option<String>,
    /// Whether a lost connection is replaced (see `reconnect.rs`).
    reconnect: bool,
    /// Whether the current connection is up (not yet ended or lost).
    live: bool,
    /// Counts lost connections: channels and offers remember the one they
    /// were made on, and a lost one's ids mean nothing to the next session.
    pub(crate) epoch: u64,
    /// Why the connection was lost (or, after failed attempts, the last
    /// one), from then until the name and the watch are restored on a new
    /// connection; user requests fail meanwhile.
    down: Option<String>,
    /// Relayed channels of lost connections (by epoch and id), until their
    /// handles let go: what they received can still be read, then an error.
    pub(crate) orphans: HashMap<(u64, ChannelId), relayed::ChannelState>,
    /// What to restore on a new connection.
    registration: Option<Registration>,
    watching: bool,
    /// Whoever follows [`Plugin::events`].
    events: Vec<Sender<ConnectionEvent>>,
    /// Descriptors from the broker, by the token the session knows them by.
    fds: HashMap<u64, OwnedFd>,
    next_fd: u64,
    /// Accepted channels waiting to learn their path. A reset of one ends
    /// its wait, unless its dialer is mid-handshake (see `expected`).
    paths: HashMap<ChannelId, Sender<Resolved>>,
    /// Dialers the broker announced, by the channel they come for; a
    /// `claimed` one presented its token and the direct listener settles
    /// the channel's wait.
    expected: HashMap<ChannelId, direct::Expected>,
}

impl Inner {
    /// Keeps a descriptor that came with the broker's bytes; the session
    /// refers to it by the returned token.
    pub(crate) fn keep_fd(&mut self, fd: OwnedFd) -> Result<u64, String> {
        if self.fds.len() >= MAX_UNCLAIMED_FDS {
            return Err("the broker sent descriptors nobody asked for".into());
        }
        let token = self.next_fd;
        self.next_fd += 1;
        self.fds.insert(token, fd);
        Ok(token)
    }

    /// Tells every [`Plugin::events`] stream.
    fn report(&mut self, event: ConnectionEvent) {
        self.events.retain(|tx| tx.try_send(event.clone()).is_ok());
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
        let reason = self.down.as_deref().unwrap_or("it was lost");
        PluginError::Reconnecting(format!("the connection it was on is gone ({reason})"))
    }
}

pub(crate) struct Shared {
    pub(crate) inner: Mutex<Inner>,
    /// The driver has output to write.
    pub(crate) flush: Notify,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .expect("a task panicked holding the session")
    }

    /// Sends a request on the current connection and waits for its answer.
    /// A user's request (`restoring` false) is refused while the connection
    /// is down, and so is one that restores the name or the watch on a new
    /// connection once that connection is lost too.
    async fn call<T>(
        &self,
        restoring: bool,
        send: impl FnOnce(&mut Inner) -> Result<RequestId, SessionError>,
        waiter: impl FnOnce(Reply<T>) -> Waiter,
    ) -> Result<T, PluginError> {
        let (tx, rx) = bounded(1);
        {
            let mut inner = self.lock();
            if let Some(reason) = &inner.ended {
                return Err(PluginError::Disconnected(reason.clone()));
            }
            match &inner.down {
                Some(reason) if !restoring || !inner.live => {
                    return Err(PluginError::Reconnecting(reason.clone()))
                }
                _ => {}
            }
            let request = send(&mut inner)?;
            inner.waiters.insert(request, waiter(tx));
        }
        self.flush.notify_one();
        rx.recv()
            .await
            .unwrap_or_else(|_| Err(PluginError::Disconnected("the connection ended".into())))
    }
}

/// A connection to the broker. Dropping it closes the connection: its
/// relayed channels fail, its direct ones go on (they are sockets of their
/// own).
pub struct Plugin {
    shared: Arc<Shared>,
    incoming: Receiver<Incoming>,
    name: Option<Name>,
    /// Our identity, for direct connections.
    handshake: Arc<HandshakeConfig>,
    /// Where direct channels reach us, if we listen for them.
    direct_addr: Option<String>,
    /// The driver; dropping the task cancels it.
    _driver: Task<()>,
    /// The direct listener, if any.
    _direct: Option<Task<()>>,
}

impl Plugin {
    /// The name this plugin registered, if any.
    pub fn name(&self) -> Option<&Name> {
        self.name.as_ref()
    }

    /// Sends a request and waits for its answer.
    async fn request<T>(
        &self,
        send: impl FnOnce(&mut Inner) -> Result<RequestId, SessionError>,
        waiter: impl FnOnce(Reply<T>) -> Waiter,
    ) -> Result<T, PluginError> {
        self.shared.call(false, send, waiter).await
    }

    async fn register(&self, name: Name, wait: bool) -> Result<bool, PluginError> {
        let registration = Registration {
            name,
            wait,
            direct_addr: self.direct_addr.clone(),
        };
        let queued = self
            .request(
                |inner| {
                    // Remembered as it is sent: a connection lost right
                    // after the answer still restores it.
                    inner.registration = Some(registration.clone());
                    reconnect::send_register(inner, registration)
                },
                Waiter::Registered,
            )
            .await;
        if queued.is_err() {
            self.shared.lock().registration = None;
        }
        queued
    }

    /// Changes of the connection from now on, one event each: see
    /// [`ConnectionEvent`]. Each call makes a new stream (an unbounded
    /// async channel's receiver); it ends when the plugin is dropped.
    pub fn events(&self) -> EventStream {
        let (tx, rx) = smol::channel::unbounded();
        self.shared.lock().events.push(tx);
        EventStream::new(rx)
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

    /// A snapshot, then every change, in order, as a stream (it ends with
    /// the connection). One watch per connection. A plugin that reconnects
    /// watches again on the new connection: the stream goes on with a new
    /// snapshot, then the changes from there.
    pub async fn watch(&self) -> Result<WatchStream, PluginError> {
        let (tx, rx) = smol::channel::unbounded();
        self.shared.lock().watchers.push(tx);
        let watching = self
            .request(
                |inner| {
                    inner.watching = true; // as for the name
                    let now = inner.clock.now();
                    inner.session.watch(now)
                },
                Waiter::Watching,
            )
            .await;
        if let Err(e) = watching {
            self.shared.lock().watching = false;
            return Err(e);
        }
        Ok(WatchStream::new(rx))
    }

    /// Ends the watch: its stream ends.
    pub async fn unwatch(&self) -> Result<(), PluginError> {
        {
            let mut inner = self.shared.lock();
            inner.watchers.clear();
            inner.watching = false;
        }
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
    pub async fn open(&self, name: &str, protocol: &str) -> Result<Channel, PluginError> {
        self.open_with(name, protocol, Bytes::new(), false).await
    }

    /// Opens a channel to `name` directly if the broker can arrange it (a
    /// socketpair when both plugins are on its unix socket, a TCP connection
    /// when the target listens for them), relayed otherwise.
    pub async fn open_direct(&self, name: &str, protocol: &str) -> Result<Channel, PluginError> {
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
    ) -> Result<Channel, PluginError> {
        let target = Name::new(name).map_err(|e| PluginError::Refused {
            code: ErrorCode::Malformed,
            message: e.to_string(),
        })?;
        // The channel's id, and the connection it belongs to.
        let mut opened = None;
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
                    opened = Some((channel, inner.epoch));
                    Ok(request)
                },
                Waiter::Opened,
            )
            .await;
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => {
                if let Some((id, epoch)) = opened {
                    self.shared.lock().forget(epoch, id);
                }
                return Err(e);
            }
        };
        let (id, epoch) = opened.expect("answered, so sent");
        match (answer.path, answer.fd) {
            (OpenedPath::SocketPair, Some(fd)) => {
                self.shared.lock().forget(epoch, id);
                Channel::socketpair(fd, id, answer.peer).map_err(|e| PluginError::Direct {
                    reason: e.to_string(),
                })
            }
            (OpenedPath::Dial { addr, token }, _) => {
                let clock = self.shared.lock().clock;
                let dialed =
                    direct::dial(&addr, self.handshake.clone(), answer.peer, token, clock).await;
                let mut inner = self.shared.lock();
                let current = inner.epoch == epoch;
                let channel = match dialed {
                    Ok(stream) => {
                        // The relayed channel is the fallback no more.
                        inner.forget(epoch, id);
                        if current {
                            let _ = inner.session.reset(id, ErrorCode::Cancelled, "direct");
                        }
                        Channel::tcp(Box::new(stream), id, answer.peer)
                    }
                    Err(_) if !current => {
                        inner.forget(epoch, id);
                        return Err(inner.stale());
                    }
                    Err(reason) => {
                        tracing::info!("direct channel to {name} at {addr}: {reason}; relaying");
                        inner.session.direct_failed(id)?;
                        self.relayed(id, epoch, answer.peer)
                    }
                };
                drop(inner);
                self.shared.flush.notify_one();
                Ok(channel)
            }
            _ => Ok(self.relayed(id, epoch, answer.peer)),
        }
    }

    fn relayed(&self, id: ChannelId, epoch: u64, peer: PublicKey) -> Channel {
        Channel::relayed(relayed::Relayed::new(self.shared.clone(), id, epoch), peer)
    }

    /// Channels others open to this plugin, as a stream; it ends once the
    /// connection is over for good (a plugin that reconnects keeps taking
    /// them across connections). Every call gives a stream over the same queue:
    /// each offer goes to one of them. Offers nobody takes wait in the
    /// queue (the opener waits too, until its open times out).
    pub fn incoming(&self) -> IncomingStream {
        IncomingStream::new(self.incoming.clone())
    }
}

impl Drop for Plugin {
    /// The connection ends: requests and relayed channels learn it, offers
    /// still queued are let go.
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        // Over for good, connected or not: no reconnecting after this.
        inner.reconnect = false;
        inner.live = true;
        end(&mut inner, "the plugin was dropped".into());
        inner.events.clear(); // the event streams end
        inner.incoming.close();
        drop(inner);
        // Queued offers hold the shared state, which holds the queue.
        while self.incoming.try_recv().is_ok() {}
    }
}

/// A channel someone opens to this plugin: accept or reject it.
pub struct Incoming {
    shared: Arc<Shared>,
    id: ChannelId,
    /// The connection it was offered on.
    epoch: u64,
    /// The opener's name, if it has one.
    pub from_name: Option<Name>,
    /// The opener's key.
    pub from_key: PublicKey,
    /// What it will speak.
    pub protocol: String,
    /// What it sent along.
    pub metadata: Bytes,
    path: IncomingPath,
}

impl Incoming {
    /// Takes the channel. When the opener asked for a direct path, this
    /// waits until the broker says which path the channel takes, and no
    /// longer than the broker's open timeout for the opener to dial (plus
    /// the direct listener's handshake deadline once it has dialed). If no
    /// path comes, or the opener gives up, the channel is reset:
    /// [`PluginError::Reset`], with [`ErrorCode::OpenTimeout`] for the former.
    pub async fn accept(self) -> Result<Channel, PluginError> {
        let resolved = {
            let mut inner = self.shared.lock();
            if let Some(reason) = &inner.ended {
                return Err(PluginError::Disconnected(reason.clone()));
            }
            if inner.epoch != self.epoch {
                return Err(inner.stale());
            }
            let now = inner.clock.now();
            inner.session.accept(now, self.id)?;
            inner
                .channels
                .insert(self.id, relayed::ChannelState::default());
            match self.path {
                IncomingPath::Relay => None,
                IncomingPath::AwaitPath | IncomingPath::ExpectDial { .. } => {
                    if let IncomingPath::ExpectDial { token } = self.path {
                        let from = self.from_key;
                        let expected = direct::Expected {
                            from,
                            token,
                            claimed: false,
                        };
                        inner.expected.insert(self.id, expected);
                    }
                    let (tx, rx) = bounded(1);
                    inner.paths.insert(self.id, tx);
                    Some(rx)
                }
            }
        };
        self.shared.flush.notify_one();
        let relayed = || {
            Channel::relayed(
                relayed::Relayed::new(self.shared.clone(), self.id, self.epoch),
                self.from_key,
            )
        };
        let Some(resolved) = resolved else {
            return Ok(relayed());
        };
        match resolved.recv().await {
            Ok(Resolved::Relay) => Ok(relayed()),
            Ok(Resolved::Tcp(stream)) => Ok(Channel::tcp(stream, self.id, self.from_key)),
            Ok(Resolved::SocketPair(fd)) => Channel::socketpair(fd, self.id, self.from_key)
                .map_err(|e| PluginError::Direct {
                    reason: e.to_string(),
                }),
            Ok(Resolved::Reset { code, reason }) => Err(PluginError::Reset { code, reason }),
            Err(_) => {
                let mut inner = self.shared.lock();
                inner.forget(self.epoch, self.id);
                if inner.ended.is_none() && inner.epoch != self.epoch {
                    return Err(inner.stale());
                }
                let reason = inner.ended.clone();
                Err(PluginError::Disconnected(reason.unwrap_or_else(|| {
                    "the channel ended before its path was known".into()
                })))
            }
        }
    }

    /// Refuses it; the opener gets `reason`.
    pub fn reject(self, reason: &str) -> Result<(), PluginError> {
        let mut inner = self.shared.lock();
        if inner.epoch != self.epoch {
            return Err(inner.stale());
        }
        inner.session.reject(self.id, reason)?;
        drop(inner);
        self.shared.flush.notify_one();
        Ok(())
    }
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("id", &self.id)
            .field("from_name", &self.from_name)
            .field("from_key", &self.from_key)
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

/// A waker slot.
pub(crate) fn wake(slot: &mut Option<Waker>) {
    if let Some(waker) = slot.take() {
        waker.wake();
    }
}
