//! `breadboard demo`: the whole circuit in one process, on loopback: a broker on a port the
//! system picks, a clock, a pin (`pin-1`) and a buzzer. Prints their conversation and exits
//! once the last tick is acknowledged, or fails if a tick is not acknowledged in time.
//! No mDNS at all unless `--lan`: nothing leaves the machine.

use std::time::Duration;

use anyhow::Context as _;
use discovery::{Advert, Discovery};
use nodes::kinds::buzzer::Buzzer;
use nodes::kinds::clock::{Clock, ClockOptions};
use nodes::kinds::pin::Pin;
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
    #[arg(short = 'd', long, default_value = "1", value_parser = super::parse_seconds)]
    pub delay: Duration,
    /// The pin's flags.
    #[command(flatten)]
    pub pin: super::node::PinFlags,
    /// Show the demo to the LAN: listen on every interface (port 8765, or --port) and
    /// advertise the broker and the three nodes over mDNS, so that `breadboard ls`, `sub` or
    /// more nodes elsewhere find it. Without it the demo stays on loopback with no mDNS.
    #[arg(long)]
    pub lan: bool,
    /// With --lan, the port to listen on.
    #[arg(short, long, default_value_t = 8765, requires = "lan")]
    pub port: u16,
    /// With --lan, limit mDNS to this interface (name or IPv4 address); repeatable.
    #[arg(long = "mdns-interface", value_name = "NAME|IPV4", requires = "lan")]
    pub mdns_interfaces: Vec<String>,
    /// The nodes' credentials.
    #[command(flatten)]
    pub token: super::access::TokenArgs,
}

/// Runs the demo circuit.
///
/// # Errors
/// When the loopback port cannot be bound, a node does not come online, or a tick is not
/// acknowledged by the pin in time.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let mdns = if args.lan {
        Some(Discovery::start(&args.mdns_interfaces)?)
    } else {
        None
    };
    let bind = if args.lan {
        format!("0.0.0.0:{}", args.port)
    } else {
        "127.0.0.1:0".to_string()
    };
    let listener = tokio::net::TcpListener::bind(&bind)
        .await
        .with_context(|| format!("cannot listen on {bind}"))?;
    let port = listener.local_addr()?.port();
    let url = format!("ws://127.0.0.1:{port}");
    if let Some(mdns) = &mdns {
        advertise_circuit(mdns, port)?;
    }
    let shutdown = super::shutdown_on_signal()?;
    // The broker stops last, after the nodes said goodbye.
    let broker_stop = CancellationToken::new();
    let config = broker::Config {
        name: "demo".to_string(),
        ..broker::Config::default()
    };
    let broker = tokio::spawn(broker::run(listener, config, broker_stop.clone()));
    let reach = if args.lan {
        "advertised over mDNS"
    } else {
        "loopback only"
    };
    println!("breadboard demo: broker on {url} ({reach}), nodes clock, pin-1, buzzer");

    let result = circuit(&args, &url, &shutdown).await;

    broker_stop.cancel();
    match timeout(Duration::from_secs(3), broker).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the broker stopped with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "the broker task failed"),
        Err(_) => tracing::warn!("the broker did not stop in time"),
    }
    if let Some(mdns) = mdns {
        mdns.shutdown().await;
    }
    result
}

/// Advertises the demo's broker and nodes, as separate processes would advertise themselves.
fn advertise_circuit(mdns: &Discovery, port: u16) -> anyhow::Result<()> {
    let broker = "demo";
    mdns.advertise(&Advert {
        service_type: discovery::BROKER_TYPE,
        name: broker.into(),
        port,
        txt: discovery::broker_txt(broker, &discovery::BrokerSecurity::default()),
    })?;
    for (name, kind) in [("clock", "clock"), ("pin-1", "pin"), ("buzzer", "buzzer")] {
        mdns.advertise(&Advert {
            service_type: discovery::NODE_TYPE,
            name: name.into(),
            port: 0,
            txt: discovery::node_txt(name, kind, broker),
        })?;
    }
    Ok(())
}

/// Pin and buzzer first, online and subscribed, then the clock until its last tick.
async fn circuit(args: &Args, url: &str, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let nodes_stop = shutdown.child_token();
    let source = BrokerSource::fixed(url);
    let config = |name: &str, kind: &str| {
        let mut config = Config::new(name, kind);
        config.connect = args.token.apply(config.connect);
        config
    };
    let mut pin = runtime::spawn(
        Pin::new(args.pin.options()),
        config("pin-1", "pin"),
        source.clone(),
        nodes_stop.clone(),
    );
    let mut buzzer = runtime::spawn(
        Buzzer::new(),
        config("buzzer", "buzzer"),
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
                config("clock", "clock"),
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
