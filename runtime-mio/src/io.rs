//! The one socket type the server and the plugin use: a connected unix or
//! TCP stream, under mio as a plain descriptor. Every move on it (read,
//! write, half-close) is the shared OS glue's, the same for either kind.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use mio::event::Source;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

/// A connected, non-blocking socket.
#[derive(Debug)]
pub(crate) struct Stream {
    fd: OwnedFd,
    /// A unix socket: descriptors can ride on it.
    pub(crate) unix: bool,
}

impl Stream {
    /// Takes a connected (or connecting) socket, made non-blocking here.
    pub(crate) fn new(socket: impl Into<OwnedFd>, unix: bool) -> io::Result<Stream> {
        let fd = socket.into();
        plugboard_os::stream::prepare(&fd, unix)?;
        Ok(Stream { fd, unix })
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Source for Stream {
    fn register(&mut self, registry: &Registry, token: Token, on: Interest) -> io::Result<()> {
        SourceFd(&self.fd.as_raw_fd()).register(registry, token, on)
    }

    fn reregister(&mut self, registry: &Registry, token: Token, on: Interest) -> io::Result<()> {
        SourceFd(&self.fd.as_raw_fd()).reregister(registry, token, on)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        SourceFd(&self.fd.as_raw_fd()).deregister(registry)
    }
}
