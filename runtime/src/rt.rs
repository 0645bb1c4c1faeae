//! What the shared layer asks of an async runtime: spawn a task, sleep until
//! an instant, and watch a non-blocking socket for readiness. Everything
//! else (connecting, reading, writing, passing descriptors) is plain system
//! calls on the socket, made once here for every runtime.

use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::task::{Context, Poll};
use std::time::Instant;

/// Which readiness an operation waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    /// Bytes (or a connection) to take.
    Read,
    /// Room to write (or a connect that completed).
    Write,
}

/// An async runtime, as the shared layer needs it. `default()` is the
/// runtime to run on (for tokio, the current one).
pub trait Runtime: Clone + Default + Send + Sync + 'static {
    /// A socket registered with the runtime's reactor.
    type Io: Io;
    /// A spawned task: dropping it cancels the task.
    type Task: Task;
    /// A timer.
    type Sleep: Future<Output = ()> + Send + 'static;
    /// A channel as the application gets it: [`crate::Channel`] itself, or
    /// a wrapper that adds the runtime's own I/O traits.
    type Channel: From<crate::Channel<Self>> + Send + 'static;

    /// Registers a socket (already non-blocking) with the reactor.
    fn register(&self, socket: OwnedFd) -> io::Result<Self::Io>;

    /// Runs `future` on the runtime.
    fn spawn<F: Future<Output = ()> + Send + 'static>(&self, future: F) -> Self::Task;

    /// Completes at `deadline`.
    fn sleep_until(&self, deadline: Instant) -> Self::Sleep;
}

/// A registered socket.
pub trait Io: Send + Sync + Unpin + 'static {
    /// The socket.
    fn get_ref(&self) -> &OwnedFd;

    /// Ready when the socket may be ready for `interest` (a call may still
    /// say `WouldBlock`: then [`Io::poll_io`] waits again).
    fn poll_ready(&self, cx: &mut Context<'_>, interest: Interest) -> Poll<io::Result<()>>;

    /// Runs `op` (a non-blocking call on the socket) until it says
    /// something other than `WouldBlock`, waiting for readiness `on` its
    /// interest between tries. `op` may run before any wait (smol) or only
    /// after one (tokio): it must itself say `WouldBlock` when it is too
    /// early.
    fn poll_io<T>(&self, cx: &mut Context, on: Interest, op: impl Op<T>) -> Poll<io::Result<T>>;
}

/// A non-blocking call on a socket.
pub trait Op<R>: FnMut(&OwnedFd) -> io::Result<R> {}

impl<R, F: FnMut(&OwnedFd) -> io::Result<R>> Op<R> for F {}

/// A spawned task. Dropping it cancels it (it stops at its next await).
pub trait Task: Send + 'static {
    /// Lets it run on its own.
    fn detach(self);

    /// Cancels it, and completes once it stopped.
    fn cancel(self) -> impl Future<Output = ()> + Send;
}

/// Runs `op` on `io` once it is ready (see [`Io::poll_io`]).
pub async fn io<I: Io, R>(
    io: &I,
    interest: Interest,
    mut op: impl FnMut(&OwnedFd) -> io::Result<R>,
) -> io::Result<R> {
    std::future::poll_fn(|cx| io.poll_io(cx, interest, &mut op)).await
}
