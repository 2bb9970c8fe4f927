//! `breadboard broker`: binds the port, prints the address, runs until Ctrl-C or SIGTERM.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use discovery::Advert;

/// Flags of `breadboard broker`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to listen on (host or IP). `0.0.0.0` serves the whole LAN.
    #[arg(short = 's', long = "socket", default_value = "0.0.0.0")]
    pub host: String,
    /// Port to listen on; 0 picks a free one (printed at start-up).
    #[arg(short, long, default_value_t = 8765)]
    pub port: u16,
    /// The broker's name (dashboard, DNS-SD). Default: the host name.
    #[arg(long)]
    pub name: Option<String>,
    /// Largest frame accepted, in bytes; a frame over twice this closes the connection.
    #[arg(long, default_value_t = proto::DEFAULT_MAX_FRAME_BYTES)]
    pub max_frame_bytes: usize,
    /// Most subscriptions one connection may hold.
    #[arg(long, default_value_t = broker::Config::default().max_subscriptions)]
    pub max_subscriptions: usize,
    /// Items a client may have queued: a memory guard only (the byte budget comes first).
    #[arg(long, default_value_t = broker::Config::default().outbox_frames)]
    pub outbox_frames: usize,
    /// Bytes a client may have queued before it is cut off as a slow consumer.
    #[arg(long, default_value_t = broker::Config::default().outbox_bytes)]
    pub outbox_bytes: usize,
    /// How long a client's socket may accept nothing while frames wait before it is cut off
    /// as a slow consumer (`10`, `10s`, `1m`...).
    #[arg(long, default_value = "10s", value_parser = super::parse_duration)]
    pub write_deadline: Duration,
    /// Bytes all clients may have queued together; past it, the largest backlogs are cut off.
    #[arg(long, default_value_t = broker::Config::default().max_backlog_bytes)]
    pub max_backlog_bytes: usize,
    /// Most topics clients may keep a retained value on (past it: `err` `retained_full`).
    #[arg(long, default_value_t = broker::Config::default().max_retained)]
    pub max_retained: usize,
    /// Most bytes of retained values clients may keep (topic plus value as JSON, each).
    #[arg(long, default_value_t = broker::Config::default().max_retained_bytes)]
    pub max_retained_bytes: usize,
    /// Most WebSocket connections at once (past it, HTTP 503). Default: the open-file limit
    /// less a margin.
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// How long an offline name's presence (`$SYS/nodes/<name>`) is kept (`24h`, `90m`...).
    #[arg(long, default_value = "24h", value_parser = super::parse_duration)]
    pub presence_ttl: Duration,
    /// Where retained values and presence are kept across restarts and crashes. Default: a
    /// directory per broker name under `$XDG_STATE_HOME/breadboard/` (else
    /// `~/.local/state/breadboard/`).
    #[arg(long, value_name = "DIR", conflicts_with = "in_memory")]
    pub data_dir: Option<PathBuf>,
    /// Keep nothing on disk: retained values and presence last as long as the process.
    #[arg(long)]
    pub in_memory: bool,
    /// Seconds between keepalive pings to a client; silent for twice this, it is dropped.
    #[arg(long, default_value_t = 30.0)]
    pub keepalive: f64,
    /// Seconds between publications of `$SYS/broker/stats`; 0 turns them off.
    #[arg(long, default_value_t = 10.0)]
    pub stats_interval: f64,
    /// The auth file (TOML: users, argon2id tokens, publish/subscribe permissions). Without
    /// it, anyone who reaches the port may do anything. `kill -HUP` reloads it.
    #[arg(long, value_name = "FILE")]
    pub auth: Option<PathBuf>,
    /// An origin whose web pages may open WebSockets here, besides the broker's own
    /// (`https://app.example:8443`; `*` allows any). Repeatable.
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    pub allow_origins: Vec<String>,
    /// TLS certificate chain (PEM): serve wss:// and https:// on the port.
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_key",
        conflicts_with = "tls_self_signed"
    )]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve TLS with a certificate the broker makes itself on first start and keeps in its
    /// data directory; its fingerprint is advertised over mDNS for nodes to pin.
    #[arg(long)]
    pub tls_self_signed: bool,
    /// NATS servers of the cluster to join (`nats://host:4222`, comma-separated or repeated):
    /// brokers given the same servers and --cluster-name form one topic space.
    #[arg(long, value_name = "URL", value_delimiter = ',')]
    pub cluster: Vec<String>,
    /// The cluster's name: its subject prefix in NATS is `bb.<name>.`.
    #[arg(long, default_value = "breadboard", requires = "cluster")]
    pub cluster_name: String,
    /// A token for the NATS servers.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "BREADBOARD_CLUSTER_TOKEN",
        requires = "cluster"
    )]
    pub cluster_token: Option<String>,
    /// A NATS credentials file (`.creds`).
    #[arg(long, value_name = "FILE", requires = "cluster")]
    pub cluster_creds: Option<PathBuf>,
    /// A CA certificate (PEM) for NATS servers that speak TLS.
    #[arg(long, value_name = "FILE", requires = "cluster")]
    pub cluster_ca: Option<PathBuf>,
    #[command(flatten)]
    pub mdns: super::MdnsArgs,
}

/// The machine's host name, the broker's default name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "breadboard".to_string())
}

/// `$XDG_STATE_HOME/breadboard/<name>`, else `~/.local/state/breadboard/<name>`.
///
/// # Errors
/// Neither variable is set (or the name cannot be a directory name).
pub fn default_data_dir(name: &str) -> anyhow::Result<PathBuf> {
    anyhow::ensure!(
        !name.is_empty() && !name.contains(['/', '\\']) && name != "." && name != "..",
        "the broker name {name:?} cannot name a data directory: give --data-dir or --in-memory"
    );
    let state = match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home = std::env::var_os("HOME").filter(|v| !v.is_empty()).context(
                "neither XDG_STATE_HOME nor HOME is set: give --data-dir or --in-memory",
            )?;
            PathBuf::from(home).join(".local").join("state")
        }
    };
    Ok(state.join("breadboard").join(name))
}

/// Where a self-signed certificate is kept, and the host name it is made for.
struct TlsPlace {
    data_dir: Option<PathBuf>,
    host: String,
}

/// The TLS certificate the flags ask for, if any.
fn tls_identity(args: &Args, place: &TlsPlace) -> anyhow::Result<Option<broker::tls::TlsIdentity>> {
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let identity = broker::tls::TlsIdentity::from_pem_files(cert, key)
            .context("cannot use --tls-cert/--tls-key")?;
        return Ok(Some(identity));
    }
    if !args.tls_self_signed {
        return Ok(None);
    }
    if place.data_dir.is_none() {
        tracing::warn!("--tls-self-signed with --in-memory: a new certificate (and fingerprint) at every start");
    }
    let identity = broker::tls::TlsIdentity::self_signed(place.data_dir.as_deref(), &place.host)
        .context("cannot set up --tls-self-signed")?;
    Ok(Some(identity))
}

/// Reloads the auth file on `SIGHUP`; without one, says there is nothing to reload (rather
/// than letting the signal end the broker).
fn reload_on_hangup(auth: Option<std::sync::Arc<broker::auth::Auth>>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            let Some(auth) = &auth else {
                tracing::info!("SIGHUP: no auth file to reload");
                continue;
            };
            match auth.reload() {
                Ok(users) => {
                    tracing::info!(users, file = %auth.path().display(), "auth file reloaded")
                }
                Err(e) => tracing::error!("auth file not reloaded, the rules in force stay: {e}"),
            }
        }
    });
    Ok(())
}

/// The addresses a broker bound to `addr` can be reached on: every interface's for `0.0.0.0`.
fn reachable_on(addr: std::net::SocketAddr) -> String {
    if !addr.ip().is_unspecified() {
        return addr.to_string();
    }
    let ips: Vec<String> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter(|i| !i.is_loopback() && i.ip().is_ipv4() == addr.is_ipv4())
        .map(|i| format!("{}:{}", i.ip(), addr.port()))
        .collect();
    if ips.is_empty() {
        addr.to_string()
    } else {
        ips.join(", ")
    }
}

fn seconds(name: &str, value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .with_context(|| format!("--{name} {value} is not a duration in seconds"))
}

/// Runs the broker until Ctrl-C or SIGTERM.
///
/// # Errors
/// When the address cannot be bound or a flag is invalid.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let keepalive = seconds("keepalive", args.keepalive)?;
    anyhow::ensure!(!keepalive.is_zero(), "--keepalive must be more than 0");
    anyhow::ensure!(
        !args.write_deadline.is_zero(),
        "--write-deadline must be more than 0"
    );
    anyhow::ensure!(
        !args.presence_ttl.is_zero(),
        "--presence-ttl must be more than 0"
    );
    let stats = seconds("stats-interval", args.stats_interval)?;
    let name = args.name.clone().unwrap_or_else(host_name);
    let data_dir = match (args.in_memory, &args.data_dir) {
        (true, _) => None,
        (false, Some(dir)) => Some(dir.clone()),
        (false, None) => Some(default_data_dir(&name)?),
    };
    let name_for_tls = TlsPlace {
        data_dir: data_dir.clone(),
        host: host_name(),
    };
    let config = broker::Config {
        name,
        data_dir,
        max_frame_bytes: args.max_frame_bytes,
        max_subscriptions: args.max_subscriptions,
        outbox_frames: args.outbox_frames,
        outbox_bytes: args.outbox_bytes,
        write_deadline: args.write_deadline,
        max_backlog_bytes: args.max_backlog_bytes,
        max_retained: args.max_retained,
        max_connections: args
            .max_connections
            .unwrap_or_else(broker::config::default_max_connections),
        presence_ttl: Some(args.presence_ttl),
        max_retained_bytes: args.max_retained_bytes,
        keepalive,
        stats_interval: (!stats.is_zero()).then_some(stats),
        auth_file: args.auth.clone(),
        allow_origins: args.allow_origins.clone(),
        tls: tls_identity(&args, &name_for_tls)?,
        cluster: (!args.cluster.is_empty()).then(|| broker::cluster::ClusterConfig {
            urls: args.cluster.clone(),
            name: args.cluster_name.clone(),
            token: args.cluster_token.clone(),
            creds: args.cluster_creds.clone(),
            ca: args.cluster_ca.clone(),
        }),
        ..broker::Config::default()
    };
    // The data directory is opened before anything is bound: a locked or corrupt one stops
    // the start, and `listening on` means ready.
    if let Some(dir) = &config.data_dir {
        tracing::info!(dir = %dir.display(), "retained values and presence kept on disk");
    }
    let broker = broker::Broker::open(config.clone())
        .await
        .context("cannot start the broker")?;
    if let Some(auth) = broker.auth() {
        tracing::info!(file = %auth.path().display(), users = auth.rules().users.len(), "auth file in force");
    }
    reload_on_hangup(broker.auth().cloned())?;
    // Interfaces are checked before anything is bound: a typo fails at once.
    let mdns = args.mdns.start()?;
    let shutdown = super::shutdown_on_signal()?;
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
    let addr = listener.local_addr()?;
    // Scripts and tests read this line to find the port.
    let scheme = if config.tls.is_some() { "wss" } else { "ws" };
    println!("listening on {scheme}://{addr}");
    if let Some(tls) = &config.tls {
        println!("tls fingerprint sha256:{}", tls.fingerprint_hex());
    }
    // Said where the start is said, once: an open broker on the LAN is a choice to make knowingly.
    if config.auth_file.is_none() && !addr.ip().is_loopback() {
        println!(
            "open to anyone on {}: no --auth, so any client may publish and subscribe to anything",
            reachable_on(addr)
        );
    }
    std::io::stdout().flush()?;
    let security = discovery::BrokerSecurity {
        tls_fingerprint: config.tls.as_ref().map(|tls| tls.fingerprint_hex()),
        auth: config.auth_file.is_some(),
    };
    if let Some(mdns) = &mdns {
        let advert = Advert {
            service_type: discovery::BROKER_TYPE,
            name: config.name.clone(),
            port: addr.port(),
            // Nodes and tools pin `fp` when they find the broker over mDNS.
            txt: discovery::broker_txt(&config.name, &security),
        };
        let fullname = mdns.advertise(&advert)?;
        tracing::info!(%fullname, "advertised over mDNS");
    }
    let served = broker.serve(listener, shutdown).await;
    if let Some(mdns) = mdns {
        // Goodbye packets: peers see the broker leave in about a second, not 120 s.
        mdns.shutdown().await;
    }
    served?;
    Ok(())
}
