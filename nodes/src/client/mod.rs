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
//! - `into_topic`: [`IntoTopicName`] / [`IntoTopicFilter`], so that methods take `&str` too;
//! - [`stream`]: the broker address ([`BrokerUrl`]) and the TCP or TLS connection under the
//!   WebSocket ([`Stream`]);
//! - [`tls`]: whom a `wss://` connection trusts ([`TlsTrust`]: the public CAs, a CA file, or a
//!   pinned certificate fingerprint).
//!
//! Credentials: with [`ConnectOptions::token`], the upgrade request carries
//! `Authorization: Bearer <token>`; a broker that refuses it answers HTTP 401
//! ([`Error::Unauthorized`]).

mod codec;
mod connection;
mod into_topic;
mod messages;
mod mux;
pub mod stream;
pub mod tls;

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
pub use stream::{BrokerUrl, Stream};
pub use tls::TlsTrust;

/// How to connect. [`ConnectOptions::default`] suits a node: MessagePack, 5 s to connect,
/// 10 s for the broker's answers, no credentials, the public CAs for `wss://`.
#[derive(Clone)]
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
    /// Credentials, sent as `Authorization: Bearer <token>` on the upgrade request. `None`:
    /// anonymous.
    pub token: Option<String>,
    /// Whom a `wss://` connection trusts. A CA or a fingerprint also refuses plain `ws://`
    /// addresses ([`Error::NotTls`]): whoever asks for a verified broker does not want one in
    /// clear.
    pub tls: TlsTrust,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("encoding", &self.encoding)
            .field("connect_timeout", &self.connect_timeout)
            .field("ack_timeout", &self.ack_timeout)
            .field("inbound_capacity", &self.inbound_capacity)
            .field("outbound_capacity", &self.outbound_capacity)
            .field("replies_capacity", &self.replies_capacity)
            .field("keepalive", &self.keepalive)
            // Never in logs.
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .finish()
    }
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
            token: None,
            tls: TlsTrust::System,
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

    /// These options for a broker that discovery found advertising the certificate
    /// `fingerprint`: the pin is taken unless a trust of one's own was set (a CA or a
    /// fingerprint rule, strictly).
    pub fn pinning_discovered(&self, fingerprint: Option<[u8; 32]>) -> Self {
        let mut options = self.clone();
        if let (Some(fp), true) = (fingerprint, self.tls.is_system()) {
            options.tls = TlsTrust::Fingerprint(fp);
        }
        options
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

impl Client {
    /// Connects to a broker at a `ws://host:port` or `wss://host:port` URL (a path and a
    /// query, such as `?token=...`, are sent as they are).
    ///
    /// # Errors
    /// [`Error::BadUrl`] for anything but a `ws://` or `wss://` URL, [`Error::BadToken`],
    /// [`Error::Connect`] when the connection or the handshake fails; for `wss://`
    /// [`Error::Tls`], [`Error::FingerprintMismatch`], [`Error::BadCa`];
    /// [`Error::NotTls`] for a `ws://` URL with a CA or a fingerprint;
    /// [`Error::Unauthorized`] when the broker refuses the token (HTTP 401),
    /// [`Error::Refused`] for another HTTP answer; [`Error::TimedOut`] after
    /// [`ConnectOptions::connect_timeout`].
    pub async fn connect(url: &str, options: ConnectOptions) -> Result<(Client, Messages)> {
        let target = BrokerUrl::parse(url)?;
        let request = upgrade_request(&target, options.token.as_deref())?;
        let tls = match (target.is_tls(), &options.tls) {
            (true, trust) => Some(trust.client_config()?),
            (false, TlsTrust::System) => None,
            (false, _) => {
                return Err(Error::NotTls {
                    url: url.to_string(),
                    tls: false,
                })
            }
        };
        let (ws, _response) = timeout(options.connect_timeout, async {
            let stream = stream::connect(&target, tls).await?;
            tokio_tungstenite::client_async_with_config(request, stream, None)
                .await
                .map_err(|e| upgrade_error(url, e))
        })
        .await
        .map_err(|_| Error::TimedOut)??;
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

/// The WebSocket upgrade request for `url`, with the token as a bearer credential.
///
/// # Errors
/// [`Error::BadUrl`] when tungstenite cannot make a request of the URL, [`Error::BadToken`].
pub fn upgrade_request(
    url: &BrokerUrl,
    token: Option<&str>,
) -> Result<tokio_tungstenite::tungstenite::handshake::client::Request> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::{header, HeaderValue};
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| Error::BadUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
    if let Some(token) = token {
        let mut value =
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| Error::BadToken)?;
        value.set_sensitive(true);
        request.headers_mut().insert(header::AUTHORIZATION, value);
    }
    Ok(request)
}

/// How much of a refusal's body is kept for the error message.
const REFUSAL_BODY: usize = 200;

/// What a failed WebSocket handshake means: a 401 is about credentials, another HTTP answer is
/// a refusal that says why in its body.
fn upgrade_error(url: &str, error: tokio_tungstenite::tungstenite::Error) -> Error {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match error {
        WsError::Http(response) if response.status().as_u16() == 401 => Error::Unauthorized {
            url: url.to_string(),
        },
        WsError::Http(response) => {
            let body = response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).trim().to_string())
                .unwrap_or_default();
            Error::Refused {
                url: url.to_string(),
                status: response.status().as_u16(),
                body: body.chars().take(REFUSAL_BODY).collect(),
            }
        }
        other => Error::Connect {
            url: url.to_string(),
            source: Box::new(other),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_goes_in_the_authorization_header() {
        let url = BrokerUrl::parse("wss://b:1/x?y=1").unwrap();
        let request = upgrade_request(&url, Some("s3cret")).unwrap();
        assert_eq!(request.uri(), "wss://b:1/x?y=1");
        assert_eq!(request.headers()["authorization"], "Bearer s3cret");
        let anonymous = upgrade_request(&url, None).unwrap();
        assert!(anonymous.headers().get("authorization").is_none());
        assert!(matches!(
            upgrade_request(&url, Some("a\nb")),
            Err(Error::BadToken)
        ));
    }

    #[test]
    fn a_discovered_pin_applies_unless_a_trust_was_given() {
        let default = ConnectOptions::default();
        assert_eq!(
            default.pinning_discovered(Some([1; 32])).tls,
            TlsTrust::Fingerprint([1; 32])
        );
        assert_eq!(default.pinning_discovered(None).tls, TlsTrust::System);
        let pinned = ConnectOptions {
            tls: TlsTrust::Fingerprint([2; 32]),
            ..ConnectOptions::default()
        };
        assert_eq!(
            pinned.pinning_discovered(Some([1; 32])).tls,
            TlsTrust::Fingerprint([2; 32])
        );
        let ca = ConnectOptions {
            tls: TlsTrust::Ca(Vec::new()),
            ..ConnectOptions::default()
        };
        assert_eq!(
            ca.pinning_discovered(Some([1; 32])).tls,
            TlsTrust::Ca(Vec::new())
        );
    }

    #[test]
    fn the_token_stays_out_of_debug_output() {
        let options = ConnectOptions {
            token: Some("s3cret".into()),
            ..ConnectOptions::default()
        };
        assert!(!format!("{options:?}").contains("s3cret"));
    }

    #[tokio::test]
    async fn a_trust_of_ones_own_refuses_plain_ws() {
        let options = ConnectOptions {
            tls: TlsTrust::Fingerprint([0; 32]),
            ..ConnectOptions::default()
        };
        let err = Client::connect("ws://127.0.0.1:1", options)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotTls { tls: false, .. }), "{err}");
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
