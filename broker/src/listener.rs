//! The accept loop, and the first bytes of each connection: a WebSocket upgrade becomes a
//! `session`, any other HTTP request is answered by `http`.
//!
//! The request head is read here (with `httparse`) rather than by tungstenite's acceptor, so
//! that the same port serves the dashboard and the metrics as well as WebSocket clients.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Access, Auth, AuthFailed};
use crate::config::Config;
use crate::head::{Head, MAX_HEAD_BYTES};
use crate::metrics::Metrics;
use crate::read_ahead::ReadAhead;
use crate::router::Router;
use crate::store::Store;
use crate::{http, session, Result};

/// How long a new connection may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long checking an upgrade's credentials may take (a wait after failures included).
const AUTH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for sessions to send their close frames.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// Opens the broker's store and serves clients accepted on `listener` until `shutdown` is
/// cancelled, then closes every connection (with a close frame) and returns: [`Broker::open`]
/// then [`Broker::serve`].
///
/// The caller binds the listener, so tests can use port 0 and read the address back.
///
/// # Errors
/// The data directory cannot be used, or the listener's address cannot be read; failures of
/// single connections are logged.
pub async fn run(listener: TcpListener, config: Config, shutdown: CancellationToken) -> Result<()> {
    Broker::open(config).await?.serve(listener, shutdown).await
}

/// A broker whose store is open, ready to serve.
#[derive(Debug)]
pub struct Broker {
    router: Arc<Router>,
    config: Arc<Config>,
    auth: Option<Arc<Auth>>,
}

impl Broker {
    /// Opens the data directory, if the broker keeps one, and takes back what it holds: done
    /// before binding a port, a locked, unreadable or corrupt directory stops the start.
    ///
    /// The auth file, if one is given, is read too: one that does not parse stops the start.
    ///
    /// # Errors
    /// [`Error::Store`](crate::Error::Store), naming the file;
    /// [`Error::Auth`](crate::Error::Auth), naming the auth file and what is wrong in it.
    pub async fn open(config: Config) -> Result<Self> {
        let router = Arc::new(open_router(&config).await?);
        let auth = match &config.auth_file {
            Some(path) => Some(Arc::new(Auth::load(path, router.metrics.clone())?)),
            None => None,
        };
        Ok(Self {
            router,
            config: Arc::new(config),
            auth,
        })
    }

    /// The broker's counters (connections open now, among others), shared with `/metrics`.
    pub fn metrics(&self) -> Arc<crate::metrics::Metrics> {
        self.router.metrics.clone()
    }

    /// The auth file in force, to reload it ([`Auth::reload`], on `SIGHUP`).
    pub fn auth(&self) -> Option<&Arc<Auth>> {
        self.auth.as_ref()
    }

    /// Serves clients accepted on `listener` until `shutdown` is cancelled, then closes every
    /// connection (with a close frame), makes the store durable and returns. With a cluster, the
    /// bridge starts too (and connects in the background: NATS down is not an error).
    ///
    /// # Errors
    /// The listener's address cannot be read; the cluster's options are not usable.
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) -> Result<()> {
        serve(self, listener, shutdown).await
    }
}

async fn serve(broker: Broker, listener: TcpListener, shutdown: CancellationToken) -> Result<()> {
    let Broker {
        router,
        config,
        auth,
    } = broker;
    let addr = listener.local_addr()?;
    let tracker = TaskTracker::new();
    let next_id = AtomicU64::new(1);
    let slots = Slots::new(config.max_connections, router.metrics.clone());
    tracing::info!(%addr, name = %config.name, max_connections = config.max_connections, "broker listening");

    if let Some(every) = config.stats_interval {
        let about = about(&config);
        tracker.spawn(publish_stats(
            router.clone(),
            every,
            about,
            shutdown.clone(),
        ));
    }
    if let Some(ttl) = config.presence_ttl {
        tracker.spawn(forget_offline(router.clone(), ttl, shutdown.clone()));
    }
    if let Some(cluster) = &config.cluster {
        crate::cluster::join(cluster, &config.name, &router, &tracker, shutdown.clone()).await?;
    }

    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Typically out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let id = next_id.fetch_add(1, Relaxed);
        tracker.spawn(connection(
            stream,
            peer,
            id,
            Shared {
                router: router.clone(),
                config: config.clone(),
                slots: slots.clone(),
                auth: auth.clone(),
            },
            shutdown.clone(),
        ));
    }

    drop(listener);
    tracker.close();
    if timeout(SHUTDOWN_GRACE, tracker.wait()).await.is_err() {
        tracing::warn!("some connections did not close in time");
    }
    // Every session has published its last presence: make it, and all else, durable.
    let store = router.store().clone();
    let flushed = tokio::task::spawn_blocking(move || store.flush()).await;
    if let Ok(Err(e)) = flushed {
        tracing::error!(error = %e, "the store could not be flushed at shutdown");
    }
    tracing::info!("broker stopped");
    Ok(())
}

/// The router, with what the data directory holds (if the broker keeps one).
///
/// # Errors
/// The store cannot be opened: locked, unreadable, corrupt.
async fn open_router(config: &Config) -> Result<Router> {
    let Some(dir) = config.data_dir.clone() else {
        return Ok(Router::new(config, Store::in_memory()));
    };
    let delay = config.commit_delay;
    let started = std::time::Instant::now();
    let opened = tokio::task::spawn_blocking(move || Store::open(&dir, delay))
        .await
        .map_err(std::io::Error::other)?;
    let (store, loaded) = opened?;
    let counts = (loaded.retained.len(), loaded.presence.len());
    let router = Router::new(config, store);
    router.restore(loaded, crate::router::unix_ms());
    tracing::info!(
        path = ?router.store().path(),
        retained = counts.0,
        names = counts.1,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "store opened"
    );
    Ok(router)
}

/// Reads the request head, as much of the stream as it takes (up to [`MAX_HEAD_BYTES`]).
/// `None` for a connection that closed first or a head that is not valid HTTP.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Option<Head>> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(None);
        }
        match Head::parse(&buf) {
            Ok(Some(head)) => return Ok(Some(head)),
            Ok(None) if buf.len() < MAX_HEAD_BYTES => continue,
            _ => return Ok(None),
        }
    }
}

/// A refusal: why, and anything a client needs to act on it.
struct Refusal {
    status: &'static str,
    headers: &'static str,
    body: &'static str,
}

/// An upgrade over the connection limit.
const AT_CAPACITY: Refusal = Refusal {
    status: "503 Service Unavailable",
    headers: "Retry-After: 1\r\n",
    body: "the broker is at its connection limit\n",
};

/// A plain connection on a TLS port.
const TLS_REQUIRED: Refusal = Refusal {
    status: "400 Bad Request",
    headers: "",
    body: "this broker speaks TLS only: use wss:// (or https:// for its pages)\n",
};

/// An upgrade from a page of another origin.
const FOREIGN_ORIGIN: Refusal = Refusal {
    status: "403 Forbidden",
    headers: "",
    body:
        "a WebSocket from this Origin is refused (the broker's --allow-origin does not list it)\n",
};

/// Wrong credentials on an upgrade.
const UNAUTHORIZED: Refusal = Refusal {
    status: "401 Unauthorized",
    headers: "WWW-Authenticate: Bearer\r\n",
    body: "credentials refused\n",
};

/// A request head that is not HTTP.
const BAD_REQUEST: Refusal = Refusal {
    status: "400 Bad Request",
    headers: "",
    body: "",
};

/// An upgrade to something other than WebSocket version 13.
const UPGRADE_REQUIRED: Refusal = Refusal {
    status: "426 Upgrade Required",
    headers: "Sec-WebSocket-Version: 13\r\n",
    body: "",
};

/// What every connection shares.
struct Shared {
    router: Arc<Router>,
    config: Arc<Config>,
    slots: Arc<Slots>,
    auth: Option<Arc<Auth>>,
}

/// The WebSocket sessions the broker may hold at once (`max_connections`): one is taken before
/// anything of a session exists, and given back when it ends. The count taken is the
/// `connections` gauge itself, so the limit and `/metrics` cannot disagree.
struct Slots {
    metrics: Arc<Metrics>,
    max: u64,
}

impl Slots {
    fn new(max: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            metrics,
            max: u64::try_from(max).unwrap_or(u64::MAX),
        })
    }

    /// A slot, unless all are taken.
    fn take(self: &Arc<Self>) -> Option<Slot> {
        let open = &self.metrics.connections;
        if open.fetch_add(1, Relaxed) >= self.max {
            open.fetch_sub(1, Relaxed);
            return None;
        }
        self.metrics.connections_total.fetch_add(1, Relaxed);
        Some(Slot(self.clone()))
    }
}

/// A taken slot, given back on drop.
struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.metrics.connections.fetch_sub(1, Relaxed);
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    shared: Shared,
    shutdown: CancellationToken,
) {
    // Small frames must not wait for Nagle: latency matters more than packet count here.
    let _ = stream.set_nodelay(true);
    let Some(tls) = shared.config.tls.clone() else {
        return serve_connection(stream, peer, id, shared, false, shutdown).await;
    };
    // A TLS client speaks first with a handshake record (0x16); anything else is plain and
    // told to use TLS rather than left to fail in the handshake.
    let mut first = [0u8; 1];
    let peeked = tokio::select! {
        _ = shutdown.cancelled() => return,
        peeked = timeout(HEAD_TIMEOUT, stream.peek(&mut first)) => peeked,
    };
    match peeked {
        Ok(Ok(1)) if first[0] == 0x16 => {}
        Ok(Ok(1)) => {
            let mut stream = stream;
            refuse(&mut stream, TLS_REQUIRED).await;
            return;
        }
        _ => return,
    }
    let accepted = tokio::select! {
        _ = shutdown.cancelled() => return,
        accepted = timeout(HEAD_TIMEOUT, tls.acceptor().accept(stream)) => accepted,
    };
    match accepted {
        Ok(Ok(stream)) => serve_connection(stream, peer, id, shared, true, shutdown).await,
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "no TLS handshake in time"),
    }
}

/// Serves a connection (plain or TLS) from its first byte: the request head, then a session
/// or an HTTP answer.
async fn serve_connection<S>(
    mut stream: S,
    peer: SocketAddr,
    id: u64,
    shared: Shared,
    tls: bool,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let head = tokio::select! {
        _ = shutdown.cancelled() => return,
        head = timeout(HEAD_TIMEOUT, read_head(&mut stream)) => head,
    };
    let head = match head {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => {
            refuse(&mut stream, BAD_REQUEST).await;
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "connection failed before its request");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "no request head in time");
            return;
        }
    };
    match (&head.websocket_key, head.upgrade) {
        (Some(_), _) => upgrade(stream, head, peer, id, shared, tls, shutdown).await,
        (None, true) => {
            refuse(&mut stream, UPGRADE_REQUIRED).await;
        }
        (None, false) => {
            let ctx = http::Context {
                router: &shared.router,
                auth: shared.auth.as_deref(),
                peer,
            };
            if let Err(e) = http::respond(&mut stream, &head, &ctx).await {
                tracing::debug!(%peer, error = %e, "HTTP response failed");
            }
        }
    }
}

/// Writes a refusal and closes.
async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, refusal: Refusal) {
    let Refusal {
        status,
        headers,
        body,
    } = refusal;
    let answer = format!(
        "HTTP/1.1 {status}\r\nConnection: close\r\n{headers}Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}

/// Checks a WebSocket upgrade (origin, credentials, connection limit) and serves its session.
async fn upgrade<S>(
    mut stream: S,
    head: Head,
    peer: SocketAddr,
    id: u64,
    shared: Shared,
    tls: bool,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Shared {
        router,
        config,
        slots,
        auth,
    } = shared;
    let Some(key) = &head.websocket_key else {
        return;
    };
    if !head.origin_allowed(tls, &config.allow_origins) {
        tracing::info!(%peer, origin = ?head.origin, "WebSocket from a foreign origin refused");
        router.metrics.refused_origins.fetch_add(1, Relaxed);
        refuse(&mut stream, FOREIGN_ORIGIN).await;
        return;
    }
    let access = match &auth {
        None => Some(Access::open()),
        Some(auth) => {
            let user = match head.token() {
                None => Ok(None),
                // Bounded: behind a flood of wrong tokens (checked two at a time) a client
                // gets a refusal rather than an endless wait.
                Some(token) => tokio::select! {
                    _ = shutdown.cancelled() => return,
                    user = timeout(AUTH_TIMEOUT, auth.authenticate(&token, peer.ip())) => {
                        user.unwrap_or(Err(AuthFailed)).map(Some)
                    }
                },
            };
            user.ok().and_then(|user| Access::new(auth.clone(), user))
        }
    };
    let Some(access) = access else {
        refuse(&mut stream, UNAUTHORIZED).await;
        return;
    };
    let Some(_slot) = slots.take() else {
        tracing::warn!(%peer, max = config.max_connections, "connection limit reached: upgrade refused");
        router.metrics.refused_connections.fetch_add(1, Relaxed);
        refuse(&mut stream, AT_CAPACITY).await;
        return;
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key)
    );
    // Flushed: over TLS, written bytes wait in the session until then.
    if stream.write_all(response.as_bytes()).await.is_err() || stream.flush().await.is_err() {
        return;
    }
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(config.read_buffer_bytes)
        .max_message_size(Some(config.max_frame_bytes.saturating_mul(2)))
        .max_frame_size(Some(config.max_frame_bytes.saturating_mul(2)));
    let ws = WebSocketStream::from_partially_read(
        ReadAhead::new(stream),
        head.rest,
        Role::Server,
        Some(ws_config),
    )
    .await;
    session::serve(ws, id, peer, router, config, access, shutdown).await;
}

/// Publishes the broker's counters on `$SYS/broker/stats` (retained) every `every`.
/// What the stats say of the broker itself: its name and role (`broker`, or `peer` with the
/// node that hosts it in peer mode).
fn about(config: &Config) -> serde_json::Map<String, serde_json::Value> {
    let mut about = serde_json::Map::new();
    about.insert("name".into(), config.name.clone().into());
    match &config.hosted_by {
        Some(node) => {
            about.insert("role".into(), "peer".into());
            about.insert("host".into(), node.clone().into());
        }
        None => {
            about.insert("role".into(), "broker".into());
        }
    }
    about
}

async fn publish_stats(
    router: Arc<Router>,
    every: Duration,
    about: serde_json::Map<String, serde_json::Value>,
    shutdown: CancellationToken,
) {
    let Ok(topic) = proto::TopicName::system(format!("{}/broker/stats", proto::SYS_PREFIX)) else {
        return;
    };
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                let mut data = router.metrics.to_json();
                if let Some(fields) = data.as_object_mut() {
                    fields.extend(about.clone());
                }
                router.publish_system(&topic, &data);
            }
        }
    }
}

/// Forgets the presence of names offline for longer than `ttl`, checking every tenth of it.
async fn forget_offline(router: Arc<Router>, ttl: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval((ttl / 10).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                let forgotten = router.forget_offline(ttl);
                if forgotten > 0 {
                    tracing::debug!(forgotten, "offline names forgotten");
                }
            }
        }
    }
}
