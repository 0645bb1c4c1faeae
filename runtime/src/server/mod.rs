//! The broker as a server: listeners, one reader and one writer task per
//! connection, one timer task, around the broker's two kinds of state.
//!
//! Each connection's [`Link`](plugboard_core::broker::Link) (its handshake
//! and box-stream: all the crypto) belongs to its own two tasks, so every
//! core can run handshakes and seal and open boxes at once. The
//! [`Hub`](plugboard_core::broker::Hub) sits behind a mutex that is never
//! held across an await nor during crypto: a task locks it to hand it
//! control traffic, a key to admit or time, and lets go. Relayed data
//! moves between the connections' ports
//! ([`PortHandle`](plugboard_core::broker::PortHandle)) without it. Output
//! stays in a connection's port until a task can write it, so a slow
//! socket holds memory only as far as the broker's own bounds allow. A reader
//! that made output for a connection (relayed data, a reply) writes it to
//! that socket itself when nobody else is writing there, as far as the
//! socket takes it without blocking; timers and the rest wake the
//! connection's writer.

mod conn;
mod shared;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plugboard_core::addr::Addr;
use plugboard_core::broker::{BrokerConfig, Origin};
use plugboard_core::PublicKey;
use plugboard_os::activation::Inherited;
use plugboard_os::{Bound, SocketPairs, SHUTDOWN_GRACE};

use crate::notify::Notify;
use crate::rt::{io, Interest, Runtime, Task as _};
use crate::stream::Stream;
use plugboard_os::Clock;
use shared::{Shared, State};

pub use plugboard_os::{ReloadHandle, ServeError};

/// A bound broker, ready to [`Server::run`].
pub struct Server<R: Runtime> {
    shared: Arc<Shared<R>>,
    listeners: Vec<Listener<R>>,
}

type Listener<R> = Bound<<R as Runtime>::Io, <R as Runtime>::Io>;

impl<R: Runtime> Server<R> {
    /// Binds every address. A unix socket's file is mode 0600 from the
    /// moment it exists; a stale one (nobody listens) is replaced, a live
    /// one is not.
    ///
    /// Not `async`: binding waits on nothing but the OS (and, for a TCP
    /// host name, the resolver). With tokio, call it inside the runtime.
    pub fn bind(config: BrokerConfig, addrs: &[Addr]) -> Result<Self, ServeError> {
        Self::bind_with(config, addrs, Vec::new())
    }

    /// Binds every address as [`Server::bind`] does, and serves listeners a service manager passed
    /// as well, after them, in order (systemd socket activation:
    /// [`plugboard_os::activation`] finds them). An inherited unix
    /// socket's file belongs to whoever made it, so shutdown leaves it.
    pub fn bind_with(
        config: BrokerConfig,
        addrs: &[Addr],
        inherited: Vec<Inherited>,
    ) -> Result<Self, ServeError> {
        let rt = R::default();
        let listeners = plugboard_os::bind_all_with(
            addrs,
            inherited,
            |l: UnixListener| rt.register(l.into()),
            |l: TcpListener| rt.register(l.into()),
        )?;
        Ok(Server {
            shared: Arc::new(Shared {
                rt,
                clock: Clock::start(),
                state: Mutex::new(State {
                    hub: plugboard_os::new_hub(config),
                    conns: HashMap::new(),
                    pairs: SocketPairs::new(),
                }),
                timer: Notify::default(),
                hub_locks: Arc::default(),
            }),
            listeners,
        })
    }

    /// The addresses actually bound (a TCP port 0 becomes the real port).
    pub fn local_addrs(&self) -> Vec<Addr> {
        self.listeners
            .iter()
            .map(|l| l.local_addr().clone())
            .collect()
    }

    /// How many times the hub's lock has been taken, counted from here on
    /// for as long as the server runs: for tests and measures of what
    /// goes through the hub (control traffic and lifecycle; relayed data
    /// moves between connections without it).
    pub fn hub_locks(&self) -> Arc<AtomicU64> {
        self.shared.hub_locks.clone()
    }

    /// A handle that reloads the broker's policy and limits while it runs.
    pub fn reload_handle(&self) -> ReloadHandle {
        let shared = self.shared.clone();
        ReloadHandle::new(move |policy, limits| {
            shared.lock().hub.reconfigure(policy, limits);
        })
    }

    /// The broker's key.
    pub fn public_key(&self) -> PublicKey {
        self.shared.lock().hub.public_key()
    }

    /// Serves until `shutdown` completes; then tells every connection why it
    /// ends, waits a moment for that to be written, and removes its unix
    /// socket files.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let rt = self.shared.rt.clone();
        let mut tasks = Vec::new();
        let mut sockets = Vec::new();
        for listener in self.listeners {
            sockets.extend(listener.owned_file().cloned());
            tasks.push(rt.spawn(self.shared.clone().accept(listener)));
        }
        tasks.push(rt.spawn(self.shared.clone().timers()));
        shutdown.await;
        // The listeners close here: nobody new gets in.
        for task in tasks {
            task.cancel().await;
        }

        let writers = self.shared.shutdown();
        tracing::info!("shutting down: {} connections told why", writers.len());
        let deadline = std::time::Instant::now() + SHUTDOWN_GRACE;
        while writers.iter().any(|w| Arc::strong_count(w) > 1)
            && std::time::Instant::now() < deadline
        {
            rt.sleep_until(std::time::Instant::now() + Duration::from_millis(10))
                .await;
        }
        for file in sockets {
            file.remove_logged();
        }
    }
}

/// The next connection on `listener`, and where it comes from.
async fn accept<R: Runtime>(rt: &R, listener: &Listener<R>) -> io::Result<(Stream<R>, Origin)> {
    let accept = |fd: &OwnedFd| listener.accept_from(fd);
    let (stream, origin) = io(listener.socket.get(), Interest::Read, accept).await?;
    Ok((Stream::new(rt, stream, listener.is_unix())?, origin))
}

impl<R: Runtime> Shared<R> {
    /// Accepts connections on `listener` for ever, resting a moment
    /// whenever accepting fails (out of descriptors, say) instead of spinning.
    async fn accept(self: Arc<Self>, listener: Listener<R>) {
        plugboard_os::accept_forever(
            listener.local_addr(),
            || accept(&self.rt, &listener),
            |(stream, origin)| self.clone().adopt(stream, origin),
            |rest| self.rt.sleep_until(std::time::Instant::now() + rest),
        )
        .await
    }
}
