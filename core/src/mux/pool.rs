//! Allocations for copied chunks, used again once what was cut from them
//! is sent. A relay copies what it queues into chunks of its own; taking
//! fresh memory for each, a busy queue's drained chunks pile up free at
//! the top of the heap, the allocator gives them back to the system, and
//! the next burst faults them in again (a third of a relaying broker's CPU
//! went there). A chunk's allocation is reused only once nothing cut from
//! it is alive, so what is queued still holds exactly what it counts.

use std::collections::VecDeque;

use bytes::BytesMut;

/// Most allocations kept for reuse per mux (each [`CHUNK`] bytes): what a
/// queue as deep as the default `max_window` (16 MiB) cycles through. They
/// are the queue's own chunks, or ones it sent since the mux last had
/// nothing to send: charged to the budgets while queued, and not kept
/// once the queue empties.
const MAX_SPARE: usize = 1024;
/// Allocations a mux with nothing left to send keeps: none, as an idle
/// connection holds no buffer (the chunks still being written keep their
/// own allocations alive until then).
const KEPT_IDLE: usize = 0;

/// The size of a chunk: one frame's worth.
pub(super) const CHUNK: usize = 16 * 1024;

/// Chunk allocations, oldest first: handles that share an allocation with
/// chunks queued or being written.
#[derive(Default)]
pub(super) struct ChunkPool {
    spare: VecDeque<BytesMut>,
}

impl ChunkPool {
    /// An empty buffer of [`CHUNK`] bytes' capacity: the oldest allocation
    /// if nothing cut from it is alive any more, else a fresh one.
    pub(super) fn take(&mut self) -> BytesMut {
        if let Some(mut oldest) = self.spare.pop_front() {
            if oldest.try_reclaim(CHUNK) {
                return oldest;
            }
            self.spare.push_front(oldest);
        }
        BytesMut::with_capacity(CHUNK)
    }

    /// Keeps `buf`'s allocation (its bytes were cut off and queued) for
    /// when they are sent.
    pub(super) fn give(&mut self, buf: BytesMut) {
        if self.spare.len() == MAX_SPARE {
            self.spare.pop_front();
        }
        self.spare.push_back(buf);
    }

    /// Nothing is left to send: keep no burst's worth of allocations.
    pub(super) fn trim(&mut self) {
        self.spare.truncate(KEPT_IDLE);
    }

    /// Allocations held.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.spare.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_allocation_is_reused_once_its_chunks_are_gone() {
        let mut pool = ChunkPool::default();
        let mut buf = pool.take();
        buf.extend_from_slice(&[1; CHUNK]);
        let chunk = buf.split().freeze();
        let at = chunk.as_ptr();
        pool.give(buf);
        // Still queued: a fresh allocation.
        let other = pool.take();
        assert_ne!(other.as_ptr(), at);
        drop(chunk);
        let again = pool.take();
        assert_eq!((again.as_ptr(), again.capacity()), (at, CHUNK));
        assert_eq!(pool.len(), 0);
    }

    #[test]
    fn the_pool_is_bounded_and_trimmed() {
        let mut pool = ChunkPool::default();
        for _ in 0..MAX_SPARE + 10 {
            pool.give(BytesMut::with_capacity(CHUNK));
        }
        assert_eq!(pool.len(), MAX_SPARE);
        pool.trim();
        assert_eq!(pool.len(), KEPT_IDLE);
    }
}
