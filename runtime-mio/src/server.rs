//! The broker on one thread, around one `mio::Poll`.
//!
//! Each turn of the loop: wait for readiness or for the broker's next
//! deadline (`poll_timeout` is the poll's timeout), accept, flush what the
//! broker has for sockets that became writable, give each connection with
//! input one bounded reading turn, run the timers. After every broker call
//! [`State::dispatch`] carries out its events until it has nothing more to
//! say. Output stays in the broker until a socket can take it, so a slow
//! peer holds memory only as far as the broker's own bounds allow.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use plugboard_core::broker::{Broker, BrokerConfig, ConnId, Limits, Origin, Policy};
use plugboard_core::{Instant, PublicKey};
use plugboard_os::activation::Inherited;
use plugboard_os::fdpass::recv_into;
use plugboard_os::{AcceptPause, Bound, Clock, ConnEvent, ReloadHandle, SocketPairs, WriteQueue};
use plugboard_os::{LAST_WORDS_GRACE, SHUTDOWN_GRACE};

use crate::io::Stream;
use crate::Addr;

pub use plugboard_os::ServeError;

/// Tokens: 0 is the waker, listeners follow, and a connection's token is
/// [`FIRST_CONN`] plus its [`ConnId`] (which the broker never reuses).
const WAKER: Token = Token(0);
const FIRST_CONN: usize = 1 << 20;
/// Most bytes one read asks for.
const READ_SIZE: usize = 256 * 1024;
/// Reads per connection per turn of the loop: one busy connection cannot
/// starve the others (it waits for its next turn, see [`State::unread`]).
const READS_PER_TURN: usize = 4;
/// Most bytes taken from the broker before writing them.
const WRITE_BATCH: usize = 256 * 1024;

/// A bound broker, ready to [`Server::run`] on the current thread.
pub struct Server {
    poll: Poll,
    listeners: Vec<Listener>,
    state: State,
    stop: StopHandle,
}

/// A listening socket, bound (or passed) by the shared OS glue's rules.
struct Listener {
    bound: Bound<OwnedFd, OwnedFd>,
    /// Failed accepts (out of descriptors, say): while a spell of them
    /// lasts, the listener rests until `resume`.
    pause: AcceptPause,
    resume: Option<Instant>,
}

/// Stops a running [`Server`] from any thread.
#[derive(Clone)]
pub struct StopHandle {
    waker: Arc<Waker>,
    stopped: Arc<AtomicBool>,
    /// A reload for the loop to carry out when it wakes.
    reload: Arc<Mutex<Option<(Policy, Limits)>>>,
}

impl StopHandle {
    /// Asks the server to stop: it tells every connection why, gives their
    /// last words a moment to go out, removes its socket files and returns.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        let _ = self.waker.wake();
    }
}

impl Server {
    /// Binds every address. A unix socket's file is mode 0600 from the
    /// moment it exists; a stale one (nobody listens) is replaced, a live
    /// one is not. Socketpair ends are passed to plugins on unix sockets
    /// (`fd_passing` is set).
    pub fn bind(config: BrokerConfig, addrs: &[Addr]) -> Result<Server, ServeError> {
        Self::bind_with(config, addrs, Vec::new())
    }

    /// [`Server::bind`], plus the listeners systemd passed (found by
    /// [`plugboard_os::activation`]), served after `addrs` in their order;
    /// their socket files stay when the server stops.
    pub fn bind_with(
        config: BrokerConfig,
        addrs: &[Addr],
        inherited: Vec<Inherited>,
    ) -> Result<Server, ServeError> {
        let poll = Poll::new().map_err(ServeError::EventLoop)?;
        let bound = plugboard_os::bind_all_with(
            addrs,
            inherited,
            |l| Ok(OwnedFd::from(l)),
            |l| Ok(OwnedFd::from(l)),
        )?;
        let mut listeners = Vec::new();
        for (i, bound) in bound.into_iter().enumerate() {
            assert!(1 + i < FIRST_CONN, "too many listeners");
            let fd = bound.socket.get().as_raw_fd();
            poll.registry()
                .register(&mut SourceFd(&fd), Token(1 + i), Interest::READABLE)
                .map_err(ServeError::EventLoop)?;
            listeners.push(Listener {
                bound,
                pause: AcceptPause::new(),
                resume: None,
            });
        }
        let waker = Waker::new(poll.registry(), WAKER).map_err(ServeError::EventLoop)?;
        let registry = poll.registry().try_clone().map_err(ServeError::EventLoop)?;
        Ok(Server {
            poll,
            listeners,
            state: State::new(plugboard_os::new_broker(config), registry),
            stop: StopHandle {
                waker: Arc::new(waker),
                stopped: Arc::new(AtomicBool::new(false)),
                reload: Arc::default(),
            },
        })
    }

    /// The addresses actually bound (a TCP port 0 becomes the real port).
    pub fn local_addrs(&self) -> Vec<Addr> {
        let addrs = self.listeners.iter();
        addrs.map(|l| l.bound.local_addr().clone()).collect()
    }

    /// The broker's key.
    pub fn public_key(&self) -> PublicKey {
        self.state.broker.public_key()
    }

    /// A handle that reloads the broker's policy and limits while it runs.
    pub fn reload_handle(&self) -> ReloadHandle {
        let stop = self.stop.clone();
        ReloadHandle::new(move |policy, limits| {
            *stop.reload.lock().unwrap_or_else(|e| e.into_inner()) = Some((policy, limits));
            let _ = stop.waker.wake();
        })
    }

    /// A handle that stops [`Server::run`] from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Serves until [`StopHandle::stop`]; then shuts down gracefully. An
    /// error is the poll's own (accept and socket errors are the
    /// connection's, and logged).
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        while !self.stop.stopped.load(Ordering::Acquire) {
            // The broker's deadline, a closing connection's, a resting listener's.
            let closing = self.state.closing.front().map(|&(at, _)| at);
            let resume = self.listeners.iter().filter_map(|l| l.resume).min();
            let deadlines = [self.state.broker.poll_timeout(), closing, resume];
            let deadline = deadlines.into_iter().flatten().min();
            // Connections that have more to read do not wait: they get
            // their next turn at once, after whatever else is ready.
            let timeout = match self.state.unread.is_empty() {
                true => deadline.map(|at| self.state.clock.until(at)),
                false => Some(Duration::ZERO),
            };
            match self.poll.poll(&mut events, timeout) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                result => result?,
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => {
                        // A stop (the loop condition looks) or a reload.
                        let reload = self.stop.reload.lock().map(|mut r| r.take());
                        if let Ok(Some((policy, limits))) = reload {
                            self.state.broker.reconfigure(policy, limits);
                        }
                    }
                    Token(i) if i < FIRST_CONN => self.accept(i - 1),
                    token => self.state.ready(
                        token,
                        event.is_readable() || event.is_read_closed() || event.is_error(),
                        event.is_writable() || event.is_write_closed() || event.is_error(),
                    ),
                }
            }
            // Listeners whose rest after a failed accept is over try again.
            for i in 0..self.listeners.len() {
                if self.listeners[i].resume.is_some() {
                    self.accept(i);
                }
            }
            self.state.read_turn();
            self.state.timers(self.state.clock.now());
        }
        self.shutdown(&mut events);
        Ok(())
    }

    /// Accepts every connection waiting on listener `i`. A failed accept
    /// (out of descriptors, say) makes the listener rest: the waiting
    /// connections stay in the backlog, and the loop comes back at `resume`
    /// (readiness is edge-triggered: it would not say so again).
    fn accept(&mut self, i: usize) {
        let now = self.state.clock.now();
        let l = &mut self.listeners[i];
        if l.resume.is_some_and(|at| at > now) {
            return;
        }
        l.resume = None;
        let unix = l.bound.is_unix();
        loop {
            let accepted = l.bound.accept_from(l.bound.socket.get());
            match accepted.and_then(|(fd, origin)| Ok((Stream::new(fd, unix)?, origin))) {
                Ok((stream, origin)) => {
                    l.pause.accepted(l.bound.local_addr());
                    self.state.accept(stream, origin);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    if let Some(rest) = l.pause.failed(l.bound.local_addr(), &e) {
                        l.resume = Some(now + rest);
                        return;
                    }
                }
            }
        }
    }

    /// Stops listening, tells every connection why it ends, waits a moment
    /// for that to be written, removes the socket files we made.
    fn shutdown(mut self, events: &mut Events) {
        tracing::info!(
            "shutting down: {} connections told why",
            self.state.conns.len()
        );
        // The listeners close here: nobody new gets in.
        let files: Vec<_> = self
            .listeners
            .drain(..)
            .filter_map(|l| l.bound.owned_file().cloned())
            .collect();
        let now = self.state.clock.now();
        self.state.broker.shutdown(now);
        self.state.dispatch();
        // Every connection is closing now: each leaves once its last words
        // are written, or when its grace is over.
        let deadline = now + SHUTDOWN_GRACE;
        while !self.state.conns.is_empty() && self.state.clock.now() < deadline {
            let timeout = self.state.clock.until(deadline);
            if self.poll.poll(events, Some(timeout)).is_err() {
                break;
            }
            for event in events.iter() {
                if event.token().0 >= FIRST_CONN {
                    self.state.ready(event.token(), false, true);
                }
            }
            self.state.expire(self.state.clock.now());
        }
        for file in files {
            file.remove_logged();
        }
    }
}

/// The broker and the sockets it speaks through: every broker call goes
/// through here, followed by [`State::dispatch`].
struct State {
    broker: Broker,
    clock: Clock,
    registry: Registry,
    conns: HashMap<ConnId, Conn>,
    /// Socketpair ends on their way to their connections.
    pairs: SocketPairs,
    /// Connections the broker has output for, to flush once its events are
    /// read.
    dirty: Vec<ConnId>,
    /// Connections with input to read, one turn each in order. Edge-triggered
    /// readiness is not repeated: a connection stays here until a read says
    /// `WouldBlock`.
    unread: VecDeque<ConnId>,
    /// Closing connections by deadline (in order: the grace is constant).
    closing: VecDeque<(Instant, ConnId)>,
    /// The one read buffer: the loop reads a connection at a time, and the
    /// broker copies what it keeps, so no connection holds one of its own
    /// and none is zeroed per read.
    read_buf: Vec<u8>,
}

/// One accepted socket.
struct Conn {
    stream: Stream,
    /// Taken from the broker, not written yet (socketpair ends included).
    queue: WriteQueue,
    /// The last write did not hit `WouldBlock`: write without waiting for
    /// the next WRITABLE event.
    writable: bool,
    /// Waiting for a reading turn (in `State::unread`).
    unread: bool,
    /// A legacy client with no room: not read until the broker resumes it.
    paused: bool,
    /// A legacy client's stream ended cleanly: it is not read again,
    /// while the plugin may still answer it.
    read_done: bool,
    /// The broker let go of this connection: write what is held by this
    /// deadline, then close.
    closing: Option<Instant>,
}

impl Conn {
    fn new(stream: Stream) -> Conn {
        Conn {
            stream,
            queue: WriteQueue::new(),
            writable: true,
            unread: false,
            paused: false,
            read_done: false,
            closing: None,
        }
    }
}

impl State {
    fn new(broker: Broker, registry: Registry) -> Self {
        State {
            broker,
            clock: Clock::start(),
            registry,
            conns: HashMap::new(),
            pairs: SocketPairs::new(),
            dirty: Vec::new(),
            unread: VecDeque::new(),
            closing: VecDeque::new(),
            read_buf: Vec::new(),
        }
    }

    /// An accepted socket: the broker decides whether it stays (if not,
    /// the socket is dropped; the broker logged why).
    fn accept(&mut self, mut stream: Stream, origin: Origin) {
        let now = self.clock.now();
        if let Ok(conn) = self.broker.accept(now, origin) {
            // Edge-triggered, both ways, for the connection's whole life.
            let token = Token(FIRST_CONN + conn as usize);
            let both = Interest::READABLE | Interest::WRITABLE;
            match self.registry.register(&mut stream, token, both) {
                Ok(()) => drop(self.conns.insert(conn, Conn::new(stream))),
                Err(e) => self.broker.handle_disconnect(now, conn, &e.to_string()),
            }
        }
        self.dispatch();
    }

    /// The poll says the socket under `token` is ready.
    fn ready(&mut self, token: Token, readable: bool, writable: bool) {
        let conn = (token.0 - FIRST_CONN) as ConnId;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if readable && !c.unread && !c.read_done && c.closing.is_none() {
            c.unread = true;
            self.unread.push_back(conn);
        }
        if writable {
            c.writable = true;
            self.flush(conn);
            self.dispatch();
        }
    }

    /// One reading turn for every connection that has input (those that
    /// may have more wait for the next).
    fn read_turn(&mut self) {
        for conn in std::mem::take(&mut self.unread) {
            let more = self.read(conn);
            if let Some(c) = self.conns.get_mut(&conn) {
                c.unread = more;
                if more {
                    self.unread.push_back(conn);
                }
            }
        }
    }

    /// A legacy client paused for want of room has some again.
    fn resume(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn).filter(|c| c.paused) {
            c.paused = false;
            if !c.unread && !c.read_done {
                c.unread = true;
                self.unread.push_back(conn);
            }
        }
    }

    /// Reads `conn` for one turn; whether it may have more.
    fn read(&mut self, conn: ConnId) -> bool {
        for _ in 0..READS_PER_TURN {
            let Some(c) = self.conns.get_mut(&conn).filter(|c| c.closing.is_none()) else {
                return false;
            };
            // A legacy client is read as far as its plugin's credit goes,
            // and not at all without: `Resume` brings it back.
            let room = self.broker.input_room(conn).unwrap_or(READ_SIZE);
            if room == 0 {
                c.paused = true;
                return false;
            }
            self.read_buf.resize(READ_SIZE, 0); // (once)
            let into = &mut self.read_buf[..room.min(READ_SIZE)];
            let result = recv_into(&c.stream, into, None);
            let now = self.clock.now();
            match result {
                Ok(n) if n > 0 => self.broker.handle_input(now, conn, &self.read_buf[..n]),
                Ok(_) if self.broker.handle_eof(now, conn) => {
                    c.read_done = true;
                    self.dispatch();
                    return false;
                }
                Ok(_) => self.forget(conn),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) => {
                    self.broker.handle_disconnect(now, conn, &e.to_string());
                    self.forget(conn);
                }
            }
            self.dispatch();
        }
        true
    }

    /// Writes what `conn` holds and what the broker has for it, until
    /// either runs dry or the socket is full (then WRITABLE resumes it).
    fn flush(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn).filter(|c| c.writable) else {
            return;
        };
        let failed = loop {
            match c.queue.write_to(&c.stream) {
                Ok(()) if c.closing.is_some() => {
                    // The last words are out: done.
                    plugboard_os::stream::shutdown_write(&c.stream);
                    self.forget(conn);
                    return;
                }
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.writable = false;
                    return;
                }
                Err(e) => break e,
            }
            // Take what the broker has, up to a batch (a frame that carries
            // a descriptor takes it along).
            let (queue, unix) = (&mut c.queue, c.stream.unix);
            let taken = self
                .pairs
                .take_output(&mut self.broker, conn, queue, WRITE_BATCH, unix);
            if let Err(e) = taken {
                break e;
            }
            if c.queue.is_empty() {
                return;
            }
        };
        if c.closing.is_none() {
            let reason = format!("write failed: {failed}");
            self.broker
                .handle_disconnect(self.clock.now(), conn, &reason);
        }
        self.forget(conn);
    }

    /// Carries out what the broker asked for. Called after every broker call.
    fn dispatch(&mut self) {
        loop {
            while let Some(event) =
                plugboard_os::poll_event(&mut self.broker, &mut self.pairs, &self.clock)
            {
                match event {
                    ConnEvent::Transmit(conn) => self.dirty.push(conn),
                    ConnEvent::Close(conn, last_words) => self.close(conn, last_words),
                    ConnEvent::Resume(conn) => self.resume(conn),
                    ConnEvent::Abort(conn) => self.abort(conn),
                    // A `Broker` handles it itself.
                    ConnEvent::Authorized(_) => {}
                }
            }
            // Flushing pulls from the broker, which may have more to say.
            let Some(conn) = self.dirty.pop() else {
                return;
            };
            self.flush(conn);
        }
    }

    /// The broker ended `conn`: write its last words (best effort, within
    /// the grace), then close.
    fn close(&mut self, conn: ConnId, last_words: Bytes) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let deadline = self.clock.now() + LAST_WORDS_GRACE;
        c.queue.push(last_words);
        c.closing = Some(deadline);
        self.closing.push_back((deadline, conn));
        self.flush(conn);
    }

    /// Ends `conn` with nothing more written: the peer reads a reset.
    fn abort(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get(&conn) {
            plugboard_os::stream::reset_on_close(&c.stream);
        }
        self.forget(conn);
    }

    /// Closes the connections whose last words did not go out in time.
    fn expire(&mut self, now: Instant) {
        while let Some(&(deadline, conn)) = self.closing.front() {
            if deadline > now {
                break;
            }
            self.closing.pop_front();
            self.forget(conn);
        }
    }

    /// Runs the broker's timers if one is due, and closes the connections
    /// whose grace is over.
    fn timers(&mut self, now: Instant) {
        if self.broker.poll_timeout().is_some_and(|at| at <= now) {
            self.broker.handle_timeout(now);
            self.dispatch();
        }
        self.expire(now);
    }

    /// Drops `conn`'s socket (the broker is done with it) and the socketpair
    /// ends meant for it (their peers see the end of the stream).
    fn forget(&mut self, conn: ConnId) {
        self.pairs.forget_conn(conn);
        if let Some(mut c) = self.conns.remove(&conn) {
            let _ = self.registry.deregister(&mut c.stream);
        }
    }
}
