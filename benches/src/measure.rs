//! Timing two functions against each other in one run.

use std::hint::black_box;
use std::time::{Duration, Instant};

/// Time per call of `ours` and of `baseline`, measured in alternating rounds
/// so that frequency changes and noise from the other core hit both alike.
/// Each figure is the median over `rounds` rounds of the mean per call.
pub fn compare<A, B>(
    rounds: usize,
    round_time: Duration,
    mut ours: impl FnMut() -> A,
    mut baseline: impl FnMut() -> B,
) -> (Duration, Duration) {
    let ours_calls = calls_for(round_time, &mut ours);
    let baseline_calls = calls_for(round_time, &mut baseline);
    let mut ours_times = Vec::with_capacity(rounds);
    let mut baseline_times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        ours_times.push(per_call(ours_calls, &mut ours));
        baseline_times.push(per_call(baseline_calls, &mut baseline));
    }
    (median(ours_times), median(baseline_times))
}

fn calls_for<T>(round_time: Duration, f: &mut impl FnMut() -> T) -> u32 {
    let mut calls = 1u32;
    loop {
        let start = Instant::now();
        for _ in 0..calls {
            black_box(f());
        }
        if start.elapsed() >= round_time / 4 || calls >= 1 << 24 {
            return calls.saturating_mul(4);
        }
        calls *= 2;
    }
}

fn per_call<T>(calls: u32, f: &mut impl FnMut() -> T) -> Duration {
    let start = Instant::now();
    for _ in 0..calls {
        black_box(f());
    }
    start.elapsed() / calls
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort_unstable();
    times[times.len() / 2]
}
