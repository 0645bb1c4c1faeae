use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use plugboard_benches::boxstream;

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("4 KiB seal+open");
    group.throughput(Throughput::Bytes(boxstream::CHUNK as u64));
    let mut stream = boxstream::Stream::default();
    group.bench_function("box-stream", |b| {
        b.iter(|| boxstream::plugboard(&mut stream))
    });
    let mut raw = boxstream::Raw::default();
    group.bench_function("secretbox", |b| b.iter(|| boxstream::raw(&mut raw)));
    let mut stream = boxstream::Stream::new(&plugboard_sodium::crypto());
    group.bench_function("box-stream on libsodium", |b| {
        b.iter(|| boxstream::plugboard(&mut stream))
    });
    let mut raw = boxstream::Raw::libsodium(boxstream::CHUNK);
    group.bench_function("libsodium secretbox", |b| {
        b.iter(|| boxstream::raw(&mut raw))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
