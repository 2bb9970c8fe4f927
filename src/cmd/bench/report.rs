//! What a bench run found, as a table for people and as JSON for machines.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles of delivered messages, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Messages measured.
    pub count: u64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
}

impl Latency {
    /// The percentiles of a histogram of nanoseconds.
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// One workload against one target.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Outcome {
    /// Messages published, over all publishers.
    pub published: u64,
    /// Publishing rate, messages/s (first send to last write).
    pub publish_rate: f64,
    /// Messages every subscriber should have received, summed over subscribers.
    pub expected: u64,
    /// Messages received, summed over subscribers.
    pub delivered: u64,
    /// Deliveries per second, summed over subscribers (first send to last delivery).
    pub delivery_rate: f64,
    /// `expected - delivered`.
    pub lost: u64,
    /// Deliveries that came twice or out of order.
    pub duplicates: u64,
    /// Seconds from the first send to the last delivery.
    pub elapsed_s: f64,
    /// CPU seconds the target spent during the run (when it can be read).
    pub cpu_s: Option<f64>,
    /// Target CPU per delivery, microseconds.
    pub cpu_per_delivery_us: Option<f64>,
    /// The bench client's own CPU per delivery, microseconds: when it nears the target's, the
    /// client, not the target, may be what limits the run.
    pub client_cpu_per_delivery_us: Option<f64>,
    /// Target resident memory at the end, bytes.
    pub rss_bytes: Option<u64>,
    /// Latency percentiles (latency mode).
    pub latency: Option<Latency>,
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

impl Outcome {
    /// The median of each figure over several runs (losses are summed, not averaged away).
    pub fn median_of(runs: &[Outcome]) -> Outcome {
        let f = |get: fn(&Outcome) -> f64| median(runs.iter().map(get).collect()).unwrap_or(0.0);
        let opt = |get: fn(&Outcome) -> Option<f64>| median(runs.iter().filter_map(get).collect());
        let latency = |get: fn(&Latency) -> f64| {
            median(
                runs.iter()
                    .filter_map(|r| r.latency.as_ref().map(get))
                    .collect(),
            )
        };
        let has_latency = runs.iter().any(|r| r.latency.is_some());
        Outcome {
            published: f(|r| r.published as f64) as u64,
            publish_rate: f(|r| r.publish_rate),
            expected: runs.iter().map(|r| r.expected).sum(),
            delivered: runs.iter().map(|r| r.delivered).sum(),
            delivery_rate: f(|r| r.delivery_rate),
            lost: runs.iter().map(|r| r.lost).sum(),
            duplicates: runs.iter().map(|r| r.duplicates).sum(),
            elapsed_s: f(|r| r.elapsed_s),
            cpu_s: opt(|r| r.cpu_s),
            cpu_per_delivery_us: opt(|r| r.cpu_per_delivery_us),
            client_cpu_per_delivery_us: opt(|r| r.client_cpu_per_delivery_us),
            rss_bytes: opt(|r| r.rss_bytes.map(|b| b as f64)).map(|b| b as u64),
            latency: has_latency.then(|| Latency {
                count: runs.iter().filter_map(|r| r.latency).map(|l| l.count).sum(),
                p50_us: latency(|l| l.p50_us).unwrap_or(0.0),
                p90_us: latency(|l| l.p90_us).unwrap_or(0.0),
                p99_us: latency(|l| l.p99_us).unwrap_or(0.0),
                p999_us: latency(|l| l.p999_us).unwrap_or(0.0),
                max_us: latency(|l| l.max_us).unwrap_or(0.0),
            }),
        }
    }
}

/// The workload, as run.
#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    /// `throughput` or `latency`.
    pub mode: &'static str,
    /// `json` or `msgpack`.
    pub encoding: &'static str,
    /// Publishers.
    pub pubs: usize,
    /// Subscribers.
    pub subs: usize,
    /// Messages published in each run, over all publishers.
    pub msgs: u64,
    /// Payload bytes per message.
    pub size: usize,
    /// Target publish rate, messages/s (latency mode).
    pub rate: Option<f64>,
    /// Runs per target.
    pub runs: usize,
    /// Most messages in flight (published, not yet received by every subscriber).
    pub window: u64,
    /// Whether subscribers were on another broker than publishers (`--sub-broker`).
    pub across_brokers: bool,
    /// What the broker was compared with: `relay` or `nats`.
    pub baseline: Option<&'static str>,
    /// How the relay writes (when there is a relay).
    pub relay_writes: Option<super::relay::Writes>,
}

/// Everything a `bench` run prints.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What was run.
    pub workload: Workload,
    /// The broker: median over the runs.
    pub broker: Outcome,
    /// The baseline (`workload.baseline`): median over the runs.
    pub baseline: Option<Outcome>,
    /// Broker delivery rate / baseline delivery rate.
    pub ratio: Option<f64>,
    /// Every run, in order, broker first.
    pub broker_runs: Vec<Outcome>,
    /// Every baseline run.
    pub baseline_runs: Vec<Outcome>,
}

impl Report {
    /// Builds the report from the runs of each target.
    pub fn new(workload: Workload, broker_runs: Vec<Outcome>, baseline_runs: Vec<Outcome>) -> Self {
        let broker = Outcome::median_of(&broker_runs);
        let baseline = (!baseline_runs.is_empty()).then(|| Outcome::median_of(&baseline_runs));
        let ratio = baseline
            .as_ref()
            .filter(|r| r.delivery_rate > 0.0)
            .map(|r| broker.delivery_rate / r.delivery_rate);
        Self {
            workload,
            broker,
            baseline,
            ratio,
            broker_runs,
            baseline_runs,
        }
    }

    /// Whether any message was lost in any run.
    pub fn lossy(&self) -> bool {
        // NATS alone is at-most-once by design (a subscriber it finds slow is cut off): its
        // losses are reported, not a failure of the run. The relay's would be a bug of ours.
        let baseline_counts = self.workload.baseline != Some("nats");
        self.broker.lost > 0
            || (baseline_counts && self.baseline.as_ref().is_some_and(|r| r.lost > 0))
    }

    /// The table printed at the end of a run: what was run, then a row per figure.
    pub fn table(&self) -> String {
        let mut rows = vec![self.header()];
        for f in FIGURES {
            rows.push(self.row(f.name, &f.get, f.show));
        }
        if self.broker.latency.is_some() {
            for (name, get) in PERCENTILES {
                rows.push(self.row(name, &|o| o.latency.as_ref().map(get), latency_micros));
            }
        }
        format!("{}\n{}", self.workload.title(), render(&rows))
    }

    /// The columns' names; the baseline's and the ratio's stay blank (and are left out)
    /// without a baseline.
    fn header(&self) -> [String; 4] {
        let broker = if self.workload.across_brokers {
            "across brokers"
        } else {
            "broker"
        };
        let (name, ratio) = match (self.workload.baseline, &self.baseline) {
            (Some(name), Some(_)) => (name.to_string(), format!("broker/{name}")),
            _ => (String::new(), String::new()),
        };
        [String::new(), broker.into(), name, ratio]
    }

    /// One figure of the broker and of the baseline, and their ratio: `-` for a value that could
    /// not be measured, no ratio where there is nothing to divide.
    fn row(
        &self,
        name: &str,
        get: &dyn Fn(&Outcome) -> Option<f64>,
        show: fn(f64) -> String,
    ) -> [String; 4] {
        let broker = get(&self.broker);
        let baseline = self.baseline.as_ref().map(get);
        let ratio = match (broker, baseline.flatten()) {
            (Some(b), Some(r)) if r != 0.0 => format!("{:.2}×", b / r),
            _ => String::new(),
        };
        let show = |v: Option<f64>| v.map(show).unwrap_or_else(|| "-".into());
        [
            name.to_string(),
            show(broker),
            baseline.map(show).unwrap_or_default(),
            ratio,
        ]
    }
}

impl Workload {
    /// The table's first line: what was run.
    fn title(&self) -> String {
        format!(
            "{} {}→{}{}, {} msgs of {} B, {}{}, {} run(s), median",
            self.mode,
            self.pubs,
            self.subs,
            if self.across_brokers {
                " across brokers"
            } else {
                ""
            },
            self.msgs,
            self.size,
            self.encoding,
            self.rate
                .map(|r| format!(" at {r} msg/s"))
                .unwrap_or_default(),
            self.runs,
        )
    }
}

/// A row of the table: a figure of an [`Outcome`] (`None` when it could not be measured) and
/// how it is shown.
struct Figure {
    name: &'static str,
    get: fn(&Outcome) -> Option<f64>,
    show: fn(f64) -> String,
}

/// The rows of every table, in order.
const FIGURES: &[Figure] = &[
    Figure {
        name: "deliveries/s",
        get: |o| Some(o.delivery_rate),
        show: millions,
    },
    Figure {
        name: "published/s",
        get: |o| Some(o.publish_rate),
        show: millions,
    },
    Figure {
        name: "lost",
        get: |o| Some(o.lost as f64),
        show: |v| format!("{v}"),
    },
    Figure {
        name: "CPU per delivery",
        get: |o| o.cpu_per_delivery_us,
        show: micros,
    },
    Figure {
        name: "client CPU per delivery",
        get: |o| o.client_cpu_per_delivery_us,
        show: micros,
    },
    Figure {
        name: "CPU",
        get: |o| o.cpu_s,
        show: |v| format!("{v:.2} s"),
    },
    Figure {
        name: "RSS",
        get: |o| o.rss_bytes.map(|b| b as f64),
        show: |v| format!("{:.1} MiB", v / (1 << 20) as f64),
    },
];

/// A percentile of a [`Latency`].
type Percentile = fn(&Latency) -> f64;

/// The rows added in latency mode, one per percentile.
const PERCENTILES: [(&str, Percentile); 5] = [
    ("latency p50", |l| l.p50_us),
    ("latency p90", |l| l.p90_us),
    ("latency p99", |l| l.p99_us),
    ("latency p99.9", |l| l.p999_us),
    ("latency max", |l| l.max_us),
];

/// Rates, in millions per second.
fn millions(v: f64) -> String {
    format!("{:.3} M", v / 1e6)
}

/// CPU per delivery: fractions of a microsecond matter.
fn micros(v: f64) -> String {
    format!("{v:.3} µs")
}

/// Latencies: tenths of a microsecond are enough.
fn latency_micros(v: f64) -> String {
    format!("{v:.1} µs")
}

/// Lays out rows as aligned columns: the first left-aligned, the others right-aligned.
pub fn render<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if w == 0 {
                continue;
            }
            let pad = w - cell.chars().count();
            if i == 0 {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            } else {
                line.push_str("  ");
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(rate: f64, lost: u64) -> Outcome {
        Outcome {
            delivery_rate: rate,
            publish_rate: rate,
            lost,
            cpu_per_delivery_us: Some(rate / 1e6),
            ..Outcome::default()
        }
    }

    fn workload() -> Workload {
        Workload {
            mode: "throughput",
            encoding: "json",
            pubs: 1,
            subs: 2,
            msgs: 1000,
            size: 64,
            rate: None,
            runs: 3,
            window: 100,
            across_brokers: false,
            baseline: Some("relay"),
            relay_writes: None,
        }
    }

    #[test]
    fn latency_percentiles_come_from_the_histogram() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for ns in 1..=1000u64 {
            h.record(ns * 1000).unwrap();
        }
        let l = Latency::from_histogram(&h);
        assert_eq!(l.count, 1000);
        assert!((l.p50_us - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.p99_us - 990.0).abs() < 1.0, "{l:?}");
        assert!((l.max_us - 1000.0).abs() < 1.0, "{l:?}");
    }

    #[test]
    fn medians_and_summed_losses() {
        let runs = [outcome(3.0, 0), outcome(1.0, 2), outcome(2.0, 1)];
        let m = Outcome::median_of(&runs);
        assert_eq!(m.delivery_rate, 2.0);
        assert_eq!(m.lost, 3);
        let even = Outcome::median_of(&runs[..2]);
        assert_eq!(even.delivery_rate, 2.0);
        assert_eq!(Outcome::median_of(&[]).delivery_rate, 0.0);
    }

    #[test]
    fn report_ratio_is_broker_over_relay() {
        let r = Report::new(
            workload(),
            vec![outcome(2e6, 0)],
            vec![outcome(1e6, 0), outcome(1e6, 0)],
        );
        assert_eq!(r.ratio, Some(2.0));
        assert!(!r.lossy());
        let table = r.table();
        assert!(table.contains("deliveries/s"), "{table}");
        assert!(table.contains("2.000 M"), "{table}");
        assert!(table.contains("2.00×"), "{table}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["broker"]["delivery_rate"], 2e6);
        assert_eq!(json["baseline_runs"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn report_without_relay_has_no_ratio_column() {
        let r = Report::new(workload(), vec![outcome(1e6, 5)], vec![]);
        assert_eq!(r.ratio, None);
        assert!(r.lossy());
        assert!(!r.table().contains('×'));
    }

    #[test]
    fn columns_are_aligned() {
        let rows = [
            ["a".to_string(), "1".to_string()],
            ["long name".to_string(), "12345".to_string()],
        ];
        assert_eq!(render(&rows), "a              1\nlong name  12345\n");
    }
}
