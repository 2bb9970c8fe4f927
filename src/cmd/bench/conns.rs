//! `breadboard bench conns`: many idle, subscribed connections, and what each costs the broker
//! in resident memory (its RSS after connecting, minus its RSS before, over the count).

use std::time::{Duration, Instant};

use proto::Encoding;
use serde::Serialize;
use tokio::task::JoinSet;

use super::workload::{self, Endpoint};
use super::{local, progress_bar, wire, Target, TargetArgs};

/// Flags of `breadboard bench conns`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Connections to open; each subscribes to a topic of its own and then stays idle.
    #[arg(long, default_value_t = 10_000)]
    pub count: usize,
    /// Connections being opened at the same time.
    #[arg(long, default_value_t = 128)]
    pub parallel: usize,
    /// Seconds to wait, once all are connected, before reading the broker's memory.
    #[arg(long, default_value_t = 1.0)]
    pub settle: f64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: TargetArgs,
}

/// What `bench conns` found.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Connections asked for.
    pub count: usize,
    /// Connections open and subscribed.
    pub connected: usize,
    /// Seconds taken to open and subscribe them all.
    pub connect_s: f64,
    /// Broker RSS before, bytes.
    pub rss_before: Option<u64>,
    /// Broker RSS with every connection open, bytes.
    pub rss_after: Option<u64>,
    /// `(rss_after - rss_before) / connected`, bytes.
    pub rss_per_conn: Option<f64>,
}

impl Report {
    fn table(&self) -> String {
        let kib = |b: u64| format!("{:.1} MiB", b as f64 / (1 << 20) as f64);
        let rows = [
            [
                "connections".to_string(),
                format!("{}/{}", self.connected, self.count),
            ],
            ["connect time".into(), format!("{:.2} s", self.connect_s)],
            [
                "broker RSS before".into(),
                self.rss_before.map(kib).unwrap_or_else(|| "-".into()),
            ],
            [
                "broker RSS after".into(),
                self.rss_after.map(kib).unwrap_or_else(|| "-".into()),
            ],
            [
                "RSS per connection".into(),
                self.rss_per_conn
                    .map(|b| format!("{:.2} KiB", b / 1024.0))
                    .unwrap_or_else(|| "-".into()),
            ],
        ];
        super::report::render(&rows)
    }
}

/// Opens connection `i`, subscribed to a topic of its own so that the broker keeps one
/// subscription per connection, as real clients make it do.
async fn open(dial: wire::Dial, i: usize) -> anyhow::Result<wire::Conn> {
    let broker = Endpoint::broker(dial);
    workload::connect_subscriber(broker, &format!("bench/idle/{i}"), Encoding::Json).await
}

/// Opens the connections, measures, closes them.
///
/// # Errors
/// The broker could not be started or reached.
pub async fn run(args: Args) -> anyhow::Result<()> {
    // Ours, and the broker's: a child inherits the limit.
    let limit = local::raise_nofile(args.count as u64 + 1024)?;
    if limit < args.count as u64 + 64 {
        tracing::warn!(
            limit,
            "open-file limit is below --count; connections will fail"
        );
    }
    let target = Target::open(&args.target).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = target.usage();

    let bar = progress_bar(args.count as u64, "connecting", args.json);
    let start = Instant::now();
    let mut conns = Vec::with_capacity(args.count);
    let mut opening = JoinSet::new();
    let mut next = 0;
    let mut failure = None;
    while next < args.count || !opening.is_empty() {
        while next < args.count && opening.len() < args.parallel.max(1) && failure.is_none() {
            opening.spawn(tokio::time::timeout(
                Duration::from_secs(10),
                open(target.dial.clone(), next),
            ));
            next += 1;
        }
        let Some(done) = opening.join_next().await else {
            break;
        };
        match done? {
            Ok(Ok(conn)) => {
                conns.push(conn);
                bar.inc(1);
            }
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some(anyhow::anyhow!("connection timed out")),
        }
        if failure.is_some() && opening.is_empty() {
            break;
        }
    }
    bar.finish_and_clear();
    let connect_s = start.elapsed().as_secs_f64();
    if let Some(e) = &failure {
        eprintln!("stopped after {} connections: {e:#}", conns.len());
    }
    tokio::time::sleep(Duration::try_from_secs_f64(args.settle).unwrap_or_default()).await;
    let after = target.usage();
    let connected = conns.len();
    let report = Report {
        count: args.count,
        connected,
        connect_s,
        rss_before: before.map(|u| u.rss_bytes),
        rss_after: after.map(|u| u.rss_bytes),
        rss_per_conn: match (before, after) {
            (Some(b), Some(a)) if connected > 0 => {
                Some((a.rss_bytes as f64 - b.rss_bytes as f64) / connected as f64)
            }
            _ => None,
        },
    };
    drop(conns);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    if let Some(e) = failure {
        return Err(e.context(format!("only {connected} of {} connected", args.count)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_kib_per_connection() {
        let r = Report {
            count: 10,
            connected: 10,
            connect_s: 0.5,
            rss_before: Some(1 << 20),
            rss_after: Some((1 << 20) + 10 * 5120),
            rss_per_conn: Some(5120.0),
        };
        let t = r.table();
        assert!(t.contains("10/10"), "{t}");
        assert!(t.contains("5.00 KiB"), "{t}");
    }
}
