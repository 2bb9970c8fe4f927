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
//!
//! The slow-consumer policy. A burst is not a slow consumer: a client is cut off when its
//! backlog passes its byte budget (`outbox_bytes`, 64 MiB by default, as NATS's `max_pending`;
//! each item is charged its encoded size plus its bookkeeping), or when its socket has accepted
//! nothing for the write deadline while frames wait (the session watches that, see `writer`).
//! A count of items stays as a memory guard only. Many slow clients together are bounded by the
//! broker-wide budget ([`Backlogs`]): past it, the largest backlogs are cut first.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use proto::{Encoding, ServerFrame};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::retained::Retained;
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

/// What each queued item costs beyond its frame's bytes: its slot in the queue. Charged to the
/// budgets, so that a flood of tiny frames is bounded by bytes as well.
const ITEM_BYTES: usize = std::mem::size_of::<Outgoing>();

/// How far an outbox's backlog may drift from what it has reported to [`Backlogs`]: the
/// broker-wide total is kept in steps of this, so that pushing a frame touches no counter
/// shared with other clients.
const REPORT_STEP: usize = 64 * 1024;

/// The broker-wide budget for every client's backlog together, and the outboxes it can cut.
///
/// Each outbox reports its backlog here in steps of 64 KiB; when the total passes the
/// budget, the largest backlogs are cut off first until the rest fits.
#[derive(Debug)]
pub struct Backlogs {
    /// Bytes reported by every outbox (within a step of each one's real backlog).
    total: AtomicUsize,
    /// The budget.
    max: usize,
    /// Every outbox alive, to find the largest.
    outboxes: Mutex<HashMap<u64, Weak<Outbox>>>,
    /// Counters: slow consumers, bytes written.
    metrics: Arc<Metrics>,
}

impl Backlogs {
    /// A budget of `max` bytes for all backlogs together, counting into `metrics`.
    pub fn new(max: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            total: AtomicUsize::new(0),
            max,
            outboxes: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// Bytes queued over all clients, as reported (within a step per client).
    pub fn total(&self) -> usize {
        self.total.load(Relaxed)
    }

    /// Shows the total in the metrics.
    fn show(&self, total: usize) {
        self.metrics.backlog_bytes.store(total as u64, Relaxed);
    }

    fn registry(&self) -> MutexGuard<'_, HashMap<u64, Weak<Outbox>>> {
        self.outboxes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Cuts off the largest backlogs until the others fit in the budget.
    fn shed(&self) {
        let mut queues: Vec<(usize, Arc<Outbox>)> = self
            .registry()
            .values()
            .filter_map(Weak::upgrade)
            .filter(|o| !o.is_slow())
            .map(|o| (o.queued_bytes.load(Relaxed), o))
            .collect();
        // The backlogs of clients already cut off are about to go with their sessions.
        let mut left: usize = queues.iter().map(|(bytes, _)| bytes).sum();
        queues.sort_by_key(|(bytes, _)| std::cmp::Reverse(*bytes));
        for (bytes, outbox) in queues {
            if left <= self.max {
                break;
            }
            tracing::warn!(
                client = outbox.id,
                queued = bytes,
                budget = self.max,
                "all clients' backlogs together are over the broker's budget: cutting off the largest"
            );
            outbox.mark_slow("over the broker-wide backlog budget");
            left = left.saturating_sub(bytes);
        }
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
    /// Bytes queued (with [`ITEM_BYTES`] per item) and not yet handed to the socket.
    queued_bytes: AtomicUsize,
    max_bytes: usize,
    /// What this outbox has reported to the broker-wide total.
    reported: AtomicUsize,
    /// The broker-wide budget this outbox is part of.
    backlogs: Arc<Backlogs>,
    /// Cancelled when the client is cut off for not reading; its session watches it.
    cut_off: CancellationToken,
    /// Set once, so a slow consumer is counted once.
    slow: AtomicBool,
}

impl Subscriber for Outbox {
    fn id(&self) -> u64 {
        self.id
    }
}

impl Outbox {
    /// A queue of at most `frames` items and `max_bytes` bytes for client `id`, part of
    /// `backlogs`; returns the receiving end too.
    pub fn new(
        id: u64,
        frames: usize,
        max_bytes: usize,
        backlogs: &Arc<Backlogs>,
    ) -> (Arc<Self>, OutboxRx) {
        let outbox = Arc::new(Self {
            id,
            encoding: AtomicU8::new(Encoding::Json.index() as u8),
            queue: Mutex::new(Queue::default()),
            max_frames: frames.max(1),
            ready: AtomicWaker::new(),
            queued_bytes: AtomicUsize::new(0),
            max_bytes,
            reported: AtomicUsize::new(0),
            backlogs: backlogs.clone(),
            cut_off: CancellationToken::new(),
            slow: AtomicBool::new(false),
        });
        backlogs.registry().insert(id, Arc::downgrade(&outbox));
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

    /// Bytes queued now (with the bookkeeping of each item).
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Relaxed)
    }

    /// Queues the `err` frame of `err` (a refusal), counted by its code.
    pub fn refuse(&self, err: &proto::FrameError) -> bool {
        self.backlogs.metrics.error(err.code);
        self.reply(&err.to_frame())
    }

    /// Queues any item; see [`Outbox::push`].
    pub fn enqueue(&self, item: Outgoing) -> bool {
        let len = item.queued_len() + ITEM_BYTES;
        let before = self.queued_bytes.fetch_add(len, Relaxed);
        if before + len > self.max_bytes && before > 0 {
            self.queued_bytes.fetch_sub(len, Relaxed);
            self.mark_slow("outgoing queue full");
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
            self.mark_slow("outgoing queue full");
            return false;
        }
        queue.items.push_back(item);
        let was_empty = queue.items.len() == 1;
        drop(queue);
        if was_empty {
            // Only an empty queue can have a writer waiting on it.
            self.ready.wake();
        }
        let now = before + len;
        let reported = self.reported.load(Relaxed);
        if now >= reported + REPORT_STEP {
            self.report(reported, now);
        }
        true
    }

    /// Moves what this outbox reported to the broker-wide total from `from` to `to`; if the
    /// total is then over the budget, sheds the largest backlogs. A lost race with another
    /// report leaves it to the next one.
    fn report(&self, from: usize, to: usize) {
        if self
            .reported
            .compare_exchange(from, to, Relaxed, Relaxed)
            .is_err()
        {
            return;
        }
        let backlogs = &self.backlogs;
        if to >= from {
            let after = backlogs.total.fetch_add(to - from, Relaxed) + (to - from);
            backlogs.show(after);
            if after > backlogs.max {
                backlogs.shed();
            }
        } else {
            let after = backlogs.total.fetch_sub(from - to, Relaxed) - (from - to);
            backlogs.show(after);
        }
    }

    /// Cuts this client off as a slow consumer (once; counted once), saying why in the log.
    pub fn mark_slow(&self, why: &'static str) {
        if !self.slow.swap(true, Relaxed) {
            self.backlogs.metrics.slow_consumers.fetch_add(1, Relaxed);
            tracing::warn!(client = self.id, why, "slow consumer: cutting it off");
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

    /// The hand-over: `items` of `bytes` (their frames' size) reached the socket. Gives them
    /// back to the budgets and counts them out, once for many frames.
    pub fn written(&self, items: usize, bytes: usize) {
        if items == 0 {
            return;
        }
        let outbox = &self.outbox;
        let charged = bytes + items * ITEM_BYTES;
        let now = outbox.queued_bytes.fetch_sub(charged, Relaxed) - charged;
        outbox
            .backlogs
            .metrics
            .bytes_out
            .fetch_add(bytes as u64, Relaxed);
        let reported = outbox.reported.load(Relaxed);
        if reported > now + REPORT_STEP || (now == 0 && reported > 0) {
            outbox.report(reported, now);
        }
    }
}

impl Drop for OutboxRx {
    fn drop(&mut self) {
        let mut queue = self.queue();
        queue.closed = true;
        queue.items = VecDeque::new();
        drop(queue);
        // Nothing is queued any more: take this client out of the broker-wide total.
        let outbox = &self.outbox;
        let reported = outbox.reported.swap(0, Relaxed);
        let after = outbox.backlogs.total.fetch_sub(reported, Relaxed) - reported;
        outbox.backlogs.show(after);
        outbox.backlogs.registry().remove(&outbox.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Frame {
        Frame(WsMessage::text(s))
    }

    fn backlogs(max: usize) -> Arc<Backlogs> {
        Backlogs::new(max, Arc::default())
    }

    #[test]
    fn a_closed_outbox_refuses_without_counting_a_slow_consumer() {
        let shared = backlogs(usize::MAX);
        let (outbox, rx) = Outbox::new(1, 1, 1 << 20, &shared);
        drop(rx);
        assert!(!outbox.push(text("x")));
        assert!(!outbox.is_slow());
        assert_eq!(shared.metrics.slow_consumers.load(Relaxed), 0);
    }

    #[test]
    fn a_full_outbox_cuts_its_client_off_once() {
        let shared = backlogs(usize::MAX);
        let (outbox, _rx) = Outbox::new(1, 2, 1 << 20, &shared);
        assert!(outbox.push(text("a")));
        assert!(outbox.push(text("b")));
        assert!(!outbox.push(text("c")));
        assert!(!outbox.push(text("d")));
        assert!(outbox.is_slow());
        assert!(outbox.cut_off().is_cancelled());
        assert_eq!(shared.metrics.slow_consumers.load(Relaxed), 1);
    }

    #[test]
    fn each_item_is_charged_its_bookkeeping_too() {
        let (outbox, _rx) = Outbox::new(1, usize::MAX, 1 << 20, &backlogs(usize::MAX));
        assert!(outbox.push(text("")));
        assert_eq!(outbox.queued_bytes(), ITEM_BYTES);
        assert!(outbox.push(text("12345678")));
        assert_eq!(outbox.queued_bytes(), 2 * ITEM_BYTES + 8);
    }

    #[test]
    fn written_bytes_are_given_back_to_the_budget() {
        let shared = backlogs(usize::MAX);
        let (outbox, mut rx) = Outbox::new(1, 100, ITEM_BYTES + 10, &shared);
        assert!(outbox.push(text("12345678")));
        let item = rx.try_recv().unwrap();
        rx.written(1, item.queued_len());
        assert_eq!(shared.metrics.bytes_out.load(Relaxed), 8);
        assert_eq!(outbox.queued_bytes(), 0);
        // Room again: without the hand-over, a second frame would pass the budget.
        assert!(outbox.push(text("12345678")));
        assert!(!outbox.is_slow());
    }

    #[test]
    fn the_broker_wide_budget_cuts_the_largest_backlogs_first() {
        let shared = backlogs(3 * REPORT_STEP);
        let frame = text(&"x".repeat(1024));
        let (small, _small_rx) = Outbox::new(1, usize::MAX, usize::MAX, &shared);
        let (large, _large_rx) = Outbox::new(2, usize::MAX, usize::MAX, &shared);
        let (other, _other_rx) = Outbox::new(3, usize::MAX, usize::MAX, &shared);
        for _ in 0..70 {
            assert!(small.push(frame.clone()));
        }
        for _ in 0..150 {
            other.push(frame.clone());
        }
        for _ in 0..300 {
            large.push(frame.clone());
        }
        assert!(large.is_slow(), "the largest backlog goes first");
        assert!(!small.is_slow(), "the smallest stays");
        assert!(shared.total() > 0);
        assert_eq!(
            shared.metrics.slow_consumers.load(Relaxed),
            1 + u64::from(other.is_slow())
        );
    }

    #[test]
    fn a_client_gone_leaves_the_total() {
        let shared = backlogs(usize::MAX);
        let (outbox, rx) = Outbox::new(1, usize::MAX, usize::MAX, &shared);
        let frame = text(&"x".repeat(4096));
        for _ in 0..40 {
            assert!(outbox.push(frame.clone()));
        }
        assert!(shared.total() >= 2 * REPORT_STEP);
        drop(rx);
        assert_eq!(shared.total(), 0);
        assert!(shared.registry().is_empty());
    }

    #[test]
    fn written_batches_bring_the_total_down() {
        let shared = backlogs(usize::MAX);
        let (outbox, mut rx) = Outbox::new(1, usize::MAX, usize::MAX, &shared);
        let frame = text(&"x".repeat(4096));
        for _ in 0..40 {
            assert!(outbox.push(frame.clone()));
        }
        let mut batch = VecDeque::new();
        assert!(rx.try_recv_all(&mut batch));
        let bytes: usize = batch.iter().map(Outgoing::queued_len).sum();
        rx.written(batch.len(), bytes);
        assert_eq!(outbox.queued_bytes(), 0);
        assert_eq!(shared.total(), 0);
    }

    #[tokio::test]
    async fn the_writer_takes_the_whole_backlog_at_once() {
        let (outbox, mut rx) = Outbox::new(1, 8, 1 << 20, &backlogs(usize::MAX));
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
