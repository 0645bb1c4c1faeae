//! Credit passed end to end, and the byte books.
//!
//! Credit the receiver grants is passed to the sender only as far as the
//! broker's bound allows: what the sender may still send plus what the
//! broker holds for the receiver never exceeds `max_window`.
//!
//! Credit beyond the initial window is reserved from the receiver's key,
//! which granted it, while the sender uses it. What the sender leaves unused
//! for a whole sweep (`CREDIT_SWEEP`) is charged to the sender's key instead,
//! up to what it has sent on the channel: a sender that makes a fast reader
//! grow its windows and then stops cannot pin the reader's budget, and a
//! receiver that grants credit nobody asked for pays for it itself.

use std::collections::HashMap;
use std::time::Duration;

use crate::control::ChannelId;
use crate::keys::PublicKey;
use crate::time::Instant;

use super::End;
use crate::broker::{Broker, ConnId, Timer};

/// How often grown reservations are looked at again: credit a sender held
/// unused since the last look moves to its key, and what has drained is
/// given back.
pub(in crate::broker) const CREDIT_SWEEP: Duration = Duration::from_secs(1);

/// One direction of a relayed channel, as the broker sees it.
struct Exposure {
    /// Credit the sender holds.
    owed: u64,
    /// Bytes queued for the receiver.
    queued: u64,
    /// The sender finished its direction.
    finished: bool,
}

impl Broker {
    /// Passes held credit from `end` (the receiver) to its peer (the sender)
    /// as far as the bounds allow: what the sender may still send plus what
    /// the broker holds for the receiver stays within `max_window`, and
    /// beyond the initial window within what the receiver's key may
    /// reserve. What cannot pass waits for output to drain.
    pub(in crate::broker) fn pass_credit(&mut self, end: End) {
        let Some(route) = self.routes.ends.get(&end) else {
            return;
        };
        let (peer, held, key) = (route.peer, route.held, route.key);
        let (reserved, idle, owed_seen) = (route.extra + route.idle, route.idle, route.owed_seen);
        let Some(exposure) = self.exposure(end, peer) else {
            return;
        };
        let initial = u64::from(self.config.limits.initial_window);
        let max_window = u64::from(self.config.limits.max_window);
        let (key_free, total_free) = self.bytes.free(&key);
        let ceiling = max_window.min(initial + reserved + key_free.min(total_free));
        let in_flight = exposure.owed + exposure.queued;
        let pass = match exposure.finished {
            true => 0,
            false => u64::from(held).min(ceiling.saturating_sub(in_flight)),
        };
        if pass > 0 {
            let sender = self.conns.get_mut(&peer.0).and_then(|c| c.wire.as_mut());
            sender.expect("found above").mux.grant(peer.1, pass as u32);
            self.wake(peer.0);
            self.check_blame(peer.0);
        }
        // The reservation follows the exposure: up as credit passes, down
        // as the queue has drained since. Idle credit the sender still
        // holds stays its own to pay for.
        let total = (in_flight + pass).saturating_sub(initial);
        let idle = idle.min(exposure.owed.saturating_sub(initial));
        let sent = owed_seen.saturating_sub(exposure.owed);
        self.reserve(end, total, idle, exposure.owed + pass, sent);
        let left = if exposure.finished {
            0
        } else {
            held - pass as u32
        };
        if let Some(route) = self.routes.ends.get_mut(&end) {
            route.held = left;
        }
        if let Some(c) = self.conns.get_mut(&end.0) {
            match left {
                0 => c.credit_waiting.remove(&end.1),
                _ => c.credit_waiting.insert(end.1),
            };
        }
    }

    /// What the sender to `end` may still send, and what is queued for
    /// `end`: the broker's exposure for that direction.
    fn exposure(&self, end: End, peer: End) -> Option<Exposure> {
        let wire = |conn: ConnId| self.conns.get(&conn).and_then(|c| c.wire.as_ref());
        let queued = wire(end.0).map_or(0, |w| w.mux.queued(end.1)) as u64;
        let sender = wire(peer.0)?;
        // Nothing is owed to a sender that finished.
        let finished = sender.mux.recv_finished(peer.1);
        let owed = match finished {
            true => 0,
            false => u64::from(sender.mux.recv_credit(peer.1)),
        };
        Some(Exposure {
            owed,
            queued,
            finished,
        })
    }

    /// Sets the reservation for the credit beyond the initial window into
    /// `end`: `total` in all, of which `idle` is the sender's key's, the
    /// rest the receiver's; `sent` is what the sender sent since the last
    /// time, and `owed_seen` its credit now.
    fn reserve(&mut self, end: End, total: u64, idle: u64, owed_seen: u64, sent: u64) {
        let Some(route) = self.routes.ends.get_mut(&end) else {
            return;
        };
        route.sent = route.sent.saturating_add(sent);
        let (old_extra, old_idle) = (route.extra, route.idle);
        // Never more than it has sent: credit nobody used is the grant's.
        let idle = idle.min(route.sent);
        let extra = total - idle;
        (route.extra, route.idle, route.owed_seen) = (extra, idle, owed_seen);
        let (receiver, peer) = (route.key, route.peer);
        let sender = self.routes.ends[&peer].key;
        for (key, new, old) in [(receiver, extra, old_extra), (sender, idle, old_idle)] {
            match new > old {
                true => self.bytes.force(key, new - old),
                false => self.bytes.release(key, old - new),
            }
        }
        match total {
            0 => self.routes.grown.remove(&end),
            _ => self.routes.grown.insert(end),
        };
    }

    /// Schedules the next credit sweep if a reservation is grown and none is.
    pub(in crate::broker) fn schedule_credit_sweep(&mut self, now: Instant) {
        if !self.routes.sweep_due && !self.routes.grown.is_empty() {
            self.routes.sweep_due = true;
            self.timers.insert((now + CREDIT_SWEEP, Timer::CreditSweep));
        }
    }

    /// Looks at every grown reservation again: credit its sender left unused
    /// since the last look is charged to the sender's key, and what has
    /// drained is given back.
    pub(in crate::broker) fn sweep_credit(&mut self, now: Instant) {
        self.routes.sweep_due = false;
        let initial = u64::from(self.config.limits.initial_window);
        let grown: Vec<End> = self.routes.grown.iter().copied().collect();
        for end in grown {
            let Some(route) = self.routes.ends.get(&end) else {
                continue;
            };
            let (peer, idle, owed_seen) = (route.peer, route.idle, route.owed_seen);
            let Some(exposure) = self.exposure(end, peer) else {
                continue;
            };
            // Between passes the exposure only falls (sending moves credit
            // to the queue; writing empties it), so it is safe to reserve
            // what it is now.
            let total = (exposure.owed + exposure.queued).saturating_sub(initial);
            let beyond = exposure.owed.saturating_sub(initial);
            let idle = match exposure.owed == owed_seen {
                true => beyond,
                // It sent: what it sent is the receiver's to read.
                false => idle.min(beyond),
            };
            let sent = owed_seen.saturating_sub(exposure.owed);
            self.reserve(end, total, idle.min(total), exposure.owed, sent);
        }
        self.schedule_credit_sweep(now);
    }

    /// Output drained on `conn`: credit held for its channels may pass now.
    pub(in crate::broker) fn retry_credit(&mut self, conn: ConnId) {
        let waiting: Vec<ChannelId> = self.conns[&conn].credit_waiting.iter().copied().collect();
        for channel in waiting {
            self.pass_credit((conn, channel));
        }
    }
}

impl Broker {
    /// Checks the byte books against the queues themselves: for every
    /// direction of every relayed channel, what the sender may still send
    /// plus what is queued for the receiver (read from the muxes) is within
    /// the initial window and the credit its receiver's key reserved; and
    /// every key's reservation is exactly its channels' initial windows and
    /// the credit it granted. For tests, the simulation and the fuzz targets.
    pub fn check_byte_books(&self) -> Result<(), String> {
        let initial = u64::from(self.config.limits.initial_window);
        let mut expected: HashMap<PublicKey, u64> = HashMap::new();
        let stages = self
            .pending
            .values()
            .chain(self.pairs.values().map(|p| &p.2));
        for open in stages {
            *expected.entry(open.opener_key).or_default() += self.open_cost();
        }
        for (end, route) in &self.routes.ends {
            if route.opener {
                *expected.entry(route.key).or_default() += self.open_cost();
            }
            *expected.entry(route.key).or_default() += route.extra;
            let sender = self.routes.ends[&route.peer].key;
            *expected.entry(sender).or_default() += route.idle;
            let reserved = route.extra + route.idle;
            if (reserved > 0) != self.routes.grown.contains(end) {
                return Err(format!(
                    "channel {end:?}: {reserved} reserved, grown is wrong"
                ));
            }
            let Some(Exposure { owed, queued, .. }) = self.exposure(*end, route.peer) else {
                continue;
            };
            if queued + owed > initial + reserved {
                return Err(format!(
                    "channel {end:?}: {queued} queued + {owed} owed > {initial} + {reserved} reserved",
                ));
            }
        }
        if let Some(end) = self
            .routes
            .grown
            .iter()
            .find(|e| !self.routes.ends.contains_key(e))
        {
            return Err(format!("channel {end:?}: grown, but no route"));
        }
        expected.retain(|_, n| *n > 0);
        for (key, n) in &expected {
            if self.bytes.held_by(key) != *n {
                return Err(format!(
                    "{key}: {} reserved, {n} held",
                    self.bytes.held_by(key)
                ));
            }
        }
        if self.bytes.keys() != expected.len() {
            return Err("a key with a reservation and nothing held".into());
        }
        Ok(())
    }
}
