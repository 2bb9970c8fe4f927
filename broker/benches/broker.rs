//! Broker micro-benchmarks.
//!
//! - `match`: topic matching against 10 k and 100 k filters, a mix of exact filters, `+` and
//!   `#` wildcards, as one publish sees it ([`broker::trie::Trie::matches`]).
//! - `publish`: the publish path from a decoded frame to bytes queued in each subscriber's
//!   [`Outbox`]: match, encode once, queue for 1 and for 1000 subscribers
//!   ([`broker::router::Router::publish`]). Each iteration also empties the queues the way the
//!   writers do (taking the whole backlog at once), so they never fill up.
//!
//! Run with `cargo bench -p breadboard-broker`.
// criterion_group! writes a public function without documentation.
#![allow(missing_docs)]

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Arc;

use broker::outbox::Outbox;
use broker::router::Router;
use broker::trie::{Subscriber, Trie};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use proto::{Publish, TopicFilter, TopicName};
use serde_json::Value;

struct Sub(u64);

impl Subscriber for Sub {
    fn id(&self) -> u64 {
        self.0
    }
}

/// A small deterministic generator, so every run matches against the same filters.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

/// `n` filters over a `site/<s>/<kind>/<device>/<metric>` tree: 80 % exact, 10 % with one `+`,
/// 10 % ending in `#`. Returns the trie and topics that exist in it, to publish to.
fn index(n: usize) -> (Trie<Sub>, Vec<TopicName>) {
    let mut rng = Lcg(n as u64);
    let mut trie = Trie::default();
    let mut topics = Vec::new();
    let kinds = ["pin", "clock", "buzzer", "sensor"];
    let metrics = ["state", "level", "temp", "config"];
    for id in 0..n as u64 {
        let site = rng.next(100);
        let kind = kinds[rng.next(4) as usize];
        let device = rng.next(1000);
        let metric = metrics[rng.next(4) as usize];
        let exact = format!("site/{site}/{kind}/{device}/{metric}");
        let filter = match rng.next(10) {
            0 => format!("site/{site}/{kind}/+/{metric}"),
            1 => format!("site/{site}/{kind}/#"),
            _ => exact.clone(),
        };
        trie.insert(
            &TopicFilter::new(filter).expect("valid filter"),
            Arc::new(Sub(id)),
        );
        if topics.len() < 1024 {
            topics.push(TopicName::new(exact).expect("valid topic"));
        }
    }
    (trie, topics)
}

fn matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("match");
    group.throughput(Throughput::Elements(1));
    for n in [10_000, 100_000] {
        let (trie, topics) = index(n);
        let mut i = 0;
        group.bench_with_input(BenchmarkId::new("filters", n), &trie, |b, trie| {
            b.iter(|| {
                i = (i + 1) % topics.len();
                trie.matches(black_box(&topics[i])).len()
            })
        });
    }
    group.finish();
}

fn publish(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish");
    for subs in [1u64, 1000] {
        let router = Router::default();
        let filter = TopicFilter::new("pin/+/state").expect("valid filter");
        let mut queues = Vec::new();
        for id in 0..subs {
            let (outbox, rx) = Outbox::new(id, 1024, 1 << 20, &router.backlogs);
            router.subscribe(&filter, &outbox);
            queues.push((outbox, rx));
        }
        let topic = TopicName::new("pin/pin-1/state").expect("valid topic");
        let data = Value::String("x".repeat(64));
        let p = Publish::new(&topic, &data);
        let mut batch = VecDeque::new();
        group.throughput(Throughput::Elements(subs));
        group.bench_function(BenchmarkId::new("subscribers", subs), |b| {
            b.iter(|| {
                let delivered = router.publish(black_box(&p), Some("pin-1")).delivered;
                for (_, rx) in &mut queues {
                    rx.try_recv_all(&mut batch);
                    batch.clear();
                }
                delivered
            })
        });
    }
    group.finish();
}

criterion_group!(benches, matching, publish);
criterion_main!(benches);
