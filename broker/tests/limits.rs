//! Limits on what clients may make the broker hold: retained values (topics and bytes),
//! connections.

use serde_json::{json, Value};

use crate::harness::{assert_err, close, live, sub, Broker, Client, WAIT};

/// A retained `pub` with `id`, answered.
async fn retain(c: &mut Client, topic: &str, data: Value, id: u64) -> Value {
    c.call(json!({"op": "pub", "topic": topic, "data": data, "retain": true, "id": id}))
        .await
}

#[tokio::test]
async fn past_the_retained_topic_limit_a_value_is_delivered_but_not_kept() {
    let broker = Broker::with(|config| {
        config.max_retained = 2;
        // `$SYS/broker/stats` is retained too, and must not count.
        config.stats_interval = Some(std::time::Duration::from_millis(20));
    });
    let url = broker.url();
    let mut p = Client::json(&url).await;
    let mut s = Client::json(&url).await;
    sub(&mut s, "r/#", 1).await;
    assert_eq!(
        retain(&mut p, "r/a", json!(1), 1).await,
        json!({"op": "ok", "id": 1})
    );
    assert_eq!(
        retain(&mut p, "r/b", json!(2), 2).await,
        json!({"op": "ok", "id": 2})
    );
    let refused = retain(&mut p, "r/c", json!(3), 3).await;
    assert_err(
        &refused,
        Some(3),
        "retained_full",
        &"a third retained topic",
    );
    // Still delivered live, in order.
    for (topic, n) in [("r/a", 1), ("r/b", 2), ("r/c", 3)] {
        assert_eq!(s.recv().await, live(topic, json!(n)));
    }
    // An update of a topic already retained is never refused for the count.
    assert_eq!(
        retain(&mut p, "r/a", json!(10), 4).await,
        json!({"op": "ok", "id": 4})
    );
    // Clearing frees room.
    assert_eq!(
        retain(&mut p, "r/b", Value::Null, 5).await,
        json!({"op": "ok", "id": 5})
    );
    assert_eq!(
        retain(&mut p, "r/c", json!(30), 6).await,
        json!({"op": "ok", "id": 6})
    );
    // What a new subscriber replays is what was kept.
    let mut late = Client::json(&url).await;
    late.send(json!({"op": "sub", "topic": "r/#", "id": 9}))
        .await;
    let mut replay = Vec::new();
    loop {
        let got = late.recv().await;
        if got["op"] == "ok" {
            break;
        }
        replay.push((got["topic"].clone(), got["data"].clone()));
    }
    assert_eq!(
        replay,
        [(json!("r/a"), json!(10)), (json!("r/c"), json!(30))]
    );
    assert_eq!(
        broker
            .metric("breadboard_errors_total{code=\"retained_full\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn past_the_retained_byte_limit_a_larger_value_is_refused() {
    let broker = Broker::with(|config| {
        config.max_retained_bytes = 1000;
        config.stats_interval = None;
    });
    let mut p = Client::json(&broker.url()).await;
    let big = json!("x".repeat(600));
    assert_eq!(
        retain(&mut p, "b/1", big.clone(), 1).await,
        json!({"op": "ok", "id": 1})
    );
    let refused = retain(&mut p, "b/2", big.clone(), 2).await;
    assert_err(&refused, Some(2), "retained_full", &"600 more bytes");
    // Smaller values still fit, and shrinking a value held is always allowed.
    assert_eq!(
        retain(&mut p, "b/2", json!(1), 3).await,
        json!({"op": "ok", "id": 3})
    );
    assert_eq!(
        retain(&mut p, "b/1", json!(2), 4).await,
        json!({"op": "ok", "id": 4})
    );
    assert_eq!(
        retain(&mut p, "b/3", big, 5).await,
        json!({"op": "ok", "id": 5})
    );
}

/// Sends a WebSocket upgrade request by hand; returns the status line of the answer.
async fn upgrade_status(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = vec![0; 512];
    let n = tokio::time::timeout(WAIT, stream.read(&mut answer))
        .await
        .expect("an answer in time")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    answer.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn past_the_connection_limit_an_upgrade_gets_503_until_a_slot_frees() {
    let broker = Broker::with(|config| config.max_connections = 2);
    let url = broker.url();
    let mut first = Client::json(&url).await;
    let mut second = Client::json(&url).await;
    assert_eq!(
        upgrade_status(broker.addr).await,
        "HTTP/1.1 503 Service Unavailable"
    );
    assert_eq!(
        broker.metric("breadboard_refused_connections_total").await,
        1.0
    );
    // Plain HTTP is still served, and the clients connected still work.
    assert_eq!(broker.http_get("/healthz").await.status, 200);
    sub(&mut second, "t", 1).await;
    assert_eq!(
        retain(&mut first, "t", json!(1), 1).await,
        json!({"op": "ok", "id": 1})
    );
    assert_eq!(second.recv().await["data"], 1);
    // A slot frees when a client leaves.
    close(&mut first).await;
    let mut status = String::new();
    for _ in 0..100 {
        status = upgrade_status(broker.addr).await;
        if status.contains("101") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(status, "HTTP/1.1 101 Switching Protocols");
}
