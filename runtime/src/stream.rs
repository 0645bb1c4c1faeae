//! A connected stream socket (unix or TCP) under the runtime's reactor, and
//! the moves on it: connect, read into a buffer (with the descriptors that
//! came along, on unix), write a [`WriteQueue`], half-close. Each is the OS
//! glue's non-blocking call, retried when the reactor says.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::BytesMut;
use plugboard_core::addr::Addr;
use plugboard_os::fdpass::read_into;
use plugboard_os::WriteQueue;
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use crate::rt::{io, Interest, Io, Runtime};

/// A connected, non-blocking socket.
pub struct Stream<R: Runtime> {
    io: R::Io,
    /// A unix socket: descriptors can ride on it.
    unix: bool,
}

impl<R: Runtime> Stream<R> {
    /// Takes a connected socket (made non-blocking here).
    pub fn new(rt: &R, socket: impl Into<OwnedFd>, unix: bool) -> io::Result<Self> {
        let fd = socket.into();
        plugboard_os::stream::prepare(&fd, unix)?;
        Ok(Stream {
            io: rt.register(fd)?,
            unix,
        })
    }

    /// Connects to `addr`.
    pub async fn connect(rt: &R, addr: &Addr) -> io::Result<Self> {
        match addr {
            Addr::Unix(path) => {
                let fd = socket(AddressFamily::UNIX)?;
                let unix = SocketAddrUnix::new(path.as_path())?;
                let started = rustix::net::connect(&fd, &unix);
                Self::finish_connect(rt, fd, started, true).await
            }
            Addr::Tcp(host_port) => {
                let mut last = None;
                for addr in resolve(host_port).await? {
                    match Self::connect_tcp(rt, addr).await {
                        Ok(stream) => return Ok(stream),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "the name resolves to nothing")
                }))
            }
        }
    }

    /// Connects to one TCP address.
    pub async fn connect_tcp(rt: &R, addr: SocketAddr) -> io::Result<Self> {
        let family = match addr {
            SocketAddr::V4(_) => AddressFamily::INET,
            SocketAddr::V6(_) => AddressFamily::INET6,
        };
        let fd = socket(family)?;
        let started = rustix::net::connect(&fd, &addr);
        Self::finish_connect(rt, fd, started, false).await
    }

    async fn finish_connect(
        rt: &R,
        fd: OwnedFd,
        started: rustix::io::Result<()>,
        unix: bool,
    ) -> io::Result<Self> {
        match started {
            Ok(()) | Err(Errno::INPROGRESS) => {}
            Err(e) => return Err(e.into()),
        }
        let stream = Stream::new(rt, fd, unix)?;
        // Done once the socket has a peer (or an error): until then the
        // check says `WouldBlock`, and the reactor says when to look again.
        io(&stream.io, Interest::Write, |fd| {
            plugboard_os::stream::connected(fd)
        })
        .await?;
        Ok(stream)
    }

    /// Waits until a read may not block.
    pub async fn readable(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.io.poll_ready(cx, Interest::Read)).await
    }

    /// Reads up to `max` bytes onto the end of `buf` once there are some;
    /// on a unix socket the descriptors that came along go to `fds`. 0 is
    /// the end of the stream.
    pub fn poll_read(
        &self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        max: usize,
        mut fds: Option<&mut Vec<OwnedFd>>,
    ) -> Poll<io::Result<usize>> {
        let fds = &mut fds;
        self.io.poll_io(cx, Interest::Read, |fd| {
            read_into(fd, buf, max, fds.as_deref_mut())
        })
    }

    /// As [`Stream::poll_read`], awaited.
    pub async fn read(
        &self,
        buf: &mut BytesMut,
        max: usize,
        mut fds: Option<&mut Vec<OwnedFd>>,
    ) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read(cx, buf, max, fds.as_deref_mut())).await
    }

    /// Reads into `buf` once there are bytes, as [`Stream::read`] does but
    /// into memory the caller keeps (nothing is zeroed per read).
    pub async fn recv_into(
        &self,
        buf: &mut [u8],
        mut fds: Option<&mut Vec<OwnedFd>>,
    ) -> io::Result<usize> {
        std::future::poll_fn(|cx| {
            self.io.poll_io(cx, Interest::Read, |fd| {
                plugboard_os::fdpass::recv_into(fd, &mut *buf, fds.as_deref_mut())
            })
        })
        .await
    }

    /// Reads into `buf` once there are bytes; 0 is the end of the stream.
    pub fn poll_read_slice(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        self.io.poll_io(cx, Interest::Read, |fd| {
            Ok(rustix::net::recv(fd, &mut *buf, rustix::net::RecvFlags::empty())?.0)
        })
    }

    /// Writes from `data` once there is room (never raising SIGPIPE).
    pub fn poll_write_slice(&self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.io.poll_io(cx, Interest::Write, |fd| {
            Ok(rustix::net::send(
                fd,
                data,
                rustix::net::SendFlags::NOSIGNAL,
            )?)
        })
    }

    /// Writes from `data` what the socket takes now (never raising SIGPIPE).
    pub fn try_write_slice(&self, data: &[u8]) -> io::Result<usize> {
        Ok(rustix::net::send(
            self.io.get_ref(),
            data,
            rustix::net::SendFlags::NOSIGNAL,
        )?)
    }

    /// Writes a frame's parts (its header, its payload), in order, as far
    /// as the socket takes them now, in one vectored send.
    pub fn try_write_frame(&self, parts: &[&[u8]]) -> io::Result<usize> {
        use std::os::fd::AsFd as _;
        debug_assert!(parts.len() <= 2, "a header and its payload");
        let part = |i: usize| std::io::IoSlice::new(parts.get(i).copied().unwrap_or_default());
        plugboard_os::send_vectored(self.io.get_ref().as_fd(), &[part(0), part(1)])
    }

    /// Ends both directions at once (unread data is dropped).
    pub fn shutdown_both(&self) {
        let _ = rustix::net::shutdown(self.io.get_ref(), rustix::net::Shutdown::Both);
    }

    /// Writes what `queue` holds without waiting: `Ok` once it is empty,
    /// `WouldBlock` when the socket is full.
    pub fn try_flush(&self, queue: &mut WriteQueue) -> io::Result<()> {
        queue.write_to(self.io.get_ref())
    }

    /// Writes `queue` until it is empty, waiting for room as it takes.
    pub fn poll_flush(&self, cx: &mut Context<'_>, queue: &mut WriteQueue) -> Poll<io::Result<()>> {
        self.io
            .poll_io(cx, Interest::Write, |fd| queue.write_to(fd))
    }

    /// Runs `write` (a non-blocking write of what someone else queued)
    /// until it is done, waiting for room between tries.
    pub async fn flush_with(
        &self,
        mut write: impl FnMut(&OwnedFd) -> io::Result<()>,
    ) -> io::Result<()> {
        std::future::poll_fn(|cx| self.io.poll_io(cx, Interest::Write, &mut write)).await
    }

    /// As [`Stream::poll_flush`], awaited.
    pub async fn flush(&self, queue: &mut WriteQueue) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_flush(cx, queue)).await
    }

    /// Whether descriptors can ride on this connection.
    pub fn carries_fds(&self) -> bool {
        self.unix
    }

    /// No more writes from this side (the peer reads the end of the stream).
    pub fn shutdown_write(&self) {
        plugboard_os::stream::shutdown_write(self.io.get_ref());
    }

    /// The peer reads a reset when the socket closes, not the end of the
    /// stream (see `plugboard_os::stream::reset_on_close`).
    pub fn reset_on_close(&self) {
        plugboard_os::stream::reset_on_close(self.io.get_ref());
    }

    /// The socket.
    pub fn fd(&self) -> &OwnedFd {
        self.io.get_ref()
    }
}

/// A new non-blocking stream socket.
fn socket(family: AddressFamily) -> io::Result<OwnedFd> {
    let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
    Ok(rustix::net::socket_with(
        family,
        SocketType::STREAM,
        flags,
        None,
    )?)
}

/// How much to ask the socket for: what a read may fill is zeroed first,
/// so asking for far more than comes costs as much as the bytes. It grows
/// while reads fill it and shrinks when they come back small.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadSize {
    now: usize,
    max: usize,
}

impl ReadSize {
    /// The least a read asks for.
    const MIN: usize = 16 * 1024;

    pub(crate) fn new(max: usize) -> Self {
        ReadSize {
            now: Self::MIN.min(max),
            max,
        }
    }

    pub(crate) fn next(&self) -> usize {
        self.now
    }

    /// Learns from what a read of [`ReadSize::next`] bytes gave.
    pub(crate) fn record(&mut self, read: &io::Result<usize>) {
        match read {
            Ok(n) if *n >= self.now => self.now = (self.now * 2).min(self.max),
            Ok(n) if *n < self.now / 4 => self.now = (self.now / 2).max(Self::MIN.min(self.max)),
            _ => {}
        }
    }
}

/// The next connection on a TCP listener, and where it comes from.
pub async fn accept_tcp<R: Runtime>(
    rt: &R,
    listener: &R::Io,
) -> io::Result<(Stream<R>, SocketAddr)> {
    let (stream, peer) = io(listener, Interest::Read, |fd| {
        plugboard_os::stream::accept(fd)
    })
    .await?;
    let peer = peer
        .and_then(|peer| SocketAddr::try_from(peer).ok())
        .ok_or_else(|| io::Error::other("a TCP peer without an address"))?;
    Ok((Stream::new(rt, stream, false)?, peer))
}

/// Name lookups under way at once, at most.
const MAX_LOOKUPS: usize = 8;

/// The addresses `host:port` names: at once for a literal address, else
/// from the system's resolver on a thread of its own (it blocks).
pub async fn resolve(host_port: &str) -> io::Result<Vec<SocketAddr>> {
    if let Ok(addr) = host_port.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    // One thread per lookup, and only so many at once: a resolver that
    // hangs must not pile up threads while reconnections retry.
    static LOOKUPS: AtomicUsize = AtomicUsize::new(0);
    if LOOKUPS.fetch_add(1, Ordering::AcqRel) >= MAX_LOOKUPS {
        LOOKUPS.fetch_sub(1, Ordering::AcqRel);
        return Err(io::Error::other(format!(
            "{host_port}: {MAX_LOOKUPS} name lookups are already under way"
        )));
    }
    let (tx, rx) = async_channel::bounded(1);
    let name = host_port.to_owned();
    std::thread::Builder::new()
        .name("plugboard-resolve".into())
        .spawn(move || {
            use std::net::ToSocketAddrs as _;
            let _ = tx.send_blocking(name.to_socket_addrs().map(Vec::from_iter));
            LOOKUPS.fetch_sub(1, Ordering::AcqRel);
        })
        .inspect_err(|_| {
            LOOKUPS.fetch_sub(1, Ordering::AcqRel);
        })?;
    rx.recv()
        .await
        .unwrap_or_else(|_| Err(io::Error::other("the resolver thread stopped")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_size_follows_what_comes() {
        let mut size = ReadSize::new(256 * 1024);
        assert_eq!(size.next(), 16 * 1024);
        for _ in 0..10 {
            let full = size.next();
            size.record(&Ok(full));
        }
        assert_eq!(size.next(), 256 * 1024);
        size.record(&Ok(10));
        assert_eq!(size.next(), 128 * 1024);
        for _ in 0..10 {
            size.record(&Ok(10));
        }
        assert_eq!(size.next(), 16 * 1024);
        size.record(&Ok(8 * 1024)); // half full: stays
        size.record(&Err(io::ErrorKind::WouldBlock.into()));
        assert_eq!(size.next(), 16 * 1024);
    }
}
