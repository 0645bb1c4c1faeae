//! `plugboard-mio`'s `PluginConn` as a plugin API, so that the scenarios run
//! it too.
//!
//! mio has no tasks: a `PluginConn` is driven by whoever owns the
//! `mio::Poll`. The bridge gives each plugin a thread that owns a poll, the
//! `PluginConn`, its direct listener and its `DirectTcp` connections
//! ([`event_loop`]), and does what an embedder's loop does: it answers the
//! session's events and moves channel bytes. The scenario's side talks to
//! that thread through a command queue and a `mio::Waker`; a channel is a
//! pair of byte queues ([`Pipe`]) the thread fills and drains, and a
//! socketpair end is handed over as it is (async-io's `Async<UnixStream>`).
//! The queues are bounded but for what a direct TCP channel receives: the
//! bridge takes every event its `DirectTcp` makes (which would pause while
//! they wait), a test bridge's limit, not the async APIs'.
//!
//! Nothing here is protocol: the decisions are the core session's, as in any
//! embedding; this is the glue of one, written for a test.

mod event_loop;
mod pipe;

use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_lite::io::{AsyncRead, AsyncWrite};
use plugboard_core::control::{ChannelId, KeyStats, Member};
use plugboard_core::PublicKey;
use tokio::sync::{mpsc, oneshot};

use crate::api::{Api, Connect, Error, Path, Spawned, Watching};
use pipe::{Feed, Pipe};

/// `plugboard-mio`'s `PluginConn`, on a thread of its own per plugin.
pub struct MioApi;

/// What the scenario's side and a plugin's thread share.
struct Shared {
    waker: mio::Waker,
    /// Set until the thread looks at what changed: one wake-up for many.
    woken: AtomicBool,
    inbox: Mutex<Inbox>,
}

#[derive(Default)]
struct Inbox {
    commands: Vec<Command>,
    /// The plugin was dropped: the connection ends.
    dropped: bool,
}

impl Shared {
    /// Tells the thread that something changed.
    fn wake(&self) {
        if !self.woken.swap(true, Ordering::AcqRel) {
            let _ = self.waker.wake();
        }
    }

    fn send(&self, command: Command) {
        self.inbox.lock().unwrap().commands.push(command);
        self.wake();
    }
}

type Reply<T> = oneshot::Sender<Result<T, Error>>;

/// What the scenario asks of a plugin's thread.
enum Command {
    List(Reply<Vec<Member>>),
    Stats(Reply<Vec<KeyStats>>),
    Watch(Reply<Arc<Feed>>),
    Unwatch(Reply<()>),
    Open {
        name: String,
        protocol: String,
        metadata: Bytes,
        direct: bool,
        reply: Reply<Opened>,
    },
    Accept {
        channel: ChannelId,
        /// The opener.
        peer: PublicKey,
        reply: Reply<Opened>,
    },
    Reject {
        channel: ChannelId,
        reason: String,
    },
}

/// A channel as the thread hands it over, with its other end's key.
enum Opened {
    /// Bytes the thread moves: a relayed channel, or a direct TCP one.
    Pipe(Arc<Pipe>, Path, PublicKey),
    /// A socketpair end from the broker.
    Fd(OwnedFd, PublicKey),
}

/// A plugin: its thread runs until the plugin and its channels are dropped.
pub struct MioPlugin {
    shared: Arc<Shared>,
    offers: tokio::sync::Mutex<mpsc::UnboundedReceiver<MioIncoming>>,
}

impl MioPlugin {
    async fn ask<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.shared.send(command(tx));
        rx.await
            .unwrap_or_else(|_| Err(Error::Disconnected("the plugin's loop ended".into())))
    }
}

fn into_channel(opened: Opened, shared: Arc<Shared>) -> MioChannel {
    match opened {
        Opened::Pipe(pipe, path, peer) => MioChannel(Kind::Piped { pipe, shared, path }, peer),
        Opened::Fd(fd, peer) => {
            let stream = UnixStream::from(fd);
            let stream = smol::Async::new(stream).expect("a non-blocking socketpair end");
            MioChannel(Kind::Fd(stream), peer)
        }
    }
}

impl Drop for MioPlugin {
    /// Killed, as a process that exits: the socket closes, nothing is said.
    fn drop(&mut self) {
        self.shared.inbox.lock().unwrap().dropped = true;
        self.shared.wake();
    }
}

/// Someone opens a channel to the plugin.
pub struct MioIncoming {
    channel: ChannelId,
    from_key: PublicKey,
    protocol: String,
    metadata: Bytes,
    plugin: Arc<Shared>,
    answered: bool,
}

impl Drop for MioIncoming {
    /// An offer nobody answered is refused.
    fn drop(&mut self) {
        if !self.answered {
            self.plugin.send(Command::Reject {
                channel: self.channel,
                reason: "not taken".into(),
            });
        }
    }
}

/// A channel: bytes the plugin's thread moves, or a socketpair end; and
/// the key of its other end.
pub struct MioChannel(Kind, PublicKey);

enum Kind {
    /// Relayed, or direct over TCP: the thread moves its bytes.
    Piped {
        pipe: Arc<Pipe>,
        shared: Arc<Shared>,
        path: Path,
    },
    /// A socketpair end the broker handed over.
    Fd(smol::Async<UnixStream>),
}

impl Drop for MioChannel {
    /// Let go: the thread sends what was written, then lets it go.
    fn drop(&mut self) {
        if let Kind::Piped { pipe, shared, .. } = &self.0 {
            pipe.drop_handle();
            shared.wake();
        }
    }
}

impl AsyncRead for MioChannel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().0 {
            Kind::Piped { pipe, shared, .. } => pipe.poll_read(cx, buf, shared),
            Kind::Fd(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MioChannel {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().0 {
            Kind::Piped { pipe, shared, .. } => pipe.poll_write(cx, data, shared),
            Kind::Fd(stream) => Pin::new(stream).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Kind::Piped { pipe, .. } => pipe.poll_flush(cx),
            Kind::Fd(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Kind::Piped { pipe, shared, .. } => pipe.poll_close(cx, shared),
            // async-io's close only flushes: the peer reads its end here.
            Kind::Fd(stream) => {
                std::task::ready!(Pin::new(&mut *stream).poll_flush(cx))?;
                Poll::Ready(stream.get_ref().shutdown(std::net::Shutdown::Write))
            }
        }
    }
}

/// A watch, read as the scenario reads it.
struct WatchStream {
    feed: Arc<Feed>,
    shared: Arc<Shared>,
}

impl futures_lite::Stream for WatchStream {
    type Item = crate::api::Watch;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.feed.poll_next(cx, &self.shared)
    }
}

impl Api for MioApi {
    const NAME: &'static str = "mio";
    type Plugin = MioPlugin;
    type Channel = MioChannel;
    type Incoming = MioIncoming;

    fn block_on<F: Future>(future: F) -> F::Output {
        crate::api::SmolApi::block_on(future)
    }

    fn spawn<F>(future: F) -> Spawned<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        crate::api::SmolApi::spawn(future)
    }

    fn sleep(duration: Duration) -> impl Future<Output = ()> + Send {
        crate::api::SmolApi::sleep(duration)
    }

    async fn connect(how: Connect) -> Result<Self::Plugin, Error> {
        event_loop::start(how).await
    }

    async fn list(plugin: &Self::Plugin) -> Result<Vec<Member>, Error> {
        plugin.ask(Command::List).await
    }

    async fn stats(plugin: &Self::Plugin) -> Result<Vec<KeyStats>, Error> {
        plugin.ask(Command::Stats).await
    }

    async fn watch(plugin: &Self::Plugin) -> Result<Watching, Error> {
        let feed = plugin.ask(Command::Watch).await?;
        let shared = plugin.shared.clone();
        Ok(Box::pin(WatchStream { feed, shared }))
    }

    async fn unwatch(plugin: &Self::Plugin) -> Result<(), Error> {
        plugin.ask(Command::Unwatch).await
    }

    async fn open(
        plugin: &Self::Plugin,
        name: &str,
        protocol: &str,
        metadata: Bytes,
        direct: bool,
    ) -> Result<Self::Channel, Error> {
        let (name, protocol) = (name.to_owned(), protocol.to_owned());
        let opened = plugin
            .ask(|reply| Command::Open {
                name,
                protocol,
                metadata,
                direct,
                reply,
            })
            .await?;
        Ok(into_channel(opened, plugin.shared.clone()))
    }

    async fn incoming(plugin: &Self::Plugin) -> Option<Self::Incoming> {
        plugin.offers.lock().await.recv().await
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

    async fn accept(mut incoming: Self::Incoming) -> Result<Self::Channel, Error> {
        incoming.answered = true;
        let (tx, rx) = oneshot::channel();
        let shared = incoming.plugin.clone();
        shared.send(Command::Accept {
            channel: incoming.channel,
            peer: incoming.from_key,
            reply: tx,
        });
        let opened = rx
            .await
            .unwrap_or_else(|_| Err(Error::Disconnected("the plugin's loop ended".into())))?;
        Ok(into_channel(opened, shared))
    }

    fn reject(mut incoming: Self::Incoming, reason: &str) -> Result<(), Error> {
        incoming.answered = true;
        incoming.plugin.send(Command::Reject {
            channel: incoming.channel,
            reason: reason.to_owned(),
        });
        Ok(())
    }

    fn path(channel: &Self::Channel) -> Path {
        match &channel.0 {
            Kind::Piped { path, .. } => *path,
            Kind::Fd(_) => Path::SocketPair,
        }
    }

    fn peer(channel: &Self::Channel) -> PublicKey {
        channel.1
    }

    /// A relayed channel is reset through the session; a direct TCP one is
    /// cut without a goodbye (its peer reads an error); a socketpair is shut
    /// both ways (its peer reads the end: a socket cannot say more).
    fn reset(channel: Self::Channel, reason: &str) {
        match &channel.0 {
            Kind::Piped { pipe, shared, .. } => {
                pipe.lock().reset = Some(reason.to_owned());
                shared.wake();
            }
            Kind::Fd(stream) => {
                let _ = stream.get_ref().shutdown(std::net::Shutdown::Both);
            }
        }
    }
}
