//! A channel to another plugin: relayed by the broker or direct, one type
//! either way.

use std::io;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use async_io::Async;
use futures_io::{AsyncRead, AsyncWrite};
use plugboard_core::control::ChannelId;
use plugboard_core::PublicKey;

use super::direct::DirectStream;
use super::relayed::Relayed;

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

/// A bidirectional byte stream to another plugin, futures-io's
/// `AsyncRead + AsyncWrite` whichever [`Path`] it took. Reading gives
/// credit back as the application consumes; writing waits for credit (or
/// for the socket); `close` half-closes (reading goes on); dropping it
/// closes gracefully (what was written is still delivered);
/// [`Channel::reset`] aborts.
pub struct Channel {
    peer: PublicKey,
    id: ChannelId,
    io: Io,
}

enum Io {
    Relayed(Relayed),
    SocketPair(Async<UnixStream>),
    Tcp(Box<DirectStream>),
}

impl Channel {
    pub(crate) fn relayed(relayed: Relayed, peer: PublicKey) -> Self {
        Channel {
            peer,
            id: relayed.id(),
            io: Io::Relayed(relayed),
        }
    }

    pub(crate) fn socketpair(
        fd: std::os::fd::OwnedFd,
        id: ChannelId,
        peer: PublicKey,
    ) -> io::Result<Self> {
        // `Async::new` makes the socket non-blocking.
        let stream = Async::new(UnixStream::from(fd))?;
        Ok(Channel {
            peer,
            id,
            io: Io::SocketPair(stream),
        })
    }

    pub(crate) fn tcp(stream: Box<DirectStream>, id: ChannelId, peer: PublicKey) -> Self {
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

    /// Ends the channel both ways at once.
    pub fn reset(self, reason: &str) {
        match self.io {
            Io::Relayed(mut r) => r.reset(reason),
            // Closing both directions with unread data makes the kernel
            // drop what is queued; the peer reads an end of stream.
            Io::SocketPair(s) => {
                let _ = s.get_ref().shutdown(Shutdown::Both);
            }
            // No goodbye: the peer reads an error, not an end.
            Io::Tcp(s) => s.abort(),
        }
    }
}

impl AsyncRead for Channel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Relayed(r) => Pin::new(r).poll_read(cx, buf),
            Io::SocketPair(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tcp(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Channel {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Relayed(r) => Pin::new(r).poll_write(cx, data),
            Io::SocketPair(s) => Pin::new(s).poll_write(cx, data),
            Io::Tcp(s) => Pin::new(&mut **s).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Relayed(r) => Pin::new(r).poll_write_vectored(cx, bufs),
            Io::SocketPair(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tcp(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Relayed(r) => Pin::new(r).poll_flush(cx),
            Io::SocketPair(s) => Pin::new(s).poll_flush(cx),
            Io::Tcp(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    /// Half-closes: no more writes, the peer reads the end of the stream;
    /// reading goes on.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Relayed(r) => Pin::new(r).poll_close(cx),
            Io::SocketPair(s) => {
                // async-io's own close only flushes.
                ready!(Pin::new(&mut *s).poll_flush(cx))?;
                Poll::Ready(s.get_ref().shutdown(Shutdown::Write))
            }
            Io::Tcp(s) => Pin::new(&mut **s).poll_close(cx),
        }
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("id", &self.id)
            .field("peer", &self.peer)
            .field("path", &self.path())
            .finish()
    }
}
