use criterion::{criterion_group, criterion_main, Criterion};
use plugboard_benches::handshake;

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("shs1 handshake, both sides");
    let fixture = handshake::Fixture::default();
    group.bench_function("plugboard", |b| b.iter(|| handshake::plugboard(&fixture)));
    let primitives = handshake::PrimitiveFixture::default();
    group.bench_function("primitives", |b| {
        b.iter(|| handshake::primitives(&primitives))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
