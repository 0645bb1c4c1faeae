//! The relay figures alone, for profiling: `perf record -g
//! target/release/examples/relay_only`.

use plugboard_benches::{floor, net};

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let bench = net::Bench::start().await;
        let (ours, raw) = net::relay_vs_raw(&bench, 64 << 20, 5).await;
        println!(
            "relay     {ours:>9.2?}  raw {raw:>9.2?}  ratio {:.2}",
            ours.as_secs_f64() / raw.as_secs_f64()
        );
        let (rt, rt_raw) = net::roundtrip_vs_raw(&bench, 20_000).await;
        println!(
            "round trip {rt:>9.2?}  raw {rt_raw:>9.2?}  ratio {:.2}",
            rt.as_secs_f64() / rt_raw.as_secs_f64()
        );
        if std::env::var_os("RELAY_ONLY").is_some() {
            return;
        }
        let (fwd, raw) = floor::forwarder_vs_raw(64 << 20, 5).await;
        println!(
            "forwarder {fwd:>9.2?}  raw {raw:>9.2?}  ratio {:.2}",
            fwd.as_secs_f64() / raw.as_secs_f64()
        );
        println!(
            "relay vs forwarder {:.2}",
            ours.as_secs_f64() / fwd.as_secs_f64()
        );
    });
}
