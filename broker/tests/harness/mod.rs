//! A broker in this process, on `127.0.0.1` with a port chosen by the OS, and the protocol's
//! exchanges the tests repeat.
//!
//! The broker runs on a runtime of its own, as it does in the binary: its sessions run in
//! parallel with each other and with the test's clients, whatever runtime the test uses.

mod client;

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use broker::Config;
use serde_json::{json, Value};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

pub use client::{assert_quiet, decode, hello, retain_many, sample, sub, Client, End, WAIT};

/// A running broker; stopped (its runtime shut down) when dropped, even when a test fails.
pub struct Broker {
    /// Where it listens.
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    /// Always `Some` until dropped.
    runtime: Option<Runtime>,
}

impl Broker {
    /// Starts `broker::run` with `config` on `127.0.0.1:0`.
    fn start(config: Config) -> Broker {
        let (runtime, listener, addr) = runtime_and_port();
        let listener = {
            let _context = runtime.enter();
            tokio::net::TcpListener::from_std(listener).expect("a tokio listener")
        };
        let shutdown = CancellationToken::new();
        runtime.spawn(broker::run(listener, config, shutdown.clone()));
        Broker {
            addr,
            shutdown,
            runtime: Some(runtime),
        }
    }

    /// A broker with [`Config::default`] as `change` leaves it.
    pub fn with(change: impl FnOnce(&mut Config)) -> Broker {
        let mut config = Config::default();
        change(&mut config);
        Self::start(config)
    }

    /// A broker with `auth_file` in force, and the handle to reload it. Opened (the file read)
    /// on the broker's runtime before it serves.
    pub fn with_auth(auth_file: &std::path::Path) -> (Broker, std::sync::Arc<broker::auth::Auth>) {
        let config = Config {
            auth_file: Some(auth_file.to_path_buf()),
            stats_interval: None,
            ..Config::default()
        };
        let (runtime, listener, addr) = runtime_and_port();
        let (opened_tx, opened_rx) = std::sync::mpsc::channel();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
            let opened = broker::Broker::open(config)
                .await
                .expect("the broker opens");
            let auth = opened.auth().cloned().expect("an auth file in force");
            let _ = opened_tx.send(auth);
            let _ = opened.serve(listener, stop).await;
        });
        let auth = opened_rx
            .recv_timeout(WAIT)
            .expect("the broker opened in time");
        let broker = Broker {
            addr,
            shutdown,
            runtime: Some(runtime),
        };
        (broker, auth)
    }

    /// A broker with the default settings but no `$SYS/broker/stats`, which would otherwise be
    /// one more retained value and one more publisher under `$SYS`.
    pub fn without_stats() -> Broker {
        Self::with(|config| config.stats_interval = None)
    }

    /// `ws://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// `GET path` on the broker's port, over plain HTTP.
    pub async fn http_get(&self, path: &str) -> client::HttpResponse {
        client::http_get(self.addr, path).await
    }

    /// The value of one line of `GET /metrics` (see [`client::metric`]).
    pub async fn metric(&self, name: &str) -> f64 {
        client::metric(self.addr, name).await
    }

    /// Clients cut off as slow consumers so far.
    pub async fn slow_consumers(&self) -> f64 {
        self.metric("breadboard_slow_consumer_disconnects_total")
            .await
    }
}

/// The broker's own runtime, and a loopback port bound for it (bound here rather than with
/// `block_on`, which a test's own runtime forbids).
fn runtime_and_port() -> (Runtime, std::net::TcpListener, SocketAddr) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("test-broker")
        .enable_all()
        .build()
        .expect("a runtime for the broker");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener
        .set_nonblocking(true)
        .expect("a non-blocking listener");
    let addr = listener.local_addr().expect("the bound address");
    (runtime, listener, addr)
}

impl Default for Broker {
    /// A broker with [`Config::default`], as `breadboard broker` without flags runs it.
    fn default() -> Self {
        Self::start(Config::default())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(runtime) = self.runtime.take() {
            // Does not block: the test may be inside a runtime of its own.
            runtime.shutdown_background();
        }
    }
}

/// Publishes with an `id` and expects the `ok`; by then the message is queued to every
/// subscriber. The publisher must not be subscribed to `topic`.
pub async fn publish(c: &mut Client, topic: &str, data: Value, id: u64) {
    let got = c
        .call(json!({"op": "pub", "topic": topic, "data": data, "id": id}))
        .await;
    assert_eq!(got, json!({"op": "ok", "id": id}), "pub {topic}");
}

/// Unsubscribes with an `id` and expects the `ok`.
pub async fn unsub(c: &mut Client, filter: &str, id: u64) {
    let got = c
        .call(json!({"op": "unsub", "topic": filter, "id": id}))
        .await;
    assert_eq!(got, json!({"op": "ok", "id": id}), "unsub {filter}");
}

/// A live message from an anonymous publisher, as the broker sends it.
pub fn live(topic: &str, data: Value) -> Value {
    json!({"op": "msg", "topic": topic, "data": data, "retained": false})
}

/// Asserts `got` is an `err` frame with `code`, `id` (absent when `None`) and a message.
pub fn assert_err(got: &Value, id: Option<u64>, code: &str, what: &dyn std::fmt::Debug) {
    assert_eq!(got["op"], "err", "answer to {what:?}: {got}");
    assert_eq!(got["code"], code, "answer to {what:?}: {got}");
    match id {
        Some(id) => assert_eq!(got["id"], id, "answer to {what:?}: {got}"),
        None => assert!(got.get("id").is_none(), "answer to {what:?}: {got}"),
    }
    assert!(
        got["message"].as_str().is_some_and(|m| !m.is_empty()),
        "answer to {what:?} explains nothing: {got}"
    );
}

/// Closes the connection with a close frame, as a well-behaved client leaves.
pub async fn close(c: &mut Client) {
    tokio::time::timeout(WAIT, c.ws.close(None))
        .await
        .expect("close in time")
        .expect("close");
}

/// Milliseconds since the Unix epoch, to check presence timestamps.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// Receives the next frame, which must be the presence of `name`; returns its `data`.
pub async fn presence(watcher: &mut Client, name: &str, retained: bool) -> Value {
    let got = watcher.recv().await;
    assert_eq!(got["op"], "msg", "{got}");
    assert_eq!(got["topic"], format!("$SYS/nodes/{name}"), "{got}");
    assert_eq!(got["retained"], retained, "{got}");
    assert!(
        got.get("from").is_none(),
        "presence has no publisher: {got}"
    );
    let data = got["data"].clone();
    let since = data["since"].as_u64().expect("since is unix ms");
    let now = now_ms();
    assert!(
        since <= now + 1_000 && now.saturating_sub(since) < 60_000,
        "since {since} is not about now ({now})"
    );
    data
}

/// A watcher of every presence, and a client named `name` (kind `pin`) whose online presence
/// the watcher has seen.
pub async fn named_client(broker: &Broker, name: &str) -> (Client, Client) {
    let mut watcher = Client::json(&broker.url()).await;
    sub(&mut watcher, "$SYS/nodes/+", 1).await;
    let mut node = Client::msgpack(&broker.url()).await;
    hello(&mut node, name, "pin", 1).await;
    let data = presence(&mut watcher, name, false).await;
    assert_eq!(data["online"], true, "{data}");
    assert_eq!(data["kind"], "pin", "{data}");
    (watcher, node)
}
