//! What a connection waits for: the broker's answers to frames with an `id`, and the replies to
//! requests (the NATS-style multiplexer: one wildcard inbox subscription per connection, one
//! pending entry per request, keyed by the last level of the reply topic).
//!
//! The tables sit behind a std mutex held only for a map operation, never across an `.await`.
//! Each waiter holds a guard that removes its entry when dropped, so a request that times out or
//! is cancelled leaves nothing behind. When the connection ends, [`Shared::close`] empties the
//! tables, which wakes every waiter with "closed".

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::Message;
use proto::ErrorCode;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// The broker's answer to a frame that carried an `id`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Ack {
    /// `ok`
    Ok,
    /// `pong`
    Pong,
    /// `err`
    Err {
        /// Why.
        code: ErrorCode,
        /// Details.
        message: String,
    },
}

impl Ack {
    /// `Ok` for `ok` and `pong`, the broker's refusal otherwise.
    pub(crate) fn into_result(self) -> Result<()> {
        match self {
            Self::Ok | Self::Pong => Ok(()),
            Self::Err { code, message } => Err(Error::Broker { code, message }),
        }
    }
}

/// Where the replies to one request go.
enum ReplySink {
    /// `request`: the first reply ends the wait.
    One(oneshot::Sender<Message>),
    /// `request_many`: every reply until the window closes.
    Many(mpsc::Sender<Message>),
}

#[derive(Default)]
struct Tables {
    /// False once the connection has ended; nothing can register after that.
    open: bool,
    /// Frames sent with an `id`, waiting for `ok` / `pong` / `err`.
    acks: HashMap<u64, oneshot::Sender<Ack>>,
    /// Requests waiting for replies, by the reply token (last level of the reply topic).
    replies: HashMap<u64, ReplySink>,
}

/// The state a [`Client`](super::Client) shares with the task that owns its socket.
pub(crate) struct Shared {
    tables: Mutex<Tables>,
    /// This connection's inbox prefix, `_inbox/<random>`; replies come to `<inbox>/<token>`.
    inbox: String,
    /// Source of frame `id`s and reply tokens (one counter; the two never meet).
    next_id: AtomicU64,
    /// Cancelled when the connection has ended.
    pub(crate) closed: CancellationToken,
    /// Delivered messages dropped because the receiver was not keeping up.
    pub(crate) dropped: AtomicU64,
}

impl Shared {
    pub(crate) fn new(inbox: String) -> Arc<Self> {
        Arc::new(Self {
            tables: Mutex::new(Tables {
                open: true,
                ..Tables::default()
            }),
            inbox,
            next_id: AtomicU64::new(1),
            closed: CancellationToken::new(),
            dropped: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        // A panic while holding this lock leaves only maps of senders behind: still usable.
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The inbox prefix, `_inbox/<random>`.
    pub(crate) fn inbox(&self) -> &str {
        &self.inbox
    }

    /// A fresh `id` (never 0).
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a wait for the broker's answer to the frame with `id`.
    ///
    /// # Errors
    /// [`Error::Closed`] when the connection has already ended.
    pub(crate) fn expect_ack(self: &Arc<Self>, id: u64) -> Result<Pending<oneshot::Receiver<Ack>>> {
        let (tx, rx) = oneshot::channel();
        let mut t = self.lock();
        if !t.open {
            return Err(Error::Closed);
        }
        t.acks.insert(id, tx);
        Ok(Pending::new(self, id, Table::Acks, rx))
    }

    /// Registers a request waiting for its first reply on `<inbox>/<token>`.
    ///
    /// # Errors
    /// [`Error::Closed`] when the connection has already ended.
    pub(crate) fn expect_reply(
        self: &Arc<Self>,
        token: u64,
    ) -> Result<Pending<oneshot::Receiver<Message>>> {
        let (tx, rx) = oneshot::channel();
        self.register_reply(token, ReplySink::One(tx))?;
        Ok(Pending::new(self, token, Table::Replies, rx))
    }

    /// Registers a request collecting up to `capacity` queued replies on `<inbox>/<token>`.
    ///
    /// # Errors
    /// [`Error::Closed`] when the connection has already ended.
    pub(crate) fn expect_replies(
        self: &Arc<Self>,
        token: u64,
        capacity: usize,
    ) -> Result<Pending<mpsc::Receiver<Message>>> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.register_reply(token, ReplySink::Many(tx))?;
        Ok(Pending::new(self, token, Table::Replies, rx))
    }

    fn register_reply(&self, token: u64, sink: ReplySink) -> Result<()> {
        let mut t = self.lock();
        if !t.open {
            return Err(Error::Closed);
        }
        t.replies.insert(token, sink);
        Ok(())
    }

    /// Hands the broker's answer to whoever waits for `id`. False when nobody does.
    pub(crate) fn resolve_ack(&self, id: u64, ack: Ack) -> bool {
        let waiter = self.lock().acks.remove(&id);
        match waiter {
            Some(tx) => {
                // The waiter may have given up in the meantime; that is fine.
                let _ = tx.send(ack);
                true
            }
            None => false,
        }
    }

    /// Routes a delivered message: a reply to one of our requests goes to its waiter (or is
    /// dropped when nobody waits any more) and `None` is returned; any other message is
    /// given back.
    pub(crate) fn route(&self, msg: Message) -> Option<Message> {
        let Some(token) = self.reply_token(msg.topic.as_str()) else {
            return Some(msg);
        };
        let mut t = self.lock();
        match t.replies.get(&token) {
            Some(ReplySink::One(_)) => {
                if let Some(ReplySink::One(tx)) = t.replies.remove(&token) {
                    let _ = tx.send(msg);
                }
            }
            Some(ReplySink::Many(tx)) => {
                if tx.try_send(msg).is_err() {
                    tracing::warn!(token, "reply dropped: the requester is not keeping up");
                }
            }
            None => tracing::debug!(topic = %msg.topic, "late reply dropped"),
        }
        None
    }

    /// The token of a topic under our inbox, `<inbox>/<token>`.
    fn reply_token(&self, topic: &str) -> Option<u64> {
        let rest = topic.strip_prefix(self.inbox.as_str())?.strip_prefix('/')?;
        rest.parse().ok()
    }

    /// Marks the connection as ended: every waiter wakes up with "closed".
    pub(crate) fn close(&self) {
        let (acks, replies) = {
            let mut t = self.lock();
            t.open = false;
            (std::mem::take(&mut t.acks), std::mem::take(&mut t.replies))
        };
        // Dropped outside the lock: dropping a sender wakes its receiver.
        drop(acks);
        drop(replies);
        self.closed.cancel();
    }

    #[cfg(test)]
    fn pending(&self) -> (usize, usize) {
        let t = self.lock();
        (t.acks.len(), t.replies.len())
    }
}

#[derive(Clone, Copy)]
enum Table {
    Acks,
    Replies,
}

/// A registered wait; removes its entry from the tables when dropped.
pub(crate) struct Pending<R> {
    shared: Arc<Shared>,
    key: u64,
    table: Table,
    /// The receiving end of the wait.
    pub(crate) rx: R,
}

impl<R> Pending<R> {
    fn new(shared: &Arc<Shared>, key: u64, table: Table, rx: R) -> Self {
        Self {
            shared: Arc::clone(shared),
            key,
            table,
            rx,
        }
    }
}

impl<R> Drop for Pending<R> {
    fn drop(&mut self) {
        let mut t = self.shared.lock();
        match self.table {
            Table::Acks => {
                t.acks.remove(&self.key);
            }
            Table::Replies => {
                t.replies.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proto::TopicName;
    use serde_json::json;

    use super::*;

    fn msg(topic: &str) -> Message {
        Message {
            topic: TopicName::new(topic).unwrap().into(),
            data: json!(1),
            from: Some("pin-1".into()),
            reply: None,
            retained: false,
        }
    }

    #[tokio::test]
    async fn ack_reaches_its_waiter() {
        let shared = Shared::new("_inbox/abc".into());
        let mut p = shared.expect_ack(7).unwrap();
        assert!(shared.resolve_ack(7, Ack::Ok));
        assert_eq!((&mut p.rx).await.unwrap(), Ack::Ok);
        assert!(!shared.resolve_ack(7, Ack::Ok), "answered once only");
    }

    #[test]
    fn dropped_waiters_leave_nothing_behind() {
        let shared = Shared::new("_inbox/abc".into());
        let a = shared.expect_ack(1).unwrap();
        let r = shared.expect_reply(2).unwrap();
        let m = shared.expect_replies(3, 4).unwrap();
        assert_eq!(shared.pending(), (1, 2));
        drop((a, r, m));
        assert_eq!(shared.pending(), (0, 0));
    }

    #[tokio::test]
    async fn first_reply_ends_a_single_request() {
        let shared = Shared::new("_inbox/abc".into());
        let mut p = shared.expect_reply(5).unwrap();
        assert!(shared.route(msg("_inbox/abc/5")).is_none());
        assert!(
            shared.route(msg("_inbox/abc/5")).is_none(),
            "a late reply is swallowed"
        );
        assert_eq!((&mut p.rx).await.unwrap().topic.as_str(), "_inbox/abc/5");
    }

    #[tokio::test]
    async fn many_replies_are_all_collected() {
        let shared = Shared::new("_inbox/abc".into());
        let mut p = shared.expect_replies(9, 8).unwrap();
        for _ in 0..3 {
            assert!(shared.route(msg("_inbox/abc/9")).is_none());
        }
        for _ in 0..3 {
            assert!(p.rx.recv().await.is_some());
        }
    }

    #[test]
    fn other_topics_are_given_back() {
        let shared = Shared::new("_inbox/abc".into());
        for topic in [
            "pin/p/state",
            "_inbox/abcd/1",
            "_inbox/abc/x",
            "_inbox/abc",
            "_inbox/abc/1/2",
        ] {
            assert!(shared.route(msg(topic)).is_some(), "{topic}");
        }
    }

    #[tokio::test]
    async fn close_wakes_every_waiter_and_refuses_new_ones() {
        let shared = Shared::new("_inbox/abc".into());
        let mut a = shared.expect_ack(1).unwrap();
        let mut r = shared.expect_reply(2).unwrap();
        let mut m = shared.expect_replies(3, 4).unwrap();
        shared.close();
        assert!((&mut a.rx).await.is_err());
        assert!((&mut r.rx).await.is_err());
        assert!(m.rx.recv().await.is_none());
        assert!(matches!(shared.expect_ack(4), Err(Error::Closed)));
        assert!(shared.closed.is_cancelled());
    }
}
