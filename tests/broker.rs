//! `breadboard broker` as a process: what its flags set, how it stops on a signal, what its
//! memory does. The broker's protocol behaviour is tested in process, next to it
//! (`broker/tests/`); these start the real binary on a loopback port chosen by the OS, with
//! real WebSocket clients. Every receive is bounded by [`WAIT`].

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{assert_quiet, hello, retain_many, sub, Broker, Client, End, Proc, WAIT};

// ---------------------------------------------------------------------------------------------
// Flags

#[tokio::test]
async fn the_limit_flags_reach_the_broker() {
    let broker = Broker::start(&[
        "--max-frame-bytes",
        "1024",
        "--max-subscriptions",
        "1",
        "--keepalive",
        "0.5",
    ]);
    let url = broker.url();
    let mut watcher = Client::json(&url).await;
    sub(&mut watcher, "$SYS/nodes/+", 1).await;
    // `--max-subscriptions 1`: that was the one.
    let got = watcher
        .call(json!({"op": "sub", "topic": "more", "id": 2}))
        .await;
    assert_eq!(
        (&got["op"], &got["code"]),
        (&json!("err"), &json!("too_many_subs")),
        "{got}"
    );
    // `--max-frame-bytes 1024`: a larger frame is refused.
    let got = watcher
        .call(json!({"op": "ping", "id": 3, "pad": "x".repeat(1024)}))
        .await;
    assert_eq!(
        (&got["op"], &got["code"]),
        (&json!("err"), &json!("too_large")),
        "{got}"
    );
    // `--keepalive 0.5`: a client that never answers the broker's pings is dropped (`watcher`
    // is polled all along, so it answers them and stays).
    let mut silent = Client::json(&url).await;
    hello(&mut silent, "silent", "pin", 1).await;
    for online in [true, false] {
        let got = watcher.recv().await;
        assert_eq!(got["topic"], "$SYS/nodes/silent", "{got}");
        assert_eq!(got["data"]["online"], online, "{got}");
    }
    assert_eq!(
        silent.wait_end(WAIT, 100).await,
        Some(End::Close(Some(1001)))
    );
    assert_quiet(&mut watcher, 4).await;
}

// ---------------------------------------------------------------------------------------------
// Memory

#[tokio::test]
async fn a_stuck_client_cannot_pile_up_replays_past_its_outbox() {
    // A client that never reads, yet keeps subscribing to a filter that matches many retained
    // values: each subscription queues a replay. What it has queued must stay within its outbox
    // (here 1 MiB) or it is cut off as a slow consumer; the broker's memory must not grow by
    // many times that. 2 500 replays of 5 000 values would hold 12.5 million entries.
    const TOPICS: u64 = 5_000;
    const SUBS: u64 = 2_500;
    const MAX_GROWTH: u64 = 32 << 20;
    const SLOW: &str = "breadboard_slow_consumer_disconnects_total";
    let broker = Broker::start(&["--stats-interval", "0", "--outbox-bytes", "1048576"]);
    let url = broker.url();
    let mut p = Client::json(&url).await;
    retain_many(&mut p, "r", TOPICS).await;
    let rss = || broker.rss();
    let base = rss();
    let mut peak = base;

    let mut stuck = Client::json(&url).await;
    let sub = Message::Text(json!({"op": "sub", "topic": "r/#"}).to_string().into());
    let mut sent = 0;
    while sent < SUBS {
        // Once cut off, the broker may refuse more.
        let send = tokio::time::timeout(WAIT, stuck.ws.send(sub.clone()))
            .await
            .expect("the broker reads, or hangs up");
        if send.is_err() {
            break;
        }
        sent += 1;
        if sent % 100 == 0 {
            peak = peak.max(rss());
        }
    }
    // Until the broker has read every frame, or cut the client off.
    let frames = (TOPICS + 1 + sent) as f64;
    for _ in 0..200 {
        peak = peak.max(rss());
        if broker.metric("breadboard_frames_in_total").await >= frames
            || broker.metric(SLOW).await >= 1.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    peak = peak.max(rss());
    let cut_off = broker.metric(SLOW).await;
    println!(
        "{sent} subscriptions: broker memory {} MiB -> peak {} MiB, slow consumers cut off: {cut_off}",
        base >> 20,
        peak >> 20
    );
    assert!(
        peak.saturating_sub(base) < MAX_GROWTH,
        "broker memory grew by {} MiB for one stuck client with a 1 MiB outbox (cut off: {cut_off})",
        (peak - base) >> 20
    );
}

/// One round of what a hostile or careless LAN does to a broker: connect-and-close floods,
/// request heads that never finish, WebSocket clients that vanish without a close, and one
/// client that subscribes to 10 000 topics and unsubscribes them all. Returns once the broker
/// holds no connection and no subscription any more.
async fn churn_round(broker: &Broker) {
    use tokio::io::AsyncWriteExt;
    for _ in 0..300 {
        drop(TcpStream::connect(broker.addr).await.expect("connect"));
    }
    let mut heads = Vec::new();
    for _ in 0..100 {
        let mut stream = TcpStream::connect(broker.addr).await.expect("connect");
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("half a head");
        heads.push(stream);
    }
    let mut vanishing = Vec::new();
    for _ in 0..100 {
        let mut c = Client::json(&broker.url()).await;
        sub(&mut c, "churn/#", 1).await;
        vanishing.push(c);
    }
    drop(vanishing);
    drop(heads);
    let mut c = Client::json(&broker.url()).await;
    for i in 0..10_000 {
        let sub = json!({"op": "sub", "topic": format!("many/{i}/+")});
        c.ws.send(Message::Text(sub.to_string().into()))
            .await
            .expect("sub");
    }
    for i in 0..10_000 {
        let unsub = json!({"op": "unsub", "topic": format!("many/{i}/+")});
        c.ws.send(Message::Text(unsub.to_string().into()))
            .await
            .expect("unsub");
    }
    assert_quiet(&mut c, 1).await;
    drop(c);
    for _ in 0..200 {
        if broker.metric("breadboard_connections").await == 0.0
            && broker.metric("breadboard_subscriptions").await == 0.0
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the broker still holds connections or subscriptions after a round");
}

#[tokio::test]
async fn memory_does_not_grow_across_rounds_of_churn() {
    // Freed memory may stay with the allocator. glibc also gives the runtime's threads arenas
    // of their own as contention calls for them, each a step of about 4 MiB that came as late
    // as the ninth round with the whole suite running; with one arena (MALLOC_ARENA_MAX=1)
    // what is left is the heap itself. The first half of the rounds sets the level; the later
    // eight must not raise it by more than the allocator's own wobble, as a leak of a hundred
    // bytes per subscription (1 MB a round) would, round after round.
    const ROUNDS: usize = 16;
    const SLACK: u64 = 4 << 20;
    let broker = Broker::start_with_env(&["--stats-interval", "0"], &[("MALLOC_ARENA_MAX", "1")]);
    let rss = || broker.rss();
    let base = rss();
    let mut after = Vec::new();
    for _ in 0..ROUNDS {
        churn_round(&broker).await;
        after.push(rss());
    }
    let mib = |b: &u64| b >> 20;
    println!(
        "broker memory: {} MiB at start, after each round {:?} MiB",
        base >> 20,
        after.iter().map(mib).collect::<Vec<_>>()
    );
    let (warm, later) = after.split_at(ROUNDS / 2);
    let level = warm.iter().max().copied().unwrap_or(base);
    let highest = later.iter().max().copied().unwrap_or(level);
    assert!(
        highest <= level + SLACK,
        "memory kept growing: {} MiB after the later rounds, {} MiB after the first ones",
        highest >> 20,
        level >> 20
    );
}

#[tokio::test]
async fn out_of_file_descriptors_the_broker_backs_off_and_recovers() {
    // The broker's open-file limit lowered to 48 once it runs (util-linux's prlimit), and far
    // more connections opened than that: its accept loop runs out of descriptors. Once they
    // are closed, it must serve again.
    let broker = Broker::start(&["--stats-interval", "0", "--max-connections", "1000"]);
    let pid = broker.proc.child.id().to_string();
    let lowered = std::process::Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=48:48"])
        .status();
    if !lowered.is_ok_and(|s| s.success()) {
        let msg = "prlimit (util-linux) is needed to lower the broker's open-file limit";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
        eprintln!("SKIPPED: {msg}");
        return;
    }
    let mut held = Vec::new();
    for _ in 0..120 {
        held.push(TcpStream::connect(broker.addr).await.expect("connect"));
    }
    // Some of these hold the broker's last descriptors, the rest wait in its accept queue.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(held);
    let mut c = None;
    for _ in 0..100 {
        if let Ok(Ok((ws, _))) = tokio::time::timeout(
            Duration::from_secs(1),
            tokio_tungstenite::connect_async(broker.url()),
        )
        .await
        {
            c = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        c.is_some(),
        "the broker did not serve again once descriptors were free"
    );
    let mut client = Client::json(&broker.url()).await;
    sub(&mut client, "after", 1).await;
    assert_quiet(&mut client, 2).await;
    assert_eq!(broker.metric("breadboard_connections").await, 2.0);
}

// ---------------------------------------------------------------------------------------------
// Durability

/// A broker keeping its state in `dir`.
fn broker_on(dir: &std::path::Path) -> Broker {
    let dir = dir.to_str().expect("a UTF-8 temp path");
    Broker::start(&["--stats-interval", "0", "--data-dir", dir])
}

/// Subscribes to `filter` and collects the retained replay (topic → data) until the `ok`.
async fn replay(
    broker: &Broker,
    filter: &str,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    let mut c = Client::json(&broker.url()).await;
    c.send(json!({"op": "sub", "topic": filter, "id": 1})).await;
    let mut found = std::collections::BTreeMap::new();
    loop {
        let got = c.recv().await;
        if got["op"] == "ok" {
            return found;
        }
        assert_eq!(got["retained"], true, "{got}");
        let topic = got["topic"].as_str().expect("a topic").to_owned();
        found.insert(topic, got["data"].clone());
    }
}

#[tokio::test]
async fn acknowledged_retained_values_survive_sigkill() {
    // A publisher streams retained values on 20 topics, each `pub` with an id, answered `ok`
    // only once durable; the broker is SIGKILLed at a moment that varies from run to run. On
    // a restart over the same data directory, every topic holds the value last acknowledged,
    // or one sent after it (written, but killed before its `ok` went out): never an older one.
    const TOPICS: u64 = 20;
    let dir = tempfile::tempdir().expect("a temp dir");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(7);
    for run in 0..4u32 {
        let mut broker = broker_on(dir.path());
        let mut p = Client::json(&broker.url()).await;
        hello(&mut p, "writer", "test", 0).await;
        let mut acked = vec![None::<u64>; TOPICS as usize];
        let mut sent = vec![None::<u64>; TOPICS as usize];
        let kill_after = Duration::from_millis(150 + u64::from((seed >> run) % 350));
        let started = Instant::now();
        let mut seq = 0u64;
        let mut in_flight = std::collections::VecDeque::new();
        while started.elapsed() < kill_after && seq < 200_000 {
            // 16 in flight, as a client that pipelines does.
            let topic = seq % TOPICS;
            let pub_ = json!({"op": "pub", "topic": format!("d/{topic}"), "data": seq, "retain": true, "id": seq + 1});
            p.ws.send(Message::Text(pub_.to_string().into()))
                .await
                .expect("send");
            sent[topic as usize] = Some(seq);
            in_flight.push_back(seq);
            seq += 1;
            if in_flight.len() >= 16 {
                let got = p.recv().await;
                assert_eq!(got["op"], "ok", "{got}");
                let id = got["id"].as_u64().expect("an id") - 1;
                let topic = (id % TOPICS) as usize;
                acked[topic] = acked[topic].max(Some(id));
                in_flight.retain(|s| *s != id);
            }
        }
        broker.proc.child.kill().expect("SIGKILL the broker");
        let _ = broker.proc.wait_exit(WAIT);
        let restarted = broker_on(dir.path());
        let found = replay(&restarted, "d/#").await;
        for topic in 0..TOPICS as usize {
            let value = found.get(&format!("d/{topic}")).and_then(|v| v.as_u64());
            match acked[topic] {
                Some(acked) => assert!(
                    value.is_some_and(|v| v >= acked && Some(v) <= sent[topic]),
                    "run {run}, d/{topic}: acknowledged {acked}, sent up to {:?}, found {value:?}",
                    sent[topic]
                ),
                // Never acknowledged: absent, or one of the values sent.
                None => assert!(
                    value.is_none() || value <= sent[topic],
                    "run {run}, d/{topic}"
                ),
            }
        }
        // The writer was online when the broker died: it reads as a departure.
        let names = replay(&restarted, "$SYS/nodes/+").await;
        assert_eq!(names["$SYS/nodes/writer"]["online"], false, "run {run}");
        println!(
            "run {run}: killed after {kill_after:?} and {seq} retained pubs, {} acknowledged",
            acked.iter().flatten().count()
        );
    }
}

#[tokio::test]
async fn a_corrupt_or_locked_data_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let file = dir.path().join("store.redb");
    let garbage = b"this is not a redb file, and it must be left as it is".repeat(100);
    std::fs::write(&file, &garbage).expect("write garbage");
    let dir_arg = dir.path().to_str().expect("a UTF-8 temp path");
    // The broker must refuse to start, and say why on stderr, within WAIT.
    let failed = |args: &[&str]| {
        let mut child = std::process::Command::new(crate::common::bin())
            .args(args)
            .env("BREADBOARD_NO_MDNS", "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run the broker");
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("the broker's status") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the broker started anyway: {args:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(!status.success(), "the broker exited successfully");
        let mut said = String::new();
        if let Some(mut stderr) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut stderr, &mut said);
        }
        said
    };
    let args = [
        "broker",
        "-s",
        "127.0.0.1",
        "-p",
        "0",
        "--no-mdns",
        "--data-dir",
        dir_arg,
    ];
    let said = failed(&args);
    assert!(
        said.contains("corrupt") && said.contains(&file.display().to_string()),
        "{said}"
    );
    assert_eq!(
        std::fs::read(&file).expect("the file"),
        garbage,
        "the file was changed"
    );

    // Locked: a second broker on the directory of a running one.
    std::fs::remove_file(&file).expect("remove the garbage");
    let running = broker_on(dir.path());
    let said = failed(&args);
    assert!(
        said.contains("locked") && said.contains(&file.display().to_string()),
        "{said}"
    );
    drop(running);
}

// ---------------------------------------------------------------------------------------------
// Shutdown

/// Stops the broker with `signal` while clients are connected: each gets a close frame with
/// code 1001, and the process exits successfully within a generous bound (the issue asks for
/// 2 s; the time is printed).
async fn graceful_stop(signal: fn(&Proc)) {
    let mut broker = Broker::start(&[]);
    let mut a = Client::json(&broker.url()).await;
    let mut b = Client::msgpack(&broker.url()).await;
    hello(&mut a, "going", "pin", 1).await;
    sub(&mut b, "x", 1).await;
    let started = Instant::now();
    signal(&broker.proc);
    assert_eq!(a.wait_end(WAIT, 10).await, Some(End::Close(Some(1001))));
    assert_eq!(b.wait_end(WAIT, 10).await, Some(End::Close(Some(1001))));
    let status = broker
        .proc
        .wait_exit(Duration::from_secs(5))
        .expect("the broker exits in time");
    println!("broker exited in {:?} with {status}", started.elapsed());
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn sigterm_closes_clients_with_1001_and_exits() {
    graceful_stop(Proc::terminate).await;
}

#[tokio::test]
async fn sigint_closes_clients_with_1001_and_exits() {
    graceful_stop(Proc::interrupt).await;
}

#[tokio::test]
async fn a_signal_right_after_start_is_graceful() {
    // Once the broker prints `listening on`, it accepts clients, and a supervisor may stop it
    // at any time after: that stop must be graceful too. Repeated, as the window is short.
    for round in 0..10 {
        let mut broker = Broker::start(&[]);
        broker.proc.terminate();
        let status = broker
            .proc
            .wait_exit(Duration::from_secs(5))
            .expect("the broker exits in time");
        assert!(
            status.success(),
            "round {round}: SIGTERM right after start: {status}"
        );
    }
    for round in 0..10 {
        let mut broker = Broker::start(&[]);
        broker.proc.interrupt();
        let status = broker
            .proc
            .wait_exit(Duration::from_secs(5))
            .expect("the broker exits in time");
        assert!(
            status.success(),
            "round {round}: SIGINT right after start: {status}"
        );
    }
}

#[tokio::test]
async fn shutdown_does_not_wait_for_stuck_clients() {
    let mut broker = Broker::start(&[]);
    let url = broker.url();
    // One client whose socket is full (it never reads), one that never finished its request.
    let mut stuck = Client::json(&url).await;
    sub(&mut stuck, "fill", 1).await;
    let _mute = tokio::time::timeout(WAIT, TcpStream::connect(broker.addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let mut publisher = Client::json(&url).await;
    let pad = "x".repeat(4000);
    for n in 0..2_000 {
        publisher
            .send(json!({"op": "pub", "topic": "fill", "data": {"n": n, "pad": pad}}))
            .await;
    }
    assert_quiet(&mut publisher, 1).await;

    let started = Instant::now();
    broker.proc.terminate();
    assert_eq!(
        publisher.wait_end(WAIT, 10).await,
        Some(End::Close(Some(1001)))
    );
    let status = broker
        .proc
        .wait_exit(Duration::from_secs(5))
        .expect("the broker exits in time");
    println!(
        "broker with stuck clients exited in {:?}",
        started.elapsed()
    );
    assert!(status.success(), "{status}");
}
