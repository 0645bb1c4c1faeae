//! The one socket type both sides use (a unix or TCP stream), and the two
//! non-blocking moves on it: read into a buffer, write a queue of chunks.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{BorrowedFd, OwnedFd};

use bytes::{Buf as _, Bytes, BytesMut};
use mio::event::Source;
use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};

/// Most chunks handed to one vectored write.
const MAX_SLICES: usize = 64;

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
        let start = buf.len();
        let result = match (self, fds) {
            (Stream::Unix(s), Some(fds)) => return crate::fdpass::recv_with_fds(s, buf, max, fds),
            (Stream::Unix(s), None) => Read::read(&mut &*s, spare(buf, max)),
            (Stream::Tcp(s), _) => Read::read(&mut &*s, spare(buf, max)),
        };
        buf.truncate(start + *result.as_ref().unwrap_or(&0));
        result
    }

    /// Writes as much of `queue` as the socket takes, in vectored writes (a
    /// frame's header and payload go out together, without a copy).
    /// `Ok` once the queue is empty; `WouldBlock` when the socket is full,
    /// with the rest still queued.
    pub(crate) fn write_queue(&self, queue: &mut VecDeque<Bytes>) -> io::Result<()> {
        while !queue.is_empty() {
            let slices: Vec<IoSlice<'_>> = queue
                .iter()
                .take(MAX_SLICES)
                .map(|b| IoSlice::new(b))
                .collect();
            let written = match self {
                Stream::Unix(s) => Write::write_vectored(&mut &*s, &slices),
                Stream::Tcp(s) => Write::write_vectored(&mut &*s, &slices),
            };
            let mut written = match written {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
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
    pub(crate) fn send_with_fd(&self, data: &[u8], fd: BorrowedFd<'_>) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => crate::fdpass::send_with_fd(s, data, fd),
            Stream::Tcp(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "descriptors cannot cross a TCP connection",
            )),
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

/// `max` bytes of writable space at the end of `buf`; the caller truncates
/// to what it filled. The space is zeroed first: that costs far less than
/// the system call that fills it, and needs no `unsafe`.
pub(crate) fn spare(buf: &mut BytesMut, max: usize) -> &mut [u8] {
    let start = buf.len();
    buf.resize(start + max, 0);
    &mut buf[start..]
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
