//! The write side of a session: drains the client's [`Outbox`](crate::outbox::Outbox) into the
//! socket, many frames per flush.
//!
//! Polled, never awaited: when the socket is full the writer keeps its place and its session
//! reads on; when the queue is empty it is woken by the next push.

use std::collections::VecDeque;
use std::task::{Context, Poll};

use futures_util::{ready, SinkExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::WebSocketStream;

use crate::outbox::{Frame, Frames, OutboxRx, Outgoing};

/// At most this many frames are fed to the socket before a flush.
const WRITE_BATCH: usize = 256;

/// The write side of a session: drains the client's outbox into the socket, taking everything
/// queued at once, and flushing every [`WRITE_BATCH`] frames and whenever the queue runs dry.
/// Polled, never awaited: when the socket is full it keeps its place and the session reads on.
pub(crate) struct Writer {
    rx: OutboxRx,
    /// Items taken from the outbox and not written yet.
    batch: VecDeque<Outgoing>,
    /// The item being written, its frames not yet given to the socket.
    current: Option<Frames>,
    /// A frame taken from `current` that the socket had no room for yet.
    next: Option<Frame>,
    /// Fed to the socket since the last flush: frames; items begun, and their bytes as queued.
    frames: usize,
    items: usize,
    bytes: usize,
    /// Items in the last batch taken, to give back what a past burst left in `batch`.
    taken: usize,
    /// Whether the socket said it had no room while something waited to be written.
    blocked: bool,
    /// Bumped each time the socket takes something after being blocked, and at each flush:
    /// what the write deadline watches.
    progress: u64,
}

impl Writer {
    pub(crate) fn new(rx: OutboxRx) -> Self {
        Self {
            rx,
            batch: VecDeque::new(),
            current: None,
            next: None,
            frames: 0,
            items: 0,
            bytes: 0,
            taken: 0,
            blocked: false,
            progress: 0,
        }
    }

    /// Whether the socket has no room for what waits to be written.
    pub(crate) fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// A count that moves whenever the socket takes something: unchanged over a period means
    /// the socket accepted nothing in it.
    pub(crate) fn progress(&self) -> u64 {
        self.progress
    }

    /// The next frame to write, if anything is queued; registers for a wake-up if not.
    fn next_frame(&mut self, cx: &mut Context<'_>) -> Option<Frame> {
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
            self.items += 1;
            self.bytes += item.queued_len();
            self.current = Some(item.into_frames(self.rx.encoding()));
        }
    }

    /// Writes what it can. `Ready(Ok)` once everything queued is written and flushed;
    /// `Pending` while the queue is empty or the socket full (the task is woken for either).
    pub(crate) fn poll_write<S>(
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
                Poll::Ready(Ok(())) => ws.start_send_unpin(frame.into_message())?,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    self.next = Some(frame);
                    self.blocked = true;
                    return Poll::Pending;
                }
            }
            if self.blocked {
                self.blocked = false;
                self.progress += 1;
            }
            self.frames += 1;
            if self.frames >= WRITE_BATCH {
                ready!(self.poll_flush(ws, cx))?;
            }
        }
    }

    /// Writes everything queued and flushes it, then is `Ready`.
    pub(crate) fn poll_drain<S>(
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
        if done && self.frames == 0 {
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
        if self.frames > 0 {
            if ws.poll_flush_unpin(cx)?.is_pending() {
                self.blocked = true;
                return Poll::Pending;
            }
            self.rx.written(self.items, self.bytes);
            self.frames = 0;
            self.items = 0;
            self.bytes = 0;
            self.blocked = false;
            self.progress += 1;
        }
        Poll::Ready(Ok(()))
    }
}
