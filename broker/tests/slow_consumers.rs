//! Slow consumers: a client that does not read is cut off once its outbox is full, and the
//! others get everything.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{assert_quiet, hello, presence, sub, Broker, Client, WAIT};

#[tokio::test]
async fn a_slow_consumer_is_cut_off_and_a_fast_one_gets_everything() {
    // Small outboxes: 64 frames or 64 KiB. The slow client subscribes and then never reads; its
    // kernel buffers absorb some data first, so the test publishes until the broker reports the
    // cut-off, at most MAX messages of about 1 KiB.
    const BATCH: u64 = 16;
    const MAX: u64 = 20_000;
    const SLOW: &str = "breadboard_slow_consumer_disconnects_total";
    let broker = Broker::with(|config| {
        config.outbox_frames = 64;
        config.outbox_bytes = 65_536;
    });
    let url = broker.url();
    let mut slow = Client::json(&url).await;
    let mut fast = Client::msgpack(&url).await;
    let mut publisher = Client::json(&url).await;
    hello(&mut slow, "slowpoke", "pin", 1).await;
    sub(&mut slow, "flood", 1).await;
    sub(&mut fast, "flood", 1).await;

    let pad = "x".repeat(1000);
    let started = Instant::now();
    let mut sent = 0;
    let mut cut_off_at = None;
    while sent < MAX {
        for _ in 0..BATCH {
            publisher
                .send(json!({"op": "pub", "topic": "flood", "data": {"n": sent, "pad": pad}}))
                .await;
            sent += 1;
        }
        // The fast subscriber reads each batch: it gets every message, in order.
        for n in sent - BATCH..sent {
            let got = fast.recv().await;
            assert_eq!(got["data"]["n"], n, "fast subscriber, message {n}");
        }
        if cut_off_at.is_none() && sent % 256 == 0 && broker.metric(SLOW).await >= 1.0 {
            cut_off_at = Some(sent);
        }
        // Keep going a while after the cut-off: delivery to the others goes on.
        if cut_off_at.is_some_and(|at| sent >= at + 512) {
            break;
        }
    }
    println!(
        "slow consumer cut off after {cut_off_at:?} of {sent} messages, in {:?}",
        started.elapsed()
    );
    let cut_off_at = cut_off_at.expect("the slow consumer was never cut off");
    assert!(sent >= cut_off_at + 512);
    assert_eq!(broker.metric(SLOW).await, 1.0, "only the slow one");
    assert_quiet(&mut fast, 2).await;
    assert_quiet(&mut publisher, 2).await;

    // The slow client finds its connection ended once it reads what its buffers hold.
    let end = slow.wait_end(WAIT * 2, 1_000_000).await;
    println!("slow consumer saw {end:?}");
    assert!(end.is_some(), "the slow consumer is still connected");
    // Its session is gone: only the fast client and the publisher remain.
    let mut connections = f64::NAN;
    for _ in 0..100 {
        connections = broker.metric("breadboard_connections").await;
        if connections == 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(connections, 2.0);
    assert_eq!(broker.metric("breadboard_subscriptions").await, 1.0);
    // Cut off counts as gone: its presence is offline.
    let mut late = Client::json(&url).await;
    late.send(json!({"op": "sub", "topic": "$SYS/nodes/slowpoke", "id": 1}))
        .await;
    assert_eq!(presence(&mut late, "slowpoke", true).await["online"], false);
}
