//! Hostile nodes in the workload: they share the broker with the honest
//! ones and break every rule a peer may break without breaking the
//! protocol. Their events are not checked (they are not honest); what is
//! checked is that the broker's queues stay within its budgets after every
//! step and that the honest nodes' invariants still hold.

use bytes::Bytes;
use rand_chacha::rand_core::RngCore;

use super::{stream_byte, Sim, NAMES};
use crate::control::{ChannelId, ErrorCode, Name, TransportKind};
use crate::keys::Keypair;
use crate::mux::{frame, Frame};
use crate::session::SessionEvent;
use crate::sim::net::NodeId;

/// Names only hostile nodes register.
const HOSTILE_NAMES: [&str; 2] = ["h0", "h1"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// Writes all its credit everywhere and mostly reads nothing.
    Deaf,
    /// Sends its data one byte per frame.
    Trickle,
    /// Opens as many channels as it may, and resets them.
    OpenFlood,
    /// Registers and leaves, with a fresh key each time.
    Churn,
    /// Grants credit on its channels in floods of one-byte WINDOW frames
    /// (what its session would merge into one), mostly without reading.
    WindowFlood,
}

/// A hostile node's own channels: where it may send, and what.
#[derive(Debug)]
pub(super) struct Hostile {
    kind: Kind,
    /// By channel: the stream seed it sends, and how far it is.
    channels: Vec<(ChannelId, u64, u64)>,
}

impl Sim {
    /// Connects a new hostile node of a random kind.
    pub(super) fn hostile_connect(&mut self) {
        let kind = match self.rand(5) {
            0 => Kind::Deaf,
            1 => Kind::Trickle,
            2 => Kind::OpenFlood,
            3 => Kind::WindowFlood,
            _ => Kind::Churn,
        };
        // Keys of their own, fresh ones for churners.
        let seed = match kind {
            Kind::Churn => 100 + self.rand(150) as u8,
            _ => 60 + self.rand(8) as u8,
        };
        if let Some(id) = self
            .net
            .connect(Keypair::from_seed([seed; 32]), TransportKind::Unix)
        {
            let hostile = Hostile {
                kind,
                channels: Vec::new(),
            };
            self.hostile.insert(id, hostile);
        }
    }

    /// One hostile node does its worst once.
    pub(super) fn hostile_act(&mut self) {
        let ids: Vec<NodeId> = self
            .hostile
            .keys()
            .copied()
            .filter(|id| !self.net.nodes[id].closed)
            .collect();
        if ids.is_empty() {
            return;
        }
        let id = ids[self.rand(ids.len() as u32) as usize];
        let kind = self.hostile[&id].kind;
        // Mostly deaf; now and then it reads, to learn its channels opened.
        self.net.node(id).slow = self.rand(4) != 0;
        match kind {
            Kind::Deaf => {
                self.hostile_open(id, 2);
                self.hostile_register(id);
                self.hostile_send(id, usize::MAX, 16 * 1024);
            }
            Kind::Trickle => {
                self.hostile_open(id, 1);
                self.hostile_send(id, 200, 1);
            }
            Kind::OpenFlood => {
                self.hostile_open(id, 8);
                let channels = &mut self.hostile.get_mut(&id).expect("listed").channels;
                if let Some((channel, _, _)) = channels.pop() {
                    let _ = self
                        .net
                        .node(id)
                        .session
                        .reset(channel, ErrorCode::Cancelled, "flood");
                }
            }
            Kind::WindowFlood => {
                self.hostile_open(id, 1);
                let mut flood = bytes::BytesMut::new();
                for (channel, _, _) in &self.hostile[&id].channels {
                    for _ in 0..500 {
                        let window = Frame::Window {
                            channel: *channel,
                            increment: 1,
                        };
                        frame::encode(&window, &mut flood);
                    }
                }
                self.net.send_raw(id, flood.freeze());
            }
            Kind::Churn => {
                if self.net.node(id).session.is_ready() && self.rand(2) == 0 {
                    self.net.kill(id);
                    self.hostile.remove(&id);
                    self.hostile_connect();
                } else {
                    self.hostile_register(id);
                }
            }
        }
    }

    fn hostile_register(&mut self, id: NodeId) {
        let now = self.net.now;
        let name = HOSTILE_NAMES[self.rand(2) as usize];
        let name = Name::new(name).expect("valid");
        let _ = self.net.node(id).session.register(now, name, false, None);
    }

    /// Opens `n` channels to honest or hostile names, with metadata an
    /// honest target accepts (the seed of the stream it will send).
    fn hostile_open(&mut self, id: NodeId, n: usize) {
        for _ in 0..n {
            let now = self.net.now;
            let name = match self.rand(4) {
                0 => HOSTILE_NAMES[self.rand(2) as usize],
                _ => NAMES[self.rand(NAMES.len() as u32) as usize],
            };
            let seed = self.net.rng().next_u64();
            let metadata = Bytes::copy_from_slice(&seed.to_be_bytes());
            let name = Name::new(name).expect("valid");
            let opened = self
                .net
                .node(id)
                .session
                .open(now, name, "sim", metadata, false);
            if let Ok((_, channel)) = opened {
                let channels = &mut self.hostile.get_mut(&id).expect("listed").channels;
                channels.push((channel, seed, 0));
            }
        }
    }

    /// Sends the right stream bytes (an honest target checks them) on every
    /// channel that takes them: `frames` frames of `each` bytes at most.
    fn hostile_send(&mut self, id: NodeId, frames: usize, each: usize) {
        let channels = std::mem::take(&mut self.hostile.get_mut(&id).expect("listed").channels);
        let mut kept = Vec::with_capacity(channels.len());
        for (channel, seed, mut sent) in channels {
            for _ in 0..frames {
                let data: Vec<u8> = (0..each as u64)
                    .map(|i| stream_byte(seed, sent + i))
                    .collect();
                match self.net.node(id).session.send(channel, Bytes::from(data)) {
                    Ok(n) if n > 0 => sent += n as u64,
                    _ => break,
                }
            }
            kept.push((channel, seed, sent));
        }
        self.hostile.get_mut(&id).expect("listed").channels = kept;
    }

    /// A hostile node's events: it accepts what it is offered (and then
    /// never reads it), forgets what ended. Nothing is checked.
    pub(super) fn hostile_event(&mut self, id: NodeId, event: SessionEvent) {
        match event {
            SessionEvent::Incoming { channel, .. } => {
                let now = self.net.now;
                let _ = self.net.node(id).session.accept(now, channel);
            }
            SessionEvent::Reset { channel, .. } | SessionEvent::ChannelClosed { channel } => {
                if let Some(h) = self.hostile.get_mut(&id) {
                    h.channels.retain(|c| c.0 != channel);
                }
            }
            SessionEvent::Closed { .. } => {
                self.hostile.remove(&id);
            }
            _ => {}
        }
    }
}
