//! What a broker can be told at start-up.

use std::path::PathBuf;
use std::time::Duration;

/// Broker settings. [`Config::default`] gives the documented defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// The broker's name: shown on the dashboard and advertised over DNS-SD.
    pub name: String,
    /// Largest client frame accepted, in bytes. A larger one gets a `too_large` error and the
    /// connection stays; one over twice this closes the connection (code 1009).
    pub max_frame_bytes: usize,
    /// Most subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// Items a client's outgoing queue may hold: a memory guard only, far above what the byte
    /// budget allows for any realistic frame.
    pub outbox_frames: usize,
    /// Bytes a client's outgoing queue may hold (each item charged its frame plus its
    /// bookkeeping) before the client counts as a slow consumer and is cut off.
    pub outbox_bytes: usize,
    /// How long a client's socket may accept nothing while frames wait for it before the
    /// client counts as a slow consumer and is cut off.
    pub write_deadline: Duration,
    /// Bytes all clients' outgoing queues may hold together; past it, the largest are cut off.
    pub max_backlog_bytes: usize,
    /// Size of each connection's tungstenite read buffer, which it allocates up front and keeps:
    /// small, so that idle connections stay small. Busy connections read through a larger
    /// chunk that exists only while data keeps coming (see `read_ahead`).
    pub read_buffer_bytes: usize,
    /// Most topics clients may keep a retained value on (the broker's own `$SYS` topics aside).
    pub max_retained: usize,
    /// Most bytes of retained values clients may keep (each counted as its topic plus its value
    /// as JSON).
    pub max_retained_bytes: usize,
    /// Most WebSocket connections at once; past it an upgrade gets HTTP 503. Default: the
    /// open-file limit, less a margin for the listener, HTTP requests and the data store.
    pub max_connections: usize,
    /// How long an offline name's presence is kept before it is forgotten; `None`: forever.
    pub presence_ttl: Option<Duration>,
    /// Where retained values and presence are kept across restarts; `None` keeps nothing on
    /// disk.
    pub data_dir: Option<PathBuf>,
    /// How long the store gathers retained writes into one commit (one fsync).
    pub commit_delay: Duration,
    /// How often the broker pings an idle client; one silent for twice this is dropped.
    pub keepalive: Duration,
    /// How often `$SYS/broker/stats` is published; `None` turns it off.
    pub stats_interval: Option<Duration>,
    /// The auth file (users, tokens, permissions); `None`: anyone may do anything.
    pub auth_file: Option<PathBuf>,
    /// Origins whose pages may open WebSockets here besides the broker's own (`*`: any). A
    /// browser sends `Origin`; an upgrade from another origin is refused (403), so that a page
    /// a LAN user visits cannot use the broker through the user's browser.
    pub allow_origins: Vec<String>,
    /// TLS on the port (WebSocket and pages); `None`: plain.
    pub tls: Option<crate::tls::TlsIdentity>,
    /// The NATS cluster this broker is part of; `None`: a broker on its own.
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// In peer mode, the node that hosts this broker in its own process (said in
    /// `$SYS/broker/stats` as `"role":"peer","host":<node>`).
    pub hosted_by: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            name: "breadboard".to_string(),
            max_frame_bytes: proto::DEFAULT_MAX_FRAME_BYTES,
            max_subscriptions: 10_000,
            outbox_frames: 1 << 20,
            outbox_bytes: 64 << 20,
            write_deadline: Duration::from_secs(10),
            max_backlog_bytes: 1 << 30,
            read_buffer_bytes: 512,
            max_connections: default_max_connections(),
            data_dir: None,
            commit_delay: crate::store::DEFAULT_COMMIT_DELAY,
            presence_ttl: Some(Duration::from_secs(24 * 3600)),
            max_retained: 1_000_000,
            max_retained_bytes: 256 << 20,
            keepalive: Duration::from_secs(30),
            stats_interval: Some(Duration::from_secs(10)),
            auth_file: None,
            allow_origins: Vec::new(),
            tls: None,
            cluster: None,
            hosted_by: None,
        }
    }
}

/// File descriptors kept aside from connections: the listener, HTTP requests being answered,
/// the data store, logs.
const FD_MARGIN: u64 = 64;

/// What the process's open-file limit allows in connections, less a margin (64).
pub fn default_max_connections() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    usize::try_from(limit.saturating_sub(FD_MARGIN).max(1)).unwrap_or(usize::MAX)
}
