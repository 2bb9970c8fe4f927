//! One client connection, served by one task that does both sides: it reads and acts on the
//! client's frames, and its [`Writer`] drains the client's [`Outbox`] into the socket, many
//! frames per flush.
//!
//! ```text
//!  socket ─► read ─► ClientFrame::decode(_text) ─► Router (publish / subscribe / presence)
//!              │                                        │ push, never waits
//!              └──── ok / err / pong ──► Outbox ◄───────┘ (wakes this task)
//!                                          │ bounded (frames and bytes)
//!  socket ◄── start_send, ..., flush ◄── Writer
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

use std::borrow::Cow;
use std::collections::HashSet;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use proto::{ClientFrame, Encoding, ErrorCode, FrameError, ServerFrame, TopicFilter};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{interval, sleep_until, timeout, Instant, MissedTickBehavior, Sleep};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::auth::access::Refreshed;
use crate::auth::Access;
use crate::config::Config;
use crate::outbox::{Frame, Outbox};
use crate::router::{RouteCache, Router};
use crate::store::Ack;
use crate::writer::Writer;

/// At most this many frames already read are handled before the session looks at shutdown,
/// cut-off and keepalive again.
const READ_BATCH: usize = 64;
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
    /// Who the client is and what it may do.
    access: Access,
    /// A `hello` waiting for its token to be checked or its name to be taken across the
    /// cluster (which take time, so they are done between frames, before the next is read).
    pending_hello: Option<PendingHello>,
    /// Cancelled if the cluster finds the name held on another broker (taken here while the
    /// cluster could not say): the client is then disconnected.
    eviction: Option<CancellationToken>,
}

/// A `hello` whose token is still to be checked, or whose name is to be taken cluster-wide.
struct PendingHello {
    name: String,
    kind: Option<String>,
    token: Option<String>,
    id: Option<u64>,
}

/// Serves one WebSocket client until it goes away or `shutdown` is cancelled.
pub(crate) async fn serve<S>(
    mut ws: WebSocketStream<S>,
    id: u64,
    peer: SocketAddr,
    router: Arc<Router>,
    config: Arc<Config>,
    access: Access,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (outbox, outbox_rx) = Outbox::new(
        id,
        config.outbox_frames,
        config.outbox_bytes,
        &router.backlogs,
    );
    tracing::debug!(client = id, %peer, "connected");

    let mut writer = Writer::new(outbox_rx);
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
        access,
        pending_hello: None,
        eviction: None,
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
}

/// An `err` with `forbidden`.
fn forbidden(id: Option<u64>, message: String) -> FrameError {
    FrameError::new(id, ErrorCode::Forbidden, message)
}

/// What answers a retained `pub` with `id` once the store has its value on disk: `ok`, or
/// `err` with `store_failed`.
fn answer_when_durable(outbox: Arc<Outbox>, id: u64) -> Ack {
    Box::new(move |written| match written {
        Ok(()) => {
            outbox.reply(&ServerFrame::Ok { id });
        }
        Err(e) => {
            let err = FrameError::new(
                Some(id),
                ErrorCode::StoreFailed,
                format!("delivered, but not made durable: {e}"),
            );
            outbox.refuse(&err);
        }
    })
}

/// The write deadline: a client whose socket accepts nothing for this long while frames wait
/// for it is a slow consumer.
///
/// Cheap on the busy path: the timer is armed when the socket first blocks and is not moved
/// while it makes progress; when it fires, the writer's progress count tells whether anything
/// was taken since it was armed (then it is armed again from there). A client is so cut off
/// between one and two periods after its socket stopped taking anything.
struct WriteDeadline {
    period: Duration,
    /// Allocated on the first block: idle connections never carry one.
    timer: Option<Pin<Box<Sleep>>>,
    /// The writer's progress when the timer was armed; `None` while it is not.
    armed_at: Option<u64>,
}

impl WriteDeadline {
    fn new(period: Duration) -> Self {
        Self {
            period,
            timer: None,
            armed_at: None,
        }
    }

    fn arm(&mut self, progress: u64) {
        let at = Instant::now() + self.period;
        match &mut self.timer {
            Some(timer) => timer.as_mut().reset(at),
            None => self.timer = Some(Box::pin(sleep_until(at))),
        }
        self.armed_at = Some(progress);
    }

    /// `Ready` once the writer has been blocked, taking nothing, for the whole period.
    fn poll(&mut self, cx: &mut std::task::Context<'_>, writer: &Writer) -> Poll<()> {
        if !writer.is_blocked() {
            self.armed_at = None;
            return Poll::Pending;
        }
        let progress = writer.progress();
        if self.armed_at.is_none() {
            self.arm(progress);
        }
        loop {
            let Some(timer) = &mut self.timer else {
                return Poll::Pending;
            };
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if self.armed_at == Some(progress) {
                return Poll::Ready(());
            }
            // It took something since: a fresh period from now.
            self.arm(progress);
        }
    }
}

/// What woke the session.
enum Event {
    /// The session must end.
    End(Ending),
    /// Time to ping the client.
    Ping,
    /// The auth file was reloaded.
    Reload,
    /// The cluster found this client's name held on another broker.
    Evicted,
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
        let mut deadline = WriteDeadline::new(self.config.write_deadline);
        // Only with an auth file: cancelled when it is reloaded.
        let mut replaced = self
            .access
            .replaced()
            .map(|t| Box::pin(t.cancelled_owned()));
        // Armed once the client is named in a cluster: resolves if the cluster evicts it.
        let mut evicted = None;
        loop {
            let event = poll_fn(|cx| {
                if let Some(reload) = &mut replaced {
                    if reload.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Event::Reload);
                    }
                }
                if let Some(evicted) = &mut evicted {
                    if Future::poll(Pin::as_mut(evicted), cx).is_ready() {
                        return Poll::Ready(Event::Evicted);
                    }
                }
                if shutdown.as_mut().poll(cx).is_ready() {
                    let ending = Ending::close(CloseCode::Away, "broker shutting down");
                    return Poll::Ready(Event::End(ending));
                }
                if cut_off.as_mut().poll(cx).is_ready() {
                    let ending = Ending::close(CloseCode::Policy, "slow consumer");
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
                if deadline.poll(cx, writer).is_ready() {
                    self.outbox
                        .mark_slow("its socket accepted nothing for the write deadline");
                    let ending = Ending::close(CloseCode::Policy, "slow consumer");
                    return Poll::Ready(Event::End(ending));
                }
                ws.poll_next_unpin(cx).map(Event::Frame)
            })
            .await;
            match event {
                Event::End(ending) => return ending,
                Event::Reload => {
                    if let Some(ending) = self.on_reload() {
                        return ending;
                    }
                    replaced = self
                        .access
                        .replaced()
                        .map(|t| Box::pin(t.cancelled_owned()));
                }
                Event::Evicted => {
                    if let Some((name, _)) = &self.name {
                        self.reply_err(&FrameError::new(
                            None,
                            ErrorCode::NameTaken,
                            format!(
                                "{name:?} is held by a client of another broker of the cluster \
                                 (this broker took it while cut off from the cluster)"
                            ),
                        ));
                    }
                    return Ending::close(CloseCode::Policy, "name held on another broker");
                }
                Event::Ping => {
                    let silent = last_seen.elapsed();
                    if silent > keepalive * 2 {
                        return Ending::close(CloseCode::Away, "keepalive timeout");
                    }
                    // A client heard from lately needs no ping: one that publishes and never
                    // reads would only pile them up unread (and closing a socket with unread
                    // data resets it, losing what the broker had not read yet).
                    if silent >= keepalive / 2 {
                        self.outbox.push(Frame::ping());
                    }
                }
                Event::Frame(frame) => {
                    last_seen = Instant::now();
                    if let Some(ending) = self.on_message(frame) {
                        return ending;
                    }
                    if let Some(ending) = self.finish_hello(shutdown.as_mut()).await {
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
                        if let Some(ending) = self.finish_hello(shutdown.as_mut()).await {
                            return ending;
                        }
                    }
                    self.add_tally();
                    if evicted.is_none() {
                        evicted = self.eviction.clone().map(|t| Box::pin(t.cancelled_owned()));
                    }
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
                    ClientFrame::decode_text(&text)
                });
            }
            Some(Ok(WsMessage::Binary(bytes))) => {
                self.on_frame(bytes.len(), Encoding::MsgPack, || {
                    ClientFrame::decode(&bytes, Encoding::MsgPack)
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
        decode: impl FnOnce() -> Result<ClientFrame<'f>, FrameError>,
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
    fn apply(
        &mut self,
        frame: ClientFrame<'_>,
    ) -> Result<Option<ServerFrame<'static>>, FrameError> {
        let id = frame.id();
        let ok = id.map(|id| ServerFrame::Ok { id });
        match frame {
            ClientFrame::Pub(p) => {
                self.tally.messages_in += 1;
                if !self.access.may_publish(&p.topic) {
                    return Err(forbidden(id, format!("may not publish on {}", p.topic)));
                }
                if let Some(reply) = &p.reply {
                    if !self.access.may_reply_to(reply) {
                        return Err(forbidden(
                            id,
                            format!("may not ask for replies on {reply}, which it may not read"),
                        ));
                    }
                }
                let from = self.name.as_ref().map(|(n, _)| n.as_str());
                // Acknowledged means durable: with a store on disk, a retained `pub`'s `ok`
                // comes from the store once its value is on disk.
                let durable = match id {
                    Some(id) if p.retain && self.router.is_durable() => {
                        Some(answer_when_durable(self.outbox.clone(), id))
                    }
                    _ => None,
                };
                let answered_later = durable.is_some();
                let routed = self
                    .router
                    .publish_cached(&p, from, &mut self.routes, durable);
                if let Some(full) = routed.refused {
                    return Err(FrameError::new(
                        id,
                        ErrorCode::RetainedFull,
                        format!("not retained (still delivered): {full}"),
                    ));
                }
                Ok(if answered_later { None } else { ok })
            }
            ClientFrame::Sub { topic, .. } => {
                if !self.access.may_subscribe(&topic) {
                    return Err(forbidden(
                        id,
                        format!("may not subscribe to {topic}: not all it matches is allowed"),
                    ));
                }
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
            ClientFrame::Unsub { topic, .. } => {
                if self.filters.remove(&topic) {
                    self.router.unsubscribe(&topic, self.id);
                }
                Ok(ok)
            }
            ClientFrame::Hello {
                name, kind, token, ..
            } => {
                // A token for a broker with an auth file, or a name to take across the
                // cluster: done before anything else is read.
                let token = token.filter(|_| self.access.auth().is_some());
                if token.is_some() || self.router.cluster().is_some() {
                    self.pending_hello = Some(PendingHello {
                        name: name.into_owned(),
                        kind: kind.map(Cow::into_owned),
                        token: token.map(Cow::into_owned),
                        id,
                    });
                    return Ok(None);
                }
                self.take_name(name.into_owned(), kind.map(Cow::into_owned), id)
            }
            ClientFrame::Ping { id } => Ok(id.map(|id| ServerFrame::Pong { id })),
        }
    }

    /// Names the client, if the name is free and its permissions allow it.
    fn take_name(
        &mut self,
        name: String,
        kind: Option<String>,
        id: Option<u64>,
    ) -> Result<Option<ServerFrame<'static>>, FrameError> {
        self.reserve_name(&name, id)?;
        Ok(self.announce(name, kind, id))
    }

    /// Checks a `hello` name and takes it on this broker.
    fn reserve_name(&mut self, name: &str, id: Option<u64>) -> Result<(), FrameError> {
        if let Some((current, _)) = &self.name {
            return Err(FrameError::new(
                id,
                ErrorCode::AlreadyNamed,
                format!("this connection is already named {current:?}"),
            ));
        }
        if !self.access.may_take_name(name) {
            return Err(forbidden(id, format!("may not take the name {name:?}")));
        }
        if !self.router.claim_name(name, self.id) {
            return Err(FrameError::new(
                id,
                ErrorCode::NameTaken,
                format!("a client named {name:?} is already online"),
            ));
        }
        Ok(())
    }

    /// Names the client (its name taken): presence online, the `ok`.
    fn announce(
        &mut self,
        name: String,
        kind: Option<String>,
        id: Option<u64>,
    ) -> Option<ServerFrame<'static>> {
        let kind = kind.unwrap_or_else(|| "client".into());
        self.router
            .publish_presence(&name, &kind, true, &self.peer.to_string());
        tracing::info!(client = self.id, %name, %kind, peer = %self.peer, user = ?self.access.user(), "hello");
        self.name = Some((name, kind));
        id.map(|id| ServerFrame::Ok { id })
    }

    /// Takes a `hello` name on this broker, then across the cluster; a name held on another
    /// broker is `name_taken`. With NATS away, the broker decides alone.
    async fn take_name_in_cluster(
        &mut self,
        hello: PendingHello,
        shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> Result<Option<ServerFrame<'static>>, Option<Ending>> {
        let PendingHello { name, kind, id, .. } = hello;
        if let Err(err) = self.reserve_name(&name, id) {
            self.reply_err(&err);
            return Err(None);
        }
        let Some(link) = self.router.cluster().cloned() else {
            return Ok(self.announce(name, kind, id));
        };
        let shown_kind = kind.clone().unwrap_or_else(|| "client".into());
        let addr = self.peer.to_string();
        let claim = tokio::select! {
            () = shutdown => {
                self.router.release_name(&name, self.id);
                return Err(Some(Ending::close(CloseCode::Away, "broker shutting down")));
            }
            claim = link.claim(&name, &shown_kind, &addr, self.id) => claim,
        };
        match claim {
            None => {
                self.router.release_name(&name, self.id);
                self.reply_err(&FrameError::new(
                    id,
                    ErrorCode::NameTaken,
                    format!("a client named {name:?} is online on another broker of the cluster"),
                ));
                Err(None)
            }
            Some(eviction) => {
                self.eviction = Some(eviction);
                Ok(self.announce(name, kind, id))
            }
        }
    }

    /// Checks the token of a pending `hello`, then names the client. Wrong credentials end
    /// the session (`auth_failed`, close 1008).
    async fn finish_hello(
        &mut self,
        shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> Option<Ending> {
        let hello = self.pending_hello.take()?;
        let mut shutdown = shutdown;
        let (Some(token), Some(auth)) = (hello.token.clone(), self.access.auth().cloned()) else {
            return self.finish_name(hello, shutdown).await;
        };
        let user = tokio::select! {
            () = shutdown.as_mut() => {
                return Some(Ending::close(CloseCode::Away, "broker shutting down"));
            }
            user = auth.authenticate(&token, self.peer.ip()) => user.ok(),
        };
        let accepted = match (user, self.access.user()) {
            (Some(user), Some(current)) => user == *current,
            (Some(user), None) => {
                let became = self.access.become_user(user);
                // What it subscribed to as anonymous must suit the user too.
                self.drop_disallowed();
                became
            }
            (None, _) => false,
        };
        if !accepted {
            self.reply_err(&FrameError::new(
                hello.id,
                ErrorCode::AuthFailed,
                "credentials refused",
            ));
            return Some(Ending::close(CloseCode::Policy, "authentication failed"));
        }
        self.finish_name(hello, shutdown).await
    }

    /// The name part of a pending `hello`: answered here; `Some` if the session must end.
    async fn finish_name(
        &mut self,
        hello: PendingHello,
        shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> Option<Ending> {
        match self.take_name_in_cluster(hello, shutdown).await {
            Ok(Some(answer)) => {
                self.reply(&answer);
                None
            }
            Ok(None) | Err(None) => None,
            Err(Some(ending)) => Some(ending),
        }
    }

    /// Puts reloaded rules in force: subscriptions no longer allowed are dropped (and the
    /// client told); a user gone from the file is disconnected.
    fn on_reload(&mut self) -> Option<Ending> {
        if self.access.refresh() == Refreshed::Removed {
            tracing::info!(client = self.id, user = ?self.access.user(), "user removed from the auth file: disconnected");
            return Some(Ending::close(
                CloseCode::Policy,
                "user removed from the auth file",
            ));
        }
        self.drop_disallowed();
        None
    }

    /// Drops the subscriptions the permissions in force do not allow, telling the client of each.
    fn drop_disallowed(&mut self) {
        let lost: Vec<TopicFilter> = self
            .filters
            .iter()
            .filter(|f| !self.access.may_subscribe(f))
            .cloned()
            .collect();
        for filter in lost {
            self.router.unsubscribe(&filter, self.id);
            self.filters.remove(&filter);
            self.reply_err(&forbidden(
                None,
                format!("subscription {filter} dropped: no longer allowed"),
            ));
        }
    }

    fn reply(&self, frame: &ServerFrame<'_>) {
        self.outbox.reply(frame);
    }

    fn reply_err(&self, err: &FrameError) {
        tracing::debug!(client = self.id, code = %err.code, message = %err.message, "refused a frame");
        self.outbox.refuse(err);
    }

    /// Drops everything the client held; turns its presence offline.
    fn cleanup(&mut self) {
        self.add_tally();
        self.router.unsubscribe_all(self.filters.iter(), self.id);
        self.filters.clear();
        if let Some((name, kind)) = self.name.take() {
            // Offline first, then free the name: a newcomer can only take the name (and
            // publish itself online) after our last word on it. Evicted, the name is another
            // broker's client's, online: not ours to turn offline.
            let evicted = self.eviction.take().is_some_and(|t| t.is_cancelled());
            if !evicted {
                self.router
                    .publish_presence(&name, &kind, false, &self.peer.to_string());
            }
            self.router.release_name(&name, self.id);
            if let Some(link) = self.router.cluster() {
                link.release(&name, self.id);
            }
        }
    }
}
