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

/// Reads what `proc` has printed so far, without waiting.
fn skip_lines(proc: &Proc) {
    while proc.line(Duration::from_millis(10)).is_some() {}
}

/// Waits (up to `limit`) for a line of `proc` containing `needle`; how long it took.
fn time_to(proc: &Proc, needle: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    while let Some(left) = limit.checked_sub(started.elapsed()) {
        match proc.line(left) {
            Some(line) if line.contains(needle) => return started.elapsed(),
            Some(_) => {}
            None => break,
        }
    }
    panic!("no line containing {needle:?} within {limit:?}");
}

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
                &[
                    "broker",
                    "--name",
                    host,
                    "--no-mdns",
                    "--in-memory",
                    "--cluster",
                    &urls,
                ],
            );
            broker.expect_line("listening on ws://");
            broker
        })
        .collect();
    let url = |host: &str| format!("ws://{}:8765", lan.addr(host));

    // Each node on a broker of its own: the pin on b1's, the buzzer on b2's, the clock on b3's.
    let started = Instant::now();
    let node = |host: &str, args: &[&str]| {
        let mut all = vec!["node"];
        all.extend_from_slice(args);
        let broker = url(host);
        all.extend_from_slice(&["--no-mdns", "--broker", &broker]);
        lan.start(host, &all)
    };
    let pin = node("b1", &["pin", "--name", "pin-1", "--seed", "11"]);
    let buzzer = node("b2", &["buzzer", "--name", "buzzer"]);
    let clock = node(
        "b3",
        &["clock", "--name", "clock", "--tacks", "0", "--delay", "0.2"],
    );
    let limit = Duration::from_secs(30);
    time_to(&clock, "< pin-1: [", limit);
    time_to(&buzzer, "bzzz (pin-1)", limit);
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

    // Broker b1 killed with SIGKILL: its client turns offline on the other brokers within
    // seconds (broker heartbeats), not mDNS's 120 s.
    let watch = lan.start(
        "b3",
        &[
            "sub",
            "$SYS/nodes/pin-1",
            "--json",
            "--no-mdns",
            "--broker",
            &url("b3"),
        ],
    );
    time_to(&watch, "\"online\":true", limit);
    let crashed = Instant::now();
    brokers[0].child.kill().expect("SIGKILL broker b1");
    time_to(&watch, "\"online\":false", limit);
    eprintln!(
        "broker b1 SIGKILLed to its pin offline on b3: {:?}",
        crashed.elapsed()
    );
    drop(watch);
    // One NATS server killed: the brokers carry on through the others.
    skip_lines(&clock);
    skip_lines(&buzzer);
    let killed = Instant::now();
    nats.kill("n1");
    time_to(&clock, "< pin-1: [", limit);
    time_to(&buzzer, "bzzz (pin-1)", limit);
    eprintln!(
        "NATS server n1 killed to circuit resumed: {:?}",
        killed.elapsed()
    );

    drop((clock, buzzer, pin, brokers));
}
