//! Peer mode across a virtual LAN (`common::lan`): no broker is started, and the nodes elect one
//! of themselves to host it; the host killed, the others elect another; a dedicated broker
//! started, everyone moves to it and the peer broker goes away. Peer mode only ever starts in
//! these namespaces: every mDNS daemon here runs inside one made by the test.
//!
//! These tests need root and iproute2. Under `CI=true` they must run (a skip fails); elsewhere
//! they skip with a visible message.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::lan::Lan;
use crate::common::Proc;

const LIMIT: Duration = Duration::from_secs(30);

/// `ls --json` on `host`, parsed.
fn ls(lan: &Lan, host: &str) -> Vec<Value> {
    let out = lan.run(
        host,
        &["ls", "--json", "--wait", "3"],
        Duration::from_secs(20),
    );
    serde_json::from_str::<Vec<Value>>(&out).unwrap_or_else(|e| panic!("ls --json: {e}\n{out}"))
}

/// The brokers `ls` on `host` sees online: `(name, kind, host)`, kind `broker` or `peer`.
fn brokers(lan: &Lan, host: &str) -> Vec<(String, String, String)> {
    let mut out: Vec<_> = ls(lan, host)
        .iter()
        .filter(|e| e["role"] == "broker" && e["online"] == true)
        .map(|e| {
            let text = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (text("name"), text("kind"), text("host"))
        })
        .collect();
    out.sort();
    out
}

/// Polls [`brokers`] until `ok` holds of them, up to [`LIMIT`]; returns them and how long it
/// took.
fn until_brokers(
    lan: &Lan,
    host: &str,
    ok: impl Fn(&[(String, String, String)]) -> bool,
) -> (Vec<(String, String, String)>, Duration) {
    let started = Instant::now();
    loop {
        let seen = brokers(lan, host);
        if ok(&seen) {
            return (seen, started.elapsed());
        }
        assert!(
            started.elapsed() < LIMIT,
            "brokers seen from {host}: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn node(lan: &Lan, host: &str, args: &[&str]) -> Proc {
    let mut all = vec!["node"];
    all.extend_from_slice(args);
    lan.start(host, &all)
}

const PIN: &[&str] = &["pin", "--name", "pin-1", "--seed", "11"];
const CLOCK: &[&str] = &["clock", "--name", "clock", "--tacks", "0", "--delay", "0.2"];
/// The buzzer stands with the highest priority: it is the one to host, so the test knows whom
/// to kill.
const BUZZER: &[&str] = &["buzzer", "--name", "buzzer", "--peer-priority", "200"];

#[test]
fn with_no_broker_the_nodes_host_one_and_give_way_to_a_real_one() {
    let Some(lan) = Lan::flat(
        "with_no_broker_the_nodes_host_one_and_give_way_to_a_real_one",
        &[("a", 1), ("b", 2), ("c", 3), ("d", 4)],
    ) else {
        return;
    };

    // No broker: the three nodes elect the buzzer, which hosts; the circuit works.
    let started = Instant::now();
    let pin = node(&lan, "a", PIN);
    let mut buzzer = node(&lan, "b", BUZZER);
    let clock = node(&lan, "c", CLOCK);
    clock.time_to("< pin-1: [", LIMIT);
    buzzer.time_to("bzzz (pin-1)", LIMIT);
    let working = started.elapsed();
    let (seen, _) = until_brokers(&lan, "d", |b| !b.is_empty());
    assert_eq!(
        seen,
        vec![("buzzer".into(), "peer".into(), "buzzer".into())],
        "one broker, a peer hosted by the buzzer"
    );
    eprintln!("no broker, nodes started: circuit working after {working:?}");

    // The host killed with SIGKILL: the pin and the clock elect one of themselves and the
    // ticks are acknowledged again.
    clock.skip_lines();
    let killed = Instant::now();
    buzzer.child.kill().expect("SIGKILL the hosting node");
    let _ = buzzer.child.wait();
    clock.time_to("< pin-1: [", LIMIT);
    let resumed = killed.elapsed();
    let (seen, _) = until_brokers(&lan, "d", |b| b.len() == 1 && b[0].0 != "buzzer");
    let new_host = seen[0].0.clone();
    assert!(
        ["pin-1", "clock"].contains(&new_host.as_str()) && seen[0].1 == "peer",
        "{seen:?}"
    );
    eprintln!("hosting node SIGKILLed: circuit resumed after {resumed:?} on {new_host}'s broker");

    // The buzzer back (still with the highest priority): it joins the broker it finds and
    // hosts none of its own.
    let buzzer = node(&lan, "b", BUZZER);
    buzzer.time_to("bzzz (pin-1)", LIMIT);
    // Long enough for a broker of its own to have been advertised, had it started one.
    std::thread::sleep(Duration::from_secs(4));
    let (seen, _) = until_brokers(&lan, "d", |b| !b.is_empty());
    assert_eq!(seen.len(), 1, "still one broker: {seen:?}");
    assert_eq!(seen[0].0, new_host, "{seen:?}");

    // A dedicated broker on the fourth host: every node moves to it, the peer broker's
    // advertisement goes away.
    pin.skip_lines();
    clock.skip_lines();
    buzzer.skip_lines();
    let dedicated = Instant::now();
    let broker = lan.start("d", &["broker", "--name", "real", "--in-memory"]);
    broker.expect_line("listening on ws://");
    let url = "online at ws://10.77.0.4:8765";
    let each: Vec<Duration> = [&pin, &clock, &buzzer]
        .iter()
        .map(|proc| {
            proc.time_to(url, LIMIT);
            dedicated.elapsed()
        })
        .collect();
    let moved = dedicated.elapsed();
    eprintln!("moved to the dedicated broker (pin, clock, buzzer): {each:?}");
    let (seen, gone) = until_brokers(&lan, "a", |b| b.len() == 1);
    assert_eq!(
        seen,
        vec![("real".into(), "broker".into(), String::new())],
        "only the dedicated broker is left"
    );
    clock.time_to("< pin-1: [", LIMIT);
    buzzer.time_to("bzzz (pin-1)", LIMIT);
    eprintln!(
        "dedicated broker started: every node on it after {moved:?}, the peer broker gone \
         {gone:?} later"
    );
    drop((pin, clock, buzzer, broker));
}

#[test]
fn two_nodes_started_at_the_same_instant_end_with_one_broker() {
    let Some(lan) = Lan::flat(
        "two_nodes_started_at_the_same_instant_end_with_one_broker",
        &[("a", 1), ("b", 2), ("c", 3)],
    ) else {
        return;
    };
    // Same priority, same instant: the tie-breakers decide, or, if both host for a moment, the
    // two peer brokers resolve to one.
    let pin = node(&lan, "a", PIN);
    let clock = node(&lan, "b", CLOCK);
    clock.time_to("< pin-1: [", LIMIT);
    let (seen, took) = until_brokers(&lan, "c", |b| b.len() == 1);
    assert_eq!(seen[0].1, "peer", "{seen:?}");
    assert!(["pin-1", "clock"].contains(&seen[0].2.as_str()), "{seen:?}");
    // And it stays one.
    std::thread::sleep(Duration::from_secs(3));
    let (again, _) = until_brokers(&lan, "c", |b| !b.is_empty());
    assert_eq!(again, seen);
    eprintln!(
        "two nodes at once: one broker, {:?}, seen {took:?} after",
        seen[0].0
    );

    // The host leaves gracefully (SIGTERM): its records say goodbye, and the other node hosts.
    let host = seen[0].2.clone();
    let (mut leaving, staying, staying_ip) = if host == "pin-1" {
        (pin, clock, "10.77.0.2")
    } else {
        (clock, pin, "10.77.0.1")
    };
    staying.skip_lines();
    let left = Instant::now();
    leaving.terminate();
    assert!(
        leaving.wait_exit(Duration::from_secs(10)).is_some(),
        "the host exits on SIGTERM"
    );
    // On its own broker: at its LAN address, or on loopback (what its host resolves first).
    staying.time_to_any(
        &[
            &format!("online at ws://{staying_ip}:"),
            "online at ws://127.0.0.1:",
        ],
        LIMIT,
    );
    let took = left.elapsed();
    let (seen, _) = until_brokers(&lan, "c", |b| b.len() == 1 && b[0].2 != host);
    assert_eq!(seen[0].1, "peer", "{seen:?}");
    eprintln!(
        "the host left gracefully: the other node hosts, and is on its broker, {took:?} later"
    );
    drop(staying);
}
