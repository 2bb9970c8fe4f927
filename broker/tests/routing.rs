//! Routing: both encodings, topics and wildcards, answers and ids, retained values,
//! request/reply and `from`.

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{
    assert_err, assert_quiet, decode, hello, live, presence, publish, retain_many, sub, unsub,
    Broker, Client, WAIT,
};

// ---------------------------------------------------------------------------------------------
// Encodings

#[tokio::test]
async fn json_and_msgpack_clients_talk_to_each_other() {
    let broker = Broker::default();
    let mut j = Client::json(&broker.url()).await;
    let mut m = Client::msgpack(&broker.url()).await;
    hello(&mut j, "json-1", "tool", 1).await;
    hello(&mut m, "pack-1", "node", 1).await;
    sub(&mut j, "mixed/from-pack", 2).await;
    sub(&mut m, "mixed/from-json", 2).await;

    let data = json!({"n": 1, "neg": -7, "f": 1.5, "s": "héllo 😀", "a": [true, null, {"k": "v"}]});
    publish(&mut j, "mixed/from-json", data.clone(), 3).await;
    let got = m.recv_message(WAIT).await.expect("a message");
    assert!(got.is_binary(), "MessagePack client got {got:?}");
    assert_eq!(
        decode(&got),
        json!({"op": "msg", "topic": "mixed/from-json", "data": data, "from": "json-1", "retained": false})
    );

    publish(&mut m, "mixed/from-pack", data.clone(), 4).await;
    let got = j.recv_message(WAIT).await.expect("a message");
    assert!(got.is_text(), "JSON client got {got:?}");
    assert_eq!(
        decode(&got),
        json!({"op": "msg", "topic": "mixed/from-pack", "data": data, "from": "pack-1", "retained": false})
    );
    assert_quiet(&mut j, 5).await;
    assert_quiet(&mut m, 5).await;
}

#[tokio::test]
async fn answers_and_messages_follow_the_encoding_last_used() {
    let broker = Broker::default();
    let mut c = Client::json(&broker.url()).await;
    let mut publisher = Client::json(&broker.url()).await;
    sub(&mut c, "enc", 1).await;

    let ping = |id: u64| json!({"op": "ping", "id": id});
    let expect = |got: Option<Message>, binary: bool, want: Value| {
        let got = got.expect("a frame");
        assert_eq!(got.is_binary(), binary, "wrong encoding: {got:?}");
        assert_eq!(decode(&got), want);
    };

    c.send(ping(2)).await;
    expect(
        c.recv_message(WAIT).await,
        false,
        json!({"op": "pong", "id": 2}),
    );

    // Switch to MessagePack: the pong, the next message and an error come back binary.
    c.msgpack = true;
    c.send(ping(3)).await;
    expect(
        c.recv_message(WAIT).await,
        true,
        json!({"op": "pong", "id": 3}),
    );
    publish(&mut publisher, "enc", json!(1), 1).await;
    expect(c.recv_message(WAIT).await, true, live("enc", json!(1)));
    c.send_raw(Message::Binary(vec![0xc1].into())).await;
    let got = c.recv_message(WAIT).await.expect("an err");
    assert!(got.is_binary(), "err to a binary frame: {got:?}");
    assert_err(&decode(&got), None, "bad_frame", &"0xc1");

    // And back to JSON.
    c.msgpack = false;
    c.send(ping(4)).await;
    expect(
        c.recv_message(WAIT).await,
        false,
        json!({"op": "pong", "id": 4}),
    );
    publish(&mut publisher, "enc", json!(2), 2).await;
    expect(c.recv_message(WAIT).await, false, live("enc", json!(2)));
}

// ---------------------------------------------------------------------------------------------
// Topics and wildcards

#[tokio::test]
async fn plus_matches_exactly_one_level() {
    let broker = Broker::default();
    let mut s = Client::json(&broker.url()).await;
    let mut p = Client::json(&broker.url()).await;
    sub(&mut s, "pin/+/state", 1).await;
    for (i, topic) in [
        "pin/p1/state",
        "pin/p1/level",
        "pin/state",
        "pin/p1/state/x",
        "pin/p2/state",
        "x/p1/state",
    ]
    .into_iter()
    .enumerate()
    {
        publish(&mut p, topic, json!(i), i as u64).await;
    }
    assert_eq!(s.recv().await, live("pin/p1/state", json!(0)));
    assert_eq!(s.recv().await, live("pin/p2/state", json!(4)));
    assert_quiet(&mut s, 2).await;
}

#[tokio::test]
async fn hash_matches_the_rest_and_the_parent() {
    let broker = Broker::default();
    let mut s = Client::json(&broker.url()).await;
    let mut p = Client::json(&broker.url()).await;
    sub(&mut s, "a/#", 1).await;
    for (i, topic) in ["a", "a/b", "b", "ab/c", "a/b/c/d", "b/a"]
        .into_iter()
        .enumerate()
    {
        publish(&mut p, topic, json!(i), i as u64).await;
    }
    assert_eq!(s.recv().await, live("a", json!(0)));
    assert_eq!(s.recv().await, live("a/b", json!(1)));
    assert_eq!(s.recv().await, live("a/b/c/d", json!(4)));
    assert_quiet(&mut s, 2).await;
}

#[tokio::test]
async fn sys_topics_need_an_explicit_subscription() {
    // No stats: only presence is published under $SYS here.
    let broker = Broker::without_stats();
    let url = broker.url();
    let mut everything = Client::json(&url).await;
    sub(&mut everything, "#", 1).await;
    sub(&mut everything, "+/nodes/+", 2).await;
    sub(&mut everything, "+/#", 3).await;
    let mut sys = Client::json(&url).await;
    sub(&mut sys, "$SYS/#", 1).await;

    let mut node = Client::json(&url).await;
    hello(&mut node, "sys-node", "pin", 1).await;
    let data = presence(&mut sys, "sys-node", false).await;
    assert_eq!(data["online"], true);

    // The presence was queued before the hello's ok; a message published after it is the
    // first thing the `#` subscriber gets.
    publish(&mut node, "plain/topic", json!("x"), 2).await;
    let got = everything.recv().await;
    assert_eq!(got["topic"], "plain/topic", "{got}");
    assert_quiet(&mut everything, 4).await;

    // No replay of $SYS values to a wildcard either, but a replay to `$SYS/#`.
    let mut late = Client::json(&url).await;
    sub(&mut late, "#", 1).await;
    sub(&mut late, "+/nodes/sys-node", 2).await;
    late.send(json!({"op": "sub", "topic": "$SYS/nodes/+", "id": 3}))
        .await;
    let data = presence(&mut late, "sys-node", true).await;
    assert_eq!(data["online"], true);
    assert_eq!(late.recv().await, json!({"op": "ok", "id": 3}));
    assert_quiet(&mut sys, 2).await;
}

#[tokio::test]
async fn overlapping_filters_deliver_a_message_once() {
    let broker = Broker::default();
    let mut s = Client::msgpack(&broker.url()).await;
    let mut p = Client::json(&broker.url()).await;
    for (i, filter) in ["a/b", "a/+", "a/#", "#", "+/b", "+/+"]
        .into_iter()
        .enumerate()
    {
        sub(&mut s, filter, i as u64).await;
    }
    publish(&mut p, "a/b", json!("once"), 1).await;
    publish(&mut p, "a/b/c", json!("deep"), 2).await;
    assert_eq!(s.recv().await, live("a/b", json!("once")));
    assert_eq!(s.recv().await, live("a/b/c", json!("deep")));
    assert_quiet(&mut s, 10).await;
}

#[tokio::test]
async fn unsub_stops_delivery() {
    let broker = Broker::default();
    let mut s = Client::json(&broker.url()).await;
    let mut p = Client::json(&broker.url()).await;
    sub(&mut s, "u/+", 1).await;
    sub(&mut s, "u/x", 2).await;

    unsub(&mut s, "u/+", 3).await;
    publish(&mut p, "u/x", json!("still held"), 1).await;
    publish(&mut p, "u/y", json!("dropped"), 2).await;
    assert_eq!(s.recv().await, live("u/x", json!("still held")));
    assert_quiet(&mut s, 4).await;

    unsub(&mut s, "u/x", 5).await;
    publish(&mut p, "u/x", json!("gone"), 3).await;
    assert_quiet(&mut s, 6).await;

    // Unsubscribing from a filter not held is not an error.
    unsub(&mut s, "never/held", 7).await;
}

// ---------------------------------------------------------------------------------------------
// Answers and ids

#[tokio::test]
async fn every_frame_with_an_id_is_answered() {
    let broker = Broker::default();
    let mut c = Client::json(&broker.url()).await;
    let cases = [
        (
            json!({"op": "hello", "name": "ids", "id": 1}),
            json!({"op": "ok", "id": 1}),
        ),
        (
            json!({"op": "sub", "topic": "ids/+", "id": 2}),
            json!({"op": "ok", "id": 2}),
        ),
        (
            json!({"op": "unsub", "topic": "ids/+", "id": 3}),
            json!({"op": "ok", "id": 3}),
        ),
        (
            json!({"op": "pub", "topic": "ids/x", "data": 1, "id": 4}),
            json!({"op": "ok", "id": 4}),
        ),
        (
            json!({"op": "ping", "id": 5}),
            json!({"op": "pong", "id": 5}),
        ),
        (
            json!({"op": "ping", "id": 0}),
            json!({"op": "pong", "id": 0}),
        ),
        (
            json!({"op": "ping", "id": u64::MAX}),
            json!({"op": "pong", "id": u64::MAX}),
        ),
    ];
    for (frame, want) in cases {
        assert_eq!(c.call(frame.clone()).await, want, "answer to {frame}");
    }
    let got = c.call(json!({"op": "pub", "topic": "a//b", "id": 6})).await;
    assert_err(&got, Some(6), "bad_topic", &"pub a//b");

    // The same over MessagePack.
    let mut m = Client::msgpack(&broker.url()).await;
    let got = m.call(json!({"op": "ping", "id": u64::MAX})).await;
    assert_eq!(got, json!({"op": "pong", "id": u64::MAX}));
    let got = m
        .call(json!({"op": "sub", "topic": "a/#/b", "id": 7}))
        .await;
    assert_err(&got, Some(7), "bad_filter", &"sub a/#/b");
}

#[tokio::test]
async fn frames_without_an_id_are_answered_only_on_failure() {
    let broker = Broker::default();
    let mut c = Client::json(&broker.url()).await;
    let mut p = Client::json(&broker.url()).await;
    sub(&mut p, "quiet/from-c", 1).await;
    // Each of these succeeds silently.
    c.send(json!({"op": "hello", "name": "no-ids"})).await;
    c.send(json!({"op": "sub", "topic": "quiet/+"})).await;
    c.send(json!({"op": "unsub", "topic": "quiet/+"})).await;
    c.send(json!({"op": "pub", "topic": "quiet/from-c", "data": 1}))
        .await;
    c.send(json!({"op": "ping"})).await;
    assert_quiet(&mut c, 2).await;
    // The id-less pub did go through.
    let got = p.recv().await;
    assert_eq!(got["topic"], "quiet/from-c", "{got}");
    assert_eq!(got["from"], "no-ids", "{got}");

    // A failure without an id is answered, without an id.
    c.send(json!({"op": "pub", "topic": "a/+"})).await;
    assert_err(&c.recv().await, None, "wildcard_topic", &"pub a/+");
    assert_quiet(&mut c, 3).await;
}

// ---------------------------------------------------------------------------------------------
// Retained values

#[tokio::test]
async fn retained_values_are_replayed_before_the_ok() {
    let broker = Broker::default();
    let url = broker.url();
    let mut p = Client::json(&url).await;
    hello(&mut p, "keeper", "sensor", 1).await;
    let retain = |topic: &str, data: Value, id: u64| json!({"op": "pub", "topic": topic, "data": data, "retain": true, "id": id});
    for frame in [
        retain("ret/a", json!(1), 2),
        retain("ret/b", json!({"v": 2}), 3),
        retain("ret/a", json!(3), 4), // replaces 1
        json!({"op": "pub", "topic": "ret/c", "data": 4, "id": 5}), // not retained
        retain("other/x", json!(5), 6),
    ] {
        let id = frame["id"].clone();
        assert_eq!(p.call(frame).await, json!({"op": "ok", "id": id}));
    }

    let mut s = Client::msgpack(&url).await;
    s.send(json!({"op": "sub", "topic": "ret/+", "id": 7}))
        .await;
    let mut replay = vec![s.recv().await, s.recv().await];
    replay.sort_by_key(|m| m["topic"].to_string());
    let replayed = |topic: &str, data: Value| json!({"op": "msg", "topic": topic, "data": data, "from": "keeper", "retained": true});
    assert_eq!(
        replay,
        [
            replayed("ret/a", json!(3)),
            replayed("ret/b", json!({"v": 2}))
        ]
    );
    assert_eq!(s.recv().await, json!({"op": "ok", "id": 7}));

    // Live messages are not flagged, even when retained.
    p.call(retain("ret/a", json!(6), 8)).await;
    assert_eq!(
        s.recv().await,
        json!({"op": "msg", "topic": "ret/a", "data": 6, "from": "keeper", "retained": false})
    );
    assert_quiet(&mut s, 8).await;

    // Subscribing again to a filter already held replays again, and stays one subscription.
    s.send(json!({"op": "sub", "topic": "ret/+", "id": 9}))
        .await;
    let mut replay = vec![s.recv().await, s.recv().await];
    replay.sort_by_key(|m| m["topic"].to_string());
    assert_eq!(
        replay,
        [
            replayed("ret/a", json!(6)),
            replayed("ret/b", json!({"v": 2}))
        ]
    );
    assert_eq!(s.recv().await, json!({"op": "ok", "id": 9}));
    p.call(retain("ret/b", json!(7), 10)).await;
    assert_eq!(s.recv().await["data"], 7);
    assert_quiet(&mut s, 11).await;
}

#[tokio::test]
async fn retain_with_null_data_clears_the_value() {
    // No `$SYS/broker/stats`: it would be a retained topic too.
    let broker = Broker::without_stats();
    let url = broker.url();
    let mut p = Client::json(&url).await;
    let mut s = Client::json(&url).await;
    sub(&mut s, "clear/me", 1).await;
    let set = json!({"op": "pub", "topic": "clear/me", "data": "v", "retain": true, "id": 1});
    assert_eq!(p.call(set).await, json!({"op": "ok", "id": 1}));
    let clear = json!({"op": "pub", "topic": "clear/me", "data": null, "retain": true, "id": 2});
    assert_eq!(p.call(clear).await, json!({"op": "ok", "id": 2}));
    // Both are delivered live, the clearing one with null data.
    assert_eq!(s.recv().await, live("clear/me", json!("v")));
    assert_eq!(s.recv().await, live("clear/me", Value::Null));

    // A later subscriber gets no replay; neither does one after a retained pub without data.
    let mut late = Client::json(&url).await;
    sub(&mut late, "clear/#", 1).await;
    let unset = json!({"op": "pub", "topic": "clear/again", "retain": true, "id": 3});
    assert_eq!(p.call(unset).await, json!({"op": "ok", "id": 3}));
    assert_eq!(late.recv().await, live("clear/again", Value::Null));
    let mut later = Client::json(&url).await;
    sub(&mut later, "clear/#", 1).await;
    assert_eq!(broker.metric("breadboard_retained_topics").await, 0.0);
}

#[tokio::test]
async fn a_large_retained_replay_reaches_a_new_subscriber() {
    // With the default outbox (8192 frames), a broker holding 9000 retained values, say one
    // per sensor, and a dashboard subscribing to all of them. The replay is queued all at once
    // while the subscription is made, so it must not count as the subscriber being slow.
    const TOPICS: u64 = 9_000;
    let broker = Broker::without_stats();
    let url = broker.url();
    let mut p = Client::json(&url).await;
    retain_many(&mut p, "sensor", TOPICS).await;
    assert_eq!(
        broker.metric("breadboard_retained_topics").await,
        TOPICS as f64
    );

    let mut dashboard = Client::json(&url).await;
    dashboard
        .send(json!({"op": "sub", "topic": "sensor/#", "id": 1}))
        .await;
    let mut replayed = 0;
    loop {
        let got = dashboard
            .recv_message(WAIT)
            .await
            .unwrap_or_else(|| panic!("connection ended after {replayed} replayed values"));
        let got = match got {
            Message::Close(close) => panic!("closed by {close:?} after {replayed} replayed values"),
            other => decode(&other),
        };
        if got["op"] == "ok" {
            break;
        }
        assert_eq!(got["retained"], true, "{got}");
        replayed += 1;
        assert!(
            replayed <= TOPICS,
            "more replayed values than retained topics"
        );
    }
    assert_eq!(replayed, TOPICS);
    assert_eq!(broker.slow_consumers().await, 0.0);
}

// ---------------------------------------------------------------------------------------------
// Request / reply and `from`

#[tokio::test]
async fn request_reply_through_the_reply_topic() {
    let broker = Broker::default();
    let url = broker.url();
    let mut asker = Client::json(&url).await;
    let mut service = Client::msgpack(&url).await;
    hello(&mut asker, "asker", "tool", 1).await;
    hello(&mut service, "echo", "service", 1).await;
    sub(&mut asker, "_inbox/asker/+", 2).await;
    sub(&mut service, "svc/echo", 2).await;

    let request = json!({"op": "pub", "topic": "svc/echo", "data": {"q": 42}, "reply": "_inbox/asker/7", "id": 3});
    assert_eq!(asker.call(request).await, json!({"op": "ok", "id": 3}));
    let got = service.recv().await;
    assert_eq!(
        got,
        json!({"op": "msg", "topic": "svc/echo", "data": {"q": 42}, "from": "asker", "reply": "_inbox/asker/7", "retained": false})
    );

    let reply_to = got["reply"].as_str().expect("a reply topic");
    publish(&mut service, reply_to, json!({"a": 42}), 3).await;
    assert_eq!(
        asker.recv().await,
        json!({"op": "msg", "topic": "_inbox/asker/7", "data": {"a": 42}, "from": "echo", "retained": false})
    );
    assert_quiet(&mut asker, 4).await;
    assert_quiet(&mut service, 4).await;
}

#[tokio::test]
async fn from_carries_the_publishers_hello_name() {
    let broker = Broker::default();
    let url = broker.url();
    let mut s = Client::json(&url).await;
    sub(&mut s, "f/+", 1).await;
    let mut anonymous = Client::json(&url).await;
    publish(&mut anonymous, "f/1", json!(1), 1).await;
    // Before its hello a client is anonymous; after it, named.
    hello(&mut anonymous, "named-later", "x", 2).await;
    publish(&mut anonymous, "f/2", json!(2), 3).await;
    let got = s.recv().await;
    assert_eq!(got, live("f/1", json!(1)));
    assert!(got.get("from").is_none() && got.get("reply").is_none());
    assert_eq!(
        s.recv().await,
        json!({"op": "msg", "topic": "f/2", "data": 2, "from": "named-later", "retained": false})
    );
}
