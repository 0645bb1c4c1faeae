//! The mux: many channels over one connection, with credit-based flow
//! control per channel and direction.
//!
//! Both ends use the same [`Mux`]. A plugin's session reads and writes its own
//! channels; the broker relays between two muxes and passes credit through
//! ([`Mux::grant`] instead of [`Mux::consume`]).
//!
//! Output has two classes. *Urgent* frames (channel 0, WINDOW, RESET, PING,
//! GOAWAY) always go first; channel data goes after, one frame per channel in
//! turn, so one busy channel cannot starve the others or the control traffic.

mod channel;
pub mod decode;
pub mod frame;
mod pool;

use std::collections::{HashMap, VecDeque};

use bytes::{Bytes, BytesMut};

use crate::control::ErrorCode;
use channel::Channel;
pub use decode::FrameDecoder;
use decode::{Deframer, Piece};
pub use frame::{Frame, FrameError, DEFAULT_MAX_FRAME, HEADER_LEN};
use pool::ChunkPool;

/// A WINDOW frame on the wire: header and a u32 increment.
const WINDOW_FRAME_LEN: usize = HEADER_LEN + 4;

/// A channel id; see [`crate::control::ChannelId`].
pub type ChannelId = u32;

/// Which end of the connection this mux is: it decides the parity of the
/// channel ids it allocates, so the two ends never collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The end that connected (a plugin): odd ids.
    Dialer,
    /// The end that accepted (the broker): even ids.
    Listener,
}

/// Sizes a mux works with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MuxConfig {
    /// Largest frame payload accepted.
    pub max_frame: u32,
    /// Credit each direction of a new channel starts with.
    pub initial_window: u32,
    /// Largest a channel's receive window may grow to.
    pub max_window: u32,
    /// Largest the receive windows of all channels together may grow to.
    pub max_connection_window: u64,
}

impl Default for MuxConfig {
    fn default() -> Self {
        MuxConfig {
            max_frame: DEFAULT_MAX_FRAME,
            initial_window: 256 * 1024,
            max_window: 16 * 1024 * 1024,
            max_connection_window: 64 * 1024 * 1024,
        }
    }
}

/// What a writer did not take of a frame's header and payload (`written`
/// bytes of the two went), copied.
fn unwritten(header: &[u8], payload: &[u8], written: usize) -> Bytes {
    let mut rest = BytesMut::with_capacity(header.len() + payload.len() - written);
    if written < header.len() {
        rest.extend_from_slice(&header[written..]);
        rest.extend_from_slice(payload);
    } else {
        rest.extend_from_slice(&payload[written - header.len()..]);
    }
    rest.freeze()
}

/// What [`Mux::poll_input`] has for its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MuxInput<'a> {
    /// Bytes on a channel (0 is the control channel), in order: a slice of
    /// the input, passed on as it arrives, before its frame is whole.
    Data {
        /// The channel.
        channel: ChannelId,
        /// The bytes.
        bytes: &'a [u8],
    },
    /// Something else the peer did.
    Event(MuxEvent),
}

/// What the peer did, besides sending bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MuxEvent {
    /// The peer will send nothing more on this channel.
    Fin {
        /// The channel.
        channel: ChannelId,
    },
    /// The peer ended the channel in both directions; it is gone.
    Reset {
        /// The channel.
        channel: ChannelId,
        /// Why.
        code: ErrorCode,
        /// Why, for people.
        reason: String,
    },
    /// The peer granted more credit on this channel.
    Credit {
        /// The channel.
        channel: ChannelId,
        /// How much.
        increment: u32,
    },
    /// Both directions finished and our FIN went out, or a channel given
    /// up with [`Mux::reset_when_sent`] sent all it had: the channel is gone.
    Closed {
        /// The channel.
        channel: ChannelId,
    },
    /// The answer to [`Mux::ping`].
    Pong {
        /// What the ping carried.
        opaque: u64,
    },
    /// The peer is ending the connection.
    GoAway {
        /// Why.
        code: ErrorCode,
        /// Why, for people.
        reason: String,
    },
}

/// A protocol violation by the peer: the connection must end (with a GOAWAY
/// saying this).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MuxError {
    /// A frame that does not parse.
    #[error("malformed frame: {0}")]
    Frame(#[from] FrameError),
    /// A channel id nobody allocated.
    #[error("frame for channel {0}, which was never opened")]
    UnknownChannel(ChannelId),
    /// A peer-allocated id out of order or of the wrong parity.
    #[error("channel id {0} is not the peer's to allocate next")]
    BadChannelId(ChannelId),
    /// More data than the credit granted.
    #[error("{len} bytes on channel {channel} with only {credit} bytes of credit")]
    BeyondCredit {
        /// The channel.
        channel: ChannelId,
        /// Bytes sent.
        len: usize,
        /// Credit left.
        credit: u32,
    },
    /// Data after the peer's FIN.
    #[error("data on channel {0} after its FIN")]
    DataAfterFin(ChannelId),
    /// Credit beyond 2^32 - 1 bytes outstanding.
    #[error("credit on channel {0} overflows")]
    CreditOverflow(ChannelId),
}

/// Local misuse of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// No such channel (never opened, or already closed).
    #[error("no channel {0}")]
    Unknown(ChannelId),
    /// This side already sent FIN.
    #[error("channel {0} is finished for sending")]
    Finished(ChannelId),
}

/// What one piece of input came to.
enum Step<'a> {
    /// The input is used up.
    Drained,
    /// A header, a frame or payload handled with nothing to pass on.
    Handled,
    /// Channel bytes to pass on.
    Passed(ChannelId, &'a [u8]),
}

/// One connection's channels.
pub struct Mux {
    side: Side,
    config: MuxConfig,
    peer_max_frame: u32,
    deframer: Deframer,
    /// The DATA frame whose payload is arriving, if it is passed on: its
    /// channel, and whether it carries FIN.
    receiving: Option<(ChannelId, bool)>,
    channels: HashMap<ChannelId, Channel>,
    next_local: u64,
    last_remote: ChannelId,
    window_total: u64,
    /// Whole frames, each with the attachment tag of the message it starts.
    urgent: VecDeque<(Bytes, Option<u64>)>,
    urgent_bytes: usize,
    /// Channels with credit granted and not yet sent, in the order of their
    /// first grant: however many grants a channel gets before the next
    /// write, it costs its peer one WINDOW frame.
    grants: VecDeque<ChannelId>,
    ready: VecDeque<ChannelId>,
    pending_payload: Option<Bytes>,
    scratch: BytesMut,
    events: VecDeque<MuxEvent>,
    /// Allocations for copied chunks, used again once sent.
    pool: ChunkPool,
    going_away: bool,
    /// The peer broke the protocol: its input is no longer read.
    broken: bool,
}

impl Mux {
    /// A mux with no channels but the control channel.
    pub fn new(side: Side, config: MuxConfig) -> Self {
        Mux {
            side,
            config,
            peer_max_frame: DEFAULT_MAX_FRAME,
            deframer: Deframer::new(config.max_frame),
            receiving: None,
            channels: HashMap::new(),
            next_local: match side {
                Side::Dialer => 1,
                Side::Listener => 2,
            },
            last_remote: 0,
            window_total: 0,
            urgent: VecDeque::new(),
            urgent_bytes: 0,
            grants: VecDeque::new(),
            ready: VecDeque::new(),
            pending_payload: None,
            scratch: BytesMut::new(),
            events: VecDeque::new(),
            pool: ChunkPool::default(),
            going_away: false,
            broken: false,
        }
    }

    /// The sizes this mux was made with.
    pub fn config(&self) -> &MuxConfig {
        &self.config
    }

    /// Replaces the sizes (after the hello announced them); channels opened
    /// from now on use the new ones.
    pub fn configure(&mut self, config: MuxConfig) {
        self.config = config;
    }

    /// The largest frame payload the peer accepts (from its hello).
    pub fn set_peer_max_frame(&mut self, max_frame: u32) {
        self.peer_max_frame = max_frame.max(1);
    }

    // ── input ─────────────────────────────────────────────────────────

    /// The next thing the peer did: an event already waiting, else what
    /// the front of `input` (plain, or opened from box-stream) says, which
    /// it advances past what it used. `None` once `input` is used up and no
    /// event waits. Channel bytes are slices of `input`: a relay copies
    /// them once, to where they go. After an error the connection is
    /// broken: input is taken and ignored from then on.
    pub fn poll_input<'a>(
        &mut self,
        input: &mut &'a [u8],
    ) -> Result<Option<MuxInput<'a>>, MuxError> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Ok(Some(MuxInput::Event(event)));
            }
            if self.broken {
                *input = &[];
                return Ok(None);
            }
            let next = self.take_piece(input);
            self.broken = next.is_err();
            match next? {
                Step::Drained => return Ok(None),
                Step::Passed(channel, bytes) => return Ok(Some(MuxInput::Data { channel, bytes })),
                Step::Handled => {}
            }
        }
    }

    /// Takes the next piece of input: a DATA header checked against its
    /// channel's credit, another frame handled whole, payload returned if
    /// it is passed on.
    fn take_piece<'a>(&mut self, input: &mut &'a [u8]) -> Result<Step<'a>, MuxError> {
        let Some(piece) = self.deframer.decode(input)? else {
            return Ok(Step::Drained);
        };
        match piece {
            Piece::DataStart { channel, len, fin } => {
                self.receiving = self.start_data(channel, len, fin)?;
            }
            Piece::Payload(bytes) => match self.receiving {
                Some((0, _)) => return Ok(Step::Passed(0, bytes)),
                Some((id, _)) => {
                    // A channel reset or forgotten meanwhile takes no more.
                    if let Some(channel) = self.channels.get_mut(&id) {
                        channel.receive(bytes.len());
                        return Ok(Step::Passed(id, bytes));
                    }
                }
                None => {}
            },
            Piece::DataEnd => {
                if let Some((id, true)) = self.receiving.take() {
                    self.end_data(id);
                }
            }
            Piece::Frame(frame) if !self.going_away => self.on_frame(frame)?,
            Piece::Frame(_) => {}
        }
        Ok(Step::Handled)
    }

    /// Input decoded and not yet passed on: part of a header or of a small
    /// frame (never DATA payload).
    pub fn buffered_input(&self) -> usize {
        self.deframer.buffered()
    }

    /// Whether [`Mux::poll_event`] has something.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// The next thing the peer did that needs no input: what the last
    /// input or this side's own actions (a FIN going out) left waiting.
    pub fn poll_event(&mut self) -> Option<MuxEvent> {
        self.events.pop_front()
    }

    /// A DATA frame begins: whether its payload is passed on (and for
    /// which channel, with its FIN).
    fn start_data(
        &mut self,
        id: ChannelId,
        len: u32,
        fin: bool,
    ) -> Result<Option<(ChannelId, bool)>, MuxError> {
        if self.going_away {
            return Ok(None);
        }
        if id == 0 {
            return Ok(Some((0, false))); // (FIN is refused there by the header check)
        }
        let Some(channel) = self.live_channel(id)? else {
            return Ok(None); // closed already: what was in flight is dropped
        };
        channel.check_frame(id, len as usize)?;
        Ok(Some((id, fin)))
    }

    /// A DATA frame with FIN is whole: the peer's direction is over.
    fn end_data(&mut self, id: ChannelId) {
        if let Some(channel) = self.channels.get_mut(&id) {
            channel.end_receiving();
            channel.unhear_fin();
            self.events.push_back(MuxEvent::Fin { channel: id });
            self.retire_if_done(id);
            self.give_up_if_sent(id);
        }
    }

    fn on_frame(&mut self, frame: Frame) -> Result<(), MuxError> {
        match frame {
            // The deframer passes DATA on in pieces.
            Frame::Data { .. } => {}
            Frame::Window {
                channel: id,
                increment,
            } => {
                let Some(channel) = self.live_channel(id)? else {
                    return Ok(());
                };
                channel.add_credit(id, increment)?;
                let sendable = channel.wants_to_send();
                self.events.push_back(MuxEvent::Credit {
                    channel: id,
                    increment,
                });
                if sendable {
                    self.schedule(id);
                }
            }
            Frame::Reset {
                channel: id,
                code,
                reason,
            } => {
                if self.live_channel(id)?.is_some() {
                    self.remove(id);
                    self.events.push_back(MuxEvent::Reset {
                        channel: id,
                        code,
                        reason,
                    });
                }
            }
            Frame::Ping {
                opaque,
                pong: false,
            } => self.push_urgent(&Frame::Ping { opaque, pong: true }),
            Frame::Ping { opaque, pong: true } => self.events.push_back(MuxEvent::Pong { opaque }),
            Frame::GoAway { code, reason } => {
                self.going_away = true;
                self.events.push_back(MuxEvent::GoAway { code, reason });
            }
        }
        Ok(())
    }

    /// The channel a frame names; `None` if it existed and is closed; an
    /// error if it never existed.
    fn live_channel(&mut self, id: ChannelId) -> Result<Option<&mut Channel>, MuxError> {
        let was_allocated = self.was_allocated(id);
        match self.channels.get_mut(&id) {
            Some(channel) => Ok(Some(channel)),
            None if was_allocated => Ok(None),
            None => Err(MuxError::UnknownChannel(id)),
        }
    }

    // ── a peer that speaks no mux (a legacy client's bridge) ──────────

    /// `len` bytes of channel `id`'s data from a peer that speaks no mux,
    /// checked against the channel's credit and accounted as a DATA
    /// frame's payload would be. Whether they are passed on (not on a
    /// channel gone, or while going away). Touches no decoder state, so
    /// it may come between any two inputs.
    pub fn receive_unframed(&mut self, id: ChannelId, len: usize) -> Result<bool, MuxError> {
        if self.going_away {
            return Ok(false);
        }
        let Some(channel) = self.live_channel(id)? else {
            return Ok(false);
        };
        channel.check_frame(id, len)?;
        channel.receive(len);
        Ok(true)
    }

    /// Such a peer finished its direction of `id` (as DATA with FIN).
    pub fn finish_unframed(&mut self, id: ChannelId) -> Result<(), MuxError> {
        if self.going_away {
            return Ok(());
        }
        if let Some(channel) = self.live_channel(id)? {
            channel.check_frame(id, 0)?;
            self.end_data(id);
        }
        Ok(())
    }

    /// Such a peer took `increment` bytes of `id`: credit, as its WINDOW.
    pub fn window_unframed(&mut self, id: ChannelId, increment: u32) -> Result<(), MuxError> {
        if self.going_away {
            return Ok(());
        }
        self.on_frame(Frame::Window {
            channel: id,
            increment,
        })
    }

    /// Whether the id was ever allocated (by either side), open or closed.
    pub fn was_allocated(&self, id: ChannelId) -> bool {
        match self.is_local(id) {
            _ if id == 0 => false,
            true => u64::from(id) < self.next_local,
            false => id <= self.last_remote,
        }
    }

    fn is_local(&self, id: ChannelId) -> bool {
        (id % 2 == 1) == (self.side == Side::Dialer)
    }

    // ── channels ──────────────────────────────────────────────────────

    /// Allocates a channel id on this side and creates the channel.
    ///
    /// Ids are never reused: after 2^31 channels [`Mux::can_open_local`] is
    /// false, and the caller must refuse instead.
    pub fn open_local(&mut self) -> ChannelId {
        let id = ChannelId::try_from(self.next_local).expect("callers check can_open_local");
        self.next_local += 2;
        self.create(id);
        id
    }

    /// Whether this side has channel ids left.
    pub fn can_open_local(&self) -> bool {
        self.next_local <= u64::from(ChannelId::MAX)
    }

    /// Creates the channel the peer announced (in a control message).
    /// Peer ids must have the peer's parity and grow.
    pub fn open_remote(&mut self, id: ChannelId) -> Result<(), MuxError> {
        if id == 0 || self.is_local(id) || id <= self.last_remote {
            return Err(MuxError::BadChannelId(id));
        }
        self.last_remote = id;
        self.create(id);
        Ok(())
    }

    fn create(&mut self, id: ChannelId) {
        let window = self.config.initial_window;
        self.window_total += u64::from(window);
        self.channels.insert(id, Channel::new(window));
    }

    /// Whether the channel is open (in either direction).
    pub fn contains(&self, id: ChannelId) -> bool {
        self.channels.contains_key(&id)
    }

    /// Open channels.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Queues data. The caller keeps what it queues within
    /// [`Mux::send_capacity`] (a session) or within the credit it passed on (the
    /// broker): the mux sends only as credit allows and holds the rest.
    pub fn send(&mut self, id: ChannelId, data: Bytes) -> Result<(), ChannelError> {
        self.queue_on(id, |channel, pool| channel.enqueue(data, pool))
    }

    /// Queues as much of `data` as the channel's credit allows, after what
    /// is queued already; returns how much that was. One lookup, for the
    /// session's every write.
    pub fn send_up_to(&mut self, id: ChannelId, mut data: Bytes) -> Result<usize, ChannelError> {
        let mut taken = 0;
        self.queue_on(id, |channel, pool| {
            taken = data.len().min(channel.send_capacity());
            if taken > 0 {
                channel.enqueue(data.split_to(taken), pool);
            }
        })?;
        Ok(taken)
    }

    /// Queues a copy of `data` on a channel (see [`Mux::send`]). The relay
    /// uses it: a slice of a read buffer would keep the whole buffer alive
    /// while it waits for credit, for as long as the receiver likes.
    pub fn send_copy(&mut self, id: ChannelId, data: &[u8]) -> Result<(), ChannelError> {
        self.queue_on(id, |channel, pool| channel.enqueue_copy(data, pool))
    }

    fn queue_on(
        &mut self,
        id: ChannelId,
        enqueue: impl FnOnce(&mut Channel, &mut ChunkPool),
    ) -> Result<(), ChannelError> {
        let channel = self
            .channels
            .get_mut(&id)
            .ok_or(ChannelError::Unknown(id))?;
        if channel.fin_queued {
            return Err(ChannelError::Finished(id));
        }
        enqueue(channel, &mut self.pool);
        if channel.wants_to_send() {
            self.schedule(id);
        }
        Ok(())
    }

    /// Credit left after what is queued: how much more may be sent now.
    pub fn send_capacity(&self, id: ChannelId) -> usize {
        self.channels.get(&id).map_or(0, Channel::send_capacity)
    }

    /// Credit the peer still has on a channel: what it may send before the next grant.
    pub fn recv_credit(&self, id: ChannelId) -> u32 {
        self.channels.get(&id).map_or(0, |c| c.recv_credit)
    }

    /// Data bytes queued on all channels.
    pub fn queued_data(&self) -> usize {
        self.channels.values().map(|c| c.queued).sum()
    }

    /// Removes a channel without telling the peer (it knows already, from a
    /// control message).
    pub fn forget(&mut self, id: ChannelId) {
        self.remove(id);
    }

    /// Whether the peer sent FIN on the channel (or it is gone).
    pub fn recv_finished(&self, id: ChannelId) -> bool {
        self.channels.get(&id).is_none_or(Channel::recv_finished)
    }

    /// Bytes queued on a channel and not yet sent.
    pub fn queued(&self, id: ChannelId) -> usize {
        self.channels.get(&id).map_or(0, |c| c.queued)
    }

    /// Whether the channel has something left to send: queued bytes, or a
    /// FIN not handed out yet.
    pub fn has_unsent(&self, id: ChannelId) -> bool {
        self.channels.get(&id).is_some_and(|c| !c.sent_all())
    }

    /// Sends a frame of `data` on channel `id` straight from the caller's
    /// buffer, saving the copy into the queue, when it is next on the wire:
    /// nothing else waits to go out, the channel has nothing queued, and it
    /// has credit. `write` writes the parts it is given (a DATA header, then
    /// up to the credit and the peer's largest frame of `data`) to the
    /// socket now and says how much it took; what it did not take is kept
    /// (copied) to go out before anything else. Returns how much of `data`
    /// went into the frame: 0 if it cannot be done now (nothing was taken;
    /// queue it instead).
    pub fn send_through(
        &mut self,
        id: ChannelId,
        data: &[u8],
        write: impl FnOnce(&[&[u8]]) -> usize,
    ) -> usize {
        if self.has_output() || self.going_away || data.is_empty() {
            return 0;
        }
        let max_frame = self.peer_max_frame as usize;
        let Some(channel) = self.channels.get_mut(&id) else {
            return 0;
        };
        if channel.queued > 0 || channel.fin_queued || channel.send_credit == 0 {
            return 0;
        }
        let n = data.len().min(channel.send_credit as usize).min(max_frame);
        channel.send_credit -= n as u32;
        frame::encode_data_header(id, false, n as u32, &mut self.scratch);
        let header = self.scratch.split();
        let payload = &data[..n];
        let written = write(&[&header, payload]);
        if written < header.len() + n {
            // Goes out first: nothing was waiting before this frame.
            self.pending_payload = Some(unwritten(&header, payload, written));
        }
        n
    }

    /// Sends FIN after what is queued: this side will send nothing more.
    pub fn finish(&mut self, id: ChannelId) -> Result<(), ChannelError> {
        let channel = self
            .channels
            .get_mut(&id)
            .ok_or(ChannelError::Unknown(id))?;
        if channel.fin_queued {
            return Err(ChannelError::Finished(id));
        }
        channel.fin_queued = true;
        self.schedule(id);
        Ok(())
    }

    /// Ends the channel in both directions now; queued data is dropped.
    pub fn reset(&mut self, id: ChannelId, code: ErrorCode, reason: &str) {
        if self.channels.contains_key(&id) {
            self.remove(id);
            self.push_urgent(&Frame::Reset {
                channel: id,
                code,
                reason: reason.to_owned(),
            });
        }
    }

    /// Ends the channel once what is queued on it (and its FIN, if one is
    /// queued) is sent: then a RESET goes with `code` and `reason`, and
    /// [`MuxEvent::Closed`] says it is gone. The FIN goes only while the
    /// peer has not finished: once it has, the FIN would close the channel
    /// on its side as if what it sent had been heard, so the RESET goes in
    /// its place. Meanwhile the peer's input is still checked against its
    /// credit; the caller passes none on.
    pub fn reset_when_sent(&mut self, id: ChannelId, code: ErrorCode, reason: &str) {
        let Some(channel) = self.channels.get_mut(&id) else {
            return;
        };
        channel.reset_when_sent = Some(Box::new((code, reason.to_owned())));
        channel.unhear_fin();
        self.give_up_if_sent(id);
    }

    /// Sends the RESET of a channel given up once it has sent all it had.
    fn give_up_if_sent(&mut self, id: ChannelId) {
        let Some(channel) = self.channels.get_mut(&id) else {
            return;
        };
        if !channel.sent_all() {
            return;
        }
        let Some(reset) = channel.reset_when_sent.take() else {
            return;
        };
        let (code, reason) = *reset;
        self.reset(id, code, &reason);
        self.events.push_back(MuxEvent::Closed { channel: id });
    }

    /// Grants the peer `increment` more bytes on the channel. Grants made
    /// before the next write are sent as one WINDOW (counted as urgent bytes
    /// from the first).
    pub fn grant(&mut self, id: ChannelId, increment: u32) {
        if increment == 0 {
            return;
        }
        // No credit for a direction the peer has finished.
        if let Some(channel) = self.channels.get_mut(&id).filter(|c| !c.recv_finished()) {
            channel.recv_credit = channel.recv_credit.saturating_add(increment);
            if channel.grant_owed == 0 {
                self.grants.push_back(id);
                self.urgent_bytes += WINDOW_FRAME_LEN;
            }
            // Data received within credit not yet announced does not lower
            // what is owed, so this can reach 2^32 for a peer that sends
            // without reading: it saturates (what is lost is its own credit).
            channel.grant_owed = channel.grant_owed.saturating_add(increment);
        }
    }

    /// The application consumed `n` delivered bytes: grant them back,
    /// batched to half a window, and grow the window while the reader keeps up.
    pub fn consume(&mut self, id: ChannelId, n: usize) {
        let room = self
            .config
            .max_connection_window
            .saturating_sub(self.window_total);
        let Some(channel) = self.channels.get_mut(&id) else {
            return;
        };
        if let Some((grant, growth)) = channel.consume(n, self.config.max_window, room) {
            self.window_total += u64::from(growth);
            self.grant(id, grant);
        }
    }

    fn schedule(&mut self, id: ChannelId) {
        if let Some(channel) = self.channels.get_mut(&id) {
            if !channel.scheduled {
                channel.scheduled = true;
                self.ready.push_back(id);
            }
        }
    }

    /// Closes a channel whose directions are both over, unless it is to be
    /// reset once sent (`reset_when_sent`).
    fn retire_if_done(&mut self, id: ChannelId) {
        let done = |c: &Channel| c.is_done() && c.reset_when_sent.is_none();
        if self.channels.get(&id).is_some_and(done) {
            self.remove(id);
            self.events.push_back(MuxEvent::Closed { channel: id });
        }
    }

    fn remove(&mut self, id: ChannelId) {
        if let Some(channel) = self.channels.remove(&id) {
            self.window_total -= u64::from(channel.window);
        }
    }

    // ── control, liveness, the end ────────────────────────────────────

    /// Queues bytes for the control channel, ahead of all channel data.
    pub fn send_control(&mut self, bytes: &[u8]) {
        self.send_control_tagged(bytes, None);
    }

    /// As [`Mux::send_control`], marking the first frame with `tag`: the
    /// runtime attaches something to it (a file descriptor) when it writes it.
    pub fn send_control_tagged(&mut self, bytes: &[u8], mut tag: Option<u64>) {
        for chunk in bytes.chunks(self.peer_max_frame as usize) {
            frame::encode_data_header(0, false, chunk.len() as u32, &mut self.scratch);
            self.scratch.extend_from_slice(chunk);
            let frame = self.scratch.split().freeze();
            self.urgent_bytes += frame.len();
            self.urgent.push_back((frame, tag.take()));
        }
    }

    /// Asks the peer to answer with [`MuxEvent::Pong`].
    pub fn ping(&mut self, opaque: u64) {
        self.push_urgent(&Frame::Ping {
            opaque,
            pong: false,
        });
    }

    /// Drops everything queued (but the rest of a frame already begun) and
    /// queues a GOAWAY: the last frame this mux sends. Input after it is ignored.
    pub fn go_away(&mut self, code: ErrorCode, reason: &str) {
        self.urgent.clear();
        self.grants.clear();
        self.ready.clear();
        // A payload whose header went out stays: the frame must be whole.
        self.channels.clear();
        // Nothing more is passed on, the control channel's included.
        self.receiving = None;
        self.window_total = 0;
        self.going_away = true;
        self.urgent_bytes = 0;
        self.push_urgent(&Frame::GoAway {
            code,
            reason: reason.to_owned(),
        });
    }

    /// Whether [`Mux::go_away`] was called or the peer sent GOAWAY.
    pub fn is_going_away(&self) -> bool {
        self.going_away
    }

    fn push_urgent(&mut self, frame: &Frame) {
        debug_assert!(
            !matches!(frame, Frame::Window { .. }),
            "grants are coalesced"
        );
        frame::encode(frame, &mut self.scratch);
        let bytes = self.scratch.split().freeze();
        self.urgent_bytes += bytes.len();
        self.urgent.push_back((bytes, None));
    }

    // ── output ────────────────────────────────────────────────────────

    /// Bytes of urgent frames (control messages, credit, pings) waiting to be sent.
    pub fn queued_urgent(&self) -> usize {
        self.urgent_bytes
    }

    /// Whether [`Mux::poll_transmit`] has something.
    pub fn has_output(&self) -> bool {
        self.pending_payload.is_some()
            || !self.urgent.is_empty()
            || !self.grants.is_empty()
            || !self.ready.is_empty()
    }

    /// The next bytes to write: urgent frames first, then one data frame per
    /// channel in turn. A data frame comes as two chunks, header then payload
    /// (the payload is a slice of what was queued, not a copy).
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.poll_transmit_tagged().map(|(bytes, _)| bytes)
    }

    /// As [`Mux::poll_transmit`], with the tag given to
    /// [`Mux::send_control_tagged`] on the chunk that starts that message.
    pub fn poll_transmit_tagged(&mut self) -> Option<(Bytes, Option<u64>)> {
        if let Some(payload) = self.pending_payload.take() {
            return Some((payload, None));
        }
        while let Some(id) = self.grants.pop_front() {
            self.urgent_bytes -= WINDOW_FRAME_LEN;
            // A channel reset or retired since owes nothing.
            if let Some(channel) = self.channels.get_mut(&id) {
                let increment = std::mem::take(&mut channel.grant_owed);
                frame::encode(
                    &Frame::Window {
                        channel: id,
                        increment,
                    },
                    &mut self.scratch,
                );
                return Some((self.scratch.split().freeze(), None));
            }
        }
        if let Some((frame, tag)) = self.urgent.pop_front() {
            self.urgent_bytes -= frame.len();
            return Some((frame, tag));
        }
        while let Some(id) = self.ready.pop_front() {
            let Some(channel) = self.channels.get_mut(&id) else {
                continue;
            };
            channel.scheduled = false;
            let Some((payload, fin)) = channel.next_frame(self.peer_max_frame, &mut self.pool)
            else {
                continue; // out of credit: a WINDOW reschedules it
            };
            self.pool.prune(channel.queued);
            if channel.wants_to_send() {
                channel.scheduled = true;
                self.ready.push_back(id);
            }
            frame::encode_data_header(id, fin, payload.len() as u32, &mut self.scratch);
            let header = self.scratch.split().freeze();
            if !payload.is_empty() {
                self.pending_payload = Some(payload);
            }
            if fin {
                self.retire_if_done(id);
            }
            self.give_up_if_sent(id);
            return Some((header, None));
        }
        self.pool.trim();
        None
    }
}

#[cfg(test)]
mod tests;
