//! What the router calls: a client's publish goes out to the cluster, a filter's first and
//! last local subscriber change what the broker subscribes to in NATS. Never waits: publishes
//! are queued (bounded; past it they are counted as dropped), interest is counted in a map the
//! bridge task reconciles its subscriptions with.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use proto::{Publish, SubjectSpace, TopicFilter};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::held::HeldNames;
use super::names::{Claim, Slot, CLAIM_TIMEOUT};
use super::retained::Pending;
use crate::metrics::Metrics;

/// Messages queued for NATS before new ones are dropped (and counted).
const OUTGOING_QUEUE: usize = 65_536;

/// A message for the cluster, ready to publish.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub subject: String,
    pub reply: Option<String>,
    pub payload: Bytes,
    /// The publisher's `hello` name.
    pub from: Option<String>,
    pub retain: bool,
    /// This broker's sequence number for it (`bb-id` is the broker's id and this).
    pub seq: u64,
}

/// The router's end of the bridge.
#[derive(Debug)]
pub(crate) struct Link {
    subjects: SubjectSpace,
    outgoing_tx: mpsc::Sender<Outgoing>,
    seq: AtomicU64,
    /// Local subscriptions per filter: NATS holds a subscription for each filter here.
    interest: Mutex<HashMap<TopicFilter, usize>>,
    /// Woken when `interest` changes.
    pub(super) interest_changed: Notify,
    /// Topics retained here, to be written to the cluster's bucket.
    pub(super) retained: Arc<Pending>,
    /// Names across the cluster, once its buckets are open.
    pub(super) registry: Arc<Slot>,
    /// The names this broker's clients hold.
    pub(super) held: Arc<HeldNames>,
    metrics: Arc<Metrics>,
}

impl Link {
    pub(super) fn new(
        subjects: SubjectSpace,
        metrics: Arc<Metrics>,
    ) -> (Self, mpsc::Receiver<Outgoing>) {
        let (outgoing_tx, outgoing_rx) = mpsc::channel(OUTGOING_QUEUE);
        let link = Self {
            subjects,
            outgoing_tx,
            seq: AtomicU64::new(1),
            interest: Mutex::new(HashMap::new()),
            interest_changed: Notify::new(),
            retained: Arc::new(Pending::default()),
            registry: Arc::default(),
            held: Arc::default(),
            metrics,
        };
        (link, outgoing_rx)
    }

    pub(super) fn subjects(&self) -> &SubjectSpace {
        &self.subjects
    }

    /// A message a client of this broker published: for the other brokers too. The broker's
    /// own counters (`$SYS/broker/...`) stay local.
    pub(crate) fn published(&self, p: &Publish<'_>, from: Option<&str>) {
        if p.topic.as_str().starts_with("$SYS/broker/") {
            return;
        }
        if p.retain {
            self.retained.add(&p.topic);
        }
        let out = Outgoing {
            subject: self.subjects.subject(&p.topic),
            reply: p.reply.as_ref().map(|r| self.subjects.subject(r)),
            payload: Bytes::from(p.data.to_json().into_owned()),
            from: from.map(str::to_string),
            retain: p.retain,
            seq: self.seq.fetch_add(1, Relaxed),
        };
        if self.outgoing_tx.try_send(out).is_err() {
            let n = self.metrics.cluster_dropped.fetch_add(1, Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n,
                    "cluster queue full (or NATS gone): messages not sent to other brokers"
                );
            }
        }
    }

    /// Takes a `hello` name cluster-wide for `client` of this broker (which holds it locally
    /// already): `None` if a live client of another broker holds it, else the token cancelled
    /// should the client be evicted (a name taken while the cluster could not say, found
    /// held elsewhere once it can: see `held`).
    pub(crate) async fn claim(
        &self,
        name: &str,
        kind: &str,
        addr: &str,
        client: u64,
    ) -> Option<CancellationToken> {
        // Connected to NATS, the bucket is about to open (the broker just started, or NATS
        // just came back): worth a moment's wait rather than a name taken alone.
        let registry = match self.registry.get() {
            Some(registry) => Some(registry),
            None if self.metrics.cluster_connected.load(Relaxed) == 1 => {
                self.registry.wait(CLAIM_TIMEOUT).await
            }
            None => None,
        };
        let claim = match registry {
            Some(registry) => registry.claim(name, kind, addr).await,
            None => Claim::Alone,
        };
        let revision = match claim {
            Claim::Held => return None,
            Claim::Taken(revision) => Some(revision),
            Claim::Alone => None,
        };
        Some(self.held.hold(name, client, kind, addr, revision))
    }

    /// Gives back a name `client` took with [`Link::claim`] (in the background).
    pub(crate) fn release(&self, name: &str, client: u64) {
        let Some(revision) = self.held.forget(name, client) else {
            return;
        };
        if let Some(registry) = self.registry.get() {
            let name = name.to_string();
            tokio::spawn(async move { registry.release(&name, revision).await });
        }
    }

    /// A local subscription to `filter` was added (`true`) or removed.
    pub(crate) fn interest(&self, filter: &TopicFilter, added: bool) {
        let mut interest = self.interest.lock().unwrap_or_else(PoisonError::into_inner);
        let changed = if added {
            let count = interest.entry(filter.clone()).or_insert(0);
            *count += 1;
            *count == 1
        } else {
            match interest.get_mut(filter) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    false
                }
                Some(_) => {
                    interest.remove(filter);
                    true
                }
                None => false,
            }
        };
        drop(interest);
        if changed {
            self.interest_changed.notify_one();
        }
    }

    /// The filters local clients hold now.
    pub(super) fn wanted(&self) -> Vec<TopicFilter> {
        self.interest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interest_counts_per_filter_and_notifies_on_first_and_last() {
        let (link, _rx) = Link::new(SubjectSpace::default(), Arc::new(Metrics::default()));
        let f = TopicFilter::new("a/#").unwrap();
        link.interest(&f, true);
        link.interest(&f, true);
        assert_eq!(link.wanted(), vec![f.clone()]);
        link.interest(&f, false);
        assert_eq!(link.wanted(), vec![f.clone()]);
        link.interest(&f, false);
        assert!(link.wanted().is_empty());
        link.interest(&f, false);
        assert!(link.wanted().is_empty(), "never below zero");
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (link, _rx) = Link::new(SubjectSpace::default(), Arc::new(Metrics::default()));
        let topic = proto::TopicName::new("a").unwrap();
        for _ in 0..OUTGOING_QUEUE + 3 {
            link.published(&Publish::new(topic.clone(), serde_json::json!(1)), None);
        }
        assert_eq!(link.metrics.cluster_dropped.load(Relaxed), 3);
    }
}
