//! Writing many queued chunks with few system calls.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf as _, Bytes};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Most chunks handed to one vectored write.
const MAX_SLICES: usize = 64;

/// Writes every chunk in `queue`, gathering them into vectored writes (a
/// frame's header and its payload go out together, without a copy).
pub(crate) async fn write_queue(
    writer: &mut (impl AsyncWrite + Unpin + ?Sized),
    queue: &mut VecDeque<Bytes>,
) -> std::io::Result<()> {
    while !queue.is_empty() {
        let slices: Vec<IoSlice<'_>> = queue
            .iter()
            .take(MAX_SLICES)
            .map(|b| IoSlice::new(b))
            .collect();
        let mut written = writer.write_vectored(&slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let front = queue
                .front_mut()
                .expect("written bytes came from the queue");
            let n = written.min(front.len());
            front.advance(n);
            written -= n;
            if front.is_empty() {
                queue.pop_front();
            }
        }
    }
    Ok(())
}
