//! The write half of a connection, for the broker and the plugin alike:
//! the shared [`WriteQueue`] written whenever tokio says the socket has room.

use std::io;

use plugboard_os::WriteQueue;
use tokio::io::Interest;
use tokio::net::{tcp, unix};

/// The write half of a connection: unix sockets can carry descriptors.
pub(crate) enum Writer {
    Unix(unix::OwnedWriteHalf),
    Tcp(tcp::OwnedWriteHalf),
}

impl Writer {
    /// Writes `queue` until it is empty, waiting for room as it takes.
    pub(crate) async fn flush(&self, queue: &mut WriteQueue) -> io::Result<()> {
        match self {
            Writer::Unix(w) => {
                let s = w.as_ref();
                s.async_io(Interest::WRITABLE, || queue.write_to(s)).await
            }
            Writer::Tcp(w) => {
                let s = w.as_ref();
                s.async_io(Interest::WRITABLE, || queue.write_to(s)).await
            }
        }
    }
}
