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

#[tokio::test]
async fn a_burst_is_not_a_slow_consumer() {
    // 50 000 small messages as fast as one publisher can send them, to a subscriber that reads
    // normally: a backlog builds up in the broker, and it must be absorbed, not cut off.
    const MSGS: u64 = 50_000;
    let broker = Broker::default();
    let url = broker.url();
    let mut subscriber = Client::msgpack(&url).await;
    sub(&mut subscriber, "burst", 1).await;
    let reader = tokio::spawn(async move {
        for n in 0..MSGS {
            let got = subscriber.recv().await;
            assert_eq!(got["data"], n, "message {n}");
        }
        subscriber
    });
    let mut publisher = Client::json(&url).await;
    for n in 0..MSGS {
        publisher
            .send(json!({"op": "pub", "topic": "burst", "data": n}))
            .await;
    }
    let mut subscriber = tokio::time::timeout(WAIT * 6, reader)
        .await
        .expect("every message of the burst in time")
        .expect("the reader");
    assert_quiet(&mut subscriber, 2).await;
    assert_eq!(broker.slow_consumers().await, 0.0);
}

#[tokio::test]
async fn a_client_whose_socket_takes_nothing_is_cut_off_after_the_write_deadline() {
    // A budget far larger than what is sent, so that only the deadline can cut the client off:
    // 400 messages of 64 KiB (25 MiB) fill the sockets of a client that does not read, and its
    // socket then accepts nothing.
    const MSGS: u64 = 400;
    let deadline = Duration::from_millis(300);
    let broker = Broker::with(|config| {
        config.write_deadline = deadline;
        config.outbox_bytes = 256 << 20;
    });
    let url = broker.url();
    let mut stuck = Client::json(&url).await;
    let mut reader = Client::json(&url).await;
    sub(&mut stuck, "big", 1).await;
    sub(&mut reader, "big", 1).await;
    let mut publisher = Client::json(&url).await;
    let pad = "x".repeat(64 * 1024);
    let started = Instant::now();
    for n in 0..MSGS {
        publisher
            .send(json!({"op": "pub", "topic": "big", "data": {"n": n, "pad": pad}}))
            .await;
        assert_eq!(
            reader.recv().await["data"]["n"],
            n,
            "the reader, message {n}"
        );
    }
    let mut cut_after = None;
    for _ in 0..200 {
        if broker.slow_consumers().await >= 1.0 {
            cut_after = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cut_after = cut_after.expect("the stuck client was never cut off");
    println!("stuck client cut off {cut_after:?} after the first message");
    // The others are unaffected.
    assert_quiet(&mut reader, 2).await;
    assert_quiet(&mut publisher, 3).await;
    let end = stuck.wait_end(WAIT * 2, 1_000_000).await;
    assert!(end.is_some(), "the stuck client is still connected");
}
