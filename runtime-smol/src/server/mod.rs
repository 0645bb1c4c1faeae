//! The broker on smol: listeners, one reader and one writer task per
//! connection, one timer task, all around one [`Broker`] state machine.
//!
//! Every task is spawned on smol's global executor ([`smol::spawn`]), so
//! [`Server::run`] can be awaited from any executor or from
//! [`smol::block_on`]; the global executor runs on its own thread(s)
//! (`SMOL_THREADS`, one by default).
//!
//! The broker sits behind a mutex that is never held across an await:
//! each task locks it, hands it bytes or time, takes what it has, and lets
//! go. Output stays in the broker until the connection's writer can take it,
//! so a slow socket holds memory only as far as the broker's own bounds allow.

mod conn;
mod shared;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_io::{Async, Timer};
use plugboard_core::broker::{BrokerConfig, Origin};
use plugboard_core::PublicKey;

use plugboard_os::activation::Inherited;
use plugboard_os::SHUTDOWN_GRACE;
use plugboard_os::{Bound, Socket, SocketPairs};

use crate::addr::Addr;
use crate::clock::Clock;
use crate::io::Stream;
use crate::notify::Notify;
use shared::{Shared, State};

pub use plugboard_os::ServeError;

/// A bound broker, ready to [`Server::run`].
pub struct Server {
    shared: Arc<Shared>,
    listeners: Vec<Listener>,
}

type Listener = Bound<Async<UnixListener>, Async<TcpListener>>;

impl Server {
    /// Binds every address. A unix socket's file is mode 0600 from the
    /// moment it exists; a stale one (nobody listens) is replaced, a live
    /// one is not.
    ///
    /// Not `async`: binding waits on nothing but the OS (and, for a TCP
    /// host name, the resolver).
    pub fn bind(config: BrokerConfig, addrs: &[Addr]) -> Result<Self, ServeError> {
        Self::bind_with(config, addrs, Vec::new())
    }

    /// Binds every address, as [`Server::bind`], and serves listeners a
    /// service manager passed as well, after them, in order (systemd socket
    /// activation: [`plugboard_os::activation`] finds them). Their socket
    /// files are not ours: they stay when the server stops.
    pub fn bind_with(
        config: BrokerConfig,
        addrs: &[Addr],
        inherited: Vec<Inherited>,
    ) -> Result<Self, ServeError> {
        let listeners = plugboard_os::bind_all_with(addrs, inherited, Async::new, Async::new)?;
        Ok(Server {
            shared: Arc::new(Shared {
                clock: Clock::start(),
                state: Mutex::new(State {
                    broker: plugboard_os::new_broker(config),
                    conns: HashMap::new(),
                    pairs: SocketPairs::new(),
                }),
                timer: Notify::default(),
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

    /// The broker's key.
    pub fn public_key(&self) -> PublicKey {
        self.shared.lock().broker.public_key()
    }

    /// Serves until `shutdown` completes; then tells every connection why it
    /// ends, waits a moment for that to be written, and removes its unix
    /// socket files.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut tasks = Vec::new();
        let mut sockets = Vec::new();
        for listener in self.listeners {
            sockets.extend(listener.owned_file().cloned());
            tasks.push(smol::spawn(self.shared.clone().accept(listener)));
        }
        tasks.push(smol::spawn(self.shared.clone().timers()));
        shutdown.await;
        // The listeners close here: nobody new gets in.
        for task in tasks {
            task.cancel().await;
        }

        tracing::info!("shutting down");
        let writers = self.shared.shutdown();
        let deadline = std::time::Instant::now() + SHUTDOWN_GRACE;
        while writers.iter().any(|w| Arc::strong_count(w) > 1)
            && std::time::Instant::now() < deadline
        {
            Timer::after(Duration::from_millis(10)).await;
        }
        for file in sockets {
            file.remove_logged();
        }
    }
}

/// The next connection on `listener`, and where it comes from.
async fn accept(listener: &Listener) -> io::Result<(Stream, Origin)> {
    Ok(match &listener.socket {
        Socket::Unix(l) => {
            let stream = l.accept().await?.0;
            let origin = listener.unix_origin(stream.get_ref());
            (Stream::Unix(stream), origin)
        }
        Socket::Tcp(l) => {
            let (stream, peer) = l.accept().await?;
            let _ = stream.get_ref().set_nodelay(true);
            (Stream::Tcp(stream), listener.tcp_origin(peer))
        }
    })
}

impl Shared {
    /// Accepts connections on `listener` for ever, resting a moment
    /// whenever accepting fails (out of descriptors, say) instead of spinning.
    async fn accept(self: Arc<Self>, listener: Listener) {
        plugboard_os::accept_forever(
            listener.local_addr(),
            || accept(&listener),
            |(stream, origin)| self.clone().adopt(stream, origin),
            |rest| async move {
                Timer::after(rest).await;
            },
        )
        .await
    }
}
