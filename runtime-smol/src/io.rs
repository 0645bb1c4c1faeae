//! The one socket type both sides use (a unix or TCP stream under
//! async-io's reactor), and the moves on it: read into a buffer (with the
//! descriptors that came along, on unix) and write a [`WriteQueue`], each
//! the shared OS glue's non-blocking call retried when the reactor says.

use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use async_io::Async;
use bytes::BytesMut;
use plugboard_os::fdpass::read_into;
use plugboard_os::WriteQueue;

use crate::addr::Addr;

/// A connected, non-blocking socket.
#[derive(Debug)]
pub(crate) enum Stream {
    /// Can carry descriptors.
    Unix(Async<UnixStream>),
    Tcp(Async<TcpStream>),
}

impl Stream {
    /// Connects to a broker.
    pub(crate) async fn connect(addr: &Addr) -> io::Result<Stream> {
        Ok(match addr {
            Addr::Unix(path) => Stream::Unix(Async::<UnixStream>::connect(path).await?),
            Addr::Tcp(host_port) => Stream::Tcp(connect_tcp(host_port).await?),
        })
    }

    /// Waits for bytes and reads up to `max` onto the end of `buf`. On a
    /// unix socket the descriptors that came along are kept in `fds`.
    pub(crate) async fn read(
        &self,
        buf: &mut BytesMut,
        max: usize,
        fds: &mut Vec<OwnedFd>,
    ) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read_with(|s| read_into(s, buf, max, Some(fds))).await,
            Stream::Tcp(s) => s.read_with(|s| read_into(s, buf, max, None)).await,
        }
    }

    /// Writes `queue` until it is empty, waiting for room as it takes.
    pub(crate) async fn flush(&self, queue: &mut WriteQueue) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.write_with(|s| queue.write_to(s)).await,
            Stream::Tcp(s) => s.write_with(|s| queue.write_to(s)).await,
        }
    }

    /// No more writes from this side (the peer reads the end of the stream).
    pub(crate) fn shutdown_write(&self) {
        let _ = match self {
            Stream::Unix(s) => s.get_ref().shutdown(Shutdown::Write),
            Stream::Tcp(s) => s.get_ref().shutdown(Shutdown::Write),
        };
    }
}

/// Connects to `host:port`, trying each address the name resolves to.
pub(crate) async fn connect_tcp(host_port: &str) -> io::Result<Async<TcpStream>> {
    let mut last = None;
    for addr in smol::net::resolve(host_port).await? {
        match Async::<TcpStream>::connect(addr).await {
            Ok(stream) => {
                let _ = stream.get_ref().set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "the name resolves to nothing")
    }))
}
