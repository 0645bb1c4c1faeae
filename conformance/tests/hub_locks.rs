//! Relayed data moves between connections without the hub: the number of
//! times the server takes the hub's lock while a channel carries data does
//! not grow with the data (it is control traffic and lifecycle). Tested on
//! the threaded server (plugboard-runtime's, here on smol); mio's broker
//! has no lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_lite::{AsyncReadExt as _, AsyncWriteExt as _};
use plugboard_conformance::api::{Api, Connect, SmolApi};
use plugboard_conformance::broker::{config, socket_path, SmolBroker};
use plugboard_conformance::scenarios::{connect, run};
use plugboard_smol::{Addr, Server};

const MIB: usize = 1024 * 1024;

/// Hub locks taken while `len` bytes go one way over a relayed channel
/// between two plugins on `addr`, from the first byte written to the last
/// read.
async fn locks_while_relaying(addr: &str, seed: u8, len: usize, locks: &AtomicU64) -> u64 {
    let name = format!("sink{seed}");
    let sink = connect::<SmolApi>(Connect::new(addr, seed).name(&name)).await;
    let source = connect::<SmolApi>(Connect::new(addr, seed + 1)).await;
    let (opened, accepted) = futures_lite::future::zip(
        SmolApi::open(&source, &name, "bulk", Bytes::new(), false),
        async { SmolApi::accept(SmolApi::incoming(&sink).await.unwrap()).await },
    )
    .await;
    let (mut tx, mut rx) = (opened.unwrap(), accepted.unwrap());
    // A first byte each way, so both ends are up before counting.
    tx.write_all(&[1]).await.unwrap();
    let mut one = [0u8; 1];
    rx.read_exact(&mut one).await.unwrap();

    let before = locks.load(Ordering::Relaxed);
    let writer = SmolApi::spawn(async move {
        let chunk = vec![7u8; 64 * 1024];
        for _ in 0..len / chunk.len() {
            tx.write_all(&chunk).await.unwrap();
        }
        tx.close().await.unwrap();
        tx
    });
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0;
    while got < len {
        let n = rx.read(&mut buf).await.unwrap();
        assert!(n > 0, "ended after {got} of {len} bytes");
        got += n;
    }
    let taken = locks.load(Ordering::Relaxed) - before;
    drop(writer.await);
    taken
}

/// Serves `addrs` while `scenario` runs.
fn with_server<F: std::future::Future<Output = ()>>(
    addrs: &[Addr],
    scenario: impl FnOnce(Vec<Addr>, Arc<AtomicU64>) -> F,
) {
    let server = Server::bind(config(), addrs).unwrap();
    let locks = server.hub_locks();
    let addrs = server.local_addrs();
    run::<SmolApi, _>(async {
        let (stop, stopped) = smol::channel::bounded::<()>(1);
        let task = smol::spawn(server.run(async move {
            let _ = stopped.recv().await;
        }));
        scenario(addrs, locks).await;
        drop(stop);
        task.await;
    });
}

#[test]
fn relayed_data_does_not_take_the_hubs_lock() {
    let unix = Addr::Unix(socket_path::<SmolBroker>("hub-locks"));
    let tcp = Addr::Tcp("127.0.0.1:0".into());
    with_server(&[unix, tcp], |addrs, locks| async move {
        let (unix, tcp) = (addrs[0].to_string(), addrs[1].to_string());
        let small = locks_while_relaying(&unix, 1, 16 * MIB, &locks).await;
        let large = locks_while_relaying(&unix, 3, 1024 * MIB, &locks).await;
        let small_boxed = locks_while_relaying(&tcp, 5, 4 * MIB, &locks).await;
        let large_boxed = locks_while_relaying(&tcp, 7, 64 * MIB, &locks).await;
        println!(
            "hub locks while relaying: unix 16 MiB {small}, 1 GiB {large}; \
             tcp 4 MiB {small_boxed}, 64 MiB {large_boxed}"
        );
        // 64 and 16 times the data, and no more locks than a handful of
        // control frames (a WINDOW that needs more of the receiver's
        // budget, the FIN); one per 16 KiB frame would be 65,536 for the
        // GiB.
        for (small, large) in [(small, large), (small_boxed, large_boxed)] {
            assert!(large <= small + 32, "{small} then {large}");
            assert!(large < 256, "{large}");
        }
    });
}
