//! `breadboard`: the command line. Thin on purpose: it parses flags, builds the libraries'
//! configurations and calls them. Each subcommand lives in its own module under `cmd/`.

mod cmd;

use clap::{Parser, Subcommand};

/// A pub/sub message broker for the LAN, with zero-configuration discovery.
#[derive(Parser)]
#[command(name = "breadboard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker.
    Broker(cmd::broker::Args),
    /// Run one node (clock, pin, buzzer, ...).
    Node(cmd::node::Args),
    /// Run the demo circuit (a broker, a clock, a pin and a buzzer) in one process.
    Demo(cmd::demo::Args),
    /// Print the messages published on topics matching the filters.
    Sub(cmd::sub::Args),
    /// Publish messages.
    Pub(cmd::publish::Args),
    /// Send a request and print the first reply.
    Req(cmd::req::Args),
    /// List the brokers and nodes seen on the LAN.
    Ls(cmd::ls::Args),
    /// Measure the broker: throughput, latency, memory per connection.
    Bench(cmd::bench::Args),
    /// Hash a token for the auth file (read from standard input, or --generate one).
    Passwd(cmd::passwd::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The demo's stdout is the circuit's conversation: keep the broker's routine logs out of it.
    let quiet = matches!(cli.command, Command::Demo(_));
    cmd::init_tracing(if quiet { "warn" } else { "info,mdns_sd=error" });
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Broker(args) => cmd::broker::run(args).await,
            Command::Node(args) => cmd::node::run(args).await,
            Command::Demo(args) => cmd::demo::run(args).await,
            Command::Sub(args) => cmd::sub::run(args).await,
            Command::Pub(args) => cmd::publish::run(args).await,
            Command::Req(args) => cmd::req::run(args).await,
            Command::Ls(args) => cmd::ls::run(args).await,
            Command::Bench(args) => cmd::bench::run(args).await,
            Command::Passwd(args) => cmd::passwd::run(args),
        }
    })
}
