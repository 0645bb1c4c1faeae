//! The plugin API a scenario drives, whichever runtime's it is: a few calls,
//! futures-io channels, and the answers in one vocabulary.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_lite::io::{AsyncRead, AsyncWrite};
use plugboard_core::control::{ErrorCode, KeyStats, Member, Presence};
use plugboard_core::{NetworkKey, PublicKey};

use crate::{broker_keys, keys};

/// How a scenario connects a plugin.
#[derive(Debug, Clone)]
pub struct Connect {
    /// `unix:PATH` or `tcp:HOST:PORT`.
    pub addr: String,
    /// The identity: [`keys`]`(seed)`, or the broker's own for 0xB0.
    pub seed: u8,
    /// Register this name.
    pub name: Option<String>,
    /// Wait in line if the name is taken.
    pub wait: bool,
    /// The network key (SSB's main one unless a scenario says otherwise).
    pub network_key: NetworkKey,
    /// Take direct TCP channels here.
    pub direct_listen: Option<String>,
    /// Tell openers to dial this instead of the bound address.
    pub direct_advertise: Option<String>,
    /// Bounds on strangers at the direct listener, if not the default.
    pub direct_limits: Option<plugboard_core::budget::StrangerLimits>,
    /// Changes a watch holds for a scenario that does not read, if not the
    /// default.
    pub watch_queue: Option<usize>,
}

impl Connect {
    /// A nameless plugin with key `seed` at `addr`.
    pub fn new(addr: &str, seed: u8) -> Self {
        Connect {
            addr: addr.to_owned(),
            seed,
            name: None,
            wait: false,
            network_key: NetworkKey::SSB_MAIN,
            direct_listen: None,
            direct_advertise: None,
            direct_limits: None,
            watch_queue: None,
        }
    }

    /// Registers `name`.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// Waits in line for the name.
    pub fn wait(mut self) -> Self {
        self.wait = true;
        self
    }

    /// Takes direct TCP channels at `listen`.
    pub fn direct(mut self, listen: &str) -> Self {
        self.direct_listen = Some(listen.to_owned());
        self
    }

    /// Bounds strangers at the direct listener by `limits`.
    pub fn direct_limits(mut self, limits: plugboard_core::budget::StrangerLimits) -> Self {
        self.direct_limits = Some(limits);
        self
    }

    /// A watch holds `changes` unread changes before it resyncs.
    pub fn watch_queue(mut self, changes: usize) -> Self {
        self.watch_queue = Some(changes);
        self
    }

    pub(crate) fn keypair(&self) -> plugboard_core::Keypair {
        match self.seed {
            0xB0 => broker_keys(),
            seed => keys(seed),
        }
    }
}

/// Why a call failed, in every API's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The broker refused the request.
    Refused(ErrorCode, String),
    /// The broker could not be reached.
    Unreachable(String),
    /// The connection ended (the handshake was cut, the broker left...).
    Disconnected(String),
    /// An accepted channel was reset before it was usable.
    Reset(ErrorCode, String),
    /// Anything else.
    Other(String),
}

impl Error {
    /// The broker's code, if it refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Refused(code, _) => Some(*code),
            _ => None,
        }
    }
}

/// Which way a channel's bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Through the broker.
    Relayed,
    /// A socketpair the broker handed out.
    SocketPair,
    /// TCP from the opener to the target.
    Tcp,
}

/// A watch as a scenario reads it.
pub type Watching = std::pin::Pin<Box<dyn futures_lite::Stream<Item = Watch> + Send>>;

impl From<plugboard_tokio::WatchEvent> for Watch {
    fn from(event: plugboard_tokio::WatchEvent) -> Self {
        match event {
            plugboard_tokio::WatchEvent::Snapshot(members) => Watch::Snapshot(members),
            plugboard_tokio::WatchEvent::Resync { seq, members } => Watch::Resync { seq, members },
            plugboard_tokio::WatchEvent::Change { seq, presence } => {
                Watch::Change { seq, presence }
            }
        }
    }
}

/// What a watch reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watch {
    /// Who was there when the watch started.
    Snapshot(Vec<Member>),
    /// The watch fell behind; this replaces what it knew.
    Resync {
        /// The registry sequence number it shows.
        seq: u64,
        /// Who is there.
        members: Vec<Member>,
    },
    /// A change.
    Change {
        /// Numbered without gaps.
        seq: u64,
        /// What changed.
        presence: Presence,
    },
}

/// A task a scenario started; awaiting it gives its output.
pub type Spawned<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// One runtime's plugin API, as the scenarios use it.
pub trait Api: 'static {
    /// For messages.
    const NAME: &'static str;
    /// A connection to the broker.
    type Plugin: Send + Sync + 'static;
    /// A channel: futures-io both ways.
    type Channel: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// An incoming channel, to accept or reject.
    type Incoming: Send + 'static;

    /// Runs a scenario to the end on this runtime.
    fn block_on<F: Future>(future: F) -> F::Output;
    /// Runs `future` beside the scenario.
    fn spawn<F>(future: F) -> Spawned<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static;
    /// Waits.
    fn sleep(duration: Duration) -> impl Future<Output = ()> + Send;

    /// Connects (and registers, if a name is given).
    fn connect(how: Connect) -> impl Future<Output = Result<Self::Plugin, Error>> + Send;
    /// Every named plugin.
    fn list(plugin: &Self::Plugin) -> impl Future<Output = Result<Vec<Member>, Error>> + Send;
    /// Usage per key.
    fn stats(plugin: &Self::Plugin) -> impl Future<Output = Result<Vec<KeyStats>, Error>> + Send;
    /// A snapshot, then every change, read as the scenario reads it (so a
    /// scenario can fall behind).
    fn watch(plugin: &Self::Plugin) -> impl Future<Output = Result<Watching, Error>> + Send;
    /// Ends the watch: its stream ends.
    fn unwatch(plugin: &Self::Plugin) -> impl Future<Output = Result<(), Error>> + Send;
    /// Opens a channel to `name` (asking for a direct path if `direct`).
    fn open(
        plugin: &Self::Plugin,
        name: &str,
        protocol: &str,
        metadata: Bytes,
        direct: bool,
    ) -> impl Future<Output = Result<Self::Channel, Error>> + Send;
    /// The next incoming channel; `None` once the connection is over.
    fn incoming(plugin: &Self::Plugin) -> impl Future<Output = Option<Self::Incoming>> + Send;
    /// What the opener sent along with an incoming channel.
    fn metadata(incoming: &Self::Incoming) -> Bytes;
    /// The protocol the opener named.
    fn protocol(incoming: &Self::Incoming) -> String;
    /// The opener's key.
    fn from_key(incoming: &Self::Incoming) -> PublicKey;
    /// Takes the channel (waiting for its path, if direct).
    fn accept(
        incoming: Self::Incoming,
    ) -> impl Future<Output = Result<Self::Channel, Error>> + Send;
    /// Refuses the channel.
    fn reject(incoming: Self::Incoming, reason: &str) -> Result<(), Error>;
    /// Which way a channel goes.
    fn path(channel: &Self::Channel) -> Path;
    /// The key of the channel's other end.
    fn peer(channel: &Self::Channel) -> PublicKey;
    /// Ends the channel both ways at once (dropping it closes gracefully).
    fn reset(channel: Self::Channel, reason: &str);
}

/// A plugin builder set up as `how` says (tokio's and smol's builders have
/// the same methods).
macro_rules! configure {
    ($builder:expr, $how:expr) => {{
        let how = &$how;
        let mut builder = $builder
            .broker_key(broker_keys().public())
            .network_key(how.network_key);
        if let Some(name) = &how.name {
            builder = builder.name(name);
        }
        if how.wait {
            builder = builder.wait_for_name();
        }
        if let Some(addr) = &how.direct_listen {
            builder = builder.direct_listen(addr);
        }
        if let Some(addr) = &how.direct_advertise {
            builder = builder.direct_advertise(addr);
        }
        if let Some(limits) = how.direct_limits {
            builder = builder.direct_limits(limits);
        }
        if let Some(changes) = how.watch_queue {
            builder = builder.watch_queue(changes);
        }
        builder
    }};
}

// ── tokio ──────────────────────────────────────────────────────────────

/// `plugboard-tokio`'s plugin API.
pub struct TokioApi;

fn tokio_error(e: plugboard_tokio::PluginError) -> Error {
    use plugboard_tokio::PluginError as E;
    match e {
        E::Refused { code, message } => Error::Refused(code, message),
        E::Unreachable { addr, reason } => Error::Unreachable(format!("{addr}: {reason}")),
        E::Disconnected(reason) => Error::Disconnected(reason),
        E::Reset { code, reason } => Error::Reset(code, reason),
        other => Error::Other(other.to_string()),
    }
}

impl Api for TokioApi {
    const NAME: &'static str = "tokio";
    type Plugin = plugboard_tokio::Plugin;
    type Channel = Compat<plugboard_tokio::Channel>;
    type Incoming = plugboard_tokio::Incoming;

    fn block_on<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(future)
    }

    fn spawn<F>(future: F) -> Spawned<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let task = tokio::spawn(future);
        Box::pin(async move { task.await.expect("a scenario task panicked") })
    }

    fn sleep(duration: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(duration)
    }

    async fn connect(how: Connect) -> Result<Self::Plugin, Error> {
        let builder = plugboard_tokio::Plugin::builder(how.keypair());
        configure!(builder, how)
            .connect(&how.addr)
            .await
            .map_err(tokio_error)
    }

    async fn list(plugin: &Self::Plugin) -> Result<Vec<Member>, Error> {
        plugin.list().await.map_err(tokio_error)
    }

    async fn stats(plugin: &Self::Plugin) -> Result<Vec<KeyStats>, Error> {
        plugin.stats().await.map(|s| s.keys).map_err(tokio_error)
    }

    async fn watch(plugin: &Self::Plugin) -> Result<Watching, Error> {
        let feed = plugin.watch().await.map_err(tokio_error)?;
        Ok(Box::pin(futures_lite::StreamExt::map(feed, Watch::from)))
    }

    async fn unwatch(plugin: &Self::Plugin) -> Result<(), Error> {
        plugin.unwatch().await.map_err(tokio_error)
    }

    async fn open(
        plugin: &Self::Plugin,
        name: &str,
        protocol: &str,
        metadata: Bytes,
        direct: bool,
    ) -> Result<Self::Channel, Error> {
        let channel = plugin.open_with(name, protocol, metadata, direct).await;
        channel.map(Compat).map_err(tokio_error)
    }

    async fn incoming(plugin: &Self::Plugin) -> Option<Self::Incoming> {
        plugin.incoming().await
    }

    fn metadata(incoming: &Self::Incoming) -> Bytes {
        incoming.metadata.clone()
    }

    fn protocol(incoming: &Self::Incoming) -> String {
        incoming.protocol.clone()
    }

    fn from_key(incoming: &Self::Incoming) -> PublicKey {
        incoming.from_key
    }

    async fn accept(incoming: Self::Incoming) -> Result<Self::Channel, Error> {
        incoming.accept().await.map(Compat).map_err(tokio_error)
    }

    fn reject(incoming: Self::Incoming, reason: &str) -> Result<(), Error> {
        incoming.reject(reason).map_err(tokio_error)
    }

    fn path(channel: &Self::Channel) -> Path {
        match channel.0.path() {
            plugboard_tokio::plugin::Path::Relayed => Path::Relayed,
            plugboard_tokio::plugin::Path::SocketPair => Path::SocketPair,
            plugboard_tokio::plugin::Path::Tcp => Path::Tcp,
        }
    }

    fn peer(channel: &Self::Channel) -> PublicKey {
        channel.0.peer()
    }

    fn reset(channel: Self::Channel, reason: &str) {
        channel.0.reset(reason)
    }
}

// ── smol ───────────────────────────────────────────────────────────────

/// `plugboard-smol`'s plugin API.
pub struct SmolApi;

fn smol_error(e: plugboard_smol::PluginError) -> Error {
    use plugboard_smol::PluginError as E;
    match e {
        E::Refused { code, message } => Error::Refused(code, message),
        E::Unreachable { addr, reason } => Error::Unreachable(format!("{addr}: {reason}")),
        E::Disconnected(reason) => Error::Disconnected(reason),
        E::Reset { code, reason } => Error::Reset(code, reason),
        other => Error::Other(other.to_string()),
    }
}

impl Api for SmolApi {
    const NAME: &'static str = "smol";
    type Plugin = plugboard_smol::Plugin;
    type Channel = plugboard_smol::Channel;
    type Incoming = plugboard_smol::Incoming;

    fn block_on<F: Future>(future: F) -> F::Output {
        smol::block_on(future)
    }

    fn spawn<F>(future: F) -> Spawned<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        // Detached, as with tokio: dropping the handle does not cancel it.
        let (tx, rx) = tokio::sync::oneshot::channel();
        smol::spawn(async move {
            let _ = tx.send(future.await);
        })
        .detach();
        Box::pin(async move { rx.await.expect("a scenario task panicked") })
    }

    async fn sleep(duration: Duration) {
        smol::Timer::after(duration).await;
    }

    async fn connect(how: Connect) -> Result<Self::Plugin, Error> {
        let builder = plugboard_smol::Plugin::builder(how.keypair());
        configure!(builder, how)
            .connect(&how.addr)
            .await
            .map_err(smol_error)
    }

    async fn list(plugin: &Self::Plugin) -> Result<Vec<Member>, Error> {
        plugin.list().await.map_err(smol_error)
    }

    async fn stats(plugin: &Self::Plugin) -> Result<Vec<KeyStats>, Error> {
        plugin.stats().await.map(|s| s.keys).map_err(smol_error)
    }

    async fn watch(plugin: &Self::Plugin) -> Result<Watching, Error> {
        let feed = plugin.watch().await.map_err(smol_error)?;
        Ok(Box::pin(futures_lite::StreamExt::map(feed, Watch::from)))
    }

    async fn unwatch(plugin: &Self::Plugin) -> Result<(), Error> {
        plugin.unwatch().await.map_err(smol_error)
    }

    async fn open(
        plugin: &Self::Plugin,
        name: &str,
        protocol: &str,
        metadata: Bytes,
        direct: bool,
    ) -> Result<Self::Channel, Error> {
        let channel = plugin.open_with(name, protocol, metadata, direct).await;
        channel.map_err(smol_error)
    }

    async fn incoming(plugin: &Self::Plugin) -> Option<Self::Incoming> {
        use futures_lite::StreamExt as _;
        plugin.incoming().next().await
    }

    fn metadata(incoming: &Self::Incoming) -> Bytes {
        incoming.metadata.clone()
    }

    fn protocol(incoming: &Self::Incoming) -> String {
        incoming.protocol.clone()
    }

    fn from_key(incoming: &Self::Incoming) -> PublicKey {
        incoming.from_key
    }

    async fn accept(incoming: Self::Incoming) -> Result<Self::Channel, Error> {
        incoming.accept().await.map_err(smol_error)
    }

    fn reject(incoming: Self::Incoming, reason: &str) -> Result<(), Error> {
        incoming.reject(reason).map_err(smol_error)
    }

    fn path(channel: &Self::Channel) -> Path {
        match channel.path() {
            plugboard_smol::Path::Relayed => Path::Relayed,
            plugboard_smol::Path::SocketPair => Path::SocketPair,
            plugboard_smol::Path::Tcp => Path::Tcp,
        }
    }

    fn peer(channel: &Self::Channel) -> PublicKey {
        channel.peer()
    }

    fn reset(channel: Self::Channel, reason: &str) {
        channel.reset(reason)
    }
}

/// A tokio stream as a futures-io one.
pub struct Compat<T>(pub T);

impl<T: tokio::io::AsyncRead + Unpin> AsyncRead for Compat<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut read = tokio::io::ReadBuf::new(buf);
        match Pin::new(&mut self.0).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(read.filled().len())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> AsyncWrite for Compat<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
