//! The task that owns a plugin's socket: it writes what the session has,
//! reads what the broker sends, and runs the session's timers. A plugin that
//! reconnects goes on with the next connection (see `reconnect.rs`).

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use plugboard_core::session::SessionConfig;
use plugboard_os::WriteQueue;
use tokio::io::{AsyncReadExt, Interest};
use tokio::net::{tcp, unix, TcpStream, UnixStream};
use tokio::sync::oneshot;

use super::{deliver, end, reconnect, PluginError, Reconnect, Shared};
use crate::addr::Addr;
use crate::io::Writer;

const READ_SIZE: usize = 64 * 1024;

/// Stops a task (the driver, the direct listener) when the plugin is dropped.
pub(crate) struct TaskGuard(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Connects and starts the driver. `ready` learns when the broker said hello.
/// With `reconnect`, a lost connection is followed by new ones, with
/// sessions made from the config.
pub(crate) async fn spawn(
    shared: Arc<Shared>,
    addr: &Addr,
    ready: oneshot::Sender<Result<(), PluginError>>,
    reconnect: Option<(Reconnect, SessionConfig)>,
) -> Result<TaskGuard, PluginError> {
    let conn = Conn::connect(addr)
        .await
        .map_err(|e| PluginError::Unreachable {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?;
    let addr = addr.clone();
    let task = tokio::spawn(async move {
        run(shared.clone(), conn, Some(ready)).await;
        if let Some((policy, config)) = reconnect {
            reconnect::supervise(shared, addr, policy, config).await;
        }
    });
    Ok(TaskGuard(task))
}

/// A connected socket, before the handshake.
pub(crate) struct Conn {
    reader: Reader,
    writer: Writer,
}

impl Conn {
    pub(crate) async fn connect(addr: &Addr) -> io::Result<Conn> {
        Ok(match addr {
            Addr::Unix(path) => {
                let (reader, writer) = UnixStream::connect(path).await?.into_split();
                Conn {
                    reader: Reader::Unix(reader),
                    writer: Writer::Unix(writer),
                }
            }
            Addr::Tcp(host_port) => {
                let stream = TcpStream::connect(host_port).await?;
                let _ = stream.set_nodelay(true);
                let (reader, writer) = stream.into_split();
                Conn {
                    reader: Reader::Tcp(reader),
                    writer: Writer::Tcp(writer),
                }
            }
        })
    }
}

/// The read half of the connection: a unix socket may carry descriptors
/// (socketpair ends for direct channels).
enum Reader {
    Unix(unix::OwnedReadHalf),
    Tcp(tcp::OwnedReadHalf),
}

impl Reader {
    /// Reads into `buf` (the session copies what it keeps, so one buffer,
    /// initialized once, serves every read).
    async fn read(&mut self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
        match self {
            Reader::Unix(r) => {
                let s = r.as_ref();
                s.async_io(Interest::READABLE, || {
                    plugboard_os::fdpass::recv_with_fds(s, buf, fds)
                })
                .await
            }
            Reader::Tcp(r) => r.read(buf).await,
        }
    }
}

/// Drives the session in `shared` over `conn` until the connection is over
/// (ended, or lost when the plugin reconnects). `ready` learns when the
/// broker said hello, or that it never will on this connection.
pub(crate) async fn run(
    shared: Arc<Shared>,
    conn: Conn,
    mut ready: Option<oneshot::Sender<Result<(), PluginError>>>,
) {
    let Conn { mut reader, writer } = conn;
    let epoch = shared.lock().epoch;
    let mut fds = Vec::new();
    let mut buf = vec![0u8; READ_SIZE];
    let mut queue = WriteQueue::new();
    loop {
        // Everything the session has goes out first.
        loop {
            {
                let mut inner = shared.lock();
                while let Some(bytes) = inner.session.poll_transmit() {
                    queue.push(bytes);
                }
            }
            if queue.is_empty() {
                break;
            }
            if let Err(e) = writer.flush(&mut queue).await {
                queue.clear();
                end(&mut shared.lock(), format!("write failed: {e}"));
            }
        }
        let (timeout, ended) = {
            let mut inner = shared.lock();
            drain(&shared, &mut inner, epoch);
            // Over for good, or lost (and the next connection is not ours).
            let over = match (&inner.ended, inner.epoch != epoch) {
                (Some(reason), _) => Some(PluginError::Disconnected(reason.clone())),
                (None, true) => Some(inner.stale()),
                (None, false) => None,
            };
            if let Some(tx) = ready.take() {
                match (&over, inner.session.is_ready()) {
                    (Some(e), _) => drop(tx.send(Err(e.clone()))),
                    (None, true) => drop(tx.send(Ok(()))),
                    (None, false) => ready = Some(tx),
                }
            }
            let timeout = inner
                .session
                .poll_timeout()
                .map(|at| inner.clock.to_tokio(at));
            (timeout, over.is_some())
        };
        if ended {
            return; // dropping the write half says so to the broker
        }
        let sleep = async {
            match timeout {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            read = reader.read(&mut buf, &mut fds) => {
                let mut inner = shared.lock();
                let now = inner.clock.now();
                match read {
                    Ok(0) => inner.session.handle_eof(now),
                    // Errors end the session; its Closed event says why.
                    Ok(n) => {
                        if let Err(reason) = hand_over(&mut inner, now, &buf[..n], &mut fds) {
                            end(&mut inner, reason);
                        }
                    }
                    Err(e) => end(&mut inner, format!("read failed: {e}")),
                }
            }
            _ = shared.flush.notified() => {}
            _ = sleep => {
                let mut inner = shared.lock();
                let now = inner.clock.now();
                inner.session.handle_timeout(now);
            }
        }
    }
}

/// Gives the session what was read, and the descriptors that came with it
/// (they belong to frames at or after the start of `input`, in order).
fn hand_over(
    inner: &mut super::Inner,
    now: plugboard_core::Instant,
    input: &[u8],
    fds: &mut Vec<OwnedFd>,
) -> Result<(), String> {
    if fds.is_empty() {
        let _ = inner.session.handle_input(now, input);
        return Ok(());
    }
    let last = fds.len() - 1;
    for (i, fd) in fds.drain(..).enumerate() {
        let token = inner.keep_fd(fd)?;
        let bytes = if i == last { input } else { &[][..] };
        let _ = inner.session.handle_input_with_fd(now, bytes, token);
    }
    Ok(())
}

/// Hands every session event to its waiter, while the connection is the
/// current one (what a lost one still had to say is for nobody).
fn drain(shared: &Arc<Shared>, inner: &mut super::Inner, epoch: u64) {
    while inner.epoch == epoch {
        let Some(event) = inner.session.poll_event() else {
            break;
        };
        deliver(shared, inner, event);
    }
}
