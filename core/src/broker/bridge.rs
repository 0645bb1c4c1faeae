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
use crate::mux::frame::{self, Frame};
use crate::mux::HEADER_LEN;
use crate::time::Instant;

use super::drive::PortDriver;
use super::port::{Port, PortHandle};

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

/// A DATA header for `len` bytes of the client's on `channel`.
fn data_header(channel: ChannelId, fin: bool, len: usize) -> BytesMut {
    let mut header = BytesMut::with_capacity(HEADER_LEN);
    frame::encode_data_header(channel, fin, len as u32, &mut header);
    header
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
    /// the plugin grants more.
    pub(super) fn bridge_input(
        &self,
        now: Option<Instant>,
        input: &[u8],
        driver: &mut impl PortDriver,
    ) {
        let held = {
            let mut port = self.lock();
            let bridge = port.bridge.as_mut().expect("a bridge's port");
            match bridge.held.is_empty() {
                true => None,
                false => {
                    bridge.held.extend_from_slice(input);
                    Some(std::mem::take(&mut bridge.held))
                }
            }
        };
        match held {
            Some(held) => self.feed_bridge(now, &held, driver),
            None => self.feed_bridge(now, input, driver),
        }
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
        let held = {
            let mut port = self.lock();
            let Some(bridge) = port.bridge.as_mut() else {
                return;
            };
            std::mem::take(&mut bridge.held)
        };
        self.feed_bridge(now, &held, driver);
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

    /// Feeds `input` to the bridged channel as DATA frames within its
    /// credit; keeps the rest. Past [`MAX_HELD`] everything goes in, and
    /// the mux finds the credit broken.
    fn feed_bridge(&self, now: Option<Instant>, mut input: &[u8], driver: &mut impl PortDriver) {
        loop {
            let step = {
                let mut port = self.lock();
                let room = port.bridge_room();
                let bridge = port.bridge.as_mut().expect("a bridge's port");
                let channel = bridge.channel;
                if input.is_empty() {
                    if bridge.eof != EofState::Due {
                        return;
                    }
                    bridge.eof = EofState::Fed;
                    Some((data_header(channel, true, 0), 0))
                } else if room == 0 && input.len() <= MAX_HELD {
                    bridge.held.extend_from_slice(input);
                    return;
                } else {
                    // Past the bound with no credit: in it goes, and the
                    // mux finds the credit broken.
                    let max_frame = port.mux.config().max_frame as usize;
                    let n = match room {
                        0 => input.len().min(max_frame),
                        room => input.len().min(room).min(max_frame),
                    };
                    Some((data_header(channel, false, n), n))
                }
            };
            let Some((header, n)) = step else {
                return;
            };
            self.run(now, &mut &header[..], driver);
            let (piece, rest) = input.split_at(n);
            self.run(now, &mut &piece[..], driver);
            input = rest;
        }
    }

    /// Credit the client gives back for a payload handed out: as if it
    /// had sent a WINDOW for it.
    pub(super) fn bridge_window(
        &self,
        channel: ChannelId,
        increment: u32,
        driver: &mut impl PortDriver,
    ) {
        let mut window = BytesMut::with_capacity(HEADER_LEN + 4);
        frame::encode(&Frame::Window { channel, increment }, &mut window);
        self.run(None, &mut &window[..], driver);
    }
}
