//! The one socket type both sides use (a unix or TCP stream), and the two
//! non-blocking moves on it, the shared OS glue's: read into a buffer,
//! write a [`WriteQueue`].

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use bytes::BytesMut;
use mio::event::Source;
use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};
use plugboard_os::fdpass::read_into;
use plugboard_os::WriteQueue;

/// A connected, non-blocking socket.
#[derive(Debug)]
pub(crate) enum Stream {
    /// Can carry descriptors.
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    /// Reads up to `max` bytes onto the end of `buf`. With `fds`, a unix
    /// socket's descriptors that came along are kept there; without, the
    /// kernel closes them. 0 is the end of the stream.
    pub(crate) fn read(
        &self,
        buf: &mut BytesMut,
        max: usize,
        fds: Option<&mut Vec<OwnedFd>>,
    ) -> io::Result<usize> {
        match self {
            Stream::Unix(_) => read_into(self, buf, max, fds),
            Stream::Tcp(_) => read_into(self, buf, max, None),
        }
    }

    /// Writes as much of `queue` as the socket takes: `Ok` once it is
    /// empty, `WouldBlock` when the socket is full, with the rest queued.
    pub(crate) fn flush(&self, queue: &mut WriteQueue) -> io::Result<()> {
        queue.write_to(self)
    }

    /// Whether descriptors can ride on this connection.
    pub(crate) fn carries_fds(&self) -> bool {
        matches!(self, Stream::Unix(_))
    }

    /// Whether a non-blocking connect finished: `Ok(false)` while under
    /// way, the error if it failed.
    pub(crate) fn connected(&self) -> io::Result<bool> {
        let (error, peer) = match self {
            Stream::Unix(s) => (s.take_error()?, s.peer_addr().map(drop)),
            Stream::Tcp(s) => (s.take_error()?, s.peer_addr().map(drop)),
        };
        if let Some(e) = error {
            return Err(e);
        }
        match peer {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// No more writes from this side (the peer reads the end of the stream).
    pub(crate) fn shutdown_write(&self) {
        let _ = match self {
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Write),
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
        };
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Unix(s) => s.as_fd(),
            Stream::Tcp(s) => s.as_fd(),
        }
    }
}

impl Source for Stream {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.register(registry, token, interests),
            Stream::Tcp(s) => s.register(registry, token, interests),
        }
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.reregister(registry, token, interests),
            Stream::Tcp(s) => s.reregister(registry, token, interests),
        }
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.deregister(registry),
            Stream::Tcp(s) => s.deregister(registry),
        }
    }
}
