//! Presence (`$SYS/nodes/<name>`) and names: online on `hello`, offline however the client
//! goes, one holder per name.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_tungstenite::MaybeTlsStream;

use crate::harness::{
    assert_err, assert_quiet, close, hello, named_client, now_ms, presence, sub, Broker, Client,
    End, WAIT,
};

/// The client's own address, as the broker sees it (presence entries report it as `addr`).
fn local_addr(c: &Client) -> SocketAddr {
    match c.ws.get_ref() {
        MaybeTlsStream::Plain(tcp) => tcp.local_addr().expect("local address"),
        _ => panic!("not a plain TCP connection"),
    }
}

/// Drops the connection the rudest way: no close frame, and a TCP reset instead of a FIN
/// (as when a device loses power mid-session and its stack later answers with RST).
fn reset(c: Client) {
    if let MaybeTlsStream::Plain(tcp) = c.ws.get_ref() {
        tcp.set_zero_linger().expect("SO_LINGER 0");
    }
    drop(c);
}

/// Shuts down the sending half of the TCP connection without a close frame (as when a client
/// process dies: its kernel sends a FIN). The client can still read.
async fn shutdown_tcp(c: &mut Client) {
    if let MaybeTlsStream::Plain(tcp) = c.ws.get_mut() {
        tokio::time::timeout(WAIT, tokio::io::AsyncWriteExt::shutdown(tcp))
            .await
            .expect("TCP shutdown in time")
            .expect("TCP shutdown");
    }
}

/// Waits for `name` to go offline on `watcher`, keeping its kind.
async fn assert_goes_offline(watcher: &mut Client, name: &str) {
    let data = presence(watcher, name, false).await;
    assert_eq!(data["online"], false, "{data}");
    assert_eq!(data["kind"], "pin", "{data}");
}

#[tokio::test]
async fn presence_is_online_on_hello_and_retained() {
    let broker = Broker::default();
    let before = now_ms();
    let (_watcher, _node) = named_client(&broker, "pin-1").await;
    let mut late = Client::json(&broker.url()).await;
    late.send(json!({"op": "sub", "topic": "$SYS/nodes/pin-1", "id": 1}))
        .await;
    let data = presence(&mut late, "pin-1", true).await;
    assert_eq!(data["online"], true);
    assert_eq!(data["kind"], "pin");
    assert!(data["since"].as_u64().expect("since") + 1_000 >= before);
    assert_eq!(late.recv().await, json!({"op": "ok", "id": 1}));

    // Without a kind, the presence still says what the client is.
    let mut plain = Client::json(&broker.url()).await;
    let got = plain
        .call(json!({"op": "hello", "name": "plain", "id": 1}))
        .await;
    assert_eq!(got, json!({"op": "ok", "id": 1}));
    late.send(json!({"op": "sub", "topic": "$SYS/nodes/plain", "id": 2}))
        .await;
    let data = presence(&mut late, "plain", true).await;
    assert_eq!(data["online"], true);
    assert!(data["kind"].is_string(), "{data}");
}

#[tokio::test]
async fn presence_goes_offline_after_a_clean_close() {
    let broker = Broker::default();
    let (mut watcher, mut node) = named_client(&broker, "clean").await;
    close(&mut node).await;
    assert_goes_offline(&mut watcher, "clean").await;
    // The offline value is what a later subscriber sees.
    let mut late = Client::json(&broker.url()).await;
    late.send(json!({"op": "sub", "topic": "$SYS/nodes/clean", "id": 1}))
        .await;
    assert_eq!(presence(&mut late, "clean", true).await["online"], false);
}

#[tokio::test]
async fn presence_goes_offline_after_a_tcp_reset() {
    let broker = Broker::default();
    let (mut watcher, mut node) = named_client(&broker, "reset").await;
    sub(&mut node, "held/+", 2).await;
    reset(node);
    assert_goes_offline(&mut watcher, "reset").await;
    // Its subscription went with it (before its presence changed): only the watcher's is left.
    assert_eq!(broker.metric("breadboard_subscriptions").await, 1.0);
}

#[tokio::test]
async fn presence_goes_offline_after_a_fin_without_close_frame() {
    let broker = Broker::default();
    let (mut watcher, mut node) = named_client(&broker, "fin").await;
    shutdown_tcp(&mut node).await;
    assert_goes_offline(&mut watcher, "fin").await;
    // The broker hangs up on its side too.
    assert!(node.wait_end(WAIT, 10).await.is_some());
}

#[tokio::test]
async fn presence_goes_offline_when_a_silent_client_misses_the_keepalive() {
    // A client that stops answering (never polls its socket, so never answers the broker's
    // pings) is dropped after twice the keepalive, as a peer that vanished would be.
    let broker = Broker::with(|config| config.keepalive = Duration::from_millis(500));
    let (mut watcher, mut node) = named_client(&broker, "silent").await;
    let started = Instant::now();
    // `watcher` is polled all along, so it answers the pings and stays.
    assert_goes_offline(&mut watcher, "silent").await;
    println!("silent client dropped after {:?}", started.elapsed());
    assert_eq!(node.wait_end(WAIT, 100).await, Some(End::Close(Some(1001))));
    assert_quiet(&mut watcher, 2).await;
}

#[tokio::test]
async fn name_taken_while_online_and_free_once_its_holder_leaves() {
    let broker = Broker::default();
    let url = broker.url();
    let (mut watcher, mut first) = named_client(&broker, "dup").await;

    let mut second = Client::json(&url).await;
    let got = second
        .call(json!({"op": "hello", "name": "dup", "kind": "pin", "id": 5}))
        .await;
    assert_err(&got, Some(5), "name_taken", &"hello dup");
    assert_quiet(&mut second, 6).await;
    // The holder is untouched.
    assert_quiet(&mut watcher, 2).await;
    assert_quiet(&mut first, 2).await;
    // A refused hello leaves the client unnamed: it may take another name.
    hello(&mut second, "dup-2", "pin", 7).await;
    assert_eq!(presence(&mut watcher, "dup-2", false).await["online"], true);

    close(&mut first).await;
    assert_goes_offline(&mut watcher, "dup").await;
    let mut third = Client::json(&url).await;
    hello(&mut third, "dup", "pin", 1).await;
    assert_eq!(presence(&mut watcher, "dup", false).await["online"], true);
}

#[tokio::test]
async fn a_name_taken_over_as_its_holder_leaves_ends_online() {
    // The holder of a name disconnects while another client keeps asking for that name. Once
    // the newcomer has it, its presence must say online. Were the old holder's name released
    // before its offline presence is published, the newcomer's online presence could land in
    // between and be overwritten (a bug this test found). That window is microseconds wide; the
    // newcomer's stream of `hello`s around the close makes hitting it likely, and the test tries
    // a bounded number of rounds.
    const ROUNDS: usize = 100;
    const BURST: u64 = 1000;
    let broker = Broker::without_stats();
    let url = broker.url();
    let mut decided = 0;
    for round in 0..ROUNDS {
        let name = format!("contested-{round}");
        let mut holder = Client::json(&url).await;
        hello(&mut holder, &name, "pin", 1).await;
        let mut newcomer = Client::json(&url).await;
        assert_quiet(&mut newcomer, 1).await;
        let ask = |id: u64| json!({"op": "hello", "name": name, "kind": "pin", "id": id});
        for id in 0..BURST / 2 {
            newcomer.send(ask(id)).await;
        }
        close(&mut holder).await;
        for id in BURST / 2..BURST {
            newcomer.send(ask(id)).await;
        }
        let mut oks = 0;
        for _ in 0..BURST {
            let got = newcomer.recv().await;
            match got["op"].as_str() {
                Some("ok") => oks += 1,
                Some("err") => assert!(
                    got["code"] == "name_taken" || got["code"] == "already_named",
                    "{got}"
                ),
                _ => panic!("unexpected {got}"),
            }
        }
        assert!(oks <= 1, "the name was granted {oks} times");
        if oks == 0 {
            // The holder's close came after the whole burst; nothing was contested.
            continue;
        }
        decided += 1;
        let mut late = Client::json(&url).await;
        late.send(json!({"op": "sub", "topic": format!("$SYS/nodes/{name}"), "id": 1}))
            .await;
        let data = presence(&mut late, &name, true).await;
        assert_eq!(
            (data["online"].clone(), data["addr"].clone()),
            (json!(true), json!(local_addr(&newcomer).to_string())),
            "round {round}: {name} is held by the newcomer, but its presence says {data}"
        );
    }
    assert!(
        decided >= ROUNDS / 2,
        "only {decided} rounds were contested"
    );
}

#[tokio::test]
async fn offline_names_are_forgotten_after_the_presence_ttl() {
    let broker = Broker::with(|config| {
        config.presence_ttl = Some(Duration::from_secs(1));
        config.stats_interval = None;
    });
    let (mut watcher, mut node) = named_client(&broker, "ghost").await;
    close(&mut node).await;
    assert_goes_offline(&mut watcher, "ghost").await;
    // Right after, a newcomer still gets the offline presence...
    let mut early = Client::json(&broker.url()).await;
    early
        .send(json!({"op": "sub", "topic": "$SYS/nodes/+", "id": 1}))
        .await;
    assert_eq!(presence(&mut early, "ghost", true).await["online"], false);
    // ...and once the TTL (checked every tenth of it) has passed, nothing.
    let mut forgotten = false;
    for _ in 0..250 {
        if broker.metric("breadboard_retained_topics").await == 0.0 {
            forgotten = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(forgotten, "the offline name is still retained");
    let mut late = Client::json(&broker.url()).await;
    sub(&mut late, "$SYS/nodes/+", 1).await;
    assert_quiet(&mut late, 2).await;
}
