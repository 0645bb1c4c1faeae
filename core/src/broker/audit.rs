//! Self-checks: the broker's books against what it actually holds, for
//! tests, the simulation and the fuzz targets (a deployment never calls
//! them). Each is measured from the queues, not from the counters it checks.

use crate::control::MAX_MESSAGE;
use crate::mux::HEADER_LEN;

use super::Broker;

impl Broker {
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
    /// it holds: the bytes it buffers ([`Broker::buffered_bound`]), the byte
    /// books ([`Broker::check_byte_books`]), bytes reserved and socketpair
    /// ends in flight per key and in all. (Counts of connections, channels
    /// and opens are checked where they are taken.)
    pub fn check_budgets(&self) -> Result<(), String> {
        let limits = &self.config.limits;
        let (buffered, bound) = (self.buffered_bytes(), self.buffered_bound());
        if buffered > bound {
            return Err(format!("{buffered} bytes buffered, over the bound {bound}"));
        }
        self.check_byte_books()?;
        if self.bytes.held() > limits.max_bytes {
            return Err(format!("{} bytes reserved in all", self.bytes.held()));
        }
        if self.fds.held() > limits.max_descriptors {
            return Err(format!("{} socketpair ends in flight", self.fds.held()));
        }
        for key in self.usage.keys() {
            if self.bytes.held_by(key) > limits.max_bytes_per_key {
                return Err(format!("{key} reserved {}", self.bytes.held_by(key)));
            }
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
