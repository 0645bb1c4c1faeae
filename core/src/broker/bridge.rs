//! A legacy connection's port: one relayed channel carried as a bare byte
//! stream (PROTOCOL §11). An SSB client speaks muxrpc inside box-stream and
//! knows nothing of the mux, so the port's mux runs for it as if it had:
//!
//! - the client's plaintext enters as DATA frames on the bridged channel,
//!   never beyond the credit the plugin gave (the runtime reads the socket
//!   only as far as [`PortHandle::input_room`] says, so TCP pushes back);
//! - what the mux would send the client is filtered: DATA payloads go out
//!   as they are, everything else (WINDOW, RESET, PING, GOAWAY) is the
//!   broker's own business and is dropped;
//! - a payload handed out is credit the client "grants" back at once: its
//!   socket took it, so the plugin may send that much more (bounded, as
//!   every relay is, by what the writer holds before it writes);
//! - the client's clean end of stream is the channel's FIN; the plugin's
//!   FIN is box-stream's goodbye ([`PortHandle::take_goodbye`]).
//!
//! Every frame here is one the mux decodes like a peer's, so the credit
//! checks, the relay's books and the orphan rules are the same code as for
//! every other channel.

use bytes::{Bytes, BytesMut};

use crate::control::ChannelId;
use crate::mux::frame;
use crate::mux::{MuxError, HEADER_LEN};
use crate::time::Instant;

use super::drive::PortDriver;
use super::port::{HubInput, Port, PortHandle, Step};

/// Least a runtime reads from a legacy client's socket when the plugin
/// gave any credit at all: one whole box (4 KiB and its 34 bytes of
/// headers), so a little credit still moves a box along.
pub const MIN_READ: usize = 4096 + 34;

/// Most plaintext a bridge holds beyond the plugin's credit: what a read
/// sized to the credit can open past it (the rest of a box begun earlier,
/// and one more), with room to spare. A client that makes it hold more
/// sent before message 4, and breaks the channel's credit.
pub(super) const MAX_HELD: usize = 64 * 1024;

/// The bridged channel's state at its port.
#[derive(Debug)]
pub(super) struct Bridge {
    /// The port's mux id for the channel.
    pub(super) channel: ChannelId,
    /// The client's plaintext beyond its credit, in order.
    held: BytesMut,
    /// The client's stream ended cleanly: its FIN goes after `held`.
    eof: EofState,
    /// The mux's last chunk was a DATA header whose payload comes next.
    payload_next: bool,
    /// That header carried FIN: the goodbye is due after its payload.
    fin_next: bool,
    /// The plugin finished: box-stream's goodbye is due.
    goodbye_due: bool,
    /// A task is feeding the channel (`PortHandle::feed`): others queue
    /// behind it in `held`.
    feeding: bool,
    /// The plugin's FIN went out (all it sent before it too).
    finished: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EofState {
    Open,
    /// Seen, its FIN not fed yet (bytes held before it).
    Due,
    Fed,
}

impl Bridge {
    pub(super) fn new(channel: ChannelId) -> Self {
        Bridge {
            channel,
            held: BytesMut::new(),
            eof: EofState::Open,
            payload_next: false,
            fin_next: false,
            goodbye_due: false,
            feeding: false,
            finished: false,
        }
    }

    /// What a mux chunk on its way out is for the client: its payload, or
    /// nothing (a header, or a frame only the broker's side knows).
    fn filter(&mut self, chunk: &Bytes) -> bool {
        if std::mem::take(&mut self.payload_next) {
            if std::mem::take(&mut self.fin_next) {
                self.finish();
            }
            return true;
        }
        // Every other chunk starts a frame (a bridge never writes through,
        // so no chunk holds the rest of a frame begun elsewhere). A DATA
        // header alone, on the bridged channel, announces a payload; a
        // whole frame in one chunk (control, WINDOW, RESET...) is dropped.
        let channel = || u32::from_be_bytes(chunk[2..6].try_into().expect("4 bytes"));
        if chunk.len() == HEADER_LEN && chunk[0] == frame::DATA && channel() == self.channel {
            let fin = chunk[1] & frame::FIN != 0;
            let len = u32::from_be_bytes(chunk[6..10].try_into().expect("4 bytes"));
            if len > 0 {
                self.payload_next = true;
                self.fin_next = fin;
            } else if fin {
                self.finish();
            }
        }
        false
    }

    fn finish(&mut self) {
        self.goodbye_due = true;
        self.finished = true;
    }
}

impl Port {
    /// How much of the client's plaintext its channel takes now: the
    /// credit the plugin gave.
    fn bridge_room(&self) -> usize {
        self.bridge
            .as_ref()
            .map_or(0, |b| self.mux.recv_credit(b.channel) as usize)
    }

    /// The next chunk of output for the client, with the credit its
    /// handing out gives back (the payload's length).
    pub(super) fn poll_bridge_transmit(&mut self) -> Option<(Bytes, u32)> {
        loop {
            let Some((chunk, _)) = self.mux.poll_transmit_tagged() else {
                self.notified = false;
                return None;
            };
            let bridge = self.bridge.as_mut().expect("a bridge's port");
            if bridge.filter(&chunk) {
                self.bytes_out += chunk.len() as u64;
                let len = chunk.len() as u32;
                return Some((chunk, len));
            }
        }
    }
}

impl PortHandle {
    /// For a legacy connection's port, how much to read from its socket
    /// now: the plugin's credit, or [`MIN_READ`] if that is less (what a
    /// read opens past the credit is held, within [`MAX_HELD`]); 0 while
    /// there is none or something is held, until [`PortDriver::resume`]
    /// (or [`Event::Resume`](super::Event::Resume)) says so. TCP then
    /// pushes back on the client. `None` for every other port (a mux peer
    /// keeps to its credit itself).
    pub fn input_room(&self) -> Option<usize> {
        let port = self.lock();
        let bridge = port.bridge.as_ref()?;
        let room = port.bridge_room();
        Some(match bridge.held.is_empty() && room > 0 {
            true => room.max(MIN_READ),
            false => 0,
        })
    }

    /// Whether the plugin finished a legacy connection's channel, and all
    /// it sent went out: its end is clean.
    pub(super) fn plugin_finished(&self) -> bool {
        self.lock().bridge.as_ref().is_some_and(|b| b.finished)
    }

    /// Whether the plugin finished its direction and everything before
    /// its FIN was handed out: box-stream's goodbye goes now (once).
    pub fn take_goodbye(&self) -> bool {
        let mut port = self.lock();
        port.bridge
            .as_mut()
            .is_some_and(|b| std::mem::take(&mut b.goodbye_due))
    }

    /// The client's plaintext, for a legacy connection's port: fed to the
    /// channel as far as its credit goes, the rest held (copied) until
    /// the plugin grants more. One task feeds at a time (the client's
    /// reader, or whoever brings the plugin's credit): bytes that come
    /// while another feeds queue behind what it holds, and it takes them
    /// in turn, so nothing overtakes and no two feeders spend one credit.
    pub(super) fn bridge_input(
        &self,
        now: Option<Instant>,
        input: &[u8],
        driver: &mut impl PortDriver,
    ) {
        let first = {
            let mut port = self.lock();
            let bridge = port.bridge.as_mut().expect("a bridge's port");
            if bridge.feeding || !bridge.held.is_empty() {
                bridge.held.extend_from_slice(input);
                if bridge.held.len() > MAX_HELD {
                    let len = bridge.held.len();
                    drop(port);
                    return self.overrun(now, len, driver);
                }
                if bridge.feeding {
                    return; // its feeder takes it
                }
                bridge.feeding = true;
                &[][..]
            } else {
                bridge.feeding = true;
                input
            }
        };
        self.feed(now, first, driver);
    }

    /// The client's stream ended cleanly (box-stream's goodbye, or the
    /// end of the socket on a box boundary): the channel's FIN, after
    /// whatever is held.
    pub fn handle_eof(&self, now: Instant, driver: &mut impl PortDriver) {
        {
            let mut port = self.lock();
            let Some(bridge) = port.bridge.as_mut() else {
                return;
            };
            if bridge.eof != EofState::Open {
                return;
            }
            bridge.eof = EofState::Due;
        }
        self.bridge_input(Some(now), &[], driver);
    }

    /// The plugin granted credit: what is held goes on, and the runtime
    /// reads the socket again.
    pub(super) fn bridge_granted(&self, now: Option<Instant>, driver: &mut impl PortDriver) {
        self.bridge_input(now, &[], driver);
        if self.input_room().is_some_and(|room| room > 0) {
            driver.resume(self);
        }
    }

    /// Credit for a bridge's channel: as [`Port::grant`], then what is
    /// held goes on and its runtime reads again.
    pub(super) fn grant_bridge(
        &self,
        now: Option<Instant>,
        channel: ChannelId,
        increment: u32,
        driver: &mut impl PortDriver,
    ) {
        self.lock().grant(channel, increment);
        self.bridge_granted(now, driver);
    }

    /// Feeds, as the one feeder (`feeding` was set with the lock that
    /// made this task it): `first`, then what is held (what others
    /// queued meanwhile included), then the client's FIN if it is due,
    /// until the credit runs out or nothing is left. Whether to stop is
    /// decided under the port's lock with the credit read there, so a
    /// grant that found this feeder at work is never missed.
    fn feed(&self, now: Option<Instant>, first: &[u8], driver: &mut impl PortDriver) {
        let left = self.feed_some(now, first, driver);
        self.hold_front(now, left, driver);
        loop {
            let next = {
                let mut port = self.lock();
                let room = port.bridge_room();
                let bridge = port.bridge.as_mut().expect("a bridge's port");
                if !bridge.held.is_empty() && room > 0 {
                    Next::Batch(std::mem::take(&mut bridge.held))
                } else if bridge.held.is_empty() && bridge.eof == EofState::Due {
                    bridge.eof = EofState::Fed;
                    Next::Fin(bridge.channel)
                } else {
                    bridge.feeding = false;
                    return;
                }
            };
            match next {
                Next::Batch(batch) => {
                    let left = self.feed_some(now, &batch, driver);
                    self.hold_front(now, left, driver);
                }
                Next::Fin(channel) => {
                    let finished = self.lock().mux.finish_unframed(channel);
                    match finished {
                        Ok(()) => self.run(now, &mut &[][..], driver),
                        Err(e) => self.apply(now, Step::Hub(HubInput::Violation(e)), driver),
                    }
                }
            }
        }
    }

    /// Delivers `input` to the other end within the channel's credit, a
    /// frame's worth at a time; returns what did not fit.
    fn feed_some<'a>(
        &self,
        now: Option<Instant>,
        mut input: &'a [u8],
        driver: &mut impl PortDriver,
    ) -> &'a [u8] {
        while !input.is_empty() {
            let (step, n) = {
                let mut port = self.lock();
                let room = port.bridge_room();
                if room == 0 {
                    return input;
                }
                let n = input
                    .len()
                    .min(room)
                    .min(port.mux.config().max_frame as usize);
                let channel = port.bridge.as_ref().expect("a bridge's port").channel;
                let step = match port.mux.receive_unframed(channel, n) {
                    Ok(true) => port.relay_step(channel, &input[..n]),
                    Ok(false) => None,
                    Err(e) => Some(Step::Hub(HubInput::Violation(e))),
                };
                (step, n)
            };
            if let Some(step) = step {
                self.apply(now, step, driver);
            }
            input = &input[n..];
        }
        input
    }

    /// Puts what did not fit back in front of what is held.
    fn hold_front(&self, now: Option<Instant>, left: &[u8], driver: &mut impl PortDriver) {
        if left.is_empty() {
            return;
        }
        let len = {
            let mut port = self.lock();
            let bridge = port.bridge.as_mut().expect("a bridge's port");
            let mut held = BytesMut::with_capacity(left.len() + bridge.held.len());
            held.extend_from_slice(left);
            held.extend_from_slice(&bridge.held);
            bridge.held = held;
            bridge.held.len()
        };
        if len > MAX_HELD {
            self.overrun(now, len, driver);
        }
    }

    /// The client sent more than the bound past its credit: a violation,
    /// which ends the connection.
    fn overrun(&self, now: Option<Instant>, len: usize, driver: &mut impl PortDriver) {
        let (channel, credit) = {
            let port = self.lock();
            let channel = port.bridge.as_ref().expect("a bridge's port").channel;
            (channel, port.mux.recv_credit(channel))
        };
        let e = MuxError::BeyondCredit {
            channel,
            len,
            credit,
        };
        self.apply(now, Step::Hub(HubInput::Violation(e)), driver);
    }

    /// Credit the client gives back for a payload handed out: as if it
    /// had sent a WINDOW for it.
    pub(super) fn bridge_window(
        &self,
        channel: ChannelId,
        increment: u32,
        driver: &mut impl PortDriver,
    ) {
        let taken = self.lock().mux.window_unframed(channel, increment);
        match taken {
            Ok(()) => self.run(None, &mut &[][..], driver),
            Err(e) => self.apply(None, Step::Hub(HubInput::Violation(e)), driver),
        }
    }
}

/// What a feeder does next.
enum Next {
    Batch(BytesMut),
    Fin(ChannelId),
}
