//! The cluster as `breadboard ls` shows it: a `nats-server` on loopback, two brokers of the real
//! binary joined through it (`--cluster`), a named node on each, and `ls` reading one broker's
//! presence and `$SYS/brokers/+`.
//!
//! ```text
//!   node pin-1 ──► broker a ──┐                      ┌── broker b ◄── node pin-2
//!   ls --broker a ──┘         └── nats-server (127.0.0.1, JetStream) ──┘
//! ```
//!
//! Everything is on 127.0.0.1 with OS-chosen ports, with no mDNS. Needs `nats-server`
//! (Debian's package; `scripts/test` installs it): under `CI=true` its absence is a failure,
//! elsewhere the test skips with a visible message.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::loopback_nats::LoopbackNats;
use crate::common::{Proc, WAIT};

/// How long the cluster may take to show a state we wait for: brokers hear each other's
/// heartbeats within a second or two, and a silent one is buried after 4 s.
pub(crate) const CLUSTER_WAIT: Duration = Duration::from_secs(20);

/// `breadboard node pin --name NAME` on the broker at `url`.
pub(crate) fn pin(name: &str, url: &str) -> Proc {
    Proc::start(&[
        "node",
        "pin",
        "--name",
        name,
        "--no-mdns",
        "--broker",
        url,
        "--seed",
        "1",
    ])
}

/// One run of `ls --no-mdns --broker URL --wait 1` (with `extra` flags): its stdout.
fn ls(url: &str, extra: &[&str]) -> String {
    let mut args = vec!["ls", "--no-mdns", "--broker", url, "--wait", "1"];
    args.extend_from_slice(extra);
    let mut proc = Proc::start(&args);
    let mut out = Vec::new();
    let deadline = Instant::now() + WAIT;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match proc.line(left) {
            Some(line) => out.push(line),
            None => break,
        }
    }
    let status = proc.wait_exit(Duration::from_secs(5));
    assert!(
        status.is_some_and(|s| s.success()),
        "ls {args:?} failed ({status:?}):\n{}",
        out.join("\n")
    );
    out.join("\n")
}

/// `ls --json`, parsed.
fn ls_json(url: &str) -> Vec<Value> {
    let out = ls(url, &["--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ls --json: {e}\n{out}"))
}

fn entry<'a>(entries: &'a [Value], role: &str, name: &str) -> Option<&'a Value> {
    entries
        .iter()
        .find(|e| e["role"] == role && e["name"] == name)
}

/// Runs `ls --json` until `done` holds of its entries; panics with the last listing after
/// `limit`. Returns the entries and how long it took.
fn ls_until(
    url: &str,
    what: &str,
    limit: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> (Vec<Value>, Duration) {
    let started = Instant::now();
    loop {
        let entries = ls_json(url);
        if done(&entries) {
            return (entries, started.elapsed());
        }
        assert!(
            started.elapsed() < limit,
            "ls never showed {what} within {limit:?}; last:\n{}",
            serde_json::to_string_pretty(&entries).unwrap_or_default()
        );
    }
}

/// Waits (with `ls` on `url`) until brokers `a` and `b` are both online and take names in the
/// cluster's bucket. Nodes are started only then: a name taken while its broker still decides
/// alone (`"names":"local"`) is not in the bucket, and nothing turns it offline when that broker
/// dies.
pub(crate) fn until_names_are_cluster_wide(url: &str) {
    let (_, took) = ls_until(
        url,
        "a and b with names in the cluster",
        CLUSTER_WAIT,
        |e| broker_is(e, "a", true, 0) && broker_is(e, "b", true, 0),
    );
    println!("brokers a and b take names in the cluster after {took:?}");
}

/// Whether broker `name` is listed with `online`, cluster-wide names and `nodes` online nodes.
fn broker_is(entries: &[Value], name: &str, online: bool, nodes: u64) -> bool {
    entry(entries, "broker", name).is_some_and(|b| {
        b["online"] == online && b["names"] == "cluster" && b["nodes"].as_u64() == Some(nodes)
    })
}

/// Whether node `name` is listed online on broker `broker`.
fn node_on(entries: &[Value], name: &str, broker: &str) -> bool {
    entry(entries, "node", name).is_some_and(|n| n["online"] == true && n["broker"] == broker)
}

#[test]
fn ls_shows_the_clusters_brokers_and_which_broker_each_node_is_on() {
    let test = "ls_shows_the_clusters_brokers_and_which_broker_each_node_is_on";
    let Some(nats) = LoopbackNats::start(test) else {
        return;
    };
    let a = nats.broker("a");
    let mut b = nats.broker("b");
    until_names_are_cluster_wide(&a.url());
    let _pin_1 = pin("pin-1", &a.url());
    let _pin_2 = pin("pin-2", &b.url());

    let (entries, took) = ls_until(&a.url(), "both brokers and both nodes", CLUSTER_WAIT, |e| {
        broker_is(e, "a", true, 1)
            && broker_is(e, "b", true, 1)
            && node_on(e, "pin-1", "a")
            && node_on(e, "pin-2", "b")
    });
    println!("ls on a shows the cluster after {took:?}");
    for name in ["a", "b"] {
        let broker = entry(&entries, "broker", name).expect("listed");
        // Known through the cluster only (no mDNS here): no address, no TLS or AUTH claims.
        assert_eq!(broker["via"], "cluster", "{broker}");
        assert_eq!(broker["addr"], "", "{broker}");
        assert!(broker.get("tls").is_none(), "{broker}");
        let since = broker["since_ms"].as_u64().expect("since_ms");
        assert!(since > 0, "{broker}");
    }

    // The table says the same, with the cluster's columns.
    let table = ls(&a.url(), &[]);
    println!("{table}");
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "ROLE", "NAME", "KIND", "ADDRESS", "BROKER", "TLS", "AUTH", "NAMES", "NODES", "AGE",
            "STATUS"
        ],
        "{table}"
    );
    let row = |name: &str| -> Vec<String> {
        table
            .lines()
            .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
            .find(|cells| cells.get(1).map(String::as_str) == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{table}"))
    };
    let b_row = row("b");
    assert_eq!(&b_row[..3], ["broker", "b", "broker"], "{table}");
    assert_eq!(&b_row[3..5], ["(via", "cluster)"], "{table}");
    assert_eq!(
        &b_row[b_row.len() - 4..b_row.len() - 2],
        ["cluster", "1"],
        "{table}"
    );
    assert_eq!(b_row.last().map(String::as_str), Some("online"), "{table}");
    let pin_2 = row("pin-2");
    assert_eq!(pin_2[4], "b", "{table}");

    // Broker b dies (SIGKILL, by its PID): a stops hearing it, and says so within seconds.
    b.proc.child.kill().expect("SIGKILL broker b");
    assert!(
        b.proc.wait_exit(Duration::from_secs(5)).is_some(),
        "broker b survived SIGKILL"
    );
    let killed = Instant::now();
    let (entries, _) = ls_until(&a.url(), "b offline", Duration::from_secs(10), |e| {
        broker_is(e, "b", false, 0) && broker_is(e, "a", true, 1)
    });
    println!(
        "ls on a shows b offline {:?} after its SIGKILL",
        killed.elapsed()
    );
    let pin_2 = entry(&entries, "node", "pin-2").expect("pin-2 still listed");
    assert_eq!(
        pin_2["online"], false,
        "a dead broker's nodes are offline: {pin_2}"
    );
    let table = ls(&a.url(), &[]);
    let b_row: Vec<&str> = table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.get(1) == Some(&"b"))
        .unwrap_or_default();
    assert_eq!(
        b_row[b_row.len().saturating_sub(3)..],
        ["0", "-", "offline"],
        "no nodes and no uptime for an offline broker:\n{table}"
    );
}
