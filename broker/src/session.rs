//! One client connection: a reader loop (this task) that decodes frames and acts on them, and a
//! writer task that drains the client's [`Outbox`] into the socket, many frames per flush.
//!
//! ```text
//!  socket ─► reader ─► proto::decode_client_ref ─► Router (publish / subscribe / presence)
//!                 │                                      │ push, never waits
//!                 └──── ok / err / pong ──► Outbox ◄─────┘
//!                                             │ bounded (frames and bytes)
//!  socket ◄── feed, feed, ..., flush ◄── writer
//! ```
//!
//! The session ends when the client closes, the connection fails, the keepalive goes
//! unanswered, the client is cut off as a slow consumer, or the broker shuts down. In every case
//! its subscriptions go, its name is released and its presence turns offline (a last will).

use std::collections::{HashSet, VecDeque};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use proto::{ClientFrameRef, Encoding, ErrorCode, FrameError, ServerFrame, TopicFilter};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio::time::{interval, timeout, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::router::{ws_message, Outbox, OutboxRx, Outgoing, Publication, RouteCache, Router};

/// At most this many frames already read are handled before the reader looks at shutdown,
/// cut-off and keepalive again.
const READ_BATCH: usize = 64;
/// At most this many frames are fed to the socket before a flush.
const WRITE_BATCH: usize = 256;
/// How long the writer may take to deliver the last frames and the close frame.
const CLOSE_GRACE: Duration = Duration::from_millis(1000);
/// How long, after sending a close frame, the session waits for the client's.
const LINGER: Duration = Duration::from_millis(1000);

/// Why a session ended, and the close frame to send (none when the peer is already gone).
struct Ending {
    close: Option<CloseFrame>,
    reason: &'static str,
}

impl Ending {
    fn close(code: CloseCode, reason: &'static str) -> Self {
        Self {
            close: Some(CloseFrame {
                code,
                reason: reason.into(),
            }),
            reason,
        }
    }

    fn gone(reason: &'static str) -> Self {
        Self {
            close: None,
            reason,
        }
    }
}

/// Counts kept by a session and added to the shared [`Metrics`](crate::metrics::Metrics) once
/// per batch of frames read, not once per frame: a shared counter costs an atomic add each time.
#[derive(Default)]
struct Tally {
    frames_in: u64,
    bytes_in: u64,
    messages_in: u64,
}

/// A connected client.
struct Session {
    id: u64,
    peer: SocketAddr,
    router: Arc<Router>,
    config: Arc<Config>,
    outbox: Arc<Outbox>,
    /// Filters this client holds, to answer `unsub` and to clean up at the end.
    filters: HashSet<TopicFilter>,
    /// `hello` name and kind, once given.
    name: Option<(String, String)>,
    /// Counts not yet added to the shared metrics.
    tally: Tally,
    /// The subscribers of this client's last topic.
    routes: RouteCache,
}

/// Serves one WebSocket client until it goes away or `shutdown` is cancelled.
pub(crate) async fn serve<S>(
    ws: WebSocketStream<S>,
    id: u64,
    peer: SocketAddr,
    router: Arc<Router>,
    config: Arc<Config>,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (outbox, outbox_rx) = Outbox::new(id, config.outbox_frames, config.outbox_bytes);
    let (sink, mut stream) = ws.split();
    let (close_tx, close_rx) = oneshot::channel();
    let metrics = router.metrics.clone();
    let writer = tokio::spawn(write_loop(
        sink,
        outbox_rx,
        outbox.clone(),
        metrics.clone(),
        close_rx,
    ));
    metrics.connections.fetch_add(1, Relaxed);
    metrics.connections_total.fetch_add(1, Relaxed);
    tracing::debug!(client = id, %peer, "connected");

    let mut session = Session {
        id,
        peer,
        router,
        config,
        outbox,
        filters: HashSet::new(),
        name: None,
        tally: Tally::default(),
        routes: RouteCache::default(),
    };
    let ending = session.read_loop(&mut stream, &shutdown).await;
    tracing::debug!(client = id, %peer, reason = ending.reason, "disconnected");
    session.cleanup();

    // Let the writer deliver what is queued and the close frame, but never wait long on a peer
    // that does not read.
    let we_close = ending.close.is_some();
    let _ = close_tx.send(ending.close);
    let abort = writer.abort_handle();
    if timeout(CLOSE_GRACE, writer).await.is_err() {
        abort.abort();
    }
    if we_close {
        // Read on for a moment, until the client's own close frame or its end of stream:
        // closing the socket while the client's last frames (pongs, publishes) are in flight
        // would answer them with a TCP reset, and a reset can destroy our close frame unread
        // in the client's receive buffer.
        let _ = timeout(LINGER, async {
            while let Some(Ok(msg)) = stream.next().await {
                if msg.is_close() {
                    break;
                }
            }
        })
        .await;
    }
    metrics.connections.fetch_sub(1, Relaxed);
}

impl Session {
    async fn read_loop<S>(
        &mut self,
        stream: &mut SplitStream<WebSocketStream<S>>,
        shutdown: &CancellationToken,
    ) -> Ending
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let keepalive = self.config.keepalive;
        let mut ping = interval(keepalive);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ping.reset();
        let mut last_seen = Instant::now();
        // Pinned once: re-creating these futures for every frame cost more than the frame's
        // own routing on a busy connection.
        let shutdown = shutdown.cancelled();
        tokio::pin!(shutdown);
        let cut_off = self.outbox.cut_off().clone();
        let cut_off = cut_off.cancelled();
        tokio::pin!(cut_off);
        loop {
            tokio::select! {
                _ = &mut shutdown => {
                    return Ending::close(CloseCode::Away, "broker shutting down");
                }
                _ = &mut cut_off => {
                    return Ending::close(CloseCode::Policy, "slow consumer: outgoing queue full");
                }
                _ = ping.tick() => {
                    if last_seen.elapsed() > keepalive * 2 {
                        return Ending::close(CloseCode::Away, "keepalive timeout");
                    }
                    self.outbox.push(WsMessage::Ping(Default::default()), &self.router.metrics);
                }
                frame = stream.next() => {
                    last_seen = Instant::now();
                    if let Some(ending) = self.on_message(frame) {
                        return ending;
                    }
                    // Frames already read from the socket are handled right away, a bounded
                    // number of them, before the other branches get their turn again. They are
                    // polled with this task's own waker: a different one (`now_or_never`) would
                    // be swapped in and out of the socket's waker slot every time.
                    for _ in 1..READ_BATCH {
                        let Some(frame) = poll_fn(|cx| Poll::Ready(match stream.poll_next_unpin(cx) {
                            Poll::Ready(frame) => Some(frame),
                            Poll::Pending => None,
                        }))
                        .await
                        else {
                            break;
                        };
                        if let Some(ending) = self.on_message(frame) {
                            return ending;
                        }
                    }
                    self.add_tally();
                }
            }
        }
    }

    /// Adds the counts kept since the last time to the shared metrics.
    fn add_tally(&mut self) {
        let tally = std::mem::take(&mut self.tally);
        let metrics = &self.router.metrics;
        metrics.frames_in.fetch_add(tally.frames_in, Relaxed);
        metrics.bytes_in.fetch_add(tally.bytes_in, Relaxed);
        metrics.messages_in.fetch_add(tally.messages_in, Relaxed);
    }

    /// Handles what the socket gave: a frame, an error, or its end. Returns why the session
    /// ends, if it does.
    fn on_message(&mut self, frame: Option<Result<WsMessage, WsError>>) -> Option<Ending> {
        match frame {
            Some(Ok(WsMessage::Text(text))) => {
                // tungstenite has checked the text is UTF-8: it is not checked again.
                self.on_frame(text.len(), Encoding::Json, || {
                    proto::decode_client_text(&text)
                });
            }
            Some(Ok(WsMessage::Binary(bytes))) => {
                self.on_frame(bytes.len(), Encoding::MsgPack, || {
                    proto::decode_client_ref(&bytes, Encoding::MsgPack)
                });
            }
            Some(Ok(WsMessage::Close(_))) | None => return Some(Ending::gone("closed by client")),
            // Pings are answered by tungstenite; pongs only prove liveness.
            Some(Ok(_)) => {}
            Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. })))
            | Some(Err(WsError::Capacity(_))) => {
                self.router.metrics.error(ErrorCode::TooLarge);
                return Some(Ending::close(
                    CloseCode::Size,
                    "frame far over the size limit",
                ));
            }
            Some(Err(WsError::Utf8(_))) => {
                return Some(Ending::close(CloseCode::Invalid, "text frame is not UTF-8"));
            }
            Some(Err(WsError::Protocol(_))) => {
                return Some(Ending::close(
                    CloseCode::Protocol,
                    "WebSocket protocol error",
                ));
            }
            Some(Err(e)) => {
                tracing::debug!(client = self.id, error = %e, "connection error");
                return Some(Ending::gone("connection error"));
            }
        }
        None
    }

    /// Handles one client frame of `len` bytes in `enc`, which `decode` decodes; every failure
    /// becomes an `err` frame and the session goes on.
    fn on_frame<'f>(
        &mut self,
        len: usize,
        enc: Encoding,
        decode: impl FnOnce() -> Result<ClientFrameRef<'f>, FrameError>,
    ) {
        self.tally.frames_in += 1;
        self.tally.bytes_in += len as u64;
        self.outbox.set_encoding(enc);
        if len > self.config.max_frame_bytes {
            let err = FrameError::new(
                None,
                ErrorCode::TooLarge,
                format!(
                    "frame of {len} bytes is over the limit of {} bytes",
                    self.config.max_frame_bytes
                ),
            );
            return self.reply_err(&err);
        }
        let result = decode().and_then(|frame| self.apply(frame));
        match result {
            Ok(Some(answer)) => self.reply(&answer),
            Ok(None) => {}
            Err(err) => self.reply_err(&err),
        }
    }

    /// Carries out a valid frame; returns the answer to send, if any.
    fn apply(&mut self, frame: ClientFrameRef<'_>) -> Result<Option<ServerFrame>, FrameError> {
        let id = frame.id();
        let ok = id.map(|id| ServerFrame::Ok { id });
        match frame {
            ClientFrameRef::Pub(p) => {
                self.tally.messages_in += 1;
                self.router.publish_cached(
                    Publication {
                        topic: p.topic.view(),
                        data: p.data.as_ref(),
                        from: self.name.as_ref().map(|(n, _)| n.as_str()),
                        reply: p.reply.as_ref().map(|r| r.as_str()),
                        retain: p.retain,
                    },
                    &mut self.routes,
                );
                Ok(ok)
            }
            ClientFrameRef::Sub { topic, .. } => {
                if !self.filters.contains(&topic)
                    && self.filters.len() >= self.config.max_subscriptions
                {
                    return Err(FrameError::new(
                        id,
                        ErrorCode::TooManySubs,
                        format!(
                            "this connection already holds {} subscriptions, the limit",
                            self.config.max_subscriptions
                        ),
                    ));
                }
                self.router.subscribe(&topic, &self.outbox);
                self.filters.insert(topic);
                Ok(ok)
            }
            ClientFrameRef::Unsub { topic, .. } => {
                if self.filters.remove(&topic) {
                    self.router.unsubscribe(&topic, self.id);
                }
                Ok(ok)
            }
            ClientFrameRef::Hello { name, kind, .. } => {
                if let Some((current, _)) = &self.name {
                    return Err(FrameError::new(
                        id,
                        ErrorCode::AlreadyNamed,
                        format!("this connection is already named {current:?}"),
                    ));
                }
                if !self.router.claim_name(&name, self.id) {
                    return Err(FrameError::new(
                        id,
                        ErrorCode::NameTaken,
                        format!("a client named {name:?} is already online"),
                    ));
                }
                let kind = kind.unwrap_or_else(|| "client".to_string());
                self.router
                    .publish_presence(&name, &kind, true, &self.peer.to_string());
                tracing::info!(client = self.id, %name, %kind, peer = %self.peer, "hello");
                self.name = Some((name, kind));
                Ok(ok)
            }
            ClientFrameRef::Ping { id } => Ok(id.map(|id| ServerFrame::Pong { id })),
        }
    }

    fn reply(&self, frame: &ServerFrame) {
        let enc = self.outbox.encoding();
        self.outbox.push(
            ws_message(proto::encode_server(frame, enc), enc),
            &self.router.metrics,
        );
    }

    fn reply_err(&self, err: &FrameError) {
        tracing::debug!(client = self.id, code = %err.code, message = %err.message, "refused a frame");
        self.router.metrics.error(err.code);
        self.reply(&err.to_frame());
    }

    /// Drops everything the client held; turns its presence offline.
    fn cleanup(&mut self) {
        self.add_tally();
        self.router.unsubscribe_all(self.filters.iter(), self.id);
        self.filters.clear();
        if let Some((name, kind)) = self.name.take() {
            // Offline first, then free the name: a newcomer can only take the name (and
            // publish itself online) after our last word on it.
            self.router
                .publish_presence(&name, &kind, false, &self.peer.to_string());
            self.router.release_name(&name, self.id);
        }
    }
}

/// Drains the outbox into the socket: waits until something is queued, takes everything queued
/// at once, feeds it, flushing every [`WRITE_BATCH`] frames and at the end. On the close signal
/// it delivers what is still queued and the close frame.
async fn write_loop<S>(
    mut sink: SplitSink<WebSocketStream<S>, WsMessage>,
    mut rx: OutboxRx,
    outbox: Arc<Outbox>,
    metrics: Arc<Metrics>,
    mut close_rx: oneshot::Receiver<Option<CloseFrame>>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // What was queued, taken in one go; empty between rounds.
    let mut batch = VecDeque::new();
    loop {
        tokio::select! {
            close = &mut close_rx => {
                // A slow consumer gets no backlog: it is cut off precisely for not reading it.
                if !outbox.is_slow() {
                    rx.try_recv_all(&mut batch);
                    let mut written = Written::default();
                    while let Some(item) = batch.pop_front() {
                        if write_item(&mut sink, item, &outbox, &mut written).await.is_err() {
                            return;
                        }
                    }
                    written.hand_over(&outbox, &metrics);
                }
                let _ = match close.ok().flatten() {
                    Some(frame) => sink.send(WsMessage::Close(Some(frame))).await,
                    None => sink.close().await,
                };
                return;
            }
            () = rx.recv_all(&mut batch) => {
                let taken = batch.len();
                let mut written = Written::default();
                while let Some(item) = batch.pop_front() {
                    if write_item(&mut sink, item, &outbox, &mut written).await.is_err() {
                        return;
                    }
                    if written.frames >= WRITE_BATCH {
                        if sink.flush().await.is_err() {
                            return;
                        }
                        written.hand_over(&outbox, &metrics);
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
                written.hand_over(&outbox, &metrics);
                OutboxRx::recycle(&mut batch, taken);
            }
        }
    }
}

/// Frames and queued bytes fed to the socket since they were last accounted for.
#[derive(Default)]
struct Written {
    frames: usize,
    bytes: usize,
}

impl Written {
    /// Takes the bytes out of the client's budget and counts them out, once for many frames.
    fn hand_over(&mut self, outbox: &Outbox, metrics: &Metrics) {
        if self.bytes > 0 {
            outbox.sent(self.bytes);
            metrics.bytes_out.fetch_add(self.bytes as u64, Relaxed);
        }
        *self = Self::default();
    }
}

/// Feeds one queued item (a frame, or every frame of a replay, flushing along the way so a
/// long replay does not pile up in memory), and counts it in `written`.
async fn write_item<S>(
    sink: &mut SplitSink<WebSocketStream<S>, WsMessage>,
    item: Outgoing,
    outbox: &Outbox,
    written: &mut Written,
) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    written.bytes += item.queued_len();
    let mut fed = 0;
    for frame in item.into_frames(outbox.encoding()) {
        sink.feed(frame).await?;
        fed += 1;
        if fed % WRITE_BATCH == 0 {
            sink.flush().await?;
        }
    }
    written.frames += fed;
    Ok(())
}
