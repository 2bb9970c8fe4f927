//! Codec micro-benchmarks: encoding and decoding the two frames on the hot path, `pub` (client
//! to broker) and `msg` (broker to client), in JSON and in MessagePack, with a 64-byte payload
//! as in `breadboard bench`.
//!
//! Run with `cargo bench -p breadboard-proto`.
// criterion_group! writes a public function without documentation.
#![allow(missing_docs)]

use std::hint::black_box;

use std::borrow::Cow;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use proto::{ClientFrame, Data, Encoding, Message, Publish, ServerFrame, TopicName};
use serde_json::{json, Value};

fn payloads() -> [(&'static str, Value); 2] {
    [
        ("str64", Value::String("x".repeat(64))),
        (
            "object",
            json!({"pin": 13, "level": 1, "since": 1_700_000_000_123u64, "label": "door sensor"}),
        ),
    ]
}

fn topic() -> TopicName {
    TopicName::new("pin/pin-1/state").expect("valid topic")
}

/// A `msg` of `data` as the broker encodes it.
fn msg(data: Data<'_>) -> ServerFrame<'_, Data<'_>> {
    ServerFrame::Msg(Message {
        topic: topic().into(),
        data,
        from: Some(Cow::Borrowed("pin-1")),
        reply: None,
        retained: false,
    })
}

fn codec(c: &mut Criterion) {
    for enc in Encoding::ALL {
        let mut group = c.benchmark_group(format!("codec/{}", enc.as_str()));
        group.throughput(Throughput::Elements(1));
        for (name, data) in payloads() {
            let frame = ClientFrame::Pub(Publish::new(topic(), &data));
            let pub_bytes = frame.encode(enc).into_bytes();
            group.bench_function(format!("decode pub {name}"), |b| {
                b.iter(|| ClientFrame::decode(black_box(&pub_bytes), enc))
            });
            group.bench_function(format!("encode pub {name}"), |b| {
                b.iter(|| black_box(&frame).encode(enc))
            });
            if let Ok(ClientFrame::Pub(p)) = ClientFrame::decode(&pub_bytes, enc) {
                let as_decoded = msg(p.data.as_ref());
                group.bench_function(format!("encode msg {name} (as decoded)"), |b| {
                    b.iter(|| black_box(&as_decoded).encode(enc))
                });
            }
            let value = msg(Data::from(&data));
            group.bench_function(format!("encode msg {name}"), |b| {
                b.iter(|| black_box(&value).encode(enc))
            });
            let msg_bytes = value.encode(enc).into_bytes();
            group.bench_function(format!("decode msg {name}"), |b| {
                b.iter(|| ServerFrame::decode(black_box(&msg_bytes), enc))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
