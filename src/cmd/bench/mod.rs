//! `breadboard bench`: measures a broker the way users compare brokers (in the spirit of `nats
//! bench`), always next to a baseline measured in the same run.
//!
//! - `bench --pubs P --subs S --msgs M --size B`: throughput, deliveries per second summed over
//!   subscribers, and the publish rate.
//! - `bench --rate R --duration D`: latency percentiles at a fixed publish rate.
//! - `bench --baseline relay`: the same workload against a bare tokio-tungstenite relay
//!   ([`relay`]), and the ratio broker/relay.
//! - `bench --sub-broker URL`: subscribers on another broker of the same cluster than the
//!   publishers, so that every message crosses between brokers through NATS;
//!   `--baseline nats --nats URL`: the same workload by NATS clients against the `nats-server`
//!   alone ([`nats`]), and the ratio.
//! - `bench conns --count N`: the broker's resident memory per idle subscribed connection.
//! - `bench soak --duration D`: a steady mixed load for a long time ([`soak`]): nothing may be
//!   lost, and the broker's memory and open files must stay level.
//!
//! By default the broker is a child process started on loopback ([`local`]), so that its CPU
//! time and memory are read from `/proc` apart from the client's. The client ([`wire`],
//! [`workload`]) is built not to be the bottleneck: pre-encoded frames patched in place, many
//! frames per write, frames read in place from large buffers. What it says in breadboard's
//! protocol (a `pub`, a `sub`, the `ok` to it) is encoded and decoded in [`frames`] alone.
//!
//! ```text
//!  bench ──► workload::run ──► Endpoint (broker child | relay | two brokers) ──► Measured
//!        └─► nats::run ──► nats-server ───────────────────────────────────────► Measured
//!                 │ probe(): /proc CPU before/after                   │
//!                 └──────────────────────────────────────────► report::Report (table | JSON)
//! ```

mod conns;
mod frames;
mod local;
mod nats;
mod payload;
mod relay;
mod report;
mod soak;
mod wire;
mod workload;

use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use proto::Encoding;

use self::local::{LocalBroker, Usage};
use self::report::{Latency, Outcome, Report, Workload};
use self::workload::{Endpoint, Measured, Params};
use super::parse_duration;

/// Flags of `breadboard bench`.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Opens many idle subscribed connections and reports the broker's memory per connection.
    Conns(conns::Args),
    /// Runs a steady mixed load (connection churn and a 1 → 50 stream) for a long time;
    /// reports losses and whether the broker's memory and open files stayed level.
    Soak(soak::Args),
}

/// Messages in flight (published, not yet received by every subscriber) unless `--window`
/// says otherwise.
const DEFAULT_WINDOW: u64 = 10_000;

/// Which broker to measure.
#[derive(clap::Args, Debug, Clone)]
pub struct TargetArgs {
    /// Measure the broker at this address (`ws://host:port` or `wss://host:port`) instead of
    /// starting one.
    #[arg(long, value_name = "URL")]
    broker: Option<String>,
    /// The process id of the broker given with `--broker`, to read its CPU time, memory and
    /// open files.
    #[arg(long, visible_alias = "broker-pid", requires = "broker")]
    pid: Option<u32>,
    /// A flag for the broker the bench starts (repeat for several), such as
    /// `--broker-arg=--outbox-frames=16384`.
    #[arg(long = "broker-arg", value_name = "FLAG", allow_hyphen_values = true)]
    broker_args: Vec<String>,
    /// Credentials (sent by every client, to a broker started here too) and the trust for a
    /// `wss://` broker. Boxed: it is the larger part of these flags.
    #[command(flatten)]
    access: Box<super::access::AccessArgs>,
}

/// The frames clients send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum EncodingArg {
    /// JSON text frames.
    Json,
    /// MessagePack binary frames.
    Msgpack,
}

impl From<EncodingArg> for Encoding {
    fn from(e: EncodingArg) -> Self {
        match e {
            EncodingArg::Json => Encoding::Json,
            EncodingArg::Msgpack => Encoding::MsgPack,
        }
    }
}

/// What to compare the broker with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Baseline {
    /// A bare tokio-tungstenite relay, in this process.
    Relay,
    /// NATS clients against the `nats-server` given with `--nats`, no broker between them.
    Nats,
}

impl Baseline {
    /// Its name in the report.
    fn name(self) -> &'static str {
        match self {
            Baseline::Relay => "relay",
            Baseline::Nats => "nats",
        }
    }
}

/// Flags of the throughput and latency runs.
#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Publishing connections.
    #[arg(long, default_value_t = 1)]
    pubs: usize,
    /// Subscribing connections; each receives every message.
    #[arg(long, default_value_t = 1)]
    subs: usize,
    /// Messages to publish in each run, over all publishers (throughput mode).
    #[arg(long, default_value_t = 500_000)]
    msgs: u64,
    /// Payload bytes per message (at least 33: the stamp).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Latency mode: publish this many messages per second (over all publishers).
    #[arg(long)]
    rate: Option<f64>,
    /// Latency mode: how long to publish for (`5`, `5s`, `2m`; a plain number is seconds).
    #[arg(long, default_value = "5s", value_parser = parse_duration, requires = "rate")]
    duration: Duration,
    /// How clients encode their frames.
    #[arg(long, value_enum, default_value_t = EncodingArg::Json)]
    encoding: EncodingArg,
    /// Subscribers connect to this broker (`ws://host:port`), publishers to `--broker` (or the
    /// broker the bench starts): two brokers of one cluster, each message crossing between
    /// them. The run starts once probes reach every subscriber (interest takes a moment to
    /// travel through NATS); probes are not counted.
    #[arg(long, value_name = "URL")]
    sub_broker: Option<String>,
    /// Run the same workload against a baseline too, and print the ratio.
    #[arg(long, value_enum)]
    baseline: Option<Baseline>,
    /// The `nats-server` of `--baseline nats` (`nats://host:port`).
    #[arg(long, value_name = "URL", required_if_eq("baseline", "nats"))]
    nats: Option<String>,
    /// How the relay writes to its subscribers.
    #[arg(long, value_enum, default_value_t = relay::Writes::Batch)]
    relay_writes: relay::Writes,
    /// Runs per target (alternating broker and baseline); the report gives medians.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Most messages published and not yet received by every subscriber: what one subscriber's
    /// queue at the broker may hold at most. A broker whose slow-consumer limit is lower rightly
    /// cuts subscribers off as slow.
    #[arg(long, default_value_t = DEFAULT_WINDOW)]
    window: u64,
    /// How long a run may take before it stops, whatever it has delivered (losses are
    /// reported); a plain number is seconds.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    timeout: Duration,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: TargetArgs,
}

/// The broker being measured: started here, or given by address.
pub(crate) struct Target {
    /// Where it listens, and how clients connect (TLS, credentials).
    dial: wire::Dial,
    /// Where subscribers connect instead (`--sub-broker`), with the same TLS and credentials.
    sub_dial: Option<wire::Dial>,
    /// Held so the child lives as long as the bench, and is killed after.
    _local: Option<LocalBroker>,
    /// Its process id, when its `/proc` can be read.
    pid: Option<u32>,
}

impl Target {
    async fn open(args: &TargetArgs) -> anyhow::Result<Self> {
        match &args.broker {
            Some(url) => {
                let dial = wire::Dial::url(url, &args.access.trust()?)
                    .await
                    .context("--broker")?;
                Ok(Self {
                    dial: dial.with_token(args.access.token.token.clone()),
                    sub_dial: None,
                    _local: None,
                    pid: args.pid,
                })
            }
            None => {
                anyhow::ensure!(
                    args.access.ca.is_none() && args.access.fingerprint.is_none(),
                    "--ca and --fingerprint are for a wss:// broker given with --broker; the \
                     broker the bench starts is plain ws://"
                );
                let local = LocalBroker::start(&args.broker_args).await?;
                let dial = wire::Dial::plain(local.addr);
                Ok(Self {
                    dial: dial.with_token(args.access.token.token.clone()),
                    sub_dial: None,
                    pid: Some(local.pid),
                    _local: Some(local),
                })
            }
        }
    }

    /// Subscribers connect to `url` from now on (`--sub-broker`).
    async fn subscribers_at(&mut self, url: &str, args: &TargetArgs) -> anyhow::Result<()> {
        let dial = wire::Dial::url(url, &args.access.trust()?)
            .await
            .context("--sub-broker")?;
        self.sub_dial = Some(dial.with_token(args.access.token.token.clone()));
        Ok(())
    }

    fn usage(&self) -> Option<Usage> {
        self.pid.and_then(|pid| local::usage(pid).ok())
    }
}

/// A progress bar on stderr (hidden for `--json` and when stderr is not a terminal).
fn progress_bar(len: u64, prefix: &str, quiet: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(len),
        if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        },
    );
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix:>14} [{bar:32}] {human_pos}/{human_len} {per_sec:>14} {elapsed}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(prefix.to_string());
    bar
}

/// CPU time of the bench client alone: this process, less the relay's threads.
fn client_cpu() -> Option<f64> {
    let all = local::usage(std::process::id()).ok()?.cpu_s;
    Some(all - local::threads_cpu(relay::THREAD_NAME))
}

fn outcome(
    m: &Measured,
    cpu_s: Option<f64>,
    client_cpu_s: Option<f64>,
    rss_bytes: Option<u64>,
) -> Outcome {
    let published = m.published;
    let delivered = m.delivered();
    let per_s = |n: u64, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    Outcome {
        published,
        publish_rate: per_s(published, m.publish_s),
        expected: m.expected(),
        delivered,
        delivery_rate: per_s(delivered, m.elapsed_s),
        lost: m.lost(),
        duplicates: m.tallies.iter().map(|t| t.duplicates + t.foreign).sum(),
        elapsed_s: m.elapsed_s,
        cpu_s,
        cpu_per_delivery_us: cpu_s
            .filter(|_| delivered > 0)
            .map(|c| c * 1e6 / delivered as f64),
        client_cpu_per_delivery_us: client_cpu_s
            .filter(|_| delivered > 0)
            .map(|c| c * 1e6 / delivered as f64),
        rss_bytes,
        latency: m.latency.as_ref().map(Latency::from_histogram),
    }
}

async fn run_broker(
    target: &Target,
    params: &Params,
    bar: &ProgressBar,
) -> anyhow::Result<Outcome> {
    let ep = Endpoint {
        sub_dial: target.sub_dial.clone(),
        ..Endpoint::broker(target.dial.clone())
    };
    let mut samples: Vec<Usage> = Vec::new();
    let mut client = Vec::new();
    let mut probe = || {
        samples.extend(target.usage());
        client.extend(client_cpu());
    };
    let measured = workload::run(ep, params, bar, &mut probe).await?;
    let (cpu, rss) = match samples[..] {
        [before, after] => (Some(after.cpu_s - before.cpu_s), Some(after.rss_bytes)),
        _ => (None, None),
    };
    let client = match client[..] {
        [before, after] => Some(after - before),
        _ => None,
    };
    Ok(outcome(&measured, cpu, client, rss))
}

async fn run_relay(
    relay: &relay::Relay,
    params: &Params,
    bar: &ProgressBar,
) -> anyhow::Result<Outcome> {
    let ep = Endpoint {
        relay: true,
        ..Endpoint::broker(wire::Dial::plain(relay.addr))
    };
    let mut samples = Vec::new();
    let mut client = Vec::new();
    let mut probe = || {
        samples.push(local::threads_cpu(relay::THREAD_NAME));
        client.extend(client_cpu());
    };
    let measured = workload::run(ep, params, bar, &mut probe).await?;
    let cpu = match samples[..] {
        [before, after] => Some(after - before),
        _ => None,
    };
    let client = match client[..] {
        [before, after] => Some(after - before),
        _ => None,
    };
    Ok(outcome(&measured, cpu, client, None))
}

async fn run_nats(url: &str, params: &Params, bar: &ProgressBar) -> anyhow::Result<Outcome> {
    let mut client = Vec::new();
    let mut probe = || client.extend(client_cpu());
    let measured = nats::run(url, params, bar, &mut probe).await?;
    let client = match client[..] {
        [before, after] => Some(after - before),
        _ => None,
    };
    // The server is not this bench's child: its CPU is for the caller to read (see
    // scripts/bench-cluster).
    Ok(outcome(&measured, None, client, None))
}

/// Runs `breadboard bench`.
///
/// # Errors
/// Bad flags, a broker that cannot be started or reached, or messages lost (after the report
/// is printed).
pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Some(Command::Conns(conns)) => return conns::run(conns).await,
        Some(Command::Soak(soak)) => return soak::run(soak).await,
        None => {}
    }
    let a = args.run;
    anyhow::ensure!(
        a.size >= payload::MIN_SIZE,
        "--size must be at least {} bytes (the stamp)",
        payload::MIN_SIZE
    );
    anyhow::ensure!(a.runs >= 1, "--runs must be at least 1");
    anyhow::ensure!(
        a.nats.is_none() || a.baseline == Some(Baseline::Nats),
        "--nats is the server of --baseline nats"
    );
    let msgs = match a.rate {
        Some(rate) => {
            anyhow::ensure!(rate > 0.0, "--rate must be more than 0");
            (rate * a.duration.as_secs_f64()).round() as u64
        }
        None => a.msgs,
    };
    anyhow::ensure!(msgs > 0, "nothing to publish");
    let encoding = Encoding::from(a.encoding);
    let params = Params {
        pubs: a.pubs,
        subs: a.subs,
        msgs,
        size: a.size,
        encoding,
        window: a.window,
        rate: a.rate,
        timeout: a.timeout,
    };
    let mut target = Target::open(&a.target).await?;
    if let Some(url) = &a.sub_broker {
        target.subscribers_at(url, &a.target).await?;
    }
    let relay = match a.baseline {
        Some(Baseline::Relay) => Some(relay::Relay::start(
            std::thread::available_parallelism().map_or(2, |n| n.get()),
            a.relay_writes,
        )?),
        Some(Baseline::Nats) | None => None,
    };

    let expected = msgs * a.subs as u64;
    let mut broker_runs = Vec::new();
    let mut baseline_runs = Vec::new();
    for i in 1..=a.runs {
        let bar = progress_bar(expected, &format!("broker {i}/{}", a.runs), a.json);
        broker_runs.push(run_broker(&target, &params, &bar).await?);
        bar.finish_and_clear();
        if let Some(relay) = &relay {
            let bar = progress_bar(expected, &format!("relay {i}/{}", a.runs), a.json);
            baseline_runs.push(run_relay(relay, &params, &bar).await?);
            bar.finish_and_clear();
        }
        if let Some(url) = &a.nats {
            let bar = progress_bar(expected, &format!("nats {i}/{}", a.runs), a.json);
            baseline_runs.push(run_nats(url, &params, &bar).await?);
            bar.finish_and_clear();
        }
    }
    drop(relay);

    let workload = Workload {
        mode: if a.rate.is_some() {
            "latency"
        } else {
            "throughput"
        },
        encoding: encoding.as_str(),
        pubs: a.pubs,
        subs: a.subs,
        msgs,
        size: a.size,
        rate: a.rate,
        runs: a.runs,
        window: a.window,
        across_brokers: a.sub_broker.is_some(),
        baseline: a.baseline.map(Baseline::name),
        relay_writes: (a.baseline == Some(Baseline::Relay)).then_some(a.relay_writes),
    };
    let report = Report::new(workload, broker_runs, baseline_runs);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    if let (Some("nats"), Some(baseline)) = (report.workload.baseline, &report.baseline) {
        if baseline.lost > 0 {
            eprintln!(
                "note: NATS alone lost {} messages (core NATS is at-most-once: it cuts off a \
                 subscriber it finds slow); not counted as a failure of this run",
                baseline.lost
            );
        }
    }
    if report.lossy() {
        anyhow::bail!(
            "messages were lost: broker {}, {} {}",
            report.broker.lost,
            report.workload.baseline.unwrap_or("baseline"),
            report.baseline.as_ref().map_or(0, |r| r.lost)
        );
    }
    Ok(())
}
