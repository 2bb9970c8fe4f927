//! `breadboard bench` end to end: it starts its own broker (or is given two clustered through a
//! loopback `nats-server`), runs a small workload, and reports it as JSON. Only that nothing is
//! lost and that the report is well formed is checked here; the numbers themselves belong to
//! the bench, not to tests.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::loopback_nats::LoopbackNats;
use crate::common::Proc;

/// Runs `breadboard <args>` to the end (killed if it takes longer than `limit`); returns its
/// exit success and stdout.
fn run(args: &[&str], limit: Duration) -> (bool, String) {
    let mut proc = Proc::start(args);
    let status = proc.wait_exit(limit).unwrap_or_else(|| {
        panic!(
            "`breadboard {}` did not finish in {limit:?}",
            args.join(" ")
        )
    });
    let mut out = String::new();
    while let Some(line) = proc.line(Duration::from_millis(500)) {
        out.push_str(&line);
        out.push('\n');
    }
    (status.success(), out)
}

#[test]
fn throughput_run_loses_nothing_and_reports_json() {
    let started = Instant::now();
    let (ok, out) = run(
        &["bench", "--msgs", "2000", "--subs", "2", "--json"],
        Duration::from_secs(60),
    );
    assert!(ok, "bench failed after {:?}: {out}", started.elapsed());
    let report: Value = serde_json::from_str(&out).expect("the report is JSON");
    assert_eq!(report["workload"]["mode"], "throughput");
    assert_eq!(report["workload"]["subs"], 2);
    let broker = &report["broker"];
    assert_eq!(broker["published"], 2000);
    assert_eq!(broker["expected"], 4000);
    assert_eq!(broker["delivered"], 4000);
    assert_eq!(broker["lost"], 0);
    assert_eq!(broker["duplicates"], 0);
    assert!(broker["delivery_rate"].as_f64().is_some_and(|r| r > 0.0));
    // The broker is a local child: its CPU time and memory are read from /proc.
    assert!(broker["cpu_s"].is_number());
    assert!(broker["rss_bytes"].as_u64().is_some_and(|b| b > 0));
    assert!(report["baseline"].is_null());
    assert_eq!(report["broker_runs"].as_array().map(Vec::len), Some(1));
}

#[test]
fn relay_baseline_and_latency_mode_report_percentiles() {
    let (ok, out) = run(
        &[
            "bench",
            "--rate",
            "1000",
            "--duration",
            "0.5",
            "--baseline",
            "relay",
            "--json",
        ],
        Duration::from_secs(60),
    );
    assert!(ok, "bench failed: {out}");
    let report: Value = serde_json::from_str(&out).expect("the report is JSON");
    assert_eq!(report["workload"]["mode"], "latency");
    assert_eq!(report["workload"]["baseline"], "relay");
    for target in ["broker", "baseline"] {
        let o = &report[target];
        assert_eq!(o["lost"], 0, "{target}");
        assert_eq!(o["delivered"], 500, "{target}");
        let latency = &o["latency"];
        assert_eq!(latency["count"], 500, "{target}");
        let p50 = latency["p50_us"].as_f64().unwrap();
        let max = latency["max_us"].as_f64().unwrap();
        assert!(p50 > 0.0 && p50 <= max, "{target}: {latency}");
    }
    assert!(report["ratio"].is_number());
}

#[test]
fn across_two_clustered_brokers_nothing_is_lost_and_nats_alone_is_the_baseline() {
    let test = "across_two_clustered_brokers_nothing_is_lost";
    let Some(nats) = LoopbackNats::start(test) else {
        return;
    };
    let (a, b) = (nats.broker("a"), nats.broker("b"));
    let (a_url, b_url, nats_url) = (a.url(), b.url(), nats.url());
    let (ok, out) = run(
        &[
            "bench",
            "--broker",
            &a_url,
            "--sub-broker",
            &b_url,
            "--msgs",
            "3000",
            "--subs",
            "3",
            "--baseline",
            "nats",
            "--nats",
            &nats_url,
            "--json",
        ],
        Duration::from_secs(90),
    );
    assert!(ok, "bench --sub-broker failed: {out}");
    let report: Value = serde_json::from_str(&out).expect("the report is JSON");
    assert_eq!(report["workload"]["across_brokers"], true);
    assert_eq!(report["workload"]["baseline"], "nats");
    let broker = &report["broker"];
    assert_eq!(broker["published"], 3000, "{broker}");
    assert_eq!(
        broker["delivered"], 9000,
        "probes are not counted: {broker}"
    );
    assert_eq!(broker["lost"], 0, "{broker}");
    assert_eq!(broker["duplicates"], 0, "{broker}");
    // NATS alone ran the same workload. Core NATS is at-most-once: on a machine this loaded
    // (the whole suite at once) it was once seen cutting a subscriber off as slow, so its
    // losses are reported rather than failed on; what it delivered it delivered once.
    let nats = &report["baseline"];
    assert_eq!(nats["published"], 3000, "{nats}");
    assert!(nats["delivered"].as_u64().is_some_and(|d| d > 0), "{nats}");
    assert_eq!(
        nats["delivered"].as_u64().unwrap_or(0) + nats["lost"].as_u64().unwrap_or(0),
        9000,
        "{nats}"
    );
    assert_eq!(nats["duplicates"], 0, "{nats}");

    // Latency mode across the same brokers: every paced message crosses too.
    let (ok, out) = run(
        &[
            "bench",
            "--broker",
            &a_url,
            "--sub-broker",
            &b_url,
            "--rate",
            "1000",
            "--duration",
            "0.5",
            "--json",
        ],
        Duration::from_secs(60),
    );
    assert!(ok, "bench --sub-broker --rate failed: {out}");
    let report: Value = serde_json::from_str(&out).expect("the report is JSON");
    let broker = &report["broker"];
    assert_eq!(broker["lost"], 0, "{broker}");
    assert_eq!(broker["latency"]["count"], 500, "{broker}");
    drop((a, b, nats));
}

#[test]
fn idle_connections_report_memory_per_connection() {
    let (ok, out) = run(
        &[
            "bench", "conns", "--count", "50", "--settle", "0.1", "--json",
        ],
        Duration::from_secs(60),
    );
    assert!(ok, "bench conns failed: {out}");
    let report: Value = serde_json::from_str(&out).expect("the report is JSON");
    assert_eq!(report["connected"], 50);
    assert!(report["rss_after"].as_u64().is_some_and(|b| b > 0));
    assert!(report["rss_per_conn"].is_number());
}

#[test]
fn soak_loses_nothing_and_draws_its_samples() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("soak-{}", std::process::id()));
    let svg = dir.join("soak.svg");
    let svg_arg = svg.to_str().expect("a UTF-8 temporary path");
    let (ok, out) = run(
        &[
            "bench",
            "soak",
            "--duration",
            "5s",
            "--churn",
            "10",
            "--rate",
            "200",
            "--subs",
            "5",
            // Five seconds are too few to judge memory by: only loss and the chart are checked.
            "--band",
            "4",
            "--svg",
            svg_arg,
            "--json",
        ],
        Duration::from_secs(90),
    );
    let report: Value = serde_json::from_str(&out).expect("the report is JSON");
    let stream = &report["stream"];
    assert_eq!(stream["lost"], 0, "{stream}");
    assert_eq!(stream["duplicates"], 0, "{stream}");
    assert_eq!(stream["delivered"], 1000 * 5, "{stream}");
    let churn = &report["churn"];
    assert!(
        churn["connections"].as_u64().is_some_and(|n| n > 0),
        "{churn}"
    );
    assert_eq!(churn["errors"], 0, "{churn}");
    assert_eq!(churn["lost"], 0, "{churn}");
    assert_eq!(report["retained_left"], 0);
    // A sample a second, and one after the load; the broker is a local child, so read.
    let samples = report["samples"].as_array().expect("samples");
    assert!(samples.len() >= 5, "{samples:?}");
    assert!(samples[1]["rss_bytes"].as_u64().is_some_and(|b| b > 0));
    assert!(samples[1]["open_files"].as_u64().is_some_and(|n| n > 0));
    assert!(ok, "bench soak failed: {out}");
    let chart = std::fs::read_to_string(&svg).expect("the chart was written");
    assert!(
        chart.starts_with("<svg") || chart.starts_with("<?xml"),
        "{}",
        &chart[..chart.len().min(200)]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
