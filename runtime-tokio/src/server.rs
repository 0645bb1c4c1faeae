//! The broker on tokio: listeners, one reader and one writer task per
//! connection, one timer task, all around one [`Broker`] state machine.
//!
//! The broker sits behind a mutex that is never held across an await:
//! each task locks it, hands it bytes or time, takes what it has, and lets
//! go. Output stays in the broker until the connection's writer can take it,
//! so a slow socket holds memory only as far as the broker's own bounds allow.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use plugboard_core::broker::{Broker, BrokerConfig, ConnId, Event, PairEnd, PairId};
use plugboard_core::control::TransportKind;
use plugboard_core::PublicKey;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{tcp, unix, TcpListener, UnixListener};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::addr::Addr;
use crate::clock::Clock;

/// How much a reader asks the socket for at once.
const READ_SIZE: usize = 256 * 1024;
/// How long a connection stays quiet before its read buffer is given back.
const IDLE_RELEASE: Duration = Duration::from_millis(100);
/// Most bytes a writer takes from the broker before writing them.
const WRITE_BATCH: usize = 256 * 1024;
/// How long shutdown waits for the last words to be written.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

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
        listener: UnixListener,
        path: PathBuf,
        owned: bool,
    },
    Tcp(TcpListener),
}

struct Shared {
    clock: Clock,
    state: Mutex<State>,
    /// Wakes the timer task when a call may have moved the next deadline.
    timer: Notify,
}

struct State {
    broker: Broker,
    conns: HashMap<ConnId, Arc<ConnSignals>>,
    /// Socketpair ends on their way to their connections.
    pairs: HashMap<(PairId, PairEnd), (ConnId, OwnedFd)>,
}

impl State {
    /// A connection is gone: the ends meant for it are closed (their
    /// peers see the end of the stream).
    fn forget_conn(&mut self, conn: ConnId) -> Option<Arc<ConnSignals>> {
        self.pairs.retain(|_, (to, _)| *to != conn);
        self.conns.remove(&conn)
    }
}

/// The read half of a connection.
enum Reader {
    Unix(unix::OwnedReadHalf),
    Tcp(tcp::OwnedReadHalf),
}

impl Reader {
    async fn readable(&self) -> io::Result<()> {
        match self {
            Reader::Unix(r) => r.readable().await,
            Reader::Tcp(r) => r.readable().await,
        }
    }

    fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Reader::Unix(r) => r.try_read_buf(buf),
            Reader::Tcp(r) => r.try_read_buf(buf),
        }
    }
}

/// The write half of a connection: unix sockets can carry descriptors.
enum Writer {
    Unix(unix::OwnedWriteHalf),
    Tcp(tcp::OwnedWriteHalf),
}

impl Writer {
    fn as_async(&mut self) -> &mut (dyn AsyncWrite + Unpin + Send) {
        match self {
            Writer::Unix(w) => w,
            Writer::Tcp(w) => w,
        }
    }

    /// Writes `data` with `fd` riding on its first byte; returns how much
    /// of `data` went out.
    async fn send_with_fd(&mut self, data: &[u8], fd: &OwnedFd) -> io::Result<usize> {
        match self {
            Writer::Unix(w) => crate::fdpass::send_with_fd(w.as_ref(), data, fd.as_fd()).await,
            Writer::Tcp(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "descriptors cannot cross a TCP connection",
            )),
        }
    }
}

/// What the broker tells one connection's tasks.
#[derive(Default)]
struct ConnSignals {
    /// Output is waiting in the broker (for the writer).
    wake: Notify,
    /// The connection is over (for the reader).
    stop: Notify,
    /// The connection is over: these last words, then close.
    end: Mutex<Option<Bytes>>,
}

impl ConnSignals {
    fn end(&self, last_words: Bytes) {
        self.end
            .lock()
            .expect("not poisoned")
            .get_or_insert(last_words);
        self.wake.notify_one();
        self.stop.notify_one();
    }

    fn take_end(&self) -> Option<Bytes> {
        self.end.lock().expect("not poisoned").take()
    }
}

impl Server {
    /// Binds every address. A unix socket is created with mode 0600; a
    /// stale socket file (nobody answers on it) is replaced, a live one is not.
    pub async fn bind(mut config: BrokerConfig, addrs: &[Addr]) -> Result<Self, ServeError> {
        // This runtime passes socketpair ends over unix sockets.
        config.fd_passing = true;
        let mut listeners = Vec::new();
        for addr in addrs {
            listeners.push(bind(addr).await?);
        }
        let rng = ChaCha20Rng::from_rng(rand_core::OsRng).expect("the OS has randomness");
        Ok(Server {
            shared: Arc::new(Shared {
                clock: Clock::start(),
                state: Mutex::new(State {
                    broker: Broker::new(config, Box::new(rng)),
                    conns: HashMap::new(),
                    pairs: HashMap::new(),
                }),
                timer: Notify::new(),
            }),
            listeners,
        })
    }

    /// The addresses actually bound (a TCP port 0 becomes the real port).
    pub fn local_addrs(&self) -> Vec<Addr> {
        self.listeners
            .iter()
            .map(|l| match l {
                Listener::Unix { path, .. } => Addr::Unix(path.clone()),
                Listener::Tcp(t) => {
                    Addr::Tcp(t.local_addr().map(|a| a.to_string()).unwrap_or_default())
                }
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
        let mut tasks = JoinSet::new();
        let mut sockets = Vec::new();
        for listener in self.listeners {
            let shared = self.shared.clone();
            match listener {
                Listener::Unix {
                    listener: l,
                    path,
                    owned,
                } => {
                    if owned {
                        sockets.push(path);
                    }
                    tasks.spawn(async move {
                        loop {
                            match l.accept().await {
                                Ok((stream, _)) => {
                                    let (reader, writer) = stream.into_split();
                                    shared.clone().adopt(
                                        Reader::Unix(reader),
                                        Writer::Unix(writer),
                                        TransportKind::Unix,
                                    )
                                }
                                Err(e) => tracing::warn!("accept on a unix socket: {e}"),
                            }
                        }
                    });
                }
                Listener::Tcp(l) => {
                    tasks.spawn(async move {
                        loop {
                            match l.accept().await {
                                Ok((stream, _)) => {
                                    let _ = stream.set_nodelay(true);
                                    let (reader, writer) = stream.into_split();
                                    shared.clone().adopt(
                                        Reader::Tcp(reader),
                                        Writer::Tcp(writer),
                                        TransportKind::Tcp,
                                    )
                                }
                                Err(e) => tracing::warn!("accept on a tcp socket: {e}"),
                            }
                        }
                    });
                }
            }
        }
        tasks.spawn(self.shared.clone().timers());
        shutdown.await;
        tasks.abort_all();

        tracing::info!("shutting down");
        let writers: Vec<Arc<ConnSignals>> = {
            let mut state = self.shared.lock();
            let now = self.shared.clock.now();
            state.broker.shutdown(now);
            let writers = state.conns.values().cloned().collect();
            self.shared.dispatch(&mut state);
            writers
        };
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while writers.iter().any(|w| Arc::strong_count(w) > 1)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for path in sockets {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Binds every address as [`Server::bind`] does, and serves on
    /// `inherited` listeners as well (systemd socket activation: see
    /// [`crate::activation`]). An inherited unix socket's file belongs to
    /// whoever made it, so shutdown leaves it in place.
    pub async fn bind_with(
        config: BrokerConfig,
        addrs: &[Addr],
        inherited: Vec<crate::activation::Inherited>,
    ) -> Result<Self, ServeError> {
        use crate::activation::InheritedListener;
        let mut server = Self::bind(config, addrs).await?;
        for listener in inherited {
            let addr = listener
                .addr()
                .unwrap_or_else(|| Addr::Unix(PathBuf::from("(inherited)")));
            let err = |source| ServeError::Bind {
                addr: addr.clone(),
                source,
            };
            server.listeners.push(match listener.listener {
                InheritedListener::Unix(l) => {
                    l.set_nonblocking(true).map_err(err)?;
                    let path = l
                        .local_addr()
                        .ok()
                        .and_then(|a| a.as_pathname().map(PathBuf::from))
                        .unwrap_or_default();
                    Listener::Unix {
                        listener: UnixListener::from_std(l).map_err(err)?,
                        path,
                        owned: false,
                    }
                }
                InheritedListener::Tcp(l) => {
                    l.set_nonblocking(true).map_err(err)?;
                    Listener::Tcp(TcpListener::from_std(l).map_err(err)?)
                }
            });
        }
        Ok(server)
    }
}

async fn bind(addr: &Addr) -> Result<Listener, ServeError> {
    let err = |source| ServeError::Bind {
        addr: addr.clone(),
        source,
    };
    match addr {
        Addr::Tcp(host_port) => Ok(Listener::Tcp(
            TcpListener::bind(host_port).await.map_err(err)?,
        )),
        Addr::Unix(path) => {
            if path.exists() {
                if tokio::net::UnixStream::connect(path).await.is_ok() {
                    return Err(ServeError::InUse(path.clone()));
                }
                // Nobody answers: a dead broker's leftover.
                std::fs::remove_file(path).map_err(err)?;
            }
            let listener = UnixListener::bind(path).map_err(err)?;
            set_private(path).map_err(err)?;
            Ok(Listener::Unix {
                listener,
                path: path.clone(),
                owned: true,
            })
        }
    }
}

/// Mode 0600: only the owner's processes may connect.
fn set_private(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("a task panicked holding the broker")
    }

    /// Takes an accepted socket: the broker decides, tasks start.
    fn adopt(self: Arc<Self>, reader: Reader, writer: Writer, transport: TransportKind) {
        let signals = Arc::new(ConnSignals::default());
        let conn = {
            let mut state = self.lock();
            let now = self.clock.now();
            let conn = state.broker.accept(now, transport);
            if let Ok(conn) = conn {
                state.conns.insert(conn, signals.clone());
            }
            self.dispatch(&mut state);
            conn
        };
        let Ok(conn) = conn else {
            return; // refused: the socket is dropped, the broker logged why
        };
        tokio::spawn(self.clone().read(conn, reader, signals.clone()));
        tokio::spawn(self.write(conn, writer, signals));
    }

    async fn read(self: Arc<Self>, conn: ConnId, reader: Reader, signals: Arc<ConnSignals>) {
        // An idle connection holds no read buffer: one is taken when the
        // socket is readable, and given back once the socket stayed quiet
        // for a moment (10,000 idle connections would otherwise pin a
        // buffer each; giving it back at every drained read would cost a
        // fresh allocation per message).
        let mut buf = BytesMut::new();
        loop {
            let holding = buf.capacity() > 0 && buf.is_empty();
            // Made only if polled: a busy socket is ready first (`biased`),
            // so no timer is armed per read.
            let quiet = async {
                match holding {
                    true => tokio::time::sleep(IDLE_RELEASE).await,
                    false => std::future::pending().await,
                }
            };
            let ready = tokio::select! {
                biased;
                r = reader.readable() => r,
                // The broker ended the connection: stop reading.
                _ = signals.stop.notified() => return,
                _ = quiet => {
                    buf = BytesMut::new();
                    continue;
                }
            };
            if buf.capacity() - buf.len() < READ_SIZE / 4 {
                buf.reserve(READ_SIZE);
            }
            let result = match ready {
                Ok(()) => match reader.try_read_buf(&mut buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    result => result,
                },
                Err(e) => Err(e),
            };
            let mut state = self.lock();
            let now = self.clock.now();
            let gone = !matches!(result, Ok(n) if n > 0);
            match result {
                Ok(0) => state.broker.handle_eof(now, conn),
                Ok(_) => state.broker.handle_input_owned(now, conn, buf.split()),
                Err(e) => state.broker.handle_disconnect(now, conn, &e.to_string()),
            }
            if gone && state.forget_conn(conn).is_some() {
                signals.end(Bytes::new());
            }
            self.dispatch(&mut state);
            if gone {
                return;
            }
        }
    }

    async fn write(self: Arc<Self>, conn: ConnId, mut writer: Writer, signals: Arc<ConnSignals>) {
        let mut queue = std::collections::VecDeque::new();
        loop {
            signals.wake.notified().await;
            loop {
                // Take what the broker has (up to a batch, or up to a frame
                // that carries a descriptor), then write it in as few system
                // calls as it takes.
                let mut with_fd = None;
                {
                    let mut state = self.lock();
                    let mut taken = 0;
                    while taken < WRITE_BATCH {
                        let Some(t) = state.broker.poll_transmit(conn) else {
                            break;
                        };
                        if let Some(end) = t.fd {
                            with_fd = Some((t.data, state.pairs.remove(&end)));
                            break;
                        }
                        taken += t.data.len();
                        queue.push_back(t.data);
                    }
                    self.dispatch(&mut state);
                }
                if queue.is_empty() && with_fd.is_none() {
                    break;
                }
                let mut written = crate::io::write_queue(writer.as_async(), &mut queue).await;
                if let (Ok(()), Some((data, end))) = (&written, with_fd) {
                    written = match end {
                        Some((_, fd)) => self.send_with_fd(&mut writer, data, fd).await,
                        None => Err(io::Error::other("a socketpair end went missing")),
                    };
                }
                if let Err(e) = written {
                    queue.clear();
                    let mut state = self.lock();
                    let now = self.clock.now();
                    let reason = format!("write failed: {e}");
                    state.broker.handle_disconnect(now, conn, &reason);
                    if state.forget_conn(conn).is_some() {
                        signals.end(Bytes::new());
                    }
                    self.dispatch(&mut state);
                    break;
                }
            }
            if let Some(last_words) = signals.take_end() {
                let w = writer.as_async();
                let _ = w.write_all(&last_words).await;
                let _ = w.shutdown().await;
                return;
            }
        }
    }

    /// One `sendmsg` for the frame that announces a socketpair end; the
    /// rest of the frame, if the socket took only part, goes as usual. Our
    /// copy of the end closes once it is on its way.
    async fn send_with_fd(&self, writer: &mut Writer, data: Bytes, fd: OwnedFd) -> io::Result<()> {
        let sent = writer.send_with_fd(&data, &fd).await?;
        drop(fd);
        let rest = data.slice(sent..);
        if !rest.is_empty() {
            writer.as_async().write_all(&rest).await?;
        }
        Ok(())
    }

    /// Runs the broker's timers.
    async fn timers(self: Arc<Self>) {
        loop {
            let deadline = self.lock().broker.poll_timeout();
            let sleep = match deadline {
                Some(at) => tokio::time::sleep_until(self.clock.to_tokio(at)),
                None => tokio::time::sleep(Duration::from_secs(3600)),
            };
            tokio::select! {
                _ = sleep => {
                    let mut state = self.lock();
                    let now = self.clock.now();
                    state.broker.handle_timeout(now);
                    self.dispatch(&mut state);
                }
                _ = self.timer.notified() => {}
            }
        }
    }

    /// Carries out what the broker asked for. Called after every broker call.
    fn dispatch(&self, state: &mut State) {
        while let Some(event) = state.broker.poll_event() {
            match event {
                Event::Transmit(conn) => {
                    if let Some(signals) = state.conns.get(&conn) {
                        signals.wake.notify_one();
                    }
                }
                Event::Close {
                    conn,
                    last_words,
                    reason,
                } => {
                    tracing::debug!(conn, "closing: {reason}");
                    if let Some(signals) = state.forget_conn(conn) {
                        signals.end(last_words);
                    }
                }
                Event::CreateSocketPair {
                    pair,
                    opener,
                    target,
                } => {
                    let now = self.clock.now();
                    match std::os::unix::net::UnixStream::pair() {
                        Ok((a, b)) => {
                            // Hold both ends first: the broker queues them at once.
                            state
                                .pairs
                                .insert((pair, PairEnd::Opener), (opener, a.into()));
                            state
                                .pairs
                                .insert((pair, PairEnd::Target), (target, b.into()));
                            if !state.broker.socketpair_ready(now, pair, true) {
                                state.pairs.remove(&(pair, PairEnd::Opener));
                                state.pairs.remove(&(pair, PairEnd::Target));
                            }
                        }
                        Err(e) => {
                            tracing::warn!("socketpair: {e}; relaying instead");
                            state.broker.socketpair_ready(now, pair, false);
                        }
                    }
                }
                Event::Log(entry) => {
                    let key = entry.key.map(|k| k.to_string()).unwrap_or_default();
                    match entry.code {
                        Some(code) => {
                            tracing::info!(conn = entry.conn, %key, %code, "{}", entry.message)
                        }
                        None => tracing::info!(conn = entry.conn, %key, "{}", entry.message),
                    }
                }
            }
        }
        self.timer.notify_one();
    }
}
