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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use plugboard_core::broker::{Broker, BrokerConfig, ConnId, Event, Origin};
use plugboard_core::PublicKey;
use plugboard_os::activation::Inherited;
use plugboard_os::{Bound, Socket, SocketPairs, WriteQueue, LAST_WORDS_GRACE, SHUTDOWN_GRACE};
use tokio::net::{tcp, unix, TcpListener, UnixListener};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::addr::Addr;
use crate::clock::Clock;
use crate::io::Writer;

pub use plugboard_os::ServeError;

/// How much a reader asks the socket for at once.
const READ_SIZE: usize = 256 * 1024;
/// How long a connection stays quiet before its read buffer is given back.
const IDLE_RELEASE: Duration = Duration::from_millis(100);
/// Most bytes a writer takes from the broker before writing them.
const WRITE_BATCH: usize = 256 * 1024;

/// A bound broker, ready to [`Server::run`].
pub struct Server {
    shared: Arc<Shared>,
    listeners: Vec<Listener>,
}

type Listener = Bound<UnixListener, TcpListener>;

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
    pairs: SocketPairs,
}

impl State {
    /// A connection is gone: the ends meant for it are closed (their
    /// peers see the end of the stream).
    fn forget_conn(&mut self, conn: ConnId) -> Option<Arc<ConnSignals>> {
        self.pairs.forget_conn(conn);
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

/// What the broker tells one connection's tasks.
#[derive(Default)]
struct ConnSignals {
    /// Output is waiting in the broker (for the writer).
    wake: Notify,
    /// The connection is over (for the reader).
    stop: Notify,
    /// The connection is over (for a writer stuck on a full socket).
    ended: Notify,
    is_ended: AtomicBool,
    /// The connection is over: these last words, then close.
    end: Mutex<Option<Bytes>>,
}

impl ConnSignals {
    fn end(&self, last_words: Bytes) {
        self.end
            .lock()
            .expect("not poisoned")
            .get_or_insert(last_words);
        self.is_ended.store(true, Ordering::Release);
        self.wake.notify_one();
        self.stop.notify_one();
        self.ended.notify_waiters();
    }

    /// Completes once the broker ended the connection.
    async fn ended(&self) {
        loop {
            let notified = self.ended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_ended.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    fn take_end(&self) -> Option<Bytes> {
        self.end.lock().expect("not poisoned").take()
    }
}

impl Server {
    /// Binds every address. A unix socket's file is mode 0600 from the
    /// moment it exists; a stale one (nobody listens) is replaced, a live
    /// one is not.
    pub async fn bind(config: BrokerConfig, addrs: &[Addr]) -> Result<Self, ServeError> {
        Self::bind_with(config, addrs, Vec::new()).await
    }

    /// Binds every address as [`Server::bind`] does, and serves on
    /// `inherited` listeners as well, after them (systemd socket
    /// activation: see [`plugboard_os::activation`]). An inherited unix
    /// socket's file belongs to whoever made it, so shutdown leaves it.
    pub async fn bind_with(
        config: BrokerConfig,
        addrs: &[Addr],
        inherited: Vec<Inherited>,
    ) -> Result<Self, ServeError> {
        let listeners = plugboard_os::bind_all_with(
            addrs,
            inherited,
            UnixListener::from_std,
            TcpListener::from_std,
        )?;
        Ok(Server {
            shared: Arc::new(Shared {
                clock: Clock::start(),
                state: Mutex::new(State {
                    broker: plugboard_os::new_broker(config),
                    conns: HashMap::new(),
                    pairs: SocketPairs::new(),
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
        let mut tasks = JoinSet::new();
        let mut sockets = Vec::new();
        for listener in self.listeners {
            sockets.extend(listener.owned_file().cloned());
            tasks.spawn(self.shared.clone().accept(listener));
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
        for file in sockets {
            file.remove_logged();
        }
    }
}

/// The next connection on `listener`, split, and where it comes from.
async fn accept(listener: &Listener) -> io::Result<(Reader, Writer, Origin)> {
    Ok(match &listener.socket {
        Socket::Unix(l) => {
            let stream = l.accept().await?.0;
            let origin = listener.unix_origin(&stream);
            let (reader, writer) = stream.into_split();
            (Reader::Unix(reader), Writer::Unix(writer), origin)
        }
        Socket::Tcp(l) => {
            let (stream, peer) = l.accept().await?;
            let _ = stream.set_nodelay(true);
            let (reader, writer) = stream.into_split();
            let origin = listener.tcp_origin(peer);
            (Reader::Tcp(reader), Writer::Tcp(writer), origin)
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
            |(reader, writer, origin)| self.clone().adopt(reader, writer, origin),
            tokio::time::sleep,
        )
        .await
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("a task panicked holding the broker")
    }

    /// Takes an accepted socket: the broker decides, tasks start.
    fn adopt(self: Arc<Self>, reader: Reader, writer: Writer, origin: Origin) {
        let signals = Arc::new(ConnSignals::default());
        let conn = {
            let mut state = self.lock();
            let now = self.clock.now();
            let conn = state.broker.accept(now, origin);
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
            // Asked first: a peer that keeps the socket readable must not
            // keep a connection the broker ended open.
            if signals.is_ended.load(Ordering::Acquire) {
                return;
            }
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

    async fn write(self: Arc<Self>, conn: ConnId, writer: Writer, signals: Arc<ConnSignals>) {
        let mut queue = WriteQueue::new();
        loop {
            signals.wake.notified().await;
            loop {
                // Take what the broker has, up to a batch (a frame that
                // carries a descriptor takes it along), then write it in as
                // few system calls as it takes.
                let taken = {
                    let mut state = self.lock();
                    let State { broker, pairs, .. } = &mut *state;
                    let taken = pairs.take_output(
                        broker,
                        conn,
                        &mut queue,
                        WRITE_BATCH,
                        writer.carries_fds(),
                    );
                    self.dispatch(&mut state);
                    taken
                };
                if queue.is_empty() && taken.is_ok() {
                    break;
                }
                let written = match taken {
                    Ok(()) => unless_ended(&signals, writer.flush(&mut queue)).await,
                    Err(e) => Err(e),
                };
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
                    // The socket may hold half a frame now: no last words.
                    return;
                }
            }
            if let Some(last_words) = signals.take_end() {
                // The last words, if the peer takes them within the grace;
                // then the socket closes whatever it does.
                queue.push(last_words);
                let _ = tokio::time::timeout(LAST_WORDS_GRACE, writer.flush(&mut queue)).await;
                return;
            }
        }
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
                    let State { broker, pairs, .. } = &mut *state;
                    pairs.create(broker, now, pair, opener, target);
                }
                Event::Log(entry) => plugboard_os::log_entry(&entry),
            }
        }
        self.timer.notify_one();
    }
}

/// Runs a write, unless the broker ends the connection meanwhile and the
/// write is still stuck a grace later (the peer stopped reading).
async fn unless_ended(
    signals: &ConnSignals,
    write: impl Future<Output = io::Result<()>>,
) -> io::Result<()> {
    tokio::select! {
        written = write => written,
        _ = async {
            signals.ended().await;
            tokio::time::sleep(LAST_WORDS_GRACE).await;
        } => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the connection ended and the peer does not read",
        )),
    }
}
