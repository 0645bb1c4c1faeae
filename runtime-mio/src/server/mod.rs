//! The broker on one thread, around one `mio::Poll`.
//!
//! Each turn of the loop: wait for readiness or for the broker's next
//! deadline (`poll_timeout` is the poll's timeout), accept, flush what the
//! broker has for sockets that became writable, give each connection with
//! input one bounded reading turn, run the timers. After every broker call
//! [`State::dispatch`] carries out its events until it has nothing more to
//! say. Output stays in the broker until a socket can take it, so a slow
//! peer holds memory only as far as the broker's own bounds allow.

mod conn;
mod listener;
mod state;

use std::io;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use plugboard_core::broker::BrokerConfig;
use plugboard_core::PublicKey;

use plugboard_os::activation::Inherited;
use plugboard_os::SHUTDOWN_GRACE;

use crate::addr::Addr;
use listener::Listener;
use state::{State, FIRST_CONN};

const WAKER: Token = Token(0);

pub use plugboard_os::ServeError;

/// A bound broker, ready to [`Server::run`] on the current thread.
pub struct Server {
    poll: Poll,
    listeners: Vec<Listener>,
    state: State,
    stop: StopHandle,
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

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
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
        let mut listeners = Vec::new();
        let bound = plugboard_os::bind_all_with(
            addrs,
            inherited,
            |l| Ok(OwnedFd::from(l)),
            |l| Ok(OwnedFd::from(l)),
        )?;
        for (i, bound) in bound.into_iter().enumerate() {
            assert!(1 + i < FIRST_CONN, "too many listeners");
            let listener = Listener::new(bound);
            poll.registry()
                .register(
                    &mut SourceFd(&listener.fd().as_raw_fd()),
                    Token(1 + i),
                    Interest::READABLE,
                )
                .map_err(ServeError::EventLoop)?;
            listeners.push(listener);
        }
        let stop = StopHandle {
            waker: Arc::new(Waker::new(poll.registry(), WAKER).map_err(ServeError::EventLoop)?),
            stopped: Arc::new(AtomicBool::new(false)),
        };
        let broker = plugboard_os::new_broker(config);
        let registry = poll.registry().try_clone().map_err(ServeError::EventLoop)?;
        let state = State::new(broker, registry);
        Ok(Server {
            poll,
            listeners,
            state,
            stop,
        })
    }

    /// The addresses actually bound (a TCP port 0 becomes the real port).
    pub fn local_addrs(&self) -> Vec<Addr> {
        self.listeners
            .iter()
            .map(|l| l.local_addr().clone())
            .collect()
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
        while !self.stop.is_stopped() {
            // Connections that have more to read do not wait: they get
            // their next turn at once, after whatever else is ready.
            let resume = self.listeners.iter().filter_map(|l| l.resume).min();
            let timeout = match self.state.has_unread() {
                true => Some(Duration::ZERO),
                false => self
                    .state
                    .next_deadline()
                    .into_iter()
                    .chain(resume)
                    .min()
                    .map(|at| self.state.clock.until(at)),
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => {} // the loop condition looks
                    Token(i) if i < FIRST_CONN => self.accept(i - 1),
                    Token(i) => self.state.ready(
                        (i - FIRST_CONN) as u64,
                        event.is_readable() || event.is_read_closed() || event.is_error(),
                        event.is_writable() || event.is_write_closed() || event.is_error(),
                    ),
                }
            }
            self.resume_listeners();
            self.state.read_turn();
            let now = self.state.clock.now();
            self.state.timers(now);
        }
        self.shutdown(&mut events);
        Ok(())
    }

    /// Accepts every connection waiting on listener `i`.
    fn accept(&mut self, i: usize) {
        let now = self.state.clock.now();
        let state = &mut self.state;
        self.listeners[i].accept(now, |stream, origin| state.accept(stream, origin));
    }

    /// Listeners whose rest after a failed accept is over try again.
    fn resume_listeners(&mut self) {
        let now = self.state.clock.now();
        for i in 0..self.listeners.len() {
            if self.listeners[i].resume.is_some_and(|at| at <= now) {
                self.accept(i);
            }
        }
    }

    /// Stops listening, tells every connection why it ends, waits a moment
    /// for that to be written, removes the socket files we made.
    fn shutdown(mut self, events: &mut Events) {
        tracing::info!("shutting down");
        for listener in &self.listeners {
            let fd = listener.fd().as_raw_fd();
            let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        }
        let now = self.state.clock.now();
        self.state.broker.shutdown(now);
        self.state.dispatch();
        // Every connection is closing now: each leaves once its last words
        // are written, or when its grace is over.
        let deadline = now + SHUTDOWN_GRACE;
        while !self.state.conns.is_empty() {
            let now = self.state.clock.now();
            if now >= deadline {
                break;
            }
            let timeout = self.state.clock.until(deadline);
            if self.poll.poll(events, Some(timeout)).is_err() {
                break;
            }
            for event in events.iter() {
                let Token(i) = event.token();
                if i >= FIRST_CONN {
                    self.state.ready((i - FIRST_CONN) as u64, false, true);
                }
            }
            self.state.expire(self.state.clock.now());
        }
        for listener in &self.listeners {
            if let Some(file) = listener.owned_file() {
                file.remove_logged();
            }
        }
    }
}
