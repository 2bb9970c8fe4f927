//! The accept loop, and the first bytes of each connection: a WebSocket upgrade becomes a
//! [`session`](crate::session), any other HTTP request is answered by [`http`](crate::http).
//!
//! The request head is read here (with `httparse`) rather than by tungstenite's acceptor, so
//! that the same port serves the dashboard and the metrics as well as WebSocket clients.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::read_ahead::ReadAhead;
use crate::router::Router;
use crate::{http, session, Result};

/// Largest HTTP request head accepted.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// How long a new connection may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for sessions to send their close frames.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// Serves clients accepted on `listener` until `shutdown` is cancelled, then closes every
/// connection (with a close frame) and returns.
///
/// The caller binds the listener, so tests can use port 0 and read the address back.
///
/// # Errors
/// Only if the listener's address cannot be read; failures of single connections are logged.
pub async fn run(listener: TcpListener, config: Config, shutdown: CancellationToken) -> Result<()> {
    let addr = listener.local_addr()?;
    let config = Arc::new(config);
    let router = Arc::new(Router::default());
    let tracker = TaskTracker::new();
    let next_id = AtomicU64::new(1);
    tracing::info!(%addr, name = %config.name, "broker listening");

    if let Some(every) = config.stats_interval {
        tracker.spawn(publish_stats(router.clone(), every, shutdown.clone()));
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
            router.clone(),
            config.clone(),
            shutdown.clone(),
        ));
    }

    drop(listener);
    tracker.close();
    if timeout(SHUTDOWN_GRACE, tracker.wait()).await.is_err() {
        tracing::warn!("some connections did not close in time");
    }
    tracing::info!("broker stopped");
    Ok(())
}

/// What the request head says.
struct Head {
    method: String,
    path: String,
    /// `Sec-WebSocket-Key`, when the request asks for a WebSocket upgrade.
    websocket_key: Option<Vec<u8>>,
    /// Whether `Upgrade: websocket` was asked for at all.
    upgrade: bool,
    /// Bytes after the head (the start of the WebSocket stream).
    rest: Vec<u8>,
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Head>> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(None);
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let header = |name: &str| {
                    req.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| h.value)
                };
                let upgrade = header("upgrade")
                    .map(|v| {
                        String::from_utf8_lossy(v)
                            .to_ascii_lowercase()
                            .contains("websocket")
                    })
                    .unwrap_or(false);
                let version_ok = header("sec-websocket-version") == Some(b"13");
                let websocket_key = header("sec-websocket-key")
                    .filter(|_| upgrade && version_ok)
                    .map(<[u8]>::to_vec);
                return Ok(Some(Head {
                    method: req.method.unwrap_or_default().to_string(),
                    path: req.path.unwrap_or("/").to_string(),
                    websocket_key,
                    upgrade,
                    rest: buf[len..].to_vec(),
                }));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => continue,
            _ => return Ok(None),
        }
    }
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    router: Arc<Router>,
    config: Arc<Config>,
    shutdown: CancellationToken,
) {
    // Small frames must not wait for Nagle: latency matters more than packet count here.
    let _ = stream.set_nodelay(true);
    let head = tokio::select! {
        _ = shutdown.cancelled() => return,
        head = timeout(HEAD_TIMEOUT, read_head(&mut stream)) => head,
    };
    let head = match head {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => {
            let _ = stream
                .write_all(
                    b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                )
                .await;
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
        (Some(key), _) => {
            let response = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                derive_accept_key(key)
            );
            if stream.write_all(response.as_bytes()).await.is_err() {
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
            session::serve(ws, id, peer, router, config, shutdown).await;
        }
        (None, true) => {
            let _ = stream
                .write_all(b"HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
        (None, false) => {
            if let Err(e) = http::respond(&mut stream, &head.method, &head.path, &router).await {
                tracing::debug!(%peer, error = %e, "HTTP response failed");
            }
        }
    }
}

/// Publishes the broker's counters on `$SYS/broker/stats` (retained) every `every`.
async fn publish_stats(router: Arc<Router>, every: Duration, shutdown: CancellationToken) {
    let Ok(topic) = proto::TopicName::system(format!("{}/broker/stats", proto::SYS_PREFIX)) else {
        return;
    };
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                let data = router.metrics.to_json();
                router.publish_system(&topic, &data);
            }
        }
    }
}
