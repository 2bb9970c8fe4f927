//! The router: who is subscribed to what (the subscription index), the retained values, the
//! names online, and the delivery of a published message to every matching subscriber's
//! [`Outbox`].
//!
//! Locking: the subscription index sits behind one `RwLock`. A publish holds it for reading
//! while it updates the retained store and queues the message ([`Outbox::push`], never waiting
//! on a peer); a subscribe holds it for writing while it inserts the filter and queues the retained
//! replay. So a message published concurrently with a subscribe reaches that subscriber exactly
//! once, and after its retained replay: either the publish ran first (the replay shows its value)
//! or the subscription did (the live message follows the replay). Lock order: index, then
//! retained.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use proto::{Encoding, Message, Publish, ServerFrame, TopicFilter, TopicName};
use serde_json::{json, Value};
use smallvec::SmallVec;

use crate::cluster::Link;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::outbox::{Backlogs, Frame, Outbox, Outgoing};
use crate::retained::{Limits, Retained, RetainedFull, RetainedTree};
use crate::store::{self, Ack, Store};
use crate::trie::Trie;

/// Milliseconds since the Unix epoch, for presence timestamps.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
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

/// What became of a published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Routed {
    /// Subscribers it was queued for.
    pub delivered: usize,
    /// Why it was not kept as the retained value it asked to be, if it was not.
    pub refused: Option<RetainedFull>,
}

/// Routing state shared by every session.
#[derive(Debug)]
pub struct Router {
    /// Filter → subscribers.
    index: RwLock<Trie<Outbox>>,
    /// Bumped by every change to `index` (a filter added or removed), while holding it for
    /// writing.
    generation: AtomicU64,
    /// Topic → last retained value, in a tree on levels.
    retained: Mutex<RetainedTree>,
    /// `hello` names online → the id of the client holding each.
    names: DashMap<String, u64>,
    /// Counters, shared with the HTTP endpoints.
    pub metrics: Arc<Metrics>,
    /// The broker-wide budget every client's outbox is part of.
    pub backlogs: Arc<Backlogs>,
    /// Where retained values and presence are kept across restarts.
    store: Store,
    /// The cluster bridge, when the broker is part of one: told of every client publish and
    /// of every filter that gains its first local subscriber or loses its last.
    cluster: OnceLock<Arc<Link>>,
    /// This broker's name, in the presence of its clients (which broker of a cluster they are
    /// on).
    name: String,
}

impl Default for Router {
    fn default() -> Self {
        Self::new(&Config::default(), Store::in_memory())
    }
}

/// Where a published message comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// A client of this broker (or the broker itself): also for the cluster.
    Local,
    /// Another broker of the cluster: for local subscribers only.
    Cluster,
}

/// What a retained `pub` did to its topic's value, to be written to the store.
enum Kept {
    /// A value kept, and the same written as JSON for the store (empty when it keeps nothing on
    /// disk).
    Set(Arc<Retained>, Vec<u8>),
    Cleared,
}

/// A target with the encoding it reads now (a client may switch between frames).
fn with_encoding(outbox: &Arc<Outbox>) -> (&Arc<Outbox>, Encoding) {
    (outbox, outbox.encoding())
}

impl Router {
    /// A router with the limits of `config`, keeping retained values and presence in `store`.
    pub fn new(config: &Config, store: Store) -> Self {
        let metrics = Arc::new(Metrics::default());
        Self {
            index: RwLock::default(),
            generation: AtomicU64::new(0),
            retained: Mutex::new(RetainedTree::new(Limits {
                topics: config.max_retained,
                bytes: config.max_retained_bytes,
            })),
            names: DashMap::new(),
            backlogs: Backlogs::new(config.max_backlog_bytes, metrics.clone()),
            metrics,
            store,
            cluster: OnceLock::new(),
            name: config.name.clone(),
        }
    }

    /// The cluster bridge, when the broker is part of one.
    pub(crate) fn cluster(&self) -> Option<&Arc<Link>> {
        self.cluster.get()
    }

    /// Joins the router to a cluster bridge (once).
    pub(crate) fn attach(&self, link: Arc<Link>) {
        self.retained
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remember_clearings();
        let _ = self.cluster.set(link);
    }

    /// Whether retained values are written to disk (and a retained `pub` with an `id` is
    /// answered only once its value is durable).
    pub fn is_durable(&self) -> bool {
        self.store.path().is_some()
    }

    /// The store, to flush it at shutdown.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Takes back what the store held at start: every retained value, and the last presence
    /// of every name, those that were online turned offline since `start_ms` (a crash reads as
    /// a departure). Values that no longer fit the limits are dropped, and said so.
    pub fn restore(&self, loaded: store::Loaded, start_ms: u64) {
        let mut retained = self.retained.lock().unwrap_or_else(PoisonError::into_inner);
        for r in loaded.retained {
            let Ok(topic) = TopicName::new(r.topic.as_str()) else {
                tracing::warn!(topic = %r.topic, "store: a retained value on an invalid topic, dropped");
                self.store.clear_retained(&r.topic, None);
                continue;
            };
            let value = Retained::new(topic, r.data, r.from.as_deref(), r.updated_ms);
            if let Err(full) = retained.insert(Arc::new(value)) {
                tracing::warn!(topic = %r.topic, %full, "store: a retained value over the limits, dropped");
                self.store.clear_retained(&r.topic, None);
            }
        }
        for p in loaded.presence {
            let Ok(topic) = TopicName::system(format!("{}/nodes/{}", proto::SYS_PREFIX, p.name))
            else {
                self.store.remove_presence(&p.name);
                continue;
            };
            let mut value = p.value;
            if value["online"] == true {
                value["online"] = false.into();
                value["since"] = start_ms.into();
                self.store.put_presence(&p.name, &value);
            }
            let _ = retained.insert(Arc::new(Retained::new(topic, value, None, start_ms)));
        }
        self.metrics.retained.store(retained.len() as u64, Relaxed);
    }

    /// Delivers `p`, published by `from` (its `hello` name, if any), to every subscriber whose
    /// filters match its topic, once each, encoding it at most once per encoding in use; keeps
    /// it as the topic's retained value if it says so and the limits allow.
    pub fn publish(&self, p: &Publish<'_>, from: Option<&str>) -> Routed {
        self.route(p, from, None, None, Origin::Local)
    }

    /// [`Router::publish`] for a message that came from another broker of the cluster: for local
    /// subscribers only, never sent back to the cluster.
    pub(crate) fn publish_remote(&self, p: &Publish<'_>, from: Option<&str>) -> Routed {
        self.route(p, from, None, None, Origin::Cluster)
    }

    /// [`Router::publish`] for a client that publishes again and again: its last topic's
    /// subscribers are kept in `cache` and reused while no subscription anywhere changes,
    /// instead of being looked up in the index for every message. A retained value kept (or
    /// cleared) is written to the store, and `durable`, if given, is called once it is on disk.
    pub fn publish_cached(
        &self,
        p: &Publish<'_>,
        from: Option<&str>,
        cache: &mut RouteCache,
        durable: Option<Ack>,
    ) -> Routed {
        self.route(p, from, Some(cache), durable, Origin::Local)
    }

    fn route(
        &self,
        p: &Publish<'_>,
        from: Option<&str>,
        cache: Option<&mut RouteCache>,
        durable: Option<Ack>,
        origin: Origin,
    ) -> Routed {
        let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
        let (kept, refused) = match p.retain.then(|| self.retain(p, from)) {
            Some(Ok(kept)) => (Some(kept), None),
            Some(Err(full)) => (None, Some(full)),
            None => (None, None),
        };
        let topic = p.topic.as_str();
        let targets: SmallVec<[(&Arc<Outbox>, Encoding); 8]> = match cache {
            Some(cache) => {
                // Read under the index lock, which every change to the index holds for
                // writing: the generation and the index agree.
                let generation = self.generation.load(Relaxed);
                if !cache.holds(topic, generation) {
                    cache.fill(topic, generation, index.matches(&p.topic));
                }
                cache.targets.iter().map(with_encoding).collect()
            }
            None => index
                .matches(&p.topic)
                .into_iter()
                .map(with_encoding)
                .collect(),
        };
        let msg = ServerFrame::Msg(Message {
            topic: p.topic.borrowed(),
            data: p.data.as_ref(),
            from: from.map(Cow::Borrowed),
            reply: p.reply.as_ref().map(TopicName::borrowed),
            retained: false,
        });
        // The frame is encoded once per encoding; the last target of an encoding takes it
        // and the others a clone, so a frame with one reader is never shared.
        let mut left = [0usize; 2];
        for (_, enc) in &targets {
            left[enc.index()] += 1;
        }
        let mut frames: [Option<Frame>; 2] = [None, None];
        let mut delivered = 0;
        for (outbox, enc) in targets {
            let i = enc.index();
            left[i] -= 1;
            let frame = if left[i] == 0 {
                frames[i].take().unwrap_or_else(|| Frame::encode(&msg, enc))
            } else {
                frames[i]
                    .get_or_insert_with(|| Frame::encode(&msg, enc))
                    .clone()
            };
            if outbox.push(frame) {
                delivered += 1;
            }
        }
        self.metrics
            .messages_out
            .fetch_add(delivered as u64, Relaxed);
        // After the deliveries: a store that answers at once (in memory) must not answer the
        // publisher before its message reached the subscribers.
        if let Some(kept) = kept {
            self.persist(p.topic.as_str(), kept, durable);
        }
        if let (Origin::Local, Some(link)) = (origin, self.cluster.get()) {
            link.published(p, from);
        }
        Routed { delivered, refused }
    }

    /// Writes what a retained `pub` did to the store: client topics as retained values,
    /// `$SYS/nodes/<name>` as presence; the broker's other topics are not kept.
    fn persist(&self, topic: &str, kept: Kept, durable: Option<Ack>) {
        if let Some(rest) = topic.strip_prefix(proto::SYS_PREFIX) {
            if let Some(name) = rest.strip_prefix("/nodes/") {
                match kept {
                    Kept::Set(value, _) => self.store.put_presence(name, value.data()),
                    Kept::Cleared => self.store.remove_presence(name),
                }
            }
            if let Some(ack) = durable {
                ack(Ok(()));
            }
            return;
        }
        match kept {
            Kept::Set(value, json) => {
                self.store
                    .put_retained_json(topic, json, value.from(), value.updated_ms(), durable)
            }
            Kept::Cleared => self.store.clear_retained(topic, durable),
        }
    }

    /// Keeps (or, for `null`, clears) `p` as its topic's retained value.
    fn retain(&self, p: &Publish<'_>, from: Option<&str>) -> Result<Kept, RetainedFull> {
        let mut retained = self.retained.lock().unwrap_or_else(PoisonError::into_inner);
        let result = if p.data.is_null() {
            retained.clear(p.topic.as_str(), unix_ms());
            Ok(Kept::Cleared)
        } else {
            let (topic, data, now) = (p.topic.to_name(), p.data.to_value(), unix_ms());
            // Written as JSON once, for the disk, and sized by that; in memory it is only sized.
            let (value, json) = if self.is_durable() {
                // A `Value` always writes: its keys are strings.
                let json = serde_json::to_vec(&data).unwrap_or_default();
                (Retained::encoded(topic, data, &json, from, now), json)
            } else {
                (Retained::new(topic, data, from, now), Vec::new())
            };
            let value = Arc::new(value);
            retained
                .insert(value.clone())
                .map(|()| Kept::Set(value, json))
        };
        self.metrics.retained.store(retained.len() as u64, Relaxed);
        result
    }

    /// The retained value this broker holds on `topic`, if any.
    pub(crate) fn retained_value(&self, topic: &str) -> Option<Arc<Retained>> {
        self.retained
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(topic)
            .cloned()
    }

    /// A retained value (`None`: its clearing) that the cluster's store holds, made at `at_ms`:
    /// kept here if it is newer than what this broker holds (the newest wins), written to the
    /// local store (the cache, and the fallback while NATS is away), never delivered live (the
    /// live message crossed on its own) and never sent back. Returns whether it was kept.
    pub(crate) fn retain_from_cluster(
        &self,
        topic: &TopicName,
        value: Option<(Value, Option<&str>)>,
        at_ms: u64,
    ) -> bool {
        // Held as a publish holds it, so that a subscribe's replay sees the value or not, whole.
        let _index = self.index.read().unwrap_or_else(PoisonError::into_inner);
        let mut retained = self.retained.lock().unwrap_or_else(PoisonError::into_inner);
        // A value older than this broker's last word on the topic (a value, or its clearing)
        // stays out: it was overtaken here, and the bucket is about to hear of it.
        if retained
            .last_change(topic.as_str())
            .is_some_and(|ms| ms >= at_ms)
        {
            return false;
        }
        let kept = match value {
            None => {
                if retained.clear(topic.as_str(), at_ms).is_none() {
                    return false;
                }
                Kept::Cleared
            }
            Some((data, from)) => {
                let json = if self.is_durable() {
                    serde_json::to_vec(&data).unwrap_or_default()
                } else {
                    Vec::new()
                };
                let value = Arc::new(if self.is_durable() {
                    Retained::encoded(topic.clone(), data, &json, from, at_ms)
                } else {
                    Retained::new(topic.clone(), data, from, at_ms)
                });
                if retained.insert(value.clone()).is_err() {
                    return false;
                }
                Kept::Set(value, json)
            }
        };
        self.metrics.retained.store(retained.len() as u64, Relaxed);
        drop(retained);
        self.persist(topic.as_str(), kept, None);
        true
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
            if let Some(link) = self.cluster.get() {
                link.interest(filter, true);
            }
        }
        let replay = self
            .retained
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .matching(filter);
        if !replay.is_empty() {
            outbox.enqueue(Outgoing::replay(replay));
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
            if let Some(link) = self.cluster.get() {
                link.interest(filter, false);
            }
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
                if let Some(link) = self.cluster.get() {
                    link.interest(filter, false);
                }
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

    /// Publishes the retained presence of a named client of this broker on
    /// `$SYS/nodes/<name>`.
    pub fn publish_presence(&self, name: &str, kind: &str, online: bool, peer: &str) {
        self.publish_presence_on(name, kind, online, peer, &self.name);
    }

    /// Publishes the retained presence of a named client of `broker` (of this one, or of a
    /// broker of the cluster that died) on `$SYS/nodes/<name>`.
    pub(crate) fn publish_presence_on(
        &self,
        name: &str,
        kind: &str,
        online: bool,
        peer: &str,
        broker: &str,
    ) {
        let Ok(topic) = TopicName::system(format!("{}/nodes/{name}", proto::SYS_PREFIX)) else {
            return;
        };
        let data = json!({
            "kind": kind,
            "online": online,
            "since": unix_ms(),
            "addr": peer,
            "broker": broker,
        });
        self.publish_system(&topic, &data);
    }

    /// The names online, by their retained presence, on brokers `dead` says are dead (not this
    /// one): `(name, kind, addr, broker)` of each.
    pub(crate) fn online_on(
        &self,
        dead: impl Fn(&str) -> bool,
    ) -> Vec<(String, String, String, String)> {
        let Ok(filter) = TopicFilter::new(format!("{}/nodes/+", proto::SYS_PREFIX)) else {
            return Vec::new();
        };
        let retained = self.retained.lock().unwrap_or_else(PoisonError::into_inner);
        retained
            .matching(&filter)
            .into_iter()
            .filter_map(|r| {
                let data = r.data();
                let broker = data["broker"].as_str()?;
                if data["online"] != true || broker == self.name || !dead(broker) {
                    return None;
                }
                let name = r.topic().as_str().rsplit('/').next()?;
                let text = |key: &str| data[key].as_str().unwrap_or_default().to_string();
                Some((
                    name.to_string(),
                    text("kind"),
                    text("addr"),
                    broker.to_string(),
                ))
            })
            .collect()
    }

    /// Forgets the presence of every name that has been offline for longer than `ttl`;
    /// returns how many.
    pub fn forget_offline(&self, ttl: Duration) -> usize {
        let Ok(filter) = TopicFilter::new(format!("{}/nodes/+", proto::SYS_PREFIX)) else {
            return 0;
        };
        let cutoff = unix_ms().saturating_sub(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        let mut retained = self.retained.lock().unwrap_or_else(PoisonError::into_inner);
        let stale: Vec<TopicName> = retained
            .matching(&filter)
            .into_iter()
            .filter(|r| {
                let data = r.data();
                data["online"] == false && data["since"].as_u64().is_some_and(|t| t < cutoff)
            })
            .map(|r| r.topic().clone())
            .collect();
        for topic in &stale {
            retained.remove(topic.as_str());
            if let Some(name) = topic.as_str().rsplit('/').next() {
                self.store.remove_presence(name);
            }
        }
        self.metrics.retained.store(retained.len() as u64, Relaxed);
        stale.len()
    }

    /// Publishes a retained value of the broker's own on `topic` for this broker's clients
    /// only: what each broker of a cluster says for itself (`$SYS/brokers/...`).
    pub(crate) fn publish_system_here(&self, topic: &TopicName, data: &Value) {
        let p = Publish {
            retain: true,
            ..Publish::new(topic, data)
        };
        let _ = self.route(&p, None, None, None, Origin::Cluster);
    }

    /// Publishes the broker's own retained value on `topic` (a `$SYS` one).
    pub fn publish_system(&self, topic: &TopicName, data: &Value) {
        let p = Publish {
            retain: true,
            ..Publish::new(topic, data)
        };
        // The broker's own topics are never refused.
        let _ = self.publish(&p, None);
    }
}

#[cfg(test)]
mod tests {
    use tokio_tungstenite::tungstenite::Message as WsMessage;

    use super::*;
    use crate::outbox::OutboxRx;

    fn topic(s: &str) -> TopicName {
        TopicName::new(s).unwrap()
    }

    fn publish(router: &Router, t: &TopicName, data: Value, retain: bool) -> usize {
        let p = Publish {
            retain,
            ..Publish::new(t, data)
        };
        router.publish(&p, Some("p")).delivered
    }

    /// A queue for client `id` on `router`, of `frames` frames and `bytes` bytes.
    fn queue(router: &Router, id: u64, frames: usize, bytes: usize) -> (Arc<Outbox>, OutboxRx) {
        Outbox::new(id, frames, bytes, &router.backlogs)
    }

    /// The frame of a queued item, as its WebSocket message.
    fn message(item: Option<Outgoing>) -> WsMessage {
        match item {
            Some(Outgoing::Frame(frame)) => frame.into_message(),
            other => panic!("not a frame: {other:?}"),
        }
    }

    fn drain(rx: &mut OutboxRx) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(item) = rx.try_recv() {
            for m in item.into_frames(Encoding::Json) {
                out.push(serde_json::from_slice(&m.into_message().into_data()).unwrap());
            }
        }
        out
    }

    /// In a cluster, a value retained before a clearing that arrives after it (the bucket's
    /// watch lagging, this broker's own write coming back) stays out; a newer one comes in.
    #[test]
    fn a_value_from_the_cluster_older_than_a_clearing_here_stays_out() {
        let router = Router::default();
        router.retained.lock().unwrap().remember_clearings();
        let t = topic("pin/p/state");
        publish(&router, &t, json!(0), true);
        let set_at = router.retained_value(t.as_str()).unwrap().updated_ms();
        publish(&router, &t, Value::Null, true);
        assert!(
            !router.retain_from_cluster(&t, Some((json!(0), None)), set_at),
            "the value cleared here came back"
        );
        assert!(router.retained_value(t.as_str()).is_none());
        let later = unix_ms() + 1_000;
        assert!(router.retain_from_cluster(&t, Some((json!(1), None)), later));
        assert_eq!(router.retained_value(t.as_str()).unwrap().data(), &json!(1));
        // A clearing from the cluster counts as well.
        assert!(router.retain_from_cluster(&t, None, later + 1));
        assert!(!router.retain_from_cluster(&t, Some((json!(1), None)), later));
        assert!(router.retained_value(t.as_str()).is_none());
    }

    #[test]
    fn retained_replay_then_live_and_clear() {
        let router = Router::default();
        let t = topic("pin/p/state");
        publish(&router, &t, json!(1), true);
        let (outbox, mut rx) = queue(&router, 1, 16, 1 << 20);
        router.subscribe(&TopicFilter::new("pin/+/state").unwrap(), &outbox);
        publish(&router, &t, json!(0), false);
        let got = drain(&mut rx);
        assert_eq!(got[0]["retained"], true);
        assert_eq!(got[0]["data"], 1);
        assert_eq!(got[1]["retained"], false);
        assert_eq!(got[1]["data"], 0);
        publish(&router, &t, Value::Null, true);
        assert_eq!(router.metrics.retained.load(Relaxed), 0);
        let (late, mut late_rx) = queue(&router, 2, 16, 1 << 20);
        router.subscribe(&TopicFilter::new("#").unwrap(), &late);
        assert!(drain(&mut late_rx).is_empty());
    }

    #[test]
    fn cached_routes_follow_every_subscription_change() {
        let router = Router::default();
        let mut cache = RouteCache::default();
        let mut send = |t: &str| {
            router
                .publish_cached(&Publish::new(topic(t), json!(1)), None, &mut cache, None)
                .delivered
        };
        let (a, mut a_rx) = queue(&router, 1, 64, 1 << 20);
        let (b, mut b_rx) = queue(&router, 2, 64, 1 << 20);
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
                let (outbox, rx) = queue(&router, id, 4, 1 << 20);
                router.subscribe(&f, &outbox);
                rx
            })
            .collect();
        let mut cache = RouteCache::default();
        let p = Publish::new(topic("t"), json!(1));
        assert_eq!(
            router.publish_cached(&p, None, &mut cache, None).delivered,
            queues.len()
        );
        assert_eq!(cache.generation, None);
        assert_eq!(
            router.publish_cached(&p, None, &mut cache, None).delivered,
            queues.len()
        );
    }

    /// A router with a JSON and a MessagePack subscriber to `filter`; their queues.
    fn json_and_msgpack_subscribers(filter: &str) -> (Router, OutboxRx, OutboxRx) {
        let router = Router::default();
        let (json_box, json_rx) = queue(&router, 1, 16, 1 << 20);
        let (mp_box, mp_rx) = queue(&router, 2, 16, 1 << 20);
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
        assert!(matches!(message(json_rx.try_recv()), WsMessage::Text(_)));
        let WsMessage::Binary(b) = message(mp_rx.try_recv()) else {
            panic!("expected a binary frame");
        };
        let frame = ServerFrame::decode(&b, Encoding::MsgPack).unwrap();
        assert!(matches!(frame, proto::ServerFrame::Msg(m) if m.data == json!({"x": 1})));
    }

    /// Publishes a JSON `pub` frame the way a session does: its `data` as the raw text.
    fn publish_json_frame(router: &Router, frame: &str) -> usize {
        let Ok(proto::ClientFrame::Pub(p)) = proto::ClientFrame::decode_text(frame) else {
            panic!("not a pub: {frame}");
        };
        assert_eq!(p.data.sent_as(), Some(Encoding::Json), "{frame}");
        router.publish(&p, None).delivered
    }

    #[test]
    fn raw_json_reaches_both_encodings_and_clears_with_raw_null() {
        let (router, mut json_rx, mut mp_rx) = json_and_msgpack_subscribers("a");
        let frame = r#"{"op":"pub","topic":"a","data": {"y": [1, 0.1], "x": "z"},"retain":true}"#;
        assert_eq!(publish_json_frame(&router, frame), 2);
        let WsMessage::Text(text) = message(json_rx.try_recv()) else {
            panic!("expected a text frame");
        };
        assert_eq!(
            text.as_str(),
            r#"{"op":"msg","topic":"a","data":{"y": [1, 0.1], "x": "z"},"retained":false}"#
        );
        let WsMessage::Binary(b) = message(mp_rx.try_recv()) else {
            panic!("expected a binary frame");
        };
        let frame = ServerFrame::decode(&b, Encoding::MsgPack).unwrap();
        assert!(
            matches!(&frame, proto::ServerFrame::Msg(m) if m.data == json!({"x": "z", "y": [1, 0.1]})),
            "{frame:?}"
        );
        // The retained store holds the value; a raw `null` clears it.
        assert_eq!(router.metrics.retained.load(Relaxed), 1);
        let (late, mut late_rx) = queue(&router, 3, 16, 1 << 20);
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
        let (slow, _slow_rx) = queue(&router, 1, 2, 1 << 20);
        let (fast, mut fast_rx) = queue(&router, 2, 100, 1 << 20);
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
        let (outbox, _rx) = queue(&router, 1, 1000, 300);
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
        let (outbox, mut rx) = queue(&router, 1, 4, 1 << 20);
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
        let (outbox, _rx) = queue(&router, 1, 1000, 20_000);
        let filter = TopicFilter::new("s/#").unwrap();
        // One replay (~14 KB) fits in an empty queue; a client that never reads and keeps
        // subscribing is cut off instead of piling up replays.
        router.subscribe(&filter, &outbox);
        assert!(!outbox.is_slow());
        router.subscribe(&filter, &outbox);
        assert!(outbox.is_slow());
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
