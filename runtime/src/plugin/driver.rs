//! The task that owns a plugin's socket: it writes what the session has,
//! reads what the broker sends, and runs the session's timers. When the
//! session reconnects, it connects the sockets the session asks for.

use std::io;
use std::sync::Arc;

use async_channel::Sender;
use futures_lite::future;
use plugboard_core::addr::Addr;

use super::{drain, Inner, PluginError, Shared};
use crate::rt::Runtime;
use crate::stream::{ReadSize, Stream};

/// The most one read asks the socket for.
const READ_SIZE: usize = 256 * 1024;

/// Connects and starts the driver. `ready` learns when the broker said hello.
pub(crate) async fn spawn<R: Runtime>(
    shared: Arc<Shared<R>>,
    addr: &Addr,
    ready: Sender<Result<(), PluginError>>,
) -> Result<R::Task, PluginError> {
    let stream = Stream::connect(&shared.rt, addr)
        .await
        .map_err(|e| PluginError::Unreachable {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?;
    let addr = addr.clone();
    let rt = shared.rt.clone();
    Ok(rt.spawn(run(shared, addr, stream, ready)))
}

/// Drives the session over its connections until it is over: this one,
/// and (if it reconnects) each it asks for.
async fn run<R: Runtime>(
    shared: Arc<Shared<R>>,
    addr: Addr,
    stream: Stream<R>,
    ready: Sender<Result<(), PluginError>>,
) {
    let mut ready = Some(ready);
    let mut stream = Some(stream);
    loop {
        if let Some(stream) = stream.take() {
            connection(&shared, stream, &mut ready).await;
        }
        // Between connections: the session waits, then asks for a socket.
        let (dial, timeout) = {
            let mut inner = shared.lock();
            drain(&shared, &mut inner);
            if inner.session.is_closed() {
                return;
            }
            let timeout = inner.session.poll_timeout();
            (
                inner.session.wants_dial(),
                timeout.map(|at| inner.clock.to_std(at)),
            )
        };
        let sleep = async {
            match timeout {
                Some(at) => shared.rt.sleep_until(at).await,
                None => future::pending().await,
            }
            None
        };
        let connect = async {
            match dial {
                true => Some(Stream::connect(&shared.rt, &addr).await),
                false => future::pending().await,
            }
        };
        let outcome = future::or(connect, sleep).await;
        let mut inner = shared.lock();
        let now = inner.clock.now();
        match outcome {
            Some(Ok(connected)) => {
                if inner
                    .session
                    .handle_connected(now, &mut rand_core::OsRng)
                    .is_ok()
                {
                    stream = Some(connected);
                }
            }
            Some(Err(e)) => {
                let _ =
                    inner
                        .session
                        .handle_dial_failed(now, &e.to_string(), &mut rand_core::OsRng);
            }
            None => inner.session.handle_timeout(now),
        }
    }
}

/// What woke the driver.
enum Wake {
    Read(io::Result<usize>),
    Flushed(io::Result<()>),
    Told,
    Timeout,
}

/// Drives the session over `stream` until it lets the connection go (it
/// ended, or was lost). `ready` learns when the broker said hello, or that
/// it never will on this connection. The socket is shared while it lasts:
/// whichever task has bytes for it writes them ([`Shared::transmit`]).
async fn connection<R: Runtime>(
    shared: &Arc<Shared<R>>,
    stream: Stream<R>,
    ready: &mut Option<Sender<Result<(), PluginError>>>,
) {
    let stream = Arc::new(stream);
    shared.lock().socket = Some(stream.clone());
    drive(shared, &stream, ready).await;
    let mut inner = shared.lock();
    inner.socket = None; // dropping the socket says so to the broker
    inner.out.clear();
}

async fn drive<R: Runtime>(
    shared: &Arc<Shared<R>>,
    stream: &Stream<R>,
    ready: &mut Option<Sender<Result<(), PluginError>>>,
) {
    let mut received = Vec::new();
    // Kept for the connection's life and zeroed only as it grows: the
    // session copies what it keeps, so a read needs no fresh memory.
    let mut buf = Vec::new();
    let mut size = ReadSize::new(READ_SIZE);
    let unix = stream.carries_fds();
    loop {
        let (timeout, blocked) = {
            let mut inner = shared.lock();
            // What the session has goes out (its last words too, as far as
            // the socket takes them).
            // (The driver is here anyway: what transmit leaves is seen below.)
            let _ = shared.transmit(&mut inner);
            let over = !inner.session.is_connected();
            if let Some(tx) = ready.take() {
                let reason = || {
                    let why = inner.ended.as_deref().or(inner.session.outage());
                    why.unwrap_or("the connection ended").to_owned()
                };
                match (over, inner.session.is_ready()) {
                    (true, _) => drop(tx.try_send(Err(PluginError::Disconnected(reason())))),
                    (false, true) => drop(tx.try_send(Ok(()))),
                    (false, false) => *ready = Some(tx),
                }
            }
            if over {
                return;
            }
            let timeout = inner
                .session
                .poll_timeout()
                .map(|at| inner.clock.to_std(at));
            (timeout, !inner.out.is_empty())
        };
        let want = size.next();
        if buf.len() < want {
            buf.resize(want, 0);
        }
        let read = async {
            let fds = unix.then_some(&mut received);
            Wake::Read(stream.recv_into(&mut buf[..want], fds).await)
        };
        let told = async {
            shared.flush.notified().await;
            Wake::Told
        };
        // The rest of what the socket did not take, once it has room.
        let flushed = async {
            match blocked {
                true => Wake::Flushed(stream.flush_with(|fd| shared.lock().out.write_to(fd)).await),
                false => future::pending().await,
            }
        };
        let sleep = async {
            match timeout {
                Some(at) => shared.rt.sleep_until(at).await,
                None => future::pending().await,
            }
            Wake::Timeout
        };
        let woke = future::or(read, future::or(flushed, future::or(told, sleep))).await;
        let mut inner = shared.lock();
        let now = inner.clock.now();
        match woke {
            Wake::Read(read) => {
                size.record(&read);
                match read {
                    Ok(0) => inner.session.handle_eof(now),
                    // Errors end the connection; the session's events say why.
                    Ok(n) => {
                        let Inner { session, fds, .. } = &mut *inner;
                        let input = &buf[..n];
                        if let Err(reason) = fds.hand_over(session, now, input, &mut received) {
                            session.handle_socket_error(now, &reason);
                        }
                    }
                    Err(e) => inner
                        .session
                        .handle_socket_error(now, &format!("read failed: {e}")),
                }
            }
            Wake::Flushed(Err(e)) => {
                inner.out.clear();
                inner
                    .session
                    .handle_socket_error(now, &format!("write failed: {e}"));
            }
            Wake::Flushed(Ok(())) | Wake::Told | Wake::Timeout => {}
        }
        // A deadline that passed is handled whatever woke us: a broker that
        // keeps the socket readable would otherwise starve the timers.
        if timeout.is_some_and(|at| at <= std::time::Instant::now()) {
            inner.session.handle_timeout(now);
        }
        // What that changed is handed over before the lock goes: a handle
        // must not find the session past a loss the runtime has not seen.
        let _ = shared.transmit(&mut inner);
    }
}
