//! A stream socket's own calls, the same for every runtime: taking one
//! off a listener, making it ready, finishing a non-blocking connect,
//! half-closing. Each is one non-blocking system call or two.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::io::Errno;
use rustix::net::{SocketAddrAny, SocketFlags};

/// One connection off a listening socket, non-blocking and close-on-exec,
/// with its peer's address; `WouldBlock` when none waits.
pub fn accept(listener: impl AsFd) -> io::Result<(OwnedFd, Option<SocketAddrAny>)> {
    let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
    Ok(rustix::net::acceptfrom_with(listener, flags)?)
}

/// Makes a connected socket ready for a runtime: non-blocking and, on TCP
/// (not `unix`), without Nagle's delay (frames go out as they are made).
pub fn prepare(socket: impl AsFd, unix: bool) -> io::Result<()> {
    rustix::io::ioctl_fionbio(&socket, true)?;
    if !unix {
        let _ = rustix::net::sockopt::set_tcp_nodelay(&socket, true);
    }
    Ok(())
}

/// Whether a non-blocking connect finished: `Ok` once the socket has a
/// peer, `WouldBlock` while it is under way, the error if it failed.
pub fn connected(socket: impl AsFd) -> io::Result<()> {
    if let Err(e) = rustix::net::sockopt::socket_error(&socket)? {
        return Err(e.into());
    }
    match rustix::net::getpeername(&socket) {
        Ok(_) => Ok(()),
        Err(Errno::NOTCONN) => Err(io::ErrorKind::WouldBlock.into()),
        Err(e) => Err(e.into()),
    }
}

/// No more writes from this side (the peer reads the end of the stream).
pub fn shutdown_write(socket: impl AsFd) {
    let _ = rustix::net::shutdown(&socket, rustix::net::Shutdown::Write);
}

/// When the socket closes, the peer reads an error (a TCP reset), not the
/// end of the stream: for a stream that must not look finished (a legacy
/// client's channel that was reset, on a socket with no box-stream to say so).
pub fn reset_on_close(socket: impl AsFd) {
    let _ = rustix::net::sockopt::set_socket_linger(&socket, Some(std::time::Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connect_is_seen_through_to_its_end() {
        let listener = crate::bind_tcp("127.0.0.1:0").unwrap();
        let err = accept(&listener).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "nobody came yet");
        let dialer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        prepare(&dialer, false).unwrap();
        connected(&dialer).unwrap();
        let (accepted, peer) = accept(&listener).unwrap();
        assert!(peer.is_some());
        shutdown_write(&dialer);
        rustix::io::ioctl_fionbio(&accepted, false).unwrap();
        let mut buf = [0u8; 1];
        let read = rustix::net::recv(&accepted, &mut buf, rustix::net::RecvFlags::empty());
        assert_eq!(read.unwrap().0, 0, "the peer read the end of the stream");
    }
}
