//! One channel's flow-control state, both directions.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::{ChannelId, MuxError};

use super::pool::ChunkPool;

pub(super) struct Channel {
    // Receiving.
    /// Bytes the peer may still send: granted and not yet received.
    pub(super) recv_credit: u32,
    /// The size the receive window has grown to.
    pub(super) window: u32,
    /// Delivered to the application and not yet consumed.
    unread: usize,
    /// Consumed and not yet granted back.
    to_grant: u32,
    /// Granted and not yet sent: one WINDOW carries it all.
    pub(super) grant_owed: u32,
    recv_fin: bool,
    // Sending.
    /// Bytes this side may still send.
    pub(super) send_credit: u32,
    queue: VecDeque<Bytes>,
    /// Copied bytes after everything in `queue`, gathered into chunks of
    /// up to a pool chunk's size so that many small writes cost one
    /// allocation.
    tail: BytesMut,
    pub(super) queued: usize,
    pub(super) fin_queued: bool,
    fin_sent: bool,
    /// In the mux's ready list.
    pub(super) scheduled: bool,
    /// Given up once what is queued is sent: the RESET to send then (boxed:
    /// rare, and `Channel` stays small).
    pub(super) reset_when_sent: Option<Box<(super::ErrorCode, String)>>,
}

impl Channel {
    pub(super) fn new(window: u32) -> Self {
        Channel {
            recv_credit: window,
            window,
            unread: 0,
            to_grant: 0,
            grant_owed: 0,
            recv_fin: false,
            send_credit: window,
            queue: VecDeque::new(),
            tail: BytesMut::new(),
            queued: 0,
            fin_queued: false,
            fin_sent: false,
            scheduled: false,
            reset_when_sent: None,
        }
    }

    /// Checks a DATA frame from the peer as its header arrives: within
    /// the credit, and not after FIN.
    pub(super) fn check_frame(&self, id: ChannelId, len: usize) -> Result<(), MuxError> {
        if self.recv_fin {
            return Err(MuxError::DataAfterFin(id));
        }
        if len > self.recv_credit as usize {
            return Err(MuxError::BeyondCredit {
                channel: id,
                len,
                credit: self.recv_credit,
            });
        }
        Ok(())
    }

    /// Accounts for payload as it is passed on: the credit it used stays
    /// the peer's until then (a relay counts what is still to come as
    /// owed, not as queued anywhere). The frame was checked against the
    /// credit, which only grows meanwhile.
    pub(super) fn receive(&mut self, n: usize) {
        self.recv_credit = self.recv_credit.saturating_sub(n as u32);
        self.unread += n;
    }

    /// The peer's FIN arrived, at the end of its frame.
    pub(super) fn end_receiving(&mut self) {
        self.recv_fin = true;
    }

    pub(super) fn add_credit(&mut self, id: ChannelId, increment: u32) -> Result<(), MuxError> {
        self.send_credit = self
            .send_credit
            .checked_add(increment)
            .ok_or(MuxError::CreditOverflow(id))?;
        Ok(())
    }

    /// `n` delivered bytes were consumed. Returns what to grant and by how
    /// much the window grew, once half a window is due. The window doubles
    /// when the reader has nothing left unread: it keeps up with the sender.
    pub(super) fn consume(&mut self, n: usize, max_window: u32, room: u64) -> Option<(u32, u32)> {
        let n = n.min(self.unread);
        self.unread -= n;
        self.to_grant += n as u32;
        if self.to_grant < self.window / 2 || self.recv_fin {
            return None;
        }
        let growth = if self.unread == 0 {
            let wanted = self.window.min(max_window.saturating_sub(self.window));
            wanted.min(u32::try_from(room).unwrap_or(u32::MAX))
        } else {
            0
        };
        self.window += growth;
        let grant = self.to_grant + growth;
        self.to_grant = 0;
        Some((grant, growth))
    }

    pub(super) fn enqueue(&mut self, data: Bytes, pool: &mut ChunkPool) {
        if !data.is_empty() {
            self.seal_tail(pool);
            self.queued += data.len();
            self.queue.push_back(data);
        }
    }

    /// Queues a copy of `data`, in chunks of `pool`'s allocations: the
    /// queue holds what it counts and at most one partly filled allocation
    /// more.
    pub(super) fn enqueue_copy(&mut self, mut data: &[u8], pool: &mut ChunkPool) {
        self.queued += data.len();
        while !data.is_empty() {
            if self.tail.capacity() == self.tail.len() {
                self.seal_tail(pool);
                self.tail = pool.take();
            }
            let room = self.tail.capacity() - self.tail.len();
            let (now, rest) = data.split_at(room.min(data.len()));
            self.tail.extend_from_slice(now);
            data = rest;
        }
    }

    /// Moves the copied bytes into the queue as one chunk; a used-up
    /// allocation goes back to the pool, to be used again once sent.
    fn seal_tail(&mut self, pool: &mut ChunkPool) {
        if self.tail.is_empty() {
            return;
        }
        let used_up = self.tail.len() == self.tail.capacity();
        self.queue.push_back(self.tail.split().freeze());
        if used_up {
            pool.give(std::mem::take(&mut self.tail), self.queued);
        }
    }

    /// Credit left after what is queued: how much more may be queued now.
    pub(super) fn send_capacity(&self) -> usize {
        (self.send_credit as usize).saturating_sub(self.queued)
    }

    /// Whether a frame could go out now: data and credit, or a FIN owed.
    pub(super) fn wants_to_send(&self) -> bool {
        (self.queued > 0 && self.send_credit > 0) || self.fin_owed()
    }

    fn fin_owed(&self) -> bool {
        self.fin_queued && !self.fin_sent && self.queued == 0
    }

    /// The payload of the next DATA frame (a slice of the queue, at most
    /// `max_frame` and the credit) and whether it carries FIN.
    pub(super) fn next_frame(
        &mut self,
        max_frame: u32,
        pool: &mut ChunkPool,
    ) -> Option<(Bytes, bool)> {
        let allowed = self.send_credit.min(max_frame) as usize;
        if self.queue.is_empty() && allowed > 0 {
            self.seal_tail(pool);
        }
        let fin_owed = self.fin_owed();
        let payload = match self.queue.front_mut() {
            Some(_) if allowed == 0 => return None,
            Some(front) if front.len() <= allowed => self.queue.pop_front().expect("front exists"),
            Some(front) => front.split_to(allowed),
            None if fin_owed => Bytes::new(),
            None => return None,
        };
        self.queued -= payload.len();
        self.send_credit -= payload.len() as u32;
        let fin = self.fin_owed();
        self.fin_sent |= fin;
        // Drained: the rest of the last chunk's allocation goes back to
        // the pool, not kept by an idle channel.
        if self.queued == 0 && self.tail.is_empty() && self.tail.capacity() > 0 {
            pool.give(std::mem::take(&mut self.tail), 0);
        }
        Some((payload, fin))
    }

    pub(super) fn recv_finished(&self) -> bool {
        self.recv_fin
    }

    /// A channel to be reset once sent whose peer finished: its FIN, not
    /// handed out yet, is not sent (the RESET goes in its place).
    pub(super) fn unhear_fin(&mut self) {
        if self.reset_when_sent.is_some() && self.recv_fin && !self.fin_sent {
            self.fin_queued = false;
        }
    }

    /// Nothing more to send: the queue and any FIN are handed out.
    pub(super) fn sent_all(&self) -> bool {
        self.queued == 0 && (!self.fin_queued || self.fin_sent)
    }

    /// Both directions are over and our FIN has been handed out.
    pub(super) fn is_done(&self) -> bool {
        self.recv_fin && self.fin_sent
    }
}
