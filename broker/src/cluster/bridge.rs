//! The task that owns the NATS connection: publishes what local clients publish, keeps one
//! NATS subscription per filter local clients hold, and delivers what arrives to the local
//! subscribers (through the router, never back to NATS).

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use async_nats::connection::State;
use async_nats::{Client, ConnectOptions, Event, HeaderMap, ServerAddr};
use futures_util::StreamExt;
use proto::{Publish, TopicFilter};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::dedupe::{parse_id, patterns_overlap, Dedupe};
use super::link::{Link, Outgoing};
use super::{ClusterConfig, ClusterError};
use crate::metrics::Metrics;
use crate::router::Router;

/// Messages from NATS waiting for the bridge task.
const INBOUND_QUEUE: usize = 8192;
/// Outgoing messages published before the task looks at its other work again.
const PUBLISH_BATCH: usize = 256;
/// Messages from NATS delivered before the task looks at its other work again: each turn of
/// its loop re-arms every branch (the interest `Notify` takes a lock to), too much to pay per
/// message at hundreds of thousands a second.
const DELIVER_BATCH: usize = 256;
/// Past this many filters, overlap is assumed rather than checked pair by pair.
const OVERLAP_CHECK_MAX: usize = 512;

const ID: &str = "bb-id";
const FROM: &str = "bb-from";
const RETAIN: &str = "bb-retain";

/// Connects to NATS (in the background: the client retries until a server answers, and after
/// any loss), logging and counting the connection's state.
pub(super) async fn connect(
    config: &ClusterConfig,
    broker_name: &str,
    metrics: Arc<Metrics>,
) -> Result<Client, ClusterError> {
    let addrs = config
        .urls
        .iter()
        .map(|u| {
            u.parse::<ServerAddr>()
                .map_err(|e| ClusterError::Options(format!("{u:?} is not a NATS URL: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if addrs.is_empty() {
        return Err(ClusterError::Options("no NATS server given".into()));
    }
    let mut options = ConnectOptions::new()
        .no_echo()
        .name(format!("breadboard broker {broker_name}"))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(move |event| {
            let metrics = metrics.clone();
            async move { on_event(&event, &metrics) }
        });
    if let Some(token) = &config.token {
        options = options.token(token.clone());
    }
    if let Some(creds) = &config.creds {
        options = options.credentials_file(creds).await.map_err(|e| {
            ClusterError::Options(format!("credentials file {}: {e}", creds.display()))
        })?;
    }
    if let Some(ca) = &config.ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    options
        .connect(addrs)
        .await
        .map_err(|e| ClusterError::Options(e.to_string()))
}

fn on_event(event: &Event, metrics: &Metrics) {
    match event {
        Event::Connected => {
            metrics.cluster_connected.store(1, Relaxed);
            tracing::info!("cluster: connected to NATS");
        }
        Event::Disconnected => {
            metrics.cluster_connected.store(0, Relaxed);
            tracing::warn!(
                "cluster: NATS unreachable; serving local clients alone until it returns"
            );
        }
        Event::SlowConsumer(sid) => {
            tracing::warn!(
                sid,
                "cluster: NATS reports this broker slow on a subscription"
            );
        }
        other => tracing::info!(event = %other, "cluster"),
    }
}

/// A message from NATS, with the filter whose subscription it came through.
struct Inbound(async_nats::Message);

/// Runs the bridge until `shutdown`.
pub(super) async fn run(
    client: Client,
    link: Arc<Link>,
    router: Arc<Router>,
    mut outgoing_rx: mpsc::Receiver<Outgoing>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let origin = rand_origin();
    let (inbound_tx, mut inbound_rx) = mpsc::channel(INBOUND_QUEUE);
    let mut bridge = Bridge {
        client,
        link,
        router,
        origin,
        subscriptions: HashMap::new(),
        overlap: false,
        dedupe: Dedupe::default(),
    };
    loop {
        // Interest before outgoing messages: a client that subscribes to its inbox and then
        // publishes a request must have that subscription in NATS before the request leaves,
        // or the answer can come back to a server that does not yet know anyone wants it.
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            () = bridge.link.interest_changed.notified() => {
                bridge.reconcile(&inbound_tx, &tracker).await;
            }
            Some(out) = outgoing_rx.recv() => {
                bridge.publish(out).await;
                for _ in 1..PUBLISH_BATCH {
                    match outgoing_rx.try_recv() {
                        Ok(out) => bridge.publish(out).await,
                        Err(_) => break,
                    }
                }
            }
            Some(Inbound(msg)) = inbound_rx.recv() => {
                bridge.deliver(&msg);
                for _ in 1..DELIVER_BATCH {
                    match inbound_rx.try_recv() {
                        Ok(Inbound(msg)) => bridge.deliver(&msg),
                        Err(_) => break,
                    }
                }
            }
        }
    }
    for (_, cancel) in bridge.subscriptions.drain() {
        cancel.cancel();
    }
    // What is queued for NATS goes out before the broker stops.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), bridge.client.flush()).await;
}

/// A random id for this broker run, carried in every message it publishes.
fn rand_origin() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    h.finish()
}

struct Bridge {
    client: Client,
    link: Arc<Link>,
    router: Arc<Router>,
    origin: u64,
    /// The NATS subscription of each filter local clients hold, cancelled to drop it.
    subscriptions: HashMap<TopicFilter, CancellationToken>,
    /// Whether two of the subscriptions can match one subject (then copies are deduplicated).
    overlap: bool,
    dedupe: Dedupe,
}

impl Bridge {
    async fn publish(&mut self, out: Outgoing) {
        // While NATS is away the client would buffer and send it all after reconnecting: other
        // brokers would get messages minutes late and out of step with the values retained
        // meanwhile. A partition drops instead, like a NATS publisher that is cut off; values
        // retained meanwhile are written back by the retained task when NATS returns.
        if self.client.connection_state() != State::Connected {
            if let Some(n) = self.count_dropped() {
                tracing::warn!(
                    dropped = n,
                    "cluster: NATS is not connected, messages stay local"
                );
            }
            return;
        }
        let mut headers = HeaderMap::new();
        headers.insert(ID, format!("{:016x}:{}", self.origin, out.seq));
        if let Some(from) = out.from {
            headers.insert(FROM, from);
        }
        if out.retain {
            headers.insert(RETAIN, "1");
        }
        let sent = match out.reply {
            Some(reply) => {
                self.client
                    .publish_with_reply_and_headers(out.subject, reply, headers, out.payload)
                    .await
            }
            None => {
                self.client
                    .publish_with_headers(out.subject, headers, out.payload)
                    .await
            }
        };
        match sent {
            Ok(()) => {
                self.router.metrics.cluster_out.fetch_add(1, Relaxed);
            }
            Err(e) => {
                if let Some(n) = self.count_dropped() {
                    tracing::warn!(error = %e, dropped = n, "cluster: publish to NATS failed");
                }
            }
        }
    }

    /// Counts a message that did not reach NATS. Returns the count when it is worth a warning:
    /// the 1st, 2nd, 4th, 8th, ... so a long outage does not flood the log.
    fn count_dropped(&self) -> Option<u64> {
        let n = self.router.metrics.cluster_dropped.fetch_add(1, Relaxed) + 1;
        n.is_power_of_two().then_some(n)
    }

    /// Subscribes in NATS to the filters local clients hold now, and drops the others. The
    /// subscriptions are sent here, on the client's one command queue, so that they reach NATS
    /// before anything this task publishes after them.
    async fn reconcile(&mut self, inbound_tx: &mpsc::Sender<Inbound>, tracker: &TaskTracker) {
        let wanted = self.link.wanted();
        self.subscriptions.retain(|filter, cancel| {
            let keep = wanted.contains(filter);
            if !keep {
                cancel.cancel();
            }
            keep
        });
        for filter in wanted {
            if self.subscriptions.contains_key(&filter) {
                continue;
            }
            let cancel = CancellationToken::new();
            let mut subscribers = Vec::new();
            for subject in self.link.subjects().filter_subjects(&filter) {
                match self.client.subscribe(subject.clone()).await {
                    Ok(sub) => subscribers.push(sub),
                    Err(e) => {
                        tracing::warn!(%subject, error = %e, "cluster: cannot subscribe in NATS");
                    }
                }
            }
            tracker.spawn(forward(subscribers, inbound_tx.clone(), cancel.clone()));
            self.subscriptions.insert(filter, cancel);
        }
        let patterns: Vec<String> = self
            .subscriptions
            .keys()
            .flat_map(|f| self.link.subjects().filter_subjects(f))
            .collect();
        self.overlap = patterns.len() > OVERLAP_CHECK_MAX
            || patterns
                .iter()
                .enumerate()
                .any(|(i, a)| patterns[i + 1..].iter().any(|b| patterns_overlap(a, b)));
        if !self.overlap {
            self.dedupe.clear();
        }
        tracing::debug!(
            filters = self.subscriptions.len(),
            overlap = self.overlap,
            "cluster interest"
        );
    }

    /// Delivers a message from another broker to the local subscribers.
    fn deliver(&mut self, msg: &async_nats::Message) {
        let metrics = &self.router.metrics;
        // A status from NATS itself, not a message: chiefly "503 no responders", which it sends
        // to a request's reply subject when no other broker wants the request (its responder
        // may well be on this broker).
        if msg.status.is_some() {
            return;
        }
        let Ok(topic) = self.link.subjects().topic(msg.subject.as_str()) else {
            metrics.cluster_invalid.fetch_add(1, Relaxed);
            return;
        };
        let header = |name: &str| {
            msg.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str())
        };
        if self.overlap {
            if let Some(id) = header(ID).and_then(parse_id) {
                if !self.dedupe.first(id, Instant::now()) {
                    metrics.cluster_duplicates.fetch_add(1, Relaxed);
                    return;
                }
            }
        }
        // JSON, as brokers send it; anything else (from a NATS tool) arrives as a string.
        let data = serde_json::from_slice::<Value>(&msg.payload)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&msg.payload).into_owned()));
        let reply = msg
            .reply
            .as_ref()
            .and_then(|r| self.link.subjects().topic(r.as_str()).ok());
        let from = header(FROM);
        // Live only: what it retains reaches this broker through the cluster's bucket.
        let mut p = Publish::new(topic, data);
        p.reply = reply.map(Into::into);
        metrics.cluster_in.fetch_add(1, Relaxed);
        let _ = self.router.publish_remote(&p, from);
    }
}

/// One filter's NATS subscriptions (one or two subjects): forwards what arrives to the bridge
/// task until cancelled (dropping a subscriber unsubscribes it).
async fn forward(
    subscribers: Vec<async_nats::Subscriber>,
    inbound_tx: mpsc::Sender<Inbound>,
    cancel: CancellationToken,
) {
    let mut messages = futures_util::stream::select_all(subscribers);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            msg = messages.next() => match msg {
                Some(msg) => {
                    if inbound_tx.send(Inbound(msg)).await.is_err() {
                        return;
                    }
                }
                None => return,
            },
        }
    }
}
