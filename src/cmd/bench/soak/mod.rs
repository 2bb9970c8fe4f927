//! `breadboard bench soak --duration D`: a steady mixed load for a long time, to show that the
//! broker loses nothing and that its memory and open files stay level.
//!
//! ```text
//!  churn ([`churn`]): N short-lived clients/s ──┐
//!  stream (workload, paced): 1 pub → 50 subs ───┼──► broker ◄── sampled each second:
//!                                               │              RSS, open files (/proc)
//!  every delivery checked (payload stamps) ◄────┘                 │
//!                                 report (table | JSON) + chart (SVG, [`chart`])
//! ```
//!
//! The stream is the bench's own latency workload (one paced publisher, every subscriber
//! checking every stamp) running for the whole duration; the churn runs beside it. After a
//! warm-up, the broker's RSS must stay within a band over its median, and once the load is
//! over its open files must come back to what they were before.

mod chart;
mod churn;
mod report;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use proto::Encoding;
use tokio_util::sync::CancellationToken;

use self::report::{mib, Files, Memory, Report, Sample, Workload};
use super::workload::{self, Endpoint, Params};
use super::{local, outcome, payload, EncodingArg, Target, TargetArgs, DEFAULT_WINDOW};
use crate::cmd::{format_duration, parse_duration};

/// The flag of `breadboard broker` that keeps its state in memory, passed to the broker the
/// soak starts when that broker knows it.
/// Longest soak accepted: a week of samples is about 600 000 of them.
const MAX_DURATION: Duration = Duration::from_secs(7 * 86_400);
/// Most churn clients a second.
const MAX_CHURN: u32 = 1000;
/// How long the broker's open files may take to come back to their count before the load.
const SETTLE: Duration = Duration::from_secs(5);
/// How long the stream may run past the soak's duration before it is cut short.
const STREAM_GRACE: Duration = Duration::from_secs(60);

/// Flags of `breadboard bench soak`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// How long to run the load: `90`, `90s`, `10m`, `24h` (a plain number is seconds).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Short-lived clients started per second (at most 1000): each connects, names itself,
    /// subscribes, publishes, retains a value and clears it, and goes away.
    #[arg(long, default_value_t = 20)]
    churn: u32,
    /// Messages per second of the steady stream.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Subscribers of the steady stream.
    #[arg(long, default_value_t = 50)]
    subs: usize,
    /// Payload bytes of a stream message (at least 33: the stamp).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// How the stream's clients encode their frames (churn clients alternate both).
    #[arg(long, value_enum, default_value_t = EncodingArg::Json)]
    encoding: EncodingArg,
    /// Memory is held to its band after this. Default: 10 % of the run, at least 30 s, at
    /// most half the run.
    #[arg(long, value_parser = parse_duration)]
    warmup: Option<Duration>,
    /// After the warm-up, the broker's RSS must stay at or below this many times its median.
    #[arg(long, default_value_t = 1.25)]
    band: f64,
    /// Where to draw the chart of the samples (SVG).
    #[arg(long, default_value = "target/soak.svg")]
    svg: PathBuf,
    /// Print the report as JSON (with every sample) instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: TargetArgs,
}

impl Args {
    /// Refuses what the soak cannot run.
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.duration.is_zero() && self.duration <= MAX_DURATION,
            "--duration must be more than 0 and at most {}",
            format_duration(MAX_DURATION)
        );
        anyhow::ensure!(
            self.churn <= MAX_CHURN,
            "--churn must be at most {MAX_CHURN}"
        );
        anyhow::ensure!(
            self.rate.is_finite() && self.rate > 0.0,
            "--rate must be more than 0"
        );
        anyhow::ensure!(self.subs >= 1, "--subs must be at least 1");
        anyhow::ensure!(
            self.size >= payload::MIN_SIZE,
            "--size must be at least {} bytes (the stamp)",
            payload::MIN_SIZE
        );
        anyhow::ensure!(
            self.band.is_finite() && self.band >= 1.0,
            "--band must be at least 1"
        );
        Ok(())
    }

    /// The warm-up: as asked, or 10 % of the run but at least 30 s, and at most half the run
    /// (so that a short run still has samples to judge).
    fn warmup(&self) -> Duration {
        self.warmup.unwrap_or_else(|| {
            (self.duration / 10)
                .max(Duration::from_secs(30))
                .min(self.duration / 2)
        })
    }
}

/// Reads the broker's `/proc`, when there is a process to read.
struct Probe {
    pid: Option<u32>,
}

impl Probe {
    fn rss(&self) -> Option<u64> {
        local::rss_bytes(self.pid?).ok()
    }

    fn files(&self) -> Option<usize> {
        local::open_files(self.pid?).ok()
    }

    fn cpu(&self) -> Option<f64> {
        Some(local::usage(self.pid?).ok()?.cpu_s)
    }

    fn sample(&self, t_s: f64) -> Sample {
        Sample {
            t_s,
            rss_bytes: self.rss(),
            open_files: self.files(),
            ..Sample::default()
        }
    }
}

/// The counters the sampler reads each second.
struct Counters<'a> {
    /// The stream's deliveries so far: the workload reports them as the position of its
    /// progress bar (hidden here).
    deliveries: &'a ProgressBar,
    /// Churn clients ended so far.
    churned: &'a AtomicU64,
}

/// Takes a sample every second from `start` until `done`, and shows it on `bar`.
async fn sample_each_second(
    probe: &Probe,
    counters: Counters<'_>,
    start: Instant,
    bar: &ProgressBar,
    done: &CancellationToken,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = (start, 0, 0);
    loop {
        tokio::select! {
            _ = done.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let (deliveries, churned) = (
            counters.deliveries.position(),
            counters.churned.load(Relaxed),
        );
        let dt = (now - last.0).as_secs_f64();
        let per_s = |n: u64| if dt > 0.0 { n as f64 / dt } else { 0.0 };
        let sample = Sample {
            deliveries_per_s: per_s(deliveries.saturating_sub(last.1)),
            churn_per_s: per_s(churned.saturating_sub(last.2)),
            ..probe.sample((now - start).as_secs_f64())
        };
        last = (now, deliveries, churned);
        bar.set_position(sample.t_s as u64);
        bar.set_message(progress_message(&sample));
        samples.push(sample);
    }
    samples
}

fn progress_message(s: &Sample) -> String {
    let rss = s.rss_bytes.map_or_else(|| "-".into(), mib);
    let files = s.open_files.map_or_else(|| "-".into(), |n| n.to_string());
    format!(
        "RSS {rss}, {files} files, {:.0} k deliveries/s, {:.0} clients/s",
        s.deliveries_per_s / 1000.0,
        s.churn_per_s
    )
}

/// The soak's progress line on stderr, hidden for `--json` and when stderr is not a terminal.
fn progress_bar(duration: Duration, quiet: bool) -> ProgressBar {
    let target = if quiet {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let bar = ProgressBar::with_draw_target(Some(duration.as_secs().max(1)), target);
    if let Ok(style) = ProgressStyle::with_template("soak [{bar:24}] {pos}/{len} s  {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Runs `breadboard bench soak`.
///
/// # Errors
/// Bad flags, a broker that cannot be started or reached, a chart that cannot be written; and,
/// after the report is printed, a loss, a failed client, retained state left behind, memory
/// out of its band or open files not back to their count.
pub async fn run(args: Args) -> anyhow::Result<()> {
    args.check()?;
    let warmup = args.warmup();
    let target_args = args.target.clone();
    // A broker the soak starts itself keeps nothing on disk.
    let in_memory = target_args.broker.is_none();
    let target = Target::open(&target_args).await?;
    let probe = Probe { pid: target.pid };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = probe.sample(0.0);
    let cpu_before = probe.cpu();

    let encoding = Encoding::from(args.encoding);
    let params = Params {
        pubs: 1,
        subs: args.subs,
        msgs: (args.rate * args.duration.as_secs_f64()).round().max(1.0) as u64,
        size: args.size,
        encoding,
        window: DEFAULT_WINDOW,
        rate: Some(args.rate),
        timeout: args.duration + STREAM_GRACE,
    };
    let start = Instant::now();
    let plan = churn::Plan {
        dial: target.dial.clone(),
        per_second: args.churn,
        until: start + args.duration,
        tag: format!("{:x}", std::process::id()),
    };
    let deliveries = ProgressBar::hidden();
    let churned = AtomicU64::new(0);
    let bar = progress_bar(args.duration, args.json);
    let done = CancellationToken::new();
    let load = async {
        let ep = Endpoint::broker(target.dial.clone());
        let mut no_probe = || {};
        let out = tokio::join!(
            workload::run(ep, &params, &deliveries, &mut no_probe),
            churn::run(&plan, &churned),
        );
        done.cancel();
        out
    };
    let counters = Counters {
        deliveries: &deliveries,
        churned: &churned,
    };
    let sampling = sample_each_second(&probe, counters, start, &bar, &done);
    let ((stream, churn), mut samples) = tokio::join!(load, sampling);
    bar.finish_and_clear();
    let stream = stream?;
    let cpu_s = probe.cpu().zip(cpu_before).map(|(end, start)| end - start);

    let retained_left = if args.churn > 0 {
        Some(churn::retained_left(&plan).await?)
    } else {
        None
    };
    let settled = settle(&probe, before.open_files).await;
    samples.push(Sample {
        t_s: start.elapsed().as_secs_f64(),
        ..settled
    });

    let workload = Workload {
        duration_s: args.duration.as_secs_f64(),
        warmup_s: warmup.as_secs_f64(),
        rate: args.rate,
        subs: args.subs,
        size: args.size,
        encoding: encoding.as_str(),
        churn: args.churn,
        in_memory,
    };
    let memory = Memory::judge(&samples, workload.warmup_s, args.band);
    let files = before
        .open_files
        .zip(settled.open_files)
        .map(|(baseline, end)| Files::judge(baseline, &samples[..samples.len() - 1], end));
    let mut report = Report {
        workload,
        stream: outcome(&stream, None, None, None),
        churn,
        retained_left,
        cpu_s,
        rss_before_bytes: before.rss_bytes,
        memory,
        files,
        svg: Some(args.svg.display().to_string()),
        pass: false,
        samples,
    };
    let failures = report.failures();
    report.pass = failures.is_empty();
    write_chart(&report, &args.svg)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    anyhow::ensure!(failures.is_empty(), "soak failed: {}", failures.join("; "));
    Ok(())
}

/// Waits (at most [`SETTLE`]) for the broker's open files to come back to `baseline`; the
/// sample taken then.
async fn settle(probe: &Probe, baseline: Option<usize>) -> Sample {
    let deadline = Instant::now() + SETTLE;
    loop {
        let sample = probe.sample(0.0);
        let back = match (sample.open_files, baseline) {
            (Some(now), Some(before)) => now <= before,
            _ => true,
        };
        if back || Instant::now() >= deadline {
            return sample;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Draws the report's samples into `path` (its folder created if need be).
///
/// # Errors
/// The file cannot be written.
fn write_chart(report: &Report, path: &std::path::Path) -> anyhow::Result<()> {
    let title = report.table().lines().next().unwrap_or("soak").to_string();
    let s = &report.stream;
    let c = &report.churn;
    let subtitle = format!(
        "{}: {} deliveries, {} lost; {} churn clients, {} failed; memory {}; open files {}",
        if report.pass { "pass" } else { "FAIL" },
        s.delivered,
        s.lost + c.lost,
        c.connections,
        c.errors,
        report.memory.map_or("not measured", |m| if m.within_band {
            "within its band"
        } else {
            "out of its band"
        }),
        report
            .files
            .map_or("not measured", |f| if f.back_to_baseline {
                "back to baseline"
            } else {
                "not back to baseline"
            }),
    );
    let svg = chart::svg(
        &report.samples,
        &chart::Marks {
            title: &title,
            subtitle: &subtitle,
            warmup_s: report.workload.warmup_s,
            memory: report.memory,
            files_baseline: report.files.map(|f| f.baseline),
        },
    );
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, svg).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        soak: Args,
    }

    fn parse(args: &[&str]) -> Args {
        Cli::try_parse_from(std::iter::once("soak").chain(args.iter().copied()))
            .unwrap()
            .soak
    }

    #[test]
    fn warm_up_is_a_tenth_at_least_30_s_at_most_half() {
        let warmup = |d: &str| parse(&["--duration", d]).warmup().as_secs_f64();
        assert_eq!(warmup("10m"), 60.0);
        assert_eq!(warmup("2m"), 30.0);
        assert_eq!(warmup("5s"), 2.5);
        assert_eq!(warmup("24h"), 8640.0);
        let asked = parse(&["--duration", "10m", "--warmup", "1m30s"]);
        assert_eq!(asked.warmup(), Duration::from_secs(90));
    }

    #[test]
    fn flags_out_of_bounds_are_refused() {
        assert!(parse(&["--duration", "90"]).check().is_ok());
        for bad in [
            &["--duration", "0"][..],
            &["--duration", "8d"],
            &["--churn", "1001"],
            &["--rate", "0"],
            &["--subs", "0"],
            &["--size", "8"],
            &["--band", "0.9"],
        ] {
            assert!(parse(bad).check().is_err(), "{bad:?}");
        }
    }
}
