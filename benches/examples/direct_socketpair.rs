//! Only `direct_unix_vs_raw` (`ratios` has it too): a direct socketpair
//! channel between two plugins vs a raw unix socket pair, one way. Short
//! enough to repeat and to profile:
//!
//! ```text
//! cargo run --release -p plugboard-benches --example direct_socketpair -- [MIB [ROUNDS]]
//! perf record -g -o direct.perf -- target/release/examples/direct_socketpair 64 61
//! ```

use plugboard_benches::net;

fn main() {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().map_or(64, |a| a.parse().expect("MiB"));
    let rounds: usize = args.next().map_or(61, |a| a.parse().expect("rounds"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (ours, raw) = runtime.block_on(async {
        let bench = net::Bench::start().await;
        net::direct_vs_raw(&bench, mib << 20, rounds).await
    });
    let mib_s = |d: std::time::Duration| mib as f64 / d.as_secs_f64();
    println!(
        "{mib} MiB, median of {rounds}: direct channel {ours:.2?} ({:.0} MiB/s)   raw socket {raw:.2?} ({:.0} MiB/s)",
        mib_s(ours),
        mib_s(raw)
    );
    println!(
        "direct_unix_vs_raw {:.3}",
        ours.as_secs_f64() / raw.as_secs_f64()
    );
}
