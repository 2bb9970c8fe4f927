//! Plain HTTP on the WebSocket port: `/healthz`, `/metrics`, the dashboard; WebSocket upgrades
//! on any path; the counters published on `$SYS/broker/stats`.

use std::time::Duration;

use serde_json::json;

use crate::harness::{assert_err, assert_quiet, live, publish, sample, sub, Broker, Client};

#[tokio::test]
async fn healthz_answers_ok() {
    let broker = Broker::default();
    let got = broker.http_get("/healthz").await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.body.trim(), "ok");
    assert!(
        got.head
            .to_ascii_lowercase()
            .contains("content-type: text/plain"),
        "{got:?}"
    );
}

#[tokio::test]
async fn metrics_count_what_happened() {
    let broker = Broker::default();
    let first = broker.http_get("/metrics").await;
    assert_eq!(first.status, 200);
    for name in [
        "breadboard_connections",
        "breadboard_messages_in_total",
        "breadboard_slow_consumer_disconnects_total",
        "breadboard_errors_total",
    ] {
        assert!(
            first.body.contains(&format!("# TYPE {name} ")),
            "no {name}:\n{}",
            first.body
        );
    }
    assert_eq!(sample(&first.body, "breadboard_connections"), Some(0.0));

    let mut c = Client::json(&broker.url()).await;
    let mut s = Client::json(&broker.url()).await;
    sub(&mut s, "m/+", 1).await;
    publish(&mut c, "m/1", json!(1), 1).await;
    publish(&mut c, "m/2", json!(2), 2).await;
    let got = c.call(json!({"op": "pub", "topic": "a//b", "id": 3})).await;
    assert_err(&got, Some(3), "bad_topic", &"a//b");
    let got = c.call(json!({"op": "jump", "id": 4})).await;
    assert_err(&got, Some(4), "unknown_op", &"jump");

    for (name, want) in [
        ("breadboard_connections", 2.0),
        ("breadboard_connections_total", 2.0),
        ("breadboard_subscriptions", 1.0),
        ("breadboard_messages_in_total", 2.0),
        ("breadboard_messages_out_total", 2.0),
        ("breadboard_frames_in_total", 5.0),
        (r#"breadboard_errors_total{code="bad_topic"}"#, 1.0),
        (r#"breadboard_errors_total{code="unknown_op"}"#, 1.0),
        (r#"breadboard_errors_total{code="name_taken"}"#, 0.0),
        ("breadboard_slow_consumer_disconnects_total", 0.0),
    ] {
        assert_eq!(broker.metric(name).await, want, "{name}");
    }
    assert!(broker.metric("breadboard_http_requests_total").await >= 2.0);
}

#[tokio::test]
async fn the_dashboard_and_unknown_paths() {
    let broker = Broker::default();
    let page = broker.http_get("/").await;
    assert_eq!(page.status, 200, "{}", page.head);
    assert!(
        page.head
            .to_ascii_lowercase()
            .contains("content-type: text/html"),
        "{}",
        page.head
    );
    assert!(page.body.to_ascii_lowercase().contains("<html"));
    assert_eq!(broker.http_get("/no/such/page").await.status, 404);
}

#[tokio::test]
async fn websocket_upgrade_on_any_path() {
    let broker = Broker::default();
    let base = broker.url();
    let mut root = Client::json(&format!("{base}/")).await;
    let mut datafeed = Client::msgpack(&format!("{base}/datafeed")).await;
    let mut other = Client::json(&format!("{base}/any/path?x=1")).await;
    for c in [&mut root, &mut datafeed, &mut other] {
        assert_quiet(c, 1).await;
    }
    sub(&mut datafeed, "paths", 2).await;
    sub(&mut other, "paths", 2).await;
    publish(&mut root, "paths", json!("across"), 2).await;
    assert_eq!(datafeed.recv().await, live("paths", json!("across")));
    assert_eq!(other.recv().await, live("paths", json!("across")));
}

#[tokio::test]
async fn broker_stats_are_published_on_sys() {
    let broker = Broker::with(|config| {
        config.stats_interval = Some(Duration::from_millis(200));
        config.name = "b1".into();
    });
    let mut c = Client::json(&broker.url()).await;
    c.send(json!({"op": "sub", "topic": "$SYS/broker/stats", "id": 1}))
        .await;
    // A retained value (published at start) and then the ok, or the ok and then a live value.
    let mut stats = None;
    let mut ok = false;
    for _ in 0..3 {
        let got = c.recv().await;
        match got["op"].as_str() {
            Some("ok") => ok = true,
            Some("msg") => stats = Some(got),
            _ => panic!("unexpected {got}"),
        }
        if ok && stats.is_some() {
            break;
        }
    }
    let stats = stats.expect("stats within a few frames");
    assert!(ok);
    assert_eq!(stats["topic"], "$SYS/broker/stats");
    assert!(stats["data"]["connections"].is_u64(), "{stats}");
    assert!(stats["data"]["errors"]["bad_topic"].is_u64(), "{stats}");
    assert_eq!(stats["data"]["name"], "b1", "{stats}");
    assert_eq!(stats["data"]["role"], "broker", "{stats}");
    assert!(stats["data"].get("host").is_none(), "{stats}");
}

#[tokio::test]
async fn a_broker_hosted_by_a_node_says_so_in_its_stats() {
    let broker = Broker::with(|config| {
        config.stats_interval = Some(Duration::from_millis(200));
        config.name = "clock".into();
        config.hosted_by = Some("clock".into());
    });
    let mut c = Client::json(&broker.url()).await;
    c.send(json!({"op": "sub", "topic": "$SYS/broker/stats", "id": 1}))
        .await;
    let stats = loop {
        let got = c.recv().await;
        if got["op"] == "msg" {
            break got;
        }
    };
    assert_eq!(stats["data"]["role"], "peer", "{stats}");
    assert_eq!(stats["data"]["host"], "clock", "{stats}");
}
