//! One accepted socket: what it still has to write, and its read buffer.

use bytes::BytesMut;
use plugboard_core::Instant;
use plugboard_os::WriteQueue;

use crate::io::Stream;

pub(super) struct Conn {
    pub(super) stream: Stream,
    /// Taken from the broker, not written yet (socketpair ends included).
    pub(super) queue: WriteQueue,
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
            queue: WriteQueue::new(),
            buf: BytesMut::new(),
            writable: true,
            unread: false,
            closing: None,
        }
    }
}
