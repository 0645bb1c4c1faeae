//! What every runtime does the same around the core's broker: make it with
//! the OS's randomness, carry out the events that are no runtime's own
//! (socketpairs, log lines), and write its log entries.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use plugboard_core::broker::{
    Broker, BrokerConfig, ConnId, Event, Hub, Limits, LogEntry, PairId, Policy, Transmit,
};
use plugboard_core::Instant;
use rand_chacha::rand_core::SeedableRng as _;
use rand_chacha::ChaCha20Rng;

use crate::log_limit::{self, LogLimiter, Suppressed};
use crate::{Clock, SocketPairs};

/// How long a connection the broker ended may take to accept its last
/// bytes before its socket closes anyway: a peer that stopped reading would
/// otherwise hold it open for ever.
pub const LAST_WORDS_GRACE: Duration = Duration::from_secs(2);

/// How long a server shutting down waits for its connections' last words.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// A broker for a server on a real OS: its randomness (ephemeral keys,
/// tokens) seeded from the OS, and socketpair ends passed over unix sockets
/// (every runtime here can); unix peers told apart by user, the broker's
/// own being the process's.
pub fn new_broker(config: BrokerConfig) -> Broker {
    let (config, rng) = on_this_os(config);
    Broker::new(config, rng)
}

/// As [`new_broker`], the hub alone: for a runtime that drives each
/// connection's `Link` on its own task.
pub fn new_hub(config: BrokerConfig) -> Hub {
    let (config, rng) = on_this_os(config);
    Hub::new(config, rng)
}

fn on_this_os(mut config: BrokerConfig) -> (BrokerConfig, Box<ChaCha20Rng>) {
    config.fd_passing = true;
    config
        .owner_uid
        .get_or_insert_with(|| rustix::process::getuid().as_raw());
    let rng = ChaCha20Rng::from_rng(rand_core::OsRng).expect("the OS has randomness");
    (config, Box::new(rng))
}

/// Reloads a running broker's policy and limits ([`Hub::reconfigure`])
/// from any thread: a server's own way of reaching its broker, wrapped.
#[derive(Clone)]
pub struct ReloadHandle(Arc<dyn Fn(Policy, Limits) + Send + Sync>);

impl ReloadHandle {
    /// A handle that calls `reload`.
    pub fn new(reload: impl Fn(Policy, Limits) + Send + Sync + 'static) -> Self {
        ReloadHandle(Arc::new(reload))
    }

    /// Hands the broker a new policy and new limits: they decide what comes
    /// next; what is held stays (see [`Limits::keep_fixed`] for the limits a
    /// running broker keeps).
    pub fn reload(&self, policy: Policy, limits: Limits) {
        (self.0)(policy, limits)
    }
}

/// What the glue here asks of a broker: the whole one ([`Broker`], with
/// its links) or its [`Hub`] (whose transmits and last words are plaintext
/// for each connection's link).
pub trait BrokerFace {
    /// The next event.
    fn poll_event(&mut self) -> Option<Event>;
    /// The next bytes for `conn`.
    fn poll_transmit(&mut self, conn: ConnId) -> Option<Transmit>;
    /// A socketpair was made, or not.
    fn socketpair_ready(&mut self, now: Instant, pair: PairId, ok: bool) -> bool;
}

macro_rules! face {
    ($ty:ty) => {
        impl BrokerFace for $ty {
            fn poll_event(&mut self) -> Option<Event> {
                <$ty>::poll_event(self)
            }
            fn poll_transmit(&mut self, conn: ConnId) -> Option<Transmit> {
                <$ty>::poll_transmit(self, conn)
            }
            fn socketpair_ready(&mut self, now: Instant, pair: PairId, ok: bool) -> bool {
                <$ty>::socketpair_ready(self, now, pair, ok)
            }
        }
    };
}
face!(Broker);
face!(Hub);

/// One line for a broker's [`LogEntry`] (`Event::Log`): a warning, or
/// at info (`plugboard serve`'s default level) every refusal and
/// disconnect with its cause and key; at most
/// [`LINES_PER_WINDOW`](crate::log_limit::LINES_PER_WINDOW) a cause per
/// window, and then how many were held back (with the next line).
/// Warnings are not held back.
pub fn log_entry(entry: &LogEntry) {
    static LIMITER: Mutex<Option<LogLimiter>> = Mutex::new(None);
    let cause = entry.counted.map_or("note", |(_, cause)| cause.label());
    // Warnings are the broker's own, already one per spell: never held.
    let (admitted, held) = if entry.warning {
        (true, Vec::new())
    } else {
        let mut limiter = LIMITER.lock().unwrap_or_else(|e| e.into_inner());
        let limiter = limiter.get_or_insert_with(LogLimiter::default);
        limiter.admit(std::time::Instant::now(), cause)
    };
    for Suppressed { cause, lines } in held {
        tracing::warn!(
            cause,
            "{lines} more lines of this cause were not logged in the last {:?}",
            log_limit::WINDOW
        );
    }
    if !admitted {
        return;
    }
    let key = entry.key.map(|k| k.to_string()).unwrap_or_default();
    let outcome = entry.counted.map_or("note", |(outcome, _)| outcome.label());
    let conn = entry.conn;
    let message = &entry.message;
    match entry.warning {
        true => tracing::warn!(conn, outcome, cause, "{message}"),
        false => tracing::info!(conn, %key, outcome, cause, "{message}"),
    }
}

/// A broker event only the runtime can carry out: its sockets are the
/// runtime's own.
#[derive(Debug)]
pub enum ConnEvent {
    /// The broker has output for the connection.
    Transmit(ConnId),
    /// The broker let go of the connection: write these last words (best
    /// effort, within [`LAST_WORDS_GRACE`]), then close. The socketpair
    /// ends meant for it are closed already.
    Close(ConnId, Bytes),
    /// The broker let go of a legacy connection whose channel was reset:
    /// close it with nothing more written, box-stream's goodbye included.
    Abort(ConnId),
    /// A legacy connection takes input again: read its socket.
    Resume(ConnId),
    /// A legacy connection's client was accepted by its plugin: hand its
    /// link the verdict (`Link::authorize(true)`, message 4) and carry its
    /// events.
    Authorized(ConnId),
}

/// The broker's next event for the runtime, once the ones before it that
/// are the same for every runtime are carried out: socketpairs made (see
/// [`SocketPairs::create`]), log entries written.
pub fn poll_event(
    broker: &mut impl BrokerFace,
    pairs: &mut SocketPairs,
    clock: &Clock,
) -> Option<ConnEvent> {
    loop {
        match broker.poll_event()? {
            Event::Transmit(conn) => return Some(ConnEvent::Transmit(conn)),
            Event::Close {
                conn,
                last_words,
                reason,
            } => {
                tracing::debug!(conn, "closing: {reason}");
                pairs.forget_conn(conn);
                return Some(ConnEvent::Close(conn, last_words));
            }
            Event::CreateSocketPair {
                pair,
                opener,
                target,
            } => pairs.create(broker, clock.now(), pair, opener, target),
            Event::Log(entry) => log_entry(&entry),
            Event::Authorized(conn) => return Some(ConnEvent::Authorized(conn)),
            Event::Resume(conn) => return Some(ConnEvent::Resume(conn)),
            Event::Abort { conn, reason } => {
                tracing::debug!(conn, "closing with no last words: {reason}");
                pairs.forget_conn(conn);
                return Some(ConnEvent::Abort(conn));
            }
        }
    }
}
