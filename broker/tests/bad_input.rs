//! Bad input: an `err` with a stable code, and the connection keeps working, or, for what
//! cannot be read at all, a close with a stable code that leaves every other client working.

use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{
    assert_err, assert_quiet, hello, live, named_client, presence, publish, sub, unsub, Broker,
    Client, End, WAIT,
};

/// The largest frame the brokers of the [`refusals`] accept: above the longest valid topic
/// (1 024 bytes) with room for the rest of its frame, so that an oversize frame and a
/// too-long topic are told apart.
const MAX_FRAME_BYTES: usize = 2048;

/// A frame the broker must refuse with an `err`, after which the connection, and every other,
/// keeps working.
struct Refusal {
    /// Names the case in a failure.
    name: &'static str,
    /// Whether the client has said `hello` (as `first`) before it sends `frame`.
    named: bool,
    /// What the client sends.
    frame: Message,
    /// The `code` of the `err` expected.
    code: &'static str,
    /// The `id` the `err` must carry (`None`: it must carry none).
    id: Option<u64>,
}

impl Refusal {
    /// A case for a client that has not said `hello`.
    fn new(name: &'static str, frame: Message, code: &'static str, id: Option<u64>) -> Refusal {
        Refusal {
            name,
            named: false,
            frame,
            code,
            id,
        }
    }

    /// A case for a client that has already said `hello`.
    fn named(name: &'static str, frame: Message, code: &'static str, id: Option<u64>) -> Refusal {
        Refusal {
            named: true,
            ..Refusal::new(name, frame, code, id)
        }
    }

    /// On a broker of its own: a watcher of every topic (`#` and `$SYS/#`), a bystander, and
    /// the client that sends the frame. The frame is refused as expected (and counted in
    /// `/metrics`); the client still answers a ping; nothing reached the watcher (no message
    /// went through, no presence changed); the client and the bystander still work.
    async fn check(self) {
        let broker = Broker::with(|config| {
            config.max_frame_bytes = MAX_FRAME_BYTES;
            config.stats_interval = None;
        });
        let mut watcher = Client::json(&broker.url()).await;
        sub(&mut watcher, "#", 1).await;
        sub(&mut watcher, "$SYS/#", 2).await;
        let (mut c, mut other) = victim_and_bystander(&broker).await;
        if self.named {
            hello(&mut c, "first", "pin", 1).await;
            assert_eq!(presence(&mut watcher, "first", false).await["online"], true);
        }
        refuse(&mut c, self.frame, self.id, self.code).await;
        assert_quiet(&mut watcher, 3).await;
        let counter = format!("breadboard_errors_total{{code=\"{}\"}}", self.code);
        assert_eq!(broker.metric(&counter).await, 1.0, "{counter}");
        still_works(&mut c, &mut other).await;
    }
}

/// A JSON frame, as a text message.
fn json_text(frame: Value) -> Message {
    Message::text(frame.to_string())
}

/// A MessagePack frame (maps with their keys), as a binary message.
fn msgpack(frame: Value) -> Message {
    Message::binary(rmp_serde::to_vec_named(&frame).expect("encode"))
}

/// Every frame the broker refuses with an `err` and a working connection: one a line, by what
/// is wrong with it.
#[rustfmt::skip]
fn refusals() -> Vec<Refusal> {
    use Refusal as R;
    let bad_frame = |name, frame| R::new(name, frame, "bad_frame", None);
    let text = Message::text;
    let binary = Message::binary;
    let pub_to = |topic: &str, id: u64| json_text(json!({"op": "pub", "topic": topic, "data": 1, "id": id}));
    let pub_with_reply = |reply: &str, id: u64| json_text(json!({"op": "pub", "topic": "a", "reply": reply, "id": id}));
    let retained_pub_to = |topic: &str, id: u64| json_text(json!({"op": "pub", "topic": topic, "data": 1, "retain": true, "id": id}));
    let sub_to = |filter: &str, id: u64| json_text(json!({"op": "sub", "topic": filter, "id": id}));
    let hello_as = |name: &str, id: u64| json_text(json!({"op": "hello", "name": name, "id": id}));
    let ping_of_len = |len: usize| Message::text(json_ping_of_len(2, len));
    vec![
        // Malformed JSON.
        bad_frame("JSON cut short", text("{\"op\":\"ping\",")),
        bad_frame("JSON without quotes", text("{op: ping}")),
        bad_frame("an empty text", text("")),
        bad_frame("JSON with text after it", text("{\"op\":\"ping\"} trailing")),
        // A mistyped field fails the frame, and the id is still read.
        R::new("a mistyped retain", json_text(json!({"op": "pub", "topic": "a", "retain": "yes", "id": 14})), "bad_frame", Some(14)),
        R::new("a number for an op", json_text(json!({"op": 7, "id": 15})), "bad_frame", Some(15)),
        // Malformed MessagePack.
        bad_frame("MessagePack 0xc1 (never used)", binary(vec![0xc1])),
        bad_frame("an empty binary", binary(Vec::new())),
        bad_frame("a MessagePack map cut short", binary(vec![0x82, 0xa2, b'o', b'p'])),
        bad_frame("a MessagePack map16 without its length", binary(vec![0xde, 0xff])),
        // {"op": "ping"} then nil: nothing may follow a frame, as in JSON.
        bad_frame("MessagePack with bytes after it", binary(b"\x81\xa2op\xa4ping\xc0".to_vec())),
        // Not an object.
        bad_frame("a JSON number", text("42")),
        bad_frame("a JSON string", text("\"ping\"")),
        bad_frame("JSON null", text("null")),
        bad_frame("JSON true", text("true")),
        bad_frame("a JSON array", text("[1,2]")),
        bad_frame("an empty JSON array", text("[]")),
        bad_frame("a MessagePack integer", binary(rmp_serde::to_vec(&42).expect("encode"))),
        // serde lets a struct be read from a sequence of its fields in order, so unless the
        // broker insists on an object, `["ping", 7]` reads as a ping with id 7, and
        // `["pub", 1, "t"]` as a publish. Frames are objects (PROTOCOL.md: "one object per
        // WebSocket message").
        bad_frame("a JSON array shaped like a ping", text(r#"["ping",7]"#)),
        bad_frame("a MessagePack array shaped like a ping", binary(rmp_serde::to_vec(&("ping", 8)).expect("encode"))),
        // Unknown ops.
        R::new("op jump", json_text(json!({"op": "jump", "id": 3})), "unknown_op", Some(3)),
        R::new("op PING (ops are lower case)", json_text(json!({"op": "PING", "id": 4})), "unknown_op", Some(4)),
        R::new("op msg (the broker's to send)", json_text(json!({"op": "msg", "topic": "a"})), "unknown_op", None),
        R::new("op jump in MessagePack", msgpack(json!({"op": "jump", "id": 5})), "unknown_op", Some(5)),
        // Missing fields.
        R::new("no op", json_text(json!({"id": 1})), "bad_frame", Some(1)),
        R::new("pub without a topic", json_text(json!({"op": "pub", "data": 1, "id": 2})), "bad_frame", Some(2)),
        R::new("sub without a topic", json_text(json!({"op": "sub", "id": 3})), "bad_frame", Some(3)),
        R::new("unsub without a topic", json_text(json!({"op": "unsub", "id": 4})), "bad_frame", Some(4)),
        R::new("hello without a name", json_text(json!({"op": "hello", "kind": "pin", "id": 5})), "bad_frame", Some(5)),
        bad_frame("pub without a topic or an id", json_text(json!({"op": "pub"}))),
        // Bad topics; the reply topic is checked the same way.
        R::new("pub to an empty topic", pub_to("", 0), "bad_topic", Some(0)),
        R::new("pub to an empty level", pub_to("a//b", 1), "bad_topic", Some(1)),
        R::new("pub to a leading slash", pub_to("/a", 2), "bad_topic", Some(2)),
        R::new("pub to a trailing slash", pub_to("a/", 3), "bad_topic", Some(3)),
        R::new("pub to a topic with a NUL", pub_to("a\0b", 4), "bad_topic", Some(4)),
        R::new("pub to 1 025 bytes of topic", pub_to(&"x".repeat(1025), 5), "bad_topic", Some(5)),
        R::new("pub to 33 levels", pub_to(&["a"; 33].join("/"), 6), "bad_topic", Some(6)),
        R::new("a reply topic with an empty level", pub_with_reply("a//b", 20), "bad_topic", Some(20)),
        // Wildcards in a published topic (the watcher of `#` would see the message).
        R::new("pub to a/+", pub_to("a/+", 0), "wildcard_topic", Some(0)),
        R::new("pub to a/#", pub_to("a/#", 1), "wildcard_topic", Some(1)),
        R::new("pub to +", pub_to("+", 2), "wildcard_topic", Some(2)),
        R::new("pub to #", pub_to("#", 3), "wildcard_topic", Some(3)),
        R::new("pub to a/b+", pub_to("a/b+", 4), "wildcard_topic", Some(4)),
        R::new("pub to a#/b", pub_to("a#/b", 5), "wildcard_topic", Some(5)),
        R::new("a wildcard reply topic", pub_with_reply("_inbox/+", 20), "wildcard_topic", Some(20)),
        // `$` topics are the broker's (the watcher of `$SYS/#` would see the message).
        R::new("a retained pub to $SYS/nodes/x", retained_pub_to("$SYS/nodes/x", 0), "reserved_topic", Some(0)),
        R::new("a retained pub to $SYS", retained_pub_to("$SYS", 1), "reserved_topic", Some(1)),
        R::new("a retained pub to $other/x", retained_pub_to("$other/x", 2), "reserved_topic", Some(2)),
        // Bad filters.
        R::new("sub to an empty filter", sub_to("", 0), "bad_filter", Some(0)),
        R::new("sub to # not last", sub_to("a/#/b", 1), "bad_filter", Some(1)),
        R::new("sub to + within a level", sub_to("a+", 2), "bad_filter", Some(2)),
        R::new("sub to # within a level", sub_to("a/b#", 3), "bad_filter", Some(3)),
        R::new("sub to # first", sub_to("#/a", 4), "bad_filter", Some(4)),
        R::new("sub to an empty level", sub_to("a//+", 5), "bad_filter", Some(5)),
        R::new("sub to a leading slash", sub_to("/#", 6), "bad_filter", Some(6)),
        R::new("unsub from # not last", json_text(json!({"op": "unsub", "topic": "a/#/b", "id": 20})), "bad_filter", Some(20)),
        // Bad names and kinds.
        R::new("hello as nobody", hello_as("", 0), "bad_name", Some(0)),
        R::new("hello with a slash", hello_as("a/b", 1), "bad_name", Some(1)),
        R::new("hello with a +", hello_as("a+", 2), "bad_name", Some(2)),
        R::new("hello with a #", hello_as("a#", 3), "bad_name", Some(3)),
        R::new("hello with a $", hello_as("$x", 4), "bad_name", Some(4)),
        R::new("hello with a space", hello_as("a b", 5), "bad_name", Some(5)),
        R::new("hello with a tab", hello_as("tab\t", 6), "bad_name", Some(6)),
        R::new("hello with 65 bytes of name", hello_as(&"n".repeat(65), 7), "bad_name", Some(7)),
        R::new("hello with a kind a/b", json_text(json!({"op": "hello", "name": "ok-name", "kind": "a/b", "id": 20})), "bad_name", Some(20)),
        // A second hello.
        R::named("a second hello with another name", hello_as("second", 2), "already_named", Some(2)),
        R::named("a second hello with the same name", hello_as("first", 3), "already_named", Some(3)),
        // Oversize, up to twice the limit (such a frame is not read, so the err has no id).
        R::new("JSON a byte over the limit", ping_of_len(MAX_FRAME_BYTES + 1), "too_large", None),
        R::new("JSON half as large again as the limit", ping_of_len(MAX_FRAME_BYTES * 3 / 2), "too_large", None),
        R::new("JSON twice the limit", ping_of_len(MAX_FRAME_BYTES * 2), "too_large", None),
        R::new("MessagePack half as large again as the limit", binary(msgpack_ping_of_len(4, MAX_FRAME_BYTES * 3 / 2)), "too_large", None),
    ]
}

#[tokio::test]
async fn refused_frames_leave_the_connection_and_the_others_working() {
    let cases = refusals();
    let total = cases.len();
    let mut failed = Vec::new();
    for case in cases {
        let name = case.name;
        if let Err(panic) = AssertUnwindSafe(case.check()).catch_unwind().await {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            failed.push(format!("{name}: {why}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {total} refusals failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

#[tokio::test]
async fn no_refused_frame_names_the_client() {
    let broker = Broker::with(|config| config.max_frame_bytes = MAX_FRAME_BYTES);
    let mut c = Client::json(&broker.url()).await;
    for case in refusals().into_iter().filter(|case| !case.named) {
        refuse(&mut c, case.frame, case.id, case.code).await;
    }
    // Not even the hello refused for its kind: its name is free, and the client may take it.
    hello(&mut c, "ok-name", "pin", 21).await;
}

#[tokio::test]
async fn topics_and_names_right_at_their_limits_are_accepted() {
    let broker = Broker::default();
    let (mut c, mut other) = victim_and_bystander(&broker).await;
    // At the limits, and beyond ASCII, topics are fine.
    let longest = "x".repeat(1024);
    let deepest = vec!["a"; 32].join("/");
    publish(&mut c, &longest, json!(1), 21).await;
    publish(&mut c, &deepest, json!(1), 22).await;
    publish(&mut c, "héllo/wörld/😀", json!(1), 23).await;
    hello(&mut other, &"n".repeat(64), "pin", 22).await;
    still_works(&mut c, &mut other).await;
}

#[tokio::test]
async fn a_frame_right_at_the_size_limit_is_read() {
    let broker = Broker::with(|config| config.max_frame_bytes = 1024);
    let mut c = Client::json(&broker.url()).await;
    c.send_raw(Message::text(json_ping_of_len(1, 1024))).await;
    assert_eq!(c.recv().await, json!({"op": "pong", "id": 1}));
    c.send_raw(Message::binary(msgpack_ping_of_len(3, 1024)))
        .await;
    assert_eq!(c.recv().await, json!({"op": "pong", "id": 3}));
}

#[tokio::test]
async fn a_second_hello_keeps_the_first_name() {
    let broker = Broker::default();
    let (mut watcher, mut c) = named_client(&broker, "first").await;
    for case in refusals().into_iter().filter(|case| case.named) {
        refuse(&mut c, case.frame, case.id, case.code).await;
    }
    // No presence changed, and the refused name is still free.
    assert_quiet(&mut watcher, 2).await;
    let mut other = Client::json(&broker.url()).await;
    hello(&mut other, "second", "pin", 1).await;
    // Its messages still carry its first name.
    sub(&mut other, "who", 2).await;
    publish(&mut c, "who", json!(1), 4).await;
    assert_eq!(other.recv().await["from"], "first");
    still_works(&mut c, &mut other).await;
}

#[tokio::test]
async fn a_frame_far_over_the_limit_closes_with_1009() {
    let broker = Broker::with(|config| config.max_frame_bytes = 1024);
    let (mut c, mut other) = victim_and_bystander(&broker).await;
    c.send_raw(Message::text(json_ping_of_len(1, 2049))).await;
    assert_eq!(c.wait_end(WAIT, 10).await, Some(End::Close(Some(1009))));

    let mut m = Client::msgpack(&broker.url()).await;
    m.send_raw(Message::binary(msgpack_ping_of_len(2, 10_000)))
        .await;
    assert_eq!(m.wait_end(WAIT, 10).await, Some(End::Close(Some(1009))));

    let mut fresh = Client::json(&broker.url()).await;
    still_works(&mut fresh, &mut other).await;
}

#[tokio::test]
async fn too_many_subscriptions_are_refused() {
    let broker = Broker::with(|config| config.max_subscriptions = 3);
    let (mut c, mut other) = victim_and_bystander(&broker).await;
    sub(&mut c, "s/1", 1).await;
    sub(&mut c, "s/2", 2).await;
    sub(&mut c, "s/+", 3).await;
    // The same filter again is the same subscription.
    sub(&mut c, "s/1", 4).await;
    refuse_sub(&mut c, "s/4", Some(5)).await;
    refuse_sub(&mut c, "#", None).await;
    // The refused ones deliver nothing; the held ones still do (once each).
    publish(&mut other, "s/4", json!(4), 1).await;
    assert_eq!(c.recv().await, live("s/4", json!(4)));
    publish(&mut other, "elsewhere", json!(0), 2).await;
    assert_quiet(&mut c, 6).await;
    // Room made by an unsub can be used.
    unsub(&mut c, "s/2", 7).await;
    sub(&mut c, "t", 8).await;
    refuse_sub(&mut c, "u", Some(9)).await;
    unsub(&mut c, "t", 10).await;
    // Another connection has its own allowance.
    sub(&mut other, "o/1", 1).await;
    sub(&mut other, "o/2", 2).await;
    sub(&mut other, "o/3", 3).await;
    unsub(&mut other, "o/1", 4).await;
    still_works(&mut c, &mut other).await;
}

#[tokio::test]
async fn invalid_utf8_in_a_text_frame_closes_only_that_connection() {
    let broker = Broker::default();
    let (mut c, mut other) = victim_and_bystander(&broker).await;
    let bad = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    c.send_raw(Message::Frame(bad)).await;
    let end = c.wait_end(WAIT, 10).await;
    assert_eq!(end, Some(End::Close(Some(1007))));
    let mut fresh = Client::json(&broker.url()).await;
    still_works(&mut fresh, &mut other).await;
}

#[tokio::test]
async fn after_a_burst_of_bad_input_every_client_still_works() {
    let broker = Broker::with(|config| {
        config.max_frame_bytes = 1024;
        config.max_subscriptions = 2;
    });
    let url = broker.url();
    let (mut c, mut other) = victim_and_bystander(&broker).await;
    let mut m = Client::msgpack(&url).await;
    sub(&mut m, "burst/+", 1).await;
    // Many bad frames in a row, without waiting for the answers.
    let bad: Vec<Message> = vec![
        Message::Text("{".into()),
        Message::Binary(vec![0xc1].into()),
        Message::Text("[]".into()),
        Message::Text(json!({"op": "nope"}).to_string().into()),
        Message::Text(json!({"op": "pub"}).to_string().into()),
        Message::Text(json!({"op": "pub", "topic": "a//b"}).to_string().into()),
        Message::Text(json!({"op": "pub", "topic": "a/#"}).to_string().into()),
        Message::Text(json!({"op": "pub", "topic": "$SYS/x"}).to_string().into()),
        Message::Text(json!({"op": "sub", "topic": "a/#/b"}).to_string().into()),
        Message::Text(json!({"op": "hello", "name": "a/b"}).to_string().into()),
        Message::Text(json_ping_of_len(1, 1500).into()),
    ];
    for _ in 0..20 {
        for frame in &bad {
            c.send_raw(frame.clone()).await;
        }
    }
    for _ in 0..20 * bad.len() {
        let got = c.recv().await;
        assert_eq!(got["op"], "err", "{got}");
    }
    assert_quiet(&mut c, 2).await;
    publish(&mut c, "burst/1", json!(1), 3).await;
    assert_eq!(m.recv().await, live("burst/1", json!(1)));
    still_works(&mut c, &mut other).await;
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// A client to send bad input on, and a bystander connected before it.
async fn victim_and_bystander(broker: &Broker) -> (Client, Client) {
    let mut bystander = Client::json(&broker.url()).await;
    assert_quiet(&mut bystander, 1).await;
    (Client::json(&broker.url()).await, bystander)
}

/// Sends a raw message that the broker must refuse with `code`, then checks that the same
/// connection still answers a ping.
async fn refuse(c: &mut Client, bad: Message, id: Option<u64>, code: &str) {
    c.send_raw(bad.clone()).await;
    let got = c.recv().await;
    assert_err(&got, id, code, &bad);
    assert_quiet(c, 9_999).await;
}

/// Sends a `sub` (with `id`, if any) that the broker must refuse with `too_many_subs` (see
/// [`refuse`]).
async fn refuse_sub(c: &mut Client, filter: &str, id: Option<u64>) {
    let mut frame = json!({"op": "sub", "topic": filter});
    if let Some(id) = id {
        frame["id"] = json!(id);
    }
    refuse(c, json_text(frame), id, "too_many_subs").await;
}

/// Proves that `c` is still fully usable after whatever happened to it, and that `other` (a
/// client that was connected all along) is too: each subscribes, publishes to the other and
/// receives.
async fn still_works(c: &mut Client, other: &mut Client) {
    sub(c, "works/c", 9_001).await;
    sub(other, "works/other", 9_002).await;
    publish(c, "works/other", json!("to other"), 9_003).await;
    let got = other.recv().await;
    assert_eq!(
        (&got["topic"], &got["data"]),
        (&json!("works/other"), &json!("to other"))
    );
    publish(other, "works/c", json!("to c"), 9_004).await;
    let got = c.recv().await;
    assert_eq!(
        (&got["topic"], &got["data"]),
        (&json!("works/c"), &json!("to c"))
    );
    assert_quiet(c, 9_005).await;
    assert_quiet(other, 9_006).await;
}

/// A JSON `ping` text of exactly `len` bytes (padded with a field the broker ignores).
fn json_ping_of_len(id: u64, len: usize) -> String {
    let base = json!({"op": "ping", "id": id, "pad": ""}).to_string().len();
    let text = json!({"op": "ping", "id": id, "pad": "x".repeat(len - base)}).to_string();
    assert_eq!(text.len(), len);
    text
}

/// A MessagePack `ping` of exactly `len` bytes, `len` between 300 and 65 000.
fn msgpack_ping_of_len(id: u64, len: usize) -> Vec<u8> {
    let encode = |pad: usize| {
        rmp_serde::to_vec_named(&json!({"op": "ping", "id": id, "pad": "x".repeat(pad)}))
            .expect("encode")
    };
    // A string of 256 bytes or more has a 3-byte header instead of the empty one's 1 byte.
    let base = encode(0).len();
    let bytes = encode(len - base - 2);
    assert_eq!(bytes.len(), len);
    bytes
}
