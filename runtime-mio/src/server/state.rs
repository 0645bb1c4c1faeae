//! The broker and the sockets it speaks through: every broker call goes
//! through here, followed by [`State::dispatch`], which carries out what the
//! broker asked for until it has nothing more to say.

use std::collections::{HashMap, VecDeque};
use std::io;

use bytes::{Bytes, BytesMut};
use mio::{Interest, Registry, Token};
use plugboard_core::broker::{Broker, ConnId, Origin};
use plugboard_core::Instant;
use plugboard_os::fdpass::read_into;
use plugboard_os::{Clock, ConnEvent, SocketPairs, WriteQueue, LAST_WORDS_GRACE};

use crate::io::Stream;

/// Most bytes one read asks for.
const READ_SIZE: usize = 256 * 1024;
/// Reads per connection per turn of the loop: one busy connection cannot
/// starve the others (it waits for its next turn, see [`State::unread`]).
const READS_PER_TURN: usize = 4;
/// Most bytes taken from the broker before writing them.
const WRITE_BATCH: usize = 256 * 1024;

/// Tokens: 0 is the waker, listeners follow, and a connection's token is
/// this plus its [`ConnId`] (which the broker never reuses).
pub(super) const FIRST_CONN: usize = 1 << 20;

pub(super) struct State {
    pub(super) broker: Broker,
    pub(super) clock: Clock,
    registry: Registry,
    pub(super) conns: HashMap<ConnId, Conn>,
    /// Socketpair ends on their way to their connections.
    pairs: SocketPairs,
    /// Connections the broker has output for, to flush once its events are
    /// read.
    dirty: Vec<ConnId>,
    /// Connections with input to read, one turn each in order. Edge-triggered
    /// readiness is not repeated: a connection stays here until a read says
    /// `WouldBlock`.
    pub(super) unread: VecDeque<ConnId>,
    /// Closing connections by deadline (in order: the grace is constant).
    closing: VecDeque<(Instant, ConnId)>,
}

/// One accepted socket.
pub(super) struct Conn {
    stream: Stream,
    /// Taken from the broker, not written yet (socketpair ends included).
    queue: WriteQueue,
    /// The read buffer; empty, without an allocation, while the socket is
    /// idle (10,000 idle connections would otherwise pin a buffer each).
    buf: BytesMut,
    /// The last write did not hit `WouldBlock`: write without waiting for
    /// the next WRITABLE event.
    writable: bool,
    /// Waiting for a reading turn (in `State::unread`).
    unread: bool,
    /// The broker let go of this connection: write what is held by this
    /// deadline, then close.
    closing: Option<Instant>,
}

impl Conn {
    fn new(stream: Stream) -> Conn {
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

impl State {
    pub(super) fn new(broker: Broker, registry: Registry) -> Self {
        State {
            broker,
            clock: Clock::start(),
            registry,
            conns: HashMap::new(),
            pairs: SocketPairs::new(),
            dirty: Vec::new(),
            unread: VecDeque::new(),
            closing: VecDeque::new(),
        }
    }

    /// An accepted socket: the broker decides whether it stays (if not,
    /// the socket is dropped; the broker logged why).
    pub(super) fn accept(&mut self, mut stream: Stream, origin: Origin) {
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
    pub(super) fn ready(&mut self, token: Token, readable: bool, writable: bool) {
        let conn = (token.0 - FIRST_CONN) as ConnId;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if readable && !c.unread && c.closing.is_none() {
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
    pub(super) fn read_turn(&mut self) {
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

    /// Reads `conn` for one turn; whether it may have more.
    fn read(&mut self, conn: ConnId) -> bool {
        for _ in 0..READS_PER_TURN {
            let Some(c) = self.conns.get_mut(&conn).filter(|c| c.closing.is_none()) else {
                return false;
            };
            if c.buf.capacity() - c.buf.len() < READ_SIZE / 4 {
                c.buf.reserve(READ_SIZE);
            }
            let max = c.buf.capacity() - c.buf.len();
            let result = read_into(&c.stream, &mut c.buf, max, None);
            let now = self.clock.now();
            match result {
                // The broker keeps the buffer (no copy on unix sockets).
                Ok(n) if n > 0 => self.broker.handle_input_owned(now, conn, c.buf.split()),
                Ok(_) => {
                    self.broker.handle_eof(now, conn);
                    self.forget(conn);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if c.buf.is_empty() {
                        c.buf = BytesMut::new();
                    }
                    return false;
                }
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
    pub(super) fn dispatch(&mut self) {
        loop {
            while let Some(event) =
                plugboard_os::poll_event(&mut self.broker, &mut self.pairs, &self.clock)
            {
                match event {
                    ConnEvent::Transmit(conn) => self.dirty.push(conn),
                    ConnEvent::Close(conn, last_words) => self.close(conn, last_words),
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
        c.buf = BytesMut::new();
        c.closing = Some(deadline);
        self.closing.push_back((deadline, conn));
        self.flush(conn);
    }

    /// Closes the connections whose last words did not go out in time.
    pub(super) fn expire(&mut self, now: Instant) {
        while let Some(&(deadline, conn)) = self.closing.front() {
            if deadline > now {
                break;
            }
            self.closing.pop_front();
            self.forget(conn);
        }
    }

    /// The earliest deadline: the broker's, or a closing connection's.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let closing = self.closing.front().map(|&(at, _)| at);
        self.broker.poll_timeout().into_iter().chain(closing).min()
    }

    /// Runs the broker's timers if one is due, and closes the connections
    /// whose grace is over.
    pub(super) fn timers(&mut self, now: Instant) {
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
