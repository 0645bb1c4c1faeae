//! The socket side of a [`PluginConn`]: reading into the session (with the
//! descriptors that come along), writing what it has, and the sockets the
//! session asks for when it reconnects.

use std::io;

use mio::event::Source as _;
use mio::{Interest, Registry, Token};
use plugboard_os::fdpass::read_into;
use rand_core::OsRng;

use super::{PluginConn, Socket, READ_SIZE, WRITE_BATCH};
use crate::addr::Addr;
use crate::io::Stream;

impl PluginConn {
    /// Reads until the socket is drained: readiness is edge-triggered. The
    /// broker sends no more than the windows this side grants (and its own
    /// bound on control messages), so this ends soon even on a busy
    /// connection.
    pub(super) fn read(&mut self) {
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
    pub(super) fn flush(&mut self) {
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
    pub(super) fn check_connected(&mut self) {
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
