//! One client connection, served by one task that does both sides: it reads and acts on the
//! client's frames, and drains the client's [`Outbox`] into the socket, many frames per flush.
//!
//! ```text
//!  socket ─► read ─► proto::decode_client_text / _ref ─► Router (publish / subscribe / presence)
//!              │                                             │ push, never waits
//!              └──── ok / err / pong ──► Outbox ◄────────────┘ (wakes this task)
//!                                          │ bounded (frames and bytes)
//!  socket ◄── start_send, ..., flush ◄── write
//! ```
//!
//! Both sides are polled in turn and neither waits on the other: a client that does not read
//! (its socket full) still has its frames read, until its outbox fills and it is cut off. One
//! task rather than a reader and a writer: no lock between two halves of the socket, no second
//! wake-up per batch, and one task less for every idle connection to carry.
//!
//! The session ends when the client closes, the connection fails, the keepalive goes
//! unanswered, the client is cut off as a slow consumer, or the broker shuts down. In every case
//! its subscriptions go, its name is released and its presence turns offline (a last will).

use std::collections::{HashSet, VecDeque};
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{ready, SinkExt, StreamExt};
use proto::{ClientFrameRef, Encoding, ErrorCode, FrameError, ServerFrame, TopicFilter};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{interval, timeout, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::router::{
    ws_message, Frames, Outbox, OutboxRx, Outgoing, Publication, RouteCache, Router,
};

/// At most this many frames already read are handled before the session looks at shutdown,
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
    mut ws: WebSocketStream<S>,
    id: u64,
    peer: SocketAddr,
    router: Arc<Router>,
    config: Arc<Config>,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (outbox, outbox_rx) = Outbox::new(id, config.outbox_frames, config.outbox_bytes);
    let metrics = router.metrics.clone();
    metrics.connections.fetch_add(1, Relaxed);
    metrics.connections_total.fetch_add(1, Relaxed);
    tracing::debug!(client = id, %peer, "connected");

    let mut writer = Writer::new(outbox_rx, outbox.clone(), metrics.clone());
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
    let ending = session.run(&mut ws, &mut writer, &shutdown).await;
    tracing::debug!(client = id, %peer, reason = ending.reason, "disconnected");
    session.cleanup();

    // Deliver what is queued and the close frame, but never wait long on a peer that does not
    // read. A slow consumer gets no backlog: it is cut off precisely for not reading it.
    let we_close = ending.close.is_some();
    let slow = session.outbox.is_slow();
    let _ = timeout(CLOSE_GRACE, async {
        if !slow {
            poll_fn(|cx| writer.poll_drain(&mut ws, cx)).await?;
        }
        match ending.close {
            Some(frame) => ws.send(WsMessage::Close(Some(frame))).await,
            None => SinkExt::close(&mut ws).await,
        }
    })
    .await;
    // From here on the outbox refuses pushes.
    drop(writer);
    if we_close {
        // Read on for a moment, until the client's own close frame or its end of stream:
        // closing the socket while the client's last frames (pongs, publishes) are in flight
        // would answer them with a TCP reset, and a reset can destroy our close frame unread
        // in the client's receive buffer.
        let _ = timeout(LINGER, async {
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_close() {
                    break;
                }
            }
        })
        .await;
    }
    metrics.connections.fetch_sub(1, Relaxed);
}

/// What woke the session.
enum Event {
    /// The session must end.
    End(Ending),
    /// Time to ping the client.
    Ping,
    /// The socket gave a frame, an error or its end.
    Frame(Option<Result<WsMessage, WsError>>),
}

impl Session {
    /// Serves the client until the session must end; says why.
    async fn run<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        writer: &mut Writer,
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
            let event = poll_fn(|cx| {
                if shutdown.as_mut().poll(cx).is_ready() {
                    let ending = Ending::close(CloseCode::Away, "broker shutting down");
                    return Poll::Ready(Event::End(ending));
                }
                if cut_off.as_mut().poll(cx).is_ready() {
                    let ending =
                        Ending::close(CloseCode::Policy, "slow consumer: outgoing queue full");
                    return Poll::Ready(Event::End(ending));
                }
                if ping.poll_tick(cx).is_ready() {
                    return Poll::Ready(Event::Ping);
                }
                // Writing first: whatever it cannot finish now, it resumes when woken.
                if let Poll::Ready(Err(e)) = writer.poll_write(ws, cx) {
                    tracing::debug!(client = self.id, error = %e, "connection error");
                    return Poll::Ready(Event::End(Ending::gone("connection error")));
                }
                ws.poll_next_unpin(cx).map(Event::Frame)
            })
            .await;
            match event {
                Event::End(ending) => return ending,
                Event::Ping => {
                    if last_seen.elapsed() > keepalive * 2 {
                        return Ending::close(CloseCode::Away, "keepalive timeout");
                    }
                    self.outbox
                        .push(WsMessage::Ping(Default::default()), &self.router.metrics);
                }
                Event::Frame(frame) => {
                    last_seen = Instant::now();
                    if let Some(ending) = self.on_message(frame) {
                        return ending;
                    }
                    // Frames already read from the socket are handled right away, a bounded
                    // number of them, before the other events get their turn again.
                    for _ in 1..READ_BATCH {
                        let Some(frame) = poll_fn(|cx| {
                            Poll::Ready(match ws.poll_next_unpin(cx) {
                                Poll::Ready(frame) => Some(frame),
                                Poll::Pending => None,
                            })
                        })
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

/// The write side of a session: drains the client's outbox into the socket, taking everything
/// queued at once, and flushing every [`WRITE_BATCH`] frames and whenever the queue runs dry.
/// Polled, never awaited: when the socket is full it keeps its place and the session reads on.
struct Writer {
    rx: OutboxRx,
    outbox: Arc<Outbox>,
    metrics: Arc<Metrics>,
    /// Items taken from the outbox and not written yet.
    batch: VecDeque<Outgoing>,
    /// The item being written, its frames not yet given to the socket.
    current: Option<Frames>,
    /// A frame taken from `current` that the socket had no room for yet.
    next: Option<WsMessage>,
    /// Written since the last flush.
    written: Written,
    /// Items in the last batch taken, to give back what a past burst left in `batch`.
    taken: usize,
}

impl Writer {
    fn new(rx: OutboxRx, outbox: Arc<Outbox>, metrics: Arc<Metrics>) -> Self {
        Self {
            rx,
            outbox,
            metrics,
            batch: VecDeque::new(),
            current: None,
            next: None,
            written: Written::default(),
            taken: 0,
        }
    }

    /// The next frame to write, if anything is queued; registers for a wake-up if not.
    fn next_frame(&mut self, cx: &mut Context<'_>) -> Option<WsMessage> {
        loop {
            if let Some(frame) = self.next.take() {
                return Some(frame);
            }
            if let Some(frame) = self.current.as_mut().and_then(Iterator::next) {
                return Some(frame);
            }
            self.current = None;
            let item = match self.batch.pop_front() {
                Some(item) => item,
                None => {
                    OutboxRx::recycle(&mut self.batch, self.taken);
                    if self.rx.poll_recv_all(cx, &mut self.batch).is_pending() {
                        return None;
                    }
                    self.taken = self.batch.len();
                    continue;
                }
            };
            self.written.bytes += item.queued_len();
            self.current = Some(item.into_frames(self.outbox.encoding()));
        }
    }

    /// Writes what it can. `Ready(Ok)` once everything queued is written and flushed;
    /// `Pending` while the queue is empty or the socket full (the task is woken for either).
    fn poll_write<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), WsError>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // No bound of its own on a long backlog: tokio's budget makes the socket say `Pending`
        // after so many writes in one go, waking the task to go on later. (Yielding here too
        // made the scheduler move the task to another thread, and the cross-thread wake-ups
        // that follow cost more than the writing.)
        loop {
            let Some(frame) = self.next_frame(cx) else {
                ready!(self.poll_flush(ws, cx))?;
                return Poll::Pending;
            };
            match ws.poll_ready_unpin(cx) {
                Poll::Ready(Ok(())) => ws.start_send_unpin(frame)?,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    self.next = Some(frame);
                    return Poll::Pending;
                }
            }
            self.written.frames += 1;
            if self.written.frames >= WRITE_BATCH {
                ready!(self.poll_flush(ws, cx))?;
            }
        }
    }

    /// Writes everything queued and flushes it, then is `Ready`.
    fn poll_drain<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), WsError>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if let Poll::Ready(Err(e)) = self.poll_write(ws, cx) {
            return Poll::Ready(Err(e));
        }
        let done = self.next.is_none() && self.current.is_none() && self.batch.is_empty();
        if done && self.written.frames == 0 {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    /// Flushes what was written since the last flush, if anything was.
    fn poll_flush<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), WsError>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if self.written.frames > 0 {
            ready!(ws.poll_flush_unpin(cx))?;
            self.written.hand_over(&self.outbox, &self.metrics);
        }
        Poll::Ready(Ok(()))
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
