//! Each path where it applies, many at once, and no descriptor left behind
//! once the channels are over: the broker hands socketpair ends out and
//! keeps no copy, the plugins close theirs and their direct TCP
//! connections.
//!
//! The scenario looks at this process's open descriptors (the broker runs
//! in it too): its test binary runs it alone, one broker and API at a time.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::api::{Api, Connect, Path};
use crate::broker::{start_for, Broker};
use crate::keys;
use crate::scenarios::{connect, run};
use crate::stream::{both_ways, check_reports, open_hashed, serve_hasher, Exchanged, MIB};

/// This process's open descriptors, each with what it is open on (so that
/// a number closed and opened again on something else counts as new).
/// The directory listing them is left out.
pub fn open_descriptors() -> BTreeSet<(u32, PathBuf)> {
    let listing = std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd");
    listing
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let fd = entry.file_name().to_str()?.parse().ok()?;
            let what = std::fs::read_link(entry.path()).ok()?;
            (!what.starts_with("/proc")).then_some((fd, what))
        })
        .collect()
}

/// How long the ends may take to close once both sides let go: a safety
/// net, not a measurement.
const CLOSING: Duration = Duration::from_secs(10);

/// Two hashers on the unix socket, "near" (no direct listener) and "far"
/// (one on loopback TCP); an opener on the unix socket and one over TCP.
/// At once: socketpairs between the unix plugins, the relay beside them,
/// the relay for the TCP opener to near (no descriptor crosses TCP and
/// near does not listen), a socketpair to far from the unix opener (on one
/// host it wins over TCP) and direct TCP from the TCP opener. Each end has
/// the path and the peer's key it should; every digest is checked. Then
/// every descriptor opened for them is closed.
pub fn direct_paths_leave_no_descriptor_behind<B: Broker, A: Api>() {
    let broker = start_for::<B, A>("paths", |_| {});
    let (unix, tcp) = (broker.unix.clone(), broker.tcp.clone());
    run::<A, _>(async {
        let (tx, mut reports) = mpsc::unbounded_channel();
        let near = connect::<A>(Connect::new(&unix, 1).name("near")).await;
        let _near = serve_hasher::<A>(near, tx.clone());
        let far = Connect::new(&unix, 4).name("far").direct("tcp:127.0.0.1:0");
        let _far = serve_hasher::<A>(connect::<A>(far).await, tx);
        let local = Arc::new(connect::<A>(Connect::new(&unix, 2)).await);
        let remote = Arc::new(connect::<A>(Connect::new(&tcp, 3)).await);
        let before = open_descriptors();

        // (opener, its seed, target, the target's seed, direct?, the path).
        let mut plan = Vec::new();
        for _ in 0..3 {
            plan.push((&local, 2, "near", 1, true, Path::SocketPair));
            plan.push((&remote, 3, "far", 4, true, Path::Tcp));
        }
        plan.push((&local, 2, "near", 1, false, Path::Relayed));
        plan.push((&remote, 3, "near", 1, true, Path::Relayed));
        plan.push((&local, 2, "far", 4, true, Path::SocketPair));
        let mut runs = Vec::new();
        for (i, (client, from, target, to, direct, path)) in plan.into_iter().enumerate() {
            let (client, seed, len) = ((*client).clone(), 2000 + i as u64, MIB + i as u64);
            runs.push((
                seed,
                from,
                A::spawn(async move {
                    let hashed = (seed, len);
                    let channel = open_hashed::<A>(&client, target, hashed, direct, path).await;
                    assert_eq!(A::peer(&channel), keys(to).public(), "channel {seed}");
                    let (sent, received) = both_ways::<A>(channel, seed, len).await;
                    Exchanged {
                        seed,
                        len,
                        path,
                        sent,
                        received,
                    }
                }),
            ));
        }
        let mut exchanged = Vec::new();
        let mut openers = Vec::new();
        for (seed, from, run) in runs {
            exchanged.push(run.await);
            openers.push((seed, from));
        }
        let by_seed = check_reports(&mut reports, &exchanged).await;
        for (seed, from) in openers {
            let peer = by_seed[&seed].peer;
            assert_eq!(
                peer,
                keys(from).public(),
                "channel {seed}: the opener's key"
            );
        }

        // Both ends of each are dropped (the hashers drop theirs after
        // reporting): every descriptor opened since `before` closes.
        let deadline = Instant::now() + CLOSING;
        let left = loop {
            let left: Vec<_> = open_descriptors().difference(&before).cloned().collect();
            if left.is_empty() || Instant::now() > deadline {
                break left;
            }
            A::sleep(Duration::from_millis(20)).await;
        };
        assert!(left.is_empty(), "descriptors leaked: {left:?}");
    });
}
