//! What a soak found: the samples, the verdicts drawn from them, and the report as a table or
//! JSON.

use serde::Serialize;

use super::super::report::Outcome;
use super::churn;
use crate::cmd::format_duration;

/// What was measured in one second of the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds since the load started.
    pub t_s: f64,
    /// Broker resident memory, bytes (when its `/proc` can be read).
    pub rss_bytes: Option<u64>,
    /// Files the broker has open (sockets included).
    pub open_files: Option<usize>,
    /// Deliveries of the steady stream per second, summed over its subscribers.
    pub deliveries_per_s: f64,
    /// Churn clients that ended per second.
    pub churn_per_s: f64,
}

/// The soak's load, as run.
#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    /// Seconds of load.
    pub duration_s: f64,
    /// Seconds of warm-up, during which memory is not held to the band.
    pub warmup_s: f64,
    /// Messages per second of the steady stream.
    pub rate: f64,
    /// Subscribers of the steady stream.
    pub subs: usize,
    /// Payload bytes of a stream message.
    pub size: usize,
    /// Encoding of the steady stream (churn clients alternate both).
    pub encoding: &'static str,
    /// Churn clients started per second.
    pub churn: u32,
    /// Whether the broker the soak started was told to keep its state in memory.
    pub in_memory: bool,
}

/// Whether the broker's memory stayed in its band once warmed up.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Memory {
    /// Samples after the warm-up.
    pub samples: usize,
    /// Smallest RSS after the warm-up, bytes.
    pub min_bytes: u64,
    /// Median RSS after the warm-up, bytes.
    pub median_bytes: u64,
    /// Largest RSS after the warm-up, bytes.
    pub max_bytes: u64,
    /// The band's top: `band × median`.
    pub limit_bytes: u64,
    /// `max ≤ limit`.
    pub within_band: bool,
}

impl Memory {
    /// The verdict over the samples taken after `warmup_s`; `None` when there are none with a
    /// reading.
    pub fn judge(samples: &[Sample], warmup_s: f64, band: f64) -> Option<Self> {
        let mut rss: Vec<u64> = samples
            .iter()
            .filter(|s| s.t_s >= warmup_s)
            .filter_map(|s| s.rss_bytes)
            .collect();
        rss.sort_unstable();
        let (&min_bytes, &max_bytes) = (rss.first()?, rss.last()?);
        let median_bytes = rss[rss.len() / 2];
        let limit_bytes = (median_bytes as f64 * band) as u64;
        Some(Self {
            samples: rss.len(),
            min_bytes,
            median_bytes,
            max_bytes,
            limit_bytes,
            within_band: max_bytes <= limit_bytes,
        })
    }
}

/// Whether the broker's open files came back to what they were before the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Files {
    /// Before the load.
    pub baseline: usize,
    /// Fewest during the load.
    pub min: usize,
    /// Most during the load.
    pub max: usize,
    /// After the load, once settled.
    pub end: usize,
    /// `end ≤ baseline`.
    pub back_to_baseline: bool,
}

impl Files {
    /// The verdict from the count before, the samples, and the count after.
    pub fn judge(baseline: usize, samples: &[Sample], end: usize) -> Self {
        let during = samples.iter().filter_map(|s| s.open_files);
        Self {
            baseline,
            min: during.clone().min().unwrap_or(baseline),
            max: during.max().unwrap_or(baseline),
            end,
            back_to_baseline: end <= baseline,
        }
    }
}

/// Everything `bench soak` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What was run.
    pub workload: Workload,
    /// The steady stream: every delivery checked.
    pub stream: Outcome,
    /// The churn clients.
    pub churn: churn::Tally,
    /// Retained values the churn left on its topics (each client clears its own).
    pub retained_left: Option<u64>,
    /// Broker CPU seconds over the load.
    pub cpu_s: Option<f64>,
    /// Broker RSS before the load, bytes.
    pub rss_before_bytes: Option<u64>,
    /// Broker memory after the warm-up.
    pub memory: Option<Memory>,
    /// Broker open files.
    pub files: Option<Files>,
    /// Where the chart was written.
    pub svg: Option<String>,
    /// No loss, no error, memory in its band, files back to baseline (what was measured).
    pub pass: bool,
    /// Every sample, a second apart; the last one is taken after the load, once settled.
    pub samples: Vec<Sample>,
}

impl Report {
    /// What failed, in words; empty when the soak passed.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        let s = &self.stream;
        if s.lost > 0 || s.duplicates > 0 {
            out.push(format!(
                "stream: {} lost, {} duplicated",
                s.lost, s.duplicates
            ));
        }
        let c = &self.churn;
        if c.lost > 0 || c.duplicates > 0 {
            out.push(format!(
                "churn: {} lost, {} duplicated",
                c.lost, c.duplicates
            ));
        }
        if c.errors > 0 {
            out.push(format!(
                "churn: {} clients failed (first: {})",
                c.errors,
                c.first_error.as_deref().unwrap_or("?")
            ));
        }
        if let Some(left) = self.retained_left.filter(|n| *n > 0) {
            out.push(format!("{left} retained values left behind"));
        }
        if let Some(m) = self.memory.filter(|m| !m.within_band) {
            out.push(format!(
                "memory: max {} over the band's {}",
                mib(m.max_bytes),
                mib(m.limit_bytes)
            ));
        }
        if let Some(f) = self.files.filter(|f| !f.back_to_baseline) {
            out.push(format!(
                "open files: {} after the load, {} before",
                f.end, f.baseline
            ));
        }
        out
    }

    /// The table printed at the end of a soak.
    pub fn table(&self) -> String {
        let w = &self.workload;
        let title = format!(
            "soak {}: 1→{} at {} msg/s ({} B, {}), churn {} clients/s{}",
            format_duration(std::time::Duration::from_secs_f64(w.duration_s)),
            w.subs,
            w.rate,
            w.size,
            w.encoding,
            w.churn,
            if w.in_memory {
                ", broker --in-memory"
            } else {
                ""
            },
        );
        let s = &self.stream;
        let c = &self.churn;
        let dash = || "-".to_string();
        let mut rows = vec![
            row("duration", format!("{:.1} s", s.elapsed_s)),
            row(
                "messages",
                format!("{} published, {} deliveries", s.published, s.delivered),
            ),
            row("lost", s.lost.to_string()),
            row("duplicates", s.duplicates.to_string()),
        ];
        if let Some(l) = &s.latency {
            rows.push(row(
                "latency p50 / p99 / max",
                format!("{:.0} / {:.0} / {:.0} µs", l.p50_us, l.p99_us, l.max_us),
            ));
        }
        rows.extend([
            row(
                "churn connections",
                format!(
                    "{} ({} closed, {} dropped, {} abandoned), {} failed, {} skipped",
                    c.connections, c.graceful, c.dropped, c.abandoned, c.errors, c.skipped
                ),
            ),
            row(
                "churn lost / duplicates",
                format!("{} / {}", c.lost, c.duplicates),
            ),
            row(
                "retained values left",
                self.retained_left.map_or_else(dash, |n| n.to_string()),
            ),
            row(
                "broker CPU",
                self.cpu_s.map_or_else(dash, |cpu| {
                    format!("{cpu:.1} s ({:.0} % of a core)", 100.0 * cpu / w.duration_s)
                }),
            ),
            row("RSS before", self.rss_before_bytes.map_or_else(dash, mib)),
            row(
                format!(
                    "RSS after {} warm-up",
                    format_duration(std::time::Duration::from_secs_f64(w.warmup_s))
                ),
                self.memory.map_or_else(dash, |m| {
                    format!(
                        "min {} / median {} / max {}",
                        mib(m.min_bytes),
                        mib(m.median_bytes),
                        mib(m.max_bytes)
                    )
                }),
            ),
            row(
                "memory band",
                self.memory.map_or_else(dash, |m| {
                    format!(
                        "max ≤ {} ({:.2} × median): {}",
                        mib(m.limit_bytes),
                        m.limit_bytes as f64 / m.median_bytes.max(1) as f64,
                        if m.within_band { "ok" } else { "EXCEEDED" }
                    )
                }),
            ),
            row(
                "open files",
                self.files.map_or_else(dash, |f| {
                    format!(
                        "min {} / max {}; {} before, {} after: {}",
                        f.min,
                        f.max,
                        f.baseline,
                        f.end,
                        if f.back_to_baseline { "ok" } else { "NOT BACK" }
                    )
                }),
            ),
            row(
                "verdict",
                if self.pass { "pass" } else { "FAIL" }.to_string(),
            ),
        ]);
        if let Some(svg) = &self.svg {
            rows.push(row("chart", svg.clone()));
        }
        format!("{title}\n{}", render(&rows))
    }
}

fn row(name: impl Into<String>, value: String) -> [String; 2] {
    [name.into(), value]
}

/// Names and values in two columns, both left-aligned (values are sentences, not numbers).
fn render(rows: &[[String; 2]]) -> String {
    let width = rows
        .iter()
        .map(|[name, _]| name.chars().count())
        .max()
        .unwrap_or(0);
    rows.iter()
        .map(|[name, value]| format!("{name:<width$}  {value}\n"))
        .collect()
}

/// Bytes in MiB, one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_s: f64, rss_mib: u64, files: usize) -> Sample {
        Sample {
            t_s,
            rss_bytes: Some(rss_mib << 20),
            open_files: Some(files),
            ..Sample::default()
        }
    }

    #[test]
    fn memory_is_judged_after_the_warm_up_only() {
        // Warm-up grows from 2 to 9 MiB; then 10, 10, 11, 12: median 11, limit 13.75.
        let mut samples: Vec<_> = (0..8).map(|t| sample(t as f64, 2 + t, 5)).collect();
        samples.extend(
            [10, 10, 11, 12]
                .iter()
                .zip(8..)
                .map(|(m, t)| sample(t as f64, *m, 5)),
        );
        let m = Memory::judge(&samples, 8.0, 1.25).unwrap();
        assert_eq!(m.samples, 4);
        assert_eq!(
            (m.min_bytes, m.median_bytes, m.max_bytes),
            (10 << 20, 11 << 20, 12 << 20)
        );
        assert!(m.within_band);
        samples.push(sample(13.0, 14, 5));
        assert!(!Memory::judge(&samples, 8.0, 1.25).unwrap().within_band);
        assert_eq!(Memory::judge(&samples, 100.0, 1.25), None);
    }

    #[test]
    fn files_must_come_back_to_baseline() {
        let samples = [sample(0.0, 1, 9), sample(1.0, 1, 70), sample(2.0, 1, 40)];
        let f = Files::judge(9, &samples, 9);
        assert_eq!((f.min, f.max), (9, 70));
        assert!(f.back_to_baseline);
        assert!(!Files::judge(9, &samples, 10).back_to_baseline);
    }

    fn report(lost: u64, within_band: bool) -> Report {
        Report {
            workload: Workload {
                duration_s: 120.0,
                warmup_s: 30.0,
                rate: 2000.0,
                subs: 50,
                size: 64,
                encoding: "json",
                churn: 20,
                in_memory: false,
            },
            stream: Outcome {
                published: 240_000,
                delivered: 12_000_000 - lost,
                lost,
                elapsed_s: 120.0,
                ..Outcome::default()
            },
            churn: churn::Tally::default(),
            retained_left: Some(0),
            cpu_s: Some(30.0),
            rss_before_bytes: Some(8 << 20),
            memory: Some(Memory {
                samples: 90,
                min_bytes: 10 << 20,
                median_bytes: 11 << 20,
                max_bytes: 12 << 20,
                limit_bytes: if within_band { 13 << 20 } else { 11 << 20 },
                within_band,
            }),
            files: Some(Files {
                baseline: 9,
                min: 60,
                max: 80,
                end: 9,
                back_to_baseline: true,
            }),
            svg: Some("target/soak.svg".into()),
            pass: lost == 0 && within_band,
            samples: vec![],
        }
    }

    #[test]
    fn table_says_the_verdict_and_failures_say_why() {
        let good = report(0, true);
        let t = good.table();
        assert!(t.starts_with("soak 2m: 1→50 at 2000 msg/s"), "{t}");
        assert!(
            t.contains("min 10.0 MiB / median 11.0 MiB / max 12.0 MiB"),
            "{t}"
        );
        assert!(t.contains("25 % of a core"), "{t}");
        assert!(t.contains("pass"), "{t}");
        assert!(good.failures().is_empty());
        let bad = report(3, false);
        assert!(bad.table().contains("FAIL"));
        let why = bad.failures();
        assert_eq!(why.len(), 2, "{why:?}");
        assert!(why[0].contains("3 lost"), "{why:?}");
        assert!(why[1].starts_with("memory"), "{why:?}");
    }
}
