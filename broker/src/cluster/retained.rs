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
use async_nats::jetstream::stream::{Config as StreamConfig, DiscardPolicy};
use async_nats::Client;
use bytes::Bytes;
use futures_util::StreamExt;
use proto::TopicName;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

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

/// The bucket's name for a cluster.
pub(super) fn bucket(cluster: &str) -> String {
    let mut out = String::from("bb_");
    for b in cluster.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("_{b:02X}"));
        }
    }
    out.push_str("_retained");
    out
}

/// A topic's key in the bucket.
pub(super) fn key(topic: &str) -> String {
    let mut out = String::with_capacity(topic.len());
    for b in topic.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

/// The topic of a key, if it is one.
pub(super) fn topic_of(key: &str) -> Option<TopicName> {
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            out.push(u8::from_str_radix(key.get(i + 1..i + 3)?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    TopicName::system(String::from_utf8(out).ok()?).ok()
}

/// Keeps the bucket and this broker's retained values in step until `shutdown`.
pub(super) async fn run(
    client: Client,
    cluster: String,
    router: Arc<Router>,
    pending: Arc<Pending>,
    shutdown: CancellationToken,
) {
    let bucket = bucket(&cluster);
    loop {
        let store = tokio::select! {
            () = shutdown.cancelled() => return,
            store = open(&client, &bucket) => store,
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

async fn open(client: &Client, bucket: &str) -> Result<Store, async_nats::Error> {
    let js = async_nats::jetstream::new(client.clone());
    if let Ok(store) = js.get_key_value(bucket).await {
        return Ok(store);
    }
    // The bucket's stream, made as the NATS clients make a key-value bucket's, but directly:
    // `create_key_value` first reads the account's limits in a form servers before 2.10 (such
    // as Debian's 2.9) do not send. Three replicas where the cluster has the servers (a bucket
    // that outlives one of them), else one.
    for replicas in [3, 1] {
        let config = StreamConfig {
            name: format!("KV_{bucket}"),
            description: Some("breadboard retained values".into()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            allow_rollup: true,
            deny_delete: true,
            deny_purge: false,
            allow_direct: true,
            discard: DiscardPolicy::New,
            num_replicas: replicas,
            ..Default::default()
        };
        match js.create_stream(config).await {
            Ok(_) => break,
            Err(e) if replicas > 1 => {
                tracing::debug!(%bucket, error = %e, "cluster: no room for 3 replicas, trying 1");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(js.get_key_value(bucket).await?)
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
    let key = key(topic.as_str());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_reversible_and_valid_for_kv() {
        for t in ["pin/p1/state", "$SYS/nodes/a.b", "a b/é/=/~"] {
            let k = key(t);
            assert!(
                k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-/=".contains(&b)),
                "{k}"
            );
            assert_eq!(topic_of(&k).unwrap().as_str(), t);
        }
        assert_eq!(key("$SYS/nodes/a.b"), "=24SYS/nodes/a=2Eb");
        assert!(topic_of("a=G1").is_none());
        assert_eq!(bucket("breadboard"), "bb_breadboard_retained");
        assert_eq!(bucket("my.site"), "bb_my_2Esite_retained");
    }
}
