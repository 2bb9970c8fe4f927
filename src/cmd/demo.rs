//! `breadboard demo`: the whole circuit in one process, on loopback: a broker on a port the
//! system picks, a clock, a pin (`pin-1`) and a buzzer. Prints their conversation and exits
//! once the last tick is acknowledged, or fails if a tick is not acknowledged in time.
//! No mDNS at all: nothing leaves the machine.

use std::time::Duration;

use anyhow::Context as _;
use nodes::kinds::buzzer::Buzzer;
use nodes::kinds::clock::{Clock, ClockOptions};
use nodes::kinds::pin::{Pin, PinOptions};
use nodes::runtime::{self, BrokerSource, Config};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

/// How long the pin and the buzzer may take to come online.
const READY_WAIT: Duration = Duration::from_secs(10);

/// Flags of `breadboard demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Ticks to send, then stop; 0 ticks until Ctrl-C.
    #[arg(short = 't', long, default_value_t = 5)]
    pub tacks: u64,
    /// Seconds between ticks (fractions allowed).
    #[arg(short = 'd', long, default_value = "1", value_parser = nodes::kinds::parse_seconds)]
    pub delay: Duration,
    /// The pin's flags.
    #[command(flatten)]
    pub pin: PinOptions,
}

/// Runs the demo circuit.
///
/// # Errors
/// When the loopback port cannot be bound, a node does not come online, or a tick is not
/// acknowledged by the pin in time.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on a loopback port")?;
    let url = format!("ws://{}", listener.local_addr()?);
    let shutdown = super::shutdown_on_signal()?;
    // The broker stops last, after the nodes said goodbye.
    let broker_stop = CancellationToken::new();
    let config = broker::Config {
        name: "demo".to_string(),
        ..broker::Config::default()
    };
    let broker = tokio::spawn(broker::run(listener, config, broker_stop.clone()));
    println!("breadboard demo: broker on {url} (loopback only), nodes clock, pin-1, buzzer");

    let result = circuit(&args, &url, &shutdown).await;

    broker_stop.cancel();
    match timeout(Duration::from_secs(3), broker).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the broker stopped with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "the broker task failed"),
        Err(_) => tracing::warn!("the broker did not stop in time"),
    }
    result
}

/// Pin and buzzer first, online and subscribed, then the clock until its last tick.
async fn circuit(args: &Args, url: &str, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let nodes_stop = shutdown.child_token();
    let source = BrokerSource::fixed(url);
    let mut pin = runtime::spawn(
        Pin::new(args.pin.clone()),
        Config::new("pin-1", "pin"),
        source.clone(),
        nodes_stop.clone(),
    );
    let mut buzzer = runtime::spawn(
        Buzzer::new(),
        Config::new("buzzer", "buzzer"),
        source.clone(),
        nodes_stop.clone(),
    );
    let ready = async {
        pin.ready()
            .await
            .context("pin-1 stopped before it was online")?;
        buzzer
            .ready()
            .await
            .context("the buzzer stopped before it was online")
    };
    let clock = match timeout(READY_WAIT, ready).await {
        Ok(Ok(())) => {
            let options = ClockOptions {
                tacks: args.tacks,
                delay: args.delay,
                // pin-1 must acknowledge every tick.
                expect: 1,
                timeout: None,
            };
            runtime::run(
                Clock::new(options),
                Config::new("clock", "clock"),
                source,
                nodes_stop.clone(),
            )
            .await
            .context("the circuit stopped")
        }
        // Ctrl-C while starting up is not a failure.
        Ok(Err(_)) if shutdown.is_cancelled() => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(anyhow::anyhow!(
            "pin-1 and the buzzer did not come online within {READY_WAIT:?}"
        )),
    };
    // The pin's last state changes are on their way to the buzzer: let it print them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    nodes_stop.cancel();
    for (name, handle) in [("pin-1", pin), ("buzzer", buzzer)] {
        match timeout(Duration::from_secs(3), handle.join()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(node = name, error = %e, "node failed"),
            Err(_) => tracing::warn!(node = name, "node did not stop in time"),
        }
    }
    clock
}
