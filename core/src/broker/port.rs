//! One connection's mux and its ends of relayed channels: what the relayed
//! data path touches of a connection, and nothing another connection owns.
//!
//! A port is shared ([`PortHandle`]) by whoever drives it: its own reader
//! and writer, the readers of the connections relaying to it, and the hub
//! for control traffic and lifecycle. Relayed data and credit go from one
//! port to the other without the hub (`drive.rs`); what needs the hub's
//! books (control messages, channels opening and closing, growth beyond
//! what a channel reserved) is handed to it as a [`HubInput`].
//!
//! Each direction of a relayed channel is accounted at its receiving end:
//! the credit its sender still holds (`owed`) is counted there, from the
//! credit passed to the sender and the bytes that arrived, so passing
//! credit on reads no other connection's state.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};

use bytes::Bytes;

use crate::control::ChannelId;
use crate::keys::PublicKey;
use crate::mux::{Mux, MuxError, MuxEvent, MuxInput};
use crate::time::Instant;

use super::bridge::Bridge;
use super::monitor::Seen;
use super::relay::rule;
use super::ConnId;

/// One end of a relayed channel: a connection and its id for the channel.
pub(super) type End = (ConnId, ChannelId);

/// A connection's port, shared by everyone who drives it.
///
/// Lock order, for every runtime: a connection's write queue, then its
/// link, then the hub, then a port. Two ports are held at once only under
/// the hub's lock (its audit, `check_byte_books`); `drive.rs` holds no
/// port guard across [`PortDriver::with_hub`](super::PortDriver::with_hub)
/// or [`PortDriver::wake`](super::PortDriver::wake).
#[derive(Clone)]
pub struct PortHandle(Arc<Shared>);

struct Shared {
    conn: ConnId,
    /// A legacy connection's (its port has a bridge from the start).
    bridge: bool,
    port: Mutex<Port>,
    /// What the runtime keeps for the connection (its writer), for the
    /// readers that deliver to it; weak, as that holds this port.
    owner: OnceLock<Weak<dyn Any + Send + Sync>>,
}

impl PortHandle {
    pub(super) fn new(conn: ConnId, port: Port) -> Self {
        PortHandle(Arc::new(Shared {
            conn,
            bridge: port.bridge.is_some(),
            port: Mutex::new(port),
            owner: OnceLock::new(),
        }))
    }

    /// The connection it belongs to.
    pub fn conn(&self) -> ConnId {
        self.0.conn
    }

    /// Whether this is a legacy connection's port (its channel a bare
    /// byte stream, see `bridge.rs`).
    pub fn is_bridge(&self) -> bool {
        self.0.bridge
    }

    /// Keeps what the runtime holds for the connection with its port, for
    /// [`PortDriver::wake`](super::PortDriver::wake) to find (set once;
    /// later calls are ignored).
    pub fn set_owner(&self, owner: &Arc<dyn Any + Send + Sync>) {
        let _ = self.0.owner.set(Arc::downgrade(owner));
    }

    /// What [`PortHandle::set_owner`] kept, while the runtime keeps it.
    pub fn owner(&self) -> Option<Arc<dyn Any + Send + Sync>> {
        self.0.owner.get()?.upgrade()
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Port> {
        // A panic elsewhere is the runtime's to report; the books stay
        // usable for the connections still up.
        self.0.port.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for PortHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PortHandle({})", self.conn())
    }
}

/// The limits a port applies on its own.
#[derive(Debug, Clone, Copy)]
pub(super) struct PortLimits {
    pub(super) initial_window: u64,
    pub(super) max_window: u64,
    pub(super) max_control_queue: usize,
}

impl PortLimits {
    /// The bounds the credit rule keeps.
    pub(super) fn bounds(&self) -> rule::Bounds {
        rule::Bounds {
            initial_window: self.initial_window,
            max_window: self.max_window,
        }
    }
}

/// A connection's mux and its ends of relayed channels.
pub(super) struct Port {
    pub(super) mux: Mux,
    /// Its ends of relayed channels, by its id for the channel.
    pub(super) ends: BTreeMap<ChannelId, RelayEnd>,
    /// Ends holding credit they could not pass on yet, or growth to give
    /// back as their queue drains.
    pub(super) credit_waiting: BTreeSet<ChannelId>,
    pub(super) limits: PortLimits,
    /// The hub's growth epoch: it moves whenever growth is given back.
    pub(super) growth_epoch: Arc<AtomicU64>,
    pub(super) last_input: Instant,
    pub(super) ping_sent: Option<Instant>,
    pub(super) bytes_in: u64,
    pub(super) bytes_out: u64,
    /// The runtime was told it has output, and has not drained it since.
    pub(super) notified: bool,
    /// Its watch fell behind: the hub sends the resync once the control
    /// queue drained to a quarter of its bound.
    pub(super) resync_due: bool,
    /// A legacy connection's: its one channel is a bare byte stream.
    pub(super) bridge: Option<Bridge>,
}

/// One end of a relayed channel, and the direction that ends here.
pub(super) struct RelayEnd {
    /// The other end.
    pub(super) peer: End,
    /// The other end's port; `None` once its connection is gone and this
    /// end only sends what it had (an orphan: see `Hub::routes_gone`).
    pub(super) peer_port: Option<PortHandle>,
    /// This end's key: charged for the channel, and for the growth of the
    /// direction that ends here.
    pub(super) key: PublicKey,
    /// The other end's key: the sender of the direction that ends here.
    pub(super) peer_key: PublicKey,
    /// This end opened the channel (its key reserved both initial windows).
    pub(super) opener: bool,
    /// Credit this end granted that is not passed to the sender yet.
    pub(super) held: u32,
    /// Credit the sender holds: the initial window and what was passed to
    /// it, less what arrived here.
    pub(super) owed: u64,
    /// The sender finished its direction: its FIN arrived here.
    pub(super) finished: bool,
    /// Credit beyond the initial window passed to the sender, at most:
    /// reserved from `key`'s growth (see `memory`). It follows the most
    /// the direction had out, not each pass, so a steady transfer does not
    /// go to the hub for every grant; it is given back when the direction
    /// drains, and after the sender's FIN once the queue is within the
    /// initial window.
    pub(super) grown: u64,
    /// This end's mux retired the channel (both FINs).
    pub(super) closed: bool,
    /// This end (an opener) was told to dial; a DirectFailed is still due.
    pub(super) dial_offered: bool,
    /// The hub could not reserve the growth its held credit needs, at this
    /// growth epoch: it is not asked again until some growth is given back.
    pub(super) starved_at: Option<u64>,
    /// What monitors know the channel by.
    pub(super) seen: Seen,
    /// Bytes this end's connection sent on the channel, relayed to the other.
    pub(super) relayed: u64,
}

impl RelayEnd {
    /// Applies what the credit rule decided.
    pub(super) fn settle(&mut self, settled: rule::Settled) {
        self.held = settled.held;
        self.owed += settled.pass;
        self.grown = settled.grown;
    }

    /// An end just linked: its sender holds the initial window.
    pub(super) fn new(
        peer: End,
        peer_port: PortHandle,
        keys: [PublicKey; 2],
        opener: bool,
        initial: u64,
        seen: Seen,
    ) -> Self {
        RelayEnd {
            peer,
            peer_port: Some(peer_port),
            key: keys[0],
            peer_key: keys[1],
            opener,
            held: 0,
            owed: initial,
            finished: false,
            grown: 0,
            closed: false,
            dial_offered: false,
            starved_at: None,
            seen,
            relayed: 0,
        }
    }
}

/// Writes parts, in order, to a connection's socket now: what it took.
pub(super) type WriteThrough<'a> = dyn FnMut(&[&[u8]]) -> usize + 'a;

/// What a port's input or output needs from outside it.
pub(super) enum Step<'a> {
    /// Payload for the other end of a relayed channel.
    Deliver {
        to: PortHandle,
        channel: ChannelId,
        bytes: &'a [u8],
    },
    /// The sender's FIN, for the other end.
    Finish { to: PortHandle, channel: ChannelId },
    /// Credit passed to the sender, at the other end.
    Grant {
        to: PortHandle,
        channel: ChannelId,
        increment: u32,
    },
    /// For the hub.
    Hub(HubInput<'a>),
}

/// What a port hands the hub.
pub(super) enum HubInput<'a> {
    /// Control channel bytes.
    Control(&'a [u8]),
    /// Data on a channel with no route (an open not answered yet).
    Unrouted(ChannelId),
    /// A channel event the hub decides on: an end reset or closed, one
    /// with no route, the peer's GOAWAY.
    Event(MuxEvent),
    /// Credit at this end needs the hub's budget: growth beyond what the
    /// channel reserved, or growth to give back.
    Credit(ChannelId),
    /// The peer broke the mux protocol.
    Violation(MuxError),
    /// Its control queue is over the bound.
    Slow,
}

impl Port {
    pub(super) fn new(
        mux: Mux,
        limits: PortLimits,
        growth_epoch: Arc<AtomicU64>,
        now: Instant,
    ) -> Self {
        Port {
            mux,
            ends: BTreeMap::new(),
            credit_waiting: BTreeSet::new(),
            limits,
            growth_epoch,
            last_input: now,
            ping_sent: None,
            bytes_in: 0,
            bytes_out: 0,
            notified: false,
            resync_due: false,
            bridge: None,
        }
    }

    /// Input arrived at `now`.
    pub(super) fn note_input(&mut self, now: Instant, len: usize) {
        self.bytes_in += len as u64;
        self.last_input = now;
        self.ping_sent = None;
    }

    /// The next thing the input (or this port's own actions) needs from
    /// outside; `None` once the input is used up and nothing waits.
    pub(super) fn step<'a>(&mut self, input: &mut &'a [u8]) -> Option<Step<'a>> {
        loop {
            let next = match self.mux.poll_input(input) {
                Ok(next) => next?,
                Err(e) => return Some(Step::Hub(HubInput::Violation(e))),
            };
            let event = match next {
                MuxInput::Data { channel: 0, bytes } => {
                    return Some(Step::Hub(HubInput::Control(bytes)))
                }
                MuxInput::Data { channel, bytes } => match self.relay_step(channel, bytes) {
                    Some(step) => return Some(step),
                    None => continue,
                },
                MuxInput::Event(MuxEvent::Pong { .. }) => continue,
                MuxInput::Event(event) => event,
            };
            match event {
                MuxEvent::Fin { channel } if self.ends.contains_key(&channel) => {
                    let end = &self.ends[&channel];
                    match &end.peer_port {
                        Some(to) => {
                            return Some(Step::Finish {
                                to: to.clone(),
                                channel: end.peer.1,
                            })
                        }
                        None => continue,
                    }
                }
                MuxEvent::Credit { channel, increment } if self.ends.contains_key(&channel) => {
                    let end = self.ends.get_mut(&channel).expect("checked");
                    end.held = end.held.saturating_add(increment);
                    match self.credit_step(channel) {
                        Some(step) => return Some(step),
                        None => continue,
                    }
                }
                event => return Some(Step::Hub(HubInput::Event(event))),
            }
        }
    }

    /// What becomes of payload that arrived on `channel` (its mux checked
    /// it against the credit): delivered to the other end, the hub's if
    /// the channel has no route yet, or dropped (`None`) at an orphan,
    /// which has nobody to take it.
    pub(super) fn relay_step<'a>(
        &mut self,
        channel: ChannelId,
        bytes: &'a [u8],
    ) -> Option<Step<'a>> {
        match self.ends.get_mut(&channel) {
            Some(RelayEnd {
                peer_port: Some(to),
                peer,
                relayed,
                ..
            }) => {
                *relayed += bytes.len() as u64;
                Some(Step::Deliver {
                    to: to.clone(),
                    channel: peer.1,
                    bytes,
                })
            }
            Some(_orphan) => None,
            None => Some(Step::Hub(HubInput::Unrouted(channel))),
        }
    }

    /// Passes the credit held at `channel`'s end on, as far as what the
    /// channel reserved allows (`rule::local`); what needs more of the
    /// receiver's budget, or gives some back, is the hub's.
    pub(super) fn credit_step(&mut self, channel: ChannelId) -> Option<Step<'static>> {
        let books = self.books(channel)?;
        let epoch = self.growth_epoch.load(Ordering::Relaxed);
        let end = self.ends.get_mut(&channel)?;
        let settled = match rule::local(books, self.limits.bounds(), end.starved_at == Some(epoch))
        {
            rule::Local::Hub => return Some(Step::Hub(HubInput::Credit(channel))),
            rule::Local::Settled(settled) => settled,
        };
        end.settle(settled);
        // An orphan's sender finished: nothing passes to it.
        let grant = end.peer_port.as_ref().filter(|_| settled.pass > 0);
        let grant = grant.map(|to| Step::Grant {
            to: to.clone(),
            channel: end.peer.1,
            increment: settled.pass as u32,
        });
        self.wait_for_drain(channel, settled.waiting);
        grant
    }

    /// The books of the direction that ends at `channel`, for the rule.
    pub(super) fn books(&self, channel: ChannelId) -> Option<rule::Books> {
        let end = self.ends.get(&channel)?;
        Some(rule::Books {
            held: end.held,
            in_flight: end.owed + self.mux.queued(channel) as u64,
            grown: end.grown,
            finished: end.finished,
        })
    }

    /// Whether `channel`'s end is looked at again as output drains.
    pub(super) fn wait_for_drain(&mut self, channel: ChannelId, waiting: bool) {
        match waiting {
            true => self.credit_waiting.insert(channel),
            false => self.credit_waiting.remove(&channel),
        };
    }

    /// Bytes the sender sent on `channel`, charged to its credit: written
    /// straight to this connection by `write`, if given, when they are next on the
    /// wire (a frame at a time; what the socket did not take is queued),
    /// else copied into the queue. Nothing goes on a channel this mux no
    /// longer has. Returns a grant that the drop in what is out for the
    /// channel lets pass, if credit waited for it.
    pub(super) fn deliver(
        &mut self,
        channel: ChannelId,
        mut bytes: &[u8],
        mut write: Option<&mut WriteThrough<'_>>,
    ) -> Option<Step<'static>> {
        if let Some(end) = self.ends.get_mut(&channel) {
            debug_assert!(
                end.owed >= bytes.len() as u64,
                "the sender's mux checked it"
            );
            end.owed = end.owed.saturating_sub(bytes.len() as u64);
        }
        let mut through = false;
        // A bridge's frames are filtered on their way out: never written
        // through.
        if let Some(write) = write.as_mut().filter(|_| self.bridge.is_none()) {
            while !bytes.is_empty() {
                let mut written = 0;
                let n = self.mux.send_through(channel, bytes, |parts| {
                    written = write(parts);
                    written
                });
                if n == 0 {
                    break;
                }
                self.bytes_out += written as u64;
                through = true;
                bytes = &bytes[n..];
                if written < crate::mux::HEADER_LEN + n {
                    break; // the socket is full: the rest is queued
                }
            }
        }
        // Fails only if this end's channel is gone already.
        let _ = self.mux.send_copy(channel, bytes);
        // Bytes written at once leave no queue to drain: credit held back
        // for them is looked at now.
        match through && self.credit_waiting.contains(&channel) {
            true => self.credit_step(channel),
            false => None,
        }
    }

    /// The sender finished: nothing more is owed to it. Whether the hub
    /// has growth to give back.
    pub(super) fn finish(&mut self, channel: ChannelId) -> bool {
        let _ = self.mux.finish(channel);
        // Nothing held passes now; the hub puts it back if growth is to go.
        self.credit_waiting.remove(&channel);
        let Some(end) = self.ends.get_mut(&channel) else {
            return false;
        };
        end.finished = true;
        end.owed = 0;
        end.held = 0;
        end.grown > 0
    }

    /// Credit for the sender at `channel` (this port's end of it).
    pub(super) fn grant(&mut self, channel: ChannelId, increment: u32) {
        self.mux.grant(channel, increment);
    }

    /// Ends of relayed channels here.
    pub(super) fn route_ends(&self) -> usize {
        self.ends.len()
    }

    /// Ends here whose other end is gone.
    pub(super) fn orphans(&self) -> usize {
        self.ends.values().filter(|e| e.peer_port.is_none()).count()
    }

    /// Whether the runtime should be told it has output (once, until it
    /// drains it).
    pub(super) fn take_wake(&mut self) -> bool {
        let wake = !self.notified && self.mux.has_output();
        self.notified |= wake;
        wake
    }

    /// Whether its control queue is over the bound.
    pub(super) fn is_slow(&self) -> bool {
        self.mux.queued_urgent() > self.limits.max_control_queue
    }

    /// Whether a watcher's resync is due: it fell behind and has read most
    /// of its queue.
    pub(super) fn resync_ready(&self) -> bool {
        self.resync_due && self.mux.queued_urgent() <= self.limits.max_control_queue / 4
    }

    /// The next chunk of output, with the tag of a message that carries a
    /// descriptor; and whether it was channel data (credit waiting for
    /// the queue to drain may pass now).
    pub(super) fn poll_transmit(&mut self) -> Option<(Bytes, Option<u64>, bool)> {
        let urgent_before = self.mux.queued_urgent();
        let Some((data, tag)) = self.mux.poll_transmit_tagged() else {
            self.notified = false;
            return None;
        };
        self.bytes_out += data.len() as u64;
        let was_data = self.mux.queued_urgent() == urgent_before;
        Some((data, tag, was_data))
    }

    /// Ends waiting for their queue to drain.
    pub(super) fn waiting(&self) -> Vec<ChannelId> {
        self.credit_waiting.iter().copied().collect()
    }

    /// Removes the end of `channel` here.
    pub(super) fn remove_end(&mut self, channel: ChannelId) -> Option<RelayEnd> {
        self.credit_waiting.remove(&channel);
        self.ends.remove(&channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Keypair;
    use crate::mux::{MuxConfig, Side};

    const INITIAL: u64 = 1000;

    fn port(epoch: &Arc<AtomicU64>) -> Port {
        let config = MuxConfig {
            max_frame: 1024,
            initial_window: INITIAL as u32,
            max_window: INITIAL as u32,
            max_connection_window: u64::MAX,
        };
        let limits = PortLimits {
            initial_window: INITIAL,
            max_window: 8 * INITIAL,
            max_control_queue: 4096,
        };
        Port::new(
            Mux::new(Side::Listener, config),
            limits,
            epoch.clone(),
            Instant::ZERO,
        )
    }

    /// A receiver's port with one relayed channel whose end holds `held`
    /// credit, and the sender's port.
    fn linked(held: u32) -> (Port, PortHandle, Arc<AtomicU64>, ChannelId) {
        let epoch = Arc::new(AtomicU64::new(0));
        let sender = PortHandle::new(2, port(&epoch));
        let mut receiver = port(&epoch);
        let channel = receiver.mux.open_local();
        let keys = [
            Keypair::from_seed([1; 32]).public(),
            Keypair::from_seed([2; 32]).public(),
        ];
        let seen = Seen {
            serial: 1,
            since: crate::time::Instant::ZERO,
            name: None,
        };
        let mut end = RelayEnd::new((2, 1), sender.clone(), keys, false, INITIAL, seen);
        end.held = held;
        receiver.ends.insert(channel, end);
        (receiver, sender, epoch, channel)
    }

    #[test]
    fn credit_within_the_reservation_passes_without_the_hub() {
        let (mut receiver, _sender, _, channel) = linked(0);
        receiver.ends.get_mut(&channel).unwrap().owed = 0;
        receiver.ends.get_mut(&channel).unwrap().held = 600;
        match receiver.credit_step(channel) {
            Some(Step::Grant {
                increment: 600,
                channel: 1,
                ..
            }) => {}
            _ => panic!("expected a grant of 600 on the sender's channel 1"),
        }
        assert_eq!(receiver.ends[&channel].owed, 600);
        assert!(receiver.credit_waiting.is_empty());
    }

    #[test]
    fn growth_goes_to_the_hub_once_per_epoch_when_starved() {
        // The sender holds the whole initial window: anything more needs
        // growth, which only the hub can reserve.
        let (mut receiver, _sender, epoch, channel) = linked(500);
        assert!(matches!(
            receiver.credit_step(channel),
            Some(Step::Hub(HubInput::Credit(c))) if c == channel
        ));
        // The hub had no budget at this epoch: no more asking, however
        // many chunks are written meanwhile.
        receiver.ends.get_mut(&channel).unwrap().starved_at = Some(0);
        assert!(receiver.credit_step(channel).is_none());
        assert_eq!(receiver.ends[&channel].held, 500, "still held");
        // Growth given back somewhere: asked again.
        epoch.fetch_add(1, Ordering::Relaxed);
        assert!(matches!(
            receiver.credit_step(channel),
            Some(Step::Hub(HubInput::Credit(_)))
        ));
    }

    /// Everything a port sends on the wire: what `write` took, then its
    /// output, decoded to one channel's payload.
    fn payload_on_the_wire(wire: &[u8], channel: ChannelId) -> Vec<u8> {
        let mut decoder = crate::mux::FrameDecoder::new(1 << 20);
        decoder.push(wire);
        let mut payload = Vec::new();
        while let Some(frame) = decoder.next_frame().unwrap() {
            if let crate::mux::Frame::Data {
                channel: c,
                payload: data,
                ..
            } = frame
            {
                assert_eq!(c, channel);
                payload.extend_from_slice(&data);
            }
        }
        payload
    }

    proptest::proptest! {
        /// Written straight to the socket, partly or not at all, relayed
        /// bytes reach the wire whole and in order, with the credit taken
        /// once, as if they had been queued.
        #[test]
        fn bytes_written_through_reach_the_wire_as_queued_ones(
            pieces in proptest::collection::vec((1usize..700, 0usize..2000), 1..6),
        ) {
            let (mut receiver, _sender, _, channel) = linked(0);
            receiver.ends.get_mut(&channel).unwrap().owed = u64::MAX / 2;
            let mut wire = Vec::new();
            let mut sent = Vec::new();
            for (i, (len, take)) in pieces.into_iter().enumerate() {
                let bytes: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8).collect();
                let mut write = |parts: &[&[u8]]| {
                    let all: Vec<u8> = parts.concat();
                    let n = take.min(all.len());
                    wire.extend_from_slice(&all[..n]);
                    n
                };
                receiver.deliver(channel, &bytes, Some(&mut write));
                sent.extend_from_slice(&bytes);
                // The writer runs now and then.
                if i % 2 == 1 {
                    while let Some((data, _, _)) = receiver.poll_transmit() {
                        wire.extend_from_slice(&data);
                    }
                }
            }
            while let Some((data, _, _)) = receiver.poll_transmit() {
                wire.extend_from_slice(&data);
            }
            let credit = INITIAL as usize;
            let passed = sent.len().min(credit);
            proptest::prop_assert_eq!(payload_on_the_wire(&wire, channel), &sent[..passed]);
            proptest::prop_assert_eq!(receiver.mux.queued(channel), sent.len() - passed);
            proptest::prop_assert_eq!(receiver.bytes_out, wire.len() as u64);
        }
    }

    #[test]
    fn a_finished_direction_waits_for_nothing_and_gives_growth_back_when_drained() {
        let (mut receiver, _sender, _, channel) = linked(500);
        receiver.credit_waiting.insert(channel);
        assert!(!receiver.finish(channel), "no growth to give back");
        assert!(receiver.credit_waiting.is_empty());
        let end = &receiver.ends[&channel];
        assert_eq!((end.owed, end.held, end.finished), (0, 0, true));
        receiver.ends.get_mut(&channel).unwrap().grown = 300;
        assert!(matches!(
            receiver.credit_step(channel),
            Some(Step::Hub(HubInput::Credit(_)))
        ));
    }
}
