//! Acknowledged retained writes through the whole broker, end to end: clients on loopback
//! WebSockets publish `pub` frames with an `id` and keep a window of them in flight, as a
//! pipelining client does; each is answered `ok`. Measured in one run, against the same broker
//! code:
//!
//! - retained, with a data directory: the `ok` comes once the value is on disk (group commit);
//! - the same writes not retained (the baseline: nothing touches the disk);
//! - retained, in memory (`--in-memory`): what keeping the value costs without the disk;
//!
//! and then the restart: a broker that holds 100 000 retained topics is stopped, and the time
//! for a new one to open the same data directory and be ready to serve is measured.
//!
//! ```text
//! cargo run --release -p breadboard-broker --example retained_acks [-- --runs N]
//! ```
//!
//! Loopback only, port 0, every load bounded in count and time, the data directory a temporary
//! one. Each figure is the median of `--runs` runs (default 3).

// An example: an unwrap that fails is a measurement that cannot be taken.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use broker::{Broker, Config};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// Clients publishing at once.
const CLIENTS: u64 = 4;
/// Frames each client keeps in flight.
const WINDOW: u64 = 64;
/// Frames each client sends in one run (at most; a run also stops after `MAX_RUN`).
const PER_CLIENT: u64 = 5_000;
/// Distinct topics each client cycles through.
const TOPICS: u64 = 1_000;
/// The longest a run goes on.
const MAX_RUN: Duration = Duration::from_secs(20);
/// Retained topics in the restart measurement.
const RESTART_TOPICS: u64 = 100_000;

/// How a run publishes.
#[derive(Clone, Copy)]
enum Mode {
    RetainedOnDisk,
    NotRetained,
    RetainedInMemory,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::RetainedOnDisk => "retained, on disk (ok once durable)",
            Self::NotRetained => "not retained (baseline)",
            Self::RetainedInMemory => "retained, in memory",
        }
    }
}

/// A broker on `127.0.0.1:0`, in this process, stopped when `stop` is cancelled.
async fn start(
    data_dir: Option<&Path>,
) -> (String, CancellationToken, tokio::task::JoinHandle<()>) {
    let config = Config {
        data_dir: data_dir.map(Path::to_owned),
        stats_interval: None,
        ..Config::default()
    };
    let broker = Broker::open(config).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let served = tokio::spawn({
        let stop = stop.clone();
        async move {
            broker.serve(listener, stop).await.unwrap();
        }
    });
    (url, stop, served)
}

/// One client: `PER_CLIENT` frames with ids, `WINDOW` in flight; returns how many were answered.
async fn client(url: String, n: u64, retain: bool) -> u64 {
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    let started = Instant::now();
    let (mut sent, mut answered) = (0, 0);
    while answered < PER_CLIENT && started.elapsed() < MAX_RUN {
        while sent < PER_CLIENT && sent - answered < WINDOW {
            let frame = json!({"op": "pub", "topic": format!("acks/{n}/{}", sent % TOPICS),
                "data": {"seq": sent, "pad": "0123456789abcdef0123456789abcdef"},
                "retain": retain, "id": sent + 1});
            ws.feed(Message::Text(frame.to_string().into()))
                .await
                .unwrap();
            sent += 1;
        }
        ws.flush().await.unwrap();
        let Some(Ok(Message::Text(text))) = ws.next().await else {
            panic!("the connection ended");
        };
        let answer: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(answer["op"], "ok", "{answer}");
        answered += 1;
    }
    answered
}

/// Acknowledged writes per second in `mode`.
async fn run(mode: Mode) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let on_disk = matches!(mode, Mode::RetainedOnDisk);
    let (url, stop, served) = start(on_disk.then_some(dir.path())).await;
    let retain = !matches!(mode, Mode::NotRetained);
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| tokio::spawn(client(url.clone(), n, retain)))
        .collect();
    let mut answered = 0;
    for c in clients {
        answered += c.await.unwrap();
    }
    let rate = answered as f64 / started.elapsed().as_secs_f64();
    stop.cancel();
    served.await.unwrap();
    rate
}

/// Seconds for a broker to open a data directory holding `RESTART_TOPICS` retained topics.
async fn restart() -> (f64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let (url, stop, served) = start(Some(dir.path())).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    for i in 0..RESTART_TOPICS {
        let frame = json!({"op": "pub", "topic": format!("room/{}/sensor/{i}", i % 100),
            "data": {"celsius": 21.5, "n": i}, "retain": true});
        ws.feed(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
    }
    let last = json!({"op": "pub", "topic": "room/last", "data": 1, "retain": true, "id": 1});
    ws.send(Message::Text(last.to_string().into()))
        .await
        .unwrap();
    while let Some(Ok(msg)) = ws.next().await {
        if msg.is_text() {
            break;
        }
    }
    drop(ws);
    stop.cancel();
    served.await.unwrap();
    let started = Instant::now();
    let (url, stop, served) = start(Some(dir.path())).await;
    let ready = started.elapsed().as_secs_f64();
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    let sub = json!({"op": "sub", "topic": "room/#", "id": 1});
    ws.send(Message::Text(sub.to_string().into()))
        .await
        .unwrap();
    let mut replayed = 0;
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(text) = msg else { continue };
        let got: Value = serde_json::from_str(&text).unwrap();
        if got["op"] == "ok" {
            break;
        }
        replayed += 1;
    }
    stop.cancel();
    served.await.unwrap();
    (ready, replayed)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::args()
        .skip_while(|a| a != "--runs")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);
    println!(
        "{CLIENTS} clients, {WINDOW} frames each in flight, up to {PER_CLIENT} each; median of {runs} runs"
    );
    println!("{:<40} {:>14}", "acknowledged pubs", "per second");
    let mut baseline = 0.0;
    for mode in [
        Mode::NotRetained,
        Mode::RetainedInMemory,
        Mode::RetainedOnDisk,
    ] {
        let mut rates = Vec::new();
        for _ in 0..runs {
            rates.push(run(mode).await);
        }
        let rate = median(rates);
        if matches!(mode, Mode::NotRetained) {
            baseline = rate;
        }
        println!(
            "{:<40} {:>14.0}  ({:.2} × baseline)",
            mode.name(),
            rate,
            rate / baseline
        );
    }
    let mut times = Vec::new();
    let mut replayed = 0;
    for _ in 0..runs {
        let (ready, n) = restart().await;
        times.push(ready);
        replayed = n;
    }
    println!(
        "restart with {RESTART_TOPICS} retained topics: ready in {:.0} ms (then replays {replayed} to a `room/#` subscriber)",
        median(times) * 1000.0
    );
}
