//! Who may do what (issue 12), end to end: the real broker with an auth file of hashed tokens
//! (made by the binary's own `breadboard passwd`), real clients sending credentials each way a
//! client can (an `Authorization` header, `?token=`, `"token"` in `hello`), hand-written
//! upgrades as websocat sends them, a table of permission cases against one broker, reloads with
//! `kill -HUP`, and the slowing down of wrong guesses.
//!
//! Every broker here listens on 127.0.0.1:0 with no mDNS; every receive is bounded by a timeout.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::auth::{
    connect_bearer, http, metric, passwd, tokens_line, try_connect, upgrade, user, AuthFile,
};
use crate::common::{Broker, Client, End, Proc, WAIT};

const ALICE: &str = "alice-s3cret";
const BOB: &str = "bob+token/=";
const ADMIN: &str = "admin-s3cret";

/// `?token=` needs the token percent-encoded (the `+ / =` in [`BOB`] must survive the trip).
fn encode(token: &str) -> String {
    token
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An auth file of three users and an `[anonymous]` section, for the permission table.
fn table_file() -> String {
    let mut text = String::new();
    // alice: her own subtree to write, most of `pin/` to read except a secret part, her inbox.
    text += &user(
        "alice",
        ALICE,
        r##"publish = { allow = ["pin/%u/#", "_inbox/#"], deny = ["pin/%u/locked"] }
subscribe = { allow = ["pin/#", "clock/tick", "_inbox/%u/#", "$SYS/nodes/#"], deny = ["pin/secret/#"] }"##,
    );
    // bob: everything outside $SYS to read, bound to two names.
    text += &user(
        "bob",
        BOB,
        r##"names = ["bob", "kitchen"]
publish = ["pin/%u/#"]
subscribe = ["#"]"##,
    );
    text += &user(
        "admin",
        ADMIN,
        r##"names = ["*"]
publish = ["#"]
subscribe = ["#", "$SYS/#"]"##,
    );
    text += "[anonymous]\nsubscribe = [\"public/#\"]\n";
    text
}

/// What a row expects.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Allowed,
    Forbidden,
}
use Expect::{Allowed, Forbidden};

/// One permission case: who, what (`sub`, `pub`, `req` = a `pub` with `reply`, `hello`), on
/// what, and the answer expected; for a `sub`, the retained topics its replay must hold exactly
/// (`None`: not checked).
struct Row {
    user: &'static str,
    op: &'static str,
    topic: &'static str,
    reply: &'static str,
    expect: Expect,
    replay: Option<&'static [&'static str]>,
}

const fn row(user: &'static str, op: &'static str, topic: &'static str, expect: Expect) -> Row {
    Row {
        user,
        op,
        topic,
        reply: "",
        expect,
        replay: None,
    }
}

const fn replay(
    user: &'static str,
    topic: &'static str,
    expect: Expect,
    topics: &'static [&'static str],
) -> Row {
    Row {
        user,
        op: "sub",
        topic,
        reply: "",
        expect,
        replay: Some(topics),
    }
}

const fn req(user: &'static str, topic: &'static str, reply: &'static str, expect: Expect) -> Row {
    Row {
        user,
        op: "req",
        topic,
        reply,
        expect,
        replay: None,
    }
}

/// The retained values the admin leaves before the table runs.
const RETAINED: &[&str] = &[
    "pin/alice/state",
    "pin/bob/state",
    "pin/secret/state",
    "clock/tick",
    "other/thing",
    "public/news",
];

/// Every non-`$SYS` retained topic: what `#` replays.
const ALL_PLAIN: &[&str] = RETAINED;

const TABLE: &[Row] = &[
    // Allow, and retained replay under the allowed filter only.
    replay("alice", "pin/alice/#", Allowed, &["pin/alice/state"]),
    replay("alice", "pin/bob/state", Allowed, &["pin/bob/state"]),
    replay("alice", "clock/tick", Allowed, &["clock/tick"]),
    replay("alice", "_inbox/alice/#", Allowed, &[]),
    // Deny wins: a filter that could match a denied topic is refused whole, with no replay.
    replay("alice", "pin/+/state", Forbidden, &[]),
    replay("alice", "pin/secret/#", Forbidden, &[]),
    replay("alice", "pin/#", Forbidden, &[]),
    // Wildcard overlap: wider than anything allowed is refused, not narrowed.
    replay("alice", "#", Forbidden, &[]),
    replay("alice", "+/+/state", Forbidden, &[]),
    replay("alice", "clock/+", Forbidden, &[]),
    // %u is the user's own name.
    row("alice", "sub", "_inbox/bob/#", Forbidden),
    row("alice", "pub", "pin/alice/state", Allowed),
    row("alice", "pub", "pin/bob/state", Forbidden),
    row("alice", "pub", "pin/alice/locked", Forbidden),
    row("alice", "pub", "clock/tick", Forbidden),
    // $SYS only with a permission that names it.
    row("alice", "sub", "$SYS/nodes/+", Allowed),
    row("alice", "sub", "$SYS/broker/stats", Forbidden),
    row("alice", "sub", "$SYS/#", Forbidden),
    replay("bob", "#", Allowed, ALL_PLAIN),
    replay("bob", "+/nodes/#", Allowed, &[]),
    row("bob", "sub", "$SYS/broker/stats", Forbidden),
    row("bob", "sub", "$SYS/#", Forbidden),
    row("admin", "sub", "$SYS/#", Allowed),
    row("admin", "sub", "#", Allowed),
    // A request needs subscribe permission on its reply topic.
    req("alice", "pin/alice/cmd", "_inbox/alice/1", Allowed),
    req("alice", "pin/alice/cmd", "_inbox/bob/1", Forbidden),
    req("alice", "pin/alice/cmd", "pin/secret/x", Forbidden),
    req("bob", "pin/bob/cmd", "anything/1", Allowed),
    // Hello names bound to users (alice: her own name by default).
    row("alice", "hello", "alice", Allowed),
    row("alice", "hello", "alice-2", Forbidden),
    row("bob", "hello", "kitchen", Allowed),
    row("bob", "hello", "bob", Allowed),
    row("bob", "hello", "alice", Forbidden),
    row("admin", "hello", "whatever", Allowed),
    // Anonymous: what [anonymous] gives, and nothing else.
    replay("anon", "public/#", Allowed, &["public/news"]),
    replay("anon", "#", Forbidden, &[]),
    row("anon", "sub", "pin/alice/state", Forbidden),
    row("anon", "pub", "public/news", Forbidden),
    row("bob", "pub", "pin/bob/x", Allowed),
    row("bob", "pub", "pin/alice/x", Forbidden),
];

/// A connection as `who`, each user authenticating a different way: alice by header, bob by
/// `?token=`, admin by `hello` (taking the name `name`), anonymous not at all.
async fn connect_as(url: &str, who: &str, name: &str) -> Client {
    match who {
        "alice" => connect_bearer(url, ALICE).await.expect("alice connects"),
        "bob" => try_connect(&format!("{url}/?token={}", encode(BOB)))
            .await
            .expect("bob connects"),
        "admin" => {
            let mut c = Client::json(url).await;
            let got = c
                .call(json!({"op": "hello", "name": name, "kind": "test", "token": ADMIN, "id": 1}))
                .await;
            assert_eq!(got, json!({"op": "ok", "id": 1}), "admin's hello");
            c
        }
        _ => Client::json(url).await,
    }
}

/// Sends `frame` with `id` and returns (its answer, the frames that came before it).
async fn answer(c: &mut Client, mut frame: Value, id: u64) -> (Value, Vec<Value>) {
    frame["id"] = json!(id);
    c.send(frame).await;
    let mut before = Vec::new();
    loop {
        let got = c.recv().await;
        if got["id"] == json!(id) && got["op"] != "msg" {
            return (got, before);
        }
        before.push(got);
    }
}

fn verdict(answer: &Value) -> Option<Expect> {
    match (answer["op"].as_str(), answer["code"].as_str()) {
        (Some("ok"), _) => Some(Allowed),
        (Some("err"), Some("forbidden")) => Some(Forbidden),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_table() {
    let file = AuthFile::new(&table_file());
    let broker = Broker::start(&["--auth", file.arg()]);
    let url = broker.url();

    let mut admin = connect_as(&url, "admin", "admin").await;
    for (n, topic) in RETAINED.iter().enumerate() {
        let (got, _) = answer(
            &mut admin,
            json!({"op": "pub", "topic": topic, "data": n, "retain": true}),
            100 + n as u64,
        )
        .await;
        assert_eq!(got["op"], "ok", "admin retains {topic}: {got}");
    }
    let mut conns = std::collections::HashMap::new();
    for who in ["alice", "bob", "anon"] {
        conns.insert(who, connect_as(&url, who, "").await);
    }
    conns.insert("admin", admin);

    let mut failures = Vec::new();
    let mut id = 1000;
    for (i, r) in TABLE.iter().enumerate() {
        id += 1;
        let line = format!(
            "row {i}: {} {} {}{}",
            r.user,
            r.op,
            r.topic,
            if r.reply.is_empty() {
                String::new()
            } else {
                format!(" reply {}", r.reply)
            }
        );
        let (got, before) = if r.op == "hello" {
            // A name is taken once per connection: each hello case gets a fresh one.
            let mut c = connect_as(&url, if r.user == "admin" { "anon" } else { r.user }, "").await;
            let mut frame = json!({"op": "hello", "name": r.topic, "kind": "test"});
            if r.user == "admin" {
                frame["token"] = json!(ADMIN);
            }
            answer(&mut c, frame, id).await
        } else {
            let c = conns.get_mut(r.user).expect("a connection per user");
            let frame = match r.op {
                "sub" => json!({"op": "sub", "topic": r.topic}),
                "pub" => json!({"op": "pub", "topic": r.topic, "data": i}),
                "req" => json!({"op": "pub", "topic": r.topic, "data": i, "reply": r.reply}),
                other => panic!("no op {other}"),
            };
            let got = answer(c, frame, id).await;
            if r.op == "sub" && got.0["op"] == "ok" {
                // Unsubscribed again, so that nothing of this row leaks into the next.
                id += 1;
                let (unsub, _) = answer(c, json!({"op": "unsub", "topic": r.topic}), id).await;
                assert_eq!(unsub["op"], "ok", "{line}: unsub: {unsub}");
            }
            got
        };
        let seen = verdict(&got);
        if seen != Some(r.expect) {
            failures.push(format!("{line}: expected {:?}, got {got}", r.expect));
            continue;
        }
        if let Some(expected) = r.replay {
            let topics: BTreeSet<&str> = before
                .iter()
                .filter(|f| f["op"] == "msg")
                .filter_map(|f| f["topic"].as_str())
                .collect();
            let expected: BTreeSet<&str> = expected.iter().copied().collect();
            if topics != expected {
                failures.push(format!(
                    "{line}: replayed {topics:?}, expected {expected:?}"
                ));
            }
        }
        println!("{line}: {:?} as expected", r.expect);
    }
    // Every connection is still there after its refusals.
    for (who, c) in conns.iter_mut() {
        let got = c.call(json!({"op": "ping", "id": 9})).await;
        if got != json!({"op": "pong", "id": 9}) {
            failures.push(format!("{who}'s connection after the table: {got}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} permission cases failed:\n{}",
        failures.len(),
        TABLE.len(),
        failures.join("\n")
    );
}

/// Without `[anonymous]`, a client without credentials may authenticate and nothing else; a
/// wrong token in `hello` ends the connection (JSON and MessagePack alike).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_token_and_auth_failed() {
    let text = user(
        "alice",
        ALICE,
        "publish = [\"pin/%u/#\"]\nsubscribe = [\"pin/#\"]",
    );
    let file = AuthFile::new(&text);
    let broker = Broker::start(&["--auth", file.arg()]);
    let url = broker.url();

    let mut c = Client::json(&url).await;
    let (got, _) = answer(&mut c, json!({"op": "sub", "topic": "pin/#"}), 1).await;
    assert_eq!(verdict(&got), Some(Forbidden), "anonymous sub: {got}");
    let (got, _) = answer(&mut c, json!({"op": "pub", "topic": "x", "data": 1}), 2).await;
    assert_eq!(verdict(&got), Some(Forbidden), "anonymous pub: {got}");
    let (got, _) = answer(
        &mut c,
        json!({"op": "hello", "name": "alice", "token": ALICE}),
        3,
    )
    .await;
    assert_eq!(got["op"], "ok", "hello with the token: {got}");
    let (got, _) = answer(&mut c, json!({"op": "sub", "topic": "pin/#"}), 4).await;
    assert_eq!(got["op"], "ok", "sub after hello: {got}");

    for msgpack in [false, true] {
        let mut c = if msgpack {
            Client::msgpack(&url).await
        } else {
            Client::json(&url).await
        };
        let (got, _) = answer(
            &mut c,
            json!({"op": "hello", "name": "alice", "token": "wrong"}),
            5,
        )
        .await;
        assert_eq!(
            got["op"], "err",
            "wrong hello token (msgpack {msgpack}): {got}"
        );
        assert_eq!(got["code"], "auth_failed", "{got}");
        let end = c.wait_end(WAIT, 10).await;
        assert_eq!(end, Some(End::Close(Some(1008))), "msgpack {msgpack}");
    }
}

#[test]
fn python_websockets_with_a_header_a_query_token_and_hello() {
    let token = "py-t0ken+/=&x";
    let text = user("py", token, "publish = [\"py/#\"]\nsubscribe = [\"py/#\"]");
    let file = AuthFile::new(&text);
    let broker = Broker::start(&["--auth", file.arg()]);
    crate::clients::run_python_script("auth.py", &[&broker.url(), token]);
}

/// Request headers, as name and value.
type Headers<'a> = &'a [(&'a str, &'a str)];

/// Upgrades written by hand: 101 with good or no credentials, 401 with wrong ones, 403 for a
/// page of another site unless `--allow-origin` lists it; no `Origin` at all is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_upgrades_credentials_and_origins() {
    let file = AuthFile::new(&user("alice", ALICE, "subscribe = [\"pin/#\"]"));
    let broker = Broker::start(&["--auth", file.arg()]);
    let addr = broker.addr;
    let bearer = format!("Bearer {ALICE}");
    let own = format!("http://{addr}");
    let query = format!("/?token={}", encode(ALICE));
    let cases: &[(&str, &str, Headers, u16)] = &[
        (
            "a good bearer token",
            "/",
            &[("Authorization", &bearer)],
            101,
        ),
        ("a good ?token=", &query, &[], 101),
        ("no credentials (hello may bring them)", "/", &[], 101),
        (
            "a wrong bearer token",
            "/",
            &[("Authorization", "Bearer nope")],
            401,
        ),
        ("a wrong ?token=", "/?token=nope", &[], 401),
        (
            "the broker's own page as Origin",
            "/",
            &[("Origin", &own), ("Authorization", &bearer)],
            101,
        ),
        (
            "another site's page as Origin",
            "/",
            &[
                ("Origin", "http://evil.example"),
                ("Authorization", &bearer),
            ],
            403,
        ),
        (
            "another port on the same host as Origin",
            "/",
            &[("Origin", "http://127.0.0.1:1")],
            403,
        ),
    ];
    let mut failures = Vec::new();
    for (what, path, headers, status) in cases {
        let got = upgrade(addr, path, headers).await;
        if got.status != *status {
            failures.push(format!("{what}: expected {status}, got {}", got.head));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // A browser page of another site, allowed by name or by `*`.
    let listed = Broker::start(&["--allow-origin", "http://good.example"]);
    let any = Broker::start(&["--allow-origin", "*"]);
    for (broker, origin, status) in [
        (&listed, "http://good.example", 101),
        (&listed, "http://evil.example", 403),
        (&any, "http://evil.example", 101),
        (&broker, "http://good.example", 403),
    ] {
        let got = upgrade(broker.addr, "/", &[("Origin", origin)]).await;
        assert_eq!(
            got.status, status,
            "Origin {origin} at {}: {}",
            broker.addr, got.head
        );
    }
}

/// `GET /whoami`, what the dashboard asks first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoami_and_metrics_need_the_right_credentials() {
    let open = Broker::start(&[]);
    let got = http(open.addr, "/whoami", &[]).await;
    assert_eq!(got.status, 200, "{}", got.head);
    let body: Value = serde_json::from_str(&got.body).expect("JSON from /whoami");
    assert_eq!(body["auth"], false, "{body}");

    let text = user(
        "alice",
        ALICE,
        r#"publish = ["pin/%u/#"]
subscribe = { allow = ["pin/%u/#"], deny = ["pin/%u/x"] }"#,
    ) + &user("admin", ADMIN, r##"subscribe = ["$SYS/broker/stats"]"##)
        + "[anonymous]\nsubscribe = [\"public/#\"]\n";
    let file = AuthFile::new(&text);
    let broker = Broker::start(&["--auth", file.arg()]);
    let bearer = format!("Bearer {ALICE}");
    let got = http(broker.addr, "/whoami", &[("Authorization", &bearer)]).await;
    assert_eq!(got.status, 200, "{}", got.head);
    let body: Value = serde_json::from_str(&got.body).expect("JSON from /whoami");
    assert_eq!(body["auth"], true, "{body}");
    assert_eq!(body["user"], "alice", "{body}");
    assert_eq!(body["names"], json!(["alice"]), "{body}");
    assert_eq!(
        body["subscribe"]["allow"],
        json!(["pin/alice/#"]),
        "%u expanded: {body}"
    );
    assert_eq!(body["subscribe"]["deny"], json!(["pin/alice/x"]), "{body}");
    assert_eq!(body["publish"]["allow"], json!(["pin/alice/#"]), "{body}");
    assert_eq!(body["publish"]["deny"], json!([]), "{body}");

    let got = http(
        broker.addr,
        &format!("/whoami?token={}", encode(ALICE)),
        &[],
    )
    .await;
    let body: Value = serde_json::from_str(&got.body).expect("JSON from /whoami");
    assert_eq!(body["user"], "alice", "?token= on /whoami: {body}");

    let got = http(broker.addr, "/whoami", &[]).await;
    let body: Value = serde_json::from_str(&got.body).expect("JSON from /whoami");
    assert_eq!((got.status, &body["user"]), (200, &Value::Null), "{body}");
    assert_eq!(body["subscribe"]["allow"], json!(["public/#"]), "{body}");
    let got = http(broker.addr, "/whoami", &[("Authorization", "Bearer nope")]).await;
    assert_eq!(got.status, 401, "wrong token on /whoami: {}", got.head);

    // /metrics: a user allowed $SYS/broker/stats; 401 without or with wrong credentials, 403
    // for a user without that right. /healthz and / stay open.
    let admin = format!("Bearer {ADMIN}");
    for (headers, status) in [
        (vec![], 401),
        (vec![("Authorization", "Bearer nope")], 401),
        (vec![("Authorization", bearer.as_str())], 403),
        (vec![("Authorization", admin.as_str())], 200),
    ] {
        let got = http(broker.addr, "/metrics", &headers).await;
        assert_eq!(
            got.status, status,
            "/metrics with {headers:?}: {}",
            got.head
        );
    }
    for path in ["/healthz", "/"] {
        let got = http(broker.addr, path, &[]).await;
        assert_eq!(got.status, 200, "{path}: {}", got.head);
    }
}

/// Repeated wrong tokens from one address wait longer and longer, and are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tokens_slow_down_and_are_counted() {
    let text = user("admin", ADMIN, r##"subscribe = ["$SYS/#"]"##);
    let file = AuthFile::new(&text);
    let broker = Broker::start(&["--auth", file.arg()]);
    let before = metric(broker.addr, ADMIN, "breadboard_auth_failures_total").await;
    let mut took = Vec::new();
    for n in 0..6 {
        let started = Instant::now();
        let got = upgrade(
            broker.addr,
            "/",
            &[("Authorization", &format!("Bearer wrong-{n}"))],
        )
        .await;
        assert_eq!(got.status, 401, "guess {n}: {}", got.head);
        took.push(started.elapsed());
    }
    println!("wrong guesses took {took:?}");
    let first = took[0].min(took[1]);
    let last = took[4].max(took[5]);
    assert!(
        last >= first + Duration::from_millis(100),
        "no growing delay: {took:?}"
    );
    // The good token still gets in (after the delay, if any).
    let c = connect_bearer(&broker.url(), ADMIN).await;
    assert!(c.is_ok(), "the admin after wrong guesses: {:?}", c.err());
    let after = metric(broker.addr, ADMIN, "breadboard_auth_failures_total").await;
    assert!(
        after >= before + 6.0,
        "breadboard_auth_failures_total went from {before} to {after}"
    );
}

/// What `breadboard passwd` and `passwd --generate` print works in a file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwd_and_generate_make_working_lines() {
    let generated = passwd(&["--generate"], None);
    let lines: Vec<&str> = generated.lines().collect();
    assert_eq!(lines.len(), 2, "passwd --generate printed {generated:?}");
    let (token, line) = (lines[0].trim(), lines[1].trim());
    assert!(token.len() >= 16, "a short random token: {token:?}");
    assert!(
        line.starts_with("tokens = [\"$argon2id$") && !line.contains(token),
        "{line:?}"
    );
    let again = passwd(&["--generate"], None);
    assert_ne!(
        again.lines().next(),
        Some(token),
        "two generated tokens alike"
    );

    // The same secret hashed twice: two salts, both lines accepted.
    let one = tokens_line(ALICE);
    let two = passwd(&[], Some(&format!("{ALICE}\n"))).trim().to_string();
    assert_ne!(one, two, "no salt");
    assert!(
        !one.contains(ALICE) && !two.contains(ALICE),
        "the secret in clear"
    );
    let text = format!(
        "[users.gen]\n{line}\nsubscribe = [\"g/#\"]\n\n[users.one]\n{one}\nsubscribe = [\"g/#\"]\n\n\
         [users.two]\n{two}\nsubscribe = [\"g/#\"]\n"
    );
    let file = AuthFile::new(&text);
    let broker = Broker::start(&["--auth", file.arg()]);
    for (who, secret) in [("gen", token), ("one", ALICE), ("two", ALICE)] {
        let mut c = connect_bearer(&broker.url(), secret)
            .await
            .unwrap_or_else(|e| panic!("{who}'s token refused: {e}"));
        let (got, _) = answer(&mut c, json!({"op": "sub", "topic": "g/#"}), 1).await;
        assert_eq!(got["op"], "ok", "{who}: {got}");
    }
    let body = http(
        broker.addr,
        "/whoami",
        &[("Authorization", &format!("Bearer {token}"))],
    )
    .await
    .body;
    assert!(
        body.contains("\"gen\""),
        "the generated token is gen's: {body}"
    );
}

/// A file that does not parse is a clear error at start: the broker exits, non-zero.
#[test]
fn a_broken_auth_file_stops_the_start() {
    let file = AuthFile::new("[users.alice\ntokens = [");
    let mut proc = Proc::start(&[
        "broker",
        "-s",
        "127.0.0.1",
        "-p",
        "0",
        "--no-mdns",
        "--in-memory",
        "--auth",
        file.arg(),
    ]);
    let status = proc.wait_exit(WAIT).expect("the broker exits");
    assert!(!status.success(), "started with a broken auth file");
    while let Some(line) = proc.line(Duration::from_millis(100)) {
        assert!(!line.contains("listening on"), "it listened: {line}");
    }
}

/// `kill -HUP`: a permission taken away drops that subscription (`forbidden`, no id), a user
/// taken away is disconnected (1008), everyone else stays; a broken file keeps the old rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_with_sighup() {
    let alice_v1 = r#"publish = ["pin/%u/#"]
subscribe = ["pin/#", "clock/tick"]"#;
    let alice_v2 = r#"publish = ["pin/%u/#"]
subscribe = ["pin/#"]"#;
    let admin = user("admin", ADMIN, "names = [\"*\"]\npublish = [\"#\"]");
    let file = AuthFile::new(
        &(user("alice", ALICE, alice_v1) + &user("bob", BOB, "subscribe = [\"#\"]") + &admin),
    );
    let broker = Broker::start(&["--auth", file.arg()]);
    let url = broker.url();

    let mut alice = connect_bearer(&url, ALICE).await.expect("alice");
    for (n, filter) in ["pin/#", "clock/tick"].iter().enumerate() {
        let (got, _) = answer(&mut alice, json!({"op": "sub", "topic": filter}), n as u64).await;
        assert_eq!(got["op"], "ok", "{filter}: {got}");
    }
    let mut bob = connect_bearer(&url, BOB).await.expect("bob");
    let (got, _) = answer(&mut bob, json!({"op": "sub", "topic": "#"}), 1).await;
    assert_eq!(got["op"], "ok", "{got}");
    let mut pubber = connect_bearer(&url, ADMIN).await.expect("admin");

    // v2: alice loses clock/tick, bob is gone.
    file.write(&(user("alice", ALICE, alice_v2) + &admin));
    broker.reload();
    let dropped = alice.recv().await;
    assert_eq!(
        (dropped["op"].as_str(), dropped["code"].as_str()),
        (Some("err"), Some("forbidden")),
        "{dropped}"
    );
    assert!(
        dropped.get("id").is_none(),
        "a drop answers no frame: {dropped}"
    );
    assert!(
        dropped.to_string().contains("clock/tick"),
        "the drop names the filter: {dropped}"
    );
    let end = bob.wait_end(WAIT, 100).await;
    assert_eq!(end, Some(End::Close(Some(1008))), "bob removed");
    assert!(
        connect_bearer(&url, BOB).await.is_err(),
        "bob's token still accepted"
    );

    // alice keeps pin/#, no longer hears clock/tick.
    for (n, topic) in ["clock/tick", "pin/x/state"].iter().enumerate() {
        let (got, _) = answer(
            &mut pubber,
            json!({"op": "pub", "topic": topic, "data": n}),
            10 + n as u64,
        )
        .await;
        assert_eq!(got["op"], "ok", "{topic}: {got}");
    }
    let heard = alice.recv().await;
    assert_eq!(heard["topic"], "pin/x/state", "{heard}");
    let (got, _) = answer(&mut alice, json!({"op": "sub", "topic": "clock/tick"}), 20).await;
    assert_eq!(verdict(&got), Some(Forbidden), "the new rules apply: {got}");

    // A broken file: logged, the v2 rules stay, nobody is dropped.
    file.write("[users.alice\ntokens = [");
    broker.reload();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let got = alice.call(json!({"op": "ping", "id": 30})).await;
    assert_eq!(
        got,
        json!({"op": "pong", "id": 30}),
        "alice after a broken reload"
    );
    let (got, _) = answer(&mut alice, json!({"op": "sub", "topic": "clock/tick"}), 31).await;
    assert_eq!(verdict(&got), Some(Forbidden), "still v2: {got}");
    let (got, _) = answer(
        &mut pubber,
        json!({"op": "pub", "topic": "pin/y/state", "data": 1}),
        32,
    )
    .await;
    assert_eq!(got["op"], "ok", "{got}");
    let heard = alice.recv().await;
    assert_eq!(heard["topic"], "pin/y/state", "alice keeps pin/#: {heard}");
    assert!(connect_bearer(&url, ALICE).await.is_ok(), "alice's token");
    assert!(connect_bearer(&url, BOB).await.is_err(), "bob is still out");
}
