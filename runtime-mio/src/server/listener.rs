//! The broker's listening sockets, bound (or passed) by the shared OS
//! glue's rules, under mio; and accepting from them.

use std::io;
use std::os::fd::OwnedFd;

use plugboard_core::broker::Origin;
use plugboard_core::Instant;
use plugboard_os::{AcceptPause, Bound};

use crate::addr::Addr;
use crate::io::Stream;

/// A bound listener.
pub(super) struct Listener {
    bound: Bound<OwnedFd, OwnedFd>,
    /// Failed accepts (out of descriptors, say): while one is on, the
    /// listener rests until `resume`.
    pause: AcceptPause,
    pub(super) resume: Option<Instant>,
}

impl Listener {
    /// Takes a listener the shared glue bound or adopted.
    pub(super) fn new(bound: Bound<OwnedFd, OwnedFd>) -> Listener {
        Listener {
            bound,
            pause: AcceptPause::new(),
            resume: None,
        }
    }

    /// The next waiting connection; `WouldBlock` when there is none.
    fn accept_one(&self) -> io::Result<(Stream, Origin)> {
        let (fd, origin) = self.bound.accept_from(self.bound.socket.get())?;
        Ok((Stream::new(fd, self.bound.is_unix())?, origin))
    }

    /// Every connection waiting now, handed to `adopt`. A failed accept
    /// (out of descriptors, say) makes the listener rest: the waiting
    /// connections stay in the backlog, and the loop comes back at `resume`
    /// (readiness is edge-triggered: it would not say so again).
    pub(super) fn accept(&mut self, now: Instant, mut adopt: impl FnMut(Stream, Origin)) {
        if self.resume.is_some_and(|at| at > now) {
            return;
        }
        self.resume = None;
        loop {
            match self.accept_one() {
                Ok((stream, origin)) => {
                    self.pause.accepted(self.bound.local_addr());
                    adopt(stream, origin);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    if let Some(rest) = self.pause.failed(self.bound.local_addr(), &e) {
                        self.resume = Some(now + rest);
                        return;
                    }
                }
            }
        }
    }

    /// The address actually bound (a TCP port 0 becomes the real port).
    pub(super) fn local_addr(&self) -> &Addr {
        self.bound.local_addr()
    }

    /// The socket file to remove when the server stops, if we made it.
    pub(super) fn owned_file(&self) -> Option<&plugboard_os::SocketFile> {
        self.bound.owned_file()
    }

    /// The listening socket, to register in the poll.
    pub(super) fn fd(&self) -> &OwnedFd {
        self.bound.socket.get()
    }
}
