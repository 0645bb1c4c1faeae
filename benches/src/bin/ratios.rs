//! Measures each pair of (plugboard, baseline) in one run and prints the
//! ratios, one line per pair, last: `<name> <ours / baseline>`. Lower is better,
//! but for `boxstream_rustcrypto_vs_sodium`: the libsodium provider's speed-up.
//!
//! ```text
//! cargo run --release -p plugboard-benches --bin ratios
//! cargo run --release -p plugboard-benches --bin ratios -- --processes   # only the relay in processes
//! cargo run --release -p plugboard-benches --bin ratios -- --handshakes  # the broker alone: CPU per handshake, bytes per idle connection
//! ```

use std::time::Duration;

use plugboard_benches::{boxstream, broker, floor, handshake, measure, net, procs, relay};

const ROUNDS: usize = 21;
const ROUND_TIME: Duration = Duration::from_millis(250);
/// TCP handshakes per round of `handshakes_per_s_vs_primitives`.
const HANDSHAKES_PER_ROUND: usize = 200;
/// Idle connections for `idle_conn_bytes`.
const IDLE_CONNS: usize = 10_000;
/// Bytes per transfer of `direct_unix_vs_raw`, and its alternating rounds:
/// a transfer takes ~12 ms and single ones spread by ±25% when the other
/// core is busy, so many rounds keep the median steady (~1.6 s in all).
const DIRECT_BYTES: usize = 64 << 20;
const DIRECT_ROUNDS: usize = 61;
/// Bytes per transfer, and rounds, of the relay with every role in its own
/// process (a round of 1 GiB takes ~0.5–2 s).
const PROCS_BYTES: usize = 1 << 30;
const PROCS_ROUNDS: usize = 5;
/// Round trips of 64 bytes on each path, in alternating slices.
const PROCS_ROUND_TRIPS: usize = 20_000;
/// The relay over TCP, box-stream on both hops: bytes per round, and rounds.
const TCP_BYTES: usize = 256 << 20;
const TCP_ROUNDS: usize = 3;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some(broker::CHILD_ARG) => broker::child_main(),
        Some(procs::ROLE_ARG) => procs::roles::main(&args[2..]),
        _ => {}
    }
    if args.get(1).map(String::as_str) == Some("--processes") {
        // Only the figures with every role in its own process.
        let mut stream = boxstream::Stream::default();
        let (chunk, _) = measure::compare(
            ROUNDS,
            ROUND_TIME,
            || boxstream::plugboard(&mut stream),
            || (),
        );
        for (name, ours, base) in processes(chunk) {
            println!("{name} {:.3}", ours.as_secs_f64() / base.as_secs_f64());
        }
        return;
    }
    if args.get(1).map(String::as_str) == Some("--handshakes") {
        // Only the broker alone: CPU per TCP handshake, memory per idle connection.
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        let alone = broker_alone(&runtime);
        println!(
            "handshakes_per_s_vs_primitives {:.3}",
            alone.handshake.as_secs_f64() / alone.primitives.as_secs_f64()
        );
        let idle_bytes =
            alone.rss_after.saturating_sub(alone.rss_before) as f64 / IDLE_CONNS as f64;
        println!("idle_conn_bytes {idle_bytes:.0}");
        return;
    }
    let mut ratios = Vec::new();

    let fixture = handshake::Fixture::default();
    let primitives = handshake::PrimitiveFixture::default();
    let (ours, base) = measure::compare(
        ROUNDS,
        ROUND_TIME,
        || handshake::plugboard(&fixture),
        || handshake::primitives(&primitives),
    );
    println!("handshake (both sides)     plugboard {ours:>10.2?}   primitives {base:>10.2?}");
    ratios.push(("handshake_vs_primitives", ours, base));

    let mut stream = boxstream::Stream::default();
    let mut raw = boxstream::Raw::default();
    let (ours, base) = measure::compare(
        ROUNDS,
        ROUND_TIME,
        || boxstream::plugboard(&mut stream),
        || boxstream::raw(&mut raw),
    );
    let mib_s = |d: Duration| boxstream::CHUNK as f64 / d.as_secs_f64() / (1 << 20) as f64;
    println!(
        "4 KiB seal+open            box-stream {ours:>9.2?} ({:.0} MiB/s)   secretbox {base:>9.2?} ({:.0} MiB/s)",
        mib_s(ours),
        mib_s(base)
    );
    ratios.push(("boxstream_vs_secretbox", ours, base));
    // Kept for the TCP relay: box-stream's own seal+open rate in this run.
    let boxstream_chunk = ours;
    // Box-stream seals every frame twice, body and 18-byte header: the
    // header's secretbox is part of the protocol, and sets a floor under the ratio.
    let mut header = boxstream::Raw::new(18);
    let (header_time, body_time) = measure::compare(
        ROUNDS,
        ROUND_TIME,
        || boxstream::raw(&mut header),
        || boxstream::raw(&mut raw),
    );
    println!(
        "18-byte secretbox seal+open {header_time:>9.2?}: the protocol's floor for boxstream_vs_secretbox is {:.3}",
        (header_time + body_time).as_secs_f64() / body_time.as_secs_f64()
    );

    // The same on the libsodium provider, against libsodium called directly,
    // with its own floor (a faster cipher makes the fixed header box weigh
    // more), and how much faster than RustCrypto box-stream runs on it.
    let mut sodium_stream = boxstream::Stream::new(&plugboard_sodium::crypto());
    let mut sodium_raw = boxstream::Raw::libsodium(boxstream::CHUNK);
    let (sodium_ours, sodium_base) = measure::compare(
        ROUNDS,
        ROUND_TIME,
        || boxstream::plugboard(&mut sodium_stream),
        || boxstream::raw(&mut sodium_raw),
    );
    println!(
        "4 KiB seal+open, libsodium box-stream {sodium_ours:>9.2?} ({:.0} MiB/s)   secretbox {sodium_base:>9.2?} ({:.0} MiB/s)",
        mib_s(sodium_ours),
        mib_s(sodium_base)
    );
    ratios.push(("boxstream_sodium_vs_libsodium", sodium_ours, sodium_base));
    let mut sodium_header = boxstream::Raw::libsodium(18);
    let (header_time, body_time) = measure::compare(
        ROUNDS,
        ROUND_TIME,
        || boxstream::raw(&mut sodium_header),
        || boxstream::raw(&mut sodium_raw),
    );
    println!("18-byte libsodium secretbox seal+open {header_time:>9.2?}");
    ratios.push(("boxstream_sodium_floor", header_time + body_time, body_time));
    let (rust_time, sodium_time) = measure::compare(
        ROUNDS,
        ROUND_TIME,
        || boxstream::plugboard(&mut stream),
        || boxstream::plugboard(&mut sodium_stream),
    );
    println!(
        "4 KiB box-stream seal+open  rustcrypto {rust_time:>9.2?}   libsodium {sodium_time:>9.2?}"
    );
    // Higher is better for this one: the provider's speed-up.
    ratios.push(("boxstream_rustcrypto_vs_sodium", rust_time, sodium_time));

    let mut relay = relay::Relay::default();
    let source = vec![0x5au8; relay::WRITE];
    let mut sink = Vec::with_capacity(relay::WRITE);
    let (ours, base) = measure::compare(
        ROUNDS,
        ROUND_TIME,
        || relay.write(),
        || relay::memcpy(&source, &mut sink),
    );
    println!(
        "16 KiB through the broker  sessions+broker {ours:>9.2?} ({:.0} MiB/s)   memcpy {base:>9.2?}",
        relay::WRITE as f64 / ours.as_secs_f64() / (1 << 20) as f64
    );
    ratios.push(("relay_inmemory_vs_memcpy", ours, base));

    // Real sockets: the tokio broker between two plugins, vs a raw unix socket.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (relay_ours, relay_raw, rt_ours, rt_raw, direct_ours, direct_raw) =
        runtime.block_on(async {
            let bench = net::Bench::start().await;
            let (relay_ours, relay_raw) = net::relay_vs_raw(&bench, 64 << 20, 5).await;
            let (rt_ours, rt_raw) = net::roundtrip_vs_raw(&bench, 20_000).await;
            let (direct_ours, direct_raw) =
                net::direct_vs_raw(&bench, DIRECT_BYTES, DIRECT_ROUNDS).await;
            (
                relay_ours,
                relay_raw,
                rt_ours,
                rt_raw,
                direct_ours,
                direct_raw,
            )
        });
    let mb_s = |d: Duration| 64.0 / d.as_secs_f64();
    println!(
        "64 MiB plugin to plugin   via broker {relay_ours:>9.2?} ({:.0} MiB/s)   raw socket {relay_raw:>9.2?} ({:.0} MiB/s)",
        mb_s(relay_ours),
        mb_s(relay_raw)
    );
    println!("64-byte round trip         via broker {rt_ours:>9.2?}   raw socket {rt_raw:>9.2?}");
    let direct_mb_s = |d: Duration| (DIRECT_BYTES >> 20) as f64 / d.as_secs_f64();
    println!(
        "{} MiB direct socketpair  channel {direct_ours:>9.2?} ({:.0} MiB/s)   raw socket {direct_raw:>9.2?} ({:.0} MiB/s)",
        DIRECT_BYTES >> 20,
        direct_mb_s(direct_ours),
        direct_mb_s(direct_raw)
    );
    ratios.push(("relay_unix_vs_raw", relay_ours, relay_raw));
    ratios.push(("roundtrip_vs_raw", rt_ours, rt_raw));
    ratios.push(("direct_unix_vs_raw", direct_ours, direct_raw));

    // The floor under any relay: a bare forwarder between two sockets.
    let (floor_fwd, floor_raw) = runtime.block_on(floor::forwarder_vs_raw(64 << 20, 5));
    println!(
        "64 MiB through a bare forwarder {floor_fwd:>9.2?} ({:.0} MiB/s)   raw socket {floor_raw:>9.2?}",
        mb_s(floor_fwd)
    );
    ratios.push(("forwarder_unix_vs_raw", floor_fwd, floor_raw));

    // The same relay and round trip with the broker on the other adapters
    // (each on a thread of its own; the plugins stay on tokio).
    for (adapter, suffix) in [(net::Adapter::Smol, "smol"), (net::Adapter::Mio, "mio")] {
        let (relay_ours, relay_raw, rt_ours, rt_raw) = runtime.block_on(async {
            let bench = net::Bench::start_on(adapter).await;
            let (relay_ours, relay_raw) = net::relay_vs_raw(&bench, 64 << 20, 5).await;
            let (rt_ours, rt_raw) = net::roundtrip_vs_raw(&bench, 20_000).await;
            (relay_ours, relay_raw, rt_ours, rt_raw)
        });
        println!(
            "64 MiB via the {suffix} broker {relay_ours:>9.2?} ({:.0} MiB/s)   raw socket {relay_raw:>9.2?};  64-byte round trip {rt_ours:>9.2?}   raw {rt_raw:>9.2?}",
            mb_s(relay_ours)
        );
        let relay_name: &'static str = match adapter {
            net::Adapter::Smol => "relay_unix_vs_raw_smol",
            _ => "relay_unix_vs_raw_mio",
        };
        let rt_name: &'static str = match adapter {
            net::Adapter::Smol => "roundtrip_vs_raw_smol",
            _ => "roundtrip_vs_raw_mio",
        };
        ratios.push((relay_name, relay_ours, relay_raw));
        ratios.push((rt_name, rt_ours, rt_raw));
    }

    let BrokerAlone {
        handshake: hs_ours,
        primitives: hs_base,
        rss_before,
        rss_after,
    } = broker_alone(&runtime);
    println!(
        "TCP handshake, broker CPU  plugboard {hs_ours:>9.2?} ({:.0}/s of CPU)   server-side primitives {hs_base:>9.2?} ({:.0}/s)",
        1.0 / hs_ours.as_secs_f64(),
        1.0 / hs_base.as_secs_f64()
    );
    ratios.push(("handshakes_per_s_vs_primitives", hs_ours, hs_base));
    let idle_bytes = rss_after.saturating_sub(rss_before) as f64 / IDLE_CONNS as f64;
    println!(
        "{IDLE_CONNS} idle unix connections  broker RSS {:.1} MiB -> {:.1} MiB   {idle_bytes:.0} bytes each",
        rss_before as f64 / (1 << 20) as f64,
        rss_after as f64 / (1 << 20) as f64
    );

    ratios.extend(processes(boxstream_chunk));

    let small_ns = relay::small_message_ns(2_000_000);
    let fanout = relay::fanout(10_000, 21);

    for (name, ours, base) in ratios {
        println!("{name} {:.3}", ours.as_secs_f64() / base.as_secs_f64());
    }
    println!("relay_small_ns {small_ns:.0}");
    println!("fanout_10k_ms {:.3}", fanout.as_secs_f64() * 1e3);
    println!("idle_conn_bytes {idle_bytes:.0}");
}

type Ratio = (&'static str, Duration, Duration);

/// The figures with every role in a process of its own; `boxstream_chunk`
/// is box-stream's seal+open of a 4 KiB chunk, measured in this run.
fn processes(boxstream_chunk: Duration) -> Vec<Ratio> {
    let mut ratios = Vec::new();
    let mib_s = |d: Duration| boxstream::CHUNK as f64 / d.as_secs_f64() / (1 << 20) as f64;
    // Every role in a process of its own, as a deployment runs: the relay
    // through each broker next to a bare forwarder, alternating rounds.
    let mut forwarder = procs::Route::forwarder();
    for (adapter, suffix) in [("tokio", ""), ("smol", "_smol"), ("mio", "_mio")] {
        let (broker, unix, _) = procs::broker(adapter);
        let mut relay = procs::Route::relay(broker, &unix);
        let f = procs::compare(
            &mut relay,
            &mut forwarder,
            PROCS_BYTES,
            PROCS_ROUNDS,
            PROCS_ROUND_TRIPS,
        );
        let gib_s = |d: Duration| PROCS_BYTES as f64 / (1u64 << 30) as f64 / d.as_secs_f64();
        println!(
            "{} MiB, processes, {adapter} broker  CPU {:.2?}/GiB, wall {:.2?} ({:.2} GiB/s)   forwarder CPU {:.2?}/GiB, wall {:.2?} ({:.2} GiB/s); wall ratio min {:.3} max {:.3}",
            PROCS_BYTES >> 20,
            f.cpu_per_gib.0,
            f.wall.0,
            gib_s(f.wall.0),
            f.cpu_per_gib.1,
            f.wall.1,
            gib_s(f.wall.1),
            f.wall_ratio_range.0,
            f.wall_ratio_range.1,
        );
        let (o, b) = f.parts_per_gib;
        println!(
            "    CPU per GiB by process: relay source {:.2?} broker {:.2?} sink {:.2?}   forwarder's source {:.2?} forwarder {:.2?} sink {:.2?}",
            o[0], o[1], o[2], b[0], b[1], b[2]
        );
        println!(
            "64-byte round trip, processes, {adapter} broker {:>9.2?}   forwarder {:>9.2?}",
            f.round_trip.0, f.round_trip.1
        );
        let name = |figure: &str| -> &'static str { format!("{figure}{suffix}").leak() };
        ratios.push((
            name("relay_cpu_vs_forwarder"),
            f.cpu_per_gib.0,
            f.cpu_per_gib.1,
        ));
        ratios.push((name("relay_procs_vs_forwarder"), f.wall.0, f.wall.1));
        ratios.push((
            name("rtt_procs_vs_forwarder"),
            f.round_trip.0,
            f.round_trip.1,
        ));
    }
    drop(forwarder);

    // The relay over TCP, box-stream on both hops (two seals and two opens
    // per byte, on two cores; wall time), against one box-stream seal+open
    // in this process.
    let (broker, _, tcp) = procs::broker("tokio");
    let mut relay = procs::Route::relay(broker, &tcp);
    let mut walls: Vec<Duration> = (0..TCP_ROUNDS)
        .map(|_| relay.bulk(TCP_BYTES).wall)
        .collect();
    walls.sort_unstable();
    let tcp_wall = walls[walls.len() / 2];
    drop(relay);
    let per_chunk = tcp_wall.mul_f64(boxstream::CHUNK as f64 / TCP_BYTES as f64);
    println!(
        "{} MiB over TCP through the tokio broker, box-stream both hops {tcp_wall:>9.2?} ({:.0} MiB/s)   box-stream seal+open {:.0} MiB/s",
        TCP_BYTES >> 20,
        (TCP_BYTES >> 20) as f64 / tcp_wall.as_secs_f64(),
        mib_s(boxstream_chunk),
    );
    ratios.push(("relay_tcp_vs_boxstream", per_chunk, boxstream_chunk));

    ratios
}

/// The broker alone in a child process: its CPU time per TCP handshake
/// (clients here) against the server side's primitives, and its resident
/// memory before and after `IDLE_CONNS` idle connections.
struct BrokerAlone {
    handshake: std::time::Duration,
    primitives: std::time::Duration,
    rss_before: u64,
    rss_after: u64,
}

fn broker_alone(runtime: &tokio::runtime::Runtime) -> BrokerAlone {
    broker::raise_file_limit();
    let mut child = broker::BrokerProcess::start();
    let (handshake, primitives) =
        broker::handshake_cpu_vs_primitives(runtime, &mut child, ROUNDS, HANDSHAKES_PER_ROUND);
    drop(child);
    let child = broker::BrokerProcess::start();
    let (rss_before, rss_after) = broker::idle_connections(runtime, &child, IDLE_CONNS, 64);
    BrokerAlone {
        handshake,
        primitives,
        rss_before,
        rss_after,
    }
}
