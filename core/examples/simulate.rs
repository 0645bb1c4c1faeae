//! Runs the deterministic simulation for a range of seeds.
//!
//! ```text
//! cargo run --release -p plugboard-core --features sim --example simulate -- --seeds N --start S [--steps K]
//! ```
//! Prints every violation with the command that reruns its seed alone; the
//! last line is `seeds=N violations=V`.

use clap::Parser;
use plugboard_core::sim;

#[derive(Parser)]
struct Args {
    /// How many seeds.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Workload steps per seed.
    #[arg(long, default_value_t = 300)]
    steps: usize,
}

fn main() {
    let args = Args::parse();
    let mut violations = 0;
    let mut totals = sim::RunStats::default();
    for seed in args.start..args.start + args.seeds {
        match sim::run(seed, args.steps) {
            Ok(stats) => {
                totals.connects += stats.connects;
                totals.channels += stats.channels;
                totals.bytes += stats.bytes;
                totals.budget_refusals += stats.budget_refusals;
                totals.resyncs += stats.resyncs;
                totals.outages += stats.outages;
                totals.reconnects += stats.reconnects;
            }
            Err(violation) => {
                violations += 1;
                println!("VIOLATION {violation}");
                println!(
                    "  rerun: cargo run --release -p plugboard-core --features sim --example simulate -- --seeds 1 --start {seed} --steps {}",
                    args.steps
                );
            }
        }
    }
    println!(
        "plugins={} channels={} checked_bytes={} budget_refusals={} resyncs={} outages={} reconnects={}",
        totals.connects,
        totals.channels,
        totals.bytes,
        totals.budget_refusals,
        totals.resyncs,
        totals.outages,
        totals.reconnects
    );
    println!("seeds={} violations={violations}", args.seeds);
    if violations > 0 {
        std::process::exit(1);
    }
}
