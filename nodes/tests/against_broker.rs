//! The client, the runtime and the built-in circuit against a real broker running in this
//! process on a loopback port chosen by the system. Every wait is bounded.
// A test crate: an unwrap that fails is a test that fails, helpers included.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use nodes::kinds::buzzer::Buzzer;
use nodes::kinds::clock::{Clock, ClockOptions};
use nodes::kinds::pin::{rises, Pin, PinOptions};
use nodes::runtime::{self, BrokerSource, Config, NodeHandle, Status};
use nodes::{
    Client, ConnectOptions, Context, Encoding, Error, ErrorCode, HookResult, Message, Node, Output,
};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

/// A broker in this process.
struct TestBroker {
    url: String,
    port: u16,
    shutdown: CancellationToken,
    task: JoinHandle<broker::Result<()>>,
}

impl TestBroker {
    async fn start() -> Self {
        Self::start_on(0).await
    }

    /// Binds `127.0.0.1:port`, retrying briefly: after a stop the port may be busy a moment.
    async fn start_on(port: u16) -> Self {
        let mut listener = None;
        for _ in 0..50 {
            match TcpListener::bind(("127.0.0.1", port)).await {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let listener = listener.expect("bind a loopback port");
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let config = broker::Config {
            stats_interval: None,
            ..broker::Config::default()
        };
        let task = tokio::spawn(broker::run(listener, config, shutdown.clone()));
        Self {
            url: format!("ws://{addr}"),
            port: addr.port(),
            shutdown,
            task,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        timeout(WAIT, self.task).await.unwrap().unwrap().unwrap();
    }
}

async fn json_client(url: &str) -> (Client, nodes::Messages) {
    Client::connect(url, ConnectOptions::with_encoding(Encoding::Json))
        .await
        .unwrap()
}

async fn msgpack_client(url: &str) -> (Client, nodes::Messages) {
    Client::connect(url, ConnectOptions::default())
        .await
        .unwrap()
}

async fn next(messages: &mut nodes::Messages) -> Message {
    timeout(WAIT, messages.recv())
        .await
        .expect("a message in time")
        .expect("the connection is open")
}

/// Lines printed by nodes, captured.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn output(&self) -> Output {
        let lines = self.clone();
        Output::from_fn(move |l| lines.0.lock().unwrap().push(l.to_string()))
    }

    fn matching(&self, needle: &str) -> Vec<String> {
        let lines = self.0.lock().unwrap();
        lines
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// Waits until at least `n` lines contain `needle`.
    async fn wait_for(&self, needle: &str, n: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.matching(needle).len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "fewer than {n} lines with {needle:?}: {:?}",
                self.0.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn config(name: &str, kind: &str, lines: &Lines) -> Config {
    let mut c = Config::new(name, kind);
    c.output = lines.output();
    c
}

#[tokio::test]
async fn json_and_msgpack_clients_talk_through_the_broker() {
    let broker = TestBroker::start().await;
    let (sub, mut inbox) = msgpack_client(&broker.url).await;
    let (publisher, _) = json_client(&broker.url).await;
    publisher.hello("pub-1", Some("test")).await.unwrap();
    sub.subscribe("room/+/temp").await.unwrap();
    publisher
        .publish("room/kitchen/temp", json!({"c": 21.5}))
        .await
        .unwrap();
    let msg = next(&mut inbox).await;
    assert_eq!(msg.topic.as_str(), "room/kitchen/temp");
    assert_eq!(msg.data, json!({"c": 21.5}));
    assert_eq!(msg.from.as_deref(), Some("pub-1"));
    assert!(sub.ping().await.unwrap() < WAIT);
    broker.stop().await;
}

#[tokio::test]
async fn retained_values_arrive_before_the_subscribe_returns() {
    let broker = TestBroker::start().await;
    let (publisher, _) = json_client(&broker.url).await;
    publisher.publish_retained("pin/p/state", 1).await.unwrap();
    let (sub, mut inbox) = msgpack_client(&broker.url).await;
    sub.subscribe("pin/+/state").await.unwrap();
    let msg = inbox.try_recv().expect("retained value already queued");
    assert!(msg.retained);
    assert_eq!(msg.data, json!(1));
    broker.stop().await;
}

#[tokio::test]
async fn refusals_are_typed() {
    let broker = TestBroker::start().await;
    let (a, _) = msgpack_client(&broker.url).await;
    let (b, _) = msgpack_client(&broker.url).await;
    a.hello("same", None).await.unwrap();
    let taken = b.hello("same", None).await.unwrap_err();
    assert_eq!(taken.code(), Some(ErrorCode::NameTaken));
    let twice = a.hello("other", None).await.unwrap_err();
    assert_eq!(twice.code(), Some(ErrorCode::AlreadyNamed));
    assert!(matches!(a.publish("a/+", 1).await, Err(Error::Topic(_))));
    // The connection still works after the refusals.
    a.publish("fine", 1).await.unwrap();
    broker.stop().await;
}

/// Replies to every message on `topic` with `answer`, until its connection ends.
async fn responder(url: &str, topic: &str, answer: serde_json::Value) -> Client {
    let (client, mut inbox) = msgpack_client(url).await;
    client.subscribe(topic).await.unwrap();
    let c = client.clone();
    tokio::spawn(async move {
        while let Some(msg) = inbox.recv().await {
            if let Some(reply) = &msg.reply {
                let _ = c.publish(reply, answer.clone()).await;
            }
        }
    });
    client
}

#[tokio::test]
async fn request_gets_the_first_reply() {
    let broker = TestBroker::start().await;
    let _r = responder(&broker.url, "svc/echo", json!("pong")).await;
    let (client, _) = json_client(&broker.url).await;
    let reply = client.request("svc/echo", json!(1), WAIT).await.unwrap();
    assert_eq!(reply.data, json!("pong"));
    // Many requests on one inbox, concurrently.
    let all =
        futures_util::future::join_all((0..20).map(|i| client.request("svc/echo", i, WAIT))).await;
    assert!(all.iter().all(|r| r.is_ok()));
    broker.stop().await;
}

#[tokio::test]
async fn request_without_responder_times_out() {
    let broker = TestBroker::start().await;
    let (client, _) = msgpack_client(&broker.url).await;
    let err = client
        .request("svc/nobody", 1, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TimedOut), "{err}");
    broker.stop().await;
}

#[tokio::test]
async fn request_many_collects_every_responder() {
    let broker = TestBroker::start().await;
    let _a = responder(&broker.url, "svc/all", json!("a")).await;
    let _b = responder(&broker.url, "svc/all", json!("b")).await;
    let (client, _) = msgpack_client(&broker.url).await;
    let replies = client
        .request_many("svc/all", 1, Duration::from_millis(500), None)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut got: Vec<_> = replies.iter().map(|m| m.data.clone()).collect();
    got.sort_by_key(|v| v.to_string());
    assert_eq!(got, [json!("a"), json!("b")]);

    // With max, it ends as soon as enough arrived, well before the window.
    let start = std::time::Instant::now();
    let first = client
        .request_many("svc/all", 1, WAIT, Some(1))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    assert!(start.elapsed() < WAIT / 2);

    let nobody = client
        .request_many("svc/none", 1, Duration::from_millis(200), None)
        .await
        .unwrap()
        .collect()
        .await;
    assert!(matches!(nobody, Err(Error::NoResponders)));
    broker.stop().await;
}

#[tokio::test]
async fn a_lost_connection_wakes_every_waiter() {
    let broker = TestBroker::start().await;
    let (client, mut inbox) = msgpack_client(&broker.url).await;
    client.subscribe("x").await.unwrap();
    let pending = tokio::spawn({
        let c = client.clone();
        async move { c.request("svc/nobody", 1, WAIT).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    broker.stop().await;
    assert!(matches!(
        timeout(WAIT, pending).await.unwrap().unwrap(),
        Err(Error::Closed)
    ));
    assert!(timeout(WAIT, inbox.recv()).await.unwrap().is_none());
    timeout(WAIT, client.closed()).await.unwrap();
    assert!(matches!(client.publish("x", 1).await, Err(Error::Closed)));
}

/// Records what it receives on `probe/#`.
struct Recorder {
    seen: Arc<Mutex<Vec<Message>>>,
    setups: Arc<Mutex<u32>>,
}

impl Node for Recorder {
    async fn setup(&mut self, ctx: &mut Context) -> HookResult {
        *self.setups.lock().unwrap() += 1;
        ctx.subscribe("probe/#").await?;
        Ok(())
    }

    async fn on_message(&mut self, _ctx: &mut Context, msg: Message) -> HookResult {
        self.seen.lock().unwrap().push(msg);
        Ok(())
    }
}

async fn wait_status(handle: &mut NodeHandle, want: fn(&Status) -> bool) {
    timeout(WAIT, handle.status.wait_for(want))
        .await
        .expect("status in time")
        .expect("node alive");
}

#[tokio::test]
async fn a_node_survives_a_broker_restart_without_running_setup_again() {
    let broker = TestBroker::start().await;
    let port = broker.port;
    let lines = Lines::default();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let setups = Arc::new(Mutex::new(0));
    let shutdown = CancellationToken::new();
    let node = Recorder {
        seen: Arc::clone(&seen),
        setups: Arc::clone(&setups),
    };
    let mut handle = runtime::spawn(
        node,
        config("rec", "test", &lines),
        BrokerSource::fixed(&broker.url),
        shutdown.clone(),
    );
    timeout(WAIT, handle.ready()).await.unwrap().unwrap();
    let (probe, _) = json_client(&broker.url).await;
    probe.publish("probe/1", 1).await.unwrap();

    broker.stop().await;
    wait_status(&mut handle, |s| *s == Status::Offline).await;
    let broker = TestBroker::start_on(port).await;
    wait_status(&mut handle, |s| matches!(s, Status::Online { .. })).await;

    let (probe, _) = json_client(&broker.url).await;
    probe.publish("probe/2", 2).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.lock().unwrap().len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no message after the restart"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(*setups.lock().unwrap(), 1, "setup runs once");
    assert_eq!(lines.matching("back online").len(), 1);

    shutdown.cancel();
    timeout(WAIT, handle.join()).await.unwrap().unwrap();
    broker.stop().await;
}

#[tokio::test]
async fn the_name_is_retried_while_taken() {
    let broker = TestBroker::start().await;
    let (squatter, _) = msgpack_client(&broker.url).await;
    squatter.hello("busy", None).await.unwrap();
    let shutdown = CancellationToken::new();
    let lines = Lines::default();
    let node = Recorder {
        seen: Arc::default(),
        setups: Arc::default(),
    };
    let mut handle = runtime::spawn(
        node,
        config("busy", "test", &lines),
        BrokerSource::fixed(&broker.url),
        shutdown.clone(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(*handle.status.borrow(), Status::Connecting);
    squatter.close().await;
    timeout(WAIT, handle.ready()).await.unwrap().unwrap();

    shutdown.cancel();
    timeout(WAIT, handle.join()).await.unwrap().unwrap();
    broker.stop().await;
}

#[tokio::test]
async fn a_name_taken_for_too_long_is_an_error() {
    let broker = TestBroker::start().await;
    let (squatter, _) = msgpack_client(&broker.url).await;
    squatter.hello("mine", None).await.unwrap();
    let mut config = config("mine", "test", &Lines::default());
    config.name_taken_patience = Duration::from_millis(300);
    let node = Recorder {
        seen: Arc::default(),
        setups: Arc::default(),
    };
    let result = timeout(
        WAIT,
        runtime::run(
            node,
            config,
            BrokerSource::fixed(&broker.url),
            CancellationToken::new(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(result.unwrap_err().code(), Some(ErrorCode::NameTaken));
    broker.stop().await;
}

/// The bits in a line such as `[ pin-1 ] tick 3 -> [1, 0, 1]`.
fn bits_of(line: &str) -> Vec<u8> {
    let list = line.rsplit("-> ").next().unwrap();
    list.trim_matches(|c| c == '[' || c == ']')
        .split(", ")
        .map(|b| b.parse().unwrap())
        .collect()
}

#[tokio::test]
async fn the_circuit_buzzes_once_per_rise_and_every_tick_is_acknowledged() {
    let broker = TestBroker::start().await;
    let lines = Lines::default();
    let shutdown = CancellationToken::new();
    let source = BrokerSource::fixed(&broker.url);
    let pin = Pin::new(PinOptions {
        seed: Some(7),
        ..PinOptions::default()
    });
    let mut pin = runtime::spawn(
        pin,
        config("pin-1", "pin", &lines),
        source.clone(),
        shutdown.clone(),
    );
    let mut buzzer = runtime::spawn(
        Buzzer::new(),
        config("buzzer", "buzzer", &lines),
        source.clone(),
        shutdown.clone(),
    );
    timeout(WAIT, pin.ready()).await.unwrap().unwrap();
    timeout(WAIT, buzzer.ready()).await.unwrap().unwrap();

    let tacks = 12;
    let clock = Clock::new(ClockOptions {
        tacks,
        delay: Duration::from_millis(20),
        expect: 1,
        timeout: None,
    });
    timeout(
        WAIT,
        runtime::run(
            clock,
            config("clock", "clock", &lines),
            source,
            shutdown.clone(),
        ),
    )
    .await
    .unwrap()
    .unwrap();

    assert_eq!(lines.matching("[ clock ] < pin-1: ").len(), tacks as usize);
    let ticks = lines.matching("[ pin-1 ] tick ");
    assert_eq!(ticks.len(), tacks as usize);
    let bits: Vec<u8> = ticks.iter().flat_map(|l| bits_of(l)).collect();
    let expected = rises(&bits);
    assert!(expected > 0, "seed 7 should make the pin rise: {bits:?}");
    lines.wait_for("[ buzzer ] bzzz (pin-1)", expected).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(lines.matching("bzzz").len(), expected);

    shutdown.cancel();
    timeout(WAIT, pin.join()).await.unwrap().unwrap();
    timeout(WAIT, buzzer.join()).await.unwrap().unwrap();
    broker.stop().await;
}

/// Runs a node (of kind `name`, named so too) until it fails, which it must within [`WAIT`].
async fn run_to_failure(node: impl Node, name: &str, broker: &TestBroker) -> Error {
    timeout(
        WAIT,
        runtime::run(
            node,
            config(name, name, &Lines::default()),
            BrokerSource::fixed(&broker.url),
            CancellationToken::new(),
        ),
    )
    .await
    .unwrap()
    .unwrap_err()
}

#[tokio::test]
async fn a_clock_without_acknowledgement_fails_clearly() {
    let broker = TestBroker::start().await;
    let clock = Clock::new(ClockOptions {
        tacks: 3,
        delay: Duration::from_millis(20),
        expect: 1,
        timeout: Some(Duration::from_millis(200)),
    });
    let err = run_to_failure(clock, "clock", &broker).await;
    assert!(
        err.to_string()
            .contains("tick 0 was acknowledged 0 time(s)"),
        "{err}"
    );
    broker.stop().await;
}

/// A node whose `setup` fails with an error of its own.
struct BrokenSetup;

impl Node for BrokenSetup {
    async fn setup(&mut self, _ctx: &mut Context) -> HookResult {
        Err(std::io::Error::other("sensor not found").into())
    }
}

#[tokio::test]
async fn a_failed_setup_keeps_its_error_as_the_source() {
    let broker = TestBroker::start().await;
    let err = run_to_failure(BrokenSetup, "broken", &broker).await;
    assert!(matches!(err, Error::Failed { .. }), "{err}");
    let source = std::error::Error::source(&err).expect("the setup error as the source");
    assert_eq!(source.to_string(), "sensor not found");
    assert!(source.downcast_ref::<std::io::Error>().is_some());
    broker.stop().await;
}

#[test]
fn bits_come_from_a_pin_tick_line() {
    assert_eq!(bits_of("[ pin-1 ] tick 3 -> [1, 0, 1]"), [1, 0, 1]);
}

/// A node whose timer is always due: each tick's hook takes longer than the period.
struct Busy;

impl Node for Busy {
    async fn setup(&mut self, ctx: &mut Context) -> HookResult {
        ctx.set_timer(Duration::from_millis(5));
        Ok(())
    }

    async fn on_timer(&mut self, _ctx: &mut Context) -> HookResult {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(())
    }
}

#[tokio::test]
async fn a_node_whose_timer_is_always_due_still_follows_its_broker_when_it_moves() {
    let (a, b) = (TestBroker::start().await, TestBroker::start().await);
    let choice = |b: &TestBroker| discovery::BrokerChoice {
        name: format!("b{}", b.port),
        fullname: format!("b{}._breadboard._tcp.local.", b.port),
        url: b.url.clone(),
        fingerprint: None,
        peer: None,
    };
    let (tx, rx) = tokio::sync::watch::channel(Some(choice(&a)));
    let lines = Lines::default();
    let shutdown = CancellationToken::new();
    let mut handle = runtime::spawn(
        Busy,
        config("busy", "test", &lines),
        BrokerSource::discovered(rx),
        shutdown.clone(),
    );
    let on_a = a.url.clone();
    timeout(
        WAIT,
        handle
            .status
            .wait_for(|s| matches!(s, Status::Online { url } if url.starts_with(&on_a))),
    )
    .await
    .expect("online on A in time")
    .expect("node alive");
    // Let the timer get going, then move.
    tokio::time::sleep(Duration::from_millis(100)).await;
    tx.send_replace(Some(choice(&b)));
    let on_b = b.url.clone();
    timeout(
        WAIT,
        handle
            .status
            .wait_for(|s| matches!(s, Status::Online { url } if url.starts_with(&on_b))),
    )
    .await
    .expect("moved to B in time, busy timer or not")
    .expect("node alive");
    shutdown.cancel();
    timeout(WAIT, handle.join()).await.unwrap().unwrap();
    a.stop().await;
    b.stop().await;
}
