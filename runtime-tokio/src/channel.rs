//! A channel as tokio's `AsyncRead + AsyncWrite`.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use plugboard_runtime::Path;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::rt::Tokio;

/// Most bytes one read takes.
const MAX_READ: usize = 256 * 1024;

/// A bidirectional byte stream to another plugin, tokio's `AsyncRead +
/// AsyncWrite` whichever [`Path`] it took. Reading gives credit back as the
/// application consumes; writing waits for credit (or for the socket);
/// `shutdown` half-closes; dropping it closes gracefully (what was written
/// is still delivered); [`Channel::reset`] aborts.
#[derive(Debug)]
pub struct Channel(plugboard_runtime::Channel<Tokio>);

impl From<plugboard_runtime::Channel<Tokio>> for Channel {
    fn from(channel: plugboard_runtime::Channel<Tokio>) -> Self {
        Channel(channel)
    }
}

impl Channel {
    /// The other end's key, as the broker authenticated it (and, on a
    /// direct TCP path, the handshake with the peer itself).
    pub fn peer(&self) -> plugboard_core::PublicKey {
        self.0.peer()
    }

    /// This connection's id for the channel.
    pub fn id(&self) -> plugboard_core::control::ChannelId {
        self.0.id()
    }

    /// Which way the bytes go.
    pub fn path(&self) -> Path {
        self.0.path()
    }

    /// Whether the channel goes through the broker.
    pub fn is_relayed(&self) -> bool {
        self.0.is_relayed()
    }

    /// Ends the channel both ways at once.
    pub fn reset(self, reason: &str) {
        self.0.reset(reason)
    }

    /// Speaks muxrpc on the channel: see [`plugboard_runtime::Channel::muxrpc`].
    pub fn muxrpc(
        self,
        config: plugboard_runtime::muxrpc::Config,
    ) -> (
        plugboard_runtime::muxrpc::Rpc,
        plugboard_runtime::muxrpc::Calls,
    ) {
        self.0.muxrpc(config)
    }
}

impl AsyncRead for Channel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Memory tokio has not seen initialized is zeroed first, and no
        // more of it than one read can fill.
        let room = buf.remaining().min(MAX_READ);
        let n = ready!(self
            .get_mut()
            .0
            .poll_read(cx, buf.initialize_unfilled_to(room)))?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Channel {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().0.poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().0.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().0.poll_close(cx)
    }
}
