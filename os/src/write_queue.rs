//! Chunks waiting for a socket, written with as few system calls as it
//! takes: plain chunks gather into one vectored `sendmsg`; a chunk that
//! carries a descriptor goes in a `sendmsg` of its own, so the descriptor
//! rides on that chunk's first byte and nothing the kernel coalesces.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};

use bytes::{Buf as _, Bytes};
use rustix::io::Errno;
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

/// Most chunks handed to one vectored write (well under `IOV_MAX`).
const MAX_SLICES: usize = 64;

struct Chunk {
    data: Bytes,
    /// Sent with the chunk's first byte; dropped (our copy closed) once it went.
    fd: Option<OwnedFd>,
}

/// Bytes (and descriptors) on their way to one socket, in order.
#[derive(Default)]
pub struct WriteQueue {
    chunks: VecDeque<Chunk>,
    bytes: usize,
}

impl WriteQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues `data` (an empty chunk is dropped: it would say nothing).
    pub fn push(&mut self, data: Bytes) {
        if !data.is_empty() {
            self.bytes += data.len();
            self.chunks.push_back(Chunk { data, fd: None });
        }
    }

    /// Queues `data` with `fd` riding on its first byte (unix sockets only).
    ///
    /// # Panics
    /// If `data` is empty: a descriptor needs a byte to ride on.
    pub fn push_with_fd(&mut self, data: Bytes, fd: OwnedFd) {
        assert!(!data.is_empty(), "a descriptor needs a byte to ride on");
        self.bytes += data.len();
        self.chunks.push_back(Chunk { data, fd: Some(fd) });
    }

    /// Bytes queued.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Nothing queued.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Drops everything queued (descriptors included: our copies close).
    pub fn clear(&mut self) {
        self.chunks.clear();
        self.bytes = 0;
    }

    /// Writes as much as `socket` takes without blocking. `Ok` once the
    /// queue is empty; `WouldBlock` when the socket is full, with the rest
    /// still queued (call again when it is writable). Never raises SIGPIPE:
    /// a peer that left is `BrokenPipe`.
    pub fn write_to(&mut self, socket: impl AsFd) -> io::Result<()> {
        let socket = socket.as_fd();
        while let Some(front) = self.chunks.front_mut() {
            let sent = match front.fd.take() {
                Some(fd) => match send_with_fd(socket, &front.data, &fd) {
                    Ok(n) => n, // our copy of `fd` closes here: the peer has its own
                    Err(e) => {
                        front.fd = Some(fd);
                        return Err(e);
                    }
                },
                None => {
                    let slices: Vec<IoSlice<'_>> = self
                        .chunks
                        .iter()
                        .take(MAX_SLICES)
                        .take_while(|c| c.fd.is_none())
                        .map(|c| IoSlice::new(&c.data))
                        .collect();
                    send(socket, &slices)?
                }
            };
            if sent == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.advance(sent);
        }
        Ok(())
    }

    /// Drops `n` written bytes from the front.
    fn advance(&mut self, mut n: usize) {
        self.bytes -= n;
        while n > 0 {
            let front = self
                .chunks
                .front_mut()
                .expect("written bytes came from the queue");
            let k = n.min(front.data.len());
            front.data.advance(k);
            n -= k;
            if front.data.is_empty() {
                self.chunks.pop_front();
            }
        }
    }
}

/// One vectored send, retried on `EINTR`: what the socket took (never
/// raising SIGPIPE).
pub fn send(socket: std::os::fd::BorrowedFd<'_>, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    loop {
        let mut no_control = SendAncillaryBuffer::default();
        match rustix::net::sendmsg(socket, slices, &mut no_control, SendFlags::NOSIGNAL) {
            Err(Errno::INTR) => continue,
            result => return Ok(result?),
        }
    }
}

/// One send of `data` with `fd` attached to its first byte, retried on
/// `EINTR`. If any byte went, the descriptor went with it.
fn send_with_fd(
    socket: std::os::fd::BorrowedFd<'_>,
    data: &[u8],
    fd: &OwnedFd,
) -> io::Result<usize> {
    loop {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        let fds = [fd.as_fd()];
        control.push(SendAncillaryMessage::ScmRights(&fds));
        let iov = [IoSlice::new(data)];
        match rustix::net::sendmsg(socket, &iov, &mut control, SendFlags::NOSIGNAL) {
            Err(Errno::INTR) => continue,
            result => return Ok(result?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;
    use std::os::unix::net::UnixStream;

    fn pair() -> (UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (a, b)
    }

    #[test]
    fn chunks_arrive_in_order_and_the_queue_empties() {
        let (a, mut b) = pair();
        let mut queue = WriteQueue::new();
        for chunk in ["one ", "", "two ", "three"] {
            queue.push(Bytes::from(chunk));
        }
        assert_eq!(queue.len(), 13);
        queue.write_to(&a).unwrap();
        assert!(queue.is_empty());
        assert_eq!(queue.len(), 0);
        drop(a);
        let mut got = String::new();
        b.read_to_string(&mut got).unwrap();
        assert_eq!(got, "one two three");
    }

    #[test]
    fn a_full_socket_is_would_block_and_keeps_the_rest() {
        let (a, mut b) = pair();
        let mut queue = WriteQueue::new();
        let data: Vec<u8> = (0..4 << 20).map(|i| (i % 251) as u8).collect();
        for piece in data.chunks(1000) {
            queue.push(Bytes::copy_from_slice(piece));
        }
        let err = queue.write_to(&a).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert!(!queue.is_empty());
        let written = data.len() - queue.len();
        let mut got = vec![0u8; written];
        b.read_exact(&mut got).unwrap();
        assert_eq!(got, data[..written]);
        // The rest follows once the reader made room.
        let reader = std::thread::spawn(move || {
            let mut rest = Vec::new();
            b.read_to_end(&mut rest).unwrap();
            rest
        });
        while let Err(e) = queue.write_to(&a) {
            assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
            std::thread::yield_now();
        }
        drop(a);
        assert_eq!(reader.join().unwrap(), data[written..]);
    }

    #[test]
    fn a_descriptor_rides_on_its_own_chunk_only() {
        let (a, b) = pair();
        let (passed, mut kept) = UnixStream::pair().unwrap();
        let mut queue = WriteQueue::new();
        queue.push(Bytes::from_static(b"before"));
        queue.push_with_fd(Bytes::from_static(b"carrier"), passed.into());
        queue.push(Bytes::from_static(b"after"));
        queue.write_to(&a).unwrap();

        let mut reads = Vec::new();
        let mut fds = Vec::new();
        b.set_nonblocking(true).unwrap();
        loop {
            let mut buf = [0u8; 64];
            let before = fds.len();
            match crate::fdpass::recv_with_fds(&b, &mut buf, &mut fds) {
                Ok(n) => reads.push((buf[..n].to_vec(), fds.len() - before)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        // The read that brings the descriptor ends with its chunk: the
        // kernel may glue earlier bytes to it, never later ones.
        let carrier = reads
            .iter()
            .find(|(_, n)| *n == 1)
            .expect("the descriptor came");
        assert!(carrier.0.ends_with(b"carrier"), "{:?}", carrier.0);
        let all: Vec<u8> = reads.iter().flat_map(|(b, _)| b.clone()).collect();
        assert_eq!(all, b"beforecarrierafter");
        // It is the end we passed: what goes in one end comes out the other.
        let mut received = UnixStream::from(fds.pop().unwrap());
        std::io::Write::write_all(&mut received, b"hi").unwrap();
        drop(received);
        let mut hi = String::new();
        kept.read_to_string(&mut hi).unwrap();
        assert_eq!(hi, "hi");
    }

    #[test]
    fn a_peer_that_left_is_broken_pipe_not_sigpipe() {
        let (a, b) = pair();
        drop(b);
        let mut queue = WriteQueue::new();
        queue.push(Bytes::from_static(b"anyone?"));
        let err = queue.write_to(&a).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
