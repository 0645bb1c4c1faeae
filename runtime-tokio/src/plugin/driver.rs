//! The task that owns a plugin's socket: it writes what the session has,
//! reads what the broker sends, and runs the session's timers.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{tcp, unix, TcpStream, UnixStream};
use tokio::sync::oneshot;

use super::{deliver, end, PluginError, Shared};
use crate::addr::Addr;

const READ_SIZE: usize = 64 * 1024;

/// Stops a task (the driver, the direct listener) when the plugin is dropped.
pub(crate) struct TaskGuard(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Connects and starts the driver. `ready` learns when the broker said hello.
pub(crate) async fn spawn(
    shared: Arc<Shared>,
    addr: &Addr,
    ready: oneshot::Sender<Result<(), PluginError>>,
) -> Result<TaskGuard, PluginError> {
    let unreachable = |e: std::io::Error| PluginError::Unreachable {
        addr: addr.to_string(),
        reason: e.to_string(),
    };
    let task = match addr {
        Addr::Unix(path) => {
            let stream = UnixStream::connect(path).await.map_err(unreachable)?;
            let (reader, writer) = stream.into_split();
            tokio::spawn(run(shared, Reader::Unix(reader), writer, ready))
        }
        Addr::Tcp(host_port) => {
            let stream = TcpStream::connect(host_port).await.map_err(unreachable)?;
            let _ = stream.set_nodelay(true);
            let (reader, writer) = stream.into_split();
            tokio::spawn(run(shared, Reader::Tcp(reader), writer, ready))
        }
    };
    Ok(TaskGuard(task))
}

/// The read half of the connection: a unix socket may carry descriptors
/// (socketpair ends for direct channels).
enum Reader {
    Unix(unix::OwnedReadHalf),
    Tcp(tcp::OwnedReadHalf),
}

impl Reader {
    async fn read(&mut self, buf: &mut BytesMut, fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
        match self {
            Reader::Unix(r) => crate::fdpass::recv_with_fds(r.as_ref(), buf, READ_SIZE, fds).await,
            Reader::Tcp(r) => r.read_buf(buf).await,
        }
    }
}

async fn run(
    shared: Arc<Shared>,
    mut reader: Reader,
    mut writer: impl AsyncWrite + Unpin,
    ready: oneshot::Sender<Result<(), PluginError>>,
) {
    let mut ready = Some(ready);
    let mut fds = Vec::new();
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    let mut queue = std::collections::VecDeque::new();
    loop {
        // Everything the session has goes out first.
        loop {
            {
                let mut inner = shared.lock();
                while let Some(bytes) = inner.session.poll_transmit() {
                    queue.push_back(bytes);
                }
            }
            if queue.is_empty() {
                break;
            }
            if let Err(e) = crate::io::write_queue(&mut writer, &mut queue).await {
                queue.clear();
                end(&mut shared.lock(), format!("write failed: {e}"));
            }
        }
        let (timeout, ended) = {
            let mut inner = shared.lock();
            drain(&shared, &mut inner);
            if let Some(tx) = ready.take() {
                match (&inner.ended, inner.session.is_ready()) {
                    (Some(reason), _) => {
                        drop(tx.send(Err(PluginError::Disconnected(reason.clone()))))
                    }
                    (None, true) => drop(tx.send(Ok(()))),
                    (None, false) => ready = Some(tx),
                }
            }
            let timeout = inner
                .session
                .poll_timeout()
                .map(|at| inner.clock.to_tokio(at));
            (timeout, inner.ended.is_some())
        };
        if ended {
            let _ = writer.shutdown().await;
            return;
        }
        let sleep = async {
            match timeout {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        buf.reserve(READ_SIZE);
        tokio::select! {
            read = reader.read(&mut buf, &mut fds) => {
                let mut inner = shared.lock();
                let now = inner.clock.now();
                match read {
                    Ok(0) => inner.session.handle_eof(now),
                    // Errors end the session; its Closed event says why.
                    Ok(_) => match hand_over(&mut inner, now, &buf, &mut fds) {
                        Ok(()) => buf.clear(),
                        Err(reason) => end(&mut inner, reason),
                    },
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

/// Hands every session event to its waiter.
fn drain(shared: &Arc<Shared>, inner: &mut super::Inner) {
    while let Some(event) = inner.session.poll_event() {
        deliver(shared, inner, event);
    }
}
