//! Brokers joined through NATS (`Config::cluster`): a real `nats-server` on a loopback port,
//! two brokers in this process. One NATS server is not a cluster of servers: the multi-host
//! cases (three servers clustered, brokers on other hosts, servers killed) are in the root
//! package's end-to-end tests, on a virtual LAN of network namespaces.
//!
//! Needs `nats-server` (Debian's package; `scripts/test` installs it). Under `CI=true` its
//! absence is a failure; elsewhere these tests skip with a visible message.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use broker::cluster::ClusterConfig;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::harness::{publish, sub, unsub, Broker, Client, WAIT};

/// A `nats-server` on 127.0.0.1 with JetStream, stopped on drop.
struct Nats {
    child: Child,
    port: u16,
    _store: tempfile::TempDir,
}

impl Nats {
    /// Starts one on `port` (0: any), or `None` (after saying why) if there is no nats-server.
    fn start(port: u16, test: &str) -> Option<Nats> {
        let port_arg = if port == 0 {
            "-1".to_string()
        } else {
            port.to_string()
        };
        let store = tempfile::tempdir().expect("a JetStream directory");
        let spawned = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port_arg, "-js", "-sd"])
            .arg(store.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let why = format!("{test}: needs nats-server ({e})");
                assert!(
                    !std::env::var("CI").is_ok_and(|v| v == "true"),
                    "{why}; CI=true, so this is a failure, not a skip"
                );
                eprintln!("SKIPPED {why}");
                return None;
            }
        };
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("client connections on ") {
                    let addr = &line[at + "client connections on ".len()..];
                    let port = addr.rsplit(':').next().and_then(|p| p.trim().parse().ok());
                    let _ = tx.send(port);
                }
            }
        });
        let port = rx
            .recv_timeout(WAIT)
            .ok()
            .flatten()
            .expect("nats-server says where it listens");
        Some(Nats {
            child,
            port,
            _store: store,
        })
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port with nothing on it, for a NATS server started later in the test, and its URL.
fn nats_port_for_later() -> (u16, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    (port, format!("nats://127.0.0.1:{port}"))
}

fn member(url: &str, name: &str) -> Broker {
    let (url, name) = (url.to_string(), name.to_string());
    Broker::with(move |config| {
        config.name = name;
        config.stats_interval = None;
        config.cluster = Some(ClusterConfig {
            urls: vec![url],
            name: "test".into(),
            token: None,
            creds: None,
            ca: None,
        });
    })
}

/// Publishes probes on `topic` from `publisher` until `subscriber` receives one: the moment
/// the subscriber's broker has its NATS subscription in place. Returns how long it took.
async fn until_crossing(publisher: &mut Client, subscriber: &mut Client, topic: &str) -> Duration {
    let started = Instant::now();
    for i in 0..100u64 {
        publish(publisher, topic, json!({"probe": i}), 1_000_000 + i).await;
        if let Some(msg) = subscriber.recv_message(Duration::from_millis(100)).await {
            let got = crate::harness::decode(&msg);
            assert_eq!(got["topic"], topic, "{got}");
            // Probes sent meanwhile may still be on their way: let them land.
            while subscriber
                .recv_message(Duration::from_millis(200))
                .await
                .is_some()
            {}
            return started.elapsed();
        }
    }
    panic!("no message crossed the cluster on {topic} in 10 s");
}

#[tokio::test]
async fn messages_cross_once_and_in_order_to_the_broker_that_wants_them() {
    let Some(nats) = Nats::start(0, "messages_cross_once") else {
        return;
    };
    let (a, b) = (member(&nats.url(), "a"), member(&nats.url(), "b"));
    let mut on_b = Client::json(&b.url()).await;
    // Two overlapping filters: NATS delivers each message to both subscriptions.
    sub(&mut on_b, "pin/+/state", 1).await;
    sub(&mut on_b, "pin/#", 2).await;
    let mut on_a = Client::json(&a.url()).await;
    // A subscriber on the publisher's own broker gets each message once, not echoed back.
    sub(&mut on_a, "pin/p1/state", 1).await;
    let mut publisher = Client::json(&a.url()).await;
    let took = until_crossing(&mut publisher, &mut on_b, "pin/p1/state").await;
    eprintln!("B's interest reached A through NATS in {took:?}");
    while on_a.recv_message(Duration::from_millis(50)).await.is_some() {}

    for i in 0..200u64 {
        publisher
            .send(json!({"op": "pub", "topic": "pin/p1/state", "data": i}))
            .await;
    }
    for i in 0..200u64 {
        let got = on_b.recv().await;
        assert_eq!(got["data"], json!(i), "in order, once: {got}");
        let got = on_a.recv().await;
        assert_eq!(got["data"], json!(i), "local subscriber: {got}");
    }
    assert!(
        on_b.recv_message(Duration::from_millis(300))
            .await
            .is_none(),
        "no duplicate"
    );
    assert!(
        on_a.recv_message(Duration::from_millis(100))
            .await
            .is_none(),
        "no echo"
    );
    assert!(b.metric("breadboard_cluster_duplicates_total").await >= 200.0);
    assert_eq!(a.metric("breadboard_cluster_connected").await, 1.0);
}

/// As `breadboard req` and every request helper do: subscribe to a fresh inbox and publish the
/// request at once, without waiting for anything. The answer, published once, must come back
/// across brokers: the inbox's NATS subscription goes out before the request does.
#[tokio::test]
async fn a_request_on_one_broker_is_answered_from_another() {
    let Some(nats) = Nats::start(0, "a_request_is_answered_across") else {
        return;
    };
    let (a, b) = (member(&nats.url(), "a"), member(&nats.url(), "b"));
    let mut responder = Client::json(&b.url()).await;
    sub(&mut responder, "clock/tick", 1).await;
    let mut requester = Client::json(&a.url()).await;
    let mut probe = Client::json(&a.url()).await;
    until_crossing(&mut probe, &mut responder, "clock/tick").await;

    for i in 0..20u64 {
        let inbox = format!("_inbox/r{i}/+");
        let reply = format!("_inbox/r{i}/1");
        requester
            .send(json!({"op": "sub", "topic": inbox, "id": 1}))
            .await;
        requester
            .send(json!({"op": "pub", "topic": "clock/tick", "data": i, "reply": reply}))
            .await;
        let request = responder.recv().await;
        assert_eq!(request["reply"], reply, "{request}");
        publish(&mut responder, &reply, json!([0, 1, 0]), 10 + i).await;
        let answer = loop {
            let msg = requester
                .recv_message(Duration::from_secs(3))
                .await
                .unwrap_or_else(|| panic!("request {i}: no answer across brokers in 3 s"));
            let got = crate::harness::decode(&msg);
            if got["op"] == "msg" {
                break got;
            }
        };
        assert_eq!(answer["topic"], reply, "request {i}");
        assert_eq!(answer["data"], json!([0, 1, 0]), "request {i}");
        requester.send(json!({"op": "unsub", "topic": inbox})).await;
    }
}

#[tokio::test]
async fn a_request_answered_on_its_own_broker_gets_that_answer_alone() {
    let Some(nats) = Nats::start(0, "a_request_answered_locally") else {
        return;
    };
    let a = member(&nats.url(), "a");
    let mut responder = Client::json(&a.url()).await;
    sub(&mut responder, "svc/echo", 1).await;
    let mut requester = Client::json(&a.url()).await;
    sub(&mut requester, "_inbox/me/+", 1).await;
    // Both subscriptions in NATS (the bridge follows interest): what crosses to the inbox now
    // would reach the requester.
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.metric("breadboard_cluster_connected").await == 0.0 {
        assert!(Instant::now() < deadline, "never connected to NATS");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in 1..=3u64 {
        let reply = format!("_inbox/me/{id}");
        requester
            .send(json!({"op": "pub", "topic": "svc/echo", "data": id, "reply": reply}))
            .await;
        let request = responder.recv().await;
        assert_eq!(request["reply"], reply, "{request}");
        publish(&mut responder, &reply, json!(id * 10), 100 + id).await;
        let answer = requester.recv().await;
        assert_eq!(answer["topic"], reply, "{answer}");
        assert_eq!(
            answer["data"],
            json!(id * 10),
            "the responder's answer: {answer}"
        );
    }
    // Nothing else: no other broker wants `svc/echo`, and NATS's "no responders" status for
    // the requests it carried is not a message of the inbox.
    if let Some(msg) = requester.recv_message(Duration::from_millis(500)).await {
        panic!("a second answer: {}", crate::harness::decode(&msg));
    }
}

#[tokio::test]
async fn traffic_crosses_only_where_it_is_wanted() {
    let Some(nats) = Nats::start(0, "traffic_crosses_only_where_wanted") else {
        return;
    };
    let (a, b) = (member(&nats.url(), "a"), member(&nats.url(), "b"));
    let mut on_b = Client::json(&b.url()).await;
    sub(&mut on_b, "wanted/#", 1).await;
    let mut publisher = Client::json(&a.url()).await;
    until_crossing(&mut publisher, &mut on_b, "wanted/x").await;
    let before = b.metric("breadboard_cluster_in_total").await;
    for i in 0..50 {
        publish(&mut publisher, "unwanted/x", json!(i), i).await;
    }
    // Once B drops its interest, wanted/x stops arriving there too.
    unsub(&mut on_b, "wanted/#", 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..50 {
        publish(&mut publisher, "wanted/x", json!(i), 100 + i).await;
    }
    let mut check = Client::json(&a.url()).await;
    publish(&mut check, "unwanted/flush", json!(null), 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        b.metric("breadboard_cluster_in_total").await,
        before,
        "B received what none of its clients wants"
    );
    assert!(a.metric("breadboard_cluster_out_total").await >= 100.0);
}

#[tokio::test]
async fn a_broker_serves_alone_while_nats_is_down_and_joins_when_it_comes() {
    let (port, url) = nats_port_for_later();
    let (a, b) = (member(&url, "a"), member(&url, "b"));
    let mut local_sub = Client::json(&a.url()).await;
    sub(&mut local_sub, "x/#", 1).await;
    let mut local_pub = Client::json(&a.url()).await;
    publish(&mut local_pub, "x/1", json!(1), 1).await;
    let got: Value = local_sub.recv().await;
    assert_eq!(got["data"], 1, "local clients are served without NATS");
    assert_eq!(a.metric("breadboard_cluster_connected").await, 0.0);
    // Counted by the bridge task, which may not have reached it yet.
    let deadline = Instant::now() + WAIT;
    while a.metric("breadboard_cluster_dropped_total").await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "a message published while NATS is away is counted as not crossing"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "counted as dropped {:?} after it was delivered locally",
        WAIT - (deadline - Instant::now())
    );

    let Some(_nats) = Nats::start(port, "a_broker_joins_when_nats_comes") else {
        return;
    };
    // What was published meanwhile stays local: `until_crossing` checks that the first
    // message to cross is its own probe, not x/1 come late.
    let mut on_b = Client::json(&b.url()).await;
    sub(&mut on_b, "x/#", 1).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.metric("breadboard_cluster_connected").await == 0.0 {
        assert!(
            Instant::now() < deadline,
            "the broker never connected to NATS"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = until_crossing(&mut local_pub, &mut on_b, "x/2").await;
    eprintln!("messages cross {took:?} after the broker saw NATS");
}

/// Waits until `client`, subscribing to `filter`, is replayed a retained value with `data`.
async fn until_replayed(broker: &Broker, filter: &str, data: Value) -> Duration {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        let mut c = Client::json(&broker.url()).await;
        c.send(json!({"op": "sub", "topic": filter, "id": 1})).await;
        loop {
            let got = c.recv().await;
            if got["op"] == "ok" {
                break;
            }
            if got["retained"] == true && got["data"] == data {
                return started.elapsed();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{filter} was never replayed {data} on {}", broker.url());
}

#[tokio::test]
async fn a_value_retained_on_one_broker_is_replayed_on_another_and_cleared_everywhere() {
    let Some(nats) = Nats::start(0, "retained_crosses") else {
        return;
    };
    let (a, b) = (member(&nats.url(), "a"), member(&nats.url(), "b"));
    let mut publisher = Client::json(&a.url()).await;
    publisher
        .call(json!({"op": "pub", "topic": "pin/p1/state", "data": 1, "retain": true, "id": 1}))
        .await;
    let took = until_replayed(&b, "pin/+/state", json!(1)).await;
    eprintln!("a retained value reached the other broker's replays in {took:?}");
    // Newer values replace it everywhere; a clearing clears it everywhere.
    publish_retained(&mut publisher, "pin/p1/state", json!(0), 2).await;
    until_replayed(&b, "pin/+/state", json!(0)).await;
    publish_retained(&mut publisher, "pin/p1/state", json!(null), 3).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = Client::json(&b.url()).await;
        let got = c
            .call(json!({"op": "sub", "topic": "pin/+/state", "id": 1}))
            .await;
        if got == json!({"op": "ok", "id": 1}) {
            break;
        }
        assert!(Instant::now() < deadline, "never cleared on b: {got}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn publish_retained(c: &mut Client, topic: &str, data: Value, id: u64) {
    let got = c
        .call(json!({"op": "pub", "topic": topic, "data": data, "retain": true, "id": id}))
        .await;
    assert_eq!(got, json!({"op": "ok", "id": id}));
}

#[tokio::test]
async fn values_retained_while_nats_was_away_reach_the_cluster_when_it_returns() {
    let (port, url) = nats_port_for_later();
    let a = member(&url, "a");
    let mut publisher = Client::json(&a.url()).await;
    publish_retained(&mut publisher, "notes/offline", json!("kept"), 1).await;
    let Some(_nats) = Nats::start(port, "retained_reconciled") else {
        return;
    };
    let b = member(&url, "b");
    let took = until_replayed(&b, "notes/#", json!("kept")).await;
    eprintln!("a value retained while NATS was away reached the other broker {took:?} after");
}

/// Waits until `broker` says, on `$SYS/brokers/<name>`, that the broker `name` is online and
/// takes names in the cluster's bucket.
async fn until_registered(broker: &Broker, name: &str) {
    until_broker(broker, name, json!(true)).await;
}

/// Waits until `broker`'s `$SYS/brokers/<name>` says `online` (and, online, that names are the
/// cluster's); returns what it says.
async fn until_broker(broker: &Broker, name: &str, online: Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    let filter = format!("$SYS/brokers/{name}");
    let mut last = Value::Null;
    while Instant::now() < deadline {
        let mut c = Client::json(&broker.url()).await;
        let got = c.call(json!({"op": "sub", "topic": filter, "id": 1})).await;
        if got["retained"] == true
            && got["data"]["online"] == online
            && (online == false || got["data"]["names"] == "cluster")
        {
            return got["data"].clone();
        }
        last = got;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{filter} on {} never said online {online}: {last}",
        broker.url()
    );
}

#[tokio::test]
async fn a_name_is_unique_across_the_cluster_and_free_again_once_its_holder_leaves() {
    let Some(nats) = Nats::start(0, "a_name_is_unique_across_the_cluster") else {
        return;
    };
    let (a, b) = (member(&nats.url(), "a"), member(&nats.url(), "b"));
    until_registered(&a, "a").await;
    until_registered(&b, "b").await;
    let mut holder = Client::json(&a.url()).await;
    crate::harness::hello(&mut holder, "pin-1", "pin", 1).await;
    let mut rival = Client::json(&b.url()).await;
    let got = rival
        .call(json!({"op": "hello", "name": "pin-1", "id": 1}))
        .await;
    crate::harness::assert_err(&got, Some(1), "name_taken", &"held on the other broker");

    crate::harness::close(&mut holder).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut id = 2;
    loop {
        let got = rival
            .call(json!({"op": "hello", "name": "pin-1", "id": id}))
            .await;
        if got == json!({"op": "ok", "id": id}) {
            break;
        }
        assert!(Instant::now() < deadline, "the name was never freed: {got}");
        id += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Names taken while NATS was away join the bucket once it is back: a name one broker took
/// alone becomes unique cluster-wide, and of two clients that took one name on two brokers
/// meanwhile, one keeps it and the other is told `name_taken` and disconnected (1008), the
/// name staying online, on the keeper's broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_taken_while_nats_was_away_join_the_cluster_when_it_returns() {
    let (port, url) = nats_port_for_later();
    let (a, b) = (member(&url, "a"), member(&url, "b"));
    let mut lone = Client::json(&a.url()).await;
    crate::harness::hello(&mut lone, "pin-7", "pin", 1).await;
    let mut twins = [Client::json(&a.url()).await, Client::json(&b.url()).await];
    for twin in &mut twins {
        crate::harness::hello(twin, "pin-6", "pin", 1).await;
    }

    let Some(_nats) = Nats::start(port, "names_taken_while_nats_was_away") else {
        return;
    };
    let started = Instant::now();
    // One twin is evicted: told, then closed.
    let mut evicted = None;
    while evicted.is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "neither pin-6 was evicted"
        );
        for (i, twin) in twins.iter_mut().enumerate() {
            let Some(msg) = twin.recv_message(Duration::from_millis(100)).await else {
                continue;
            };
            let got = crate::harness::decode(&msg);
            crate::harness::assert_err(&got, None, "name_taken", &"held on another broker");
            assert_eq!(
                twin.wait_end(WAIT, 10).await,
                Some(crate::harness::End::Close(Some(1008))),
                "closed after the notice"
            );
            evicted = Some(i);
            break;
        }
    }
    let evicted = evicted.expect("one evicted");
    eprintln!(
        "a name held twice was settled {:?} after NATS came",
        started.elapsed()
    );
    let (keeper_broker, keeper) = if evicted == 0 { ("b", 1) } else { ("a", 0) };
    let got = twins[keeper].call(json!({"op": "ping", "id": 5})).await;
    assert_eq!(got, json!({"op": "pong", "id": 5}), "the keeper stays");

    // pin-6 is online, on the keeper's broker, as both brokers see it.
    for broker in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut c = Client::json(&broker.url()).await;
            let got = c
                .call(json!({"op": "sub", "topic": "$SYS/nodes/pin-6", "id": 1}))
                .await;
            if got["data"]["online"] == true && got["data"]["broker"] == keeper_broker {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "pin-6 on {} is not online on broker {keeper_broker}: {got}",
                broker.url()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // pin-7, taken alone on a, is now the cluster's: b refuses it.
    let adopted_on_a = if keeper_broker == "a" { 2.0 } else { 1.0 };
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.metric("breadboard_cluster_names_adopted_total").await < adopted_on_a {
        assert!(Instant::now() < deadline, "a never adopted pin-7");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let evicted_on = if keeper_broker == "a" { &b } else { &a };
    assert_eq!(
        evicted_on
            .metric("breadboard_cluster_names_evicted_total")
            .await,
        1.0
    );
    let mut rival = Client::json(&b.url()).await;
    let got = rival
        .call(json!({"op": "hello", "name": "pin-7", "id": 1}))
        .await;
    crate::harness::assert_err(&got, Some(1), "name_taken", &"pin-7, adopted by a");
    let got = lone.call(json!({"op": "ping", "id": 2})).await;
    assert_eq!(got, json!({"op": "pong", "id": 2}), "pin-7's holder stays");
}

/// A name left in the bucket by this broker itself, in this run (a client's release that could
/// not reach NATS), is stale: the broker's own clients take names locally first, so none of
/// them holds it. The next client to ask gets it.
#[tokio::test]
async fn a_name_this_broker_failed_to_give_back_is_taken_again() {
    let Some(nats) = Nats::start(0, "a_name_failed_to_give_back") else {
        return;
    };
    let a = member(&nats.url(), "a");
    let seen = until_broker(&a, "a", json!(true)).await;
    let client = async_nats::connect(nats.url())
        .await
        .expect("the test connects to NATS");
    let names = async_nats::jetstream::new(client)
        .get_key_value("bb_test_names")
        .await
        .expect("a made the names bucket");
    let holder = json!({"broker": "a", "run": seen["since"], "kind": "pin", "addr": "127.0.0.1:9"});
    names
        .put("pin-5", holder.to_string().into())
        .await
        .expect("a stale entry of a's");
    let mut c = Client::json(&a.url()).await;
    crate::harness::hello(&mut c, "pin-5", "pin", 1).await;
}

/// Another broker of the cluster, played by the test: it says it is alive on the heartbeat
/// subject until told to stop, as a broker that then dies (no goodbye) would.
async fn ghost_broker(nats: &str, name: &str) -> (async_nats::Client, CancellationToken) {
    let client = async_nats::connect(nats)
        .await
        .expect("the test connects to NATS");
    let stop = CancellationToken::new();
    let (c, s, name) = (client.clone(), stop.clone(), name.to_string());
    tokio::spawn(async move {
        let beat = json!({"broker": name, "since": 1, "names": true}).to_string();
        while !s.is_cancelled() {
            let _ = c.publish("bb.test!.brokers", beat.clone().into()).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    (client, stop)
}

#[tokio::test]
async fn a_dead_brokers_clients_turn_offline_everywhere_within_seconds() {
    let Some(nats) = Nats::start(0, "a_dead_brokers_clients_turn_offline") else {
        return;
    };
    let b = member(&nats.url(), "b");
    until_registered(&b, "b").await;
    // The ghost broker holds `pin-9` in the names bucket, and its presence is online.
    let (ghost, stop) = ghost_broker(&nats.url(), "ghost").await;
    let js = async_nats::jetstream::new(ghost.clone());
    let names = js
        .get_key_value("bb_test_names")
        .await
        .expect("b made the names bucket");
    let holder = json!({"broker": "ghost", "run": 1, "kind": "pin", "addr": "10.0.0.9:1"});
    names
        .put("pin-9", holder.to_string().into())
        .await
        .expect("the ghost takes pin-9");
    // It also has `pin-8` online, taken while it was on its own (so not in the bucket): its
    // presence alone says so.
    let retained = js
        .get_key_value("bb_test_retained")
        .await
        .expect("b made the retained bucket");
    let pin8 = json!({
        "data": {"kind": "pin", "online": true, "since": 1, "addr": "10.0.0.8:1", "broker": "ghost"},
        "ts": crate::harness::now_ms(),
    });
    retained
        .put("=24SYS/nodes/pin-8", pin8.to_string().into())
        .await
        .expect("the ghost's presence of pin-8");
    let seen = until_broker(&b, "ghost", json!(true)).await;
    assert_eq!(seen["since"], 1, "{seen}");

    let mut rival = Client::json(&b.url()).await;
    let got = rival
        .call(json!({"op": "hello", "name": "pin-9", "id": 1}))
        .await;
    crate::harness::assert_err(
        &got,
        Some(1),
        "name_taken",
        &"held by a live broker's client",
    );

    let mut watcher = Client::json(&b.url()).await;
    sub(&mut watcher, "$SYS/nodes/pin-9", 1).await;
    let mut orphan_watcher = Client::json(&b.url()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = orphan_watcher
            .call(json!({"op": "sub", "topic": "$SYS/nodes/pin-8", "id": 1}))
            .await;
        if got["data"]["online"] == true {
            assert_eq!(orphan_watcher.recv().await["op"], "ok");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pin-8's presence never reached b: {got}"
        );
        orphan_watcher = Client::json(&b.url()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let died = Instant::now();
    stop.cancel();
    let got = watcher.recv().await;
    let took = died.elapsed();
    assert_eq!(got["topic"], "$SYS/nodes/pin-9", "{got}");
    assert_eq!(got["data"]["online"], false, "{got}");
    assert_eq!(got["data"]["broker"], "ghost", "{got}");
    assert_eq!(got["data"]["kind"], "pin", "{got}");
    assert!(took < Duration::from_secs(8), "offline only after {took:?}");
    eprintln!("a dead broker's client was offline {took:?} after its last heartbeat");
    let got = orphan_watcher.recv().await;
    assert_eq!(got["topic"], "$SYS/nodes/pin-8", "{got}");
    assert_eq!(got["data"]["online"], false, "{got}");
    assert_eq!(got["data"]["broker"], "ghost", "{got}");
    until_broker(&b, "ghost", json!(false)).await;
    // The name is free again, and the bucket says who holds it now.
    let got = rival
        .call(json!({"op": "hello", "name": "pin-9", "id": 2}))
        .await;
    assert_eq!(got, json!({"op": "ok", "id": 2}));
    let entry = names.get("pin-9").await.expect("the bucket answers");
    let held: Value = serde_json::from_slice(&entry.expect("held")).expect("JSON");
    assert_eq!(held["broker"], "b", "{held}");
}

/// What a client sent to [`RecordingNats`], a line per command: `SUB <subject> <sid>`,
/// `HPUB <subject> [reply] <header len> <total len>` (payloads are read and dropped).
type Commands = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// Just enough of a NATS server to record what a broker sends, in order: INFO, PONG to every
/// PING, and nothing else (no JetStream: the broker's buckets stay unanswered, which it logs
/// and retries). Stops with the test's runtime.
async fn recording_nats() -> (String, Commands) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the recording server");
    let url = format!("nats://{}", listener.local_addr().expect("its address"));
    let commands = Commands::default();
    let recorded = commands.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let recorded = recorded.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let info = r#"INFO {"server_id":"recorder","server_name":"recorder","version":"2.10.0","proto":1,"headers":true,"max_payload":1048576,"host":"127.0.0.1","port":4222}"#;
                if write
                    .write_all(format!("{info}\r\n").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
                let mut read = tokio::io::BufReader::new(read);
                let mut line = String::new();
                loop {
                    line.clear();
                    match read.read_line(&mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    let command = line.trim_end().to_string();
                    let mut words = command.split_whitespace();
                    match words.next() {
                        // A failed write shows as the next read's end.
                        Some("PING") => {
                            let _ = write.write_all(b"PONG\r\n").await;
                        }
                        Some("PUB" | "HPUB") => {
                            let total: usize = command
                                .split_whitespace()
                                .last()
                                .and_then(|n| n.parse().ok())
                                .expect("a payload length");
                            let mut payload = vec![0; total + 2];
                            if read.read_exact(&mut payload).await.is_err() {
                                return;
                            }
                            recorded.lock().expect("commands").push(command);
                        }
                        Some("SUB" | "UNSUB") => recorded.lock().expect("commands").push(command),
                        _ => {}
                    }
                }
            });
        }
    });
    (url, commands)
}

/// The order on the wire, which no timing can show: a client's inbox subscription reaches NATS
/// before the request it then publishes, each of 20 times, even with the two frames sent back
/// to back. In a cluster of NATS servers, a request that overtakes its inbox's subscription
/// gets its answer dropped by a server that does not know the inbox yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbox_subscription_reaches_nats_before_the_request_after_it() {
    let (url, commands) = recording_nats().await;
    let a = member(&url, "a");
    let mut requester = Client::json(&a.url()).await;
    let deadline = Instant::now() + WAIT;
    while a.metric("breadboard_cluster_connected").await == 0.0 {
        assert!(Instant::now() < deadline, "never connected to the recorder");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..20u64 {
        requester
            .send(json!({"op": "sub", "topic": format!("_inbox/r{i}/+")}))
            .await;
        requester
            .send(json!({"op": "pub", "topic": "svc/x", "data": i, "reply": format!("_inbox/r{i}/1")}))
            .await;
    }
    let got = requester.call(json!({"op": "ping", "id": 1})).await;
    assert_eq!(got, json!({"op": "pong", "id": 1}));
    let position = |wanted: &dyn Fn(&str) -> bool| {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(at) = commands
                .lock()
                .expect("commands")
                .iter()
                .position(|c| wanted(c))
            {
                return at;
            }
            assert!(Instant::now() < deadline, "never sent to NATS");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    for i in 0..20u64 {
        let inbox = format!(".r{i}.");
        let sub_at = position(&|c: &str| c.starts_with("SUB ") && c.contains(&inbox));
        let pub_at = position(&|c: &str| {
            c.starts_with("HPUB ")
                && c.split_whitespace()
                    .nth(2)
                    .is_some_and(|r| r.contains(&inbox))
        });
        assert!(
            sub_at < pub_at,
            "request {i} went to NATS (command {pub_at}) before its inbox's subscription \
             (command {sub_at}):\n{}",
            commands.lock().expect("commands").join("\n")
        );
    }
}
