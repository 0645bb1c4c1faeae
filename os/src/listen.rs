//! Listening sockets for the broker, bound by its rules or passed by a
//! service manager, as std listeners in non-blocking mode: each runtime
//! wraps them in its own type.
//!
//! A unix socket file is mode 0600 from the moment its path exists: the
//! socket is bound inside a fresh private directory beside the path, made
//! 0600 there, and renamed into place. A socket file already at the path is
//! replaced only if it is stale (nobody listens); a live broker's is
//! refused, even when its backlog is full.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use plugboard_core::broker::{Cred, ListenerId, Origin};

use crate::activation::{Inherited, InheritedListener};
use crate::Addr;

/// How many connections a listener lets wait for `accept`.
pub const BACKLOG: i32 = 1024;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A live broker already listens on this unix socket.
    #[error("{0}: a broker is already listening there")]
    InUse(PathBuf),
    /// Something that is not a socket is in the way.
    #[error("{0}: exists and is not a socket; not replacing it")]
    NotASocket(PathBuf),
    /// The runtime's event loop could not be set up.
    #[error("setting up the event loop: {0}")]
    EventLoop(#[source] io::Error),
    /// Binding failed.
    #[error("{addr}: {source}")]
    Bind {
        /// The address.
        addr: Addr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// A bound listening socket, non-blocking.
#[derive(Debug)]
pub enum Listener {
    /// A unix socket at `path`; `file` if we made it (the server removes
    /// it when it stops; an inherited one stays).
    Unix {
        /// The socket.
        listener: UnixListener,
        /// Its path (`(inherited)` for an unnamed passed one).
        path: PathBuf,
        /// The file we made, if we made it.
        file: Option<SocketFile>,
    },
    /// A TCP socket.
    Tcp(TcpListener),
}

/// Binds every address, then adopts every inherited listener, in that
/// order: what a server serves.
pub(crate) fn bind_all(
    addrs: &[Addr],
    inherited: Vec<Inherited>,
) -> Result<Vec<Listener>, ServeError> {
    let mut listeners = Vec::with_capacity(addrs.len() + inherited.len());
    for addr in addrs {
        listeners.push(Listener::bind(addr)?);
    }
    for passed in inherited {
        listeners.push(Listener::adopt(passed)?);
    }
    Ok(listeners)
}

/// A listener in a runtime's own types (`U` for unix, `T` for TCP), with
/// what a server needs to know of it.
#[derive(Debug)]
pub struct Bound<U, T> {
    /// The socket.
    pub socket: Socket<U, T>,
    id: ListenerId,
    addr: Addr,
    owned_file: Option<SocketFile>,
}

/// A unix or a TCP listener.
#[derive(Debug)]
pub enum Socket<U, T> {
    /// A unix socket (its connections can carry descriptors).
    Unix(U),
    /// A TCP socket.
    Tcp(T),
}

impl<U, T> Bound<U, T> {
    /// Where it listens (a TCP port 0 became the real port).
    pub fn local_addr(&self) -> &Addr {
        &self.addr
    }

    /// The socket file to remove when the server stops, if we made it.
    pub fn owned_file(&self) -> Option<&SocketFile> {
        self.owned_file.as_ref()
    }

    /// Which listener this is to the broker's budgets: its place in the
    /// list [`bind_all_with`] made.
    pub fn id(&self) -> ListenerId {
        self.id
    }

    /// Where a socket this (unix) listener accepted comes from: the peer's
    /// user, as `SO_PEERCRED` says (Linux).
    pub fn unix_origin(&self, socket: &impl AsFd) -> Origin {
        let cred = rustix::net::sockopt::socket_peercred(socket)
            .ok()
            .map(|cred| Cred {
                uid: cred.uid.as_raw(),
                gid: cred.gid.as_raw(),
            });
        Origin::unix(self.id, cred)
    }

    /// Where a connection this (TCP) listener accepted from `peer` comes from.
    pub fn tcp_origin(&self, peer: SocketAddr) -> Origin {
        Origin::tcp(self.id, peer.ip())
    }

    /// Whether it is a unix socket (its connections can carry descriptors).
    pub fn is_unix(&self) -> bool {
        matches!(self.socket, Socket::Unix(_))
    }

    /// The next connection waiting on `listener` (this listener's socket,
    /// as its runtime holds it), without waiting: `WouldBlock` when none
    /// does. With it, where it comes from: a unix peer's user, as
    /// `SO_PEERCRED` says (Linux), or a TCP peer's address.
    pub fn accept_from(&self, listener: impl AsFd) -> io::Result<(OwnedFd, Origin)> {
        let (socket, peer) = crate::stream::accept(listener)?;
        let origin = match self.socket {
            Socket::Unix(_) => self.unix_origin(&socket),
            Socket::Tcp(_) => {
                let peer = peer.and_then(|peer| SocketAddr::try_from(peer).ok());
                let peer = peer.ok_or_else(|| io::Error::other("a TCP peer without an address"))?;
                self.tcp_origin(peer)
            }
        };
        Ok((socket, origin))
    }
}

impl<S> Socket<S, S> {
    /// The socket, whichever kind it is.
    pub fn get(&self) -> &S {
        match self {
            Socket::Unix(socket) | Socket::Tcp(socket) => socket,
        }
    }
}

/// [`bind_all`], then each listener handed to its runtime: `unix` and `tcp`
/// wrap the std listeners in the runtime's types.
pub fn bind_all_with<U, T>(
    addrs: &[Addr],
    inherited: Vec<Inherited>,
    unix: impl Fn(UnixListener) -> io::Result<U>,
    tcp: impl Fn(TcpListener) -> io::Result<T>,
) -> Result<Vec<Bound<U, T>>, ServeError> {
    let mut wrapped = Vec::new();
    for (id, listener) in (0..).zip(bind_all(addrs, inherited)?) {
        let addr = listener.local_addr();
        let owned_file = listener.owned_file().cloned();
        let err = |source| ServeError::Bind {
            addr: addr.clone(),
            source,
        };
        let socket = match listener {
            Listener::Unix { listener, .. } => Socket::Unix(unix(listener).map_err(err)?),
            Listener::Tcp(listener) => Socket::Tcp(tcp(listener).map_err(err)?),
        };
        wrapped.push(Bound {
            socket,
            id,
            addr,
            owned_file,
        });
    }
    Ok(wrapped)
}

impl Listener {
    /// Binds `addr`: TCP with a backlog of [`BACKLOG`] (trying each
    /// address the name resolves to); a unix socket by the rules above.
    pub fn bind(addr: &Addr) -> Result<Listener, ServeError> {
        let err = |source| ServeError::Bind {
            addr: addr.clone(),
            source,
        };
        match addr {
            Addr::Tcp(host_port) => Ok(Listener::Tcp(bind_tcp(host_port.as_str()).map_err(err)?)),
            Addr::Unix(path) => {
                let (listener, file) = bind_unix(path)?;
                listener.set_nonblocking(true).map_err(err)?;
                Ok(Listener::Unix {
                    listener,
                    path: path.clone(),
                    file: Some(file),
                })
            }
        }
    }

    /// Takes a listener a service manager passed. Its mode and file are left
    /// as they come; it is made non-blocking.
    pub fn adopt(passed: Inherited) -> Result<Listener, ServeError> {
        let addr = passed
            .addr()
            .unwrap_or_else(|| Addr::Unix(PathBuf::from("(inherited)")));
        let err = |source| ServeError::Bind {
            addr: addr.clone(),
            source,
        };
        match passed.listener {
            InheritedListener::Unix(listener) => {
                listener.set_nonblocking(true).map_err(err)?;
                let Addr::Unix(path) = addr.clone() else {
                    unreachable!("a unix listener's address is a path")
                };
                Ok(Listener::Unix {
                    listener,
                    path,
                    file: None,
                })
            }
            InheritedListener::Tcp(listener) => {
                listener.set_nonblocking(true).map_err(err)?;
                Ok(Listener::Tcp(listener))
            }
        }
    }

    /// Where it listens (a TCP port 0 becomes the real port).
    pub fn local_addr(&self) -> Addr {
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
    pub fn owned_file(&self) -> Option<&SocketFile> {
        match self {
            Listener::Unix { file, .. } => file.as_ref(),
            Listener::Tcp(_) => None,
        }
    }
}

/// A unix socket file a broker made, and which file it was: when the
/// server stops it removes the path only if the path still names that file.
/// (A broker started after it took the path over may have replaced it; that
/// one's socket must stay.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the file if the path still names the one we made (checked
    /// and removed under the directory's lock, as brokers take paths); says
    /// whether it did.
    pub fn remove(&self) -> io::Result<bool> {
        use std::os::unix::fs::MetadataExt as _;
        let _lock = DirLock::take(parent_of(&self.path))?;
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) == (self.dev, self.ino) => {
                std::fs::remove_file(&self.path)?;
                Ok(true)
            }
            Ok(_) => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// [`SocketFile::remove`], logging what went wrong: for a server that
    /// is stopping.
    pub fn remove_logged(&self) {
        match self.remove() {
            Ok(true) => tracing::info!("removed {}", self.path.display()),
            Ok(false) => tracing::info!(
                "{}: another broker's socket is there now; leaving it",
                self.path.display()
            ),
            Err(e) => tracing::warn!("removing {}: {e}", self.path.display()),
        }
    }
}

/// Binds a TCP listener (trying each address `addr` resolves to), with a
/// backlog of [`BACKLOG`], non-blocking.
pub fn bind_tcp(addr: impl std::net::ToSocketAddrs) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(addr)?;
    // Listening again only changes the backlog (std asks for 128).
    rustix::net::listen(&listener, BACKLOG)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Binds a unix socket at `path` whose file is mode 0600 from the moment
/// the path exists.
///
/// Two brokers starting at once must not both take the path: the check and
/// the replacement happen under an exclusive lock on the directory, and the
/// socket listens before it appears, so whoever looks next finds it live.
fn bind_unix(path: &Path) -> Result<(UnixListener, SocketFile), ServeError> {
    use std::os::unix::fs::MetadataExt as _;
    let err = |source| ServeError::Bind {
        addr: Addr::Unix(path.to_owned()),
        source,
    };
    let parent = parent_of(path);
    let _lock = DirLock::take(parent).map_err(err)?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt as _;
            if !meta.file_type().is_socket() {
                return Err(ServeError::NotASocket(path.to_owned()));
            }
            if is_live(path).map_err(err)? {
                return Err(ServeError::InUse(path.to_owned()));
            }
            // A dead broker's leftover: the rename below replaces it.
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let private = PrivateDir::beside(parent).map_err(err)?;
    let staged = private.path.join("s");
    let listener = private.bind("s").map_err(err)?;
    set_mode(&staged, 0o600).map_err(err)?;
    rustix::net::listen(&listener, BACKLOG).map_err(|e| err(e.into()))?;
    let meta = std::fs::symlink_metadata(&staged).map_err(err)?;
    // Only the owner could reach it in the 0700 directory; it appears at
    // `path` already 0600 and listening. (A stale file there is replaced in
    // one step.)
    std::fs::rename(&staged, path).map_err(err)?;
    drop(private);
    let file = SocketFile {
        path: path.to_owned(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    Ok((listener, file))
}

/// The directory a path lives in (`.` for a bare name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// How long a broker waits for another to finish with a directory's lock.
const LOCK_PATIENCE: Duration = Duration::from_secs(2);

/// An exclusive `flock` on a directory, held while a broker decides whether
/// a socket path is free and takes it (or removes its own); released on
/// drop. Brokers hold it for a few system calls. Anyone who can open the
/// directory can take it too, so a broker waits [`LOCK_PATIENCE`] for it
/// and then says who is in the way, rather than hang.
struct DirLock {
    _dir: std::fs::File,
}

impl DirLock {
    fn take(dir: &Path) -> io::Result<DirLock> {
        use rustix::fs::FlockOperation::NonBlockingLockExclusive;
        let file = std::fs::File::open(dir)?;
        let give_up = std::time::Instant::now() + LOCK_PATIENCE;
        loop {
            match rustix::fs::flock(&file, NonBlockingLockExclusive) {
                Ok(()) => return Ok(DirLock { _dir: file }),
                Err(Errno::WOULDBLOCK) if std::time::Instant::now() < give_up => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(Errno::WOULDBLOCK) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WouldBlock,
                        format!(
                            "another process has held a lock on {} for {} s",
                            dir.display(),
                            LOCK_PATIENCE.as_secs()
                        ),
                    ))
                }
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Whether someone listens on the unix socket at `path`. The connect does
/// not wait: a live listener with a full backlog answers `EAGAIN`, which
/// is alive; only `ECONNREFUSED` (or no file any more) is stale. Anything
/// else is an error: we cannot tell, so we touch nothing.
pub(crate) fn is_live(path: &Path) -> io::Result<bool> {
    let socket = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?;
    let addr = SocketAddrUnix::new(path)?;
    match rustix::net::connect(&socket, &addr) {
        Ok(()) | Err(Errno::AGAIN) | Err(Errno::INPROGRESS) => Ok(true),
        Err(Errno::CONNREFUSED) | Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A fresh directory, mode 0700, beside a path; removed on drop.
struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    /// A name nobody can guess ahead (so nobody can take it first), made
    /// afresh if taken all the same.
    fn beside(parent: &Path) -> io::Result<PrivateDir> {
        use rand_core::RngCore as _;
        use std::os::unix::fs::DirBuilderExt as _;
        let mut attempts = 0;
        loop {
            // Short, so that the staged path is hardly longer than the
            // final one (`bind` takes at most 107 bytes of path).
            let path = parent.join(format!(".pb{:08x}", rand_core::OsRng.next_u32()));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {
                    // The umask may have taken bits away, never added any;
                    // say 0700 exactly all the same.
                    set_mode(&path, 0o700)?;
                    return Ok(PrivateDir { path });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 8 => attempts += 1,
                Err(e) => return Err(e),
            }
        }
    }
}

impl PrivateDir {
    /// A socket bound at `name` inside. A path too long for `bind` is
    /// reached through the directory's descriptor (`/proc/self/fd/N/name`).
    fn bind(&self, name: &str) -> io::Result<UnixListener> {
        use std::os::fd::AsRawFd as _;
        let path = self.path.join(name);
        if path.as_os_str().len() < MAX_SUN_PATH {
            return UnixListener::bind(&path);
        }
        let dir = std::fs::File::open(&self.path)?;
        UnixListener::bind(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()))
    }
}

/// The longest path `bind` takes, with its terminating zero.
const MAX_SUN_PATH: usize = 108;

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.path.join("s"));
        let _ = std::fs::remove_dir(&self.path);
    }
}

fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}
