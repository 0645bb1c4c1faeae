//! A plugin's connection to the broker, as one more source in your own
//! `mio::Poll`.

mod drive;

use std::io;
use std::ops::{Deref, DerefMut};
use std::os::fd::OwnedFd;
use std::time::Duration;

use bytes::BytesMut;
use mio::event::{Event, Source};
use mio::{Interest, Registry, Token};
use plugboard_core::session::{Session, SessionConfig, SessionError, SessionEvent};
use plugboard_core::Instant;
use plugboard_os::{Clock, FdTokens, WriteQueue};
use rand_core::OsRng;

use crate::addr::Addr;
use crate::io::Stream;

/// The socket under the session.
enum Socket {
    /// Connected.
    Up(Stream),
    /// A connect the session asked for, under way.
    Connecting(Stream),
    /// None: the session waits before its next attempt, or is over.
    Down,
}

impl Socket {
    /// `f` on the stream, if there is one (else there is nothing to do).
    fn with(&mut self, f: impl FnOnce(&mut Stream) -> io::Result<()>) -> io::Result<()> {
        match self {
            Socket::Up(s) | Socket::Connecting(s) => f(s),
            Socket::Down => Ok(()),
        }
    }
}

/// Most bytes one read asks for.
const READ_SIZE: usize = 64 * 1024;
/// Most bytes taken from the session before writing them.
const WRITE_BATCH: usize = 256 * 1024;

/// Why [`PluginConn::connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The broker could not be reached.
    #[error("cannot reach the broker at {addr}: {source}")]
    Unreachable {
        /// Where.
        addr: Addr,
        /// The OS's words.
        source: io::Error,
    },
    /// The session refused the configuration (an unusable broker key).
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// A connection to the broker driving a core [`Session`]. Register it in
/// your `mio::Poll` with **both** `Interest::READABLE` and
/// `Interest::WRITABLE` (it is a [`Source`]), and hand it its events:
///
/// ```text
/// let mut conn = PluginConn::connect(&addr, config)?;
/// poll.registry().register(&mut conn, PLUGIN, Interest::READABLE | Interest::WRITABLE)?;
/// loop {
///     poll.poll(&mut events, conn.timeout())?;        // (min with your own timeouts)
///     for event in &events {
///         if event.token() == PLUGIN { conn.handle_ready(event) } else { /* yours */ }
///     }
///     conn.handle_timeout();
///     while let Some(event) = conn.poll_event() {
///         // Ready, Incoming, Data, ...: answer through conn.session_mut()
///     }
/// }
/// ```
///
/// Everything the session has to send is written before these calls
/// return, and on WRITABLE when the socket was full. Requests and channels
/// are the core's [`Session`] API, reached through [`PluginConn::session_mut`]
/// (whose guard writes what the call produced when it goes out of scope).
///
/// With [`SessionConfig::reconnect`], the session reconnects when the
/// connection is lost: the `PluginConn` connects the sockets it asks for and
/// registers them in your poll under the same token (so register it before
/// the first loss), and the session's events say what became of what was
/// in flight (`RequestLost`, `ChannelLost`), then `Lost`, `AttemptFailed`,
/// `Reconnected`; descriptor tokens stay valid across connections.
pub struct PluginConn {
    socket: Socket,
    /// Where the session's new sockets connect to.
    addr: Addr,
    /// Where the user registered us: new sockets go there too.
    poll: Option<(Registry, Token, Interest)>,
    session: Session,
    clock: Clock,
    /// Taken from the session, not written yet.
    queue: WriteQueue,
    /// The last write did not hit `WouldBlock`.
    writable: bool,
    /// Our side of the socket is shut (the session is over, all written).
    shut: bool,
    buf: BytesMut,
    /// Descriptors from the broker, by the token the session knows them by.
    fds: FdTokens,
}

impl PluginConn {
    /// Connects (a blocking connect, then everything is non-blocking) and
    /// starts the handshake. Over TCP the session uses box-stream
    /// (`config.boxstream` is set); on a unix socket it is left as given.
    pub fn connect(addr: &Addr, mut config: SessionConfig) -> Result<PluginConn, ConnectError> {
        let stream = match addr {
            Addr::Unix(path) => {
                std::os::unix::net::UnixStream::connect(path).and_then(|s| Stream::new(s, true))
            }
            Addr::Tcp(host_port) => {
                config.boxstream = true;
                std::net::TcpStream::connect(host_port).and_then(|s| Stream::new(s, false))
            }
        };
        let stream = stream.map_err(|source| ConnectError::Unreachable {
            addr: addr.clone(),
            source,
        })?;
        let clock = Clock::start();
        let session = Session::new(config, &mut OsRng, clock.now())?;
        let mut conn = PluginConn {
            socket: Socket::Up(stream),
            addr: addr.clone(),
            poll: None,
            session,
            clock,
            queue: WriteQueue::new(),
            writable: true,
            shut: false,
            buf: BytesMut::new(),
            fds: FdTokens::new(),
        };
        conn.flush(); // the handshake's first message
        Ok(conn)
    }

    /// The session's `now`, for the calls that take one.
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    /// The session, to read.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The session, to make requests and move channel bytes. What the calls
    /// produce is written when the guard is dropped.
    pub fn session_mut(&mut self) -> SessionMut<'_> {
        SessionMut(self)
    }

    /// The next thing that happened. Drain it after every call into this
    /// connection.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.session.poll_event()
    }

    /// Takes the descriptor an `Opened` or `ChannelPath` event names by
    /// token: a socketpair end, the direct channel to the other plugin.
    pub fn take_fd(&mut self, token: u64) -> Option<OwnedFd> {
        self.fds.take(token)
    }

    /// How long until the session's next deadline: the longest your poll
    /// may wait (take the minimum with your own).
    pub fn timeout(&self) -> Option<Duration> {
        self.session.poll_timeout().map(|at| self.clock.until(at))
    }

    /// Runs the session's timers if one is due. Call after every poll.
    pub fn handle_timeout(&mut self) {
        let now = self.clock.now();
        if self.session.poll_timeout().is_some_and(|at| at <= now) {
            self.session.handle_timeout(now);
            self.flush();
        }
    }

    /// The poll says the socket is ready: read what came, write what waits.
    pub fn handle_ready(&mut self, event: &Event) {
        if let Socket::Connecting(_) = self.socket {
            self.check_connected();
        } else {
            self.writable |= event.is_writable() || event.is_write_closed() || event.is_error();
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                self.read();
            }
        }
        self.flush();
    }

    /// Whether the session is over for good.
    pub fn is_closed(&self) -> bool {
        self.session.is_closed()
    }

    /// Ends the connection from this side: the broker is told why (best
    /// effort), and the socket is shut. Deregister and drop it afterwards.
    pub fn close(&mut self, reason: &str) {
        let last = self.session.close(reason);
        self.queue.push(last);
        self.flush(); // lets the socket go: the session is over
    }
}

impl Source for PluginConn {
    fn register(&mut self, registry: &Registry, token: Token, on: Interest) -> io::Result<()> {
        self.poll = Some((registry.try_clone()?, token, on));
        self.socket.with(|s| s.register(registry, token, on))
    }

    fn reregister(&mut self, registry: &Registry, token: Token, on: Interest) -> io::Result<()> {
        self.poll = Some((registry.try_clone()?, token, on));
        self.socket.with(|s| s.reregister(registry, token, on))
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        self.poll = None;
        self.socket.with(|s| s.deregister(registry))
    }
}

/// The session, borrowed from its [`PluginConn`]; when the borrow ends,
/// what the calls produced is written.
pub struct SessionMut<'a>(&'a mut PluginConn);

impl SessionMut<'_> {
    /// The session's `now`.
    pub fn now(&self) -> Instant {
        self.0.clock.now()
    }
}

impl Deref for SessionMut<'_> {
    type Target = Session;
    fn deref(&self) -> &Session {
        &self.0.session
    }
}

impl DerefMut for SessionMut<'_> {
    fn deref_mut(&mut self) -> &mut Session {
        &mut self.0.session
    }
}

impl Drop for SessionMut<'_> {
    fn drop(&mut self) {
        self.0.flush();
    }
}
