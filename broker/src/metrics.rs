//! Counters the broker keeps about itself, rendered for Prometheus (`GET /metrics`) and as the
//! JSON published on `$SYS/broker/stats`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use proto::ErrorCode;
use serde_json::{json, Value};

/// Every counter and gauge. Plain relaxed atomics: each is independent, and readers only need
/// a recent value, not a consistent snapshot.
#[derive(Debug, Default)]
pub struct Metrics {
    /// WebSocket connections open now.
    pub connections: AtomicU64,
    /// WebSocket connections accepted since start.
    pub connections_total: AtomicU64,
    /// Subscriptions held now, over all clients.
    pub subscriptions: AtomicU64,
    /// Client frames received (any op).
    pub frames_in: AtomicU64,
    /// `pub` frames accepted.
    pub messages_in: AtomicU64,
    /// Messages queued to subscribers (one per subscriber per message).
    pub messages_out: AtomicU64,
    /// Bytes of client frames received.
    pub bytes_in: AtomicU64,
    /// Bytes of frames written to clients' sockets.
    pub bytes_out: AtomicU64,
    /// Retained topics held now.
    pub retained: AtomicU64,
    /// Clients cut off because their outbox stayed full.
    pub slow_consumers: AtomicU64,
    /// HTTP requests served (dashboard, metrics, health).
    pub http_requests: AtomicU64,
    /// WebSocket upgrades refused at the connection limit.
    pub refused_connections: AtomicU64,
    /// Bytes queued to clients and not yet written, over all clients (as the broker-wide
    /// budget counts them).
    pub backlog_bytes: AtomicU64,
    /// Credentials refused (on the upgrade, in `hello`, on HTTP).
    pub auth_failures: AtomicU64,
    /// Authentication attempts made to wait first, after earlier failures from their address.
    pub auth_delayed: AtomicU64,
    /// WebSocket upgrades refused for their `Origin` (cross-site pages).
    pub refused_origins: AtomicU64,
    /// Whether the cluster bridge is connected to NATS now (1) or not (0).
    pub cluster_connected: AtomicU64,
    /// Messages sent to the cluster.
    pub cluster_out: AtomicU64,
    /// Messages received from the cluster and delivered locally.
    pub cluster_in: AtomicU64,
    /// Messages not sent to the cluster (its queue full, or NATS refusing them).
    pub cluster_dropped: AtomicU64,
    /// Second copies of a message (overlapping subscriptions) dropped.
    pub cluster_duplicates: AtomicU64,
    /// Messages from NATS under the cluster's prefix that encode no topic.
    pub cluster_invalid: AtomicU64,
    /// Names taken while the cluster could not say, put in its bucket since.
    pub cluster_names_adopted: AtomicU64,
    /// Clients disconnected because their name, taken while the cluster could not say, was
    /// found held on another broker.
    pub cluster_names_evicted: AtomicU64,
    /// `err` frames sent, by code (indexed like [`ErrorCode::ALL`]).
    errors: [AtomicU64; ErrorCode::ALL.len()],
}

fn code_index(code: ErrorCode) -> usize {
    ErrorCode::ALL
        .iter()
        .position(|c| *c == code)
        .unwrap_or_default()
}

impl Metrics {
    /// Counts one `err` frame.
    pub fn error(&self, code: ErrorCode) {
        self.errors[code_index(code)].fetch_add(1, Relaxed);
    }

    /// `err` frames sent with `code` so far.
    pub fn errors(&self, code: ErrorCode) -> u64 {
        self.errors[code_index(code)].load(Relaxed)
    }

    fn scalars(&self) -> [(&'static str, &'static str, &'static str, u64); 24] {
        let g = |a: &AtomicU64| a.load(Relaxed);
        [
            (
                "connections",
                "gauge",
                "WebSocket connections open now",
                g(&self.connections),
            ),
            (
                "connections_total",
                "counter",
                "WebSocket connections accepted",
                g(&self.connections_total),
            ),
            (
                "subscriptions",
                "gauge",
                "Subscriptions held now",
                g(&self.subscriptions),
            ),
            (
                "frames_in_total",
                "counter",
                "Client frames received",
                g(&self.frames_in),
            ),
            (
                "messages_in_total",
                "counter",
                "Messages published by clients",
                g(&self.messages_in),
            ),
            (
                "messages_out_total",
                "counter",
                "Messages queued to subscribers",
                g(&self.messages_out),
            ),
            (
                "bytes_in_total",
                "counter",
                "Bytes of client frames received",
                g(&self.bytes_in),
            ),
            (
                "bytes_out_total",
                "counter",
                "Bytes of frames queued to clients",
                g(&self.bytes_out),
            ),
            (
                "retained_topics",
                "gauge",
                "Retained topics held now",
                g(&self.retained),
            ),
            (
                "slow_consumer_disconnects_total",
                "counter",
                "Clients cut off for not reading",
                g(&self.slow_consumers),
            ),
            (
                "http_requests_total",
                "counter",
                "HTTP requests served",
                g(&self.http_requests),
            ),
            (
                "refused_connections_total",
                "counter",
                "WebSocket upgrades refused at the connection limit",
                g(&self.refused_connections),
            ),
            (
                "backlog_bytes",
                "gauge",
                "Bytes queued to clients and not yet written",
                g(&self.backlog_bytes),
            ),
            (
                "auth_failures_total",
                "counter",
                "Credentials refused",
                g(&self.auth_failures),
            ),
            (
                "auth_delayed_total",
                "counter",
                "Authentication attempts delayed after earlier failures from their address",
                g(&self.auth_delayed),
            ),
            (
                "refused_origins_total",
                "counter",
                "WebSocket upgrades refused for a foreign Origin",
                g(&self.refused_origins),
            ),
            (
                "cluster_connected",
                "gauge",
                "Whether the cluster bridge is connected to NATS",
                g(&self.cluster_connected),
            ),
            (
                "cluster_out_total",
                "counter",
                "Messages sent to the cluster",
                g(&self.cluster_out),
            ),
            (
                "cluster_in_total",
                "counter",
                "Messages from the cluster delivered locally",
                g(&self.cluster_in),
            ),
            (
                "cluster_dropped_total",
                "counter",
                "Messages not sent to the cluster (NATS away or refusing)",
                g(&self.cluster_dropped),
            ),
            (
                "cluster_duplicates_total",
                "counter",
                "Second copies from overlapping NATS subscriptions dropped",
                g(&self.cluster_duplicates),
            ),
            (
                "cluster_invalid_total",
                "counter",
                "Messages under the cluster prefix that encode no topic",
                g(&self.cluster_invalid),
            ),
            (
                "cluster_names_adopted_total",
                "counter",
                "Names taken while cut off from the cluster, put in its bucket since",
                g(&self.cluster_names_adopted),
            ),
            (
                "cluster_names_evicted_total",
                "counter",
                "Clients disconnected: their name, taken while cut off, was held on another broker",
                g(&self.cluster_names_evicted),
            ),
        ]
    }

    /// The Prometheus text exposition format.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        for (name, kind, help, value) in self.scalars() {
            let _ = writeln!(out, "# HELP breadboard_{name} {help}");
            let _ = writeln!(out, "# TYPE breadboard_{name} {kind}");
            let _ = writeln!(out, "breadboard_{name} {value}");
        }
        out.push_str("# HELP breadboard_errors_total Error frames sent to clients, by code\n");
        out.push_str("# TYPE breadboard_errors_total counter\n");
        for code in ErrorCode::ALL {
            let _ = writeln!(
                out,
                "breadboard_errors_total{{code=\"{code}\"}} {}",
                self.errors(code)
            );
        }
        out
    }

    /// The same numbers as one JSON object, for `$SYS/broker/stats`.
    pub fn to_json(&self) -> Value {
        let mut map = serde_json::Map::new();
        for (name, _, _, value) in self.scalars() {
            map.insert(name.to_string(), json!(value));
        }
        let errors: serde_json::Map<String, Value> = ErrorCode::ALL
            .iter()
            .map(|c| (c.as_str().to_string(), json!(self.errors(*c))))
            .collect();
        map.insert("errors".into(), Value::Object(errors));
        Value::Object(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_lists_every_counter_and_error_code() {
        let m = Metrics::default();
        m.messages_in.fetch_add(3, Relaxed);
        m.error(ErrorCode::BadTopic);
        m.error(ErrorCode::BadTopic);
        let text = m.render_prometheus();
        assert!(text.contains("breadboard_messages_in_total 3\n"));
        assert!(text.contains("breadboard_errors_total{code=\"bad_topic\"} 2\n"));
        assert!(text.contains("breadboard_errors_total{code=\"name_taken\"} 0\n"));
        assert_eq!(m.to_json()["errors"]["bad_topic"], 2);
    }
}
