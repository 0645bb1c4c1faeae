//! A direct channel over TCP (PROTOCOL.md §5.11) as one more source in your
//! `mio::Poll`: the core's [`DirectConn`] around a non-blocking socket.
//!
//! The opener makes one with [`DirectTcp::dial`] for `OpenedPath::Dial`; a
//! target with a direct address, one with [`DirectTcp::accept`] per accepted
//! connection, answering [`DirectEvent::Authorize`] with
//! `Session::direct_expects` and [`DirectEvent::Token`] with `direct_claim`.
//! At [`DirectEvent::Established`] both call `Session::direct_established`
//! (which lets the relay go; `false`, for a target: close this); a failed
//! dial calls `direct_failed` (the relay stays), a failed admission `direct_abandoned`.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use mio::event::{Event, Source};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use plugboard_core::direct::{DirectConn, DirectEvent, TOKEN_LEN};
use plugboard_core::shs::HandshakeConfig;
use plugboard_core::PublicKey;
use plugboard_os::fdpass::read_into;
use plugboard_os::{Clock, WriteQueue};

const READ_SIZE: usize = 64 * 1024;

/// One end of a direct TCP channel. Register it with **both**
/// `Interest::READABLE` and `Interest::WRITABLE`; hand it its events.
pub struct DirectTcp {
    stream: TcpStream,
    conn: DirectConn,
    clock: Clock,
    queue: WriteQueue,
    buf: BytesMut,
    /// The socket's end was read.
    eof: bool,
    /// Reading stopped for events not taken yet: it resumes once they are.
    paused: bool,
}

impl DirectTcp {
    /// Dials `addr` (`tcp:IP:PORT`, from `OpenedPath::Dial`) to prove our
    /// key to `target` and present `token`.
    pub fn dial(
        addr: &str,
        config: Arc<HandshakeConfig>,
        target: PublicKey,
        token: [u8; TOKEN_LEN],
        clock: Clock,
    ) -> io::Result<Self> {
        // Not a name: its lookup (the target's choice) would block the loop.
        let not_an_address = || io::Error::new(io::ErrorKind::InvalidInput, "not tcp:IP:PORT");
        let socket: std::net::SocketAddr = addr
            .strip_prefix("tcp:")
            .and_then(|a| a.parse().ok())
            .ok_or_else(not_an_address)?;
        let conn = DirectConn::dial(config, target, token, &mut rand_core::OsRng, clock.now())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        // Non-blocking: the first WRITABLE says the connect finished.
        let stream = TcpStream::connect(socket)?;
        let _ = stream.set_nodelay(true);
        Ok(Self::new(stream, conn, clock))
    }

    /// The target's end, for a connection its direct listener accepted.
    pub fn accept(stream: TcpStream, config: Arc<HandshakeConfig>, clock: Clock) -> Self {
        let _ = stream.set_nodelay(true);
        let conn = DirectConn::listen(config, &mut rand_core::OsRng, clock.now());
        Self::new(stream, conn, clock)
    }

    fn new(stream: TcpStream, conn: DirectConn, clock: Clock) -> Self {
        let mut direct = DirectTcp {
            stream,
            conn,
            clock,
            queue: WriteQueue::new(),
            buf: BytesMut::new(),
            eof: false,
            paused: false,
        };
        direct.flush();
        direct
    }

    /// Runs `f` on the connection's state machine (answer `Authorize` and
    /// `Token`, `send`, `finish`), then writes what it produced.
    pub fn with_conn<T>(&mut self, f: impl FnOnce(&mut DirectConn) -> T) -> T {
        let result = f(&mut self.conn);
        self.flush();
        result
    }

    /// The next thing to handle: `Authorize` and `Token` (target), then
    /// `Established`, `Data`, `Fin`; `Failed` is the last. Until they are
    /// taken, nothing more is read: the peer waits.
    pub fn poll_event(&mut self) -> Option<DirectEvent> {
        self.conn.poll_event()
    }

    /// Until the channel is up, how long to wait at most (the handshake's
    /// and the token's deadline).
    /// (Now, when reading can resume.)
    pub fn timeout(&self) -> Option<Duration> {
        if self.paused && !self.conn.has_events() {
            return Some(Duration::ZERO);
        }
        self.conn.poll_timeout().map(|at| self.clock.until(at))
    }

    /// Fails the connection if it is not up by its deadline; reads on if
    /// the events that paused it were taken. Writes what that produced.
    pub fn handle_timeout(&mut self) {
        if self.paused && !self.conn.has_events() {
            self.read();
        }
        self.conn.handle_timeout(self.clock.now());
        self.flush();
    }

    /// Reads what arrived and writes what is pending.
    pub fn handle_ready(&mut self, event: &Event) {
        if event.is_readable() || event.is_read_closed() {
            self.read();
        }
        self.flush();
    }

    /// Sealed bytes the socket has not taken yet: send more while this is
    /// small, and the socket's WRITABLE drains it (the connection itself
    /// takes whatever it is given).
    pub fn unsent(&self) -> usize {
        self.queue.len()
    }

    /// Whether both sides said goodbye and everything sealed was written,
    /// or it failed: drop it. (Dropped with bytes still queued, say for a
    /// peer that sent its goodbye before reading all of ours, the socket
    /// would close in the middle of a frame.)
    pub fn is_done(&self) -> bool {
        (self.conn.is_finished() && self.queue.is_empty()) || self.conn.is_failed()
    }

    fn read(&mut self) {
        self.paused = false;
        while !self.eof {
            if self.conn.has_events() {
                self.paused = true; // readiness will not come again: see `timeout`
                return;
            }
            self.buf.clear();
            match read_into(&self.stream, &mut self.buf, READ_SIZE, None) {
                Ok(n) if n > 0 => {
                    let now = self.clock.now();
                    let _ = self.conn.handle_input(now, &self.buf);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // The end of the stream; a broken socket ends it where it broke.
                _ => {
                    self.eof = true;
                    let _ = self.conn.handle_eof();
                }
            }
        }
    }

    fn flush(&mut self) {
        while let Some(bytes) = self.conn.poll_transmit() {
            self.queue.push(bytes);
        }
        if let Err(e) = self.queue.write_to(&self.stream) {
            if e.kind() != io::ErrorKind::WouldBlock {
                // The peer is gone: what it did not read is lost, and
                // reading tells the connection so.
                self.queue.clear();
            }
        }
    }
}

impl Source for DirectTcp {
    fn register(&mut self, registry: &Registry, token: Token, on: Interest) -> io::Result<()> {
        self.stream.register(registry, token, on)
    }

    fn reregister(&mut self, registry: &Registry, token: Token, on: Interest) -> io::Result<()> {
        self.stream.reregister(registry, token, on)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        self.stream.deregister(registry)
    }
}
