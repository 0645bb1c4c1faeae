//! The one socket type both sides use (a unix or TCP stream under
//! async-io's reactor), and the moves on it: read into a buffer (with the
//! descriptors that came along, on unix), write a queue of chunks in
//! vectored writes, write a frame with a descriptor.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use async_io::Async;
use bytes::{Buf as _, Bytes, BytesMut};

use crate::addr::Addr;

/// Most chunks handed to one vectored write.
const MAX_SLICES: usize = 64;

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

    /// Waits until a read would not block (or might not: reads still say
    /// `WouldBlock` at times).
    pub(crate) async fn readable(&self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.readable().await,
            Stream::Tcp(s) => s.readable().await,
        }
    }

    /// Reads up to `max` bytes onto the end of `buf` without waiting:
    /// `WouldBlock` if there is nothing. 0 is the end of the stream.
    pub(crate) fn try_read(&self, buf: &mut BytesMut, max: usize) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => read_plain(s.get_ref(), buf, max),
            Stream::Tcp(s) => read_plain(s.get_ref(), buf, max),
        }
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
            Stream::Unix(s) => {
                s.read_with(|s| crate::fdpass::recv_with_fds(s, buf, max, fds))
                    .await
            }
            Stream::Tcp(s) => s.read_with(|s| read_plain(s, buf, max)).await,
        }
    }

    /// Writes every chunk in `queue`, gathering them into vectored writes (a
    /// frame's header and its payload go out together, without a copy).
    pub(crate) async fn write_queue(&self, queue: &mut VecDeque<Bytes>) -> io::Result<()> {
        // An empty chunk would make an empty write, which says nothing.
        queue.retain(|b| !b.is_empty());
        while !queue.is_empty() {
            let mut written = {
                let slices: Vec<IoSlice<'_>> = queue
                    .iter()
                    .take(MAX_SLICES)
                    .map(|b| IoSlice::new(b))
                    .collect();
                match self {
                    Stream::Unix(s) => s.write_with(|mut s| s.write_vectored(&slices)).await?,
                    Stream::Tcp(s) => s.write_with(|mut s| s.write_vectored(&slices)).await?,
                }
            };
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            while written > 0 {
                let front = queue
                    .front_mut()
                    .expect("written bytes came from the queue");
                let n = written.min(front.len());
                front.advance(n);
                written -= n;
                if front.is_empty() {
                    queue.pop_front();
                }
            }
        }
        Ok(())
    }

    /// Writes `data` with `fd` riding on its first byte (unix only); returns
    /// how much of `data` went out.
    pub(crate) async fn send_with_fd(&self, data: &[u8], fd: BorrowedFd<'_>) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => {
                s.write_with(|s| crate::fdpass::send_with_fd(s, data, fd))
                    .await
            }
            Stream::Tcp(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "descriptors cannot cross a TCP connection",
            )),
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

/// How many connections a TCP listener lets wait for `accept` (tokio's
/// and mio's listeners ask for as many; std's ask for 128).
const TCP_BACKLOG: i32 = 1024;

/// Binds a TCP listener (trying each address the name resolves to) under
/// the reactor, with [`TCP_BACKLOG`].
pub(crate) fn bind_tcp(addr: impl std::net::ToSocketAddrs) -> io::Result<Async<TcpListener>> {
    let listener = TcpListener::bind(addr)?;
    // Listening again only changes the backlog.
    rustix::net::listen(&listener, TCP_BACKLOG)?;
    Async::new(listener)
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

/// One non-blocking read onto the end of `buf`.
fn read_plain(mut socket: impl io::Read, buf: &mut BytesMut, max: usize) -> io::Result<usize> {
    let start = buf.len();
    let result = socket.read(spare(buf, max));
    buf.truncate(start + *result.as_ref().unwrap_or(&0));
    result
}

/// `max` bytes of writable space at the end of `buf`; the caller truncates
/// to what it filled. The space is zeroed first: that costs far less than
/// the system call that fills it, and needs no `unsafe`.
pub(crate) fn spare(buf: &mut BytesMut, max: usize) -> &mut [u8] {
    let start = buf.len();
    buf.resize(start + max, 0);
    &mut buf[start..]
}
