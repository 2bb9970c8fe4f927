//! The names this broker's clients hold, and how: in the cluster's names bucket (with the
//! revision to give each back at), or taken while the cluster could not say (NATS away, the
//! bucket not open yet) and so held on this broker alone.
//!
//! A name held alone is not unique across the cluster: a client of another broker could take
//! it too. So once NATS is back and this broker has listened to the others for a whole TTL,
//! [`adopt`] puts each such name in the bucket. If a live client of another broker took it
//! meanwhile, that one keeps it (it has the cluster's word) and ours is evicted: told
//! `name_taken` and disconnected, without turning the name offline, and the holder's
//! presence is said again in case ours overwrote it.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio_util::sync::CancellationToken;

use super::names::{Claim, Slot, HEARTBEAT};
use crate::router::Router;

/// One name a client of this broker holds.
#[derive(Debug)]
struct Held {
    /// The session's id.
    client: u64,
    kind: String,
    addr: String,
    /// Where the bucket has it; `None` while held on this broker alone.
    revision: Option<u64>,
    /// Cancelled to evict the client.
    evict: CancellationToken,
}

/// A name held on this broker alone, to be adopted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Alone {
    name: String,
    client: u64,
    kind: String,
    addr: String,
}

/// The names this broker's clients hold.
#[derive(Debug, Default)]
pub(crate) struct HeldNames(Mutex<HashMap<String, Held>>);

impl HeldNames {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Held>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that `client` holds `name` (in the bucket at `revision`, or alone); returns the
    /// token cancelled if the client is to be evicted.
    pub(super) fn hold(
        &self,
        name: &str,
        client: u64,
        kind: &str,
        addr: &str,
        revision: Option<u64>,
    ) -> CancellationToken {
        let evict = CancellationToken::new();
        self.lock().insert(
            name.to_string(),
            Held {
                client,
                kind: kind.to_string(),
                addr: addr.to_string(),
                revision,
                evict: evict.clone(),
            },
        );
        evict
    }

    /// Forgets `client`'s hold on `name`; the revision to give back in the bucket, if any.
    pub(super) fn forget(&self, name: &str, client: u64) -> Option<u64> {
        let mut held = self.lock();
        match held.get(name) {
            Some(h) if h.client == client => held.remove(name).and_then(|h| h.revision),
            _ => None,
        }
    }

    /// The names held alone, sorted.
    fn alone(&self) -> Vec<Alone> {
        let mut alone: Vec<Alone> = self
            .lock()
            .iter()
            .filter(|(_, h)| h.revision.is_none())
            .map(|(name, h)| Alone {
                name: name.clone(),
                client: h.client,
                kind: h.kind.clone(),
                addr: h.addr.clone(),
            })
            .collect();
        alone.sort_by(|a, b| a.name.cmp(&b.name));
        alone
    }

    /// Records the bucket's revision for a name adopted; `false` if its client left meanwhile
    /// (then the caller gives the name back).
    fn adopted(&self, alone: &Alone, revision: u64) -> bool {
        match self.lock().get_mut(&alone.name) {
            Some(h) if h.client == alone.client => {
                h.revision = Some(revision);
                true
            }
            _ => false,
        }
    }

    /// Evicts the client holding `alone`, if it still does; whether it did.
    fn evict(&self, alone: &Alone) -> bool {
        let mut held = self.lock();
        match held.get(&alone.name) {
            Some(h) if h.client == alone.client => {
                if let Some(h) = held.remove(&alone.name) {
                    h.evict.cancel();
                }
                true
            }
            _ => false,
        }
    }
}

/// Puts the names held alone in the cluster's bucket, every [`HEARTBEAT`] while there are
/// any and the bucket can settle who holds what, until `shutdown`.
pub(super) async fn adopt(
    held: Arc<HeldNames>,
    registry: Arc<Slot>,
    router: Arc<Router>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(HEARTBEAT) => {}
        }
        // Only once every live broker has had a whole TTL to be heard: before that, a name in
        // the bucket counts as held by a live client whoever wrote it.
        let Some(registry) = registry.get().filter(|r| r.settled()) else {
            continue;
        };
        for alone in held.alone() {
            let claim = tokio::select! {
                () = shutdown.cancelled() => return,
                claim = registry.claim(&alone.name, &alone.kind, &alone.addr) => claim,
            };
            match claim {
                Claim::Taken(revision) => {
                    if held.adopted(&alone, revision) {
                        router.metrics.cluster_names_adopted.fetch_add(1, Relaxed);
                        tracing::info!(name = %alone.name, "cluster: a name taken alone is now the cluster's");
                    } else {
                        registry.release(&alone.name, revision).await;
                    }
                }
                Claim::Held => {
                    let holder = registry.holder(&alone.name).await;
                    if held.evict(&alone) {
                        router.metrics.cluster_names_evicted.fetch_add(1, Relaxed);
                        tracing::warn!(
                            name = %alone.name,
                            holder = ?holder.as_ref().map(|h| h.0.as_str()),
                            "cluster: a name taken here while cut off is held on another broker; its client here is disconnected"
                        );
                        if let Some((broker, kind, addr)) = holder {
                            router.publish_presence_on(&alone.name, &kind, true, &addr, &broker);
                        }
                    }
                }
                // The bucket is not answering: the next round tries again.
                Claim::Alone => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_is_forgotten_only_by_its_own_client() {
        let held = HeldNames::default();
        let _ = held.hold("pin-1", 7, "pin", "10.0.0.2:5000", Some(42));
        assert_eq!(held.forget("pin-1", 8), None, "another client's end");
        assert_eq!(held.forget("pin-1", 7), Some(42));
        assert_eq!(held.forget("pin-1", 7), None, "once");
    }

    #[test]
    fn names_held_alone_are_listed_until_adopted() {
        let held = HeldNames::default();
        let _ = held.hold("b", 2, "pin", "a2", None);
        let _ = held.hold("a", 1, "clock", "a1", None);
        let _ = held.hold("c", 3, "pin", "a3", Some(5));
        let alone = held.alone();
        let names: Vec<&str> = alone.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert!(held.adopted(&alone[0], 9));
        assert_eq!(held.alone().len(), 1);
        assert_eq!(
            held.forget("a", 1),
            Some(9),
            "given back at the adopted revision"
        );
    }

    #[test]
    fn a_client_that_left_is_neither_adopted_nor_evicted() {
        let held = HeldNames::default();
        let token = held.hold("pin-1", 7, "pin", "a", None);
        let alone = held.alone().remove(0);
        assert_eq!(held.forget("pin-1", 7), None);
        // A new client took the name meanwhile.
        let newer = held.hold("pin-1", 8, "pin", "a", None);
        assert!(!held.adopted(&alone, 3));
        assert!(!held.evict(&alone));
        assert!(!token.is_cancelled() && !newer.is_cancelled());
    }

    #[test]
    fn eviction_cancels_the_token_and_drops_the_hold() {
        let held = HeldNames::default();
        let token = held.hold("pin-1", 7, "pin", "a", None);
        let alone = held.alone().remove(0);
        assert!(held.evict(&alone));
        assert!(token.is_cancelled());
        assert_eq!(held.forget("pin-1", 7), None, "nothing to give back");
    }
}
