//! The router: who is subscribed to what, the retained values, the names online, and the
//! delivery of a published message to every matching subscriber.
//!
//! Locking: the subscription index sits behind one `RwLock`. A publish holds it for reading
//! while it updates the retained store and queues the message ([`Outbox::push`], never waiting
//! on a peer); a subscribe holds it for writing while it inserts the filter and queues the retained
//! replay. So a message published concurrently with a subscribe reaches that subscriber exactly
//! once, and after its retained replay: either the publish ran first (the replay shows its value)
//! or the subscription did (the live message follows the replay). Lock order: index, then
//! retained.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use futures_util::task::AtomicWaker;
use proto::{DataRef, Encoding, MsgRef, TopicFilter, TopicName};
use serde_json::{json, Value};
use smallvec::SmallVec;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::trie::{Subscriber, Trie};

/// Turns encoded bytes into the WebSocket message of that encoding.
pub(crate) fn ws_message(bytes: Vec<u8>, enc: Encoding) -> WsMessage {
    match enc {
        Encoding::MsgPack => WsMessage::Binary(bytes.into()),
        // The JSON encoder only writes UTF-8; the fallback keeps this free of panics.
        Encoding::Json => match String::from_utf8(bytes) {
            Ok(text) => WsMessage::Text(text.into()),
            Err(e) => WsMessage::Binary(e.into_bytes().into()),
        },
    }
}

/// The WebSocket message carrying a delivered message in `enc`. JSON comes out of the encoder
/// as a `String`, so it is not checked for UTF-8 a second time as [`ws_message`] would.
pub(crate) fn msg_frame(msg: &MsgRef<'_>, enc: Encoding) -> WsMessage {
    match enc {
        Encoding::Json => WsMessage::Text(proto::encode_msg_text(msg).into()),
        Encoding::MsgPack => WsMessage::Binary(proto::encode_msg(msg, enc).into()),
    }
}

/// Milliseconds since the Unix epoch, for presence timestamps.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// One item of a client's outgoing queue.
#[derive(Debug)]
pub enum Outgoing {
    /// A frame, already encoded.
    Frame(WsMessage),
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
            Self::Frame(msg) => msg.len(),
            Self::Replay { bytes, .. } => *bytes,
        }
    }

    /// The frames to write, in `enc`.
    pub fn into_frames(self, enc: Encoding) -> Frames {
        let (frame, replay) = match self {
            Self::Frame(msg) => (Some(msg), Vec::new()),
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
    frame: Option<WsMessage>,
    replay: std::vec::IntoIter<Arc<Retained>>,
    enc: Encoding,
}

impl Iterator for Frames {
    type Item = WsMessage;

    fn next(&mut self) -> Option<WsMessage> {
        self.frame
            .take()
            .or_else(|| self.replay.next().map(|r| r.frame(self.enc)))
    }
}

/// Items waiting for a client's writer (the write side of its session).
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
    /// The encoding this client last used (an [`Encoding::index`]); replies and messages use it.
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
}

/// The receiving end of an [`Outbox`], held by the client's writer. Dropping it closes the
/// outbox: later pushes are refused (not counted as slow).
#[derive(Debug)]
pub struct OutboxRx {
    outbox: Arc<Outbox>,
}

impl OutboxRx {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.outbox
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
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
}

impl Drop for OutboxRx {
    fn drop(&mut self) {
        let mut queue = self.queue();
        queue.closed = true;
        queue.items = VecDeque::new();
    }
}

impl Subscriber for Outbox {
    fn id(&self) -> u64 {
        self.id
    }
}

impl Outbox {
    /// A queue of at most `frames` frames and `max_bytes` bytes; returns the receiving end.
    pub fn new(id: u64, frames: usize, max_bytes: usize) -> (Arc<Self>, OutboxRx) {
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
    pub fn push(&self, msg: WsMessage, metrics: &Metrics) -> bool {
        self.enqueue(Outgoing::Frame(msg), metrics)
    }

    fn enqueue(&self, item: Outgoing, metrics: &Metrics) -> bool {
        let len = item.queued_len();
        let before = self.queued_bytes.fetch_add(len, Relaxed);
        if before + len > self.max_bytes && before > 0 {
            self.queued_bytes.fetch_sub(len, Relaxed);
            self.mark_slow(metrics);
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
            self.mark_slow(metrics);
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

    /// Called by the writer once frames of `len` bytes left the queue.
    pub fn sent(&self, len: usize) {
        self.queued_bytes.fetch_sub(len, Relaxed);
    }

    fn mark_slow(&self, metrics: &Metrics) {
        if !self.slow.swap(true, Relaxed) {
            metrics.slow_consumers.fetch_add(1, Relaxed);
            tracing::warn!(
                client = self.id,
                "slow consumer: outbox full, cutting it off"
            );
            self.cut_off.cancel();
        }
    }
}

/// A retained value and who published it.
#[derive(Debug)]
pub struct Retained {
    topic: TopicName,
    data: Value,
    from: Option<Arc<str>>,
    /// Its replay frame in each encoding ([`Encoding::index`]), encoded on first use.
    frames: [OnceLock<WsMessage>; 2],
}

impl Retained {
    /// The replay frame (`retained: true`, no `reply`: a stale request is not replayed).
    fn frame(&self, enc: Encoding) -> WsMessage {
        self.frames[enc.index()]
            .get_or_init(|| {
                let msg = MsgRef {
                    retained: true,
                    ..MsgRef::new(self.topic.as_str(), &self.data, self.from.as_deref(), None)
                };
                msg_frame(&msg, enc)
            })
            .clone()
    }
}

/// The subscribers of a publisher's last topic, as [`Router::publish_cached`] keeps them: valid
/// while the router's generation (bumped whenever a filter is added or removed) is the one
/// they were found at. Holds no more than [`RouteCache::MAX_TARGETS`] of them: a larger fan-out
/// costs far more to deliver than to look up.
#[derive(Debug, Default)]
pub struct RouteCache {
    topic: String,
    /// `None` when nothing valid is held.
    generation: Option<u64>,
    targets: Vec<Arc<Outbox>>,
}

impl RouteCache {
    /// Most subscribers kept.
    pub const MAX_TARGETS: usize = 64;

    fn holds(&self, topic: &str, generation: u64) -> bool {
        self.generation == Some(generation) && self.topic == topic
    }

    fn fill<'a>(
        &mut self,
        topic: &str,
        generation: u64,
        found: impl IntoIterator<Item = &'a Arc<Outbox>>,
    ) {
        self.targets.clear();
        self.targets.extend(found.into_iter().cloned());
        self.topic.clear();
        self.topic.push_str(topic);
        self.generation = Some(generation);
        if self.targets.len() > Self::MAX_TARGETS {
            // Used this once, then let go.
            self.generation = None;
        }
    }
}

/// Routing state shared by every session.
#[derive(Debug, Default)]
pub struct Router {
    /// Filter → subscribers.
    index: RwLock<Trie<Outbox>>,
    /// Bumped by every change to `index` (a filter added or removed), while holding it for
    /// writing.
    generation: AtomicU64,
    /// Topic → last retained value; ordered so replays come in a stable order.
    retained: Mutex<BTreeMap<TopicName, Arc<Retained>>>,
    /// `hello` names online → the id of the client holding each.
    names: DashMap<String, u64>,
    /// Counters, shared with the HTTP endpoints.
    pub metrics: Arc<Metrics>,
}

/// A message to route. Its value `D` is a `&Value`, or a [`DataRef`] that may hold the raw JSON
/// a publisher sent (written as is to JSON subscribers).
#[derive(Debug, Clone, Copy)]
pub struct Publication<'a, D = &'a Value> {
    /// Where it was published.
    pub topic: TopicName<&'a str>,
    /// Its value.
    pub data: D,
    /// The publisher's name, if it said hello.
    pub from: Option<&'a str>,
    /// Where to answer.
    pub reply: Option<&'a str>,
    /// Whether to keep it as the topic's retained value.
    pub retain: bool,
}

/// A target with the encoding it reads now (a client may switch between frames).
fn with_encoding(outbox: &Arc<Outbox>) -> (&Arc<Outbox>, Encoding) {
    (outbox, outbox.encoding())
}

impl<'a, D: Into<DataRef<'a>>> Publication<'a, D> {
    fn into_data_ref(self) -> Publication<'a, DataRef<'a>> {
        Publication {
            topic: self.topic,
            data: self.data.into(),
            from: self.from,
            reply: self.reply,
            retain: self.retain,
        }
    }
}

impl Router {
    /// Delivers `p` to every subscriber whose filters match its topic, once each, encoding
    /// it at most once per encoding in use. Returns the number of deliveries.
    pub fn publish<'a, D: Into<DataRef<'a>>>(&self, p: Publication<'a, D>) -> usize {
        self.route(p.into_data_ref(), None)
    }

    /// [`Router::publish`] for a client that publishes again and again: its last topic's
    /// subscribers are kept in `cache` and reused while no subscription anywhere changes,
    /// instead of being looked up in the index for every message.
    pub fn publish_cached<'a, D: Into<DataRef<'a>>>(
        &self,
        p: Publication<'a, D>,
        cache: &mut RouteCache,
    ) -> usize {
        self.route(p.into_data_ref(), Some(cache))
    }

    /// [`Router::publish`], once the value is a [`DataRef`].
    fn route(&self, p: Publication<'_, DataRef<'_>>, cache: Option<&mut RouteCache>) -> usize {
        let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
        if p.retain {
            self.retain(p);
        }
        let msg = MsgRef::new(p.topic.as_str(), p.data, p.from, p.reply);
        let targets: SmallVec<[(&Arc<Outbox>, Encoding); 8]> = match cache {
            Some(cache) => {
                // Read under the index lock, which every change to the index holds for
                // writing: the generation and the index agree.
                let generation = self.generation.load(Relaxed);
                if !cache.holds(p.topic.as_str(), generation) {
                    cache.fill(p.topic.as_str(), generation, index.matches(&p.topic));
                }
                cache.targets.iter().map(with_encoding).collect()
            }
            None => index
                .matches(&p.topic)
                .into_iter()
                .map(with_encoding)
                .collect(),
        };
        // The frame is encoded once per encoding; the last target of an encoding takes it
        // and the others a clone, so a frame with one reader is never shared.
        let mut left = [0usize; 2];
        for (_, enc) in &targets {
            left[enc.index()] += 1;
        }
        let mut frames: [Option<WsMessage>; 2] = [None, None];
        let mut delivered = 0;
        for (outbox, enc) in targets {
            let i = enc.index();
            left[i] -= 1;
            let frame = if left[i] == 0 {
                frames[i].take().unwrap_or_else(|| msg_frame(&msg, enc))
            } else {
                frames[i]
                    .get_or_insert_with(|| msg_frame(&msg, enc))
                    .clone()
            };
            if outbox.push(frame, &self.metrics) {
                delivered += 1;
            }
        }
        self.metrics
            .messages_out
            .fetch_add(delivered as u64, Relaxed);
        delivered
    }

    fn retain(&self, p: Publication<'_, DataRef<'_>>) {
        let mut retained = self.retained.lock().unwrap_or_else(PoisonError::into_inner);
        if p.data.is_null() {
            retained.remove(p.topic.as_str());
        } else {
            let value = Retained {
                topic: p.topic.to_name(),
                data: p.data.to_value(),
                from: p.from.map(Arc::from),
                frames: Default::default(),
            };
            retained.insert(p.topic.to_name(), Arc::new(value));
        }
        self.metrics.retained.store(retained.len() as u64, Relaxed);
    }

    /// Subscribes `outbox` to `filter` and queues the matching retained values (flagged
    /// `retained`). Returns false if the client already had this filter (the replay still
    /// happens, as a fresh subscription would get it).
    pub fn subscribe(&self, filter: &TopicFilter, outbox: &Arc<Outbox>) -> bool {
        let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
        let added = index.insert(filter, outbox.clone());
        if added {
            self.generation.fetch_add(1, Relaxed);
            self.metrics.subscriptions.fetch_add(1, Relaxed);
        }
        let retained = self.retained.lock().unwrap_or_else(PoisonError::into_inner);
        let replay: Vec<Arc<Retained>> = retained
            .iter()
            .filter(|(topic, _)| filter.matches(topic))
            .map(|(_, value)| Arc::clone(value))
            .collect();
        if !replay.is_empty() {
            outbox.enqueue(Outgoing::replay(replay), &self.metrics);
        }
        added
    }

    /// Removes one subscription. Returns false if the client did not hold it.
    pub fn unsubscribe(&self, filter: &TopicFilter, id: u64) -> bool {
        let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
        let removed = index.remove(filter, id);
        if removed {
            self.generation.fetch_add(1, Relaxed);
            self.metrics.subscriptions.fetch_sub(1, Relaxed);
        }
        removed
    }

    /// Removes every subscription of a client that is going away.
    pub fn unsubscribe_all<'a>(&self, filters: impl IntoIterator<Item = &'a TopicFilter>, id: u64) {
        let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
        for filter in filters {
            if index.remove(filter, id) {
                self.generation.fetch_add(1, Relaxed);
                self.metrics.subscriptions.fetch_sub(1, Relaxed);
            }
        }
    }

    /// Claims `name` for client `id`. Returns false if another client online holds it.
    pub fn claim_name(&self, name: &str, id: u64) -> bool {
        match self.names.entry(name.to_string()) {
            dashmap::Entry::Occupied(_) => false,
            dashmap::Entry::Vacant(slot) => {
                slot.insert(id);
                true
            }
        }
    }

    /// Releases `name` if client `id` holds it.
    pub fn release_name(&self, name: &str, id: u64) {
        self.names.remove_if(name, |_, holder| *holder == id);
    }

    /// Publishes the retained presence of a named client on `$SYS/nodes/<name>`.
    pub fn publish_presence(&self, name: &str, kind: &str, online: bool, peer: &str) {
        let Ok(topic) = TopicName::system(format!("{}/nodes/{name}", proto::SYS_PREFIX)) else {
            return;
        };
        let data = json!({ "kind": kind, "online": online, "since": unix_ms(), "addr": peer });
        self.publish(Publication {
            topic: topic.view(),
            data: &data,
            from: None,
            reply: None,
            retain: true,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(s: &str) -> TopicName {
        TopicName::new(s).unwrap()
    }

    fn publish(router: &Router, t: &TopicName, data: Value, retain: bool) -> usize {
        router.publish(Publication {
            topic: t.view(),
            data: &data,
            from: Some("p"),
            reply: None,
            retain,
        })
    }

    fn drain(rx: &mut OutboxRx) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(item) = rx.try_recv() {
            for m in item.into_frames(Encoding::Json) {
                out.push(serde_json::from_slice(&m.into_data()).unwrap());
            }
        }
        out
    }

    #[test]
    fn retained_replay_then_live_and_clear() {
        let router = Router::default();
        let t = topic("pin/p/state");
        publish(&router, &t, json!(1), true);
        let (outbox, mut rx) = Outbox::new(1, 16, 1 << 20);
        router.subscribe(&TopicFilter::new("pin/+/state").unwrap(), &outbox);
        publish(&router, &t, json!(0), false);
        let got = drain(&mut rx);
        assert_eq!(got[0]["retained"], true);
        assert_eq!(got[0]["data"], 1);
        assert_eq!(got[1]["retained"], false);
        assert_eq!(got[1]["data"], 0);
        publish(&router, &t, Value::Null, true);
        assert_eq!(router.metrics.retained.load(Relaxed), 0);
        let (late, mut late_rx) = Outbox::new(2, 16, 1 << 20);
        router.subscribe(&TopicFilter::new("#").unwrap(), &late);
        assert!(drain(&mut late_rx).is_empty());
    }

    #[test]
    fn cached_routes_follow_every_subscription_change() {
        let router = Router::default();
        let mut cache = RouteCache::default();
        let mut send = |t: &str| {
            let t = topic(t);
            router.publish_cached(
                Publication {
                    topic: t.view(),
                    data: &json!(1),
                    from: None,
                    reply: None,
                    retain: false,
                },
                &mut cache,
            )
        };
        let (a, mut a_rx) = Outbox::new(1, 64, 1 << 20);
        let (b, mut b_rx) = Outbox::new(2, 64, 1 << 20);
        router.subscribe(&TopicFilter::new("x/#").unwrap(), &a);
        assert_eq!(send("x/1"), 1);
        assert_eq!(send("x/1"), 1, "from the cache");
        router.subscribe(&TopicFilter::new("x/1").unwrap(), &b);
        assert_eq!(send("x/1"), 2, "a new subscriber is seen at once");
        assert_eq!(send("x/2"), 1, "another topic is looked up");
        assert_eq!(send("x/1"), 2);
        router.unsubscribe_all([&TopicFilter::new("x/1").unwrap()], 2);
        assert_eq!(send("x/1"), 1, "a subscriber gone is not delivered to");
        router.unsubscribe(&TopicFilter::new("x/#").unwrap(), 1);
        assert_eq!(send("x/1"), 0);
        assert_eq!(drain(&mut a_rx).len(), 6);
        assert_eq!(drain(&mut b_rx).len(), 2);
        // A client that held nothing going away changes nothing: caches stay valid.
        let generation = router.generation.load(Relaxed);
        router.unsubscribe_all(std::iter::empty(), 9);
        router.unsubscribe(&TopicFilter::new("x/#").unwrap(), 1);
        assert_eq!(router.generation.load(Relaxed), generation);
    }

    #[test]
    fn a_large_fan_out_is_not_kept() {
        let router = Router::default();
        let f = TopicFilter::new("t").unwrap();
        let queues: Vec<_> = (0..RouteCache::MAX_TARGETS as u64 + 1)
            .map(|id| {
                let (outbox, rx) = Outbox::new(id, 4, 1 << 20);
                router.subscribe(&f, &outbox);
                rx
            })
            .collect();
        let mut cache = RouteCache::default();
        let t = topic("t");
        let p = Publication {
            topic: t.view(),
            data: &json!(1),
            from: None,
            reply: None,
            retain: false,
        };
        assert_eq!(router.publish_cached(p, &mut cache), queues.len());
        assert_eq!(cache.generation, None);
        assert_eq!(router.publish_cached(p, &mut cache), queues.len());
    }

    /// A router with a JSON and a MessagePack subscriber to `filter`; their queues.
    fn json_and_msgpack_subscribers(filter: &str) -> (Router, OutboxRx, OutboxRx) {
        let router = Router::default();
        let (json_box, json_rx) = Outbox::new(1, 16, 1 << 20);
        let (mp_box, mp_rx) = Outbox::new(2, 16, 1 << 20);
        mp_box.set_encoding(Encoding::MsgPack);
        let f = TopicFilter::new(filter).unwrap();
        router.subscribe(&f, &json_box);
        router.subscribe(&f, &mp_box);
        (router, json_rx, mp_rx)
    }

    #[test]
    fn one_encoding_per_subscriber() {
        let (router, mut json_rx, mut mp_rx) = json_and_msgpack_subscribers("a");
        assert_eq!(publish(&router, &topic("a"), json!({"x": 1}), false), 2);
        assert!(matches!(
            json_rx.try_recv(),
            Some(Outgoing::Frame(WsMessage::Text(_)))
        ));
        let Some(Outgoing::Frame(WsMessage::Binary(b))) = mp_rx.try_recv() else {
            panic!("expected a binary frame");
        };
        let frame = proto::decode_server(&b, Encoding::MsgPack).unwrap();
        assert!(matches!(frame, proto::ServerFrame::Msg(m) if m.data == json!({"x": 1})));
    }

    /// Publishes a JSON `pub` frame the way a session does: its `data` as the raw text.
    fn publish_json_frame(router: &Router, frame: &str) -> usize {
        let Ok(proto::ClientFrameRef::Pub(p)) =
            proto::decode_client_ref(frame.as_bytes(), Encoding::Json)
        else {
            panic!("not a pub: {frame}");
        };
        assert!(matches!(p.data, proto::Data::Raw(_)), "{frame}");
        router.publish(Publication {
            topic: p.topic.view(),
            data: p.data.as_ref(),
            from: None,
            reply: None,
            retain: p.retain,
        })
    }

    #[test]
    fn raw_json_reaches_both_encodings_and_clears_with_raw_null() {
        let (router, mut json_rx, mut mp_rx) = json_and_msgpack_subscribers("a");
        let frame = r#"{"op":"pub","topic":"a","data": {"y": [1, 0.1], "x": "z"},"retain":true}"#;
        assert_eq!(publish_json_frame(&router, frame), 2);
        let Some(Outgoing::Frame(WsMessage::Text(text))) = json_rx.try_recv() else {
            panic!("expected a text frame");
        };
        assert_eq!(
            text.as_str(),
            r#"{"op":"msg","topic":"a","data":{"y": [1, 0.1], "x": "z"},"retained":false}"#
        );
        let Some(Outgoing::Frame(WsMessage::Binary(b))) = mp_rx.try_recv() else {
            panic!("expected a binary frame");
        };
        let frame = proto::decode_server(&b, Encoding::MsgPack).unwrap();
        assert!(
            matches!(&frame, proto::ServerFrame::Msg(m) if m.data == json!({"x": "z", "y": [1, 0.1]})),
            "{frame:?}"
        );
        // The retained store holds the value; a raw `null` clears it.
        assert_eq!(router.metrics.retained.load(Relaxed), 1);
        let (late, mut late_rx) = Outbox::new(3, 16, 1 << 20);
        router.subscribe(&TopicFilter::new("a").unwrap(), &late);
        assert_eq!(
            drain(&mut late_rx)[0]["data"],
            json!({"x": "z", "y": [1, 0.1]})
        );
        publish_json_frame(
            &router,
            r#"{"op":"pub","topic":"a","data":null,"retain":true}"#,
        );
        assert_eq!(router.metrics.retained.load(Relaxed), 0);
        publish_json_frame(
            &router,
            r#"{"op":"pub","topic":"a","data":7,"retain":true}"#,
        );
        publish_json_frame(&router, r#"{"op":"pub","topic":"a","retain":true}"#);
        assert_eq!(router.metrics.retained.load(Relaxed), 0);
    }

    #[test]
    fn full_outbox_cuts_off_once_and_spares_others() {
        let router = Router::default();
        let (slow, _slow_rx) = Outbox::new(1, 2, 1 << 20);
        let (fast, mut fast_rx) = Outbox::new(2, 100, 1 << 20);
        let f = TopicFilter::new("a").unwrap();
        router.subscribe(&f, &slow);
        router.subscribe(&f, &fast);
        for i in 0..10 {
            publish(&router, &topic("a"), json!(i), false);
        }
        assert!(slow.is_slow());
        assert!(slow.cut_off().is_cancelled());
        assert_eq!(router.metrics.slow_consumers.load(Relaxed), 1);
        assert_eq!(drain(&mut fast_rx).len(), 10);
    }

    #[test]
    fn byte_limit_bounds_the_queue() {
        let router = Router::default();
        let (outbox, _rx) = Outbox::new(1, 1000, 300);
        router.subscribe(&TopicFilter::new("a").unwrap(), &outbox);
        for _ in 0..10 {
            publish(&router, &topic("a"), json!("x".repeat(100)), false);
        }
        assert!(outbox.is_slow());
    }

    #[test]
    fn a_replay_larger_than_the_queue_takes_one_slot() {
        let router = Router::default();
        for n in 0..100 {
            publish(&router, &topic(&format!("s/{n}")), json!(n), true);
        }
        let (outbox, mut rx) = Outbox::new(1, 4, 1 << 20);
        router.subscribe(&TopicFilter::new("s/#").unwrap(), &outbox);
        assert!(!outbox.is_slow());
        let got = drain(&mut rx);
        assert_eq!(got.len(), 100);
        assert!(got.iter().all(|m| m["retained"] == true));
    }

    #[test]
    fn replays_count_against_the_byte_budget() {
        let router = Router::default();
        for n in 0..100 {
            publish(
                &router,
                &topic(&format!("s/{n}")),
                json!("x".repeat(100)),
                true,
            );
        }
        let (outbox, _rx) = Outbox::new(1, 1000, 20_000);
        let filter = TopicFilter::new("s/#").unwrap();
        // One replay (~14 KB) fits in an empty queue; a client that never reads and keeps
        // subscribing is cut off instead of piling up replays.
        router.subscribe(&filter, &outbox);
        assert!(!outbox.is_slow());
        router.subscribe(&filter, &outbox);
        assert!(outbox.is_slow());
    }

    #[test]
    fn a_closed_outbox_refuses_without_counting_a_slow_consumer() {
        let (outbox, rx) = Outbox::new(1, 1, 1 << 20);
        let metrics = Metrics::default();
        drop(rx);
        assert!(!outbox.push(WsMessage::text("x"), &metrics));
        assert!(!outbox.is_slow());
    }

    #[tokio::test]
    async fn the_writer_takes_the_whole_backlog_at_once() {
        let (outbox, mut rx) = Outbox::new(1, 8, 1 << 20);
        let metrics = Metrics::default();
        let waiting = tokio::spawn(async move {
            let mut batch = VecDeque::new();
            rx.recv_all(&mut batch).await;
            batch.len()
        });
        tokio::task::yield_now().await;
        for _ in 0..3 {
            assert!(outbox.push(WsMessage::text("x"), &metrics));
        }
        let taken = waiting.await.unwrap();
        assert!((1..=3).contains(&taken), "{taken}");
    }

    #[test]
    fn names_are_exclusive_until_released() {
        let router = Router::default();
        assert!(router.claim_name("pin-1", 1));
        assert!(!router.claim_name("pin-1", 2));
        router.release_name("pin-1", 2);
        assert!(!router.claim_name("pin-1", 2));
        router.release_name("pin-1", 1);
        assert!(router.claim_name("pin-1", 2));
    }
}
