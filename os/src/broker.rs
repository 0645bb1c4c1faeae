//! What every runtime does the same around the core's broker: make it with
//! the OS's randomness, and write its log entries.

use std::time::Duration;

use plugboard_core::broker::{Broker, BrokerConfig, LogEntry};
use rand_chacha::rand_core::SeedableRng as _;
use rand_chacha::ChaCha20Rng;

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
pub fn new_broker(mut config: BrokerConfig) -> Broker {
    config.fd_passing = true;
    config
        .owner_uid
        .get_or_insert_with(|| rustix::process::getuid().as_raw());
    let rng = ChaCha20Rng::from_rng(rand_core::OsRng).expect("the OS has randomness");
    Broker::new(config, Box::new(rng))
}

/// One line for a broker's [`LogEntry`] (`Event::Log`).
pub fn log_entry(entry: &LogEntry) {
    let key = entry.key.map(|k| k.to_string()).unwrap_or_default();
    match (entry.code, entry.warning) {
        (Some(code), true) => tracing::warn!(conn = entry.conn, %code, "{}", entry.message),
        (None, true) => tracing::warn!(conn = entry.conn, "{}", entry.message),
        (Some(code), false) => tracing::info!(conn = entry.conn, %key, %code, "{}", entry.message),
        (None, false) => tracing::info!(conn = entry.conn, %key, "{}", entry.message),
    }
}
