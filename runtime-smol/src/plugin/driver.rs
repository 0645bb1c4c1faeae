//! The task that owns a plugin's socket: it writes what the session has,
//! reads what the broker sends, and runs the session's timers.

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use async_io::Timer;
use bytes::BytesMut;
use futures_lite::future;
use smol::channel::Sender;
use smol::Task;

use super::deliver::{deliver, end};
use super::{reply, Inner, PluginError, Shared};
use crate::io::Stream;

const READ_SIZE: usize = 64 * 1024;

/// Starts the driver on a connected socket. `ready` learns when the broker
/// said hello (or that it never will). Dropping the task stops it.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    stream: Stream,
    ready: Sender<Result<(), PluginError>>,
) -> Task<()> {
    smol::spawn(run(shared, stream, ready))
}

/// What woke the driver.
enum Woke {
    Read(io::Result<usize>),
    Flush,
    Timer,
}

async fn run(shared: Arc<Shared>, stream: Stream, ready: Sender<Result<(), PluginError>>) {
    let mut ready = Some(ready);
    let mut fds = Vec::new();
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    let mut queue = VecDeque::new();
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
            if let Err(e) = stream.write_queue(&mut queue).await {
                queue.clear();
                end(&mut shared.lock(), format!("write failed: {e}"));
            }
        }
        let (timeout, ended) = {
            let mut inner = shared.lock();
            drain(&shared, &mut inner);
            if let Some(tx) = ready.take() {
                match (&inner.ended, inner.session.is_ready()) {
                    (Some(reason), _) => reply(&tx, Err(PluginError::Disconnected(reason.clone()))),
                    (None, true) => reply(&tx, Ok(())),
                    (None, false) => ready = Some(tx),
                }
            }
            let timeout = inner
                .session
                .poll_timeout()
                .map(|at| inner.clock.to_std(at));
            (timeout, inner.ended.is_some())
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

/// Hands every session event to its waiter.
fn drain(shared: &Arc<Shared>, inner: &mut Inner) {
    while let Some(event) = inner.session.poll_event() {
        deliver(shared, inner, event);
    }
}
