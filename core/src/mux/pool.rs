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
/// queue as deep as the default `max_window` (16 MiB) cycles through. Most
/// are the chunks still queued or being written (charged to the budgets
/// while queued); free ones beyond the queue's size plus [`SLACK`] go.
const MAX_SPARE: usize = 1024;
/// Allocations kept beyond what the queue that gives one back holds: the
/// pool never keeps much more than is queued (and charged to a budget).
const SLACK: usize = 8;
/// Allocations looked at per take or give: chunks still being sent move to
/// the back, so the ones sent surface at the front (channels send at their
/// own pace, not in the order their chunks were cut).
const PROBES: usize = 4;
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
    /// An empty buffer of [`CHUNK`] bytes' capacity: an allocation nothing
    /// cut from is alive any more, else a fresh one.
    pub(super) fn take(&mut self) -> BytesMut {
        for _ in 0..PROBES.min(self.spare.len()) {
            let mut oldest = self.spare.pop_front().expect("counted");
            if oldest.try_reclaim(CHUNK) {
                return oldest;
            }
            self.spare.push_back(oldest); // still being sent
        }
        BytesMut::with_capacity(CHUNK)
    }

    /// Keeps `buf`'s allocation (its bytes were cut off and queued on a
    /// channel that now has `queued` bytes queued) for when they are sent.
    pub(super) fn give(&mut self, buf: BytesMut, queued: usize) {
        self.spare.push_back(buf);
        self.prune(queued);
    }

    /// Lets a few free allocations go while the pool holds more than
    /// `queued` bytes' worth (a channel's queue, as it gives back or sends
    /// a chunk) plus [`SLACK`]: a queue that shrank does not leave its
    /// memory here. Ones still being sent cost nothing to keep (their
    /// memory is alive) and move to the back.
    pub(super) fn prune(&mut self, queued: usize) {
        let keep = (queued / CHUNK + SLACK).min(MAX_SPARE);
        for _ in 0..PROBES {
            if self.spare.len() <= keep {
                break;
            }
            let mut oldest = self.spare.pop_front().expect("over `keep`");
            if !oldest.try_reclaim(CHUNK) && self.spare.len() < MAX_SPARE {
                self.spare.push_back(oldest);
            }
        }
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
    fn allocations_still_being_sent_are_kept_and_passed_over() {
        let mut pool = ChunkPool::default();
        let mut sending = Vec::new();
        for _ in 0..3 {
            let mut buf = pool.take();
            buf.extend_from_slice(&[2; CHUNK]);
            sending.push(buf.split().freeze());
            pool.give(buf, 0);
        }
        // The queue is empty by its count, but the chunks are being
        // written: their allocations stay, and a take passes them over.
        assert_eq!(pool.len(), 3);
        let fresh = pool.take();
        assert!(sending.iter().all(|c| c.as_ptr() != fresh.as_ptr()));
        let second = sending.remove(1).as_ptr();
        assert_eq!(pool.take().as_ptr(), second, "the one that was sent");
    }

    #[test]
    fn an_allocation_is_reused_once_its_chunks_are_gone() {
        let mut pool = ChunkPool::default();
        let mut buf = pool.take();
        buf.extend_from_slice(&[1; CHUNK]);
        let chunk = buf.split().freeze();
        let at = chunk.as_ptr();
        pool.give(buf, CHUNK);
        // Still queued: a fresh allocation.
        let other = pool.take();
        assert_ne!(other.as_ptr(), at);
        drop(chunk);
        let again = pool.take();
        assert_eq!((again.as_ptr(), again.capacity()), (at, CHUNK));
        assert_eq!(pool.len(), 0);
    }

    #[test]
    fn the_pool_holds_about_what_is_queued_and_is_trimmed() {
        let mut pool = ChunkPool::default();
        for _ in 0..MAX_SPARE + 10 {
            pool.give(BytesMut::with_capacity(CHUNK), usize::MAX);
        }
        assert_eq!(pool.len(), MAX_SPARE);
        // The queue shrank: so does the pool, its free allocations a few
        // at a time.
        for _ in 0..MAX_SPARE {
            pool.give(BytesMut::with_capacity(CHUNK), 3 * CHUNK);
        }
        assert_eq!(pool.len(), 3 + SLACK);
        pool.trim();
        assert_eq!(pool.len(), KEPT_IDLE);
    }
}
