//! The task that owns the socket of one connection: a `select!` over the socket, the frames
//! the handles queue and the keepalive check.
//!
//! It writes what the handles queue in batches (many frames, one flush), hands each frame from
//! the broker to the waiter it answers ([`Shared`]) or to [`Messages`](super::Messages), and
//! gives the connection up when the broker falls silent. When it ends, every waiter is woken.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::Message;
use futures_util::{SinkExt, StreamExt};
use proto::Encoding;
use proto::{ClientFrame, ServerFrame};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use super::codec;
use super::mux::{Ack, Shared};
use super::stream::Stream;
use super::ConnectOptions;

/// How many queued outgoing frames the connection task writes before one flush.
const WRITE_BATCH: usize = 64;

/// The WebSocket a client connection runs over.
pub(super) type Socket = WebSocketStream<Stream>;

/// What the handles ask the connection task to do.
pub(super) enum Outgoing {
    /// Write this WebSocket message.
    Frame(WsMessage),
    /// Send a Close frame and end the connection.
    Close,
}

/// Starts the task that owns `ws`. Returns where the handles queue frames, and where the task
/// delivers the messages of subscriptions.
pub(super) fn spawn(
    ws: Socket,
    shared: Arc<Shared>,
    options: &ConnectOptions,
    url: &str,
) -> (mpsc::Sender<Outgoing>, mpsc::Receiver<Message>) {
    let (out_tx, out_rx) = mpsc::channel(options.outbound_capacity.max(1));
    let (msg_tx, msg_rx) = mpsc::channel(options.inbound_capacity.max(1));
    let conn = Connection {
        ws,
        out_rx,
        msg_tx,
        shared,
        encoding: options.encoding,
        keepalive: options.keepalive,
        last_heard: Instant::now(),
    };
    let span = tracing::debug_span!("connection", url);
    tokio::spawn(tracing::Instrument::instrument(conn.run(), span));
    (out_tx, msg_rx)
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
    ws: Socket,
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
                        if let Err(e) = self.write_batch(codec::encode(&ping, self.encoding)).await {
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
        if let WsMessage::Close(frame) = &msg {
            let why = frame
                .as_ref()
                .map(|f| format!("the broker closed the connection: {} {}", f.code, f.reason))
                .unwrap_or_else(|| "the broker closed the connection".into());
            return Some(Ending::Remote(why));
        }
        match codec::decode(&msg) {
            Some(Ok(frame)) => self.on_frame(frame),
            Some(Err(e)) => tracing::warn!(error = %e, "undecodable frame from the broker ignored"),
            // Pings are answered by tungstenite itself.
            None => {}
        }
        None
    }

    fn on_frame(&mut self, frame: ServerFrame<'static>) {
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
                            message: message.to_string(),
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
