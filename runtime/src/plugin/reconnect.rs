//! Reconnection: when the connection to the broker is lost, connect again
//! with jittered backoff, make a new session, take the name again and
//! restart the watch, then say so once.
//!
//! What was in flight on the lost connection fails ([`lose`]); what outlives
//! it (the incoming stream, the watch receivers, the event receivers, direct
//! channels) stays with the plugin. The protocol is the new session's.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_channel::bounded;
use futures_lite::future;
use plugboard_core::addr::Addr;
use plugboard_core::control::RequestId;
use plugboard_core::session::{Backoff, Session, SessionConfig, SessionError};
pub use plugboard_core::session::{ConnectionEvent, Reconnect};

use super::driver;
use super::{Inner, PluginError, Registration, Shared, Waiter};
use crate::rt::Runtime;
use crate::stream::Stream;

/// How long one attempt may take to connect its socket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection's driver, running once polled.
type Driver = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The connection is lost and the plugin reconnects: what was in flight on
/// it fails, its relayed channels become orphans (what they received can be
/// read, then they fail), and the first loss of an outage is reported.
/// Called with the lock held, by `end`.
pub(crate) fn lose<R: Runtime>(inner: &mut Inner<R>, reason: String) {
    let lost = inner.epoch;
    inner.epoch += 1;
    let error = PluginError::Reconnecting(reason.clone());
    for (_, waiter) in inner.waiters.drain() {
        waiter.fail(error.clone());
    }
    for (id, mut c) in std::mem::take(&mut inner.channels) {
        // What it had not read stays readable; the session goes.
        c.unread = inner.session.take_unread(id);
        c.end = inner.session.channel_end(id);
        c.lost = Some(format!("the connection to the broker was lost: {reason}"));
        c.wake_reader();
        c.wake_writer();
        inner.orphans.insert((lost, id), c);
    }
    inner.paths.clear(); // accepts waiting for a path fail
    inner.fds.clear();
    // The first loss of an outage is reported; later ones (of attempts)
    // only say why requests fail now.
    if inner.down.replace(reason.clone()).is_none() {
        inner.report(ConnectionEvent::Lost { reason });
    }
}

/// Replaces lost connections until the plugin is dropped (the task is
/// aborted then). Called once the first connection is lost.
pub(crate) async fn supervise<R: Runtime>(
    shared: Arc<Shared<R>>,
    addr: Addr,
    policy: Reconnect,
    config: SessionConfig,
) {
    loop {
        let mut backoff = Backoff::new(policy);
        let mut attempts = 0u32;
        let driver = loop {
            attempts = attempts.saturating_add(1);
            let wait = backoff.next(&mut rand_core::OsRng);
            shared
                .rt
                .sleep_until(std::time::Instant::now() + wait)
                .await;
            match attempt(&shared, &addr, &config).await {
                Ok(driver) => break driver,
                Err(reason) => {
                    tracing::info!("reconnecting to {addr}: attempt {attempts}: {reason}")
                }
            }
        };
        {
            let mut inner = shared.lock();
            inner.down = None;
            inner.report(ConnectionEvent::Reconnected { attempts });
        }
        tracing::info!("reconnected to {addr} after {attempts} attempts");
        driver.await;
    }
}

/// One attempt: connect, make a session, wait for the broker's hello and
/// restore the name and the watch, driving the connection meanwhile.
/// Returns the driver, to go on with, or why the attempt failed.
async fn attempt<R: Runtime>(
    shared: &Arc<Shared<R>>,
    addr: &Addr,
    config: &SessionConfig,
) -> Result<Driver, String> {
    let connect = async { Some(Stream::connect(&shared.rt, addr).await) };
    let timeout = async {
        let at = std::time::Instant::now() + CONNECT_TIMEOUT;
        shared.rt.sleep_until(at).await;
        None
    };
    let stream = match future::or(connect, timeout).await {
        Some(Ok(stream)) => stream,
        Some(Err(e)) => return Err(e.to_string()),
        None => return Err("timed out connecting".into()),
    };
    {
        let mut inner = shared.lock();
        let now = inner.clock.now();
        inner.session =
            Session::new(config.clone(), &mut rand_core::OsRng, now).map_err(|e| e.to_string())?;
        inner.live = true;
    }
    let (ready_tx, ready_rx) = bounded(1);
    let mut driver: Driver = Box::pin(driver::run(shared.clone(), stream, Some(ready_tx)));
    let restored = async {
        ready_rx
            .recv()
            .await
            .map_err(|_| PluginError::Disconnected("the driver stopped".into()))??;
        restore(shared).await
    };
    let lost = async {
        (&mut driver).await;
        None
    };
    let outcome = future::or(lost, async { Some(restored.await) }).await;
    let refused = match outcome {
        // Lost again before it was restored.
        None => return Err(shared.lock().down.clone().unwrap_or_default()),
        Some(Ok(())) => return Ok(driver),
        Some(Err(e)) => e.to_string(),
    };
    // Refused (or lost meanwhile): this connection is no use.
    super::end(&mut shared.lock(), refused.clone());
    shared.flush.notify_one();
    driver.await;
    Err(refused)
}

/// Takes the name again and restarts the watch, as they were.
async fn restore<R: Runtime>(shared: &Shared<R>) -> Result<(), PluginError> {
    let (registration, watching) = {
        let inner = shared.lock();
        (inner.registration.clone(), inner.watching)
    };
    if let Some(registration) = registration {
        let register = |inner: &mut Inner<R>| send_register(inner, registration);
        shared.call(true, register, Waiter::Registered).await?;
    }
    if watching {
        let watch = |inner: &mut Inner<R>| {
            let now = inner.clock.now();
            inner.session.watch(now)
        };
        shared.call(true, watch, Waiter::Watching).await?;
    }
    Ok(())
}

/// Asks for the name.
pub(super) fn send_register<R: Runtime>(
    inner: &mut Inner<R>,
    registration: Registration,
) -> Result<RequestId, SessionError> {
    let now = inner.clock.now();
    let Registration {
        name,
        wait,
        direct_addr,
    } = registration;
    inner.session.register(now, name, wait, direct_addr)
}
