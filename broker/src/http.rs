//! Plain HTTP on the WebSocket port: the dashboard page, `/metrics`, `/healthz` and `/whoami`.
//!
//! Only what a browser and a Prometheus scraper need: one `GET` per connection, answered and
//! closed. With an auth file, `/metrics` (the same counters as `$SYS/broker/stats`) needs the
//! credentials of a user allowed to read `$SYS/broker/stats`, and `/whoami` tells the dashboard
//! what its token allows.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use proto::TopicFilter;
use serde_json::{json, Value};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::auth::{Auth, FilterRules, Names, Permissions};
use crate::head::Head;
use crate::router::Router;

/// The dashboard, embedded so the broker needs no files and no internet.
const DASHBOARD: &str = include_str!("../assets/dashboard.html");

/// What answering a request needs.
pub(crate) struct Context<'a> {
    pub router: &'a Router,
    pub auth: Option<&'a Auth>,
    pub peer: SocketAddr,
}

/// An answer: status line, content type, body.
type Answer<'a> = (&'static str, &'static str, Cow<'a, str>);

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

/// Who the request's credentials name: `Ok(None)` for none, `Err` for wrong ones.
async fn identify(
    head: &Head,
    auth: &Auth,
    peer: SocketAddr,
) -> Result<(Option<Arc<str>>, Arc<Permissions>), ()> {
    let user = match head.token() {
        None => None,
        Some(token) => Some(auth.authenticate(&token, peer.ip()).await.map_err(|_| ())?),
    };
    let permissions = auth.rules().permissions(user.as_deref()).ok_or(())?;
    Ok((user, permissions))
}

fn unauthorized<'a>() -> Answer<'a> {
    (
        "401 Unauthorized",
        TEXT,
        "credentials refused or missing\n".into(),
    )
}

/// `/metrics`: open without an auth file; else for users who may read `$SYS/broker/stats`.
async fn metrics<'a>(head: &Head, ctx: &Context<'_>) -> Answer<'a> {
    let body = || ctx.router.metrics.render_prometheus().into();
    let content = "text/plain; version=0.0.4; charset=utf-8";
    let Some(auth) = ctx.auth else {
        return ("200 OK", content, body());
    };
    let Ok((user, permissions)) = identify(head, auth, ctx.peer).await else {
        return unauthorized();
    };
    let stats = TopicFilter::new(format!("{}/broker/stats", proto::SYS_PREFIX));
    match stats {
        Ok(stats) if permissions.subscribe.allows_filter(&stats) => ("200 OK", content, body()),
        _ if user.is_none() => unauthorized(),
        _ => (
            "403 Forbidden",
            TEXT,
            "this user may not read $SYS/broker/stats\n".into(),
        ),
    }
}

fn rules_json(rules: &FilterRules) -> Value {
    fn list(filters: &[TopicFilter]) -> Vec<&str> {
        filters.iter().map(TopicFilter::as_str).collect()
    }
    json!({ "allow": list(&rules.allow), "deny": list(&rules.deny) })
}

/// `/whoami`: what the request's credentials allow.
async fn whoami<'a>(head: &Head, ctx: &Context<'_>) -> Answer<'a> {
    let Some(auth) = ctx.auth else {
        return ("200 OK", JSON, json!({ "auth": false }).to_string().into());
    };
    let Ok((user, permissions)) = identify(head, auth, ctx.peer).await else {
        return unauthorized();
    };
    let names = match &permissions.names {
        Names::Any => json!(["*"]),
        Names::Only(names) => {
            let mut names: Vec<_> = names.iter().collect();
            names.sort();
            json!(names)
        }
        Names::Unbound => json!("unbound"),
    };
    let body = json!({
        "auth": true,
        "user": user.as_deref(),
        "names": names,
        "publish": rules_json(&permissions.publish),
        "subscribe": rules_json(&permissions.subscribe),
    });
    ("200 OK", JSON, body.to_string().into())
}

/// Answers one HTTP request and returns once the response is written.
pub(crate) async fn respond<W: AsyncWrite + Unpin>(
    out: &mut W,
    head: &Head,
    ctx: &Context<'_>,
) -> std::io::Result<()> {
    ctx.router.metrics.http_requests.fetch_add(1, Relaxed);
    let method = head.method.as_str();
    let path = head.path.split('?').next().unwrap_or_default();
    let (status, content_type, body): Answer<'_> = match (method, path) {
        ("GET" | "HEAD", "/" | "/index.html") => {
            ("200 OK", "text/html; charset=utf-8", DASHBOARD.into())
        }
        ("GET" | "HEAD", "/metrics") => metrics(head, ctx).await,
        ("GET" | "HEAD", "/whoami") => whoami(head, ctx).await,
        ("GET" | "HEAD", "/healthz") => ("200 OK", TEXT, "ok\n".into()),
        ("GET" | "HEAD", _) => ("404 Not Found", TEXT, "not found\n".into()),
        _ => (
            "405 Method Not Allowed",
            TEXT,
            "only GET, or a WebSocket upgrade\n".into(),
        ),
    };
    let head_text = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    out.write_all(head_text.as_bytes()).await?;
    if method != "HEAD" {
        out.write_all(body.as_bytes()).await?;
    }
    out.flush().await?;
    out.shutdown().await
}
