//! The broker on one thread, around one `mio::Poll`.
//!
//! Each turn of the loop: wait for readiness or for the broker's next
//! deadline (`poll_timeout` is the poll's timeout), accept, flush what the
//! broker has for sockets that became writable, give each connection with
//! input one bounded reading turn, run the timers. After every broker call
//! [`State::dispatch`] carries out its events until it has nothing more to
//! say. Output stays in the broker until a socket can take it, so a slow
//! peer holds memory only as far as the broker's own bounds allow.

mod state;

use std::io;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use plugboard_core::broker::BrokerConfig;
use plugboard_core::{Instant, PublicKey};
use plugboard_os::activation::Inherited;
use plugboard_os::{AcceptPause, Bound, SHUTDOWN_GRACE};

use crate::addr::Addr;
use crate::io::Stream;
use state::{State, FIRST_CONN};

pub use plugboard_os::ServeError;

const WAKER: Token = Token(0);

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
            let resume = self.listeners.iter().filter_map(|l| l.resume).min();
            let deadline = self.state.next_deadline().into_iter().chain(resume).min();
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
                    WAKER => {} // the loop condition looks
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
        tracing::info!("shutting down");
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
