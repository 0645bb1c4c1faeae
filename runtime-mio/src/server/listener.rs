//! The broker's listening sockets: binding (with the tokio server's rules
//! for unix socket files) and accepting.

use std::io;
use std::path::{Path, PathBuf};

use mio::net::{TcpListener, UnixListener};
use plugboard_core::control::TransportKind;

use super::ServeError;
use crate::addr::Addr;
use crate::io::Stream;

/// A bound listener.
pub(super) enum Listener {
    /// A unix socket; `owned` if we made its file (and remove it at the end).
    Unix {
        listener: UnixListener,
        path: PathBuf,
        owned: bool,
    },
    Tcp(TcpListener),
}

impl Listener {
    /// Binds `addr`. A unix socket is created with mode 0600; a stale socket
    /// file (nobody answers on it) is replaced, a live one is refused.
    pub(super) fn bind(addr: &Addr) -> Result<Listener, ServeError> {
        let err = |source| ServeError::Bind {
            addr: addr.clone(),
            source,
        };
        match addr {
            Addr::Tcp(host_port) => {
                // std resolves the host; mio takes the bound socket as it is.
                let listener = std::net::TcpListener::bind(host_port).map_err(err)?;
                listener.set_nonblocking(true).map_err(err)?;
                Ok(Listener::Tcp(TcpListener::from_std(listener)))
            }
            Addr::Unix(path) => {
                if path.exists() {
                    if std::os::unix::net::UnixStream::connect(path).is_ok() {
                        return Err(ServeError::InUse(path.clone()));
                    }
                    // Nobody answers: a dead broker's leftover.
                    std::fs::remove_file(path).map_err(err)?;
                }
                let listener = std::os::unix::net::UnixListener::bind(path).map_err(err)?;
                set_private(path).map_err(err)?;
                listener.set_nonblocking(true).map_err(err)?;
                Ok(Listener::Unix {
                    listener: UnixListener::from_std(listener),
                    path: path.clone(),
                    owned: true,
                })
            }
        }
    }

    /// The next waiting connection; `WouldBlock` when there is none.
    pub(super) fn accept(&self) -> io::Result<(Stream, TransportKind)> {
        match self {
            Listener::Unix { listener, .. } => {
                let (stream, _) = listener.accept()?;
                Ok((Stream::Unix(stream), TransportKind::Unix))
            }
            Listener::Tcp(listener) => {
                let (stream, _) = listener.accept()?;
                let _ = stream.set_nodelay(true);
                Ok((Stream::Tcp(stream), TransportKind::Tcp))
            }
        }
    }

    /// The address actually bound (a TCP port 0 becomes the real port).
    pub(super) fn local_addr(&self) -> Addr {
        match self {
            Listener::Unix { path, .. } => Addr::Unix(path.clone()),
            Listener::Tcp(listener) => Addr::Tcp(
                listener
                    .local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
            ),
        }
    }

    /// The socket file to remove when the server stops, if we made it.
    pub(super) fn owned_file(&self) -> Option<&Path> {
        match self {
            Listener::Unix {
                path, owned: true, ..
            } => Some(path),
            _ => None,
        }
    }

    pub(super) fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            Listener::Unix { listener, .. } => listener,
            Listener::Tcp(listener) => listener,
        }
    }
}

/// Mode 0600: only the owner's processes may connect.
fn set_private(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}
