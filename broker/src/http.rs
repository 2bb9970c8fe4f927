//! Plain HTTP on the WebSocket port: the dashboard page, `/metrics` and `/healthz`.
//!
//! Only what a browser and a Prometheus scraper need: one `GET` per connection, answered and
//! closed.

use std::sync::atomic::Ordering::Relaxed;

use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::router::Router;

/// The dashboard, embedded so the broker needs no files and no internet.
const DASHBOARD: &str = include_str!("../assets/dashboard.html");

/// Answers one HTTP request and returns once the response is written.
pub(crate) async fn respond<W: AsyncWrite + Unpin>(
    out: &mut W,
    method: &str,
    path: &str,
    router: &Router,
) -> std::io::Result<()> {
    router.metrics.http_requests.fetch_add(1, Relaxed);
    let path = path.split('?').next().unwrap_or_default();
    let (status, content_type, body): (&str, &str, std::borrow::Cow<'_, str>) = match (method, path)
    {
        ("GET" | "HEAD", "/" | "/index.html") => {
            ("200 OK", "text/html; charset=utf-8", DASHBOARD.into())
        }
        ("GET" | "HEAD", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            router.metrics.render_prometheus().into(),
        ),
        ("GET" | "HEAD", "/healthz") => ("200 OK", "text/plain; charset=utf-8", "ok\n".into()),
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found\n".into(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET, or a WebSocket upgrade\n".into(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    out.write_all(head.as_bytes()).await?;
    if method != "HEAD" {
        out.write_all(body.as_bytes()).await?;
    }
    out.flush().await?;
    out.shutdown().await
}
