//! Reading from a socket, with the descriptors that came along (SCM_RIGHTS:
//! socketpair ends for direct channels between plugins on one host).
//! Keeping them is [`FdTokens`](crate::FdTokens)'s; sending them is [`WriteQueue::push_with_fd`](crate::WriteQueue::push_with_fd).

use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};

use bytes::BytesMut;
use rustix::io::Errno;
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

/// Most descriptors taken from one read; the kernel closes any beyond.
const MAX_FDS_PER_READ: usize = 4;

/// One non-blocking read into `buf`, collecting the descriptors that came
/// along into `fds` (close-on-exec). Returns the bytes read; 0 is the end
/// of the stream; `WouldBlock` when there is nothing.
pub fn recv_with_fds(
    socket: impl AsFd,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_READ))];
    loop {
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let received = {
            let mut iov = [IoSliceMut::new(buf)];
            rustix::net::recvmsg(&socket, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)
        };
        let n = match received {
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(msg) => msg.bytes,
        };
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        return Ok(n);
    }
}

/// One non-blocking read of up to `max` bytes onto the end of `buf`; with
/// `fds`, descriptors that came along are kept there (without, the kernel
/// closes them). Works on any stream socket; 0 is the end of the stream.
pub fn read_into(
    socket: impl AsFd,
    buf: &mut BytesMut,
    max: usize,
    fds: Option<&mut Vec<OwnedFd>>,
) -> io::Result<usize> {
    let start = buf.len();
    // Zeroed first: that needs no `unsafe`. It is for a reader that hands
    // what it read on as an owned buffer (the broker's, which the mux keeps
    // without a copy); one that lends it keeps a buffer of its own and
    // calls `recv_into`, which zeroes nothing.
    buf.resize(start + max, 0);
    let result = recv_into(socket, &mut buf[start..], fds);
    buf.truncate(start + *result.as_ref().unwrap_or(&0));
    result
}

/// One non-blocking read into `buf`, as [`read_into`] does; how many
/// bytes came.
pub fn recv_into(
    socket: impl AsFd,
    buf: &mut [u8],
    fds: Option<&mut Vec<OwnedFd>>,
) -> io::Result<usize> {
    match fds {
        Some(fds) => recv_with_fds(socket, buf, fds),
        None => recv(socket, buf),
    }
}

/// One non-blocking read, retried on `EINTR`.
fn recv(socket: impl AsFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match rustix::net::recv(&socket, &mut *buf, RecvFlags::empty()) {
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
            Ok((n, _)) => return Ok(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::os::unix::net::UnixStream;

    #[test]
    fn read_into_appends_and_says_would_block_when_empty() {
        let (mut a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let mut buf = BytesMut::from(&b"ab"[..]);
        let err = read_into(&b, &mut buf, 16, None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(&buf[..], b"ab", "nothing read, nothing added");
        a.write_all(b"cdef").unwrap();
        assert_eq!(read_into(&b, &mut buf, 3, None).unwrap(), 3);
        assert_eq!(&buf[..], b"abcde");
        drop(a);
        let mut fds = Vec::new();
        assert_eq!(read_into(&b, &mut buf, 16, Some(&mut fds)).unwrap(), 1);
        assert_eq!(read_into(&b, &mut buf, 16, Some(&mut fds)).unwrap(), 0);
        assert_eq!(&buf[..], b"abcdef");
        assert!(fds.is_empty());
    }
}
