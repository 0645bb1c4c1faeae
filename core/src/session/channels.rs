//! The session's channels: where each stands (opening, offered, waiting for
//! its path, open), what it received that the application has not read,
//! and how it ends. Credit goes back to the sender as the application
//! reads, so what a channel holds is bounded by its receive window.

use std::collections::VecDeque;

use super::direct::Direct;
use super::*;

/// How far a channel got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChannelStage {
    /// We opened it; no answer yet.
    Opening,
    /// Offered to us; we have not answered. `await_path`: a direct channel
    /// may replace it, so after accepting wait for its path.
    Offered { await_path: bool },
    /// Accepted, and we wait to learn its path until `deadline`: an opener
    /// that never dials (or resets) must not hold the accept forever.
    AwaitingPath { deadline: Instant },
    /// Usable.
    Open,
}

/// What a channel received and the application has not read, in order:
/// one buffer per channel, that the reads drain and the next bytes reuse,
/// so bulk data costs no allocation per frame or per read. It holds the
/// unread bytes (bounded by the receive window) and its spare room.
#[derive(Default)]
pub(super) struct Received {
    buffer: BytesMut,
}

impl Received {
    fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Up to `max` bytes from the front; `None` when nothing waits.
    fn take(&mut self, max: usize) -> Option<Bytes> {
        if self.buffer.is_empty() {
            return None;
        }
        let n = max.min(self.buffer.len());
        Some(self.buffer.split_to(n).freeze())
    }

    /// Drops everything; how many bytes that was.
    fn clear(&mut self) -> usize {
        std::mem::take(&mut self.buffer).len()
    }

    /// Everything, in order.
    pub(super) fn into_chunks(self) -> VecDeque<Bytes> {
        let mut chunks = VecDeque::new();
        if !self.buffer.is_empty() {
            chunks.push_back(self.buffer.freeze());
        }
        chunks
    }
}

/// One channel.
pub(super) struct Channel {
    pub(super) stage: ChannelStage,
    /// Received, not yet read.
    pub(super) received: Received,
    /// The peer sends nothing more.
    fin: bool,
    /// Both directions are done.
    pub(super) closed: bool,
    /// Reset (by the peer, the broker, or at the path deadline), and why.
    pub(super) reset: Option<(ErrorCode, String)>,
    /// The application let go after finishing: what arrives is for nobody.
    dropped: bool,
    /// A [`SessionEvent::Readable`] is out that no read has answered yet.
    readable_told: bool,
    /// Its part in a direct connection.
    pub(super) direct: Direct,
}

impl Channel {
    pub(super) fn new(stage: ChannelStage) -> Self {
        Channel {
            stage,
            received: Received::default(),
            fin: false,
            closed: false,
            reset: None,
            dropped: false,
            readable_told: false,
            direct: Direct::None,
        }
    }

    /// Nothing more will come, and the application may let it go.
    fn is_over(&self) -> bool {
        self.closed || self.reset.is_some()
    }
}

/// What a read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recv {
    /// Bytes, in order.
    Data(Bytes),
    /// Nothing yet: [`SessionEvent::Readable`] says when there is.
    Blocked,
    /// The peer sends nothing more (everything it sent was read), even if
    /// the channel was reset after its FIN ([`SessionEvent::Reset`] says
    /// so, and sending fails).
    Finished,
    /// The channel was reset before the peer finished: nothing more either
    /// way (everything received before the reset was read).
    Reset {
        /// Why.
        code: ErrorCode,
        /// Why, for people.
        reason: String,
    },
}

impl Session {
    // ── offers ────────────────────────────────────────────────────────

    /// Takes an incoming channel. One that waits for its path (see
    /// [`IncomingPath`]) and has none by the broker's open timeout after
    /// `now` is reset ([`SessionEvent::Reset`] with [`ErrorCode::OpenTimeout`]).
    pub fn accept(&mut self, now: Instant, channel: ChannelId) -> Result<(), SessionError> {
        let wait = self.link.limits().map_or(DEFAULT_PATH_TIMEOUT, |l| {
            Duration::from_millis(u64::from(l.open_timeout_ms))
        });
        self.answer(channel, Some(now + wait))?;
        self.send_message(&Message::Accept { channel })
    }

    /// Refuses an incoming channel; the opener gets `reason`.
    pub fn reject(&mut self, channel: ChannelId, reason: &str) -> Result<(), SessionError> {
        self.answer(channel, None)?;
        self.channels.remove(&channel);
        self.wire_mut()?.mux.forget(channel);
        let reason = crate::mux::frame::truncate_utf8(reason, control::MAX_TEXT).to_owned();
        self.send_message(&Message::Reject { channel, reason })
    }

    /// The opener could not dial the peer directly: use the relay.
    pub fn direct_failed(&mut self, channel: ChannelId) -> Result<(), SessionError> {
        if let Some(c) = self.channels.get_mut(&channel) {
            c.direct = Direct::None;
        }
        self.send_message(&Message::DirectFailed { channel })
    }

    // ── reading and writing ───────────────────────────────────────────

    /// Reads up to `max` bytes of `channel`; the credit goes back to the
    /// sender. Once it was reset or finished, says so (after the bytes that
    /// came before; finished if the peer's FIN came before a reset). With `max` 0 it only looks: `Data` (empty) while bytes
    /// wait.
    pub fn recv(&mut self, channel: ChannelId, max: usize) -> Result<Recv, SessionError> {
        let c = self
            .channels
            .get_mut(&channel)
            .ok_or(SessionError::UnknownChannel(channel))?;
        if let Some(data) = c.received.take(max) {
            if let Some(wire) = self.link.wire_mut() {
                wire.mux.consume(channel, data.len());
            }
            return Ok(Recv::Data(data));
        }
        Ok(match Self::end_of(c) {
            Some(end) => end,
            None => {
                c.readable_told = false;
                Recv::Blocked
            }
        })
    }

    /// Why `channel` was reset, if it was.
    pub fn reset_reason(&self, channel: ChannelId) -> Option<(ErrorCode, &str)> {
        let c = self.channels.get(&channel)?;
        c.reset
            .as_ref()
            .map(|(code, reason)| (*code, reason.as_str()))
    }

    /// How many bytes [`Session::send`] takes now on `channel`.
    pub fn send_capacity(&self, channel: ChannelId) -> usize {
        match self.channels.get(&channel) {
            Some(c) if c.stage == ChannelStage::Open && !c.is_over() => {
                self.link.wire().map_or(0, |w| w.mux.send_capacity(channel))
            }
            _ => 0,
        }
    }

    /// Sends as much of `data` as credit allows; returns how much was taken.
    /// [`SessionEvent::Writable`] says when more credit arrived.
    pub fn send(&mut self, channel: ChannelId, data: Bytes) -> Result<usize, SessionError> {
        self.usable(channel)?;
        Ok(self.wire_mut()?.mux.send_up_to(channel, data)?)
    }

    /// Sends a frame of `data` straight from the caller's buffer when it is
    /// next on the wire (plain framing, nothing queued or waiting to go
    /// out, credit): `write` writes the parts it is given to the socket now
    /// and says how much it took; what it did not is kept (copied) to go
    /// out first. Returns how much of `data` was taken: 0 when this cannot
    /// be done now ([`Session::send`] queues it then).
    pub fn send_through(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        write: impl FnOnce(&[&[u8]]) -> usize,
    ) -> Result<usize, SessionError> {
        self.usable(channel)?;
        let wire = self.wire_mut()?;
        if !wire.is_plain() {
            return Ok(0);
        }
        Ok(wire.mux.send_through(channel, data, write))
    }

    /// Half-closes: this side sends nothing more on `channel`.
    pub fn finish(&mut self, channel: ChannelId) -> Result<(), SessionError> {
        self.usable(channel)?;
        Ok(self.wire_mut()?.mux.finish(channel)?)
    }

    /// Ends `channel` in both directions; the session forgets it.
    pub fn reset(
        &mut self,
        channel: ChannelId,
        code: ErrorCode,
        reason: &str,
    ) -> Result<(), SessionError> {
        if self.channels.remove(&channel).is_none() {
            return Err(SessionError::UnknownChannel(channel));
        }
        if let Some(wire) = self.link.wire_mut() {
            wire.mux.reset(channel, code, reason);
        }
        Ok(())
    }

    /// The application lets `channel` go: what it wrote is still delivered,
    /// then FIN; what was received and not read is given back; data that
    /// arrives later finds nobody and resets the channel. A channel that is
    /// over already is forgotten at once.
    pub fn close_channel(&mut self, channel: ChannelId) {
        let Some(c) = self.channels.get_mut(&channel) else {
            return;
        };
        if c.is_over() || self.link.wire().is_none() {
            self.channels.remove(&channel);
            return;
        }
        match c.stage {
            ChannelStage::Open => {}
            // Not answered yet: refused.
            ChannelStage::Offered { .. } => {
                let _ = self.reject(channel, "closed");
                return;
            }
            // No FIN before the route carries data: reset.
            ChannelStage::Opening | ChannelStage::AwaitingPath { .. } => {
                let _ = self.reset(channel, ErrorCode::Cancelled, "closed");
                return;
            }
        }
        c.dropped = true;
        let unread = c.received.clear();
        let wire = self.link.wire_mut().expect("checked");
        wire.mux.consume(channel, unread);
        // Finished already is fine: FIN goes once.
        let _ = wire.mux.finish(channel);
    }

    /// How `channel` ended, if it did: [`Recv::Finished`] or [`Recv::Reset`]
    /// (what a read says once the bytes are read).
    pub fn channel_end(&self, channel: ChannelId) -> Option<Recv> {
        Self::end_of(self.channels.get(&channel)?)
    }

    /// A reset after the peer's FIN does not take back the end of what it
    /// sent: that was whole (a relay resets a channel whose sender finished
    /// and then left, once it delivered all of it).
    pub(super) fn end_of(c: &Channel) -> Option<Recv> {
        match (&c.reset, c.fin || c.closed) {
            (_, true) => Some(Recv::Finished),
            (Some((code, reason)), false) => Some(Recv::Reset {
                code: *code,
                reason: reason.clone(),
            }),
            (None, false) => None,
        }
    }

    /// Channels this session knows, in any state.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    // ── internals ─────────────────────────────────────────────────────

    pub(super) fn usable(&self, channel: ChannelId) -> Result<(), SessionError> {
        self.ensure_ready()?;
        match self.channels.get(&channel) {
            Some(c) if c.stage == ChannelStage::Open && !c.is_over() => Ok(()),
            Some(_) => Err(SessionError::ChannelNotOpen(channel)),
            None => Err(SessionError::UnknownChannel(channel)),
        }
    }

    /// Marks an offered channel answered; `path_deadline` is how long an
    /// accepted one may wait for its path (a rejected one is forgotten next).
    fn answer(
        &mut self,
        channel: ChannelId,
        path_deadline: Option<Instant>,
    ) -> Result<(), SessionError> {
        self.ensure_ready()?;
        let c = self
            .channels
            .get_mut(&channel)
            .ok_or(SessionError::UnknownChannel(channel))?;
        let ChannelStage::Offered { await_path } = c.stage else {
            return Err(SessionError::ChannelNotOpen(channel));
        };
        c.stage = match (await_path, path_deadline) {
            (true, Some(deadline)) => ChannelStage::AwaitingPath { deadline },
            _ => ChannelStage::Open,
        };
        Ok(())
    }

    pub(super) fn path_deadlines(&self) -> impl Iterator<Item = Instant> + '_ {
        self.channels.values().filter_map(|c| match c.stage {
            ChannelStage::AwaitingPath { deadline } => Some(deadline),
            _ => None,
        })
    }

    /// Resets every accepted channel whose path did not come in time: the
    /// opener never dialed, or dialed and never said it failed.
    pub(super) fn expire_paths(&mut self, now: Instant) {
        if self.path_deadlines().all(|deadline| deadline > now) {
            return;
        }
        let due: Vec<ChannelId> = self
            .channels
            .iter()
            .filter(|(_, c)| {
                let due =
                    matches!(c.stage, ChannelStage::AwaitingPath { deadline } if deadline <= now);
                // A dialer that claimed it is finishing its handshake, under
                // the direct listener's own deadline.
                due && !c.direct.holds_reset()
            })
            .map(|(channel, _)| *channel)
            .collect();
        let reason = "the direct path never came";
        for channel in due {
            self.channels.remove(&channel);
            if let Some(wire) = self.link.wire_mut() {
                wire.mux.reset(channel, ErrorCode::OpenTimeout, reason);
            }
            self.events.push_back(SessionEvent::Reset {
                channel,
                code: ErrorCode::OpenTimeout,
                reason: reason.into(),
            });
        }
    }

    /// Bytes for `channel`: kept for the application, or (if it let the
    /// channel go) the channel is reset, since nobody will read them.
    pub(super) fn on_data(
        &mut self,
        channel: ChannelId,
        payload: &[u8],
    ) -> Result<(), SessionError> {
        let Some(c) = self.channels.get_mut(&channel) else {
            return Ok(());
        };
        if matches!(
            c.stage,
            ChannelStage::Opening | ChannelStage::Offered { .. }
        ) {
            // No route carries data before the target accepted (§5.6).
            return Err(SessionError::Protocol("data on a channel not open yet"));
        }
        if c.dropped {
            self.channels.remove(&channel);
            if let Some(wire) = self.link.wire_mut() {
                wire.mux.reset(channel, ErrorCode::Cancelled, "closed");
            }
            return Ok(());
        }
        c.received.push(payload);
        self.tell_readable(channel);
        Ok(())
    }

    /// The peer finished, or both directions did (`closed`).
    pub(super) fn on_end(&mut self, channel: ChannelId, closed: bool) {
        let Some(c) = self.channels.get_mut(&channel) else {
            return;
        };
        if closed && c.dropped {
            self.channels.remove(&channel);
            return;
        }
        c.fin = true;
        c.closed |= closed;
        self.tell_readable(channel);
        if closed {
            self.events
                .push_back(SessionEvent::ChannelClosed { channel });
        }
    }

    /// The peer or the broker reset `channel`. One the application holds
    /// stays (readable, then reset) until it lets go; others are forgotten.
    pub(super) fn on_reset(&mut self, channel: ChannelId, code: ErrorCode, reason: String) {
        let Some(c) = self.channels.get_mut(&channel) else {
            return;
        };
        if c.direct.holds_reset() {
            // Said once the claimed dial is over (`direct_abandoned`).
            c.reset = Some((code, reason));
            return;
        }
        match c.stage {
            ChannelStage::Open if !c.dropped => c.reset = Some((code, reason.clone())),
            _ => {
                self.channels.remove(&channel);
            }
        }
        self.events.push_back(SessionEvent::Reset {
            channel,
            code,
            reason,
        });
    }

    /// Says `channel` is readable, once until a read finds it empty.
    fn tell_readable(&mut self, channel: ChannelId) {
        let Some(c) = self.channels.get_mut(&channel) else {
            return;
        };
        if !c.readable_told {
            c.readable_told = true;
            self.events.push_back(SessionEvent::Readable { channel });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bulk data reuses the channel's buffer: once the reads drained it,
    /// the next bytes go where the last ones were, with no new allocation.
    #[test]
    fn a_drained_buffer_takes_the_next_bytes_in_place() {
        let mut received = Received::default();
        received.push(&[7; 64 * 1024]);
        let first = received.take(usize::MAX).unwrap();
        let at = first.as_ptr();
        drop(first);
        for round in 0..100u8 {
            // A read's frames, then the application reads it all.
            for frame in 0..4u8 {
                received.push(&[round ^ frame; 16 * 1024]);
            }
            let mut read = 0;
            while let Some(bytes) = received.take(10_000) {
                if read == 0 {
                    assert_eq!(bytes.as_ptr(), at, "round {round}: a new allocation");
                }
                assert_eq!(bytes[0], round ^ (read / (16 * 1024)) as u8);
                read += bytes.len();
            }
            assert_eq!(read, 64 * 1024);
        }
        received.push(b"unread");
        assert_eq!(received.clear(), 6);
    }
}
