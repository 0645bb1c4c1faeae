//! Socketpair ends for direct channels, from the moment the broker asks
//! for a pair until each end rides out on the frame that announces it.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;

use plugboard_core::broker::{ConnId, PairEnd, PairId, Transmit};
use plugboard_core::Instant;

use crate::{BrokerFace, WriteQueue};

/// The ends the broker announced and its connections have not written yet.
#[derive(Debug, Default)]
pub struct SocketPairs {
    ends: HashMap<(PairId, PairEnd), (ConnId, OwnedFd)>,
}

impl SocketPairs {
    /// No pairs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the pair the broker asked for (`Event::CreateSocketPair`) and
    /// tells it whether that worked; the broker queues each end's frame.
    pub fn create(
        &mut self,
        broker: &mut impl BrokerFace,
        now: Instant,
        pair: PairId,
        opener: ConnId,
        target: ConnId,
    ) {
        match std::os::unix::net::UnixStream::pair() {
            Ok((a, b)) => {
                // Held first: the broker queues both frames at once.
                let (o, t) = ((pair, PairEnd::Opener), (pair, PairEnd::Target));
                self.ends.insert(o, (opener, a.into()));
                self.ends.insert(t, (target, b.into()));
                if !broker.socketpair_ready(now, pair, true) {
                    self.ends.remove(&o);
                    self.ends.remove(&t);
                }
            }
            Err(e) => {
                tracing::warn!("socketpair: {e}; relaying instead");
                broker.socketpair_ready(now, pair, false);
            }
        }
    }

    /// `conn` is gone: the ends meant for it close (their peers read the
    /// end of the stream).
    pub fn forget_conn(&mut self, conn: ConnId) {
        self.ends.retain(|_, (to, _)| *to != conn);
    }

    /// Ends held now.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// No ends held.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Moves the broker's output for `conn` into `queue` until it holds
    /// `batch` bytes or the broker has no more, each socketpair end with the
    /// frame that announces it. An error cuts the connection: an end that
    /// went missing, or one meant for a socket that cannot carry it.
    pub fn take_output(
        &mut self,
        broker: &mut impl BrokerFace,
        conn: ConnId,
        queue: &mut WriteQueue,
        batch: usize,
        carries_fds: bool,
    ) -> io::Result<()> {
        while queue.len() < batch {
            let Some(t) = broker.poll_transmit(conn) else {
                break;
            };
            self.push(t, queue, carries_fds)?;
        }
        Ok(())
    }

    /// Moves one piece of the broker's output into `queue`, with the
    /// socketpair end its frame announces. An error cuts the connection:
    /// an end that went missing, or one meant for a socket that cannot
    /// carry it.
    pub fn push(
        &mut self,
        t: Transmit,
        queue: &mut WriteQueue,
        carries_fds: bool,
    ) -> io::Result<()> {
        match t.fd {
            None => queue.push(t.data),
            Some(end) => match self.ends.remove(&end) {
                Some((_, fd)) if carries_fds => queue.push_with_fd(t.data, fd),
                Some(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        "descriptors cannot cross a TCP connection",
                    ))
                }
                None => return Err(io::Error::other("a socketpair end went missing")),
            },
        }
        Ok(())
    }
}
