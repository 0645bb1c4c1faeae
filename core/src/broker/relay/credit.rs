//! Credit passed end to end, and the byte books.
//!
//! Credit the receiver grants is passed to the sender only as far as the
//! broker's bound allows: what the sender may still send plus what the
//! broker holds for the receiver never exceeds `max_window`, and beyond the
//! initial window it is reserved from the receiver's growth budget, within
//! its share for the sender's key (see `memory`).

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use crate::keys::PublicKey;

use super::End;
use crate::broker::port::RelayEnd;
use crate::broker::Hub;

impl Hub {
    /// Passes held credit from `end` (the receiver) to its peer (the sender)
    /// as far as the bounds allow: what the sender may still send plus what
    /// the broker holds for the receiver stays within `max_window`, and
    /// beyond the initial window within what the receiver's key may reserve
    /// for the sender's. What cannot pass waits for output to drain.
    ///
    /// The port passes what fits in what the channel reserved itself
    /// (`Port::credit_step`); this is for the rest: the reservation grows
    /// as credit beyond it passes, and is given back once the direction
    /// drained (nothing queued or owed beyond the initial window). At the
    /// sender's FIN it shrinks to what is queued beyond the initial window,
    /// and the rest goes once the queue is within it.
    pub(in crate::broker) fn pass_credit(&mut self, end: End) {
        let Some(port) = self.port(end.0) else {
            return;
        };
        let mut port = port.lock();
        let Some(in_flight) = port.exposure(end.1) else {
            return;
        };
        let route = &port.ends[&end.1];
        let (peer_port, peer) = (route.peer_port.clone(), route.peer);
        let (held, grown, finished) = (route.held, route.grown, route.finished);
        let (receiver, sender) = (route.key, route.peer_key);
        let initial = u64::from(self.config.limits.initial_window);
        let max_window = u64::from(self.config.limits.max_window);
        let free = self.bytes.growth_free(&receiver, &sender);
        let ceiling = max_window.min(initial + grown + free);
        let pass = match finished {
            true => 0,
            false => u64::from(held).min(ceiling.saturating_sub(in_flight)),
        };
        let needed = (in_flight + pass).saturating_sub(initial);
        let now_grown = match finished || needed == 0 {
            true => needed,
            false => needed.max(grown),
        };
        match now_grown > grown {
            true => self.bytes.grow(receiver, sender, now_grown - grown),
            false => self.shrink_growth(receiver, sender, grown - now_grown),
        }
        // Held back for want of budget (not by `max_window`): not asked
        // again until some growth is given back.
        let starved = !finished && pass < u64::from(held) && ceiling < max_window;
        let left = match finished {
            true => 0,
            false => held - pass as u32,
        };
        let route = port.ends.get_mut(&end.1).expect("found above");
        route.held = left;
        route.grown = now_grown;
        route.owed += pass;
        route.starved_at = starved.then(|| self.growth_epoch.load(Ordering::Relaxed));
        // Looked at again as output drains: to pass what is held, or, once
        // the sender finished, to give back growth as its queue empties.
        match left > 0 || (finished && now_grown > 0) {
            false => port.credit_waiting.remove(&end.1),
            true => port.credit_waiting.insert(end.1),
        };
        drop(port);
        if pass > 0 {
            peer_port.lock().grant(peer.1, pass as u32);
            self.wake(peer.0);
        }
    }
}

impl Hub {
    /// Gives back `n` bytes of `receiver`'s growth for `sender`: channels
    /// starved of growth may ask again.
    pub(in crate::broker) fn shrink_growth(
        &mut self,
        receiver: PublicKey,
        sender: PublicKey,
        n: u64,
    ) {
        if n > 0 {
            self.bytes.shrink(receiver, sender, n);
            self.growth_epoch.fetch_add(1, Ordering::Relaxed);
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
    /// granted. For tests, the simulation and the fuzz targets, on a hub
    /// that drives its ports itself: on a threaded runtime a grant can be
    /// on its way to the sender's mux, and the counts differ meanwhile.
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
        for (&conn, c) in &self.conns {
            let Some(port) = &c.port else {
                continue;
            };
            let port = port.lock();
            for (&channel, route) in &port.ends {
                let end = (conn, channel);
                if route.opener {
                    *opens.entry(route.key).or_default() += self.open_cost();
                }
                *growth.entry(route.key).or_default() += route.grown;
                let sender = route.peer_key;
                *shares.entry((route.key, sender)).or_default() += route.grown;
                *by_sender.entry(sender).or_default() += route.grown;
                // What this end counts as owed is what the sender's mux
                // lets it send (a channel to itself: this port's own mux).
                let credit = match route.peer.0 == conn {
                    true => sender_credit(&port.mux, route),
                    false => sender_credit(&route.peer_port.lock().mux, route),
                };
                if let Some(credit) = credit.filter(|&credit| credit != route.owed) {
                    return Err(format!(
                        "channel {end:?}: {} owed, the sender's mux gives it {credit}",
                        route.owed
                    ));
                }
                let exposure = port.exposure(channel).expect("an end here");
                if exposure > initial + route.grown {
                    return Err(format!(
                        "channel {end:?}: {exposure} queued and owed > {initial} + {} reserved",
                        route.grown
                    ));
                }
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

/// What the sender's mux lets it send toward `route`'s end, while it has
/// the channel and has not finished.
fn sender_credit(mux: &crate::mux::Mux, route: &RelayEnd) -> Option<u64> {
    let channel = route.peer.1;
    (!route.finished && mux.contains(channel)).then(|| u64::from(mux.recv_credit(channel)))
}
