//! The baseline: a bare tokio-tungstenite relay that forwards every data frame a publisher
//! sends to every subscriber, without looking inside (no decoding, no topics, no encoding).
//! It is the practical ceiling for forwarding frames through one process with this WebSocket
//! library, so the broker's numbers are given as a ratio to it, measured in the same run.
//!
//! Clients say what they are by the request path: `/sub` subscribes (the relay answers with one
//! `ready` text frame once the subscriber is registered), anything else publishes.
//!
//! It runs in process but on its own runtime (threads named [`THREAD_NAME`]), so its CPU time
//! can be read apart from the bench client's.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// The relay's runtime threads are named with this prefix.
pub const THREAD_NAME: &str = "bench-relay";
/// Frames queued per subscriber; a full queue makes the publisher wait (the relay never drops).
const QUEUE: usize = 1024;

/// How the relay writes to a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Writes {
    /// `send` each frame (write and flush it): what a bare relay written the obvious way does.
    Each,
    /// Feed every frame already queued, then flush once: the broker's own strategy.
    Batch,
}

/// Subscribers, as the publishers see them: a snapshot replaced whenever one joins or leaves.
#[derive(Default)]
struct Subscribers {
    list: Mutex<Arc<Vec<mpsc::Sender<Message>>>>,
    /// Bumped on every change, so publishers re-read the list only then.
    version: AtomicU64,
}

impl Subscribers {
    fn add(&self, tx: mpsc::Sender<Message>) {
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = Vec::clone(&list);
        next.push(tx);
        *list = Arc::new(next);
        self.version.fetch_add(1, Ordering::Release);
    }

    fn prune(&self) {
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        let next: Vec<_> = list.iter().filter(|tx| !tx.is_closed()).cloned().collect();
        *list = Arc::new(next);
        self.version.fetch_add(1, Ordering::Release);
    }

    fn snapshot(&self) -> (u64, Arc<Vec<mpsc::Sender<Message>>>) {
        let version = self.version.load(Ordering::Acquire);
        let list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        (version, list.clone())
    }
}

/// A running relay; stopped (its runtime shut down) when dropped.
pub struct Relay {
    /// Where it listens.
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Relay {
    /// Starts a relay on `127.0.0.1`, on an OS-chosen port, with `threads` worker threads.
    ///
    /// # Errors
    /// The runtime or the listener could not be created.
    pub fn start(threads: usize, writes: Writes) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name(THREAD_NAME)
            .enable_all()
            .build()?;
        // Bound here, not with `block_on`, so that this works inside another runtime too.
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let listener = {
            let _context = runtime.enter();
            TcpListener::from_std(std_listener)?
        };
        let shutdown = CancellationToken::new();
        runtime.spawn(serve(listener, writes, shutdown.clone()));
        Ok(Self {
            addr,
            shutdown,
            runtime: Some(runtime),
        })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn serve(listener: TcpListener, writes: Writes, shutdown: CancellationToken) {
    let subscribers = Arc::new(Subscribers::default());
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        tokio::spawn(connection(stream, subscribers.clone(), writes));
    }
}

async fn connection(stream: TcpStream, subscribers: Arc<Subscribers>, writes: Writes) {
    let _ = stream.set_nodelay(true);
    let mut path = String::new();
    // The signature is tungstenite's `Callback`; its error type is not ours to shrink.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| {
        path = req.uri().path().to_string();
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    if path == "/sub" {
        let (tx, mut rx) = mpsc::channel::<Message>(QUEUE);
        subscribers.add(tx);
        if sink.send(Message::text("ready")).await.is_err() {
            return;
        }
        // Read only to notice the subscriber leaving.
        let reader = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
        loop {
            let Some(msg) = rx.recv().await else { break };
            let sent = match writes {
                Writes::Each => sink.send(msg).await,
                Writes::Batch => feed_all(&mut sink, &mut rx, msg).await,
            };
            if sent.is_err() {
                break;
            }
        }
        reader.abort();
        drop(rx);
        subscribers.prune();
    } else {
        let (mut version, mut list) = subscribers.snapshot();
        while let Some(Ok(msg)) = stream.next().await {
            if !(msg.is_text() || msg.is_binary()) {
                continue;
            }
            if subscribers.version.load(Ordering::Acquire) != version {
                (version, list) = subscribers.snapshot();
            }
            for tx in list.iter() {
                // Waiting here is the relay's flow control: a subscriber that lags slows the
                // publisher down instead of losing frames.
                let _ = tx.send(msg.clone()).await;
            }
        }
    }
}

/// Feeds `first` and every frame already queued, then flushes once.
async fn feed_all<S>(
    sink: &mut S,
    rx: &mut mpsc::Receiver<Message>,
    first: Message,
) -> Result<(), S::Error>
where
    S: futures_util::Sink<Message> + Unpin,
{
    sink.feed(first).await?;
    while let Ok(msg) = rx.try_recv() {
        sink.feed(msg).await?;
    }
    sink.flush().await
}

#[cfg(test)]
mod tests {
    use super::super::wire;
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    use tokio::time::timeout;

    async fn frame(conn: &mut wire::Conn) -> (u8, Vec<u8>) {
        let f = timeout(Duration::from_secs(5), conn.reader.next())
            .await
            .expect("a frame in time")
            .unwrap()
            .expect("open");
        (f.opcode, f.payload.to_vec())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forwards_every_publisher_frame_to_every_subscriber_untouched() {
        for writes in [Writes::Each, Writes::Batch] {
            let relay = Relay::start(1, writes).unwrap();
            let mut subs = Vec::new();
            for _ in 0..2 {
                let mut sub = wire::connect(&wire::Dial::plain(relay.addr), "/sub")
                    .await
                    .unwrap();
                assert_eq!(frame(&mut sub).await, (wire::TEXT, b"ready".to_vec()));
                subs.push(sub);
            }
            let mut publisher = wire::connect(&wire::Dial::plain(relay.addr), "/pub")
                .await
                .unwrap();
            let mut out = Vec::new();
            wire::put_frame(&mut out, wire::TEXT, b"not even JSON");
            wire::put_frame(&mut out, wire::BINARY, &[1, 2, 3]);
            publisher.writer.write_all(&out).await.unwrap();
            for sub in &mut subs {
                assert_eq!(frame(sub).await, (wire::TEXT, b"not even JSON".to_vec()));
                assert_eq!(frame(sub).await, (wire::BINARY, vec![1, 2, 3]));
            }
            drop(relay);
        }
    }
}
