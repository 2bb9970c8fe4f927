//! Retained values cluster-wide, in a JetStream key-value bucket (`bb_<cluster>_retained`):
//! each broker writes what its clients retain (and clear), and watches the bucket to keep its own
//! retained tree, which its subscriptions replay from, up to date. The local tree and store are
//! the cache, and the fallback while NATS is away; topics written meanwhile are put to the bucket
//! when it returns, the newest value (by its time) winning.
//!
//! Keys are topics with every byte outside `[A-Za-z0-9_-/]` written `=XX` (hex): `pin/p1/state`
//! stays as it is, `$SYS/nodes/a.b` is `=24SYS/nodes/a=2Eb`. Values are JSON:
//! `{"data":<value>,"from":"pin-1","ts":<unix ms>}`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::kv::{Operation, Store};
use async_nats::Client;
use bytes::Bytes;
use futures_util::StreamExt;
use proto::TopicName;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::buckets;
use crate::router::Router;

/// How long to wait before trying the bucket again after a failure.
const RETRY: Duration = Duration::from_secs(1);

/// A retained value as the bucket holds it.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    data: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    from: Option<String>,
    ts: u64,
}

/// Topics retained (or cleared) locally and not yet written to the bucket: filled by the
/// router's calls, drained by the task. A set, not a queue: a topic written ten times while NATS
/// is away is written once, with its last value.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    topics: Mutex<HashSet<TopicName>>,
    changed: Notify,
}

impl Pending {
    pub(crate) fn add(&self, topic: &TopicName<impl AsRef<str>>) {
        self.topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(topic.to_name());
        self.changed.notify_one();
    }

    fn take(&self) -> Vec<TopicName> {
        self.topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .collect()
    }
}

/// The topic of a key, if it is one.
fn topic_of(key: &str) -> Option<TopicName> {
    TopicName::system(buckets::unkey(key)?).ok()
}

/// Keeps the bucket and this broker's retained values in step until `shutdown`.
pub(super) async fn run(
    client: Client,
    cluster: String,
    router: Arc<Router>,
    pending: Arc<Pending>,
    shutdown: CancellationToken,
) {
    let bucket = buckets::name(&cluster, "retained");
    loop {
        let store = tokio::select! {
            () = shutdown.cancelled() => return,
            store = buckets::open(&client, &bucket, "breadboard retained values") => store,
        };
        let store = match store {
            Ok(store) => store,
            Err(e) => {
                tracing::debug!(%bucket, error = %e, "cluster: retained bucket not reachable yet");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(RETRY) => continue,
                }
            }
        };
        tracing::info!(%bucket, "cluster: retained values shared through JetStream");
        if let Err(e) = follow(&store, &router, &pending, &shutdown).await {
            tracing::warn!(%bucket, error = %e, "cluster: retained bucket lost; local values kept, written back when it returns");
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(RETRY) => {}
            }
        } else {
            return;
        }
    }
}

/// Writes what is pending, applies what the bucket holds and every change to it. `Ok` at
/// shutdown; `Err` when the bucket fails (what was being written stays pending).
async fn follow(
    store: &Store,
    router: &Router,
    pending: &Pending,
    shutdown: &CancellationToken,
) -> Result<(), async_nats::Error> {
    // The bucket's values first (then changes), so that what was written elsewhere while this
    // broker was away is weighed against what it kept.
    let mut watch = store.watch_with_history(">").await?;
    loop {
        let topics = pending.take();
        for (i, topic) in topics.iter().enumerate() {
            if let Err(e) = write(store, router, topic).await {
                for topic in &topics[i..] {
                    pending.add(topic);
                }
                return Err(e);
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = pending.changed.notified() => {}
            entry = watch.next() => match entry {
                Some(Ok(entry)) => apply(router, &entry),
                Some(Err(e)) => return Err(e.into()),
                None => return Err("the bucket's watch ended".into()),
            },
        }
    }
}

/// Writes this broker's value of `topic` (or its absence) to the bucket, unless the bucket
/// holds a newer one.
async fn write(store: &Store, router: &Router, topic: &TopicName) -> Result<(), async_nats::Error> {
    let key = buckets::key(topic.as_str());
    match router.retained_value(topic.as_str()) {
        Some(value) => {
            let record = Record {
                data: value.data().clone(),
                from: value.from().map(str::to_string),
                ts: value.updated_ms(),
            };
            if let Some(entry) = store.entry(key.clone()).await? {
                let newer = serde_json::from_slice::<Record>(&entry.value)
                    .is_ok_and(|theirs| theirs.ts > record.ts);
                if newer && entry.operation == Operation::Put {
                    apply(router, &entry);
                    return Ok(());
                }
            }
            let json = serde_json::to_vec(&record)?;
            store.put(key, Bytes::from(json)).await?;
        }
        None => store.delete(key).await?,
    }
    Ok(())
}

/// Applies a value (or clearing) from the bucket to this broker, if newer than its own.
fn apply(router: &Router, entry: &async_nats::jetstream::kv::Entry) {
    let Some(topic) = topic_of(&entry.key) else {
        return;
    };
    match entry.operation {
        Operation::Put => {
            let Ok(record) = serde_json::from_slice::<Record>(&entry.value) else {
                tracing::debug!(key = %entry.key, "cluster: a retained record that is not ours skipped");
                return;
            };
            router.retain_from_cluster(
                &topic,
                Some((record.data, record.from.as_deref())),
                record.ts,
            );
        }
        Operation::Delete | Operation::Purge => {
            let at_ms =
                u64::try_from(entry.created.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
            router.retain_from_cluster(&topic, None, at_ms);
        }
    }
}
