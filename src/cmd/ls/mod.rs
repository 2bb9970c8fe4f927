//! `breadboard ls`: the brokers and nodes on the LAN, from mDNS/DNS-SD and from one broker's
//! presence (`$SYS/nodes/+`) and, when that broker is part of a cluster, the cluster's brokers
//! (`$SYS/brokers/+`).
//!
//! mDNS says who advertises; the broker says who is connected right now, and through the
//! cluster which brokers are alive, those on other LANs included. When both know something,
//! the broker wins (see [`registry`]); `ls` then asks mDNS to verify the stale record so that
//! it goes too.
//!
//! - [`registry`]: the merging, pure: events in, entries and changes out.
//! - [`print`]: the table, JSON and `--watch` lines.
//! - this module: the flags, and the listening (mDNS browsers, the broker's feed).

mod print;
mod registry;

use std::time::Duration;

use anyhow::Context;
use discovery::{Browser, Discovery, Seen, Service};
use nodes::client::{Client, ConnectOptions, Messages};
use proto::Encoding;
use serde_json::Value;

use registry::{Change, Registry};

/// Flags of `breadboard ls`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Seconds to listen before printing the table.
    #[arg(long, default_value_t = 3.0)]
    pub wait: f64,
    /// Print JSON (an array; with --watch, one object per line and event).
    #[arg(long)]
    pub json: bool,
    /// Keep running and print arrivals and departures as they happen.
    #[arg(long)]
    pub watch: bool,
    /// Read presence from this broker (default: the first broker found over mDNS).
    #[arg(long, value_name = "ws[s]://HOST:PORT")]
    pub broker: Option<String>,
    #[command(flatten)]
    pub mdns: super::MdnsArgs,
    #[command(flatten)]
    pub access: super::access::AccessArgs,
}

/// Lists brokers and nodes.
///
/// # Errors
/// When neither mDNS nor a broker can be used.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let wait = Duration::try_from_secs_f64(args.wait).context("--wait is not a duration")?;
    let mut listing = Listing::start(&args).await?;
    listing.listen(&args, wait).await?;
    if !args.watch {
        print::entries(&listing.registry.entries(), args.json)?;
    }
    listing.close().await;
    Ok(())
}

/// The broker `ls` reads presence from, connected and subscribed to `$SYS/nodes/+` and
/// `$SYS/brokers/+`.
struct PresenceFeed {
    client: Client,
    messages: Messages,
    /// The broker's DNS-SD full name when it was found over mDNS: when the connection drops,
    /// mDNS is asked to verify it.
    fullname: Option<String>,
}

/// What `ls` listens to, and what it has learnt.
struct Listing {
    /// How to connect to a broker for presence: `--token`, and `--ca` or `--fingerprint`
    /// (else a broker found over mDNS is pinned to the fingerprint it advertises).
    options: ConnectOptions,
    /// mDNS, unless `--no-mdns`.
    discovery: Option<Discovery>,
    /// Brokers advertised over mDNS (`None` once the browse ends, or without mDNS).
    brokers: Option<Browser>,
    /// Nodes advertised over mDNS, likewise.
    nodes: Option<Browser>,
    /// Presence, once a broker is known (`--broker`, or the first found over mDNS).
    presence: Option<PresenceFeed>,
    /// Everything heard, merged: what is printed.
    registry: Registry,
}

impl Listing {
    /// Starts browsing mDNS and, with `--broker`, reading presence from it.
    ///
    /// # Errors
    /// mDNS cannot start, or neither it nor a broker is there to be used.
    async fn start(args: &Args) -> anyhow::Result<Self> {
        let discovery = args.mdns.start()?;
        anyhow::ensure!(
            discovery.is_some() || args.broker.is_some(),
            "with --no-mdns, give --broker ws://host:port to read presence from"
        );
        let (brokers, nodes) = match &discovery {
            Some(d) => (
                Some(d.browse(discovery::BROKER_TYPE)?),
                Some(d.browse(discovery::NODE_TYPE)?),
            ),
            None => (None, None),
        };
        let mut registry = Registry::default();
        let mut presence = None;
        let options = args
            .access
            .apply(ConnectOptions::with_encoding(Encoding::Json))?;
        if let Some(url) = &args.broker {
            presence = Some(connect_presence(url, None, options.clone()).await?);
            registry.set_presence_broker(url);
        }
        Ok(Self {
            options,
            discovery,
            brokers,
            nodes,
            presence,
            registry,
        })
    }

    /// Takes in mDNS events and presence until a signal or, without `--watch`, until `wait`
    /// is over; with `--watch`, prints changes as they come.
    ///
    /// # Errors
    /// The broker given with `--no-mdns` went away, or printing failed.
    async fn listen(&mut self, args: &Args, wait: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        let shutdown = super::shutdown_on_signal()?;
        loop {
            let changes = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = &mut deadline, if !args.watch => break,
                seen = next_seen(&mut self.brokers) => {
                    let Some(seen) = seen else { self.brokers = None; continue };
                    self.on_broker(seen).await
                }
                seen = next_seen(&mut self.nodes) => {
                    let Some(seen) = seen else { self.nodes = None; continue };
                    self.registry.on_mdns(seen)
                }
                msg = next_presence(&mut self.presence) => match msg {
                    Some(Heard::Node(name, data)) => self.registry.on_presence(&name, &data),
                    Some(Heard::Broker(name, data)) => {
                        self.registry.on_cluster_broker(&name, &data)
                    }
                    None => {
                        self.presence_lost(args)?;
                        continue;
                    }
                },
            };
            self.verify_stale();
            if args.watch {
                for change in changes {
                    print::change(&change, args.json)?;
                }
            }
        }
        Ok(())
    }

    /// A broker came or went over mDNS; the first to come is where presence is read from
    /// (unless `--broker` named one).
    async fn on_broker(&mut self, seen: Seen) -> Vec<Change> {
        if let Seen::Up(service) = &seen {
            if self.presence.is_none() {
                self.read_presence_from(service).await;
            }
        }
        self.registry.on_mdns(seen)
    }

    /// Reads presence from a broker found over mDNS, if it speaks this protocol version; one
    /// that cannot be read is only logged: mDNS still lists it.
    async fn read_presence_from(&mut self, service: &Service) {
        let Some(url) = service.broker_url() else {
            return;
        };
        if service.proto_version() != Some(proto::PROTOCOL_VERSION) {
            return;
        }
        let options = self.options.pinning_discovered(service.fingerprint());
        match connect_presence(&url, Some(service.fullname.clone()), options).await {
            Ok(feed) => {
                self.registry.set_presence_broker(&service.name);
                self.presence = Some(feed);
            }
            Err(e) => tracing::warn!(%url, error = format!("{e:#}"), "cannot read presence"),
        }
    }

    /// The broker presence came from went away: mDNS is asked whether it is still there, and
    /// the next broker it finds takes over. Without mDNS, nothing is left to listen to.
    ///
    /// # Errors
    /// The broker was the only source (`--broker` with `--no-mdns`).
    fn presence_lost(&mut self, args: &Args) -> anyhow::Result<()> {
        if let Some(feed) = self.presence.take() {
            if let (Some(d), Some(fullname)) = (&self.discovery, &feed.fullname) {
                d.verify(fullname);
            }
        }
        if args.broker.is_some() && self.discovery.is_none() {
            anyhow::bail!("lost the connection to the broker");
        }
        Ok(())
    }

    /// Asks mDNS to verify the records of nodes that presence says are offline, so that the
    /// records a killed node left behind go.
    fn verify_stale(&self) {
        if let Some(d) = &self.discovery {
            for fullname in self.registry.stale_records() {
                d.verify(&fullname);
            }
        }
    }

    /// Says goodbye to the presence broker and stops mDNS.
    async fn close(self) {
        if let Some(feed) = self.presence {
            feed.client.close().await;
        }
        if let Some(d) = self.discovery {
            d.shutdown().await;
        }
    }
}

/// Connects to the broker at `url` and subscribes to its presence and its cluster's brokers.
/// A refused `$SYS/brokers/+` (a user allowed presence only) leaves the brokers out.
async fn connect_presence(
    url: &str,
    fullname: Option<String>,
    options: ConnectOptions,
) -> anyhow::Result<PresenceFeed> {
    let (client, messages) = Client::connect(url, options).await?;
    client
        .subscribe(format!("{}/nodes/+", proto::SYS_PREFIX))
        .await?;
    if let Err(e) = client
        .subscribe(format!("{}/brokers/+", proto::SYS_PREFIX))
        .await
    {
        tracing::warn!(%url, error = %e, "cannot read the cluster's brokers");
    }
    Ok(PresenceFeed {
        client,
        messages,
        fullname,
    })
}

async fn next_seen(browser: &mut Option<Browser>) -> Option<Seen> {
    match browser {
        Some(b) => b.next().await,
        None => std::future::pending().await,
    }
}

/// A message of the broker's feed.
enum Heard {
    /// `$SYS/nodes/<name>`: presence.
    Node(String, Value),
    /// `$SYS/brokers/<name>`: a broker of the cluster.
    Broker(String, Value),
}

async fn next_presence(presence: &mut Option<PresenceFeed>) -> Option<Heard> {
    let Some(PresenceFeed { messages, .. }) = presence else {
        return std::future::pending().await;
    };
    let nodes = format!("{}/nodes/", proto::SYS_PREFIX);
    let brokers = format!("{}/brokers/", proto::SYS_PREFIX);
    loop {
        let msg = messages.recv().await?;
        let topic = msg.topic.as_str();
        if let Some(name) = topic.strip_prefix(&nodes) {
            return Some(Heard::Node(name.to_string(), msg.data));
        }
        if let Some(name) = topic.strip_prefix(&brokers) {
            return Some(Heard::Broker(name.to_string(), msg.data));
        }
    }
}
