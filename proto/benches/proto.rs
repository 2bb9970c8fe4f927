//! Codec and topic-matching micro-benchmarks (filled in by the performance work).
use criterion::{criterion_group, criterion_main, Criterion};

fn codec(_c: &mut Criterion) {}

criterion_group!(benches, codec);
criterion_main!(benches);
