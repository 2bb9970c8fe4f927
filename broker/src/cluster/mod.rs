//! The cluster bridge: brokers on several hosts as one topic space, through a NATS cluster
//! (async-nats), not a protocol of our own.
//!
//! ```text
//!  client pub ─► Router ─► local subscribers
//!                  └─► Link::published (try_send, bounded) ─► bridge task ─► NATS
//!  Router::subscribe / unsubscribe ─► Link::interest (counts per filter) ─┐ notify
//!  NATS ◄─ SUB/UNSUB (only filters local clients hold) ◄── bridge task ◄──┘ reconcile
//!  NATS ─► one task per filter's subscription ─► bridge task ─► Dedupe ─► Router::publish_remote
//!                                                                  (local subscribers only)
//! ```
//!
//! Interest-based: a broker subscribes in NATS only to what its own clients subscribe to, so
//! traffic crosses only where it is wanted; with NATS's `no_echo` it never gets its own
//! publications back. Each message carries its origin and sequence (`bb-id`), so that one
//! arriving through two overlapping subscriptions is delivered once.
//!
//! Parts:
//! Topics travel as NATS subjects by `proto::SubjectSpace` (PROTOCOL.md, "NATS subjects").
//!
//! - `link`: what the router calls (publishes out, interest counts), never waiting;
//! - `bridge`: the task that owns the NATS connection;
//! - `dedupe`: messages already delivered, when subscriptions overlap;
//! - `retained`: retained values in a JetStream key-value bucket, the local store as its cache;
//! - `names`: `hello` names unique cluster-wide, broker heartbeats, the clients of a dead broker
//!   turned offline everywhere;
//! - `held`: the names this broker's clients hold, and those taken while the cluster could not
//!   say put in the bucket once it can (or their clients evicted, if taken elsewhere meanwhile);
//! - `buckets`: opening (or making) those buckets.

mod bridge;
mod buckets;
mod dedupe;
mod held;
mod link;
mod names;
mod retained;

use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::router::Router;

pub(crate) use link::Link;

/// How a broker joins a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// NATS servers (`nats://host:4222`), any of which will do.
    pub urls: Vec<String>,
    /// The cluster's name: brokers with the same name (and servers) form one topic space.
    pub name: String,
    /// A NATS token, if the servers want one.
    pub token: Option<String>,
    /// A NATS credentials file (`.creds`: JWT and NKey seed).
    pub creds: Option<PathBuf>,
    /// A CA certificate (PEM) for NATS servers that speak TLS.
    pub ca: Option<PathBuf>,
}

/// Why the cluster cannot be joined.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// A server URL, the credentials file or the CA cannot be used.
    #[error("cluster: {0}")]
    Options(String),
}

/// Joins `router` to the cluster: the bridge task starts (on `tracker`) and connects, retrying
/// until NATS answers; meanwhile, and whenever NATS is unreachable, the broker serves its own
/// clients alone.
///
/// # Errors
/// [`ClusterError::Options`]: a URL that is not one, an unreadable credentials file.
pub(crate) async fn join(
    config: &ClusterConfig,
    broker_name: &str,
    router: &Arc<Router>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<(), ClusterError> {
    let subjects = proto::SubjectSpace::new(&config.name)
        .map_err(|e| ClusterError::Options(format!("--cluster-name {:?}: {e}", config.name)))?;
    let (link, outgoing_rx) = Link::new(subjects, router.metrics.clone());
    let link = Arc::new(link);
    let client = bridge::connect(config, broker_name, router.metrics.clone()).await?;
    router.attach(link.clone());
    tracing::info!(cluster = %config.name, servers = ?config.urls, root = link.subjects().root(), "joining the cluster");
    tracker.spawn(retained::run(
        client.clone(),
        config.name.clone(),
        router.clone(),
        link.retained.clone(),
        shutdown.clone(),
    ));
    tracker.spawn(names::run(
        client.clone(),
        link.subjects().control_subject("brokers"),
        config.name.clone(),
        broker_name.to_string(),
        router.clone(),
        link.registry.clone(),
        shutdown.clone(),
    ));
    tracker.spawn(held::adopt(
        link.held.clone(),
        link.registry.clone(),
        router.clone(),
        shutdown.clone(),
    ));
    tracker.spawn(bridge::run(
        client,
        link,
        router.clone(),
        outgoing_rx,
        tracker.clone(),
        shutdown,
    ));
    Ok(())
}
