//! Codec micro-benchmarks: encoding and decoding the two frames on the hot path, `pub` (client
//! to broker) and `msg` (broker to client), in JSON and in MessagePack, with a 64-byte payload
//! as in `breadboard bench`.
//!
//! Run with `cargo bench -p breadboard-proto`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use proto::{ClientFrame, Encoding, MsgRef, Publish, TopicName};
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

fn pub_frame(data: Value) -> ClientFrame {
    ClientFrame::Pub(Publish {
        topic: TopicName::new("pin/pin-1/state").expect("valid topic"),
        data,
        retain: false,
        reply: None,
        id: None,
    })
}

fn codec(c: &mut Criterion) {
    for enc in Encoding::ALL {
        let mut group = c.benchmark_group(format!("codec/{}", enc.as_str()));
        group.throughput(Throughput::Elements(1));
        for (name, data) in payloads() {
            let frame = pub_frame(data.clone());
            let pub_bytes = proto::encode_client(&frame, enc);
            group.bench_function(format!("decode pub {name}"), |b| {
                b.iter(|| proto::decode_client(black_box(&pub_bytes), enc))
            });
            group.bench_function(format!("decode pub {name} (borrowed)"), |b| {
                b.iter(|| proto::decode_client_ref(black_box(&pub_bytes), enc))
            });
            group.bench_function(format!("encode pub {name}"), |b| {
                b.iter(|| proto::encode_client(black_box(&frame), enc))
            });
            let msg = MsgRef::new("pin/pin-1/state", &data, Some("pin-1"), None);
            let msg_bytes = proto::encode_msg(&msg, enc);
            if let Ok(proto::ClientFrameRef::Pub(p)) = proto::decode_client_ref(&pub_bytes, enc) {
                let msg = MsgRef::new("pin/pin-1/state", p.data.as_ref(), Some("pin-1"), None);
                group.bench_function(format!("encode msg {name} (as decoded)"), |b| {
                    b.iter(|| proto::encode_msg(black_box(&msg), enc))
                });
            }
            group.bench_function(format!("encode msg {name}"), |b| {
                b.iter(|| proto::encode_msg(black_box(&msg), enc))
            });
            group.bench_function(format!("decode msg {name}"), |b| {
                b.iter(|| proto::decode_server(black_box(&msg_bytes), enc))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
