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
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_io::{Async, Timer};
use plugboard_core::broker::{Broker, BrokerConfig};
use plugboard_core::control::TransportKind;
use plugboard_core::PublicKey;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

use crate::addr::Addr;
use crate::clock::Clock;
use crate::io::Stream;
use crate::notify::Notify;
use shared::{Shared, State};

/// How long shutdown waits for the last words to be written.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How long an accept loop rests after the OS refused a connection (out
/// of descriptors, say), instead of spinning.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A live broker already listens on this unix socket.
    #[error("{0}: a broker is already listening there")]
    InUse(PathBuf),
    /// Binding failed.
    #[error("{addr}: {source}")]
    Bind {
        /// The address.
        addr: Addr,
        /// The OS error.
        source: io::Error,
    },
}

/// A bound broker, ready to [`Server::run`].
pub struct Server {
    shared: Arc<Shared>,
    listeners: Vec<Listener>,
}

enum Listener {
    /// A unix socket; `owned` if we made its file (and remove it).
    Unix {
        listener: Async<UnixListener>,
        path: PathBuf,
        owned: bool,
    },
    Tcp(Async<TcpListener>),
}

impl Server {
    /// Binds every address. A unix socket is created with mode 0600; a
    /// stale socket file (nobody answers on it) is replaced, a live one is not.
    ///
    /// Not `async`: binding waits on nothing but the OS (and, for a TCP
    /// host name, the resolver).
    pub fn bind(mut config: BrokerConfig, addrs: &[Addr]) -> Result<Self, ServeError> {
        // This runtime passes socketpair ends over unix sockets.
        config.fd_passing = true;
        let listeners = addrs.iter().map(bind).collect::<Result<_, _>>()?;
        let rng = ChaCha20Rng::from_rng(rand_core::OsRng).expect("the OS has randomness");
        Ok(Server {
            shared: Arc::new(Shared {
                clock: Clock::start(),
                state: Mutex::new(State {
                    broker: Broker::new(config, Box::new(rng)),
                    conns: HashMap::new(),
                    pairs: HashMap::new(),
                }),
                timer: Notify::default(),
            }),
            listeners,
        })
    }

    /// Binds every address, as [`Server::bind`], and serves listeners that
    /// are already bound too: those a service manager passed (systemd socket
    /// activation; `plugboard_tokio::activation` finds them) or any the
    /// caller made. They are served after the bound addresses, unix ones
    /// first, in order (see [`Server::local_addrs`]). Their socket files are
    /// not ours: they stay when the server stops. Their mode and blocking
    /// state are left as they come, except that they are made non-blocking.
    pub fn bind_with(
        config: BrokerConfig,
        addrs: &[Addr],
        unix: Vec<UnixListener>,
        tcp: Vec<TcpListener>,
    ) -> Result<Self, ServeError> {
        let mut server = Self::bind(config, addrs)?;
        for listener in unix {
            let path = listener
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(PathBuf::from))
                .unwrap_or_default();
            let err = |source| ServeError::Bind {
                addr: Addr::Unix(match path.as_os_str().is_empty() {
                    true => PathBuf::from("(inherited)"),
                    false => path.clone(),
                }),
                source,
            };
            let listener = Async::new(listener).map_err(err)?;
            server.listeners.push(Listener::Unix {
                listener,
                path,
                owned: false,
            });
        }
        for listener in tcp {
            let addr = listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "(inherited)".into());
            let listener = Async::new(listener).map_err(|source| ServeError::Bind {
                addr: Addr::Tcp(addr),
                source,
            })?;
            server.listeners.push(Listener::Tcp(listener));
        }
        Ok(server)
    }

    /// The addresses actually bound (a TCP port 0 becomes the real port).
    pub fn local_addrs(&self) -> Vec<Addr> {
        self.listeners
            .iter()
            .map(|l| match l {
                Listener::Unix { path, .. } => Addr::Unix(path.clone()),
                Listener::Tcp(t) => Addr::Tcp(
                    t.get_ref()
                        .local_addr()
                        .map(|a| a.to_string())
                        .unwrap_or_default(),
                ),
            })
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
            let shared = self.shared.clone();
            tasks.push(match listener {
                Listener::Unix {
                    listener,
                    path,
                    owned,
                } => {
                    if owned {
                        sockets.push(path);
                    }
                    smol::spawn(async move {
                        loop {
                            match listener.accept().await {
                                Ok((stream, _)) => shared
                                    .clone()
                                    .adopt(Stream::Unix(stream), TransportKind::Unix),
                                Err(e) => {
                                    tracing::warn!("accept on a unix socket: {e}");
                                    Timer::after(ACCEPT_PAUSE).await;
                                }
                            }
                        }
                    })
                }
                Listener::Tcp(listener) => smol::spawn(async move {
                    loop {
                        match listener.accept().await {
                            Ok((stream, _)) => {
                                let _ = stream.get_ref().set_nodelay(true);
                                shared
                                    .clone()
                                    .adopt(Stream::Tcp(stream), TransportKind::Tcp)
                            }
                            Err(e) => {
                                tracing::warn!("accept on a tcp socket: {e}");
                                Timer::after(ACCEPT_PAUSE).await;
                            }
                        }
                    }
                }),
            });
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
        for path in sockets {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn bind(addr: &Addr) -> Result<Listener, ServeError> {
    let err = |source| ServeError::Bind {
        addr: addr.clone(),
        source,
    };
    match addr {
        Addr::Tcp(host_port) => {
            let listener = crate::io::bind_tcp(host_port.as_str()).map_err(err)?;
            Ok(Listener::Tcp(listener))
        }
        Addr::Unix(path) => {
            if path.exists() {
                if is_live(path) {
                    return Err(ServeError::InUse(path.clone()));
                }
                // Nobody answers: a dead broker's leftover.
                std::fs::remove_file(path).map_err(err)?;
            }
            let listener = Async::<UnixListener>::bind(path).map_err(err)?;
            set_private(path).map_err(err)?;
            Ok(Listener::Unix {
                listener,
                path: path.clone(),
                owned: true,
            })
        }
    }
}

/// Whether someone listens on the unix socket at `path`. The connect does
/// not wait: a live listener with a full backlog says so with `EAGAIN`.
fn is_live(path: &Path) -> bool {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let Ok(socket) = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    ) else {
        return false;
    };
    let Ok(addr) = SocketAddrUnix::new(path) else {
        return false;
    };
    match rustix::net::connect(&socket, &addr) {
        Ok(()) => true,
        Err(e) => e == rustix::io::Errno::AGAIN || e == rustix::io::Errno::INPROGRESS,
    }
}

/// Mode 0600: only the owner's processes may connect.
fn set_private(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}
