//! The floor under any relay: a forwarder that only copies bytes from one
//! unix socket to another (no framing, no credit, no broker), between the
//! same writer and reader as `net::relay_vs_raw`. A relay that reads and
//! writes sockets cannot beat it, so it says how much of the relay's cost
//! is plugboard's and how much is the extra hop's.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// (forwarded, raw) times for `total` bytes in one direction, medians of
/// `rounds`, alternating which goes first.
pub async fn forwarder_vs_raw(total: usize, rounds: usize) -> (Duration, Duration) {
    let mut forwarded = Vec::new();
    let mut raw = Vec::new();
    for i in 0..rounds {
        for turn in 0..2 {
            if (i + turn) % 2 == 0 {
                let (mut wr, mut into_forwarder) = UnixStream::pair().unwrap();
                let (mut out_of_forwarder, rd) = UnixStream::pair().unwrap();
                let forwarder = tokio::spawn(async move {
                    let mut buf = vec![0u8; 256 * 1024];
                    loop {
                        let n = into_forwarder.read(&mut buf).await.unwrap();
                        if n == 0 {
                            return;
                        }
                        out_of_forwarder.write_all(&buf[..n]).await.unwrap();
                    }
                });
                forwarded.push(one_way(&mut wr, rd, total).await);
                drop(wr);
                forwarder.await.unwrap();
            } else {
                let (mut wr, rd) = UnixStream::pair().unwrap();
                raw.push(one_way(&mut wr, rd, total).await);
            }
        }
    }
    (median(forwarded), median(raw))
}

async fn one_way(wr: &mut UnixStream, mut rd: UnixStream, total: usize) -> Duration {
    let reading = tokio::spawn(async move {
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0;
        while got < total {
            let n = rd.read(&mut buf).await.unwrap();
            assert!(n > 0, "ended early");
            got += n;
        }
        Instant::now()
    });
    let start = Instant::now();
    let chunk = vec![0x5au8; 64 * 1024];
    let mut sent = 0;
    while sent < total {
        wr.write_all(&chunk).await.unwrap();
        sent += chunk.len();
    }
    reading.await.unwrap() - start
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}
