//! Brokers on several hosts as one topic space through a real NATS cluster (`--cluster`): three
//! `nats-server`s with JetStream on three hosts of a virtual LAN, three brokers on three more,
//! and the circuit's pin, buzzer and clock each talking to a different broker.
//!
//! These tests need root, iproute2 and `nats-server`. Under `CI=true` they must run (a skip
//! fails); elsewhere they skip with a visible message.

use std::time::{Duration, Instant};

use crate::common::lan::Lan;
use crate::common::nats::{can_run_nats, NatsCluster};
use crate::common::Proc;

/// A Python client that says `hello` as `pin-1` to the broker at `argv[1]` and prints the
/// answer.
const HELLO_PIN_1: &str = r#"
import asyncio, json, sys, websockets
async def main():
    async with websockets.connect(sys.argv[1]) as ws:
        await ws.send(json.dumps({"op": "hello", "name": "pin-1", "kind": "pin", "id": 1}))
        print(await ws.recv(), flush=True)
asyncio.run(main())
"#;

#[test]
fn the_circuit_runs_across_three_brokers_joined_by_a_nats_cluster() {
    let test = "the_circuit_runs_across_three_brokers_joined_by_a_nats_cluster";
    if !can_run_nats(test) {
        return;
    }
    let hosts = [
        ("n1", 1),
        ("n2", 2),
        ("n3", 3),
        ("b1", 4),
        ("b2", 5),
        ("b3", 6),
    ];
    let lan = Lan::flat(test, &hosts).expect("a LAN (checked above)");
    let mut nats = NatsCluster::start(&lan, &["n1", "n2", "n3"]);
    let urls = nats.urls();
    let mut brokers: Vec<Proc> = ["b1", "b2", "b3"]
        .iter()
        .map(|host| {
            let broker = lan.start(
                host,
                &["broker", "--name", host, "--in-memory", "--cluster", &urls],
            );
            broker.expect_line("listening on ws://");
            broker
        })
        .collect();
    let url = |host: &str| format!("ws://{}:8765", lan.addr(host));
    let brokers_started = Instant::now();

    // Each node on a broker of its own, found over mDNS: the pin prefers b1, the buzzer b2, the
    // clock b3; a node whose broker is gone moves to another one of the cluster.
    let started = Instant::now();
    let node = |host: &str, args: &[&str]| {
        let mut all = vec!["node"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--prefer-broker", host]);
        lan.start(host, &all)
    };
    // Waits until the retained value of `topic` on `host`'s broker holds every one of `parts`.
    let until_retained = |host: &str, topic: &str, parts: &[&str], what: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        let broker = url(host);
        let args = [
            "sub",
            topic,
            "-n",
            "1",
            "--timeout",
            "2",
            "--json",
            "--no-mdns",
            "--broker",
            &broker,
        ];
        loop {
            let out = lan.start(host, &args).line(Duration::from_secs(5));
            if out.is_some_and(|line| parts.iter().all(|p| line.contains(p))) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: never so on {host}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    // Names are the cluster's once each broker has the names bucket open (at the very start a
    // `hello` waits up to 2 s for it, then takes the name on its broker alone).
    for host in ["b1", "b2", "b3"] {
        until_retained(
            host,
            &format!("$SYS/brokers/{host}"),
            &["\"names\":\"cluster\""],
            "the names bucket open",
        );
    }
    eprintln!(
        "names cluster-wide on every broker {:?} after they started",
        brokers_started.elapsed()
    );

    // On each broker, a watcher of the pin's presence, from before it starts: it sees each
    // change live, as it crosses the cluster.
    let watchers: Vec<Proc> = ["b1", "b2", "b3"]
        .iter()
        .map(|host| {
            let broker = url(host);
            let args = [
                "sub",
                "$SYS/nodes/pin-1",
                "--json",
                "--no-mdns",
                "--broker",
                &broker,
            ];
            lan.start(host, &args)
        })
        .collect();
    let pin = node("b1", &["pin", "--name", "pin-1", "--seed", "11"]);
    let buzzer = node("b2", &["buzzer", "--name", "buzzer"]);
    let clock = node(
        "b3",
        &["clock", "--name", "clock", "--tacks", "0", "--delay", "0.2"],
    );
    let limit = Duration::from_secs(30);
    clock.time_to("< pin-1: [", limit);
    buzzer.time_to("bzzz (pin-1)", limit);
    eprintln!(
        "nodes started to circuit working across three brokers: {:?}",
        started.elapsed()
    );

    // The pin's state, published through b1, reaches a subscriber of b3 (live or replayed: the
    // replay from the cluster's bucket is checked on its own in broker/tests/cluster.rs).
    let sub = lan.run(
        "b3",
        &[
            "sub",
            "pin/+/state",
            "-n",
            "1",
            "--timeout",
            "10",
            "--no-mdns",
            "--broker",
            &url("b3"),
        ],
        Duration::from_secs(20),
    );
    assert_eq!(
        sub.lines().count(),
        1,
        "a retained state across brokers: {sub:?}"
    );

    // A request from a client of b2 is answered by the pin, a client of another broker, once
    // the pin is on the broker it prefers (a node moving is offline for a moment, and a request
    // meanwhile, like one in NATS, finds no one).
    until_retained(
        "b2",
        "$SYS/nodes/pin-1",
        &["\"online\":true", "\"broker\":\"b1\""],
        "pin-1 online on b1",
    );
    pin.skip_lines();
    let mut req = lan.start(
        "b2",
        &[
            "req",
            "clock/tick",
            "99",
            "--json",
            "--no-mdns",
            "--broker",
            &url("b2"),
        ],
    );
    let status = req.wait_exit(Duration::from_secs(20));
    if !status.is_some_and(|s| s.success()) {
        // Where it was lost: on its way to the pin, or the answer on its way back.
        let mut seen = Vec::new();
        let looked = Instant::now();
        while looked.elapsed() < Duration::from_secs(1) {
            seen.extend(pin.line(Duration::from_millis(100)));
        }
        let reached = seen.iter().any(|l| l.contains("tick 99 "));
        panic!(
            "breadboard req through b2 got no answer ({status:?}); the pin {} the request; \
             the pin printed meanwhile: {seen:?}",
            if reached { "answered" } else { "never saw" }
        );
    }
    let reply = req
        .line(Duration::from_secs(1))
        .expect("req --json prints the reply");
    let reply: serde_json::Value = serde_json::from_str(reply.trim()).expect("req --json");
    assert_eq!(reply["from"], "pin-1", "{reply}");
    assert!(reply["data"].is_array(), "the pin's bits: {reply}");

    // The pin's name is taken on every broker: a second `pin-1`, from any host, through any
    // broker (the pin's own, or another of the cluster), gets `name_taken`.
    for host in ["b1", "b2", "b3"] {
        let hello = lan.spawn(host, "python3", &["-c", HELLO_PIN_1, &url(host)]);
        let answer = hello.line(limit).expect("the broker answers the hello");
        let answer: serde_json::Value = serde_json::from_str(&answer).expect("a JSON frame");
        assert_eq!(
            answer["code"], "name_taken",
            "a second pin-1 via {host}: {answer}"
        );
    }

    // One NATS server killed: the brokers carry on through the others.
    clock.skip_lines();
    buzzer.skip_lines();
    let killed = Instant::now();
    nats.kill("n1");
    clock.time_to("< pin-1: [", limit);
    buzzer.time_to("bzzz (pin-1)", limit);
    eprintln!(
        "NATS server n1 killed to circuit resumed: {:?}",
        killed.elapsed()
    );

    // Then the pin's broker killed with SIGKILL: the pin turns offline on the other brokers within
    // seconds (broker heartbeats, not mDNS's 120 s), or straight online on another broker if
    // it gets there first; it moves there over mDNS, takes its name back (the dead broker's
    // hold on it lapses with its heartbeats), and the circuit resumes.
    let presence = |line: &str| -> serde_json::Value {
        let msg: serde_json::Value = serde_json::from_str(line).expect("sub --json prints JSON");
        msg["data"].clone()
    };
    let mut on = None;
    while let Some(line) = watchers[0].line(Duration::from_millis(300)) {
        let data = presence(&line);
        on = data["broker"]
            .as_str()
            .filter(|_| data["online"] == true)
            .map(str::to_string);
    }
    let on = on.expect("the pin is online on a broker");
    let killed_at = ["b1", "b2", "b3"]
        .iter()
        .position(|b| *b == on)
        .expect("one of the three brokers");
    let watch = &watchers[(killed_at + 1) % 3];
    watch.skip_lines();
    clock.skip_lines();
    buzzer.skip_lines();
    let crashed = Instant::now();
    brokers[killed_at]
        .child
        .kill()
        .expect("SIGKILL the pin's broker");
    let mut offline = None;
    let moved = loop {
        let left = limit
            .checked_sub(crashed.elapsed())
            .expect("the pin came back online on another broker in time");
        let Some(line) = watch.line(left) else {
            continue;
        };
        let data = presence(&line);
        if data["online"] == false {
            offline.get_or_insert(crashed.elapsed());
        } else if data["broker"] != on.as_str() {
            break crashed.elapsed();
        }
    };
    clock.time_to("< pin-1: [", limit);
    buzzer.time_to("bzzz (pin-1)", limit);
    eprintln!(
        "broker {on} SIGKILLed: its pin offline elsewhere after {offline:?}, online on another \
         broker after {moved:?}, circuit resumed after {:?}",
        crashed.elapsed()
    );

    drop((watchers, clock, buzzer, pin, brokers));
}
