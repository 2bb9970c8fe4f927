//! Measures the retained store ([`broker::store`]) on this machine's disk, in a temporary
//! directory: acknowledged retained writes per second (many writers each waiting for its ack)
//! against one write at a time and against the same writes not waiting, and the time to open
//! and load 100 000 retained topics after a clean close and after a crash.
//!
//! ```text
//! cargo run --release -p breadboard-broker --example store_bench [-- --runs N]
//! ```
//!
//! Every load is bounded in count and in time. Each figure is the median of `--runs` runs
//! (default 3).

use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use broker::store::{Ack, Store, DEFAULT_COMMIT_DELAY};
use serde_json::json;

/// Distinct topics the write benchmarks cycle through.
const TOPICS: u64 = 10_000;
/// Writes in one run of the write benchmarks (at most; each run also stops after `MAX_RUN`).
const WRITES: u64 = 20_000;
/// The longest a write run goes on.
const MAX_RUN: Duration = Duration::from_secs(5);
/// Topics in the restart benchmark.
const LOADED_TOPICS: u64 = 100_000;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, mode, dir] = &args[..] {
        if mode == "--crash-after-write" {
            return crash_after_write(Path::new(dir));
        }
    }
    let runs = match &args[1..] {
        [flag, n] if flag == "--runs" => n.parse()?,
        _ => 3,
    };

    println!(
        "store benchmark: {runs} runs each, medians; disk under {}",
        std::env::temp_dir().display()
    );
    for (window, label, delay) in [
        (1, "commit_delay 0", Duration::ZERO),
        (1, "commit_delay 2 ms", DEFAULT_COMMIT_DELAY),
        (64, "commit_delay 0", Duration::ZERO),
        (64, "commit_delay 2 ms", DEFAULT_COMMIT_DELAY),
        (512, "commit_delay 2 ms", DEFAULT_COMMIT_DELAY),
    ] {
        let r = median_of(runs, || acked(window, delay))?;
        println!(
            "acked writes, {window:>3} in flight, {label:<17}: {:>8.0} writes/s ({:.1} writes per commit)",
            r.0, r.1
        );
    }
    let r = median_of(runs, unacked)?;
    println!(
        "puts not waiting: {:>8.0} puts/s accepted; {:>8.0} writes/s durable (to flush)",
        r.0, r.1
    );

    let tmp = tempfile::tempdir()?;
    let start = Instant::now();
    populate(tmp.path(), LOADED_TOPICS)?;
    let size = std::fs::metadata(tmp.path().join(broker::store::FILE_NAME))?.len();
    println!(
        "{LOADED_TOPICS} retained topics written in {:.2} s; file {:.1} MiB",
        start.elapsed().as_secs_f64(),
        size as f64 / (1 << 20) as f64
    );
    let r = median_of(runs, || {
        let start = Instant::now();
        let (store, loaded) = Store::open(tmp.path(), DEFAULT_COMMIT_DELAY)?;
        let took = start.elapsed();
        assert_eq!(loaded.retained.len() as u64, LOADED_TOPICS);
        drop(store);
        Ok((took.as_secs_f64() * 1e3, 0.0))
    })?;
    println!(
        "open + load {LOADED_TOPICS} topics after a clean close: {:>7.1} ms",
        r.0
    );
    let exe = std::env::current_exe()?;
    let r = median_of(runs, || {
        let status = Command::new(&exe)
            .arg("--crash-after-write")
            .arg(tmp.path())
            .stderr(std::process::Stdio::null())
            .status()?;
        assert!(!status.success(), "the child should have aborted");
        let start = Instant::now();
        let (store, loaded) = Store::open(tmp.path(), DEFAULT_COMMIT_DELAY)?;
        let took = start.elapsed();
        assert_eq!(loaded.retained.len() as u64, LOADED_TOPICS + 1);
        store.clear_retained("crash/marker", None);
        drop(store);
        Ok((took.as_secs_f64() * 1e3, 0.0))
    })?;
    println!(
        "open + load {LOADED_TOPICS} topics after a crash (redb repairs): {:>7.1} ms",
        r.0
    );
    Ok(())
}

/// Runs `f` `runs` times; the median of each of its two figures.
fn median_of(runs: usize, mut f: impl FnMut() -> Result<(f64, f64)>) -> Result<(f64, f64)> {
    let mut a = Vec::new();
    let mut b = Vec::new();
    for _ in 0..runs.max(1) {
        let (x, y) = f()?;
        a.push(x);
        b.push(y);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok((median(&mut a), median(&mut b)))
}

fn value(n: u64) -> serde_json::Value {
    json!({"t": n, "temp": 21.5, "unit": "C"})
}

/// Writes with `window` writes waiting for their acks at any time; writes/s and writes per commit.
fn acked(window: u64, delay: Duration) -> Result<(f64, f64)> {
    let tmp = tempfile::tempdir()?;
    let (store, _) = Store::open(tmp.path(), delay)?;
    let (tx, rx) = mpsc::channel::<bool>();
    let put = |n: u64| {
        let tx = tx.clone();
        let ack: Ack = Box::new(move |r| {
            let _ = tx.send(r.is_ok());
        });
        store.put_retained(
            &format!("bench/{}", n % TOPICS),
            &value(n),
            None,
            n,
            Some(ack),
        );
    };
    let start = Instant::now();
    let mut sent = 0;
    while sent < window.min(WRITES) {
        put(sent);
        sent += 1;
    }
    let mut acked = 0;
    while acked < sent {
        let ok = rx.recv_timeout(Duration::from_secs(10))?;
        assert!(ok, "a write failed");
        acked += 1;
        if sent < WRITES && start.elapsed() < MAX_RUN {
            put(sent);
            sent += 1;
        }
    }
    let took = start.elapsed().as_secs_f64();
    let stats = store.stats();
    Ok((
        acked as f64 / took,
        stats.written as f64 / stats.commits.max(1) as f64,
    ))
}

/// [`WRITES`] puts without acks: how fast the callers get through them, and how soon they are
/// all durable.
fn unacked() -> Result<(f64, f64)> {
    let tmp = tempfile::tempdir()?;
    let (store, _) = Store::open(tmp.path(), DEFAULT_COMMIT_DELAY)?;
    let start = Instant::now();
    for n in 0..WRITES {
        store.put_retained(&format!("bench/{}", n % TOPICS), &value(n), None, n, None);
    }
    let accepted = start.elapsed().as_secs_f64();
    store.flush()?;
    let durable = start.elapsed().as_secs_f64();
    Ok((WRITES as f64 / accepted, WRITES as f64 / durable))
}

/// Writes `n` retained topics in batches of 10 000 and closes the store.
fn populate(dir: &Path, n: u64) -> Result<()> {
    let (store, _) = Store::open(dir, DEFAULT_COMMIT_DELAY)?;
    for i in 0..n {
        store.put_retained(
            &format!("sensors/{:06}/temp", i),
            &value(i),
            Some("bench"),
            i,
            None,
        );
        if i % 10_000 == 9_999 {
            store.flush()?;
        }
    }
    store.flush()?;
    Ok(())
}

/// The child of the crash measurement: one acknowledged write, then an abort (no clean close).
fn crash_after_write(dir: &Path) -> Result<()> {
    let (store, _) = Store::open(dir, DEFAULT_COMMIT_DELAY)?;
    store.put_retained("crash/marker", &json!(1), None, 0, None);
    store.flush()?;
    std::process::abort();
}
