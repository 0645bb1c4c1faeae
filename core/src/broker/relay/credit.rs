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
use crate::broker::{ConnId, Hub};

/// One direction of a relayed channel, as the broker sees it.
struct Exposure {
    /// Credit the sender holds.
    owed: u64,
    /// Bytes queued for the receiver.
    queued: u64,
    /// The sender finished its direction.
    finished: bool,
}

impl Hub {
    /// Passes held credit from `end` (the receiver) to its peer (the sender)
    /// as far as the bounds allow: what the sender may still send plus what
    /// the broker holds for the receiver stays within `max_window`, and
    /// beyond the initial window within what the receiver's key may reserve
    /// for the sender's. What cannot pass waits for output to drain.
    pub(super) fn pass_credit(&mut self, end: End) {
        let Some(route) = self.routes.ends.get(&end) else {
            return;
        };
        let (peer, held, grown) = (route.peer, route.held, route.grown);
        let (receiver, sender) = (route.key, self.routes.peer_key(route));
        let Some(exposure) = self.exposure(end, peer) else {
            return;
        };
        let initial = u64::from(self.config.limits.initial_window);
        let max_window = u64::from(self.config.limits.max_window);
        let free = self.bytes.growth_free(&receiver, &sender);
        let ceiling = max_window.min(initial + grown + free);
        let in_flight = exposure.owed + exposure.queued;
        let pass = match exposure.finished {
            true => 0,
            false => u64::from(held).min(ceiling.saturating_sub(in_flight)),
        };
        if pass > 0 {
            let sender = self.conns.get_mut(&peer.0).and_then(|c| c.mux.as_mut());
            sender.expect("found above").grant(peer.1, pass as u32);
            self.wake(peer.0);
            self.check_blame(peer.0);
        }
        // The reservation follows the exposure: up as credit passes, down
        // as the queue has drained since.
        let now_grown = (in_flight + pass).saturating_sub(initial);
        match now_grown > grown {
            true => self.bytes.grow(receiver, sender, now_grown - grown),
            false => self.bytes.shrink(receiver, sender, grown - now_grown),
        }
        let left = if exposure.finished {
            0
        } else {
            held - pass as u32
        };
        if let Some(route) = self.routes.ends.get_mut(&end) {
            route.held = left;
            route.grown = now_grown;
        }
        // Looked at again as output drains: to pass what is held, or, once
        // the sender finished, to give back growth as its queue empties.
        let again = left > 0 || (exposure.finished && now_grown > 0);
        if let Some(c) = self.conns.get_mut(&end.0) {
            match again {
                false => c.credit_waiting.remove(&end.1),
                true => c.credit_waiting.insert(end.1),
            };
        }
    }

    /// What the sender to `end` may still send, and what is queued for
    /// `end`: the broker's exposure for that direction.
    fn exposure(&self, end: End, peer: End) -> Option<Exposure> {
        let mux = |conn: ConnId| self.conns.get(&conn).and_then(|c| c.mux.as_ref());
        let queued = mux(end.0).map_or(0, |mux| mux.queued(end.1)) as u64;
        let sender = mux(peer.0)?;
        // Nothing is owed to a sender that finished.
        let finished = sender.recv_finished(peer.1);
        let owed = match finished {
            true => 0,
            false => u64::from(sender.recv_credit(peer.1)),
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

impl Hub {
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
        let mut by_sender: HashMap<PublicKey, u64> = HashMap::new();
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
            *growth.entry(route.key).or_default() += route.grown;
            let sender = self.routes.peer_key(route);
            *shares.entry((route.key, sender)).or_default() += route.grown;
            *by_sender.entry(sender).or_default() += route.grown;
            let Some(Exposure { owed, queued, .. }) = self.exposure(*end, route.peer) else {
                continue;
            };
            if queued + owed > initial + route.grown {
                return Err(format!(
                    "channel {end:?}: {queued} queued + {owed} owed > {initial} + {} reserved",
                    route.grown
                ));
            }
        }
        opens.retain(|_, n| *n > 0);
        growth.retain(|_, n| *n > 0);
        shares.retain(|_, n| *n > 0);
        by_sender.retain(|_, n| *n > 0);
        let books = self.bytes.growth();
        if &opens != self.bytes.opens() {
            return Err(format!(
                "opens reserved {:?}, held {opens:?}",
                self.bytes.opens()
            ));
        }
        if (&growth, &shares, &by_sender) != (books.by_receiver, books.shares, books.by_sender) {
            return Err(format!(
                "growth reserved {:?}, granted {growth:?}",
                books.by_receiver
            ));
        }
        let totals = (opens.values().sum(), growth.values().sum());
        if self.bytes.totals() != totals {
            return Err(format!("totals {:?}, held {totals:?}", self.bytes.totals()));
        }
        Ok(())
    }
}
