//! A channel to another plugin: relayed by the broker or direct, one type
//! either way.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use plugboard_core::control::ChannelId;
use plugboard_core::PublicKey;

use super::direct::DirectStream;
use super::relayed::Relayed;
use crate::rt::Runtime;
use crate::stream::Stream;

/// Which way a channel's bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Through the broker, multiplexed on each plugin's connection.
    Relayed,
    /// A socketpair the broker made and handed to both plugins.
    SocketPair,
    /// A TCP connection from the opener to the target, shs1 + box-stream.
    Tcp,
}

/// A bidirectional byte stream to another plugin, futures-io's `AsyncRead
/// + AsyncWrite` whichever [`Path`] it took (the runtime crates add their
/// own I/O traits). Reading gives credit back as the application consumes;
/// writing waits for credit (or for the socket); closing half-closes;
/// dropping it closes gracefully (what was written is still delivered);
/// [`Channel::reset`] aborts.
pub struct Channel<R: Runtime> {
    peer: PublicKey,
    id: ChannelId,
    io: Io<R>,
}

enum Io<R: Runtime> {
    Relayed(Relayed<R>),
    SocketPair(Stream<R>),
    Tcp(Box<DirectStream<R>>),
}

impl<R: Runtime> Channel<R> {
    pub(crate) fn relayed(relayed: Relayed<R>, peer: PublicKey) -> Self {
        Channel {
            peer,
            id: relayed.id(),
            io: Io::Relayed(relayed),
        }
    }

    pub(crate) fn socketpair(
        rt: &R,
        fd: std::os::fd::OwnedFd,
        id: ChannelId,
        peer: PublicKey,
    ) -> io::Result<Self> {
        Ok(Channel {
            peer,
            id,
            io: Io::SocketPair(Stream::new(rt, fd, true)?),
        })
    }

    pub(crate) fn tcp(stream: Box<DirectStream<R>>, id: ChannelId, peer: PublicKey) -> Self {
        Channel {
            peer,
            id,
            io: Io::Tcp(stream),
        }
    }

    /// The other end's key, as the broker authenticated it (and, on a
    /// direct TCP path, the handshake with the peer itself).
    pub fn peer(&self) -> PublicKey {
        self.peer
    }

    /// This connection's id for the channel (a direct channel keeps the id
    /// it was opened or offered with).
    pub fn id(&self) -> ChannelId {
        self.id
    }

    /// Which way the bytes go.
    pub fn path(&self) -> Path {
        match self.io {
            Io::Relayed(_) => Path::Relayed,
            Io::SocketPair(_) => Path::SocketPair,
            Io::Tcp(_) => Path::Tcp,
        }
    }

    /// Whether the channel goes through the broker.
    pub fn is_relayed(&self) -> bool {
        self.path() == Path::Relayed
    }

    /// Speaks muxrpc on the channel (protocol `muxrpc`): its driver runs on
    /// the runtime's executor; the handles call the peer and take its calls.
    pub fn muxrpc(
        self,
        config: crate::muxrpc::Config,
    ) -> (crate::muxrpc::Rpc, crate::muxrpc::Calls) {
        use crate::rt::Task as _;
        let (rpc, calls, driver) = crate::muxrpc::connect(self, config);
        R::default()
            .spawn(async move {
                if let Err(e) = driver.await {
                    tracing::debug!("muxrpc session ended: {e}");
                }
            })
            .detach();
        (rpc, calls)
    }

    /// Ends the channel both ways at once.
    pub fn reset(self, reason: &str) {
        match self.io {
            Io::Relayed(mut r) => r.reset(reason),
            // Closing both directions with unread data makes the kernel
            // drop what is queued; the peer reads an end of stream.
            Io::SocketPair(s) => s.shutdown_both(),
            // No goodbye: the peer reads an error, not an end.
            Io::Tcp(s) => s.abort(),
        }
    }

    /// Reads into `buf`; 0 is the end of the stream.
    pub fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Relayed(r) => r.poll_read(cx, buf),
            Io::SocketPair(s) => s.poll_read_slice(cx, buf),
            Io::Tcp(s) => s.poll_read(cx, buf),
        }
    }

    /// Writes from `data`; how much was taken.
    pub fn poll_write(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Relayed(r) => r.poll_write(cx, data),
            Io::SocketPair(s) => s.poll_write_slice(cx, data),
            Io::Tcp(s) => s.poll_write(cx, data),
        }
    }

    /// Waits until what was written is on its way.
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Relayed(r) => r.poll_flush(cx),
            Io::SocketPair(_) => Poll::Ready(Ok(())),
            Io::Tcp(s) => s.poll_flush(cx),
        }
    }

    /// Half-closes: the peer reads the end of the stream once it read what
    /// was written.
    pub fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Relayed(r) => r.poll_close(cx),
            Io::SocketPair(s) => {
                s.shutdown_write();
                Poll::Ready(Ok(()))
            }
            Io::Tcp(s) => s.poll_close(cx),
        }
    }
}

impl<R: Runtime> futures_io::AsyncRead for Channel<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Channel::poll_read(self.get_mut(), cx, buf)
    }
}

impl<R: Runtime> futures_io::AsyncWrite for Channel<R> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Channel::poll_write(self.get_mut(), cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Channel::poll_flush(self.get_mut(), cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Channel::poll_close(self.get_mut(), cx)
    }
}

impl<R: Runtime> std::fmt::Debug for Channel<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("id", &self.id)
            .field("peer", &self.peer)
            .field("path", &self.path())
            .finish()
    }
}
