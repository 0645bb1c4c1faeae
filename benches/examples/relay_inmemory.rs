//! The in-memory relay alone (`relay_inmemory_vs_memcpy` without its
//! baseline), for profiling: `perf record -g
//! target/release/examples/relay_inmemory`.

use std::time::{Duration, Instant};

use plugboard_benches::relay::{Relay, WRITE};

fn main() {
    let mut relay = Relay::default();
    let run = Duration::from_secs(
        std::env::args()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(5),
    );
    let start = Instant::now();
    let mut writes = 0u64;
    while start.elapsed() < run {
        for _ in 0..1000 {
            assert_eq!(relay.write(), WRITE);
        }
        writes += 1000;
    }
    let per = start.elapsed() / writes as u32;
    println!("{writes} writes of {WRITE} bytes: {per:?} each");
}
