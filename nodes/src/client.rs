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

mod mux;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures_util::{SinkExt, Stream, StreamExt};
use proto::codec::{decode_server, encode_client, Encoding};
use proto::{ClientFrame, Message, Publish, ServerFrame, TopicError, TopicFilter, TopicName};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OnceCell};
use tokio::time::{timeout, timeout_at, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::error::{Error, Result};
use mux::{Ack, Shared};

/// How many queued outgoing frames the connection task writes before one flush.
const WRITE_BATCH: usize = 64;

/// Anything that names a topic to publish to: `&str`, `String` or a [`TopicName`].
pub trait IntoTopicName {
    /// Validates (if needed) and converts.
    ///
    /// # Errors
    /// [`TopicError`] when the string is not a topic one may publish to.
    fn into_topic_name(self) -> Result<TopicName, TopicError>;
}

impl IntoTopicName for TopicName {
    fn into_topic_name(self) -> Result<TopicName, TopicError> {
        Ok(self)
    }
}

impl IntoTopicName for &TopicName {
    fn into_topic_name(self) -> Result<TopicName, TopicError> {
        Ok(self.clone())
    }
}

impl IntoTopicName for &str {
    fn into_topic_name(self) -> Result<TopicName, TopicError> {
        TopicName::new(self)
    }
}

impl IntoTopicName for String {
    fn into_topic_name(self) -> Result<TopicName, TopicError> {
        TopicName::new(self)
    }
}

impl IntoTopicName for &String {
    fn into_topic_name(self) -> Result<TopicName, TopicError> {
        TopicName::new(self.as_str())
    }
}

/// Anything that names a subscription filter: `&str`, `String` or a [`TopicFilter`].
pub trait IntoTopicFilter {
    /// Validates (if needed) and converts.
    ///
    /// # Errors
    /// [`TopicError`] when the string is not a valid filter.
    fn into_topic_filter(self) -> Result<TopicFilter, TopicError>;
}

impl IntoTopicFilter for TopicFilter {
    fn into_topic_filter(self) -> Result<TopicFilter, TopicError> {
        Ok(self)
    }
}

impl IntoTopicFilter for &TopicFilter {
    fn into_topic_filter(self) -> Result<TopicFilter, TopicError> {
        Ok(self.clone())
    }
}

impl IntoTopicFilter for &str {
    fn into_topic_filter(self) -> Result<TopicFilter, TopicError> {
        TopicFilter::new(self)
    }
}

impl IntoTopicFilter for String {
    fn into_topic_filter(self) -> Result<TopicFilter, TopicError> {
        TopicFilter::new(self)
    }
}

impl IntoTopicFilter for &String {
    fn into_topic_filter(self) -> Result<TopicFilter, TopicError> {
        TopicFilter::new(self.as_str())
    }
}

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

/// What the handles ask the connection task to do.
enum Outgoing {
    /// Write this WebSocket message.
    Frame(WsMessage),
    /// Send a Close frame and end the connection.
    Close,
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

/// The messages delivered to this connection's subscriptions (replies to requests excepted),
/// in the order the broker sent them. Ends when the connection does.
#[derive(Debug)]
pub struct Messages {
    rx: mpsc::Receiver<Message>,
}

impl Messages {
    /// The next message, or `None` once the connection has ended and the queue is drained.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// A message if one is queued now.
    pub fn try_recv(&mut self) -> Option<Message> {
        self.rx.try_recv().ok()
    }
}

impl Stream for Messages {
    type Item = Message;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Message>> {
        self.rx.poll_recv(cx)
    }
}

/// The replies to one [`Client::request_many`], until its window closes or `max` arrived.
pub struct Replies {
    pending: mux::Pending<mpsc::Receiver<Message>>,
    deadline: Instant,
    max: Option<usize>,
    received: usize,
}

impl std::fmt::Debug for Replies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replies")
            .field("deadline", &self.deadline)
            .field("max", &self.max)
            .field("received", &self.received)
            .finish()
    }
}

impl Replies {
    /// The next reply; `Ok(None)` when the window closed or `max` replies arrived.
    ///
    /// # Errors
    /// [`Error::NoResponders`] when the window closes without a single reply;
    /// [`Error::Closed`] when the connection ends first.
    pub async fn next(&mut self) -> Result<Option<Message>> {
        if self.max.is_some_and(|max| self.received >= max) {
            return Ok(None);
        }
        match timeout_at(self.deadline, self.pending.rx.recv()).await {
            Ok(Some(msg)) => {
                self.received += 1;
                Ok(Some(msg))
            }
            Ok(None) => Err(Error::Closed),
            Err(_) if self.received == 0 => Err(Error::NoResponders),
            Err(_) => Ok(None),
        }
    }

    /// Every reply until the window closes or `max` arrived.
    ///
    /// # Errors
    /// As [`Replies::next`].
    pub async fn collect(mut self) -> Result<Vec<Message>> {
        let mut all = Vec::new();
        while let Some(msg) = self.next().await? {
            all.push(msg);
        }
        Ok(all)
    }

    /// How many replies arrived so far.
    pub fn received(&self) -> usize {
        self.received
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
        let (out_tx, out_rx) = mpsc::channel(options.outbound_capacity.max(1));
        let (msg_tx, msg_rx) = mpsc::channel(options.inbound_capacity.max(1));
        let conn = Connection {
            ws,
            out_rx,
            msg_tx,
            shared: Arc::clone(&shared),
            encoding: options.encoding,
            keepalive: options.keepalive,
            last_heard: Instant::now(),
        };
        let span = tracing::debug_span!("connection", url);
        tokio::spawn(tracing::Instrument::instrument(conn.run(), span));
        let client = Client {
            out_tx,
            shared,
            inbox_ready: Arc::new(OnceCell::new()),
            options: Arc::new(options),
            url: url.into(),
        };
        Ok((client, Messages { rx: msg_rx }))
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
            name,
            kind,
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
            topic: topic.into_topic_name()?,
            data: data.into(),
            retain,
            reply: None,
            id: None,
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
            Ok(Replies {
                pending,
                deadline,
                max,
                received: 0,
            })
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
                topic,
                data,
                retain,
                reply,
                id: Some(id),
            })
        })
        .await
    }

    /// Sends the frame built with a fresh `id` and waits for the broker's answer.
    async fn call(&self, frame: impl FnOnce(u64) -> ClientFrame) -> Result<()> {
        let id = self.shared.next_id();
        let mut pending = self.shared.expect_ack(id)?;
        self.send(&frame(id)).await?;
        match timeout(self.options.ack_timeout, &mut pending.rx).await {
            Ok(Ok(ack)) => ack.into_result(),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::TimedOut),
        }
    }

    async fn send(&self, frame: &ClientFrame) -> Result<()> {
        let msg = to_ws(frame, self.options.encoding);
        self.out_tx
            .send(Outgoing::Frame(msg))
            .await
            .map_err(|_| Error::Closed)
    }
}

/// Resolves at the interval's next tick; never without one.
async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Encodes a frame as the WebSocket message of its encoding.
fn to_ws(frame: &ClientFrame, encoding: Encoding) -> WsMessage {
    let bytes = encode_client(frame, encoding);
    match encoding {
        Encoding::Json => {
            WsMessage::text(String::from_utf8(bytes).expect("the JSON encoder writes UTF-8"))
        }
        Encoding::MsgPack => WsMessage::binary(bytes),
    }
}

/// Why the connection task stopped.
#[derive(Debug)]
enum Ending {
    /// A handle asked, or every handle is gone: say goodbye with a Close frame.
    Local,
    /// The broker closed, or the socket failed.
    Remote(String),
}

/// The task that owns the socket.
struct Connection {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    out_rx: mpsc::Receiver<Outgoing>,
    msg_tx: mpsc::Sender<Message>,
    shared: Arc<Shared>,
    encoding: Encoding,
    /// See [`ConnectOptions::keepalive`].
    keepalive: Option<Duration>,
    /// When the broker last sent anything (a frame, a WebSocket ping or pong).
    last_heard: Instant,
}

impl Connection {
    async fn run(mut self) {
        let ending = self.serve().await;
        // Wake every waiter before the (possibly slow) goodbye.
        self.shared.close();
        match ending {
            Ending::Local => {
                let close = CloseFrame {
                    code: CloseCode::Normal,
                    reason: "bye".into(),
                };
                let _ = timeout(Duration::from_secs(1), self.ws.close(Some(close))).await;
                tracing::debug!("connection closed");
            }
            Ending::Remote(why) => tracing::debug!(%why, "connection ended"),
        }
    }

    async fn serve(&mut self) -> Ending {
        // Checked a few times per keepalive period; never when there is no keepalive.
        let mut check = self.keepalive.map(|k| {
            let mut i = tokio::time::interval((k / 4).max(Duration::from_millis(1)));
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        let mut pinged = false;
        loop {
            tokio::select! {
                () = tick(&mut check) => {
                    let (Some(keepalive), silent) = (self.keepalive, self.last_heard.elapsed()) else {
                        continue;
                    };
                    if silent >= keepalive * 2 {
                        return Ending::Remote(format!("the broker went silent for {silent:?}"));
                    }
                    if silent >= keepalive && !pinged {
                        pinged = true;
                        // Unregistered id: its pong only proves the broker is alive.
                        let ping = ClientFrame::Ping { id: Some(self.shared.next_id()) };
                        if let Err(e) = self.write_batch(to_ws(&ping, self.encoding)).await {
                            return e;
                        }
                    }
                }
                incoming = self.ws.next() => match incoming {
                    Some(Ok(msg)) => {
                        self.last_heard = Instant::now();
                        pinged = false;
                        if let Some(ending) = self.on_incoming(msg) {
                            return ending;
                        }
                    }
                    Some(Err(e)) => return Ending::Remote(e.to_string()),
                    None => return Ending::Remote("the broker closed the connection".into()),
                },
                outgoing = self.out_rx.recv() => match outgoing {
                    Some(Outgoing::Frame(msg)) => {
                        if let Err(e) = self.write_batch(msg).await {
                            return e;
                        }
                    }
                    Some(Outgoing::Close) | None => return Ending::Local,
                },
            }
        }
    }

    /// Feeds `first` and whatever else is queued (up to a batch), then flushes once.
    async fn write_batch(&mut self, first: WsMessage) -> Result<(), Ending> {
        let failed = |e: tokio_tungstenite::tungstenite::Error| Ending::Remote(e.to_string());
        self.ws.feed(first).await.map_err(failed)?;
        for _ in 1..WRITE_BATCH {
            match self.out_rx.try_recv() {
                Ok(Outgoing::Frame(msg)) => self.ws.feed(msg).await.map_err(failed)?,
                Ok(Outgoing::Close) => {
                    self.ws.flush().await.map_err(failed)?;
                    return Err(Ending::Local);
                }
                Err(_) => break,
            }
        }
        self.ws.flush().await.map_err(failed)
    }

    /// Handles one WebSocket message from the broker; `Some` ends the connection.
    fn on_incoming(&mut self, msg: WsMessage) -> Option<Ending> {
        let frame = match &msg {
            WsMessage::Text(text) => decode_server(text.as_bytes(), Encoding::Json),
            WsMessage::Binary(bytes) => decode_server(bytes, Encoding::MsgPack),
            WsMessage::Close(frame) => {
                let why = frame
                    .as_ref()
                    .map(|f| format!("the broker closed the connection: {} {}", f.code, f.reason))
                    .unwrap_or_else(|| "the broker closed the connection".into());
                return Some(Ending::Remote(why));
            }
            // Pings are answered by tungstenite itself.
            WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => return None,
        };
        match frame {
            Ok(frame) => self.on_frame(frame),
            Err(e) => tracing::warn!(error = %e, "undecodable frame from the broker ignored"),
        }
        None
    }

    fn on_frame(&mut self, frame: ServerFrame) {
        match frame {
            ServerFrame::Msg(msg) => {
                let Some(msg) = self.shared.route(msg) else {
                    return;
                };
                match self.msg_tx.try_send(msg) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(msg)) => {
                        let n = self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                        // Logged at the 1st, 2nd, 4th, 8th... drop, not for every one.
                        if (n + 1).is_power_of_two() {
                            tracing::warn!(
                                topic = %msg.topic,
                                dropped = n + 1,
                                "message dropped: the receiver is not keeping up"
                            );
                        }
                    }
                    // Nobody reads messages on this connection (a publish-only tool).
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
            ServerFrame::Ok { id } => {
                self.shared.resolve_ack(id, Ack::Ok);
            }
            ServerFrame::Pong { id } => {
                self.shared.resolve_ack(id, Ack::Pong);
            }
            ServerFrame::Err { id, code, message } => {
                let answered = id.is_some_and(|id| {
                    self.shared.resolve_ack(
                        id,
                        Ack::Err {
                            code,
                            message: message.clone(),
                        },
                    )
                });
                if !answered {
                    tracing::warn!(?id, %code, %message, "the broker refused a frame");
                }
            }
        }
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

    #[test]
    fn frames_use_the_message_type_of_their_encoding() {
        let ping = ClientFrame::Ping { id: Some(3) };
        assert!(
            matches!(to_ws(&ping, Encoding::Json), WsMessage::Text(t) if t.as_str() == r#"{"op":"ping","id":3}"#)
        );
        assert!(matches!(
            to_ws(&ping, Encoding::MsgPack),
            WsMessage::Binary(_)
        ));
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

    fn reply(topic: &str) -> Message {
        Message {
            topic: TopicName::new(topic).unwrap(),
            data: serde_json::json!([1, 0, 1]),
            from: Some("pin-1".into()),
            reply: None,
            retained: false,
        }
    }

    fn replies(shared: &Arc<Shared>, window: Duration, max: Option<usize>) -> Replies {
        Replies {
            pending: shared.expect_replies(1, 8).unwrap(),
            deadline: Instant::now() + window,
            max,
            received: 0,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn replies_are_collected_until_the_window_closes() {
        let shared = Shared::new("_inbox/t".into());
        let mut r = replies(&shared, Duration::from_secs(1), None);
        assert!(shared.route(reply("_inbox/t/1")).is_none());
        assert!(shared.route(reply("_inbox/t/1")).is_none());
        let start = Instant::now();
        assert!(r.next().await.unwrap().is_some());
        assert!(r.next().await.unwrap().is_some());
        assert!(r.next().await.unwrap().is_none());
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        assert_eq!(r.received(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_without_replies_means_no_responders() {
        let shared = Shared::new("_inbox/t".into());
        let r = replies(&shared, Duration::from_millis(300), None);
        assert!(matches!(r.collect().await, Err(Error::NoResponders)));
    }

    #[tokio::test(start_paused = true)]
    async fn max_replies_end_the_wait_at_once() {
        let shared = Shared::new("_inbox/t".into());
        let mut r = replies(&shared, Duration::from_secs(60), Some(1));
        assert!(shared.route(reply("_inbox/t/1")).is_none());
        let start = Instant::now();
        assert!(r.next().await.unwrap().is_some());
        assert!(r.next().await.unwrap().is_none());
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_connection_ends_the_replies_with_closed() {
        let shared = Shared::new("_inbox/t".into());
        let mut r = replies(&shared, Duration::from_secs(60), None);
        shared.close();
        assert!(matches!(r.next().await, Err(Error::Closed)));
    }

    #[tokio::test(start_paused = true)]
    async fn replies_that_arrive_after_the_window_are_dropped() {
        let shared = Shared::new("_inbox/t".into());
        let r = replies(&shared, Duration::from_millis(100), None);
        assert!(matches!(r.collect().await, Err(Error::NoResponders)));
        // The entry is gone: a late reply is swallowed, not delivered anywhere.
        assert!(shared.route(reply("_inbox/t/1")).is_none());
    }

    #[test]
    fn topic_conversions_validate() {
        assert!("a/b".into_topic_name().is_ok());
        assert!("a/+".into_topic_name().is_err());
        assert!("$SYS/x".into_topic_name().is_err());
        assert!("a/+".into_topic_filter().is_ok());
        assert!(String::from("a/#/b").into_topic_filter().is_err());
    }
}
