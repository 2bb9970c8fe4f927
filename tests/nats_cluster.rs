//! A real NATS cluster across hosts of a virtual LAN (`common::nats`): three `nats-server`s with
//! JetStream, clustered, each on a host of its own; clients on a fourth host. What the cluster
//! bridge of issue 13 will stand on: messages on the subjects of `proto::subject` cross the
//! cluster once each and in order, JetStream replicates, and the loss of a server is survived.
//!
//! These tests need root, iproute2 and `nats-server`. Under `CI=true` they must run (a skip
//! fails); elsewhere they skip with a visible message.

use std::time::{Duration, Instant};

use proto::{SubjectSpace, TopicFilter, TopicName};
use serde_json::{json, Value};

use crate::common::lan::Lan;
use crate::common::nats::{can_run_nats, NatsClient, NatsCluster};

const WAIT: Duration = Duration::from_secs(5);

/// Asks for the stream's info until one answers without an error (a stream whose leader was
/// just lost is silent, or answers with an error, until it has elected another).
fn stream_info(client: &mut NatsClient, stream: &str) -> Value {
    let subject = format!("$JS.API.STREAM.INFO.{stream}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = client.try_request(&subject, b"", Duration::from_secs(2));
        let info: Value = reply
            .as_ref()
            .and_then(|r| serde_json::from_slice(&r.payload).ok())
            .unwrap_or(Value::Null);
        if info.get("error").is_none() && info["state"].is_object() {
            return info;
        }
        let last = reply.map_or_else(|| "no reply".to_owned(), |r| r.text());
        assert!(Instant::now() < deadline, "{subject}: {last}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Publishes `count` numbered messages on `subject` from `from`; `to` receives each once, in
/// order.
fn crosses_in_order(from: &mut NatsClient, to: &mut NatsClient, subject: &str, count: usize) {
    for i in 0..count {
        from.publish(subject, i.to_string().as_bytes());
    }
    from.flush();
    for i in 0..count {
        let msg = to.expect_message(WAIT);
        assert_eq!(msg.subject, subject);
        assert_eq!(msg.text(), i.to_string(), "message {i} out of order");
    }
}

#[test]
fn a_nats_cluster_across_hosts_carries_topics_and_survives_a_server() {
    let test = "a_nats_cluster_across_hosts_carries_topics_and_survives_a_server";
    if !can_run_nats(test) {
        return;
    }
    let started = Instant::now();
    let lan = Lan::flat(test, &[("n1", 1), ("n2", 2), ("n3", 3), ("c", 10)])
        .expect("a LAN (checked above)");
    let mut cluster = NatsCluster::start(&lan, &["n1", "n2", "n3"]);
    let space = SubjectSpace::default();

    // JetStream is clustered: a stream of three replicas, one on each server, takes every
    // subject of the cluster's ordinary topics.
    let mut admin = cluster.client("c", "n2");
    let created = admin.jetstream(
        "STREAM.CREATE.BBTEST",
        &json!({
            "name": "BBTEST",
            "subjects": [format!("{}.>", space.root())],
            "num_replicas": 3,
            "storage": "memory",
        }),
    );
    assert_eq!(created["config"]["num_replicas"], 3, "{created}");
    let replicas = created["cluster"]["replicas"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(replicas, 2, "a leader and two replicas: {created}");
    assert_eq!(created["cluster"]["name"], cluster.name(), "{created}");
    eprintln!("NATS cluster at {}", cluster.urls());

    // A subscriber for `pin/#` on one server (two subjects: `pin` and below), a publisher on
    // another, both from the client host: each message crosses once, in order.
    let topic = TopicName::new("pin/pin-1/state").expect("a topic");
    let subject = space.subject(&topic);
    let filter = TopicFilter::new("pin/#").expect("a filter");
    let mut sub = cluster.client("c", "n3");
    for s in space.filter_subjects(&filter) {
        sub.subscribe(&s);
    }
    let mut publisher = cluster.client("c", "n1");
    sub.sync_interest(&mut publisher);
    crosses_in_order(&mut publisher, &mut sub, &subject, 100);
    let parent = space.subject(&TopicName::new("pin").expect("a topic"));
    crosses_in_order(&mut publisher, &mut sub, &parent, 1);
    let msg_topic = space.topic(&subject).expect("the subject decodes");
    assert_eq!(msg_topic, topic);
    // A topic NATS cannot carry as it is crosses escaped, and decodes back.
    let nasty = TopicName::new("pin/a.b c/*").expect("a topic");
    publisher.publish(&space.subject(&nasty), b"nasty");
    let msg = sub.expect_message(WAIT);
    assert_eq!(space.topic(&msg.subject), Ok(nasty));
    // Nothing else: no copy, no other topic.
    publisher.publish(
        &space.subject(&TopicName::new("clock/tick").expect("a topic")),
        b"x",
    );
    publisher.flush();
    assert_eq!(sub.next_message(Duration::from_millis(300)), None);
    let stored = stream_info(&mut admin, "BBTEST");
    assert_eq!(stored["state"]["messages"], 103, "{stored}");

    // One server killed: the other two carry on, and the stream keeps what it stored.
    let killed = Instant::now();
    cluster.kill("n2");
    eprintln!(
        "n2 killed; the other two agree again after {:?}",
        killed.elapsed()
    );
    let mut admin = cluster.client("c", "n1");
    let stored = stream_info(&mut admin, "BBTEST");
    assert_eq!(stored["state"]["messages"], 103, "{stored}");
    eprintln!(
        "the stream answers again {:?} after the kill",
        killed.elapsed()
    );
    crosses_in_order(&mut publisher, &mut sub, &subject, 10);
    eprintln!("NATS cluster test, all told: {:?}", started.elapsed());
}
