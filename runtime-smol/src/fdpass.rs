//! Passing a socketpair end along with bytes (SCM_RIGHTS), for direct
//! channels between plugins on unix sockets. Non-blocking: the callers run
//! these inside `Async::read_with` / `Async::write_with`, which retry on
//! `WouldBlock` once the socket is ready.

use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use bytes::BytesMut;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// Most descriptors taken from one read; the kernel closes any beyond.
const MAX_FDS_PER_READ: usize = 4;

/// Writes `data` with `fd` attached to its first byte. Returns how much of
/// `data` went out; if anything did, the descriptor went with it.
pub(crate) fn send_with_fd(
    socket: impl AsFd,
    data: &[u8],
    fd: BorrowedFd<'_>,
) -> io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [fd];
    control.push(SendAncillaryMessage::ScmRights(&fds));
    let iov = [IoSlice::new(data)];
    Ok(rustix::net::sendmsg(
        socket,
        &iov,
        &mut control,
        SendFlags::NOSIGNAL,
    )?)
}

/// Reads up to `max` bytes onto the end of `buf`, collecting descriptors
/// that came along into `fds` (close-on-exec). Returns the bytes read; 0 is
/// the end of the stream.
pub(crate) fn recv_with_fds(
    socket: impl AsFd,
    buf: &mut BytesMut,
    max: usize,
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_READ))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let start = buf.len();
    let received = {
        let mut iov = [IoSliceMut::new(crate::io::spare(buf, max))];
        rustix::net::recvmsg(socket, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)
    };
    let n = match received {
        Ok(msg) => msg.bytes,
        Err(e) => {
            buf.truncate(start);
            return Err(e.into());
        }
    };
    buf.truncate(start + n);
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    Ok(n)
}
