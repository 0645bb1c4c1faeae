//! Hashed streams: a channel carries pseudo-random bytes from a seed, and
//! both ends compare SHA-256 digests, so a lost, duplicated or changed byte
//! anywhere fails the scenario.

use std::collections::HashMap;
use std::io;

use bytes::Bytes;
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use plugboard_core::PublicKey;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use crate::api::{Api, Path, Spawned};

/// How many bytes went by, and their SHA-256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest {
    /// Bytes.
    pub len: u64,
    /// Their hash.
    pub hash: [u8; 32],
}

const CHUNK: usize = 64 * 1024;
/// A mebibyte.
pub const MIB: u64 = 1 << 20;

/// Writes `len` bytes from `seed`, then closes its direction; returns the
/// digest of what it wrote.
pub async fn send_stream<W: AsyncWrite + Unpin>(
    w: &mut W,
    seed: u64,
    len: u64,
) -> io::Result<Digest> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        w.write_all(&buf[..n]).await?;
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    w.close().await?;
    Ok(Digest {
        len,
        hash: hasher.finalize().into(),
    })
}

/// Reads to the end; returns the digest of what it read.
pub async fn recv_stream<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Digest> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut len = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(Digest {
                len,
                hash: hasher.finalize().into(),
            });
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
}

/// The digest `send_stream(seed, len)` produces, computed alone.
pub fn expected_digest(seed: u64, len: u64) -> Digest {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    Digest {
        len,
        hash: hasher.finalize().into(),
    }
}

/// The seed of the stream a hasher sends back for an opener's `seed`.
pub fn reply_seed(seed: u64) -> u64 {
    seed ^ 0x5eed_5eed_5eed_5eed
}

/// What a hasher saw on one channel.
#[derive(Debug)]
pub struct Report {
    /// The opener's seed.
    pub seed: u64,
    /// The path of the hasher's end.
    pub path: Path,
    /// The key of its other end.
    pub peer: PublicKey,
    /// What it read.
    pub received: Digest,
    /// What it wrote.
    pub sent: Digest,
}

/// Sends `len` bytes from `seed` while reading everything the other way, on
/// one channel; returns (sent, received).
pub async fn both_ways<A: Api>(channel: A::Channel, seed: u64, len: u64) -> (Digest, Digest) {
    let (mut rd, mut wr) = futures_lite::io::split(channel);
    let writer = A::spawn(async move { send_stream(&mut wr, seed, len).await });
    let received = recv_stream(&mut rd).await.expect("a hashed read");
    let sent = writer.await.expect("a hashed write");
    (sent, received)
}

/// Sends `len` bytes from `seed` on `channel`, whose other end echoes,
/// while reading what comes back; fails unless the same bytes came back.
pub async fn echo_through<A: Api>(channel: A::Channel, seed: u64, len: u64) {
    let (sent, received) = both_ways::<A>(channel, seed, len).await;
    assert_eq!(sent, expected_digest(seed, len));
    assert_eq!(received, sent, "the echo differs");
}

/// A hasher on `plugin`: each incoming channel's metadata is `seed, len`
/// (u64 LE each); it hashes what it reads while it sends `len` bytes from
/// `reply_seed(seed)`, then reports both digests. Runs until the plugin's
/// connection ends.
pub fn serve_hasher<A: Api>(
    plugin: A::Plugin,
    reports: mpsc::UnboundedSender<Report>,
) -> Spawned<()> {
    A::spawn(async move {
        while let Some(incoming) = A::incoming(&plugin).await {
            answer_hashed::<A>(incoming, reports.clone());
        }
    })
}

/// What [`serve_hasher`] does with one incoming channel, in a task of its own.
pub fn answer_hashed<A: Api>(incoming: A::Incoming, reports: mpsc::UnboundedSender<Report>) {
    let meta = A::metadata(&incoming);
    let seed = u64::from_le_bytes(meta[..8].try_into().expect("a seed"));
    let len = u64::from_le_bytes(meta[8..16].try_into().expect("a length"));
    drop(A::spawn(async move {
        let Ok(channel) = A::accept(incoming).await else {
            return;
        };
        let (path, peer) = (A::path(&channel), A::peer(&channel));
        let (sent, received) = both_ways::<A>(channel, reply_seed(seed), len).await;
        let _ = reports.send(Report {
            seed,
            path,
            peer,
            received,
            sent,
        });
    }));
}

/// Opens a channel to the hasher `target` (asking for a direct one if
/// `direct`) that must take `path`, telling it `seed` and `len`.
pub async fn open_hashed<A: Api>(
    client: &A::Plugin,
    target: &str,
    (seed, len): (u64, u64),
    direct: bool,
    path: Path,
) -> A::Channel {
    let mut meta = Vec::with_capacity(16);
    meta.extend_from_slice(&seed.to_le_bytes());
    meta.extend_from_slice(&len.to_le_bytes());
    let channel = A::open(client, target, "hash", Bytes::from(meta), direct)
        .await
        .expect("the open");
    assert_eq!(A::path(&channel), path, "channel {seed}: the opener's path");
    channel
}

/// Opens a channel to the hasher `target` that must take `path`, and runs one
/// hashed exchange on it: `len` bytes each way at once. Returns (sent,
/// received).
pub async fn exchange<A: Api>(
    client: &A::Plugin,
    target: &str,
    seed: u64,
    len: u64,
    path: Path,
) -> (Digest, Digest) {
    let direct = path != Path::Relayed;
    let channel = open_hashed::<A>(client, target, (seed, len), direct, path).await;
    both_ways::<A>(channel, seed, len).await
}

/// What the opener's end of one hashed exchange saw.
#[derive(Debug, Clone, Copy)]
pub struct Exchanged {
    /// The opener's seed.
    pub seed: u64,
    /// Bytes each way.
    pub len: u64,
    /// The path both ends must have taken.
    pub path: Path,
    /// What the opener wrote.
    pub sent: Digest,
    /// What it read.
    pub received: Digest,
}

/// Waits for the hasher's report on each of `exchanged` and checks that
/// both ends took the path and that no byte was lost, duplicated or changed
/// either way. Returns the reports, by seed.
pub async fn check_reports(
    reports: &mut mpsc::UnboundedReceiver<Report>,
    exchanged: &[Exchanged],
) -> HashMap<u64, Report> {
    let mut by_seed = HashMap::new();
    for _ in exchanged {
        let r = reports.recv().await.expect("the hasher reports");
        by_seed.insert(r.seed, r);
    }
    for &Exchanged {
        seed,
        len,
        path,
        sent,
        received,
    } in exchanged
    {
        let report = &by_seed[&seed];
        assert_eq!(report.path, path, "channel {seed}: the hasher's path");
        assert_eq!(sent, expected_digest(seed, len), "channel {seed}: sent");
        assert_eq!(
            report.received, sent,
            "channel {seed}: damaged on the way in"
        );
        assert_eq!(
            received, report.sent,
            "channel {seed}: damaged on the way back"
        );
        assert_eq!(received, expected_digest(reply_seed(seed), len));
    }
    by_seed
}

/// `client` opens a channel per entry of `sizes`, all at once on its one
/// connection, to the hasher `target`; each must take `path` at both ends,
/// and every digest is checked at both ends.
pub async fn hashed_exchanges<A: Api>(
    client: std::sync::Arc<A::Plugin>,
    target: &'static str,
    reports: &mut mpsc::UnboundedReceiver<Report>,
    sizes: &[u64],
    path: Path,
) {
    let mut runs = Vec::new();
    for (i, &len) in sizes.iter().enumerate() {
        let client = client.clone();
        let seed = 1000 + i as u64;
        runs.push((
            seed,
            len,
            A::spawn(async move { exchange::<A>(&client, target, seed, len, path).await }),
        ));
    }
    let mut exchanged = Vec::new();
    for (seed, len, run) in runs {
        let (sent, received) = run.await;
        exchanged.push(Exchanged {
            seed,
            len,
            path,
            sent,
            received,
        });
    }
    check_reports(reports, &exchanged).await;
}
