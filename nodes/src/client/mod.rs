//! An async WebSocket client of the broker: one connection, one task owning the socket.
//!
//! ```text
//!  Client (cloneable) ──frames──► out channel ─┐
//!                                             ▼
//!                 ┌──────── connection task (select!) ────────┐
//!  socket ◄─feed+flush── writer     reader ◄── socket          │
//!                 │  ok/pong/err ─► pending acks (by id)      │
//!                 │  msg on _inbox/<me>/<n> ─► pending request │
//!                 │  any other msg ─► Messages (bounded)       │
//!                 └───────────────────────────────────────────┘
//! ```
//!
//! [`Client::connect`] returns the [`Client`] handle and the [`Messages`] receiver of delivered
//! messages. `subscribe`, `unsubscribe`, `publish` and `ping` send a frame with a fresh `id` and
//! wait for the broker's `ok` (or `err`). Requests follow NATS: the first request subscribes
//! the connection's inbox `_inbox/<random>/+` once; each request publishes with
//! `reply: _inbox/<random>/<n>` and waits for what comes back there.
//!
//! One connection only: when it ends, every waiter gets [`Error::Closed`] and [`Messages`]
//! ends. Reconnecting is the caller's business (the node [`runtime`](crate::runtime) does it).
//!
//! Delivered messages go into a bounded queue; when the reader of [`Messages`] falls behind
//! and the queue is full, new messages are dropped and counted ([`Client::dropped`]) rather
//! than stalling the connection, whose `ok`s and replies must keep flowing.
//!
//! Parts:
//! - `mod.rs` (here): the [`Client`] handle and its [`ConnectOptions`];
//! - `connection`: the task that owns the socket (writes in batches, reads and dispatches,
//!   keepalive);
//! - `codec`: the only place frames meet proto's codec, one function each way;
//! - `mux`: what the connection waits for (acks by `id`, replies by inbox token);
//! - `messages`: what the handle gives back, [`Messages`] and [`Replies`];
//! - `into_topic`: [`IntoTopicName`] / [`IntoTopicFilter`], so that methods take `&str` too.

mod codec;
mod connection;
mod into_topic;
mod messages;
mod mux;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::Message;
use proto::Encoding;
use proto::{ClientFrame, Publish, TopicName};
use serde_json::Value;
use tokio::sync::{mpsc, OnceCell};
use tokio::time::{timeout, timeout_at, Instant};

use crate::error::{Error, Result};
use connection::Outgoing;
use mux::Shared;

pub use into_topic::{IntoTopicFilter, IntoTopicName};
pub use messages::{Messages, Replies};

/// How to connect. [`ConnectOptions::default`] suits a node: MessagePack, 5 s to connect,
/// 10 s for the broker's answers.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The encoding this client speaks: MessagePack (binary frames) for nodes, JSON (text
    /// frames) for tools that show frames to people.
    pub encoding: Encoding,
    /// Longest wait for the TCP connection and the WebSocket handshake.
    pub connect_timeout: Duration,
    /// Longest wait for the broker's `ok`/`err`/`pong` to a frame.
    pub ack_timeout: Duration,
    /// Delivered messages queued for [`Messages`] before new ones are dropped.
    pub inbound_capacity: usize,
    /// Outgoing frames queued for the connection task; senders wait when it is full.
    pub outbound_capacity: usize,
    /// Replies queued per [`Client::request_many`] when no `max` is given.
    pub replies_capacity: usize,
    /// After this long without hearing from the broker, send it a `ping`; after twice this,
    /// give the connection up as dead (a broker host that vanished sends no FIN, and a node
    /// that only listens would otherwise wait forever). `None`: never.
    pub keepalive: Option<Duration>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            encoding: Encoding::MsgPack,
            connect_timeout: Duration::from_secs(5),
            ack_timeout: Duration::from_secs(10),
            inbound_capacity: 4096,
            outbound_capacity: 1024,
            replies_capacity: 256,
            keepalive: Some(Duration::from_secs(15)),
        }
    }
}

impl ConnectOptions {
    /// The defaults, speaking `encoding`.
    pub fn with_encoding(encoding: Encoding) -> Self {
        Self {
            encoding,
            ..Self::default()
        }
    }
}

/// A handle on one connection to the broker. Cheap to clone; the connection lives while a
/// clone does (or until [`Client::close`] or the broker ends it).
#[derive(Clone)]
pub struct Client {
    out_tx: mpsc::Sender<Outgoing>,
    shared: Arc<Shared>,
    /// Set once the inbox `_inbox/<random>/+` is subscribed (on the first request).
    inbox_ready: Arc<OnceCell<()>>,
    options: Arc<ConnectOptions>,
    url: Arc<str>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.url)
            .field("encoding", &self.options.encoding)
            .field("closed", &self.is_closed())
            .finish()
    }
}

fn check_url(url: &str) -> Result<()> {
    let bad = |reason: &str| Error::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| bad("expected ws://host:port"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(bad("no host"));
    }
    Ok(())
}

impl Client {
    /// Connects to a broker at a `ws://host:port` URL.
    ///
    /// # Errors
    /// [`Error::BadUrl`] for anything but a `ws://` URL, [`Error::Connect`] when the connection
    /// or the handshake fails, [`Error::TimedOut`] after [`ConnectOptions::connect_timeout`].
    pub async fn connect(url: &str, options: ConnectOptions) -> Result<(Client, Messages)> {
        check_url(url)?;
        let (ws, _response) = timeout(
            options.connect_timeout,
            tokio_tungstenite::connect_async(url),
        )
        .await
        .map_err(|_| Error::TimedOut)?
        .map_err(|e| Error::Connect {
            url: url.to_string(),
            source: Box::new(e),
        })?;
        let inbox = format!("_inbox/{:016x}", rand::random::<u64>());
        let shared = Shared::new(inbox);
        let (out_tx, msg_rx) = connection::spawn(ws, Arc::clone(&shared), &options, url);
        let client = Client {
            out_tx,
            shared,
            inbox_ready: Arc::new(OnceCell::new()),
            options: Arc::new(options),
            url: url.into(),
        };
        Ok((client, Messages::new(msg_rx)))
    }

    /// The URL this client connected to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The encoding this client speaks.
    pub fn encoding(&self) -> Encoding {
        self.options.encoding
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.is_cancelled()
    }

    /// Resolves when the connection has ended.
    pub async fn closed(&self) {
        self.shared.closed.cancelled().await;
    }

    /// Delivered messages dropped so far because [`Messages`] was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Names this client (`hello`); the broker then keeps its presence under
    /// `$SYS/nodes/<name>`.
    ///
    /// # Errors
    /// [`Error::Broker`] with `name_taken` when a client online has the name (`bad_name`,
    /// `already_named` likewise); [`Error::Closed`], [`Error::TimedOut`].
    pub async fn hello(&self, name: &str, kind: Option<&str>) -> Result<()> {
        let (name, kind) = (name.to_string(), kind.map(str::to_string));
        self.call(|id| ClientFrame::Hello {
            name: name.into(),
            kind: kind.map(Into::into),
            token: None,
            id: Some(id),
        })
        .await
    }

    /// Subscribes to a filter and waits for the broker's `ok`. Retained values that match
    /// arrive on [`Messages`] before this returns.
    ///
    /// # Errors
    /// [`Error::Topic`] for an invalid filter, [`Error::Broker`] (`too_many_subs`...),
    /// [`Error::Closed`], [`Error::TimedOut`].
    pub async fn subscribe(&self, filter: impl IntoTopicFilter) -> Result<()> {
        let topic = filter.into_topic_filter()?;
        self.call(|id| ClientFrame::Sub {
            topic,
            id: Some(id),
        })
        .await
    }

    /// Ends a subscription made with the same filter.
    ///
    /// # Errors
    /// As [`Client::subscribe`].
    pub async fn unsubscribe(&self, filter: impl IntoTopicFilter) -> Result<()> {
        let topic = filter.into_topic_filter()?;
        self.call(|id| ClientFrame::Unsub {
            topic,
            id: Some(id),
        })
        .await
    }

    /// Publishes and waits for the broker's `ok`.
    ///
    /// # Errors
    /// [`Error::Topic`] for a topic one may not publish to, [`Error::Broker`] (`too_large`...),
    /// [`Error::Closed`], [`Error::TimedOut`].
    pub async fn publish(&self, topic: impl IntoTopicName, data: impl Into<Value>) -> Result<()> {
        self.publish_frame(topic.into_topic_name()?, data.into(), false, None)
            .await
    }

    /// Publishes a retained value (kept by the broker and replayed to later subscribers;
    /// `null` clears it) and waits for the broker's `ok`.
    ///
    /// # Errors
    /// As [`Client::publish`].
    pub async fn publish_retained(
        &self,
        topic: impl IntoTopicName,
        data: impl Into<Value>,
    ) -> Result<()> {
        self.publish_frame(topic.into_topic_name()?, data.into(), true, None)
            .await
    }

    /// Publishes with an explicit reply topic (answering a request goes the other way: publish
    /// to the request's `reply`).
    ///
    /// # Errors
    /// As [`Client::publish`].
    pub async fn publish_with_reply(
        &self,
        topic: impl IntoTopicName,
        data: impl Into<Value>,
        reply: impl IntoTopicName,
    ) -> Result<()> {
        let reply = reply.into_topic_name()?;
        self.publish_frame(topic.into_topic_name()?, data.into(), false, Some(reply))
            .await
    }

    /// Queues a publish without an `id`: no round trip, the broker answers only if it fails
    /// (logged as a warning). For throughput (bench); waits only for room in the queue.
    ///
    /// # Errors
    /// [`Error::Topic`], [`Error::Closed`].
    pub async fn publish_nowait(
        &self,
        topic: impl IntoTopicName,
        data: impl Into<Value>,
        retain: bool,
    ) -> Result<()> {
        let frame = ClientFrame::Pub(Publish {
            retain,
            ..Publish::new(topic.into_topic_name()?, data.into())
        });
        self.send(&frame).await
    }

    /// Sends a `ping` and returns the round-trip time to the `pong`.
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::TimedOut`].
    pub async fn ping(&self) -> Result<Duration> {
        let start = Instant::now();
        self.call(|id| ClientFrame::Ping { id: Some(id) }).await?;
        Ok(start.elapsed())
    }

    /// Sends a request and returns the first reply.
    ///
    /// The broker cannot tell us whether anyone listens, so "nobody answered" and "nobody
    /// answered in time" are the same [`Error::TimedOut`] here.
    ///
    /// # Errors
    /// [`Error::TimedOut`] after `wait` (which bounds the whole exchange),
    /// [`Error::Topic`], [`Error::Broker`], [`Error::Closed`].
    pub async fn request(
        &self,
        topic: impl IntoTopicName,
        data: impl Into<Value>,
        wait: Duration,
    ) -> Result<Message> {
        let topic = topic.into_topic_name()?;
        let data = data.into();
        timeout(wait, async {
            self.ensure_inbox().await?;
            let token = self.shared.next_id();
            let mut pending = self.shared.expect_reply(token)?;
            self.publish_frame(topic, data, false, Some(self.reply_topic(token)?))
                .await?;
            (&mut pending.rx).await.map_err(|_| Error::Closed)
        })
        .await
        .map_err(|_| Error::TimedOut)?
    }

    /// Sends a request and returns a [`Replies`] that yields every reply arriving within
    /// `window` (counted from now), stopping early once `max` replies arrived. For requests
    /// several responders answer, such as a clock tick acknowledged by every pin.
    ///
    /// # Errors
    /// [`Error::Topic`], [`Error::Broker`], [`Error::Closed`]; [`Error::TimedOut`] when the
    /// broker does not acknowledge the publish within the window.
    pub async fn request_many(
        &self,
        topic: impl IntoTopicName,
        data: impl Into<Value>,
        window: Duration,
        max: Option<usize>,
    ) -> Result<Replies> {
        let topic = topic.into_topic_name()?;
        let data = data.into();
        let deadline = Instant::now() + window;
        timeout_at(deadline, async {
            self.ensure_inbox().await?;
            let token = self.shared.next_id();
            let capacity = max.unwrap_or(self.options.replies_capacity);
            let pending = self.shared.expect_replies(token, capacity)?;
            self.publish_frame(topic, data, false, Some(self.reply_topic(token)?))
                .await?;
            Ok(Replies::new(pending, deadline, max))
        })
        .await
        .map_err(|_| Error::TimedOut)?
    }

    /// Closes the connection with a Close frame and waits (briefly) for the task to end.
    pub async fn close(&self) {
        if self.out_tx.send(Outgoing::Close).await.is_ok() {
            let _ = timeout(Duration::from_secs(2), self.closed()).await;
        }
    }

    fn reply_topic(&self, token: u64) -> Result<TopicName> {
        Ok(TopicName::new(format!("{}/{token}", self.shared.inbox()))?)
    }

    /// Subscribes the inbox `_inbox/<random>/+` the first time a request needs it.
    async fn ensure_inbox(&self) -> Result<()> {
        self.inbox_ready
            .get_or_try_init(|| async {
                self.subscribe(format!("{}/+", self.shared.inbox())).await
            })
            .await?;
        Ok(())
    }

    async fn publish_frame(
        &self,
        topic: TopicName,
        data: Value,
        retain: bool,
        reply: Option<TopicName>,
    ) -> Result<()> {
        self.call(|id| {
            ClientFrame::Pub(Publish {
                retain,
                reply: reply.map(Into::into),
                id: Some(id),
                ..Publish::new(topic, data)
            })
        })
        .await
    }

    /// Sends the frame built with a fresh `id` and waits for the broker's answer.
    async fn call(&self, frame: impl FnOnce(u64) -> ClientFrame<'static>) -> Result<()> {
        let id = self.shared.next_id();
        let mut pending = self.shared.expect_ack(id)?;
        self.send(&frame(id)).await?;
        match timeout(self.options.ack_timeout, &mut pending.rx).await {
            Ok(Ok(ack)) => ack.into_result(),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::TimedOut),
        }
    }

    async fn send(&self, frame: &ClientFrame<'_>) -> Result<()> {
        let msg = codec::encode(frame, self.options.encoding);
        self.out_tx
            .send(Outgoing::Frame(msg))
            .await
            .map_err(|_| Error::Closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ws_urls_are_accepted() {
        assert!(check_url("ws://127.0.0.1:8765").is_ok());
        assert!(check_url("ws://localhost:1/datafeed").is_ok());
        for bad in [
            "http://x:1",
            "127.0.0.1:8765",
            "ws://",
            "ws:///x",
            "wss://x:1",
        ] {
            assert!(matches!(check_url(bad), Err(Error::BadUrl { .. })), "{bad}");
        }
    }

    /// A server that completes the WebSocket handshake, then never says a word.
    async fn mute_server() -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let _ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            std::future::pending::<()>().await;
        });
        (url, task)
    }

    #[tokio::test]
    async fn a_silent_broker_is_given_up() {
        let (url, server) = mute_server().await;
        let options = ConnectOptions {
            keepalive: Some(Duration::from_millis(100)),
            ..ConnectOptions::default()
        };
        let (client, mut messages) = Client::connect(&url, options).await.unwrap();
        timeout(Duration::from_secs(5), client.closed())
            .await
            .expect("closed");
        assert!(messages.recv().await.is_none());
        server.abort();
    }

    #[tokio::test]
    async fn unanswered_frames_time_out() {
        let (url, server) = mute_server().await;
        let options = ConnectOptions {
            ack_timeout: Duration::from_millis(100),
            keepalive: None,
            ..ConnectOptions::default()
        };
        let (client, _messages) = Client::connect(&url, options).await.unwrap();
        assert!(matches!(client.subscribe("a").await, Err(Error::TimedOut)));
        server.abort();
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        drop(listener);
        let err = Client::connect(&url, ConnectOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Connect { .. }), "{err}");
    }
}
