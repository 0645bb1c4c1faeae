//! A plugin's connection to the broker, as one more source in your own
//! `mio::Poll`: the API, then the socket side (reading into the session
//! with the descriptors that come along, writing what it has, and the
//! sockets it asks for when it reconnects).

use std::io;
use std::ops::{Deref, DerefMut};
use std::os::fd::OwnedFd;
use std::time::Duration;

use bytes::BytesMut;
use mio::event::{Event, Source};
use mio::{Interest, Registry, Token};
use plugboard_core::session::{Session, SessionConfig, SessionError, SessionEvent};
use plugboard_core::Instant;
use plugboard_os::fdpass::read_into;
use plugboard_os::{Clock, FdTokens, WriteQueue};
use rand_core::OsRng;

use crate::io::Stream;
use crate::Addr;

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
/// `Reconnected`; descriptor tokens are never reused.
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
    /// connection. A lost connection's descriptors close at its `Lost`.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        let event = self.session.poll_event();
        if let Some(SessionEvent::Lost { .. } | SessionEvent::Closed { .. }) = event {
            self.fds.clear();
        }
        event
    }

    /// The descriptor an `Opened` or `ChannelPath` event names: take it then.
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

// The socket side.
impl PluginConn {
    /// Reads until the socket is drained: readiness is edge-triggered. The
    /// broker sends no more than the windows this side grants (and its own
    /// bound on control messages), so this ends soon even on a busy
    /// connection.
    fn read(&mut self) {
        let mut fds = Vec::new();
        while self.session.is_connected() {
            let Socket::Up(stream) = &self.socket else {
                return;
            };
            self.buf.reserve(READ_SIZE);
            let now = self.clock.now();
            let fds_too = stream.unix.then_some(&mut fds);
            match read_into(stream, &mut self.buf, READ_SIZE, fds_too) {
                Ok(0) => self.session.handle_eof(now),
                Ok(_) => {
                    let session = &mut self.session;
                    if let Err(reason) = self.fds.hand_over(session, now, &self.buf, &mut fds) {
                        self.fail(reason);
                    }
                    self.buf.clear();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => self.fail(format!("read failed: {e}")),
            }
        }
    }

    /// Writes what the session has, until it has nothing more or the socket
    /// is full (WRITABLE resumes), then follows the session: lets a lost
    /// connection's socket go (its last words written as far as they went),
    /// connects one it asks for.
    fn flush(&mut self) {
        self.write();
        if let (Socket::Up(_), false) = (&self.socket, self.session.is_connected()) {
            self.hang_up();
        }
        match self.socket {
            Socket::Down if self.session.wants_dial() => self.dial(),
            // The session gave up on it (its connect deadline passed).
            Socket::Connecting(_) if !self.session.wants_dial() => self.hang_up(),
            _ => {}
        }
    }

    fn write(&mut self) {
        while self.writable && !self.shut {
            let Socket::Up(stream) = &self.socket else {
                return;
            };
            while self.queue.len() < WRITE_BATCH {
                let Some(bytes) = self.session.poll_transmit() else {
                    break;
                };
                self.queue.push(bytes);
            }
            if self.queue.is_empty() {
                if self.session.is_closed() {
                    self.shut_write();
                }
                return;
            }
            match self.queue.write_to(stream) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable = false,
                Err(e) => self.fail(format!("write failed: {e}")),
            }
        }
    }

    /// The socket failed: the connection is over (the session says what
    /// comes next).
    fn fail(&mut self, reason: String) {
        self.session.handle_socket_error(self.clock.now(), &reason);
        self.queue.clear();
        self.shut_write();
    }

    fn shut_write(&mut self) {
        if let (false, Socket::Up(stream)) = (self.shut, &self.socket) {
            self.shut = true;
            plugboard_os::stream::shutdown_write(stream);
        }
    }

    /// Lets the socket go, and what belonged to its connection (not the
    /// descriptors: events already out may still name them).
    fn hang_up(&mut self) {
        if let Some((registry, ..)) = &self.poll {
            let _ = self.socket.with(|s| s.deregister(registry));
        }
        self.socket = Socket::Down;
        self.queue.clear();
        self.buf.clear();
        self.writable = true;
        self.shut = false;
    }

    /// Starts connecting the socket the session asked for, in the user's
    /// poll: its first event says whether it connected.
    fn dial(&mut self) {
        let started = match &self.poll {
            Some(poll) => connect(&self.addr, poll),
            None => Err(io::Error::other("not registered in a poll")),
        };
        match started {
            Ok(stream) => self.socket = Socket::Connecting(stream),
            Err(e) => self.dial_failed(e),
        }
    }

    /// A connecting socket had an event: connected, or failed.
    fn check_connected(&mut self) {
        let Socket::Connecting(stream) = &self.socket else {
            return;
        };
        match plugboard_os::stream::connected(stream) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {} // not yet
            Err(e) => {
                self.hang_up();
                self.dial_failed(e);
            }
            Ok(()) => {
                if let Socket::Connecting(s) = std::mem::replace(&mut self.socket, Socket::Down) {
                    self.socket = Socket::Up(s);
                }
                let now = self.clock.now();
                let _ = self.session.handle_connected(now, &mut OsRng);
            }
        }
    }

    fn dial_failed(&mut self, e: io::Error) {
        let (now, reason) = (self.clock.now(), e.to_string());
        let _ = self.session.handle_dial_failed(now, &reason, &mut OsRng);
    }
}

/// A non-blocking connect to `addr`, registered in the poll.
fn connect(addr: &Addr, (registry, token, on): &(Registry, Token, Interest)) -> io::Result<Stream> {
    let mut stream = match addr {
        Addr::Unix(path) => Stream::new(mio::net::UnixStream::connect(path)?, true)?,
        Addr::Tcp(host_port) => {
            // A name is looked up here, blocking: a reference loop's
            // simplification (use an address to avoid it).
            let to = std::net::ToSocketAddrs::to_socket_addrs(host_port.as_str())?
                .next()
                .ok_or_else(|| io::Error::other("the name has no address"))?;
            Stream::new(mio::net::TcpStream::connect(to)?, false)?
        }
    };
    stream.register(registry, *token, *on)?;
    Ok(stream)
}
