//! [`Runtime`] for tokio: its tasks, timers and reactor (`AsyncFd`).

use std::future::Future;
use std::io;
use std::task::{Context, Poll};
use std::time::Instant;

use std::os::fd::OwnedFd;

use plugboard_runtime::{Interest, Io, Op, Runtime, Task};
use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};
use tokio::runtime::Handle;

/// The tokio runtime that was current when it was made.
#[derive(Clone, Debug)]
pub struct Tokio(Handle);

impl Default for Tokio {
    /// The current runtime. Panics outside one, as `tokio::spawn` does.
    fn default() -> Self {
        Tokio(Handle::current())
    }
}

/// A socket in tokio's reactor.
pub struct TokioIo(AsyncFd<OwnedFd>);

/// A tokio task; dropping it aborts it.
pub struct TokioTask(Option<tokio::task::JoinHandle<()>>);

impl Runtime for Tokio {
    type Io = TokioIo;
    type Task = TokioTask;
    type Sleep = tokio::time::Sleep;
    type Channel = crate::Channel;

    fn register(&self, socket: OwnedFd) -> io::Result<TokioIo> {
        let _entered = self.0.enter();
        // SAFETY: an `OwnedFd` owns its descriptor: it stays open, and the
        // same, until the `AsyncFd` that holds it drops it.
        let registered = unsafe { AsyncFd::register(socket) };
        registered.map(TokioIo).map_err(io::Error::from)
    }

    fn spawn<F: Future<Output = ()> + Send + 'static>(&self, future: F) -> TokioTask {
        TokioTask(Some(self.0.spawn(future)))
    }

    fn sleep_until(&self, deadline: Instant) -> tokio::time::Sleep {
        let _entered = self.0.enter();
        tokio::time::sleep_until(deadline.into())
    }
}

impl Io for TokioIo {
    fn get_ref(&self) -> &OwnedFd {
        self.0.get_ref()
    }

    fn poll_ready(&self, cx: &mut Context<'_>, interest: Interest) -> Poll<io::Result<()>> {
        // The guard is dropped without clearing: the next call finds out.
        self.guard(cx, interest).map_ok(drop)
    }

    fn poll_io<T>(&self, cx: &mut Context, on: Interest, op: impl Op<T>) -> Poll<io::Result<T>> {
        let mut op = op;
        loop {
            let mut guard = std::task::ready!(self.guard(cx, on))?;
            // `WouldBlock` clears the readiness, and the loop waits again.
            if let Ok(result) = guard.try_io(|fd| op(fd.get_ref())) {
                return Poll::Ready(result);
            }
        }
    }
}

impl TokioIo {
    fn guard<'a>(
        &'a self,
        cx: &mut Context<'_>,
        interest: Interest,
    ) -> Poll<io::Result<AsyncFdReadyGuard<'a, OwnedFd>>> {
        match interest {
            Interest::Read => self.0.poll_read_ready(cx),
            Interest::Write => self.0.poll_write_ready(cx),
        }
    }
}

impl Task for TokioTask {
    fn detach(mut self) {
        self.0.take(); // a dropped JoinHandle leaves its task running
    }

    async fn cancel(mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for TokioTask {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}
