//! Passing a socketpair end along with bytes (SCM_RIGHTS), for direct
//! channels between plugins on unix sockets.

use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tokio::io::Interest;
use tokio::net::UnixStream;

/// Most descriptors taken from one read; the kernel closes any beyond.
const MAX_FDS_PER_READ: usize = 4;

/// Writes `data` with `fd` attached to its first byte. Returns how much of
/// `data` went out; the descriptor went with the first byte.
pub(crate) async fn send_with_fd(
    stream: &UnixStream,
    data: &[u8],
    fd: BorrowedFd<'_>,
) -> io::Result<usize> {
    stream
        .async_io(Interest::WRITABLE, || {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            let fds = [fd];
            control.push(SendAncillaryMessage::ScmRights(&fds));
            let iov = [IoSlice::new(data)];
            Ok(rustix::net::sendmsg(
                stream,
                &iov,
                &mut control,
                SendFlags::NOSIGNAL,
            )?)
        })
        .await
}

/// Reads into `buf`, collecting any descriptors that came along into
/// `fds` (close-on-exec). Returns the bytes read; 0 is the end of the stream.
pub(crate) async fn recv_with_fds(
    stream: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    stream
        .async_io(Interest::READABLE, || {
            let mut space =
                [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_READ))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let n = {
                let mut iov = [IoSliceMut::new(buf)];
                rustix::net::recvmsg(stream, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)?.bytes
            };
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(received) = message {
                    fds.extend(received);
                }
            }
            Ok(n)
        })
        .await
}
