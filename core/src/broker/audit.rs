//! A look inside, for tests, the simulation and the fuzz targets (the
//! runtimes do not call these): what the broker holds, and self-checks of
//! its books against it, measured from the queues rather than from the
//! counters they check.

use crate::control::MAX_MESSAGE;
use crate::keys::PublicKey;
use crate::mux::HEADER_LEN;

use super::{ConnId, Connection, Hub, KeyUsage, Registry};

impl Hub {
    /// Connections held, in any stage.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Connections from `uid`'s processes, handshakes included.
    pub fn uid_connections(&self, uid: u32) -> usize {
        self.by_uid.get(&uid).copied().unwrap_or(0)
    }

    /// Channels between two keys (relayed, or waiting for an answer or a
    /// socketpair), whoever opened them.
    pub fn channels_between(&self, a: PublicKey, b: PublicKey) -> usize {
        self.shares.between(a, b)
    }

    /// Buffer bytes reserved, for opens and windows' growth: by `key`, or
    /// `None` for all.
    pub fn bytes_reserved(&self, key: Option<&PublicKey>) -> u64 {
        key.map_or(self.bytes.held(), |key| self.bytes.held_by(key))
    }

    /// Credit beyond the initial windows `receiver` granted and the relay
    /// passed on: to `sender`'s channels, or `None` for all.
    pub fn bytes_grown(&self, receiver: &PublicKey, sender: Option<&PublicKey>) -> u64 {
        let books = self.bytes.growth();
        let found = match sender {
            Some(sender) => books.shares.get(&(*receiver, *sender)),
            None => books.by_receiver.get(receiver),
        };
        found.copied().unwrap_or(0)
    }

    /// Socketpair ends not yet sent: charged to `key`, or `None` for all.
    pub fn descriptors_in_flight(&self, key: Option<&PublicKey>) -> usize {
        key.map_or(self.fds.held(), |key| self.fds.held_by(key))
    }

    /// Whether `conn` is still held.
    pub fn is_open(&self, conn: ConnId) -> bool {
        self.conns.contains_key(&conn)
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Connections watching.
    pub fn watchers(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.watchers.iter().copied()
    }

    /// What a key holds.
    pub fn key_usage(&self, key: &PublicKey) -> KeyUsage {
        self.usage.get(key).copied().unwrap_or_default()
    }

    /// Relayed channels (each counted once; an orphan, whose other end
    /// left, too).
    pub fn route_count(&self) -> usize {
        let ends: usize = self
            .conns
            .values()
            .filter_map(|c| c.port.as_ref())
            .map(|p| {
                let port = p.lock();
                port.route_ends() + port.orphans()
            })
            .sum();
        ends / 2
    }

    /// Opens not yet answered (including those waiting for a socketpair).
    pub fn pending_open_count(&self) -> usize {
        self.pending.len() + self.pairs.len()
    }

    /// Timers set.
    pub fn timer_count(&self) -> usize {
        self.timers.len()
    }

    /// Keys with anything accounted to them.
    pub fn key_count(&self) -> usize {
        self.usage.len()
    }

    /// Entries in the other budgets' books: pairs of keys with channels
    /// between them, keys holding byte reservations, socketpair ends in
    /// flight, users with connections, handshakes at the door. Zero once
    /// everyone has left.
    pub fn other_accounts(&self) -> usize {
        self.shares.len()
            + self.bytes.entries()
            + self.fds.held()
            + self.by_uid.len()
            + self.door.held()
            + self.legacy_sources.len()
    }

    /// Every key with what is accounted to it.
    pub fn key_usages(&self) -> impl Iterator<Item = (&PublicKey, &KeyUsage)> {
        self.usage.iter()
    }

    /// Bytes the broker holds for all connections: queued output, and input
    /// buffered short of a whole frame.
    pub fn buffered_bytes(&self) -> usize {
        self.conns
            .values()
            .map(|c| {
                c.queued()
                    + c.control.buffered()
                    + c.port
                        .as_ref()
                        .map_or(0, |port| port.lock().mux.buffered_input())
            })
            .sum()
    }

    /// Bytes queued for one connection.
    pub fn queued_for(&self, conn: ConnId) -> usize {
        self.conns.get(&conn).map_or(0, Connection::queued)
    }

    /// The key of a connection, once authenticated.
    pub fn key_of(&self, conn: ConnId) -> Option<PublicKey> {
        self.conns.get(&conn).and_then(|c| c.key)
    }

    /// The most the broker may buffer for what it holds now: per connection
    /// its control queue, two control messages, a frame each way and a read;
    /// per relayed direction a window and a frame.
    pub fn buffered_bound(&self) -> usize {
        let limits = &self.config.limits;
        let per_conn = limits.max_control_queue
            + 2 * MAX_MESSAGE
            + 2 * (limits.max_frame as usize + HEADER_LEN)
            + 64 * 1024;
        let per_route = 2 * (limits.max_window as usize + limits.max_frame as usize + HEADER_LEN);
        self.connection_count() * per_conn + self.route_count() * per_route
    }

    /// Checks the budgets of what a peer makes the broker hold against what
    /// it holds: the bytes it buffers ([`Hub::buffered_bound`]), the byte
    /// books ([`Hub::check_byte_books`]), bytes reserved and socketpair
    /// ends in flight per key and in all. (Counts of connections, channels
    /// and opens are checked where they are taken.)
    pub fn check_budgets(&self) -> Result<(), String> {
        let limits = &self.config.limits;
        let (buffered, bound) = (self.buffered_bytes(), self.buffered_bound());
        if buffered > bound {
            return Err(format!("{buffered} bytes buffered, over the bound {bound}"));
        }
        self.check_byte_books()?;
        if self.fds.held() > limits.max_descriptors {
            return Err(format!("{} socketpair ends in flight", self.fds.held()));
        }
        let (opens, grown) = self.bytes.totals();
        if opens > limits.max_bytes || grown > limits.max_grown_bytes {
            return Err(format!(
                "{opens} bytes reserved for opens, {grown} for growth"
            ));
        }
        let per_key = limits.max_grown_bytes_per_key;
        let books = self.bytes.growth();
        let over = |books: &std::collections::HashMap<PublicKey, u64>, limit: u64| {
            books
                .iter()
                .find(|(_, n)| **n > limit)
                .map(|(key, n)| (*key, *n))
        };
        if let Some((key, n)) = over(books.by_receiver, per_key) {
            return Err(format!("{key} reserved {n} for its windows' growth"));
        }
        if let Some(((key, sender), n)) = books.shares.iter().find(|(_, n)| **n > per_key / 2) {
            return Err(format!("{key} reserved {n} of growth for {sender}"));
        }
        if let Some((key, n)) = over(self.bytes.opens(), limits.max_bytes_per_key) {
            return Err(format!("{key} reserved {n} for its opens"));
        }
        for key in self.usage.keys() {
            if self.fds.held_by(key) > limits.max_descriptors_per_key {
                return Err(format!(
                    "{key} has {} ends in flight",
                    self.fds.held_by(key)
                ));
            }
        }
        Ok(())
    }

    /// Once every connection has gone: checks that the broker holds
    /// nothing, in any book.
    pub fn check_empty(&self) -> Result<(), String> {
        let left = [
            ("connections", self.connection_count()),
            ("names", self.registry.len()),
            ("watchers", self.watchers.len()),
            ("routes", self.route_count()),
            ("pending opens", self.pending_open_count()),
            ("timers", self.timer_count()),
            ("buffered bytes", self.buffered_bytes()),
            ("keys accounted", self.key_count()),
            ("entries in other books", self.other_accounts()),
        ];
        match left.iter().find(|(_, n)| *n > 0) {
            Some((what, n)) => Err(format!(
                "everyone left, and the broker still holds {n} {what}"
            )),
            None => Ok(()),
        }
    }
}
