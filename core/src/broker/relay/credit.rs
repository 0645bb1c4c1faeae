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

use super::rule;
use super::End;
use crate::broker::port::RelayEnd;
use crate::broker::Hub;

impl Hub {
    /// Passes held credit from `end` (the receiver) to its peer (the sender)
    /// as `rule::settle` decides with the growth budget the receiver's key
    /// has left for the sender's: reserving growth, or giving it back.
    /// The port settles on its own what needs neither (`rule::local`).
    pub(in crate::broker) fn pass_credit(&mut self, end: End) {
        let Some(port) = self.port(end.0) else {
            return;
        };
        let mut port = port.lock();
        let Some(books) = port.books(end.1) else {
            return;
        };
        let route = &port.ends[&end.1];
        let (receiver, sender) = (route.key, route.peer_key);
        let free = self.bytes.growth_free(&receiver, &sender);
        let settled = rule::settle(books, port.limits.bounds(), free);
        match settled.grown > books.grown {
            true => self
                .bytes
                .grow(receiver, sender, settled.grown - books.grown),
            false => self.shrink_growth(receiver, sender, books.grown - settled.grown),
        }
        let epoch = self.growth_epoch.load(Ordering::Relaxed);
        let route = port.ends.get_mut(&end.1).expect("found above");
        route.settle(settled);
        // Held back for want of budget (not by `max_window`): not asked
        // again until some growth is given back.
        route.starved_at = settled.starved.then_some(epoch);
        let (peer_port, peer) = (route.peer_port.clone(), route.peer);
        port.wait_for_drain(end.1, settled.waiting);
        drop(port);
        if let Some(peer_port) = peer_port.filter(|_| settled.pass > 0) {
            if peer_port.is_bridge() {
                let now = Some(self.last_now);
                return peer_port.grant_bridge(now, peer.1, settled.pass as u32, self);
            }
            peer_port.lock().grant(peer.1, settled.pass as u32);
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
                // (An orphan holds its route's reservation: see `routes_gone`.)
                if route.opener {
                    *opens.entry(route.key).or_default() += self.open_cost();
                }
                *growth.entry(route.key).or_default() += route.grown;
                let sender = route.peer_key;
                *shares.entry((route.key, sender)).or_default() += route.grown;
                *by_sender.entry(sender).or_default() += route.grown;
                // What this end counts as owed is what the sender's mux
                // lets it send (a channel to itself: this port's own mux).
                let credit = match (&route.peer_port, route.peer.0 == conn) {
                    (_, true) => sender_credit(&port.mux, route),
                    (Some(peer_port), false) => sender_credit(&peer_port.lock().mux, route),
                    (None, false) => None, // an orphan: its sender finished
                };
                if let Some(credit) = credit.filter(|&credit| credit != route.owed) {
                    return Err(format!(
                        "channel {end:?}: {} owed, the sender's mux gives it {credit}",
                        route.owed
                    ));
                }
                let exposure = port.books(channel).expect("an end here").in_flight;
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
