//! Credit passed end to end, and the byte books.
//!
//! Credit the receiver grants is passed to the sender only as far as the
//! broker's bound allows: what the sender may still send plus what the
//! broker holds for the receiver never exceeds `max_window`, and beyond the
//! initial window it is reserved from the receiver's growth budget, within
//! its share for the sender's key (see `memory`).

use std::collections::HashMap;

use crate::control::ChannelId;
use crate::keys::PublicKey;

use super::End;
use crate::broker::{Broker, ConnId};

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
    /// beyond the initial window within what the receiver's key may reserve
    /// for the sender's. What cannot pass waits for output to drain.
    pub(super) fn pass_credit(&mut self, end: End) {
        let Some(route) = self.routes.ends.get(&end) else {
            return;
        };
        let (peer, held, extra) = (route.peer, route.held, route.extra);
        let (receiver, sender) = (route.key, route.peer_key);
        let Some(exposure) = self.exposure(end, peer) else {
            return;
        };
        let initial = u64::from(self.config.limits.initial_window);
        let max_window = u64::from(self.config.limits.max_window);
        let free = self.bytes.growth_free(&receiver, &sender);
        let ceiling = max_window.min(initial + extra + free);
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
        // as the queue has drained since.
        let now_extra = (in_flight + pass).saturating_sub(initial);
        match now_extra > extra {
            true => self.bytes.grow(receiver, sender, now_extra - extra),
            false => self.bytes.shrink(receiver, sender, extra - now_extra),
        }
        let left = if exposure.finished {
            0
        } else {
            held - pass as u32
        };
        if let Some(route) = self.routes.ends.get_mut(&end) {
            route.held = left;
            route.extra = now_extra;
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
    /// the initial window and the growth its receiver's key reserved; every
    /// key's opens' reservation is exactly its channels' initial windows,
    /// and its growth (in all and per sender key) exactly the credit it
    /// granted. For tests, the simulation and the fuzz targets.
    pub fn check_byte_books(&self) -> Result<(), String> {
        let initial = u64::from(self.config.limits.initial_window);
        let mut opens: HashMap<PublicKey, u64> = HashMap::new();
        let mut growth: HashMap<PublicKey, u64> = HashMap::new();
        let mut shares: HashMap<(PublicKey, PublicKey), u64> = HashMap::new();
        let stages = self
            .pending
            .values()
            .chain(self.pairs.values().map(|p| &p.2));
        for open in stages {
            *opens.entry(open.opener_key).or_default() += self.open_cost();
        }
        for (end, route) in &self.routes.ends {
            if route.opener {
                *opens.entry(route.key).or_default() += self.open_cost();
            }
            *growth.entry(route.key).or_default() += route.extra;
            *shares.entry((route.key, route.peer_key)).or_default() += route.extra;
            let Some(Exposure { owed, queued, .. }) = self.exposure(*end, route.peer) else {
                continue;
            };
            if queued + owed > initial + route.extra {
                return Err(format!(
                    "channel {end:?}: {queued} queued + {owed} owed > {initial} + {} reserved",
                    route.extra
                ));
            }
        }
        for (key, n) in opens.iter().filter(|(_, n)| **n > 0) {
            if self.bytes.opens_held_by(key) != *n {
                let held = self.bytes.opens_held_by(key);
                return Err(format!("{key}: {held} reserved for opens, {n} held"));
            }
        }
        growth.retain(|_, n| *n > 0);
        shares.retain(|_, n| *n > 0);
        if (&growth, &shares) != self.bytes.growth() {
            return Err(format!(
                "growth reserved {:?}, granted {growth:?}",
                self.bytes.growth()
            ));
        }
        let open_keys = opens.values().filter(|n| **n > 0).count();
        if self.bytes.keys() != open_keys + growth.len() + shares.len() {
            return Err("a key with a reservation and nothing held".into());
        }
        Ok(())
    }
}
