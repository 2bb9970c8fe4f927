//! `breadboard node <kind> [--broker URL] [--name N] [kind flags]`: runs one built-in node
//! (see `nodes::kinds`) until it stops by itself (a clock with `--tacks`), or Ctrl-C / SIGTERM.
//!
//! Each kind registered in [`kinds`] becomes a subcommand with the common flags plus its own,
//! so that `breadboard node --help` lists the kinds and `breadboard node pin --help` the pin's
//! flags.

mod kinds;

use std::sync::Arc;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{ArgMatches, Args as _, Command, FromArgMatches};
use discovery::{Advert, Discovery};
use nodes::peer::PeerOptions;
use nodes::runtime::{self, BrokerSource, Config, Status};

use kinds::Kind;
pub use kinds::PinFlags;

/// Flags of `breadboard node`: the kind (a subcommand) and its flags, parsed by the kind.
#[derive(Debug)]
pub struct Args {
    kind: &'static Kind,
    matches: ArgMatches,
}

impl FromArgMatches for Args {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let (name, sub) = matches.subcommand().ok_or_else(|| {
            clap::Error::raw(ErrorKind::MissingSubcommand, "which kind of node?\n")
        })?;
        let kind = kinds::find(name).ok_or_else(|| {
            clap::Error::raw(
                ErrorKind::InvalidSubcommand,
                format!("unknown kind {name:?}\n"),
            )
        })?;
        Ok(Self {
            kind,
            matches: sub.clone(),
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl clap::Args for Args {
    fn augment_args(cmd: Command) -> Command {
        cmd.subcommand_required(true)
            .disable_help_subcommand(true)
            .subcommand_value_name("KIND")
            .subcommands(kinds::KINDS.iter().map(command))
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

/// The flags every kind takes.
#[derive(clap::Args, Debug)]
struct Common {
    /// The broker's WebSocket address (ws:// or wss://). Without it the node finds a broker
    /// over mDNS (or, with --no-mdns, uses ws://127.0.0.1:8765).
    #[arg(short, long, env = "BREADBOARD_BROKER")]
    broker: Option<String>,
    /// Over mDNS, use the broker with this name, and no other (default: the first one found).
    #[arg(long, conflicts_with = "broker")]
    broker_name: Option<String>,
    /// Over mDNS, use the broker with this name whenever it is there, and another meanwhile
    /// (for brokers of one cluster, which are one topic space).
    #[arg(long, conflicts_with_all = ["broker", "broker_name"])]
    prefer_broker: Option<String>,
    /// Peer mode: with no broker found over mDNS for this long, the nodes on the LAN elect one
    /// of themselves to host it (`2`, `2s`, `500ms`).
    #[arg(long, default_value = "2s", value_parser = super::parse_duration)]
    peer_after: Duration,
    /// In a peer-mode election, a higher priority wins (0 to 255).
    #[arg(long, default_value_t = nodes::peer::DEFAULT_PRIORITY)]
    peer_priority: u8,
    /// Never host a broker: wait for one.
    #[arg(long)]
    no_peer: bool,
    #[command(flatten)]
    mdns: super::MdnsArgs,
    #[command(flatten)]
    access: super::access::AccessArgs,
    /// The node's name, unique on the broker (default: the kind's usual name, such as pin-1).
    #[arg(short, long)]
    name: Option<String>,
    /// Seconds a request waits for its reply.
    #[arg(long, default_value = "5", value_parser = super::parse_seconds)]
    request_timeout: Duration,
}

/// The command line of one kind: the common flags plus the kind's own.
fn command(kind: &Kind) -> Command {
    // `about` last: the derived flag structs bring their own doc comment as one.
    Common::augment_args(kind.augment_args(Command::new(kind.name))).about(kind.about)
}

/// Runs the node.
///
/// # Errors
/// When the node fails (a clock whose tick nobody acknowledged in time with `--expect`, a name
/// already taken, a broker URL that is not `ws://` or `wss://`, a CA file that cannot be read).
pub async fn run(args: Args) -> anyhow::Result<()> {
    let Args { kind, matches } = args;
    let common = Common::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let node = kind.build(&matches).unwrap_or_else(|e| e.exit());
    let name = common.name.unwrap_or_else(|| kind.default_name.to_string());
    let mut config = Config::new(name.clone(), kind.name);
    config.request_timeout = common.request_timeout;
    // A broker found over mDNS is pinned to its advertised fingerprint by the runtime, unless
    // --ca or --fingerprint set a trust here.
    config.connect = common.access.apply(config.connect)?;
    let shutdown = super::shutdown_on_signal()?;
    let mdns = match &common.broker {
        // Given an address, a node needs no discovery (it still advertises itself).
        Some(_) if common.mdns.no_mdns => None,
        _ => common.mdns.start()?.map(Arc::new),
    };
    // Peer mode's task (when it runs) holds the mDNS daemon too; it is stopped first at the end.
    let peer_stop = shutdown.child_token();
    let mut peer_task = None;
    let (source, choice) = match (&common.broker, &mdns) {
        (Some(url), _) => (BrokerSource::fixed(url.clone()), None),
        (None, None) => (BrokerSource::fixed(nodes::DEFAULT_BROKER), None),
        (None, Some(mdns)) => {
            // --broker-name waits for that broker alone: no peer mode.
            let peer = !common.no_peer && common.broker_name.is_none();
            let wanted = discovery::Wanted::from_flags(common.broker_name, common.prefer_broker);
            let choice = if peer {
                let options = PeerOptions {
                    after: common.peer_after,
                    priority: common.peer_priority,
                };
                let (choice, task) = nodes::peer::follow_or_host(
                    mdns.clone(),
                    &name,
                    wanted,
                    options,
                    peer_stop.clone(),
                )?;
                peer_task = Some(task);
                choice
            } else {
                discovery::follow_brokers(mdns, wanted, shutdown.clone())?
            };
            (BrokerSource::discovered(choice.clone()), Some(choice))
        }
    };
    let handle = runtime::spawn(node, config, source, shutdown.clone());
    let Some(mdns) = mdns else {
        return Ok(handle.join().await?);
    };
    let mut status = handle.status.clone();
    let join = handle.join();
    tokio::pin!(join);
    advertise(&mdns, &name, kind.name, "");
    let result = loop {
        tokio::select! {
            result = &mut join => break result,
            changed = status.changed() => {
                if changed.is_err() {
                    continue;
                }
                let now = status.borrow_and_update().clone();
                match now {
                    Status::Online { url } => {
                        let broker = choice
                            .as_ref()
                            .and_then(|c| c.borrow().clone())
                            .map_or(url, |c| c.name);
                        advertise(&mdns, &name, kind.name, &broker);
                    }
                    // The WebSocket dropped: do not wait 120 s for the record to expire;
                    // ask whether the broker is still there.
                    Status::Offline => {
                        if let Some(current) = choice.as_ref().and_then(|c| c.borrow().clone()) {
                            mdns.verify(&current.fullname);
                        }
                    }
                    _ => {}
                }
            }
        }
    };
    peer_stop.cancel();
    if let Some(task) = peer_task {
        let _ = task.await;
    }
    // Goodbye packets: peers see the node leave in about a second.
    match Arc::try_unwrap(mdns) {
        Ok(mdns) => mdns.shutdown().await,
        Err(_) => tracing::warn!("mDNS still in use at exit: no goodbye sent"),
    }
    Ok(result?)
}

/// Advertises the node over DNS-SD, or updates its TXT record (the broker it uses) when
/// called again.
fn advertise(mdns: &Discovery, name: &str, kind: &str, broker: &str) {
    let advert = Advert {
        service_type: discovery::NODE_TYPE,
        name: name.to_string(),
        port: 0,
        txt: discovery::node_txt(name, kind, broker),
    };
    if let Err(e) = mdns.advertise(&advert) {
        tracing::warn!(error = %e, "cannot advertise the node over mDNS");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        let cmd = Args::augment_args(Command::new("node").no_binary_name(true));
        Args::from_arg_matches(&cmd.try_get_matches_from(argv)?)
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Args::augment_args(Command::new("node")).debug_assert();
    }

    #[test]
    fn each_kind_takes_the_common_flags_and_its_own() {
        let args = parse(&[
            "pin",
            "--broker",
            "ws://127.0.0.1:1",
            "-n",
            "pin-2",
            "--seed",
            "3",
        ])
        .unwrap();
        assert_eq!(args.kind.name, "pin");
        let common = Common::from_arg_matches(&args.matches).unwrap();
        assert_eq!(common.broker.as_deref(), Some("ws://127.0.0.1:1"));
        assert_eq!(common.name.as_deref(), Some("pin-2"));
        args.kind.build(&args.matches).unwrap();
        assert!(parse(&["clock", "-t", "3", "-d", "0.5"]).is_ok());
        assert!(parse(&["led"]).is_err());
        assert!(parse(&["pin", "--tacks", "3"]).is_err());
    }
}
