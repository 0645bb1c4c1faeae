//! The task that owns a plugin's socket: it writes what the session has,
//! reads what the broker sends, and runs the session's timers. A plugin that
//! reconnects goes on with the next connection (see `reconnect.rs`).

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use async_channel::Sender;
use bytes::BytesMut;
use futures_lite::future;
use plugboard_core::addr::Addr;
use plugboard_core::session::SessionConfig;
use plugboard_os::WriteQueue;

use super::{deliver, end, reconnect, Inner, PluginError, Reconnect, Shared};
use crate::rt::Runtime;
use crate::stream::{ReadSize, Stream};

/// The most one read asks the socket for.
const READ_SIZE: usize = 256 * 1024;

/// Connects and starts the driver. `ready` learns when the broker said hello.
/// With `reconnect`, a lost connection is followed by new ones, with
/// sessions made from the config.
pub(crate) async fn spawn<R: Runtime>(
    shared: Arc<Shared<R>>,
    addr: &Addr,
    ready: Sender<Result<(), PluginError>>,
    reconnect: Option<(Reconnect, SessionConfig)>,
) -> Result<R::Task, PluginError> {
    let stream = Stream::connect(&shared.rt, addr)
        .await
        .map_err(|e| PluginError::Unreachable {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?;
    let addr = addr.clone();
    let rt = shared.rt.clone();
    Ok(rt.spawn(async move {
        run(shared.clone(), stream, Some(ready)).await;
        if let Some((policy, config)) = reconnect {
            reconnect::supervise(shared, addr, policy, config).await;
        }
    }))
}

/// What woke the driver.
enum Wake {
    Read(io::Result<usize>),
    Flush,
    Timeout,
}

/// Drives the session in `shared` over `stream` until the connection is
/// over (ended, or lost when the plugin reconnects). `ready` learns when the
/// broker said hello, or that it never will on this connection.
pub(crate) async fn run<R: Runtime>(
    shared: Arc<Shared<R>>,
    stream: Stream<R>,
    mut ready: Option<Sender<Result<(), PluginError>>>,
) {
    let epoch = shared.lock().epoch;
    let mut fds = Vec::new();
    let mut buf = BytesMut::new();
    let mut size = ReadSize::new(READ_SIZE);
    let mut queue = WriteQueue::new();
    let unix = stream.carries_fds();
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
            if let Err(e) = stream.flush(&mut queue).await {
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
                    (Some(e), _) => drop(tx.try_send(Err(e.clone()))),
                    (None, true) => drop(tx.try_send(Ok(()))),
                    (None, false) => ready = Some(tx),
                }
            }
            let timeout = inner
                .session
                .poll_timeout()
                .map(|at| inner.clock.to_std(at));
            (timeout, over.is_some())
        };
        if ended {
            return; // dropping the socket says so to the broker
        }
        buf.clear();
        let read = async {
            let fds = unix.then_some(&mut fds);
            Wake::Read(stream.read(&mut buf, size.next(), fds).await)
        };
        let flush = async {
            shared.flush.notified().await;
            Wake::Flush
        };
        let sleep = async {
            match timeout {
                Some(at) => shared.rt.sleep_until(at).await,
                None => future::pending().await,
            }
            Wake::Timeout
        };
        match future::or(read, future::or(flush, sleep)).await {
            Wake::Read(read) => {
                size.record(&read);
                let mut inner = shared.lock();
                let now = inner.clock.now();
                match read {
                    Ok(0) => inner.session.handle_eof(now),
                    // Errors end the session; its Closed event says why.
                    Ok(_) => {
                        if let Err(reason) = hand_over(&mut inner, now, &buf, &mut fds) {
                            end(&mut inner, reason);
                        }
                    }
                    Err(e) => end(&mut inner, format!("read failed: {e}")),
                }
            }
            Wake::Flush | Wake::Timeout => {}
        }
        // A deadline that passed is handled whatever woke us: a broker that
        // keeps the socket readable would otherwise starve the timers.
        if timeout.is_some_and(|at| at <= std::time::Instant::now()) {
            let mut inner = shared.lock();
            let now = inner.clock.now();
            inner.session.handle_timeout(now);
        }
    }
}

/// Gives the session what was read, and the descriptors that came with it
/// (they belong to frames at or after the start of `input`, in order).
fn hand_over<R: Runtime>(
    inner: &mut Inner<R>,
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
fn drain<R: Runtime>(shared: &Arc<Shared<R>>, inner: &mut Inner<R>, epoch: u64) {
    while inner.epoch == epoch {
        let Some(event) = inner.session.poll_event() else {
            break;
        };
        deliver(shared, inner, event);
    }
}
