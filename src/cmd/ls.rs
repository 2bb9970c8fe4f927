//! `breadboard ls`: the brokers and nodes on the LAN, from mDNS/DNS-SD and from the broker's
//! presence (`$SYS/nodes/#`).
//!
//! mDNS says who advertises; the broker's presence says who is connected right now. When both
//! know a node, presence wins: a node killed with SIGKILL leaves its mDNS record behind for
//! 120 s, but its WebSocket closes at once and the broker turns it offline. `ls` then asks mDNS
//! to verify the stale record so that it goes too.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use discovery::{Browser, Discovery, Seen, Service};
use nodes::client::tls::format_fingerprint;
use nodes::client::{Client, ConnectOptions, Messages};
use proto::Encoding;
use serde::Serialize;
use serde_json::Value;

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

/// A broker or a node, as `ls` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    /// `broker` or `node`.
    pub role: &'static str,
    /// Its name.
    pub name: String,
    /// `broker`, or the node's kind.
    pub kind: String,
    /// Where it is: `ip:port` for a broker, the IP (or presence's `ip:port`) for a node.
    pub addr: String,
    /// For a node, the broker it uses.
    pub broker: String,
    /// Unix milliseconds since it is online (presence), else since `ls` first saw it.
    pub since_ms: u64,
    /// Whether it is there now.
    pub online: bool,
    /// Where `ls` learnt of it: `mdns`, `presence`, or `mdns+presence`.
    pub via: String,
    /// Its DNS-SD full name, if advertised.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fullname: Option<String>,
    /// For a broker: whether it serves TLS (`wss://`; TXT `tls=1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,
    /// For a broker serving TLS: the SHA-256 of its certificate it advertises (64 hex digits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// For a broker: whether it asks for credentials (TXT `auth=1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<bool>,
}

/// What presence says of a node.
#[derive(Debug, Clone, PartialEq)]
struct Presence {
    kind: String,
    online: bool,
    since_ms: u64,
    addr: String,
}

/// Everything known, merged. Pure: fed events, it tells what changed.
#[derive(Debug, Default)]
pub struct Registry {
    /// By DNS-SD full name.
    mdns: BTreeMap<String, (Service, u64)>,
    /// By node name.
    presence: BTreeMap<String, Presence>,
    /// The broker presence is read from.
    presence_broker: String,
    /// What was last reported, by (role, name), to print only changes.
    shown: BTreeMap<(&'static str, String), Entry>,
}

/// A change to report.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Arrived, or changed.
    Up(Entry),
    /// Left.
    Down(Entry),
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

impl Registry {
    /// Applies an mDNS event.
    pub fn on_mdns(&mut self, seen: Seen) -> Vec<Change> {
        match seen {
            Seen::Up(service) => {
                let first = self
                    .mdns
                    .get(&service.fullname)
                    .map(|(_, t)| *t)
                    .unwrap_or_else(now_ms);
                self.mdns.insert(service.fullname.clone(), (service, first));
            }
            Seen::Down { fullname, .. } => {
                self.mdns.remove(&fullname);
            }
        }
        self.diff()
    }

    /// Applies a presence message (`$SYS/nodes/<name>`).
    pub fn on_presence(&mut self, name: &str, data: &Value) -> Vec<Change> {
        let presence = Presence {
            kind: data["kind"].as_str().unwrap_or("?").to_string(),
            online: data["online"].as_bool().unwrap_or(false),
            since_ms: data["since"].as_u64().unwrap_or_else(now_ms),
            addr: data["addr"].as_str().unwrap_or("").to_string(),
        };
        self.presence.insert(name.to_string(), presence);
        self.diff()
    }

    /// Names the broker presence comes from.
    pub fn set_presence_broker(&mut self, name: &str) {
        self.presence_broker = name.to_string();
    }

    /// The mDNS full names of nodes that presence says are offline (stale records to verify).
    pub fn stale_records(&self) -> Vec<String> {
        self.mdns
            .values()
            .filter(|(s, _)| s.service_type == discovery::NODE_TYPE)
            .filter(|(s, _)| self.presence.get(&s.name).is_some_and(|p| !p.online))
            .map(|(s, _)| s.fullname.clone())
            .collect()
    }

    /// Every entry, as it stands.
    pub fn entries(&self) -> Vec<Entry> {
        let mut out: BTreeMap<(&'static str, String), Entry> = BTreeMap::new();
        for (service, first) in self.mdns.values() {
            let ip = service
                .addrs
                .first()
                .map(ToString::to_string)
                .unwrap_or_default();
            let broker = service.service_type == discovery::BROKER_TYPE;
            let entry = Entry {
                role: if broker { "broker" } else { "node" },
                name: service.name.clone(),
                kind: if broker {
                    "broker".into()
                } else {
                    service.get("kind").unwrap_or("?").into()
                },
                addr: if broker {
                    format!("{ip}:{}", service.port)
                } else {
                    ip
                },
                broker: service.get("broker").unwrap_or("").into(),
                since_ms: *first,
                online: true,
                via: "mdns".into(),
                fullname: Some(service.fullname.clone()),
                tls: broker.then(|| service.tls()),
                fingerprint: service
                    .fingerprint()
                    .filter(|_| broker)
                    .map(|fp| format_fingerprint(&fp)),
                auth: broker.then(|| service.auth()),
            };
            out.insert((entry.role, entry.name.clone()), entry);
        }
        for (name, p) in &self.presence {
            let entry = out.entry(("node", name.clone())).or_insert_with(|| Entry {
                role: "node",
                name: name.clone(),
                kind: p.kind.clone(),
                addr: p.addr.clone(),
                broker: String::new(),
                since_ms: p.since_ms,
                online: p.online,
                via: String::new(),
                fullname: None,
                tls: None,
                fingerprint: None,
                auth: None,
            });
            entry.via = if entry.fullname.is_some() {
                "mdns+presence"
            } else {
                "presence"
            }
            .into();
            entry.online = p.online;
            entry.since_ms = p.since_ms;
            if entry.broker.is_empty() {
                entry.broker = self.presence_broker.clone();
            }
        }
        out.into_values().collect()
    }

    /// What changed since the last call.
    fn diff(&mut self) -> Vec<Change> {
        let now: BTreeMap<_, _> = self
            .entries()
            .into_iter()
            .filter(|e| e.online)
            .map(|e| ((e.role, e.name.clone()), e))
            .collect();
        let mut changes = Vec::new();
        for (key, old) in &self.shown {
            if !now.contains_key(key) {
                changes.push(Change::Down(old.clone()));
            }
        }
        for (key, entry) in &now {
            let moved = self.shown.get(key).is_none_or(|old| {
                old.addr != entry.addr
                    || old.kind != entry.kind
                    || old.broker != entry.broker
                    || old.fingerprint != entry.fingerprint
                    || old.auth != entry.auth
            });
            if moved {
                changes.push(Change::Up(entry.clone()));
            }
        }
        self.shown = now;
        changes
    }
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
        print_entries(&listing.registry.entries(), args.json)?;
    }
    listing.close().await;
    Ok(())
}

/// The broker `ls` reads presence from, connected and subscribed to `$SYS/nodes/+`.
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
                    Some((name, data)) => self.registry.on_presence(&name, &data),
                    None => {
                        self.presence_lost(args)?;
                        continue;
                    }
                },
            };
            self.verify_stale();
            if args.watch {
                for change in changes {
                    print_change(&change, args.json)?;
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

/// Connects to the broker at `url` and subscribes to its presence.
async fn connect_presence(
    url: &str,
    fullname: Option<String>,
    options: ConnectOptions,
) -> anyhow::Result<PresenceFeed> {
    let (client, messages) = Client::connect(url, options).await?;
    client
        .subscribe(format!("{}/nodes/+", proto::SYS_PREFIX))
        .await?;
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

async fn next_presence(presence: &mut Option<PresenceFeed>) -> Option<(String, Value)> {
    let Some(PresenceFeed { messages, .. }) = presence else {
        return std::future::pending().await;
    };
    loop {
        let msg = messages.recv().await?;
        if let Some(name) = msg.topic.as_str().rsplit('/').next() {
            return Some((name.to_string(), msg.data));
        }
    }
}

fn age(since_ms: u64) -> String {
    let secs = now_ms().saturating_sub(since_ms) / 1000;
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

/// The listing at the end of a run without `--watch`: JSON, or a table.
fn print_entries(entries: &[Entry], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(entries)?);
    } else {
        print_table(entries);
    }
    Ok(())
}

/// The TLS column: `-` for a node, `no`, or the start of the advertised fingerprint.
fn tls_cell(e: &Entry) -> String {
    match (e.tls, &e.fingerprint) {
        (None, _) => "-".into(),
        (Some(false), _) => "no".into(),
        (Some(true), Some(fp)) => format!("sha256:{}", &fp[..fp.len().min(12)]),
        (Some(true), None) => "yes".into(),
    }
}

/// The AUTH column: `-` for a node, else whether the broker asks for credentials.
fn auth_cell(e: &Entry) -> String {
    match e.auth {
        None => "-",
        Some(true) => "token",
        Some(false) => "open",
    }
    .into()
}

fn print_table(entries: &[Entry]) {
    let rows: Vec<[String; 9]> = entries
        .iter()
        .map(|e| {
            [
                e.role.to_string(),
                e.name.clone(),
                e.kind.clone(),
                e.addr.clone(),
                e.broker.clone(),
                tls_cell(e),
                auth_cell(e),
                age(e.since_ms),
                if e.online { "online" } else { "offline" }.to_string(),
            ]
        })
        .collect();
    let header = [
        "ROLE", "NAME", "KIND", "ADDRESS", "BROKER", "TLS", "AUTH", "AGE", "STATUS",
    ]
    .map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    if rows.is_empty() {
        println!("(nothing seen yet: is a broker running with mDNS on this LAN?)");
    }
}

fn print_change(change: &Change, json: bool) -> anyhow::Result<()> {
    let (sign, event, entry) = match change {
        Change::Up(e) => ('+', "up", e),
        Change::Down(e) => ('-', "down", e),
    };
    if json {
        let mut value = serde_json::to_value(entry)?;
        value["event"] = event.into();
        value["at_ms"] = now_ms().into();
        println!("{value}");
    } else {
        let security = match entry.role {
            "broker" => format!("  tls {}  auth {}", tls_cell(entry), auth_cell(entry)),
            _ => String::new(),
        };
        println!(
            "{sign} {:<6} {:<16} {:<8} {:<21} {}{security}",
            entry.role, entry.name, entry.kind, entry.addr, entry.broker
        );
    }
    use std::io::Write;
    std::io::stdout().flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node(name: &str) -> Service {
        Service {
            fullname: format!("{name}.{}", discovery::NODE_TYPE),
            service_type: discovery::NODE_TYPE.into(),
            name: name.into(),
            addrs: vec!["10.0.0.2".parse().unwrap()],
            port: 0,
            txt: discovery::node_txt(name, "pin", "b").into_iter().collect(),
        }
    }

    #[test]
    fn mdns_arrival_and_goodbye() {
        let mut r = Registry::default();
        let up = r.on_mdns(Seen::Up(node("pin-1")));
        assert!(matches!(&up[..], [Change::Up(e)] if e.name == "pin-1" && e.kind == "pin"));
        // A repeated ServiceResolved is not a new arrival.
        assert!(r.on_mdns(Seen::Up(node("pin-1"))).is_empty());
        let down = r.on_mdns(Seen::Down {
            fullname: node("pin-1").fullname,
            service_type: discovery::NODE_TYPE.into(),
        });
        assert!(matches!(&down[..], [Change::Down(e)] if e.name == "pin-1"));
    }

    #[test]
    fn presence_offline_wins_over_a_stale_mdns_record() {
        let mut r = Registry::default();
        r.on_mdns(Seen::Up(node("pin-1")));
        let online = json!({"kind":"pin","online":true,"since":1,"addr":"10.0.0.2:5000"});
        assert!(r.on_presence("pin-1", &online).is_empty());
        let offline = json!({"kind":"pin","online":false,"since":2,"addr":"10.0.0.2:5000"});
        let down = r.on_presence("pin-1", &offline);
        assert!(matches!(&down[..], [Change::Down(e)] if e.name == "pin-1"));
        assert_eq!(r.stale_records(), vec![node("pin-1").fullname]);
        assert!(!r.entries()[0].online);
    }

    fn broker(name: &str, security: &discovery::BrokerSecurity) -> Service {
        Service {
            fullname: format!("{name}.{}", discovery::BROKER_TYPE),
            service_type: discovery::BROKER_TYPE.into(),
            name: name.into(),
            addrs: vec!["10.0.0.1".parse().unwrap()],
            port: 8765,
            txt: discovery::broker_txt(name, security).into_iter().collect(),
        }
    }

    #[test]
    fn brokers_show_whether_they_ask_for_tls_and_credentials() {
        let mut r = Registry::default();
        r.on_mdns(Seen::Up(broker(
            "open",
            &discovery::BrokerSecurity::default(),
        )));
        let secure = discovery::BrokerSecurity {
            tls_fingerprint: Some("ab".repeat(32)),
            auth: true,
        };
        r.on_mdns(Seen::Up(broker("secure", &secure)));
        r.on_mdns(Seen::Up(node("pin-1")));
        let entries = r.entries();
        let open = entries.iter().find(|e| e.name == "open").unwrap();
        assert_eq!((open.tls, open.auth), (Some(false), Some(false)));
        assert_eq!(
            (tls_cell(open), auth_cell(open)),
            ("no".into(), "open".into())
        );
        let secure = entries.iter().find(|e| e.name == "secure").unwrap();
        assert_eq!(secure.fingerprint.as_deref(), Some(&*"ab".repeat(32)));
        assert_eq!(tls_cell(secure), "sha256:abababababab");
        assert_eq!(auth_cell(secure), "token");
        let pin = entries.iter().find(|e| e.name == "pin-1").unwrap();
        assert_eq!((tls_cell(pin), auth_cell(pin)), ("-".into(), "-".into()));
        let json = serde_json::to_value(secure).unwrap();
        assert_eq!(json["tls"], true);
        assert_eq!(json["auth"], true);
        assert!(serde_json::to_value(pin).unwrap().get("tls").is_none());
    }

    #[test]
    fn presence_alone_lists_nodes_without_mdns() {
        let mut r = Registry::default();
        r.set_presence_broker("ws://127.0.0.1:8765");
        let up = r.on_presence(
            "clock",
            &json!({"kind":"clock","online":true,"since":5,"addr":"127.0.0.1:4000"}),
        );
        assert!(
            matches!(&up[..], [Change::Up(e)] if e.via == "presence" && e.broker == "ws://127.0.0.1:8765")
        );
    }
}
