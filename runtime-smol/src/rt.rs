//! [`Runtime`] for smol: tasks on smol's global executor, async-io's timers
//! and reactor.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use async_io::{Async, Timer};
use std::os::fd::OwnedFd;

use plugboard_runtime::{Interest, Io, Op, Runtime, Task};

/// smol (its global executor) and async-io.
#[derive(Clone, Copy, Debug, Default)]
pub struct Smol;

/// A socket in async-io's reactor.
pub struct SmolIo(Async<OwnedFd>);

/// A task on smol's global executor.
pub struct SmolTask(smol::Task<()>);

/// An async-io timer.
pub struct SmolSleep(Timer);

impl Runtime for Smol {
    type Io = SmolIo;
    type Task = SmolTask;
    type Sleep = SmolSleep;
    type Channel = plugboard_runtime::Channel<Smol>;

    fn register(&self, socket: OwnedFd) -> io::Result<SmolIo> {
        Async::new(socket).map(SmolIo)
    }

    fn spawn<F: Future<Output = ()> + Send + 'static>(&self, future: F) -> SmolTask {
        SmolTask(smol::spawn(future))
    }

    fn sleep_until(&self, deadline: Instant) -> SmolSleep {
        SmolSleep(Timer::at(deadline))
    }
}

impl Io for SmolIo {
    fn get_ref(&self) -> &OwnedFd {
        self.0.get_ref()
    }

    fn poll_ready(&self, cx: &mut Context<'_>, interest: Interest) -> Poll<io::Result<()>> {
        match interest {
            Interest::Read => self.0.poll_readable(cx),
            Interest::Write => self.0.poll_writable(cx),
        }
    }

    fn poll_io<T>(&self, cx: &mut Context, on: Interest, op: impl Op<T>) -> Poll<io::Result<T>> {
        let mut op = op;
        loop {
            match op(self.0.get_ref()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                result => return Poll::Ready(result),
            }
            // Ready again only once the reactor saw an event since.
            if let Err(e) = std::task::ready!(self.poll_ready(cx, on)) {
                return Poll::Ready(Err(e));
            }
        }
    }
}

impl Task for SmolTask {
    fn detach(self) {
        self.0.detach();
    }

    async fn cancel(self) {
        self.0.cancel().await;
    }
}

impl Future for SmolSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}
