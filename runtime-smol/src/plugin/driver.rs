//! The task that owns a plugin's socket: it writes what the session has,
//! reads what the broker sends, and runs the session's timers. A plugin that
//! reconnects goes on with the next connection (see `reconnect.rs`).

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use async_io::Timer;
use bytes::BytesMut;
use futures_lite::future;
use smol::channel::Sender;
use smol::Task;

use plugboard_core::session::SessionConfig;
use plugboard_os::WriteQueue;

use super::deliver::{deliver, end};
use super::{reconnect, reply, Inner, PluginError, Reconnect, Shared};
use crate::addr::Addr;
use crate::io::Stream;

const READ_SIZE: usize = 64 * 1024;

/// Starts the driver on a connected socket. `ready` learns when the broker
/// said hello (or that it never will). With `reconnect`, a lost connection
/// is followed by new ones to the address, with sessions made from the
/// config. Dropping the task stops it.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    stream: Stream,
    ready: Sender<Result<(), PluginError>>,
    reconnect: Option<(Addr, Reconnect, SessionConfig)>,
) -> Task<()> {
    smol::spawn(async move {
        run(shared.clone(), stream, Some(ready)).await;
        if let Some((addr, policy, config)) = reconnect {
            reconnect::supervise(shared, addr, policy, config).await;
        }
    })
}

/// What woke the driver.
enum Woke {
    Read(io::Result<usize>),
    Flush,
    Timer,
}

/// Drives the session in `shared` over `stream` until the connection is
/// over (ended, or lost when the plugin reconnects). `ready` learns when the
/// broker said hello, or that it never will on this connection.
pub(crate) async fn run(
    shared: Arc<Shared>,
    stream: Stream,
    mut ready: Option<Sender<Result<(), PluginError>>>,
) {
    let epoch = shared.lock().epoch;
    let mut fds = Vec::new();
    let mut buf = BytesMut::with_capacity(READ_SIZE);
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
                    (Some(e), _) => reply(&tx, Err(e.clone())),
                    (None, true) => reply(&tx, Ok(())),
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
            stream.shutdown_write();
            return;
        }
        // Reading comes first when several are ready; a deadline that
        // passed meanwhile is handled below all the same.
        let woke = future::or(
            async { Woke::Read(stream.read(&mut buf, READ_SIZE, &mut fds).await) },
            future::or(
                async {
                    shared.flush.notified().await;
                    Woke::Flush
                },
                async {
                    match timeout {
                        Some(at) => Timer::at(at).await,
                        None => Timer::never().await,
                    };
                    Woke::Timer
                },
            ),
        )
        .await;
        let mut inner = shared.lock();
        let now = inner.clock.now();
        match woke {
            Woke::Read(Ok(0)) => inner.session.handle_eof(now),
            // Errors end the session; its Closed event says why.
            Woke::Read(Ok(_)) => match hand_over(&mut inner, now, &buf, &mut fds) {
                Ok(()) => buf.clear(),
                Err(reason) => end(&mut inner, reason),
            },
            Woke::Read(Err(e)) => end(&mut inner, format!("read failed: {e}")),
            Woke::Flush | Woke::Timer => {}
        }
        if timeout.is_some_and(|at| at <= std::time::Instant::now()) {
            inner.session.handle_timeout(now);
        }
    }
}

/// Gives the session what was read, and the descriptors that came with it
/// (they belong to frames at or after the start of `input`, in order).
fn hand_over(
    inner: &mut Inner,
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
fn drain(shared: &Arc<Shared>, inner: &mut Inner, epoch: u64) {
    while inner.epoch == epoch {
        let Some(event) = inner.session.poll_event() else {
            break;
        };
        deliver(shared, inner, event);
    }
}
