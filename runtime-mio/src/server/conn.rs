//! One accepted socket: what it still has to write, and its read buffer.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd as _, OwnedFd};

use bytes::{Bytes, BytesMut};
use plugboard_core::Instant;

use crate::io::Stream;

pub(super) struct Conn {
    pub(super) stream: Stream,
    /// Taken from the broker, not written yet.
    pub(super) queue: VecDeque<Bytes>,
    /// A frame that announces a socketpair end, and the end: it goes out in
    /// one `sendmsg` once `queue` is written. `None` inside: the end went
    /// missing (the connection is cut).
    pub(super) with_fd: Option<(Bytes, Option<OwnedFd>)>,
    /// The read buffer; empty, without an allocation, while the socket is
    /// idle (10,000 idle connections would otherwise pin a buffer each).
    pub(super) buf: BytesMut,
    /// The last write did not hit `WouldBlock`: write without waiting for
    /// the next WRITABLE event.
    pub(super) writable: bool,
    /// Waiting for a reading turn (see `State::unread`).
    pub(super) unread: bool,
    /// The broker let go of this connection: write what is held by this
    /// deadline, then close.
    pub(super) closing: Option<Instant>,
}

impl Conn {
    pub(super) fn new(stream: Stream) -> Self {
        Conn {
            stream,
            queue: VecDeque::new(),
            with_fd: None,
            buf: BytesMut::new(),
            writable: true,
            unread: false,
            closing: None,
        }
    }

    /// Whether anything taken from the broker is still unwritten.
    pub(super) fn holds_output(&self) -> bool {
        !self.queue.is_empty() || self.with_fd.is_some()
    }

    /// Writes what the connection holds, in order: the queue, then the frame
    /// with the descriptor (its unsent rest, if any, back on the queue), and
    /// so on. `WouldBlock` leaves the rest held for the next WRITABLE.
    pub(super) fn write_held(&mut self) -> io::Result<()> {
        loop {
            self.stream.write_queue(&mut self.queue)?;
            let Some((data, fd)) = self.with_fd.take() else {
                return Ok(());
            };
            let Some(fd) = fd else {
                return Err(io::Error::other("a socketpair end went missing"));
            };
            match self.stream.send_with_fd(&data, fd.as_fd()) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(sent) => {
                    // The end went with the first byte: our copy closes.
                    drop(fd);
                    if sent < data.len() {
                        self.queue.push_back(data.slice(sent..));
                    }
                }
                Err(e) => {
                    self.with_fd = Some((data, Some(fd)));
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
    }
}
