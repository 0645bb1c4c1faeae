//! Only the figures of the broker alone in a child process (`ratios` has
//! them too): CPU per TCP handshake, and memory per idle connection. Short
//! enough to profile the child:
//!
//! ```text
//! cargo run --release -p plugboard-benches --example broker_alone -- idle
//! PLUGBOARD_BENCH_CHILD_WRAPPER="perf record -g -o broker.perf --" \
//!     cargo run --release -p plugboard-benches --example broker_alone -- handshake
//! ```
//!
//! With an argument, `handshake` or `idle`, only that one. `idle` also
//! prints the child's memory mappings that grew, from `/proc/PID/smaps`:
//! size (address space) next to resident.

use std::collections::HashMap;

use plugboard_benches::broker;

const IDLE_CONNS: usize = 10_000;

fn main() {
    let what = std::env::args().nth(1).unwrap_or_default();
    if what == broker::CHILD_ARG {
        broker::child_main();
    }
    broker::raise_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if what != "idle" {
        let mut child = broker::BrokerProcess::start();
        let (ours, base) = broker::handshake_cpu_vs_primitives(&runtime, &mut child, 21, 200);
        println!(
            "TCP handshake, broker CPU  plugboard {ours:>9.2?}   server-side primitives {base:>9.2?}"
        );
        println!(
            "handshakes_per_s_vs_primitives {:.3}",
            ours.as_secs_f64() / base.as_secs_f64()
        );
    }
    if what != "handshake" {
        let child = broker::BrokerProcess::start();
        let maps_before = mappings(child.pid());
        let before = child.rss();
        let plugins = broker::open_idle(&runtime, &child, IDLE_CONNS, 64);
        let after = child.rss();
        let maps_after = mappings(child.pid());
        runtime.block_on(async move { drop(plugins) });
        println!("mappings that grew, per connection: address space, resident");
        let mut grown: Vec<_> = maps_after
            .iter()
            .map(|(name, &(size, rss))| {
                let (size0, rss0) = maps_before.get(name).copied().unwrap_or_default();
                (name, size.saturating_sub(size0), rss.saturating_sub(rss0))
            })
            .filter(|&(_, size, rss)| size > 0 || rss > 0)
            .collect();
        grown.sort_by_key(|&(_, _, rss)| std::cmp::Reverse(rss));
        for (name, size, rss) in grown {
            let per = |b: u64| b as f64 / IDLE_CONNS as f64;
            println!("  {name:<24} {:>9.0} {:>7.0}", per(size), per(rss));
        }
        println!("broker RSS {before} -> {after} bytes");
        println!(
            "idle_conn_bytes {:.0}",
            after.saturating_sub(before) as f64 / IDLE_CONNS as f64
        );
    }
}

/// Size and resident bytes per kind of mapping: `[heap]`, `[stack]`,
/// anonymous, or the file's name.
fn mappings(pid: u32) -> HashMap<String, (u64, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut totals: HashMap<String, (u64, u64)> = HashMap::new();
    let mut current = String::new();
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: range perms offset dev inode [name]
            let name = words.nth(4).unwrap_or("[anonymous]");
            current = name.rsplit('/').next().unwrap_or(name).to_owned();
        } else if first == "Size:" || first == "Rss:" {
            let kib: u64 = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            let entry = totals.entry(current.clone()).or_default();
            match first {
                "Size:" => entry.0 += kib * 1024,
                _ => entry.1 += kib * 1024,
            }
        }
    }
    totals
}
