//! Names and presence across the cluster: a `hello` name is unique cluster-wide, each broker
//! says it is alive, and when one dies its clients turn offline everywhere within seconds.
//!
//! - **Heartbeats** travel on plain NATS, on `bb.C!.brokers` (no topic's subject): every
//!   [`HEARTBEAT`] each broker says `{"broker":..,"since":..}`, and `"gone":true` when it
//!   stops. A broker not heard for [`BROKER_TTL`] is dead. Each broker keeps its own view
//!   and tells its clients on `$SYS/brokers/<name>` (retained, kept on this broker only:
//!   every broker says the same from what it hears).
//! - **Names** live in the JetStream key-value bucket `bb_<cluster>_names`, one key per name
//!   taken: `{"broker":..,"run":..,"kind":..,"addr":..}`. A name is taken with `create`, which
//!   fails if the key exists; held by a dead broker (or by this one before a restart) it is
//!   taken over with an `update` expecting the revision read. It is given back with a delete
//!   expecting the revision it was taken at, so a broker only ever frees what it holds.
//! - When a broker dies, every other one goes through the names; for each name the dead one
//!   held, the delete expecting the revision settles which broker turns it offline
//!   (`$SYS/nodes/<name>`, which then crosses the cluster like any presence).
//!
//! Liveness comes from these heartbeats, not from mDNS's 120 s. While this broker is cut off
//! from NATS it declares no one dead (it cannot tell a dead broker from its own partition),
//! and names are taken on this broker alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::jetstream::kv::{CreateErrorKind, Store};
use async_nats::Client;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::buckets;
use crate::router::{unix_ms, Router};

/// How often a broker says it is alive.
pub(super) const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a broker may be silent before it counts as dead.
pub(super) const BROKER_TTL: Duration = Duration::from_secs(4);
/// Longest wait for the names bucket in a `hello`; past it the broker decides alone.
pub(super) const CLAIM_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to wait before trying to open the bucket again after a failure.
const RETRY: Duration = Duration::from_secs(1);

/// What a broker says on the heartbeat subject.
#[derive(Debug, Serialize, Deserialize)]
struct Beat {
    broker: String,
    /// When this run of the broker started (unix ms): a restart is a new run.
    since: u64,
    /// Whether it takes names in the cluster's bucket (else, for now, on its own).
    #[serde(default)]
    names: bool,
    /// The broker is stopping.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    gone: bool,
}

/// What this broker knows of another, from its heartbeats.
#[derive(Debug)]
struct Heard {
    at: Instant,
    since: u64,
    names: bool,
}

/// Who holds a name.
#[derive(Debug, Serialize, Deserialize)]
struct Holder {
    broker: String,
    /// The run of the broker ([`Beat::since`]) that took it.
    run: u64,
    kind: String,
    addr: String,
}

/// What a claim came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// The name is this client's cluster-wide; give it back with this revision.
    Taken(u64),
    /// A client of another broker, alive, holds it.
    Held,
    /// The cluster cannot say (NATS away): the broker decides alone, as without a cluster.
    Alone,
}

/// The brokers this one hears, by name: when each was last heard, by this broker's clock.
#[derive(Debug)]
struct Peers {
    me: String,
    /// This broker's run ([`Beat::since`]).
    run: u64,
    heard: Mutex<HashMap<String, Heard>>,
    /// Since when this broker has been connected and listening: no one is declared dead, or
    /// alive by default, before a whole TTL of it.
    listening_since: Mutex<Instant>,
}

impl Peers {
    fn heard(&self) -> std::sync::MutexGuard<'_, HashMap<String, Heard>> {
        self.heard.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn listened_long_enough(&self) -> bool {
        self.listening_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed()
            >= BROKER_TTL
    }

    /// Whether a name held by `holder` is held by a live client: its broker is alive (this one,
    /// in this run, or another heard within the TTL, or not heard yet but this broker has not
    /// listened long enough to know).
    fn holds(&self, holder: &Holder) -> bool {
        if holder.broker == self.me {
            return holder.run == self.run;
        }
        match self.heard().get(&holder.broker) {
            Some(heard) => heard.at.elapsed() < BROKER_TTL,
            None => !self.listened_long_enough(),
        }
    }
}

/// Where the registry is, once its bucket is open; a `hello` may wait a moment for it.
#[derive(Debug)]
pub(crate) struct Slot(tokio::sync::watch::Sender<Option<Arc<Registry>>>);

impl Default for Slot {
    fn default() -> Self {
        Self(tokio::sync::watch::channel(None).0)
    }
}

impl Slot {
    fn set(&self, registry: Arc<Registry>) {
        self.0.send_replace(Some(registry));
    }

    /// The registry, if open.
    pub(crate) fn get(&self) -> Option<Arc<Registry>> {
        self.0.borrow().clone()
    }

    /// The registry, waiting up to `limit` for its bucket to open.
    pub(crate) async fn wait(&self, limit: Duration) -> Option<Arc<Registry>> {
        let mut rx = self.0.subscribe();
        let opened = async { rx.wait_for(Option::is_some).await.ok()?.clone() };
        tokio::time::timeout(limit, opened).await.ok().flatten()
    }
}

/// The names bucket, once open: what sessions claim names in.
pub(crate) struct Registry {
    names: Store,
    peers: Arc<Peers>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("peers", &self.peers)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// Takes `name` for a client of this broker.
    pub(crate) async fn claim(&self, name: &str, kind: &str, addr: &str) -> Claim {
        let key = buckets::key(name);
        let holder = Holder {
            broker: self.peers.me.clone(),
            run: self.peers.run,
            kind: kind.to_string(),
            addr: addr.to_string(),
        };
        let Ok(value) = serde_json::to_vec(&holder) else {
            return Claim::Alone;
        };
        let value = Bytes::from(value);
        let attempt = async {
            match self.names.create(&key, value.clone()).await {
                Ok(revision) => return Claim::Taken(revision),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
                Err(e) => {
                    tracing::debug!(error = %e, "cluster: names bucket unavailable");
                    return Claim::Alone;
                }
            }
            // Held: by a live client of another broker, or left by a dead broker, or by this
            // one (before a restart, or by a client whose release could not reach NATS: this
            // broker's own clients hold the name locally first, so none of them holds it now),
            // which may be taken over.
            let entry = match self.names.entry(&key).await {
                Ok(Some(entry)) => entry,
                // Given back meanwhile: try once more from the start.
                Ok(None) => {
                    return match self.names.create(&key, value.clone()).await {
                        Ok(revision) => Claim::Taken(revision),
                        Err(_) => Claim::Held,
                    }
                }
                Err(_) => return Claim::Alone,
            };
            let live = serde_json::from_slice::<Holder>(&entry.value)
                .map(|h| h.broker != self.peers.me && self.peers.holds(&h))
                // A value this broker cannot read: whoever wrote it is not one of ours.
                .unwrap_or(false);
            if live {
                return Claim::Held;
            }
            match self.names.update(&key, value, entry.revision).await {
                Ok(revision) => Claim::Taken(revision),
                Err(_) => Claim::Held,
            }
        };
        tokio::time::timeout(CLAIM_TIMEOUT, attempt)
            .await
            .unwrap_or(Claim::Alone)
    }

    /// Whether this broker has listened to the others long enough to tell a name held by a
    /// live client from one left by a dead broker.
    pub(super) fn settled(&self) -> bool {
        self.peers.listened_long_enough()
    }

    /// Who holds `name` in the bucket: `(broker, kind, addr)`.
    pub(super) async fn holder(&self, name: &str) -> Option<(String, String, String)> {
        let entry = self.names.entry(&buckets::key(name)).await.ok()??;
        let h = serde_json::from_slice::<Holder>(&entry.value).ok()?;
        Some((h.broker, h.kind, h.addr))
    }

    /// Gives `name` back, if it is still held at `revision`.
    pub(crate) async fn release(&self, name: &str, revision: u64) {
        let key = buckets::key(name);
        if let Err(e) = self
            .names
            .delete_expect_revision(&key, Some(revision))
            .await
        {
            tracing::debug!(%name, error = %e, "cluster: name not given back (taken over, or NATS away)");
        }
    }

    /// Turns offline every name held by no live client: those of dead brokers, and those this
    /// broker held before it restarted. Returns how many this broker turned offline; an error
    /// when the names could not be listed (the bucket not answering), to be tried again.
    async fn sweep(&self, router: &Router) -> Result<usize, async_nats::Error> {
        let mut keys = self.names.keys().await?;
        let mut keys_seen = Vec::new();
        while let Some(key) = keys.next().await {
            keys_seen.push(key?);
        }
        let mut turned = 0;
        for key in keys_seen {
            let Ok(Some(entry)) = self.names.entry(&key).await else {
                continue;
            };
            let (Ok(holder), Some(name)) = (
                serde_json::from_slice::<Holder>(&entry.value),
                buckets::unkey(&key),
            ) else {
                continue;
            };
            if self.peers.holds(&holder) {
                continue;
            }
            // Whoever deletes at this revision is the one broker that says so.
            let deleted = self
                .names
                .delete_expect_revision(&key, Some(entry.revision))
                .await;
            if deleted.is_ok() {
                tracing::info!(%name, broker = %holder.broker, "cluster: the name's broker is gone; offline");
                router.publish_presence_on(
                    &name,
                    &holder.kind,
                    false,
                    &holder.addr,
                    &holder.broker,
                );
                turned += 1;
            }
        }
        Ok(turned)
    }
}

/// Says this broker is alive every [`HEARTBEAT`], listens to the others, opens the names
/// bucket, and turns the clients of dead brokers offline, until `shutdown`.
pub(super) async fn run(
    client: Client,
    heartbeats: String,
    cluster: String,
    me: String,
    router: Arc<Router>,
    registry: Arc<Slot>,
    shutdown: CancellationToken,
) {
    let peers = Arc::new(Peers {
        me: me.clone(),
        run: unix_ms(),
        heard: Mutex::new(HashMap::new()),
        listening_since: Mutex::new(Instant::now()),
    });
    let mut beats = match client.subscribe(heartbeats.clone()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cluster: cannot listen to the other brokers; names stay per broker");
            return;
        }
    };
    tokio::spawn(open_registry(
        client.clone(),
        buckets::name(&cluster, "names"),
        peers.clone(),
        registry.clone(),
        shutdown.clone(),
    ));
    let mut shared = false;
    publish_broker(&router, &me, true, peers.run, shared);

    let beat = |names, gone| {
        let beat = Beat {
            broker: me.clone(),
            since: peers.run,
            names,
            gone,
        };
        Bytes::from(serde_json::to_vec(&beat).unwrap_or_default())
    };
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Sweeps run in a task of their own: the bucket may take seconds to answer (a JetStream
    // leader being elected), and heartbeats must not wait for it.
    let sweep_due = Arc::new(tokio::sync::Notify::new());
    tokio::spawn(sweeper(
        peers.clone(),
        router.clone(),
        registry.clone(),
        sweep_due.clone(),
        shutdown.clone(),
    ));
    let mut was_connected = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {
                let connected = client.connection_state() == State::Connected;
                if connected && !was_connected {
                    // Back from a partition (or just connected): everyone gets a whole TTL to
                    // be heard before being declared dead.
                    *peers.listening_since.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
                    for heard in peers.heard().values_mut() {
                        heard.at = Instant::now();
                    }
                }
                was_connected = connected;
                if !connected {
                    continue;
                }
                if !shared && registry.get().is_some() {
                    shared = true;
                    publish_broker(&router, &me, true, peers.run, shared);
                }
                if let Err(e) = client.publish(heartbeats.clone(), beat(shared, false)).await {
                    tracing::debug!(error = %e, "cluster: heartbeat not sent");
                }
                let dead = bury(&peers, &router);
                if dead > 0 {
                    sweep_due.notify_one();
                }
            }
            msg = beats.next() => {
                let Some(msg) = msg else { break };
                let Ok(beat) = serde_json::from_slice::<Beat>(&msg.payload) else {
                    router.metrics.cluster_invalid.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    continue;
                };
                if beat.broker == me {
                    // no_echo keeps this broker's own beats away: this is another process.
                    tracing::error!(broker = %me, "cluster: another broker of the cluster has this broker's name; give each its own (--name)");
                    continue;
                }
                if heard_from(&peers, &router, beat) {
                    // A broker left: its names are to be turned offline.
                    sweep_due.notify_one();
                }
            }
        }
    }
    // A graceful exit: the others need not wait out the TTL.
    if client.connection_state() == State::Connected {
        let _ = client.publish(heartbeats, beat(shared, true)).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), client.flush()).await;
    }
    publish_broker(&router, &me, false, peers.run, shared);
}

/// Turns offline the names no live client holds: once when this broker has listened for a
/// whole TTL (names left by brokers that died before it started, or by its own previous run),
/// then each time `due` is notified (a broker died or left), until `shutdown`.
async fn sweeper(
    peers: Arc<Peers>,
    router: Arc<Router>,
    registry: Arc<Slot>,
    due: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
) {
    let mut first = true;
    loop {
        if first {
            // Every HEARTBEAT until the bucket is open and a TTL has been listened through.
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(HEARTBEAT) => {}
            }
        } else {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = due.notified() => {}
            }
        }
        let Some(registry) = registry.get().filter(|_| peers.listened_long_enough()) else {
            continue;
        };
        first = false;
        // Until one sweep goes through: the bucket may be electing a leader.
        loop {
            let swept = tokio::select! {
                () = shutdown.cancelled() => return,
                swept = registry.sweep(&router) => swept,
            };
            match swept {
                Ok(turned) => {
                    // What other brokers turned offline meanwhile has a moment to arrive.
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(HEARTBEAT) => {}
                    }
                    let orphans = offline_orphans(&peers, &router);
                    tracing::debug!(turned_offline = turned, orphans, "cluster: names swept");
                    break;
                }
                Err(e) => tracing::debug!(error = %e, "cluster: names not swept yet"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(RETRY) => {}
            }
        }
    }
}

/// Turns offline the presence still online on dead brokers that the bucket did not know of:
/// names a broker took alone (NATS away, or the bucket slow to answer). Every broker sees the
/// same presence, so only one says it: the live broker whose name sorts first. Returns how
/// many.
fn offline_orphans(peers: &Peers, router: &Router) -> usize {
    let first = {
        let heard = peers.heard();
        heard.keys().all(|other| peers.me < *other)
    };
    if !first || !peers.listened_long_enough() {
        return 0;
    }
    let dead = |broker: &str| {
        let heard = peers.heard();
        heard
            .get(broker)
            .is_none_or(|h| h.at.elapsed() >= BROKER_TTL)
    };
    let orphans = router.online_on(dead);
    for (name, kind, addr, broker) in &orphans {
        tracing::info!(%name, %broker, "cluster: the name's broker is gone; offline");
        router.publish_presence_on(name, kind, false, addr, broker);
    }
    orphans.len()
}

/// Records a heartbeat; a broker heard for the first time (or again, after a restart or a
/// partition) is online, one that says it is going is offline at once. Returns whether a
/// broker left.
fn heard_from(peers: &Peers, router: &Router, beat: Beat) -> bool {
    let mut heard = peers.heard();
    if beat.gone {
        if heard.remove(&beat.broker).is_some() {
            tracing::info!(broker = %beat.broker, "cluster: broker stopped");
            publish_broker(router, &beat.broker, false, beat.since, beat.names);
        }
        return true;
    }
    let now = Heard {
        at: Instant::now(),
        since: beat.since,
        names: beat.names,
    };
    let changed = match heard.insert(beat.broker.clone(), now) {
        None => {
            tracing::info!(broker = %beat.broker, "cluster: broker online");
            true
        }
        Some(before) => before.since != beat.since || before.names != beat.names,
    };
    if changed {
        publish_broker(router, &beat.broker, true, beat.since, beat.names);
    }
    false
}

/// Forgets the brokers silent for [`BROKER_TTL`] and says they are gone; returns how many.
fn bury(peers: &Peers, router: &Router) -> usize {
    let mut heard = peers.heard();
    let before = heard.len();
    heard.retain(|broker, heard| {
        let alive = heard.at.elapsed() < BROKER_TTL;
        if !alive {
            tracing::warn!(%broker, "cluster: broker silent for {BROKER_TTL:?}: gone");
            publish_broker(router, broker, false, heard.since, heard.names);
        }
        alive
    });
    before - heard.len()
}

/// Opens the names bucket (making it the first time), retrying until it can or `shutdown`.
async fn open_registry(
    client: Client,
    bucket: String,
    peers: Arc<Peers>,
    registry: Arc<Slot>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            opened = buckets::open(&client, &bucket, "breadboard names") => match opened {
                Ok(names) => {
                    registry.set(Arc::new(Registry { names, peers }));
                    tracing::info!(%bucket, "cluster: names unique across the cluster");
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "cluster: names bucket not reachable yet"),
            },
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// `$SYS/brokers/<name>`, as this broker sees it: whether a broker of the cluster is online,
/// since when it runs, and whether it takes names in the cluster (`"cluster"`) or, NATS's
/// bucket not open yet, on its own (`"local"`).
fn publish_broker(router: &Router, name: &str, online: bool, since: u64, shared: bool) {
    let Ok(topic) = proto::TopicName::system(format!("{}/brokers/{name}", proto::SYS_PREFIX))
    else {
        return;
    };
    let names = if shared { "cluster" } else { "local" };
    let data = serde_json::json!({ "online": online, "since": since, "names": names });
    router.publish_system_here(&topic, &data);
}
