//! What a [`Client`](super::Client) hands back: the [`Messages`] delivered to its
//! subscriptions, and the [`Replies`] to one request.

use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use crate::Message;
use futures_util::Stream;
use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};

use super::mux;
use crate::error::{Error, Result};

/// The messages delivered to this connection's subscriptions (replies to requests excepted),
/// in the order the broker sent them. Ends when the connection does.
#[derive(Debug)]
pub struct Messages {
    rx: mpsc::Receiver<Message>,
}

impl Messages {
    pub(super) fn new(rx: mpsc::Receiver<Message>) -> Self {
        Self { rx }
    }

    /// The next message, or `None` once the connection has ended and the queue is drained.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// A message if one is queued now.
    pub fn try_recv(&mut self) -> Option<Message> {
        self.rx.try_recv().ok()
    }
}

impl Stream for Messages {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Message>> {
        self.rx.poll_recv(cx)
    }
}

/// The replies to one [`Client::request_many`](super::Client::request_many), until its window closes or `max` arrived.
pub struct Replies {
    pending: mux::Pending<mpsc::Receiver<Message>>,
    deadline: Instant,
    max: Option<usize>,
    received: usize,
}

impl std::fmt::Debug for Replies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replies")
            .field("deadline", &self.deadline)
            .field("max", &self.max)
            .field("received", &self.received)
            .finish()
    }
}

impl Replies {
    pub(super) fn new(
        pending: mux::Pending<mpsc::Receiver<Message>>,
        deadline: Instant,
        max: Option<usize>,
    ) -> Self {
        Self {
            pending,
            deadline,
            max,
            received: 0,
        }
    }

    /// The next reply; `Ok(None)` when the window closed or `max` replies arrived.
    ///
    /// # Errors
    /// [`Error::NoResponders`] when the window closes without a single reply;
    /// [`Error::Closed`] when the connection ends first.
    pub async fn next(&mut self) -> Result<Option<Message>> {
        if self.max.is_some_and(|max| self.received >= max) {
            return Ok(None);
        }
        match timeout_at(self.deadline, self.pending.rx.recv()).await {
            Ok(Some(msg)) => {
                self.received += 1;
                Ok(Some(msg))
            }
            Ok(None) => Err(Error::Closed),
            Err(_) if self.received == 0 => Err(Error::NoResponders),
            Err(_) => Ok(None),
        }
    }

    /// Every reply until the window closes or `max` arrived.
    ///
    /// # Errors
    /// As [`Replies::next`].
    pub async fn collect(mut self) -> Result<Vec<Message>> {
        let mut all = Vec::new();
        while let Some(msg) = self.next().await? {
            all.push(msg);
        }
        Ok(all)
    }

    /// How many replies arrived so far.
    pub fn received(&self) -> usize {
        self.received
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use proto::TopicName;

    use super::*;
    use crate::client::mux::Shared;

    fn reply(topic: &str) -> Message {
        Message {
            topic: TopicName::new(topic).unwrap().into(),
            data: serde_json::json!([1, 0, 1]),
            from: Some("pin-1".into()),
            reply: None,
            retained: false,
        }
    }

    fn replies(shared: &Arc<Shared>, window: Duration, max: Option<usize>) -> Replies {
        Replies::new(
            shared.expect_replies(1, 8).unwrap(),
            Instant::now() + window,
            max,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn replies_are_collected_until_the_window_closes() {
        let shared = Shared::new("_inbox/t".into());
        let mut r = replies(&shared, Duration::from_secs(1), None);
        assert!(shared.route(reply("_inbox/t/1")).is_none());
        assert!(shared.route(reply("_inbox/t/1")).is_none());
        let start = Instant::now();
        assert!(r.next().await.unwrap().is_some());
        assert!(r.next().await.unwrap().is_some());
        assert!(r.next().await.unwrap().is_none());
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        assert_eq!(r.received(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_without_replies_means_no_responders() {
        let shared = Shared::new("_inbox/t".into());
        let r = replies(&shared, Duration::from_millis(300), None);
        assert!(matches!(r.collect().await, Err(Error::NoResponders)));
    }

    #[tokio::test(start_paused = true)]
    async fn max_replies_end_the_wait_at_once() {
        let shared = Shared::new("_inbox/t".into());
        let mut r = replies(&shared, Duration::from_secs(60), Some(1));
        assert!(shared.route(reply("_inbox/t/1")).is_none());
        let start = Instant::now();
        assert!(r.next().await.unwrap().is_some());
        assert!(r.next().await.unwrap().is_none());
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_connection_ends_the_replies_with_closed() {
        let shared = Shared::new("_inbox/t".into());
        let mut r = replies(&shared, Duration::from_secs(60), None);
        shared.close();
        assert!(matches!(r.next().await, Err(Error::Closed)));
    }

    #[tokio::test(start_paused = true)]
    async fn replies_that_arrive_after_the_window_are_dropped() {
        let shared = Shared::new("_inbox/t".into());
        let r = replies(&shared, Duration::from_millis(100), None);
        assert!(matches!(r.collect().await, Err(Error::NoResponders)));
        // The entry is gone: a late reply is swallowed, not delivered anywhere.
        assert!(shared.route(reply("_inbox/t/1")).is_none());
    }
}
