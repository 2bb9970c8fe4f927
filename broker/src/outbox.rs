//! Each client's outgoing queue: what the router and the client's own session queue for it,
//! what its writer takes, and the budget that decides when a client is a slow consumer.
//!
//! ```text
//!  Router (messages, replays) ─┐                      ┌─► Writer (its session's write side)
//!  Session (ok / err / pong) ──┴─► Outbox::push ──────┤   takes the whole backlog at once,
//!                                   bounded in frames │   hands the bytes back once written
//!                                   and bytes; full ⇒ └─► cut off (close 1008), counted
//! ```
//!
//! One home for what a client is sent: the [`Frame`] (an encoded frame, shared by every
//! subscriber of the same encoding), the encoding the client reads, the byte budget (charged on
//! [`Outbox::push`], given back by [`OutboxRx::written`]) and the cut-off.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use proto::{Encoding, ServerFrame};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::router::Retained;
use crate::trie::Subscriber;

/// An encoded frame, ready for the socket. Cheap to clone: the bytes are shared, so one
/// encoding of a message serves every subscriber that reads that encoding.
#[derive(Debug, Clone)]
pub struct Frame(WsMessage);

impl Frame {
    /// `frame` encoded in `enc`, as the WebSocket message of that encoding.
    pub fn encode<D: proto::AsData>(frame: &ServerFrame<'_, D>, enc: Encoding) -> Self {
        Self(frame.encode(enc).into())
    }

    /// A WebSocket ping (the keepalive).
    pub fn ping() -> Self {
        Self(WsMessage::Ping(Default::default()))
    }

    /// Its size, as counted against the client's byte budget.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty (only a ping is).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The WebSocket message, for the writer.
    pub(crate) fn into_message(self) -> WsMessage {
        self.0
    }
}

/// One item of a client's outgoing queue.
#[derive(Debug)]
pub enum Outgoing {
    /// A frame, already encoded.
    Frame(Frame),
    /// The retained values a new subscription replays, in one queue slot however many they
    /// are, so that a replay of thousands of retained topics does not make the subscriber look
    /// slow. Each value's frames are encoded once and shared by every subscriber.
    Replay {
        /// The values, shared with the store.
        values: Vec<Arc<Retained>>,
        /// Their encoded size, counted against the client's byte budget like any frame.
        bytes: usize,
    },
}

impl Outgoing {
    /// A replay of `values`.
    pub fn replay(values: Vec<Arc<Retained>>) -> Self {
        let bytes = values.iter().map(|v| v.frame(Encoding::Json).len()).sum();
        Self::Replay { values, bytes }
    }

    /// Bytes this item stands for in the queue.
    pub fn queued_len(&self) -> usize {
        match self {
            Self::Frame(frame) => frame.len(),
            Self::Replay { bytes, .. } => *bytes,
        }
    }

    /// The frames to write, in `enc`.
    pub fn into_frames(self, enc: Encoding) -> Frames {
        let (frame, replay) = match self {
            Self::Frame(frame) => (Some(frame), Vec::new()),
            Self::Replay { values, .. } => (None, values),
        };
        Frames {
            frame,
            replay: replay.into_iter(),
            enc,
        }
    }
}

/// The frames of one [`Outgoing`] item, as [`Outgoing::into_frames`] gives them.
#[derive(Debug)]
pub struct Frames {
    frame: Option<Frame>,
    replay: std::vec::IntoIter<Arc<Retained>>,
    enc: Encoding,
}

impl Iterator for Frames {
    type Item = Frame;

    fn next(&mut self) -> Option<Frame> {
        self.frame
            .take()
            .or_else(|| self.replay.next().map(|r| r.frame(self.enc)))
    }
}

/// Items waiting for a client's writer.
#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Outgoing>,
    /// Set when the writer is gone: nothing can be delivered any more.
    closed: bool,
}

/// One client's bounded outgoing queue, shared by everything that delivers to that client (its
/// own session for replies, the router for messages); its writer holds the [`OutboxRx`].
///
/// A plain deque under a mutex, not a channel: the writer swaps the whole backlog out in one
/// lock, so a busy queue costs one short critical section per item pushed and none per item
/// written, and an idle one costs no allocation at all (a channel allocates its first block of
/// slots up front, which is most of what an idle connection would otherwise weigh).
#[derive(Debug)]
pub struct Outbox {
    id: u64,
    /// The encoding this client last used (an [`Encoding::index`]): replies and messages are
    /// encoded in it. Written by its session, read by the router and by the writer.
    encoding: AtomicU8,
    queue: Mutex<Queue>,
    /// Most items queued at once.
    max_frames: usize,
    /// Wakes the writer when the queue stops being empty.
    ready: AtomicWaker,
    /// Bytes queued and not yet handed to the socket; bounds memory as well as frame count.
    queued_bytes: AtomicUsize,
    max_bytes: usize,
    /// Cancelled when the client is cut off for not reading; its session watches it.
    cut_off: CancellationToken,
    /// Set once, so a slow consumer is counted once.
    slow: AtomicBool,
    /// Where slow consumers and bytes written are counted.
    metrics: Arc<Metrics>,
}

impl Subscriber for Outbox {
    fn id(&self) -> u64 {
        self.id
    }
}

impl Outbox {
    /// A queue of at most `frames` frames and `max_bytes` bytes for client `id`, counted in
    /// `metrics`; returns the receiving end too.
    pub fn new(
        id: u64,
        frames: usize,
        max_bytes: usize,
        metrics: Arc<Metrics>,
    ) -> (Arc<Self>, OutboxRx) {
        let outbox = Arc::new(Self {
            id,
            encoding: AtomicU8::new(Encoding::Json.index() as u8),
            queue: Mutex::new(Queue::default()),
            max_frames: frames.max(1),
            ready: AtomicWaker::new(),
            queued_bytes: AtomicUsize::new(0),
            max_bytes,
            cut_off: CancellationToken::new(),
            slow: AtomicBool::new(false),
            metrics,
        });
        let rx = OutboxRx {
            outbox: outbox.clone(),
        };
        (outbox, rx)
    }

    /// The encoding replies and messages use for this client.
    pub fn encoding(&self) -> Encoding {
        if self.encoding.load(Relaxed) == Encoding::MsgPack.index() as u8 {
            Encoding::MsgPack
        } else {
            Encoding::Json
        }
    }

    /// Records the encoding of the client's latest frame.
    pub fn set_encoding(&self, enc: Encoding) {
        self.encoding.store(enc.index() as u8, Relaxed);
    }

    /// A token cancelled when this client is cut off as a slow consumer.
    pub fn cut_off(&self) -> &CancellationToken {
        &self.cut_off
    }

    /// Whether this client was cut off as a slow consumer.
    pub fn is_slow(&self) -> bool {
        self.slow.load(Relaxed)
    }

    /// Queues a frame without waiting. When the queue is full (in frames or bytes) the client
    /// is not keeping up: it is cut off and counted, and the frame is dropped. Returns whether
    /// the frame was queued.
    pub fn push(&self, frame: Frame) -> bool {
        self.enqueue(Outgoing::Frame(frame))
    }

    /// Queues `server_frame` in the client's encoding (a reply to the client itself).
    pub fn reply(&self, server_frame: &ServerFrame<'_>) -> bool {
        self.push(Frame::encode(server_frame, self.encoding()))
    }

    /// Queues any item; see [`Outbox::push`].
    pub fn enqueue(&self, item: Outgoing) -> bool {
        let len = item.queued_len();
        let before = self.queued_bytes.fetch_add(len, Relaxed);
        if before + len > self.max_bytes && before > 0 {
            self.queued_bytes.fetch_sub(len, Relaxed);
            self.mark_slow();
            return false;
        }
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if queue.closed {
            // The session is ending; nothing to deliver to.
            drop(queue);
            self.queued_bytes.fetch_sub(len, Relaxed);
            return false;
        }
        if queue.items.len() >= self.max_frames {
            drop(queue);
            self.queued_bytes.fetch_sub(len, Relaxed);
            self.mark_slow();
            return false;
        }
        queue.items.push_back(item);
        let was_empty = queue.items.len() == 1;
        drop(queue);
        if was_empty {
            // Only an empty queue can have a writer waiting on it.
            self.ready.wake();
        }
        true
    }

    fn mark_slow(&self) {
        if !self.slow.swap(true, Relaxed) {
            self.metrics.slow_consumers.fetch_add(1, Relaxed);
            tracing::warn!(
                client = self.id,
                "slow consumer: outbox full, cutting it off"
            );
            self.cut_off.cancel();
        }
    }
}

/// The receiving end of an [`Outbox`], held by the client's writer. Dropping it closes the
/// outbox: later pushes are refused (not counted as slow).
#[derive(Debug)]
pub struct OutboxRx {
    outbox: Arc<Outbox>,
}

impl OutboxRx {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.outbox
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The encoding to write in: the one the client last used.
    pub fn encoding(&self) -> Encoding {
        self.outbox.encoding()
    }

    /// Takes the next item, if one is queued.
    pub fn try_recv(&mut self) -> Option<Outgoing> {
        self.queue().items.pop_front()
    }

    /// Moves everything queued into `batch` (which should be empty), without waiting. Returns
    /// whether anything was taken.
    pub fn try_recv_all(&mut self, batch: &mut VecDeque<Outgoing>) -> bool {
        let mut queue = self.queue();
        if queue.items.is_empty() {
            return false;
        }
        // Swap rather than drain: both deques keep their capacity, so a steady stream of
        // batches allocates nothing.
        std::mem::swap(&mut queue.items, batch);
        true
    }

    /// Moves everything queued into `batch` (which should be empty), or, if nothing is, arranges
    /// for the task to be woken when something is.
    pub fn poll_recv_all(
        &mut self,
        cx: &mut Context<'_>,
        batch: &mut VecDeque<Outgoing>,
    ) -> Poll<()> {
        if self.try_recv_all(batch) {
            return Poll::Ready(());
        }
        // Registered before looking again: a push in between wakes us rather than being missed.
        self.outbox.ready.register(cx.waker());
        if self.try_recv_all(batch) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Waits until something is queued, then moves everything queued into `batch` (which
    /// should be empty). Cancel-safe: nothing is taken until it returns.
    pub async fn recv_all(&mut self, batch: &mut VecDeque<Outgoing>) {
        std::future::poll_fn(|cx| self.poll_recv_all(cx, batch)).await;
    }

    /// Gives back memory a past burst left in an emptied `batch`.
    pub fn recycle(batch: &mut VecDeque<Outgoing>, taken: usize) {
        if batch.capacity() > 64 && taken < batch.capacity() / 8 {
            batch.shrink_to(taken.max(16));
        }
    }

    /// The hand-over: items of `bytes` (as queued) reached the socket. Gives them back to the
    /// client's budget and counts them out, once for many frames.
    pub fn written(&self, bytes: usize) {
        if bytes > 0 {
            self.outbox.queued_bytes.fetch_sub(bytes, Relaxed);
            self.outbox
                .metrics
                .bytes_out
                .fetch_add(bytes as u64, Relaxed);
        }
    }
}

impl Drop for OutboxRx {
    fn drop(&mut self) {
        let mut queue = self.queue();
        queue.closed = true;
        queue.items = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Frame {
        Frame(WsMessage::text(s))
    }

    #[test]
    fn a_closed_outbox_refuses_without_counting_a_slow_consumer() {
        let metrics = Arc::new(Metrics::default());
        let (outbox, rx) = Outbox::new(1, 1, 1 << 20, metrics.clone());
        drop(rx);
        assert!(!outbox.push(text("x")));
        assert!(!outbox.is_slow());
        assert_eq!(metrics.slow_consumers.load(Relaxed), 0);
    }

    #[test]
    fn a_full_outbox_cuts_its_client_off_once() {
        let metrics = Arc::new(Metrics::default());
        let (outbox, _rx) = Outbox::new(1, 2, 1 << 20, metrics.clone());
        assert!(outbox.push(text("a")));
        assert!(outbox.push(text("b")));
        assert!(!outbox.push(text("c")));
        assert!(!outbox.push(text("d")));
        assert!(outbox.is_slow());
        assert!(outbox.cut_off().is_cancelled());
        assert_eq!(metrics.slow_consumers.load(Relaxed), 1);
    }

    #[test]
    fn written_bytes_are_given_back_to_the_budget() {
        let metrics = Arc::new(Metrics::default());
        let (outbox, mut rx) = Outbox::new(1, 100, 10, metrics.clone());
        assert!(outbox.push(text("12345678")));
        let item = rx.try_recv().unwrap();
        rx.written(item.queued_len());
        assert_eq!(metrics.bytes_out.load(Relaxed), 8);
        // Room again: without the hand-over, a second frame would pass the 10-byte budget.
        assert!(outbox.push(text("12345678")));
        assert!(!outbox.is_slow());
    }

    #[tokio::test]
    async fn the_writer_takes_the_whole_backlog_at_once() {
        let (outbox, mut rx) = Outbox::new(1, 8, 1 << 20, Arc::default());
        let waiting = tokio::spawn(async move {
            let mut batch = VecDeque::new();
            rx.recv_all(&mut batch).await;
            batch.len()
        });
        tokio::task::yield_now().await;
        for _ in 0..3 {
            assert!(outbox.push(text("x")));
        }
        let taken = waiting.await.unwrap();
        assert!((1..=3).contains(&taken), "{taken}");
    }
}
