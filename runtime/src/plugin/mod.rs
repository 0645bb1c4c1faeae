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

mod channel;
mod direct;
mod driver;
mod feed;
mod queue;
mod reconnect;
mod relayed;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;

use async_channel::{bounded, Receiver, Sender, TrySendError};
use bytes::Bytes;
use plugboard_core::addr::Addr;
use plugboard_core::budget::StrangerLimits;
use plugboard_core::control::{
    ChannelId, ChannelPath, ErrorCode, IncomingPath, KeyStats, Member, Name, NameStats, OpenedPath,
    Presence, RequestId, UidStats,
};
use plugboard_core::session::{Session, SessionConfig, SessionError, SessionEvent};
use plugboard_core::shs::HandshakeConfig;
use plugboard_core::{Keypair, NetworkKey, PublicKey};

pub use channel::{Channel, Path};
pub use feed::{Feed, Offers};
pub use reconnect::{ConnectionEvent, Reconnect};

use crate::notify::Notify;
use crate::rt::Runtime;
use plugboard_os::Clock;

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

/// Descriptors that came from the broker beyond this many, unclaimed, end
/// the connection: a broker does not send more than it announces.
const MAX_UNCLAIMED_FDS: usize = 64;

/// Everything the handles and the driver share.
///
/// `session`, `waiters`, `channels`, `fds` and `paths` belong to
/// the current connection; the rest outlives it when the plugin reconnects.
pub(crate) struct Inner<R: Runtime> {
    pub(crate) session: Session,
    pub(crate) clock: Clock,
    waiters: HashMap<RequestId, Waiter>,
    pub(crate) channels: HashMap<ChannelId, relayed::ChannelState>,
    /// Where incoming channels go; dropped when the connection is over for
    /// good, which ends [`Plugin::incoming`].
    incoming: Option<Sender<Incoming<R>>>,
    watchers: Vec<queue::Queue<WatchEvent>>,
    /// Their capacity.
    watch_queue: usize,
    /// Why the connection ended for good, once it did.
    pub(crate) ended: Option<String>,
    /// Whether a lost connection is replaced rather than the end.
    reconnect: bool,
    /// The current connection is up (it may still be restoring).
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
    events: Vec<queue::Queue<ConnectionEvent>>,
    /// Descriptors from the broker, by the token the session knows them by.
    fds: HashMap<u64, OwnedFd>,
    next_fd: u64,
    /// Accepted channels waiting to learn their path. A reset of one ends
    /// its wait (the session holds one back while a dialer that presented
    /// its token finishes its handshake).
    paths: HashMap<ChannelId, Sender<Resolved<R>>>,
}

impl<R: Runtime> Inner<R> {
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
        let reason = self.down.as_deref().unwrap_or("it was lost");
        PluginError::Reconnecting(format!("the connection it was on is gone ({reason})"))
    }
}

pub(crate) struct Shared<R: Runtime> {
    pub(crate) rt: R,
    pub(crate) inner: Mutex<Inner<R>>,
    /// The driver has output to write.
    pub(crate) flush: Notify,
}

impl<R: Runtime> Shared<R> {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner<R>> {
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
        send: impl FnOnce(&mut Inner<R>) -> Result<RequestId, SessionError>,
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

/// How to connect.
pub struct PluginBuilder<R: Runtime> {
    rt: R,
    keypair: Keypair,
    name: Option<String>,
    wait: bool,
    direct_listen: Option<String>,
    direct_limits: StrangerLimits,
    direct_advertise: Option<String>,
    broker: Option<PublicKey>,
    network_key: NetworkKey,
    reconnect: Option<Reconnect>,
    watch_queue: usize,
}

impl<R: Runtime> PluginBuilder<R> {
    /// Registers under this name once connected (a nameless plugin is a client).
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// Accept direct channels over TCP at `addr` (`tcp:HOST:PORT`; port 0
    /// picks one). The broker tells openers the bound address; only the keys
    /// and tokens it announces get through. Needs a name.
    pub fn direct_listen(mut self, addr: &str) -> Self {
        self.direct_listen = Some(addr.to_owned());
        self
    }

    /// How many strangers the direct listener lets run a handshake at once
    /// (in total and per source address) and for how long; the default is
    /// [`StrangerLimits::default`]. Beyond them a connection is closed at once.
    pub fn direct_limits(mut self, limits: StrangerLimits) -> Self {
        self.direct_limits = limits;
        self
    }

    /// The address openers should dial, when it differs from the bound one
    /// (a listener on `0.0.0.0`, a forwarded port).
    pub fn direct_advertise(mut self, addr: &str) -> Self {
        self.direct_advertise = Some(addr.to_owned());
        self
    }

    /// If the name is taken, wait in line for it instead of failing.
    pub fn wait_for_name(mut self) -> Self {
        self.wait = true;
        self
    }

    /// The broker's key (default: our own, as SSB's local clients do).
    pub fn broker_key(mut self, key: PublicKey) -> Self {
        self.broker = Some(key);
        self
    }

    /// The network key (default: SSB's main network).
    pub fn network_key(mut self, key: NetworkKey) -> Self {
        self.network_key = key;
        self
    }

    /// When the connection to the broker is lost, connect again (with
    /// jittered backoff, until the plugin is dropped) instead of ending.
    ///
    /// On a loss: requests in flight (opens too) fail with
    /// [`PluginError::Reconnecting`], and so do new ones until the plugin is
    /// back; relayed channels fail (reads and writes error); direct channels
    /// are sockets of their own and go on; [`Plugin::events`] says
    /// [`ConnectionEvent::Lost`]. On a new connection the plugin registers
    /// its name again (waiting in line if [`PluginBuilder::wait_for_name`]
    /// said so) and restarts its watch (the receiver gets a fresh
    /// [`WatchEvent::Snapshot`]); then [`ConnectionEvent::Reconnected`]. A
    /// broker that refuses the name or the watch counts as a failed attempt.
    ///
    /// Only a connection that was made is replaced: [`PluginBuilder::connect`]
    /// itself fails if the broker cannot be reached.
    pub fn reconnect(mut self, policy: Reconnect) -> Self {
        self.reconnect = Some(policy);
        self
    }

    /// How many changes a watch holds for an application that does not
    /// read (default 1,024, at least 1). Past that, the changes it did not
    /// read are replaced by one [`WatchEvent::Resync`]: the registry as it
    /// is now.
    pub fn watch_queue(mut self, changes: usize) -> Self {
        self.watch_queue = changes.max(1);
        self
    }

    /// Connects, completes the handshake and the hello, and registers the name if one was given.
    pub async fn connect(self, addr: &str) -> Result<Plugin<R>, PluginError> {
        let addr: Addr =
            addr.parse().map_err(
                |e: plugboard_core::addr::BadAddr| PluginError::Unreachable {
                    addr: addr.to_owned(),
                    reason: e.to_string(),
                },
            )?;
        let name = self
            .name
            .as_deref()
            .map(Name::new)
            .transpose()
            .map_err(|e| PluginError::Refused {
                code: ErrorCode::Malformed,
                message: e.to_string(),
            })?;
        let broker = self.broker.unwrap_or_else(|| self.keypair.public());
        let mut handshake = HandshakeConfig::new(self.keypair);
        handshake.network_key = self.network_key;
        let direct_listener = match (&self.direct_listen, &name) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(PluginError::Direct {
                    reason: "only a named plugin can be reached directly".into(),
                })
            }
            (Some(listen), Some(_)) => Some(direct_listener(&self.rt, listen).await?),
        };
        let mut config = SessionConfig::new(handshake.clone(), broker);
        config.boxstream = matches!(addr, Addr::Tcp(_));
        let clock = Clock::start();
        let session = Session::new(config.clone(), &mut rand_core::OsRng, clock.now())?;
        let (incoming_tx, incoming_rx) = bounded(queue::OFFER_QUEUE);
        let shared = Arc::new(Shared {
            rt: self.rt.clone(),
            inner: Mutex::new(Inner {
                session,
                clock,
                waiters: HashMap::new(),
                channels: HashMap::new(),
                incoming: Some(incoming_tx),
                watchers: Vec::new(),
                watch_queue: self.watch_queue,
                ended: None,
                reconnect: self.reconnect.is_some(),
                live: true,
                epoch: 0,
                down: None,
                orphans: HashMap::new(),
                registration: None,
                watching: false,
                events: Vec::new(),
                fds: HashMap::new(),
                next_fd: 0,
                paths: HashMap::new(),
            }),
            flush: Notify::default(),
        });
        let (ready_tx, ready_rx) = bounded(1);
        let reconnect = self.reconnect.map(|policy| (policy, config));
        let driver = driver::spawn(shared.clone(), &addr, ready_tx, reconnect).await?;
        // Until connect returns, a lost connection is the end of it.
        let first = |e| match e {
            PluginError::Reconnecting(reason) => PluginError::Disconnected(reason),
            e => e,
        };
        ready_rx
            .recv()
            .await
            .map_err(|_| PluginError::Disconnected("the driver stopped".into()))?
            .map_err(first)?;
        let handshake = Arc::new(handshake);
        let (direct_addr, direct_task) = match direct_listener {
            Some((listener, bound)) => {
                let addr = self
                    .direct_advertise
                    .unwrap_or_else(|| format!("tcp:{bound}"));
                let task = self.rt.spawn(direct::serve(
                    shared.clone(),
                    listener,
                    bound,
                    handshake.clone(),
                    self.direct_limits,
                ));
                (Some(addr), Some(task))
            }
            None => (None, None),
        };
        let plugin = Plugin {
            shared,
            incoming: incoming_rx,
            name: name.clone(),
            handshake,
            direct_addr,
            _driver: driver,
            _direct: direct_task,
        };
        if let Some(name) = name {
            plugin.register(name, self.wait).await.map_err(first)?;
        }
        Ok(plugin)
    }
}

/// Binds the direct listener; returns it and the address openers dial.
async fn direct_listener<R: Runtime>(
    rt: &R,
    listen: &str,
) -> Result<(R::Io, std::net::SocketAddr), PluginError> {
    let failed = |reason: String| PluginError::Direct { reason };
    let Ok(Addr::Tcp(host_port)) = listen.parse::<Addr>() else {
        return Err(failed(format!(
            "{listen}: direct channels listen on tcp:HOST:PORT"
        )));
    };
    // The name is looked up off the runtime; binding waits on nothing.
    let addrs = crate::stream::resolve(&host_port)
        .await
        .map_err(|e| failed(format!("{listen}: {e}")))?;
    let listener =
        plugboard_os::bind_tcp(&addrs[..]).map_err(|e| failed(format!("{listen}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| failed(format!("{listen}: {e}")))?;
    let listener = rt
        .register(listener.into())
        .map_err(|e| failed(format!("{listen}: {e}")))?;
    Ok((listener, bound))
}

impl<R: Runtime> Plugin<R> {
    /// Starts describing a connection made with `keypair`, on the runtime
    /// `R::default()` gives (for tokio, the current one: call it inside the
    /// runtime).
    pub fn builder(keypair: Keypair) -> PluginBuilder<R> {
        PluginBuilder {
            rt: R::default(),
            keypair,
            name: None,
            wait: false,
            direct_listen: None,
            direct_limits: StrangerLimits::default(),
            direct_advertise: None,
            broker: None,
            network_key: NetworkKey::SSB_MAIN,
            reconnect: None,
            watch_queue: queue::WATCH_QUEUE,
        }
    }

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
    /// [`ConnectionEvent`]. Each call makes a new receiver. One that holds
    /// 16 unread events gives them up for the latest.
    pub fn events(&self) -> Feed<ConnectionEvent> {
        let (queue, rx) = queue::Queue::new(queue::EVENT_QUEUE);
        self.shared.lock().events.push(queue);
        Feed::new(rx)
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
        Ok(Feed::new(rx))
    }

    /// Ends the watch: its receiver gets nothing more.
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
                        inner.session.direct_failed(id)?;
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
            inner.reconnect = false;
            inner.live = true;
            end(&mut inner, "the plugin was dropped".into());
        }
        inner.events.clear(); // the event feeds end
        inner.incoming = None;
        drop(inner);
        // Queued offers hold the shared state, which holds the queue.
        while self.incoming.try_recv().is_ok() {}
    }
}

/// A channel someone opens to this plugin: accept or reject it.
pub struct Incoming<R: Runtime> {
    shared: Arc<Shared<R>>,
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
    /// Accepted or rejected: dropping it does nothing more.
    answered: bool,
}

impl<R: Runtime> Incoming<R> {
    /// Takes the channel. When the opener asked for a direct path, this
    /// waits until the broker says which path the channel takes, and no
    /// longer than the broker's open timeout for the opener to dial (plus
    /// the direct listener's handshake deadline once it has dialed). If no
    /// path comes, or the opener gives up, the channel is reset:
    /// [`PluginError::Reset`], with [`ErrorCode::OpenTimeout`] for the former.
    pub async fn accept(self) -> Result<R::Channel, PluginError> {
        self.accept_raw().await.map(R::Channel::from)
    }

    async fn accept_raw(mut self) -> Result<Channel<R>, PluginError> {
        self.answered = true;
        let resolved = {
            let mut inner = self.shared.lock();
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
            Ok(Resolved::SocketPair(fd)) => {
                Channel::socketpair(&self.shared.rt, fd, self.id, self.from_key).map_err(|e| {
                    PluginError::Direct {
                        reason: e.to_string(),
                    }
                })
            }
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
    pub fn reject(mut self, reason: &str) -> Result<(), PluginError> {
        self.answered = true;
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

impl<R: Runtime> Drop for Incoming<R> {
    /// An offer nobody answered is rejected: the opener learns it at once,
    /// and nothing is held for it.
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let mut inner = self.shared.lock();
        if inner.epoch == self.epoch {
            let _ = inner.session.reject(self.id, "not taken");
            drop(inner);
            self.shared.flush.notify_one();
        }
    }
}

/// Hands what the session reports to whoever waits for it. Called by the
/// driver with the lock held.
pub(crate) fn deliver<R: Runtime>(
    shared: &Arc<Shared<R>>,
    inner: &mut Inner<R>,
    event: SessionEvent,
) {
    match event {
        SessionEvent::Ready { .. } | SessionEvent::NameAcquired { .. } => {}
        SessionEvent::ChannelPath { channel, path, fd } => {
            // A descriptor for no awaited channel closes here.
            let fd = fd.and_then(|t| inner.fds.remove(&t));
            let Some(tx) = inner.paths.remove(&channel) else {
                return;
            };
            let resolved = match (path, fd) {
                (ChannelPath::SocketPair, Some(fd)) => {
                    inner.channels.remove(&channel);
                    Resolved::SocketPair(fd)
                }
                _ => Resolved::Relay,
            };
            let _ = tx.try_send(resolved);
        }
        SessionEvent::Registered { request, queued } => {
            if let Some(Waiter::Registered(tx)) = inner.waiters.remove(&request) {
                reply(&tx, Ok(queued));
            }
        }
        SessionEvent::Members { request, members } => {
            if let Some(Waiter::Members(tx)) = inner.waiters.remove(&request) {
                reply(&tx, Ok(members));
            }
        }
        SessionEvent::Watching {
            request,
            seq,
            members,
        } => {
            let snapshot = || WatchEvent::Snapshot(members.clone());
            let resync = || WatchEvent::Resync {
                seq,
                members: members.clone(),
            };
            inner.watchers.retain(|w| w.push(snapshot(), resync));
            if let Some(Waiter::Watching(tx)) = inner.waiters.remove(&request) {
                reply(&tx, Ok(()));
            }
        }
        SessionEvent::Resynced { seq, members } => {
            let resync = || WatchEvent::Resync {
                seq,
                members: members.clone(),
            };
            inner.watchers.retain(|w| w.push(resync(), resync));
        }
        SessionEvent::Presence { seq, presence } => {
            // A watcher that fell behind gets the registry as it is now.
            let Inner {
                session, watchers, ..
            } = inner;
            let resync = || {
                let (seq, members) = session.watch_view().unwrap_or_default();
                WatchEvent::Resync { seq, members }
            };
            let change = || WatchEvent::Change {
                seq,
                presence: presence.clone(),
            };
            watchers.retain(|w| w.push(change(), resync));
        }
        SessionEvent::Stats {
            request,
            uids,
            keys,
            names,
        } => {
            if let Some(Waiter::Stats(tx)) = inner.waiters.remove(&request) {
                reply(&tx, Ok(Stats { uids, keys, names }));
            }
        }
        SessionEvent::Done { request } => {
            if let Some(Waiter::Done(tx)) = inner.waiters.remove(&request) {
                reply(&tx, Ok(()));
            }
        }
        SessionEvent::Failed {
            request,
            code,
            message,
        } => {
            if let Some(waiter) = inner.waiters.remove(&request) {
                waiter.fail(PluginError::Refused { code, message });
            }
        }
        SessionEvent::Opened {
            request,
            peer,
            path,
            fd,
            ..
        } => {
            let fd = fd.and_then(|token| inner.fds.remove(&token));
            if let Some(Waiter::Opened(tx)) = inner.waiters.remove(&request) {
                reply(&tx, Ok(Opened { peer, path, fd }));
            }
        }
        SessionEvent::Incoming {
            channel,
            from_name,
            from_key,
            protocol,
            metadata,
            path,
        } => {
            let incoming = Incoming {
                shared: shared.clone(),
                id: channel,
                epoch: inner.epoch,
                from_name,
                from_key,
                protocol,
                metadata,
                path,
                answered: false,
            };
            let refused = match &inner.incoming {
                Some(tx) => tx.try_send(incoming).err().map(|refused| match refused {
                    TrySendError::Full(offer) => (offer, "too many offers waiting"),
                    TrySendError::Closed(offer) => (offer, "not accepting channels"),
                }),
                None => Some((incoming, "not accepting channels")),
            };
            if let Some((mut refused, why)) = refused {
                refused.answered = true; // dropped under the lock: no second answer
                                         // The opener is told (Rejected, with why).
                tracing::info!("refused an offer of channel {}: {why}", refused.id);
                let _ = inner.session.reject(refused.id, why);
            }
        }
        SessionEvent::Readable { channel } | SessionEvent::ChannelClosed { channel } => {
            if let Some(c) = inner.channels.get_mut(&channel) {
                c.wake_reader();
            }
        }
        SessionEvent::Reset {
            channel,
            code,
            reason,
        } => {
            if inner.paths.contains_key(&channel) {
                // Accepted, still without a path: its accept() ends here.
                inner.channels.remove(&channel);
                if let Some(tx) = inner.paths.remove(&channel) {
                    let _ = tx.try_send(Resolved::Reset { code, reason });
                }
            } else if let Some(c) = inner.channels.get_mut(&channel) {
                c.wake_reader();
                c.wake_writer();
            }
        }
        SessionEvent::Writable { channel } => {
            if let Some(c) = inner.channels.get_mut(&channel) {
                c.wake_writer();
            }
        }
        SessionEvent::Closed { reason, .. } => end(inner, reason),
    }
}

/// The connection is over: every waiter and channel learns it. A plugin
/// that reconnects has lost it instead (see [`reconnect::lose`]).
pub(crate) fn end<R: Runtime>(inner: &mut Inner<R>, reason: String) {
    if !inner.live {
        return;
    }
    inner.live = false;
    if inner.reconnect {
        reconnect::lose(inner, reason);
        return;
    }
    inner.ended = Some(reason.clone());
    inner.waiters.clear(); // dropped senders: the waiters see Disconnected
    inner.watchers.clear();
    inner.incoming = None; // `incoming()` ends
    inner.paths.clear();
    for c in inner.channels.values_mut() {
        c.wake_reader();
        c.wake_writer();
    }
    inner.report(ConnectionEvent::Ended { reason });
}

/// A waker slot.
pub(crate) fn wake(slot: &mut Option<Waker>) {
    if let Some(waker) = slot.take() {
        waker.wake();
    }
}
